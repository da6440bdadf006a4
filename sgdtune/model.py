"""Model builders: a plain MLP, or a user's factory "pkg.module:function"."""

from __future__ import annotations

import importlib
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


class ModelConfig(BaseModel):
    """[model] of an experiment file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["mlp"] = "mlp"
    hidden: tuple[int, ...] = Field(
        default=(128,), description="hidden layer widths; [] = a linear model (one nn.Linear, with a bias)")
    activation: Literal["relu", "tanh", "gelu"] = "relu"
    factory: str | None = Field(
        default=None,
        description='"pkg.module:function" called as function(n_features, n_classes) -> nn.Module',
    )

    @field_validator("hidden")
    @classmethod
    def _positive_widths(cls, hidden: tuple[int, ...]) -> tuple[int, ...]:
        if any(w < 1 for w in hidden):
            raise ValueError(f"every hidden width must be >= 1; got {list(hidden)}")
        return hidden

    @field_validator("factory")
    @classmethod
    def _importable(cls, factory: str | None) -> str | None:
        if factory is not None:
            resolve_factory(factory)
        return factory


def resolve_factory(spec: str):
    """Import "pkg.module:function"; ValueError naming what is wrong."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f'must look like "pkg.module:function"; got {spec!r}')
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"cannot import module {module_name!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"module {module_name!r} has no callable {attr!r}")
    return fn


def describe_model(config: ModelConfig, n_features: int, n_classes: int) -> str:
    """The `model` param: 'mlp(64-128-10,relu)', 'linear(64-10)' when there is no hidden
    layer (the activation plays no part), or the factory string."""
    if config.factory:
        return config.factory
    widths = "-".join(str(w) for w in (n_features, *config.hidden, n_classes))
    if not config.hidden:
        return f"linear({widths})"
    return f"mlp({widths},{config.activation})"


def build_model(config: ModelConfig, n_features: int, n_classes: int, seed: int) -> nn.Module:
    """A freshly initialized model; the initial weights depend on `seed` alone.

    The MLP is nn.Sequential of Linear layers (each with a bias) and activations, the last
    Linear giving n_classes outputs (1 for regression). With hidden = () it is one
    nn.Linear(n_features, n_classes): a linear model z = W x + b, bias included (torch's
    default initialization, uniform in +-1/sqrt(n_features) for W and b).

    Initialization draws from torch's global generator, so it is forked and seeded here
    rather than left to whatever ran before.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if config.factory:
            return resolve_factory(config.factory)(n_features, n_classes)
        layers: list[nn.Module] = []
        width = n_features
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), ACTIVATIONS[config.activation]()]
            width = hidden
        layers.append(nn.Linear(width, n_classes))
        return nn.Sequential(*layers)
