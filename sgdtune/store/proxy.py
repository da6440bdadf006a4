"""Optuna's gRPC storage proxy in front of one RDB storage: `sgdtune storage-proxy`.

Workers given `--storage grpc://HOST:PORT` reach the database through this one process:
the database holds the proxy's connections (at most one per server thread) rather than
one or more per worker, and the proxy keeps finished trials in memory (Optuna's cached
storage) instead of every worker reading them again. The proxy has no TLS and no
authentication, so it binds loopback unless told otherwise. Optuna's proxy does not
serve journal files, and carries no heartbeats (stores.open_grpc_storage).

`python -m sgdtune storage-proxy` runs the command line of cli.py.

Layer: store (the stores; the only MLflow code; docs/architecture.md).
"""

from __future__ import annotations

import errno
import signal
import socket
import sys
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from ..errors import InputError
from ..hosts import canonical, is_ipv6, url_host
from ..redact import redact_url

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 13000
SERVER_THREADS = 10  # Optuna's default; each thread holds at most one database connection
GRACE_S = 5.0  # calls in flight when stopped get this long to finish


class Stopped(Exception):
    """SIGTERM arrived: stop serving as Ctrl-C does."""


def check(storage_url: str, host: str, port: int) -> None:
    """Refuse what the proxy cannot serve, before anything is opened or bound."""
    if "://" not in storage_url or storage_url.startswith("grpc://"):
        raise InputError("--storage", "must be an RDB URL (sqlite:///FILE, postgresql://USER@HOST/DB); Optuna's "
                         "proxy serves neither journal files nor another proxy", repr(redact_url(storage_url)))
    if not 0 < port < 65536:
        raise InputError("--port", "must be in 1..65535", repr(port))
    family = socket.AF_INET6 if is_ipv6(host) else socket.AF_INET
    try:  # a plain bind: gRPC itself would share the port with another server (SO_REUSEPORT)
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((canonical(host), port))
    except socket.gaierror as e:
        raise InputError("--host", "must be an address or a name of this machine", f"{host!r} ({e.strerror})") from None
    except OSError as e:
        if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):  # not one of this machine's addresses
            raise InputError("--host", "must be an address of this machine", f"{host!r} ({e.strerror})") from None
        raise InputError("--port", f"must be free on {host} ({e.strerror})", repr(port)) from None


def open_backing_storage(storage_url: str):
    """The storage behind the proxy, with Optuna's in-process cache of finished trials (as
    Optuna's proxy documentation advises), checked by one read."""
    import optuna

    try:
        storage = optuna.storages.get_storage(storage_url)
        storage.get_all_studies()
    except Exception as e:  # noqa: BLE001 - a bad URL, a refused login, a missing driver: one line
        reason = redact_url(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
        raise InputError("--storage", f"must be an RDB storage that opens here, and it did not: {reason}",
                         repr(redact_url(storage_url))) from None
    return storage


def serve(storage_url: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          out: Callable[[str], object] = print) -> int:
    """Serve `storage_url` at grpc://host:port until Ctrl-C or SIGTERM; 0 once stopped."""
    import optuna

    check(storage_url, host, port)
    storage = open_backing_storage(storage_url)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    bound = f"[{canonical(host)}]" if is_ipv6(host) else canonical(host)  # gRPC, as a URL, brackets IPv6
    shown = url_host(host)  # where workers of this machine reach it (a wildcard: on loopback)
    out(f"serving the Optuna storage {redact_url(storage_url)}")
    out(f"     at grpc://{bound}:{port}  (workers: --storage grpc://{shown}:{port}); Ctrl-C stops it")
    sys.stdout.flush()

    def stop(signum, frame):
        raise Stopped

    previous = signal.signal(signal.SIGTERM, stop)
    pool = ThreadPoolExecutor(max_workers=SERVER_THREADS, thread_name_prefix="sgdtune-proxy")
    try:
        with warnings.catch_warnings():  # the proxy is marked experimental; it is chosen knowingly here
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.run_grpc_proxy_server(storage, host=bound, port=port, thread_pool=pool)
    except (KeyboardInterrupt, Stopped):
        _stop_servers(grace_s=GRACE_S)
    finally:
        signal.signal(signal.SIGTERM, previous)
        pool.shutdown(wait=True, cancel_futures=True)
    out("stopped")
    return 0


def _stop_servers(grace_s: float) -> None:
    """Stop the gRPC server gracefully: Optuna's run_grpc_proxy_server keeps its server to
    itself, so it is found among live objects; left alone, it is torn down at exit without
    letting calls in flight finish."""
    import gc

    import grpc

    for server in [o for o in gc.get_objects() if isinstance(o, grpc.Server)]:
        server.stop(grace_s).wait()
