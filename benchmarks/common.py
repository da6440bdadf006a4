"""What every benchmark shares: a check with its target, paired rounds, quiet libraries."""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

# Nothing here talks to the network, MLflow's telemetry included.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")

OPS = {"<=": lambda v, t: v <= t, ">=": lambda v, t: v >= t, "<": lambda v, t: v < t}


@dataclass(frozen=True)
class Check:
    """One figure and its target: ok when `value op target` holds.

    A figure shown for context (an import's share of start-up, the bare-PyTorch floor)
    has target None, op "" and ok None.
    """

    group: str
    name: str
    value: float
    target: float | None
    op: str  # "<=", ">=", "<", or "" without a target
    unit: str
    detail: str = ""  # how it was measured (the table shows it; the JSON keeps it)

    @property
    def ok(self) -> bool | None:
        return None if self.target is None else bool(OPS[self.op](self.value, self.target))

    def as_json(self) -> dict:
        target = None if self.target is None else float(self.target)
        return {**asdict(self), "value": float(self.value), "target": target, "ok": self.ok}


def paired(a: Callable[[], float], b: Callable[[], float], rounds: int) -> tuple[list[float], list[float]]:
    """Measure a and b alternately (a b, b a, a b, ...) `rounds` times each.

    Alternating in pairs cancels the slow drift of a shared, noisy machine: compare each
    round's a with the same round's b (see ratios), then take the median.
    """
    out_a, out_b = [], []
    for r in range(rounds):
        if r % 2 == 0:
            out_a.append(a())
            out_b.append(b())
        else:
            out_b.append(b())
            out_a.append(a())
    return out_a, out_b


def median_ratio(num: list[float], den: list[float]) -> float:
    """Median over rounds of num[r] / den[r]."""
    return statistics.median(x / y for x, y in zip(num, den))


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def quiet() -> None:
    """Optuna's per-trial INFO lines and MLflow's store messages would drown the table."""
    import mlflow  # noqa: F401  (it sets its loggers' levels when imported: import it first)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic", "optuna"):
        logging.getLogger(name).setLevel(logging.WARNING)
