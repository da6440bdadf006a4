"""MLflow writes made by a separate process, so that tracking never waits on the store.

A write to MLflow costs 10-40 ms of ORM work even on a local SQLite store (create a run,
log its params and epochs, end it: 40-50 ms a trial), and importing MLflow with its SQL store
takes 2-3 s. In the training process that is time the trial's timings would absorb. So a study's writes go
to a child process, `python -m sgdtune.store.writer_process`, over a pipe: `BackgroundTracker` has the
methods of `tracking.Tracker`, and each call is a message the child replays on its own
Tracker, on the other core, while training goes on. Run ids come back asynchronously: a
call that creates a run returns a `RunRef` whose `.id` waits for the reply (run creations go
ahead of other waiting writes, so by the time a trial ends its id is usually there).

The child (store/writer_process.py: what runs in it) imports MLflow as soon as it starts;
the CLI starts it before importing torch (store/writer_child.py's `prestart`), so the two
imports overlap. One child serves the studies of a process one after another (`close` hands
it back as the spare).

Faults. A write that fails in the child (a full disk) is raised in the training process at
its next call, even one that does not wait (the trial in training fails at its next epoch,
not minutes later), once; the rest at `close`. If the child itself dies (killed, out of
memory), the next call raises `WriterGone`, once: the trial in training fails with that
reason and the study stops. From then on the tracker makes the ends of its runs directly,
with a tracking.Tracker in this process: a trial's run ends with its state, the parent with
its status, and at `close` every run it started and did not end is ended (trials FAILED,
the parent KILLED); other writes (epochs, artifacts) are dropped. Nothing is left RUNNING,
and the same command resumes the study (with a new writer).

Layer: store (the stores; the only MLflow code; docs/architecture.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from typing import Any

from ..errors import InputError, TrackingError, WriterGone
from ..redact import redact_url
from .writer_child import keep_as_spare, take_spare

ENDS = ("end_trial_run", "end_parent_run")  # made directly when the writer process has died


@dataclass(frozen=True)
class RunRef:
    """An MLflow run being created by the writer process; `.id` waits for its id."""

    key: int
    owner: BackgroundTracker

    @property
    def id(self) -> str:
        return self.owner.run_id(self.key)

    @property
    def ready(self) -> bool:
        """The id has arrived (never waits)."""
        return self.owner.run_id(self.key, wait=False) is not None


class BackgroundTracker:
    """tracking.Tracker's writes, made by the writer process. Methods return at once; errors
    are raised at the next call that waits (`RunRef.id`, `experiment_id`, `close`): an
    InputError when the store cannot be opened, else a TrackingError."""

    def __init__(self, tracking_uri: str, study_name: str, artifact_location: str | None = None):
        self.tracking_uri, self.study_name = tracking_uri, study_name
        self._child = take_spare()
        self._ids: dict[int, str] = {}
        self._errors: list[str] = []  # write errors not yet raised (each is raised once)
        self._cause: str | None = None  # the first write error: later ones are often its consequences
        self._failed: dict[int, str] = {}  # key -> why that run was not created
        self._store_error: str | None = None  # why the store could not be opened
        self._next_key = 0
        self._experiment_id: str | None = None
        self._closed = False
        self._open: dict[int, tuple] = {}  # key -> ("parent",) | ("trial", number) | ("child",): not yet ended
        self._sent_ends: dict[int, tuple] = {}  # key -> (method, args) of an end sent: lost if the writer dies
        self._gone: str | None = None  # why the writer process is gone: calls are made directly
        self._direct = None  # the tracking.Tracker of this process, once the writer is gone
        self._raised_early = False  # a write error was raised by a call that does not wait
        # The child may have started elsewhere: relative paths in a URI mean this cwd.
        self._send("open", os.getcwd(), tracking_uri, study_name, artifact_location)

    # -- Tracker's methods --------------------------------------------------------------------

    def start_parent_run(self, tags: dict[str, str], params: dict[str, object], replace: bool = False) -> RunRef:
        return self._call("start_parent_run", tags, params, replace, creates_run=("parent",))

    def describe_run(self, run: RunRef | str, tags: dict[str, str], metrics: dict[str, float]) -> None:
        self._call("describe_run", run, tags, metrics)

    def save_view(self, budget: str) -> None:
        self._call("save_view", budget)

    def log_artifact(self, run: RunRef | str, path, artifact_path: str | None = None) -> None:
        self._call("log_artifact", run, os.path.abspath(path), artifact_path)

    def end_parent_run(self, run: RunRef | str, metrics: dict[str, float], status: str = "FINISHED") -> None:
        self._call("end_parent_run", run, metrics, status)

    def start_trial_run(self, parent: RunRef | str, trial_number: int, params: dict, tags: dict) -> RunRef:
        return self._call("start_trial_run", parent, trial_number, params, tags, creates_run=("trial", trial_number))

    def start_child_run(self, parent: RunRef | str, name: str, params: dict, tags: dict) -> RunRef:
        """A run nested under `parent` (a trial's replicate under the trial's run)."""
        return self._call("start_child_run", parent, name, params, tags, creates_run=("child",))

    def log_epoch(self, run: RunRef | str, metrics: dict[str, float], step: int) -> None:
        self._call("log_epoch", run, metrics, step)

    def end_trial_run(self, run: RunRef | str, state: str, summary: dict[str, float],
                      fail_reason: str | None = None) -> None:
        self._call("end_trial_run", run, state, summary, fail_reason)

    def end_runs_of_finished_trials(self, states: dict[int, tuple[str, str | None, dict]]) -> None:
        self._call("end_runs_of_finished_trials", states)

    @property
    def writer_pid(self) -> int:
        """The pid of the writer process (recorded with each trial: study/reclaim.py)."""
        return self._child.proc.pid

    def log_inputs(self, run: RunRef | str, datasets: list[dict]) -> None:
        """The run's dataset inputs (saved.dataset_records)."""
        self._call("log_inputs", run, datasets)

    def log_model(self, run: RunRef | str, folder: str, spec: dict) -> None:
        """Log saved.write_network's folder as the run's logged model; the child deletes the
        folder once logged (saved.model_spec: the rest)."""
        self._call("log_model", run, folder, spec)

    def delete_trial_models(self, trial_numbers: list[int]) -> None:
        """Delete the logged models of these trials, where they have one."""
        self._call("delete_trial_models", trial_numbers)

    @property
    def experiment_id(self) -> str:
        while self._experiment_id is None:
            if self._gone is not None:
                self._experiment_id = self._directly().experiment_id
                break
            try:
                self._receive(wait=True)
            except WriterGone:
                pass
        return self._experiment_id

    def run_id(self, key: int, wait: bool = True) -> str | None:
        """The id of the run that call number `key` created; None if not yet and not `wait`
        (after the writer died: None when the store does not hold it)."""
        try:
            if self._gone is None:
                self._receive(wait=False)
                while wait and key not in self._ids:
                    if key in self._failed:
                        raise TrackingError(f"MLflow run not created in the writer process: {self._failed[key]}")
                    self._receive(wait=True)
                return self._ids.get(key)
        except WriterGone:
            pass
        return self._resolve(key)

    def fail_open_runs(self, reason: str) -> None:
        """End FAILED, with `reason`, every trial (and replicate) run this tracker started and
        did not end: a failure that skipped a trial's end (its study deleted under it) leaves
        none RUNNING. The parent run is the caller's to end."""
        for key, kind in sorted(self._open.items(), reverse=True):  # a replicate's before its trial's
            if kind[0] != "parent" and key not in self._failed:
                self._call("end_trial_run", RunRef(key, self), "FAIL", {}, reason)

    def close(self) -> None:
        """Wait until every write is made; the child is kept for the next study."""
        if self._closed:
            return
        if self._gone is None:
            try:
                self._send("close")
                while "closed" not in self._receive(wait=True, check=False):
                    pass
            except WriterGone:
                pass
        self._closed = True
        if self._gone is not None:  # every run it started and did not end, ended from here
            for key, kind in list(self._open.items()):
                if kind[0] == "parent":
                    self._after_death("end_parent_run", (RunRef(key, self), {}, "KILLED"), None)
                else:
                    self._after_death("end_trial_run", (RunRef(key, self), "FAIL", {}, self._gone), None)
            try:  # ends it was sent but never made: the runs still RUNNING
                running = self._directly().running_run_ids()
            except Exception as e:  # noqa: BLE001 - the store is unreachable too
                self._errors.append(f"{type(e).__name__}: {e}")
                running = set()
            for key, (method, args) in self._sent_ends.items():
                if self._ids.get(key) in running:
                    self._after_death(method, args, None)
            self._child.stop(wait=False)
            self._raise_errors()
            return
        keep_as_spare(self._child)
        self._raise_errors()

    # -- the pipe -----------------------------------------------------------------------------

    def _call(self, method: str, *args: Any, creates_run: tuple | None = None) -> RunRef | None:
        """Send one call; RunRef arguments travel as their keys, at the positions listed.
        `creates_run`: what the run is, ("parent",), ("trial", number) or ("child",)."""
        if self._gone is not None:
            return self._after_death(method, args, creates_run)
        ref = RunRef(self._next_key, self) if creates_run else None
        self._next_key += bool(creates_run)
        if ref is not None:
            self._open[ref.key] = creates_run
        refs = tuple(i for i, a in enumerate(args) if isinstance(a, RunRef))
        sent = tuple(a.key if isinstance(a, RunRef) else a for a in args)
        try:
            self._send("call", method, sent, refs, ref.key if ref else None)
            self._receive(wait=False, check=False)  # a failed write or a dead writer shows now, not at close
        except WriterGone:
            if method not in ENDS:
                raise
            return self._after_death(method, args, creates_run)  # the end is made all the same
        if method in ENDS and isinstance(args[0], RunRef):
            self._open.pop(args[0].key, None)
            self._sent_ends[args[0].key] = (method, args)
        if self._errors and not self._raised_early:
            self._raised_early = True  # once: the trial's end and the parent's still get written
            self._raise_errors()
        return ref

    def _send(self, *message: Any) -> None:
        if self._closed and message[0] != "close":
            raise TrackingError("this tracker is closed")
        try:
            self._child.commands.send(message)
        except OSError:  # the child died
            self._writer_died()

    def _receive(self, wait: bool, check: bool = True) -> set[str]:
        """Read the replies that have arrived (wait for one if `wait`); the kinds read. Raises
        the first error reported, if `check`."""
        kinds = set()
        while wait or self._child.replies.poll():
            try:
                kind, *rest = self._child.replies.recv()
            except (EOFError, OSError):
                self._writer_died()
            if kind == "id":
                self._ids[rest[0]] = rest[1]
            elif kind == "experiment":
                self._experiment_id = rest[0]
            elif kind == "error":
                self._errors.append(rest[0])
            elif kind == "failed":
                self._failed[rest[0]] = rest[1]
            elif kind == "store_error":
                self._store_error = rest[0]
            kinds.add(kind)
            wait = False
        if check:
            self._raise_errors()
        return kinds

    def _raise_errors(self) -> None:
        """The store's error (every time: nothing can be written), else the next write error."""
        if self._store_error is not None:
            raise InputError("--tracking-uri", "must be a tracking store MLflow can open",
                             f"{redact_url(self.tracking_uri)!r} ({self._store_error})")
        if self._errors:
            first, self._errors = self._errors[0], []
            self._cause = self._cause or first
            # A full disk shows first where it happened (a trial's write); what the command says
            # at its end is that cause, not a later write's consequence of it.
            said = first if first == self._cause else f"{self._cause} (then {first})"
            raise TrackingError(f"MLflow write failed in the writer process: {said} "
                                f"(store {redact_url(self.tracking_uri)})")

    # -- after the writer process died --------------------------------------------------------

    def _writer_died(self) -> None:
        """Note why the writer is gone and raise WriterGone (once: later calls go direct)."""
        if self._gone is None:
            try:
                code = self._child.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:  # its pipe broke, yet it runs: stop it
                self._child.proc.kill()
                code = self._child.proc.wait()
            how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
            self._gone = f"the MLflow writer process (pid {self._child.proc.pid}) died ({how})"
            raise WriterGone(f"{self._gone}; this study's runs were ended from the training process")

    def _directly(self):
        """A tracking.Tracker in this process, for the ends of the runs (imports MLflow here)."""
        if self._direct is None:
            from .tracking import Tracker, quiet_logging

            quiet_logging()
            self._direct = Tracker(self.tracking_uri, self.study_name)
        return self._direct

    def _resolve(self, run: RunRef | str | int) -> str | None:
        """A run's id: known, or (its creation's reply lost with the writer) found in the store."""
        if isinstance(run, str):
            return run
        key = run.key if isinstance(run, RunRef) else run
        if key not in self._ids:
            kind = self._open.get(key, ("child",))
            try:
                if kind[0] == "parent":
                    found = self._directly().find_parent_run()
                elif kind[0] == "trial":
                    found = self._directly().find_trial_run(kind[1])
                else:  # a replicate's run: ended as a nested run when its trial's run is failed
                    found = None
            except Exception as e:  # noqa: BLE001 - the store is unreachable too: said at close
                self._errors.append(f"{type(e).__name__}: {e}")
                found = None
            if found is None:
                return None
            self._ids[key] = found
        return self._ids[key]

    def _after_death(self, method: str, args: tuple, creates_run: tuple | None):
        """A call once the writer is gone: the ends of runs made directly, new runs refused
        (the study is stopping), other writes dropped."""
        if creates_run:
            raise WriterGone(self._gone)
        if method not in ENDS:
            return None
        run, rest = args[0], args[1:]
        run_id = self._resolve(run)
        if isinstance(run, RunRef):
            self._open.pop(run.key, None)
        if run_id is None:
            return None
        try:
            if method == "end_parent_run":
                self._directly().end_parent_run(run_id, *rest)
            else:
                state, summary, reason = rest
                if state == "FAIL":  # its replicates' runs too
                    self._directly().fail_stale_run(run_id, reason or self._gone)
                self._directly().end_trial_run(run_id, state, summary, fail_reason=reason)
        except Exception as e:  # noqa: BLE001 - raised once, at close
            self._errors.append(f"{type(e).__name__}: {e}")
        return None
