"""The writer process as its parent sees it (store/writer_process.py runs in it): the process
and the two ends of its pipes, and the spare, a started one that no tracker holds. The CLI
starts the spare before importing torch (`prestart`) so that the two imports overlap; a tracker
takes it (`take_spare`) and hands it back when its study closes (`keep_as_spare`), so one
process serves the studies of a process one after another, and between them it makes the
reads of store/piped_reads.py.

Layer: store (the stores; the only MLflow code; docs/architecture.md).
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
from multiprocessing.connection import Connection

PIPE_BYTES = 1 << 20  # room for ~2,000 queued epochs before a send would wait for the child


class WriterChild:
    """The writer process and the two ends of its pipes."""

    def __init__(self) -> None:
        cmd_r, cmd_w = os.pipe()
        reply_r, reply_w = os.pipe()
        _widen(cmd_w)
        _widen(reply_w)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sgdtune.store.writer_process", str(cmd_r), str(reply_w)],
            pass_fds=(cmd_r, reply_w),
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # a terminal's Ctrl-C is not the writer's, even while it starts up
        )
        os.close(cmd_r)
        os.close(reply_w)
        self.commands = Connection(cmd_w, readable=False)
        self.replies = Connection(reply_r, writable=False)

    def stop(self, wait: bool = True) -> None:
        """Close the pipe (the child finishes what it has, then exits); wait for it if `wait`."""
        self.commands.close()
        if wait:
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.replies.close()


def _widen(fd: int) -> None:
    try:
        import fcntl

        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        pass  # not Linux, or over the system's limit: the default 64 KiB pipe works too


_spare: WriterChild | None = None  # a started child with no study: prestart's, or a closed tracker's


def prestart() -> None:
    """Start the writer process now, so that its imports overlap the caller's."""
    global _spare
    if _spare is None:
        _spare = WriterChild()


def spare_child() -> WriterChild | None:
    """The spare, if there is one (it stays the spare)."""
    return _spare


def take_spare() -> WriterChild:
    """The spare, now the caller's (none is left), or a new process if there was none."""
    global _spare
    child, _spare = (_spare or WriterChild()), None
    return child


def keep_as_spare(child: WriterChild) -> None:
    """A closed tracker's process, kept for the next one; stopped if a spare is kept already."""
    global _spare
    if _spare is None:
        _spare = child
    else:
        child.stop()


@atexit.register
def drop_spare() -> None:
    """Stop the spare, at exit too. It holds no work (a tracker's close waited for every write,
    a read for its reply), so it is killed: closing its pipe would let one still importing
    MLflow (a command stopped by bad input) spend 1-2 s of CPU on imports it no longer needs."""
    global _spare
    if _spare is not None:
        _spare.proc.kill()
        _spare.stop()  # reaped at once
        _spare = None
