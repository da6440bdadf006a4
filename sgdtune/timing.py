"""Devices, and time and memory on them: CUDA events on a GPU, clocks on a CPU.

Layer: base (shared by every layer above; docs/architecture.md).
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time

import torch

from .errors import InputError


class StepTimer:
    """Accumulates the time spent in training steps, segment by segment (s).

    The trainer brackets each epoch's step loop with start()/stop(), so evaluation, noise
    probes and logging stay outside. On a GPU, CUDA events time the kernels themselves
    (gpu_time_s) and stop() synchronizes once per segment so that the wall clock covers the
    queued work; on a CPU there is nothing to wait for.
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.compute_time_s = 0.0
        self._gpu_ms = 0.0
        self._pending: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._t0 = None
        self._event0 = None

    def start(self) -> None:
        if self.cuda:
            self._event0 = torch.cuda.Event(enable_timing=True)
            self._event0.record()
        self._t0 = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            torch.cuda.synchronize()  # one sync per segment: the wall clock must include the queue
            self._gpu_ms += self._event0.elapsed_time(end)
        self.compute_time_s += time.perf_counter() - self._t0

    @property
    def gpu_time_s(self) -> float | None:
        """Kernel time between the segments' CUDA events (s); None on a CPU."""
        return self._gpu_ms / 1000.0 if self.cuda else None


class GpuMonitor:
    """The GPU's utilisation (%) and memory in use (MiB, every process's), sampled by NVML every
    INTERVAL_S from a thread while a trial trains. Needs the optional extra `gpu`
    (nvidia-ml-py); on a CPU, or without NVML, it samples nothing and reports nothing."""

    INTERVAL_S = 0.2

    def __init__(self, device: torch.device):
        self.util: list[float] = []
        self.mem_mb: list[float] = []
        self._stop = threading.Event()
        self._thread = None
        self._handle = self._open(device) if device.type == "cuda" else None

    @staticmethod
    def _open(device: torch.device):
        try:
            import pynvml

            pynvml.nvmlInit()
            given = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            names = [n.strip() for n in given.split(",") if n.strip()] if given else []
            index = device.index or 0
            name = names[index] if index < len(names) else str(index)  # NVML counts every GPU of the machine
            if name.isdigit():
                return pynvml.nvmlDeviceGetHandleByIndex(int(name))
            return pynvml.nvmlDeviceGetHandleByUUID(name)
        except Exception:  # no NVML library or driver: the metrics are simply absent
            return None

    def start(self) -> None:
        if self._handle is not None:
            self._thread = threading.Thread(target=self._sample, name="sgdtune-gpu-monitor", daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        import pynvml

        while not self._stop.wait(self.INTERVAL_S):
            try:
                self.util.append(float(pynvml.nvmlDeviceGetUtilizationRates(self._handle).gpu))
                self.mem_mb.append(pynvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20)
            except Exception:
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2 * self.INTERVAL_S)

    def summary(self) -> dict[str, float]:
        """gpu_util_mean_pct and gpu_mem_used_max_mb, when there were samples."""
        if not self.util:
            return {}
        return {"gpu_util_mean_pct": sum(self.util) / len(self.util), "gpu_mem_used_max_mb": max(self.mem_mb)}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory (MiB): CUDA allocations on a GPU, else the process's peak resident set.

    The CPU figure is a process-wide high-water mark: it never falls between trials.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024 if sys.platform != "darwin" else kib / 2**20  # macOS reports bytes


def release_cached_memory(device: torch.device) -> None:
    """After a trial: hand the CUDA caching allocator's free blocks back to the device, so
    that trial 50 starts with the memory trial 1 had (nothing to do on a CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def describe_device(device: torch.device) -> str:
    """A human-readable device name for the `sgdtune.device` tag, e.g. 'cuda:0 (NVIDIA H200, GPU 2)' or
    'cpu (2 cores)': the cores this process may use; the torch threads of each trial are chosen
    per trial (threads.py) and recorded with it (trial user attribute torch_threads)."""
    if device.type == "cuda":
        from .gpus import gpu_label

        index = device.index if device.index is not None else torch.cuda.current_device()
        given = gpu_label()  # the physical GPU a worker was given (CUDA_VISIBLE_DEVICES)
        return f"cuda:{index} ({torch.cuda.get_device_name(index)}{', ' + given if given else ''})"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return f"cpu ({cores} cores)"


def resolve_device(name: str) -> torch.device:
    """The torch device for an experiment's `device` ('auto' = CUDA when there is one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("device", "must be one of 'auto', 'cpu' on this machine (no CUDA)", repr(name))
    if name == "mps" and not torch.backends.mps.is_available():
        raise InputError("device", "must be one of 'auto', 'cpu' on this machine (no MPS)", repr(name))
    return torch.device(name)
