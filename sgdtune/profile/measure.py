"""The device's hardware profile: the time and memory of one update of the study's model at
each batch size B, on the study's device, dtype and threads.

What it measures, per B: one update exactly as the trainer makes it (trainer.module_step's
ModuleStepper: gather the batch, forward, loss, backward, optimizer step), on torch's thread
count for that B (threads.py, as the trials choose it). WARMUP_STEPS untimed updates, then
between MIN_REPEATS and MAX_REPEATS timed ones: the median seconds per update and its
interquartile range (IQR), examples per second (B / median), and the peak memory of an
update (`peak_mem_mb`: on CUDA torch.cuda.max_memory_allocated, everything the process has
allocated on the device; on a CPU the bytes of the tensors one update holds: weights,
gradients, optimizer state, the batch and what autograd saves for the backward pass).

Which B: the powers of two from 1 up to the search's largest B, plus the B values the study
uses (a search's choices, the ends of a range, a fixed train.batch_size), ascending. B = 1
always runs (it is the reference of the flat range); a larger B runs only while
- the time budget (`budget_s`, seconds) allows its modelled cost (the last median scaled
  linearly with B), and
- its modelled memory (a line through the last two B's peaks) stays within MEMORY_MARGIN of
  the memory available (CPU: MemAvailable of /proc/meminfo; CUDA: free plus this process's
  own allocations), and on CUDA it did not run out of memory.
The first B refused ends the list: it and every larger B go to `skipped`, with the reason.
Only batch sizes that ran are reported: a size never tested is no evidence that it fits.

The two numbers the answer uses:
- `flat_up_to`: the largest B up to which every measured update takes at most FLAT_FACTOR
  times as long as one at B = 1 (medians): up to there a larger batch is almost free;
- `largest_batch_size`: the largest B that ran with its peak memory within MEMORY_MARGIN of
  the memory available.
A B larger than n_train is timed on rows of the training set repeated (a trial at such a B
trains on the whole set, B = n): the profile is a fact of the device, not of the data.

The result is cached as JSON in `<mlruns>/profiles/<key>.json` (profile/cache.py), the key
a sha256 of what the numbers depend on (device, model, input shape, dtype, threads, optimizer,
the B list and the budget; `key_sha256` in the profile), so that a resumed study does not time
it again; a study whose stores are both elsewhere keeps no cache file and reuses the profile it
recorded. What the console and the report say of a profile is in profile/words.py.

torch is imported inside the functions that measure: the words import this module's rules
(FLAT_FACTOR, MEMORY_MARGIN) for the report, which never loads torch, and
`python -m sgdtune.profile --help` stays quick.

Layer: profile (the device's hardware profile; docs/architecture.md).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cache import cache_path, key_digest, read_cached, write_atomically

if TYPE_CHECKING:
    import torch

    from ..config import ExperimentConfig
    from ..data import Dataset

VERSION = 1  # of the measurement; part of the cache key, so a changed method times again
DEFAULT_BUDGET_S = 10.0  # seconds the whole profile may take (B = 1 always runs)
WARMUP_STEPS = 3  # untimed updates per B: the first allocates gradients and optimizer state
MIN_REPEATS, MAX_REPEATS = 5, 30  # timed updates per B: as many as a share of the budget allows
MIN_BLOCK_S = 1e-3  # on an accelerator, updates are timed in blocks of at least this long (one sync each)
FLAT_FACTOR = 1.25  # "almost free": an update at most this many times as long as at B = 1
MEMORY_MARGIN = 0.8  # a B fits when its peak memory is at most this share of the memory available
PROFILE_LR = 1e-3  # the time of an update does not depend on lr; a small one keeps the weights finite
FLAT_RULE = (f"the largest B up to which every measured update takes at most {FLAT_FACTOR:g}x the median "
             "seconds per update of B = 1")
# Every profile has these keys (docs/records.md); the report draws one that has them all.
KEYS = ("device", "dtype", "threads", "model", "input_shape", "batch_size", "seconds_per_update",
        "seconds_per_update_iqr", "examples_per_second", "peak_mem_mb", "largest_batch_size", "flat_up_to",
        "flat_rule", "budget_s", "skipped", "cached")


# -- which batch sizes ------------------------------------------------------------------------


def study_batch_sizes(config: ExperimentConfig) -> list[int]:
    """The B values the study's trials use, as far as the experiment says: a search's choices,
    the powers of two of a stratified range, the two ends of another range, or train.batch_size."""
    rng = config.search.get("batch_size")
    if rng is None:
        return [config.train.batch_size]
    if rng.choices is not None:
        return sorted({int(c) for c in rng.choices})
    low, high = int(rng.low), int(rng.high)
    if rng.stratify:
        return [2 ** k for k in range(math.ceil(math.log2(low)), math.floor(math.log2(high)) + 1)]
    return sorted({low, high})


def batch_sizes_to_time(config: ExperimentConfig) -> list[int]:
    """Powers of two from 1 up to the study's largest B, with the study's own B values, ascending."""
    used = study_batch_sizes(config)
    powers = [2 ** k for k in range(int(math.log2(max(used))) + 1)]
    return sorted(set(powers) | set(used))


# -- the two numbers the answer uses ------------------------------------------------------------


def flat_up_to(batch_sizes: list[int], seconds: list[float]) -> int:
    """FLAT_RULE: the largest B such that every measured B up to it takes at most FLAT_FACTOR x
    the seconds per update at B = 1 (batch_sizes ascending, starting at 1)."""
    limit = FLAT_FACTOR * seconds[0]
    flat = batch_sizes[0]
    for b, s in zip(batch_sizes, seconds):
        if s > limit:
            break
        flat = b
    return flat


def largest_fitting(batch_sizes: list[int], peaks: list[float | None], available_mb: float | None) -> int:
    """The largest B that ran with its peak memory within MEMORY_MARGIN of `available_mb`
    (no limit known, or no peak measured: every B that ran fits); the smallest B if none does."""
    fits = [b for b, p in zip(batch_sizes, peaks)
            if available_mb is None or p is None or p <= MEMORY_MARGIN * available_mb]
    return max(fits) if fits else batch_sizes[0]


# -- measuring ---------------------------------------------------------------------------------


def profile_study(config: ExperimentConfig, data: Dataset, cache_dir: str | Path | None = None,
                  budget_s: float = DEFAULT_BUDGET_S, cores: int | None = None,
                  memory_limit_mb: float | None = None, recorded: dict | None = None) -> dict:
    """The profile of the study's model on data's device (a JSON-ready dict, module docstring):
    `recorded` (a study's earlier profile) or the one in `cache_dir` when either has the same
    key (`key_sha256`), else measured and stored in `cache_dir` (None: nowhere).

    cores: CPUs each trial may use (threads.py; None: this process's); memory_limit_mb: the
    memory available to an update (None: read from the system)."""
    from ..model import describe_model
    from ..threads import ThreadChooser
    from ..timing import describe_device

    device = data.x_train.device
    chooser = ThreadChooser(config.threads, cores)
    sizes = batch_sizes_to_time(config)
    step = step_settings(config)
    key = {"version": VERSION, "device": describe_device(device), "dtype": arithmetic(config, device),
           "model": describe_model(config.model, data.n_features, data.n_classes),
           "model_config": config.model.model_dump(mode="json"), "task": data.task,
           "input_shape": list(data.x_train.shape[1:]), "threads": config.threads,
           "cores": chooser.cores if config.threads == "auto" else None, "optimizer": step,
           "batch_sizes": sizes, "budget_s": budget_s, "memory_limit_mb": memory_limit_mb,
           "torch": _torch_version()}
    if recorded is not None and recorded.get("key_sha256") == key_digest(key):
        return {**recorded, "cached": True}
    path = cache_path(cache_dir, key) if cache_dir is not None else None
    if path is not None:
        cached = read_cached(path, key)
        if cached is not None:
            return cached
    profile = {**measure(config, data, sizes, chooser, budget_s, memory_limit_mb), "key_sha256": key_digest(key)}
    if path is not None:
        try:
            write_atomically(path, json.dumps({"key": key, "profile": profile}, indent=1, sort_keys=True) + "\n")
        except OSError:  # a full disk, a read-only folder: the cache only saves time, the profile stands
            pass
    return profile


def step_settings(config: ExperimentConfig) -> dict[str, Any]:
    """The optimizer an update steps: the experiment's, with momentum and weight decay at the
    top of their search range where searched (a momentum buffer or a decay term is extra work)."""
    train, search = config.train, config.search

    def top(name: str) -> float:
        rng = search.get(name)
        return getattr(train, name) if rng is None else max(rng.values())

    return {"optimizer": train.optimizer, "momentum": top("momentum"), "weight_decay": top("weight_decay")}


def measure(config: ExperimentConfig, data: Dataset, sizes: list[int], chooser, budget_s: float,
            memory_limit_mb: float | None = None) -> dict:
    """Time the sizes in ascending order within the budget and the memory (module docstring)."""
    import torch

    from ..model import build_model, describe_model
    from ..timing import describe_device
    from ..trainer.module_step import ModuleStepper

    device = data.x_train.device
    available = memory_limit_mb if memory_limit_mb is not None else available_memory_mb(device)
    settings = step_settings(config)
    train_config = config.train.model_copy(update={"lr": PROFILE_LR, "momentum": settings["momentum"],
                                                   "weight_decay": settings["weight_decay"]})
    model = build_model(config.model, data.n_features, data.n_classes, config.seed).to(device).train()
    stepper = ModuleStepper(model, train_config, PROFILE_LR, data.task)
    x, y = _rows(data, max(sizes))
    shuffle = torch.Generator(device=device).manual_seed(0)
    weights = sum(p.numel() for p in model.parameters())
    threads_before = torch.get_num_threads()
    out_of_memory = False

    ran: list[int] = []
    med: list[float] = []
    iqr: list[float] = []
    peaks: list[float | None] = []
    threads: list[int] = []
    skipped: dict[str, str] = {}
    share_s = budget_s / (2 * len(sizes))  # the timed repeats of each B: half the budget over all of them
    start = time.perf_counter()
    try:
        for i, b in enumerate(sizes):
            if ran:
                why = _refusal(b, ran, med, peaks, available, budget_s - (time.perf_counter() - start), budget_s)
                if why:
                    kind = why.split(":")[0]  # "time budget" or "memory"
                    skipped.update({str(s): why if s == b else f"{kind}: larger than B = {b}, which was not timed"
                                    for s in sizes[i:]})
                    break
            used_threads = chooser.apply(b * weights)
            try:
                seconds, peak = _time_updates(stepper, x, y, b, shuffle, share_s)
            except torch.cuda.OutOfMemoryError:
                out_of_memory = True
                skipped.update({str(s): f"out of memory on {device}" if s == b else
                                f"larger than B = {b}, which ran out of memory" for s in sizes[i:]})
                break
            ran.append(b)
            med.append(statistics.median(seconds))
            q = statistics.quantiles(seconds, n=4, method="inclusive")
            iqr.append(q[2] - q[0])
            peaks.append(peak)
            threads.append(used_threads)
    finally:
        torch.set_num_threads(threads_before)
    if out_of_memory:  # after the handler: its traceback no longer holds the failed update's tensors
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
    return {
        "device": describe_device(device), "dtype": arithmetic(config, device),
        "threads": config.threads if config.threads != "auto" else "auto per B", "threads_per_batch_size": threads,
        "model": describe_model(config.model, data.n_features, data.n_classes),
        "input_shape": list(data.x_train.shape[1:]), "batch_size": ran,
        "seconds_per_update": med, "seconds_per_update_iqr": iqr,
        "examples_per_second": [b / s for b, s in zip(ran, med)], "peak_mem_mb": peaks,
        "memory_available_mb": available, "largest_batch_size": largest_fitting(ran, peaks, available),
        "flat_up_to": flat_up_to(ran, med), "flat_rule": FLAT_RULE, "budget_s": budget_s,
        "elapsed_s": time.perf_counter() - start, "skipped": skipped, "cached": False,
    }


def _refusal(b: int, ran: list[int], med: list[float], peaks: list[float | None], available: float | None,
             left_s: float, budget_s: float) -> str | None:
    """Why B is not timed (the time budget, or the memory it would need), or None to time it."""
    need_s = (WARMUP_STEPS + 1 + MIN_REPEATS) * med[-1] * b / ran[-1]  # an update's time at most linear in B
    if need_s > left_s:
        return f"time budget: about {need_s:.2g} s needed, {max(left_s, 0):.2g} s of {budget_s:g} s left"
    if available is not None and peaks[-1] is not None:
        if len(ran) >= 2 and peaks[-2] is not None:  # a line through the last two
            per_example = max(0.0, (peaks[-1] - peaks[-2]) / (ran[-1] - ran[-2]))
            need_mb = peaks[-1] + per_example * (b - ran[-1])
        else:
            need_mb = peaks[-1] * b / ran[-1]
        if need_mb > MEMORY_MARGIN * available:
            return (f"memory: about {need_mb:.3g} MiB needed, more than {MEMORY_MARGIN:.0%} of the "
                    f"{available:.4g} MiB available")
    return None


def _time_updates(stepper, x: torch.Tensor, y: torch.Tensor, b: int, shuffle: torch.Generator,
                  share_s: float) -> tuple[list[float], float | None]:
    """Seconds per update of the timed repeats at batch size b, and the update's peak memory (MiB)."""
    import torch

    device = x.device
    sync = _synchronizer(device)
    n = x.shape[0]
    stepper.begin_epoch([torch.randperm(n, generator=shuffle, device=device)])
    starts = [0] if b >= n else list(range(0, n - b + 1, b))  # successive slices of the shuffled rows, as an epoch
    slot = 0

    def update() -> None:
        nonlocal slot
        start = starts[slot % len(starts)]
        slot += 1
        stepper.step(x, y, start, start + b)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    held = _held_by_one_update(stepper, update) if device.type == "cpu" else None  # also the first warm-up
    for _ in range(WARMUP_STEPS - (device.type == "cpu")):
        update()
    sync()
    t0 = time.perf_counter()
    update()
    sync()
    first = time.perf_counter() - t0
    block = 1 if device.type == "cpu" else max(1, min(64, math.ceil(MIN_BLOCK_S / max(first, 1e-9))))
    repeats = max(MIN_REPEATS, min(MAX_REPEATS, int(share_s / max(first * block, 1e-9))))
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(block):
            update()
        sync()
        seconds.append((time.perf_counter() - t0) / block)
    if device.type == "cuda":
        return seconds, torch.cuda.max_memory_allocated(device) / 2**20
    return seconds, held


def _held_by_one_update(stepper, update) -> float:
    """MiB of the tensors one update holds at once on a CPU: the weights, their gradients and
    the optimizer's state (after the update), and the tensors autograd saves for the backward
    pass (the batch among them; counted once per storage, the weights' own left out)."""
    import torch

    params = list(stepper.model.parameters())
    own = {p.untyped_storage().data_ptr() for p in params}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        update()
    state = [v for s in stepper.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    total = sum(p.nbytes for p in params) + sum(p.grad.nbytes for p in params if p.grad is not None)
    total += sum(t.nbytes for t in state) + sum(saved.values())
    return total / 2**20


def _rows(data: Dataset, largest: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training set, or its rows repeated up to `largest` when that is more (module docstring)."""
    import torch

    n = data.n_train
    if largest <= n:
        return data.x_train, data.y_train
    idx = torch.arange(largest, device=data.x_train.device) % n
    return data.x_train[idx], data.y_train[idx]


def _synchronizer(device: torch.device):
    """Waits for the device's queued work (accelerators run asynchronously), a no-op on a CPU."""
    import torch

    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None


def available_memory_mb(device: torch.device) -> float | None:
    """Memory an update may still take (MiB): on CUDA the free memory plus this process's own
    allocations, on a CPU MemAvailable of /proc/meminfo; None where neither is known."""
    import torch

    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return (free + torch.cuda.memory_allocated(device)) / 2**20
    if device.type != "cpu":
        return None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def arithmetic(config: ExperimentConfig, device: torch.device) -> str:
    """The `dtype` of a profile: float32 (data, weights, optimizer state), with the forward pass
    under bf16 or fp16 autocast where train.precision says so, and TF32 products on CUDA."""
    train = config.train
    dtype = {"bf16": "bfloat16 autocast", "fp16": "float16 autocast"}.get(train.precision, "float32")
    return dtype + (" (TF32 products)" if train.tf32 and device.type == "cuda" else "")


def _torch_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return "unknown"
