"""Fits over many trials: the S(B) steps-to-target model, log-log slopes, and the
study-level aggregates a parent run records. NumPy only (no torch, no optuna): the report
and the UI import this module.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np


def steps_model(batch_size: np.ndarray, s_min: float, b_crit: float) -> np.ndarray:
    """S(B) = S_min (1 + B_crit / B): updates needed at batch size B (McCandlish et al.)."""
    return s_min * (1.0 + b_crit / np.asarray(batch_size, dtype=float))


@dataclass(frozen=True)
class StepsFit:
    s_min: float  # updates needed with an infinite batch
    b_crit: float  # critical batch size (examples)
    e_min: float  # examples needed with B -> 0: S_min * B_crit


def fit_steps_to_target(batch_sizes, updates) -> StepsFit:
    """Least-squares fit of S = S_min (1 + B_crit / B) to updates-to-target per batch size.

    S is linear in 1/B with intercept S_min and slope S_min B_crit = E_min, so an
    ordinary least-squares line in (1/B, S) gives both; errors are relative, so each point
    is weighted by 1/S (a 10% miss at S = 10 counts as much as one at S = 10,000).
    """
    b = np.asarray(batch_sizes, dtype=float)
    s = np.asarray(updates, dtype=float)
    if b.size < 2 or np.unique(b).size < 2:
        raise ValueError(f"the S(B) fit needs at least 2 distinct batch sizes; got {sorted(set(b.tolist()))}")
    w = 1.0 / s
    design = np.stack([np.ones_like(b), 1.0 / b], axis=1) * w[:, None]
    (s_min, e_min), *_ = np.linalg.lstsq(design, s * w, rcond=None)
    if s_min <= 0 or e_min <= 0:
        raise ValueError(f"the S(B) fit gave non-positive S_min={s_min:.3g}, E_min={e_min:.3g}")
    return StepsFit(float(s_min), float(e_min / s_min), float(e_min))


def small_batch_limit(n_train: float) -> float:
    """Largest B at which loss noise is fitted against 1/sqrt(B): N/8, since the law holds
    for B << N (finite-population factor (N - B)/(N - 1), docs/science.md)."""
    return n_train / 8


def loglog_slope(x, y) -> float:
    """Slope of log(y) against log(x) by least squares (e.g. loss noise vs batch size)."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    return float(np.polyfit(lx, ly, 1)[0])


# -- study-level aggregates -------------------------------------------------------------
# A trial here is anything with Optuna's FrozenTrial fields `state` (its `.name` is read),
# `params` and `user_attrs["summary"]` (the summary metrics of its run).


def _summary(trial: Any) -> dict[str, float]:
    return trial.user_attrs.get("summary", {})


def critical_batch_fit(trials: Iterable[Any]) -> StepsFit | None:
    """S(B) fit to the best (fewest) updates-to-target per batch size; None under 2 sizes
    or when the fit is not physical."""
    best: dict[int, float] = {}
    for t in trials:
        s = _summary(t).get("updates_to_target")
        b = t.params.get("batch_size")
        if s is not None and b is not None:
            best[b] = min(best.get(b, math.inf), s)
    if len(best) < 2:
        return None
    try:
        return fit_steps_to_target(list(best), list(best.values()))
    except ValueError:
        return None


def study_metrics(trials: Iterable[Any], n_train: float = math.inf) -> dict[str, float]:
    """The parent run's metrics: counts, best val_acc, loss-noise slope, critical batch
    size and the median of the trials' final gradient noise scales."""
    trials = list(trials)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    out: dict[str, float] = {
        "n_complete": len(complete),
        "n_pruned": sum(t.state.name == "PRUNED" for t in trials),
        "n_failed": sum(t.state.name == "FAIL" for t in trials),
    }
    accs = [_summary(t)["final_val_acc"] for t in complete if "final_val_acc" in _summary(t)]
    if accs:
        out["best_val_acc"] = max(accs)
    small_b = small_batch_limit(n_train)
    noisy = [(t.params["batch_size"], _summary(t)["final_loss_noise"]) for t in complete
             if t.params.get("batch_size", math.inf) <= small_b and _summary(t).get("final_loss_noise", 0) > 0]
    if len({b for b, _ in noisy}) >= 2:
        out["loss_noise_slope"] = loglog_slope(*zip(*noisy))
    fit = critical_batch_fit(complete)
    if fit is not None:
        out["critical_batch_size"], out["s_min"] = fit.b_crit, fit.s_min
    gns = [_summary(t)["final_grad_noise_scale"] for t in complete if "final_grad_noise_scale" in _summary(t)]
    if gns:
        out["median_grad_noise_scale"] = float(np.median(gns))
    return out
