"""The writer process: `python -m sgdtune.store.writer_process`, started by store/writer.py's
BackgroundTracker, which sends it tracking.Tracker's calls over a pipe; it replays them on its
own Tracker and sends back run ids and errors.

It imports MLflow as soon as it starts (the training process imports torch meanwhile). It
ignores Ctrl-C (the training process decides what a Ctrl-C means and sends the writes that
record it), and when the training process dies outright its pipe closes: the child writes
everything it was sent, then exits. It ignores SIGTERM too, for the same reason: systemd and
`timeout` send it to the whole process group, and the training process's own handling of it
(interrupts.py) needs the writer to record the trial's end.

Layer: store (the stores; the only MLflow code; docs/architecture.md).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
from multiprocessing.connection import Connection

from ..redact import mask_output

# Once ready, the writer runs this far below the training process's CPU priority (os.nice):
# where the cores are busy, training goes first (its timings are what the runs report) and
# the writes catch up when it waits; with a core to spare, it makes no difference.
NICENESS = 10
READS = ("find_run", "child_runs", "metric_history", "read_artifact")  # the reads it makes (store/piped_reads.py)


def serve(commands: Connection, replies: Connection) -> None:
    """Replay the calls on a Tracker until the pipe closes; flush what is buffered at the end."""
    from .tracking import Tracker

    reply = _Replies(replies)
    niced = False
    tracker: Tracker | None = None
    ids: dict[int, str] = {}
    readers: dict[tuple[str, str], object] = {}  # (cwd, tracking URI) -> its RunReader, made at the first read
    try:
        for kind, *rest in _in_order(commands):
            if kind == "open":
                ids = {}
                try:
                    tracker = _open(*rest)
                    reply.send("experiment", tracker.experiment_id)
                except Exception as e:  # noqa: BLE001 - reported; every later call is skipped
                    tracker = None
                    reply.send("store_error", f"{type(e).__name__}: {e}")
                if not niced:  # from here on, background work: training goes first on busy cores
                    os.nice(NICENESS)
                    niced = True
            elif kind == "read":  # store/piped_reads.py: a RunReader's read, after every write sent before it
                if tracker is not None:
                    reply.guarded(tracker.flush)
                reply.send_read(*_read(readers, *rest))
            elif kind == "close":
                if tracker is not None:
                    reply.guarded(tracker.flush)
                tracker = None
                reply.send("closed")
            else:  # a call; skipped after a failed open (already reported)
                method, args, refs, new_key = rest
                if any(args[i] not in ids for i in refs):
                    # A call on a run whose creation failed (reported then, with its cause): made
                    # with no run id it would only add a TypeError that hides that cause.
                    continue
                args = [ids.get(a) if i in refs else a for i, a in enumerate(args)]
                result = reply.guarded(getattr(tracker, method), *args) if tracker is not None else None
                if new_key is not None and result is not None:
                    ids[new_key] = result
                    reply.send("id", new_key, result)
                elif new_key is not None:  # whoever waits for this run's id must not wait for ever
                    reply.send("failed", new_key, "the store could not be opened" if tracker is None
                               else f"{method} failed: {reply.last_error}")
    finally:
        if tracker is not None:
            reply.guarded(tracker.flush)


def _in_order(commands: Connection):
    """The messages, until the pipe closes, in the order to handle them: of those already
    waiting, calls that create a run first (the training process may be waiting for that
    id; a run's creation never depends on an earlier write of another run), then the rest
    in the order sent. A study's open and close are not passed."""
    waiting: list[tuple] = []
    closed = False
    while waiting or not closed:
        try:
            if not waiting and not closed:
                waiting.append(commands.recv())
            while not closed and commands.poll(0):
                waiting.append(commands.recv())
        except EOFError:  # the training process closed the pipe, or died: finish what came
            closed = True
        if not waiting:
            return
        barrier = next((i for i, m in enumerate(waiting) if m[0] in ("open", "close")), len(waiting))
        creates = next((i for i, m in enumerate(waiting[:barrier]) if m[0] == "call" and m[4] is not None), 0)
        yield waiting.pop(creates)


def _read(readers: dict, cwd: str, tracking_uri: str, method: str, args: tuple) -> tuple[bool, object]:
    """(True, RunReader(tracking_uri).method(*args)), or (False, None) when it fails or is not
    one of READS: the reading process then makes the read itself, to raise RunReader's own error."""
    from .run_reader import RunReader

    try:
        if method not in READS:
            return False, None
        os.chdir(cwd)
        key = (cwd, tracking_uri)  # a relative path in the URI means the reader's folder
        if key not in readers:
            readers[key] = RunReader(tracking_uri)
        return True, getattr(readers[key], method)(*args)
    except Exception:  # noqa: BLE001 - made again by the reading process, which raises it
        return False, None


def _open(cwd: str, *tracker_args):
    from .tracking import Tracker

    os.chdir(cwd)
    return Tracker(*tracker_args)


class _Replies:
    """The reply pipe. Once the training process is gone, the writes go on and the errors
    go to stderr: what it sent before dying still reaches the store."""

    def __init__(self, conn: Connection):
        self.conn: Connection | None = conn
        self.last_error = ""  # the text of the last error reported (a failed run's creation names it)

    def send(self, *message) -> None:
        if self.conn is None:
            return
        try:
            self.conn.send(message)
        except OSError:  # BrokenPipeError: nobody is listening any more
            self.conn = None

    def send_read(self, ok: bool, value) -> None:
        """A read's reply; (False, None) when its value cannot be pickled."""
        try:
            self.send("read", ok, value)
        except Exception:  # noqa: BLE001 - pickling: the reading process makes the read itself
            self.send("read", False, None)

    def guarded(self, fn, *args):
        """fn(*args), or None with its error reported."""
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - reported to the training process, which raises it
            text = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"  # one line
            self.last_error = text
            if self.conn is None:
                print(f"sgdtune writer: {text}", file=sys.stderr)
            self.send("error", text)
            return None


def main(argv: list[str]) -> None:
    mask_output()  # MLflow prints "View run ... at: <tracking URI>" (a password in it) to stdout
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the training process's to handle
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # so is SIGTERM; the closed pipe ends this process
    commands = Connection(int(argv[0]), writable=False)
    replies = Connection(int(argv[1]), readable=False)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # a background process: errors only
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # MLflow and its SQL store (2 s of imports) now, while the training process imports torch:
    # the first trial's end waits for its run's id.
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    from sqlalchemy.orm import configure_mappers

    configure_mappers()  # MLflow's ORM classes (0.4 s), otherwise done when the store opens
    # Not even errors (set after MLflow's import, which sets its loggers' levels): each failed
    # call goes back to the training process, which raises it in one line (or, once that is
    # gone, `_Replies.guarded` prints it); MLflow's own log of it is a 40-line traceback.
    logging.getLogger("mlflow").setLevel(logging.CRITICAL)
    # Keep the collector off the ~10^6 objects of those imports: a full collection over them
    # paused a write for 0.2 s.
    gc.freeze()

    serve(commands, replies)
    sys.stdout.flush()  # a masked stream holds a partial line until flushed
    sys.stderr.flush()
    os._exit(0)  # every write is made: skip tearing down MLflow and SQLAlchemy


if __name__ == "__main__":
    main(sys.argv[1:])
