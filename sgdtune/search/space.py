"""The experiment's search space as Optuna suggestions, and the sampler that stratifies one
parameter over its octaves.

Layer: search (the Optuna side, without torch; docs/architecture.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from ..config import SEARCHABLE, ParamRange


def suggest(trial: optuna.Trial, search: dict[str, ParamRange]) -> dict[str, Any]:
    """One value per searched parameter, typed as the trainer expects (int or float)."""
    params: dict[str, Any] = {}
    for name, rng in search.items():
        kind = SEARCHABLE[name]
        if rng.choices is not None:
            params[name] = kind(trial.suggest_categorical(name, [kind(c) for c in rng.choices]))
        elif kind is int:
            step = int(rng.step) if rng.step else 1
            params[name] = trial.suggest_int(name, int(rng.low), int(rng.high), step=step, log=rng.log)
        else:
            params[name] = trial.suggest_float(name, rng.low, rng.high, step=rng.step, log=rng.log)
    return params


def grid(search: dict[str, ParamRange]) -> dict[str, list[Any]]:
    """Every value of every parameter, for Optuna's GridSampler (choices, or stepped ranges)."""
    out: dict[str, list[Any]] = {}
    for name, rng in search.items():
        kind = SEARCHABLE[name]
        if rng.choices is not None:
            out[name] = [kind(c) for c in rng.choices]
        else:
            count = int(round((rng.high - rng.low) / rng.step)) + 1
            out[name] = [kind(rng.low + i * rng.step) for i in range(count)]
    return out


def powers_of_two(rng: ParamRange) -> list[int]:
    """The powers of two in [low, high], ascending (8..1024: 8, 16, ..., 1024): one per octave."""
    k_lo, k_hi = math.ceil(math.log2(rng.low)), math.floor(math.log2(rng.high))
    return [2 ** k for k in range(k_lo, k_hi + 1)]


class StratifiedSampler(optuna.samplers.BaseSampler):
    """One parameter spread over fixed values, the others drawn by a base sampler that sees only
    the trials at the same value: e.g. every octave of B gets as many trials, and lr is tuned
    per batch size.

    Each trial takes the value with the fewest live trials (complete, pruned or running); ties
    go round-robin from values[p % len(values)] for the trial at place p in the plan. With
    nothing diverged that is values[p % len(values)], a plain round-robin; a trial that
    diverged (or crashed) does not count, so its value gets another trial before any value
    gets one more: live counts never differ by more than one, and a diverged trial does not
    cost its batch size a slot.

    A trial's place is its number less the retries numbered before it, and a retry (user
    attribute retry_of: a trial queued again after a kill or a Ctrl-C, study/reclaim.py, study/trial.py)
    runs again with its parameters, in the place of the trial it retries: an interrupted and
    resumed study runs the plan of an uninterrupted one. Counted from the stored trials, so
    several workers sharing a study still cover the values evenly (places break the ties of
    trials created at once). Enqueued values win, as with any Optuna sampler.
    """

    def __init__(self, base: optuna.samplers.BaseSampler, name: str, values: list[Any]) -> None:
        self.base, self.name, self.values = base, name, list(values)
        self._chosen: dict[int, Any] = {}  # trial number -> its value, fixed at its first sampling call

    def value_for(self, study: optuna.Study, trial: FrozenTrial) -> Any:
        """The stratified parameter's value for `trial` (chosen once, then kept)."""
        if trial.number not in self._chosen:
            fixed = trial.system_attrs.get("fixed_params", {})
            self._chosen[trial.number] = fixed[self.name] if self.name in fixed else self._least_served(study, trial)
        return self._chosen[trial.number]

    def _least_served(self, study: optuna.Study, trial: FrozenTrial) -> Any:
        trials = study.get_trials(deepcopy=False)
        live = {v: 0 for v in self.values}
        for t in trials:
            if (t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) and t.number != trial.number
                    and t.params.get(self.name) in live):
                live[t.params[self.name]] += 1
        k, place = len(self.values), plan_place(trials, trial)
        return self.values[min(range(k), key=lambda i: (live[self.values[i]], (i - place) % k))]

    def _stratum(self, study: optuna.Study, trial: FrozenTrial) -> tuple[optuna.Study, FrozenTrial]:
        """The trials at this trial's value (stratum_study), and a running trial standing in for
        this one there: what the base sampler writes to its trial (TPE's and GP's shared
        relative params) stays in the copy."""
        view = stratum_study(study, self.name, self.value_for(study, trial))
        view.ask()
        return view, view.get_trials(deepcopy=False)[-1]

    def reseed_rng(self) -> None:
        self.base.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        # The space comes from the whole study (it is the same in every stratum); the
        # stratified parameter is left out so that it reaches sample_independent.
        space = self.base.infer_relative_search_space(study, trial)
        return {k: v for k, v in space.items() if k != self.name}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        if not search_space:
            return {}
        return self.base.sample_relative(*self._stratum(study, trial), search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if param_name == self.name:
            return self.value_for(study, trial)
        return self.base.sample_independent(*self._stratum(study, trial), param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._chosen.pop(trial.number, None)
        self.base.after_trial(study, trial, state, values)


RETRY_ATTR = "retry_of"  # trial user attribute: the number of the trial this one runs again


def plan_place(trials: Sequence[FrozenTrial], trial: FrozenTrial) -> int:
    """`trial`'s place in a round-robin plan: a retry's is the place of the trial it retries;
    any other's is its number less the retries numbered before it (each took a number without
    taking a new place)."""
    by_number = {t.number: t for t in trials}
    seen = set()
    while trial.user_attrs.get(RETRY_ATTR) in by_number and trial.number not in seen:
        seen.add(trial.number)
        trial = by_number[trial.user_attrs[RETRY_ATTR]]
    return trial.number - sum(1 for t in trials if t.number < trial.number and RETRY_ATTR in t.user_attrs)


def stratum_study(study: optuna.Study, name: str, value: Any) -> optuna.Study:
    """An in-memory study holding the finished trials of `study` whose param `name` is `value`:
    the history a base sampler or pruner sees, so that it compares like with like (lr at one
    batch size with lr at the same batch size)."""
    view = optuna.create_study(storage=optuna.storages.InMemoryStorage(), directions=study.directions,
                               sampler=optuna.samplers.RandomSampler(seed=0))
    view.add_trials([t for t in study.get_trials(deepcopy=False)
                     if t.state.is_finished() and t.params.get(name) == value])
    return view


class StratifiedPruner(optuna.pruners.BasePruner):
    """A pruner that judges a trial against the trials at the same value of the stratified
    parameter only: at equal epochs a batch of 1024 has made 128 times fewer updates than one
    of 8, so a median over every B would prune large batches for their size alone."""

    def __init__(self, base: optuna.pruners.BasePruner, name: str) -> None:
        self.base, self.name = base, name

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        if self.name not in trial.params:
            return self.base.prune(study, trial)
        return self.base.prune(stratum_study(study, self.name, trial.params[self.name]), trial)
