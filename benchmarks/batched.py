"""Stacked training (sgdtune.trainer.train_stacked) against training the same trials one by one.

K = 8 trials of the 64-256-256-10 MLP on digits (SGD, momentum 0.9, lr spread over a
decade, seeds 0-7, the default noise probe and evaluation), at B = 8 and B = 64. One round
trains the 8 trials with `train` one after another and once with `train_stacked`, timed end
to end (model building, steps, probes, evaluation); rounds alternate the order (A B, B A,
...) so both meet the same machine load, and the figure is the median of the per-round
ratios. Trials per minute = 8 x 60 / seconds.

Threads: every figure is measured twice, both sides given the same torch intra-op threads:
- 1 thread: one process per core, the way a study uses 2 cores with 2 workers (so the
  1-thread ratio is also the 2-core ratio of 2 workers each side), and the setting of the
  other benchmarks;
- 2 threads: one process using both cores, what a study runs without --workers on this
  2-core machine (torch's default). On a shared machine two threads wait on each other at
  every op when the other core is busy, so these figures swing with the machine's load:
  each row gives the 1-minute load average seen before it was measured.

The CNN group: the same, for the built-in CNN (model.name = "cnn": 8x8 digits as images,
convolutions 16-16 of stride 2, a 64-unit hidden layer), which train_stacked stacks through
torch.func (trainer/func_stacked.py), at one thread only.

    python -m benchmarks.batched [--tiny] [--threads N] [--rounds R] [--no-cnn]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

from sgdtune.data import DataConfig, load_data
from sgdtune.model import ModelConfig
from sgdtune.trainer import TrainConfig, train, train_stacked

GROUP = "batched"
K = 8
MODEL = ModelConfig(hidden=(256, 256))
CNN = ModelConfig(name="cnn", channels=(16, 16), kernel_size=3, hidden=(64,))
CNN_THREADS = 1
EPOCHS = {8: 2, 64: 10}  # ~200-400 updates per trial
TINY_EPOCHS = {8: 1, 64: 1}
THREADS = (1, 2)
LR_RANGE = (0.001, 0.01)  # at B = 8, times sqrt(B / 8): steady trials, so the equality figure means something


# Sharpness is measured member by member (one Lanczos run each, not stacked), the same on
# both sides: at the default (the end of every trial) it takes most of a 2-epoch trial's time
# and the figure would say more about it than about stacking. Off here, so the figure is
# what stacking buys the training; docs/performance.md gives the ratio with it on.
SHARPNESS_EVERY = 0


def configs(batch_size: int, epochs: int, k: int = K, model: ModelConfig = MODEL) -> list[TrainConfig]:
    lrs = np.geomspace(*LR_RANGE, k) * (batch_size / 8) ** 0.5
    return [TrainConfig(batch_size=batch_size, epochs=epochs, lr=float(lr), momentum=0.9, seed=seed, model=model,
                        sharpness_every=SHARPNESS_EVERY)
            for seed, lr in enumerate(lrs)]


def one_round(data, group: list[TrainConfig], stacked_first: bool) -> tuple[float, float, list, list]:
    """Seconds one by one, seconds stacked, and both result lists."""
    def alone():
        t0 = time.perf_counter()
        results = [train(c, data) for c in group]
        return time.perf_counter() - t0, results

    def together():
        t0 = time.perf_counter()
        results = train_stacked(group, data)
        return time.perf_counter() - t0, results

    if stacked_first:
        (t_stacked, stacked), (t_alone, single) = together(), alone()
    else:
        (t_alone, single), (t_stacked, stacked) = alone(), together()
    return t_alone, t_stacked, single, stacked


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def run(tiny: bool = False, rounds: int | None = None, threads: tuple[int, ...] = THREADS,
        cnn: bool = True) -> list[dict]:
    """The figures, as {group, name, value, target, op, unit, ok, detail} dicts: for each
    thread count, then each batch size, the trials/min ratio and the val_loss difference;
    then (cnn) the same for the CNN at CNN_THREADS. Leaves torch's thread count as it found it."""
    data = load_data(DataConfig(dataset="digits"), seed=0)
    rounds = rounds or (1 if tiny else 5)
    k = 4 if tiny else K
    out = []
    before = torch.get_num_threads()
    try:
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            for batch_size, epochs in (TINY_EPOCHS if tiny else EPOCHS).items():
                out += measure(data, configs(batch_size, epochs, k), rounds, n_threads)
        if cnn:
            torch.set_num_threads(CNN_THREADS)
            for batch_size, epochs in (TINY_EPOCHS if tiny else EPOCHS).items():
                out += measure(data, configs(batch_size, epochs, k, CNN), rounds, CNN_THREADS, "CNN ")
    finally:
        torch.set_num_threads(before)
    return out


def measure(data, group: list[TrainConfig], rounds: int, n_threads: int, what: str = "") -> list[dict]:
    """The two figures of one batch size at the current thread count."""
    batch_size, epochs, k = group[0].batch_size, group[0].epochs, len(group)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")  # not on Windows
    one_round(data, group[:2], stacked_first=False)  # warm-up: first calls allocate and load kernels
    alone_s, stacked_s, step_ratios, diffs = [], [], [], []
    for r in range(rounds):
        t_alone, t_stacked, single, stacked = one_round(data, group, stacked_first=r % 2 == 1)
        alone_s.append(t_alone)
        stacked_s.append(t_stacked)
        bad = [s for s in stacked if not hasattr(s, "final")]
        if bad:
            raise RuntimeError(f"a stacked member failed: {bad[0]!r}")
        step_ratios.append(sum(s.compute_time_s for s in single) / sum(s.compute_time_s for s in stacked))
        diffs.append(max(abs(a.final.val_loss - b.final.val_loss) for a, b in zip(single, stacked)))
    ratio = statistics.median(a / b for a, b in zip(alone_s, stacked_s))
    per_min = lambda ts: k * 60 / statistics.median(ts)  # noqa: E731
    where = f"{what}B={batch_size}, {plural(n_threads, 'thread')}"
    return [
        figure(
            f"trials/min stacked vs one by one, {where}", ratio, 3.0, ">=", "x",
            f"K={k}, {plural(epochs, 'epoch')}, sharpness off; "
            f"{per_min(stacked_s):.0f} vs {per_min(alone_s):.0f} trials/min; "
            f"step time only {statistics.median(step_ratios):.2f}x; median of {plural(rounds, 'alternated round')}; "
            f"load avg {load:.1f} before",
        ),
        figure(
            f"max |final val_loss stacked - alone|, {where}", max(diffs), 1e-4, "<=", "nats",
            f"over the {k} trials and {plural(rounds, 'round')} "
            f"(lr {group[0].lr:.3g}-{group[-1].lr:.3g}, momentum 0.9)",
        ),
    ]


def figure(name: str, value: float, target: float, op: str, unit: str, detail: str) -> dict:
    ok = value >= target if op == ">=" else value <= target
    return {"group": GROUP, "name": name, "value": float(value), "target": target, "op": op, "unit": unit,
            "ok": bool(ok), "detail": detail}


def print_table(rows: list[dict], title: str) -> None:
    print(title)
    print(f"{'figure':<58} {'value':>10} {'target':>9}  ok   how")
    for r in rows:
        value = f"{r['value']:.3g}{' ' + r['unit'] if r['unit'] else ''}"
        print(f"{r['name']:<58} {value:>10} {r['op'] + ' ' + format(r['target'], 'g'):>9}  "
              f"{'yes' if r['ok'] else 'NO ':<4} {r['detail']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.batched", description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny sizes, one round (CI): runs, not figures")
    p.add_argument("--threads", type=int, action="append",
                   help="torch intra-op threads, both sides; repeat for several (default: 1, then 2)")
    p.add_argument("--rounds", type=int, help="alternated rounds per batch size and thread count (default 5, tiny 1)")
    p.add_argument("--no-cnn", action="store_true", help="skip the CNN group (torch.func stacking)")
    args = p.parse_args(argv)
    if any(t < 1 for t in args.threads or ()):
        p.error(f"--threads: must be >= 1; got {min(args.threads)}")
    threads = tuple(args.threads or THREADS)
    rows = run(tiny=args.tiny, rounds=args.rounds, threads=threads, cnn=not args.no_cnn)
    tiny = " (--tiny: too small for the figures to mean anything)" if args.tiny else ""
    print_table(rows, f"stacked training, torch threads: {', '.join(map(str, threads))} (both sides){tiny}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
