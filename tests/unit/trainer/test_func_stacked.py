"""Stacked training of any model through torch.func (trainer.func_stacked): each member is
the trial `train` would run alone, for a CNN factory model as for the built-in MLP."""

import pytest
import torch
from test_stacked import TOL, assert_same_trial, cfg, make_data
from torch import nn

from sgdtune.data import Dataset
from sgdtune.model import ModelConfig, build_model
from sgdtune.trainer import (
    FuncStacked,
    TrainConfig,
    UnstackableModel,
    check_group,
    evaluate,
    group_key,
    train,
    train_stacked,
)
from sgdtune.trainer.loop import Loop


class SmallConv(nn.Module):
    """A factory-style model: the n_features inputs as a 1-channel signal, Conv1d, pooling, Linear."""

    def __init__(self, n_features: int, n_classes: int):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, kernel_size=3, padding=1)
        self.head = nn.Linear(4 * n_features, n_classes)

    def forward(self, x):
        h = torch.relu(self.conv(x.unsqueeze(-2)))
        return self.head(h.flatten(-2))


class SmallConv2d(nn.Module):
    """The 16 inputs as a 4 x 4 image: Conv2d, ReLU, Linear."""

    def __init__(self, n_features: int, n_classes: int):
        super().__init__()
        self.side = int(n_features**0.5)
        self.conv = nn.Conv2d(1, 3, kernel_size=3, padding=1)
        self.head = nn.Linear(3 * n_features, n_classes)

    def forward(self, x):
        h = torch.tanh(self.conv(x.view(-1, 1, self.side, self.side)))
        return self.head(h.flatten(1))


def conv1d(n_features: int, n_classes: int) -> nn.Module:
    return SmallConv(n_features, n_classes)


def conv2d(n_features: int, n_classes: int) -> nn.Module:
    return SmallConv2d(n_features, n_classes)


def with_dropout(n_features: int, n_classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_features, 8), nn.Dropout(0.1), nn.Linear(8, n_classes))


CONV1D = ModelConfig(factory="test_func_stacked:conv1d")
CONV2D = ModelConfig(factory="test_func_stacked:conv2d")

MEMBERS = [  # different lr, momentum, weight decay, seed, lr scaling and warmup
    dict(lr=0.05, momentum=0.9, seed=1),
    dict(lr=0.02, momentum=0.0, weight_decay=0.02, seed=2),
    dict(lr=0.1, momentum=0.5, seed=3, lr_scaling="sqrt", base_batch_size=32, warmup_epochs=1.5),
    dict(lr=0.01, momentum=0.9, weight_decay=0.01, seed=1),
]


def spread(results) -> float:
    finals = [r.final.val_loss for r in results]
    return min(abs(a - b) for i, a in enumerate(finals) for b in finals[i + 1 :])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("model", [CONV1D, CONV2D], ids=["conv1d", "conv2d"])
def test_each_cnn_member_equals_its_trial_trained_alone(optimizer, model):
    data = make_data(d=16)
    scale = 0.1 if optimizer == "adam" else 1.0
    configs = [cfg(**{**m, "lr": m["lr"] * scale}, optimizer=optimizer, model=model) for m in MEMBERS]
    stacked = train_stacked(configs, data)
    for config, result in zip(configs, stacked):
        assert_same_trial(result, train(config, data))
    assert spread(stacked) > 10 * TOL  # the members really differ


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_func_stepper_on_the_builtin_mlp_equals_train(optimizer):
    """FuncStacked itself, in the loop, on the MLP (train_stacked would pick StackedMLP)."""
    data = make_data()
    scale = 0.1 if optimizer == "adam" else 1.0
    configs = [cfg(**{**m, "lr": m["lr"] * scale}, optimizer=optimizer) for m in MEMBERS]
    for k in (1, len(configs)):  # K = 1 too
        group = configs[:k]
        loop = Loop(group, data)
        modules = [build_model(c.model, data.n_features, data.n_classes, c.seed) for c in group]
        results = loop.run(FuncStacked(modules, group, loop.lrs))
        for config, result in zip(group, results):
            assert_same_trial(result, train(config, data))


def test_k1_through_the_func_stepper_equals_train():
    data = make_data(d=16)
    (config,) = [cfg(lr=0.05, momentum=0.9, weight_decay=0.01, seed=4, model=CONV1D)]
    (result,) = train_stacked([config], data)
    assert_same_trial(result, train(config, data))


def test_a_diverging_member_leaves_the_others_unchanged():
    data = make_data(d=16)
    configs = [cfg(lr=0.05, momentum=0.9, seed=1, model=CONV1D), cfg(lr=1e6, momentum=0.9, seed=2, model=CONV1D),
               cfg(lr=0.02, seed=3, model=CONV1D)]
    results = train_stacked(configs, data)
    with pytest.raises(Exception) as alone:
        train(configs[1], data)
    assert type(results[1]) is type(alone.value) and str(results[1]) == str(alone.value)
    for i in (0, 2):
        assert_same_trial(results[i], train(configs[i], data))


def test_full_batch_cnn_members_match_training_alone():
    data = make_data(d=16)
    configs = [cfg(batch_size=1000, lr=0.5, epochs=3, seed=s, model=CONV1D) for s in (4, 5)]
    for config, result in zip(configs, train_stacked(configs, data)):
        assert_same_trial(result, train(config, data))


def test_stacked_evaluation_equals_evaluate_member_by_member():
    data = make_data(d=16)
    configs = [cfg(**m, model=CONV2D) for m in MEMBERS]
    modules = [build_model(c.model, data.n_features, data.n_classes, c.seed) for c in configs]
    stack = FuncStacked(modules, configs, [c.lr for c in configs])
    stack.begin_epoch([torch.randperm(data.n_train, generator=torch.Generator().manual_seed(i)) for i in range(4)])
    for start in range(0, 40, 8):
        stack.step(data.x_train, data.y_train, start, start + 8)
    template = build_model(configs[0].model, data.n_features, data.n_classes, 0)
    got = stack.evaluate(data.x_val, data.y_val, [3, 0, 2])
    for (loss, acc), position in zip(got, (3, 0, 2)):
        want_loss, want_acc = evaluate(stack.load_into(template, position), data.x_val, data.y_val)
        assert loss == pytest.approx(want_loss, rel=1e-6) and acc == want_acc


def test_factory_models_group_by_their_name_and_shape():
    assert group_key(cfg(model=CONV1D, lr=0.1, seed=1)) == group_key(cfg(model=CONV1D, lr=0.3, seed=2))
    assert group_key(cfg(model=CONV1D)) != group_key(cfg(model=CONV2D)) != group_key(cfg())
    check_group([cfg(model=CONV1D), cfg(model=CONV1D, seed=3)])
    with pytest.raises(ValueError, match=r"same model.factory"):
        check_group([cfg(model=CONV1D), cfg(model=CONV2D)])


@pytest.mark.parametrize("factory,message", [
    ("torch.nn:BatchNorm1d", r"buffers \['running_mean'"),
    ("test_func_stacked:with_dropout", r"dropout at \['1'\]"),
])
def test_models_with_state_outside_their_parameters_are_refused(factory, message):
    configs = [cfg(model=ModelConfig(factory=factory), seed=s) for s in (0, 1)]
    with pytest.raises(UnstackableModel, match=message):
        train_stacked(configs, make_data())


def test_regression_stays_refused():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 16, generator=g)
    data = Dataset("toy", x[:60], x[:60, 0], x[60:], x[60:, 0], n_classes=1, task="regression")
    with pytest.raises(ValueError, match=r"classification only"):
        train_stacked([TrainConfig(batch_size=8, model=CONV1D)], data)


class FakeJob:
    """What run_cohort uses of a TrialJob."""

    def __init__(self, config: TrainConfig):
        self.config, self.trial, self.values, self.ending = config, object(), None, None

    def on_epoch(self, metrics) -> None:
        pass

    def finish(self, ending):
        self.ending = ending
        return "COMPLETE"


def test_cohorts_stack_factory_models_and_train_unstackable_ones_one_by_one(monkeypatch):
    from types import SimpleNamespace

    from sgdtune.study import cohorts as cohorts

    stacked_sizes = []

    def spy(configs, data, on_epoch=None):
        stacked_sizes.append(len(configs))
        return train_stacked(configs, data, on_epoch)

    monkeypatch.setattr(cohorts, "train_stacked", spy)
    told = []
    study = SimpleNamespace(tell=lambda trial, values=None, state=None: told.append(trial))
    batchnorm = ModelConfig(factory="torch.nn:BatchNorm1d")
    jobs = [FakeJob(cfg(model=CONV1D, lr=0.05, seed=1, epochs=1)), FakeJob(cfg(model=batchnorm, seed=1, epochs=1)),
            FakeJob(cfg(model=CONV1D, lr=0.02, seed=2, epochs=1)), FakeJob(cfg(model=batchnorm, seed=2, epochs=1))]
    cohorts.run_cohort(study, SimpleNamespace(data=make_data(d=16)), jobs)
    assert stacked_sizes == [2, 2]  # the two CNNs stacked; the BatchNorm pair tried, refused, then one by one
    assert sorted(map(id, told)) == sorted(id(j.trial) for j in jobs)  # each told once
    assert all(hasattr(j.ending, "final") for j in jobs)
    assert_same_trial(jobs[2].ending, train(jobs[2].config, make_data(d=16)))
