"""Regression with a known answer, end to end (docs/science.md, section 3).

experiments/linear_regression.toml runs through the CLI as a user would run it: SGD with a
linear model (one nn.Linear, bias included) on torch's MSELoss, over y = w*.x + eps, x ~ N(0,
I_d), eps ~ N(0, s^2), features as drawn (not standardized). The trainer keeps no weights, so
each COMPLETE trial is trained again in-process with `sgdtune.trainer.train` from its config
and seed (the `seed` param of its MLflow run, derive_seed(study seed, trial number)), holding
a reference to the model; training is deterministic, so these are the weights the logged
metrics were measured at. At those weights, in NumPy float64 over the whole training set
(X its n x d features, X~ = [X, 1] with the bias column, r_i = w.x_i + b - y_i):

    per-example gradients of MSELoss  g_i = 2 r_i x~_i
    G = mean_i g_i (the gradient of the training loss, what the trainer's probe measures when
        it is the whole training set),  tr(Sigma) = sum_i |g_i - G|^2 / (n - 1)
    B_simple = tr(Sigma) / |G|^2                         (exact, finite sample)
    sharpness = top eigenvalue of the Hessian 2 X~^T X~ / n   (numpy.linalg.eigvalsh)
    R^2 = 1 - sum (pred - y)^2 / sum (y - mean y)^2

    tr(H Sigma) = sum_i (g_i - G)^T H (g_i - G) / (n - 1),  B_noise = tr(H Sigma) / G^T H G,
    eps_max = |G|^2 / G^T H G                            (exact, finite sample; H = 2 X~^T X~ / n)

The logged `final_grad_noise_scale` must be within 10% of that B_simple, `final_sharpness`
within 2% of that eigenvalue, `final_b_noise` and `final_eps_max` within 1% of theirs (the
model's 11 parameters are fewer than the default 32 Hutchinson samples, so tr(H Sigma) is
computed exactly, in float32: 1% is float32 rounding with room; tests/unit/science/test_curvature_noise.py
holds the Hutchinson path to its own known answers), at the default probe settings (the training set, 800 examples,
is below both default probe sizes, so each probe is the whole set). The experiment keeps
B_simple / n under 5%: an estimator that subtracts tr(Sigma)/b from |G|^2 without the
finite-population correction (docs/science.md, "Finite population") is then also within the
tolerance, and one that does not measure the training set's gradient at all is not.
"""

import math
import shutil

import numpy as np
import optuna
import pytest
import torch
from conftest import EXPERIMENTS, run_cli
from mlflow import MlflowClient
from optuna.trial import TrialState

from sgdtune.config import load_experiment
from sgdtune.data import DataConfig, load_data
from sgdtune.datasets import linear_regression
from sgdtune.model import ModelConfig, build_model
from sgdtune.search.strategy import derive_seed
from sgdtune.store.stores import open_storage
from sgdtune.trainer import TrainConfig, train

EXPERIMENT = "linear_regression"
# Not reproducible run to run: times, throughput, memory.
TIMING_SUFFIXES = ("_time_s", "throughput_eps", "peak_mem_mb")


def exact_values(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """The closed-form values of the module docstring at the model's weights (a single
    nn.Linear(d, 1) with its bias), in float64 over all of (x, y)."""
    layer = linear_layer(model)
    w = layer.weight.detach().double().numpy().reshape(-1)
    b = float(layer.bias.detach().double()) if layer.bias is not None else 0.0
    xs = x.double().numpy()
    ys = y.double().numpy()
    n = xs.shape[0]
    xt = np.hstack([xs, np.ones((n, 1))]) if layer.bias is not None else xs
    r = xs @ w + b - ys
    g = 2.0 * r[:, None] * xt  # per-example gradients of (w.x + b - y)^2
    mean = g.mean(axis=0)
    trace = float(((g - mean) ** 2).sum() / (n - 1))
    grad_sq = float(mean @ mean)
    hessian = 2.0 * xt.T @ xt / n
    dev = g - mean
    trace_h_cov = float(np.einsum("ip,pq,iq->", dev, hessian, dev) / (n - 1))
    g_h_g = float(mean @ hessian @ mean)
    return {
        "trace_h_cov": trace_h_cov,
        "b_noise": trace_h_cov / g_h_g,
        "eps_max": grad_sq / g_h_g,
        "trace": trace,
        "grad_sq": grad_sq,
        "noise_scale": trace / grad_sq,
        "sharpness": float(np.linalg.eigvalsh(hessian)[-1]),
        "loss": float((r**2).mean()),
    }


def linear_layer(model: torch.nn.Module) -> torch.nn.Linear:
    """The one nn.Linear of a model built with hidden = []."""
    (layer,) = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return layer


def r2(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """1 - SSE/SST in float64 (scikit-learn's r2_score)."""
    with torch.no_grad():
        pred = model(x).double().reshape(-1).numpy()
    ys = y.double().numpy()
    return float(1.0 - ((pred - ys) ** 2).sum() / ((ys - ys.mean()) ** 2).sum())


@pytest.fixture(scope="module")
def linear_cli(tmp_path_factory):
    """`python -m sgdtune.study experiments/linear_regression.toml` in a fresh directory,
    then every trial with its MLflow child run."""
    cwd = tmp_path_factory.mktemp("linear")
    shutil.copytree(EXPERIMENTS, cwd / "experiments")
    proc = run_cli("sgdtune.study", f"experiments/{EXPERIMENT}.toml", "--no-progress", cwd=cwd, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    study = optuna.load_study(study_name=EXPERIMENT, storage=open_storage(str(cwd / "mlruns/optuna.journal")))
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd}/mlruns/mlflow.db")
    trials = study.get_trials()
    runs = {t.number: client.get_run(t.user_attrs["mlflow_run_id"]) for t in trials if "mlflow_run_id" in t.user_attrs}
    return cwd, trials, runs


@pytest.fixture(scope="module")
def retrained(linear_cli):
    """Each COMPLETE trial trained again in-process: (trial, run, result, model, data)."""
    cwd, trials, runs = linear_cli
    config = load_experiment(cwd / "experiments" / f"{EXPERIMENT}.toml")
    data = load_data(config.data, config.seed)
    out = []
    for t in trials:
        if t.state != TrialState.COMPLETE:
            continue
        seed = derive_seed(config.seed, t.number)
        tc = config.trial_config(dict(t.params), seed=seed)
        model = build_model(tc.model, data.n_features, data.n_classes, tc.seed)
        result = train(tc, data, model=model)
        out.append((t, runs[t.number], result, model, data))
    assert out, "no COMPLETE trial"
    return out


def test_the_cli_runs_every_trial_of_the_linear_regression_study(linear_cli):
    _, trials, runs = linear_cli
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials), [
        (t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    assert {(t.params["batch_size"], t.params["lr"]) for t in trials} == {
        (16, 0.002), (16, 0.01), (128, 0.002), (128, 0.01)}  # the grid
    for t in trials:
        params = runs[t.number].data.params
        assert params["dataset"] == "linear" and params["model"] == "linear(10-1)"
        assert (params["n_train"], params["n_val"]) == ("800", "200")
        assert int(params["seed"]) == derive_seed(0, t.number)


def test_a_regression_trial_logs_r2_under_its_own_names(linear_cli):
    _, trials, runs = linear_cli
    for t in trials:
        metrics = runs[t.number].data.metrics
        assert {"final_val_r2", "best_val_r2", "final_train_r2", "train_r2", "val_r2"} <= set(metrics)
        assert not {"final_val_acc", "val_acc", "train_acc"} & set(metrics)
        assert t.values[0] == pytest.approx(metrics["final_val_r2"], rel=1e-12)  # the objective reads R^2


def test_retraining_a_trial_in_process_gives_its_logged_metrics(retrained):
    for t, run, result, _, _ in retrained:
        logged = run.data.metrics
        summary = {k: v for k, v in result.summary().items() if not k.endswith(TIMING_SUFFIXES)}
        assert {"final_val_r2", "final_grad_noise_scale", "final_sharpness"} <= set(summary)
        for key, value in summary.items():
            assert logged.get(key) == pytest.approx(value, rel=1e-6, abs=1e-9), (t.number, key)


def test_the_logged_noise_scale_is_within_10_percent_of_the_exact_value(retrained):
    for t, run, _, model, data in retrained:
        exact = exact_values(model, data.x_train, data.y_train)
        assert exact["noise_scale"] / data.n_train < 0.05  # the design premise (module docstring)
        logged = run.data.metrics["final_grad_noise_scale"]
        assert logged == pytest.approx(exact["noise_scale"], rel=0.10), (t.number, t.params, logged, exact)


def test_the_logged_sharpness_is_within_2_percent_of_the_exact_top_eigenvalue(retrained):
    for t, run, _, model, data in retrained:
        exact = exact_values(model, data.x_train, data.y_train)
        logged = run.data.metrics["final_sharpness"]
        assert logged == pytest.approx(exact["sharpness"], rel=0.02), (t.number, t.params, logged, exact)


def test_the_logged_b_noise_and_eps_max_are_within_1_percent_of_the_exact_values(retrained):
    for t, run, _, model, data in retrained:
        exact = exact_values(model, data.x_train, data.y_train)
        logged = run.data.metrics
        for name in ("b_noise", "eps_max"):
            assert logged[f"final_{name}"] == pytest.approx(exact[name], rel=0.01), (t.number, name, logged, exact)
            assert logged[f"final_{name}_se"] == 0.0  # exact on the whole training set: no sampling error
        # B_noise and B_simple differ here (H is not a multiple of the identity): a check that tells them apart
        assert abs(exact["b_noise"] / exact["noise_scale"] - 1) > 0.02, exact


def test_the_logged_r2_and_mse_are_those_of_the_weights(retrained):
    for t, run, _, model, data in retrained:
        logged = run.data.metrics
        assert logged["final_val_r2"] == pytest.approx(r2(model, data.x_val, data.y_val), abs=1e-5), t.number
        assert logged["final_train_r2"] == pytest.approx(r2(model, data.x_train, data.y_train), abs=1e-5), t.number
        exact = exact_values(model, data.x_train, data.y_train)
        assert logged["train_loss"] == pytest.approx(exact["loss"], rel=1e-5), t.number  # the last epoch's


def test_the_exact_finite_sample_values_are_near_the_population_law(retrained):
    """A check of the test's own closed form against docs/science.md's law, extended to the
    bias: with delta = w - w*, G = 2 [delta, b] and tr(Sigma) = 4 ((d+2)|delta|^2 + d b^2 + (d+1) s^2)
    for MSELoss; on 800 examples the finite-sample values are within 25% of these (seeded)."""
    config = load_experiment(EXPERIMENTS / f"{EXPERIMENT}.toml")
    d, s = config.data.n_features, config.data.noise
    _, _, w_star = linear_regression(config.data.n_samples, d, s, config.seed)
    for _, _, _, model, data in retrained:
        layer = linear_layer(model)
        delta = layer.weight.detach().double().numpy().reshape(-1) - w_star
        b = float(layer.bias.detach())
        grad_sq = 4 * (delta @ delta + b**2)
        trace = 4 * ((d + 2) * (delta @ delta) + d * b**2 + (d + 1) * s**2)
        exact = exact_values(model, data.x_train, data.y_train)
        assert exact["grad_sq"] == pytest.approx(grad_sq, rel=0.25)
        assert exact["trace"] == pytest.approx(trace, rel=0.25)


def test_r2_of_an_in_process_training_is_one_minus_sse_over_sst():
    config = DataConfig(dataset="linear", task="regression", n_samples=300, n_features=4, noise=0.3)
    data = load_data(config, seed=5)
    tc = TrainConfig(batch_size=32, lr=0.05, momentum=0.0, epochs=3, seed=1, model=ModelConfig(hidden=()))
    model = build_model(tc.model, data.n_features, data.n_classes, tc.seed)
    result = train(tc, data, model=model)
    summary = result.summary()
    assert summary["final_val_r2"] == pytest.approx(r2(model, data.x_val, data.y_val), abs=1e-5)
    assert summary["final_train_r2"] == pytest.approx(r2(model, data.x_train, data.y_train), abs=1e-5)
    assert summary["best_val_r2"] == pytest.approx(max(m.val_acc for m in result.history), abs=1e-12)
    assert math.isfinite(summary["final_val_r2"]) and summary["final_val_r2"] <= 1.0
