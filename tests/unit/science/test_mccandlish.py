"""McCandlish's predictions beside the sweep: known answers of the formulas, and the report's
"mccandlish" section on a study made by hand (no training)."""

import json

import numpy as np
import pytest
from optuna import create_study
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from sgdtune import report as report_mod
from sgdtune.report.mccandlish import agreement, path_mean
from sgdtune.science.mccandlish import (
    effective_lr,
    momentum_warmup,
    optimal_lr,
    predicted_examples,
    predicted_updates,
)

try:  # tests/ on sys.path (rootdir-relative imports) ...
    from browser import chromium, open_page  # noqa: F401  (chromium is a fixture)
except ImportError:  # ... or tests/ is a package
    from tests.browser import chromium, open_page  # noqa: F401


def test_the_optimal_lr_is_eps_max_over_one_plus_b_noise_over_b():
    # eps_max 2, B_noise 64: 2/(1 + 8) at B = 8, 2/2 at B = 64, 2/1.25 at B = 256
    assert optimal_lr([8, 64, 256], 2.0, 64.0) == pytest.approx([2 / 9, 1.0, 1.6], rel=1e-12)


def test_updates_and_examples_follow_s_min_with_b_noise_in_place_of_b_crit():
    # S_min 10, B_noise 64: S = 10 (1 + 4) = 50 at B = 16, 10 (1 + 1) = 20 at B = 64; E = B S
    assert predicted_updates([16, 64], 10.0, 64.0) == pytest.approx([50.0, 20.0], rel=1e-12)
    assert predicted_examples([16, 64], 10.0, 64.0) == pytest.approx([800.0, 1280.0], rel=1e-12)


def test_the_effective_lr_under_momentum_and_its_mean_over_the_warm_up():
    assert effective_lr(0.1, 0.9) == pytest.approx(1.0)
    assert effective_lr(0.1, None) == pytest.approx(0.1)
    # by hand at m = 0.9: the first step is lr g (a tenth of lr/(1 - m)); over 10 updates the mean share
    # is 1 - 0.9 (1 - 0.9^10) / (10 * 0.1) = 0.41379...
    assert momentum_warmup(0.9, 1) == pytest.approx(0.1)
    assert momentum_warmup(0.9, 10) == pytest.approx(1 - 0.9 * (1 - 0.9 ** 10), rel=1e-12)
    assert momentum_warmup(0.9, 10) == pytest.approx(np.mean([1 - 0.9 ** t for t in range(1, 11)]), rel=1e-12)
    assert momentum_warmup(0.0, [5, 50]) == pytest.approx([1.0, 1.0])


def test_the_path_mean_averages_b_noise_up_to_the_target_and_skips_missing_points():
    row = {"summary": {"updates_to_target": 8.0, "b_noise_at_target": 300.0}}
    path = {"updates": [2, 4, 6, 8, 10], "b_noise": [100.0, 200.0, None, 300.0, 999.0]}
    assert path_mean(row, path, "b_noise") == (pytest.approx(200.0), 3)
    assert path_mean(row, None, "b_noise") == (300.0, 1)  # no history: the value at the target


@pytest.mark.parametrize("b_noise,b_crit,verdict", [
    ({"value": 100.0, "ci_low": 60.0, "ci_high": 300.0}, {"value": 80.0, "ci_low": 50.0, "ci_high": 150.0}, "inside"),
    ({"value": 200.0, "ci_low": 120.0, "ci_high": 300.0}, {"value": 80.0, "ci_low": 50.0, "ci_high": 150.0},
     "overlap"),
    ({"value": 400.0, "ci_low": 300.0, "ci_high": 500.0}, {"value": 80.0, "ci_low": 50.0, "ci_high": 150.0}, "apart"),
    ({"value": 400.0, "ci_low": 300.0, "ci_high": 500.0}, {"value": 80.0, "ci_low": 50.0, "ci_high": None}, "inside"),
    ({"value": 400.0}, {"value": 80.0, "ci_low": 50.0, "ci_high": 150.0}, "no interval"),
])
def test_b_noise_agrees_with_b_crit_inside_its_interval_overlaps_or_is_apart(b_noise, b_crit, verdict):
    assert agreement(b_noise, b_crit) == {"ratio": pytest.approx(b_noise["value"] / b_crit["value"]),
                                          "verdict": verdict}


S_MIN, B_CRIT, MOMENTUM = 10.0, 64.0, 0.9
SIZES = [16, 32, 64, 128, 256]
B_NOISE = [150.0, 180.0, 200.0, 250.0, 300.0]  # at the target; median 200, about 3x B_crit
BEST_LR = 0.1  # effective 1.0 at every B


def hand_made_study(b_noise: bool = True):
    """At each B a best trial (lr 0.1) on S = 10 (1 + 64/B) exactly, with B_noise and eps_max = 2 at
    the target, and a slower trial at lr 0.3; at B = 16 a diverged one at lr 0.03; momentum 0.9."""
    study = create_study(study_name="mccandlish", direction="maximize")
    study.set_user_attr("objectives", ["val_acc"])
    study.set_user_attr("n_train", 2048)
    dists = {"batch_size": CategoricalDistribution(SIZES), "lr": CategoricalDistribution([0.03, 0.1, 0.3]),
             "momentum": CategoricalDistribution([MOMENTUM])}
    for b, bn in zip(SIZES, B_NOISE):
        for lr, slower in ((BEST_LR, 1.0), (0.3, 1.5)):
            summary = {"final_val_acc": 0.95, "final_train_acc": 0.96, "final_gen_gap": 0.01, "updates": 100.0,
                       "updates_to_target": S_MIN * (1 + B_CRIT / b) * slower,
                       **({"b_noise_at_target": bn * slower, "b_noise_at_target_se": 5.0, "eps_max_at_target": 2.0}
                          if b_noise else {})}
            study.add_trial(create_trial(params={"batch_size": b, "lr": lr, "momentum": MOMENTUM}, distributions=dists,
                                         value=0.95, user_attrs={"summary": summary}, state=TrialState.COMPLETE))
    # a diverged trial below the best lr at B = 16: the best is no longer at the end of the lrs tried there
    study.add_trial(create_trial(params={"batch_size": 16, "lr": 0.03, "momentum": MOMENTUM}, distributions=dists,
                                 state=TrialState.FAIL))
    return study


def test_the_report_sets_b_noise_and_its_predictions_beside_b_crit_and_the_best_lr():
    report = report_mod.build_report(hand_made_study())
    mc = report["mccandlish"]
    assert mc["trials"]["lr"] == [BEST_LR] * 5 and mc["trials"]["b_noise_at_target"] == B_NOISE
    assert mc["b_noise"]["value"] == pytest.approx(200.0)
    assert 150.0 <= mc["b_noise"]["ci_low"] < 200.0 < mc["b_noise"]["ci_high"] <= 300.0
    assert mc["b_crit"]["value"] == pytest.approx(B_CRIT, rel=1e-6)
    # resamples that draw only the slower trial at some B move the fit: an interval about 64, below B_noise's
    assert mc["b_crit"]["ci_low"] <= B_CRIT <= mc["b_crit"]["ci_high"] < mc["b_noise"]["ci_low"]
    assert mc["agreement"] == {"ratio": pytest.approx(200 / 64), "verdict": "apart"}
    st = mc["steps"]
    # S_min from the fit, B_noise 200 in B_crit's place: 10 (1 + 200/16) = 135 predicted, 50 measured at B = 16
    assert st["measured"]["predicted_updates"][0] == pytest.approx(135.0, rel=1e-6)
    assert st["measured"]["measured_over_predicted"][0] == pytest.approx(50 / 135, rel=1e-6)
    assert st["fitted_updates"][0] == pytest.approx(S_MIN * (1 + B_CRIT / 16), rel=1e-6)
    assert st["predicted_examples"][-1] == pytest.approx(256 * S_MIN * (1 + 200 / 256), rel=1e-6)
    lr = mc["lr"]
    assert lr["eps_max"] == 2.0
    # eps_opt = 2/(1 + 200/B): 0.148 at 16, 1.12 at 256; the best effective lr 0.1/(1 - 0.9) = 1.0
    assert lr["best"]["predicted"] == pytest.approx([2 / (1 + 200 / b) for b in SIZES], rel=1e-9)
    assert lr["best"]["best_effective_lr"] == pytest.approx([1.0] * 5)
    assert lr["best"]["best_warmup_lr"][0] == pytest.approx(float(momentum_warmup(0.9, 50.0)), rel=1e-9)
    # grid {0.1, 0.3} -> effective {1, 3}; the best, 1, at its lower end: one step (x3) either side is 1/3 to 3,
    # which eps_opt = 0.148, 0.276, 0.485, 0.78, 1.12 enters from B = 64
    assert lr["best"]["within_grid"] == [False, False, True, True, True]
    assert lr["best"]["best_at_grid_edge"] == [False, True, True, True, True]
    assert any("B_noise 200 examples" in s and "B_crit 64" in s and "they disagree" in s for s in report["summary"])
    assert any("within one grid step of it at 3 of 5 batch sizes" in s for s in report["summary"])


def test_a_study_without_b_noise_skips_the_section_and_says_why():
    report = report_mod.build_report(hand_made_study(b_noise=False))
    assert "steps_to_target" in report
    assert "mccandlish" not in report and "B_noise" in report["skipped"]["mccandlish"]


def test_the_mccandlish_plot_draws_in_headless_chromium(chromium, tmp_path):
    report = report_mod.build_report(hand_made_study())
    page = tmp_path / "report.html"
    page.write_text(report_mod.render_html(json.loads(report_mod.to_json(report))))
    with open_page(chromium, page) as visit:
        visit.page.wait_for_function("document.querySelector('#plot-mccandlish svg.main-svg') !== null",
                                     timeout=15_000)
        titles = visit.page.evaluate(
            "[...document.querySelectorAll('#plot-mccandlish text[class$=\"title\"]')].map(t => t.textContent)")
        points = visit.page.evaluate("document.querySelectorAll('#plot-mccandlish .scatterlayer .point').length")
        assert visit.console_errors == []
    axes = {"learning rate (log scale)", "updates to target (log scale)", "examples to target (log scale)"}
    assert axes <= set(titles)
    assert points >= 3 * 5  # best lr (two markers per B) and the measured updates and examples
