"""A study with MLflow tracking on vs off: what the tracking costs in wall time.

Three figures, each alternated on vs off, median of the paired rounds' ratios:

- the command a user runs, `python -m sgdtune.study experiments/quick.toml`, against the
  same with `--no-tracking`, in subprocesses on an existing store (an earlier run made the
  MLflow database; each run gets a new study name): start-up, 4 trials of a few tens of
  milliseconds, and the wait at the end until every MLflow write is made. The target.
- the default batch_tradeoff.toml cut to 8 trials with its pruner off (trials of a second
  or more, as in real use), `run_study` in this process;
- quick.toml through `run_study` in this process (no start-up on either side): the worst
  case, where the wait at the end for the last trial's writes is a visible fraction of
  0.15 s of training. Shown for context.

In-process, the MLflow store is made before the clock starts (MLflow keeps one store per
URI, and the database's creation belongs to start-up: benchmarks/startup.py); the writer
process is started by a warm-up study and then reused, as in any long-lived process.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path

from sgdtune.config import load_experiment
from sgdtune.store.tracking import default_tracking_uri
from sgdtune.study.run import run_study

from .common import Check, median_ratio, paired, timed
from .startup import run_command, workdir

GROUP = "tracking"
EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
COMMAND = ["-m", "sgdtune.study", "experiments/quick.toml", "--no-progress"]


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


def command_figure(rounds: int, tiny: bool) -> Check:
    root = workdir()
    try:
        runs = iter(range(10**6))
        study = lambda *extra: run_command([*COMMAND, "--study-name", f"s{next(runs)}", *extra], root)  # noqa: E731
        if not tiny:  # --tiny: the first tracked run makes the store (CI checks that this runs, not the figure)
            study()  # makes the store, and warms the file cache
        on, off = paired(study, lambda: study("--no-tracking"), rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return Check(
        GROUP, "wall time tracked / --no-tracking, python -m sgdtune.study quick.toml", median_ratio(on, off),
        1.05, "<=", "x",
        f"median of {rounds} paired rounds ({statistics.median(on):.2f} s vs {statistics.median(off):.2f} s), "
        "whole command, existing store" + (" (--tiny: one round)" if tiny else ""),
    )


def run(tiny: bool = False) -> list[Check]:
    checks = [command_figure(1 if tiny else 7, tiny)]
    cases = [
        ("batch_tradeoff.toml, 8 trials, no pruner",
         load_experiment(EXPERIMENTS / "batch_tradeoff.toml", n_trials=1 if tiny else 8,
                         **{"pruner.name": "none", **({"search.epochs.high": 5} if tiny else {})}),
         1 if tiny else 3, 1.05),
        ("quick.toml, in-process run_study (context)", load_experiment(EXPERIMENTS / "quick.toml"), 7, None),
    ]
    for label, config, rounds, target in cases[:1] if tiny else cases:
        if not tiny:
            one_study(config, True)  # warm-up: MLflow's and Optuna's first-call costs, the writer process
        on, off = paired(lambda c=config: one_study(c, True), lambda c=config: one_study(c, False), rounds)
        checks.append(Check(
            GROUP, f"wall time tracked / untracked, {label}", median_ratio(on, off), target,
            "<=" if target else "", "x",
            f"median of {rounds} paired rounds ({statistics.median(on):.2f} s vs {statistics.median(off):.2f} s); "
            "existing SQLite store, until every write is made",
        ))
    return checks
