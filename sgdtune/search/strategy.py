"""The parts of a study Optuna provides, set up from the experiment: the seeded sampler,
the pruner, the study itself, and what counts as a finished trial.

Seeds have one owner each: the study seed feeds the sampler, and each trial's seed is
derived from the study seed and the trial number (`derive_seed`).

Layer: search (the Optuna side, without torch; docs/architecture.md).
"""

from __future__ import annotations

import warnings

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import ExperimentConfig
from ..errors import Surplus
from .space import StratifiedPruner, StratifiedSampler, grid, powers_of_two

FAIL_KIND = "fail_kind"  # trial user attribute: "diverged" counts as finished, "interrupted" does not
MIN_COMPLETE_PER_STRATUM = 2  # complete trials at each value of a stratified parameter before any there is pruned


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from several integers (study seed, trial number, ...), stable across runs."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def make_sampler(config: ExperimentConfig, seed: int) -> optuna.samplers.BaseSampler:
    """The configured sampler; wrapped in space.StratifiedSampler when a search range has stratify = true."""
    base = _base_sampler(config, seed)
    for name, rng in config.search.items():
        if rng.stratify:  # config allows one
            return StratifiedSampler(base, name, powers_of_two(rng))
    return base


def _base_sampler(config: ExperimentConfig, seed: int) -> optuna.samplers.BaseSampler:
    s = config.sampler
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.name == "grid":
        return optuna.samplers.GridSampler(grid(config.search), seed=seed)
    if s.name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=s.n_startup_trials,
                                            warn_independent_sampling=False)
    if s.name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=s.n_startup_trials)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials, multivariate=True)


def make_pruner(config: ExperimentConfig) -> optuna.pruners.BasePruner:
    p = config.pruner
    if p.name == "none" or len(config.objectives) > 1:  # Optuna prunes single-objective studies only
        return optuna.pruners.NopPruner()
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, p.n_warmup_steps))
    median = optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    stratified = next((name for name, rng in config.search.items() if rng.stratify), None)
    if not stratified:
        return median
    # the median within the stratum, once the stratum has enough complete trials to have a spread
    return CoverFirst(StratifiedPruner(median, stratified), stratified, MIN_COMPLETE_PER_STRATUM)


class CoverFirst(optuna.pruners.BasePruner):
    """Never prunes a trial while fewer than `min_complete` trials at its value of `name` are
    complete, whatever the base pruner says: every batch size then ends the study with at
    least `min_complete` complete trials (given that many trials that do not diverge; the
    stratified sampler gives a diverged trial's batch size another), so its best has a spread.

    The count is read from the study's trials in the storage, so workers in other processes
    see each other's complete trials. Trials at one value running at once (several workers)
    may all be spared: more complete trials than needed, never fewer.
    """

    def __init__(self, base: optuna.pruners.BasePruner, name: str, min_complete: int) -> None:
        self.base, self.name, self.min_complete = base, name, min_complete

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if self.name in trial.params:
            value = trial.params[self.name]
            complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if sum(t.params.get(self.name) == value for t in complete) < self.min_complete:
                return False
        return self.base.prune(study, trial)


def open_study(config: ExperimentConfig, storage: optuna.storages.BaseStorage, worker: int = 0,
               join: int = 0) -> optuna.Study:
    """Create or load the study, with a sampler seeded from the study seed.

    A resumed study, a second worker, or a second process that joins the study (`join`: the
    starts before its own, reclaim.join, counted under the start lock) gets a fresh sampler
    stream rather than a replay of the first trials' draws: the seed also mixes in the trial
    count, the worker index and the join number (a study's first process draws as it did
    before joins were counted).
    """
    n_existing = 0
    if any(s.study_name == config.name for s in storage.get_all_studies()):
        n_existing = len(optuna.load_study(study_name=config.name, storage=storage).get_trials(deepcopy=False))
    study = optuna.create_study(
        storage=storage,
        study_name=config.name,
        sampler=make_sampler(config, derive_seed(config.seed, 1, n_existing, worker, *([join] if join else []))),
        pruner=make_pruner(config),
        directions=config.directions,
        load_if_exists=True,
    )
    if study.metric_names != list(config.objectives):
        # optuna-dashboard then labels the values "val_acc", not "Objective 0". Still
        # experimental in Optuna 5 (its warning, only, is silenced).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(config.objectives))
    return study


def study_exists(storage: optuna.storages.BaseStorage, name: str, study_id: int) -> bool:
    """Whether the storage's study `name` is still the one with id `study_id` (not deleted,
    nor replaced by a new study of the same name)."""
    try:
        return storage.get_study_id_from_name(name) == study_id
    except KeyError:
        return False


def counts_as_finished(trial: FrozenTrial) -> bool:
    """Complete, pruned, or failed by its own divergence; not a crash or a Ctrl-C."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get(FAIL_KIND) == "diverged"


def n_finished(study: optuna.Study) -> int:
    return sum(counts_as_finished(t) for t in study.get_trials(deepcopy=False))


def n_claimed(study: optuna.Study) -> int:
    """Finished trials and those RUNNING (in any process): what n_trials is held against
    before another trial starts, so that processes sharing a study start no extra one."""
    return sum(counts_as_finished(t) or t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False))


def check_not_surplus(trial: optuna.Trial, n_trials: int) -> None:
    """Raise Surplus if the trials before this one (finished, or RUNNING with a lower number)
    already make n_trials. Trial numbers are given out in one order by the storage, so two
    processes that asked at once agree on which of their trials is the extra one."""
    before = sum(counts_as_finished(t) or (t.state == TrialState.RUNNING and t.number < trial.number)
                 for t in trial.study.get_trials(deepcopy=False) if t.number != trial.number)
    if before >= n_trials:
        raise Surplus(f"not run: the study already had its {n_trials} trials finished or running in other "
                      "processes when this one started")


def best_value(study: optuna.Study) -> float | None:
    """The best first objective value among complete trials (None before any)."""
    values = [t.values[0] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return max(values) if values else None
