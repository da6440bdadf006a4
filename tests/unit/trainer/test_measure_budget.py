"""The measurement budget (train.measure_share, sgdtune/trainer/loop.py): every measurement of a
trial together costs at most that share of its steps, both counted here in the loop's cost model
(example-equivalents) from the work the stepper is asked to do, not timed."""

from __future__ import annotations

import pytest

from sgdtune.config import load_experiment
from sgdtune.data import DataConfig, load_data
from sgdtune.errors import InputError
from sgdtune.model import ModelConfig, build_model
from sgdtune.trainer import TrainConfig
from sgdtune.trainer import loop as loop_module
from sgdtune.trainer.loop import Loop
from sgdtune.trainer.module_step import ModuleStepper

MODEL = ModelConfig(hidden=(128,))


@pytest.fixture(scope="module")
def digits():
    return load_data(DataConfig(dataset="digits"), seed=0)


class CountingStepper:
    """A ModuleStepper that counts the work it is asked for: updates and examples stepped, and
    every measurement pass with its size (Lanczos steps as the science reports them)."""

    def __init__(self, inner: ModuleStepper):
        self.inner = inner
        self.updates = self.examples = 0
        self.noise_calls: list[int] = []  # probe sizes
        self.curvature_calls: list[tuple[int, int]] = []  # (probe size, samples)
        self.sharpness_calls: list[tuple[int, int, int]] = []  # (probe size, iterations cap, iterations taken)
        self.end_evals: list[int] = []  # train-subset passes at a trial's end (per-example losses kept)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step(self, x, y, start, stop):
        self.updates += 1
        self.examples += stop - start
        return self.inner.step(x, y, start, stop)

    def noise_sums(self, x, y, positions, chunks):
        self.noise_calls.append(len(x))
        return self.inner.noise_sums(x, y, positions, chunks)

    def curvature_noise(self, x, y, positions, grad_sq, population, samples):
        self.curvature_calls.append((len(x), samples))
        return self.inner.curvature_noise(x, y, positions, grad_sq, population, samples)

    def sharpness(self, x, y, positions, starts, *iters):
        found = self.inner.sharpness(x, y, positions, starts, *iters)
        cap = iters[0] if iters else loop_module.SHARPNESS_ITERS
        self.sharpness_calls += [(len(x), cap, est.iterations) for est in found]
        return found

    def evaluate_examples(self, x, y, positions):
        self.end_evals.append(len(x))
        return self.inner.evaluate_examples(x, y, positions)

    def measured(self, result) -> float:
        """The modelled cost of every measurement counted, example-equivalents."""
        lm = loop_module
        cost = sum(lm.probe_cost(s) for s in self.noise_calls)
        cost += sum(lm.curvature_cost(s, k) for s, k in self.curvature_calls)
        cost += sum(lm.sharpness_cost(s, taken) for s, _, taken in self.sharpness_calls)
        cost += sum(lm.eval_cost(s) for s in self.end_evals)
        return cost + (lm.LOSS_NOISE_COST if result.fixed_model_loss_noise_slope is not None else 0.0)

    def steps(self) -> float:
        return loop_module.step_cost(self.updates, self.examples)


_RUNS: dict = {}  # (config, data) -> (result, counted): several tests read the same trial


def run(config: TrainConfig, data, again: bool = False):
    """Train `config` through a CountingStepper; the same config's earlier run unless `again`."""
    key = (config.model_dump_json(), id(data))
    if key not in _RUNS or again:
        _RUNS[key] = _run(config, data)
    return _RUNS[key]


def _run(config: TrainConfig, data):
    loop = Loop([config], data)
    model = build_model(config.model, data.n_features, data.n_classes, config.seed).train()
    stepper = CountingStepper(ModuleStepper(model, config, loop.lrs[0]))
    (result,) = loop.run(stepper)
    assert not isinstance(result, Exception), result
    return result, stepper


def short_trial(**extra) -> TrainConfig:
    return TrainConfig(batch_size=8, epochs=3, lr=0.05, momentum=0.9, seed=0, model=MODEL, **extra)


def target_trial(**extra) -> TrainConfig:
    """experiments/critical_batch.toml's trial at default measurement settings: 95% val_acc, then stop."""
    return TrainConfig(batch_size=64, lr=0.1, momentum=0.9, budget="updates", updates=1500, epochs=None,
                       target_val_acc=0.95, target_every=5, stop_at_target=True, seed=0, model=MODEL, **extra)


def test_the_default_share_is_five_percent_and_all_means_no_budget():
    assert TrainConfig().measure_share == 0.05
    assert TrainConfig(measure_share="all").measure_share == "all"
    for bad in (0, 1.5, "most"):
        with pytest.raises(ValueError, match="measure_share"):
            TrainConfig(measure_share=bad)


def test_a_bad_measure_share_in_an_experiment_is_one_line_naming_the_field(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text('name = "x"\n[train]\nmeasure_share = "most"\n')
    with pytest.raises(InputError) as caught:
        load_experiment(path)
    assert str(caught.value) == f"{path}: train.measure_share: must be a share in (0, 1] or 'all'; got 'most'"


@pytest.mark.parametrize("config", [short_trial(), target_trial()], ids=["B=8, 3 epochs", "B=64 to 95%, then stop"])
def test_every_measurement_together_costs_at_most_the_share_of_the_steps(config, digits):
    result, counted = run(config, digits)
    assert counted.updates == result.final.updates
    assert counted.end_evals, "the end-of-training train-subset evaluation is not optional"
    assert counted.measured(result) <= 0.05 * counted.steps()
    # the final train metrics and gen_gap are there, whatever the budget
    assert result.final.train_acc > 0.5 and result.final.gen_gap == result.final.train_acc - result.final.val_acc


def test_a_short_trial_keeps_its_final_noise_scale_and_leaves_out_the_sharpness_it_cannot_afford(digits):
    result, counted = run(short_trial(), digits)
    assert counted.noise_calls == [digits.n_train]  # one probe, at the end, on the whole set (auto)
    assert counted.sharpness_calls == []
    assert result.final.grad_noise_scale is not None and result.final.sharpness is None
    assert all(e.sharpness is None and e.lr_sharpness is None for e in result.history)  # absent, not NaN


def test_a_long_enough_trial_measures_its_sharpness_on_a_probe_halved_to_fit(digits):
    result, counted = run(short_trial().model_copy(update={"epochs": 12}), digits)
    assert counted.measured(result) <= 0.05 * counted.steps()
    ((size, cap, taken),) = counted.sharpness_calls  # at the end only: the earlier epochs keep room for it
    assert loop_module.MEASURE_FLOOR <= size < digits.n_train and size in (digits.n_train // 2, digits.n_train // 4)
    assert loop_module.SHARPNESS_MIN_ITERS <= cap < loop_module.SHARPNESS_ITERS and taken <= cap
    assert result.final.sharpness is not None and result.final.sharpness > 0


def test_a_trial_stopping_at_its_target_evaluates_a_halved_train_subset_and_skips_the_probes(digits):
    result, counted = run(target_trial(), digits)
    assert result.updates_to_target == result.final.updates  # it stopped at its target
    assert counted.noise_calls == [] and counted.sharpness_calls == []
    (size,) = counted.end_evals
    assert loop_module.MEASURE_FLOOR <= size < digits.n_train
    assert result.noise_at_target is None and result.final.grad_noise_scale is None


def test_measure_share_all_keeps_every_scheduled_measurement_at_full_size(digits):
    config = short_trial(measure_share="all", sharpness_every=1, b_noise_samples=2, measure_every_epochs=1)
    result, counted = run(config, digits)
    n = digits.n_train
    assert counted.noise_calls == [n, n, n]  # every epoch
    assert counted.curvature_calls == [(n, 2)] * 3
    assert [(s, cap) for s, cap, _ in counted.sharpness_calls] == [(n, loop_module.SHARPNESS_ITERS)] * 3
    assert counted.end_evals == [n]
    assert result.fixed_model_loss_noise_slope is not None
    assert all(e.sharpness is not None and e.grad_noise_scale is not None and e.b_noise is not None
               for e in result.history)
    assert counted.measured(result) > 0.05 * counted.steps()  # the science at full cost


def test_the_budget_is_the_same_on_a_rerun_of_the_same_seed(digits):
    config = short_trial().model_copy(update={"epochs": 12})
    (first, a), (again, b) = run(config, digits), run(config, digits, again=True)
    assert (a.noise_calls, a.sharpness_calls, a.end_evals) == (b.noise_calls, b.sharpness_calls, b.end_evals)

    def records(result):
        return [(e.train_acc, e.val_acc, e.grad_noise_scale, e.sharpness) for e in result.history]

    assert records(first) == records(again)
