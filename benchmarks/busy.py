"""The default study on a busy machine: torch threads as sgdtune chooses them (`--threads
auto`, sgdtune/threads.py) against torch's default (one per core), alone and beside a CPU
hog of 2 x cores busy-loop processes.

Each arm is a fresh `python -m sgdtune.study experiments/batch_tradeoff.toml` process,
shortened (4 trials of at most 12 epochs; within the sampler's 10 random start-up trials
and before the pruner's 8, so every arm trains the same trials), without MLflow tracking
(its writer process is the same in both arms). Wall time from launch to exit; CPU time
(user + system) of the study process from os.wait4. One run of each arm (torch's default
beside the busy loops takes minutes on 2 cores), auto and default side by side.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import Check

GROUP = "busy"
ROOT = Path(__file__).resolve().parent.parent
FULL = ["experiments/batch_tradeoff.toml", "--n-trials", "4", "--set", "search.epochs.high=12"]
LIMIT_S = 150  # wall time after which a study is stopped (torch's default beside the loops: minutes)
TINY = ["experiments/quick.toml", "--n-trials", "1", "--set", "search.epochs.low=1", "--set", "search.epochs.high=1"]


def cores() -> int:
    from sgdtune.threads import machine_cores

    return machine_cores()


def start_hog(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]


def stop_hog(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def study(args: list[str], threads: str, name: str, folder: Path, limit_s: float) -> dict:
    """One study process: wall s, CPU s, the threads its trials used. Stopped at `limit_s`
    of wall time ("stopped": its wall time is then a lower bound)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    storage = folder / "optuna.journal"
    load = os.getloadavg()[0]
    errors = folder / f"{name}.stderr"
    with open(errors, "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "sgdtune.study", *args, "--study-name", name, "--threads",
                                 threads, "--storage", str(storage), "--no-tracking", "--no-progress"],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        stopped = False
        while True:  # os.wait4, not proc.wait: its CPU time, not the busy loops'
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > limit_s:
                stopped = True
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 and not stopped:
        raise RuntimeError(f"benchmarks.busy: the study failed:\n{errors.read_text()[-3000:]}")
    import optuna

    from sgdtune.store.stores import open_storage

    trials = optuna.load_study(study_name=name, storage=open_storage(str(storage))).get_trials(deepcopy=False)
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "load": load, "stopped": stopped,
            "threads": sorted({t.user_attrs.get("torch_threads") for t in trials})}


def run(tiny: bool = False) -> list[Check]:
    args = TINY if tiny else FULL
    n_cores = cores()
    default = str(n_cores)  # torch's default: one thread per core
    hog_n = 1 if tiny else 2 * n_cores
    rounds = 1  # torch's default beside the busy loops takes minutes on 2 cores: one pair of each
    arms = [("alone", "auto"), ("alone", default), ("hog", "auto"), ("hog", default)]
    got: dict[tuple[str, str], list[dict]] = {arm: [] for arm in arms}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for where, threads in arms if r % 2 == 0 else [arms[1], arms[0], arms[3], arms[2]]:
                hog = start_hog(hog_n) if where == "hog" else []
                try:
                    got[(where, threads)].append(study(args, threads, f"busy_{where}_{threads}_{r}", Path(tmp),
                                                       LIMIT_S))
                finally:
                    stop_hog(hog)
                print(f"  busy: {where} threads={threads}: {got[(where, threads)][-1]}", file=sys.stderr, flush=True)

    def med(where, threads, key):
        return statistics.median(m[key] for m in got[(where, threads)])

    def ratio(where, key):
        return statistics.median(a[key] / b[key] for a, b in zip(got[(where, "auto")], got[(where, default)]))

    what = " ".join(args[:3])
    checks = []
    for where, label in (("alone", "no busy loops"), ("hog", f"beside {hog_n} busy loops")):
        loads = [m["load"] for arm in ((where, "auto"), (where, default)) for m in got[arm]]
        chosen = sorted({t for m in got[(where, "auto")] for t in m["threads"] if t is not None})
        how = (f"{what}, one run each, side by side: {med(where, 'auto', 'wall'):.1f} s vs "
               f"{med(where, default, 'wall'):.1f} s wall, {med(where, 'auto', 'cpu'):.1f} s vs "
               f"{med(where, default, 'cpu'):.1f} s CPU; auto chose {chosen} threads; load average at launch "
               f"{min(loads):.1f}-{max(loads):.1f} on {n_cores} cores")
        if any(m["stopped"] for m in got[(where, default)]):
            how += f"; torch's default was stopped at {LIMIT_S} s, so the ratio is at most this"
        target = 1.0 if where == "hog" else None
        checks.append(Check(GROUP, f"wall time, threads auto / torch default ({default}), {label}",
                            ratio(where, "wall"), target, "<=" if target else "", "x",
                            how + ("" if target else " (context: no target)")))
        checks.append(Check(GROUP, f"CPU time, threads auto / torch default ({default}), {label}",
                            ratio(where, "cpu"), target, "<=" if target else "", "x",
                            how + ("" if target else " (context: no target)")))
    for threads in ("auto", default):
        slow = statistics.median(h["wall"] / a["wall"] for h, a in zip(got[("hog", threads)], got[("alone", threads)]))
        stopped = any(m["stopped"] for m in got[("hog", threads)])
        checks.append(Check(GROUP, f"wall time beside the busy loops / without, threads {threads}", slow, None, "",
                            "x", f"{what}; on an otherwise idle machine, a fair share of {n_cores} cores among "
                            f"{hog_n} busy loops and one thread would make it {(hog_n + 1) / n_cores:.1f}x"
                            + (f"; stopped at {LIMIT_S} s, so at least this" if stopped else "")
                            + " (context: no target)"))
    return checks


def main() -> None:
    from .__main__ import print_table

    print_table(run(), "busy machine")


if __name__ == "__main__":
    main()
