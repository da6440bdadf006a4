"""MNIST-1D (the mnist1d package's generator), the held-out test set at the end of training,
and the built-in CNN on 1-D sequences and 8x8 images."""

import builtins
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from sgdtune.data import DataConfig, load_data
from sgdtune.datasets import _generate_mnist1d, load_mnist1d
from sgdtune.errors import InputError
from sgdtune.model import ModelConfig, build_model, describe_model
from sgdtune.trainer import TrainConfig, train


@pytest.fixture(scope="module")
def mnist1d():
    return load_data(DataConfig(dataset="mnist1d"), seed=0)


def test_mnist1d_shapes_split_sizes_and_test_set(mnist1d):
    d = mnist1d
    assert (d.n_train, d.n_val, d.n_test, d.n_features, d.n_classes) == (3200, 800, 1000, 40, 10)
    assert d.x_test.dtype == torch.float32 and d.y_test.dtype == torch.int64
    # standardized with the training split's statistics: the test set is not exactly centred
    assert torch.allclose(d.x_train.mean(dim=0), torch.zeros(40), atol=1e-4)
    assert not torch.allclose(d.x_test.mean(dim=0), torch.zeros(40), atol=1e-3)
    other = load_data(DataConfig(dataset="mnist1d", val_fraction=0.5), seed=0)
    assert (other.n_train, other.n_val, other.n_test) == (2000, 2000, 1000)


def test_mnist1d_is_deterministic_and_leaves_the_global_numpy_rng_alone(mnist1d):
    np.random.seed(1234)
    expected = np.random.get_state()[1].copy(), np.random.random()
    np.random.seed(1234)
    _generate_mnist1d.cache_clear()  # the generator itself, not its cached arrays
    again = load_data(DataConfig(dataset="mnist1d"), seed=0)
    assert np.array_equal(np.random.get_state()[1], expected[0]) and np.random.random() == expected[1]
    for a, b in [(again.x_train, mnist1d.x_train), (again.y_val, mnist1d.y_val), (again.x_test, mnist1d.x_test)]:
        assert torch.equal(a, b)
    assert not torch.equal(load_data(DataConfig(dataset="mnist1d"), seed=1).y_train, mnist1d.y_train)


def test_mnist1d_raw_arrays_are_the_packages_defaults():
    x, y, x_test, y_test = load_mnist1d()
    assert x.shape == (4000, 40) and y.shape == (4000,) and x_test.shape == (1000, 40) and y_test.shape == (1000,)
    assert sorted(np.unique(y)) == list(range(10))


def test_a_missing_mnist1d_package_names_the_field_and_the_install_command(monkeypatch):
    real_import = builtins.__import__

    def no_mnist1d(name, *args, **kwargs):
        if name == "mnist1d" or name.startswith("mnist1d."):
            raise ImportError("No module named 'mnist1d'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_mnist1d)
    for key in [k for k in sys.modules if k == "mnist1d" or k.startswith("mnist1d.")]:
        monkeypatch.delitem(sys.modules, key)
    with pytest.raises(InputError) as e:
        load_data(DataConfig(dataset="mnist1d"), seed=0)
    assert "data.dataset" in str(e.value) and "pip install" in str(e.value) and "mnist1d" in str(e.value)


def test_mnist1d_refuses_a_test_fraction_of_its_own():
    with pytest.raises(ValueError, match="test_fraction"):
        DataConfig(dataset="mnist1d", test_fraction=0.1)


def test_the_cli_exits_2_when_mnist1d_is_missing(tmp_path):
    code = ("import builtins, sys\n"
            "real = builtins.__import__\n"
            "def imp(name, *a, **k):\n"
            "    if name.startswith('mnist1d'): raise ImportError(name)\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = imp\n"
            "from sgdtune.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    exp = tmp_path / "m.toml"
    exp.write_text('name = "m"\nn_trials = 1\n[data]\ndataset = "mnist1d"\n[train]\nepochs = 1\n')
    proc = subprocess.run([sys.executable, "-c", code, "study", str(exp), "--no-tracking", "--no-progress",
                           "--storage", str(tmp_path / "j.journal")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "data.dataset" in proc.stderr and "pip install" in proc.stderr


def cnn_config(**kw) -> TrainConfig:
    base = dict(batch_size=64, lr=0.01, optimizer="adam", budget="updates", updates=6, probe_size=256,
                measure_every_epochs=1, sharpness_every=1, sharpness_size=128, eval_size=256,
                measure_share="all",  # every measurement of these 6 updates: the machinery on a CNN
                model=ModelConfig(name="cnn", channels=(8, 8), hidden=()))
    return TrainConfig(**{**base, **kw})


def test_the_cnn_on_mnist1d_trains_and_its_noise_probe_sharpness_and_test_set_are_finite(mnist1d):
    config = cnn_config()
    assert describe_model(config.model, 40, 10) == "cnn1d(1x40-8-8-10,relu)"
    model = build_model(config.model, 40, 10, seed=0)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert model(mnist1d.x_train[:5]).shape == (5, 10)
    small = type(mnist1d)("mnist1d", mnist1d.x_train[:640], mnist1d.y_train[:640], mnist1d.x_val, mnist1d.y_val,
                          10, x_test=mnist1d.x_test, y_test=mnist1d.y_test)
    result = train(config, small)
    last = result.final
    assert last.updates == 6
    assert math.isfinite(last.grad_noise_scale) and math.isfinite(last.loss_noise)
    assert last.sharpness is not None and math.isfinite(last.sharpness) and last.sharpness > 0
    summary = result.summary()
    assert 0.0 <= summary["final_test_acc"] <= 1.0 and math.isfinite(summary["final_test_loss"])


def test_the_cnn_on_digits_is_2d_and_trains():
    data = load_data(DataConfig(dataset="digits", test_fraction=0.1), seed=0)
    config = cnn_config(model=ModelConfig(name="cnn", channels=(8, 8), kernel_size=3, hidden=(16,)))
    assert describe_model(config.model, 64, 10) == "cnn2d(1x8x8-8-8-16-10,relu)"
    model = build_model(config.model, 64, 10, seed=0)
    assert any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    result = train(config, data)
    assert math.isfinite(result.final.grad_noise_scale) and math.isfinite(result.final.sharpness)
    assert "final_test_acc" in result.summary()
    with pytest.raises(ValueError, match="perfect square"):
        describe_model(ModelConfig(name="cnn", image="2d"), 40, 10)


def test_without_a_test_set_the_summary_has_no_test_metrics():
    data = load_data(DataConfig(dataset="digits"), seed=0)
    assert data.n_test == 0 and data.x_test is None
    result = train(TrainConfig(batch_size=256, epochs=1, probe_size=0, sharpness_every=0,
                               model=ModelConfig(hidden=(8,))), data)
    assert not any(k.startswith("final_test") for k in result.summary())
