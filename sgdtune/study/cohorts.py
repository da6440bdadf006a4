"""Ways of running a study's trials in this process: one by one through Optuna's
`study.optimize`, or in cohorts of one batch size trained as one stacked model
(`--batch-trials K`), and, with heartbeats, staying until other workers' trials settle.

Layer: study (one study from its experiment to its last trial; docs/architecture.md).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..config import ExperimentConfig
from ..errors import Surplus
from ..interrupts import interrupts_held
from ..search.strategy import n_claimed
from ..trainer import BUDGET_SIZES, PER_MEMBER, Diverged, UnstackableModel, group_key, train, train_stacked
from .trial import TRIAL_ENDINGS, Objective, TrialJob


def run_trials(study: optuna.Study, objective: Objective, n_trials: int, config: ExperimentConfig,
               batch_trials: int = 1) -> None:
    """Up to n_trials more trials in this process: in stacked cohorts of `batch_trials`
    (--batch-trials), or one by one. The one place that chooses (study/run.py, study/workers.py, settle)."""
    if batch_trials > 1:
        optimize_batched(study, objective, n_trials, config, batch_trials)
    else:
        optimize(study, objective, n_trials, config)


def optimize(study: optuna.Study, objective: Objective, n_trials: int, config: ExperimentConfig) -> None:
    """Up to n_trials more trials, one by one; stops early once the study has
    config.n_trials finished."""
    try:
        study.optimize(
            objective,
            n_trials=n_trials,
            timeout=config.timeout_s,
            catch=(Diverged, Surplus),  # a diverged trial is finished (FAIL); a surplus one stops the study below
            # Ctrl-C or SIGTERM from a trial's end to Optuna's tell was held (study/trial.py): it
            # stops the study now that Optuna has the trial's state.
            callbacks=[lambda study, trial: objective.held.deliver(), _stop_when_done(config.n_trials)],
        )
    finally:  # Optuna runs no callback after an error it does not catch: the hold ends here
        objective.held.release()


def _stop_when_done(n_trials: int):
    """Stop once the study's finished trials, and those other processes are running, make
    n_trials: a trial started now would be one too many (if one of theirs fails instead of
    finishing, the same command runs the missing one)."""
    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if n_claimed(study) >= n_trials:
            study.stop()

    return callback


def optimize_batched(study: optuna.Study, objective: Objective, n_trials: int, config: ExperimentConfig,
                     batch_trials: int) -> None:
    """Up to n_trials more trials, in cohorts of `batch_trials` trained as one stacked model.

    A cohort is one trial as the sampler suggests it, plus batch_trials - 1 more with the same
    batch size (and every other searched value that shapes the stacked model) fixed through
    Optuna's queue, so a continuous batch-size range still gives full groups. Each member keeps
    its own lr, momentum, seed, metrics, pruning and divergence (trainer.stacked). The
    configuration was checked for cohorts with the run's options (session.RunOptions) before the
    study opened.
    """
    shaping = [name for name in config.search if name not in PER_MEMBER and name not in BUDGET_SIZES[:2]]
    started, deadline = 0, time.monotonic() + (config.timeout_s or math.inf)
    while started < n_trials and n_claimed(study) < config.n_trials and time.monotonic() < deadline:
        size = min(batch_trials, n_trials - started, config.n_trials - n_claimed(study))
        jobs = []
        try:
            jobs.append(objective.begin(trial := study.ask()))
            for _ in range(size - 1):
                if shaping:
                    study.enqueue_trial({name: jobs[0].trial.params[name] for name in shaping})
                jobs.append(objective.begin(trial := study.ask()))
        except Surplus:  # another process took the last trials: train those begun, then stop
            study.tell(trial, state=TrialState.FAIL)
            run_cohort(study, objective, jobs)
            return
        started += size
        run_cohort(study, objective, jobs)


def run_cohort(study: optuna.Study, objective: Objective, jobs: list[TrialJob]) -> None:
    """Train the jobs (stacked where their shapes agree), then tell Optuna each ending.
    A trial's own ending (pruned, diverged) is told and the cohort goes on; any other
    error is told, then raised; Ctrl-C ends every trial of the group in flight."""
    groups: dict[tuple, list[TrialJob]] = defaultdict(list)
    for job in jobs:
        groups[group_key(job.config)].append(job)  # any model: equal keys, equal parameter shapes
    todo = list(groups.values())
    while todo:
        group = todo.pop(0)
        try:
            if len(group) == 1:
                try:
                    endings: list = [train(group[0].config, objective.data, group[0].on_epoch)]
                except Exception as e:  # noqa: BLE001 - told to Optuna below, re-raised if a bug
                    endings = [e]
            else:
                try:
                    endings = train_stacked([j.config for j in group], objective.data,
                                            on_epoch=lambda i, m, group=group: group[i].on_epoch(m))
                except UnstackableModel:  # buffers (BatchNorm) or dropout, found before any training
                    todo[:0] = [[job] for job in group]  # one by one
                    continue
        except KeyboardInterrupt as e:
            for job in group + [job for waiting in todo for job in waiting]:  # none left RUNNING
                study.tell(job.trial, state=job.finish(e))
            raise
        with interrupts_held() as held:  # every trained trial of the group told, then the interrupt
            for job, ending in zip(group, endings):
                state = job.finish(ending)
                study.tell(job.trial, job.values, state=state)
                if isinstance(ending, BaseException) and not isinstance(ending, TRIAL_ENDINGS):
                    raise ending
        held.deliver()


def settle_poll_s(heartbeat: float) -> float:
    """Seconds between reads of the storage while settling: a tenth of the heartbeat, at least
    1 s (a hundred tasks read a PostgreSQL study at most 100 times a second) and at most the heartbeat."""
    return min(heartbeat, max(1.0, heartbeat / 10))


def settle(study: optuna.Study, objective: Objective, config: ExperimentConfig, heartbeat: int,
           batch_trials: int = 1) -> None:
    """With heartbeats: wait while other workers' trials run, so that a dead one is failed
    (after the grace period), re-queued and run, rather than left RUNNING for ever. The
    storage is read every settle_poll_s(heartbeat) seconds: a task whose last peer finishes
    leaves within that, not a whole heartbeat later."""
    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        time.sleep(settle_poll_s(heartbeat))
        optuna.storages.fail_stale_trials(study)
        # Trials other workers are running count: asking beside them would only make surplus ones.
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) or n_claimed(study) < config.n_trials:
            run_trials(study, objective, max(1, config.n_trials - n_claimed(study)), config, batch_trials)
