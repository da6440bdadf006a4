"""Datasets as tensors on the device: load, split (seeded; stratified for classification), standardize.

Two tasks. Classification (the default): integer labels 0..k-1, a stratified split, k
outputs. Regression (`task = "regression"`): float32 targets of shape (n,) taken as they are,
a plain seeded random split, one output. In both, the features are standardized with the
training split's statistics (unless `standardize = false`); regression targets never are.

A held-out test set: mnist1d comes with its own (1,000 examples); for the others
`test_fraction` > 0 carves one off (seeded, stratified for classification) before the
validation split. Validation is what pruning and the sampler see; the test set is evaluated
once at the end of training (final_test_acc / final_test_loss), never used for selection.

Here: the [data] schema, the Dataset and load_data. The built-in and synthetic
datasets are made in datasets.py, the user's CSV and .npz files read in datafiles.py, the
split positions drawn in splits.py.

Layer: base (shared by every layer above; docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .datafactory import call_data_factory
from .datafiles import as_targets, read_csv, read_npz
from .datasets import linear_regression, load_digits, load_mnist1d, synthetic_classification, synthetic_parts
from .errors import InputError
from .factories import ImportableFactory
from .splits import MIN_VAL_EXAMPLES, min_examples, random_split, split_blocks, stratified_split


class DataConfig(BaseModel):
    """[data] of an experiment file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: Literal["digits", "mnist1d", "synthetic", "linear", "csv", "npz", "factory"] = Field(
        default="digits",
        description="digits: 1,797 8x8 images, 10 classes; mnist1d: 4,000 sequences of 40 (+ 1,000 test), 10 "
        "classes, needs the mnist1d package; synthetic: Gaussian class clusters; linear: regression with a known "
        "answer; csv, npz: your file (path, label; an .npz may hold images N x C x H x W or N x H x W); factory: "
        "your function (data.factory, which sets it)",
    )
    factory: ImportableFactory = Field(
        default=None,
        description='"pkg.module:function" giving the data: (x, y) arrays or tensors, ready splits {"train": (x, y), '
        '"val": (x, y)[, "test": ...]}, or a map-style torch.utils.data.Dataset; called once as function(seed=SEED) '
        "(or function()), torch's and NumPy's global generators seeded; x of shape N x F, or images N x C x H x W "
        "or N x H x W; materialized on the device if it takes at most half its free memory; imported like "
        "model.factory. Sets dataset = 'factory'",
    )
    task: Literal["classification", "regression"] = Field(
        default="classification",
        description="classification: integer classes, stratified split; regression: float targets as given, "
        "random split, one output, targets not standardized; needs dataset = linear, csv or npz (linear needs it)",
    )
    path: Path | None = Field(default=None, description="the file, for csv and npz; relative to the experiment "
                              "file's folder when written in it, to the working directory when given by --set")
    label: str = Field(default="label", description="label/target column (csv) or array name (npz); for "
                       "classification its numbers must be whole (0, 1.0, 7): a value like 0.37 is refused, with "
                       "the hint task = 'regression'. CSV cells: numbers, features within float32 (|x| <= 3.4e38); "
                       "a UTF-8 byte-order mark before the header is fine")
    n_samples: int = Field(default=10_000, ge=10, le=50_000_000,
                           description="examples generated, synthetic and linear only")
    n_features: int = Field(default=64, ge=2, description="features per example, synthetic and linear only")
    n_classes: int = Field(default=10, ge=2, description="synthetic only")
    noise: float = Field(default=0.5, ge=0.0, description="linear only: standard deviation s of the target noise")
    val_fraction: float = Field(
        default=0.2, gt=0.0, lt=1.0,
        description="share held out for validation, ceil(val_fraction x n) of the n examples left after any test "
        "set (seeded; stratified for classification); what pruning and the sampler see. At least 30 examples: "
        "val_acc's standard error (a normal approximation) means little below that",
    )
    test_fraction: float = Field(
        default=0.0, ge=0.0, lt=1.0,
        description="a held-out test set carved off (seeded; stratified for classification) before the validation "
        "split, evaluated once at the end of training; 0 = none. mnist1d has its own test set and needs 0",
    )
    standardize: bool | None = Field(
        default=None,
        description="standardize the features with training statistics; default: true, except for "
        "dataset = 'linear' (whose known answer holds for the features as drawn)",
    )

    @property
    def standardizes(self) -> bool:
        """Whether the features are standardized: `standardize`, or by default all but 'linear'."""
        return self.standardize if self.standardize is not None else self.dataset != "linear"

    @model_validator(mode="before")
    @classmethod
    def _factory_sets_the_dataset(cls, values: Any) -> Any:
        if isinstance(values, dict) and values.get("factory") is not None:
            if values.get("dataset", "factory") != "factory":
                raise ValueError(f"data.dataset: must be 'factory' or unset when data.factory is given; "
                                 f"got {values['dataset']!r}")
            values = {**values, "dataset": "factory"}
        return values

    @model_validator(mode="after")
    def _file_sources_need_a_file(self) -> DataConfig:
        if self.dataset == "linear" and self.task != "regression":
            raise ValueError(f"data.task: must be 'regression' when dataset = 'linear'; got {self.task!r}")
        if self.dataset == "mnist1d" and self.test_fraction > 0:
            raise ValueError(f"data.test_fraction: must be 0 for dataset = 'mnist1d' (it has its own test set); "
                             f"got {self.test_fraction}")
        if self.task == "regression" and self.dataset in ("digits", "mnist1d", "synthetic"):
            raise ValueError(f"data.task: 'regression' needs dataset = 'linear', 'csv', 'npz' or a data.factory; "
                             f"got dataset = {self.dataset!r}")
        if self.dataset == "factory" and self.factory is None:
            raise ValueError("data.factory: required when dataset = 'factory'; got nothing")
        if self.dataset in ("csv", "npz"):
            if self.path is None:
                raise ValueError(f"data.path: required when dataset = {self.dataset!r}; got nothing")
            if not self.path.is_file():
                raise ValueError(f"data.path: must be an existing file; got {str(self.path)!r} (no such file)")
        return self


@dataclass(frozen=True)
class Dataset:
    """float32 features (standardized unless the config said not to) and targets, already on
    their device: int64 labels 0..n_classes-1 for classification; float32 values of shape (n,),
    as given (never standardized), for regression, where n_classes = 1 (the model's outputs)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    n_classes: int
    task: Literal["classification", "regression"] = "classification"
    x_test: torch.Tensor | None = None  # the held-out test set, or None
    y_test: torch.Tensor | None = None
    # The training split's per-feature mean and std the features were standardized with
    # ((x - mean) / std), or None where they were not: a saved network needs them (saved.py).
    feature_mean: list[float] | None = None
    feature_std: list[float] | None = None
    # Images: each example's shape (C, H, W); their features come flattened, C * H * W of them
    # in that order (model.CNN puts the shape back). None: flat features.
    input_shape: tuple[int, ...] | None = None

    @property
    def n_test(self) -> int:
        return 0 if self.x_test is None else self.x_test.shape[0]

    @property
    def n_train(self) -> int:
        return self.x_train.shape[0]

    @property
    def n_val(self) -> int:
        return self.x_val.shape[0]

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]


def load_arrays(config: DataConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, d) float32 and targets (n,) as numpy arrays: int64 labels 0..k-1 for
    classification, float32 values as given for regression."""
    if config.dataset == "digits":
        return load_digits()
    if config.dataset == "mnist1d":
        x, y, _, _ = load_mnist1d()
        return x, y
    if config.dataset == "synthetic":
        return synthetic_classification(
            config.n_samples, config.n_features, config.n_classes, seed
        )
    if config.dataset == "linear":
        x, y, _ = linear_regression(config.n_samples, config.n_features, config.noise, seed)
        return x, y
    read = read_csv if config.dataset == "csv" else read_npz
    x, values, where = read(config.path, config.label, config.task)
    check_size(len(values), config)  # before the classes: one row is too few rows, not one class
    return x, as_targets(values, config.task, where)


def check_size(n: int, config: DataConfig) -> None:
    """InputError when n examples are too few for the validation and test fractions (min_examples)."""
    need = min_examples(config.val_fraction, config.test_fraction)
    if n >= need:
        return
    fractions = f"val_fraction = {config.val_fraction}" + (
        f" and test_fraction = {config.test_fraction}" if config.test_fraction > 0 else "")
    held_out = "validation and test sets" if config.test_fraction > 0 else "validation set"
    rule = (f"must have at least {need} {{rows}} for {fractions} (ceil(fraction x n) go to the {held_out}; "
            f"validation needs at least {MIN_VAL_EXAMPLES} examples for a standard error of val_acc that means "
            "something, and at least one must stay to train on)")
    if config.dataset in ("csv", "npz"):
        raise InputError("data.path", rule.format(rows="data rows"),
                         f"{n} row{'' if n == 1 else 's'} in {str(config.path)!r}")
    field = {"synthetic": "data.n_samples", "linear": "data.n_samples", "factory": "data.factory"}.get(
        config.dataset, "data.val_fraction")
    raise InputError(field, rule.format(rows="examples"), f"{n} example{'' if n == 1 else 's'} in {config.dataset}")



def load_data(config: DataConfig, seed: int, device: torch.device | str = "cpu") -> Dataset:
    """Load, split (seeded) and standardize the features with training statistics only.

    Classification: a stratified split (stratified_split), integer labels, n_classes outputs.
    Regression: a seeded random split (random_split), float32 targets as given, one output;
    the targets are never standardized. The features are standardized, (x - mean) / std with
    the training split's mean and std, unless config.standardizes is false (by default for
    dataset = 'linear', whose features stay as drawn so that its known answer holds).

    Memory: a loaded array is split by copying its rows out, then freed (a peak of twice the
    features); synthetic data goes block by block straight into the split. Standardizing
    works in place, and on a CPU the tensors share the arrays' memory.
    """
    regression = config.task == "regression"
    x_te = y_te = None
    if config.dataset == "mnist1d":
        x, y, x_te, y_te = load_mnist1d()
    elif config.dataset == "synthetic":  # features come later, block by block, into the split
        x = None
        y, features = synthetic_parts(config.n_samples, config.n_features, config.n_classes, seed)
    elif config.factory is not None:
        parts = call_data_factory(config.factory, seed, device)
        if "all" not in parts:
            return _ready_splits(config, parts, device)
        x, values = parts["all"]
        check_size(len(values), config)
        y = as_targets(values, config.task, f"the targets of data.factory {config.factory!r}")
    else:
        x, y = load_arrays(config, seed)
    x, shape = (x, None) if x is None else image_features(x, config)
    name = dataset_name(config)
    check_size(len(y), config)  # every side of the splits gets an example (min_examples)
    n_classes = 1 if regression else int(y.max()) + 1
    if config.test_fraction > 0:  # the test set first, then validation from what is left
        rest_idx, test_idx = (random_split(len(y), config.test_fraction, seed) if regression
                              else stratified_split(y, config.test_fraction, seed))
        if x is None:
            x = np.empty((len(y), config.n_features), dtype=np.float32)
            for rows, block in features():
                x[rows] = block
        x_te, y_te = x[test_idx], y[test_idx]
        x, y = x[rest_idx], y[rest_idx]
        del rest_idx, test_idx
    # Split positions only (they depend on n and y alone), so that each copy of the features
    # happens when the memory it needs is there.
    if regression:
        train_idx, val_idx = random_split(len(y), config.val_fraction, seed)
    else:
        train_idx, val_idx = stratified_split(y, config.val_fraction, seed)
    y_tr, y_va = y[train_idx], y[val_idx]
    del y
    if x is None:
        x_tr, x_va = split_blocks(features(), train_idx, val_idx)
        del train_idx, val_idx
    else:
        x_tr = x[train_idx]
        del train_idx
        x_va = x[val_idx]
        del x, val_idx
    return _placed(name, config, (x_tr, y_tr), (x_va, y_va), None if x_te is None else (x_te, y_te), n_classes,
                   shape, device)


def dataset_name(config: DataConfig) -> str:
    """The `dataset` param: digits, csv:wine.csv, factory:pkg.module:function."""
    if config.factory is not None:
        return f"factory:{config.factory}"
    return config.dataset if config.path is None else f"{config.dataset}:{config.path.name}"


def image_features(x: np.ndarray, config: DataConfig) -> tuple[np.ndarray, tuple[int, ...] | None]:
    """(features (n, F), None) for flat features; for images (n, H, W) or (n, C, H, W), their
    features flattened to (n, C * H * W) and each example's shape (C, H, W) (C = 1 for n x H x W).
    InputError showing the shape for anything else."""
    if x.ndim == 2:
        return x, None
    if x.ndim in (3, 4) and all(d > 0 for d in x.shape[1:]):
        shape = (1, *x.shape[1:]) if x.ndim == 3 else tuple(x.shape[1:])
        return x.reshape(x.shape[0], -1), tuple(int(d) for d in shape)
    field = "data.factory" if config.factory is not None else "data.path"
    raise InputError(field, "features must have the shape N x F, or images N x H x W or N x C x H x W",
                     f"shape {' x '.join(map(str, x.shape))}")


def _ready_splits(config: DataConfig, parts: dict, device: torch.device | str) -> Dataset:
    """A data.factory's own splits, used as given: labels mapped to 0..k-1 over all of them
    together, features standardized with the training split's statistics."""
    names = [s for s in ("train", "val", "test") if s in parts]
    xs = [image_features(parts[s][0], config) for s in names]
    if len({(x.shape[1], shape) for x, shape in xs}) != 1:
        raise InputError("data.factory", "every split must have the same feature shape",
                         ", ".join(f"{s}: {parts[s][0].shape}" for s in names))
    values = np.concatenate([parts[s][1] for s in names])
    y = as_targets(values, config.task, f"the targets of data.factory {config.factory!r}")
    ys = np.split(y, np.cumsum([len(parts[s][1]) for s in names])[:-1])
    if min(len(v) for v in ys) == 0:
        raise InputError("data.factory", "every split must hold at least one example",
                         ", ".join(f"{s}: {len(v)}" for s, v in zip(names, ys)))
    split = {s: (x.copy(), v) for s, (x, _), v in zip(names, xs, ys)}
    n_classes = 1 if config.task == "regression" else int(y.max()) + 1
    return _placed(dataset_name(config), config, split["train"], split["val"], split.get("test"), n_classes,
                   xs[0][1], device)


def _placed(name: str, config: DataConfig, train: tuple, val: tuple, test: tuple | None, n_classes: int,
            shape: tuple[int, ...] | None, device: torch.device | str) -> Dataset:
    """The splits standardized (in place, with the training split's statistics: per feature, or
    per channel for images) and put on the device as tensors."""
    (x_tr, y_tr), (x_va, y_va) = train, val
    x_te, y_te = test if test is not None else (None, None)
    mean = std = None
    if config.standardizes:
        if shape is None:
            mean = x_tr.mean(axis=0)
            std = x_tr.std(axis=0)
        else:  # one mean and std per channel, over examples and pixels, repeated for each pixel
            channels = x_tr.reshape(x_tr.shape[0], shape[0], -1)
            pixels = channels.shape[2]
            mean = np.repeat(channels.mean(axis=(0, 2), dtype=np.float64), pixels).astype(np.float32)
            std = np.repeat(channels.std(axis=(0, 2), dtype=np.float64), pixels).astype(np.float32)
        std[std == 0] = 1.0  # constant features (digits has some) stay 0 rather than NaN
        for part in (x_tr, x_va) if x_te is None else (x_tr, x_va, x_te):  # (x - mean) / std, in place
            part -= mean
            part /= std
    to = dict(device=device)
    return Dataset(
        name=name,
        x_train=torch.as_tensor(x_tr, dtype=torch.float32, **to),
        y_train=torch.as_tensor(y_tr, **to),
        x_val=torch.as_tensor(x_va, dtype=torch.float32, **to),
        y_val=torch.as_tensor(y_va, **to),
        n_classes=n_classes,
        task=config.task,
        x_test=None if x_te is None else torch.as_tensor(x_te, dtype=torch.float32, **to),
        y_test=None if y_te is None else torch.as_tensor(y_te, **to),
        feature_mean=None if mean is None else mean.tolist(),
        feature_std=None if std is None else std.tolist(),
        input_shape=shape,
    )
