"""Datasets as tensors on the device: load, split (stratified, seeded), standardize."""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import InputError

ROW_BLOCK = 65_536  # rows per block when building large arrays in place


class DataConfig(BaseModel):
    """[data] of an experiment file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: Literal["digits", "synthetic", "csv", "npz"] = "digits"
    path: Path | None = Field(default=None, description="the file, for csv and npz")
    label: str = Field(default="label", description="label column (csv) or array name (npz)")
    n_samples: int = Field(default=10_000, ge=10, le=50_000_000, description="synthetic only")
    n_features: int = Field(default=64, ge=2, description="synthetic only")
    n_classes: int = Field(default=10, ge=2, description="synthetic only")
    val_fraction: float = Field(default=0.2, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _file_sources_need_a_file(self) -> DataConfig:
        if self.dataset in ("csv", "npz"):
            if self.path is None:
                raise ValueError(f"data.path: required when dataset = {self.dataset!r}; got nothing")
            if not self.path.is_file():
                raise ValueError(f"data.path: must be an existing file; got {str(self.path)!r} (no such file)")
        return self


@dataclass(frozen=True)
class Dataset:
    """Standardized float32 features and int64 labels, already on their device."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    n_classes: int

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
    """Features (n, d) and integer labels (n,) as numpy arrays."""
    if config.dataset == "digits":
        return load_digits()
    if config.dataset == "synthetic":
        return synthetic_classification(
            config.n_samples, config.n_features, config.n_classes, seed
        )
    if config.dataset == "csv":
        return _read_csv(config.path, config.label)
    return _read_npz(config.path, config.label)


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (1,797 8x8 images, 10 classes), read from the file it ships.

    sklearn.datasets.load_digits reads the same file, but importing scikit-learn (and SciPy
    with it) takes 1.5 s, three times the rest of the start-up besides torch; finding the
    package's folder imports nothing. tests/test_data.py holds the two equal.
    """
    import gzip
    from importlib.util import find_spec

    spec = find_spec("sklearn")
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0], "datasets", "data", "digits.csv.gz") if folders else None
    if path is None or not path.is_file():  # an unforeseen layout: take the slow road
        from sklearn.datasets import load_digits as sklearn_digits

        bunch = sklearn_digits()
        return bunch.data.astype(np.float32), bunch.target.astype(np.int64)
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return table[:, :-1], table[:, -1].astype(np.int64)


def stratified_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation positions (each in a seeded random order).

    ceil(val_fraction * n) examples go to validation, as in scikit-learn's train_test_split.
    Stratified when every class has 2 examples or more: each class gives its share of the
    validation set (largest remainders settle the rounding), drawn at random within the
    class, so both sides keep the class proportions to within one example per class.
    """
    rng = np.random.default_rng(seed)
    n = len(y)
    n_val = math.ceil(val_fraction * n)
    if not 0 < n_val < n:
        raise InputError("data.val_fraction", f"must leave examples on both sides of the split: ceil(val_fraction x "
                         f"{n} examples) between 1 and {n - 1}", repr(val_fraction))
    perm = rng.permutation(n)
    counts = np.bincount(y)
    if counts[counts > 0].min() < 2:  # stratifying needs two of every class
        return perm[n_val:], perm[:n_val]
    exact = counts * (n_val / n)
    per_class = np.floor(exact).astype(np.int64)
    short = n_val - int(per_class.sum())
    per_class[np.argsort(-(exact - per_class), kind="stable")[:short]] += 1
    by_class = perm[np.argsort(y[perm], kind="stable")]  # grouped by class, random within each
    rank = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)  # position within its class
    to_val = rank < per_class[y[by_class]]
    return rng.permutation(by_class[~to_val]), rng.permutation(by_class[to_val])


def synthetic_classification(
    n_samples: int, n_features: int, n_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian class clusters with label noise, built in float32 so 10^6 x 64 stays fast.

    Each class has a random mean; points are mean + N(0, I) through a shared random
    linear map (correlated features), and 5% of labels are flipped so the problem is
    not separable and generalization is measurable.
    """
    labels, features = synthetic_parts(n_samples, n_features, n_classes, seed)
    x = np.empty((n_samples, n_features), dtype=np.float32)
    for rows, block in features():
        x[rows] = block
    return x, labels


def synthetic_parts(n_samples: int, n_features: int, n_classes: int, seed: int):
    """synthetic_classification as (labels, features): features() yields (rows, block) in
    order, blocks of about ROW_BLOCK rows, so that load_data can write each block straight to
    its side of the split instead of holding the whole array and its two halves at once.

    The labels' 5% flips are drawn after the features, so the features' draws are skipped
    over once to know the labels first (the seed gives the same numbers either way).
    """
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, n_classes, size=n_samples)  # labels before the flips
    means = rng.normal(0.0, 1.0, size=(n_classes, n_features)).astype(np.float32)
    mixing = (rng.normal(0.0, 1.0, size=(n_features, n_features)) / np.sqrt(n_features)).astype(np.float32)
    features_state = rng.bit_generator.state
    # Blocks of at least ROW_BLOCK rows (none left tiny), so that BLAS gives the same bits
    # as one product over all rows.
    step = -(-n_samples // max(1, n_samples // ROW_BLOCK))
    blocks = [slice(start, min(start + step, n_samples)) for start in range(0, n_samples, step)]
    for rows in blocks:
        rng.standard_normal(size=(rows.stop - rows.start, n_features), dtype=np.float32)
    labels = centres.copy()
    flip = rng.random(n_samples) < 0.05
    labels[flip] = rng.integers(0, n_classes, size=int(flip.sum()))

    def features():
        draws = np.random.default_rng(seed)
        draws.bit_generator.state = features_state  # where the first pass drew the features
        for rows in blocks:
            block = draws.standard_normal(size=(rows.stop - rows.start, n_features), dtype=np.float32)
            block *= 1.5
            block += means[centres[rows]]
            yield rows, block @ mixing

    return labels.astype(np.int64), features


def _read_csv(path: Path, label: str) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise InputError("data.path", f"{str(path)!r} is empty; expected a header row")
    if label not in header:
        raise InputError("data.label", f"must be one of the columns {header}", repr(label))
    table = np.genfromtxt(path, delimiter=",", skip_header=1, dtype=np.float64)
    table = np.atleast_2d(table)
    if np.isnan(table).any():
        raise InputError("data.path", f"{str(path)!r} has empty or non-numeric cells")
    col = header.index(label)
    return np.delete(table, col, axis=1).astype(np.float32), _as_labels(table[:, col])


def _read_npz(path: Path, label: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(path) as archive:
        names = list(archive.files)
        if label not in names:
            raise InputError("data.label", f"must be one of the arrays {names}", repr(label))
        y = archive[label]
        features = [archive[k] for k in names if k != label]
    if len(features) == 1 and features[0].ndim == 2:
        x = features[0]
    elif features and all(f.ndim == 1 for f in features):
        x = np.stack(features, axis=1)
    else:
        raise InputError("data.path", "an .npz needs one 2-D feature array, or 1-D columns, beside the labels")
    if x.shape[0] != y.shape[0]:
        raise InputError("data.path", f"{x.shape[0]} feature rows but {y.shape[0]} labels")
    return x.astype(np.float32), _as_labels(y)


def _as_labels(values: np.ndarray) -> np.ndarray:
    """Map arbitrary label values to 0..k-1 (sorted order)."""
    _, codes = np.unique(values, return_inverse=True)
    return codes.astype(np.int64)


def _split_blocks(blocks, train_idx: np.ndarray, val_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x[train_idx], x[val_idx]) from x's (rows, block) pieces, never holding all of x."""
    n = len(train_idx) + len(val_idx)
    to_val = np.zeros(n, dtype=bool)
    to_val[val_idx] = True
    position = np.empty(n, dtype=np.intp)  # each row's place in its side of the split
    position[train_idx] = np.arange(len(train_idx))
    position[val_idx] = np.arange(len(val_idx))
    x_tr = x_va = None
    for rows, block in blocks:
        if x_tr is None:
            x_tr = np.empty((len(train_idx), block.shape[1]), dtype=block.dtype)
            x_va = np.empty((len(val_idx), block.shape[1]), dtype=block.dtype)
        val = to_val[rows]
        x_tr[position[rows][~val]] = block[~val]
        x_va[position[rows][val]] = block[val]
    return x_tr, x_va


def load_data(config: DataConfig, seed: int, device: torch.device | str = "cpu") -> Dataset:
    """Load, split (stratified, seeded) and standardize with training statistics only.

    Memory: a loaded array is split by copying its rows out, then freed (a peak of twice the
    features); synthetic data goes block by block straight into the split. Standardizing
    works in place, and on a CPU the tensors share the arrays' memory.
    """
    if config.dataset == "synthetic":  # features come later, block by block, into the split
        x = None
        y, features = synthetic_parts(config.n_samples, config.n_features, config.n_classes, seed)
    else:
        x, y = load_arrays(config, seed)
    n_classes = int(y.max()) + 1
    # Split positions only (they depend on n and y alone), so that each copy of the features
    # happens when the memory it needs is there.
    train_idx, val_idx = stratified_split(y, config.val_fraction, seed)
    y_tr, y_va = y[train_idx], y[val_idx]
    del y
    if x is None:
        x_tr, x_va = _split_blocks(features(), train_idx, val_idx)
        del train_idx, val_idx
    else:
        x_tr = x[train_idx]
        del train_idx
        x_va = x[val_idx]
        del x, val_idx
    mean = x_tr.mean(axis=0)
    std = x_tr.std(axis=0)
    std[std == 0] = 1.0  # constant features (digits has some) stay 0 rather than NaN
    for part in (x_tr, x_va):  # (x - mean) / std, in place
        part -= mean
        part /= std
    to = dict(device=device)
    return Dataset(
        name=config.dataset if config.path is None else f"{config.dataset}:{config.path.name}",
        x_train=torch.as_tensor(x_tr, dtype=torch.float32, **to),
        y_train=torch.as_tensor(y_tr, **to),
        x_val=torch.as_tensor(x_va, dtype=torch.float32, **to),
        y_val=torch.as_tensor(y_va, **to),
        n_classes=n_classes,
    )
