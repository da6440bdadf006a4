"""Past one database: Optuna's gRPC storage proxy (`sgdtune storage-proxy`, sgdtune/store/proxy.py;
`--storage grpc://`), workers through it and its one-line refusals. Threads per trial:
tests/unit/test_threads.py."""

import os
import signal
import socket
import subprocess
import sys
import time

import optuna
import pytest
import sqlalchemy
from conftest import PG_PASSWORD, free_port, run_cli

from sgdtune.errors import InputError
from sgdtune.store.stores import open_storage

SHORT = ["--set", "search.epochs.low=1", "--set", "search.epochs.high=2", "--no-progress"]


def start_proxy(storage: str, port: int, cwd) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "sgdtune", "storage-proxy", "--storage", storage,
                             "--port", str(port)],
                            cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            open_storage(url).close()
            return
        except InputError:  # not listening yet (each try waits up to 10 s)
            pass
    raise TimeoutError(url)


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM, as a service manager stops it; its output."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return out


@pytest.mark.postgres
def test_two_workers_through_the_grpc_proxy_finish_every_trial_once_in_postgresql(workdir, postgres):
    backing = postgres("optuna_proxy")
    port = free_port()
    proxy = start_proxy(backing, port, workdir)
    try:
        wait_ready(f"grpc://127.0.0.1:{port}", proxy)
        proc = run_cli("sgdtune.study", "experiments/quick.toml", "--n-trials", "8", "--workers", "2",
                       "--storage", f"grpc://127.0.0.1:{port}", *SHORT, cwd=workdir)
    finally:
        out = stop(proxy)
    assert proc.returncode == 0, proc.stderr
    assert f"grpc://127.0.0.1:{port}" in proc.stdout
    assert proxy.returncode == 0, out
    assert out.splitlines()[-1] == "stopped"
    assert f"postgresql://sgd:***@127.0.0.1:{backing.rsplit(':', 1)[1]}" in out
    assert PG_PASSWORD not in out

    # Counted in the backing database itself, not through the proxy.
    engine = sqlalchemy.create_engine(backing)
    with engine.connect() as db:
        rows = db.execute(sqlalchemy.text(
            "SELECT t.number, t.state FROM trials t JOIN studies s ON s.study_id = t.study_id "
            "WHERE s.study_name = 'quick'")).all()
    engine.dispose()
    assert len(rows) == 8
    assert sorted(number for number, _ in rows) == list(range(8))  # no trial lost, none twice
    assert {state for _, state in rows} == {"COMPLETE"}
    trials = optuna.load_study(study_name="quick", storage=backing).get_trials()
    assert len({t.user_attrs["worker_pid"] for t in trials}) == 2
    assert {t.user_attrs["torch_threads"] for t in trials} == {1}  # 32 wide, B <= 1024: too little work for 2
    assert len({t.user_attrs["mlflow_run_id"] for t in trials}) == 8


def test_heartbeats_through_the_proxy_are_refused_in_one_line(workdir):
    proc = run_cli("sgdtune.study", "experiments/quick.toml", "--storage", f"grpc://127.0.0.1:{free_port()}",
                   "--heartbeat", "5", "--no-tracking", *SHORT, cwd=workdir)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: --heartbeat: is not carried by Optuna's gRPC storage proxy")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_grpc_url_without_a_port_is_refused_in_one_line(workdir):
    proc = run_cli("sgdtune.study", "experiments/quick.toml", "--storage", "grpc://127.0.0.1", "--no-tracking",
                   *SHORT, cwd=workdir)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: --storage: a gRPC proxy URL must be grpc://HOST:PORT "
                                   "(e.g. grpc://127.0.0.1:13000); got 'grpc://127.0.0.1'")


def test_the_proxy_refuses_a_journal_file_a_busy_port_and_a_database_it_cannot_open(workdir):
    journal = run_cli("sgdtune", "storage-proxy", "--storage", "mlruns/optuna.journal", cwd=workdir, timeout=120)
    assert journal.returncode == 2
    assert journal.stderr.startswith("error: --storage: must be an RDB URL")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = run_cli("sgdtune", "storage-proxy", "--storage", "sqlite:///o.db", "--port", str(port),
                       cwd=workdir, timeout=120)
    assert busy.returncode == 2
    assert busy.stderr.strip() == f"error: --port: must be free on 127.0.0.1 (Address already in use); got {port}"
    closed = run_cli("sgdtune", "storage-proxy", "--storage", f"postgresql://sgd:{PG_PASSWORD}@127.0.0.1:{free_port()}/x",
                     "--port", str(free_port()), cwd=workdir, timeout=120)
    assert closed.returncode == 2
    assert closed.stderr.startswith("error: --storage: must be an RDB storage that opens here, and it did not")
    assert len(closed.stderr.strip().splitlines()) == 1
    assert PG_PASSWORD not in closed.stderr and "sgd:***@" in closed.stderr
    assert not (workdir / "o.db").exists()  # nothing opened before the port was checked
