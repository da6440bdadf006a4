"""The datasets sgdtune makes itself: scikit-learn's digits, MNIST-1D, and the synthetic ones
(Gaussian class clusters; linear regression with a known answer), as NumPy arrays.

data.py loads them by name (DataConfig.dataset), splits and standardizes them.

Layer: base (shared by every layer above; docs/architecture.md).
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from .errors import InputError

ROW_BLOCK = 65_536  # rows per block when building large arrays in place


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (1,797 8x8 images, 10 classes), read from the file it ships.

    sklearn.datasets.load_digits reads the same file, but importing scikit-learn (and SciPy
    with it) takes 1.5 s, three times the rest of the start-up besides torch; finding the
    package's folder imports nothing. tests/unit/test_data.py holds the two equal.
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


def load_mnist1d() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-1D (Greydanus, 2020) from the `mnist1d` package's own generator with its default
    arguments: (x, y, x_test, y_test), 4,000 + 1,000 sequences of length 40, 10 classes; about
    a second, no download. The generator seeds NumPy's global RNG, which is saved and restored
    around it so that nothing else sees a difference. Generated once per process (the same
    arrays every time); each call returns fresh copies."""
    try:
        import mnist1d.data  # noqa: F401
    except ImportError:
        raise InputError("data.dataset", "'mnist1d' needs the mnist1d package: pip install 'mnist1d>=0.0.2'",
                         "'mnist1d' (package not installed)") from None
    return tuple(a.copy() for a in _generate_mnist1d())


@functools.lru_cache(maxsize=1)
def _generate_mnist1d() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    state = np.random.get_state()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(state)
    return (data["x"].astype(np.float32), data["y"].astype(np.int64),
            data["x_test"].astype(np.float32), data["y_test"].astype(np.int64))


def linear_regression(
    n_samples: int, n_features: int, noise: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The known-answer regression problem (docs/science.md, section 3): (x, y, w_star).

    The law: w* ~ N(0, I_d) drawn once from the seed, then for each example x ~ N(0, I_d) and
    y = w*.x + eps with eps ~ N(0, s^2), s = `noise`; no intercept. Drawn in this order from
    numpy's default_rng(seed): w* (float64, d), x (float32, n x d), eps (float64, n). y is
    computed in float64 from the float32 x and then rounded to float32, so y = w*.x + eps holds
    to float32 rounding of y. x and y are returned as float32, not standardized (load_data
    leaves this dataset's features as drawn unless `standardize = true`), so that the exact
    finite-sample answers (per-example gradients, Hessian 2 X^T X / n of torch's MSELoss) can
    be computed from the very arrays training sees.
    """
    rng = np.random.default_rng(seed)
    w_star = rng.standard_normal(n_features)
    x = rng.standard_normal((n_samples, n_features), dtype=np.float32)
    eps = rng.standard_normal(n_samples)
    y = np.empty(n_samples, dtype=np.float32)
    for start in range(0, n_samples, ROW_BLOCK):  # float64 a block at a time, not n x d at once
        rows = slice(start, start + ROW_BLOCK)
        y[rows] = x[rows].astype(np.float64) @ w_star + noise * eps[rows]
    return x, y, w_star


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

