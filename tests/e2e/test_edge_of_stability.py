"""The edge of stability (Cohen et al. 2021; docs/science.md, section 7) as
experiments/edge_of_stability.toml runs it: full-batch gradient descent without momentum on
digits, a 64-128-10 tanh MLP, the square loss on one-hot targets (train.loss = "mse"), lr 0.2.
Sharpness x lr starts near 1 and rises to 2 (the limit 2/lr), then stays there.

To keep the tests short the run is cut to 800 of the experiment's 3,000 updates, sharpness
every 100 (the rise ends by update ~600; measured: 1.06 at 100, 2.05 at 600, 1.95-2.06 from
600 to 3,000), and to 400 through the CLI, which checks what the report draws, not the level.
(25 s and ~40 s on a quiet core; several minutes when the 2 cores are shared.)"""

import json
import shutil

import pytest
import torch
from conftest import EXPERIMENTS, run_cli

from sgdtune.config import load_experiment
from sgdtune.data import load_data
from sgdtune.trainer import train
from sgdtune.trainer.losses import loss_function, one_hot_mse

SHORT = {"updates": 800, "sharpness_every": 100}
CLI_SHORT = {"updates": 400, "sharpness_every": 100}


def test_full_batch_gd_rises_to_within_10_percent_of_2_over_lr_and_stays_there():
    config = load_experiment(EXPERIMENTS / "edge_of_stability.toml")
    data = load_data(config.data, config.seed)
    tc = config.trial_config({"lr": 0.2}, seed=0).model_copy(update=SHORT)
    assert tc.batch_size >= data.n_train and tc.momentum == 0 and tc.lr == 0.2 and tc.loss == "mse"
    result = train(tc, data)
    path = {m.updates: m.lr_sharpness for m in result.history if m.lr_sharpness is not None}
    assert path[100] < 1.4, path  # starts well below the edge
    late = [v for u, v in path.items() if u >= 600]
    assert len(late) == 3 and all(1.8 <= v <= 2.2 for v in late), path
    assert result.final.val_acc > 0.9  # accuracy by argmax


def test_the_report_draws_sharpness_against_updates_with_the_limit_2_over_lr(tmp_path):
    shutil.copytree(EXPERIMENTS, tmp_path / "experiments")
    sets = [a for k, v in CLI_SHORT.items() for a in ("--set", f"train.{k}={v}")]
    proc = run_cli("sgdtune.study", "experiments/edge_of_stability.toml", "--no-progress", *sets, cwd=tmp_path,
                   timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_cli("sgdtune.report", "--study-name", "edge_of_stability", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "reports/edge_of_stability/report.json").read_text())
    (path,) = report["sharpness"]["full_batch"]["paths"]
    assert path["limit"] == pytest.approx(2 / 0.2) and path["momentum"] == 0.0
    assert path["updates"] == [100, 200, 300, 400]
    assert path["lr_sharpness"] == pytest.approx([0.2 * v for v in path["sharpness"]])
    # This trial's seed is derive_seed(0, 0), not 0 (measured: 1.19, 1.47, 1.72, 1.91 at 100-400, 2.22 at 600):
    # the level is the in-process test's; here the drawn path rises towards the limit.
    assert path["lr_sharpness"][0] < 1.4 and path["lr_sharpness"][-1] > 1.6, path
    html = (tmp_path / "reports/edge_of_stability/report.html").read_text()
    assert "sharpness against updates" in html


def test_the_square_loss_is_half_the_squared_distance_to_the_one_hot_target():
    out = torch.tensor([[1.0, 0.0, 2.0], [0.5, 0.5, 0.5]])
    y = torch.tensor([2, 0])
    # example 0: (1, 0, 1)^2 / 2 = 1; example 1: (0.25 + 0.25 + 0.25) / 2 = 0.375
    assert one_hot_mse(out, y, reduction="none").tolist() == [1.0, 0.375]
    assert float(one_hot_mse(out, y)) == pytest.approx(0.6875)
    assert loss_function("classification", "mse") is one_hot_mse


def test_cross_entropy_for_a_regression_study_is_refused_naming_the_field():
    with pytest.raises(ValueError, match="train.loss: regression trains on 'mse' only; got 'cross_entropy'"):
        load_experiment(EXPERIMENTS / "linear_regression.toml", **{"train.loss": "cross_entropy"})
