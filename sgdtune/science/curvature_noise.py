"""B_noise and eps_max: the gradient noise weighted by the curvature (McCandlish et al. 2018,
section 2; docs/science.md, section 3b).

    B_noise = tr(H Sigma) / (G^T H G)       eps_max = |G|^2 / (G^T H G)

H is the Hessian of the mean DATA loss on the probe (no weight-decay term, as for B_simple and
the sharpness), Sigma the per-example gradient covariance, G the mean gradient. G^T H G is one
Hessian-vector product (science.sharpness.HessianOperator). tr(H Sigma) is exact when the
probe has at most `samples` examples or the model at most `samples` parameters; otherwise
Hutchinson's estimator over Rademacher combinations of the per-example deviations.

Layer: science (the estimators; docs/architecture.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .noise import per_example_gradients
from .sharpness import HessianOperator

HUTCHINSON_SAMPLES = 32  # Rademacher combinations per measurement (SE ~ 5-10% on digits: docs/science.md)
DIRECTIONS_PER_PASS = 8  # weighted backward passes vmapped together (memory: this many x the probe's activations)


@dataclass(frozen=True)
class CurvatureNoiseEstimate:
    """tr(H Sigma), G^T H G, B_noise and eps_max on one probe, with standard errors.

    Units: tr(H Sigma) and G^T H G in loss^3 / parameter^4 (a squared gradient through the
    Hessian); B_noise in examples; eps_max in the learning rate's units (parameter^2 / loss).
    `b_noise` and `eps_max` are None when G^T H G <= 0 (the loss curves down along G: the
    quadratic model behind them does not hold there).
    """

    trace_h_cov: float  # tr(H Sigma) = E[(g_i - G)^T H (g_i - G)]
    trace_h_cov_se: float
    g_h_g: float  # G^T H G
    g_h_g_se: float
    b_noise: float | None
    b_noise_se: float | None
    eps_max: float | None
    eps_max_se: float | None
    probe_size: int
    samples: int  # Hutchinson combinations; 0 = tr(H Sigma) exact


def _rademacher(samples: int, b: int, seed: int, dtype, device) -> torch.Tensor:
    """(samples, b) random signs +-1 from a generator of its own (the global RNG is untouched)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, (samples, b), generator=g).to(dtype) * 2 - 1).to(device)


def _weighted_gradients(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor,
                        weights: torch.Tensor, op: HessianOperator) -> torch.Tensor:
    """(S, P) float64: row s is sum_i weights[s, i] g_i, the gradient of the weighted sum of the
    per-example losses (one backward pass per row, DIRECTIONS_PER_PASS rows vmapped together)."""
    buffers = {k: t.detach() for k, t in model.named_buffers()}
    frozen = {k: p.detach() for k, p in model.named_parameters() if not p.requires_grad}

    def example_loss(params, xi, yi):
        return loss_fn(functional_call(model, (params, frozen, buffers), (xi.unsqueeze(0),)), yi.unsqueeze(0))

    def weighted(params, w):
        return (vmap(example_loss, in_dims=(None, 0, 0))(params, x, y) * w).sum()

    rows = vmap(grad(weighted), in_dims=(None, 0))
    out = []
    for s in range(0, weights.shape[0], DIRECTIONS_PER_PASS):
        part = weights[s:s + DIRECTIONS_PER_PASS]
        out.append(op.flatten(rows(op.trainable, part.to(x.dtype)), (part.shape[0],)))
    return torch.cat(out)


def curvature_noise_estimate(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor,
                             grad_sq_norm: float, grad_sq_norm_se: float = 0.0, *,
                             population: int | None = None, samples: int = HUTCHINSON_SAMPLES,
                             seed: int = 0) -> CurvatureNoiseEstimate:
    """B_noise and eps_max on the probe (x, y) of b examples (docs/science.md, section 3b).

    `loss_fn(out, y)` is the mean of the per-example losses. `grad_sq_norm` (and its SE) is
    |G|^2 as science.noise.noise_scale_estimate measured it on the same probe (the trainer
    measures both at once). `population` = N: the probe is drawn without replacement from N
    examples (the training set) whose mean gradient is G, as in noise_scale_estimate.

    tr(H Sigma) = sum_i (g_i - g_mean)^T H (g_i - g_mean) / (b - 1):
    - exact when min(b, P) <= samples: per-example gradients (vmap), and either b products
      H (g_i - g_mean) or the P columns of H; its SE is then the probe's sampling error,
      sd_i(q_i) / sqrt(b) x sqrt(1 - b/N) (0 when the probe is the whole set);
    - else Hutchinson: for `samples` sign vectors s, v = sum_i s_i (g_i - g_mean) / sqrt(b) is
      one weighted backward pass, E[v^T H v] = tr(H Sigma) (b - 1) / b; the estimate is the
      mean of v^T H v times b / (b - 1), its SE the samples' spread / sqrt(samples). The
      probe's own sampling error is not in it (none when the probe is the whole set).
    G^T H G = g_mean^T H g_mean - tr(H Sigma) (1/b - 1/N), unbiased as |G|^2 is (E[g_mean^T H
    g_mean] = G^T H G + tr(H Sigma) (1/b - 1/N)); one product, batched with the others.
    SEs of the ratios by the delta method (G^T H G's error is that of its tr(H Sigma) term).

    The model runs in eval mode; its flags, parameters and .grad are left as they were.
    """
    b = x.shape[0]
    if b < 2:
        raise ValueError(f"the probe needs at least 2 examples; got {b}")
    if samples < 2:
        raise ValueError(f"samples must be >= 2; got {samples}")
    if population is not None and population < b:
        raise ValueError(f"population must be >= the probe size {b}; got {population}")
    correction = 1.0 / b - (0.0 if population is None else 1.0 / population)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            op = HessianOperator(model, loss_fn, x, y)
            buffers = {k: t.detach() for k, t in model.named_buffers()}
            mean_grad = op.flatten(grad(lambda p: loss_fn(functional_call(model, (p, buffers), (x,)), y))(
                {k: p.detach() for k, p in model.named_parameters()}))
            exact = min(b, op.size) <= samples
            if exact:
                per_example = dict(zip([k for k, _ in model.named_parameters()],
                                       per_example_gradients(model, loss_fn, x, y)))
                deviations = op.flatten(per_example, (b,)) - mean_grad
                if b <= op.size:
                    products = op(torch.cat([deviations, mean_grad.unsqueeze(0)]))
                    q = (deviations * products[:-1]).sum(dim=1)
                    h_mean = products[-1]
                else:  # P <= samples: the whole Hessian, one column per product
                    hessian = op(torch.eye(op.size, dtype=torch.float64, device=op.device))
                    q = ((deviations @ hessian) * deviations).sum(dim=1)
                    h_mean = hessian @ mean_grad
                trace = float(q.sum()) / (b - 1)
                finite = 1.0 - (0.0 if population is None else b / population)
                trace_se = float(q.std()) / math.sqrt(b) * math.sqrt(max(finite, 0.0)) * b / (b - 1)
            else:
                signs = _rademacher(samples, b, seed, torch.float64, x.device) / math.sqrt(b)
                v = _weighted_gradients(model, loss_fn, x, y, signs, op) - signs.sum(dim=1, keepdim=True) * mean_grad
                products = op(torch.cat([v, mean_grad.unsqueeze(0)]))
                q = (v * products[:-1]).sum(dim=1) * (b / (b - 1))
                h_mean = products[-1]
                trace, trace_se = float(q.mean()), float(q.std()) / math.sqrt(samples)
    finally:
        for module, training in modes:
            module.training = training
    mean_h_mean = float(mean_grad @ h_mean)
    g_h_g = mean_h_mean - trace * correction
    g_h_g_se = trace_se * correction
    b_noise = b_noise_se = eps_max = eps_max_se = None
    if g_h_g > 0:
        b_noise = trace / g_h_g
        b_noise_se = abs(mean_h_mean) / g_h_g**2 * trace_se  # d(T / (m - cT)) / dT = m / (m - cT)^2
        eps_max = grad_sq_norm / g_h_g
        eps_max_se = math.hypot(grad_sq_norm_se / g_h_g, eps_max / g_h_g * g_h_g_se)
    return CurvatureNoiseEstimate(trace, trace_se, g_h_g, g_h_g_se, b_noise, b_noise_se, eps_max, eps_max_se,
                                  b, 0 if exact else samples)
