"""Known-answer tests for noise_scale_estimate: B_simple with standard errors (docs/science.md, section 3).

Linear regression y = w*.x + eps, x ~ N(0, I_d), eps ~ N(0, s^2), loss 0.5 (w.x - y)^2, delta = w - w*:
g_i = x_i (x_i.delta - eps_i), G = delta, tr(Sigma) = (d+1)|delta|^2 + d s^2.
"""

import math

import numpy as np
import pytest
import torch
from linreg import D, exact_noise_scale, half_squared_error, linear_model, regression
from torch import nn

from sgdtune.science.noise import (
    NoiseScaleEstimate,
    NoiseScaleMeter,
    gradient_stats_from_per_example,
    noise_scale_estimate,
    per_example_gradients,
)


def finite_sample(x, y, delta) -> tuple[float, float]:
    """tr(Sigma) and |G|^2 of the sample, from the closed-form per-example gradients in NumPy."""
    x, y, delta = x.numpy(), y.numpy(), delta.numpy()
    g = x * (x @ delta - y)[:, None]
    b = len(g)
    trace = ((g - g.mean(0)) ** 2).sum() / (b - 1)
    return trace, (g.mean(0) ** 2).sum() - trace / b


DELTA = torch.full((D,), 0.5, dtype=torch.float64)  # |G|^2 = 2.5, tr(Sigma) = 37.5, B_simple = 15


# With K chunks an SE has K - 1 degrees of freedom, so (estimate - exact) / SE follows Student's t with K - 1:
# its two-sided 99% point is 3.50 at K = 8 and 2.74 at K = 32.
@pytest.mark.parametrize("chunks,limit", [(8, 3.5), (32, 3.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_large_probe_recovers_the_exact_values_within_their_standard_errors(seed, chunks, limit):
    x, y = regression(20_000, seed)
    est = noise_scale_estimate(linear_model(DELTA), half_squared_error, x, y, chunks=chunks)
    assert isinstance(est, NoiseScaleEstimate) and est.probe_size == 20_000 and est.chunks == chunks
    assert not est.bound
    trace, grad_sq = finite_sample(x, y, DELTA)  # the estimator itself, computed independently
    assert est.trace_cov == pytest.approx(trace, rel=1e-9)
    assert est.grad_sq_norm == pytest.approx(grad_sq, rel=1e-9)
    assert est.simple == pytest.approx(trace / grad_sq, rel=1e-9)
    trace, grad_sq = exact_noise_scale(DELTA)
    for value, se, exact in [(est.trace_cov, est.trace_cov_se, trace), (est.grad_sq_norm, est.grad_sq_norm_se, grad_sq),
                             (est.simple, est.simple_se, trace / grad_sq)]:
        assert value == pytest.approx(exact, rel=0.10)
        assert 0 < se < 0.1 * exact
        assert abs(value - exact) < limit * se


def spread_over_probes(delta, probes=30, size=500):
    model = linear_model(delta)
    ests = [noise_scale_estimate(model, half_squared_error, *regression(size, 1000 + i)) for i in range(probes)]
    ratio = {}
    for field in ("trace_cov", "grad_sq_norm", "simple"):
        values = np.array([getattr(e, field) for e in ests])
        ses = np.array([getattr(e, field + "_se") for e in ests])
        ratio[field] = values.std(ddof=1) / ses.mean()
    return ratio, ests


def test_the_standard_errors_match_the_spread_across_independent_probes():
    ratio, ests = spread_over_probes(DELTA)
    assert not any(e.bound for e in ests)  # B_simple = 15 is well resolved by 500 examples
    for field, r in ratio.items():
        assert 1 / 1.5 < r < 1.5, (field, r)


def test_at_the_optimum_the_standard_error_of_the_gradient_norm_is_calibrated_or_conservative():
    # G = 0: |G|^2's estimator is a degenerate U-statistic, for which the jackknife overstates the
    # variance (measured: spread / SE = 0.78 over 300 probes at 8 chunks); never understated.
    ratio, ests = spread_over_probes(torch.zeros(D, dtype=torch.float64))
    assert 1 / 1.5 < ratio["trace_cov"] < 1.5
    assert 0.55 < ratio["grad_sq_norm"] < 1.15
    assert all(e.bound for e in ests)


@pytest.mark.parametrize("where", ["w*", "least-squares fit of the probe"])
def test_near_the_optimum_it_reports_a_finite_lower_bound(where):
    x, y = regression(500, 7)
    delta = torch.zeros(D, dtype=torch.float64)
    if where != "w*":  # the probe's own optimum: the mean probe gradient is exactly 0, |G|^2 estimate < 0
        delta = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.squeeze(1)
    est = noise_scale_estimate(linear_model(delta), half_squared_error, x, y)
    assert est.bound
    assert est.grad_sq_norm < 2 * est.grad_sq_norm_se
    assert math.isfinite(est.simple) and math.isfinite(est.simple_se)
    expected = est.trace_cov / (max(est.grad_sq_norm, 0.0) + 2 * est.grad_sq_norm_se)
    assert est.simple == pytest.approx(expected)
    assert est.simple > 0.1 * est.probe_size  # "B_simple is at least of the order of the probe"
    if where != "w*":
        assert est.grad_sq_norm < 0


def test_no_gradient_at_all_gives_zero_not_nan():
    x, zero = regression(64, 0)[0], torch.zeros(D, dtype=torch.float64)
    est = noise_scale_estimate(linear_model(zero), half_squared_error, x, torch.zeros(64, dtype=torch.float64))
    assert est.bound and est.simple == 0.0 and est.trace_cov == 0.0 and est.simple_se == 0.0


def mlp(inplace: bool) -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(inplace=inplace), nn.Linear(16, 4)).double()


def test_the_one_pass_and_the_vmap_paths_agree_and_equal_the_whole_probe_estimator():
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(203, 6, generator=g, dtype=torch.float64), torch.randint(0, 4, (203,), generator=g)
    ce = nn.functional.cross_entropy
    fast = noise_scale_estimate(mlp(inplace=False), ce, x, y, chunks=5)  # all-Linear: the one-pass trick
    slow = noise_scale_estimate(mlp(inplace=True), ce, x, y, chunks=5)  # in-place ReLU: vmap per-example gradients
    for field in ("trace_cov", "trace_cov_se", "grad_sq_norm", "grad_sq_norm_se", "simple", "simple_se"):
        assert getattr(fast, field) == pytest.approx(getattr(slow, field), rel=1e-9), field
    whole = gradient_stats_from_per_example(per_example_gradients(mlp(inplace=False), ce, x, y))
    assert fast.trace_cov == pytest.approx(whole.trace_cov, rel=1e-9)
    assert fast.grad_sq_norm == pytest.approx(whole.grad_sq_norm, rel=1e-9)
    assert fast.gradient_stats() == type(whole)(fast.trace_cov, fast.grad_sq_norm, 203)
    NoiseScaleMeter(None, None).update(fast.gradient_stats())


def test_the_model_is_left_as_it_was_and_chunks_are_capped():
    model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(0.3), nn.Tanh(), nn.Linear(16, 4)).double()
    model.train()
    model[1].eval()
    before = {k: p.clone() for k, p in model.state_dict().items()}
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(9, 6, generator=g, dtype=torch.float64), torch.randint(0, 4, (9,), generator=g)
    est = noise_scale_estimate(model, nn.functional.cross_entropy, x, y, chunks=8)
    assert est.chunks == 4  # at least 2 examples per chunk
    assert model.training and not model[1].training and model[3].training
    assert all(torch.equal(before[k], p) for k, p in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="at least 4 examples"):
        noise_scale_estimate(model, nn.functional.cross_entropy, x[:3], y[:3])
    with pytest.raises(ValueError, match="chunks must be >= 2"):
        noise_scale_estimate(model, nn.functional.cross_entropy, x, y, chunks=1)
