"""The run's options (sgdtune/study/session.py RunOptions): each bad one is one InputError naming its
flag (or keyword), the rule and what was given, raised once, before anything is loaded or
written; a worker process gets the checked options and does not check them again."""

from __future__ import annotations

import pickle
import re

import pytest
from conftest import EXPERIMENTS

from sgdtune.config import load_experiment
from sgdtune.errors import InputError
from sgdtune.study import session as session
from sgdtune.study.run import run_study
from sgdtune.study.session import RunOptions
from sgdtune.study.workers import WorkerSpec


def quick(**overrides):
    return load_experiment(EXPERIMENTS / "quick.toml", **overrides)


@pytest.mark.parametrize("options,field,rule,got", [
    ({"workers": 0}, "--workers", "must be >= 1", "0"),
    ({"workers": "two"}, "--workers", "must be a whole number", "'two'"),
    ({"batch_trials": 0}, "--batch-trials", "must be >= 1", "0"),
    ({"heartbeat": 0}, "--heartbeat", "must be >= 1 (seconds)", "0"),
    ({"on_change": "yes"}, "on_change", "must be one of 'refuse', 'fresh', 'extend'", "'yes'"),
    ({"face": "web"}, "face", "must be one of 'api', 'cli'", "'web'"),
    ({"register_model": " "}, "--register-model", "must be a non-empty model name", "' '"),
    ({"register_model": "m", "track": False}, "--register-model", "needs MLflow tracking (the models live there)",
     "--no-tracking"),
    ({"gpus": [-1]}, "--gpus", "must list GPU indices (integers >= 0), e.g. [0, 2, 3]", "[-1]"),
    ({"gpus": "zero"}, "--gpus", "must be a comma-separated list of GPU indices such as 0,2,3 (repeat an index "
     "to run several trials on one GPU: 0,0,1,1)", "'zero'"),
    ({"gpus": [0], "workers": 1}, "--gpus", "needs --device cuda (or auto on a machine with CUDA)", "device 'cpu'"),
    ({"batch_trials": 2}, "--batch-trials", "cannot be combined with --replicates > 1 (replicates are trained one "
     "after another, not stacked); drop one of the two", "--batch-trials 2 with --replicates 3"),
])
def test_each_bad_run_option_is_one_input_error_naming_its_flag_the_rule_and_what_was_given(options, field, rule,
                                                                                           got):
    config = quick(device="cpu", replicates=3)
    with pytest.raises(InputError) as e:
        RunOptions.check(config, **options)
    assert (e.value.field, e.value.rule, e.value.got) == (field, rule, got)
    assert str(e.value) == f"{field}: {rule}; got {got}"


def test_the_command_lines_gpu_list_gives_one_worker_per_slot():
    options = RunOptions.check(quick(device="cuda"), gpus="0,0,1", workers=None)
    assert (options.gpus, options.workers) == ((0, 0, 1), 3)
    assert RunOptions.check(quick(), workers=None).workers == 1


@pytest.mark.parametrize("options", [{"on_change": "yes"}, {"face": "web"}, {"workers": "two"}])
def test_run_study_refuses_a_bad_option_before_it_loads_or_writes_anything(tmp_path, options):
    with pytest.raises(InputError):
        run_study(quick(n_trials=1), mlruns=tmp_path / "mlruns", **options)
    assert not (tmp_path / "mlruns").exists()  # no journal, no MLflow store, no profile cache


def test_a_study_checks_its_options_against_the_experiment_once(tmp_path, monkeypatch):
    calls = []
    check = session._check_cohorts
    monkeypatch.setattr(session, "_check_cohorts", lambda *args: calls.append(args) or check(*args))
    study = run_study(quick(n_trials=2, profile=False), mlruns=tmp_path / "mlruns", track=False, batch_trials=2)
    assert len(study.trials) == 2
    assert [batch for _, batch in calls] == [2]


def test_a_worker_gets_the_checked_options_as_they_were_checked(monkeypatch):
    config = quick()
    options = RunOptions.check(config, workers=2, heartbeat=30, batch_trials=2, track=False)
    calls = []
    monkeypatch.setattr(session, "_check_cohorts", lambda *args: calls.append(args))
    spec = pickle.loads(pickle.dumps(WorkerSpec(config, options, parent_run_id=None)))  # as spawn sends it
    assert spec.options == options and spec.options.heartbeat == 30
    assert calls == []  # unpickled, not checked again


def test_stacked_cohorts_refuse_a_stratified_batch_size():
    from sgdtune.config import load_experiment
    from sgdtune.study.session import RunOptions

    config = load_experiment(EXPERIMENTS / "batch_tradeoff.toml")
    with pytest.raises(InputError, match=re.escape("--batch-trials: cannot be combined with "
                                                   "search.batch_size.stratify")):
        RunOptions.check(config, batch_trials=4)
    RunOptions.check(config, batch_trials=1)  # one trial at a time: fine
