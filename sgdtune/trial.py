"""One trial's life: its values suggested, its MLflow run opened, its epochs logged and
reported to the pruner, and its ending recorded, whatever the ending.

`TrialJob.finish` is the one place where an ending becomes a state, as Optuna maps an
objective's ending: a training result -> COMPLETE, `optuna.TrialPruned` -> PRUNED, any
other exception (divergence, a bug in a user's model, Ctrl-C) -> FAIL with a reason. It
ends the trial's MLflow run the same way (FINISHED, KILLED, FAILED), so no run stays
RUNNING, and the caller tells Optuna the state it returns (or re-raises, inside
`study.optimize`, where Optuna's own mapping agrees).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from .config import ExperimentConfig
from .data import Dataset
from .model import describe_model
from .search import FAIL_KIND, derive_seed
from .space import suggest
from .trainer import BatchPlan, Diverged, EpochMetrics, TrainConfig, TrainResult, history_summary, train
from .writer import BackgroundTracker, RunRef

if TYPE_CHECKING:
    from .console import Progress

EPOCH_METRIC_NAMES = set(EpochMetrics.__dataclass_fields__) - {"epoch"}
# Endings that belong to the trial itself: told to Optuna, and the study goes on.
TRIAL_ENDINGS = (optuna.TrialPruned, Diverged)


@dataclass
class TrialJob:
    """One trial in flight: its training config, MLflow run and the epochs seen so far."""

    trial: optuna.Trial
    config: TrainConfig
    plan: BatchPlan
    run: RunRef | None
    objective: Objective
    history: list[EpochMetrics] = field(default_factory=list)
    run_id_recorded: bool = False
    values: float | tuple[float, ...] | None = None  # the objective value(s), once COMPLETE

    def record_run_id(self, wait: bool) -> None:
        """The trial's user attribute mlflow_run_id, once the writer process has made the run
        (`wait`: for it). Recorded early, it lets a supervisor end a dead worker's run."""
        if self.run is not None and not self.run_id_recorded and (wait or self.run.ready):
            self.trial.set_user_attr("mlflow_run_id", self.run.id)
            self.run_id_recorded = True

    def on_epoch(self, m: EpochMetrics) -> None:
        """The trainer's hook: log the epoch, show it, report it to the pruner."""
        self.history.append(m)
        obj = self.objective
        if self.run is not None:
            obj.tracker.log_epoch(self.run, m.as_dict(), step=m.epoch)
            self.record_run_id(wait=False)
        if obj.progress:
            obj.progress.epoch_done(m, self.plan.epochs)
        if obj.prune:
            self.trial.report(m.val_acc, m.epoch)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"val_acc {m.val_acc:.4f} at epoch {m.epoch}")

    def finish(self, ending: TrainResult | BaseException) -> TrialState:
        """Record how the trial ended and end its MLflow run; the trial's Optuna state."""
        if isinstance(ending, TrainResult):
            summary = ending.summary()
            self.values = self.objective.values(summary)
            self._end(TrialState.COMPLETE, summary)
            return TrialState.COMPLETE
        partial = history_summary(self.history)
        if isinstance(ending, optuna.TrialPruned):
            self._end(TrialState.PRUNED, partial)
            return TrialState.PRUNED
        if isinstance(ending, Diverged):
            kind, reason = "diverged", str(ending)
            self.trial.set_user_attr("failed_at_update", ending.update)
            partial["failed_at_update"] = ending.update
        elif isinstance(ending, KeyboardInterrupt):
            kind, reason = "interrupted", "interrupted (Ctrl-C)"
        else:  # a bug in a user's model, say: the run must not stay RUNNING
            kind, reason = "error", f"{type(ending).__name__}: {ending}"
        self.trial.set_user_attr(FAIL_KIND, kind)
        self.trial.set_user_attr("fail_reason", reason)
        self._end(TrialState.FAIL, partial, reason)
        return TrialState.FAIL

    def _end(self, state: TrialState, summary: dict, reason: str | None = None) -> None:
        obj = self.objective
        self.trial.set_user_attr("summary", summary)
        if self.run is not None:
            # `updates` and `examples_seen` are per-epoch metrics too: their latest value is
            # already the summary, and logging them again would add a point to their curves.
            once = {k: v for k, v in summary.items() if k not in EPOCH_METRIC_NAMES}
            obj.tracker.end_trial_run(self.run, state.name, once, fail_reason=reason)
            self.record_run_id(wait=True)
            if obj.on_first_end is not None:  # the run ids are in by now
                obj.on_first_end(self.trial.study)
                obj.on_first_end = None
        if obj.progress:
            obj.progress.trial_done(self.trial.number, state.name, summary)


@dataclass
class Objective:
    """Trains one trial and records it in MLflow and Optuna: Optuna's objective."""

    config: ExperimentConfig
    data: Dataset
    tracker: BackgroundTracker | None
    parent_run: RunRef | str | None
    device_tag: str
    progress: Progress | None = None
    on_first_end: Any = None  # called with the study once, when the first trial's run has ended

    @property
    def prune(self) -> bool:
        return len(self.config.objectives) == 1 and self.config.pruner.name != "none"

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        job = self.begin(trial)
        try:
            result = train(job.config, self.data, job.on_epoch)
        except BaseException as e:
            job.finish(e)
            raise  # Optuna maps it as finish() did
        job.finish(result)
        return job.values

    def begin(self, trial: optuna.Trial) -> TrialJob:
        """Suggest the trial's values and open its MLflow run (asked for now, so the UI's
        duration is the trial's)."""
        trial.set_user_attr("worker_pid", os.getpid())  # lets a supervisor find a dead worker's trial
        params = suggest(trial, self.config.search)
        train_config = self.config.trial_config(params, seed=derive_seed(self.config.seed, trial.number))
        plan = BatchPlan.of(self.data.n_train, train_config)
        run = None
        if self.tracker is not None:
            run = self.tracker.start_trial_run(
                self.parent_run,
                trial.number,
                params=self.run_params(train_config, plan),
                tags={"sgdtune.device": self.device_tag, "sgdtune.trial_state": "RUNNING"},
            )
        if self.progress:
            self.progress.trial_started(trial.number, train_config, plan)
        return TrialJob(trial, train_config, plan, run, self)

    def values(self, summary: dict[str, float]) -> float | tuple[float, ...]:
        """The objective value(s) Optuna sees, from a complete trial's summary."""
        values = [summary["final_val_acc"] if o == "val_acc" else summary[o] for o in self.config.objectives]
        return values[0] if len(values) == 1 else tuple(values)

    def run_params(self, tc: TrainConfig, plan: BatchPlan) -> dict[str, Any]:
        """Every param of a child run, with the same names in every trial (README: names)."""
        scaled = tc.lr_scaling != "none"
        return {
            "batch_size": tc.batch_size,
            "lr": tc.effective_lr,
            "lr_base": tc.lr if scaled else None,
            "lr_scaling": tc.lr_scaling,
            "base_batch_size": tc.base_batch_size if scaled else None,
            "warmup_epochs": tc.warmup_epochs,
            "budget": tc.budget,
            tc.budget: tc.budget_size,
            "optimizer": tc.optimizer,
            "momentum": tc.momentum,
            "weight_decay": tc.weight_decay,
            "dataset": self.data.name,
            "n_train": self.data.n_train,
            "n_val": self.data.n_val,
            "model": describe_model(tc.model, self.data.n_features, self.data.n_classes),
            "seed": tc.seed,
            "iterations_per_epoch": plan.iterations_per_epoch,
            "total_updates": plan.total_updates,
            "target_val_acc": tc.target_val_acc,
        }
