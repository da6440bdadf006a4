"""Known-answer tests for B_noise = tr(H Sigma) / G^T H G and eps_max = |G|^2 / G^T H G
(science.curvature_noise; docs/science.md, section 3b), and where the trainer measures them.

The exact reference: per-example gradients by a Python loop and the dense Hessian of the mean
loss by double backward, in float64, on a small tanh MLP. The end-to-end known answer on linear
regression through the CLI is in tests/e2e/test_regression.py.
"""

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from linreg import NOISE_SD, D, half_squared_error, linear_model, regression
from torch import nn

from sgdtune.data import Dataset
from sgdtune.model import ModelConfig
from sgdtune.science.curvature_noise import curvature_noise_estimate
from sgdtune.science.noise import noise_scale_estimate
from sgdtune.trainer import TrainConfig, train


def small_problem(n: int = 200, seed: int = 0):
    """A tanh MLP (6-12-3, 123 parameters) in float64 and n labelled examples, seeded."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g, dtype=torch.float64)
    y = (x[:, 0] + 0.5 * torch.randn(n, generator=g, dtype=torch.float64) > 0).long() + (x[:, 1] > 0.7).long()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).double()
    return model, x, y


def dense_reference(model, loss_fn, x, y) -> dict[str, float]:
    """tr(H Sigma) (1/(b-1) normalisation), G^T H G and |G|^2 from a dense Hessian and looped
    per-example gradients, on the probe as the whole population."""
    params = list(model.parameters())

    def flat_grad(loss, create_graph=False):
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params, create_graph=create_graph)])

    g_mean = flat_grad(loss_fn(model(x), y), create_graph=True)
    hessian = torch.stack([torch.cat([h.reshape(-1) for h in torch.autograd.grad(g_mean[j], params, retain_graph=True)])
                           for j in range(len(g_mean))])
    per_example = torch.stack([flat_grad(loss_fn(model(x[i:i + 1]), y[i:i + 1])) for i in range(x.shape[0])])
    g = g_mean.detach()
    dev = per_example - per_example.mean(dim=0)
    trace = float(((dev @ hessian) * dev).sum()) / (x.shape[0] - 1)
    g_h_g = float(g @ hessian @ g)
    return {"trace": trace, "g_h_g": g_h_g, "grad_sq": float(g @ g), "b_noise": trace / g_h_g,
            "eps_max": float(g @ g) / g_h_g}


@pytest.mark.parametrize("n,samples", [(24, 32), (200, 200)])  # the exact path: b <= samples
def test_the_exact_path_equals_a_dense_hessian_and_per_example_gradients(n, samples):
    model, x, y = small_problem(n)
    want = dense_reference(model, F.cross_entropy, x, y)
    est = curvature_noise_estimate(model, F.cross_entropy, x, y, want["grad_sq"], population=n, samples=samples)
    assert est.samples == 0 and est.trace_h_cov_se == 0.0 and est.b_noise_se == 0.0
    assert est.trace_h_cov == pytest.approx(want["trace"], rel=1e-9)
    assert est.g_h_g == pytest.approx(want["g_h_g"], rel=1e-9)
    assert est.b_noise == pytest.approx(want["b_noise"], rel=1e-9)
    assert est.eps_max == pytest.approx(want["eps_max"], rel=1e-9)


def test_a_model_with_fewer_parameters_than_samples_is_exact_through_its_whole_hessian():
    x, y = regression(300, seed=3)
    model = linear_model(torch.full((D,), 0.4, dtype=torch.float64))
    want = dense_reference(model, half_squared_error, x, y)
    est = curvature_noise_estimate(model, half_squared_error, x, y, want["grad_sq"], population=300, samples=32)
    assert est.samples == 0  # 10 parameters <= 32: exact although b = 300 > 32
    assert est.trace_h_cov == pytest.approx(want["trace"], rel=1e-9)
    assert est.b_noise == pytest.approx(want["b_noise"], rel=1e-9)


# (estimate - exact) / SE with 64 Hutchinson samples: about normal; 3.5 is a two-sided 0.05% point.
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hutchinson_recovers_the_exact_values_within_its_standard_error(seed):
    model, x, y = small_problem(200)
    want = dense_reference(model, F.cross_entropy, x, y)
    est = curvature_noise_estimate(model, F.cross_entropy, x, y, want["grad_sq"], population=200, samples=64, seed=seed)
    assert est.samples == 64 and est.trace_h_cov_se > 0
    assert abs(est.trace_h_cov - want["trace"]) < 3.5 * est.trace_h_cov_se
    assert abs(est.b_noise - want["b_noise"]) < 3.5 * est.b_noise_se
    assert est.g_h_g == pytest.approx(want["g_h_g"], rel=1e-9)  # the whole set: G^T H G has no error
    assert est.eps_max == pytest.approx(want["eps_max"], rel=1e-9) and est.eps_max_se == pytest.approx(0, abs=1e-12)


def test_the_hutchinson_standard_error_matches_the_spread_over_sign_draws():
    model, x, y = small_problem(200)
    grad_sq = dense_reference(model, F.cross_entropy, x, y)["grad_sq"]
    runs = [curvature_noise_estimate(model, F.cross_entropy, x, y, grad_sq, population=200, samples=16, seed=s)
            for s in range(40)]
    spread = statistics.stdev(r.trace_h_cov for r in runs)
    mean_se = statistics.fmean(r.trace_h_cov_se for r in runs)
    assert 0.75 < spread / mean_se < 1.35, (spread, mean_se)


def test_on_linear_regression_b_noise_follows_the_population_law():
    """x ~ N(0, I), loss (w.x - y)^2 / 2: H = E[x x^T] = I, so tr(H Sigma) = tr(Sigma) = (d+1)|delta|^2 +
    d s^2 and G^T H G = |delta|^2: B_noise = (d + 1) + d s^2 / |delta|^2 = 15 and eps_max = 1 at
    delta = 0.5 (docs/science.md, section 3b). A probe of 20,000 i.i.d. draws is within 5%."""
    x, y = regression(20_000, seed=1)
    delta = torch.full((D,), 0.5, dtype=torch.float64)
    model = linear_model(delta)
    ns = noise_scale_estimate(model, half_squared_error, x, y)
    est = curvature_noise_estimate(model, half_squared_error, x, y, ns.grad_sq_norm, ns.grad_sq_norm_se)
    sq = float(delta.square().sum())
    assert est.b_noise == pytest.approx((D + 1) + D * NOISE_SD**2 / sq, rel=0.05)
    assert est.eps_max == pytest.approx(1.0, rel=0.05)
    assert est.trace_h_cov == pytest.approx((D + 1) * sq + D * NOISE_SD**2, rel=0.05)


def test_the_model_is_left_as_it_was():
    model, x, y = small_problem(40)
    model.train()
    model[0].eval()
    model[2].weight.grad = torch.ones_like(model[2].weight)
    before = [p.detach().clone() for p in model.parameters()]
    curvature_noise_estimate(model, F.cross_entropy, x, y, 1.0, samples=8)
    assert model.training and not model[0].training and model[2].training
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert torch.equal(model[2].weight.grad, torch.ones_like(model[2].weight))


def toy_data(n: int = 240, d: int = 6, k: int = 3, seed: int = 0, n_val: int = 60) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + n_val, d, generator=g)
    y = ((x[:, 0] > 0).long() + (x[:, 1] + x[:, 2] > 0.5).long()).clamp(max=k - 1)
    return Dataset("toy", x[:n], y[:n], x[n:], y[n:], n_classes=k)


def toy_config(**kw) -> TrainConfig:
    base = dict(batch_size=16, lr=0.1, momentum=0.0, epochs=4, sharpness_every=0, b_noise_samples=32,
                measure_share="all", model=ModelConfig(hidden=(16,)))
    return TrainConfig(**{**base, **kw})


def test_with_an_int_cadence_b_noise_is_measured_wherever_b_simple_is():
    # A linear model: cross-entropy is convex in its weights, so G^T H G > 0 at every measurement
    # (a hidden layer can curve the loss down along G early in training: B_noise is then undefined).
    result = train(toy_config(measure_every_epochs=2, model=ModelConfig(hidden=())), toy_data())
    measured = [(m.grad_noise_scale is not None, m.b_noise is not None, m.eps_max is not None) for m in result.history]
    assert measured == [(False, False, False), (True, True, True), (False, False, False), (True, True, True)]
    last = result.history[-1]
    summary = result.summary()
    assert summary["final_b_noise"] == last.b_noise and summary["final_eps_max"] == last.eps_max
    assert summary["final_b_noise_se"] == last.b_noise_se == 0.0  # exact: 21 parameters <= 32 samples
    assert math.isfinite(last.b_noise) and last.b_noise > 0 and last.eps_max > 0


def test_b_noise_is_measured_where_the_target_is_first_reached():
    result = train(toy_config(epochs=30, target_val_acc=0.6, target_every=3, stop_at_target=True,
                              measure_every_epochs=1000, model=ModelConfig(hidden=())), toy_data())
    assert result.updates_to_target is not None and result.updates_to_target < 30 * 15
    summary = result.summary()
    assert summary["b_noise_at_target"] == summary["final_b_noise"]  # stopped there: the same measurement
    assert summary["eps_max_at_target"] == summary["final_eps_max"]
    assert {"b_noise_at_target_se", "eps_max_at_target_se"} <= set(summary)


def test_with_the_auto_cadence_b_noise_waits_until_its_cost_is_5_percent_of_the_steps():
    """At B = 16 on 240 examples an epoch is 15 updates, modelled 15 x 216 = 3,240 example-
    equivalents; a B_noise measurement 3 x 33 x 240 = 23,760: 5% of the steps pays for it after
    147 epochs. B_simple (2 x 240 + 8 x 50 = 880) is due every 6th epoch."""
    result = train(toy_config(epochs=12, momentum=0.0, model=ModelConfig(hidden=(16, 16))), toy_data())
    simple = [m.epoch for m in result.history if m.grad_noise_scale is not None]
    curvature = [m.epoch for m in result.history if m.b_noise is not None]
    assert simple == [6, 12] and curvature == [12]  # only at the end


def test_b_noise_samples_0_turns_it_off_and_1_is_refused():
    result = train(toy_config(epochs=1, b_noise_samples=0), toy_data())
    assert result.history[-1].grad_noise_scale is not None and result.history[-1].b_noise is None
    assert "final_b_noise" not in result.summary()
    with pytest.raises(ValueError, match="(?s)b_noise_samples.*0 \\(off\\) or >= 2.*got 1"):
        toy_config(b_noise_samples=1)
