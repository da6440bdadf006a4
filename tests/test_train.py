"""The trainer: updates, budgets, shuffling, learning rates, divergence, determinism."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from sgdtune.data import Dataset
from sgdtune.model import ModelConfig
from sgdtune.trainer import BatchPlan, Diverged, TrainConfig, lr_at, scaled_lr, train


def make_data(n: int = 60, d: int = 4, k: int = 3, seed: int = 0, n_val: int = 12) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + n_val, d, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    y = y.clamp(max=k - 1)
    return Dataset("toy", x[:n], y[:n], x[n:], y[n:], n_classes=k)


def cfg(**kw) -> TrainConfig:
    base = dict(batch_size=8, lr=0.1, momentum=0.0, epochs=1, probe_size=0, model=ModelConfig(hidden=()))
    return TrainConfig(**{**base, **kw})


def test_one_full_batch_update_equals_a_hand_computed_gradient_step():
    data = make_data()
    model = nn.Sequential(nn.Linear(4, 3))
    w0 = model[0].weight.detach().double().numpy().copy()
    b0 = model[0].bias.detach().double().numpy().copy()
    train(cfg(batch_size=10_000, lr=0.3, epochs=1), data, model=model)

    x, y = data.x_train.double().numpy(), data.y_train.numpy()
    logits = x @ w0.T + b0
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0  # d(mean cross-entropy)/d(logits) * n
    grad_w, grad_b = p.T @ x / len(y), p.mean(axis=0)
    np.testing.assert_allclose(model[0].weight.detach().numpy(), w0 - 0.3 * grad_w, atol=1e-6)
    np.testing.assert_allclose(model[0].bias.detach().numpy(), b0 - 0.3 * grad_b, atol=1e-6)


@pytest.mark.parametrize(
    "n,batch,drop_last,per_epoch,examples_per_epoch",
    [
        (60, 1, False, 60, 60),  # pure SGD
        (60, 7, False, 9, 60),  # ceil(60/7), last batch of 4
        (60, 7, True, 8, 56),  # floor with drop_last
        (60, 60, False, 1, 60),  # full batch
        (60, 1000, False, 1, 60),  # B > n is full batch too
    ],
)
def test_iterations_per_epoch_and_total_updates(n, batch, drop_last, per_epoch, examples_per_epoch):
    result = train(cfg(batch_size=batch, drop_last=drop_last, epochs=3), make_data(n))
    assert result.plan.iterations_per_epoch == per_epoch
    assert [m.updates for m in result.history] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    assert result.final.examples_seen == 3 * examples_per_epoch


@pytest.mark.parametrize("batch", [1, 8, 13, 60, 512])
def test_a_fixed_updates_budget_makes_exactly_that_many_updates(batch):
    result = train(cfg(batch_size=batch, budget="updates", updates=25, epochs=None), make_data())
    assert result.final.updates == 25
    per_epoch = math.ceil(60 / min(batch, 60))
    assert len(result.history) == math.ceil(25 / per_epoch)  # a final partial epoch is a step too


@pytest.mark.parametrize("batch", [1, 8, 13, 60, 512])
def test_a_fixed_examples_budget_processes_exactly_that_many_examples(batch):
    result = train(cfg(batch_size=batch, budget="examples", examples=150, epochs=None), make_data())
    assert result.final.examples_seen == 150
    assert result.final.updates == result.plan.total_updates


class Recorder(nn.Module):
    """A linear model that remembers the first feature of every training example it sees."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        if self.training:
            self.seen.append(x[:, 0].clone())
        return self.linear(x)


def epoch_orders(seed: int, n: int = 20, batch: int = 6, epochs: int = 3) -> list[list[int]]:
    ids = torch.arange(n, dtype=torch.float32)
    x = torch.stack([ids, torch.zeros(n)], dim=1)
    data = Dataset("ids", x, torch.zeros(n, dtype=torch.long), x[:2], torch.zeros(2, dtype=torch.long), 2)
    model = Recorder()
    train(cfg(batch_size=batch, epochs=epochs, seed=seed, lr=1e-9), data, model=model)
    flat = torch.cat(model.seen).long().tolist()
    return [flat[i * n : (i + 1) * n] for i in range(epochs)]


def test_each_epoch_is_a_new_shuffle_reproducible_from_the_seed():
    orders = epoch_orders(seed=3)
    assert all(sorted(o) == list(range(20)) for o in orders)  # every example once per epoch
    assert orders[0] != orders[1] != orders[2]
    assert epoch_orders(seed=3) == orders
    assert epoch_orders(seed=4) != orders


def test_same_seed_gives_bit_identical_metrics_and_another_seed_does_not():
    data = make_data(n=200)
    runs = [train(cfg(batch_size=16, epochs=3, seed=s, probe_size=32, model=ModelConfig(hidden=(16,))), data)
            for s in (5, 5, 6)]
    strip = lambda r: [{k: v for k, v in m.as_dict().items() if k != "epoch_time_s"} for m in r.history]  # noqa: E731
    assert strip(runs[0]) == strip(runs[1])
    assert strip(runs[0]) != strip(runs[2])


def test_a_nan_loss_stops_training_at_once_with_the_update_where_it_happened():
    data = make_data(n=200)
    with pytest.raises(Diverged, match=r"training loss became (nan|inf) at update \d+ \(epoch 1\)") as info:
        train(cfg(batch_size=4, lr=1e6, momentum=0.9, epochs=50, model=ModelConfig(hidden=(16,))), data)
    assert 1 <= info.value.update <= 50
    assert not math.isfinite(info.value.value)


@pytest.mark.parametrize(
    "rule,batch,expected",
    [("none", 1024, 0.1), ("linear", 1024, 0.4), ("linear", 64, 0.025), ("sqrt", 1024, 0.2), ("sqrt", 64, 0.05)],
)
def test_learning_rate_scaling_rules(rule, batch, expected):
    assert scaled_lr(0.1, batch, rule, base_batch_size=256) == pytest.approx(expected)


def test_linear_warmup_goes_from_the_base_lr_to_the_scaled_lr():
    assert [lr_at(t, 0.1, 0.5, warmup_updates=4) for t in range(6)] == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.5])
    result = train(cfg(batch_size=10, lr=0.1, lr_scaling="linear", base_batch_size=5, warmup_epochs=2, epochs=4),
                   make_data())
    # 6 updates per epoch, warmup over 12 updates from 0.1 to 0.2: lr after epoch 1 is at update 6.
    assert [m.lr for m in result.history] == pytest.approx([0.15, 0.2, 0.2, 0.2])
    assert result.lr == pytest.approx(0.2)


def test_updates_to_target_is_the_first_crossing():
    data = make_data(n=300)
    result = train(cfg(batch_size=10, epochs=6, target_val_acc=0.5, target_every=5, model=ModelConfig(hidden=(16,))),
                   data)
    assert result.updates_to_target is not None and result.updates_to_target % 5 == 0
    assert result.examples_to_target == result.updates_to_target * 10
    crossings = [m.updates for m in result.history if m.val_acc >= 0.5]
    assert result.updates_to_target <= crossings[0]
    never = train(cfg(batch_size=10, epochs=2, target_val_acc=1.0, lr=1e-9), data)
    assert never.updates_to_target is None and "updates_to_target" not in never.summary()


def test_batch_plan_rejects_a_missing_budget_size():
    with pytest.raises(ValueError, match=r"train.updates must be set when budget = 'updates'"):
        BatchPlan.of(10, cfg(budget="updates", epochs=None))


def test_stop_at_target_ends_training_at_the_first_crossing():
    data = make_data(n=300)
    config = cfg(batch_size=10, epochs=20, target_val_acc=0.5, target_every=5, model=ModelConfig(hidden=(16,)))
    full = train(config, data)
    early = train(config.model_copy(update={"stop_at_target": True}), data)
    assert early.updates_to_target == full.updates_to_target
    assert early.final.updates == early.updates_to_target < full.final.updates
