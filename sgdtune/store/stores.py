"""Where a study is stored: the default paths under mlruns/, the Optuna storage behind a
URL, and the pair of locations a study uses. No torch import: the report and the UI use it.

Embedded default (relative to the working directory): mlruns/optuna.journal for Optuna,
sqlite:///mlruns/mlflow.db for MLflow, mlruns/artifacts/ for MLflow's artifacts.

Both stores are opened and checked before a study writes anything (`open_storage`,
`check_tracking`): every problem a store can have (read-only, a folder, unreachable, a
wrong password, an unknown scheme, a damaged journal, an MLflow store that lost the study's
runs) is an InputError naming the flag, what is wrong and what to do; passwords masked.
A finished study is opened for reading the same way (`load_study`, `open_runs`: the report
and `load_model`).

Layer: store (the stores; the only MLflow code; docs/architecture.md).
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from ..names import check_name
from ..redact import redact, redact_url
from .run_reader import RunReader, holds_run, store_exists
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
PROBE_TIMEOUT_S = 5  # a tracking server's /health probe: per try
PROBE_ATTEMPTS = 2
SQLITE_HEADER = b"SQLite format 3\x00"
JOURNAL_RECORD = b'{"op_code":'  # how each line Optuna's journal backend writes begins


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
    return _open_journal(Path(url))


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


def writable_file(flag: str, path: Path, shown: str, example: str = "optuna.journal", create: bool = True) -> None:
    """Check that `path` can be a store's file: not a folder, in a folder that exists (made
    here unless not `create`: then its nearest existing ancestor must be a writable folder)
    and can be written (SQLite and the journal write beside the file), itself writable."""
    if path.is_dir():
        raise InputError(flag, f"names a folder, not a file; give a file inside it (e.g. {Path(path, example)})",
                         repr(redact(shown)))
    folder = path.parent
    if create:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(flag, f"cannot create its folder {str(folder)!r} ({e.strerror}); "
                             "choose a place you can write to", repr(redact(shown))) from None
    else:
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise InputError(flag, f"cannot have its folder created: {str(folder)!r} is a file; choose a place "
                             "you can write to", repr(redact(shown)))
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.R_OK | os.W_OK)):
        where = path if path.exists() else folder
        raise InputError(flag, f"is read-only ({str(where)!r} cannot be written); choose a place you can write "
                         "to, or fix its permissions", repr(redact(shown)))


# -- both stores, before either is written ------------------------------------------------------

# Tables that say whose an SQLite database is (both use alembic_version, so one file cannot
# serve as both stores).
OPTUNA_TABLES = frozenset({"studies", "trials", "version_info"})
MLFLOW_TABLES = frozenset({"experiments", "runs"})


def check_before_writing(storage_url: str, tracking_uri: str | None) -> None:
    """Both stores' local files, checked read-only before either store is opened (opening
    creates files and tables): each can be created or written, an existing SQLite file holds
    its own store's tables (or none), and the two are not one file. InputError naming the
    flag otherwise; nothing is created or changed."""
    storage_file = sqlite_path(storage_url) if "://" in storage_url else Path(storage_url)
    tracking_file = sqlite_path(tracking_uri) if tracking_uri else None
    if storage_file is not None and tracking_file is not None and _same_file(storage_file, tracking_file):
        raise InputError("--storage", "must be another file than the MLflow store (--tracking-uri): each store "
                         "keeps its own tables and schema version (e.g. mlruns/optuna.journal and "
                         "sqlite:///mlruns/mlflow.db)", f"{redact(storage_url)!r} for both")
    if storage_file is not None:
        writable_file("--storage", storage_file, storage_url, "optuna.db" if "://" in storage_url else
                      "optuna.journal", create=False)
        if "://" in storage_url:  # a journal's content is checked (read-only) as it is opened
            _sqlite_of_its_kind("--storage", storage_file, storage_url, OPTUNA_TABLES, "an Optuna storage",
                                MLFLOW_TABLES, "the MLflow store (--tracking-uri)")
    if tracking_file is not None:
        try:
            writable_file("--tracking-uri", tracking_file, tracking_uri, "mlflow.db", create=False)
        except InputError as e:  # as check_tracking words it: what MLflow needs, and why this one is not
            raise InputError("--tracking-uri", "must be a tracking store MLflow can open",
                             f"{redact(tracking_uri)!r} (it {e.rule})") from None
        _sqlite_of_its_kind("--tracking-uri", tracking_file, tracking_uri, MLFLOW_TABLES, "an MLflow store",
                            OPTUNA_TABLES, "an Optuna storage (--storage)")


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _sqlite_of_its_kind(flag: str, path: Path, shown: str, own: frozenset[str], what: str,
                        other: frozenset[str], other_what: str) -> None:
    """An existing, non-empty file at `path` is an SQLite database holding `own` tables, or none."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        header = f.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise InputError(flag, f"must be an SQLite database to serve as {what}; this file is something else "
                         "(not overwritten); give a new file or the store's own", repr(redact(shown)))
    import sqlite3

    try:  # read-only, by URI: no journal or WAL file is created beside it
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
        try:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            db.close()
    except sqlite3.DatabaseError as e:
        raise InputError(flag, f"must be an SQLite database to serve as {what}; this one cannot be read ({e})",
                         repr(redact(shown))) from None
    if tables and not own <= tables:
        whose = f"it is {other_what}" if other <= tables else f"it holds other tables: {', '.join(sorted(tables))}"
        raise InputError(flag, f"must be its own SQLite database to serve as {what}, or a new file; {whose} "
                         "(left as it was)", repr(redact(shown)))


# -- the journal file -------------------------------------------------------------------------


def _open_journal(path: Path) -> optuna.storages.JournalStorage:
    import optuna

    writable_file("--storage", path, str(path))
    lock = optuna.storages.journal.JournalFileOpenLock(str(path))
    if path.exists() and path.stat().st_size and not _last_record_whole(path):
        # The last record is torn, or being written: look again, and repair, while no process
        # writes (Optuna's own lock).
        lock.acquire()
        try:
            repair_journal(path)
        finally:
            lock.release()
    try:
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path), lock_obj=lock))
    except (ValueError, KeyError, TypeError, IndexError) as e:
        # Damage before the last line (only now read in full: Optuna's replay found it), or
        # records that are JSON but not Optuna's.
        _journal_damage(path.read_bytes(), path)
        raise InputError("--storage", f"must be an Optuna journal file; its records cannot be replayed ({e!r}); "
                         "pass another --storage for a new study", repr(str(path))) from None


def _last_record_whole(path: Path, chunk: int = 1 << 20) -> bool:
    """The file's last line is a JSON record ended by its newline (reads the file's end only)."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - chunk))
        tail = f.read()
    if not tail.endswith(b"\n"):
        return False
    start = tail.rfind(b"\n", 0, len(tail) - 1)
    if start < 0 and size > len(tail):  # one record longer than the chunk: read it all
        return _last_record_whole(path, size + 1)
    return _is_record(tail[start + 1:-1])


def _journal_damage(data: bytes, path: Path) -> tuple[int, bool] | None:
    """None if every line is a whole JSON record; else (offset where the last, torn, record
    starts, whether that record is complete JSON missing only its newline). Damage earlier in
    the file, or a file that is not a journal at all, is an InputError."""
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    if tail:
        lines.append(tail)
    offset = 0
    for number, line in enumerate(lines, start=1):
        last = number == len(lines)
        if not _is_record(line):
            if number == 1 and not line.startswith(JOURNAL_RECORD):
                what = "an SQLite database: pass it as sqlite:///PATH" if data.startswith(SQLITE_HEADER) else \
                    "its first line is not an Optuna journal record"
                raise InputError("--storage", f"must be an Optuna journal file; this one is not ({what}); or pass "
                                 "another --storage for a new study", repr(str(path)))
            if not last or not line.startswith(b"{"):
                raise InputError(
                    "--storage",
                    f"must be an Optuna journal file of one JSON record per line; line {number} of {len(lines)} "
                    "is damaged and is not the last, so sgdtune cannot tell what was lost: restore a copy of the "
                    "file, or pass another --storage for a new study", repr(str(path)))
            return offset, False
        if last and tail:  # a whole record, but its newline never reached the file
            return offset, True
        offset += len(line) + 1
    return None


def _is_record(line: bytes) -> bool:
    import json

    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def repair_journal(path: Path) -> Path:
    """Cut a torn last record off a journal (or end a whole one with its newline), keeping
    the original beside it as <name>.torn-<UTC time>; says so on stderr. Returns the copy."""
    data = path.read_bytes()
    damage = _journal_damage(data, path)
    if damage is None:
        return path
    offset, whole = damage
    backup = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    shutil.copy2(path, backup)
    with open(path, "r+b") as f:
        if whole:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        else:
            f.truncate(offset)
        f.flush()
        os.fsync(f.fileno())
    done = ("ended its last record, which had lost its newline" if whole else
            f"cut off its last record, torn by an interrupted write ({len(data) - offset} bytes)")
    print(f"sgdtune: repaired the Optuna journal {path}: {done}; the original is kept as {backup}", file=sys.stderr)
    return backup


# -- the MLflow store -------------------------------------------------------------------------


def check_tracking(tracking_uri: str, storage: optuna.storages.BaseStorage, study_name: str,
                   storage_url: str) -> None:
    """The MLflow store can be reached, and holds the study's parent run if the Optuna
    study records one (a store replaced or emptied is refused, not silently started
    afresh). InputError naming --tracking-uri otherwise. Writes nothing to either store."""
    scheme = tracking_uri.partition("://")[0].lower() if "://" in tracking_uri else ""
    if scheme in ("http", "https"):
        probe_server(tracking_uri)
    elif sqlite_path(tracking_uri) is not None:
        try:
            writable_file("--tracking-uri", sqlite_path(tracking_uri), tracking_uri, "mlflow.db")
        except InputError as e:  # the rule the writer process gives for a store it cannot open, and why
            raise InputError("--tracking-uri", "must be a tracking store MLflow can open",
                             f"{redact(tracking_uri)!r} (it {e.rule})") from None
    recorded = next((s.user_attrs for s in storage.get_all_studies() if s.study_name == study_name), {})
    parent = recorded.get("mlflow_parent_run_id")
    if parent and not holds_run(tracking_uri, parent):
        at = recorded.get("tracking_uri")
        where = f" (it recorded {at!r})" if at and at != redact(tracking_uri) else ""
        raise InputError(
            "--tracking-uri",
            f"must hold the MLflow runs of study {study_name!r}: its Optuna storage {redact(storage_url)!r} records "
            f"the parent run {parent}{where}, which this store does not hold (emptied, replaced or another store); "
            "point --tracking-uri at the store that holds it, or start a new study with --study-name NEW",
            repr(redact(tracking_uri)))


def probe_server(tracking_uri: str) -> None:
    """GET <server>/health: any HTTP answer will do (a proxy may want a login); no answer in
    PROBE_ATTEMPTS tries of PROBE_TIMEOUT_S is an InputError."""
    import ssl
    import urllib.error
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(tracking_uri)
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        raise InputError("--tracking-uri", "must be a server address http://HOST:PORT with a numeric port",
                         repr(redact(tracking_uri))) from None
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port else "")
    url = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    reason = "no answer"
    for attempt in range(PROBE_ATTEMPTS):
        try:
            with urllib.request.urlopen(url, timeout=PROBE_TIMEOUT_S):
                return
        except urllib.error.HTTPError:
            return
        except urllib.error.URLError as e:
            if isinstance(e.reason, ssl.SSLError):
                return  # it answered; MLflow's own TLS settings decide the rest
            reason = str(getattr(e.reason, "strerror", None) or e.reason)
        except (OSError, ValueError) as e:  # a timeout, a malformed address
            reason = str(e) or type(e).__name__
        if attempt + 1 < PROBE_ATTEMPTS:
            time.sleep(1)
    raise InputError("--tracking-uri", f"cannot connect to the MLflow server: {reason} ({url}, {PROBE_ATTEMPTS} tries "
                     f"of {PROBE_TIMEOUT_S} s); start `mlflow server` or fix the address", repr(redact(tracking_uri)))


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
