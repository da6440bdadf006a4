"""Servers that do not outlive the process that started them, however it ends.

A server started in its own session leads a process group that holds most of the workers it
forks (mlflow server's uvicorn worker). Its starter stops the group when done; killed
outright (kill -9, the OOM killer) it stops nothing, and the servers live on. So a small
watchdog process, in a session of its own, reads the groups to stop from a pipe whose write
end only the starter holds. When the starter ends, however it ends, the pipe closes; the
watchdog then signals every group it was told of, and the groups of their descendants (MLflow
puts its huey job workers in a group of their own, PostgreSQL each backend), waits up to
GRACE_S, and kills what is left. It also removes the folders it was told of (a throw-away
database cluster).

Layer: base (shared by every layer above; docs/architecture.md).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

GRACE_S = 10  # after the first signal, before SIGKILL

# The watchdog: lines "kill PGID SIGNAL", "forget PGID" and "rmtree PATH" until end of file.
# A Ctrl-C at the terminal is the starter's to handle; SIGTERM too (the pipe tells the rest).
WATCHDOG = f"""
import os, shutil, signal, sys, time
for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(sig, signal.SIG_IGN)
groups, folders = {{}}, []
for line in sys.stdin:
    word, _, arg = line.rstrip("\\n").partition(" ")
    if word == "kill":
        pgid, sig = arg.split()
        groups[int(pgid)] = int(sig)
    elif word == "forget":
        groups.pop(int(arg), None)
    elif word == "rmtree":
        folders.append(arg)

def send(pgid, sig):
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False

def with_descendants(groups):
    # The groups of every descendant of the groups' processes, read from /proc (Linux) now,
    # while the servers still run: once one ends, its children's parent is no longer it.
    try:
        procs = {{}}
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    stat = open(f"/proc/{{name}}/stat").read()
                except OSError:
                    continue
                ppid, pgrp = stat[stat.rindex(")") + 2:].split()[1:3]
                procs[int(name)] = (int(ppid), int(pgrp))
    except OSError:
        return groups
    members = {{pid for pid, (_, pgrp) in procs.items() if pgrp in groups}}
    while True:
        more = {{pid for pid, (ppid, _) in procs.items() if ppid in members}} - members
        if not more:
            break
        members |= more
    found = dict(groups)
    for pid in members:
        found.setdefault(procs[pid][1], signal.SIGTERM)
    return found

groups = with_descendants(groups)
left = [g for g, sig in groups.items() if send(g, sig)]
deadline = time.monotonic() + {GRACE_S}
while left and time.monotonic() < deadline:
    time.sleep(0.1)
    left = [g for g in left if send(g, 0)]
for g in left:
    send(g, signal.SIGKILL)
for folder in folders:
    shutil.rmtree(folder, ignore_errors=True)
"""


class Reaper:
    """One watchdog for the servers a process starts; `watch` each after starting it."""

    def __init__(self) -> None:
        # The pipe's write end is not inheritable (Python's default), so no server holds it open.
        self.proc = subprocess.Popen([sys.executable, "-c", WATCHDOG], stdin=subprocess.PIPE, text=True,
                                     start_new_session=True, stdout=subprocess.DEVNULL)

    def _tell(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def watch(self, pgid: int, sig: int = signal.SIGTERM) -> None:
        """Stop process group `pgid` with `sig` (then SIGKILL) if this process ends first."""
        self._tell(f"kill {pgid} {int(sig)}")

    def forget(self, pgid: int) -> None:
        """The group was stopped here: its id may be reused, so leave it alone."""
        self._tell(f"forget {pgid}")

    def remove_at_end(self, folder: str | Path) -> None:
        """Remove `folder` when this process ends (after the groups are stopped)."""
        self._tell(f"rmtree {folder}")

    def close(self) -> None:
        """This process is done with its servers: the watchdog does what is left, then exits."""
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()
        self.proc.wait()
