"""The MLflow UI (and optuna-dashboard) on this store, bound to loopback: `python -m sgdtune.ui`.

Starts `mlflow server` (and, with --optuna, optuna-dashboard) as child processes, prints
the runs-table URL of every experiment, waits for Ctrl-C, then stops the children and
everything they started: each child leads its own process group, so stopping the group
reaches the workers it forked too. Killed outright, this process leaves that to a watchdog
(reaper.py), so no server outlives it.

Layer: pages (pages and servers a person opens; docs/architecture.md).
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError
from ..files import atomic_write
from ..hosts import canonical, is_ipv6, url_host
from ..reaper import Reaper
from ..redact import redact, redact_url
from ..store.run_reader import RunReader, store_exists
from ..store.stores import MLRUNS, default_storage_url
from ..store.tracking import default_tracking_uri, save_runs_views, ui_url

START_TIMEOUT_S = 120  # mlflow server imports a lot: ~10 s on 2 CPU cores, more under load
STOP_TIMEOUT_S = 10  # SIGTERM, then SIGKILL after this long
# Children get telemetry off (as sgdtune itself does) and MLflow's GenAI job runner off: it
# forks eight worker processes that the runs table and the compare view never use.
CHILD_ENV_DEFAULTS = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}
# optuna-dashboard's own CLI opens a journal file with its default (symlink) lock while the
# study writes with JournalFileOpenLock; open it as the study does, so both lock alike. The
# storage URL comes in the environment, which keeps a password out of process listings.
DASHBOARD_CODE = (
    "import os, sys; from optuna_dashboard import run_server; from sgdtune.store.stores import open_storage; "
    "run_server(open_storage(os.environ['SGDTUNE_OPTUNA_STORAGE']), host=sys.argv[1], port=int(sys.argv[2]))"
)


@dataclass
class Child:
    name: str
    url: str  # where a browser goes
    health_url: str  # answers 200 once the server is up
    proc: subprocess.Popen
    log: Path


def browser_host(host: str) -> str:
    """The host to put in a URL: a wildcard bind is reached on loopback, IPv6 in brackets."""
    return url_host(host)


def check_port_free(host: str, port: int, flag: str) -> None:
    with socket.socket(socket.AF_INET6 if is_ipv6(host) else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: a port in TIME_WAIT is free
        try:
            s.bind((canonical(host), port))
        except socket.gaierror as e:
            raise InputError("--host", "must be an address or a name of this machine",
                             f"{host!r} ({e.strerror})") from None
        except OSError as e:
            if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                raise InputError("--host", "must be an address of this machine", f"{host!r} ({e.strerror})") from None
            raise InputError(flag, f"must be a free port on {host}", f"{port} ({e.strerror})") from None


def start(name: str, cmd: list[str], env: dict[str, str], url: str, health_url: str, log_dir: Path,
          reaper: Reaper | None = None) -> Child:
    """Start one server in its own process group (Ctrl-C reaches us; we stop it), output to a
    log; `reaper` stops the group if this process is killed first."""
    log = log_dir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**CHILD_ENV_DEFAULTS, **os.environ, **env}, start_new_session=True)
    if reaper is not None:
        reaper.watch(proc.pid)
    return Child(name, url, health_url, proc, log)


def wait_until_up(children: list[Child], timeout_s: float = START_TIMEOUT_S) -> Child | None:
    """Poll each child's health URL; return one that died or is not up in time (None: all up)."""
    pending, deadline = list(children), time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        for child in list(pending):
            if child.proc.poll() is not None:
                return child
            try:
                with urllib.request.urlopen(child.health_url, timeout=2) as r:
                    if r.status == 200:
                        pending.remove(child)
            except OSError:
                pass
        time.sleep(0.3)
    return pending[0] if pending else None


def stop(children: list[Child]) -> None:
    """SIGTERM each child's process group, then SIGKILL what is left after STOP_TIMEOUT_S."""
    for child in children:
        _signal_group(child.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for child in children:
        try:
            child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        _signal_group(child.proc.pid, signal.SIGKILL)  # workers that outlived their parent
        child.proc.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def plan(args: argparse.Namespace) -> tuple[str, str | None]:
    """Check the flags before starting anything; (tracking URI, Optuna storage or None)."""
    for flag, port in (("--port", args.port), ("--optuna-port", args.optuna_port)):
        if not 1 <= port <= 65535:
            raise InputError(flag, "must be in 1..65535", str(port))
    tracking_uri = args.tracking_uri or default_tracking_uri(MLRUNS)
    if not store_exists(tracking_uri):
        raise InputError("--tracking-uri", "must name an existing MLflow store",
                         f"{redact_url(tracking_uri)!r} (run `python -m sgdtune.study` first, or pass --tracking-uri)")
    storage = None
    if args.optuna:
        if importlib.util.find_spec("optuna_dashboard") is None:
            raise InputError("--optuna", "needs the optuna-dashboard package, which is not installed "
                             "(pip install 'sgdtune[dashboard]')")
        if args.optuna_port == args.port:
            raise InputError("--optuna-port", "must differ from --port", f"{args.optuna_port} for both")
        storage = args.storage or default_storage_url(MLRUNS)
        if "://" not in storage and not Path(storage).is_file():
            raise InputError("--storage", "must be an existing Optuna journal file or a database URL", repr(storage))
        check_port_free(args.host, args.optuna_port, "--optuna-port")
    check_port_free(args.host, args.port, "--port")
    return tracking_uri, storage


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def serve(args: argparse.Namespace, tracking_uri: str, storage: str | None) -> int:
    """Start the servers `plan` checked, print their URLs, wait for Ctrl-C (or a server's
    exit), stop them all; 0 after Ctrl-C, 1 when a server failed."""
    host, log_dir = browser_host(args.host), Path(tempfile.mkdtemp(prefix="sgdtune-ui-"))
    # Ctrl-C, and SIGTERM from a service manager or a test, stop the servers. SIGINT is set
    # too, since a shell starts background jobs with it ignored.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    children: list[Child] = []
    failed: Child | None = None
    reaper = Reaper()
    try:
        # The store URI goes in the environment (mlflow reads it there): a password stays out of `ps`.
        base = f"http://{host}:{args.port}"
        children.append(start(
            "mlflow", [sys.executable, "-m", "mlflow", "server", "--host", canonical(args.host),
                       "--port", str(args.port), "--workers", "1"],
            {"MLFLOW_BACKEND_STORE_URI": tracking_uri}, f"{base}/", f"{base}/health", log_dir, reaper))
        if storage:
            base = f"http://{host}:{args.optuna_port}"
            children.append(start(
                "optuna-dashboard", [sys.executable, "-c", DASHBOARD_CODE, canonical(args.host), str(args.optuna_port)],
                {"SGDTUNE_OPTUNA_STORAGE": storage}, f"{base}/dashboard/", f"{base}/api/studies", log_dir, reaper))
        for child in children:
            print(f"started {child.name} (pid {child.proc.pid}), log {child.log}", flush=True)
        failed = wait_until_up(children)
        if failed is not None:
            state = "exited" if failed.proc.poll() is not None else f"was not up after {START_TIMEOUT_S} s"
            print(f"error: {failed.name} {state}; last lines of {failed.log}:\n{tail(failed.log)}", file=sys.stderr)
            return 1
        print(f"MLflow UI: {children[0].url}  (store {redact_url(tracking_uri)})")
        experiments = RunReader(tracking_uri).experiments_with_runs()
        save_runs_views(tracking_uri, [exp_id for exp_id, _ in experiments])  # what the URLs below open
        for exp_id, name in experiments:
            print(f"  {name}: {ui_url(exp_id, args.port, host)}")
        if storage:
            print(f"optuna-dashboard: {children[1].url}  (storage {redact_url(storage)})")
        print("Ctrl-C stops the servers.", flush=True)
        while all(c.proc.poll() is None for c in children):
            time.sleep(0.5)
        failed = next(c for c in children if c.proc.poll() is not None)
        print(f"error: {failed.name} exited with status {failed.proc.returncode}; last lines of {failed.log}:\n"
              f"{tail(failed.log)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    finally:
        for sig in previous:  # a second Ctrl-C must not orphan the servers
            signal.signal(sig, signal.SIG_IGN)
        stop(children)
        for child in children:
            reaper.forget(child.proc.pid)
        reaper.close()
        print("stopped.", flush=True)
        if failed is None:  # the logs are kept only when a server failed
            shutil.rmtree(log_dir, ignore_errors=True)
        else:  # the servers' own lines may quote the store's URL, password included
            for child in children:
                atomic_write(child.log, redact(child.log.read_text(errors="replace")))
        for sig, handler in previous.items():
            signal.signal(sig, handler)
