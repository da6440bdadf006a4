"""run_study: a study from its experiment to its last trial, in this process or in
worker processes, with its parent MLflow run and the provenance it records.

Layer: study. `python -m sgdtune.study` is this package's `__main__.py` (cli.study_main).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import optuna

from .. import __version__
from ..config import ExperimentConfig, file_sha256
from ..errors import StoreError, StudyGone
from ..model import describe_model
from ..redact import redact_url
from ..saved import dataset_records, register_best
from ..science.fits import study_metrics
from ..search.strategy import best_value, n_claimed, n_finished, study_exists
from ..store.checks import check_before_writing, check_tracking
from ..store.startlock import study_lock
from ..store.stores import MLRUNS
from ..store.tracking import default_artifact_location
from ..store.writer import BackgroundTracker, RunRef
from ..threads import core_share
from ..timing import describe_device
from .console import Progress, one_line_trial_failures
from .identity import check as check_identity
from .reclaim import (
    JOINS_ATTR,
    as_store_error,
    finished_trial_states,
    join,
    joins_before,
    leave,
    reclaim_dead,
)
from .session import RunOptions, Session, place_on_gpus
from .workers import WorkerSpec, supervise


def run_study(
    config: ExperimentConfig,
    *,
    experiment_path: str | Path | None = None,
    command: str | None = None,
    track: bool = True,
    show_progress: bool = False,
    mlruns: str | Path = MLRUNS,
    workers: int | None = 1,
    heartbeat: int | None = None,
    batch_trials: int = 1,
    on_change: str = "refuse",
    register_model: str | None = None,
    gpus: list[int] | str | None = None,
    face: str = "api",
) -> optuna.Study:
    """Run (or resume) the study until it has config.n_trials finished trials.

    With config.replicates = R > 1 each trial trains its configuration with R seeds and its
    value is their mean (study/trial.py); not with batch_trials > 1 (InputError).
    With workers > 1, that many processes on this machine share the study (study/workers.py).
    With heartbeat (seconds; RDB storages only), a trial whose process died is failed after
    two silent intervals and run again. The study's user attributes say where its MLflow
    runs are (mlflow_experiment_id, mlflow_parent_run_id, tracking_uri, password masked).
    A stored study run with another configuration is refused (InputError) unless on_change
    is "fresh" (delete it, start again) or "extend" (continue it with this one; study/identity.py).
    With register_model = NAME, the best trial's logged model is registered at the end in
    MLflow's model registry under NAME (user attribute registered_model: name, version, trial).
    With config.device cuda and workers > 1, each worker gets one GPU (gpus.py): `gpus` lists
    the indices to use (a repeated one runs several trials on that GPU; default: all visible;
    "0,2,3" as the command line writes it); workers=None: one per slot of `gpus`, else 1.
    face: whose words messages use, "api" (on_change=...) or "cli" (--fresh, --extend).
    Every option is checked first, against the experiment too (session.RunOptions): a bad
    one is an InputError before anything is loaded or written.
    """
    options = RunOptions.check(config, experiment_path=experiment_path, command=command, track=track,
                               show_progress=show_progress, mlruns=mlruns, workers=workers, heartbeat=heartbeat,
                               batch_trials=batch_trials, on_change=on_change, register_model=register_model,
                               gpus=gpus, face=face)  # every option, once, before anything is loaded or written
    config, worker_gpus = place_on_gpus(config, options)
    session = Session.prepare(config, options)
    data = session.load_data()  # bad data input fails before anything is written
    describe_model(config.model, data.n_features, data.n_classes, data.input_shape)  # a CNN that cannot take them
    storage_url, tracking_uri = session.storage_url, session.tracking_uri
    check_before_writing(storage_url, session.tracking)  # read-only: opening creates files
    storage = session.open_storage()
    if options.track:  # both stores checked before anything is written (store/stores.py)
        check_tracking(tracking_uri, storage, config.name, storage_url)
    with study_lock(storage_url):  # the check, the record and the join are one step (store/startlock.py)
        identity = check_identity(config, storage, options.on_change, options.face)  # before any trial or MLflow write
        study = session.open_study(join=joins_before(storage, config.name))
        identity.record(study)
        one_line_trial_failures()  # a diverged trial: one line, not Optuna's traceback (the CLI does the same)
        # n_val: the report's binomial standard errors where no MLflow run records it (--no-tracking)
        for key, value in {"objectives": list(config.objectives), "seed": config.seed, "n_train": data.n_train,
                           "n_val": data.n_val}.items():
            study.set_user_attr(key, value)
        join(study)  # this process among the study's (study/reclaim.py): --fresh elsewhere waits for it
        study_id = storage.get_study_id_from_name(config.name)
        reclaim_dead(study, storage, session.tracking)  # trials of killed processes (study/reclaim.py)
        if options.track:
            tracker = session.start_writer(None if config.tracking_uri else default_artifact_location(options.mlruns))
            tracker.experiment_id  # noqa: B018 - waits until the store is open: InputError here, not at a trial's end
            session.parent_run = _start_parent(tracker, config, options.experiment_path, options.command,
                                               storage_url, session.device, identity.parent_tags(study),
                                               replace=identity.action == "fresh")
            session.record_location()  # one parent run: the next process finds it
    tracker, parent_run = session.tracker, session.parent_run
    if tracker is not None:
        tracker.end_runs_of_finished_trials(finished_trial_states(study))  # ends a killed writer lost
        session.datasets = dataset_records(data, config.data, config.seed)  # hashed once; every trial run gets them
        tracker.log_inputs(parent_run, session.datasets)

    done = n_finished(study)
    remaining = config.n_trials - n_claimed(study)  # trials other processes run now count (strategy.n_claimed)
    if done > 0 or remaining < config.n_trials:
        more = "" if remaining > 0 else "; nothing to run (a larger --n-trials runs more)"
        others = n_claimed(study) - done
        running = f", {others} running in other processes" if others else ""
        print(f"resuming {config.name}: {done} of {config.n_trials} trials finished{running}{more}", file=sys.stderr)
    progress = None
    if options.show_progress:
        progress = Progress(config.n_trials, config.n_trials - max(remaining, 0), best_value(study))
    status, failure = "FINISHED", None
    try:
        if progress:
            progress.bar.start()
        if config.profile:  # before the first trial, on the trials' threads (workers split the cores)
            record_profile(study, config, data, options.mlruns, tracker, parent_run,
                           core_share(options.workers) if options.workers > 1 else None)
        if remaining > 0 and options.workers > 1:
            spec = WorkerSpec(config, options, parent_run.id if parent_run else None, worker_gpus,
                              join=study.user_attrs.get(JOINS_ATTR, 0))
            supervise(study, spec, options.workers, progress)
        elif remaining > 0:
            session.settle(session.run_trials(remaining, progress))
    except BaseException as e:
        status, failure = "KILLED", _stopped_by(e, storage, config.name, study_id, storage_url)
        if failure is not e:  # one line at the CLI (StudyGone, StoreError), not Optuna's traceback
            raise failure from None
        raise
    finally:
        if progress:
            progress.bar.stop()
        _close(session, status, failure)
    if options.register_model is not None:  # every write is made: the best trial's model is in the store
        number, version = register_best(study, options.register_model, tracking_uri)
        study.set_user_attr("registered_model", {"name": options.register_model, "version": version,
                                                 "trial": number})
    return study


def record_profile(study: optuna.Study, config: ExperimentConfig, data, mlruns: str | Path,
                   tracker: BackgroundTracker | None, parent_run: RunRef | None, cores: int | None) -> dict:
    """The device profile (profile/measure.py) as the study's user attribute `profile` and, unless the
    study already holds the same one, on its parent run: the artifacts profile/profile.json and
    profile/profile.csv, the metrics profile_s_per_update, profile_examples_per_s and
    profile_peak_mem_mb with step = B, and profile_flat_up_to and profile_largest_batch_size
    (docs/records.md). Cached in <mlruns>/profiles/ where a store of the study
    lives in <mlruns> (two remote stores: no folder is made here)."""
    from ..profile.cache import CACHE_FOLDER
    from ..profile.measure import profile_study
    from ..profile.words import to_csv

    local = config.storage is None or (tracker is not None and config.tracking_uri is None)
    recorded = study.user_attrs.get("profile")
    profile = profile_study(config, data, Path(mlruns) / CACHE_FOLDER if local else None, cores=cores,
                            recorded=recorded)
    if recorded is not None and recorded.get("key_sha256") == profile["key_sha256"]:
        return recorded  # a resumed study: recorded and logged when it began
    study.set_user_attr("profile", profile)
    if tracker is None:
        return profile
    folder = temporary_folder("sgdtune-profile-")
    (folder / "profile.json").write_text(json.dumps(profile, indent=1, sort_keys=True) + "\n")
    (folder / "profile.csv").write_text(to_csv(profile))
    for name in ("profile.json", "profile.csv"):
        tracker.log_artifact(parent_run, folder / name, "profile")
    for b, s, e, m in zip(profile["batch_size"], profile["seconds_per_update"], profile["examples_per_second"],
                          profile["peak_mem_mb"]):
        tracker.log_epoch(parent_run, {"profile_s_per_update": s, "profile_examples_per_s": e,
                                       "profile_peak_mem_mb": m}, step=b)
    tracker.log_epoch(parent_run, {"profile_flat_up_to": profile["flat_up_to"],
                                   "profile_largest_batch_size": profile["largest_batch_size"]}, step=0)
    return profile


def _stopped_by(error: BaseException, storage: optuna.storages.BaseStorage, name: str, study_id: int,
                storage_url: str) -> BaseException:
    """What stopped the study, as the CLI says it in one line: StudyGone when the study was
    deleted (or replaced) under this process (the storage's KeyError "Record does not exist."
    from wherever it was read), a StoreError for a storage that refused a write (study/reclaim.py),
    else the error itself."""
    if not isinstance(error, KeyboardInterrupt):
        try:
            if not study_exists(storage, name, study_id):
                return StudyGone(name)
        except Exception:  # noqa: BLE001 - the storage cannot be read at all: said by the error itself
            pass
    return as_store_error(error, storage_url)


def _close(session: Session, status: str, failure: BaseException | None) -> None:
    """End the study's runs, make every MLflow write, and take this process off the study's
    record. After a failure, nothing here may replace it: a storage that refused a write (or
    a study deleted under this process) is not written again, and a second error is dropped
    (the first one is what the CLI says)."""
    storage_ok = not isinstance(failure, (StoreError, StudyGone))
    study, tracker = session.study, session.tracker
    try:
        if tracker is not None:
            if failure is not None:  # a trial whose end never came (its study deleted under it)
                tracker.fail_open_runs(f"the study stopped: {str(failure).splitlines()[0] if str(failure) else ''}"
                                       if not isinstance(failure, KeyboardInterrupt) else "interrupted")
            metrics = {}
            if storage_ok:
                metrics = study_metrics(study.get_trials(deepcopy=False), study.user_attrs.get("n_train", math.inf))
            tracker.end_parent_run(session.parent_run, metrics, status=status)
            tracker.close()  # every write made
            if storage_ok:
                session.record_location()
        if storage_ok:
            with study_lock(session.storage_url):
                leave(study)
    except Exception:
        if failure is None:
            raise


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
    copy = temporary_folder("sgdtune-experiment-") / Path(path).name
    copy.write_text(redact_url(text))
    return copy


def temporary_folder(prefix: str) -> Path:
    """A temporary folder for files the writer process logs as artifacts (it copies them
    later), removed at exit, after run_study has closed its tracker."""
    import atexit
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, True)
    return folder


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
