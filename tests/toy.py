"""The toy classification data and the small TrainConfig that the trainer's tests share
(tests/unit/trainer/test_loop.py, test_precision.py, tests/unit/test_gpus.py)."""

import torch

from sgdtune.data import Dataset
from sgdtune.model import ModelConfig
from sgdtune.trainer import TrainConfig


def make_data(n: int = 60, d: int = 4, k: int = 3, seed: int = 0, n_val: int = 12) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + n_val, d, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    y = y.clamp(max=k - 1)
    return Dataset("toy", x[:n], y[:n], x[n:], y[n:], n_classes=k)


def cfg(**kw) -> TrainConfig:
    base = dict(batch_size=8, lr=0.1, momentum=0.0, epochs=1, probe_size=0, sharpness_every=0,
                model=ModelConfig(hidden=()))
    return TrainConfig(**{**base, **kw})
