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


# -- in training: the loop's epoch-end measurement (docs/science.md, section 3) ----------------


def _digits():
    from sgdtune.data import DataConfig, load_data

    return load_data(DataConfig(dataset="digits"), seed=0)


@pytest.mark.parametrize("probe_size", ["auto", 256])
def test_the_logged_noise_scale_is_noise_scale_estimate_on_the_same_probe_and_weights(probe_size):
    from sgdtune.model import ModelConfig, build_model
    from sgdtune.trainer import TrainConfig, fixed_subset, train
    from sgdtune.trainer.budget import PROBE_CHUNKS

    data = _digits()
    n = data.n_train
    config = TrainConfig(batch_size=64, lr=0.05, epochs=2, probe_size=probe_size, sharpness_every=0,
                         measure_share="all", model=ModelConfig(hidden=(32,)))
    model = build_model(config.model, data.n_features, data.n_classes, config.seed)
    result = train(config, data, model=model)  # the model keeps the final weights
    size = n if probe_size == "auto" else 256  # auto: the whole set (n = 1,437 <= 16,384)
    idx = fixed_subset(n, size, data.x_train.device)
    want = noise_scale_estimate(model, nn.functional.cross_entropy, data.x_train[idx], data.y_train[idx],
                                chunks=PROBE_CHUNKS, population=n)
    final, summary = result.final, result.summary()
    assert final.grad_noise_scale == pytest.approx(want.simple, rel=1e-6)
    assert final.grad_noise_scale_se == pytest.approx(want.simple_se, rel=1e-6, abs=1e-9)
    assert final.grad_noise_scale_bound == float(want.bound) == 0.0
    assert summary["final_grad_noise_scale"] == final.grad_noise_scale
    assert summary["final_grad_noise_scale_se"] == final.grad_noise_scale_se
    assert summary["final_grad_noise_scale_bound"] == 0.0
    assert math.isfinite(final.grad_noise_scale_se) and final.grad_noise_scale > 1
    if probe_size == "auto":  # the whole training set: |G|^2 = |g_mean|^2 exactly, no sampling error
        assert final.grad_noise_scale_se == 0.0 and want.grad_sq_norm > 0
    else:
        assert final.grad_noise_scale_se > 0


def _regression_data(n: int, n_val: int, d: int = 5, seed: int = 0, noise: float = 0.3):
    from sgdtune.data import Dataset

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + n_val, d, generator=g)
    y = x @ torch.linspace(-1, 1, d) + 0.5 + noise * torch.randn(n + n_val, generator=g)
    return Dataset("lin", x[:n], y[:n], x[n:], y[n:], n_classes=1, task="regression")


def test_near_the_optimum_the_logged_value_is_a_flagged_finite_lower_bound():
    from sgdtune.model import ModelConfig
    from sgdtune.trainer import TrainConfig, train

    data = _regression_data(4000, 100)
    ones = torch.ones(data.n_train, 1)
    solution = torch.linalg.lstsq(torch.cat([data.x_train, ones], 1).double(), data.y_train.double()).solution.float()
    model = nn.Linear(data.n_features, 1)
    with torch.no_grad():
        model.weight.copy_(solution[:-1].unsqueeze(0))
        model.bias.copy_(solution[-1:])
    config = TrainConfig(batch_size=100, lr=1e-9, momentum=0.0, epochs=1, probe_size=64, sharpness_every=0,
                         measure_share="all", model=ModelConfig(hidden=()))
    final = train(config, data, model=model).final  # G = 0 at the training set's least-squares weights
    assert final.grad_noise_scale_bound == 1.0
    assert math.isfinite(final.grad_noise_scale) and final.grad_noise_scale > 0
    assert math.isfinite(final.grad_noise_scale_se)


def test_regression_trains_on_mse_scores_r2_and_measures_the_known_answers():
    from sgdtune.model import ModelConfig
    from sgdtune.trainer import TrainConfig, train, train_stacked

    data = _regression_data(500, 200)
    config = TrainConfig(batch_size=50, lr=0.05, momentum=0.0, epochs=5, measure_share="all",
                         model=ModelConfig(hidden=()))  # defaults, every measurement at full size
    model = nn.Linear(data.n_features, 1)
    result = train(config, data, model=model)
    first, final = result.history[0], result.final
    assert final.train_loss < first.train_loss
    with torch.no_grad():
        for x, y, loss, score in ((data.x_val, data.y_val, final.val_loss, final.val_acc),
                                  (data.x_train, data.y_train, final.train_loss, final.train_acc)):
            residual = (model(x).squeeze(-1) - y).double()
            assert loss == pytest.approx(float(residual.square().mean()), rel=1e-5)
            sst = float((y.double() - y.double().mean()).square().sum())
            assert score == pytest.approx(1 - float(residual.square().sum()) / sst, rel=1e-5)
    logged, summary = final.as_dict(), result.summary()
    assert {"train_r2", "val_r2"} <= set(logged) and not {"train_acc", "val_acc", "task"} & set(logged)
    assert summary["final_val_r2"] == final.val_acc and summary["final_train_r2"] == final.train_acc
    assert summary["best_val_r2"] == max(m.val_acc for m in result.history) and "final_val_acc" not in summary
    assert summary["final_gen_gap"] == pytest.approx(final.train_acc - final.val_acc)

    # Known answers at the final weights, all n = 500 examples in both probes (the defaults).
    xa = torch.cat([data.x_train, torch.ones(data.n_train, 1)], 1).double()
    w = torch.cat([model.weight.detach().view(-1), model.bias.detach()]).double()
    per_example = 2 * (xa @ w - data.y_train.double()).unsqueeze(1) * xa  # gradients of (w.x - y)^2
    mean = per_example.mean(0)
    trace = float((per_example - mean).square().sum()) / (data.n_train - 1)
    assert final.grad_noise_scale == pytest.approx(trace / float(mean.square().sum()), rel=1e-3)
    top = float(torch.linalg.eigvalsh(2 * xa.T @ xa / data.n_train)[-1])  # MSELoss's Hessian: 2 X^T X / n
    assert final.sharpness == pytest.approx(top, rel=1e-3)
    assert summary["final_sharpness"] == final.sharpness
    assert summary["final_lr_sharpness"] == pytest.approx(0.05 * top, rel=1e-3)

    with pytest.raises(ValueError, match="classification only; got data.task = 'regression'"):
        train_stacked([config], data)


def test_the_noise_scale_is_finite_at_the_end_of_every_critical_batch_like_trial():
    from sgdtune.model import ModelConfig
    from sgdtune.trainer import Diverged, TrainConfig, train_stacked

    data = _digits()
    complete = 0
    for batch in (8, 64, 512, 1024):
        configs = [TrainConfig(batch_size=batch, lr=lr, momentum=0.9, budget="updates", updates=120, epochs=None,
                               target_val_acc=0.95, target_every=5, stop_at_target=True, sharpness_every=0,
                               measure_share="all",  # as experiments/critical_batch.toml
                               model=ModelConfig(hidden=(128,)), seed=0) for lr in (0.03, 0.3)]
        for result in train_stacked(configs, data):
            if isinstance(result, Diverged):
                continue
            complete += 1
            summary = result.summary()
            assert math.isfinite(summary["final_grad_noise_scale"]) and summary["final_grad_noise_scale"] > 0
            assert math.isfinite(summary["final_grad_noise_scale_se"])
            assert summary["final_grad_noise_scale_bound"] in (0.0, 1.0)
            if result.updates_to_target is not None:
                assert math.isfinite(summary["grad_noise_scale_at_target"])
                assert summary["grad_noise_scale_at_target"] == summary["final_grad_noise_scale"]  # stopped there
    assert complete >= 6


def test_the_rank_one_case_makes_the_probe_rule_of_16_b_simple_an_sd_of_half_not_9_percent():
    """g_i = (g + sigma z_i) u: Sigma = sigma^2 u u' is rank one and aligned with G, B_simple = sigma^2 / g^2.
    The mean of b = 16 B_simple gradients has |G^|^2 with relative SD sqrt(4/16 + 2/256) = 0.508: the
    4 G'Sigma G / b term dominates. The measured SE, not a formula in B_simple, has to size the probe."""
    rng = np.random.default_rng(0)
    g, sigma = 1.0, 4.0  # B_simple = 16
    b = 16 * 16
    means = g + sigma * rng.standard_normal((20_000, b)).mean(1)
    unbiased = means ** 2 - sigma ** 2 / b  # |G|^2 estimate with tr(Sigma)/b taken out
    assert unbiased.std() / g ** 2 == pytest.approx(math.sqrt(4 / 16 + 2 / 256), rel=0.03)


def test_the_auto_probe_grows_from_the_measured_standard_error_of_the_gradient_norm():
    from sgdtune.trainer import auto_probe_size

    def last(probe, rel_se, grad_sq=2.0):
        return NoiseScaleEstimate(trace_cov=10.0, trace_cov_se=1.0, grad_sq_norm=grad_sq,
                                  grad_sq_norm_se=rel_se * abs(grad_sq), simple=5.0, simple_se=1.0,
                                  probe_size=probe, bound=False, chunks=8)

    n = 1_000_000
    assert auto_probe_size(1437, last(256, 0.9)) == 1437  # a small set: always the whole of it
    assert auto_probe_size(n, None) == 2048
    assert auto_probe_size(n, last(4096, 0.2)) == 16_384  # (0.2 / 0.1)^2 = 4x, whatever B_simple is
    assert auto_probe_size(n, last(4096, 0.05)) == 2048  # resolved: the probe may shrink, to the floor
    assert auto_probe_size(n, last(4096, 0.9)) == 65_536  # at most 16x per step, and the cap
    assert auto_probe_size(n, last(2048, 1.0, grad_sq=-0.1)) == 32_768  # unresolved |G|^2: 16x
