"""One process at a time starts a study: the check of its configuration and the record of it,
`--fresh`'s deletion, the reclaiming of dead processes' trials, the process's entry in the
study's record of processes (its sampler's seed) and the parent MLflow run happen under one
lock of the Optuna storage. Processes started together then never mix two configurations,
never reclaim a trial twice, and each draws its own parameters (strategy.open_study).

The lock, by storage:
- a journal file or an SQLite database: `flock` on `<file>.start-lock` beside it (the
  kernel releases it when its process dies, kill -9 included: nothing stale is left, unlike
  Optuna's own journal lock file, which another process waits out for 30 s);
- PostgreSQL: a session advisory lock (`pg_try_advisory_lock`) on a connection of its own,
  released with it; MySQL: `GET_LOCK`;
- Optuna's gRPC proxy: none (the proxy holds the database, a client cannot lock it): start
  the processes of one study one after another there.
A process waits up to WAIT_S for the lock; its holders keep it for the few seconds a start
takes.

Layer: store (the stores; the only MLflow code; docs/architecture.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputError
from ..redact import redact

WAIT_S = 300.0  # longer than any start takes (MLflow's parent run included)
POLL_S = 0.05
SUFFIX = ".start-lock"
KEY = 0x5367_6474  # the PostgreSQL advisory lock's key ("Sgdt"): one lock for the database's studies


@contextmanager
def study_lock(storage_url: str, wait_s: float = WAIT_S) -> Iterator[None]:
    """Hold the start lock of the storage at `storage_url` for the block (see the module)."""
    scheme = storage_url.partition("://")[0].lower().split("+")[0] if "://" in storage_url else ""
    if scheme == "":
        path = Path(storage_url)
    elif scheme == "sqlite" and storage_url.partition(":///")[2] not in ("", ":memory:"):
        path = Path(storage_url.partition(":///")[2].partition("?")[0])
    elif scheme in ("postgresql", "mysql"):
        with _database_lock(storage_url, scheme, wait_s):
            yield
        return
    else:  # grpc://, an in-memory SQLite: nothing to lock (see the module)
        yield
        return
    with file_lock(path, storage_url, wait_s):
        yield


@contextmanager
def file_lock(beside: Path, shown: str, wait_s: float = WAIT_S) -> Iterator[None]:
    """Hold an flock on `<beside>.start-lock` (made if missing, with its folder) for the
    block; `shown` names the store in the error raised after `wait_s` seconds of waiting.
    Where the file cannot be made (a read-only folder), the block runs unlocked: the store
    itself is refused there."""
    import fcntl

    path = beside.with_name(beside.name + SUFFIX)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # a read-only folder: the store's own open says what is wrong, in one line
        yield
        return
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    _timed_out(shown, wait_s)
                time.sleep(POLL_S)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def _database_lock(url: str, scheme: str, wait_s: float) -> Iterator[None]:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    take, give = (("SELECT pg_try_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)") if scheme == "postgresql"
                  else ("SELECT GET_LOCK(CAST(:k AS CHAR), 0)", "SELECT RELEASE_LOCK(CAST(:k AS CHAR))"))
    try:
        with engine.connect() as conn:
            deadline = time.monotonic() + wait_s
            while not conn.execute(sqlalchemy.text(take), {"k": KEY}).scalar():
                conn.rollback()  # not "idle in transaction" while it waits
                if time.monotonic() > deadline:
                    _timed_out(url, wait_s)
                time.sleep(POLL_S)
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text(give), {"k": KEY})
                conn.commit()
    finally:
        engine.dispose()


def _timed_out(shown: str, wait_s: float) -> None:
    raise InputError("--storage", f"another process has held the lock under which a study starts for over {wait_s:g} s "
                     "(a start takes seconds); find that process, or try again", repr(redact(shown)))
