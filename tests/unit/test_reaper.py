"""Servers do not outlive the process that started them, even one killed with SIGKILL:
the test fixtures' PostgreSQL and mlflow server, and `sgdtune ui`'s servers."""

import concurrent.futures
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ROOT, _pg_bin, free_port, require

from sgdtune.reaper import Reaper

TESTS = ROOT / "tests"  # the folder of conftest.py, which the parent below imports
GONE_WITHIN_S = 60  # a deadline for polling, not a timing: the watchdog's grace is 10 s


def processes() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, parent pid, process group) of every process, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # ended meanwhile
                continue
            state, ppid, pgrp = stat[stat.rindex(")") + 2:].split()[:3]  # after "pid (comm) "
            found[int(entry.name)] = (state, int(ppid), int(pgrp))
    return found


def group_members(pgid: int) -> set[int]:
    """Live (not zombie) processes of process group `pgid`."""
    return {pid for pid, (state, _, pgrp) in processes().items() if pgrp == pgid and state != "Z"}


def children(pid: int) -> set[int]:
    """Live processes whose parent is `pid` (PostgreSQL's backends each lead a group of their own)."""
    return {p for p, (state, ppid, _) in processes().items() if ppid == pid and state != "Z"}


def wait_gone(pids: set[int]) -> set[int]:
    """Poll until none of `pids` is alive (or the deadline); the ones left."""
    deadline = time.monotonic() + GONE_WITHIN_S
    left = set(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        live = processes()
        left = {p for p in left if p in live and live[p][0] != "Z"}
    return left


def until(pids, at_least: int) -> set[int]:
    """pids() once it holds at least `at_least` processes (a server forks its workers after it answers)."""
    deadline = time.monotonic() + GONE_WITHIN_S
    while len(found := pids()) < at_least:
        assert time.monotonic() < deadline, f"only {found}"
        time.sleep(0.2)
    return found


def read_line(proc: subprocess.Popen, prefix: str, timeout_s: float = 240) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no line starting {prefix!r}; exit status {proc.poll()}")


def sleeper() -> subprocess.Popen:
    return subprocess.Popen(["sleep", "600"], start_new_session=True)


def reaping(proc: subprocess.Popen) -> concurrent.futures.Future:
    """proc.wait() on a thread: the process is reaped as soon as it ends. A child of this test
    left a zombie would keep its group alive to the watchdog until the grace ran out (10 s)."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=1).submit(proc.wait)


def test_closing_the_reaper_stops_the_groups_still_watched_and_not_the_forgotten():
    reaper = Reaper()
    watched, forgotten = sleeper(), sleeper()
    try:
        reaper.watch(watched.pid)
        reaper.watch(forgotten.pid)
        reaper.forget(forgotten.pid)
        ended = reaping(watched)
        reaper.close()
        assert ended.result(timeout=GONE_WITHIN_S) == -signal.SIGTERM
        assert forgotten.poll() is None
    finally:
        for proc in (watched, forgotten):
            proc.kill()
            proc.wait()


def test_descendants_in_groups_of_their_own_are_stopped_too():
    # As MLflow's huey job workers: a child that left its parent's process group. The child says
    # its pid once setsid has run (so the test reads the process table after it), then becomes sleep.
    server = subprocess.Popen(["sh", "-c", "setsid sh -c 'echo $$; exec sleep 600' & wait"], stdout=subprocess.PIPE,
                              text=True, start_new_session=True)
    worker = int(server.stdout.readline())
    try:
        assert processes()[worker][2] == worker != server.pid  # a group of its own
        reaper = Reaper()
        reaper.watch(server.pid)
        reaping(server)
        reaper.close()
        assert wait_gone({server.pid, worker}) == set()
    finally:
        server.kill()
        server.wait()
        if worker in processes():  # the test failed: leave nothing behind
            os.kill(worker, signal.SIGKILL)


def test_the_fixture_servers_die_with_a_pytest_killed_by_sigkill(tmp_path):
    if not _pg_bin("pg_ctl"):
        require("PostgreSQL (initdb, pg_ctl)", "SGDTUNE_REQUIRE_POSTGRES")
    # Stands for a pytest process: starts the fixtures' servers, says their pids, waits to be killed.
    parent_code = textwrap.dedent("""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, sys.argv[1])
        from conftest import mlflow_server_at, postgres_cluster
        from sgdtune.reaper import Reaper

        reaper = Reaper()
        with postgres_cluster(reaper) as db:
            with mlflow_server_at(db("mlflow"), Path(sys.argv[2]), reaper) as (_, server):
                print("up", server.pid, db.postmaster, db.root, flush=True)
                time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", parent_code, str(TESTS), str(tmp_path)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _, server, postmaster, cluster = read_line(proc, "up ").split()
        server, postmaster = int(server), int(postmaster)
        servers = until(lambda: group_members(server), at_least=2)  # the server and the workers it forks
        databases = until(lambda: {postmaster} | children(postmaster), at_least=2)  # and its background processes
        proc.kill()  # as `kill -9` of pytest: no finally, no atexit
        proc.wait()
        assert wait_gone(servers | databases) == set()
        deadline = time.monotonic() + GONE_WITHIN_S
        while Path(cluster).exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not Path(cluster).exists()  # the cluster's folder is removed too
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(300)
def test_the_ui_servers_die_with_a_ui_killed_by_sigkill(tmp_path):
    from mlflow import MlflowClient

    from sgdtune.store.tracking import default_tracking_uri

    MlflowClient(tracking_uri=default_tracking_uri(tmp_path / "mlruns")).search_experiments()  # the store
    proc = subprocess.Popen([sys.executable, "-m", "sgdtune.ui", "--port", str(free_port())], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        server = int(read_line(proc, "started mlflow").split("(pid ")[1].split(")")[0])
        read_line(proc, "Ctrl-C stops the servers")
        servers = group_members(server)
        assert server in servers
        proc.kill()
        proc.wait()
        assert wait_gone(servers) == set()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
