"""Model builders: a plain MLP, a small CNN (1-D sequences or square images), or a user's
factory "pkg.module:function".

Layer: base (shared by every layer above; docs/architecture.md).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from .errors import InputError
from .factories import ImportableFactory, resolve_factory

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


class ModelConfig(BaseModel):
    """[model] of an experiment file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["mlp", "cnn"] = Field(
        default="mlp",
        description="mlp: Linear layers; cnn: convolutions (stride 2, no BatchNorm) then the hidden Linear "
        "layers and a Linear head, on 1-D sequences or, when n_features is a square (digits: 64), square images",
    )
    hidden: tuple[int, ...] = Field(
        default=(128,), description="hidden layer widths, each >= 1; [] = a linear model (one nn.Linear, with a "
        "bias); for the cnn, the Linear layers between the convolutions and the head")
    channels: tuple[int, ...] = Field(default=(32, 32, 32),
                                      description="cnn only: the convolutions' widths, one or more, each >= 1")
    kernel_size: int = Field(default=5, ge=1, description="cnn only: kernel size (padding kernel_size // 2)")
    stride: int = Field(default=2, ge=1, description="cnn only: every convolution's stride")
    image: Literal["auto", "1d", "2d"] = Field(
        default="auto", description="cnn only: 1d (sequences), 2d (square images) or auto: 2d when n_features is a "
        "perfect square (digits: 64 = 8x8), else 1d (MNIST-1D: 40)")
    activation: Literal["relu", "tanh", "gelu"] = Field(
        default="relu", description="the nonlinearity after every hidden Linear layer and every convolution")
    factory: ImportableFactory = Field(
        default=None,
        description='"pkg.module:function", called as function(n_features, n_classes) -> nn.Module, its input '
        "(B, n_features) float32 (images flattened); imported when the experiment is read, from the experiment "
        "file's folder, the working directory or sys.path (the folder it came from is kept with every saved model)",
    )

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, hidden: tuple[int, ...]) -> tuple[int, ...]:
        if any(w < 1 for w in hidden):
            raise ValueError(f"every hidden width must be >= 1; got {list(hidden)}")
        return hidden

    @field_validator("channels")
    @classmethod
    def _positive_channels(cls, channels: tuple[int, ...]) -> tuple[int, ...]:
        if not channels or any(c < 1 for c in channels):
            raise ValueError(f"must be one or more widths >= 1; got {list(channels)}")
        return channels


def describe_model(config: ModelConfig, n_features: int, n_classes: int,
                   input_shape: tuple[int, ...] | None = None) -> str:
    """The `model` param: 'mlp(64-128-10,relu)', 'linear(64-10)' when there is no hidden
    layer (the activation plays no part), 'cnn2d(3x8x8-32-32-10,relu)', or the factory string."""
    if config.factory:
        return config.factory
    if config.name == "cnn":
        dims, shape = cnn_input(config, n_features, input_shape)
        widths = "-".join(str(w) for w in (*config.channels, *config.hidden, n_classes))
        return f"cnn{dims}({'x'.join(str(d) for d in shape)}-{widths},{config.activation})"
    widths = "-".join(str(w) for w in (n_features, *config.hidden, n_classes))
    if not config.hidden:
        return f"linear({widths})"
    return f"mlp({widths},{config.activation})"


def build_model(config: ModelConfig, n_features: int, n_classes: int, seed: int,
                input_shape: tuple[int, ...] | None = None) -> nn.Module:
    """A freshly initialized model; the initial weights depend on `seed` alone. Its input is
    (B, n_features) float32; images (input_shape = (C, H, W), C * H * W = n_features) come
    flattened, and the CNN puts their shape back.

    The MLP is nn.Sequential of Linear layers (each with a bias) and activations, the last
    Linear giving n_classes outputs (1 for regression). With hidden = () it is one
    nn.Linear(n_features, n_classes): a linear model z = W x + b, bias included (torch's
    default initialization, uniform in +-1/sqrt(n_features) for W and b).

    The CNN (model.name = "cnn") is the MNIST-1D paper's shape: len(channels) convolutions of
    kernel_size, stride and padding kernel_size // 2, each followed by the activation, then the
    `hidden` Linear layers and a Linear head. No BatchNorm: it would couple the examples of a
    batch, and the noise probe needs per-example gradients. On images of C channels the first
    convolution takes C input channels.

    Initialization draws from torch's global generator, so it is forked and seeded here
    rather than left to whatever ran before.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if config.factory:
            return resolve_factory(config.factory)(n_features, n_classes)
        if config.name == "cnn":
            return CNN(config, n_features, n_classes, input_shape)
        layers: list[nn.Module] = []
        width = n_features
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), ACTIVATIONS[config.activation]()]
            width = hidden
        layers.append(nn.Linear(width, n_classes))
        return nn.Sequential(*layers)


class Standardize(nn.Module):
    """(x - mean) / std per feature, with fixed statistics (buffers, not parameters): put in
    front of a trained network, it takes features as they come in the data file (images
    (n, C, H, W) are flattened first)."""

    def __init__(self, mean: list[float], std: list[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) - self.mean) / self.std


def cnn_input(config: ModelConfig, n_features: int,
              input_shape: tuple[int, ...] | None = None) -> tuple[str, tuple[int, ...]]:
    """The CNN's view of one example: ('2d', (C, H, W)) for images (the data's input_shape, or
    (1, s, s) when n_features = s * s), ('1d', (1, n)) for sequences. InputError, showing the
    shape, when model.image = '2d' and the features are neither."""
    if input_shape is not None and config.image != "1d":
        return "2d", tuple(input_shape)
    side = math.isqrt(n_features)
    square = side > 1 and side * side == n_features
    if config.image == "2d" and not square:
        raise InputError("model.image", "'2d' needs images: features of shape N x C x H x W or N x H x W (an .npz "
                         "array, or a data.factory), or N x n_features with n_features a perfect square (one channel)",
                         f"features of shape N x {n_features}")
    if config.image == "2d" or (config.image == "auto" and square):
        return "2d", (1, side, side)
    return "1d", (1, n_features)


class CNN(nn.Module):
    """Convolutions on (B, C, H, W) images or (B, 1, n) sequences, given flat as (B, n_features)."""

    def __init__(self, config: ModelConfig, n_features: int, n_classes: int,
                 input_shape: tuple[int, ...] | None = None):
        super().__init__()
        dims, self.shape = cnn_input(config, n_features, input_shape)
        conv = nn.Conv2d if dims == "2d" else nn.Conv1d
        layers: list[nn.Module] = []
        width = self.shape[0]
        for channels in config.channels:
            layers += [conv(width, channels, config.kernel_size, stride=config.stride, padding=config.kernel_size // 2),
                       ACTIVATIONS[config.activation]()]
            width = channels
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *self.shape)).numel()
        head: list[nn.Module] = [nn.Flatten()]
        for hidden in config.hidden:
            head += [nn.Linear(flat, hidden), ACTIVATIONS[config.activation]()]
            flat = hidden
        head.append(nn.Linear(flat, n_classes))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x.reshape(x.shape[0], *self.shape)))
