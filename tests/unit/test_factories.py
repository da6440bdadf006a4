"""A user's own model and data from a folder of their own (sgdtune/factories.py,
sgdtune/datafactory.py): the factory is imported by one rule under the console script,
`python -m sgdtune.study` and the Python API, travels with the kept model, and a
data.factory may give arrays, ready splits or a torch Dataset."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sgdtune
from sgdtune.config import load_experiment
from sgdtune.data import DataConfig, load_data
from sgdtune.errors import InputError
from sgdtune.saved import array_digest, dataset_records

CONSOLE = Path(sys.executable).parent / "sgdtune"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}

NETS = '''
from torch import nn


def make(n_features, n_classes):
    return nn.Sequential(nn.Linear(n_features, 16), nn.Tanh(), nn.Linear(16, n_classes))
'''

EXPERIMENT = '''
name = "{name}"
n_trials = 1
keep_models = 1
[model]
factory = "{module}.nets:make"
[train]
batch_size = 64
lr = 0.1
epochs = 1
probe_size = 0
sharpness_every = 0
[pruner]
name = "none"
'''


def user_project(root: Path, module: str, name: str) -> Path:
    """root/exp/<name>.toml naming the factory <module>.nets:make, whose package is beside it."""
    (root / "exp" / module).mkdir(parents=True)
    (root / "exp" / module / "__init__.py").write_text("")
    (root / "exp" / module / "nets.py").write_text(NETS)
    (root / "exp" / f"{name}.toml").write_text(EXPERIMENT.format(name=name, module=module))
    return root / "exp" / f"{name}.toml"


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=240, env=ENV)


def test_a_factory_beside_the_experiment_file_imports_under_the_console_script_and_python_m(tmp_path):
    experiment = user_project(tmp_path, "consolenets", "bc_factory")
    for command in ([str(CONSOLE), "study"], [sys.executable, "-m", "sgdtune.study"]):
        proc = run([*command, str(experiment.relative_to(tmp_path)), "--no-progress"], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert "cannot import" not in proc.stderr


def test_the_api_reads_a_factory_from_the_experiment_files_folder_and_the_working_directory(tmp_path, monkeypatch):
    experiment = user_project(tmp_path / "a", "apinets", "api_factory")
    monkeypatch.chdir(tmp_path)
    assert load_experiment(experiment).model.factory == "apinets.nets:make"
    (tmp_path / "cwdnets").mkdir()
    (tmp_path / "cwdnets" / "__init__.py").write_text("")
    (tmp_path / "cwdnets" / "nets.py").write_text(NETS)
    config = load_experiment(experiment, **{"model.factory": "cwdnets.nets:make"})
    assert config.model.factory == "cwdnets.nets:make"


@pytest.fixture(scope="module")
def kept_factory_model(tmp_path_factory):
    """A study of a factory model (the console script), its folder and its stores."""
    root = tmp_path_factory.mktemp("factory-model")
    experiment = user_project(root, "keptnets", "kept_factory")
    proc = run([str(CONSOLE), "study", str(experiment), "--no-progress"], cwd=root)
    assert proc.returncode == 0, proc.stderr
    return root, ["--storage", str(root / "mlruns/optuna.journal"), "--tracking-uri",
                  f"sqlite:///{root}/mlruns/mlflow.db"]


def test_a_kept_factory_model_records_its_import_root_and_loads_from_any_folder(kept_factory_model, tmp_path):
    root, stores = kept_factory_model
    architecture = next((root / "mlruns/artifacts/models").rglob("architecture.json"))
    assert json.loads(architecture.read_text())["import_root"] == str(root / "exp")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run([str(CONSOLE), "model", "--study-name", "kept_factory", *stores], cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert (elsewhere / "kept_factory-trial-0.pt").is_file()
    code = (f"import sgdtune; m = sgdtune.load_model('kept_factory', storage={stores[1]!r}, "
            f"tracking_uri={stores[3]!r}); print(type(m[0]).__name__, m[0].out_features)")
    proc = run([sys.executable, "-c", code], cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["Linear", "16"]


def test_a_factory_model_whose_folder_is_gone_says_in_one_line_what_to_put_on_the_path(kept_factory_model, tmp_path):
    root, stores = kept_factory_model
    (root / "exp").rename(root / "moved")
    try:
        proc = run([str(CONSOLE), "model", "--study-name", "kept_factory", *stores], cwd=tmp_path)
        code = (f"import sgdtune\ntry: sgdtune.load_model('kept_factory', storage={stores[1]!r}, "
                f"tracking_uri={stores[3]!r})\nexcept sgdtune.InputError as e: print(e)")
        api = run([sys.executable, "-c", code], cwd=tmp_path)
    finally:
        (root / "moved").rename(root / "exp")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert f"model.factory: must be importable to rebuild the network: put the folder that holds 'keptnets' on " \
           f"the import path (PYTHONPATH={root / 'exp'})" in proc.stderr
    assert api.stdout.startswith("model.factory: must be importable") and "Traceback" not in api.stderr


# -- data.factory -------------------------------------------------------------------------------

DATA = '''
import numpy as np
import torch
from sgdtune.datasets import load_digits


def arrays(seed):
    x, y = load_digits()
    noise = np.random.default_rng(seed).normal(0, 0.1, x.shape).astype(np.float32)
    return torch.as_tensor(x + noise), torch.as_tensor(y)


def drawn():
    x, y = load_digits()
    return x + np.random.rand(*x.shape).astype(np.float32), y  # the global generator: seeded around the call


def splits():
    x, y = load_digits()
    return {"train": (x[:1000], y[:1000]), "val": (x[1000:1400], y[1000:1400]), "test": (x[1400:], y[1400:])}


class Digits(torch.utils.data.Dataset):
    def __init__(self):
        self.x, self.y = load_digits()

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return torch.as_tensor(self.x[i]), int(self.y[i])


def dataset():
    return Digits()


class Huge(torch.utils.data.Dataset):
    def __len__(self):
        return 10**10

    def __getitem__(self, i):
        return torch.zeros(3, 32, 32), 0


def huge():
    return Huge()


def rgb():
    x, y = load_digits()
    x = x.reshape(-1, 1, 8, 8)
    return np.concatenate([x, 0.5 * x, 16 - x], axis=1), y


def strings():
    return "not data"
'''


@pytest.fixture(scope="module")
def data_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("userdata")
    (folder / "userdata.py").write_text(DATA)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))


def test_a_data_factory_may_give_tensors_a_dataset_or_ready_splits(data_module):
    from sgdtune.datasets import load_digits

    x, y = load_digits()
    as_tensors = load_data(DataConfig(factory="userdata:arrays"), seed=0)
    assert as_tensors.name == "factory:userdata:arrays" and as_tensors.n_train + as_tensors.n_val == len(y)
    as_dataset = load_data(DataConfig(factory="userdata:dataset"), seed=0)
    digits = load_data(DataConfig(dataset="digits"), seed=0)  # a Dataset of the digits is split as the digits
    assert torch.equal(as_dataset.x_train, digits.x_train) and torch.equal(as_dataset.y_val, digits.y_val)
    ready = load_data(DataConfig(factory="userdata:splits"), seed=0)
    assert (ready.n_train, ready.n_val, ready.n_test) == (1000, 400, len(y) - 1400)
    assert torch.equal(ready.y_test, torch.as_tensor(y[1400:]))  # used as given, in order


def test_a_data_factory_is_seeded_by_the_study_seed(data_module):
    a, b, c = (load_data(DataConfig(factory=f), seed=s) for f, s in
               (("userdata:drawn", 0), ("userdata:drawn", 0), ("userdata:drawn", 1)))
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    assert array_digest(a.x_train, a.y_train) == array_digest(b.x_train, b.y_train)


def test_a_data_factory_is_recorded_in_the_lineage_with_its_name_and_digests(data_module):
    config = DataConfig(factory="userdata:splits")
    data = load_data(config, seed=3)
    records = {r["context"]: r for r in dataset_records(data, config, seed=3)}
    assert set(records) == {"training", "validation", "test"}
    assert records["training"]["source"]["tags"]["factory"] == "userdata:splits"
    assert records["training"]["source"]["tags"]["seed"] == "3"
    assert records["test"]["digest"] == array_digest(data.x_test, data.y_test)


def test_a_dataset_too_large_for_the_device_is_refused_naming_its_size(data_module):
    with pytest.raises(InputError, match=r"data.factory: must give data that fits on the device once: at most "
                       r"[\d.]+ GB \(50% of the memory free on cpu\); got 'userdata:huge': 10000000000 x 3 x 32 x 32 "
                       r"float32 features = 122960.00 GB"):
        load_data(DataConfig(factory="userdata:huge"), seed=0)


def test_a_data_factory_returning_something_else_is_refused_naming_what_it_returned(data_module):
    with pytest.raises(InputError, match=r"data.factory: must return \(x, y\), .*; got 'userdata:strings' "
                       r"returned str"):
        load_data(DataConfig(factory="userdata:strings"), seed=0)


def test_data_factory_sets_the_dataset_and_refuses_another(data_module):
    assert DataConfig(factory="userdata:arrays").dataset == "factory"
    with pytest.raises(ValueError, match=r"data.dataset: must be 'factory' or unset when data.factory is given; "
                       r"got 'csv'"):
        DataConfig(factory="userdata:arrays", dataset="csv")


def test_the_api_exports_load_model_documenting_what_the_network_returns():
    assert "logits" in sgdtune.load_model.__doc__ and "class ids" in sgdtune.load_model.__doc__


def test_features_of_the_wrong_rank_are_refused_showing_their_shape(data_module, tmp_path):
    np.savez(tmp_path / "five.npz", x=np.zeros((10, 1, 2, 2, 2)), label=np.arange(10) % 2)
    with pytest.raises(InputError, match=r"data.path: an .npz needs, beside the labels, one feature array of shape "
                       r"N x F, images N x H x W or N x C x H x W, or 1-D columns of N; got 'x': 10x1x2x2x2 in"):
        load_data(DataConfig(dataset="npz", path=tmp_path / "five.npz"), seed=0)
