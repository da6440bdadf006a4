"""The trainer: updates, budgets, shuffling, learning rates, divergence, determinism."""

import math

import numpy as np
import pytest
import torch
from torch import nn
from toy import cfg, make_data

from sgdtune.data import Dataset
from sgdtune.model import ModelConfig
from sgdtune.trainer import BatchPlan, Diverged, TrainConfig, lr_at, scaled_lr, train


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


def test_a_blown_up_loss_stops_training_at_once_with_the_update_where_it_happened():
    data = make_data(n=200)
    with pytest.raises(Diverged, match=r"training loss became \S+ at update \d+ \(epoch 1\)") as info:
        train(cfg(batch_size=4, lr=1e6, momentum=0.9, epochs=50, model=ModelConfig(hidden=(16,))), data)
    assert 1 <= info.value.update <= 50
    assert not math.isfinite(info.value.value) or info.value.value > info.value.bound


def test_a_finite_loss_above_1e6_times_the_first_is_divergence_and_a_normal_lr_is_not():
    """Known answer: one linear layer, full batch, so the first loss is the cross-entropy of
    the initial weights on the whole set; lr 1e9 sends the loss far past 1e6 x that at once,
    still finite (before the bound, such a trial completed)."""
    data = make_data()
    model = nn.Sequential(nn.Linear(4, 3))
    with torch.no_grad():
        first = float(nn.functional.cross_entropy(model(data.x_train), data.y_train))
    with pytest.raises(Diverged, match=r"above the divergence bound .* \(1e6 x the first loss\)") as info:
        train(cfg(batch_size=10_000, lr=1e9, epochs=50), data, model=model)
    assert info.value.bound == pytest.approx(1e6 * first, rel=1e-5)
    assert math.isfinite(info.value.value) and info.value.value > info.value.bound
    assert info.value.update == 2  # the first update's loss is the reference; the second is past it
    result = train(cfg(batch_size=10_000, lr=0.3, epochs=50), data)
    assert result.final.train_loss < first  # a normal lr trains to the end


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


def test_an_exception_from_the_hook_propagates_and_ends_training():
    class Stop(Exception):
        pass

    seen = []

    def on_epoch(metrics):
        seen.append(metrics.epoch)
        if metrics.epoch == 2:
            raise Stop("enough")

    with pytest.raises(Stop, match="enough"):
        train(cfg(epochs=5), make_data(), on_epoch)
    assert seen == [1, 2]


# -- the loop itself, driven by a stepper without weights -------------------------------------


class FakeStepper:
    """The Stepper interface with made-up losses (member i's loss at update u is (i + 1)/u, NaN
    where `nan_at` says); records what the loop asks of it."""

    def __init__(self, k: int, nan_at: set[tuple[int, int]] = frozenset()):
        self.alive = list(range(k))  # config indices of the members, in stepper order
        self.nan_at, self.updates = nan_at, 0
        self.batches, self.lrs, self.probes, self.kept, self.sharpened = [], [], [], [], []
        self.passes = []  # (update count, examples, method) of every evaluation pass
        self.starts = []  # the start of each sharpness measurement: the update count of the vector

    def begin_epoch(self, orders):
        self.orders = torch.stack(orders)

    def step(self, x, y, start, stop):
        self.updates += 1
        self.batches.append(self.orders[:, start:stop])
        return torch.tensor([math.nan if (i, self.updates) in self.nan_at else (i + 1) / self.updates
                             for i in self.alive], dtype=torch.float64)

    def set_lr(self, lrs):
        self.lrs.append((self.updates, lrs))

    def evaluate(self, x, y, positions):
        self.passes.append((self.updates, x.shape[0], "evaluate"))
        return [(1.0, 0.5) for _ in positions]

    def noise_sums(self, x, y, positions, chunks):
        """Two chunks of half the probe whose sums give tr(Sigma) = 2 and |g_mean|^2 = 1."""
        from sgdtune.science.noise import ChunkSums

        self.probes.append((self.updates, x.shape[0], len(positions)))
        b = x.shape[0]
        half = torch.tensor([b / 2, b / 2], dtype=torch.float64)
        sum_sq = torch.full((2,), (2.0 * (b - 1) + b) / 2, dtype=torch.float64)
        return [ChunkSums(half, sum_sq, torch.full((2, 2), b * b / 4.0, dtype=torch.float64)) for _ in positions]

    def curvature_noise(self, x, y, positions, grad_sq, population, samples):
        # B_noise = tr(H Sigma) / G^T H G = 12 / 2 = 6; eps_max = |G|^2 / G^T H G with the probe's |G|^2 (1 here)
        from sgdtune.science.curvature_noise import CurvatureNoiseEstimate
        assert population == x.shape[0] and samples == 32
        return [CurvatureNoiseEstimate(12.0, 0.0, 2.0, 0.0, 6.0, 0.0, grad_sq[0][0] / 2.0, 0.0, x.shape[0], 0)
                for _ in positions]

    def sharpness(self, x, y, positions, starts, iters=60):
        from sgdtune.science.sharpness import SharpnessEstimate

        self.sharpened.append((self.updates, x.shape[0], len(positions)))
        self.starts.append([None if s is None else float(s[0]) for s in starts])
        # The top Ritz vector names the update count it was measured at: the next start shows it.
        return [SharpnessEstimate(3.0, 1, True, 0.0, 3.0, x.shape[0], torch.full((4,), float(self.updates)))
                for _ in positions]

    def evaluate_examples(self, x, y, positions):  # every example the same loss: no spread, no slope
        self.passes.append((self.updates, x.shape[0], "evaluate_examples"))
        return [(1.0, 0.5, torch.ones(x.shape[0])) for _ in positions]

    def keep(self, positions):
        self.alive = [self.alive[p] for p in positions]
        self.orders = self.orders[positions]
        self.kept.append(list(self.alive))


def test_the_loop_owns_shuffle_warmup_probes_and_divergence_for_any_stepper():
    from sgdtune.trainer.loop import Loop

    data = make_data(n=60)  # 6 updates an epoch at B = 10
    configs = [cfg(batch_size=10, epochs=3, measure_every_epochs=2, probe_size="auto", sharpness_every=2, seed=s,
                   b_noise_samples=32, measure_share="all")  # every scheduled measurement, no budget
               for s in (0, 1, 2)]
    scaled = {"lr_scaling": "linear", "base_batch_size": 5}  # lr 0.1 -> 0.2
    configs[0] = configs[0].model_copy(update=scaled)
    configs[1] = configs[1].model_copy(update={**scaled, "warmup_epochs": 1.0})
    stepper, hooked = FakeStepper(3, nan_at={(2, 8)}), []
    loop = Loop(configs, data, lambda i, m: hooked.append((i, m.epoch)))
    assert loop.lrs == [0.2, 0.1, 0.1]  # member 1 starts its warmup at lr, member 0 at its scaled lr
    results = loop.run(stepper)

    # Each member's batches are slices of its own permutation, a new one each epoch.
    epoch1 = torch.cat(stepper.batches[:6], dim=1)
    assert all(sorted(row.tolist()) == list(range(60)) for row in epoch1)
    assert not torch.equal(epoch1[0], epoch1[1])
    assert not torch.equal(epoch1[0], torch.cat(stepper.batches[6:12], dim=1)[0])
    # Warmup: member 1 from 0.1 to 0.2 over 6 updates, set after each of them.
    assert [u for u, _ in stepper.lrs] == [1, 2, 3, 4, 5, 6]
    assert [lrs[1] for _, lrs in stepper.lrs] == pytest.approx([0.1 + 0.1 * u / 6 for u in range(1, 7)])
    # Noise and sharpness at the end of epoch 2 and at the end, on the whole set (n = 60 <= 4,096).
    assert stepper.probes == [(12, 60, 2), (18, 60, 2)]
    assert [(u, size) for u, size, _ in stepper.sharpened] == [(12, 60), (12, 60), (18, 60), (18, 60)]
    # Each member's second Lanczos run starts from its first one's top Ritz vector (update 12).
    assert stepper.starts == [[None], [None], [12.0], [12.0]]
    # Member 2's NaN at update 8 is found at the epoch's end; it leaves, the others go on.
    assert isinstance(results[2], Diverged) and (results[2].update, results[2].epoch) == (8, 2)
    assert stepper.kept == [[0, 1]]
    assert hooked == [(0, 1), (1, 1), (2, 1), (0, 2), (1, 2), (0, 3), (1, 3)]
    for i in (0, 1):
        history = results[i].history
        assert [m.updates for m in history] == [6, 12, 18]
        assert history[-1].grad_noise_scale == pytest.approx(2.0)  # tr(Sigma) / |G|^2 of the sums above
        assert history[-1].grad_noise_scale_se == 0.0  # the whole training set: exact
        assert history[-1].grad_noise_scale_bound == 0.0
        assert history[0].grad_noise_scale is None and history[0].sharpness is None
        assert history[-1].sharpness == 3.0 and history[-1].lr_sharpness == pytest.approx(3.0 * history[-1].lr)
        summary = results[i].summary()
        assert summary["final_grad_noise_scale"] == pytest.approx(2.0) and summary["final_sharpness"] == 3.0
        assert (history[-1].b_noise, history[-1].eps_max) == (6.0, pytest.approx(0.5))  # where B_simple is
        assert history[0].b_noise is None and summary["final_b_noise"] == 6.0
        losses = [(i + 1) / u for u in range(13, 19)]  # the last epoch's, member i's own column
        want = math.sqrt(sum((b - a) ** 2 for a, b in zip(losses, losses[1:])) / len(losses[1:]) / 2)
        assert history[-1].loss_noise == pytest.approx(want)


def test_a_trial_that_stops_at_its_target_mid_epoch_makes_one_validation_pass_and_one_train_pass_there():
    """The target check at update 2 finds val_acc 0.5 >= 0.4 and stops the trial; its epoch end
    reuses that check's validation pass, and one pass over the train-evaluation subset gives both
    the train metrics and the fixed-model loss noise's per-example losses."""
    from sgdtune.trainer.loop import Loop

    data = make_data(n=60, n_val=12)  # 6 updates an epoch at B = 10
    config = cfg(batch_size=10, epochs=3, target_val_acc=0.4, target_every=2, stop_at_target=True)
    stepper = FakeStepper(1)
    (result,) = Loop([config], data).run(stepper)
    assert (result.updates_to_target, result.final.updates) == (2, 2)
    assert result.final.val_acc == 0.5 and result.final.train_acc == 0.5
    val_passes = [p for p in stepper.passes if p[1] == 12]
    train_passes = [p for p in stepper.passes if p[1] == 60]
    assert val_passes == [(2, 12, "evaluate")]
    assert train_passes == [(2, 60, "evaluate_examples")]


@pytest.mark.parametrize("batch,short", [(10, False), (7, True), (60, False)])
def test_loss_noise_in_training_leaves_out_the_short_last_batch_of_an_epoch(batch, short):
    from sgdtune.science.noise import loss_noise
    from sgdtune.trainer.loop import Loop

    data = make_data(n=60)
    stepper = FakeStepper(1)
    (result,) = Loop([cfg(batch_size=batch, epochs=2)], data).run(stepper)
    per_epoch = -(-60 // batch)
    losses = torch.tensor([1 / u for u in range(per_epoch + 1, 2 * per_epoch + 1)], dtype=torch.float64)
    kept = losses[:-1] if short else losses  # 60 = 8 x 7 + 4: the batch of 4 is left out
    assert result.final.loss_noise == loss_noise(kept)


def test_the_update_based_measure_every_is_refused_with_its_replacement_named():
    with pytest.raises(ValueError, match="measure_every_epochs"):
        TrainConfig(measure_every=100)
    with pytest.raises(ValueError, match="0 \\(off\\), >= 4 or 'auto'"):
        TrainConfig(probe_size=2)
    assert TrainConfig().probe_size == "auto" and TrainConfig().measure_every_epochs == "auto"
    assert TrainConfig(probe_size=128, measure_every_epochs=3).probe_size == 128
