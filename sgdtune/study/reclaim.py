"""Trials whose process died: found, failed with a reason, their MLflow runs ended, and their
parameters queued again, so that no trial or run stays RUNNING after a kill.

Each trial records the process that runs it (`Objective.begin`, study/trial.py): user attributes
`worker_pid` and `process` = {host, pid, start, writer_pid, writer_start}, where `start` is
the boot id and the process's start time (/proc/<pid>/stat field 22, clock ticks since boot)
so that a pid reused by another process is not taken for the trial's. On every start of a
study (`reclaim_dead`, called by run_study before any trial runs), a RUNNING trial recorded
on this host whose process is gone is failed (user attributes fail_reason and fail_kind
"killed"), its MLflow run (and a replicate's under it) ended FAILED with the reason, and its
parameters queued again (user attribute retry_of). The `--workers` supervisor fails a dead
worker's trial through the same function (`fail_and_requeue`). Trials of other hosts are
left to heartbeats (`--heartbeat`, RDB storages): from here, a process on another machine
cannot be seen alive or dead. Where /proc is missing (not Linux) only the pid is checked.

A trial can die before it records its process (a full disk as it was created, a kill in
between). The study's own record of the processes that run it (study user attribute
`processes`, written at each start under the start lock, store/startlock.py, by `join`) covers it:
a RUNNING trial with no process record is reclaimed when no other process of the study is
alive (every recorded one on this host, and gone). The same record, with the RUNNING trials'
processes and, with heartbeats, the trials of other hosts that still send them, tells
`--fresh` whether the study has live processes (`live_processes`).

`StoreError`: the Optuna storage failed to write (a full disk, a file-size limit); the CLI
prints it on one line and exits 2, like an MLflow store that fails (writer.TrackingError).

Layer: study (one study from its experiment to its last trial; docs/architecture.md).
"""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..errors import StoreError
from ..search.space import RETRY_ATTR
from ..search.strategy import FAIL_KIND

if TYPE_CHECKING:
    from ..store.tracking import Tracker

PROCESS_ATTR = "process"  # trial user attribute: the identity of the process running it
PROCESSES_ATTR = "processes"  # study user attribute: [process_identity()] of the processes running it
JOINS_ATTR = "joins"  # study user attribute: how many processes have started on the study (a sampler seed)
WRITER_EXIT_WAIT_S = 30.0  # a dead trial process's writer finishes its queued writes first


# OSError numbers that mean the disk (or a limit on it) refused a write, not a bug.
WRITE_REFUSED = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EIO}


def as_store_error(error: BaseException, storage_url: str) -> BaseException:
    """`error` as a StoreError naming the storage when it is the Optuna storage refusing a
    write (a full disk: OSError ENOSPC, EFBIG, ...; an RDB's failed commit); else `error`."""
    from ..redact import redact_url

    cause = _refused_write(error) if isinstance(error, Exception) else None  # not under a Ctrl-C
    if cause is None:
        return error
    return StoreError(f"the Optuna storage {redact_url(storage_url)} failed to write: "
                      f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}")


def _refused_write(error: BaseException | None) -> BaseException | None:
    """The refused write behind `error`, looked for down its chain too: Optuna raises its own
    AssertionError ("Should not reach.") from a journal write that failed while it told a
    trial's end."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, optuna.exceptions.StorageInternalError):
            return error.__cause__ or error
        if isinstance(error, OSError) and error.errno in WRITE_REFUSED:
            return error
        error, seen = error.__cause__ or error.__context__, seen + 1
    return None


def finished_trial_states(study: optuna.Study) -> dict[int, tuple[str, str | None, dict]]:
    """{trial number: (state, fail_reason, summary)} of the study's finished trials: a run left
    RUNNING under one of them (its end lost with a killed writer or a full disk) is ended so,
    with the summary metrics the Optuna trial kept."""
    return {t.number: (t.state.name, t.user_attrs.get("fail_reason"), t.user_attrs.get("summary") or {})
            for t in study.get_trials(deepcopy=False) if t.state.is_finished()}


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def start_time(pid: int) -> str | None:
    """'<boot id>:<start time in clock ticks>' of a live process; None when it does not exist
    or /proc cannot tell (then only the pid identifies it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the name in (...) may hold spaces
    return f"{_boot_id()}:{fields[19]}"  # field 22 of stat; fields[0] is field 3


def process_identity(pid: int | None = None, writer_pid: int | None = None) -> dict:
    """What identifies a process (this one by default) and its MLflow writer process."""
    pid = os.getpid() if pid is None else pid
    out = {"host": socket.gethostname(), "pid": pid, "start": start_time(pid)}
    task = scheduler_task()
    if task:
        out["task"] = task
    if writer_pid is not None:
        out.update(writer_pid=writer_pid, writer_start=start_time(writer_pid))
    return out


# The variables a scheduler sets to say which task of an array a process is (study/cluster.py).
TASK_VARIABLES = (("SLURM_ARRAY_TASK_ID", "slurm {SLURM_ARRAY_JOB_ID}_{SLURM_ARRAY_TASK_ID}"),
                  ("JOB_COMPLETION_INDEX", "k8s {JOB_COMPLETION_INDEX}"))


def scheduler_task() -> str | None:
    """'slurm 4242_3' or 'k8s 3' for a task of a SLURM job array or a Kubernetes indexed Job."""
    for variable, form in TASK_VARIABLES:
        if variable in os.environ:
            return form.format_map({"SLURM_ARRAY_JOB_ID": "?", **os.environ})
    return None


def alive(pid: int | None, start: str | None) -> bool:
    """Whether the process `pid` with start time `start` (None: any) still runs on this host."""
    if not pid:
        return False
    if start is not None and Path("/proc").is_dir():
        return start_time(pid) == start  # gone, or the pid now belongs to another process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def dead_on_this_host(trial: FrozenTrial, others_alive: bool = True) -> bool:
    """A RUNNING trial whose recorded process ran on this host and is gone; or, with no
    process recorded, a trial of a study none of whose other processes may be alive."""
    ident = trial.user_attrs.get(PROCESS_ATTR)
    if ident is None:
        return not others_alive
    if not isinstance(ident, dict) or ident.get("host") != socket.gethostname():
        return False  # another host's: heartbeats' to handle
    return not alive(ident.get("pid"), ident.get("start"))


def _same(a: dict, b: dict) -> bool:
    return a.get("host") == b.get("host") and a.get("pid") == b.get("pid") and a.get("start") == b.get("start")


def _gone(ident: dict) -> bool:
    """A recorded process of this host that no longer runs (another host's cannot be told)."""
    return ident.get("host") == socket.gethostname() and not alive(ident.get("pid"), ident.get("start"))


def joins_before(storage: optuna.storages.BaseStorage, study_name: str) -> int:
    """How many processes have started on the study (0 for a new one): the next one's join
    number, which seeds its sampler apart (strategy.open_study)."""
    found = next((s for s in storage.get_all_studies() if s.study_name == study_name), None)
    return int(found.user_attrs.get(JOINS_ATTR, 0)) if found is not None else 0


def join(study: optuna.Study) -> None:
    """Record this process among the study's processes (dropping those of this host that are
    gone) and count its start. Call under the start lock (store/startlock.py), after joins_before:
    a read, then a write."""
    me = process_identity()
    kept = [p for p in study.user_attrs.get(PROCESSES_ATTR, []) if isinstance(p, dict) and not _gone(p)
            and not _same(p, me)]
    study.set_user_attr(PROCESSES_ATTR, [*kept, me])
    study.set_user_attr(JOINS_ATTR, int(study.user_attrs.get(JOINS_ATTR, 0)) + 1)


def leave(study: optuna.Study) -> None:
    """Take this process out of the study's record of processes (under the start lock)."""
    me = process_identity()
    recorded = study.user_attrs.get(PROCESSES_ATTR, [])
    if any(isinstance(p, dict) and _same(p, me) for p in recorded):
        study.set_user_attr(PROCESSES_ATTR, [p for p in recorded if not (isinstance(p, dict) and _same(p, me))])


def others_alive(study: optuna.Study) -> bool:
    """Whether a process of the study other than this one may be alive: one recorded on this
    host that still runs, or one recorded on another host (it cannot be seen from here)."""
    me = process_identity()
    return any(isinstance(p, dict) and not _same(p, me) and not _gone(p)
               for p in study.user_attrs.get(PROCESSES_ATTR, []))


def live_processes(study: optuna.Study, storage: optuna.storages.BaseStorage) -> list[str]:
    """The study's processes known to be alive, as 'pid N on HOST': recorded in the study, or
    running one of its trials, on this host; with heartbeats (RDB storages), a RUNNING trial's
    process on any host whose heartbeat is fresh (stale ones are failed first)."""
    here = socket.gethostname()
    found = []
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for ident in [*study.user_attrs.get(PROCESSES_ATTR, []), *(t.user_attrs.get(PROCESS_ATTR) for t in running)]:
        if isinstance(ident, dict) and ident.get("host") == here and alive(ident.get("pid"), ident.get("start")):
            found.append(f"pid {ident.get('pid')} on {here}")
    if getattr(storage, "get_heartbeat_interval", lambda: None)() is not None:  # an RDB storage with heartbeats
        optuna.storages.fail_stale_trials(study)
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            ident = t.user_attrs.get(PROCESS_ATTR) or {}
            if ident.get("host") != here:
                found.append(f"pid {ident.get('pid')} on {ident.get('host')} (trial {t.number}, heartbeats)")
    return list(dict.fromkeys(found))


def wait_for_writer(trial: FrozenTrial, timeout_s: float = WRITER_EXIT_WAIT_S) -> None:
    """Wait (up to timeout_s) until a dead trial process's writer has exited: it makes every
    write it was sent before exiting, among them perhaps the creation of the trial's run."""
    ident = trial.user_attrs.get(PROCESS_ATTR) or {}
    deadline = time.monotonic() + timeout_s
    while alive(ident.get("writer_pid"), ident.get("writer_start")) and time.monotonic() < deadline:
        time.sleep(0.1)


def fail_and_requeue(study: optuna.Study, storage: optuna.storages.BaseStorage, trial: FrozenTrial, reason: str,
                     tracker: Tracker | None, requeue: bool = True, kind: str = "killed") -> None:
    """Fail a trial left RUNNING by a process that died: its reason in the user attributes
    fail_reason and fail_kind, its MLflow run (and nested runs) ended FAILED with the reason,
    and (`requeue`) its parameters queued again with user attribute retry_of."""
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), trial.number)
    storage.set_trial_user_attr(trial_id, FAIL_KIND, kind)
    storage.set_trial_user_attr(trial_id, "fail_reason", reason)
    study.tell(trial.number, state=TrialState.FAIL)
    if tracker is not None:  # a process killed early in a trial may not have recorded its run id
        run_id = trial.user_attrs.get("mlflow_run_id") or tracker.find_trial_run(trial.number)
        if run_id:
            tracker.fail_stale_run(run_id, reason)
    if requeue:
        study.enqueue_trial(trial.params, user_attrs={RETRY_ATTR: trial.number}, skip_if_exists=False)


def requeue(trial: optuna.Trial) -> None:
    """Queue an interrupted trial's parameters again (user attribute retry_of), as a killed
    one's are: the resumed study runs it again in its place in the plan (space.plan_place)."""
    trial.study.enqueue_trial(trial.params, user_attrs={RETRY_ATTR: trial.number}, skip_if_exists=False)


def reclaim_dead(study: optuna.Study, storage: optuna.storages.BaseStorage, tracking_uri: str | None) -> list[int]:
    """Fail, end and queue again every RUNNING trial whose process on this host is gone (see
    the module's docstring); the numbers of the trials reclaimed. MLflow is opened only when
    there is one (`tracking_uri` None: no tracking)."""
    others = others_alive(study)  # a trial with no process record may be theirs
    dead = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if dead_on_this_host(t, others_alive=others)]
    if not dead:
        return []
    tracker = None
    if tracking_uri is not None:
        from ..store.tracking import Tracker

        tracker = Tracker(tracking_uri, study.study_name)
    for trial in dead:
        wait_for_writer(trial)
        ident = trial.user_attrs.get(PROCESS_ATTR)
        if ident is None:  # it died before recording itself: no parameters drawn, perhaps
            reason = ("its process died as the trial started, before recording itself (killed, or its store "
                      "failed to write)" + ("; the trial is run again" if trial.params else ""))
        else:
            reason = (f"process {ident.get('pid')} on {ident.get('host')} died during the trial (killed or lost); "
                      "the trial is run again")
        fail_and_requeue(study, storage, trial, reason, tracker, requeue=bool(trial.params) or ident is not None)
    return [t.number for t in dead]
