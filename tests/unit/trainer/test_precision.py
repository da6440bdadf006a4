"""Mixed precision (train.precision): autocast for the forward pass, a gradient scaler for fp16,
fp32 everywhere else; runs on the CPU too."""

import json

import pytest
import torch
from conftest import EXPERIMENTS, run_cli
from torch import nn
from toy import cfg, make_data

from sgdtune.config import load_experiment
from sgdtune.errors import InputError
from sgdtune.study.identity import canonical_json
from sgdtune.trainer import TrainConfig, train
from sgdtune.trainer.module_step import ModuleStepper


def _weights_after(precision: str) -> torch.Tensor:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    train(cfg(precision=precision, epochs=3), make_data(n=96), model=model)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_bf16_on_the_cpu_trains_close_to_fp32_but_not_bit_for_bit():
    fp32, bf16 = _weights_after("fp32"), _weights_after("bf16")
    assert not torch.equal(fp32, bf16)  # autocast really ran in bf16
    assert torch.allclose(fp32, bf16, atol=0.05)  # ~3 significant digits of bf16, 36 updates
    assert bf16.dtype == torch.float32  # the weights themselves stay fp32


def test_fp16_scales_its_loss_and_keeps_fp32_weights():
    model = nn.Sequential(nn.Linear(4, 3))
    stepper = ModuleStepper(model, cfg(precision="fp16"), lr=0.1)
    assert stepper.precision.scaler is not None and stepper.precision.scaler.get_scale() == 2.0**16
    data = make_data()
    stepper.begin_epoch([torch.arange(data.n_train)])
    loss = stepper.step(data.x_train, data.y_train, 0, 8)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert model[0].weight.dtype == torch.float32


def test_fp32_has_no_autocast_and_no_scaler():
    stepper = ModuleStepper(nn.Sequential(nn.Linear(4, 3)), cfg(), lr=0.1)
    assert stepper.precision.dtype is None and stepper.precision.scaler is None


def test_precision_is_part_of_a_studys_identity():
    base = load_experiment(EXPERIMENTS / "quick.toml")
    bf16 = load_experiment(EXPERIMENTS / "quick.toml", **{"train.precision": "bf16"})
    assert json.loads(canonical_json(base))["train"]["precision"] == "fp32"
    assert canonical_json(base) != canonical_json(bf16)


def test_an_unknown_precision_is_refused_naming_the_field_and_the_choices():
    with pytest.raises(InputError, match=r"train\.precision.*'fp32', 'bf16' or 'fp16'.*'fp8'"):
        load_experiment(EXPERIMENTS / "quick.toml", **{"train.precision": "fp8"})


def test_stacked_cohorts_refuse_mixed_precision(workdir):
    out = run_cli("sgdtune.study", "experiments/quick.toml", "--n-trials", "2", "--batch-trials", "2", "--no-tracking",
                  "--set", 'train.precision="bf16"', cwd=workdir)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "--batch-trials" in out.stderr and "bf16" in out.stderr


def test_a_bf16_study_runs_through_the_cli_and_records_its_precision(workdir):
    out = run_cli("sgdtune.study", "experiments/quick.toml", "--n-trials", "2", "--set", 'train.precision="bf16"',
                  cwd=workdir)
    assert out.returncode == 0, out.stderr
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    (exp,) = [e for e in client.search_experiments() if e.name == "quick"]
    runs = client.search_runs([exp.experiment_id], "tags.sgdtune.trial_number != ''")
    assert len(runs) == 2 and {r.data.params["precision"] for r in runs} == {"bf16"}


def test_train_config_defaults_to_fp32_without_tf32():
    c = TrainConfig()
    assert (c.precision, c.tf32) == ("fp32", False)
