"""The stratified search covers every batch size: at least 2 complete trials per octave of B
(strategy.CoverFirst spares the first trials, space.StratifiedSampler replaces diverged ones)."""

from collections import Counter

import optuna
from conftest import EXPERIMENTS
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from sgdtune.config import load_experiment
from sgdtune.search.space import powers_of_two, suggest
from sgdtune.search.strategy import FAIL_KIND, make_pruner, make_sampler
from sgdtune.study.run import run_study

CONFIG = load_experiment(EXPERIMENTS / "batch_tradeoff.toml")
OCTAVES = powers_of_two(CONFIG.search["batch_size"])  # 8, 16, ..., 1024


def _trial_at(study: optuna.Study, b: int, curve: list[float]) -> optuna.Trial:
    """A running trial at batch size b that has reported val_acc `curve` at epochs 1, 2, ..."""
    study.enqueue_trial({"batch_size": b, "lr": 0.01, "epochs": 10})
    trial = study.ask()
    suggest(trial, CONFIG.search)
    for epoch, value in enumerate(curve, start=1):
        trial.report(value, epoch)
    return trial


def _complete(study: optuna.Study, b: int, value: float) -> None:
    study.tell(_trial_at(study, b, [value] * 5), value)


def test_a_trial_is_not_pruned_while_its_batch_size_has_fewer_than_two_complete_trials(tmp_path):
    # Two workers, each with its own study object and pruner on one journal file: the counts
    # come from the storage, not from what one process has seen.
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal")))
    first = optuna.create_study(storage=storage, study_name="s", direction="maximize", pruner=make_pruner(CONFIG))
    second = optuna.load_study(storage=storage, study_name="s", pruner=make_pruner(CONFIG))
    _complete(first, 16, 0.95)
    _complete(first, 32, 0.95)
    _complete(first, 32, 0.94)
    # far below the median of its B after the 3 warm-up epochs; the median pruner alone prunes
    # it once one trial at its B is complete (n_startup_trials = 1 per B)
    lagging = _trial_at(second, 16, [0.3, 0.4, 0.5, 0.5])
    assert CONFIG.pruner.n_startup_trials == 1 and CONFIG.pruner.n_warmup_steps == 3
    assert not lagging.should_prune()  # B = 16 has 1 complete trial
    assert _trial_at(second, 32, [0.3, 0.4, 0.5, 0.5]).should_prune()  # B = 32 has 2
    _complete(first, 16, 0.94)  # written by the other worker
    assert lagging.should_prune()


def test_a_diverged_trial_gives_its_batch_size_another_trial_before_any_batch_size_gets_a_third():
    study = optuna.create_study(direction="maximize", sampler=make_sampler(CONFIG, 0))
    for _ in range(2 * len(OCTAVES) + 1):
        trial = study.ask()
        b = suggest(trial, CONFIG.search)["batch_size"]
        if trial.number == 1:  # B = 16 diverges
            trial.set_user_attr(FAIL_KIND, "diverged")
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, 1.0 - b / 2048)
    assert [t.params["batch_size"] for t in study.trials[:len(OCTAVES)]] == OCTAVES  # the round-robin
    complete = Counter(t.params["batch_size"] for t in study.trials if t.state == TrialState.COMPLETE)
    assert complete == {b: 2 for b in OCTAVES}


def test_the_default_study_ends_with_at_least_two_complete_trials_in_every_octave(tmp_path):
    config = load_experiment(EXPERIMENTS / "batch_tradeoff.toml", storage=str(tmp_path / "optuna.journal"))
    study = run_study(config, track=False, mlruns=tmp_path)
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == config.n_trials == 30
    complete = Counter(t.params["batch_size"] for t in trials if t.state == TrialState.COMPLETE)
    assert {b: complete[b] for b in OCTAVES} == {b: max(2, complete[b]) for b in OCTAVES}
