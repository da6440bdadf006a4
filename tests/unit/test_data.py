"""Datasets: sources, stratified seeded split, standardization with training statistics only."""

import math

import numpy as np
import pytest
import torch

from sgdtune.data import DataConfig, load_data
from sgdtune.datasets import linear_regression, load_digits, synthetic_classification
from sgdtune.errors import InputError
from sgdtune.splits import random_split, stratified_split


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
    rows = ["f1,kind,f2"] + [f"{i},{i % 2},{i * 2}" for i in range(200)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    data = load_data(DataConfig(dataset="csv", path=tmp_path / "d.csv", label="kind", val_fraction=0.2), seed=0)
    assert (data.n_train, data.n_val, data.n_features, data.n_classes) == (160, 40, 2, 2)


def test_npz_with_a_feature_matrix_and_labels(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", X=rng.normal(size=(150, 5)), target=np.array([3, 7, 9] * 50))
    data = load_data(DataConfig(dataset="npz", path=tmp_path / "d.npz", label="target"), seed=0)
    assert data.n_features == 5 and data.n_classes == 3
    assert set(data.y_train.tolist()) == {0, 1, 2}  # labels mapped to 0..k-1


def test_unknown_npz_label_lists_the_arrays_and_names_the_file(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.zeros((4, 2)), y=np.zeros(4))
    with pytest.raises(InputError) as info:
        load_data(DataConfig(dataset="npz", path=tmp_path / "d.npz"), seed=0)
    assert str(info.value) == f"data.label: must be one of the arrays ['X', 'y'] of '{tmp_path / 'd.npz'}'; got 'label'"


def test_synthetic_scales_to_a_million_examples_as_float32():
    x, y = synthetic_classification(1_000_000, 64, 10, seed=0)
    assert x.shape == (1_000_000, 64) and x.dtype == np.float32
    assert set(np.unique(y)) == set(range(10))


# -- regression ---------------------------------------------------------------------------


def write_csv(path, header: str, rows: list[str]):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_a_regression_csv_keeps_its_float_targets_as_given_and_standardizes_the_features_only(tmp_path):
    targets = [round(0.37 * i - 3.1, 2) for i in range(160)]  # 160 distinct floats, not class codes
    path = write_csv(tmp_path / "d.csv", "f1,y,f2", [f"{i},{t},{(i * 7) % 11}" for i, t in enumerate(targets)])
    config = DataConfig(dataset="csv", path=path, label="y", task="regression", val_fraction=0.25)
    data = load_data(config, seed=0)
    assert (data.task, data.n_classes, data.n_train, data.n_val, data.n_features) == ("regression", 1, 120, 40, 2)
    assert data.y_train.dtype == torch.float32 and data.y_train.shape == (120,) and data.y_val.shape == (40,)
    # Targets as given (no class mapping, no standardizing): the split's rows of the column.
    train_idx, val_idx = random_split(160, 0.25, seed=0)
    expected = np.array(targets, dtype=np.float32)
    assert np.array_equal(data.y_train.numpy(), expected[train_idx])
    assert np.array_equal(data.y_val.numpy(), expected[val_idx])
    f1 = np.arange(160, dtype=np.float32)  # the features are standardized with training statistics
    assert np.allclose(data.x_train[:, 0].numpy(), (f1[train_idx] - f1[train_idx].mean()) / f1[train_idx].std(),
                       atol=1e-5)


def test_the_regression_split_is_a_seeded_random_partition():
    train, val = random_split(101, 0.2, seed=4)
    assert len(val) == 21 and np.array_equal(np.sort(np.concatenate([train, val])), np.arange(101))
    again, other = random_split(101, 0.2, seed=4), random_split(101, 0.2, seed=5)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], val)
    assert not np.array_equal(other[1], val)
    # The positions stratified_split gives when it cannot stratify (a class of one).
    y = np.array([0] + [1] * 100)
    assert all(np.array_equal(a, b) for a, b in zip(stratified_split(y, 0.2, seed=4), (train, val)))
    with pytest.raises(InputError, match=r"data.val_fraction: must leave examples on both sides"):
        random_split(3, 0.9, seed=0)


def test_a_regression_npz_target_is_taken_as_float32(tmp_path):
    rng = np.random.default_rng(1)
    y = rng.normal(size=200) * 100.0
    np.savez(tmp_path / "d.npz", X=rng.normal(size=(200, 3)), t=y)
    data = load_data(DataConfig(dataset="npz", path=tmp_path / "d.npz", label="t", task="regression"), seed=2)
    assert data.n_classes == 1 and data.y_train.dtype == torch.float32
    train_idx, val_idx = random_split(200, 0.2, seed=2)
    assert np.array_equal(data.y_val.numpy(), y[val_idx].astype(np.float32))


def test_a_non_numeric_regression_npz_target_names_the_field(tmp_path):
    np.savez(tmp_path / "d.npz", X=np.zeros((200, 2)), t=np.array(["a", "b", "c", "d"] * 50))
    with pytest.raises(InputError, match=r"^data.label: array 't' of '.*d.npz' must hold numbers \(a regression "
                                         r"target\); got dtype <U1$"):
        load_data(DataConfig(dataset="npz", path=tmp_path / "d.npz", label="t", task="regression"), seed=0)


@pytest.mark.parametrize("task", ["regression", "classification"])
def test_a_single_row_names_the_field(tmp_path, task):
    path = write_csv(tmp_path / "one.csv", "a,y", ["1.5,2.5"])
    with pytest.raises(InputError, match=r"^data.path: must have at least 146 data rows for val_fraction = 0.2 "
                                         r"\(.*\); got 1 row in '.*one.csv'$"):
        load_data(DataConfig(dataset="csv", path=path, label="y", task=task), seed=0)
    header_only = write_csv(tmp_path / "none.csv", "a,y", [])
    with pytest.raises(InputError, match=r"^data.path: must have at least 146 data rows .*; got 0 rows in "
                                         r"'.*none.csv'$"):
        load_data(DataConfig(dataset="csv", path=header_only, label="y", task=task), seed=0)


def test_a_non_numeric_target_cell_is_named_by_line_and_column(tmp_path):
    rows = [f"{i},{i * 0.5}" for i in range(10)]
    rows[2] = "2,abc"
    path = write_csv(tmp_path / "d.csv", "a,y", rows)
    with pytest.raises(InputError, match=r"^data.label: every cell of column 'y' must be a finite number "
                                         r"\(a regression target\); got 'abc' at line 4 \(data row 3\), "
                                         r"column 'y' of '.*d.csv'$"):
        load_data(DataConfig(dataset="csv", path=path, label="y", task="regression"), seed=0)


def test_a_non_numeric_or_empty_feature_cell_is_named_by_line_and_column(tmp_path):
    rows = [f"{i},{i * 0.5},{i % 3}" for i in range(10)]
    rows[6] = "6,3.0,"
    path = write_csv(tmp_path / "d.csv", "a,y,b", rows)
    with pytest.raises(InputError, match=r"^data.path: every feature cell must be a finite number; got an empty "
                                         r"cell at line 8 \(data row 7\), column 'b' of '.*d.csv'$"):
        load_data(DataConfig(dataset="csv", path=path, label="y", task="regression"), seed=0)
    rows[6] = "six,3.0,0"
    write_csv(path, "a,y,b", rows)
    with pytest.raises(InputError, match=r"got 'six' at line 8 \(data row 7\), column 'a'"):
        load_data(DataConfig(dataset="csv", path=path, label="y"), seed=0)  # classification too


def test_the_linear_dataset_follows_its_law_and_is_not_standardized():
    config = DataConfig(dataset="linear", task="regression", n_samples=500, n_features=6, noise=0.25, val_fraction=0.2)
    x, y, w_star = linear_regression(500, 6, 0.25, seed=9)
    assert x.dtype == np.float32 and y.dtype == np.float32 and w_star.shape == (6,)
    eps = (y.astype(np.float64) - x.astype(np.float64) @ w_star) / 0.25  # the noise, back out of the law
    assert abs(eps.mean()) < 0.15 and abs(eps.std() - 1.0) < 0.1
    again, other = linear_regression(500, 6, 0.25, seed=9), linear_regression(500, 6, 0.25, seed=10)
    assert all(np.array_equal(a, b) for a, b in zip(again, (x, y, w_star)))
    assert not np.array_equal(other[2], w_star)

    data = load_data(config, seed=9)
    assert (data.name, data.task, data.n_classes, data.n_train, data.n_val) == ("linear", "regression", 1, 400, 100)
    train_idx, val_idx = random_split(500, 0.2, seed=9)
    assert np.array_equal(data.x_train.numpy(), x[train_idx]) and np.array_equal(data.y_val.numpy(), y[val_idx])
    standardized = load_data(config.model_copy(update={"standardize": True}), seed=9)
    assert torch.allclose(standardized.x_train.mean(dim=0), torch.zeros(6), atol=1e-5)
    assert torch.equal(standardized.y_train, data.y_train)  # targets never


def test_the_default_task_is_classification_and_standardize_follows_the_dataset():
    assert DataConfig().task == "classification" and DataConfig().standardizes
    assert not DataConfig(dataset="linear", task="regression").standardizes
    assert DataConfig(dataset="digits", standardize=False).standardizes is False
    assert load_data(DataConfig(), seed=0).task == "classification"


@pytest.mark.parametrize("table,message", [
    ('dataset = "linear"\n', "data.task: must be 'regression' when dataset = 'linear'; got 'classification'"),
    ('task = "regression"\n', "data.task: 'regression' needs dataset = 'linear', 'csv', 'npz' or a data.factory; "
                              "got dataset = 'digits'"),
    ('task = "ranking"\n', "data.task: must be one of 'classification' or 'regression'; got 'ranking'"),
])
def test_task_rules_name_the_field(tmp_path, table, message):
    from sgdtune.config import load_experiment

    (tmp_path / "x.toml").write_text(f"[data]\n{table}")
    with pytest.raises(InputError) as info:
        load_experiment(tmp_path / "x.toml")
    assert message in str(info.value)


def test_test_fraction_0_leaves_the_split_of_before_exactly_and_no_test_set():
    data = load_data(DataConfig(dataset="digits", test_fraction=0.0), seed=3)
    assert data.x_test is None and data.y_test is None and data.n_test == 0
    x, y = load_digits()
    train_idx, val_idx = stratified_split(y, 0.2, 3)  # what load_data did before the test set existed
    mean, std = x[train_idx].mean(axis=0), x[train_idx].std(axis=0)
    std[std == 0] = 1.0
    assert torch.equal(data.y_train, torch.as_tensor(y[train_idx]))
    assert torch.equal(data.y_val, torch.as_tensor(y[val_idx]))
    assert torch.allclose(data.x_train, torch.as_tensor((x[train_idx] - mean) / std), atol=1e-6)
    assert torch.allclose(data.x_val, torch.as_tensor((x[val_idx] - mean) / std), atol=1e-6)


def test_a_test_fraction_carves_a_stratified_seeded_test_set_before_validation():
    data = load_data(DataConfig(dataset="digits", test_fraction=0.25, val_fraction=0.2), seed=0)
    assert data.n_test == math.ceil(0.25 * 1797) and data.n_train + data.n_val + data.n_test == 1797
    assert data.n_val == math.ceil(0.2 * (1797 - data.n_test))
    test_counts = torch.bincount(data.y_test, minlength=10).numpy()
    train_counts = torch.bincount(data.y_train, minlength=10).numpy()
    assert np.all(np.abs(test_counts / data.n_test - train_counts / data.n_train) < 0.01)  # stratified
    x, _ = load_digits()
    distinct = {tuple(r) for r in x}
    train_rows = {tuple(r) for r in data.x_train.numpy().round(4)}
    test_rows = {tuple(r) for r in data.x_test.numpy().round(4)}
    assert len(train_rows & test_rows) <= 1797 - len(distinct)  # only duplicated images can be on both sides
    again = load_data(DataConfig(dataset="digits", test_fraction=0.25, val_fraction=0.2), seed=0)
    assert torch.equal(again.x_test, data.x_test) and torch.equal(again.y_val, data.y_val)
    other = load_data(DataConfig(dataset="digits", test_fraction=0.25, val_fraction=0.2), seed=1)
    assert not torch.equal(other.y_test, data.y_test)
    regression = load_data(DataConfig(dataset="linear", task="regression", n_samples=400, n_features=3,
                                      test_fraction=0.1), seed=0)
    assert (regression.n_train, regression.n_val, regression.n_test) == (288, 72, 40)


def test_a_trial_with_a_test_set_logs_final_test_acc_and_n_test(workdir):
    from mlflow import MlflowClient

    from sgdtune.config import load_experiment
    from sgdtune.store.stores import locations
    from sgdtune.study.run import run_study

    config = load_experiment("experiments/quick.toml", n_trials=1, **{"data.test_fraction": 0.2})
    study = run_study(config)
    (trial,) = study.get_trials()
    run = MlflowClient(tracking_uri=locations(config)[1]).get_run(trial.user_attrs["mlflow_run_id"])
    assert run.data.params["n_test"] == str(math.ceil(0.2 * 1797))
    assert 0.0 <= run.data.metrics["final_test_acc"] <= 1.0 and run.data.metrics["final_test_loss"] > 0
    assert trial.values[0] == pytest.approx(run.data.metrics["final_val_acc"])  # selection stays on validation


# -- data errors: one line naming the field, the rule and what was found ---------------------


def brute_min_examples(val_fraction: float, test_fraction: float) -> int:
    """The definition, by counting: the fewest n whose splits leave every side an example, and
    validation its minimum."""
    from sgdtune.splits import MIN_VAL_EXAMPLES

    for n in range(1, 10_000):
        m = n - math.ceil(test_fraction * n)
        test_ok = test_fraction == 0 or 0 < math.ceil(test_fraction * n) < n
        if test_ok and MIN_VAL_EXAMPLES <= math.ceil(val_fraction * m) < m:
            return n
    raise AssertionError("none below 10,000")


@pytest.mark.parametrize("val_fraction", [0.05, 0.2, 0.5, 0.51, 0.8, 0.95])
@pytest.mark.parametrize("test_fraction", [0.0, 0.1, 0.5, 0.9])
def test_min_examples_is_the_fewest_rows_every_split_can_use(val_fraction, test_fraction):
    from sgdtune.splits import min_examples

    n = min_examples(val_fraction, test_fraction)
    assert n == brute_min_examples(val_fraction, test_fraction)
    config = DataConfig(dataset="linear", task="regression", n_samples=max(n, 10), n_features=2,
                        val_fraction=val_fraction, test_fraction=test_fraction)
    data = load_data(config, seed=0)  # the minimum itself splits: every side has an example
    assert data.n_train >= 1 and data.n_val >= 30 and (data.n_test >= 1) == (test_fraction > 0)


def test_too_few_rows_name_both_fractions_and_the_minimum(tmp_path):
    path = write_csv(tmp_path / "two.csv", "a,y", ["1,0", "2,1"])
    with pytest.raises(InputError) as info:
        load_data(DataConfig(dataset="csv", path=path, label="y", val_fraction=0.2, test_fraction=0.25), seed=0)
    assert str(info.value) == (
        f"data.path: must have at least 195 data rows for val_fraction = 0.2 and test_fraction = 0.25 (ceil(fraction "
        f"x n) go to the validation and test sets; validation needs at least 30 examples for a standard error of "
        f"val_acc that means something, and at least one must stay to train on); got 2 rows in '{path}'")
    with pytest.raises(InputError, match=r"^data.n_samples: must have at least 31 examples for val_fraction = 0.95 "
                                         r".*; got 10 examples in linear$"):
        load_data(DataConfig(dataset="linear", task="regression", n_samples=10, val_fraction=0.95), seed=0)


def test_one_class_only_is_refused_naming_the_column_and_the_class(tmp_path):
    path = write_csv(tmp_path / "d.csv", "a,kind", [f"{i},7" for i in range(200)])
    with pytest.raises(InputError) as info:
        load_data(DataConfig(dataset="csv", path=path, label="kind"), seed=0)
    assert str(info.value) == (f"data.label: classification needs at least 2 classes in column 'kind' of '{path}' "
                               "(for a numeric target, set task = 'regression'); got only the class 7 in all 200 rows")
    assert load_data(DataConfig(dataset="csv", path=path, label="kind", task="regression"), seed=0).n_train == 160
    np.savez(tmp_path / "d.npz", X=np.ones((200, 2)), y=np.array(["cat"] * 200))
    with pytest.raises(InputError, match=r"^data.label: classification needs at least 2 classes in array 'y' of "
                                         r"'.*d.npz' .*; got only the class 'cat' in all 200 rows$"):
        load_data(DataConfig(dataset="npz", path=tmp_path / "d.npz", label="y"), seed=0)


@pytest.mark.parametrize("cell,shown", [("nan", "'nan'"), ("-inf", "'-inf'"), ("1e999", "'1e999'")])
def test_nan_and_inf_cells_are_named_by_line_and_column(tmp_path, cell, shown):
    rows = [f"{i},{i % 2},{i * 3}" for i in range(10)]
    rows[4] = f"4,0,{cell}"
    path = write_csv(tmp_path / "d.csv", "a,y,b", rows)
    with pytest.raises(InputError) as info:
        load_data(DataConfig(dataset="csv", path=path, label="y"), seed=0)
    assert str(info.value) == (f"data.path: every feature cell must be a finite number; got {shown} at line 6 "
                               f"(data row 5), column 'b' of '{path}'")


def test_a_missing_label_column_lists_the_columns_and_names_the_file(tmp_path):
    path = write_csv(tmp_path / "d.csv", "a,b,class", ["1,2,0", "3,4,1"])
    with pytest.raises(InputError) as info:
        load_data(DataConfig(dataset="csv", path=path), seed=0)
    assert str(info.value) == f"data.label: must be one of the columns ['a', 'b', 'class'] of '{path}'; got 'label'"
    only_label = write_csv(tmp_path / "l.csv", "label", ["0", "1", "1"])
    with pytest.raises(InputError, match=r"^data.path: must have at least one feature column besides the label "
                                         r"'label'; got only the column 'label' in '.*l.csv'$"):
        load_data(DataConfig(dataset="csv", path=only_label), seed=0)


def test_npz_errors_name_the_array_row_and_column(tmp_path):
    x = np.arange(20, dtype=np.float64).reshape(10, 2)
    x[3, 1] = np.inf
    np.savez(tmp_path / "m.npz", X=x, y=np.arange(10) % 2)
    with pytest.raises(InputError) as info:
        load_data(DataConfig(dataset="npz", path=tmp_path / "m.npz", label="y"), seed=0)
    assert str(info.value) == (f"data.path: every feature must be a finite number that fits float32 (|x| <= "
                               f"3.403e+38); got inf at array 'X', row 4, column 2 of '{tmp_path / 'm.npz'}'")
    np.savez(tmp_path / "c.npz", f1=np.zeros(10), f2=np.array([0.0] * 8 + [np.nan, 0.0]), y=np.arange(10) % 2)
    with pytest.raises(InputError, match=r"^data.path: every feature must be a finite number that fits float32 "
                                         r"\(.*\); got nan at array 'f2', row 9 of '.*c.npz'$"):
        load_data(DataConfig(dataset="npz", path=tmp_path / "c.npz", label="y"), seed=0)
    np.savez(tmp_path / "e.npz", X=np.zeros((0, 3)), y=np.zeros(0))
    with pytest.raises(InputError, match=r"^data.path: must have at least 146 data rows .*; got 0 rows in '.*e.npz'$"):
        load_data(DataConfig(dataset="npz", path=tmp_path / "e.npz", label="y"), seed=0)
    labels = np.array([0.0, 1.0] * 100)
    labels[6] = np.nan
    np.savez(tmp_path / "l.npz", X=np.zeros((200, 2)), y=labels)
    with pytest.raises(InputError, match=r"^data.label: every label in array 'y' of '.*l.npz' must be a finite "
                                         r"number \(a class label\); got np.float64\(nan\) at row 7$"):
        load_data(DataConfig(dataset="npz", path=tmp_path / "l.npz", label="y"), seed=0)
    (tmp_path / "not.npz").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match=r"^data.path: must be a NumPy .npz archive of numeric arrays "
                                         r"\(numpy.savez\); got '.*not.npz' \(.*\)$"):
        load_data(DataConfig(dataset="npz", path=tmp_path / "not.npz"), seed=0)


def test_a_binary_file_given_as_csv_is_named(tmp_path):
    (tmp_path / "b.csv").write_bytes(b"a,b,label\n\xff\xfe\x00\x81\n")
    with pytest.raises(InputError, match=r"^data.path: must be a CSV text file \(UTF-8\); got '.*b.csv', "
                                         r"undecodable byte at offset \d+$"):
        load_data(DataConfig(dataset="csv", path=tmp_path / "b.csv"), seed=0)


VALIDATION_RULE = ("validation needs at least 30 examples for a standard error of val_acc that means something, and "
                   "at least one must stay to train on")
DATA_ERRORS = {  # CSV text -> the one line the CLI prints (PATH: the CSV's absolute path)
    "header_only": ("a,b,label\n", "error: data.path: must have at least 146 data rows for val_fraction = 0.2 "
                    f"(ceil(fraction x n) go to the validation set; {VALIDATION_RULE}); got 0 rows in 'PATH'"),
    "one_row": ("a,b,label\n1,2,0\n", "error: data.path: must have at least 146 data rows for val_fraction = 0.2 "
                f"(ceil(fraction x n) go to the validation set; {VALIDATION_RULE}); got 1 row in 'PATH'"),
    "non_numeric": ("a,b,label\n1,2,0\n3,four,1\n5,6,1\n", "error: data.path: every feature cell must be a finite "
                    "number; got 'four' at line 3 (data row 2), column 'b' of 'PATH'"),
    "nan_label": ("a,b,label\n1,2,0\n3,4,1\n5,6,nan\n", "error: data.label: every cell of column 'label' must be "
                  "a finite number (a class label); got 'nan' at line 4 (data row 3), column 'label' of 'PATH'"),
    "no_label": ("a,b,y\n1,2,0\n3,4,1\n", "error: data.label: must be one of the columns ['a', 'b', 'y'] of "
                 "'PATH'; got 'label'"),
    "one_class": ("a,b,label\n" + "1,2,5\n" * 150, "error: data.label: classification needs at least 2 classes "
                  "in column 'label' of 'PATH' (for a numeric target, set task = 'regression'); got only the "
                  "class 5 in all 150 rows"),
}


@pytest.mark.parametrize("case", sorted(DATA_ERRORS))
def test_data_errors_reach_the_command_line_as_one_line_and_exit_2(tmp_path, monkeypatch, capsys, case):
    from sgdtune.cli import study_main

    text, expected = DATA_ERRORS[case]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "d.csv").write_text(text)
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "x.toml").write_text('[data]\ndataset = "csv"\npath = "../data/d.csv"\n'
                                             '[search.lr]\nchoices = [0.1]\n')
    monkeypatch.chdir(tmp_path / "exp")
    assert study_main(["x.toml", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == expected.replace("PATH", str((tmp_path / "data" / "d.csv").resolve())) + "\n"
    assert not (tmp_path / "exp" / "mlruns").exists()  # stopped before anything was written


def test_a_data_error_in_a_real_process_prints_one_line_and_no_traceback(tmp_path):
    from conftest import run_cli

    (tmp_path / "d.csv").write_text("a,b,label\n")
    (tmp_path / "x.toml").write_text('[data]\ndataset = "csv"\npath = "d.csv"\n[search.lr]\nchoices = [0.1]\n')
    proc = run_cli("sgdtune.study", str(tmp_path / "x.toml"), "--no-progress", cwd=tmp_path.parent, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"error: data.path: must have at least 146 data rows for val_fraction = 0.2 "
                                        f"(ceil(fraction x n) go to the validation set; {VALIDATION_RULE}); got 0 rows "
                                        f"in '{(tmp_path / 'd.csv').resolve()}'"]


def test_npz_features_must_be_numbers_and_booleans_count_as_numbers(tmp_path):
    np.savez(tmp_path / "s.npz", X=np.array([["a", "b"]] * 200), y=np.arange(200) % 2)
    with pytest.raises(InputError, match=r"^data.path: every feature array must hold numbers; got dtype <U1 in "
                                         r"'.*s.npz'$"):
        load_data(DataConfig(dataset="npz", path=tmp_path / "s.npz", label="y"), seed=0)
    np.savez(tmp_path / "b.npz", X=np.eye(200, dtype=bool), y=np.arange(200) % 2)
    data = load_data(DataConfig(dataset="npz", path=tmp_path / "b.npz", label="y", standardize=False), seed=0)
    assert data.x_train.dtype == torch.float32 and float(data.x_train.sum() + data.x_val.sum()) == 200.0


# -- values a file can hold that training cannot use ------------------------------------------


def rows_of(n: int, label=lambda i: i % 3) -> list[str]:
    return [f"{i * 0.25},{label(i)},{(i * 7) % 11}" for i in range(n)]


def test_a_feature_beyond_float32_is_refused_naming_its_line_and_column(tmp_path):
    """1e300 is finite as float64 and inf as float32, where training computes: every trial diverged."""
    rows = rows_of(200)
    rows[150] = "1e300,1,3"
    path = write_csv(tmp_path / "d.csv", "a,y,b", rows)
    with pytest.raises(InputError) as info:
        load_data(DataConfig(dataset="csv", path=path, label="y"), seed=0)
    assert str(info.value) == (f"data.path: every feature cell must fit float32 (|x| <= 3.403e+38; training computes "
                               f"in float32, where it would be infinite); got '1e300' at line 152 (data row 151), "
                               f"column 'a' of '{path}'")
    x = np.zeros((200, 2))
    x[7, 1] = -1e300
    np.savez(tmp_path / "d.npz", X=x, y=np.arange(200) % 2)
    with pytest.raises(InputError, match=r"^data.path: every feature must be a finite number that fits float32 "
                                         r"\(\|x\| <= 3.403e\+38\); got -1e\+300 at array 'X', row 8, column 2 of "):
        load_data(DataConfig(dataset="npz", path=tmp_path / "d.npz", label="y"), seed=0)


def test_continuous_labels_are_refused_for_classification_with_the_regression_hint(tmp_path):
    path = write_csv(tmp_path / "d.csv", "a,y,b", rows_of(200, label=lambda i: round(0.37 * i - 3.1, 2)))
    with pytest.raises(InputError) as info:
        load_data(DataConfig(dataset="csv", path=path, label="y"), seed=0)
    assert str(info.value) == (f"data.label: classification needs whole-number class labels in column 'y' of "
                               f"'{path}'; for a numeric target set data.task = \"regression\"; got -3.1 at row 1 "
                               f"(200 distinct values in 200 rows)")
    assert load_data(DataConfig(dataset="csv", path=path, label="y", task="regression"), seed=0).n_classes == 1
    whole = write_csv(tmp_path / "w.csv", "a,y,b", rows_of(200, label=lambda i: f"{i % 3}.0"))  # 0.0, 1.0, 2.0
    assert load_data(DataConfig(dataset="csv", path=whole, label="y"), seed=0).n_classes == 3


def test_a_byte_order_mark_before_the_header_is_accepted(tmp_path):
    path = tmp_path / "bom.csv"
    rows = [",".join([label, a, b]) for a, label, b in (row.split(",") for row in rows_of(200))]
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(["label,a,b", *rows]).encode() + b"\n")  # read as '\ufefflabel
    data = load_data(DataConfig(dataset="csv", path=path), seed=0)
    assert (data.n_features, data.n_classes, data.n_train + data.n_val) == (2, 3, 200)


def test_a_validation_set_too_small_for_a_standard_error_is_refused_naming_the_minimum():
    """digits with val_fraction = 0.0005 would hold out one example: val_acc 1.0000 ± 0.0000."""
    with pytest.raises(InputError, match=r"^data.val_fraction: must have at least 58001 examples for val_fraction = "
                                         r"0.0005 \(.*validation needs at least 30 examples.*\); got 1797 examples "
                                         r"in digits$"):
        load_data(DataConfig(dataset="digits", val_fraction=0.0005), seed=0)
    assert load_data(DataConfig(dataset="digits", val_fraction=30 / 1797), seed=0).n_val == 30


def test_a_csv_is_read_in_a_few_times_its_size_of_memory(tmp_path):
    """genfromtxt held ~17x the file at its peak (lists of every cell, then float64); the
    streaming reader holds the float32 arrays and one block. Measured by tracemalloc, which
    counts NumPy's buffers."""
    import tracemalloc

    from sgdtune.datafiles import read_csv

    rng = np.random.default_rng(0)
    x = rng.normal(size=(100_000, 10)).round(6)
    path = tmp_path / "big.csv"
    np.savetxt(path, np.column_stack([x, rng.integers(0, 3, 100_000)]), delimiter=",", fmt="%.6f",
               header=",".join([*(f"f{j}" for j in range(10)), "label"]), comments="")
    size = path.stat().st_size
    tracemalloc.start()
    features, labels, _ = read_csv(path, "label")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.allclose(features, x.astype(np.float32)) and features.dtype == np.float32 and len(labels) == 100_000
    assert peak < 2 * size, (peak, size)
