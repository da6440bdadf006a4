"""The linear-regression known answer the noise tests share (docs/science.md, section 3):
y = w*.x + eps, x ~ N(0, I_d), eps ~ N(0, s^2), per-example loss (w.x - y)^2 / 2, w* = 0 so
that delta = w - w* = w. Then G = delta and tr(Sigma) = (d + 1)|delta|^2 + d s^2."""

import torch
from torch import nn

D, NOISE_SD = 10, 1.0


def regression(n: int, seed: int):
    """n examples (x, y) in float64, seeded."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=g, dtype=torch.float64)
    return x, NOISE_SD * torch.randn(n, generator=g, dtype=torch.float64)


def exact_noise_scale(delta: torch.Tensor) -> tuple[float, float]:
    """Population (tr(Sigma), |G|^2) at weights delta."""
    sq = float(delta.square().sum())
    return (D + 1) * sq + D * NOISE_SD**2, sq


def half_squared_error(out, y):
    return 0.5 * (out.squeeze(-1) - y).square().mean()


def linear_model(delta: torch.Tensor) -> nn.Module:
    """nn.Linear(d, 1) without bias, its weights set to delta."""
    model = nn.Linear(D, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(delta.unsqueeze(0))
    return model
