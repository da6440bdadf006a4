"""Run an Optuna study whose every trial is an MLflow run: `python -m sgdtune.study`.

Sampler, pruner and storage come from Optuna; the objective hands each trial's epochs to
tracking.py (MLflow) and to trial.report/should_prune. Names: DESIGN.md.
"""

from __future__ import annotations

import sys

if __name__ == "__main__" and "--no-tracking" not in sys.argv:
    # MLflow's writer process starts its 1-2 s of imports now, on another core, while this
    # one imports torch below (writer.py).
    from sgdtune.writer import prestart

    prestart()

import argparse
import gc
import math
import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from . import __version__
from .config import ConfigError, ExperimentConfig, file_sha256, load_experiment
from .console import Progress, print_closing, quiet_libraries
from .data import DataError, Dataset, load_data
from .model import describe_model
from .noise import fit_steps_to_target, loglog_slope, small_batch_limit
from .space import grid, suggest
from .timing import describe_device
from .tracking import Tracker, default_artifact_location, default_tracking_uri, redact_url
from .writer import BackgroundTracker, RunRef, TrackingError, TrackingStoreError
from .train import BatchPlan, Diverged, EpochMetrics, TrainConfig, TrainResult, history_summary, train

MLRUNS = Path("mlruns")
EPOCH_METRIC_NAMES = set(EpochMetrics.__dataclass_fields__) - {"epoch"}
FAIL_KIND = "fail_kind"  # trial user attribute: "diverged" counts as finished, "interrupted" does not
EXIT_BAD_INPUT = 2


# -- the parts Optuna provides ------------------------------------------------------------


def derive_seed(*parts: int) -> int:
    """A 31-bit seed from several integers (study seed, trial number, ...), stable across runs."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0] & 0x7FFFFFFF)


def make_sampler(config: ExperimentConfig, seed: int) -> optuna.samplers.BaseSampler:
    s = config.sampler
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s.name == "grid":
        return optuna.samplers.GridSampler(grid(config.search), seed=seed)
    if s.name == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=s.n_startup_trials, warn_independent_sampling=False)
    if s.name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=s.n_startup_trials)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials, multivariate=True)


def make_pruner(config: ExperimentConfig) -> optuna.pruners.BasePruner:
    p = config.pruner
    if p.name == "none" or len(config.objectives) > 1:  # Optuna prunes single-objective studies only
        return optuna.pruners.NopPruner()
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, p.n_warmup_steps))
    return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)


def default_storage_url(root: Path = MLRUNS) -> str:
    return str(root / "optuna.journal")


def open_storage(url: str, heartbeat: int | None = None, tracking_uri: str | None = None) -> optuna.storages.BaseStorage:
    """A SQLAlchemy URL (sqlite://, postgresql://, ...) or a journal file path.

    The journal file is the embedded default: Optuna recommends it for several worker
    processes on one machine, where SQLite meets 'database is locked'. Heartbeats need an
    RDB storage: a trial silent for two intervals is failed, its MLflow run ended FAILED,
    and its parameters queued again (Optuna's RetryFailedTrialCallback).
    """
    if "://" in url:
        if heartbeat is None:
            return optuna.storages.RDBStorage(url)
        return optuna.storages.RDBStorage(
            url,
            heartbeat_interval=heartbeat,
            grace_period=2 * heartbeat,
            failed_trial_callback=StaleTrialHandler(tracking_uri),
        )
    if heartbeat is not None:
        raise ConfigError(
            "--heartbeat: needs an RDB storage (--storage sqlite:///FILE or postgresql://...); "
            f"got the journal file {url!r} (local --workers are supervised without heartbeats)"
        )
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = optuna.storages.journal.JournalFileOpenLock(str(path))
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path), lock_obj=lock))


class StaleTrialHandler:
    """Optuna's failed_trial_callback for a trial whose worker stopped sending heartbeats."""

    def __init__(self, tracking_uri: str | None, max_retry: int = 3):
        self.tracking_uri = tracking_uri
        self.retry = optuna.storages.RetryFailedTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.tracking_uri:  # a worker lost early in a trial may not have recorded its run id
            tracker = Tracker(self.tracking_uri, study.study_name)
            run_id = trial.user_attrs.get("mlflow_run_id") or tracker.find_trial_run(trial.number)
            if run_id:
                reason = "worker stopped sending heartbeats (killed or lost); the trial is run again"
                tracker.fail_stale_run(run_id, reason)
        self.retry(study, trial)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: must be one of 'auto', 'cpu' on this machine (no CUDA); got {name!r}")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device: must be one of 'auto', 'cpu' on this machine (no MPS); got {name!r}")
    return torch.device(name)


def counts_as_finished(trial: FrozenTrial) -> bool:
    """Complete, pruned, or failed by its own divergence; not a crash or a Ctrl-C."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get(FAIL_KIND) == "diverged"


def n_finished(study: optuna.Study) -> int:
    return sum(counts_as_finished(t) for t in study.get_trials(deepcopy=False))


# -- one trial ----------------------------------------------------------------------------


@dataclass
class TrialJob:
    """One trial in flight: its training config, MLflow run and the epochs seen so far."""

    trial: optuna.Trial
    config: TrainConfig
    plan: BatchPlan
    run: RunRef | None
    objective: "Objective"
    history: list[EpochMetrics] = field(default_factory=list)
    run_id_recorded: bool = False

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


@dataclass
class Objective:
    """Trains one trial and records it in MLflow and Optuna."""

    config: ExperimentConfig
    data: Dataset
    tracker: BackgroundTracker | None
    parent_run: RunRef | str | None
    device_tag: str
    progress: "Progress | None" = None
    location_recorded: bool = False  # the study's mlflow_* user attributes

    @property
    def prune(self) -> bool:
        return len(self.config.objectives) == 1 and self.config.pruner.name != "none"

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        job = self.begin(trial)
        try:
            result = train(job.config, self.data, job.on_epoch)
        except BaseException as e:
            self.fail(job, e)
            raise
        return self.complete(job, result)

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

    def complete(self, job: TrialJob, result: TrainResult) -> float | tuple[float, ...]:
        """Record a finished training; the objective value(s) for Optuna."""
        summary = result.summary()
        self._end(job, "COMPLETE", summary)
        values = [summary["final_val_acc"] if o == "val_acc" else summary[o] for o in self.config.objectives]
        return values[0] if len(values) == 1 else tuple(values)

    def fail(self, job: TrialJob, error: BaseException) -> str:
        """Record a trial that ended by pruning, divergence, Ctrl-C or an error; its Optuna state."""
        trial, partial = job.trial, history_summary(job.history)
        if isinstance(error, optuna.TrialPruned):
            self._end(job, "PRUNED", partial)
            return "PRUNED"
        if isinstance(error, Diverged):
            kind, reason = "diverged", str(error)
            trial.set_user_attr("failed_at_update", error.update)
            partial["failed_at_update"] = error.update
        elif isinstance(error, KeyboardInterrupt):
            kind, reason = "interrupted", "interrupted (Ctrl-C)"
        else:  # a bug in a user's model, say: the run must not stay RUNNING
            kind, reason = "error", f"{type(error).__name__}: {error}"
        trial.set_user_attr(FAIL_KIND, kind)
        trial.set_user_attr("fail_reason", reason)
        self._end(job, "FAIL", partial, reason)
        return "FAIL"

    def run_params(self, tc, plan: BatchPlan) -> dict[str, Any]:
        """Every param of a child run, with the same names in every trial (DESIGN.md)."""
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

    def _end(self, job: TrialJob, state: str, summary: dict, reason: str | None = None) -> None:
        job.trial.set_user_attr("summary", summary)
        if job.run is not None:
            # `updates` and `examples_seen` are per-epoch metrics too: their latest value is
            # already the summary, and logging them again would add a point to their curves.
            once = {k: v for k, v in summary.items() if k not in EPOCH_METRIC_NAMES}
            self.tracker.end_trial_run(job.run, state, once, fail_reason=reason)
            job.record_run_id(wait=True)
            if not self.location_recorded and isinstance(self.parent_run, RunRef):  # the ids are in by now
                record_mlflow_location(job.trial.study, self.tracker, self.parent_run)
                self.location_recorded = True
        if self.progress:
            self.progress.trial_done(job.trial.number, state, summary)


# -- the study --------------------------------------------------------------------------------


def _stop_when_done(n_trials: int):
    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if n_finished(study) >= n_trials:
            study.stop()

    return callback


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str]:
    """Versions of what a result depends on, read from the installed metadata (no imports)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for name in ("sgdtune", "torch", "optuna", "mlflow", "scikit-learn", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = __version__ if name == "sgdtune" else "not installed"
    return out


def run_study(
    config: ExperimentConfig,
    *,
    experiment_path: str | Path | None = None,
    command: str | None = None,
    track: bool = True,
    show_progress: bool = False,
    mlruns: str | Path = MLRUNS,
    workers: int = 1,
    heartbeat: int | None = None,
    batch_trials: int = 1,
) -> optuna.Study:
    """Run (or resume) the study until it has config.n_trials finished trials.

    With workers > 1, that many processes on this machine share the study (workers.py).
    With heartbeat (seconds; RDB storages only), a trial whose process died is failed after
    two silent intervals and run again. The study's user attributes say where its MLflow
    runs are (mlflow_experiment_id, mlflow_parent_run_id, tracking_uri, password masked).
    """
    if workers < 1:
        raise ConfigError(f"--workers: must be >= 1; got {workers}")
    if batch_trials < 1:
        raise ConfigError(f"--batch-trials: must be >= 1; got {batch_trials}")
    if heartbeat is not None and heartbeat < 1:
        raise ConfigError(f"--heartbeat: must be >= 1 (seconds); got {heartbeat}")
    device = resolve_device(config.device)
    data = load_data(config.data, config.seed, device)  # bad data input fails before anything is written
    storage_url, tracking_uri = locations(config, mlruns)
    storage = open_storage(storage_url, heartbeat, tracking_uri if track else None)
    study = open_study(config, storage)
    for key, value in {"objectives": list(config.objectives), "seed": config.seed, "n_train": data.n_train}.items():
        study.set_user_attr(key, value)

    tracker = parent_run = None
    if track:
        artifact_location = None if config.tracking_uri else default_artifact_location(mlruns)
        tracker = BackgroundTracker(tracking_uri, config.name, artifact_location)
        parent_run = _start_parent(tracker, config, experiment_path, command, storage_url, device)

    remaining = config.n_trials - n_finished(study)
    progress = Progress(config.n_trials, config.n_trials - max(remaining, 0), best_value(study)) if show_progress else None
    status = "FINISHED"
    try:
        if progress:
            progress.bar.start()
        if remaining > 0 and workers > 1:
            from .workers import WorkerSpec, supervise

            parent_run_id = None
            if tracker is not None:
                parent_run_id = parent_run.id
                record_mlflow_location(study, tracker, parent_run)  # before a worker can fail
            spec = WorkerSpec(config, str(mlruns), parent_run_id, heartbeat, track, batch_trials)
            supervise(study, spec, workers, progress)
        elif remaining > 0:
            objective = Objective(config, data, tracker, parent_run, describe_device(device), progress)
            if batch_trials > 1:
                optimize_batched(study, objective, remaining, config, batch_trials)
            else:
                optimize(study, objective, remaining, config)
            if heartbeat is not None:
                settle(study, objective, config, heartbeat, batch_trials)
    except BaseException:
        status = "KILLED"
        raise
    finally:
        if progress:
            progress.bar.stop()
        if tracker is not None:
            tracker.end_parent_run(parent_run, study_metrics(study), status=status)
            tracker.close()  # every write made
            record_mlflow_location(study, tracker, parent_run)
    return study


def record_mlflow_location(study: optuna.Study, tracker: BackgroundTracker, parent_run: RunRef) -> None:
    """The study's user attributes that say where its MLflow runs are (password masked)."""
    study.set_user_attr("mlflow_experiment_id", tracker.experiment_id)
    study.set_user_attr("mlflow_parent_run_id", parent_run.id)
    study.set_user_attr("tracking_uri", redact_url(tracker.tracking_uri))


def open_study(config: ExperimentConfig, storage: optuna.storages.BaseStorage, worker: int = 0) -> optuna.Study:
    """Create or load the study, with a sampler seeded from the study seed.

    A resumed study, or a second worker, gets a fresh sampler stream rather than a replay
    of the first trials' draws: the seed also mixes in the trial count and worker index.
    """
    n_existing = 0
    if any(s.study_name == config.name for s in storage.get_all_studies()):
        n_existing = len(optuna.load_study(study_name=config.name, storage=storage).get_trials(deepcopy=False))
    return optuna.create_study(
        storage=storage,
        study_name=config.name,
        sampler=make_sampler(config, derive_seed(config.seed, 1, n_existing, worker)),
        pruner=make_pruner(config),
        directions=config.directions,
        load_if_exists=True,
    )


def settle(study: optuna.Study, objective: "Objective", config: ExperimentConfig, heartbeat: int,
           batch_trials: int = 1) -> None:
    """With heartbeats: wait while other workers' trials run, so that a dead one is failed
    (after the grace period), re-queued and run, rather than left RUNNING for ever."""
    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
        time.sleep(heartbeat)
        optuna.storages.fail_stale_trials(study)
        if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)) or n_finished(study) < config.n_trials:
            more = max(1, config.n_trials - n_finished(study))
            if batch_trials > 1:
                optimize_batched(study, objective, more, config, batch_trials)
            else:
                optimize(study, objective, more, config)


def optimize(study: optuna.Study, objective: "Objective", n_trials: int, config: ExperimentConfig) -> None:
    """Up to n_trials more trials; stops early once the study has config.n_trials finished."""
    study.optimize(
        objective,
        n_trials=n_trials,
        timeout=config.timeout_s,
        catch=(Diverged,),
        callbacks=[_stop_when_done(config.n_trials)],
    )


def optimize_batched(study: optuna.Study, objective: "Objective", n_trials: int, config: ExperimentConfig,
                     batch_trials: int) -> None:
    """Up to n_trials more trials, in cohorts of `batch_trials` trained as one stacked model.

    A cohort is one trial as the sampler suggests it, plus batch_trials - 1 more with the same
    batch size (and every other searched value that shapes the stacked model) fixed through
    Optuna's queue, so a continuous batch-size range still gives full groups. Each member keeps
    its own lr, momentum, seed, metrics, pruning and divergence (batched.py).
    """
    from .batched import BUDGET_SIZES, PER_MEMBER

    shaping = [name for name in config.search if name not in PER_MEMBER and name not in BUDGET_SIZES[:2]]
    started, deadline = 0, time.monotonic() + (config.timeout_s or math.inf)
    while started < n_trials and n_finished(study) < config.n_trials and time.monotonic() < deadline:
        size = min(batch_trials, n_trials - started)
        jobs = [objective.begin(study.ask())]
        for _ in range(size - 1):
            if shaping:
                study.enqueue_trial({name: jobs[0].trial.params[name] for name in shaping})
            jobs.append(objective.begin(study.ask()))
        started += size
        _run_cohort(study, objective, jobs)


def _run_cohort(study: optuna.Study, objective: "Objective", jobs: list[TrialJob]) -> None:
    """Train the jobs (stacked where their shapes agree), then tell Optuna each outcome."""
    from collections import defaultdict

    from .batched import group_key, train_stacked

    groups: dict[tuple, list[TrialJob]] = defaultdict(list)
    for job in jobs:
        groups[group_key(job.config) if job.config.model.factory is None else (id(job),)].append(job)
    for group in groups.values():
        try:
            if len(group) == 1:
                try:
                    results: list = [train(group[0].config, objective.data, group[0].on_epoch)]
                except Exception as e:  # noqa: BLE001 - told to Optuna below, re-raised if a bug
                    results = [e]
            else:
                results = train_stacked([j.config for j in group], objective.data,
                                        on_epoch=lambda i, m: group[i].on_epoch(m))
        except KeyboardInterrupt as e:
            for job in group:
                study.tell(job.trial, state=TrialState[objective.fail(job, e)])
            raise
        for job, result in zip(group, results):
            if isinstance(result, BaseException):
                study.tell(job.trial, state=TrialState[objective.fail(job, result)])
                if not isinstance(result, (optuna.TrialPruned, Diverged)):
                    raise result
            else:
                study.tell(job.trial, objective.complete(job, result))


def locations(config: ExperimentConfig, mlruns: str | Path = MLRUNS) -> tuple[str, str]:
    """(Optuna storage URL, MLflow tracking URI): the flags', else the embedded defaults."""
    mlruns = Path(mlruns)
    return config.storage or default_storage_url(mlruns), config.tracking_uri or default_tracking_uri(mlruns)


def best_value(study: optuna.Study) -> float | None:
    """The best first objective value among complete trials (None before any)."""
    values = [t.values[0] for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    return max(values) if values else None


def _start_parent(tracker: BackgroundTracker, config: ExperimentConfig, path, command, storage_url, device) -> RunRef:
    tags = {
        "sgdtune.study_name": config.name,
        "sgdtune.storage": redact_url(storage_url),
        "sgdtune.device": describe_device(device),
        "sgdtune.command": command or "",
    }
    if path is not None:
        tags["sgdtune.experiment_sha256"] = file_sha256(path)
    commit = _git_commit()
    if commit:
        tags["sgdtune.git_commit"] = commit
    params = {f"version.{k}": v for k, v in package_versions().items()}
    params.update({"seed": config.seed, "n_trials": config.n_trials, "sampler": config.sampler.name,
                   "pruner": config.pruner.name, "objectives": ",".join(config.objectives)})
    run = tracker.start_parent_run(tags, params)
    if path is not None:
        tracker.log_artifact(run, path, "experiment")
    return run


def study_metrics(study: optuna.Study) -> dict[str, float]:
    """The parent run's metrics: counts, best val_acc, loss-noise slope, critical batch size."""
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    out: dict[str, float] = {
        "n_complete": len(complete),
        "n_pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "n_failed": sum(t.state == TrialState.FAIL for t in trials),
    }
    accs = [t.user_attrs["summary"]["final_val_acc"] for t in complete if "final_val_acc" in t.user_attrs.get("summary", {})]
    if accs:
        out["best_val_acc"] = max(accs)
    small_b = small_batch_limit(study.user_attrs.get("n_train", math.inf))
    noisy = [(t.params["batch_size"], t.user_attrs["summary"]["final_loss_noise"]) for t in complete
             if t.params.get("batch_size", math.inf) <= small_b
             and t.user_attrs.get("summary", {}).get("final_loss_noise", 0) > 0]
    if len({b for b, _ in noisy}) >= 2:
        out["loss_noise_slope"] = loglog_slope(*zip(*noisy))
    fit = critical_batch_fit(complete)
    if fit is not None:
        out["critical_batch_size"], out["s_min"] = fit.b_crit, fit.s_min
    gns = [t.user_attrs["summary"]["final_grad_noise_scale"] for t in complete
           if "final_grad_noise_scale" in t.user_attrs.get("summary", {})]
    if gns:
        out["median_grad_noise_scale"] = float(np.median(gns))
    return out


def critical_batch_fit(trials: Sequence[FrozenTrial]):
    """S(B) fit to the best (fewest) updates-to-target per batch size; None if under 2 sizes."""
    best: dict[int, float] = {}
    for t in trials:
        s = t.user_attrs.get("summary", {}).get("updates_to_target")
        b = t.params.get("batch_size")
        if s is not None and b is not None:
            best[b] = min(best.get(b, math.inf), s)
    if len(best) < 2:
        return None
    try:
        return fit_steps_to_target(list(best), list(best.values()))
    except ValueError:
        return None


# -- the command line -----------------------------------------------------------------------

EPILOG = """examples:
  python -m sgdtune.study                                  # experiments/batch_tradeoff.toml
  python -m sgdtune.study experiments/quick.toml           # a sweep of a few seconds
  python -m sgdtune.study experiments/quick.toml --n-trials 8 --seed 1 --report
  python -m sgdtune.study experiments/quick.toml --workers 2
  python -m sgdtune.study X.toml --set train.momentum=0.0 --set data.val_fraction=0.3
  python -m sgdtune.study X.toml --storage postgresql://user@host/db --tracking-uri http://host:5000
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sgdtune.study",
        description="Run (or resume) an Optuna study over batch size, learning rate and budget; "
        "every trial is an MLflow run.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("experiment", nargs="?", help="experiment TOML file (default: experiments/batch_tradeoff.toml)")
    p.add_argument("--n-trials", type=int, help="finished trials to reach (a resumed study counts those it has)")
    p.add_argument("--seed", type=int, help="study seed: sampler, and each trial's seed with the trial number")
    p.add_argument("--study-name", help="study name = MLflow experiment name (default: the file's name)")
    p.add_argument("--storage", help="Optuna storage: SQLAlchemy URL or journal file (default: mlruns/optuna.journal)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///mlruns/mlflow.db)")
    p.add_argument("--timeout", type=float, help="stop starting trials after this many seconds")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any field, VALUE in TOML syntax (e.g. train.momentum=0.5); repeatable")
    p.add_argument("--workers", type=int, default=1, help="worker processes on this machine sharing the study")
    p.add_argument("--heartbeat", type=int, metavar="SECONDS",
                   help="RDB storages: fail and re-run a trial whose worker is silent for 2x SECONDS")
    p.add_argument("--batch-trials", type=int, default=1, metavar="K",
                   help="train up to K trials of one batch size at once as one stacked model (MLPs)")
    p.add_argument("--report", action="store_true", help="write reports/<study>/report.html and .json at the end")
    p.add_argument("--no-tracking", action="store_true", help="skip MLflow (Optuna storage only)")
    p.add_argument("--no-progress", action="store_true", help="no live progress display")
    return p


def parse_sets(items: list[str]) -> dict[str, Any]:
    """--set a.b=VALUE pairs, each VALUE parsed as TOML (so 0.5, "sgd", [1, 2] all work)."""
    import tomllib

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set: must look like KEY=VALUE (e.g. train.momentum=0.5); got {item!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value  # a bare word: take it as a string
    return out


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    overrides = {
        "n_trials": args.n_trials,
        "seed": args.seed,
        "name": args.study_name,
        "storage": args.storage,
        "tracking_uri": args.tracking_uri,
        "timeout_s": args.timeout,
        "device": args.device,
        **parse_sets(args.set),
    }
    return load_experiment(args.experiment, **overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    given = argv if argv is not None else sys.argv[1:]
    command = "python -m sgdtune.study " + " ".join(shlex.quote(redact_url(a)) for a in given)
    try:
        config = config_from_args(args)
        resolve_device(config.device)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    quiet_libraries()
    # torch, Optuna and the rest are imported: keep the collector off their objects, so
    # that a full collection (0.1-0.2 s over them) does not land in a trial's timed steps.
    gc.freeze()
    path = Path(args.experiment) if args.experiment else None
    from .config import default_experiment_path

    path = path or default_experiment_path()
    try:
        study = run_study(config, experiment_path=path, command=command, track=not args.no_tracking,
                          show_progress=not args.no_progress, workers=args.workers, heartbeat=args.heartbeat,
                          batch_trials=args.batch_trials)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials are kept; run the same command again to resume.", file=sys.stderr)
        return 130
    except TrackingError as e:  # the store is wrong or gone: say so in one line, not a traceback
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT if isinstance(e, TrackingStoreError) else 1
    storage_url, tracking_uri = locations(config)
    print_closing(study, config, storage_url, None if args.no_tracking else tracking_uri)
    if args.report:
        from .report import write_report

        folder = write_report(config.name, storage_url, tracking_uri)
        print(f"report:         {folder / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
