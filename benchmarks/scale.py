"""10^6 x 64 synthetic examples: peak memory, and time per epoch against a minimal loop.

Each side runs in its own process (`python -m benchmarks.scale --worker ...`); a process
measures both batch sizes, starting a new high-water mark before each (Linux's
/proc/self/clear_refs; elsewhere one process per measurement). The baseline is the
resident set after the imports and a tiny warm-up run (torch's lazy imports, the
allocator's first arenas); the figure is the high-water mark (VmHWM) minus that baseline,
so it covers loading the data (generate, split, standardize) and training. The allowance
is twice the tensors (features and labels, train and validation) plus the model with its
gradients and momentum.

The sgdtune side is `load_data` + `train` (one epoch: its evaluation and noise probes
included); the minimal side is the same `load_data` + a hand-written loop (randperm and
slices). One epoch at B = 1024, and one full-batch step (B >= n).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from .common import Check

GROUP = "scale"
N_FULL, N_TINY = 1_000_000, 20_000
N_FEATURES = 64
HIDDEN = (128,)
MIB = 2**20


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_mib() -> float:
    """Current resident set (VmRSS), else the peak where /proc is missing."""
    kib = _status_kib("VmRSS")
    return kib / 1024 if kib is not None else peak_mib()


def reset_peak() -> bool:
    """Start a new high-water mark (Linux: /proc/self/clear_refs); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_mib() -> float:
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if sys.platform == "darwin":
            kib //= 1024  # bytes there
    return kib / 1024


def worker(kind: str, n: int, batches: list[str]) -> list[dict]:
    """Measurements in this process, one per batch: load, train one epoch, time and memory.

    Each starts a new high-water mark, so a second one is not the first's peak again.
    """
    import gc

    import torch
    import torch.nn.functional as F

    from sgdtune.data import DataConfig, load_data
    from sgdtune.model import ModelConfig, build_model
    from sgdtune.trainer import TrainConfig, train

    model_config = ModelConfig(hidden=HIDDEN)

    def minimal_epoch(data, batch_size: int) -> None:
        x, y, m = data.x_train, data.y_train, data.n_train
        model = build_model(model_config, data.n_features, data.n_classes, 0).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        order = torch.randperm(m, generator=torch.Generator().manual_seed(0))
        for start in range(0, m, batch_size):
            idx = order[start : start + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def sgdtune_epoch(data, batch_size: int) -> None:
        train(TrainConfig(batch_size=batch_size, epochs=1, lr=0.05, momentum=0.9, model=model_config), data)

    run_epoch = sgdtune_epoch if kind == "sgdtune" else minimal_epoch
    warm = load_data(DataConfig(dataset="synthetic", n_samples=200, n_features=N_FEATURES), seed=0)
    run_epoch(warm, 64)  # lazy imports and first allocations, before the baseline
    del warm
    out = []
    for batch in batches:
        gc.collect()
        reset_peak()
        baseline = rss_mib()
        data = load_data(DataConfig(dataset="synthetic", n_samples=n, n_features=N_FEATURES), seed=0)
        batch_size = data.n_train if batch == "full" else int(batch)
        t0 = time.perf_counter()
        run_epoch(data, batch_size)
        seconds = time.perf_counter() - t0
        peak = peak_mib() - baseline
        tensors = sum(t.numel() * t.element_size() for t in (data.x_train, data.y_train, data.x_val, data.y_val))
        model = build_model(model_config, data.n_features, data.n_classes, 0)
        model_bytes = 3 * sum(p.numel() * p.element_size() for p in model.parameters())  # + grads, momentum
        out.append({"kind": kind, "batch": batch, "seconds": seconds, "peak_mib": peak,
                    "tensors_mib": tensors / MIB, "model_mib": model_bytes / MIB})
        del data, model
    return out


def measure(kind: str, n: int, batches: list[str]) -> dict[str, dict]:
    """{batch: measurement} from a fresh process (one per batch where peaks cannot be reset)."""
    groups = [batches] if reset_peak() else [[b] for b in batches]
    found = {}
    for group in groups:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.scale", "--worker", kind, "--n", str(n), "--batch", ",".join(group)],
            capture_output=True, text=True, timeout=900, env=os.environ.copy(),
        )
        if out.returncode != 0:
            raise RuntimeError(f"benchmarks.scale worker {kind} {group} failed:\n{out.stderr[-3000:]}")
        found.update({m["batch"]: m for m in json.loads(out.stdout.strip().splitlines()[-1])})
    return found


def run(tiny: bool = False) -> list[Check]:
    n = N_TINY if tiny else N_FULL
    rounds = 1 if tiny else 3
    batches = {"1024": "one epoch at B=1024", "full": "one full-batch step"}
    runs: dict[str, list[dict]] = {"sgdtune": [], "minimal": []}
    for r in range(rounds):
        for kind in ("sgdtune", "minimal") if r % 2 == 0 else ("minimal", "sgdtune"):
            runs[kind].append(measure(kind, n, list(batches)))
    checks = []
    for batch, label in batches.items():
        ours = [m[batch] for m in runs["sgdtune"]]
        theirs = [m[batch] for m in runs["minimal"]]
        allowance = 2 * ours[0]["tensors_mib"] + ours[0]["model_mib"]
        peak = statistics.median(m["peak_mib"] for m in ours)
        checks.append(Check(
            GROUP, f"peak memory / (2 x tensors + model), {label}", peak / allowance, 1.0, "<=", "x",
            f"n={n:,}x{N_FEATURES}: peak {peak:.0f} MiB over baseline, tensors {ours[0]['tensors_mib']:.0f} MiB; "
            f"minimal loop {statistics.median(m['peak_mib'] for m in theirs):.0f} MiB; median of {rounds}",
        ))
        ratios = [a["seconds"] / b["seconds"] for a, b in zip(ours, theirs)]
        checks.append(Check(
            GROUP, f"time / minimal loop, {label}", statistics.median(ratios), 1.2, "<=", "x",
            f"train() with its evaluation and probes vs randperm + slices; median of {rounds} paired processes "
            f"({statistics.median(a['seconds'] for a in ours):.2f} s vs "
            f"{statistics.median(b['seconds'] for b in theirs):.2f} s)",
        ))
    return checks


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale", description="one scale measurement (internal)")
    p.add_argument("--worker", choices=("sgdtune", "minimal"), required=True)
    p.add_argument("--n", type=int, default=N_FULL)
    p.add_argument("--batch", default="1024,full", help="comma-separated batch sizes, or 'full'")
    args = p.parse_args()
    print(json.dumps(worker(args.worker, args.n, args.batch.split(","))))


if __name__ == "__main__":
    main()
