"""One trial per GPU: which GPU each worker process of `--workers N --device cuda` sees.

Each worker gets one GPU through CUDA_VISIBLE_DEVICES, set in the worker before CUDA starts,
so that its `cuda` is `cuda:0` and it cannot touch another worker's memory. `--gpus 0,2,3`
chooses among the GPUs this process sees (indices into its CUDA_VISIBLE_DEVICES, or into all
of the machine's when that is unset); a GPU listed twice (`--gpus 0,0,1,1`) runs two trials at
once. Workers take the listed slots in turn. Standard library only: the plan is made before
torch loads, and tested with any list of devices.

Layer: base (shared by every layer above; docs/architecture.md).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from .errors import InputError

VISIBLE = "CUDA_VISIBLE_DEVICES"


def visible_gpus(count: int, env: Mapping[str, str] = os.environ) -> list[str]:
    """The names CUDA_VISIBLE_DEVICES would need for each of the `count` GPUs this process
    sees: its own entries (indices or UUIDs) when it is set, else 0 .. count - 1."""
    given = env.get(VISIBLE)
    if given is None:
        return [str(i) for i in range(count)]
    names = [name.strip() for name in given.split(",") if name.strip()]
    return names[:count]


def parse_gpus(text: str) -> list[int]:
    """`--gpus 0,2,3` as indices (a repeated index is a second slot on that GPU)."""
    items = [item.strip() for item in text.split(",")]
    if not items or not all(item.isdigit() for item in items):
        raise InputError("--gpus", "must be a comma-separated list of GPU indices such as 0,2,3 (repeat an index "
                         "to run several trials on one GPU: 0,0,1,1)", repr(text))
    return [int(item) for item in items]


def worker_gpus(workers: int, visible: Sequence[str], chosen: Sequence[int] | None = None) -> list[str]:
    """The CUDA_VISIBLE_DEVICES value of each of `workers` workers: the chosen slots (default:
    every visible GPU once), taken in turn."""
    if not visible:
        raise InputError("--gpus", "needs a CUDA device; this machine has none visible", "no GPU")
    slots = list(range(len(visible))) if chosen is None else list(chosen)
    unknown = [i for i in slots if i >= len(visible)]
    if unknown:
        raise InputError("--gpus", f"must name GPUs 0-{len(visible) - 1} (this process sees {len(visible)}: "
                         f"{','.join(visible)})", ",".join(map(str, slots)))
    return [visible[slots[i % len(slots)]] for i in range(workers)]


def use_gpu(name: str) -> None:
    """Make this process see one GPU only (call before CUDA is initialised)."""
    os.environ[VISIBLE] = name


def gpu_label() -> str:
    """The physical GPU this process was given, for `sgdtune.device` ('' when none was)."""
    name = os.environ.get(VISIBLE, "")
    return f"GPU {name}" if name and "," not in name else ""
