"""A study with MLflow tracking on vs off: what the tracking costs in wall time.

`run_study(config, track=True)` against `track=False` on the same experiment, each run in
a fresh directory (fresh Optuna storage and, when tracking, a fresh SQLite MLflow store).
The store is created before the clock starts, in the same process (MLflow keeps one store
per URI), so both sides start from an existing store and a warm process: the database's
creation belongs to start-up (benchmarks/startup.py). Alternated, median of paired rounds.

Two experiments: quick.toml (4 trials of a few tens of milliseconds each: the worst case,
where every MLflow write is a visible fraction) and the default batch_tradeoff.toml cut to
8 trials with its pruner off (trials of a second or more, as in real use).
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path

from sgdtune.config import load_experiment
from sgdtune.study import run_study
from sgdtune.tracking import default_tracking_uri

from .common import Check, median_ratio, paired, timed

GROUP = "tracking"
EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def one_study(config, track: bool) -> float:
    """Seconds of run_study in a fresh directory, the MLflow store made beforehand."""
    root = Path(tempfile.mkdtemp(prefix="sgdtune-bench-"))
    try:
        mlruns = root / "mlruns"
        if track:
            from mlflow import MlflowClient

            MlflowClient(tracking_uri=default_tracking_uri(mlruns)).search_experiments()  # creates the store
        return timed(lambda: run_study(config, track=track, mlruns=mlruns))
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(tiny: bool = False) -> list[Check]:
    cases = [
        ("quick.toml", load_experiment(EXPERIMENTS / "quick.toml", n_trials=2 if tiny else 4), 1 if tiny else 7),
        ("batch_tradeoff.toml, 8 trials, no pruner",
         load_experiment(EXPERIMENTS / "batch_tradeoff.toml", n_trials=1 if tiny else 8,
                         **{"pruner.name": "none", **({"search.epochs.high": 5} if tiny else {})}),
         1 if tiny else 3),
    ]
    checks = []
    for label, config, rounds in cases[:1] if tiny else cases:
        if not tiny:
            one_study(config, True)  # warm-up: MLflow's and Optuna's first-call costs
        on, off = paired(lambda: one_study(config, True), lambda: one_study(config, False), rounds)
        checks.append(Check(
            GROUP, f"wall time tracked / untracked, {label}", median_ratio(on, off), 1.05, "<=", "x",
            f"median of {rounds} paired rounds ({statistics.median(on):.2f} s vs {statistics.median(off):.2f} s); "
            "existing SQLite store",
        ))
    return checks
