"""The report's sections (sgdtune/report/sections.py) on rows made by hand: known answers of the
Pareto front and of the octave trend's interval."""

import numpy as np
import pytest

from sgdtune import report as report_mod


@pytest.mark.parametrize("acc,time,front", [
    ([0.8, 0.9, 0.7, 0.95], [1.0, 2.0, 0.5, 4.0], [2, 0, 1, 3]),
    ([0.9, 0.8], [1.0, 2.0], [0]),  # slower and worse: dominated
    ([0.9, 0.9], [1.0, 1.0], [0]),  # a tie adds nothing
])
def test_pareto_front_keeps_trials_no_other_beats_on_both(acc, time, front):
    assert report_mod.pareto_front(np.array(acc), np.array(time)).tolist() == front


def test_the_trend_interval_covers_a_known_slope_in_95_percent_of_simulated_sweeps():
    """200 simulated studies: 8 octaves with 1, 1, 2, 2, 3, 4, 5, 6 complete trials (as pruning leaves
    them), val_acc = 0.9 + slope x log2(B / 8) + an lr effect N(0, 0.02) per trial, scored on 360
    validation examples. A line through the best trial per octave with a bootstrap interval covered the
    slope in 25% of 60 such studies (a best of 6 sits higher than a best of 1); this interval: 97%."""
    from sgdtune.report.sections import octave_trend

    rng = np.random.default_rng(20)
    sizes = np.repeat(2 ** np.arange(3, 11), [1, 1, 2, 2, 3, 4, 5, 6])
    covered = []
    for slope in np.linspace(-0.02, 0.01, 200):
        p = np.clip(0.9 + slope * (np.log2(sizes) - 3) + rng.normal(0, 0.02, sizes.size), 0.01, 0.999)
        rows = [{"number": i, "batch_size": int(b), "n_val": 360, "summary": {"final_val_acc": a}}
                for i, (b, a) in enumerate(zip(sizes, rng.binomial(360, p) / 360))]
        ci = octave_trend(rows)["ci"]
        covered.append(ci["ci_low"] <= slope <= ci["ci_high"])
    assert 0.90 <= np.mean(covered) <= 0.99
