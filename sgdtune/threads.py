"""Torch intra-op threads per trial: from the work of one training step and the cores that
other processes leave idle (`threads = "auto"`, the default), or a fixed count.

Why: torch starts one intra-op thread per core, and its threads spin-wait for each other at
every op. When other processes already keep the cores busy, every extra thread waits for a
core at every op instead: on this project's 2-core machine at load average 15, one step of
the digits MLP (64-128-10, B = 256) took 1.7 ms on one thread and 39 ms on two, with 26x
the CPU time, and the default study took 587 s instead of 22 s. On idle cores, the small
models sgdtune trains have too little work per op to pay for more than one thread until
the batch is large (README, Performance). So: as many threads as the step's work can keep
busy, never more than the cores idle now, and at least one.
"""

from __future__ import annotations

import os
import time
from typing import Literal

# Multiply-adds per step that each thread needs to pay for waking up at every op: below
# this, one more thread costs more in hand-offs than it saves (README, Performance).
WORK_PER_THREAD = 2**22


def choose_threads(work: float, cores: int, load: float) -> int:
    """Intra-op threads for one trial.

    work: multiply-adds of one training step, batch size x the model's weights;
    cores: CPUs this process may use (its affinity, or its share under --workers);
    load: runnable tasks that other processes put on those cores (a load average, in
    tasks; this study's own taken out).
    One thread per WORK_PER_THREAD of work, at most the idle cores (cores - load, rounded)
    and at least one: with the cores oversubscribed, one thread is what runs best.
    """
    if cores < 1:
        raise ValueError(f"cores must be >= 1; got {cores}")
    by_work = min(cores, int(work // WORK_PER_THREAD))
    idle = int(cores - max(0.0, load) + 0.5)
    return max(1, min(by_work, idle))


def machine_cores() -> int:
    """CPUs this process may run on (its affinity where the OS tells, else all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def core_share(workers: int) -> int:
    """The cores each of `workers` processes of one study may use (at least one)."""
    return max(1, machine_cores() // workers)


def load_average() -> float:
    """Runnable tasks on the machine, averaged over the last minute (0 where unknown)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):  # Windows
        return 0.0


class ThreadChooser:
    """Sets torch's intra-op threads at each trial's start: `setting` threads, or with
    "auto", `choose_threads` over this process's `cores` (at most OMP_NUM_THREADS, where
    set) and the load of other processes.

    The load average counts this study too: what this process kept busy since the previous
    choice (its CPU seconds per wall second) is taken out for each of the study's processes
    (machine cores // cores of them, under --workers)."""

    def __init__(self, setting: int | Literal["auto"] = "auto", cores: int | None = None):
        self.setting = setting
        self.cores = cores or machine_cores()
        self.processes = max(1, machine_cores() // self.cores)
        omp = os.environ.get("OMP_NUM_THREADS", "").strip()
        if omp.isdigit() and int(omp) >= 1:  # a cap the user set for every OpenMP program: "auto" keeps to it
            self.cores = min(self.cores, int(omp))
        self._last: tuple[float, float] | None = None  # (wall s, CPU s) at the previous choice

    def own_busy(self) -> float:
        """Cores this process kept busy since the previous call (0 at the first)."""
        now = (time.monotonic(), time.process_time())
        last, self._last = self._last, now
        if last is None or now[0] <= last[0]:
            return 0.0
        return (now[1] - last[1]) / (now[0] - last[0])

    def choose(self, work: float) -> int:
        if self.setting != "auto":
            return int(self.setting)
        others = max(0.0, load_average() - self.processes * self.own_busy())
        return choose_threads(work, self.cores, others / self.processes)

    def apply(self, work: float) -> int:
        """Choose for a step of `work` multiply-adds and set torch's threads; the count."""
        import torch

        threads = self.choose(work)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return threads
