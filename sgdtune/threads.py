"""Torch intra-op threads per trial: from the work of one training step and the cores this
process may use (`threads = "auto"`, the default), or a fixed count.

Why: torch starts one intra-op thread per core, and its threads spin-wait for each other at
every op. The small models sgdtune trains have too little work per op to pay for a second
thread until the batch is large, and where other processes already keep the cores busy,
every extra thread waits for a core at every op instead: on this project's 2-core machine
at load average 15, one step of the digits MLP (64-128-10, B = 256) took 1.7 ms on one
thread and 39 ms on two, and the default study took 587 s instead of 22 s. So: as many
threads as the step's work can keep busy, never more than this process's cores, at least one.

The load of other processes is deliberately not an input of "auto": the thread count
changes how torch splits a sum (one update of that MLP: the last layer's gradient differs in
its last bits between 1 and 2 threads), so a choice that followed the machine's load would
make a study's numbers depend on other jobs. On a shared machine, `--threads 1`.

Layer: base (shared by every layer above; docs/architecture.md).
"""

from __future__ import annotations

import os
from typing import Literal

# Multiply-adds per step that each thread needs to pay for waking up at every op: below
# this, one more thread costs more in hand-offs than it saves (docs/performance.md).
WORK_PER_THREAD = 2**22


def choose_threads(work: float, cores: int, load: float) -> int:
    """Intra-op threads for one trial.

    work: multiply-adds of one training step, batch size x the model's weights;
    cores: CPUs this process may use (its affinity, or its share under --workers);
    load: runnable tasks that other processes put on those cores (ThreadChooser passes 0:
    the module's docstring says why; a caller that accepts load-dependent numbers may not).
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


class ThreadChooser:
    """Sets torch's intra-op threads at each trial's start: `setting` threads, or with
    "auto", `choose_threads` over this process's `cores` (at most OMP_NUM_THREADS, where
    set), with no load (the module's docstring says why)."""

    def __init__(self, setting: int | Literal["auto"] = "auto", cores: int | None = None):
        self.setting = setting
        self.cores = cores or machine_cores()
        omp = os.environ.get("OMP_NUM_THREADS", "").strip()
        if omp.isdigit() and int(omp) >= 1:  # a cap the user set for every OpenMP program: "auto" keeps to it
            self.cores = min(self.cores, int(omp))

    def choose(self, work: float) -> int:
        if self.setting != "auto":
            return int(self.setting)
        return choose_threads(work, self.cores, load=0.0)

    def apply(self, work: float) -> int:
        """Choose for a step of `work` multiply-adds and set torch's threads; the count."""
        import torch

        threads = self.choose(work)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        return threads
