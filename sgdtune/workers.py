"""Several worker processes on one machine sharing a study: `--workers N`.

Optuna's storage is the only thing the workers share: each asks it for trials, so no trial
runs twice. The supervisor splits the remaining trials into shares, watches the workers, and
when one dies (kill -9, out of memory) fails its running trial, ends that MLflow run FAILED,
queues the same parameters again and starts a replacement, until the study has its trials.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch
from optuna.trial import TrialState

from .cohorts import optimize, optimize_batched
from .config import ExperimentConfig
from .data import load_data
from .search import best_value, n_finished, open_study
from .stores import locations, open_storage
from .threads import core_share
from .timing import describe_device, resolve_device
from .tracking import Tracker
from .trial import Objective
from .writer import BackgroundTracker

EXIT_INTERRUPTED = 130
POLL_S = 0.5


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to join the study (picklable for the spawn start method)."""

    config: ExperimentConfig
    mlruns: str
    parent_run_id: str | None
    heartbeat: int | None
    track: bool
    batch_trials: int = 1


def split(total: int, parts: int) -> list[int]:
    """`total` trials as `parts` shares differing by at most one: split(10, 3) = [4, 3, 3]."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts) if base + (i < extra) > 0]


def run_worker(spec: WorkerSpec, share: int, index: int, threads: int) -> None:
    """One worker process: join the study and run up to `share` trials."""
    torch.set_num_threads(threads)  # the machine's cores are split between the workers
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config = spec.config
    storage_url, tracking_uri = locations(config, Path(spec.mlruns))
    tracker = BackgroundTracker(tracking_uri, config.name) if spec.track else None  # imports beside ours
    try:
        device = resolve_device(config.device)
        data = load_data(config.data, config.seed, device)
        storage = open_storage(storage_url, spec.heartbeat, tracking_uri if spec.track else None)
        study = open_study(config, storage, worker=index)
        objective = Objective(config, data, tracker, spec.parent_run_id, describe_device(device), cores=threads)
        if spec.batch_trials > 1:
            optimize_batched(study, objective, share, config, spec.batch_trials)
        else:
            optimize(study, objective, share, config)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)  # the running trial is already failed and its run ended
    finally:
        if tracker is not None:
            tracker.close()  # every write made before this process exits


def supervise(study: optuna.Study, spec: WorkerSpec, workers: int, progress=None) -> None:
    """Run worker processes until the study has config.n_trials finished trials."""
    context = multiprocessing.get_context("spawn")  # no forked torch or SQLite state
    threads = core_share(workers)
    n_trials = spec.config.n_trials
    while (remaining := n_trials - n_finished(study)) > 0:
        before = n_finished(study)
        procs = [
            context.Process(target=run_worker, args=(spec, share, index, threads), name=f"sgdtune-worker-{index}")
            for index, share in enumerate(split(remaining, workers), start=1)
        ]
        for p in procs:
            p.start()
        try:
            _wait(procs, study, progress)
        except KeyboardInterrupt:
            _stop(procs)
            _recover(study, spec, procs)
            raise
        _recover(study, spec, procs)
        if any(p.exitcode == EXIT_INTERRUPTED for p in procs):
            raise KeyboardInterrupt
        if n_finished(study) == before and all(p.exitcode != 0 for p in procs):
            codes = sorted({p.exitcode for p in procs})
            raise RuntimeError(f"every worker failed without finishing a trial (exit codes {codes}); "
                               "see their errors above")


def _wait(procs, study: optuna.Study, progress) -> None:
    while any(p.is_alive() for p in procs):
        time.sleep(POLL_S)
        if progress is not None:
            progress.show(n_finished(study), best_value(study))
    for p in procs:
        p.join()


def _stop(procs, grace_s: float = 30.0) -> None:
    """After Ctrl-C: the workers got SIGINT too; give them time to fail their trials cleanly."""
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.terminate()
            p.join(5)


def _recover(study: optuna.Study, spec: WorkerSpec, procs) -> None:
    """Fail the trials a dead worker left RUNNING, end their MLflow runs, queue them again."""
    dead = {p.pid: p.exitcode for p in procs if p.exitcode not in (0, None)}
    if not dead:
        return
    tracker = Tracker(locations(spec.config, Path(spec.mlruns))[1], spec.config.name) if spec.track else None
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid = trial.user_attrs.get("worker_pid")
        if pid not in dead:
            continue
        code = dead[pid]
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        reason = f"worker process {pid} died ({how}) during the trial; the trial is run again"
        study.tell(trial.number, state=TrialState.FAIL)
        if tracker is not None:  # a worker killed early in a trial may not have recorded its run id
            run_id = trial.user_attrs.get("mlflow_run_id") or tracker.find_trial_run(trial.number)
            if run_id:
                tracker.fail_stale_run(run_id, reason)
        if code != EXIT_INTERRUPTED:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number}, skip_if_exists=False)
