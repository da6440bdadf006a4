"""Known-answer tests for the noise science (docs/science.md)."""

import math

import numpy as np
import pytest
import torch
from linreg import D, exact_noise_scale, half_squared_error, linear_model, regression
from torch import nn

from sgdtune.data import DataConfig, load_data
from sgdtune.model import ModelConfig
from sgdtune.science.fits import fit_steps_to_target, loglog_slope, steps_model
from sgdtune.science.noise import (
    NoiseScaleMeter,
    gradient_stats_from_per_example,
    gradient_stats_two_batches,
    loss_noise,
    noise_temperature,
    per_example_gradients,
)
from sgdtune.trainer import TrainConfig, train


@pytest.mark.parametrize("probe_seed", [0, 1])
def test_per_example_noise_scale_is_within_15_percent_of_the_exact_value(probe_seed):
    delta = torch.full((D,), 0.5, dtype=torch.float64)  # |G|^2 = 2.5, tr(Sigma) = 37.5, B = 15
    trace, grad_sq = exact_noise_scale(delta)
    x, y = regression(20_000, probe_seed)
    stats = gradient_stats_from_per_example(per_example_gradients(linear_model(delta), half_squared_error, x, y))
    assert stats.trace_cov == pytest.approx(trace, rel=0.05)
    assert stats.grad_sq_norm == pytest.approx(grad_sq, rel=0.15)
    assert stats.simple_noise_scale == pytest.approx(trace / grad_sq, rel=0.15)


@pytest.mark.parametrize("small,big", [(8, 512), (32, 512), (8, 64)])
def test_two_batch_estimators_recover_the_exact_noise_scale_at_any_batch_sizes(small, big):
    delta = torch.full((D,), 0.5, dtype=torch.float64)
    trace, grad_sq = exact_noise_scale(delta)
    x, y = regression(400_000, seed=2)
    grads = (x * (x @ delta - y).unsqueeze(1))  # per-example gradients, exact formula
    sq_norm = lambda b: float(grads[: (len(grads) // b) * b].reshape(-1, b, D).mean(1).square().sum(1).mean())  # noqa: E731
    stats = gradient_stats_two_batches(sq_norm(small), small, sq_norm(big), big)
    assert stats.simple_noise_scale == pytest.approx(trace / grad_sq, rel=0.15)


def test_the_noise_meter_does_not_depend_on_the_training_batch_size():
    data = load_data(DataConfig(dataset="digits"), seed=0)
    values = {}
    for batch in (8, 512):
        config = TrainConfig(batch_size=batch, lr=1e-9, momentum=0.0, budget="updates", updates=4, epochs=None,
                             probe_size=256, sharpness_every=0, measure_share="all", model=ModelConfig(hidden=(32,)))
        values[batch] = train(config, data).final.grad_noise_scale
    assert values[8] is not None and values[8] > 1
    assert values[512] == pytest.approx(values[8], rel=1e-3)  # same parameters, same probe


def test_the_meter_smooths_numerator_and_denominator_separately():
    delta = torch.full((D,), 0.5, dtype=torch.float64)
    x, y = regression(64, 3)
    meter = NoiseScaleMeter(x, y, half_squared_error, decay=0.5)
    first = meter.measure(linear_model(delta))
    second = meter.measure(linear_model(2 * delta))
    expected = (0.5 * first.trace_cov + 0.5 * second.trace_cov) / (0.5 * first.grad_sq_norm + 0.5 * second.grad_sq_norm)
    assert meter.value == pytest.approx(expected)


def test_loss_noise_falls_like_one_over_sqrt_b_on_a_fixed_model():
    data = load_data(DataConfig(dataset="synthetic", n_samples=25_000, n_features=16, n_classes=4), seed=0)
    batches = [8, 16, 32, 64, 128]
    noise = []
    for batch in batches:
        config = TrainConfig(batch_size=batch, lr=1e-12, momentum=0.0, epochs=1, probe_size=0,
                             model=ModelConfig(hidden=(16,)))
        noise.append(train(config, data).final.loss_noise)
    assert loglog_slope(batches, noise) == pytest.approx(-0.5, abs=0.08)


def test_loss_noise_leaves_out_a_short_last_batch():
    losses = torch.tensor([1.0, 1.2, 0.9, 1.1, 3.0], dtype=torch.float64)
    assert loss_noise(losses, short_last=True) == loss_noise(losses[:-1])
    assert loss_noise(losses) > loss_noise(losses[:-1])
    assert loss_noise(losses[:2], short_last=True) == 0.0


def test_loss_noise_ignores_a_linear_trend_and_is_zero_for_one_batch():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(4000, generator=g, dtype=torch.float64)
    trend = torch.linspace(10.0, 0.0, 4000, dtype=torch.float64)
    assert loss_noise(noise + trend) == pytest.approx(1.0, rel=0.05)
    assert loss_noise(torch.tensor([3.0])) == 0.0


def test_noise_temperature():
    assert noise_temperature(0.1, n_train=1000, batch_size=10) == pytest.approx(0.1 * 99)
    assert noise_temperature(0.1, n_train=1000, batch_size=10, momentum=0.9) == pytest.approx(0.1 * 99 / 0.1)
    assert noise_temperature(0.1, n_train=1000, batch_size=5000) == 0.0  # full batch: no noise


def test_the_steps_fit_recovers_s_min_and_b_crit_from_noisy_points():
    rng = np.random.default_rng(0)
    batches = np.array([8, 16, 32, 64, 128, 256, 512, 1024])
    steps = steps_model(batches, s_min=200.0, b_crit=100.0) * rng.lognormal(0.0, 0.05, size=batches.size)
    fit = fit_steps_to_target(batches, steps)
    assert fit.s_min == pytest.approx(200.0, rel=0.1)
    assert fit.b_crit == pytest.approx(100.0, rel=0.15)
    assert fit.e_min == pytest.approx(fit.s_min * fit.b_crit)


def test_the_steps_fit_needs_two_batch_sizes():
    with pytest.raises(ValueError, match="at least 2 distinct batch sizes; got \\[64.0\\]"):
        fit_steps_to_target([64, 64], [10, 12])


def test_loglog_slope_of_a_power_law():
    b = np.array([1, 2, 4, 8, 16.0])
    assert loglog_slope(b, 3 * b**-0.5) == pytest.approx(-0.5)
    assert math.isclose(loglog_slope(b, b), 1.0)


def test_the_one_pass_linear_estimator_equals_per_example_gradients_on_an_mlp():
    from sgdtune.model import build_model
    from sgdtune.science.noise import linear_gradient_stats

    data = load_data(DataConfig(dataset="digits"), seed=0)
    model = build_model(ModelConfig(hidden=(32, 16), activation="tanh"), 64, 10, seed=3)
    x, y = data.x_train[:96], data.y_train[:96]
    fast = linear_gradient_stats(model, torch.nn.functional.cross_entropy, x, y)
    slow = gradient_stats_from_per_example(per_example_gradients(model, torch.nn.functional.cross_entropy, x, y))
    assert fast.trace_cov == pytest.approx(slow.trace_cov, rel=1e-4)
    assert fast.grad_sq_norm == pytest.approx(slow.grad_sq_norm, rel=1e-4)


class SharedLinear(nn.Module):
    """One Linear layer applied twice: the one-pass trick does not apply."""

    def __init__(self):
        super().__init__()
        self.a, self.out = nn.Linear(4, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.out(torch.tanh(self.a(torch.tanh(self.a(x)))))


@pytest.mark.parametrize("model", [
    nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3)),  # a non-Linear parameter
    nn.Sequential(nn.Linear(4, 8), nn.ReLU(inplace=True), nn.Linear(8, 3)),  # output changed in place
    SharedLinear(),
], ids=["layernorm", "inplace-relu", "shared-linear"])
def test_models_outside_the_one_pass_trick_fall_back_to_per_example_gradients(model):
    from sgdtune.science.noise import linear_gradient_stats

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g)
    assert linear_gradient_stats(model, torch.nn.functional.cross_entropy, x, y) is None
    meter = NoiseScaleMeter(x, y, torch.nn.functional.cross_entropy)
    stats = meter.measure(model)
    expected = gradient_stats_from_per_example(per_example_gradients(model, torch.nn.functional.cross_entropy, x, y))
    assert stats.trace_cov == pytest.approx(expected.trace_cov, rel=1e-5)


def test_loss_noise_at_fixed_weights_falls_like_one_over_sqrt_b_and_is_seeded():
    from sgdtune.science.noise import fixed_model_loss_noise

    losses = torch.rand(20_000, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3
    curve = fixed_model_loss_noise(losses, seed=0)
    assert list(curve) == [8 * 2**k for k in range(10)]  # up to n/4
    sigma, n = float(losses.std()), losses.numel()
    for b, value in curve.items():
        assert value == pytest.approx(sigma / math.sqrt(b) * math.sqrt(n / (n - 1)), rel=0.2)
    assert loglog_slope(list(curve), list(curve.values())) == pytest.approx(-0.5, abs=0.05)
    assert fixed_model_loss_noise(losses, seed=0) == curve
    assert fixed_model_loss_noise(losses, seed=1) != curve


def test_a_trained_run_reports_the_fixed_weight_loss_noise_slope_alone_and_stacked():
    from sgdtune.trainer import train_stacked

    data = load_data(DataConfig(dataset="digits"), seed=0)
    configs = [TrainConfig(batch_size=32, lr=lr, epochs=2, seed=5, measure_share="all", model=ModelConfig(hidden=[32]))
               for lr in (0.05, 0.1)]
    alone = [train(c, data).summary()["fixed_model_loss_noise_slope"] for c in configs]
    stacked = [r.summary()["fixed_model_loss_noise_slope"] for r in train_stacked(configs, data)]
    assert all(-1.0 < s < -0.2 for s in alone)  # a fixed model: near -1/2, no training trend
    assert stacked == pytest.approx(alone, abs=1e-3)
