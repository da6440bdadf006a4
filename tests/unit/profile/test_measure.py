"""The device profile (sgdtune/profile/measure.py): which batch sizes it times, its budget, its cache,
its memory limit, its command, and where a study records it (a real SQLite MLflow store)."""

import json

import optuna
import pytest
from conftest import EXPERIMENTS, write_experiment
from mlflow import MlflowClient

from sgdtune.cli import main
from sgdtune.config import load_experiment
from sgdtune.data import load_data
from sgdtune.profile import measure as profile_mod
from sgdtune.profile.measure import MEMORY_MARGIN, flat_up_to, profile_study
from sgdtune.profile.words import sentences
from sgdtune.report import build_report, open_runs, render_html
from sgdtune.report.build import clean
from sgdtune.store.stores import open_storage
from sgdtune.study.run import run_study

INTERFACE = {"device", "dtype", "threads", "model", "input_shape", "batch_size", "seconds_per_update",
             "seconds_per_update_iqr", "examples_per_second", "peak_mem_mb", "largest_batch_size", "flat_up_to",
             "flat_rule", "budget_s", "skipped", "cached"}  # agreed with the report's answer (report/answer.py)
SMALL = """
name = "small"
n_trials = 1
threads = 1
[data]
dataset = "digits"
[model]
hidden = [8]
[train]
epochs = 1
probe_size = 0
sharpness_every = 0
[search.batch_size]
choices = [3, 24, 100]
[pruner]
name = "none"
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small experiment (B choices 3, 24, 100; one thread) and its data, on the CPU."""
    path = write_experiment(tmp_path_factory.mktemp("small") / "small.toml", SMALL)
    config = load_experiment(path)
    return config, load_data(config.data, config.seed, "cpu")


def test_the_profile_times_powers_of_two_up_to_the_largest_b_and_the_studys_own_b_sorted(small):
    config, data = small
    p = profile_study(config, data, budget_s=30.0)
    assert INTERFACE <= set(p) and set(profile_mod.KEYS) == INTERFACE
    assert p["batch_size"] == [1, 2, 3, 4, 8, 16, 24, 32, 64, 100]  # powers of two up to 100, and 3, 24, 100
    assert p["skipped"] == {} and p["cached"] is False
    n = len(p["batch_size"])
    assert all(len(p[k]) == n for k in ("seconds_per_update", "seconds_per_update_iqr", "examples_per_second",
                                        "peak_mem_mb"))
    assert all(s > 0 for s in p["seconds_per_update"]) and all(q >= 0 for q in p["seconds_per_update_iqr"])
    assert p["examples_per_second"] == pytest.approx([b / s for b, s in zip(p["batch_size"],
                                                                            p["seconds_per_update"])])
    # the tensors one update holds grow with B: at B = 100 more than at B = 1, by at least the 100 rows of x
    assert p["peak_mem_mb"][-1] - p["peak_mem_mb"][0] >= 99 * 64 * 4 / 2**20
    assert p["largest_batch_size"] == 100 and p["flat_up_to"] in p["batch_size"]
    assert p["flat_up_to"] == flat_up_to(p["batch_size"], p["seconds_per_update"])
    assert (p["threads"], p["dtype"], p["input_shape"], p["model"]) == (1, "float32", [64], "mlp(64-8-10,relu)")
    json.dumps(p, allow_nan=False)  # JSON-ready


@pytest.mark.parametrize(("sizes", "seconds", "flat"), [
    ([1, 2, 4, 8], [1.0, 1.1, 1.25, 2.0], 4),  # 1.25x is still flat
    ([1, 2, 4, 8], [1.0, 1.3, 1.0, 1.0], 1),  # the range ends at the first B past 1.25x, whatever follows
    ([1, 2, 4], [1.0, 1.0, 1.0], 4),
])
def test_the_flat_range_ends_before_the_first_b_slower_than_1_25_times_b_1(sizes, seconds, flat):
    assert flat_up_to(sizes, seconds) == flat


def test_a_tiny_budget_times_fewer_batch_sizes_and_gives_the_reason_for_each_left_out(small):
    config, data = small
    p = profile_study(config, data, budget_s=1e-6)
    assert p["batch_size"] == [1]  # B = 1 always runs: the reference of the flat range
    assert set(p["skipped"]) == {"2", "3", "4", "8", "16", "24", "32", "64", "100"}
    assert p["skipped"]["2"].startswith("time budget: about ") and "of 1e-06 s left" in p["skipped"]["2"]
    assert p["skipped"]["100"] == "time budget: larger than B = 2, which was not timed"
    assert p["largest_batch_size"] == p["flat_up_to"] == 1
    words = sentences(p)
    assert words[0].startswith("Only B = 1 was timed (") and words[0].endswith("no flat range measured.")
    assert any(s.startswith("Not timed: B = 2 (time budget") for s in words)


def test_the_second_call_reads_the_cache_and_times_nothing(small, tmp_path, monkeypatch):
    config, data = small
    first = profile_study(config, data, tmp_path, budget_s=2.0)
    (entry,) = tmp_path.glob("*.json")
    assert list(tmp_path.glob(".*tmp")) == []  # written through a temporary file, replaced at once

    def no_timing(*args, **kwargs):
        raise AssertionError("timed again")

    monkeypatch.setattr(profile_mod, "measure", no_timing)
    again = profile_study(config, data, tmp_path, budget_s=2.0)
    assert first["cached"] is False and again["cached"] is True
    assert {**again, "cached": False} == first  # the very numbers, not a new measurement


@pytest.mark.parametrize("change", [{"threads": 2}, {"model.hidden": [16]}])
def test_the_cache_is_keyed_by_threads_and_model(small, tmp_path, change):
    config, data = small
    profile_study(config, data, tmp_path, budget_s=1.0)
    other = load_experiment(write_experiment(tmp_path / "other.toml", SMALL), **change)
    p = profile_study(other, data, tmp_path, budget_s=1.0)
    assert p["cached"] is False
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_a_memory_limit_caps_the_largest_batch_size_at_one_that_ran(small):
    config, data = small
    unlimited = profile_study(config, data, budget_s=30.0)
    at_24 = unlimited["peak_mem_mb"][unlimited["batch_size"].index(24)]
    limit = at_24 * 1.001 / MEMORY_MARGIN  # B = 24 fits with the margin; B = 32 would not
    p = profile_study(config, data, budget_s=30.0, memory_limit_mb=limit)
    assert p["largest_batch_size"] == 24 == max(p["batch_size"])
    assert p["peak_mem_mb"][-1] <= MEMORY_MARGIN * limit
    assert p["skipped"]["32"].startswith("memory: about ") and f"of the {limit:.4g} MiB available" in p["skipped"]["32"]
    assert set(p["skipped"]) == {"32", "64", "100"}
    assert "fits in memory with a 20% margin is B = 24" in " ".join(sentences(p))


def test_an_out_of_memory_error_ends_the_list_at_the_last_b_that_ran(small, monkeypatch):
    import torch

    config, data = small
    timed = profile_mod._time_updates

    def out_of_memory_from_32(stepper, x, y, b, *rest):
        if b >= 32:  # as CUDA raises it
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return timed(stepper, x, y, b, *rest)

    monkeypatch.setattr(profile_mod, "_time_updates", out_of_memory_from_32)
    p = profile_study(config, data, budget_s=30.0)
    assert p["batch_size"] == [1, 2, 3, 4, 8, 16, 24] and p["largest_batch_size"] == 24
    assert p["skipped"] == {"32": "out of memory on cpu", "64": "larger than B = 32, which ran out of memory",
                            "100": "larger than B = 32, which ran out of memory"}
    assert "fits in memory with a 20% margin is B = 24" in " ".join(sentences(p))


# -- the command ---------------------------------------------------------------------------------


def test_sgdtune_profile_prints_the_table_with_the_flat_range_and_the_largest_b(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "150")
    assert main(["profile", str(EXPERIMENTS / "quick.toml"), "--budget", "3", "--mlruns", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "'quick': one update of mlp(64-32-10,relu) on cpu" in out
    for heading in ("B", "threads", "ms/update", "IQR ms", "examples/s", "peak MiB"):
        assert heading in out
    (entry,) = (tmp_path / "profiles").glob("*.json")
    p = json.loads(entry.read_text())["profile"]
    width = len(str(max(p["batch_size"])))
    for b in p["batch_size"]:
        assert f"│ {b:>{width}} │" in out  # one row per B that ran
    flat = p["flat_up_to"]
    assert (f"Up to B = {flat} a larger batch is almost free" in out) or (flat == 1 and "No batch size" in out)
    assert f"B = {p['largest_batch_size']}" in out
    assert main(["profile", str(EXPERIMENTS / "quick.toml"), "--budget", "3", "--mlruns", str(tmp_path)]) == 0
    assert "threads auto per B (cached)" in capsys.readouterr().out


def test_sgdtune_profile_on_a_bad_file_exits_2_in_one_line(tmp_path, capsys):
    bad = write_experiment(tmp_path / "bad.toml", "n_trials = 0\n")
    assert main(["profile", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "n_trials: must be >= 1; got 0" in err
    assert main(["profile", str(EXPERIMENTS / "quick.toml"), "--budget", "0"]) == 2
    assert capsys.readouterr().err == "error: --budget: must be > 0 (seconds); got 0.0\n"


# -- in a study: the study attribute, the parent run, the report -----------------------------------


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, small):
    """The small study run twice (the second resumes it) with a SQLite MLflow store."""
    config, _ = small
    root = tmp_path_factory.mktemp("tracked")
    mlruns = root / "mlruns"
    config = config.model_copy(update={"storage": str(mlruns / "optuna.journal"),
                                       "tracking_uri": f"sqlite:///{mlruns}/mlflow.db"})
    first = dict(run_study(config, mlruns=mlruns).user_attrs["profile"])
    study = run_study(config.model_copy(update={"n_trials": 2}), mlruns=mlruns)
    return study, first, MlflowClient(config.tracking_uri), config.tracking_uri


def test_a_study_records_its_profile_once_on_the_parent_run(tracked, tmp_path):
    study, first, client, _ = tracked
    p = study.user_attrs["profile"]
    assert p == first and p["cached"] is False  # the resumed study kept the first record
    parent = study.user_attrs["mlflow_parent_run_id"]
    assert sorted(a.path for a in client.list_artifacts(parent, "profile")) == ["profile/profile.csv",
                                                                                 "profile/profile.json"]
    logged = json.loads(open(client.download_artifacts(parent, "profile/profile.json", str(tmp_path))).read())
    assert logged == p
    csv = open(client.download_artifacts(parent, "profile/profile.csv", str(tmp_path))).read().splitlines()
    assert csv[0] == "batch_size,threads,seconds_per_update,seconds_per_update_iqr,examples_per_second,peak_mem_mb"
    assert [int(line.split(",")[0]) for line in csv[1:]] == p["batch_size"]
    for name, key in (("profile_s_per_update", "seconds_per_update"), ("profile_examples_per_s", "examples_per_second"),
                      ("profile_peak_mem_mb", "peak_mem_mb")):
        history = sorted((m.step, m.value) for m in client.get_metric_history(parent, name))
        assert [s for s, _ in history] == p["batch_size"], name  # one point per B: the resume logged none
        assert [v for _, v in history] == pytest.approx(p[key], rel=1e-9)
    metrics = client.get_run(parent).data.metrics
    assert metrics["profile_flat_up_to"] == p["flat_up_to"]
    assert metrics["profile_largest_batch_size"] == p["largest_batch_size"]


def test_the_report_carries_the_profile_and_draws_it(tracked):
    study, _, _, uri = tracked
    report = build_report(study, open_runs(study, uri))
    assert report["volatile"]["profile"] == clean(study.user_attrs["profile"])  # to report.json's 10 digits
    assert not any(k.startswith("profile_") for k in report["study"]["parent_run_metrics"])  # timings: volatile
    page = render_html(report)
    assert 'id="plot-profile"' in page
    assert f"Up to B = {study.user_attrs['profile']['flat_up_to']}" in page or "No batch size is almost" in page
    del report["volatile"]["profile"]  # as for a study run with profile = false
    assert "Not shown: the study ran without a device profile (profile = false)." in render_html(report)


@pytest.mark.parametrize("how", [["--no-profile"], ["--set", "profile=false"]])
def test_no_profile_or_profile_false_skips_it(tmp_path, monkeypatch, how):
    write_experiment(tmp_path / "small.toml", SMALL)
    monkeypatch.chdir(tmp_path)
    assert main(["study", "small.toml", "--no-tracking", "--no-progress", *how]) == 0
    study = optuna.load_study(study_name="small", storage=open_storage(str(tmp_path / "mlruns/optuna.journal")))
    assert "profile" not in study.user_attrs and len(study.trials) == 1
    assert not (tmp_path / "mlruns/profiles").exists()


def test_a_study_without_tracking_keeps_the_profile_in_the_study_and_the_cache_in_its_mlruns(small, tmp_path):
    config, _ = small
    run_study(config, track=False, mlruns=tmp_path / "mlruns")  # the default storage: mlruns/optuna.journal
    study = optuna.load_study(study_name="small", storage=open_storage(str(tmp_path / "mlruns/optuna.journal")))
    assert study.user_attrs["profile"]["batch_size"][0] == 1
    (entry,) = (tmp_path / "mlruns/profiles").glob("*.json")
    assert entry.stem == study.user_attrs["profile"]["key_sha256"]


def test_a_study_with_its_stores_elsewhere_makes_no_mlruns_and_reuses_the_profile_it_recorded(small, tmp_path,
                                                                                               monkeypatch):
    config, _ = small
    config = config.model_copy(update={"storage": f"sqlite:///{tmp_path}/optuna.db"})
    mlruns = tmp_path / "mlruns"
    first = run_study(config, track=False, mlruns=mlruns).user_attrs["profile"]
    assert not mlruns.exists()

    def no_timing(*args, **kwargs):
        raise AssertionError("timed again")

    monkeypatch.setattr(profile_mod, "measure", no_timing)
    study = run_study(config.model_copy(update={"n_trials": 2}), track=False, mlruns=mlruns)  # resumed
    assert study.user_attrs["profile"] == first and len(study.trials) == 2
