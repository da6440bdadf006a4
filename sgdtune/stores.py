"""Where a study is stored: the default paths under mlruns/, the Optuna storage behind a
URL, and the pair of locations a study uses. No torch import: the report and the UI use it.

Embedded default (relative to the working directory): mlruns/optuna.journal for Optuna,
sqlite:///mlruns/mlflow.db for MLflow, mlruns/artifacts/ for MLflow's artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .errors import InputError
from .tracking import Tracker, default_tracking_uri

if TYPE_CHECKING:
    import optuna

    from .config import ExperimentConfig

MLRUNS = Path("mlruns")


def default_storage_url(root: Path | str = MLRUNS) -> str:
    return str(Path(root) / "optuna.journal")


def locations(config: ExperimentConfig, mlruns: str | Path = MLRUNS) -> tuple[str, str]:
    """(Optuna storage URL, MLflow tracking URI): the flags', else the embedded defaults."""
    return config.storage or default_storage_url(mlruns), config.tracking_uri or default_tracking_uri(mlruns)


def open_storage(url: str, heartbeat: int | None = None,
                 tracking_uri: str | None = None) -> optuna.storages.BaseStorage:
    """A SQLAlchemy URL (sqlite://, postgresql://, ...) or a journal file path.

    The journal file is the embedded default: Optuna recommends it for several worker
    processes on one machine, where SQLite meets 'database is locked'. Heartbeats need an
    RDB storage: a trial silent for two intervals is failed, its MLflow run ended FAILED,
    and its parameters queued again (Optuna's RetryFailedTrialCallback).
    """
    import optuna

    if url.startswith(GRPC_SCHEME):
        return open_grpc_storage(url, heartbeat)
    if "://" in url:
        if heartbeat is None:
            return optuna.storages.RDBStorage(url)
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=heartbeat,
            grace_period=2 * heartbeat,
            failed_trial_callback=StaleTrialHandler(tracking_uri),
        )
    if heartbeat is not None:
        raise InputError(
            "--heartbeat", "needs an RDB storage (--storage sqlite:///FILE or postgresql://...)",
            f"the journal file {url!r} (local --workers are supervised without heartbeats)",
        )
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = optuna.storages.journal.JournalFileOpenLock(str(path))
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path), lock_obj=lock))


class StaleTrialHandler:
    """Optuna's failed_trial_callback for a trial whose worker stopped sending heartbeats:
    its MLflow run is ended FAILED, then Optuna's retry callback queues its parameters."""

    def __init__(self, tracking_uri: str | None, max_retry: int = 3):
        import optuna

        self.tracking_uri = tracking_uri
        self.retry = optuna.storages.RetryFailedTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.tracking_uri:  # a worker lost early in a trial may not have recorded its run id
            tracker = Tracker(self.tracking_uri, study.study_name)
            run_id = trial.user_attrs.get("mlflow_run_id") or tracker.find_trial_run(trial.number)
            if run_id:
                reason = "worker stopped sending heartbeats (killed or lost); the trial is run again"
                tracker.fail_stale_run(run_id, reason)
        self.retry(study, trial)


GRPC_SCHEME = "grpc://"


def open_grpc_storage(url: str, heartbeat: int | None = None,
                      wait_s: float = 10.0) -> optuna.storages.BaseStorage:
    """A client of Optuna's gRPC storage proxy at grpc://HOST:PORT (`sgdtune storage-proxy`).

    Optuna's proxy carries no heartbeats (its client is not a heartbeat storage), so
    `--heartbeat` is refused here; local `--workers` are supervised without them. Waits up to
    `wait_s` seconds for the proxy to answer.
    """
    host, _, port = url.removeprefix(GRPC_SCHEME).rstrip("/").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError("--storage", "a gRPC proxy URL must be grpc://HOST:PORT (e.g. grpc://127.0.0.1:13000)",
                         repr(url))
    if heartbeat is not None:
        raise InputError("--heartbeat", "is not carried by Optuna's gRPC storage proxy; drop --heartbeat, or point "
                         "workers at the database itself (--storage postgresql://...)", f"--storage {url}")
    import importlib.util
    import warnings

    import optuna

    if importlib.util.find_spec("grpc") is None:
        raise InputError("--storage", "grpc:// needs grpcio: pip install 'sgdtune[grpc]'", repr(url))
    with warnings.catch_warnings():  # the proxy is marked experimental; it is chosen knowingly here
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.GrpcStorageProxy(host=host.strip("[]"), port=int(port))
    try:
        storage.wait_server_ready(timeout=wait_s)
    except ConnectionError:
        storage.close()
        raise InputError("--storage", f"no Optuna storage proxy answered within {wait_s:g} s; start one with "
                         "`sgdtune storage-proxy --storage postgresql://... --port PORT`", repr(url)) from None
    return storage
