"""Fits over many trials: the S(B) steps-to-target model, log-log slopes, and the
study-level aggregates a parent run records. NumPy only (no torch, no optuna): the report
and the UI import this module.

Layer: science (the estimators; docs/architecture.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
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


def loglog_slope(x, y) -> float:
    """Slope of log(y) against log(x) by least squares (e.g. loss noise vs batch size)."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    return float(np.polyfit(lx, ly, 1)[0])


# -- uncertainty: binomial standard errors, percentile bootstrap intervals ------------------------

BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_LEVEL = 0.95
BOOTSTRAP_SEED = 0  # a fixed seed: the same data give the same interval, so report.json reproduces


def binomial_se(p: float, n: float) -> float:
    """Standard error sqrt(p (1 - p) / n) of an accuracy p measured on n independent examples."""
    p = min(max(float(p), 0.0), 1.0)
    return math.sqrt(p * (1.0 - p) / n)


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval. `high` is inf when more than (1 - level)/2 of the resamples
    put the statistic at infinity (e.g. B_crit for a resample that shows perfect scaling throughout)."""
    low: float
    high: float
    level: float
    resamples: int  # resamples drawn
    failed: int  # resamples where the statistic was undefined (e.g. a single batch size): left out

    def as_dict(self) -> dict[str, Any]:
        return {"ci_low": self.low, "ci_high": self.high, "level": self.level, "method": "percentile bootstrap",
                "resamples": self.resamples, "resamples_failed": self.failed, "seed": BOOTSTRAP_SEED}


def bootstrap_intervals(statistic: Callable[[np.ndarray], Sequence[float] | None], n: int,
                        resamples: int = BOOTSTRAP_RESAMPLES, level: float = BOOTSTRAP_LEVEL,
                        seed: int = BOOTSTRAP_SEED, strata: np.ndarray | None = None) -> list[Interval] | None:
    """Percentile bootstrap of a (vector) statistic of n cases: `statistic(idx)` gets the indices
    of one resample (n draws with replacement) and returns its values, or None where undefined.
    With `strata` (a label per case), the cases are resampled within each stratum (a stratified
    bootstrap: every resample keeps every stratum, as a design with a fixed grid does).

    Seeded, so repeatable. Values may be +-inf (kept: the order statistics are taken without
    interpolation). None when fewer than half the resamples give a value."""
    rng = np.random.default_rng(seed)
    if strata is None:
        def draw() -> np.ndarray:
            return rng.integers(0, n, n)
    else:
        groups = [np.flatnonzero(strata == v) for v in np.unique(strata)]

        def draw() -> np.ndarray:
            return np.concatenate([rng.choice(g, g.size) for g in groups])
    values = [v for v in (statistic(draw()) for _ in range(resamples)) if v is not None]
    if len(values) < resamples / 2:
        return None
    table = np.array(values, dtype=float).reshape(len(values), -1)
    tail = (1.0 - level) / 2
    lo, hi = (np.quantile(table, q, axis=0, method="inverted_cdf") for q in (tail, 1.0 - tail))
    return [Interval(float(a), float(b), level, resamples, resamples - len(values)) for a, b in zip(lo, hi)]


def steps_fit_limits(batch_sizes, updates) -> tuple[float, float] | None:
    """(S_min, B_crit) of the S(B) fit, with the fit's limits instead of an error where it is
    unphysical: S_min <= 0 < E_min means perfect scaling over the sizes seen (S_min 0, B_crit inf),
    E_min <= 0 < S_min no gain from B at all (B_crit 0). None with fewer than 2 distinct sizes."""
    b = np.asarray(batch_sizes, dtype=float)
    s = np.asarray(updates, dtype=float)
    if np.unique(b).size < 2:
        return None
    w = 1.0 / s
    design = np.stack([np.ones_like(b), 1.0 / b], axis=1) * w[:, None]
    (s_min, e_min), *_ = np.linalg.lstsq(design, s * w, rcond=None)
    if s_min > 0 and e_min > 0:
        return float(s_min), float(e_min / s_min)
    if e_min > 0:
        return 0.0, math.inf
    if s_min > 0:
        return float(s_min), 0.0
    return None


def best_per_size(batch_sizes, values) -> tuple[np.ndarray, np.ndarray]:
    """Distinct batch sizes (ascending) and the smallest value at each."""
    b, v = np.asarray(batch_sizes, dtype=float), np.asarray(values, dtype=float)
    sizes = np.unique(b)
    return sizes, np.array([v[b == x].min() for x in sizes])


def critical_batch_intervals(batch_sizes, updates, **kw) -> dict[str, Interval] | None:
    """Bootstrap intervals of B_crit and S_min: the trials (B, updates-to-target) are resampled
    with replacement, and each resample is fitted as critical_batch_fit fits the study (fewest
    updates per batch size), so the interval carries the scatter between trials and the pick of
    the best lr per size. Resamples with one batch size are left out; an unphysical resample
    counts at its limit (steps_fit_limits). With a handful of points a case bootstrap runs a
    little below its nominal level (8 sizes, 5% noise: 19 of 20 data sets covered at 95%)."""
    b, s = np.asarray(batch_sizes, dtype=float), np.asarray(updates, dtype=float)

    def statistic(idx):
        fit = steps_fit_limits(*best_per_size(b[idx], s[idx]))
        return None if fit is None else (fit[1], fit[0])

    out = bootstrap_intervals(statistic, b.size, **kw)
    return None if out is None else {"b_crit": out[0], "s_min": out[1]}


# -- accuracy against log2 B: a trend with an interval that holds ---------------------------------


def t_quantile(p: float, df: float) -> float:
    """Quantile p of Student's t with df degrees of freedom: the normal quantile corrected by
    the Cornish-Fisher series in 1/df (Abramowitz & Stegun 26.7.5; within 0.2% of the exact
    value for df >= 3 at p = 0.975), so that NumPy alone suffices."""
    from statistics import NormalDist

    z = NormalDist().inv_cdf(p)
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3 + g4 / df ** 4


@dataclass(frozen=True)
class Trend:
    """A straight line of accuracy against log2 B: its slope (accuracy per doubling of B), the
    slope's sandwich standard error and t interval."""
    slope: float
    intercept: float
    se: float
    low: float
    high: float
    level: float
    df: int
    n: int

    def as_dict(self) -> dict[str, Any]:
        return {"ci_low": self.low, "ci_high": self.high, "level": self.level, "se": self.se, "df": self.df,
                "method": TREND_METHOD}


TREND_METHOD = ("weighted least squares of every complete trial's val_acc on log2(B), weights 1/binomial "
                "variance (Agresti-Coull), slope SE by the HC3 sandwich, t interval with n - 2 degrees of freedom")


def accuracy_trend(batch_sizes, acc, n_val=None, level: float = BOOTSTRAP_LEVEL) -> Trend | None:
    """val_acc against log2 B over every trial given (docs/science.md, section 8): a weighted
    least-squares line, each trial weighted by 1 / its binomial variance on n_val examples
    (p~ = (x + 2) / (n + 4), so that p = 1 keeps a finite weight); the slope's SE from the
    HC3 sandwich, which stays valid when trials scatter more than binomially (their lr and
    budget differ); a t interval with n - 2 degrees of freedom. None under 3 distinct B or
    4 trials."""
    lb = np.log2(np.asarray(batch_sizes, dtype=float))
    y = np.asarray(acc, dtype=float)
    if y.size < 4 or np.unique(lb).size < 3:
        return None
    if n_val is None:
        w = np.ones_like(y)
    else:
        n = np.broadcast_to(np.asarray(n_val, dtype=float), y.shape)
        p = (y * n + 2) / (n + 4)
        w = (n + 4) / (p * (1 - p))
    x = np.stack([np.ones_like(lb), lb], axis=1)
    xtwx_inv = np.linalg.inv(x.T @ (w[:, None] * x))
    beta = xtwx_inv @ (x.T @ (w * y))
    resid = y - x @ beta
    leverage = np.einsum("ij,jk,ik->i", x, xtwx_inv, x) * w
    # HC3: each weighted residual inflated by 1 / (1 - h_i), so a point that pulls the line to
    # itself does not shrink the SE (small samples: Long & Ervin 2000)
    u = (w * resid / np.clip(1 - leverage, 1e-9, None))[:, None] * x
    cov = xtwx_inv @ (u.T @ u) @ xtwx_inv
    se = float(np.sqrt(cov[1, 1]))
    df = y.size - 2
    half = t_quantile(0.5 + level / 2, df) * se
    slope = float(beta[1])
    return Trend(slope, float(beta[0]), se, slope - half, slope + half, level, df, int(y.size))


# -- loss noise against B ------------------------------------------------------------------------

MIN_SLOPE_SIZES = 3  # distinct batch sizes a log-log slope is fitted over ...
MIN_SLOPE_SPAN = 4.0  # ... spanning at least this factor (two octaves)


def has_loss_noise(batch_size: float | None, loss_noise: float | None, n_train: float = math.inf) -> bool:
    """Whether a trial measured loss noise: at least two batches per epoch (B < N) and a value > 0.
    A full-batch trial (one batch per epoch) logs 0: no measurement, not a noise-free one.

    Every B < N counts: successive differences of an epoch's without-replacement batches follow
    sigma/sqrt(B) at every B < N (the finite-population factor cancels, docs/science.md section 2).
    """
    return batch_size is not None and batch_size < n_train and (loss_noise or 0.0) > 0.0


def slope_unfit_reason(batch_sizes) -> str | None:
    """Why a log-log slope over these batch sizes would mean little, or None when it may be fitted:
    it needs MIN_SLOPE_SIZES distinct sizes spanning a factor MIN_SLOPE_SPAN."""
    sizes = np.unique(np.asarray(batch_sizes, dtype=float))
    if sizes.size < MIN_SLOPE_SIZES:
        return f"{sizes.size} distinct batch size{'s' * (sizes.size != 1)} with a loss noise; a slope needs " \
               f"at least {MIN_SLOPE_SIZES}"
    if sizes[-1] / sizes[0] < MIN_SLOPE_SPAN:
        return f"the batch sizes with a loss noise span a factor {sizes[-1] / sizes[0]:.3g} " \
               f"({sizes[0]:.0f}-{sizes[-1]:.0f}); a slope needs at least {MIN_SLOPE_SPAN:.0f}"
    return None


def loglog_slope_interval(x, y, **kw) -> Interval | None:
    """Bootstrap interval of loglog_slope: the (x, y) points resampled with replacement
    (resamples with a single distinct x left out)."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))

    def statistic(idx):
        return None if np.unique(lx[idx]).size < 2 else (float(np.polyfit(lx[idx], ly[idx], 1)[0]),)

    out = bootstrap_intervals(statistic, lx.size, **kw)
    return None if out is None else out[0]


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


def is_bound(summary: dict[str, float]) -> bool:
    """Whether a trial's final gradient noise scale is only a lower bound (|G|^2 not resolved)."""
    return (summary.get("final_grad_noise_scale_bound") or 0.0) >= 0.5


def study_metrics(trials: Iterable[Any], n_train: float = math.inf) -> dict[str, float]:
    """The parent run's metrics: counts, best val_acc, loss-noise slope (across trials, and at
    the best trial's final weights), critical batch size and the median of the trials' final
    gradient noise scales.

    The loss-noise slope is fitted over every trial with a loss noise (has_loss_noise: B < N,
    value > 0; no N/8 cut) when slope_unfit_reason finds the batch sizes sufficient."""
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
        best = max((t for t in complete if "final_val_acc" in _summary(t)), key=lambda t: _summary(t)["final_val_acc"])
        if "fixed_model_loss_noise_slope" in _summary(best):  # the clean slope: one model, no trend
            out["fixed_model_loss_noise_slope"] = _summary(best)["fixed_model_loss_noise_slope"]
    noisy = [(t.params["batch_size"], _summary(t)["final_loss_noise"]) for t in complete
             if has_loss_noise(t.params.get("batch_size"), _summary(t).get("final_loss_noise"), n_train)]
    if noisy and slope_unfit_reason([b for b, _ in noisy]) is None:
        out["loss_noise_slope"] = loglog_slope(*zip(*noisy))
    fit = critical_batch_fit(complete)
    if fit is not None:
        out["critical_batch_size"], out["s_min"] = fit.b_crit, fit.s_min
    gns = [_summary(t)["final_grad_noise_scale"] for t in complete
           if "final_grad_noise_scale" in _summary(t) and not is_bound(_summary(t))]
    if gns:  # lower bounds (|G|^2 not resolved) are left out: a median of estimates, not of bounds
        out["median_grad_noise_scale"] = float(np.median(gns))
    return out
