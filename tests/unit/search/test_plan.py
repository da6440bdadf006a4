"""Resume keeps the plan (sgdtune/search/space.py plan_place, sgdtune/study/reclaim.py requeue): a trial
interrupted by Ctrl-C is queued again with its parameters, as a killed one is, and takes its
place in the stratified round-robin, so a resumed study runs the batch sizes an uninterrupted
one runs."""

import sys

import optuna
import pytest
from optuna.trial import TrialState

from sgdtune import load_experiment, run_study
from sgdtune.search.space import plan_place
from sgdtune.search.strategy import counts_as_finished

STRATIFIED = """
n_trials = 6
keep_models = 0
[model]
factory = "interrupting:make"
[train]
epochs = 1
probe_size = 0
sharpness_every = 0
[search.batch_size]
low = 16
high = 128
log = true
stratify = true
[search.lr]
low = 0.01
high = 0.1
log = true
[sampler]
name = "random"
[pruner]
name = "none"
"""

FACTORY = '''
from torch import nn

calls = 0
interrupt_at = None  # the call of make that raises KeyboardInterrupt, as a Ctrl-C in a trial does


def make(n_features, n_classes):
    global calls
    calls += 1
    if calls == interrupt_at:
        raise KeyboardInterrupt
    return nn.Sequential(nn.Linear(n_features, 8), nn.ReLU(), nn.Linear(8, n_classes))
'''


def finished_batch_sizes(study: optuna.Study) -> list[int]:
    return [t.params["batch_size"] for t in study.get_trials() if counts_as_finished(t)]


def test_a_retry_takes_the_place_of_the_trial_it_retries_and_later_trials_keep_theirs():
    def trial(number, retry_of=None):
        return optuna.trial.create_trial(state=TrialState.FAIL, user_attrs={} if retry_of is None
                                         else {"retry_of": retry_of})
    trials = [trial(0), trial(1), trial(2), trial(3, retry_of=1), trial(4), trial(5, retry_of=3)]
    for n, t in enumerate(trials):
        t.number = n
    assert [plan_place(trials, t) for t in trials] == [0, 1, 2, 1, 3, 1]


def test_a_stratified_study_interrupted_by_ctrl_c_and_resumed_runs_the_plan_of_an_uninterrupted_one(workdir):
    (workdir / "interrupting.py").write_text(FACTORY)
    (workdir / "plan.toml").write_text(STRATIFIED)
    sys.modules.pop("interrupting", None)
    whole = run_study(load_experiment(workdir / "plan.toml", name="whole"), track=False)
    assert finished_batch_sizes(whole) == [16, 32, 64, 128, 16, 32]

    interrupting = sys.modules["interrupting"]
    interrupting.calls, interrupting.interrupt_at = 0, 4  # the Objective builds once, then trials 0, 1, 2
    config = load_experiment(workdir / "plan.toml", name="cut")
    with pytest.raises(KeyboardInterrupt):
        run_study(config, track=False)
    resumed = run_study(config, track=False)
    trials = resumed.get_trials()
    cut = trials[2]
    assert (cut.state, cut.user_attrs["fail_kind"]) == (TrialState.FAIL, "interrupted")
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 2)
    assert retry.params == cut.params and retry.state == TrialState.COMPLETE  # its own parameters, run again
    assert finished_batch_sizes(resumed) == [16, 32, 64, 128, 16, 32]
    assert sorted(finished_batch_sizes(resumed)) == sorted(finished_batch_sizes(whole))
