"""Noise in SGD: loss noise, gradient noise scale, noise temperature, the S(B) fit.

Pure functions over tensors and numbers; formulas and sources in docs/science.md.

About 430 lines: the estimators of one quantity, the gradient noise scale (and the loss
noise beside it), with their standard errors, read top to bottom with docs/science.md, section 3.

Layer: science (the estimators; docs/architecture.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap


def loss_noise(batch_losses: torch.Tensor, short_last: bool = False) -> float:
    """Standard deviation of an epoch's mini-batch losses around their local trend.

    Uses the mean square successive difference (von Neumann): for losses x_t = trend_t + e_t
    with a slowly moving trend, E[(x_{t+1} - x_t)^2] = 2 Var(e), so the downward trend of
    training is not counted as noise. One batch per epoch (full-batch GD) gives 0.

    short_last: the last loss is that of a short batch (r < B examples: B does not divide n,
    or the budget cut it); it is left out, since its larger variance (sigma^2 / r) would
    inflate the difference it enters (docs/science.md, section 2). Full batches alone count.
    """
    if short_last:
        batch_losses = batch_losses[:-1]
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


def _linear_layer_gradients(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor):
    """For a model whose parameters all sit in nn.Linear layers, each used once on (b, d)
    inputs, with outputs nothing modified in place afterwards (ReLU(inplace=True) would hide
    the pre-activation): [(layer, its input a, d(sum of losses)/d(its output))] from one
    forward and one backward pass. None for any other model (then per-example gradients)."""
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
    if (len(seen) != len(linears) or len({id(m) for m, *_ in seen}) != len(linears)
            or any(a.dim() != 2 or z._version != v for _, a, z, v in seen)):
        return None
    # The sum of per-example losses, so that each row of an output gradient is one example's.
    deltas = torch.autograd.grad(loss_fn(out, y) * x.shape[0], [z for _, _, z, _ in seen])
    return [(layer, a, d) for (layer, a, _, _), d in zip(seen, deltas)]


def linear_gradient_stats(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> GradientStats | None:
    """gradient_stats in one forward/backward pass, for models whose parameters all sit in
    nn.Linear layers fed (b, d) inputs (the MLPs sgdtune builds); None for any other model.

    Example i's gradient in a linear layer is the outer product of the layer's output
    gradient d_i and its input a_i (plus d_i for the bias), so its squared norm is
    |d_i|^2 (|a_i|^2 + 1) and the mean gradient is one matrix product: no per-example
    gradient is ever built (Goodfellow 2015, "Efficient per-example gradient computations").
    """
    layers = _linear_layer_gradients(model, loss_fn, x, y)
    if layers is None:
        return None
    b = x.shape[0]
    sum_sq = mean_sq = 0.0
    for layer, a, d in layers:
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


@dataclass(frozen=True)
class NoiseScaleEstimate:
    """tr(Sigma), |G|^2 and B_simple on one probe, each with a standard error (docs/science.md,
    section 3). Units: tr(Sigma) and |G|^2 in (loss units / parameter)^2, B_simple in examples.

    When |G|^2 is not significantly above zero (|G|^2 < 2 SE), `bound` is True and `simple` is
    the lower bound tr(Sigma) / (max(|G|^2, 0) + 2 SE): the true gradient is too small for
    this probe to resolve, so B_simple is at least that (and may be far larger); a bigger
    probe is needed to measure it. `simple` is always finite.
    """

    trace_cov: float  # tr(Sigma), unbiased, from the whole probe
    trace_cov_se: float  # its delete-a-chunk jackknife standard error
    grad_sq_norm: float  # |G|^2, unbiased, from the whole probe (can be < 0 by noise)
    grad_sq_norm_se: float
    simple: float  # B_simple = tr(Sigma) / |G|^2, or the lower bound when `bound`
    simple_se: float  # delta-method standard error of `simple` (with the 2 SE margin held fixed when `bound`)
    probe_size: int
    bound: bool  # True: `simple` is a lower bound on B_simple, not an estimate
    chunks: int  # the number of disjoint chunks behind the standard errors

    def gradient_stats(self) -> GradientStats:
        """The point estimates as GradientStats (for NoiseScaleMeter.update)."""
        return GradientStats(self.trace_cov, self.grad_sq_norm, self.probe_size)


def _chunk_sums(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    """sum_i |g_i|^2 and the flattened sum_i g_i (float64) over one chunk, per-example
    gradients vectorized: the one-pass Linear trick when it applies (sum_i |g_i|^2 = b (tr + |G|^2)
    from its GradientStats, the summed gradient from one more backward pass), torch.func's
    vmap(grad) otherwise."""
    b = x.shape[0]
    stats = linear_gradient_stats(model, loss_fn, x, y)
    if stats is not None:
        params = {k: p.detach() for k, p in model.named_parameters()}
        buffers = {k: t.detach() for k, t in model.named_buffers()}

        def summed_loss(p):
            return loss_fn(functional_call(model, (p, buffers), (x,)), y) * b

        total = grad(summed_loss)(params)
        return b * (stats.trace_cov + stats.grad_sq_norm), torch.cat([t.reshape(-1).double() for t in total.values()])
    grads = per_example_gradients(model, loss_fn, x, y)
    sum_sq = sum(float(g.double().square().sum()) for g in grads)
    return sum_sq, torch.cat([g.double().sum(dim=0).reshape(-1) for g in grads])


@dataclass(frozen=True)
class ChunkSums:
    """What `noise_scale_estimate` keeps of each of K disjoint chunks of a probe: all its
    standard errors and point estimates follow from these (float64, on the CPU)."""

    sizes: torch.Tensor  # (K,) examples per chunk
    sum_sq: torch.Tensor  # (K,) sum_i |g_i|^2 over the chunk
    gram: torch.Tensor  # (K, K) inner products of the chunks' summed gradients s_c

    @classmethod
    def of(cls, sizes, sum_sq, sums: torch.Tensor) -> ChunkSums:
        """From per-chunk sizes, sums of squares and summed gradients `sums` (K, P)."""
        sums = sums.double()
        return cls(torch.as_tensor(sizes, dtype=torch.float64).cpu(),
                   torch.as_tensor(sum_sq, dtype=torch.float64).cpu(), (sums @ sums.T).cpu())


def chunk_sums(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, chunks: int = 8) -> ChunkSums:
    """ChunkSums of the probe (x, y) cut in order into min(chunks, b // 2) near-equal chunks
    (tensor_split), per-example gradients vectorized (see `noise_scale_estimate`). The model
    runs in eval mode; its train/eval flags, parameters and .grad are left as they were."""
    b = x.shape[0]
    if b < 4:
        raise ValueError(f"the probe needs at least 4 examples for a standard error; got {b}")
    if chunks < 2:
        raise ValueError(f"chunks must be >= 2; got {chunks}")
    k = min(chunks, b // 2)  # every chunk keeps >= 2 examples
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            one_pass = _linear_chunk_sums(model, loss_fn, x, y, k)
            if one_pass is not None:
                return one_pass
            parts = [_chunk_sums(model, loss_fn, xc, yc)
                     for xc, yc in zip(torch.tensor_split(x, k), torch.tensor_split(y, k))]
    finally:
        for module, training in modes:
            module.training = training
    sizes = [float(xc.shape[0]) for xc in torch.tensor_split(x, k)]
    return ChunkSums.of(sizes, [s for s, _ in parts], torch.stack([v for _, v in parts]))


def _linear_chunk_sums(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, k: int) -> ChunkSums | None:
    """chunk_sums in one forward/backward pass over the whole probe for models whose
    parameters all sit in nn.Linear layers (the conditions of `linear_gradient_stats`); None
    otherwise. Per layer, example i's gradient is d_i a_i^T (and d_i for the bias), so a
    chunk's sum |g_i|^2 is sum |d_i|^2 (|a_i|^2 + 1) and its summed gradient D_c^T A_c: one
    small product per chunk and layer, no per-example gradient, no autograd per chunk."""
    layers = _linear_layer_gradients(model, loss_fn, x, y)
    if layers is None:
        return None
    sizes = [t.shape[0] for t in torch.tensor_split(torch.arange(x.shape[0]), k)]
    bounds = [sum(sizes[:c]) for c in range(k + 1)]
    sum_sq = torch.zeros(k, dtype=torch.float64, device=x.device)
    sums: list[list[torch.Tensor]] = [[] for _ in range(k)]
    for layer, a, d in layers:
        a = a.detach()
        has_bias = layer.bias is not None
        per_example = d.square().sum(dim=1).double() * (a.square().sum(dim=1).double() + has_bias)
        for c in range(k):
            lo, hi = bounds[c], bounds[c + 1]
            sum_sq[c] += per_example[lo:hi].sum()
            sums[c].append((d[lo:hi].T @ a[lo:hi]).reshape(-1).double())
            if has_bias:
                sums[c].append(d[lo:hi].sum(dim=0).double())
    return ChunkSums.of([float(n) for n in sizes], sum_sq, torch.stack([torch.cat(parts) for parts in sums]))


def noise_scale_estimate(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor,
                         chunks: int = 8, population: int | None = None) -> NoiseScaleEstimate:
    """tr(Sigma), |G|^2 and B_simple = tr(Sigma) / |G|^2 on a probe of b examples, with standard
    errors (docs/science.md, section 3).

    The point estimates are those of `gradient_stats` on the whole probe (unbiased for
    i.i.d. examples): tr(Sigma) = sum_i |g_i - g_mean|^2 / (b - 1), |G|^2 = |g_mean|^2 - tr(Sigma)/b.
    With `population` = N, the probe is taken to be drawn without replacement from N
    examples whose own mean gradient is G (the training set): then |G|^2 = |g_mean|^2 -
    tr(Sigma) (1/b - 1/N), unbiased for that G (exactly |g_mean|^2 when b = N), and the
    jackknife variances carry the finite-population factor 1 - b/N (0 when the probe is the
    whole set: the values are then exact, with no sampling error).

    Standard errors: delete-a-chunk jackknife. The probe is cut, in order, into `chunks`
    disjoint chunks of near-equal size (tensor_split; sizes differ by at most 1, treated as
    equal); per chunk c only n_c, sum |g_i|^2 and the summed gradient s_c are kept. Leaving
    chunk c out, both statistics are recomputed from the remaining sums (|s - s_c|^2 from the
    K x K Gram matrix of the s_c), and Var = (K-1)/K sum_c (theta_(c) - mean theta_(.))^2, with
    the covariance of tr(Sigma) and |G|^2 the same way. Unlike the spread of per-chunk
    estimates, this is the error of the whole-probe estimate, which uses the cross-chunk
    pairs too (near the optimum that makes |G|^2 about K times less noisy). B_simple's SE is
    by the delta method on the ratio with that jackknife covariance, not by jackknifing the
    ratio, which blows up whenever a leave-out |G|^2 comes near 0. With K chunks each SE has
    about K - 1 degrees of freedom (roughly +-25% at K = 8), so (estimate - truth) / SE is
    Student-t with K - 1 degrees of freedom. Calibration on the linear-regression known answer
    (300 probes of 500): spread / mean SE = 1.05-1.15 for both statistics while |G|^2 is
    resolved; at G = 0, where |G|^2's estimator is a degenerate U-statistic, the jackknife
    overstates its SE by about 1.3x, so the `bound` test and the bound are conservative there
    (an unbiased U-statistic variance estimate was tried: right on average, but negative on a
    quarter of probes and three times noisier).

    Without `population` this assumes the probe's examples are i.i.d. draws from the set
    whose mean gradient is G. At parameters fitted to the probe itself that fails: |G|^2 then
    reads about -tr(Sigma)/b with a small SE (docs/science.md, section 3, "Finite
    population"); the flag is set and the bound refers to the probe's own gradient. Pass
    population = N (as the trainer does) to measure the training set's own G.

    Per-example gradients are vectorized: for all-Linear models one forward and one backward
    pass over the whole probe (the one-pass trick of `linear_gradient_stats`), then per chunk
    and layer one small product D_c^T A_c (`_linear_chunk_sums`); otherwise, per chunk,
    `per_example_gradients` (vmap over the chunk). The model is evaluated in eval mode (as
    `NoiseScaleMeter.measure`) and its train/eval flags are put back module by module;
    parameters and .grad are not touched.

    Cost: for all-Linear models about 2-3 plain forward+backward passes of the probe
    (64-256-256-10 ReLU MLP, 1,000 examples, K = 8, one thread of a busy 2-core machine:
    47-73 ms against 15-42 ms for one plain pass; the earlier two passes per chunk took
    40-50 ms against 7 ms on a quiet one); vmap's per-example gradients otherwise (1.0-1.8 s
    there). Memory: the K x P float64 chunk sums.
    """
    return estimate_from_sums(chunk_sums(model, loss_fn, x, y, chunks), population)


def estimate_from_sums(sums: ChunkSums, population: int | None = None) -> NoiseScaleEstimate:
    """The NoiseScaleEstimate of `noise_scale_estimate` from a probe's ChunkSums (the stacked
    trainer computes those for every member in stacked passes)."""
    sizes, sum_sq, gram = sums.sizes, sums.sum_sq, sums.gram
    k, b = int(sizes.numel()), int(round(float(sizes.sum())))
    if population is not None and population < b:
        raise ValueError(f"population must be >= the probe size {b}; got {population}")
    inv_population = 0.0 if population is None else 1.0 / population

    def statistics(n, total_sq, sum_norm_sq):  # tensors: the whole probe, or each leave-one-out
        mean_sq = sum_norm_sq / n.square()
        trace = (total_sq - n * mean_sq) / (n - 1)
        return trace, mean_sq - trace * (1 / n - inv_population)

    trace, grad_sq = (float(t) for t in statistics(sizes.sum(), sum_sq.sum(), gram.sum()))
    loo_norm_sq = gram.sum() - 2 * gram.sum(dim=1) + gram.diagonal()
    loo_trace, loo_grad_sq = statistics(sizes.sum() - sizes, sum_sq.sum() - sum_sq, loo_norm_sq)
    dt, dg = loo_trace - loo_trace.mean(), loo_grad_sq - loo_grad_sq.mean()
    factor = (k - 1) / k * (1.0 - b * inv_population)  # the jackknife's, times the finite-population factor
    var_trace, var_grad_sq = factor * float(dt.square().sum()), factor * float(dg.square().sum())
    cov = factor * float((dt * dg).sum())
    trace_se, grad_sq_se = math.sqrt(var_trace), math.sqrt(var_grad_sq)

    bound = not grad_sq > 2 * grad_sq_se  # also True for a NaN
    denominator = max(grad_sq, 0.0) + 2 * grad_sq_se if bound else grad_sq
    if denominator > 0:
        simple = trace / denominator
        # delta method: d simple / d trace = 1/den; d simple / d |G|^2 = -simple/den (0 for a bound with |G|^2 <= 0)
        d_trace, d_grad = 1 / denominator, (-simple / denominator if grad_sq > 0 else 0.0)
        simple_se = math.sqrt(max(d_trace**2 * var_trace + d_grad**2 * var_grad_sq + 2 * d_trace * d_grad * cov, 0.0))
    else:  # no spread and no gradient at all (e.g. every g_i = 0): B_simple >= 0 is all one can say
        simple, simple_se = 0.0, 0.0
    return NoiseScaleEstimate(trace, trace_se, grad_sq, grad_sq_se, simple, simple_se, b, bound, k)


# -- loss noise at fixed weights ---------------------------------------------------------


def fixed_model_loss_noise(example_losses: torch.Tensor, seed: int = 0,
                           min_differences: int = 64) -> dict[int, float]:
    """`loss_noise` of a model that does not move: for each B on a grid (8, 16, ... up to n/4),
    the mini-batch mean losses of shuffled passes over the n per-example losses, and the same
    successive-difference estimator as in training. No update happens between batches, so
    the training trend is absent and the value follows sigma/sqrt(B) * sqrt(n/(n-1)) at
    every B < n (docs/science.md, section 2): the clean measurement of the slope -1/2. Each
    B pools the differences of as many seeded passes as give `min_differences` of them.
    Forward-only and cheap: the per-example losses come from one pass; here only sums."""
    losses = example_losses.detach().double().flatten().cpu()
    n = losses.numel()
    g = torch.Generator().manual_seed(seed)
    out: dict[int, float] = {}
    b = 8
    while b <= n // 4:
        per_pass = n // b
        passes = -(-min_differences // (per_pass - 1))
        squares = []
        for _ in range(passes):
            means = losses[torch.randperm(n, generator=g)[: per_pass * b]].view(per_pass, b).mean(dim=1)
            squares.append(torch.diff(means).square())
        out[b] = math.sqrt(float(torch.cat(squares).mean()) / 2.0)
        b *= 2
    return out

