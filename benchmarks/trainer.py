"""The trainer against a minimal PyTorch loop, and what its noise probe costs.

Same data (digits, split and standardized by sgdtune), same model (the default MLP,
64-128-10), same initial weights, same optimizer (SGD, momentum 0.9), same epochs. The
minimal loop is what a person writes by hand: tensors in memory, each epoch a randperm
and slices, no evaluation, no tracking. The two alternate epoch by epoch: the trainer's
`on_epoch` hook runs one epoch of the minimal loop, so each pair of epochs meets the same
machine load. Both are timed over the same span, the shuffle and the steps of one epoch:
the minimal loop with perf_counter around it, the trainer by its `epoch_time_s`, whose
timer brackets exactly that (its evaluation and noise probes are outside).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from sgdtune.data import DataConfig, Dataset, load_data
from sgdtune.model import ModelConfig, build_model
from sgdtune.trainer import TrainConfig, train

from .common import Check

GROUP = "trainer"
MODEL = ModelConfig(hidden=(128,))
LR, MOMENTUM, SEED = 0.05, 0.9, 0
EPOCHS = {8: 4, 64: 20, 1024: 100}  # epochs per round: ~0.3 s or more of steps each
TINY_EPOCHS = {8: 1, 64: 2, 1024: 3}


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


def trainer_config(batch_size: int, epochs: int, probe: bool) -> TrainConfig:
    extra = {} if probe else {"probe_size": 0}  # probe on: the defaults (probe_size, measure_every)
    return TrainConfig(batch_size=batch_size, epochs=epochs, lr=LR, momentum=MOMENTUM, seed=SEED, model=MODEL, **extra)


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
    checks, probe_fraction = [], {}
    for batch_size, n_epochs in epochs.items():
        interleaved(data, batch_size, 1)  # warm-up, not counted
        ratios = [r for _ in range(rounds) for r in interleaved(data, batch_size, n_epochs)]
        checks.append(Check(
            GROUP, f"examples/s vs minimal loop, B={batch_size}", statistics.median(ratios), 0.95, ">=", "x",
            f"median over {len(ratios)} alternated epoch pairs ({rounds} runs); noise probe off",
        ))
        fractions = []
        for _ in range(rounds):
            result = train(trainer_config(batch_size, n_epochs, probe=True), data)
            fractions.append(result.probe_time_s / result.compute_time_s)
        probe_fraction[batch_size] = (statistics.median(fractions), len(fractions))
    for batch_size, (fraction, n_runs) in probe_fraction.items():
        checks.append(Check(
            GROUP, f"noise probe time / step time, B={batch_size}", fraction, 0.10, "<=", "fraction",
            f"defaults: probe_size={defaults.probe_size}, measure_every={defaults.measure_every} (and an epoch "
            f"end {-(-defaults.measure_every // 10)}+ updates after the last probe); median of {n_runs} runs",
        ))
    return checks
