"""How a dataset's examples are divided: the fewest examples that splits can serve, and the
seeded train/validation splits (stratified for classification, random for regression), as
positions; a large array split block by block without holding it whole.

Layer: base (shared by every layer above; docs/architecture.md).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InputError

# The fewest validation examples: val_acc is reported with its binomial standard error
# sqrt(p (1 - p) / n_val) and trials are compared within 2 SE, a normal approximation that
# needs tens of examples (one example reads 1.0000 ± 0.0000); 30 is the usual rule of thumb.
MIN_VAL_EXAMPLES = 30


def min_examples(val_fraction: float, test_fraction: float = 0.0) -> int:
    """The fewest examples n whose splits leave every side its share: ceil(test_fraction x n) test
    examples (at least one, when test_fraction > 0), then ceil(val_fraction x m) of the m left to
    validation (at least MIN_VAL_EXAMPLES), and at least one to train on (stratified_split, random_split)."""
    def rest(n: int, fraction: float) -> int:  # what a split by `fraction` leaves to the other side
        return n - math.ceil(fraction * n)

    m = max(2, math.floor((MIN_VAL_EXAMPLES - 1) / val_fraction))  # below it, validation is too small
    while not (m - rest(m, val_fraction) >= MIN_VAL_EXAMPLES and rest(m, val_fraction) >= 1):
        m += 1
    if test_fraction <= 0:
        return m
    n = max(m + 1, math.ceil(m / (1 - test_fraction)) - 1)
    while not (math.ceil(test_fraction * n) >= 1 and rest(n, test_fraction) >= m):
        n += 1
    return n

def stratified_split(y: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation positions (each in a seeded random order).

    ceil(val_fraction * n) examples go to validation, as in scikit-learn's train_test_split.
    Stratified when every class has 2 examples or more: each class gives its share of the
    validation set (largest remainders settle the rounding), drawn at random within the
    class, so both sides keep the class proportions to within one example per class.
    """
    rng = np.random.default_rng(seed)
    n = len(y)
    n_val = _n_val(n, val_fraction)
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


def random_split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation positions of n examples, a seeded random split (regression): the
    first ceil(val_fraction * n) positions of a seeded permutation go to validation, the rest
    to training, each side in the permutation's order. The same positions as stratified_split
    gives when it cannot stratify."""
    n_val = _n_val(n, val_fraction)
    perm = np.random.default_rng(seed).permutation(n)
    return perm[n_val:], perm[:n_val]


def _n_val(n: int, val_fraction: float) -> int:
    n_val = math.ceil(val_fraction * n)
    if not 0 < n_val < n:
        raise InputError("data.val_fraction", f"must leave examples on both sides of the split: ceil(val_fraction x "
                         f"{n} examples) between 1 and {n - 1}", repr(val_fraction))
    return n_val


def split_blocks(blocks, train_idx: np.ndarray, val_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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
