"""The study end to end: the real entry point, Optuna storage and MLflow runs (the names in README.md)."""

import hashlib
import json
import math

import optuna
import pytest
from conftest import EXPERIMENTS, run_cli, write_experiment
from mlflow import MlflowClient
from optuna.trial import TrialState

from sgdtune.cli import study_main as main
from sgdtune.config import load_experiment
from sgdtune.science.fits import fit_steps_to_target
from sgdtune.store.stores import locations, open_storage
from sgdtune.study import trial as trial_mod
from sgdtune.study.run import run_study

CHILD_PARAMS = {
    "batch_size", "lr", "epochs", "budget", "optimizer", "momentum", "weight_decay", "dataset",
    "n_train", "n_val", "model", "seed", "iterations_per_epoch",
}
EPOCH_METRICS = {
    "train_loss", "train_acc", "val_loss", "val_acc", "gen_gap", "loss_noise", "grad_noise_scale",
    "noise_temperature", "lr", "updates", "examples_seen", "epoch_time_s",
}
SUMMARY_METRICS = {
    "final_val_acc", "best_val_acc", "final_train_acc", "final_gen_gap", "final_loss_noise",
    "final_grad_noise_scale", "compute_time_s", "wall_time_s", "throughput_eps", "peak_mem_mb",
    "updates", "examples_seen",
}
TIMING = {"compute_time_s", "wall_time_s", "throughput_eps", "peak_mem_mb", "gpu_time_s", "gpu_util_mean_pct",
          "gpu_mem_used_max_mb",
          "noise_probe_time_s", "epoch_time_s"}


def child_runs(client: MlflowClient, experiment_id: str, parent_id: str):
    return client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")


@pytest.fixture(scope="module")
def quick_cli(tmp_path_factory):
    """One run of `python -m sgdtune.study experiments/quick.toml` in a fresh directory."""
    import shutil

    from conftest import EXPERIMENTS

    cwd = tmp_path_factory.mktemp("quick")
    shutil.copytree(EXPERIMENTS, cwd / "experiments")
    proc = run_cli("sgdtune.study", "experiments/quick.toml", "--no-progress", "--report", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    return cwd, proc


def test_cli_writes_trials_to_the_embedded_optuna_storage(quick_cli):
    cwd, _ = quick_cli
    study = optuna.load_study(study_name="quick", storage=open_storage(str(cwd / "mlruns/optuna.journal")))
    trials = study.get_trials()
    assert len(trials) == 4
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert all(set(t.params) == {"batch_size", "lr", "epochs"} for t in trials)
    assert all(0.0 < t.values[0] <= 1.0 for t in trials)


def test_cli_makes_one_parent_and_one_child_run_per_trial_with_the_contract_names(quick_cli):
    cwd, _ = quick_cli
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("quick")
    assert experiment.artifact_location == (cwd / "mlruns/artifacts").resolve().as_uri()
    parents = client.search_runs([experiment.experiment_id], filter_string="tags.`sgdtune.role` = 'study'")
    assert len(parents) == 1
    parent = parents[0]
    text = (cwd / "experiments/quick.toml").read_bytes()
    assert parent.data.tags["sgdtune.experiment_sha256"] == hashlib.sha256(text).hexdigest()
    assert parent.data.params["version.optuna"] == optuna.__version__
    assert parent.data.metrics["n_complete"] == 4
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "experiment")] == ["experiment/quick.toml"]
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "report")} == {
        "report/report.json", "report/report.html"}  # --report

    study = optuna.load_study(study_name="quick", storage=open_storage(str(cwd / "mlruns/optuna.journal")))
    by_run = {t.user_attrs["mlflow_run_id"]: t for t in study.get_trials()}
    children = child_runs(client, experiment.experiment_id, parent.info.run_id)
    assert {r.info.run_id for r in children} == set(by_run)
    for run in children:
        trial = by_run[run.info.run_id]
        assert run.info.run_name == f"trial-{trial.number}"
        assert run.info.status == "FINISHED"
        assert CHILD_PARAMS <= set(run.data.params)
        assert int(run.data.params["batch_size"]) == trial.params["batch_size"]
        assert float(run.data.params["lr"]) == pytest.approx(trial.params["lr"])
        assert run.data.params["budget"] == "epochs"
        assert int(run.data.params["iterations_per_epoch"]) == math.ceil(1437 / trial.params["batch_size"])
        assert SUMMARY_METRICS <= set(run.data.metrics)
        assert run.data.metrics["final_val_acc"] == pytest.approx(trial.values[0])
        assert run.data.tags["sgdtune.study_name"] == "quick"
        assert run.data.tags["sgdtune.trial_number"] == str(trial.number)
        assert run.data.tags["sgdtune.trial_state"] == "COMPLETE"
        assert run.data.tags["sgdtune.device"].startswith("cpu")
        history = client.get_metric_history(run.info.run_id, "val_acc")
        assert sorted(m.step for m in history) == list(range(1, trial.params["epochs"] + 1))
        assert EPOCH_METRICS <= set(run.data.metrics)
        updates = client.get_metric_history(run.info.run_id, "updates")
        per_epoch = math.ceil(1437 / trial.params["batch_size"])
        assert [m.value for m in sorted(updates, key=lambda m: m.step)] == [
            per_epoch * e for e in range(1, trial.params["epochs"] + 1)
        ]


def test_cli_closing_lines_show_the_ui_command_and_the_runs_table_url(quick_cli):
    cwd, proc = quick_cli
    assert f"mlflow ui --backend-store-uri sqlite:///{cwd}/mlruns/mlflow.db" in proc.stdout
    assert "#/experiments/1/runs?workflowType=machine_learning" in proc.stdout
    assert "4 complete" in proc.stdout
    assert "report:         reports/quick/report.html" in proc.stdout
    assert (cwd / "reports/quick/report.json").is_file()


def test_the_report_of_study_report_records_a_command_with_no_path_of_the_folder_it_ran_in(quick_cli):
    """Run from the study's folder, the recorded command reads the default stores there."""
    cwd, _ = quick_cli
    repro = json.loads((cwd / "reports/quick/report.json").read_text())["reproducibility"]
    assert repro["report_command"] == "python -m sgdtune.report --study-name quick"


def test_resume_after_an_interrupt_keeps_every_finished_trial_once(workdir, monkeypatch):
    config = load_experiment("experiments/quick.toml", n_trials=4)
    real_train, calls = trial_mod.train, []

    def train_interrupted_on_third_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(trial_mod, "train", train_interrupted_on_third_call)
    with pytest.raises(KeyboardInterrupt):
        run_study(config)
    monkeypatch.setattr(trial_mod, "train", real_train)

    first = optuna.load_study(study_name="quick", storage=open_storage(locations(config)[0]))
    states = [t.state for t in first.get_trials()]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    cut, queued = first.get_trials()[2:]
    assert queued.user_attrs["retry_of"] == 2 and queued.system_attrs["fixed_params"] == cut.params  # run again
    finished_before = {t.number: t.values for t in first.get_trials() if t.state == TrialState.COMPLETE}

    study = run_study(config)
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and len(trials) == 5
    assert {t.number: t.values for t in complete if t.number in finished_before} == finished_before
    assert len({t.number for t in trials}) == len(trials)

    client = MlflowClient(tracking_uri=locations(config)[1])
    runs = client.search_runs([study.user_attrs["mlflow_experiment_id"]],
                              filter_string=f"tags.mlflow.parentRunId = '{study.user_attrs['mlflow_parent_run_id']}'")
    assert len(runs) == 5
    interrupted = [r for r in runs if r.data.tags["sgdtune.trial_state"] == "FAIL"]
    assert len(interrupted) == 1 and interrupted[0].info.status == "FAILED"
    assert interrupted[0].data.tags["sgdtune.fail_reason"] == "interrupted (Ctrl-C)"


def _values_without_timings(study: optuna.Study):
    return [
        (t.number, t.params, t.values, {k: v for k, v in t.user_attrs["summary"].items() if k not in TIMING})
        for t in study.get_trials()
    ]


def test_same_seed_gives_identical_params_and_metrics_another_seed_differs(tmp_path, monkeypatch):
    results = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        config = load_experiment(EXPERIMENTS / "quick.toml", seed=seed, n_trials=3)
        results[name] = _values_without_timings(run_study(config, track=False))
    assert results["a"] == results["b"]
    assert [r[1] for r in results["a"]] != [r[1] for r in results["c"]]
    assert [r[3] for r in results["a"]] != [r[3] for r in results["c"]]


BAD_INPUTS = [
    ("foo = 1\n", "foo: unknown key; allowed keys here: data, description"),
    ("[train]\nbatch_size = 0\n", "train.batch_size: must be >= 1; got 0"),
    ("[train]\nlr = 0\n", "train.lr: must be > 0.0; got 0"),
    ("[train]\nepochs = 0\n", "train.epochs: must be >= 1; got 0"),
    ("[search.lr]\nlow = 0.5\nhigh = 0.1\n", "search.lr: low must be <= high; got low=0.5, high=0.1"),
    ("[search.batch_size]\nlow = 0\nhigh = 64\n", "search.batch_size: must be >= 1; got 0"),
    ('[data]\ndataset = "csv"\npath = "missing.csv"\n', "data.path: must be an existing file; got 'missing.csv'"),
    ('[sampler]\nname = "bayes"\n',
     "sampler.name: must be one of 'tpe', 'random', 'grid', 'cmaes' or 'gp'; got 'bayes'"),
    ('[pruner]\nname = "asha"\n', "pruner.name: must be one of 'median', 'hyperband' or 'none'; got 'asha'"),
]


@pytest.mark.parametrize("text,message", BAD_INPUTS, ids=[m.split(":")[0] for _, m in BAD_INPUTS])
def test_bad_experiment_file_exits_2_with_one_message_and_writes_nothing(workdir, capsys, text, message):
    path = write_experiment(workdir / "bad.toml", text)
    assert main([str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.startswith("error: ")
    assert not (workdir / "mlruns").exists()


def test_unknown_label_column_names_the_columns_and_writes_nothing(workdir, capsys):
    (workdir / "d.csv").write_text("a,b,target\n" + "".join(f"{i},{i % 3},{i % 2}\n" for i in range(40)))
    path = write_experiment(workdir / "x.toml", '[data]\ndataset = "csv"\npath = "d.csv"\nlabel = "y"\n')
    assert main([str(path), "--no-progress"]) == 2
    assert f"data.label: must be one of the columns ['a', 'b', 'target'] of '{(workdir / 'd.csv').resolve()}'; " \
           "got 'y'" in capsys.readouterr().err
    assert not (workdir / "mlruns").exists()


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--n-trials", "0"], "n_trials: must be >= 1; got 0"),
        (["--set", "train.momentum=1.5"], "train.momentum: must be < 1.0; got 1.5"),
        (["--device", "gpu"], "device: must be one of 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'; got 'gpu'"),
        (["--tracking-uri", "bogus://x"], "tracking_uri: must be an MLflow tracking URI with a scheme among"),
        (["--tracking-uri", "mlruns/x.db"], "got 'mlruns/x.db'"),
    ],
)
def test_bad_flags_exit_2_with_one_message(workdir, capsys, flags, message):
    assert main(["experiments/quick.toml", "--no-progress", *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (workdir / "mlruns").exists()


def test_the_real_entry_point_exits_2_on_bad_input(workdir):
    proc = run_cli("sgdtune.study", "experiments/quick.toml", "--seed", "-1", cwd=workdir)
    assert proc.returncode == 2
    assert "seed: must be >= 0; got -1" in proc.stderr
    assert not (workdir / "mlruns").exists()


def test_a_diverging_trial_is_failed_with_its_update_and_the_study_finishes(workdir):
    path = write_experiment(workdir / "diverge.toml", """
name = "diverge"
n_trials = 2
[model]
hidden = [32]
[train]
epochs = 3
momentum = 0.0
[search.lr]
choices = [0.05, 1e6]
[sampler]
name = "grid"
[pruner]
name = "none"
""")
    config = load_experiment(path)
    study = run_study(config)
    trials = study.get_trials()
    assert len(trials) == 2
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed and all(t.params["lr"] == 1e6 for t in failed)
    assert any(t.state == TrialState.COMPLETE for t in trials)
    for t in failed:
        assert t.user_attrs["fail_kind"] == "diverged"
        assert t.user_attrs["failed_at_update"] >= 1
        assert f"at update {t.user_attrs['failed_at_update']}" in t.user_attrs["fail_reason"]
        run = MlflowClient(tracking_uri=locations(config)[1]).get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "FAILED"
        assert run.data.tags["sgdtune.trial_state"] == "FAIL"
        assert "training loss became" in run.data.tags["sgdtune.fail_reason"]


def test_critical_batch_study_logs_the_fit_on_the_parent_and_noise_scale_per_trial(workdir):
    overrides = {"n_trials": 3, "search.batch_size.choices": [32, 128, 512], "search.lr.choices": [0.1]}
    config = load_experiment("experiments/critical_batch.toml", **overrides)
    study = run_study(config)
    client = MlflowClient(tracking_uri=locations(config)[1])
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    reached = {t.params["batch_size"]: t.user_attrs["summary"]["updates_to_target"] for t in study.get_trials()}
    assert set(reached) == {32, 128, 512}
    fit = fit_steps_to_target(list(reached), list(reached.values()))
    assert parent.data.metrics["critical_batch_size"] == pytest.approx(fit.b_crit)
    assert parent.data.metrics["s_min"] == pytest.approx(fit.s_min)
    assert parent.data.metrics["median_grad_noise_scale"] > 1
    for t in study.get_trials():
        run_id = t.user_attrs["mlflow_run_id"]
        history = client.get_metric_history(run_id, "grad_noise_scale")
        assert history and all(m.value > 0 for m in history)
        run = client.get_run(run_id)
        assert run.data.metrics["updates_to_target"] == t.user_attrs["summary"]["updates_to_target"]
        assert run.data.metrics["updates"] == run.data.metrics["updates_to_target"]  # stop_at_target
        assert run.data.params["budget"] == "updates" and run.data.params["updates"] == "1500"
        if t.params["batch_size"] == 512:  # several epochs to the target: B_noise along the path, not only there
            assert len(client.get_metric_history(run_id, "b_noise")) >= 2


@pytest.mark.parametrize("sampler", ["tpe", "random", "cmaes", "gp"])
def test_each_sampler_runs_a_seeded_study_reproducibly(workdir, sampler):
    config = load_experiment("experiments/quick.toml", n_trials=3, **{"sampler.name": sampler,
                             "sampler.n_startup_trials": 1, "search.epochs.high": 2})
    first = [t.params for t in run_study(config, track=False, mlruns=workdir / "a").get_trials()]
    second = [t.params for t in run_study(config, track=False, mlruns=workdir / "b").get_trials()]
    assert len(first) == 3 and first == second
    assert len({tuple(sorted(p.items())) for p in first}) == 3


def test_grid_sampler_visits_every_combination_once(workdir):
    config = load_experiment("experiments/quick.toml", n_trials=10, **{
        "sampler.name": "grid", "search.lr": {"choices": [0.05, 0.1]}, "search.epochs": {"choices": [1]},
        "search.batch_size": {"choices": [64, 256]}})
    study = run_study(config, track=False)
    assert sorted((t.params["batch_size"], t.params["lr"]) for t in study.trials) == [
        (64, 0.05), (64, 0.1), (256, 0.05), (256, 0.1)]


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_pruners_prune_on_val_acc_and_pruned_runs_end_killed(workdir, pruner):
    config = load_experiment("experiments/quick.toml", n_trials=8, **{
        "pruner.name": pruner, "pruner.n_startup_trials": 1, "pruner.n_warmup_steps": 1,
        "search.epochs": {"choices": [4]}, "search.lr": {"low": 0.0005, "high": 0.3, "log": True},
        "search.batch_size": {"choices": [256]}})
    study = run_study(config)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, [t.state for t in study.trials]
    client = MlflowClient(tracking_uri=locations(config)[1])
    for t in pruned:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.info.status == "KILLED" and run.data.tags["sgdtune.trial_state"] == "PRUNED"
        assert len(t.intermediate_values) < 4
        assert run.data.metrics["final_val_acc"] == t.intermediate_values[max(t.intermediate_values)]


def test_two_objectives_give_a_pareto_front_of_val_acc_and_compute_time(workdir):
    config = load_experiment("experiments/quick.toml", n_trials=4, objectives=["val_acc", "compute_time_s"])
    study = run_study(config, track=False)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    front = study.best_trials
    assert front and all(len(t.values) == 2 for t in front)
    for t in study.trials:
        assert t.values == [t.user_attrs["summary"]["final_val_acc"], t.user_attrs["summary"]["compute_time_s"]]


def test_a_tracking_store_that_cannot_be_opened_exits_2_naming_it(workdir, capsys):
    uri = f"sqlite:///{workdir}/a-file/mlflow.db"
    (workdir / "a-file").write_text("not a folder")
    assert main(["experiments/quick.toml", "--no-progress", "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert f"error: --tracking-uri: must be a tracking store MLflow can open; got '{uri}'" in err
    assert "Traceback" not in err
