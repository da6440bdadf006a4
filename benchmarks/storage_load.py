"""Many workers on one study: PostgreSQL directly against Optuna's gRPC storage proxy
(`sgdtune storage-proxy`) in front of the same database, 16 and 32 worker processes.

Each worker process (forked from this one) opens the storage as sgdtune does
(`stores.open_storage`: postgresql://... or grpc://...), loads the study, says it is ready
and waits for the go, so that 16-32 processes setting up on a small machine are not part of
the figure. Then it runs its share of ask/tell trials of a near-zero objective (one
suggest_float, no training), counting every exception by type.

Per run: trials/s = trials told / (go -> the last worker's end); the connections PostgreSQL
holds for the database at their peak (pg_stat_activity, sampled every 50 ms from launch to
the end); and, counted in the database itself, lost trials (fewer COMPLETE than asked) and
duplicates (a trial number twice). The runs alternate between the two ways, in pairs.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter

from .common import Check

GROUP = "storage"
SIZES_FULL, SIZES_TINY = (16, 32), (2, 4)
TRIALS_FULL, TRIALS_TINY = 192, 16  # per run, split between the workers
MODES = ("direct", "proxy")
APP = {"direct": "sgdtune-load-worker", "proxy": "sgdtune-load-proxy"}  # application_name: whose sessions


def worker(storage_url: str, study_name: str, trials: int, seed: int, queue, go) -> None:
    """One worker (a forked process): open, load, 'ready', wait for `go`, then `trials`
    ask/tell trials; puts its counts on `queue`."""
    import optuna

    from sgdtune.store.stores import open_storage

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = open_storage(storage_url)
    study = optuna.load_study(study_name=study_name, storage=storage,
                              sampler=optuna.samplers.RandomSampler(seed=seed))
    queue.put("ready")
    go.wait()
    start, told, errors = time.time(), 0, Counter()
    for _ in range(trials):
        try:
            trial = study.ask()
            study.tell(trial, trial.suggest_float("x", 0.0, 1.0))
            told += 1
        except Exception as e:  # noqa: BLE001 - counted and reported: the figure is how many
            errors[type(e).__name__] += 1
    queue.put({"told": told, "errors": dict(errors), "start": start, "end": time.time()})


class ConnectionWatch:
    """Peak number of sessions PostgreSQL holds for one database, sampled in a thread."""

    def __init__(self, monitor_url: str, database: str, every_s: float = 0.05):
        import psycopg

        self.db = psycopg.connect(monitor_url, autocommit=True)
        self.database, self.every_s = database, every_s
        self.application = ""  # the sessions counted: the workers' or the proxy's (APP)
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        return self.db.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
                               (self.database, self.application)).fetchone()[0]

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            self._stop.wait(self.every_s)

    def __enter__(self) -> ConnectionWatch:
        self.peak = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def counted(url: str, study_name: str) -> tuple[int, int, int]:
    """(trials, distinct trial numbers, COMPLETE trials) of the study, read in the database."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as db:
            row = db.execute(sqlalchemy.text(
                "SELECT count(*), count(DISTINCT t.number), count(*) FILTER (WHERE t.state = 'COMPLETE') "
                "FROM trials t JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = :name"),
                {"name": study_name}).one()
    finally:
        engine.dispose()
    return int(row[0]), int(row[1]), int(row[2])


def one_run(mode: str, workers: int, total: int, url: str, proxy_url: str, watch: ConnectionWatch,
            tag: str) -> dict:
    """One study, `total` trials shared by `workers` forked processes (forked from this
    process, which has imported Optuna and SQLAlchemy but holds no gRPC channel and no
    pooled connection, so that 32 interpreters do not have to start)."""
    import multiprocessing

    import optuna

    name = f"load_{mode}_{workers}_{tag}"
    made = optuna.storages.RDBStorage(url)
    optuna.create_study(study_name=name, storage=made, direction="minimize")
    made.engine.dispose()  # no connection of this process is inherited by a worker
    share = [total // workers + (i < total % workers) for i in range(workers)]
    storage = f"{url}?application_name={APP[mode]}" if mode == "direct" else proxy_url
    context = multiprocessing.get_context("fork")
    queue, go = context.SimpleQueue(), context.Event()
    procs = [context.Process(target=worker, args=(storage, name, n, i, queue, go), daemon=True)
             for i, n in enumerate(share)]
    for p in procs:  # before the watch's thread starts: no thread runs while this process forks
        p.start()
    with watch:
        for _ in procs:
            if queue.get() != "ready":
                raise RuntimeError(f"storage_load worker did not start ({mode})")
        t_go = time.time()
        go.set()
        results = [queue.get() for _ in procs]
        for p in procs:
            p.join(60)
            if p.exitcode != 0:
                raise RuntimeError(f"storage_load worker failed ({mode}): exit code {p.exitcode}")
    told = sum(r["told"] for r in results)
    errors: Counter = Counter()
    for r in results:
        errors.update(r["errors"])
    rows, distinct, complete = counted(url, name)
    return {"mode": mode, "workers": workers, "told": told, "seconds": max(r["end"] for r in results) - t_go,
            "errors": dict(errors), "connections": watch.peak, "lost": total - complete,
            "duplicates": rows - distinct, "asked": total}


def run(tiny: bool = False) -> list[Check]:
    from . import pg

    sizes = SIZES_TINY if tiny else SIZES_FULL
    total = TRIALS_TINY if tiny else TRIALS_FULL
    rounds = 1 if tiny else 2
    runs: list[dict] = []
    with pg.Cluster(max_connections=100) as cluster:
        url = cluster.db("optuna_load")
        optuna_schema(url)  # before any worker or the proxy races to create it
        port = pg.free_port()
        proxy = subprocess.Popen([sys.executable, "-m", "sgdtune", "storage-proxy", "--storage",
                                  f"{url}?application_name={APP['proxy']}", "--port", str(port)],
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        watch = None
        try:
            wait_listening(port, proxy)
            watch = ConnectionWatch(url.rsplit("/", 1)[0] + "/postgres", "optuna_load")
            for r in range(rounds):
                for workers in sizes:
                    for mode in MODES if (r + workers // sizes[0]) % 2 == 0 else MODES[::-1]:
                        watch.application = APP[mode]
                        runs.append(one_run(mode, workers, total, url, f"grpc://127.0.0.1:{port}", watch, str(r)))
                        print(f"  storage: {json.dumps(runs[-1])}", file=sys.stderr, flush=True)
        finally:
            if watch is not None:
                watch.db.close()
            proxy.terminate()
            proxy.communicate(timeout=60)
    return checks(runs, sizes, rounds, total)


def optuna_schema(url: str) -> None:
    import optuna

    storage = optuna.storages.RDBStorage(url)
    storage.get_all_studies()
    storage.engine.dispose()  # no connection of this process is inherited by a worker


def wait_listening(port: int, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    """Until the proxy accepts connections (a plain socket: this process must hold no gRPC
    channel when it forks the workers)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sgdtune storage-proxy exited:\n{proc.communicate()[0][-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"no proxy on port {port}")


def checks(runs: list[dict], sizes, rounds: int, total: int) -> list[Check]:
    out = []
    for workers in sizes:
        by = {m: [r for r in runs if r["mode"] == m and r["workers"] == workers] for m in MODES}
        rate = {m: [r["told"] / r["seconds"] for r in by[m]] for m in MODES}
        ratios = [p / d for p, d in zip(rate["proxy"], rate["direct"])]
        how = f"{total} ask/tell trials of a no-cost objective per run; median of {rounds} alternated pairs"
        out.append(Check(GROUP, f"trials/s through the gRPC proxy / PostgreSQL directly, {workers} workers",
                         statistics.median(ratios), None, "", "x",
                         f"{how}; {statistics.median(rate['proxy']):.0f} vs {statistics.median(rate['direct']):.0f} "
                         "trials/s (context: no target)"))
        for m in MODES:
            label = "through the gRPC proxy" if m == "proxy" else "PostgreSQL directly"
            out.append(Check(GROUP, f"trials/s, {label}, {workers} workers", statistics.median(rate[m]), None, "",
                             "trials/s", f"{how} (context: no target)"))
            out.append(Check(GROUP, f"peak PostgreSQL connections, {label}, {workers} workers",
                             max(r["connections"] for r in by[m]), None, "", "connections",
                             "sessions for the study's database in pg_stat_activity, sampled every 50 ms from "
                             "launch to end; the proxy's are all its own (context: no target)"))
            bad = sum(r["lost"] + r["duplicates"] for r in by[m])
            out.append(Check(GROUP, f"lost or duplicate trials, {label}, {workers} workers", bad, 0.0, "<=",
                             "trials", f"counted in the database: {rounds} x {total} asked"))
            errors: Counter = Counter()
            for r in by[m]:
                errors.update(r["errors"])
            kinds = ", ".join(f"{k} x{v}" for k, v in errors.items()) or "none"
            out.append(Check(GROUP, f"storage errors (lock, operational, gRPC), {label}, {workers} workers",
                             sum(errors.values()), 0.0, "<=", "errors", f"exceptions the workers caught: {kinds}"))
    return out


def main() -> None:
    argparse.ArgumentParser(prog="python -m benchmarks.storage_load",
                            description="PostgreSQL directly vs through the gRPC proxy, 16 and 32 workers "
                            "(python -m benchmarks --only storage writes results.json)").parse_args()
    from .__main__ import print_table
    from .common import quiet

    quiet()
    print_table(run(), "storage load")


if __name__ == "__main__":
    main()
