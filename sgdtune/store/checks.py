"""Both stores checked before a study writes anything: each local file can be created or
written and holds its own store's tables (or none), the two are not one file, a tracking
server answers, and the MLflow store holds the study's parent run where the Optuna study
records one. Every problem is an InputError naming the flag, what is wrong and what to do
(passwords masked); nothing is created or changed in either store.

Layer: store (the stores; the only MLflow code; docs/architecture.md).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import InputError
from ..redact import redact
from .piped_reads import PipedReader
from .run_reader import holds_run
from .tracking import sqlite_path

if TYPE_CHECKING:
    import optuna

PROBE_TIMEOUT_S = 5  # a tracking server's /health probe: per try
PROBE_ATTEMPTS = 2
SQLITE_HEADER = b"SQLite format 3\x00"


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
    if parent and not holds_run(tracking_uri, parent, PipedReader):  # the writer process has MLflow imported
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
