"""Several worker processes on one machine sharing a study: `--workers N`.

Optuna's storage is the only thing the workers share: each asks it for trials, so no trial
runs twice. The supervisor splits the remaining trials into shares, watches the workers, and
when one dies (kill -9, out of memory) fails its running trial, ends that MLflow run FAILED,
queues the same parameters again and starts a replacement, until the study has its trials.

Stopping: SIGTERM or SIGINT to the supervisor is forwarded to every worker; each fails its
running trial cleanly (interrupts.py) and exits 130 (SIGINT) or 143 (SIGTERM); the supervisor
waits up to STOP_GRACE_S for them, kills those still running, fails what they left RUNNING,
and raises the interrupt (the CLI exits with the same status). A worker whose supervisor dies
(kill -9) sees it and stops the same way, so no worker is orphaned. A worker whose MLflow
writer process dies exits 1 and is replaced like a dead one; one whose store fails to write
(a full disk) exits EXIT_STORE_FAILED, and the supervisor then stops the study (StoreError).

Layer: study (one study from its experiment to its last trial; docs/architecture.md).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import optuna
import torch
from optuna.trial import TrialState

from ..config import ExperimentConfig
from ..errors import EXIT_INTERRUPTED, EXIT_SIGINT, EXIT_SIGTERM, EXIT_STORE_FAILED, StoreError, TrackingError
from ..gpus import use_gpu
from ..interrupts import (
    Terminated,
    exit_status,
    signals_ignored_by_children,
    stop_on_sigterm,
)
from ..redact import mask_output
from ..search.strategy import best_value, n_claimed, n_finished, study_exists
from ..store.stores import locations, open_storage
from ..store.tracking import Tracker
from ..store.writer import WriterGone
from ..threads import core_share
from .console import hide_interrupted_trials, one_line_trial_failures
from .reclaim import fail_and_requeue
from .session import RunOptions, Session

POLL_S = 0.5
STOP_GRACE_S = 30.0  # after SIGTERM/SIGINT, the workers' time to fail their trials cleanly


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to join the study (picklable for the spawn start method):
    the run's options as the lead checked them (session.RunOptions), not checked again."""

    config: ExperimentConfig
    options: RunOptions
    parent_run_id: str | None
    gpus: tuple[str, ...] = ()  # CUDA_VISIBLE_DEVICES of worker 1, 2, ... in turn (gpus.py); () = as inherited
    join: int = 0  # the supervisor's join number (reclaim.join): workers of two machines draw apart


def split(total: int, parts: int) -> list[int]:
    """`total` trials as `parts` shares differing by at most one: split(10, 3) = [4, 3, 3]."""
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts) if base + (i < extra) > 0]


def run_worker(spec: WorkerSpec, share: int, index: int, threads: int) -> None:
    """One worker process: join the study and run up to `share` trials."""
    mask_output()  # a process of its own (spawn): its prints and its libraries' lines masked too
    if spec.gpus:  # before CUDA starts: this worker sees its one GPU as cuda:0
        use_gpu(spec.gpus[(index - 1) % len(spec.gpus)])
    tracker = None
    # The worker starts with SIGINT/SIGTERM ignored (supervise); from its handlers on, a signal
    # raises Terminated on whatever line runs (the supervisor sends it again each second), so
    # every line from them on is inside the try: an interrupted start exits cleanly too.
    storage = study_id = None
    code = 1  # an exception not handled below
    try:
        stop_on_sigterm(also_sigint=True)  # a forwarded signal must not cut the cleanup of the first
        _stop_with_parent()
        torch.set_num_threads(threads)  # the machine's cores are split between the workers
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        hide_interrupted_trials()  # Ctrl-C reaches the workers too: the supervisor says it in one line
        one_line_trial_failures()  # after: a Ctrl-C trial is dropped whole, a diverged one kept in one line
        session = Session.prepare(spec.config, spec.options)
        tracker = session.start_writer()  # MLflow's imports run beside ours
        session.load_data()
        storage = session.open_storage()
        study_id = storage.get_study_id_from_name(spec.config.name)
        session.open_study(worker=index, join=spec.join)
        session.parent_run = spec.parent_run_id
        session.run_trials(share, cores=threads)
    except KeyboardInterrupt as e:
        code = exit_status(e)  # the running trial is already failed and its run ended
    except WriterGone as e:  # the supervisor replaces this worker
        print(f"sgdtune worker {index}: {e}", file=sys.stderr)
        code = 1
    except (TrackingError, StoreError, OSError) as e:  # a full disk: the supervisor stops the study
        print(f"sgdtune worker {index}: store failed: {e}", file=sys.stderr)
        code = EXIT_STORE_FAILED
    except KeyError:  # the storage's "Record does not exist.": the study deleted under it (--fresh elsewhere)
        if storage is None or study_exists(storage, spec.config.name, study_id):
            raise
        code = EXIT_STORE_FAILED  # the supervisor says it, in one line
    else:
        code = 0
    finally:
        if tracker is not None:
            try:
                if code != 0:  # a run a failure left open (its trial's end never came) ends FAILED
                    tracker.fail_open_runs(f"worker {index} stopped (exit status {code})")
                tracker.close()  # every write made before this process exits
            except TrackingError as e:
                print(f"sgdtune worker {index}: store failed: {e}", file=sys.stderr)
                code = EXIT_STORE_FAILED
    sys.exit(code)


def _stop_with_parent() -> None:
    """A worker whose supervisor dies (kill -9: no chance to forward anything) sends itself
    SIGTERM, so that it fails its trial cleanly and exits instead of running on orphaned."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()  # returns once the supervisor is gone
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="sgdtune-parent-watch", daemon=True).start()


def supervise(study: optuna.Study, spec: WorkerSpec, workers: int, progress=None) -> None:
    """Run worker processes until the study has config.n_trials finished trials."""
    context = multiprocessing.get_context("spawn")  # no forked torch or SQLite state
    threads = core_share(workers)
    n_trials = spec.config.n_trials
    while (remaining := n_trials - n_claimed(study)) > 0:  # trials other processes run count too
        before = n_finished(study)
        procs = [
            context.Process(target=run_worker, args=(spec, share, index, threads), name=f"sgdtune-worker-{index}")
            for index, share in enumerate(split(remaining, workers), start=1)
        ]
        try:
            # A worker spends seconds importing before it has its handlers: a Ctrl-C to the
            # group then would print its import's traceback. It starts with the signals
            # ignored until run_worker handles them; _stop sends the supervisor's on until
            # each worker has ended.
            with signals_ignored_by_children(signal.SIGINT, signal.SIGTERM):
                for p in procs:
                    p.start()
            _wait(procs, study, progress)
        except KeyboardInterrupt as e:
            _stop(procs, signal.SIGTERM if exit_status(e) == EXIT_SIGTERM else signal.SIGINT)
            _recover(study, spec, procs)
            raise
        _recover(study, spec, procs)
        codes = {p.exitcode for p in procs}
        if EXIT_SIGTERM in codes:
            raise Terminated(signal.SIGTERM)
        if EXIT_INTERRUPTED in codes:
            raise KeyboardInterrupt
        if EXIT_STORE_FAILED in codes:
            raise StoreError("a worker's store failed to write (its message is above)")
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


def _stop(procs, signum: int = signal.SIGINT, grace_s: float = STOP_GRACE_S) -> None:
    """After Ctrl-C or SIGTERM: send it on to every worker (from a terminal or systemd they
    got it too; a second one is ignored), again each second to one that still imports (it
    ignores signals until it can handle them), give them grace_s to fail their trials
    cleanly, then kill those still running."""
    procs = [p for p in procs if p.pid is not None]  # those started before the interrupt
    deadline = time.monotonic() + grace_s
    while (alive := [p for p in procs if p.is_alive()]) and time.monotonic() < deadline:
        for p in alive:
            try:
                os.kill(p.pid, signum)
            except ProcessLookupError:
                pass
        alive[0].join(min(1.0, max(0.0, deadline - time.monotonic())))
    for p in procs:
        if p.is_alive():
            p.kill()  # SIGKILL: a worker past its grace, or one that never took its handlers
        p.join(5)


def _recover(study: optuna.Study, spec: WorkerSpec, procs) -> None:
    """Fail the trials a dead worker left RUNNING, end their MLflow runs, queue them again."""
    dead = {p.pid: p.exitcode for p in procs if p.exitcode not in (0, None)}
    if not dead:
        return
    left = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if t.user_attrs.get("worker_pid") in dead]
    if not left:
        return
    storage_url, tracking_uri = locations(spec.config, spec.options.mlruns)
    tracker = Tracker(tracking_uri, spec.config.name) if spec.options.track else None
    storage = open_storage(storage_url)
    for trial in left:
        pid = trial.user_attrs["worker_pid"]
        code = dead[pid]
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        again = code not in (EXIT_SIGINT, EXIT_SIGTERM)  # an interrupt stops the study: nothing to run again
        reason = f"worker process {pid} died ({how}) during the trial" + ("; the trial is run again" if again else "")
        fail_and_requeue(study, storage, trial, reason, tracker, requeue=again)
