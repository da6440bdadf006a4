"""Replicates: each sampled configuration trained with R seeds, its value their mean (study/trial.py)."""

import math
import statistics

import pytest
from conftest import EXPERIMENTS, run_cli
from mlflow import MlflowClient
from optuna.trial import TrialState

from sgdtune.cli import study_main as main
from sgdtune.config import load_experiment
from sgdtune.search.strategy import derive_seed
from sgdtune.store.stores import locations
from sgdtune.study import trial as trial_mod
from sgdtune.study.run import run_study
from sgdtune.study.trial import SPREAD_METRICS, mean_history, mean_summary, replicate_seed
from sgdtune.trainer import Diverged, EpochMetrics

TIMING = {"compute_time_s", "wall_time_s", "throughput_eps", "peak_mem_mb", "gpu_time_s",
          "noise_probe_time_s", "epoch_time_s"}
# Two short trials (one tiny epoch budget) of the quick experiment.
SMALL = {"n_trials": 2, "search.epochs": {"low": 1, "high": 2}, "search.batch_size": {"choices": [64, 256]}}


def quick(**overrides):
    return load_experiment("experiments/quick.toml", **{**SMALL, **overrides})


def nested(client: MlflowClient, experiment_id: str, parent_id: str):
    runs = client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    return sorted(runs, key=lambda r: r.info.run_name)


def every_run(client: MlflowClient, experiment_id: str):
    return client.search_runs([experiment_id])


def without_timings(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMING}


# -- the pure parts -----------------------------------------------------------------------------


def test_replicate_zero_keeps_the_trials_seed_and_the_others_get_their_own():
    assert replicate_seed(7, 3, 0) == derive_seed(7, 3)
    seeds = [replicate_seed(7, 3, r) for r in range(4)]
    assert len(set(seeds)) == 4
    assert seeds == [replicate_seed(7, 3, r) for r in range(4)]


def test_mean_summary_gives_the_mean_and_the_sample_spread():
    summaries = [{"final_val_acc": 0.5, "final_val_loss": 1.0, "updates_to_target": 10.0, "best_val_acc": 0.6},
                 {"final_val_acc": 0.7, "final_val_loss": 2.0, "best_val_acc": 0.8},
                 {"final_val_acc": 0.9, "final_val_loss": 3.0, "updates_to_target": 30.0, "best_val_acc": 0.9}]
    out = mean_summary(summaries)
    assert out["final_val_acc"] == pytest.approx(0.7) and out["best_val_acc"] == pytest.approx(2.3 / 3)
    assert out["final_val_acc_std"] == pytest.approx(0.2)  # ddof = 1
    assert out["final_val_acc_se"] == pytest.approx(0.2 / math.sqrt(3))
    assert out["final_val_loss_std"] == pytest.approx(1.0)
    assert "updates_to_target" not in out and "updates_to_target_std" not in out  # not every replicate reached it
    assert "best_val_acc_std" not in out  # spread only of SPREAD_METRICS
    assert mean_summary([{"final_val_acc": 0.5}]) == {"final_val_acc": 0.5}


def test_mean_history_averages_each_epoch_over_the_replicates_that_reached_it():
    def m(epoch, acc, gns):
        return EpochMetrics(epoch, 1.0, acc, 1.0, acc, 0.0, 0.1, gns, 0.01, 0.1, 10 * epoch, 100 * epoch, 0.5)

    out = mean_history([[m(1, 0.2, None), m(2, 0.4, 5.0)], [m(1, 0.4, 3.0)]])
    assert [e.epoch for e in out] == [1, 2]
    assert [e.val_acc for e in out] == pytest.approx([0.3, 0.4])
    assert out[0].grad_noise_scale is None and out[1].grad_noise_scale == 5.0


# -- studies --------------------------------------------------------------------------------------


def test_two_replicates_are_nested_runs_and_the_trial_carries_their_mean_and_spread(workdir):
    config = quick(replicates=2)
    study = run_study(config)
    client = MlflowClient(locations(config)[1])
    experiment_id, parent_id = study.user_attrs["mlflow_experiment_id"], study.user_attrs["mlflow_parent_run_id"]
    trial_runs = nested(client, experiment_id, parent_id)
    assert len(trial_runs) == 2  # the replicates are not children of the study's run
    assert all(r.info.status != "RUNNING" for r in every_run(client, experiment_id))
    assert "n_complete" in client.get_run(parent_id).data.metrics  # study_metrics read the mean summaries

    for t in study.get_trials():
        assert t.state == TrialState.COMPLETE
        trial_run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert trial_run.data.params["replicates"] == "2"
        assert trial_run.data.params["seed"] == str(derive_seed(config.seed, t.number))
        reps = nested(client, experiment_id, trial_run.info.run_id)
        assert [r.info.run_name for r in reps] == [f"trial-{t.number}-rep-0", f"trial-{t.number}-rep-1"]
        assert [r.data.tags["sgdtune.replicate"] for r in reps] == ["0", "1"]
        assert all(r.info.status == "FINISHED" and r.data.tags["sgdtune.trial_state"] == "COMPLETE" for r in reps)
        seeds = [int(r.data.params["seed"]) for r in reps]
        assert seeds == [replicate_seed(config.seed, t.number, r) for r in range(2)] and seeds[0] != seeds[1]

        accs = [r.data.metrics["final_val_acc"] for r in reps]
        mean, std = statistics.fmean(accs), statistics.stdev(accs)
        assert t.values[0] == pytest.approx(mean)
        assert trial_run.data.metrics["final_val_acc"] == pytest.approx(mean)
        assert trial_run.data.metrics["final_val_acc_std"] == pytest.approx(std)
        assert trial_run.data.metrics["final_val_acc_se"] == pytest.approx(std / math.sqrt(2))
        summary = t.user_attrs["summary"]
        assert summary["final_val_acc"] == pytest.approx(mean) and summary["final_val_acc_std"] == pytest.approx(std)
        for name in ("final_val_loss", "final_gen_gap", "final_grad_noise_scale"):
            values = [r.data.metrics[name] for r in reps]
            assert summary[f"{name}_std"] == pytest.approx(statistics.stdev(values))
            assert summary[f"{name}_se"] == pytest.approx(statistics.stdev(values) / math.sqrt(2))
            assert trial_run.data.metrics[f"{name}_se"] == pytest.approx(summary[f"{name}_se"])
        assert [s["final_val_acc"] for s in t.user_attrs["replicate_summaries"]] == pytest.approx(accs)

        # the trial's curve: the mean of its replicates' curves, epoch by epoch
        curves = [[m.value for m in sorted(client.get_metric_history(r.info.run_id, "val_acc"), key=lambda m: m.step)]
                  for r in reps]
        trial_curve = sorted(client.get_metric_history(trial_run.info.run_id, "val_acc"), key=lambda m: m.step)
        assert [m.value for m in trial_curve] == pytest.approx([statistics.fmean(v) for v in zip(*curves)])


def test_replicates_are_reproducible(tmp_path, monkeypatch):
    got = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        monkeypatch.chdir(tmp_path / name)
        study = run_study(load_experiment(EXPERIMENTS / "quick.toml", replicates=2, **SMALL), track=False)
        got.append([(t.params, t.values, [without_timings(s) for s in t.user_attrs["replicate_summaries"]])
                    for t in study.get_trials()])
    assert got[0] == got[1]
    for _, _, (first, second) in got[0]:
        assert first != second  # different seeds, different training


def test_one_replicate_is_todays_trial_and_replicate_zero_of_more_is_the_same_training(workdir):
    one = run_study(quick(name="one"))
    default = run_study(load_experiment("experiments/quick.toml", name="default", **SMALL))
    two = run_study(quick(name="two", replicates=2), track=False)
    client = MlflowClient(locations(quick())[1])
    for a, b, c in zip(one.get_trials(), default.get_trials(), two.get_trials()):
        assert a.params == b.params == c.params  # the sampler's first draws: random, from the study seed
        assert a.values == b.values
        assert without_timings(a.user_attrs["summary"]) == without_timings(b.user_attrs["summary"])
        assert "replicate_summaries" not in a.user_attrs
        # No spread over seeds: the trainer's own measurement errors (final_grad_noise_scale_se) remain.
        assert not any(k.endswith("_std") for k in a.user_attrs["summary"])
        assert "final_val_acc_se" not in a.user_attrs["summary"]
        run_a, run_b = (client.get_run(t.user_attrs["mlflow_run_id"]) for t in (a, b))
        assert run_a.data.params == run_b.data.params and "replicates" not in run_a.data.params
        assert set(run_a.data.metrics) == set(run_b.data.metrics)
        assert not nested(client, run_a.info.experiment_id, run_a.info.run_id)
        # replicate 0 of a two-replicate trial trains exactly the one-replicate trial
        assert without_timings(c.user_attrs["replicate_summaries"][0]) == without_timings(a.user_attrs["summary"])


def test_a_diverging_replicate_fails_the_trial_naming_it_and_leaves_no_run_running(workdir):
    config = quick(replicates=2, n_trials=1, **{"search.lr": {"choices": [1e6]}, "train.momentum": 0.0})
    study = run_study(config)
    (t,) = study.get_trials()
    assert t.state == TrialState.FAIL and t.user_attrs["fail_kind"] == "diverged"
    assert t.user_attrs["fail_reason"].startswith("replicate 0: training loss became")
    assert t.user_attrs["failed_replicate"] == 0
    client = MlflowClient(locations(config)[1])
    experiment_id = study.user_attrs["mlflow_experiment_id"]
    assert all(r.info.status != "RUNNING" for r in every_run(client, experiment_id))
    reps = nested(client, experiment_id, t.user_attrs["mlflow_run_id"])
    assert [(r.info.run_name, r.info.status) for r in reps] == [("trial-0-rep-0", "FAILED")]  # no replicate after


def test_a_later_replicate_diverging_ends_the_earlier_finished_and_its_own_failed(workdir, monkeypatch):
    real_train, calls = trial_mod.train, []

    def second_diverges(config, data, on_epoch):
        calls.append(config.seed)
        if len(calls) == 2:
            on_epoch(real_train(config, data).history[0])  # one epoch logged, then the loss turns NaN
            raise Diverged(7, 2, float("nan"))
        return real_train(config, data, on_epoch)

    monkeypatch.setattr(trial_mod, "train", second_diverges)
    config = quick(replicates=3, n_trials=1)
    study = run_study(config)
    (t,) = study.get_trials()
    assert len(calls) == 2  # the third replicate is never trained
    assert t.state == TrialState.FAIL and t.user_attrs["fail_kind"] == "diverged"
    assert t.user_attrs["fail_reason"] == "replicate 1: training loss became nan at update 7 (epoch 2)"
    assert len(t.user_attrs["replicate_summaries"]) == 2
    client = MlflowClient(locations(config)[1])
    experiment_id = study.user_attrs["mlflow_experiment_id"]
    assert all(r.info.status != "RUNNING" for r in every_run(client, experiment_id))
    reps = nested(client, experiment_id, t.user_attrs["mlflow_run_id"])
    assert [(r.info.run_name, r.info.status) for r in reps] == [("trial-0-rep-0", "FINISHED"),
                                                                 ("trial-0-rep-1", "FAILED")]
    assert reps[1].data.tags["sgdtune.fail_reason"] == t.user_attrs["fail_reason"]
    trial_run = client.get_run(t.user_attrs["mlflow_run_id"])
    assert trial_run.info.status == "FAILED" and trial_run.data.tags["sgdtune.trial_state"] == "FAIL"


def test_the_pruner_sees_replicate_zero_and_a_pruned_trial_trains_no_other(workdir):
    config = load_experiment("experiments/quick.toml", n_trials=6, replicates=2, **{
        "pruner.name": "median", "pruner.n_startup_trials": 1, "pruner.n_warmup_steps": 1,
        "search.epochs": {"choices": [3]}, "search.lr": {"low": 0.0005, "high": 0.3, "log": True},
        "search.batch_size": {"choices": [256]}})
    study = run_study(config)
    client = MlflowClient(locations(config)[1])
    experiment_id = study.user_attrs["mlflow_experiment_id"]
    assert all(r.info.status != "RUNNING" for r in every_run(client, experiment_id))
    assert any(t.state == TrialState.PRUNED for t in study.get_trials())
    for t in study.get_trials():
        reps = nested(client, experiment_id, t.user_attrs["mlflow_run_id"])
        rep0 = sorted(client.get_metric_history(reps[0].info.run_id, "val_acc"), key=lambda m: m.step)
        n = len(t.intermediate_values)
        assert list(t.intermediate_values.values()) == pytest.approx([m.value for m in rep0][:n])
        if t.state == TrialState.PRUNED:
            assert [(r.info.run_name, r.info.status) for r in reps] == [(f"trial-{t.number}-rep-0", "KILLED")]
        else:
            assert len(reps) == 2


def test_workers_train_replicates_too(workdir):
    proc = run_cli("sgdtune.study", "experiments/quick.toml", "--workers", "2", "--replicates", "2", "--n-trials", "2",
                   "--set", "search.epochs.low=1", "--set", "search.epochs.high=1", "--no-progress", cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    config = load_experiment("experiments/quick.toml")
    client = MlflowClient(locations(config)[1])
    experiment_id = client.get_experiment_by_name("quick").experiment_id
    runs = every_run(client, experiment_id)
    assert all(r.info.status == "FINISHED" for r in runs)
    assert sorted(r.info.run_name for r in runs if "sgdtune.replicate" in r.data.tags) == [
        "trial-0-rep-0", "trial-0-rep-1", "trial-1-rep-0", "trial-1-rep-1"]


# -- bad input ------------------------------------------------------------------------------------


def test_replicates_below_one_exit_2_with_one_message(workdir, capsys):
    assert main(["experiments/quick.toml", "--no-progress", "--replicates", "0"]) == 2
    assert "--replicates: must be >= 1; got 0" in capsys.readouterr().err
    (workdir / "bad.toml").write_text("replicates = 0\n")
    assert main(["bad.toml", "--no-progress"]) == 2
    assert "replicates: must be >= 1; got 0" in capsys.readouterr().err
    assert not (workdir / "mlruns").exists()


def test_replicates_with_batch_trials_are_refused_naming_both_flags(workdir, capsys):
    assert main(["experiments/quick.toml", "--no-progress", "--replicates", "2", "--batch-trials", "2"]) == 2
    err = capsys.readouterr().err
    assert "--batch-trials" in err and "--replicates" in err
    assert not (workdir / "mlruns").exists()


def test_spread_metrics_are_the_documented_ones():
    assert set(SPREAD_METRICS) >= {"final_val_acc", "final_val_loss", "final_gen_gap", "final_grad_noise_scale",
                                   "updates_to_target"}
