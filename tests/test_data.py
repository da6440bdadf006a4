"""Datasets: sources, stratified seeded split, standardization with training statistics only."""

import numpy as np
import pytest
import torch

from sgdtune.data import DataConfig, load_data, load_digits, stratified_split, synthetic_classification
from sgdtune.errors import InputError


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


def test_digits_read_from_the_file_equal_scikit_learns_loader():
    from sklearn.datasets import load_digits as sklearn_digits

    x, y = load_digits()
    bunch = sklearn_digits()
    assert x.dtype == np.float32 and y.dtype == np.int64
    assert np.array_equal(x, bunch.data.astype(np.float32)) and np.array_equal(y, bunch.target)


@pytest.mark.parametrize("val_fraction", [0.1, 0.2, 0.37])
def test_stratified_split_sizes_proportions_and_seeds(val_fraction):
    y = np.repeat(np.arange(5), [7, 13, 40, 2, 101])
    train, val = stratified_split(y, val_fraction, seed=3)
    assert len(val) == int(np.ceil(val_fraction * len(y))) and len(train) + len(val) == len(y)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(len(y)))  # a partition
    counts, val_counts = np.bincount(y), np.bincount(y[val], minlength=5)
    assert np.all(np.abs(val_counts - counts * val_fraction) < 1)  # each class's share, to one example
    again, other = stratified_split(y, val_fraction, seed=3), stratified_split(y, val_fraction, seed=4)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    assert not np.array_equal(other[1], val)


def test_split_with_a_singleton_class_is_not_stratified_and_still_a_partition():
    y = np.array([0] * 5 + [1] + [2] * 10)
    train, val = stratified_split(y, 0.3, seed=1)
    assert len(val) == 5 and sorted([*train, *val]) == list(range(16))


def test_a_split_that_leaves_a_side_empty_names_the_field():
    with pytest.raises(InputError, match=r"data.val_fraction: must leave examples on both sides.*got 0.95"):
        stratified_split(np.array([0, 1] * 5), 0.95, seed=0)


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
    with pytest.raises(InputError, match=r"data.label: must be one of the arrays \['X', 'y'\]; got 'label'"):
        load_data(DataConfig(dataset="npz", path=tmp_path / "d.npz"), seed=0)


def test_synthetic_scales_to_a_million_examples_as_float32():
    x, y = synthetic_classification(1_000_000, 64, 10, seed=0)
    assert x.shape == (1_000_000, 64) and x.dtype == np.float32
    assert set(np.unique(y)) == set(range(10))
