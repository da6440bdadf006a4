"""data.factory = "pkg.module:function": a user's Python function that gives the data.

The function is called once per process, as function(seed=SEED) when it has a parameter named
`seed` (else function()), with torch's and NumPy's global generators seeded from the study
seed around the call (and restored after), so that a function drawing from them gives the
same data every time. It may return

- (x, y): features (n, ...) and targets (n,), NumPy arrays or torch tensors; data.py splits
  them as it splits a file (seeded, stratified for classification);
- ready splits: {"train": (x, y), "val": (x, y)} and optionally "test": used as given;
- a map-style torch.utils.data.Dataset (len(ds), ds[i] = (x_i, y_i)): its items are read once
  and stacked into arrays (materialized), then split as (x, y).

Features of shape (n, F) are flat; (n, H, W) and (n, C, H, W) are images (data.py). The
materialized arrays must fit in MEMORY_SHARE of the memory free on the training device (the
GPU's, or the machine's available RAM for the CPU) when the study starts: the whole data set
then sits on the device once and every epoch slices it (no DataLoader). A Dataset's size is
estimated from its first item before anything else is read; the error names it.

Layer: base (shared by every layer above; docs/architecture.md).
"""

from __future__ import annotations

import inspect
import os
from typing import Any

import numpy as np
import torch

from .errors import InputError
from .factories import resolve_factory

MEMORY_SHARE = 0.5  # of the device's free memory: the data, and room left for the model and its steps
SPLITS = ("train", "val", "test")


def free_memory(device: torch.device | str) -> int:
    """Bytes free on `device`: cudaMemGetInfo's free for a GPU, the available RAM otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no sysconf (macOS lacks AVPHYS): no limit known
        return 1 << 62


def check_fits(n: int, example_shape: tuple[int, ...], device: torch.device | str, spec: str) -> None:
    """InputError naming the size when n examples of float32 features (and int64 targets) would
    take more than MEMORY_SHARE of what is free on the device."""
    need = n * (4 * int(np.prod(example_shape, dtype=np.int64)) + 8)
    limit = int(MEMORY_SHARE * free_memory(device))
    if need > limit:
        shape = " x ".join(str(d) for d in (n, *example_shape))
        raise InputError("data.factory", f"must give data that fits on the device once: at most {limit / 1e9:.2f} GB "
                         f"({MEMORY_SHARE:.0%} of the memory free on {torch.device(device)})",
                         f"{spec!r}: {shape} float32 features = {need / 1e9:.2f} GB")


def call_data_factory(spec: str, seed: int, device: torch.device | str = "cpu") -> dict[str, tuple[Any, Any]]:
    """The factory's data as NumPy arrays: {"all": (x, y)}, or {"train", "val"[, "test"]: (x, y)}
    for ready splits. InputError for a return value of another kind, or data too large."""
    try:
        fn = resolve_factory(spec)
    except ValueError as e:
        raise InputError("data.factory", str(e).split("; got")[0], repr(spec)) from None
    takes_seed = "seed" in inspect.signature(fn).parameters
    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed)
            out = fn(seed=seed) if takes_seed else fn()
    finally:
        np.random.set_state(numpy_state)
    if isinstance(out, dict):
        missing = [s for s in SPLITS[:2] if s not in out]
        unknown = [k for k in out if k not in SPLITS]
        if missing or unknown:
            raise InputError("data.factory", 'ready splits must be a dict {"train": (x, y), "val": (x, y)} with an '
                             'optional "test"', f"{spec!r} returned the keys {sorted(map(str, out))}")
        parts = {name: _pair(out[name], spec, name) for name in SPLITS if name in out}
    elif isinstance(out, (tuple, list)):
        parts = {"all": _pair(out, spec, "data")}
    elif hasattr(out, "__getitem__") and hasattr(out, "__len__") and not isinstance(out, (str, bytes, np.ndarray)):
        return {"all": materialize(out, spec, device)}  # checked before it was read
    else:
        raise InputError("data.factory", "must return (x, y), ready splits {'train': (x, y), 'val': (x, y)[, "
                         "'test': ...]}, or a map-style torch.utils.data.Dataset", f"{spec!r} returned "
                         f"{type(out).__name__}")
    n = sum(x.shape[0] for x, _ in parts.values())
    check_fits(n, tuple(next(iter(parts.values()))[0].shape[1:]), device, spec)
    return parts


def materialize(dataset, spec: str, device: torch.device | str) -> tuple[np.ndarray, np.ndarray]:
    """A map-style Dataset's items, dataset[0..n-1] = (x_i, y_i), stacked into (x, y) arrays;
    the size is checked (check_fits) from the first item before the others are read."""
    n = len(dataset)
    if n == 0:
        raise InputError("data.factory", "must give at least one example", f"{spec!r}: an empty Dataset")
    first = _pair(dataset[0], spec, "item 0", batch=False)
    check_fits(n, tuple(first[0].shape), device, spec)
    x = np.empty((n, *first[0].shape), dtype=np.float32)
    y = np.empty(n, dtype=first[1].dtype)
    for i in range(n):
        xi, yi = first if i == 0 else _pair(dataset[i], spec, f"item {i}", batch=False)
        if xi.shape != first[0].shape:
            raise InputError("data.factory", f"every item's features must have the first item's shape "
                             f"{tuple(first[0].shape)}", f"{tuple(xi.shape)} at item {i} of {spec!r}")
        x[i], y[i] = xi, yi
    return x, y


def _pair(value: Any, spec: str, where: str, batch: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) as NumPy arrays from a pair of arrays, tensors or numbers."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise InputError("data.factory", "must give (x, y) pairs of features and targets",
                         f"{type(value).__name__} for {where} of {spec!r}")
    x, y = (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for v in value)
    if not batch:
        return x, y
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if x.ndim < 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise InputError("data.factory", "must give features (n, ...) and one target per example (n,)",
                         f"features of shape {x.shape} and targets of shape {y.shape} for {where} of {spec!r}")
    if not (x.dtype == np.bool_ or np.issubdtype(x.dtype, np.number)):
        raise InputError("data.factory", "features must be numbers", f"dtype {x.dtype} for {where} of {spec!r}")
    x = x.astype(np.float32, copy=False)
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        raise InputError("data.factory", "every feature must be a finite float32 number",
                         f"{x[tuple(bad[0])]!r} at example {bad[0][0] + 1} of {where} of {spec!r}")
    return x, y
