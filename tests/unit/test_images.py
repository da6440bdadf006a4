"""Images, N x C x H x W or N x H x W (an .npz or a data.factory), go to a 2-D CNN with C input
channels; their shape is kept through standardization (per channel), the stacked trainer,
load_model, and the logged model's signature and input example."""

import os
import subprocess
import sys
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pytest
import torch
from mlflow.models import Model

import sgdtune
from sgdtune.data import DataConfig, load_data
from sgdtune.datasets import load_digits
from sgdtune.errors import InputError
from sgdtune.model import ModelConfig, build_model, describe_model
from sgdtune.saved import save_model_file
from sgdtune.store.stores import open_storage
from sgdtune.trainer import TrainConfig, train, train_stacked

CONSOLE = Path(sys.executable).parent / "sgdtune"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1"}
CNN = ModelConfig(name="cnn", channels=(8, 8), kernel_size=3, hidden=())


def rgb_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits stacked as 3 channels of different scales: (1797, 3, 8, 8)."""
    x, y = load_digits()
    x = x.reshape(-1, 1, 8, 8)
    return np.concatenate([x, 0.5 * x, 16 - x], axis=1), y


@pytest.fixture(scope="module")
def rgb_npz(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("images") / "rgb.npz"
    x, y = rgb_digits()
    np.savez(path, images=x, label=y)
    return path


def test_an_npz_of_images_keeps_their_shape_and_is_standardized_per_channel(rgb_npz):
    data = load_data(DataConfig(dataset="npz", path=rgb_npz), seed=0)
    assert data.input_shape == (3, 8, 8) and data.n_features == 192
    x, _ = rgb_digits()
    flat = load_data(DataConfig(dataset="npz", path=rgb_npz, standardize=False), seed=0).x_train.numpy()
    per_channel = flat.reshape(-1, 3, 64)
    mean = per_channel.mean(axis=(0, 2), dtype=np.float64)
    assert np.allclose(np.array(data.feature_mean).reshape(3, 64), mean[:, None], rtol=1e-6)
    assert np.allclose(data.x_train.numpy().reshape(-1, 3, 64).mean(axis=(0, 2)), 0, atol=1e-5)
    assert np.allclose(data.x_train.numpy().reshape(-1, 3, 64).std(axis=(0, 2)), 1, atol=1e-5)


def test_an_npz_of_one_channel_images_n_by_h_by_w_has_one_input_channel(tmp_path):
    x, y = load_digits()
    np.savez(tmp_path / "gray.npz", images=x.reshape(-1, 8, 8), label=y)
    data = load_data(DataConfig(dataset="npz", path=tmp_path / "gray.npz"), seed=0)
    assert data.input_shape == (1, 8, 8)
    assert describe_model(CNN, data.n_features, 10, data.input_shape) == "cnn2d(1x8x8-8-8-10,relu)"


def test_the_cnn_trains_on_3_channel_images_alone_and_stacked_alike(rgb_npz):
    data = load_data(DataConfig(dataset="npz", path=rgb_npz), seed=0)
    model = build_model(CNN, data.n_features, data.n_classes, seed=0, input_shape=data.input_shape)
    assert model.features[0].in_channels == 3
    assert describe_model(CNN, data.n_features, data.n_classes, data.input_shape) == "cnn2d(3x8x8-8-8-10,relu)"
    configs = [TrainConfig(batch_size=32, lr=0.05, epochs=3, probe_size=256, sharpness_every=0, model=CNN, seed=s)
               for s in (0, 1)]
    alone = train(configs[0], data)
    assert alone.final.val_acc > 0.8
    stacked = train_stacked(configs, data)
    assert stacked[0].final.val_acc == pytest.approx(alone.final.val_acc, abs=1e-9)
    assert stacked[0].final.train_loss == pytest.approx(alone.final.train_loss, rel=1e-4)


def test_a_2d_cnn_on_flat_features_that_are_no_square_is_refused_showing_the_shape():
    with pytest.raises(InputError, match=r"model.image: '2d' needs images: .*; got features of shape N x 192"):
        describe_model(ModelConfig(name="cnn", image="2d"), 192, 10)


@pytest.fixture(scope="module")
def image_study(tmp_path_factory, rgb_npz):
    """`sgdtune study` of a CNN on rgb.npz from a folder of the user's own."""
    root = tmp_path_factory.mktemp("image-study")
    (root / "rgb.toml").write_text(f'''
name = "rgb"
n_trials = 1
keep_models = 1
[data]
dataset = "npz"
path = "{rgb_npz}"
[model]
name = "cnn"
channels = [8, 8]
kernel_size = 3
hidden = []
[train]
batch_size = 32
lr = 0.05
epochs = 2
probe_size = 0
sharpness_every = 0
[pruner]
name = "none"
''')
    proc = subprocess.run([str(CONSOLE), "study", "rgb.toml", "--no-progress"], cwd=root, capture_output=True,
                          text=True, timeout=240, env=ENV)
    assert proc.returncode == 0, proc.stderr
    return root


def test_a_kept_image_model_takes_images_in_load_model_and_in_its_pyfunc_signature(image_study, rgb_npz, tmp_path):
    import optuna

    root = image_study
    stores = {"storage": str(root / "mlruns/optuna.journal"), "tracking_uri": f"sqlite:///{root}/mlruns/mlflow.db"}
    study = optuna.load_study(study_name="rgb", storage=open_storage(stores["storage"]))
    (trial,) = study.trials
    data = load_data(DataConfig(dataset="npz", path=rgb_npz), seed=0)
    images = data.x_val.reshape(-1, 3, 8, 8)
    network = sgdtune.load_model("rgb", **stores)
    with torch.no_grad():
        accuracy = (network(images).argmax(1) == data.y_val).double().mean().item()
    assert accuracy == pytest.approx(trial.values[0], abs=1e-9)
    raw = sgdtune.load_model("rgb", **stores, raw_features=True)
    x, y = rgb_digits()
    with torch.no_grad():
        assert torch.allclose(raw(torch.as_tensor(x[:5])), network(torch.as_tensor(
            (x[:5].reshape(5, 3, 64) - np.array(data.feature_mean).reshape(3, 64)) /
            np.array(data.feature_std).reshape(3, 64), dtype=torch.float32).reshape(5, 3, 8, 8)), atol=1e-5)
    folder = next((root / "mlruns/artifacts/models").rglob("MLmodel")).parent
    mlmodel = Model.load(str(folder / "MLmodel"))
    (inputs,) = mlmodel.signature.inputs.inputs
    assert inputs.shape == (-1, 3, 8, 8)
    example = mlmodel.load_input_example(str(folder))
    assert example.shape == (2, 3, 8, 8) and np.array_equal(example, images[:2].numpy())
    classes = mlflow.pyfunc.load_model(str(folder)).predict(images.numpy())
    assert (classes == data.y_val.numpy()).mean() == pytest.approx(trial.values[0], abs=1e-9)
    path, text = save_model_file("rgb", out=tmp_path / "rgb.pt", **stores)  # `sgdtune model`
    assert "input_shape=(3, 8, 8)" in text
    rebuilt = build_model(CNN, 192, 10, seed=0, input_shape=(3, 8, 8))
    rebuilt.load_state_dict(torch.load(path, weights_only=True))
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(images), network(images))


def test_a_2d_cnn_on_192_flat_features_stops_the_study_with_one_line(tmp_path):
    x, y = rgb_digits()
    np.savez(tmp_path / "flat.npz", x=x.reshape(len(x), -1), label=y)
    (tmp_path / "flat.toml").write_text('[data]\ndataset = "npz"\npath = "flat.npz"\n'
                                        '[model]\nname = "cnn"\nimage = "2d"\n')
    proc = subprocess.run([str(CONSOLE), "study", "flat.toml", "--no-progress"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=240, env=ENV)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("got features of shape N x 192")
    assert not (tmp_path / "mlruns").exists()  # refused before anything is written
