"""`sgdtune cluster slurm|k8s X.toml`: a SLURM job array or a Kubernetes indexed Job whose
tasks all run the same `sgdtune study` command against one shared storage.

Every task is one process that joins the study through the storage (PostgreSQL, or the gRPC
storage proxy in front of it): Optuna hands each process its own trials, so the array needs no
coordination of its own, and a task that dies is made good by another task's heartbeat check
(`--heartbeat`, PostgreSQL only). A task with G GPUs runs G workers, one per GPU (gpus.py).
The rendered text holds no password: the tasks read it from ~/.pgpass or PGPASSWORD (SLURM) or
from a Kubernetes Secret. Standard library and PyYAML (MLflow's own dependency); no torch.

Layer: study (one study from its experiment to its last trial; docs/architecture.md).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..redact import redact

SHARED_SCHEMES = ("postgresql", "mysql", "grpc")  # storages that tasks on other machines can reach
HEARTBEAT_S = 60  # a dead task's trial is failed and run again after 2 silent intervals


@dataclass(frozen=True)
class Job:
    """What both templates render: the study command and the shape of the array."""

    experiment: Path
    study_name: str
    storage: str
    tracking_uri: str | None
    tasks: int = 4
    gpus_per_task: int = 1
    n_trials: int | None = None
    cpus_per_task: int = 4
    time_limit: str = "04:00:00"

    def __post_init__(self) -> None:
        check_shared(self.storage, "--storage")
        if self.tracking_uri is not None:
            if redact(self.tracking_uri) != self.tracking_uri:
                raise InputError("--tracking-uri", "must not hold a password (the script would carry it); give the "
                                 "server's credentials through MLFLOW_TRACKING_USERNAME/PASSWORD in the job's "
                                 "environment", redact(self.tracking_uri))
            if self.tracking_uri.split("://")[0] not in ("http", "https", "postgresql", "mysql"):
                raise InputError("--tracking-uri", "must be a tracking server or database every task can reach "
                                 "(http://host:5000, postgresql://...)", repr(self.tracking_uri))
        if self.tasks < 1:
            raise InputError("--tasks", "must be >= 1", repr(self.tasks))
        if self.gpus_per_task < 0:
            raise InputError("--gpus-per-task", "must be >= 0 (0 = CPU only)", repr(self.gpus_per_task))

    def command(self) -> list[str]:
        """The one command every task runs (argv)."""
        argv = ["sgdtune", "study", str(self.experiment), "--study-name", self.study_name,
                "--storage", self.storage, "--no-progress"]
        argv += ["--tracking-uri", self.tracking_uri] if self.tracking_uri else ["--no-tracking"]
        if not self.storage.startswith("grpc://"):  # the gRPC proxy's client is no heartbeat storage
            argv += ["--heartbeat", str(HEARTBEAT_S)]
        if self.gpus_per_task > 0:
            argv += ["--device", "cuda"] + (["--workers", str(self.gpus_per_task)] if self.gpus_per_task > 1 else [])
        else:
            argv += ["--device", "cpu"]
        if self.n_trials is not None:
            argv += ["--n-trials", str(self.n_trials)]
        return argv


def check_shared(url: str, flag: str) -> None:
    """A storage that tasks on other machines can share, and no password in it."""
    scheme = url.split("://")[0].split("+")[0] if "://" in url else ""
    if scheme not in SHARED_SCHEMES:
        raise InputError(flag, "must be a storage every task can reach: "
                         + ", ".join(f"{s}://" for s in SHARED_SCHEMES)
                         + " (a journal file or SQLite database lives on one machine)", repr(redact(url)))
    if redact(url) != url:
        raise InputError(flag, "must not hold a password (the script would carry it); the tasks read it from "
                         "~/.pgpass or PGPASSWORD (SLURM) or a Secret (Kubernetes)", redact(url))


def slurm(job: Job) -> str:
    """A job array: `sbatch sgdtune.sbatch` starts job.tasks tasks, one study."""
    gres = f"#SBATCH --gres=gpu:{job.gpus_per_task}\n" if job.gpus_per_task else ""
    return f"""#!/bin/bash
# sgdtune study '{job.study_name}' as a SLURM job array (rendered by `sgdtune cluster slurm`).
# Each array task is one process joining the study through the shared storage; Optuna gives
# each its own trials. Submit with `sbatch {job.study_name}.sbatch`; resubmitting resumes.
#SBATCH --job-name=sgdtune-{job.study_name}
#SBATCH --array=0-{job.tasks - 1}
#SBATCH --cpus-per-task={job.cpus_per_task}
{gres}#SBATCH --time={job.time_limit}
#SBATCH --output=sgdtune-{job.study_name}-%A_%a.out
set -euo pipefail
export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=1
# The database password comes from ~/.pgpass or PGPASSWORD, never from this file.
echo "sgdtune task ${{SLURM_ARRAY_TASK_ID}} of job ${{SLURM_ARRAY_JOB_ID}} on $(hostname)"
{shlex.join(job.command())}
"""


def kubernetes(job: Job, image: str, secret: str = "sgdtune-db") -> str:
    """An indexed Job plus the ConfigMap holding the experiment file: `kubectl apply -f`."""
    import yaml

    name = f"sgdtune-{job.study_name}".lower().replace("_", "-").replace(".", "-")[:63]
    mounted = Job(**{**job.__dict__, "experiment": Path("/experiment") / job.experiment.name})
    container = {
        "name": "sgdtune",
        "image": image,
        "command": mounted.command(),
        "env": [
            {"name": "MLFLOW_DISABLE_TELEMETRY", "value": "true"},
            {"name": "DO_NOT_TRACK", "value": "1"},
            {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": secret, "key": "password",
                                                                   "optional": True}}},
        ],
        "volumeMounts": [{"name": "experiment", "mountPath": "/experiment", "readOnly": True}],
        "resources": {"limits": {"cpu": str(job.cpus_per_task),
                                 **({"nvidia.com/gpu": str(job.gpus_per_task)} if job.gpus_per_task else {})}},
    }
    config_map = {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-experiment"},
        "data": {job.experiment.name: redact(job.experiment.read_text())},
    }
    manifest = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {
            "completionMode": "Indexed",  # each pod gets JOB_COMPLETION_INDEX = 0 .. tasks - 1
            "completions": job.tasks,
            "parallelism": job.tasks,
            "backoffLimitPerIndex": 2,  # a pod that died is started again; the heartbeat reruns its trial
            "template": {"spec": {
                "restartPolicy": "Never",
                "containers": [container],
                "volumes": [{"name": "experiment", "configMap": {"name": f"{name}-experiment"}}],
            }},
        },
    }
    head = (f"# sgdtune study '{job.study_name}' as a Kubernetes indexed Job (rendered by `sgdtune cluster k8s`).\n"
            f"# kubectl create secret generic {secret} --from-literal=password=...   # the database's\n"
            f"# kubectl apply -f {job.study_name}.yaml\n")
    class Dumper(yaml.SafeDumper):  # the experiment file as a literal block, readable as written
        pass

    Dumper.add_representer(str, lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style="|" if "\n" in text else None))
    return head + yaml.dump_all([config_map, manifest], Dumper=Dumper, sort_keys=False)
