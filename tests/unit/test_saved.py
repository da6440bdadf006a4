"""What a user takes away from a sweep: the best trials' trained networks as MLflow logged
models (a bounded set), the dataset inputs of every run, `sgdtune.load_model`, the `sgdtune
model` command and `--register-model` (sgdtune/saved.py)."""

import json
import os
import shutil
import subprocess
import sys

import mlflow.pyfunc
import numpy as np
import optuna
import pytest
import torch
from browser import chromium, open_page  # noqa: F401 (chromium is a fixture)
from conftest import EXPERIMENTS, free_port, run_cli, wait_http
from mlflow import MlflowClient
from mlflow.entities import LoggedModelStatus
from mlflow.models import Model
from optuna.trial import TrialState

import sgdtune
from sgdtune.config import load_experiment
from sgdtune.data import load_data
from sgdtune.model import ModelConfig, Standardize, build_model
from sgdtune.saved import array_digest
from sgdtune.store.stores import open_storage
from sgdtune.trainer import TrainConfig, evaluate, train, train_stacked

KEEP = 2


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """`python -m sgdtune.study experiments/quick.toml` (4 trials) keeping the best 2 networks
    and registering the best one, in a fresh directory."""
    cwd = tmp_path_factory.mktemp("models")
    shutil.copytree(EXPERIMENTS, cwd / "experiments")
    proc = run_cli("sgdtune.study", "experiments/quick.toml", "--no-progress", "--set", f"keep_models={KEEP}",
                   "--register-model", "quick-best", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="quick", storage=open_storage(str(cwd / "mlruns/optuna.journal")))
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd}/mlruns/mlflow.db")
    return cwd, proc, study, client


def locations(cwd):
    return {"storage": str(cwd / "mlruns/optuna.journal"), "tracking_uri": f"sqlite:///{cwd}/mlruns/mlflow.db"}


def ranked(study):
    """Complete trials, best val_acc first (ties: the earlier trial)."""
    return ranked_among(study.get_trials(states=(TrialState.COMPLETE,)))


def ranked_among(trials):
    return sorted(trials, key=lambda t: (-t.values[0], t.number))


def val_accuracy(module, data) -> float:
    with torch.no_grad():
        return (module(data.x_val).argmax(dim=1) == data.y_val).double().mean().item()


def test_exactly_the_best_k_complete_trials_keep_a_logged_model_linked_to_their_run(sweep):
    cwd, _, study, client = sweep
    experiment = client.get_experiment_by_name("quick").experiment_id
    models = client.search_logged_models([experiment])
    best = ranked(study)[:KEEP]
    assert len(ranked(study)) == 4 > KEEP
    assert sorted(int(m.tags["sgdtune.trial_number"]) for m in models) == sorted(t.number for t in best)
    for m in models:
        trial = study.trials[int(m.tags["sgdtune.trial_number"])]
        assert m.source_run_id == trial.user_attrs["mlflow_run_id"]
        assert m.status == LoggedModelStatus.READY
        run = client.get_run(m.source_run_id)
        assert [o.model_id for o in run.outputs.model_outputs] == [m.model_id]  # the runs table's Models column
        signature = json.loads(m.params["architecture"])
        assert signature["hidden"] == [32]
        assert m.params["batch_size"] == str(trial.params["batch_size"])
    # Every trial that was among the best 2 when it completed logged a model; those pushed out
    # since were deleted (their files stay until `mlflow gc`).
    ever_kept = sum(t.number in [u.number for u in ranked_among(study.trials[: t.number + 1])[:KEEP]]
                    for t in study.trials)
    assert ever_kept > KEEP  # the seeded sweep does push trials out: the deletion is exercised
    assert len(list((cwd / "mlruns/artifacts/models").iterdir())) == ever_kept


def test_the_logged_model_has_a_float32_signature_an_input_example_and_predicts_class_ids(sweep):
    cwd, _, study, client = sweep
    best = ranked(study)[0]
    experiment = client.get_experiment_by_name("quick").experiment_id
    (model,) = [m for m in client.search_logged_models([experiment])
                if m.source_run_id == best.user_attrs["mlflow_run_id"]]
    files = {f.path for f in client.list_logged_model_artifacts(model.model_id)}
    assert {"MLmodel", "input_example.json"} <= files
    folder = cwd / "mlruns/artifacts/models" / model.model_id / "artifacts"
    mlmodel = Model.load(str(folder / "MLmodel"))
    (inputs,), (outputs,) = mlmodel.signature.inputs.inputs, mlmodel.signature.outputs.inputs
    assert (inputs.type, inputs.shape) == (np.dtype(np.float32), (-1, 64))
    assert (outputs.type, outputs.shape) == (np.dtype(np.int64), (-1,))  # class ids
    assert [(p.name, p.default) for p in mlmodel.signature.params.params] == [("output", "classes")]
    assert mlmodel.flavors["python_function"]["loader_module"] == "sgdtune.saved"
    example = mlmodel.load_input_example(str(folder))
    config = load_experiment(EXPERIMENTS / "quick.toml")
    data = load_data(config.data, config.seed)
    assert example.dtype == np.float32 and np.array_equal(example, data.x_val[:2].numpy())  # two validation rows
    # An MLflow pyfunc model: MLflow's own loader calls sgdtune.saved; its class ids score the
    # trial's final_val_acc, and the logits and probabilities come on request.
    pyfunc = mlflow.pyfunc.load_model(model.artifact_location)
    classes = pyfunc.predict(data.x_val.numpy())
    assert classes.shape == (360,) and classes.dtype == np.int64
    assert (classes == data.y_val.numpy()).mean() == pytest.approx(best.values[0], abs=1e-9)
    logits = pyfunc.predict(data.x_val.numpy(), params={"output": "logits"})
    assert logits.shape == (360, 10) and np.array_equal(logits.argmax(axis=1), classes)
    probabilities = pyfunc.predict(data.x_val.numpy(), params={"output": "probabilities"})
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert np.allclose(probabilities, torch.softmax(torch.as_tensor(logits), 1).numpy(), atol=1e-6)


def test_every_run_has_the_dataset_inputs_with_name_digest_and_split_sizes(sweep):
    _, _, study, client = sweep
    config = load_experiment(EXPERIMENTS / "quick.toml")
    data = load_data(config.data, config.seed)
    expected = {"training": array_digest(data.x_train, data.y_train),
                "validation": array_digest(data.x_val, data.y_val)}
    assert expected["training"] != expected["validation"]
    experiment = client.get_experiment_by_name("quick").experiment_id
    runs = client.search_runs([experiment])
    assert len(runs) == 5  # the parent and four trials
    for run in runs:
        inputs = run.inputs.dataset_inputs
        got = {i.tags[0].value: i.dataset for i in inputs if i.tags[0].key == "mlflow.data.context"}
        assert {c: d.digest for c, d in got.items()} == expected
        assert {d.name for d in got.values()} == {"digits"}
        profile = json.loads(got["training"].profile)
        assert (profile["n_train"], profile["n_val"], profile["n_test"]) == (1437, 360, 0)
        assert profile["num_rows"] == 1437 and json.loads(got["validation"].profile)["num_rows"] == 360
        assert json.loads(got["training"].source)["tags"]["seed"] == "0"


def test_load_model_gives_the_network_whose_predictions_score_the_recorded_final_val_acc(sweep):
    cwd, _, study, client = sweep
    config = load_experiment(EXPERIMENTS / "quick.toml")
    data = load_data(config.data, config.seed)
    for trial, which in [(ranked(study)[0], "best"), (ranked(study)[1], ranked(study)[1].number)]:
        module = sgdtune.load_model("quick", which, **locations(cwd))
        assert isinstance(module, torch.nn.Module) and not module.training
        assert all(p.device.type == "cpu" for p in module.parameters())
        recorded = client.get_run(trial.user_attrs["mlflow_run_id"]).data.metrics["final_val_acc"]
        assert val_accuracy(module, data) == pytest.approx(recorded, abs=1e-9)
        assert recorded == pytest.approx(trial.values[0])


def test_raw_features_put_the_training_statistics_in_front_of_the_network(sweep):
    cwd, _, study, _ = sweep
    config = load_experiment(EXPERIMENTS / "quick.toml")
    data = load_data(config.data, config.seed)
    raw_config = config.data.model_copy(update={"standardize": False})
    raw = load_data(raw_config, config.seed)  # the same split, features as in the data file
    assert not torch.equal(raw.x_val, data.x_val) and data.feature_mean is not None and raw.feature_mean is None
    network = sgdtune.load_model("quick", **locations(cwd))
    whole = sgdtune.load_model("quick", raw_features=True, **locations(cwd))
    assert isinstance(whole[0], Standardize) and not whole.training
    assert torch.equal(whole[0].mean, torch.tensor(data.feature_mean, dtype=torch.float32))
    with torch.no_grad():
        assert torch.allclose(whole(raw.x_val), network(data.x_val), atol=1e-4)
        assert torch.equal(whole(raw.x_val).argmax(1), network(data.x_val).argmax(1))


def test_the_model_command_writes_a_state_dict_and_says_how_to_load_it(sweep):
    cwd, _, study, _ = sweep
    proc = run_cli("sgdtune", "model", "--study-name", "quick", "--out", "best.pt", cwd=cwd)
    assert proc.returncode == 0, proc.stderr
    best = ranked(study)[0]
    assert f"saved trial {best.number} of study 'quick' to best.pt" in proc.stdout
    assert f"sgdtune.load_model('quick', trial={best.number})" in proc.stdout
    state = torch.load(cwd / "best.pt", weights_only=True)
    module = build_model(ModelConfig(hidden=(32,)), 64, 10, seed=1)
    module.load_state_dict(state)
    config = load_experiment(EXPERIMENTS / "quick.toml")
    assert val_accuracy(module.eval(), load_data(config.data, config.seed)) == pytest.approx(best.values[0], abs=1e-9)


@pytest.mark.parametrize("args, message", [
    (["--study-name", "nope"], "error: --study-name: must be one of 'quick'; got 'nope'"),
    (["--trial", "99"], "error: trial: must be a trial of study 'quick' (0..3); got 99"),
    (["--trial", "x"], "error: --trial: must be 'best' or a trial number (an integer >= 0); got 'x'"),
    (["--trial", "WORST"], "not among the best"),
    (["--out", "no/such/folder/x.pt"], "error: --out: must be a file in an existing folder"),
])
def test_a_bad_study_or_trial_is_one_line_and_exit_2(sweep, args, message):
    cwd, _, study, _ = sweep
    args = [str(ranked(study)[-1].number) if a == "WORST" else a for a in args]
    proc = run_cli("sgdtune", "model", *args, cwd=cwd)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_register_model_registers_the_best_trials_logged_model(sweep):
    _, proc, study, client = sweep
    best = ranked(study)[0]
    version = client.get_model_version("quick-best", "1")
    assert version.run_id == best.user_attrs["mlflow_run_id"]
    assert version.status == "READY"
    assert f"registered:     trial {best.number}'s model as models:/quick-best/1" in proc.stdout
    assert study.user_attrs["registered_model"] == {"name": "quick-best", "version": "1", "trial": best.number}


@pytest.mark.parametrize("extra, message", [
    (["--no-tracking"], "error: --register-model: needs MLflow tracking (the models live there); got --no-tracking"),
    (["--set", "keep_models=0"], "error: --register-model: needs keep_models >= 1"),
])
def test_register_model_without_kept_models_is_refused_before_anything_runs(tmp_path, extra, message):
    shutil.copytree(EXPERIMENTS, tmp_path / "experiments")
    proc = run_cli("sgdtune.study", "experiments/quick.toml", "--no-progress", "--register-model", "x", *extra,
                   cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (tmp_path / "mlruns/optuna.journal").exists()


def test_train_and_stacked_members_hand_back_their_own_trained_networks():
    config = load_experiment(EXPERIMENTS / "quick.toml")
    data = load_data(config.data, config.seed)
    base = {"batch_size": 64, "epochs": 2, "momentum": 0.9, "model": config.model, "sharpness_every": 0,
            "probe_size": 0}
    alone = train(TrainConfig(lr=0.05, seed=1, **base), data)
    assert evaluate(alone.module, data.x_val, data.y_val)[1] == alone.final.val_acc
    stacked = train_stacked([TrainConfig(lr=lr, seed=s, **base) for lr, s in [(0.05, 1), (0.01, 2)]], data)
    accs = [evaluate(r.module, data.x_val, data.y_val)[1] for r in stacked]
    assert accs == pytest.approx([r.final.val_acc for r in stacked], abs=1 / 360)  # float rounding at most
    assert stacked[0].module is not stacked[1].module
    assert not torch.equal(stacked[0].module[0].weight, stacked[1].module[0].weight)
    assert evaluate(stacked[0].module, data.x_val, data.y_val)[0] == pytest.approx(
        evaluate(alone.module, data.x_val, data.y_val)[0], abs=1e-4)  # member 0 = the same trial alone


def test_the_mlflow_runs_table_shows_the_kept_models_and_every_runs_datasets(sweep, chromium):  # noqa: F811
    """The runs table of a real `mlflow server` on the sweep's store, in headless Chromium:
    the Models column names the logged model of each kept trial, the Dataset column the
    training split's name and digest on every run."""
    cwd, _, study, client = sweep
    config = load_experiment(EXPERIMENTS / "quick.toml")
    digest = array_digest(*(lambda d: (d.x_train, d.y_train))(load_data(config.data, config.seed)))
    experiment = client.get_experiment_by_name("quick").experiment_id
    port = free_port()
    with open(cwd / "server.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{cwd}/mlruns/mlflow.db",
             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_http(f"http://127.0.0.1:{port}/health", timeout_s=180, proc=proc)
            url = f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs?workflowType=machine_learning"
            with open_page(chromium, url, width=1800, timeout_ms=60_000) as visit:
                page = visit.page
                page.wait_for_selector(f"text=digits ({digest})", timeout=60_000)
                page.locator("[role=gridcell] button").first.click()  # expand the study's run: its trials
                page.wait_for_selector("text=trial-0", timeout=60_000)
                texts = [row.inner_text() for row in page.locator("[role=row]").all()]
        finally:
            os.killpg(proc.pid, 15)
            proc.wait(30)
    # The grid pins the run names on the left: each run is two rows, its name, and the rest
    # (datasets, duration, source, models).
    kept = {t.number for t in ranked(study)[:KEEP]}
    assert all(any(f"trial-{n}" in t for t in texts) for n in range(4))
    right = [t for t in texts if f"digits ({digest})" in t]
    assert len(right) == 5  # the study's run and its four trials
    assert sorted(n for n in range(4) for t in right if f"trial-{n}" in t) == sorted(kept)  # the Models column


def test_stacked_members_of_any_model_hand_back_their_networks_through_torch_func():
    config = load_experiment(EXPERIMENTS / "quick.toml")
    data = load_data(config.data, config.seed)
    cnn = ModelConfig(name="cnn", channels=(4, 4), hidden=())
    configs = [TrainConfig(lr=lr, seed=s, batch_size=128, epochs=1, model=cnn, sharpness_every=0, probe_size=0)
               for lr, s in [(0.05, 1), (0.02, 2)]]
    results = train_stacked(configs, data)  # a CNN stacks through trainer/func_stacked.py
    for r in results:
        assert type(r.module).__name__ == "CNN"
        loss, acc = evaluate(r.module, data.x_val, data.y_val)
        assert acc == pytest.approx(r.final.val_acc, abs=1 / 360) and loss == pytest.approx(r.final.val_loss, rel=1e-4)


def test_models_through_a_tracking_server_and_postgresql(postgres, mlflow_server, tmp_path):
    """Scale-out stores: the writer uploads the network through a real `mlflow server`
    (PostgreSQL behind it), and load_model and --register-model read it back from there."""
    shutil.copytree(EXPERIMENTS, tmp_path / "experiments")
    storage = postgres("optuna_models")
    proc = run_cli("sgdtune.study", "experiments/quick.toml", "--no-progress", "--study-name", "models-srv",
                   "--storage", storage, "--tracking-uri", mlflow_server, "--set", "keep_models=1",
                   "--register-model", "srv-best", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    study = optuna.load_study(study_name="models-srv", storage=storage)
    best = ranked(study)[0]
    module = sgdtune.load_model("models-srv", storage=storage, tracking_uri=mlflow_server)
    config = load_experiment(EXPERIMENTS / "quick.toml")
    assert val_accuracy(module, load_data(config.data, config.seed)) == pytest.approx(best.values[0], abs=1e-9)
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("models-srv").experiment_id
    assert [m.tags["sgdtune.trial_number"] for m in client.search_logged_models([experiment])] == [str(best.number)]
    assert client.get_model_version("srv-best", "1").run_id == best.user_attrs["mlflow_run_id"]
