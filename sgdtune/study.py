"""run_study: a study from its experiment to its last trial, in this process or in
worker processes, with its parent MLflow run and the provenance it records.

`python -m sgdtune.study` runs the command line of cli.py.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # The command line parses its flags before anything heavy is imported (`--help` stays
    # quick) and starts MLflow's writer process before torch (cli.study_main); the module
    # object it runs is sgdtune.study, imported there, not this __main__ copy.
    from sgdtune.cli import interruptible, study_main

    sys.exit(interruptible(study_main))

import math
import subprocess
from pathlib import Path

import optuna

from . import __version__
from .cohorts import check_cohorts, optimize, optimize_batched, settle
from .config import ExperimentConfig, file_sha256
from .console import Progress, one_line_trial_failures
from .data import load_data
from .errors import InputError
from .identity import check as check_identity
from .model import describe_model
from .reclaim import as_store_error, finished_trial_states, reclaim_dead
from .redact import redact_url
from .saved import dataset_records, register_best
from .science.fits import study_metrics
from .search import best_value, n_finished, open_study
from .stores import MLRUNS, check_tracking, locations, open_storage
from .timing import describe_device, resolve_device
from .tracking import default_artifact_location
from .trial import Objective
from .workers import WorkerSpec, supervise
from .writer import BackgroundTracker, RunRef


def run_study(
    config: ExperimentConfig,
    *,
    experiment_path: str | Path | None = None,
    command: str | None = None,
    track: bool = True,
    show_progress: bool = False,
    mlruns: str | Path = MLRUNS,
    workers: int = 1,
    heartbeat: int | None = None,
    batch_trials: int = 1,
    on_change: str = "refuse",
    register_model: str | None = None,
    gpus: list[int] | None = None,
    face: str = "api",
) -> optuna.Study:
    """Run (or resume) the study until it has config.n_trials finished trials.

    With config.replicates = R > 1 each trial trains its configuration with R seeds and its
    value is their mean (trial.py); not with batch_trials > 1 (InputError).
    With workers > 1, that many processes on this machine share the study (workers.py).
    With heartbeat (seconds; RDB storages only), a trial whose process died is failed after
    two silent intervals and run again. The study's user attributes say where its MLflow
    runs are (mlflow_experiment_id, mlflow_parent_run_id, tracking_uri, password masked).
    A stored study run with another configuration is refused (InputError) unless on_change
    is "fresh" (delete it, start again) or "extend" (continue it with this one; identity.py).
    With register_model = NAME, the best trial's logged model is registered at the end in
    MLflow's model registry under NAME (user attribute registered_model: name, version, trial).
    With config.device cuda and workers > 1, each worker gets one GPU (gpus.py): `gpus` lists
    the indices to use (a repeated one runs several trials on that GPU; default: all visible).
    face: whose words messages use, "api" (on_change=...) or "cli" (--fresh, --extend).
    """
    if workers < 1:
        raise InputError("--workers", "must be >= 1", repr(workers))
    if batch_trials < 1:
        raise InputError("--batch-trials", "must be >= 1", repr(batch_trials))
    if heartbeat is not None and heartbeat < 1:
        raise InputError("--heartbeat", "must be >= 1 (seconds)", repr(heartbeat))
    check_cohorts(config, batch_trials)  # --batch-trials with --replicates: refused
    _check_registration(register_model, track, config)
    config, worker_gpus = _place_on_gpus(config, workers, gpus)
    device = resolve_device(config.device)
    data = load_data(config.data, config.seed, device)  # bad data input fails before anything is written
    describe_model(config.model, data.n_features, data.n_classes, data.input_shape)  # a CNN that cannot take them
    storage_url, tracking_uri = locations(config, mlruns)
    storage = open_storage(storage_url, heartbeat, tracking_uri if track else None)
    if track:  # both stores checked before anything is written (stores.py)
        check_tracking(tracking_uri, storage, config.name, storage_url)
    identity = check_identity(config, storage, on_change, face)  # before any trial or MLflow write
    study = open_study(config, storage)
    identity.record(study)
    one_line_trial_failures()  # a diverged trial: one line, not Optuna's traceback (the CLI does the same)
    # n_val: the report's binomial standard errors where no MLflow run records it (--no-tracking)
    for key, value in {"objectives": list(config.objectives), "seed": config.seed, "n_train": data.n_train,
                       "n_val": data.n_val}.items():
        study.set_user_attr(key, value)
    reclaim_dead(study, storage, tracking_uri if track else None)  # trials of killed processes (reclaim.py)

    tracker = parent_run = datasets = None
    if track:
        artifact_location = None if config.tracking_uri else default_artifact_location(mlruns)
        tracker = BackgroundTracker(tracking_uri, config.name, artifact_location)
        tracker.experiment_id  # noqa: B018 - waits until the store is open: InputError here, not at a trial's end
        parent_run = _start_parent(tracker, config, experiment_path, command, storage_url, device,
                                   identity.parent_tags(study), replace=identity.action == "fresh")
        tracker.end_runs_of_finished_trials(finished_trial_states(study))  # ends a killed writer lost
        datasets = dataset_records(data, config.data, config.seed)  # hashed once; every trial run gets them
        tracker.log_inputs(parent_run, datasets)

    done = n_finished(study)
    remaining = config.n_trials - done
    if done > 0:
        more = "" if remaining > 0 else "; nothing to run (a larger --n-trials runs more)"
        print(f"resuming {config.name}: {done} of {config.n_trials} trials finished{more}", file=sys.stderr)
    progress = None
    if show_progress:
        progress = Progress(config.n_trials, config.n_trials - max(remaining, 0), best_value(study))
    status = "FINISHED"
    try:
        if progress:
            progress.bar.start()
        if remaining > 0 and workers > 1:
            parent_run_id = None
            if tracker is not None:
                parent_run_id = parent_run.id
                record_mlflow_location(study, tracker, parent_run)  # before a worker can fail
            spec = WorkerSpec(config, str(mlruns), parent_run_id, heartbeat, track, batch_trials, worker_gpus)
            supervise(study, spec, workers, progress)
        elif remaining > 0:
            objective = Objective(config, data, tracker, parent_run, describe_device(device), progress,
                                  datasets=datasets)
            if tracker is not None:  # once the first trial's run exists, so do the parent's ids
                objective.on_first_end = lambda study: record_mlflow_location(study, tracker, parent_run)
            if batch_trials > 1:
                optimize_batched(study, objective, remaining, config, batch_trials)
            else:
                optimize(study, objective, remaining, config)
            if heartbeat is not None:
                settle(study, objective, config, heartbeat, batch_trials)
    except BaseException as e:
        status = "KILLED"
        failed = as_store_error(e, storage_url)  # a full disk under the Optuna storage: one line (reclaim.py)
        if failed is not e:
            raise failed from e
        raise
    finally:
        if progress:
            progress.bar.stop()
        if tracker is not None:
            metrics = study_metrics(study.get_trials(deepcopy=False), study.user_attrs.get("n_train", math.inf))
            tracker.end_parent_run(parent_run, metrics, status=status)
            tracker.close()  # every write made
            record_mlflow_location(study, tracker, parent_run)
    if register_model is not None:  # every write is made: the best trial's model is in the store
        number, version = register_best(study, register_model, tracking_uri)
        study.set_user_attr("registered_model", {"name": register_model, "version": version, "trial": number})
    return study


def _place_on_gpus(config: ExperimentConfig, workers: int,
                   gpus: list[int] | None) -> tuple[ExperimentConfig, tuple[str, ...]]:
    """The config this process trains with, and each worker's GPU (CUDA_VISIBLE_DEVICES), for
    `--gpus` and for `--device cuda --workers N` (one GPU per worker, gpus.py)."""
    cuda = config.device.startswith("cuda") or (config.device == "auto" and gpus is not None)
    if gpus is not None and not cuda:
        raise InputError("--gpus", "needs --device cuda (or auto on a machine with CUDA)", f"device {config.device!r}")
    if not cuda or (workers == 1 and gpus is None):
        return config, ()
    import torch

    from .gpus import visible_gpus, worker_gpus

    if not torch.cuda.is_available():
        raise InputError("--gpus" if gpus is not None else "device", "needs CUDA; this machine has none",
                         repr(config.device))
    visible = visible_gpus(torch.cuda.device_count())
    if workers == 1:  # one process: the chosen GPU is its device, no environment to change
        if len(gpus) != 1:
            raise InputError("--gpus", f"lists {len(gpus)} GPU slots for 1 worker; add --workers {len(gpus)} "
                             "or list one GPU", ",".join(map(str, gpus)))
        worker_gpus(1, visible, gpus)  # the index is checked
        return config.model_copy(update={"device": f"cuda:{gpus[0]}"}), ()
    return config.model_copy(update={"device": "cuda"}), tuple(worker_gpus(workers, visible, gpus))


def _check_registration(name: str | None, track: bool, config: ExperimentConfig) -> None:
    """--register-model needs a name, MLflow tracking and kept models (before anything runs)."""
    if name is None:
        return
    if not name.strip():
        raise InputError("--register-model", "must be a non-empty model name", repr(name))
    if not track:
        raise InputError("--register-model", "needs MLflow tracking (the models live there)", "--no-tracking")
    if config.keep_models < 1:
        raise InputError("--register-model", "needs keep_models >= 1 (no trial keeps its network otherwise)",
                         f"keep_models = {config.keep_models}")


def record_mlflow_location(study: optuna.Study, tracker: BackgroundTracker, parent_run: RunRef) -> None:
    """The study's user attributes that say where its MLflow runs are (password masked)."""
    study.set_user_attr("mlflow_experiment_id", tracker.experiment_id)
    study.set_user_attr("mlflow_parent_run_id", parent_run.id)
    study.set_user_attr("tracking_uri", redact_url(tracker.tracking_uri))


def _start_parent(tracker: BackgroundTracker, config: ExperimentConfig, path, command, storage_url, device,
                  identity_tags: dict[str, str], replace: bool = False) -> RunRef:
    tags = {
        "sgdtune.study_name": config.name,
        "sgdtune.storage": redact_url(storage_url),
        "sgdtune.device": describe_device(device),
        "sgdtune.command": redact_url(command or ""),
        **identity_tags,
    }
    if path is not None:
        path = masked_copy(path)
        tags["sgdtune.experiment_sha256"] = file_sha256(path)
    commit = _git_commit()
    if commit:
        tags["sgdtune.git_commit"] = commit
    params = {f"version.{k}": v for k, v in package_versions().items()}
    params.update({"seed": config.seed, "n_trials": config.n_trials, "sampler": config.sampler.name,
                   "pruner": config.pruner.name, "objectives": ",".join(config.objectives)})
    run = tracker.start_parent_run(tags, params, replace)
    if path is not None:
        tracker.log_artifact(run, path, "experiment")
    return run


def masked_copy(path: str | Path) -> Path:
    """The experiment file to record: itself, or where it holds a secret (a storage URL with
    its password) a copy with it masked, in a temporary folder removed at exit. The recorded
    sha256 is the copy's: a hash of the original would let a password be guessed offline."""
    text = Path(path).read_text()
    if redact_url(text) == text:
        return Path(path)
    import atexit
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="sgdtune-experiment-"))
    atexit.register(shutil.rmtree, folder, True)  # after run_study has closed its tracker
    copy = folder / Path(path).name
    copy.write_text(redact_url(text))
    return copy


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    """Versions of what a result depends on, read from the installed metadata (no imports)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("sgdtune", "torch", "optuna", "mlflow", "scikit-learn", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = __version__ if name == "sgdtune" else "not installed"
    return out
