"""Stacked training: each member is the trial `train` would run alone; members never mix."""

import math

import pytest
import torch

from sgdtune.data import Dataset
from sgdtune.model import ModelConfig, build_model
from sgdtune.trainer import Diverged, StackedMLP, TrainConfig, evaluate, group_key, train, train_stacked

TOL = 1e-4  # batched products round differently from nn.Linear (and the probe sums differently)


def make_data(n: int = 240, d: int = 6, k: int = 3, seed: int = 0, n_val: int = 60) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n + n_val, d, generator=g)
    y = ((x[:, 0] > 0).long() + (x[:, 1] + x[:, 2] > 0.5).long()).clamp(max=k - 1)
    return Dataset("toy", x[:n], y[:n], x[n:], y[n:], n_classes=k)


def cfg(**kw) -> TrainConfig:
    base = dict(batch_size=8, lr=0.05, momentum=0.0, epochs=3, probe_size="auto", measure_every_epochs=1,
                sharpness_every=2, b_noise_samples=32, model=ModelConfig(hidden=(16, 16)))
    return TrainConfig(**{**base, **kw})


MEMBERS = [  # different lr, momentum, weight decay, seed, lr scaling and warmup
    dict(lr=0.05, momentum=0.9, seed=1),
    dict(lr=0.02, momentum=0.0, weight_decay=0.02, seed=2),
    dict(lr=0.1, momentum=0.5, seed=3, lr_scaling="sqrt", base_batch_size=32, warmup_epochs=1.5),
    dict(lr=0.01, momentum=0.9, seed=1),
]


class Pruned(Exception):
    """Stands in for optuna.TrialPruned (the trainer's modules import no optuna)."""


def assert_same_trial(got, want, tol: float = TOL) -> None:
    """Same epochs, counters and lr exactly; losses, accuracies and noise within tol."""
    assert len(got.history) == len(want.history)
    for g, w in zip(got.history, want.history):
        assert (g.epoch, g.updates, g.examples_seen) == (w.epoch, w.updates, w.examples_seen)
        assert (g.lr, g.noise_temperature) == (w.lr, w.noise_temperature)
        for name in ("train_loss", "val_loss", "train_acc", "val_acc", "loss_noise"):
            assert abs(getattr(g, name) - getattr(w, name)) <= tol, (name, g.epoch, getattr(g, name), getattr(w, name))
        for name in ("grad_noise_scale", "grad_noise_scale_se", "sharpness", "lr_sharpness", "b_noise", "eps_max"):
            value, alone = getattr(g, name), getattr(w, name)
            assert (value is None) == (alone is None), (name, g.epoch)
            assert value is None or value == pytest.approx(alone, rel=tol, abs=tol), (name, g.epoch, value, alone)
        assert g.grad_noise_scale_bound == w.grad_noise_scale_bound
    assert got.plan == want.plan and got.lr == want.lr
    assert set(got.summary()) == set(want.summary())
    for name in ("final_grad_noise_scale", "final_sharpness", "grad_noise_scale_at_target", "final_b_noise",
                 "b_noise_at_target"):
        assert (name in got.summary()) == (name in want.summary())
        if name in want.summary():
            assert got.summary()[name] == pytest.approx(want.summary()[name], rel=tol)
    assert (got.updates_to_target, got.examples_to_target) == (want.updates_to_target, want.examples_to_target)


@pytest.mark.parametrize(
    "optimizer,activation,hidden",
    [("sgd", "relu", (16, 16)), ("adam", "relu", (16, 16)), ("sgd", "tanh", (16, 16)), ("sgd", "gelu", (16, 16)),
     ("sgd", "relu", ())],  # () : a linear model
)
def test_each_member_equals_its_trial_trained_alone(optimizer, activation, hidden):
    data = make_data()
    lr_scale = 0.1 if optimizer == "adam" else 1.0
    configs = [cfg(**{**m, "lr": m["lr"] * lr_scale}, optimizer=optimizer,
                   model=ModelConfig(hidden=hidden, activation=activation)) for m in MEMBERS]
    stacked = train_stacked(configs, data)
    for config, result in zip(configs, stacked):
        assert_same_trial(result, train(config, data))
    # The members really differ, so equal metrics above are not one trial seen four times.
    finals = [r.final.val_loss for r in stacked]
    assert min(abs(a - b) for i, a in enumerate(finals) for b in finals[i + 1 :]) > 10 * TOL


def test_members_sharing_one_momentum_equal_their_trials_alone():
    """The usual case, where the momentum goes into the gradient product (BLAS's beta)."""
    data = make_data()
    configs = [cfg(lr=0.05, momentum=0.9, seed=1), cfg(lr=0.02, momentum=0.9, weight_decay=0.02, seed=2),
               cfg(lr=0.1, momentum=0.9, seed=3, warmup_epochs=1.5)]
    for config, result in zip(configs, train_stacked(configs, data)):
        assert_same_trial(result, train(config, data))


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_stacked_evaluation_equals_train_evaluate_member_by_member(monkeypatch, activation):
    monkeypatch.setattr("sgdtune.trainer.stacked.EVAL_ROWS", 64)  # 16 rows a chunk: several chunks and a short last one
    data = make_data()
    configs = [cfg(**m, model=ModelConfig(hidden=(16, 16), activation=activation)) for m in MEMBERS]
    stack = StackedMLP([build_model(c.model, data.n_features, data.n_classes, c.seed) for c in configs],
                       configs, [c.lr for c in configs])
    g = torch.Generator().manual_seed(0)
    for _ in range(5):  # away from the initial weights
        stack.update(data.x_train, data.y_train, torch.randint(0, data.n_train, (len(configs), 8), generator=g))
    template = build_model(configs[0].model, data.n_features, data.n_classes, 0)
    for x, y in ((data.x_train, data.y_train), (data.x_val, data.y_val)):
        got = stack.evaluate(x, y)
        for position, (loss, acc) in enumerate(got):
            want_loss, want_acc = evaluate(stack.load_into(template, position), x, y)
            assert loss == pytest.approx(want_loss, rel=1e-6) and acc == want_acc
        subset = stack.evaluate(x, y, [3, 1])  # a subset, in the order asked (other chunks: rounding)
        assert [pytest.approx(r, rel=1e-6) for r in subset] == [got[3], got[1]]


def test_full_batch_members_match_training_alone():
    data = make_data()
    configs = [cfg(batch_size=1000, lr=0.5, epochs=4, seed=s, measure_every_epochs=2) for s in (4, 5)]
    for config, result in zip(configs, train_stacked(configs, data)):
        assert_same_trial(result, train(config, data))


def test_targets_are_checked_per_member_and_a_member_may_stop_at_its_own():
    data = make_data()
    configs = [cfg(**m, epochs=4, target_val_acc=0.8, target_every=7, stop_at_target=i != 3)
               for i, m in enumerate(MEMBERS)]
    results = train_stacked(configs, data)
    for config, result in zip(configs, results):
        assert_same_trial(result, train(config, data))
    assert results[0].final.updates == results[0].updates_to_target < results[0].plan.total_updates  # stopped
    assert results[1].updates_to_target is None and results[1].final.updates == results[1].plan.total_updates
    assert results[3].updates_to_target is not None and results[3].final.updates == results[3].plan.total_updates


@pytest.mark.parametrize(
    "budget,sizes",
    [("epochs", [1, 3, 2]), ("updates", [10, 75, 44])],  # 30 updates per epoch: 10 and 44 end mid-epoch
)
def test_members_with_a_shorter_budget_leave_when_it_is_spent(budget, sizes):
    data = make_data()
    configs = [cfg(**{"epochs": None, "budget": budget, budget: size}, seed=i, lr=0.03 * (i + 1))
               for i, size in enumerate(sizes)]
    results = train_stacked(configs, data)
    for config, result in zip(configs, results):
        assert result.final.updates == result.plan.total_updates
        assert_same_trial(result, train(config, data))


def test_a_pruned_member_leaves_and_the_others_are_unchanged():
    data = make_data()
    configs = [cfg(**m) for m in MEMBERS]
    calls: list[tuple[int, int]] = []

    def on_epoch(i, metrics):
        calls.append((i, metrics.epoch))
        if i == 1 and metrics.epoch == 2:
            raise Pruned(f"member {i} at epoch {metrics.epoch}")

    pruned = train_stacked(configs, data, on_epoch)
    assert isinstance(pruned[1], Pruned)
    assert calls == [(i, e) for e in (1, 2) for i in range(4)] + [(i, 3) for i in (0, 2, 3)]
    whole = train_stacked(configs, data)
    for i in (0, 2, 3):
        assert_same_trial(pruned[i], whole[i], tol=1e-6)
        assert_same_trial(pruned[i], train(configs[i], data))


def test_a_diverging_member_gets_diverged_at_the_update_train_reports_and_the_others_go_on():
    data = make_data()
    wild = cfg(lr=1e6, momentum=0.9, seed=7, epochs=3)
    with pytest.raises(Diverged) as alone:
        train(wild, data)
    configs = [cfg(**MEMBERS[0]), wild, cfg(**MEMBERS[1])]
    results = train_stacked(configs, data)
    assert isinstance(results[1], Diverged)
    assert (results[1].update, results[1].epoch) == (alone.value.update, alone.value.epoch)
    assert not math.isfinite(results[1].value) or results[1].value > results[1].bound  # NaN, or past its bound
    tame = train_stacked([configs[0], configs[2]], data)
    for got, want in zip((results[0], results[2]), tame):
        assert all(math.isfinite(m.val_loss) for m in got.history)
        assert_same_trial(got, want, tol=1e-6)


def test_the_same_configs_give_bit_identical_results():
    data = make_data()
    configs = [cfg(**m) for m in MEMBERS[:2]]
    strip = lambda r: [{k: v for k, v in m.as_dict().items() if k != "epoch_time_s"} for m in r.history]  # noqa: E731
    assert [strip(r) for r in train_stacked(configs, data)] == [strip(r) for r in train_stacked(configs, data)]


def test_members_share_the_step_time_evenly():
    data = make_data()
    configs = [cfg(seed=s) for s in range(3)]
    results = train_stacked(configs, data)
    times = [r.compute_time_s for r in results]
    assert times[0] > 0 and times == pytest.approx([times[0]] * 3)
    for r in results:
        assert sum(m.epoch_time_s for m in r.history) == pytest.approx(r.compute_time_s)


@pytest.mark.parametrize(
    "change,field",
    [
        (dict(batch_size=16), "batch_size"),
        (dict(model=ModelConfig(hidden=(16, 8))), "model.hidden"),
        (dict(model=ModelConfig(hidden=(16, 16), activation="tanh")), "model.activation"),
        (dict(optimizer="adam"), "optimizer"),
        (dict(budget="updates", updates=30, epochs=None), "budget"),
        (dict(probe_size=64), "probe_size"),
    ],
)
def test_configs_that_cannot_share_a_stacked_model_raise(change, field):
    configs = [cfg(), cfg(seed=1), cfg(**change)]
    assert group_key(configs[0]) == group_key(configs[1]) != group_key(configs[2])
    with pytest.raises(ValueError, match=rf"must have the same {field} .*in configs\[0\] and .* in configs\[2\]"):
        train_stacked(configs, make_data())


def test_group_key_ignores_what_members_may_differ_in():
    a = cfg(lr=0.1, momentum=0.9, weight_decay=1e-4, seed=3, warmup_epochs=1, epochs=5, target_val_acc=0.9)
    assert group_key(a) == group_key(cfg(epochs=2))


@pytest.mark.parametrize(
    "configs,message",
    [
        ([], r"at least one config; got an empty list"),
        ([cfg(model=ModelConfig(factory="torch.nn:BatchNorm1d"))],  # running statistics: buffers
         r"whose state is its parameters alone; this one has buffers \['running_mean'"),
        ([cfg(budget="examples", examples=100, epochs=None), cfg(budget="examples", examples=200, epochs=None)],
         r"same examples .*got 100 in configs\[0\] and 200"),
    ],
)
def test_groups_that_cannot_be_stacked_raise(configs, message):
    with pytest.raises(ValueError, match=message):
        train_stacked(configs, make_data())


def test_a_stacked_step_too_big_for_memory_raises(monkeypatch):
    monkeypatch.setattr("sgdtune.trainer.stacked.MAX_STACKED_ROWS", 100)
    with pytest.raises(ValueError, match=r"members x batch size <= 100 rows; got 2 x 64 = 128"):
        train_stacked([cfg(batch_size=64), cfg(batch_size=64, seed=1)], make_data())


def test_a_group_whose_members_all_diverge_returns_every_slot_filled():
    results = train_stacked([cfg(lr=1e6, momentum=0.9, seed=s) for s in range(3)], make_data())
    assert all(isinstance(r, Diverged) for r in results)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_one_member_through_the_stacked_stepper_equals_train(optimizer):
    """K = 1 both ways: the same loop, the stacked stepper against torch.optim's."""
    config = cfg(**MEMBERS[2], optimizer=optimizer, target_val_acc=0.7, target_every=9)
    if optimizer == "adam":
        config = config.model_copy(update={"lr": 0.01})
    (stacked,) = train_stacked([config], make_data())
    assert_same_trial(stacked, train(config, make_data()))


def test_a_member_leaving_mid_epoch_leaves_the_others_as_they_were():
    data = make_data()
    short = cfg(**MEMBERS[1], budget="updates", updates=44, epochs=None)  # 30 updates an epoch
    stays = [cfg(**MEMBERS[0], budget="updates", updates=75, epochs=None),
             cfg(**MEMBERS[3], budget="updates", updates=75, epochs=None)]
    calls = []
    results = train_stacked([stays[0], short, stays[1]], data, lambda i, m: calls.append((i, m.epoch, m.updates)))
    assert calls == [(0, 1, 30), (1, 1, 30), (2, 1, 30), (1, 2, 44), (0, 2, 60), (2, 2, 60), (0, 3, 75), (2, 3, 75)]
    for got, want in zip((results[0], results[2]), train_stacked(stays, data)):
        assert_same_trial(got, want, tol=1e-6)
    assert_same_trial(results[1], train(short, data))


# -- the study side: --batch-trials K ---------------------------------------------------------


def test_a_study_with_batch_trials_trains_cohorts_of_one_batch_size_like_one_by_one(workdir):
    from mlflow import MlflowClient

    from sgdtune.config import load_experiment
    from sgdtune.data import load_data
    from sgdtune.search.strategy import derive_seed
    from sgdtune.store.stores import locations
    from sgdtune.study.run import run_study
    from sgdtune.trainer import train

    config = load_experiment("experiments/quick.toml", n_trials=6, **{
        "search.batch_size": {"low": 16, "high": 128, "log": True}, "search.lr": {"low": 0.005, "high": 0.03},
        "sampler.n_startup_trials": 2})
    study = run_study(config, batch_trials=3)
    trials = study.get_trials()
    assert len(trials) == 6 and all(t.state.name == "COMPLETE" for t in trials)
    for cohort in (trials[:3], trials[3:]):
        assert len({t.params["batch_size"] for t in cohort}) == 1  # one batch size per cohort
        assert len({t.params["lr"] for t in cohort}) == 3
    data = load_data(config.data, config.seed)
    for t in trials:
        alone = train(config.trial_config(t.params, seed=derive_seed(config.seed, t.number)), data)
        assert abs(alone.final.val_loss - t.user_attrs["summary"]["final_val_loss"]) <= 1e-4
    runs = MlflowClient(locations(config)[1]).search_runs(
        [study.user_attrs["mlflow_experiment_id"]],
        filter_string=f"tags.mlflow.parentRunId = '{study.user_attrs['mlflow_parent_run_id']}'")
    assert len(runs) == 6 and {r.info.status for r in runs} == {"FINISHED"}


def test_batch_trials_must_be_at_least_one(workdir, capsys):
    from sgdtune.cli import study_main as main

    assert main(["experiments/quick.toml", "--batch-trials", "0", "--no-progress"]) == 2
    assert "--batch-trials: must be >= 1; got 0" in capsys.readouterr().err
    assert not (workdir / "mlruns").exists()


def test_batch_trials_on_a_regression_study_is_refused_before_anything_is_written(workdir, capsys):
    from sgdtune.cli import study_main as main

    assert main(["experiments/linear_regression.toml", "--batch-trials", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--batch-trials: stacks classification models only" in err and "data.task = 'regression'" in err
    assert not (workdir / "mlruns" / "optuna.journal").exists()


def test_batch_trials_with_the_grid_sampler_is_refused_naming_both(workdir, capsys):
    from sgdtune.cli import study_main as main

    assert main(["experiments/critical_batch.toml", "--batch-trials", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--batch-trials: cannot be used with the grid sampler" in err
    assert "got --batch-trials 2 with sampler.name = 'grid'" in err
    assert not (workdir / "mlruns" / "optuna.journal").exists()
