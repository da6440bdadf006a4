"""Known answers of the fits (sgdtune/science/fits.py): the bootstrap intervals of B_crit and of a
log-log slope. The report's use of them: tests/unit/report/test_report.py."""

import numpy as np
import pytest

from sgdtune.science.fits import critical_batch_intervals, loglog_slope, loglog_slope_interval

WOBBLE = [1.0, 1.1, 0.9, 1.05, 0.95, 1.2, 0.8, 1.0]  # points off the power law, so the resamples differ


def test_the_bootstrap_interval_of_b_crit_holds_the_true_value_and_is_seeded():
    s_min, b_crit = 200.0, 100.0
    b = 8 * 2 ** np.arange(8)  # 8 ... 1024

    def noisy(seed):
        return s_min * (1 + b_crit / b) * np.exp(np.random.default_rng(seed).normal(0, 0.05, b.size))

    ci = critical_batch_intervals(b, noisy(0))
    assert ci["b_crit"].low < b_crit < ci["b_crit"].high
    assert ci["s_min"].low < s_min < ci["s_min"].high
    assert ci["b_crit"].high / ci["b_crit"].low < 1.5  # 5% noise on 8 points: a tight interval
    assert critical_batch_intervals(b, noisy(0)) == ci  # seeded: the same data, the same interval
    assert critical_batch_intervals(b, noisy(0), seed=1) != ci
    # over independent data sets it covers the truth most of the time (nominal 95%; a case bootstrap
    # of 8 points runs a little below that: 19 of these 20)
    covered = [c.low <= b_crit <= c.high for c in (critical_batch_intervals(b, noisy(k))["b_crit"] for k in range(20))]
    assert sum(covered) >= 15


def test_a_slope_interval_is_the_percentile_of_resampled_slopes():
    x = np.array([8, 16, 32, 64, 128, 256], float)
    y = x ** -0.5 * np.array(WOBBLE[:6])
    ci = loglog_slope_interval(x, y)
    assert ci.low < loglog_slope(x, y) < ci.high and ci.resamples == 1000
    rng, slopes = np.random.default_rng(0), []  # by hand: 1,000 resamples of the 6 points, seed 0
    for _ in range(1000):
        idx = rng.integers(0, 6, 6)
        if np.unique(x[idx]).size >= 2:
            slopes.append(np.polyfit(np.log(x[idx]), np.log(y[idx]), 1)[0])
    assert ci.failed == 1000 - len(slopes)
    assert (ci.low, ci.high) == pytest.approx(tuple(np.quantile(slopes, [0.025, 0.975], method="inverted_cdf")))
