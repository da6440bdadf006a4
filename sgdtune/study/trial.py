"""One trial's life: its values suggested, its MLflow run opened, its epochs logged and
reported to the pruner, and its ending recorded, whatever the ending.

`TrialJob.finish` is the one place where an ending becomes a state, as Optuna maps an
objective's ending: a training result -> COMPLETE, `optuna.TrialPruned` -> PRUNED, any
other exception (divergence, a bug in a user's model, Ctrl-C) -> FAIL with a reason. It
ends the trial's MLflow run the same way (FINISHED, KILLED, FAILED), so no run stays
RUNNING, and the caller tells Optuna the state it returns (or re-raises, inside
`study.optimize`, where Optuna's own mapping agrees).

Replicates (`replicates = R > 1`): the sampled configuration is trained R times, one after
another, replicate r with seed `derive_seed(study seed, trial number, r)` (r = 0 keeps the
seed of a trial without replicates, so replicate 0 is exactly that trial's training). Each
is its own MLflow run `trial-<n>-rep-<r>` nested under the trial's run (tag
`sgdtune.replicate`), with its own epochs and summary. The trial's run gets, at its end, the
per-epoch mean over the replicates (over those that reached the epoch) and the mean of each
summary metric, plus `<metric>_std` (ddof=1) and `<metric>_se` (std / sqrt(R)) of the
SPREAD_METRICS; the mean is the value Optuna sees. The pruner sees replicate 0's epochs only:
replicate 0 is trained first, and a trial it prunes trains no other replicate.
Sequential rather than stacked (train_stacked, one member per seed): the stacked loop calls
each member's hook in turn, so a decision on the mean could only come at the last member's
hook and the others would leave an epoch later; factory models cannot be stacked at all;
and a stacked member equals `train` only up to float rounding, so replicate 0 would no
longer be the trial a study without replicates trains. Any replicate diverging fails the
trial (the reason names it) and no later replicate is trained; the finished replicates'
runs are FINISHED, the one in flight ends with the trial's state.

About 430 lines: one trial's life, from its suggested values to COMPLETE, PRUNED or FAIL, is
one path read top to bottom (Objective, TrialJob), with the replicates' mean beside it.

Layer: study (one study from its experiment to its last trial; docs/architecture.md).
"""

from __future__ import annotations

import math
import os
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from ..config import ExperimentConfig
from ..data import Dataset
from ..errors import Surplus
from ..interrupts import Held, describe, hold_interrupts
from ..model import build_model, describe_model
from ..saved import EXAMPLE_ROWS, architecture_of, dataset_records, keep_decision, model_spec, write_network
from ..search.space import suggest
from ..search.strategy import FAIL_KIND, check_not_surplus, derive_seed
from ..store.writer import BackgroundTracker, RunRef
from ..threads import ThreadChooser
from ..timing import release_cached_memory
from ..trainer import BatchPlan, Diverged, EpochMetrics, TrainConfig, TrainResult, history_summary, train
from .reclaim import PROCESS_ATTR, process_identity, requeue

if TYPE_CHECKING:
    from .console import Progress

EPOCH_METRIC_NAMES = set(EpochMetrics.__dataclass_fields__) - {"epoch"}
# Endings that belong to the trial itself: told to Optuna, and the study goes on.
TRIAL_ENDINGS = (optuna.TrialPruned, Diverged)
# Summary metrics whose spread over replicates is logged (<name>_std, <name>_se) when every
# replicate has them (updates_to_target: when every replicate reached the target).
SPREAD_METRICS = ("final_val_acc", "final_val_loss", "final_gen_gap", "final_grad_noise_scale",
                  "updates_to_target", "final_val_r2", "final_test_acc", "final_test_r2")


@dataclass
class Replicate:
    """One seed of a trial with replicates: its config, nested MLflow run, epochs, result."""

    index: int
    config: TrainConfig
    run: RunRef | None = None
    history: list[EpochMetrics] = field(default_factory=list)
    result: TrainResult | None = None
    started: bool = False

    def summary(self) -> dict[str, float]:
        return self.result.summary() if self.result is not None else history_summary(self.history)


def replicate_seed(study_seed: int, trial_number: int, replicate: int) -> int:
    """Replicate 0 has the seed of a trial without replicates; replicate r >= 1 its own."""
    if replicate == 0:
        return derive_seed(study_seed, trial_number)
    return derive_seed(study_seed, trial_number, replicate)


def mean_summary(summaries: list[dict[str, float]]) -> dict[str, float]:
    """The mean over replicates of each summary metric every replicate has, and the sample
    standard deviation (ddof=1) and standard error (std / sqrt(R)) of the SPREAD_METRICS."""
    if not summaries:
        return {}
    keys = [k for k in summaries[0] if all(k in s for s in summaries)]
    out = {k: statistics.fmean(s[k] for s in summaries) for k in keys}
    if len(summaries) >= 2:
        for k in SPREAD_METRICS:
            if k in out:
                std = statistics.stdev(s[k] for s in summaries)
                out[f"{k}_std"], out[f"{k}_se"] = std, std / math.sqrt(len(summaries))
    return out


def mean_history(histories: list[list[EpochMetrics]]) -> list[EpochMetrics]:
    """Per epoch, the mean of each metric over the replicates that reached that epoch (None
    where one of them has none, as grad_noise_scale before the first probe)."""
    out = []
    for i in range(max((len(h) for h in histories), default=0)):
        epochs = [h[i] for h in histories if len(h) > i]
        values: dict[str, Any] = {"epoch": epochs[0].epoch}
        for name in EpochMetrics.__dataclass_fields__:
            if name != "epoch":
                got = [getattr(m, name) for m in epochs]
                if isinstance(got[0], str):  # the task: the same for every replicate
                    values[name] = got[0]
                else:
                    values[name] = None if any(v is None for v in got) else statistics.fmean(got)
        out.append(EpochMetrics(**values))
    return out


@dataclass
class TrialJob:
    """One trial in flight: its training config, MLflow run and the epochs seen so far."""

    trial: optuna.Trial
    config: TrainConfig
    plan: BatchPlan
    run: RunRef | None
    objective: Objective
    history: list[EpochMetrics] = field(default_factory=list)  # with replicates: their mean, at the end
    run_id_recorded: bool = False
    values: float | tuple[float, ...] | None = None  # the objective value(s), once COMPLETE
    replicates: list[Replicate] = field(default_factory=list)  # empty without replicates (R = 1)
    current: Replicate | None = None  # the replicate in training

    def train(self, data: Dataset) -> TrainResult | list[TrainResult]:
        """Train the trial: its one config, or its replicates one after another (each run
        ended as it completes). An exception ends training; `finish` records it."""
        if not self.replicates:
            return train(self.config, data, self.on_epoch)
        obj = self.objective
        for rep in self.replicates:
            self.current, rep.started = rep, True
            if obj.tracker is not None:
                rep.run = obj.tracker.start_child_run(
                    self.run, f"trial-{self.trial.number}-rep-{rep.index}",
                    params={**obj.run_params(rep.config, self.plan), "replicates": len(self.replicates)},
                    tags={"sgdtune.replicate": rep.index, "sgdtune.replicate_of_trial": self.trial.number,
                          "sgdtune.device": obj.device_tag, "sgdtune.trial_state": "RUNNING"},
                )
            rep.result = train(rep.config, data, lambda m, rep=rep: self._epoch(m, rep.history, rep.run, rep.index))
            self._end_replicate(rep, TrialState.COMPLETE)
            self.current = None
        return [rep.result for rep in self.replicates]

    def record_run_id(self, wait: bool) -> None:
        """The trial's user attribute mlflow_run_id, once the writer process has made the run
        (`wait`: for it). Recorded early, it lets a supervisor end a dead worker's run."""
        if self.run is not None and not self.run_id_recorded and (wait or self.run.ready):
            self.trial.set_user_attr("mlflow_run_id", self.run.id)
            self.run_id_recorded = True

    def on_epoch(self, m: EpochMetrics) -> None:
        """The trainer's hook: log the epoch, show it, report it to the pruner."""
        self._epoch(m, self.history, self.run, 0)

    def _epoch(self, m: EpochMetrics, history: list[EpochMetrics], run: RunRef | None, replicate: int) -> None:
        """An epoch of the trial (or of one replicate, into its own run); the pruner sees
        those of replicate 0 only."""
        history.append(m)
        obj = self.objective
        if run is not None:
            obj.tracker.log_epoch(run, m.as_dict(), step=m.epoch)
            self.record_run_id(wait=False)
        if obj.progress:
            obj.progress.epoch_done(m, self.plan.epochs)
        if obj.prune and replicate == 0:
            self.trial.report(m.val_acc, m.epoch)
            if self.trial.should_prune():
                where = " of replicate 0" if self.replicates else ""
                raise optuna.TrialPruned(f"val_acc {m.val_acc:.4f} at epoch {m.epoch}{where}")

    def finish(self, ending: TrainResult | list[TrainResult] | BaseException) -> TrialState:
        """Record how the trial ended and end its MLflow run (and, with replicates, the run
        of the replicate in training); the trial's Optuna state. `ending`: the training
        result, the replicates' results, or the exception that ended training."""
        if self.replicates:
            self.history = mean_history([r.history for r in self.replicates])
        if isinstance(ending, (TrainResult, list)):
            if isinstance(ending, TrainResult):
                summary = ending.summary()
            else:
                summary = mean_summary([r.summary() for r in self.replicates])
            self.values = self.objective.values(summary)
            self._end(TrialState.COMPLETE, summary)
            self._keep_model(ending)
            return TrialState.COMPLETE
        partial = history_summary(self.history)
        if isinstance(ending, optuna.TrialPruned):
            self._end(TrialState.PRUNED, partial)
            return TrialState.PRUNED
        of = f"replicate {self.current.index}: " if self.current is not None else ""
        if isinstance(ending, Diverged):
            kind, reason = "diverged", f"{of}{ending}"
            self.trial.set_user_attr("failed_at_update", ending.update)
            partial["failed_at_update"] = ending.update
            if self.current is not None:
                self.trial.set_user_attr("failed_replicate", self.current.index)
        elif isinstance(ending, KeyboardInterrupt):
            kind, reason = "interrupted", f"interrupted ({describe(ending)})"
            requeue(self.trial)
        else:  # a bug in a user's model, say: the run must not stay RUNNING
            kind, reason = "error", f"{of}{type(ending).__name__}: {ending}"
        self.trial.set_user_attr(FAIL_KIND, kind)
        self.trial.set_user_attr("fail_reason", reason)
        self._end(TrialState.FAIL, partial, reason)
        return TrialState.FAIL

    def _keep_model(self, ending: TrainResult | list[TrainResult]) -> None:
        """A COMPLETE trial among the study's best keep_models logs its trained network as an
        MLflow logged model (written to a file here, logged by the writer process); the models
        of the trials it pushes below the best keep_models are deleted (saved.py)."""
        obj = self.objective
        result = ending if isinstance(ending, TrainResult) else ending[0]  # replicates: replicate 0's network
        if self.run is None or obj.config.keep_models == 0 or result.module is None:
            return
        value = self.values[0] if isinstance(self.values, tuple) else self.values
        keep, below = keep_decision(self.trial.study, self.trial.number, value, obj.config.keep_models)
        if not keep:
            return
        if below:
            obj.tracker.delete_trial_models(below)
        architecture = architecture_of(self.config.model, obj.data)
        example = obj.data.x_val[:EXAMPLE_ROWS].cpu()
        example = example.reshape(-1, *(obj.data.input_shape or example.shape[1:])).tolist()  # images: (n, C, H, W)
        spec = model_spec(self.trial.number, obj.config.name, architecture, obj.run_params(self.config, self.plan),
                          example, 0 if self.replicates else None)
        obj.tracker.log_model(self.run, write_network(result.module, architecture), spec)

    def _end_replicate(self, rep: Replicate, state: TrialState, reason: str | None = None) -> None:
        """End a replicate's run: COMPLETE as it completes, else with its trial's ending."""
        if rep.run is not None:
            once = {k: v for k, v in rep.summary().items() if k not in EPOCH_METRIC_NAMES}
            self.objective.tracker.end_trial_run(rep.run, state.name, once, fail_reason=reason)

    def _end(self, state: TrialState, summary: dict, reason: str | None = None) -> None:
        obj = self.objective
        self.trial.set_user_attr("summary", summary)
        if self.replicates:
            if self.current is not None:  # the replicate in training ends as its trial does
                self._end_replicate(self.current, state, reason)
                self.current = None
            self.trial.set_user_attr("replicate_summaries", [r.summary() for r in self.replicates if r.started])
        if self.run is not None:
            if self.replicates:  # the trial's curves: the mean over replicates, per epoch
                for m in self.history:
                    obj.tracker.log_epoch(self.run, m.as_dict(), step=m.epoch)
            # `updates` and `examples_seen` are per-epoch metrics too: their latest value is
            # already the summary, and logging them again would add a point to their curves.
            once = {k: v for k, v in summary.items() if k not in EPOCH_METRIC_NAMES}
            if state == TrialState.COMPLETE:  # the saved view's sort key: complete trials first (store/runs_view.py)
                once.update({f"complete_{k.removeprefix('final_')}": summary[k]
                             for k in ("final_val_acc", "final_val_r2") if k in summary})
            obj.tracker.end_trial_run(self.run, state.name, once, fail_reason=reason)
            self.record_run_id(wait=True)
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
    identity: dict | None = None  # this process's (and its writer's): reclaim.process_identity
    opening: RunRef | None = None  # the run `begin` opened, until it returns
    cores: int | None = None  # CPUs this process may use (its share under --workers); None: the machine's
    threads: ThreadChooser = field(init=False)
    weights: int = field(init=False)  # the model's parameters: a step's work is batch size x weights
    held: Held = field(init=False, default_factory=Held)  # interrupts held from a trial's end to Optuna's tell

    def __post_init__(self) -> None:
        self.threads = ThreadChooser(self.config.threads, self.cores)
        model = build_model(self.config.model, self.data.n_features, self.data.n_classes, seed=0,
                            input_shape=self.data.input_shape)
        self.weights = sum(p.numel() for p in model.parameters())
    datasets: list[dict] | None = None  # saved.dataset_records of `data`, made on first use

    def dataset_inputs(self) -> list[dict]:
        """The MLflow dataset inputs of every trial run (the data hashed once per process)."""
        if self.datasets is None:
            self.datasets = dataset_records(self.data, self.config.data, self.config.seed)
        return self.datasets

    @property
    def prune(self) -> bool:
        return len(self.config.objectives) == 1 and self.config.pruner.name != "none"

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        try:
            return self._run(trial)
        finally:  # the trial's tensors are gone by now: hand their cached blocks back
            release_cached_memory(self.data.x_train.device)

    def _run(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        job = self.begin(trial)  # an interrupt in it ends the trial there (begin)
        try:
            result = job.train(self.data)
        except BaseException as e:
            # Held until Optuna has told the trial: released, and delivered unless an interrupt
            # already stops the study, by cohorts.optimize.
            self.held = hold_interrupts()
            job.finish(e)
            _release_frames(e)
            raise  # Optuna maps it as finish() did
        self.held = hold_interrupts()  # likewise
        job.finish(result)
        return job.values

    def begin(self, trial: optuna.Trial) -> TrialJob:
        """Suggest the trial's values and open its MLflow run (asked for now, so the UI's
        duration is the trial's). An exception on the way (Ctrl-C, SIGTERM) fails the trial
        with its reason and ends the run if it was opened, then is raised."""
        self.opening = None
        try:
            return self._begin(trial)
        except Surplus as e:  # nothing drawn, no run opened
            trial.set_user_attr(FAIL_KIND, "surplus")
            trial.set_user_attr("fail_reason", str(e))
            raise
        except BaseException as e:
            interrupted = isinstance(e, KeyboardInterrupt)
            reason = f"interrupted ({describe(e)})" if interrupted else f"{type(e).__name__}: {e}"
            reason += ", as the trial started"
            trial.set_user_attr(FAIL_KIND, "interrupted" if interrupted else "error")
            trial.set_user_attr("fail_reason", reason)
            if interrupted:
                requeue(trial)
            if self.opening is not None:
                self.tracker.end_trial_run(self.opening, "FAIL", {}, fail_reason=reason)
            raise

    def _begin(self, trial: optuna.Trial) -> TrialJob:
        check_not_surplus(trial, self.config.n_trials)  # two processes asked for the last trial at once
        trial.set_user_attr("worker_pid", os.getpid())  # lets a supervisor find a dead worker's trial
        if self.identity is None:
            self.identity = process_identity(writer_pid=self.tracker.writer_pid if self.tracker else None)
        trial.set_user_attr(PROCESS_ATTR, self.identity)  # lets the next start reclaim it (study/reclaim.py)
        params = suggest(trial, self.config.search)
        n_reps = self.config.replicates
        configs = [self.config.trial_config(params, seed=replicate_seed(self.config.seed, trial.number, r))
                   for r in range(n_reps)]
        train_config = configs[0]
        plan = BatchPlan.of(self.data.n_train, train_config)
        trial.set_user_attr("torch_threads", self.threads.apply(train_config.batch_size * self.weights))
        run = None
        if self.tracker is not None:
            run_params = self.run_params(train_config, plan)
            if n_reps > 1:
                run_params["replicates"] = n_reps
            run = self.opening = self.tracker.start_trial_run(
                self.parent_run,
                trial.number,
                params=run_params,
                tags={"sgdtune.device": self.device_tag, "sgdtune.trial_state": "RUNNING"},
            )
            self.tracker.log_inputs(run, self.dataset_inputs())
        if self.progress:
            self.progress.trial_started(trial.number, train_config, plan)
        replicates = [Replicate(r, c) for r, c in enumerate(configs)] if n_reps > 1 else []
        return TrialJob(trial, train_config, plan, run, self, replicates=replicates)

    def values(self, summary: dict[str, float]) -> float | tuple[float, ...]:
        """The objective value(s) Optuna sees, from a complete trial's summary (with
        replicates, their mean); val_acc of a regression is its R² score."""
        acc = "final_val_acc" if "final_val_acc" in summary else "final_val_r2"  # a regression's R²
        values = [summary[acc] if o == "val_acc" else summary[o] for o in self.config.objectives]
        return values[0] if len(values) == 1 else tuple(values)

    def run_params(self, tc: TrainConfig, plan: BatchPlan) -> dict[str, Any]:
        """Every param of a child run, with the same names in every trial (docs/records.md)."""
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
            "n_test": self.data.n_test,
            "model": describe_model(tc.model, self.data.n_features, self.data.n_classes, self.data.input_shape),
            "seed": tc.seed,
            "iterations_per_epoch": plan.iterations_per_epoch,
            "total_updates": plan.total_updates,
            "target_val_acc": tc.target_val_acc,
            "precision": tc.precision,
        }


def _release_frames(error: BaseException) -> None:
    """Free what the frames an exception passed through hold (the model, its optimizer, the
    batches). Optuna keeps a trial's exception, and its traceback keeps those frames, in a
    reference cycle that only the garbage collector breaks: without this the next trial (on
    a GPU, its memory) starts beside the last one's tensors. The frames still running (this
    call's and Optuna's) are left as they are."""
    tb = error.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        while frame is not None:  # and the finished frames it was called from
            try:
                frame.clear()
            except RuntimeError:  # still executing
                break
            frame = frame.f_back
        tb = tb.tb_next
