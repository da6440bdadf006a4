"""The sweep report: report.json against the stores, reproducibility, and the page in Chromium."""

import hashlib
import json
import shlex
import shutil

import numpy as np
import optuna
import pytest
from conftest import EXPERIMENTS
from mlflow import MlflowClient
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from sgdtune import report as report_mod
from sgdtune.cli import report_main, study_main
from sgdtune.errors import InputError
from sgdtune.science.fits import (
    binomial_se,
    fit_steps_to_target,
    loglog_slope,
    study_metrics,
)
from sgdtune.search.strategy import derive_seed
from sgdtune.store.stores import open_storage
from sgdtune.store.tracking import Tracker, default_tracking_uri

try:  # tests/ on sys.path (rootdir-relative imports) ...
    from browser import chromium, open_page, png_stats  # noqa: F401  (chromium is a fixture)
except ImportError:  # ... or tests/ is a package
    from tests.browser import chromium, open_page, png_stats  # noqa: F401

SECTIONS = {"accuracy", "equal_budget", "per_doubling", "per_octave", "loss_noise", "grad_noise", "learning_curves",
            "importance", "history", "top_trials", "summary", "reproducibility", "volatile", "trials", "study",
            "time_to_accuracy", "recommendation"}
PLOTS = ["plot-accuracy", "plot-curves", "plot-loss-noise", "plot-grad-noise", "plot-compute", "plot-pareto",
         "plot-history", "plot-importance"]  # quick.toml has no target: no steps-to-target plot


def quick_plots(report: dict) -> list[str]:
    """PLOTS, with the sharpness plot where the trainer recorded final_sharpness, and the device
    profile's where the study has one."""
    return (PLOTS[:4] + ["plot-sharpness"] * ("sharpness" in report) + PLOTS[4:5]
            + ["plot-profile"] * ("profile" in report["volatile"]) + PLOTS[5:])


def run_commands(cwd, monkeypatch, study_command: str, report_command: str) -> dict:
    """Run the study and report commands (as recorded in a report) in `cwd`, in-process."""
    shutil.copytree(EXPERIMENTS, cwd / "experiments")
    monkeypatch.chdir(cwd)
    assert study_main(shlex.split(study_command)[3:]) == 0
    assert report_main(shlex.split(report_command)[3:]) == 0
    return json.loads((cwd / "reports/quick/report.json").read_text())


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick study and its report, made by the commands a user types."""
    cwd = tmp_path_factory.mktemp("quick")
    with pytest.MonkeyPatch.context() as mp:
        report = run_commands(cwd, mp, "python -m sgdtune.study experiments/quick.toml --no-progress",
                              "python -m sgdtune.report")
    study = optuna.load_study(study_name="quick", storage=open_storage(str(cwd / "mlruns/optuna.journal")))
    client = MlflowClient(f"sqlite:///{cwd}/mlruns/mlflow.db")
    return cwd, report, study, client


def test_report_json_has_every_section_and_skips_steps_without_a_target(quick):
    _, report, _, _ = quick
    assert SECTIONS <= set(report)
    assert set(report["skipped"]) - {"sharpness"} == {"steps_to_target", "mccandlish"}  # sharpness: where recorded
    assert "target_val_acc" in report["skipped"]["steps_to_target"]
    assert "target_val_acc" in report["skipped"]["mccandlish"]  # B_noise beside B_crit needs the S(B) fit
    assert set(report["volatile"]) == {"timings", "memory_mb", "profile", "mlflow", "dates"}
    assert len(report["summary"]) >= 6


def test_report_numbers_equal_the_optuna_storage(quick):
    _, report, study, _ = quick
    trials = {t.number: t for t in study.get_trials()}
    assert [r["number"] for r in report["trials"]] == sorted(trials)
    for row in report["trials"]:
        t = trials[row["number"]]
        assert row["state"] == t.state.name
        assert row["values"]["val_acc"] == pytest.approx(t.values[0], rel=1e-9)
        assert row["params"] == pytest.approx(t.params, rel=1e-9)
        for key, value in row["summary"].items():
            assert value == pytest.approx(t.user_attrs["summary"][key], rel=1e-9), key
        assert "compute_time_s" not in row["summary"]  # timings live under "volatile" only
        assert report["volatile"]["timings"]["trials"][str(t.number)]["compute_time_s"] == pytest.approx(
            t.user_attrs["summary"]["compute_time_s"], rel=1e-9)
    assert report["top_trials"][0]["number"] == study.best_trial.number
    assert report["history"]["value"] == pytest.approx([t.values[0] for t in trials.values()], rel=1e-9)
    fanova = optuna.importance.FanovaImportanceEvaluator(seed=0)
    expected = optuna.importance.get_param_importances(study, evaluator=fanova)
    assert report["importance"]["importance"] == pytest.approx(dict(expected), rel=1e-9)
    assert report["study"]["trials_by_state"] == {"COMPLETE": 4, "PRUNED": 0, "FAIL": 0}


def test_report_numbers_equal_mlflow(quick):
    cwd, report, study, client = quick
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    m = parent.data.metrics
    assert report["study"]["trials_by_state"]["COMPLETE"] == m["n_complete"]
    assert max(report["accuracy"]["final_val_acc"]) == pytest.approx(m["best_val_acc"], rel=1e-9)
    # every trial with B < N enters the slope (no N/8 cut); full-batch trials have no loss noise
    ln = report["loss_noise"]
    n_train = study.user_attrs["n_train"]
    assert ("slope" in ln) == ("loss_noise_slope" in m)
    if "slope" in ln:
        assert ln["slope"] == pytest.approx(m["loss_noise_slope"], rel=1e-9)
        assert ln["slope_ci"]["ci_low"] <= ln["slope"] <= ln["slope_ci"]["ci_high"]
    assert all(b < n_train for b in ln["batch_size"])
    complete = [r for r in report["trials"] if r["state"] == "COMPLETE"]
    assert ln["excluded"]["number"] == [r["number"] for r in complete if not r["summary"]["final_loss_noise"]]
    assert sorted(ln["number"] + ln["excluded"]["number"]) == [r["number"] for r in complete]
    assert report["grad_noise"]["median_final"] == pytest.approx(m["median_grad_noise_scale"], rel=1e-9)
    # val_acc's binomial standard error from the run's n_val
    acc = report["accuracy"]
    for number, p, se in zip(acc["number"], acc["final_val_acc"], acc["final_val_acc_se"]):
        n_val = int(client.get_run(report["volatile"]["mlflow"]["run_ids"][str(number)]).data.params["n_val"])
        assert se == pytest.approx(np.sqrt(p * (1 - p) / n_val), rel=1e-6)

    run_ids = report["volatile"]["mlflow"]["run_ids"]
    assert run_ids == {str(t.number): t.user_attrs["mlflow_run_id"] for t in study.get_trials()}
    for curve in report["grad_noise"]["curves"]:
        history = client.get_metric_history(run_ids[str(curve["number"])], "grad_noise_scale")
        history.sort(key=lambda h: h.step)
        assert curve["epoch"] == [h.step for h in history]
        assert curve["grad_noise_scale"] == pytest.approx([h.value for h in history], rel=1e-9)
    curves = report["learning_curves"]["trials"]
    for curve in curves:
        run = client.get_run(run_ids[str(curve["number"])])
        assert curve["batch_size"] == int(run.data.params["batch_size"])
        assert curve["val_acc"][-1] == pytest.approx(run.data.metrics["final_val_acc"], rel=1e-9)
    assert len({c["batch_size"] for c in curves}) == len(curves)  # one per batch size

    repro = report["reproducibility"]
    text = (EXPERIMENTS / "quick.toml").read_text()
    assert repro["experiment_file"]["content"] == text
    assert repro["experiment_file"]["sha256"] == hashlib.sha256(text.encode()).hexdigest() == \
        parent.data.tags["sgdtune.experiment_sha256"]
    assert repro["versions"]["optuna"] == optuna.__version__
    assert repro["study_command"] == "python -m sgdtune.study experiments/quick.toml --no-progress"
    assert repro["trial_seeds"] == {str(t.number): derive_seed(0, t.number) for t in study.get_trials()}


def test_report_files_are_logged_to_the_parent_run(quick):
    cwd, report, study, client = quick
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    logged = sorted(a.path for a in client.list_artifacts(parent_id, "report"))
    assert logged == ["report/report.html", "report/report.json"]
    path = client.download_artifacts(parent_id, "report/report.json", str(cwd))
    assert json.loads(open(path).read()) == report


def test_html_is_a_function_of_report_json_alone_with_plotly_inlined_once(quick):
    cwd, report, _, _ = quick
    page = (cwd / "reports/quick/report.html").read_text()
    assert report_mod.render_html(report) == page
    assert page.count("plotly.js v") == 1  # the bundle's banner: inlined once
    assert "<script src" not in page
    for div in quick_plots(report):
        assert f'id="{div}"' in page
    assert 'id="plot-steps"' not in page and "Not shown: no trial recorded updates_to_target" in page


def test_the_recorded_commands_in_a_fresh_directory_reproduce_report_json(quick, tmp_path, monkeypatch):
    _, first, _, _ = quick
    repro = first["reproducibility"]
    again = run_commands(tmp_path, monkeypatch, repro["study_command"], repro["report_command"])
    # the answer depends on measured step times (the fastest B): compared apart, below
    timed = ("volatile", "recommendation", "time_to_accuracy")
    assert {k: v for k, v in again.items() if k not in timed} == {k: v for k, v in first.items() if k not in timed}
    for key in ("updates", "examples", "reached", "epoch"):  # when each trial reached the goal: no timing in it
        assert again["time_to_accuracy"]["trials"][key] == first["time_to_accuracy"]["trials"][key]
    assert again["recommendation"]["within_noise"] == first["recommendation"]["within_noise"]
    # and what does differ is under "volatile": fresh MLflow run ids, the store's path
    assert again["volatile"]["mlflow"]["run_ids"] != first["volatile"]["mlflow"]["run_ids"]
    assert again["volatile"]["mlflow"]["tracking_uri"] != first["volatile"]["mlflow"]["tracking_uri"]


def test_page_draws_every_plot_offline_in_headless_chromium(quick, chromium):
    cwd, report, _, _ = quick
    plots = quick_plots(report)
    with open_page(chromium, cwd / "reports/quick/report.html", wait_until="load") as visit:
        drawn, png = draw(visit, len(plots))
    assert [d[0] for d in drawn] == plots
    width, height, colours = png_stats(png)
    assert width == 1400 and height > 3000 and colours > 100


# Per plotly div: its id, its svg layers, its drawn points and bars, its axis titles.
PLOTS_DRAWN = """() => [...document.querySelectorAll('.js-plotly-plot')].map(d => [d.id,
    d.querySelectorAll('svg.main-svg').length, d.querySelectorAll('.scatterlayer .point, .barlayer .point').length,
    [...d.querySelectorAll('.xtitle, .ytitle')].map(t => t.textContent)])"""


def draw(visit, n_plots: int):
    """Wait until n_plots plotly divs have drawn; check them and that the page stayed offline and error-free."""
    visit.page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot svg.main-svg').length >= {n_plots}",
                                 timeout=15_000)
    drawn = visit.page.evaluate(PLOTS_DRAWN)
    png = visit.screenshot()
    assert visit.console_errors == []
    assert visit.external_requests == []
    assert all(r.startswith(("file:", "data:")) for r in visit.requests)
    for div, svgs, points, titles in drawn:
        assert svgs >= 1 and points >= 1, div
        assert len(titles) >= 2 and all(titles), (div, titles)  # each axis labelled
    return drawn, png


# -- the sections on studies made by hand: known answers, no training ---------------------------------


def synthetic_study(updates_to_target=None, n=6, n_val=None, extra=None, acc=None) -> optuna.Study:
    """Complete trials at B = 16, 32, ... (n of them) of N = 2048 examples with a made-up summary (no
    MLflow). Without n_val or `extra` it is an older store: no validation-set size, no standard
    errors, no sharpness. extra(i, b) adds summary metrics; acc(i, b) sets final_val_acc."""
    study = optuna.create_study(study_name="synthetic", direction="maximize")
    study.set_user_attr("objectives", ["val_acc"])
    study.set_user_attr("n_train", N_TRAIN)
    if n_val:
        study.set_user_attr("n_val", n_val)
    dists = {"batch_size": IntDistribution(16, 4096, log=True), "lr": FloatDistribution(0.01, 0.1, log=True),
             "epochs": CategoricalDistribution([3])}
    for i, b in enumerate(16 * 2 ** np.arange(n)):
        val = acc(i, b) if acc else 0.9 - 0.01 * i
        summary = {"final_val_acc": val, "final_train_acc": val + 0.02, "final_gen_gap": 0.02,
                   "final_loss_noise": 0.4 / np.sqrt(b) if b < N_TRAIN else 0.0,  # full batch: one batch, no noise
                   "final_grad_noise_scale": 100.0 + i, "updates": 1000 / b}
        if updates_to_target is not None:
            summary["updates_to_target"] = float(updates_to_target(b))
        summary.update(extra(i, b) if extra else {})
        params = {"batch_size": int(b), "lr": 0.01 * (1 + i), "epochs": 3}
        study.add_trial(create_trial(params=params, distributions=dists, value=val, user_attrs={"summary": summary},
                                     state=TrialState.COMPLETE))
    return study


N_TRAIN = 2048


def test_steps_fit_recovers_a_known_critical_batch_size():
    s_min, b_crit = 200.0, 128.0
    report = report_mod.build_report(synthetic_study(lambda b: s_min * (1 + b_crit / b)))
    fit = report["steps_to_target"]["fit"]
    assert fit["s_min"] == pytest.approx(s_min, rel=1e-6)
    assert fit["b_crit"] == pytest.approx(b_crit, rel=1e-6)
    assert report["grad_noise"]["critical_batch_size"]["value"] == pytest.approx(b_crit, rel=1e-6)
    # perfect scaling far below B_crit: the measured speed-up per doubling tends to 2
    speedup = report["steps_to_target"]["best"]["speedup_per_doubling"]
    assert speedup[0] == pytest.approx((1 + 128 / 16) / (1 + 128 / 32), rel=1e-6)  # 1.8: near 2 well below B_crit
    assert speedup[-1] == pytest.approx((1 + 128 / 256) / (1 + 128 / 512), rel=1e-6)  # 1.2: little gain above it
    assert any("B_crit = 128 examples" in s for s in report["summary"])


def test_loss_noise_of_a_fixed_model_has_slope_minus_one_half():
    report = report_mod.build_report(synthetic_study())
    ln = report["loss_noise"]
    assert ln["batch_size"] == [16, 32, 64, 128, 256, 512]  # every B < N, 512 > N/8 included
    assert ln["slope"] == pytest.approx(-0.5, abs=1e-9)
    assert ln["slope"] == pytest.approx(loglog_slope(ln["batch_size"], ln["loss_noise"]), rel=1e-9)
    assert ln["slope_ci"]["ci_low"] == pytest.approx(-0.5) and ln["slope_ci"]["ci_high"] == pytest.approx(-0.5)
    assert ln["theory_in_ci"]
    assert any("Loss noise fell with batch size with log-log slope -0.50 (95% bootstrap interval -0.50 to -0.50;"
               in s for s in report["summary"])


WOBBLE = [1.0, 1.1, 0.9, 1.05, 0.95, 1.2, 0.8, 1.0]  # loss noise off the law, so the points fitted matter


def test_the_loss_noise_slope_has_no_n_over_8_cut_and_leaves_full_batch_trials_out():
    study = synthetic_study(n=8, extra=lambda i, b: {"final_loss_noise": 0.4 / np.sqrt(b) * WOBBLE[i]}
                            if b < N_TRAIN else {})
    ln = report_mod.build_report(study)["loss_noise"]
    b, y = 16 * 2 ** np.arange(7), 0.4 / np.sqrt(16 * 2 ** np.arange(7)) * WOBBLE[:7]
    assert ln["batch_size"] == b.tolist() and max(ln["batch_size"]) == N_TRAIN // 2  # up to N/2
    assert ln["excluded"]["number"] == [7] and ln["excluded"]["full_batch"] == [True]  # B = N: loss noise 0
    assert ln["slope"] == pytest.approx(loglog_slope(b, y), rel=1e-9)
    assert ln["slope"] != pytest.approx(loglog_slope(b[:5], y[:5]), rel=1e-3)  # the old B <= N/8 fit differs
    assert study_metrics(study.get_trials(), N_TRAIN)["loss_noise_slope"] == pytest.approx(ln["slope"], rel=1e-9)
    ci = ln["slope_ci"]
    assert ci["ci_low"] < ln["slope"] < ci["ci_high"] and ci["level"] == 0.95
    assert ci == report_mod.build_report(study)["loss_noise"]["slope_ci"]  # seeded


@pytest.mark.parametrize("n,reason", [(1, "1 distinct batch size"), (2, "2 distinct batch sizes")])
def test_a_loss_noise_slope_needs_3_batch_sizes(n, reason):
    study = synthetic_study(n=n)
    report = report_mod.build_report(study)
    assert "slope" not in report["loss_noise"] and reason in report["loss_noise"]["fit_skipped"]
    assert any("Loss noise: no slope fitted" in s for s in report["summary"])
    assert "loss_noise_slope" not in study_metrics(study.get_trials(), N_TRAIN)


def test_a_loss_noise_slope_needs_batch_sizes_spanning_a_factor_4():
    study = synthetic_study(n=3)  # 16, 32, 64: a factor 4, fitted
    assert "slope" in report_mod.build_report(study)["loss_noise"]
    dists = {"batch_size": IntDistribution(16, 4096, log=True)}
    narrow = optuna.create_study()
    for b in (16, 24, 32):
        narrow.add_trial(create_trial(params={"batch_size": b}, distributions=dists, value=0.5,
                                      user_attrs={"summary": {"final_loss_noise": 0.4 / np.sqrt(b)}}))
    assert "loss_noise_slope" not in study_metrics(narrow.get_trials(), N_TRAIN)


def test_the_report_prints_the_b_crit_interval():
    rng = np.random.default_rng(3)
    study = synthetic_study(lambda b: 200 * (1 + 128 / b) * np.exp(rng.normal(0, 0.05)), n=7)
    fit = report_mod.build_report(study)["steps_to_target"]["fit"]
    ci = fit["b_crit_ci"]
    assert ci["ci_low"] < fit["b_crit"] < ci["ci_high"] and ci["level"] == 0.95 and ci["resamples"] == 1000
    assert fit["b_crit"] == pytest.approx(fit_steps_to_target(16 * 2 ** np.arange(7), [
        t.user_attrs["summary"]["updates_to_target"] for t in study.get_trials()]).b_crit, rel=1e-9)
    report = report_mod.build_report(study)
    assert any(f"B_crit = {fit['b_crit']:.3g} examples (95% bootstrap interval {ci['ci_low']:.3g} to "
               f"{ci['ci_high']:.3g}" in s for s in report["summary"])
    assert report["grad_noise"]["critical_batch_size"]["ci_low"] == ci["ci_low"]
    page = report_mod.render_html(json.loads(report_mod.to_json(report)))
    assert f"95% CI {ci['ci_low']:.3g} to {ci['ci_high']:.3g}" in page


def test_binomial_standard_errors_of_val_acc():
    assert binomial_se(0.9, 100) == pytest.approx(0.03, rel=1e-12)
    assert binomial_se(0.5, 10_000) == pytest.approx(0.005, rel=1e-12)
    assert binomial_se(1.0, 50) == 0.0
    report = report_mod.build_report(synthetic_study(n_val=400))
    a = report["accuracy"]
    assert a["final_val_acc_se"] == pytest.approx([np.sqrt(p * (1 - p) / 400) for p in a["final_val_acc"]], rel=1e-9)
    assert set(a["final_val_acc_se_source"]) == {"binomial"}
    assert a["best_per_batch"]["final_val_acc_se"] == a["final_val_acc_se"]  # one trial per size
    assert report["top_trials"][0]["final_val_acc_se"] == pytest.approx(0.015, rel=1e-9)  # 0.9 of 400


def test_a_replicate_standard_error_is_combined_with_the_binomial_one():
    report = report_mod.build_report(synthetic_study(n_val=400, extra=lambda i, b: {"final_val_acc_se": 0.02}))
    a = report["accuracy"]
    assert a["final_val_acc_se"][0] == pytest.approx(np.hypot(0.02, 0.015), rel=1e-9)
    assert set(a["final_val_acc_se_source"]) == {"replicates+binomial"}
    older = report_mod.build_report(synthetic_study(extra=lambda i, b: {"final_val_acc_se": 0.02}))  # no n_val
    assert older["accuracy"]["final_val_acc_se"][0] == 0.02


def two_sizes(acc_small: float, acc_large: float) -> dict:
    return report_mod.build_report(synthetic_study(n=2, n_val=1000, acc=lambda i, b: (acc_small, acc_large)[i]))


def test_the_summary_says_when_a_difference_is_within_noise():
    report = two_sizes(0.900, 0.897)  # SE 0.0095 and 0.0096: 0.003 is well within 2 combined SE
    c = report["per_doubling"]["smallest_vs_largest"]
    assert c["difference"] == pytest.approx(0.003) and c["within_noise"]
    assert c["se"] == pytest.approx(np.hypot(binomial_se(0.9, 1000), binomial_se(0.897, 1000)), rel=1e-9)
    assert sum("within noise (|Δ| < 2 SE)" in s for s in report["summary"]) == 2  # equal budget and smallest/largest
    clear = two_sizes(0.90, 0.80)
    assert not clear["per_doubling"]["smallest_vs_largest"]["within_noise"]
    assert not any("within noise" in s for s in clear["summary"])
    assert any("beyond noise" in s for s in clear["summary"])
    assert any("(1 step): 1 step beyond noise (2 SE), B = 16 -> 32: -0.1000 per doubling (6.3 SE)." in s
               for s in clear["summary"])
    steps = report_mod.build_report(synthetic_study(n_val=2000))  # 0.01 per doubling, SE about 0.01
    assert any("(5 steps): no step beyond noise" in s for s in steps["summary"])


def test_the_summary_states_the_loss_at_the_largest_batch_and_where_gains_stop():
    report = report_mod.build_report(synthetic_study())
    eq = report["equal_budget"]
    assert (eq["largest_batch_size"], eq["best_batch_size"]) == (512, 16)
    assert eq["loss"] == pytest.approx(0.05, abs=1e-9)
    assert report["per_doubling"]["gain_per_doubling"] == pytest.approx([-0.01] * 5, abs=1e-9)
    assert report["per_doubling"]["fell_off_at"] == 16
    assert any("the largest batch size B = 512 reached val_acc 0.8500, 0.0500 below the best, 0.9000 at B = 16" in s
               for s in report["summary"])


def test_a_study_without_mlflow_still_reports_and_skips_what_needs_histories():
    report = report_mod.build_report(synthetic_study())
    assert "learning_curves" in report["skipped"]
    assert report["grad_noise"]["curves"] == []
    assert "mlflow" not in report["volatile"]


def test_an_older_study_without_the_new_metrics_still_reports():
    report = json.loads(report_mod.to_json(report_mod.build_report(synthetic_study())))  # no n_val, SEs, sharpness
    assert "final_sharpness" in report["skipped"]["sharpness"]
    assert report["accuracy"]["final_val_acc_se"] == [None] * 6 and "se_missing" in report["accuracy"]
    assert report["per_doubling"]["smallest_vs_largest"]["within_noise"] is None
    assert any("no standard error (validation set size unknown)" in s for s in report["summary"])
    gn = report["grad_noise"]
    assert gn["n_bounds"] == 0 and gn["final"]["grad_noise_scale_se"] == [None] * 6
    page = report_mod.render_html(report)
    assert 'id="plot-sharpness"' not in page and "Not shown: no trial recorded final_sharpness" in page


def new_metrics(i, b):
    """Sharpness rising with B (full batch at twice the edge of stability), noise-scale SEs, and
    lower bounds at the two largest batch sizes."""
    return {"final_sharpness": 10.0 * (i + 1), "final_lr_sharpness": 0.01 * (1 + i) * 10.0 * (i + 1),
            "final_grad_noise_scale_se": 4.0 + i, "final_grad_noise_scale_bound": float(i >= 6)}


def test_noise_scale_bounds_are_left_out_of_the_median_and_sharpness_meets_the_edge_of_stability():
    study = synthetic_study(n=8, n_val=500, extra=new_metrics)
    report = report_mod.build_report(study)
    gn = report["grad_noise"]
    assert gn["final"]["lower_bound"] == [False] * 6 + [True] * 2
    assert gn["n_bounds"] == 2 and gn["median_final"] == pytest.approx(np.median(100.0 + np.arange(6)))
    assert study_metrics(study.get_trials(), N_TRAIN)["median_grad_noise_scale"] == gn["median_final"]
    assert any("2 lower bounds left out" in s for s in report["summary"])
    sh = report["sharpness"]
    assert sh["final_sharpness"] == [10.0 * (i + 1) for i in range(8)]
    assert sh["full_batch"]["number"] == [7] and sh["full_batch"]["two_over_lr"] == [pytest.approx(25.0)]
    assert sh["full_batch"]["ratio_to_edge"] == [pytest.approx(80 / 25)]
    every_bound = report_mod.build_report(synthetic_study(extra=lambda i, b: {"final_grad_noise_scale_bound": 1.0}))
    assert every_bound["grad_noise"]["median_is_lower_bound"]
    assert every_bound["grad_noise"]["b_simple"]["lower_bound"]


def test_the_noise_scale_is_called_b_simple_never_a_critical_batch_and_is_flagged_above_n_train():
    huge = report_mod.build_report(synthetic_study(extra=lambda i, b: {"final_grad_noise_scale": 3000.0 + i,
                                                                       "final_grad_noise_scale_se": 0.0}))
    gn = huge["grad_noise"]
    assert gn["critical_batch_size"]["value"] is None and gn["compared_with"] == "B_simple"
    assert gn["b_simple"]["value"] == pytest.approx(3002.5) and gn["b_simple"]["above_n_train"]
    sentence = next(s for s in huge["summary"] if s.startswith("Gradient noise scale"))
    assert "B_simple" in sentence and "B_noise" not in sentence and "critical batch size estimate" not in sentence
    assert f"above n_train = {N_TRAIN:,}: B_simple exceeds n_train" in sentence
    assert "Critical batch size not estimated" in sentence
    from sgdtune.report.figures import fig_grad_noise

    names = [t.name or "" for t in fig_grad_noise(gn).data]
    assert not any("critical" in n for n in names) and any("median final B_simple" in n for n in names)
    assert not any("± 1 SE" in n for n in names)  # every SE is 0: no error bars claimed
    fitted = report_mod.build_report(synthetic_study(lambda b: 200 * (1 + 128 / b)))["grad_noise"]
    assert fitted["critical_batch_size"]["value"] == pytest.approx(128, rel=1e-6)
    assert fitted["compared_with"] == "B_crit"
    assert not fitted["b_simple"]["above_n_train"]


def test_error_bars_bounds_and_sharpness_draw_in_headless_chromium(chromium, tmp_path):
    report = report_mod.build_report(synthetic_study(lambda b: 200 * (1 + 128 / b), n=8, n_val=500,
                                                     extra=new_metrics))
    page = tmp_path / "report.html"
    page.write_text(report_mod.render_html(json.loads(report_mod.to_json(report))))
    with open_page(chromium, page) as visit:
        drawn, _ = draw(visit, 7)
        error_bars = visit.page.evaluate("document.querySelectorAll('.errorbar').length")
        open_markers = visit.page.evaluate(
            "[...document.querySelectorAll('#plot-grad-noise .legendtext')].map(t => t.textContent)")
    assert [d[0] for d in drawn] == ["plot-accuracy", "plot-loss-noise", "plot-grad-noise", "plot-steps",
                                     "plot-sharpness", "plot-history", "plot-importance"]
    assert error_bars >= 8 + 8 + 6  # val_acc per trial, best per B, noise-scale estimates
    assert any("lower bound" in t for t in open_markers)


def test_steps_plot_and_a_report_without_mlflow_draw_in_headless_chromium(chromium, tmp_path):
    report = report_mod.build_report(synthetic_study(lambda b: 200 * (1 + 128 / b)))
    page = tmp_path / "report.html"
    page.write_text(report_mod.render_html(json.loads(report_mod.to_json(report))))
    with open_page(chromium, page) as visit:
        drawn, _ = draw(visit, 6)
    # no MLflow: no learning curves; no timings: no compute or Pareto plot
    assert [d[0] for d in drawn] == ["plot-accuracy", "plot-loss-noise", "plot-grad-noise", "plot-steps",
                                     "plot-history", "plot-importance"]


# -- the command line ---------------------------------------------------------------------------------------


def test_help_teaches_with_examples(capsys):
    with pytest.raises(SystemExit) as exit_:
        report_main(["--help"])
    assert exit_.value.code == 0
    assert "python -m sgdtune.report --study-name quick" in capsys.readouterr().out


@pytest.fixture
def two_studies(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage = open_storage("mlruns/optuna.journal")
    for name in ("b", "a"):
        optuna.create_study(study_name=name, storage=storage)
    return tmp_path


@pytest.mark.parametrize("argv,message", [
    ([], "--study-name: required when the storage holds several studies; one of 'a', 'b'; got none"),
    (["--study-name", "c"], "--study-name: must be one of 'a', 'b'; got 'c'"),
    (["--storage", "missing.journal"],
     "--storage: must be an existing Optuna journal file or a database URL; got 'missing.journal'"),
])
def test_bad_input_exits_2_with_one_message_and_writes_nothing(two_studies, capsys, argv, message):
    assert report_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (two_studies / "reports").exists()


def test_a_tracking_uri_without_the_study_exits_2_and_creates_no_store(quick, tmp_path, capsys):
    cwd, _, _, _ = quick
    wrong = f"sqlite:///{tmp_path}/other.db"
    argv = ["--storage", str(cwd / "mlruns/optuna.journal"), "--tracking-uri", wrong, "--out", str(tmp_path)]
    assert report_main(argv) == 2
    assert f"--tracking-uri: must name an existing MLflow store; got '{wrong}'" in capsys.readouterr().err
    assert not (tmp_path / "other.db").exists()


def test_a_store_without_the_parent_run_is_bad_input_naming_the_flag(tmp_path):
    study = synthetic_study()
    study.set_user_attr("mlflow_parent_run_id", "0" * 32)
    uri = default_tracking_uri(tmp_path / "mlruns")
    Tracker(uri, "other")  # a store that exists, holding another study
    with pytest.raises(InputError, match=f"--tracking-uri: must hold the study's parent run {'0' * 32}; got") as e:
        report_mod.open_runs(study, uri)
    assert e.value.field == "--tracking-uri"
    assert report_mod.open_runs(synthetic_study(), uri) is None  # a study run with --no-tracking


# -- per octave of B, trends only where they hold, readable plots ------------------------------------------


def study_of(trials: list[tuple[int, float, str]], n_val: int = 1000) -> optuna.Study:
    """Trials (B, final val_acc, state) of N = 2048 examples, lr 0.01 + 0.001 * number, no MLflow."""
    study = optuna.create_study(study_name="octaves", direction="maximize")
    study.set_user_attr("objectives", ["val_acc"])
    study.set_user_attr("n_train", N_TRAIN)
    study.set_user_attr("n_val", n_val)
    dists = {"batch_size": IntDistribution(8, 1024, log=True), "lr": FloatDistribution(0.001, 0.3, log=True)}
    for i, (b, acc, state) in enumerate(trials):
        summary = {"final_val_acc": acc, "final_train_acc": acc, "final_gen_gap": 0.0,
                   "final_loss_noise": 0.1 * WOBBLE[i % len(WOBBLE)]}  # no trend in B
        study.add_trial(create_trial(params={"batch_size": b, "lr": 0.01 + 0.001 * i}, distributions=dists,
                                     value=acc if state == "COMPLETE" else None, state=TrialState[state],
                                     user_attrs={"summary": summary}, intermediate_values={1: acc}))
    return study


# B on a continuous range: 8, 9, 11 share the octave 8-15; 16 and 20 the octave 16-31; 40 alone in 32-63
CONTINUOUS = [(8, 0.90, "COMPLETE"), (9, 0.95, "COMPLETE"), (11, 0.92, "COMPLETE"), (16, 0.85, "COMPLETE"),
              (20, 0.80, "COMPLETE"), (40, 0.70, "PRUNED"), (40, 0.75, "COMPLETE"), (100, 0.60, "COMPLETE")]


def test_summaries_are_per_octave_of_batch_size_with_known_answers():
    report = report_mod.build_report(study_of(CONTINUOUS))
    po = report["per_octave"]
    assert po["octave"] == [3, 4, 5, 6]
    assert po["label"] == ["8-15", "16-31", "40", "100"]  # one B seen: that B names the octave
    assert (po["n_trials"], po["n_complete"], po["n_pruned"]) == ([3, 2, 2, 1], [3, 2, 1, 1], [0, 0, 1, 0])
    assert po["best_val_acc"] == [0.95, 0.85, 0.75, 0.60] and po["best_batch_size"] == [9, 16, 40, 100]
    assert po["best_number"] == [1, 3, 6, 7]
    assert po["median_val_acc"] == pytest.approx([0.92, 0.825, 0.75, 0.60])
    assert po["best_val_acc_se"][0] == pytest.approx(binomial_se(0.95, 1000), rel=1e-9)
    fit = po["fit"]  # every complete trial against log2(its B), weighted by 1 / binomial variance
    done = [(b, a) for b, a, state in CONTINUOUS if state == "COMPLETE"]
    p = (np.array([a for _, a in done]) * 1000 + 2) / 1004
    w = 1004 / (p * (1 - p))
    assert fit["gain_per_doubling"] == pytest.approx(
        np.polyfit(np.log2([b for b, _ in done]), [a for _, a in done], 1, w=np.sqrt(w))[0], rel=1e-9)
    assert fit["n_trials"] == 7 and fit["ci"]["ci_high"] < 0 and fit["trend"]
    # per_doubling steps between neighbouring octaves, not between sampled values (8 -> 9 -> 11)
    pd = report["per_doubling"]
    assert pd["batch_size"] == [9, 16, 40, 100]
    assert pd["gain_per_doubling"][0] == pytest.approx((0.85 - 0.95) / np.log2(16 / 9), rel=1e-9)
    assert not any("(8->9)" in s or "(9->11)" in s for s in report["summary"])
    assert any(s.startswith(f"val_acc fell with batch size: {fit['gain_per_doubling']:+.4f} per doubling of B "
                            "(95% interval")
               for s in report["summary"])
    assert any("Trials per octave of B, complete of all (pruned): 8-15: 3/3, 16-31: 2/2, 40: 1/2 (1), 100: 1/1."
               == s for s in report["summary"])
    lrs = "lr of the best trial per octave of B: 8-15: 0.011, 16-31: 0.013, 40: 0.016, 100: 0.017."
    assert lrs in report["summary"]
    page = report_mod.render_html(json.loads(report_mod.to_json(report)))
    assert 'id="octaves"' in page and "<td>8-15</td>" in page


def test_no_trend_line_or_claim_on_trendless_points():
    # 8..1024 twice, val_acc 0.9 +- 0.004 with no trend in B
    flat = [(2 ** (3 + i % 8), round(0.9 + 0.02 * (WOBBLE[(3 * i + i // 8) % 8] - 1), 4), "COMPLETE")
            for i in range(16)]
    report = report_mod.build_report(study_of(flat))
    fit = report["per_octave"]["fit"]
    assert fit["ci"]["ci_low"] < 0 < fit["ci"]["ci_high"] and not fit["trend"]
    assert any(s.startswith("No trend of val_acc with batch size:") for s in report["summary"])
    assert not any(s.startswith(("val_acc fell", "val_acc rose")) for s in report["summary"])
    ln = report["loss_noise"]
    assert ln["slope_ci"]["ci_low"] < 0 < ln["slope_ci"]["ci_high"] and not ln["trend"]
    assert any(s.startswith("Loss noise: no trend with batch size") for s in report["summary"])
    assert not any(s.startswith("Loss noise fell") or s.startswith("Loss noise rose") for s in report["summary"])
    from sgdtune.report.figures import fig_accuracy, fig_loss_noise

    names = [t.name for t in fig_loss_noise(ln).data]
    assert not any("fit" in (n or "") for n in names) and any("theory" in (n or "") for n in names)
    assert "no trend" in fig_loss_noise(ln).layout.title.text
    assert not any((t.name or "").startswith("trend") for t in fig_accuracy(report["accuracy"],
                                                                             report["per_octave"]).data)
    # a real trend (the known-answer set above) draws its line
    trending = report_mod.build_report(study_of(CONTINUOUS))
    assert any((t.name or "").startswith("trend") for t in fig_accuracy(trending["accuracy"],
                                                                         trending["per_octave"]).data)
    two = report_mod.build_report(study_of(CONTINUOUS[:4]))["per_octave"]["fit"]  # 2 octaves: no fit at all
    assert not two["trend"] and "2 octaves of B with a complete trial; a trend needs at least 3" in two["skipped"]


def test_the_neighbouring_octaves_sentence_gives_a_verdict():
    steep = report_mod.build_report(study_of(CONTINUOUS))["summary"]
    assert ("Best val_acc between neighbouring octaves of B (3 steps): 3 steps beyond noise (2 SE), B = 9 -> 16: "
            "-0.1205 per doubling (7.6 SE);") in " ".join(steep)
    flat = [(2 ** (3 + i % 4), 0.9 + 0.001 * (i % 2), "COMPLETE") for i in range(8)]
    assert any(s.startswith("Best val_acc between neighbouring octaves of B (3 steps): no step beyond noise; every "
                            "change is smaller than 2 standard errors")
               for s in report_mod.build_report(study_of(flat))["summary"])


def test_an_equal_budget_tie_is_described_as_a_tie_as_report_json_has_it():
    report = report_mod.build_report(study_of([(8, 0.9722, "COMPLETE"), (32, 0.9722, "COMPLETE")]))
    eq = report["equal_budget"]
    assert eq["tied_best_batch_sizes"] == [8, 32] and eq["best_batch_size"] == 8 and eq["loss"] == 0
    sentence = next(s for s in report["summary"] if s.startswith("At equal budget"))
    assert "batch sizes 8, 32 tie for the best val_acc, 0.9722; the largest, B = 32, is among them." in sentence
    assert "gave the best" not in sentence


def test_accuracy_error_bars_stop_at_1_and_the_page_shows_the_test_accuracy():
    from sgdtune.report.figures import fig_accuracy

    report = json.loads(report_mod.to_json(report_mod.build_report(synthetic_study(
        n=4, n_val=100, acc=lambda i, b: 0.99 + 0.003 * i, extra=lambda i, b: {"final_test_acc": 0.8765 + i / 1e4}))))
    for trace in fig_accuracy(report["accuracy"], report["per_octave"]).data:
        if trace.error_y and trace.error_y.array is not None and trace.name.startswith(("val_acc", "best")):
            assert all(y + e <= 1.0 + 1e-12 for y, e in zip(trace.y, trace.error_y.array))
            assert list(trace.error_y.arrayminus) == pytest.approx(
                [binomial_se(y, 100) for y in trace.y], rel=1e-6)  # below: the whole SE
    page = report_mod.render_html(report)
    assert "<th>test_acc (held out)</th>" in page and "<td>0.8768</td>" in page


def test_seeds_sort_as_numbers_on_the_page():
    report = json.loads(report_mod.to_json(report_mod.build_report(synthetic_study())))
    report["reproducibility"]["trial_seeds"] = {str(n): 100 + n for n in (0, 1, 10, 11, 2, 9)}
    page = report_mod.render_html(json.loads(report_mod.to_json(report)))  # report.json sorts keys as text
    assert "0: 100, 1: 101, 2: 102, 9: 109, 10: 110, 11: 111" in page


def test_importances_name_their_method_and_give_the_dashboards_too():
    study = synthetic_study(n=8)
    imp = report_mod.build_report(study)["importance"]
    assert imp["method"] == "fANOVA (seed 0)" and "FanovaImportanceEvaluator" in imp["method_description"]
    assert imp["dashboard_method"] == "PED-ANOVA"
    expected = optuna.importance.get_param_importances(
        study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    assert imp["ped_anova"] == pytest.approx(dict(expected), rel=1e-9)
    page = report_mod.render_html(json.loads(report_mod.to_json(report_mod.build_report(study))))
    assert "optuna-dashboard shows PED-ANOVA: Optuna&#x27;s PedAnovaImportanceEvaluator" in page
    assert "Parameter importances: fANOVA (seed 0) and PED-ANOVA" in page


def test_pareto_importances_point_toward_high_val_acc_without_a_warning():
    """val_acc rises with x (and y is noise); a second objective, time, makes the study a Pareto one.
    PED-ANOVA's importances must be those of the single-objective study maximizing val_acc."""
    import warnings

    rng = np.random.default_rng(3)
    dists = {"batch_size": IntDistribution(16, 4096, log=True), "x": FloatDistribution(0, 1),
             "y": FloatDistribution(0, 1)}
    pareto = optuna.create_study(directions=["maximize", "minimize"])
    pareto.set_user_attr("objectives", ["val_acc", "compute_time_s"])
    single = optuna.create_study(direction="maximize")
    for i in range(40):
        x, y = rng.uniform(size=2)
        acc = 0.5 + 0.45 * x ** 4
        params = {"batch_size": int(16 * 2 ** (i % 6)), "x": x, "y": y}
        summary = {"final_val_acc": acc, "final_train_acc": acc, "final_gen_gap": 0.0}
        pareto.add_trial(create_trial(params=params, distributions=dists, values=[acc, 1.0 + y],
                                      user_attrs={"summary": summary}))
        single.add_trial(create_trial(params=params, distributions=dists, value=acc))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        imp = report_mod.build_report(pareto)["importance"]
    assert not [w for w in seen if "target" in str(w.message)]
    toward_high = optuna.importance.get_param_importances(
        single, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    assert imp["ped_anova"] == pytest.approx(dict(toward_high), rel=1e-9)
    assert max(imp["ped_anova"], key=imp["ped_anova"].get) == "x"
