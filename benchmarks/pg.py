"""A throw-away PostgreSQL cluster on a free loopback port for the storage load benchmark
(benchmarks/storage_load.py): the steps of the tests' `postgres` fixture (tests/conftest.py),
which stays on its own so that the tests do not depend on this folder being importable.

Run as the postgres user when started as root (PostgreSQL refuses root); password login
over TCP for the role `sgd`, trust over the cluster's own Unix socket for `postgres`.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PASSWORD = "Pw-s3cret-41f9"  # a throw-away cluster's; the same as the tests' (tests/conftest.py)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def available() -> bool:
    return all(pg_bin(name) for name in ("initdb", "pg_ctl", "psql"))


class Cluster:
    """`with Cluster() as pg: url = pg.db("optuna")`: a fresh cluster, removed on exit."""

    def __init__(self, max_connections: int = 100):
        self.max_connections = max_connections
        self.root = self.data = None
        self.port = 0
        self.made: list[str] = []
        self.as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def start(self) -> Cluster:
        initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if not (initdb and pg_ctl and pg_bin("psql")):
            raise RuntimeError("PostgreSQL (initdb, pg_ctl, psql) is not installed")
        self.root = Path(tempfile.mkdtemp(prefix="sgdtune-pg-"))  # pytest's tmp dirs are closed to other users
        os.chmod(self.root, 0o777)
        self.data, self.port = self.root / "data", free_port()
        subprocess.run([*self.as_pg, initdb, "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                        "--auth-host=scram-sha-256", "-E", "UTF8"], check=True, capture_output=True)
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
                   f"-c max_connections={self.max_connections}")
        subprocess.run([*self.as_pg, pg_ctl, "-D", str(self.data), "-w", "-l", str(self.root / "log"), "start",
                        "-o", options], check=True, capture_output=True)
        self.sql(f"CREATE ROLE sgd LOGIN PASSWORD '{PASSWORD}'")
        return self

    def sql(self, statement: str) -> str:
        """Run one statement as the superuser; its output, unaligned, without headers."""
        out = subprocess.run([*self.as_pg, pg_bin("psql"), "-h", str(self.root), "-p", str(self.port), "-U", "postgres",
                              "-v", "ON_ERROR_STOP=1", "-At", "-c", statement], check=True, capture_output=True,
                             text=True)
        return out.stdout.strip()

    def db(self, name: str) -> str:
        """The URL (with password) of database `name`, created on first use."""
        if name not in self.made:
            self.sql(f"CREATE DATABASE {name} OWNER sgd")
            self.made.append(name)
        return f"postgresql://sgd:{PASSWORD}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.data is not None:
            subprocess.run([*self.as_pg, pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                           capture_output=True)
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
