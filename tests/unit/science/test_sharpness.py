"""Known-answer tests for the sharpness estimator (docs/science.md, section 7)."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from sgdtune.science.sharpness import SharpnessEstimate, sharpness

D = 10


def regression(n: int, seed: int, d: int = D):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, torch.randn(n, generator=g, dtype=torch.float64)


def half_squared_error(out, y):
    return 0.5 * (out.squeeze(-1) - y).square().mean()


def mse(out, y):
    return nn.functional.mse_loss(out.squeeze(-1), y)


@pytest.mark.parametrize("loss_fn,factor", [(half_squared_error, 1.0), (mse, 2.0)], ids=["half-mse", "MSELoss"])
def test_linear_regression_sharpness_is_the_top_eigenvalue_of_xtx_over_n(loss_fn, factor):
    x, y = regression(400, seed=0)
    x = x * torch.linspace(0.5, 2.0, D, dtype=torch.float64)  # a spread spectrum, not ~I
    model = nn.Linear(D, 1, bias=False).double()
    expected = factor * np.linalg.eigvalsh((x.T @ x / len(x)).numpy())[-1]
    est = sharpness(model, loss_fn, x, y, chunk_size=150)  # uneven chunks: 150, 150, 100
    assert isinstance(est, SharpnessEstimate) and est.converged and est.probe_size == 400
    assert est.eigenvalue == pytest.approx(expected, rel=1e-4)


class Quadratic(nn.Module):
    """Loss 0.5 w^T A w (whatever the data): its Hessian is A."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.register_buffer("a", a)
        self.w = nn.Parameter(torch.ones(a.shape[0], dtype=a.dtype))

    def forward(self, x):
        return (0.5 * self.w @ self.a @ self.w).expand(x.shape[0])


def test_a_large_negative_eigenvalue_does_not_hide_the_top_positive_one():
    n = 300
    g = torch.Generator().manual_seed(1)
    spectrum = torch.cat([torch.tensor([-8.0, 3.0, 2.7]), torch.rand(n - 3, generator=g, dtype=torch.float64) * 4 - 2])
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    model = Quadratic(q @ torch.diag(spectrum.double()) @ q.T)
    x = torch.zeros(5, 1)
    est = sharpness(model, lambda out, y: out.mean(), x, x, tol=1e-8)
    assert est.converged
    assert est.eigenvalue == pytest.approx(3.0, rel=1e-6)  # power iteration would give -8
    assert est.lowest == pytest.approx(-8.0, rel=1e-3)
    assert est.iterations < n  # stopped by the rule, not by exhausting the space


def mlp_problem():
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(64, 5, generator=g, dtype=torch.float64)
    return model, x, torch.randint(0, 3, (64,), generator=g)


def explicit_hessian_top(model, loss_fn, x, y) -> float:
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss_of(v):
        params, start = {}, 0
        for k, shape in zip(names, shapes):
            params[k] = v[start:start + shape.numel()].view(shape)
            start += shape.numel()
        return loss_fn(functional_call(model, params, (x,)), y)

    return float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, flat))[-1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mlp_sharpness_matches_the_explicit_hessian(dtype):
    model, x, y = mlp_problem()
    expected = explicit_hessian_top(model, nn.functional.cross_entropy, x, y)  # 75 parameters
    model, x = model.to(dtype), x.to(dtype)
    est = sharpness(model, nn.functional.cross_entropy, x, y, chunk_size=20)
    assert est.converged
    assert est.eigenvalue == pytest.approx(expected, rel=1e-3)
    assert est.residual < 0.05 * expected


def test_the_same_seed_gives_the_same_value_and_another_seed_a_close_one():
    model, x, y = mlp_problem()
    first = sharpness(model, nn.functional.cross_entropy, x, y, seed=7)
    again = sharpness(model, nn.functional.cross_entropy, x, y, seed=7)
    other = sharpness(model, nn.functional.cross_entropy, x, y, seed=8)
    assert first == again
    assert other.eigenvalue == pytest.approx(first.eigenvalue, rel=1e-3)


def test_the_global_rng_is_not_touched():
    model, x, y = mlp_problem()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sharpness(model, nn.functional.cross_entropy, x, y)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("training", [True, False])
def test_parameters_gradients_and_modes_are_left_as_they_were(training):
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.5), nn.Tanh(), nn.Linear(8, 3)).double()
    model.train(training)
    model[1].train(not training)  # a mixed state must come back as it was
    x, y = mlp_problem()[1:]
    before = {k: p.detach().clone() for k, p in model.state_dict().items()}
    est = sharpness(model, nn.functional.cross_entropy, x, y)
    assert est.converged  # dropout is off inside: the products are deterministic
    assert model.training is training and model[1].training is (not training) and model[0].training is training
    assert all(torch.equal(before[k], p) for k, p in model.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_only_trainable_parameters_count():
    x, y = regression(200, seed=4, d=3)
    model = nn.Linear(3, 1).double()
    model.bias.requires_grad_(False)  # frozen: the Hessian is XtX/n over the weights alone
    expected = np.linalg.eigvalsh((x.T @ x / len(x)).numpy())[-1]
    assert sharpness(model, half_squared_error, x, y).eigenvalue == pytest.approx(expected, rel=1e-6)
    assert model.bias.requires_grad is False


def test_bad_arguments_are_refused():
    x, y = regression(10, seed=0)
    model = nn.Linear(D, 1, bias=False).double()
    with pytest.raises(ValueError, match="iters must be >= 1"):
        sharpness(model, half_squared_error, x, y, iters=0)
    with pytest.raises(ValueError, match="the probe is empty"):
        sharpness(model, half_squared_error, x[:0], y[:0])
    model.weight.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        sharpness(model, half_squared_error, x, y)


def test_a_warm_start_from_the_last_top_vector_takes_fewer_products_for_the_same_eigenvalue():
    """The trainer measures sharpness again a few epochs later from the last top Ritz vector:
    after a small step of gradient descent the top eigenvector has barely moved, so the warm
    run stops on its residual (<= tol x eigenvalue) in fewer Hessian-vector products than a
    cold one (3 against 10 here), and both match the explicit Hessian's top eigenvalue to 1e-3."""
    model, x, y = mlp_problem()
    first = sharpness(model, nn.functional.cross_entropy, x, y, tol=1e-3)
    assert first.vector is not None and first.vector.shape == (75,)
    assert float(first.vector.norm()) == pytest.approx(1.0, rel=1e-12)
    loss = nn.functional.cross_entropy(model(x), y)
    with torch.no_grad():
        for p, g in zip(model.parameters(), torch.autograd.grad(loss, list(model.parameters()))):
            p -= 0.05 * g
    expected = explicit_hessian_top(model, nn.functional.cross_entropy, x, y)
    cold = sharpness(model, nn.functional.cross_entropy, x, y, tol=1e-3)
    warm = sharpness(model, nn.functional.cross_entropy, x, y, tol=1e-3, start=first.vector)
    assert cold.converged and warm.converged
    assert cold.eigenvalue == pytest.approx(expected, rel=1e-3)
    assert warm.eigenvalue == pytest.approx(expected, rel=1e-3)
    assert warm.iterations < cold.iterations


def test_a_start_at_the_top_eigenvector_stops_after_one_product_and_a_foreign_start_is_ignored():
    x, y = regression(400, seed=0)
    x = x * torch.linspace(0.5, 2.0, D, dtype=torch.float64)
    model = nn.Linear(D, 1, bias=False).double()
    values, vectors = np.linalg.eigh((x.T @ x / len(x)).numpy())
    est = sharpness(model, half_squared_error, x, y, start=torch.from_numpy(vectors[:, -1].copy()))
    assert est.iterations == 1 and est.eigenvalue == pytest.approx(values[-1], rel=1e-12)
    cold = sharpness(model, half_squared_error, x, y)
    for foreign in (torch.ones(D + 1, dtype=torch.float64), torch.full((D,), math.nan, dtype=torch.float64)):
        assert sharpness(model, half_squared_error, x, y, start=foreign) == cold  # as if no start


def test_products_through_the_kept_gradient_graph_equal_those_recomputed_each_time():
    from sgdtune.science.sharpness import HessianOperator

    model, x, y = mlp_problem()
    model.eval()
    kept = HessianOperator(model, nn.functional.cross_entropy, x, y, keep_graph=True)
    fresh = HessianOperator(model, nn.functional.cross_entropy, x, y)
    assert kept.keep_graph and not fresh.keep_graph
    g = torch.Generator().manual_seed(5)
    for _ in range(3):  # the graph is built once and reused
        v = torch.randn(kept.size, generator=g, dtype=torch.float64)
        assert torch.allclose(kept(v), fresh(v), rtol=1e-12, atol=1e-14)
    assert not HessianOperator(model, nn.functional.cross_entropy, x, y, chunk_size=20, keep_graph=True).keep_graph
