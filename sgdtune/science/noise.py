"""Noise in SGD: loss noise, gradient noise scale, noise temperature, the S(B) fit.

Pure functions over tensors and numbers; formulas and sources in docs/science.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap


def loss_noise(batch_losses: torch.Tensor) -> float:
    """Standard deviation of an epoch's mini-batch losses around their local trend.

    Uses the mean square successive difference (von Neumann): for losses x_t = trend_t + e_t
    with a slowly moving trend, E[(x_{t+1} - x_t)^2] = 2 Var(e), so the downward trend of
    training is not counted as noise. One batch per epoch (full-batch GD) gives 0.
    """
    if batch_losses.numel() < 2:
        return 0.0
    diffs = torch.diff(batch_losses.double())
    return math.sqrt(float(diffs.square().mean()) / 2.0)


@dataclass(frozen=True)
class GradientStats:
    """Unbiased estimates on one probe batch of b examples at fixed parameters."""

    trace_cov: float  # tr(Sigma): per-example gradient covariance trace
    grad_sq_norm: float  # |G|^2: squared norm of the true gradient
    probe_size: int

    @property
    def simple_noise_scale(self) -> float:
        """B_simple = tr(Sigma) / |G|^2 (examples); inf when |G|^2 <= 0."""
        return self.trace_cov / self.grad_sq_norm if self.grad_sq_norm > 0 else math.inf


def gradient_stats(sum_sq: float, mean_sq: float, b: int) -> GradientStats:
    """Unbiased tr(Sigma) and |G|^2 from sum_i |g_i|^2 and |g_mean|^2 over b examples.

    tr(Sigma) = sum_i |g_i - g_mean|^2 / (b - 1) = (sum_i |g_i|^2 - b |g_mean|^2) / (b - 1);
    |G|^2 = |g_mean|^2 - tr(Sigma) / b, unbiased because E|g_mean|^2 = |G|^2 + tr(Sigma) / b.
    """
    if b < 2:
        raise ValueError(f"the probe needs at least 2 examples; got {b}")
    trace_cov = (sum_sq - b * mean_sq) / (b - 1)
    return GradientStats(trace_cov, mean_sq - trace_cov / b, b)


def gradient_stats_from_per_example(per_example_grads) -> GradientStats:
    """gradient_stats from per-example gradients: one (b, ...) tensor or a list of them,
    tensor by tensor (no concatenated copy)."""
    grads = [per_example_grads] if isinstance(per_example_grads, torch.Tensor) else list(per_example_grads)
    sum_sq = sum(float(g.square().sum()) for g in grads)
    mean_sq = sum(float(g.mean(dim=0).square().sum()) for g in grads)
    return gradient_stats(sum_sq, mean_sq, grads[0].shape[0])


def linear_gradient_stats(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> GradientStats | None:
    """gradient_stats in one forward/backward pass, for models whose parameters all sit in
    nn.Linear layers fed (b, d) inputs (the MLPs sgdtune builds); None for any other model.

    Example i's gradient in a linear layer is the outer product of the layer's output
    gradient d_i and its input a_i (plus d_i for the bias), so its squared norm is
    |d_i|^2 (|a_i|^2 + 1) and the mean gradient is one matrix product: no per-example
    gradient is ever built (Goodfellow 2015, "Efficient per-example gradient computations").
    """
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    in_linears = sum(p.numel() for m in linears for p in m.parameters())
    if not linears or in_linears != sum(p.numel() for p in model.parameters()):
        return None
    seen: list[tuple[nn.Linear, torch.Tensor, torch.Tensor, int]] = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: seen.append((mod, inp[0], out, out._version)))
             for m in linears]
    try:
        out = model(x)
    finally:
        for h in hooks:
            h.remove()
    # The trick needs each layer used once, on (b, d) inputs, with outputs that nothing
    # modified in place afterwards (ReLU(inplace=True) would hide the pre-activation).
    if (len(seen) != len(linears) or len({id(m) for m, *_ in seen}) != len(linears)
            or any(a.dim() != 2 or z._version != v for _, a, z, v in seen)):
        return None
    b = x.shape[0]
    # The sum of per-example losses, so that each row of an output gradient is one example's.
    total = loss_fn(out, y) * b
    deltas = torch.autograd.grad(total, [z for _, _, z, _ in seen])
    sum_sq = mean_sq = 0.0
    for (layer, a, _, _), d in zip(seen, deltas):
        d2, a2 = d.square().sum(dim=1), a.detach().square().sum(dim=1)
        has_bias = layer.bias is not None
        sum_sq += float((d2 * (a2 + has_bias)).sum())
        mean_sq += float((d.T @ a.detach()).div_(b).square().sum())
        if has_bias:
            mean_sq += float(d.mean(dim=0).square().sum())
    return gradient_stats(sum_sq, mean_sq, b)


def gradient_stats_two_batches(
    small_sq_norm: float, small_size: int, big_sq_norm: float, big_size: int
) -> GradientStats:
    """McCandlish et al. (2018, appendix A) estimators from two batch sizes.

    |G|^2 = (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) = (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)
    """
    if not small_size < big_size:
        raise ValueError(f"small_size must be < big_size; got {small_size} and {big_size}")
    grad_sq_norm = (big_size * big_sq_norm - small_size * small_sq_norm) / (big_size - small_size)
    trace_cov = (small_sq_norm - big_sq_norm) / (1.0 / small_size - 1.0 / big_size)
    return GradientStats(trace_cov, grad_sq_norm, big_size)


def per_example_gradients(
    model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor
) -> list[torch.Tensor]:
    """Per-example gradients of loss_fn(model(x_i), y_i), one (b, *param.shape) tensor per
    parameter, via torch.func (no per-example Python loop)."""
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def example_loss(p, xi, yi):
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return loss_fn(out, yi.unsqueeze(0))

    return list(vmap(grad(example_loss), in_dims=(None, 0, 0))(params, x, y).values())


class NoiseScaleMeter:
    """Gradient noise scale B_simple on a fixed probe set, smoothed by an EMA.

    The EMA runs over tr(Sigma) and |G|^2 separately and divides at the end (docs/science.md),
    since the ratio of noisy estimates is biased and |G|^2 alone can dip below 0. Without a
    probe set (x_probe None) it only smooths: feed it with update().
    """

    def __init__(self, x_probe: torch.Tensor | None, y_probe: torch.Tensor | None, loss_fn=None, decay: float = 0.9):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1); got {decay}")
        self.x_probe, self.y_probe, self.loss_fn, self.decay = x_probe, y_probe, loss_fn, decay
        self._trace = self._grad_sq = None

    def measure(self, model: nn.Module) -> GradientStats:
        """Measure at the model's current parameters and fold the result into the EMA."""
        was_training = model.training
        model.eval()  # no dropout noise in the probe
        try:
            with torch.enable_grad():
                stats = linear_gradient_stats(model, self.loss_fn, self.x_probe, self.y_probe)
            if stats is None:  # not an all-Linear model: per-example gradients through torch.func
                stats = gradient_stats_from_per_example(
                    per_example_gradients(model, self.loss_fn, self.x_probe, self.y_probe)
                )
        finally:
            model.train(was_training)
        self.update(stats)
        return stats

    def update(self, stats: GradientStats) -> None:
        """Fold one measurement into the EMA (callers that compute their own stats use this)."""
        if self._trace is None:
            self._trace, self._grad_sq = stats.trace_cov, stats.grad_sq_norm
        else:
            d = self.decay
            self._trace = d * self._trace + (1 - d) * stats.trace_cov
            self._grad_sq = d * self._grad_sq + (1 - d) * stats.grad_sq_norm

    @property
    def value(self) -> float | None:
        """Smoothed B_simple in examples; None before the first measurement or when |G|^2 <= 0."""
        if self._trace is None or self._grad_sq <= 0:
            return None
        return self._trace / self._grad_sq


def noise_temperature(lr: float, n_train: int, batch_size: int, momentum: float = 0.0) -> float:
    """SGD noise temperature g = lr (N/B - 1) / (1 - m) (Smith & Le 2018); 0 for full batch."""
    b = min(batch_size, n_train)
    return lr * (n_train / b - 1.0) / (1.0 - momentum)
