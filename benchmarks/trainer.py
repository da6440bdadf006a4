"""The trainer against a minimal PyTorch loop, and what its measurements cost.

Same data (digits, split and standardized by sgdtune), same model (the default MLP,
64-128-10), same initial weights, same optimizer (SGD, momentum 0.9), same epochs. The
minimal loop is what a person writes by hand: tensors in memory, each epoch a randperm
and slices, no evaluation, no tracking. The two alternate epoch by epoch: the trainer's
`on_epoch` hook runs one epoch of the minimal loop, so each pair of epochs meets the same
machine load. Both are timed over the same span, the shuffle and the steps of one epoch:
the minimal loop with perf_counter around it, the trainer by its `epoch_time_s`, whose
timer brackets exactly that (its evaluation and noise probes are outside).

The measurements at their defaults (probe_size and measure_every_epochs "auto",
sharpness_every 50; docs/science.md, sections 3 and 7) are timed apart from the steps:
noise_probe_time_s / compute_time_s and sharpness_time_s / compute_time_s, side by side, on
the epoch budgets above and on a critical_batch-like trial that stops at its target; so is
B_noise (curvature_time_s; docs/science.md, section 3b), and one B_noise measurement on the
whole digits training set is timed against one B_simple probe and one B = 64 step.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from sgdtune.data import DataConfig, Dataset, load_data
from sgdtune.model import ModelConfig, build_model
from sgdtune.science.curvature_noise import curvature_noise_estimate
from sgdtune.science.noise import noise_scale_estimate
from sgdtune.trainer import TrainConfig, train

from .common import Check

GROUP = "trainer"
MODEL = ModelConfig(hidden=(128,))
LR, MOMENTUM, SEED = 0.05, 0.9, 0
EPOCHS = {8: 4, 64: 20, 1024: 100}  # epochs per round: ~0.3 s or more of steps each
TINY_EPOCHS = {8: 1, 64: 2, 1024: 3}
# A trial long enough that measure_share's budget covers a sharpness measurement (on a halved probe):
# the sharpness cost model checked against time (the budgets above leave sharpness out on digits).
SHARPNESS_EPOCHS, TINY_SHARPNESS_EPOCHS = 12, 2


class MinimalLoop:
    """A hand-written training loop over tensors, one epoch per call."""

    def __init__(self, data: Dataset, batch_size: int):
        self.x, self.y, self.n, self.batch_size = data.x_train, data.y_train, data.n_train, batch_size
        self.model = build_model(MODEL, data.n_features, data.n_classes, SEED).train()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)
        self.generator = torch.Generator().manual_seed(SEED)

    def epoch(self) -> float:
        """Seconds for one epoch: shuffle, then every mini-batch step."""
        x, y, b, model, optimizer = self.x, self.y, self.batch_size, self.model, self.optimizer
        t0 = time.perf_counter()
        order = torch.randperm(self.n, generator=self.generator)
        for start in range(0, self.n, b):
            idx = order[start : start + b]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - t0

B_NOISE_SAMPLES = 32  # train.b_noise_samples in critical_batch.toml and linear_regression.toml (off by default)


def trainer_config(batch_size: int, epochs: int, probe: bool) -> TrainConfig:
    # probe on: the defaults (probe_size, measure_every_epochs, sharpness_every, sharpness_size)
    extra = {} if probe else {"probe_size": 0, "sharpness_every": 0}
    return TrainConfig(batch_size=batch_size, epochs=epochs, lr=LR, momentum=MOMENTUM, seed=SEED, model=MODEL, **extra)


def target_config(batch_size: int) -> TrainConfig:
    """A trial of experiments/critical_batch.toml: to 95% val_acc, checked every 5 updates, then stop."""
    return TrainConfig(batch_size=batch_size, lr=0.1, momentum=MOMENTUM, budget="updates", updates=1500, epochs=None,
                       target_val_acc=0.95, target_every=5, stop_at_target=True, seed=SEED, model=MODEL)


def measurement_time_s(r) -> float:
    """Every measurement of a trial: noise probes, sharpness, B_noise, the end-of-training evaluations
    (train subset, test, fixed-model loss noise). eval_time_s is 0 where the trainer did not time them."""
    return r.probe_time_s + r.sharpness_time_s + r.curvature_time_s + getattr(r, "eval_time_s", 0.0)


def cost_checks(label: str, results: list, note: str) -> list[Check]:
    """Noise-probe, sharpness, B_noise, end-of-training evaluation time and all of them together
    over step time, medians over `results`, side by side."""
    noise = statistics.median(r.probe_time_s / r.compute_time_s for r in results)
    sharp = statistics.median(r.sharpness_time_s / r.compute_time_s for r in results)
    curvature = statistics.median(r.curvature_time_s / r.compute_time_s for r in results)
    evals = statistics.median(getattr(r, "eval_time_s", 0.0) / r.compute_time_s for r in results)
    together = statistics.median(measurement_time_s(r) / r.compute_time_s for r in results)
    return [
        Check(GROUP, f"every measurement / step time, {label}", together, 0.05, "<=", "fraction",
              f"{note}; noise probes + sharpness + B_noise + end-of-training evaluations; "
              f"median of {len(results)} runs"),
        Check(GROUP, f"end-of-training evaluations / step time, {label}", evals, None, "", "fraction",
              f"{note}; train subset, test and fixed-model loss noise; median of {len(results)} runs"),
        Check(GROUP, f"noise probe time / step time, {label}", noise, 0.10, "<=", "fraction",
              f"{note}; median of {len(results)} runs"),
        Check(GROUP, f"sharpness time / step time, {label}", sharp, None, "", "fraction",
              f"{note}; median of {len(results)} runs (context: no target)"),
        Check(GROUP, f"B_noise time / step time, {label}", curvature, None, "", "fraction",
              f"{note}; median of {len(results)} runs (context: no target)"),
    ]


def measurement_checks(data: Dataset, rounds: int) -> list[Check]:
    """One B_noise measurement (b_noise_samples = 32, as the experiments that turn it on use; the
    whole training set) against one B_simple probe and one B = 64 SGD step, alternated, on the
    default MLP at its initial weights."""
    model = build_model(MODEL, data.n_features, data.n_classes, SEED)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: every round at the same weights
    x, y, n = data.x_train, data.y_train, data.n_train
    samples = B_NOISE_SAMPLES
    times: dict[str, list[float]] = {"b_noise": [], "b_simple": [], "step": []}
    for _ in range(rounds + 1):  # the first round warms up, not counted
        t0 = time.perf_counter()
        est = noise_scale_estimate(model, F.cross_entropy, x, y, population=n)
        t1 = time.perf_counter()
        curvature_noise_estimate(model, F.cross_entropy, x, y, est.grad_sq_norm, population=n, samples=samples)
        t2 = time.perf_counter()
        for start in range(0, 64 * 20, 64):
            loss = F.cross_entropy(model(x[start:start + 64]), y[start:start + 64])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        t3 = time.perf_counter()
        for key, value in (("b_simple", t1 - t0), ("b_noise", t2 - t1), ("step", (t3 - t2) / 20)):
            times[key].append(value)
    ms = {k: 1000 * statistics.median(v[1:]) for k, v in times.items()}
    detail = f"digits, {n} examples, default MLP, {samples} Hutchinson samples; median of {rounds} alternated rounds"
    return [
        Check(GROUP, "B_noise measurement, ms", ms["b_noise"], None, "", "ms", detail),
        Check(GROUP, "B_noise measurement / B_simple probe", ms["b_noise"] / ms["b_simple"], None, "", "x", detail),
        Check(GROUP, "B_noise measurement / one B=64 step", ms["b_noise"] / ms["step"], None, "", "x", detail),
    ]


def interleaved(data: Dataset, batch_size: int, epochs: int) -> list[float]:
    """Per-epoch ratios: minimal-loop seconds / trainer seconds (= examples/s ratio)."""
    loop = MinimalLoop(data, batch_size)
    minimal: list[float] = []
    result = train(trainer_config(batch_size, epochs, probe=False), data,
                   on_epoch=lambda m: minimal.append(loop.epoch()))
    return [m / t.epoch_time_s for m, t in zip(minimal, result.history)]


def run(tiny: bool = False) -> list[Check]:
    data = load_data(DataConfig(dataset="digits"), seed=0)
    rounds = 1 if tiny else 5
    epochs = TINY_EPOCHS if tiny else EPOCHS
    defaults = TrainConfig()
    note = (f"defaults: measure_share={defaults.measure_share!r}, probe_size={defaults.probe_size!r}, "
            f"measure_every_epochs={defaults.measure_every_epochs!r}, "
            f"sharpness_every={defaults.sharpness_every}, sharpness_size={defaults.sharpness_size}")
    checks, costs = [], []
    for batch_size, n_epochs in epochs.items():
        interleaved(data, batch_size, 1)  # warm-up, not counted
        ratios = [r for _ in range(rounds) for r in interleaved(data, batch_size, n_epochs)]
        checks.append(Check(
            GROUP, f"examples/s vs minimal loop, B={batch_size}", statistics.median(ratios), 0.95, ">=", "x",
            f"median over {len(ratios)} alternated epoch pairs ({rounds} runs); measurements off",
        ))
        results = [train(trainer_config(batch_size, n_epochs, probe=True), data) for _ in range(rounds)]
        costs += cost_checks(f"B={batch_size}, {n_epochs} epochs", results, note)
    n_epochs = TINY_SHARPNESS_EPOCHS if tiny else SHARPNESS_EPOCHS
    results = [train(trainer_config(8, n_epochs, probe=True), data) for _ in range(rounds)]
    measured = sum(r.final.sharpness is not None for r in results)
    costs += cost_checks(f"B=8, {n_epochs} epochs, with sharpness", results,
                         f"{note}; sharpness measured at the end in {measured} of {len(results)} runs")
    for batch_size in (64,) if tiny else (64, 512):
        results = [train(target_config(batch_size), data) for _ in range(rounds)]
        stopped = statistics.median(r.final.updates for r in results)
        costs += cost_checks(f"to 95% then stop, B={batch_size}", results,
                             f"{note}; critical_batch.toml's trial, {stopped:.0f} updates: its end-of-trial "
                             "measurements within measure_share of ~1.3 epochs of steps")
    # critical_batch.toml turns B_noise on: its share is a row of its own (off by default).
    with_b_noise = target_config(64).model_copy(update={"b_noise_samples": B_NOISE_SAMPLES})
    results = [train(with_b_noise, data) for _ in range(rounds)]
    costs += cost_checks(f"to 95% then stop, B=64, b_noise_samples={B_NOISE_SAMPLES}", results,
                         f"{note}; critical_batch.toml's trial with its B_noise on")
    return checks + costs + measurement_checks(data, rounds)
