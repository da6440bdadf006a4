"""`sgdtune cluster slurm|k8s`: the rendered templates, and their command lines run here as the
schedulers would run them: processes against one PostgreSQL storage, each with its index."""

import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import EXPERIMENTS, PG_PASSWORD, run_cli

from sgdtune.study.cluster import HEARTBEAT_S, Job, kubernetes, slurm

QUICK = EXPERIMENTS / "quick.toml"
STORAGE = "postgresql://sgd@db.internal/optuna"


def _command_of_slurm_script(text: str) -> list[str]:
    (line,) = [ln for ln in text.splitlines() if ln.startswith("sgdtune study ")]
    return shlex.split(line)


def test_the_slurm_script_is_a_job_array_with_one_gpu_per_task_running_one_study_command(tmp_path):
    job = Job(QUICK, "quick", STORAGE, "http://mlflow.internal:5000", tasks=8)
    text = slurm(job)
    script = tmp_path / "quick.sbatch"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0  # valid bash
    assert "#SBATCH --array=0-7\n" in text and "#SBATCH --gres=gpu:1\n" in text
    assert _command_of_slurm_script(text) == [
        "sgdtune", "study", str(QUICK), "--study-name", "quick", "--storage", STORAGE, "--no-progress",
        "--tracking-uri", "http://mlflow.internal:5000", "--heartbeat", str(HEARTBEAT_S), "--device", "cuda"]


def test_the_kubernetes_manifest_is_an_indexed_job_with_the_experiment_in_a_config_map():
    job = Job(QUICK, "quick", STORAGE, "http://mlflow:5000", tasks=5, gpus_per_task=2)
    config_map, manifest = yaml.safe_load_all(kubernetes(job, "registry.example/sgdtune:0.1"))
    assert config_map["kind"] == "ConfigMap" and config_map["data"] == {"quick.toml": QUICK.read_text()}
    spec = manifest["spec"]
    assert (manifest["kind"], spec["completionMode"], spec["completions"], spec["parallelism"]) == \
        ("Job", "Indexed", 5, 5)
    (container,) = spec["template"]["spec"]["containers"]
    assert container["image"] == "registry.example/sgdtune:0.1"
    assert container["command"][:3] == ["sgdtune", "study", "/experiment/quick.toml"]
    assert container["command"][-4:] == ["--device", "cuda", "--workers", "2"]  # one worker per GPU of the pod
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "sgdtune-db", "key": "password",
                                                                  "optional": True}}} in container["env"]


def test_through_the_grpc_proxy_the_tasks_run_without_heartbeats():
    command = Job(QUICK, "quick", "grpc://proxy.internal:13000", None, gpus_per_task=0).command()
    assert "--heartbeat" not in command and command[-2:] == ["--device", "cpu"] and "--no-tracking" in command


@pytest.mark.parametrize("flags, message", [
    (["slurm", "--storage", "postgresql://sgd:hunter2@db/optuna"],
     "error: --storage: must not hold a password (the script would carry it); the tasks read it from ~/.pgpass"),
    (["slurm", "--storage", "mlruns/optuna.journal"],
     "error: --storage: must be a storage every task can reach: postgresql://, mysql://, grpc://"),
    (["k8s", "--storage", STORAGE], "error: --image: is required for k8s"),
    (["slurm", "--storage", STORAGE, "--tracking-uri", "sqlite:///mlruns/mlflow.db"],
     "error: --tracking-uri: must be a tracking server or database every task can reach"),
    (["slurm", "--storage", STORAGE, "--tasks", "0"], "error: --tasks: must be >= 1"),
])
def test_a_template_that_could_not_work_or_would_carry_a_password_is_refused_in_one_line(tmp_path, flags, message):
    engine, *rest = flags
    out = run_cli("sgdtune", "cluster", engine, str(QUICK), *rest, "--out", str(tmp_path / "job"), cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.startswith(message) and out.stderr.count("\n") == 1, out.stderr
    assert "hunter2" not in out.stderr and not (tmp_path / "job").exists()


def _run_tasks(commands: list[list[str]], index_env: str, cwd: Path) -> list[subprocess.CompletedProcess]:
    """Start every task at once, as the scheduler would, with its index in `index_env`."""
    procs = []
    for i, argv in enumerate(commands):
        assert argv[0] == "sgdtune"
        env = {"PGPASSWORD": PG_PASSWORD, index_env: str(i), "SLURM_ARRAY_JOB_ID": "4242",
               "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "PATH": "/usr/bin:/bin"}
        procs.append(subprocess.Popen([sys.executable, "-m", "sgdtune", *argv[1:]], cwd=cwd, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return [subprocess.CompletedProcess(p.args, p.wait(300), *p.communicate()) for p in procs]


def _check_study(storage_url: str, name: str, n_trials: int, tasks: set[str]) -> None:
    study = optuna.load_study(study_name=name, storage=storage_url)
    # a trial two tasks started at the same moment beyond n_trials is a surplus one: failed
    # before it drew anything, and not counted (strategy.check_not_surplus)
    finished = [t for t in study.trials if t.state.is_finished() and t.user_attrs.get("fail_kind") != "surplus"]
    assert len(finished) == n_trials, [t.state for t in study.trials]
    params = Counter(tuple(sorted(t.params.items())) for t in finished)
    assert max(params.values()) == 1, "two tasks ran the same parameters"
    assert {t.user_attrs["process"]["task"] for t in finished} <= tasks  # each trial names its task


@pytest.mark.postgres
@pytest.mark.parametrize("engine", ["slurm", "k8s"])
def test_the_rendered_command_run_by_two_tasks_at_once_finishes_the_study_once(postgres, tmp_path, engine):
    url = postgres(f"cluster_{engine}")
    bare = url.replace(f":{PG_PASSWORD}@", "@")  # the template's form: the password comes from PGPASSWORD
    experiment = tmp_path / "quick.toml"
    experiment.write_text(QUICK.read_text())
    job = Job(experiment, f"cluster_{engine}", bare, None, tasks=2, gpus_per_task=0, n_trials=4)
    if engine == "slurm":
        commands, index = [_command_of_slurm_script(slurm(job))] * 2, "SLURM_ARRAY_TASK_ID"
    else:
        config_map, manifest = yaml.safe_load_all(kubernetes(job, "sgdtune:test"))
        mounted = tmp_path / "experiment"  # the ConfigMap, mounted as the pod would see it
        mounted.mkdir()
        (mounted / "quick.toml").write_text(config_map["data"]["quick.toml"])
        (container,) = manifest["spec"]["template"]["spec"]["containers"]
        argv = [str(mounted / "quick.toml") if a == "/experiment/quick.toml" else a for a in container["command"]]
        commands, index = [argv] * 2, "JOB_COMPLETION_INDEX"
    results = _run_tasks(commands, index, tmp_path)
    assert [r.returncode for r in results] == [0, 0], [r.stderr[-2000:] for r in results]
    tasks = {f"slurm 4242_{i}" for i in range(2)} if engine == "slurm" else {f"k8s {i}" for i in range(2)}
    _check_study(url, f"cluster_{engine}", 4, tasks)
    assert not any(PG_PASSWORD in r.stdout + r.stderr for r in results)
