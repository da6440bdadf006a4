"""Datasets: sources, stratified seeded split, standardization with training statistics only."""

import numpy as np
import pytest
import torch

from sgdtune.data import DataConfig, DataError, load_data, synthetic_classification


def test_digits_split_is_stratified_seeded_and_standardized_on_train_only():
    data = load_data(DataConfig(dataset="digits", val_fraction=0.2), seed=0)
    assert (data.n_train, data.n_val, data.n_features, data.n_classes) == (1437, 360, 64, 10)
    train_counts = torch.bincount(data.y_train, minlength=10).numpy()
    val_counts = torch.bincount(data.y_val, minlength=10).numpy()
    assert np.all(np.abs(val_counts / 360 - train_counts / 1437) < 0.01)  # stratified
    varying = data.x_train.std(dim=0) > 0
    assert torch.allclose(data.x_train.mean(dim=0), torch.zeros(64), atol=1e-5)
    assert torch.allclose(data.x_train.std(dim=0, unbiased=False)[varying], torch.ones(int(varying.sum())), atol=1e-4)
    assert not torch.allclose(data.x_val.mean(dim=0)[varying], torch.zeros(int(varying.sum())), atol=1e-3)
    again, other = load_data(DataConfig(), seed=0), load_data(DataConfig(), seed=1)
    assert torch.equal(again.x_train, data.x_train)
    assert not torch.equal(other.y_train, data.y_train)


def test_csv_with_a_named_label_column(tmp_path):
    rows = ["f1,kind,f2"] + [f"{i},{i % 2},{i * 2}" for i in range(50)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    data = load_data(DataConfig(dataset="csv", path=tmp_path / "d.csv", label="kind", val_fraction=0.2), seed=0)
    assert (data.n_train, data.n_val, data.n_features, data.n_classes) == (40, 10, 2, 2)


def test_npz_with_a_feature_matrix_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", X=rng.normal(size=(30, 5)), target=np.array([3, 7, 9] * 10))
    data = load_data(DataConfig(dataset="npz", path=tmp_path / "d.npz", label="target"), seed=0)
    assert data.n_features == 5 and data.n_classes == 3
    assert set(data.y_train.tolist()) == {0, 1, 2}  # labels mapped to 0..k-1


def test_unknown_npz_label_lists_the_arrays(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.zeros((4, 2)), y=np.zeros(4))
    with pytest.raises(DataError, match=r"data.label: must be one of the arrays \['X', 'y'\]; got 'label'"):
        load_data(DataConfig(dataset="npz", path=tmp_path / "d.npz"), seed=0)


def test_synthetic_scales_to_a_million_examples_as_float32():
    x, y = synthetic_classification(1_000_000, 64, 10, seed=0)
    assert x.shape == (1_000_000, 64) and x.dtype == np.float32
    assert set(np.unique(y)) == set(range(10))
