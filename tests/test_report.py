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
from sgdtune.science.fits import loglog_slope
from sgdtune.search import derive_seed
from sgdtune.stores import open_storage
from sgdtune.tracking import Tracker, default_tracking_uri

try:  # tests/ on sys.path (rootdir-relative imports) ...
    from browser import chromium, open_page, png_stats  # noqa: F401  (chromium is a fixture)
except ImportError:  # ... or tests/ is a package
    from tests.browser import chromium, open_page, png_stats  # noqa: F401

SECTIONS = {"accuracy", "equal_budget", "per_doubling", "loss_noise", "grad_noise", "learning_curves",
            "importance", "history", "top_trials", "summary", "reproducibility", "volatile", "trials", "study"}
PLOTS = ["plot-accuracy", "plot-curves", "plot-loss-noise", "plot-grad-noise", "plot-compute", "plot-pareto",
         "plot-history", "plot-importance"]  # quick.toml has no target: no steps-to-target plot


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
    assert set(report["skipped"]) == {"steps_to_target"}
    assert "target_val_acc" in report["skipped"]["steps_to_target"]
    assert set(report["volatile"]) == {"timings", "memory_mb", "mlflow", "dates"}
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
    # the slope is fitted over B <= N/8 only (1/sqrt(B) holds for B << N): quick.toml may have none
    ln = report["loss_noise"]
    assert ("slope" in ln) == ("loss_noise_slope" in m)
    if "slope" in ln:
        assert ln["slope"] == pytest.approx(m["loss_noise_slope"], rel=1e-9)
    assert ln["fit_max_batch_size"] == pytest.approx(study.user_attrs["n_train"] / 8)
    assert ln["in_fit"] == [b <= study.user_attrs["n_train"] / 8 for b in ln["batch_size"]]
    assert report["grad_noise"]["median_final"] == pytest.approx(m["median_grad_noise_scale"], rel=1e-9)

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
    for div in PLOTS:
        assert f'id="{div}"' in page
    assert 'id="plot-steps"' not in page and "Not shown: no trial recorded updates_to_target" in page


def test_the_recorded_commands_in_a_fresh_directory_reproduce_report_json(quick, tmp_path, monkeypatch):
    _, first, _, _ = quick
    repro = first["reproducibility"]
    again = run_commands(tmp_path, monkeypatch, repro["study_command"], repro["report_command"])
    assert {k: v for k, v in again.items() if k != "volatile"} == {k: v for k, v in first.items() if k != "volatile"}
    # and what does differ is under "volatile": fresh MLflow run ids, the store's path
    assert again["volatile"]["mlflow"]["run_ids"] != first["volatile"]["mlflow"]["run_ids"]
    assert again["volatile"]["mlflow"]["tracking_uri"] != first["volatile"]["mlflow"]["tracking_uri"]


def test_page_draws_every_plot_offline_in_headless_chromium(quick, chromium):
    cwd, _, _, _ = quick
    with open_page(chromium, cwd / "reports/quick/report.html", wait_until="load") as visit:
        drawn, png = draw(visit, len(PLOTS))
    assert [d[0] for d in drawn] == PLOTS
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


def synthetic_study(updates_to_target=None, n=6) -> optuna.Study:
    """Complete trials at B = 16..512 of N = 2048 examples with a made-up summary (no MLflow)."""
    study = optuna.create_study(study_name="synthetic", direction="maximize")
    study.set_user_attr("objectives", ["val_acc"])
    study.set_user_attr("n_train", 2048)
    dists = {"batch_size": IntDistribution(16, 512, log=True), "lr": FloatDistribution(0.01, 0.1, log=True),
             "epochs": CategoricalDistribution([3])}
    for i, b in enumerate(16 * 2 ** np.arange(n)):
        acc = 0.9 - 0.01 * i
        summary = {"final_val_acc": acc, "final_train_acc": acc + 0.02, "final_gen_gap": 0.02,
                   "final_loss_noise": 0.4 / np.sqrt(b), "final_grad_noise_scale": 100.0 + i, "updates": 1000 / b}
        if updates_to_target is not None:
            summary["updates_to_target"] = float(updates_to_target(b))
        params = {"batch_size": int(b), "lr": 0.01 * (1 + i), "epochs": 3}
        study.add_trial(create_trial(params=params, distributions=dists, value=acc, user_attrs={"summary": summary},
                                     state=TrialState.COMPLETE))
    return study


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
    assert ln["in_fit"] == [True] * 5 + [False]  # B = 512 > N/8 = 256
    assert ln["slope"] == pytest.approx(-0.5, abs=1e-9)
    assert ln["slope"] == pytest.approx(loglog_slope(ln["batch_size"][:5], ln["loss_noise"][:5]), rel=1e-9)
    assert any("Loss noise fell with batch size with log-log slope -0.50" in s for s in report["summary"])


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


def test_steps_plot_and_a_report_without_mlflow_draw_in_headless_chromium(chromium, tmp_path):
    report = report_mod.build_report(synthetic_study(lambda b: 200 * (1 + 128 / b)))
    page = tmp_path / "report.html"
    page.write_text(report_mod.render_html(json.loads(report_mod.to_json(report))))
    with open_page(chromium, page) as visit:
        drawn, _ = draw(visit, 6)
    # no MLflow: no learning curves; no timings: no compute or Pareto plot
    assert [d[0] for d in drawn] == ["plot-accuracy", "plot-loss-noise", "plot-grad-noise", "plot-steps",
                                     "plot-history", "plot-importance"]


@pytest.mark.parametrize("acc,time,front", [
    ([0.8, 0.9, 0.7, 0.95], [1.0, 2.0, 0.5, 4.0], [2, 0, 1, 3]),
    ([0.9, 0.8], [1.0, 2.0], [0]),  # slower and worse: dominated
    ([0.9, 0.9], [1.0, 1.0], [0]),  # a tie adds nothing
])
def test_pareto_front_keeps_trials_no_other_beats_on_both(acc, time, front):
    assert report_mod.pareto_front(np.array(acc), np.array(time)).tolist() == front


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

