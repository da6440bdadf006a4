"""Shared fixtures. Every test runs offline: MLflow telemetry is off before anything imports it."""

import os

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "1"
# One torch intra-op thread per process (this one and the studies it starts), unless set: `-n auto`
# runs a worker per core, and torch's default of a thread per core in each process makes the
# threads wait on each other at every op (sgdtune/threads.py). Measured on 2 cores beside other
# jobs: 800 full-batch updates of the edge-of-stability MLP took 30 s of CPU on 2 threads, 3 s on 1.
# The tests of "auto" itself remove it (tests/unit/test_threads.py).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import signal  # noqa: E402

# A suite started in the background by a shell without job control inherits SIGINT ignored,
# and an ignored signal stays ignored across exec: the processes of the Ctrl-C tests would
# never see theirs. A handler here is reset to the default in every process the tests start.
signal.signal(signal.SIGINT, signal.default_int_handler)

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXPERIMENTS = ROOT / "experiments"


# -- running in parallel (pytest-xdist: `python -m pytest -n auto`) -------------------------------


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker per core this process may run on (not the machine's count of cores)."""
    return max(1, len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


PER_WORKER = {"reaper", "postgres", "mlflow_server"}  # session fixtures each worker makes for itself


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups (--dist loadgroup, in pyproject.toml)
def pytest_collection_modifyitems(config, items) -> None:
    """Tests that share one of our fixtures wider than a test run on one worker, so that it is
    made once: a session fixture (a shared study) joins every test using it, a module fixture (a
    study run once, a browser) the tests of its file, and so on transitively. The servers
    (PER_WORKER) are not joined on: each worker starts its own in seconds, where joining every
    test that uses PostgreSQL or the mlflow server would put the slowest third of the suite on
    one worker. The other tests are spread one by one."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    shares = []
    for item in items:
        info = getattr(item, "_fixtureinfo", None)  # test functions have it
        defs = [d for ds in info.name2fixturedefs.values() for d in ds] if info else []
        ours = [d for d in defs if d.baseid and d.scope != "function"  # baseid "": pytest's, plugins'
                and d.argname not in PER_WORKER]
        keys = sorted({d.argname if d.scope == "session" else item.nodeid.split("::")[0] for d in ours})
        for key in keys:
            parent[root(key)] = root(keys[0])
        shares.append(keys)
    name = {}  # each set of joined keys is named after its first key in order
    for key in sorted(parent):
        name.setdefault(root(key), key)
    for item, keys in zip(items, shares):
        if keys:
            item.add_marker(pytest.mark.xdist_group(name[root(keys[0])]))
        groups = sorted({m.args[0] if m.args else m.kwargs.get("name", "default")
                         for m in item.iter_markers("xdist_group")})  # these and any written on a test
        if groups and getattr(config.option, "loadgroup", False) and not hasattr(item, "_nodeid"):
            # An xdist worker tells the scheduler a test's group as "@group" after its id; xdist
            # 3.8 writes it to item._nodeid, which pytest 9 no longer reads (it reads item._id).
            from _pytest.nodeid import coerce_node_id

            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(groups)}")


@pytest.fixture(scope="session")
def quick_study(tmp_path_factory) -> Path:
    """A folder holding one quick study (quick_study_in), for the tests that only read its stores
    (a report logged to its parent run aside)."""
    return quick_study_in(tmp_path_factory.mktemp("quick"))


def run_cli(*args: str, cwd: Path, timeout: float = 240, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m sgdtune.<args>` in a subprocess, as a user would run it."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A fresh working directory holding a copy of experiments/; mlruns/ lands here."""
    shutil.copytree(EXPERIMENTS, tmp_path / "experiments")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def quick_study_in(cwd: Path) -> Path:
    """`cwd` holding the experiments and one quick study (mlruns/), run by the study's CLI in-process."""
    from sgdtune.cli import study_main

    shutil.copytree(EXPERIMENTS, cwd / "experiments")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        assert study_main(["experiments/quick.toml", "--no-progress"]) == 0
    return cwd


def write_experiment(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- real services on loopback, started by the tests ----------------------------------------

import glob  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from contextlib import contextmanager  # noqa: E402

PG_PASSWORD = "Pw-s3cret-41f9"  # must appear nowhere sgdtune writes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require(what: str, env: str):
    """Skip when a service is missing here; fail when CI says it must run (env=1)."""
    if os.environ.get(env) == "1":
        pytest.fail(f"{what} is required (env {env}=1) but missing")
    pytest.skip(f"{what} is not installed")


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture(scope="session")
def reaper():
    """Stops the servers the tests start even when pytest is killed outright (sgdtune/reaper.py)."""
    from sgdtune.reaper import Reaper

    watchdog = Reaper()
    yield watchdog
    watchdog.close()


@pytest.fixture(scope="session")
def postgres(reaper):
    """A throw-away PostgreSQL cluster on a free loopback port, run as the postgres user.

    Yields a function db(name) -> URL (with password) of a fresh database.
    """
    if not (_pg_bin("initdb") and _pg_bin("pg_ctl") and _pg_bin("psql")):
        require("PostgreSQL (initdb, pg_ctl)", "SGDTUNE_REQUIRE_POSTGRES")
    with postgres_cluster(reaper) as db:
        yield db


@contextmanager
def postgres_cluster(reaper):
    """The `postgres` fixture's cluster: db(name) -> URL. Stopped at the end, or by `reaper`
    (postmaster.pid names the postmaster, which leads the group of its backends)."""
    initdb, pg_ctl, psql = _pg_bin("initdb"), _pg_bin("pg_ctl"), _pg_bin("psql")
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="sgdtune-pg-"))  # pytest's tmp dirs are closed to other users
    os.chmod(root, 0o777)
    reaper.remove_at_end(root)
    data, port = root / "data", free_port()
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*as_pg, initdb, "-D", str(data), "-U", "postgres", "--auth-local=trust",
                    "--auth-host=scram-sha-256", "-E", "UTF8"], check=True, capture_output=True)
    subprocess.run([*as_pg, pg_ctl, "-D", str(data), "-w", "-l", str(root / "log"), "start", "-o",
                    f"-c listen_addresses=127.0.0.1 -p {port} -k {root}"], check=True, capture_output=True)
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    reaper.watch(postmaster, signal.SIGQUIT)  # PostgreSQL's immediate shutdown

    def sql(statement: str) -> None:
        subprocess.run([*as_pg, psql, "-h", str(root), "-p", str(port), "-U", "postgres", "-v", "ON_ERROR_STOP=1",
                        "-c", statement], check=True, capture_output=True)

    sql(f"CREATE ROLE sgd LOGIN PASSWORD '{PG_PASSWORD}'")
    made = []

    def db(name: str) -> str:
        if name not in made:
            sql(f"CREATE DATABASE {name} OWNER sgd")
            made.append(name)
        return f"postgresql://sgd:{PG_PASSWORD}@127.0.0.1:{port}/{name}"

    db.postmaster, db.root = postmaster, root
    try:
        yield db
    finally:
        subprocess.run([*as_pg, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        reaper.forget(postmaster)
        shutil.rmtree(root, ignore_errors=True)


def wait_http(url: str, timeout_s: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(url)


@pytest.fixture(scope="session")
def mlflow_server(postgres, tmp_path_factory, reaper):
    """A real `mlflow server` with a PostgreSQL backend store, on a free loopback port."""
    with mlflow_server_at(postgres("mlflow"), tmp_path_factory.mktemp("mlflow-server"), reaper) as (url, _):
        yield url


@contextmanager
def mlflow_server_at(backend_store_uri: str, root: Path, reaper):
    """`mlflow server` on `backend_store_uri`, artifacts and log under `root`: (URL, process).
    It leads its own process group (its workers are in it), stopped at the end or by `reaper`."""
    port = free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # its 8 GenAI job workers: unused here
    )
    reaper.watch(proc.pid)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc=proc)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)
            proc.wait(30)
        reaper.forget(proc.pid)
        log.close()
