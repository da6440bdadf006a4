"""Where a study is stored: the default paths under mlruns/, the Optuna storage behind a
URL, and the pair of locations a study uses. No torch import: the report and the UI use it.

Embedded default (relative to the working directory): mlruns/optuna.journal for Optuna,
sqlite:///mlruns/mlflow.db for MLflow, mlruns/artifacts/ for MLflow's artifacts.

`open_storage` opens Optuna's storage (an RDB, a journal file: store/journal.py, or the gRPC
proxy) and checks it: every problem a store can have (read-only, a folder, unreachable, a
wrong password, an unknown scheme, a damaged journal) is an InputError naming the flag, what
is wrong and what to do; passwords masked. What is checked before a study writes anything
is in store/checks.py. A finished study is opened for reading the same way (`load_study`,
`open_runs`: the report and `load_model`).

Layer: store (the stores; the only MLflow code; docs/architecture.md).
"""

from __future__ import annotations

import random
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from ..names import check_name
from ..redact import redact, redact_url
from .checks import probe_server, writable_file
from .journal import open_journal
from .run_reader import RunReader, store_exists
from .tracking import Tracker, default_tracking_uri, sqlite_path

if TYPE_CHECKING:
    import optuna

    from ..config import ExperimentConfig

MLRUNS = Path("mlruns")


def default_storage_url(root: Path | str = MLRUNS) -> str:
    return str(Path(root) / "optuna.journal")


def locations(config: ExperimentConfig, mlruns: str | Path = MLRUNS) -> tuple[str, str]:
    """(Optuna storage URL, MLflow tracking URI): the flags', else the embedded defaults."""
    return config.storage or default_storage_url(mlruns), config.tracking_uri or default_tracking_uri(mlruns)


# Optuna storages by URL scheme ('+driver' allowed: postgresql+psycopg://). A journal file is
# given as a plain path.
RDB_SCHEMES = ("sqlite", "postgresql", "mysql")
CONNECT_TIMEOUT_S = 10  # a database that does not answer: refused after this long, not hung
SCHEMA_ATTEMPTS = 6  # tries at creating Optuna's tables while other processes create them too


def open_storage(url: str, heartbeat: int | None = None,
                 tracking_uri: str | None = None) -> optuna.storages.BaseStorage:
    """A SQLAlchemy URL (sqlite://, postgresql://, mysql://) or a journal file path, opened
    and checked; any problem is an InputError naming --storage (password masked).

    The journal file is the embedded default: Optuna recommends it for several worker
    processes on one machine, where SQLite meets 'database is locked'. Heartbeats need an
    RDB storage: a trial silent for two intervals is failed, its MLflow run ended FAILED,
    and its parameters queued again (Optuna's RetryHeartbeatStaleTrialCallback).
    """
    if url.startswith(GRPC_SCHEME):
        return open_grpc_storage(url, heartbeat)
    if "://" in url:
        scheme = url.partition("://")[0].lower()
        if scheme.split("+")[0] in RDB_SCHEMES:
            return _open_rdb(url, scheme.split("+")[0], heartbeat, tracking_uri)
        raise InputError("--storage", "must be a journal file path or a database URL with a scheme among "
                         f"{', '.join(s + '://' for s in RDB_SCHEMES)} (e.g. sqlite:///mlruns/optuna.db)",
                         repr(redact(url)))
    if heartbeat is not None:
        raise InputError(
            "--heartbeat", "needs an RDB storage (--storage sqlite:///FILE or postgresql://...)",
            f"the journal file {url!r} (local --workers are supervised without heartbeats)",
        )
    return open_journal(Path(url))


def _open_rdb(url: str, kind: str, heartbeat: int | None, tracking_uri: str | None) -> optuna.storages.RDBStorage:
    import optuna
    import sqlalchemy.exc

    kwargs: dict = {}
    if kind == "sqlite":
        database = sqlite_path(url)  # sqlite:///rel/path, sqlite:////abs/path; sqlite:// is in memory
        if database is not None:
            writable_file("--storage", database, url, "optuna.db")
    elif kind == "postgresql" and "connect_timeout" not in url:
        kwargs["engine_kwargs"] = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    if heartbeat is not None:
        kwargs.update(heartbeat_interval=heartbeat, grace_period=2 * heartbeat,
                      heartbeat_stale_trial_callback=StaleTrialHandler(tracking_uri))
    for attempt in range(1, SCHEMA_ATTEMPTS + 1):
        try:
            with warnings.catch_warnings():
                # Heartbeats are "experimental" in Optuna: a note for sgdtune's code, not its users.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, **kwargs)
        except sqlalchemy.exc.SQLAlchemyError as e:
            if attempt < SCHEMA_ATTEMPTS and _schema_race(e):
                # Several processes created the tables at once (PostgreSQL: UniqueViolation on
                # CREATE TYPE): one won; the others try again, at different moments.
                time.sleep(random.uniform(0.2, 0.6) * attempt)
                continue
            raise InputError("--storage", _rdb_problem(e, kind), repr(redact(url))) from None
        except ImportError:
            raise InputError("--storage", f"needs a database driver for {kind}:// that is not installed "
                             "(PostgreSQL: pip install -e '.[postgres]')", repr(redact(url))) from None
        except (ValueError, RuntimeError) as e:  # a URL SQLAlchemy cannot parse; an incompatible schema
            raise InputError("--storage", f"must be a database URL Optuna can open ({redact(str(e))})",
                             repr(redact(url))) from None
    raise AssertionError("unreachable")


def _schema_race(error: Exception) -> bool:
    import sqlalchemy.exc

    text = str(error).lower()
    return (isinstance(error, sqlalchemy.exc.IntegrityError) or "already exists" in text
            or "duplicate" in text or "deadlock" in text)


def _rdb_problem(error: Exception, kind: str) -> str:
    """What went wrong opening a database, and what to do: the rule of an InputError."""
    detail = str(getattr(error, "orig", None) or error).strip()
    text = detail.lower()
    if "password authentication failed" in text or "access denied" in text or "no password supplied" in text:
        return ("cannot connect: authentication failed (the password is masked here); check the user and "
                "password, best given in ~/.pgpass or PGPASSWORD rather than in the URL")
    if "connection refused" in text:
        return "cannot connect: connection refused; is the database server running and listening at that host:port?"
    if "timeout" in text or "timed out" in text:
        return f"cannot connect: no answer within {CONNECT_TIMEOUT_S} s; check the host, port and firewall"
    if "does not exist" in text and "database" in text:
        return "cannot connect: the database does not exist; create it first (createdb NAME)"
    if "readonly" in text or "read-only" in text:
        return "is read-only; choose a file in a folder you can write to"
    if "file is not a database" in text:
        return "must be an SQLite database; this file is something else (a journal file? pass it as a plain path)"
    if "unable to open database file" in text:
        return "cannot open the SQLite file; check that its folder exists and is writable"
    first = redact(detail.splitlines()[0] if detail else type(error).__name__)
    return f"cannot be opened as an Optuna {kind} storage ({first})"


class StaleTrialHandler:
    """Optuna's heartbeat_stale_trial_callback for a trial whose worker stopped sending
    heartbeats: its MLflow run is ended FAILED, then Optuna's retry callback queues its
    parameters."""

    def __init__(self, tracking_uri: str | None, max_retry: int = 3):
        import optuna

        self.tracking_uri = tracking_uri
        with warnings.catch_warnings():  # "experimental" since Optuna 2.8: see _open_rdb
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if self.tracking_uri:  # a worker lost early in a trial may not have recorded its run id
            tracker = Tracker(self.tracking_uri, study.study_name)
            run_id = trial.user_attrs.get("mlflow_run_id") or tracker.find_trial_run(trial.number)
            if run_id:
                reason = "worker stopped sending heartbeats (killed or lost); the trial is run again"
                tracker.fail_stale_run(run_id, reason)
        self.retry(study, trial)


# -- a finished study and its runs, for reading (the report, load_model) ----------------------


def load_study(storage: str, study_name: str | None) -> optuna.Study:
    """The named study, or the only one in the storage. Raises InputError naming the flag
    (also for a name that cannot be a folder: reports/<name>/)."""
    import optuna

    if study_name is not None:
        check_name(study_name, "--study-name")
    if "://" not in storage and not Path(storage).is_file():
        raise InputError("--storage", "must be an existing Optuna journal file or a database URL",
                         f"{storage!r} (run `python -m sgdtune.study` first, or pass --storage)")
    if sqlite_path(storage) is not None and not sqlite_path(storage).is_file():
        raise InputError("--storage", "must name an existing SQLite file", repr(storage))
    names = sorted(optuna.get_all_study_names(storage=open_storage(storage)))
    if not names:
        raise InputError("--storage", "must hold a study",
                         f"{redact_url(storage)!r}, which holds none (run `python -m sgdtune.study` first)")
    listed = ", ".join(map(repr, names))
    if study_name is None:
        if len(names) > 1:
            raise InputError("--study-name", f"required when the storage holds several studies; one of {listed}",
                             "none")
        study_name = check_name(names[0], "--study-name")  # a study named by another tool
    if study_name not in names:
        raise InputError("--study-name", f"must be one of {listed}", repr(study_name))
    return optuna.load_study(study_name=study_name, storage=open_storage(storage))


def open_runs(study: optuna.Study, tracking_uri: str) -> RunReader | None:
    """A reader of the study's MLflow store; None for a study run with --no-tracking.
    Raises InputError when the store is missing or does not hold the study's parent run
    (nothing is created in a wrong store)."""
    parent_id = study.user_attrs.get("mlflow_parent_run_id")
    if parent_id is None:
        return None
    recorded = study.user_attrs.get("tracking_uri")
    hint = f"; the study recorded its runs at {recorded!r}" if recorded and recorded != tracking_uri else ""
    if not store_exists(tracking_uri):
        raise InputError("--tracking-uri", "must name an existing MLflow store", f"{redact_url(tracking_uri)!r}{hint}")
    if tracking_uri.startswith(("http://", "https://")):
        probe_server(tracking_uri)  # a server that does not answer: refused in seconds
    reader = RunReader(tracking_uri)
    if reader.find_run(parent_id) is None:
        raise InputError("--tracking-uri", f"must hold the study's parent run {parent_id}",
                         f"{redact_url(tracking_uri)!r}{hint}")
    return reader


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
        # gRPC reads "HOST:PORT": an IPv6 address goes in brackets (grpc://[::1]:13000)
        host = f"[{host.strip('[]')}]" if ":" in host else host
        storage = optuna.storages.GrpcStorageProxy(host=host, port=int(port))
    try:
        storage.wait_server_ready(timeout=wait_s)
    except ConnectionError:
        storage.close()
        raise InputError("--storage", f"no Optuna storage proxy answered within {wait_s:g} s; start one with "
                         "`sgdtune storage-proxy --storage postgresql://... --port PORT`", repr(url)) from None
    return storage
