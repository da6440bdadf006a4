"""Interactive loss-surface explorer: full-batch, mini-batch and pure SGD paths.

``python -m sgdtune.surface --out surface.html`` writes one self-contained HTML
page (inline JS/CSS, no network request) that draws the contour map of a real
two-weight least-squares loss on generated data and overlays three descent
paths that start at the same point with the same learning rate and the same
number of epochs:

* full-batch gradient descent (B = n, one update per epoch); on this quadratic its
  limit lr < 2/lambda_max is fixed, while a network's full-batch training raises its
  sharpness until it meets that limit (experiments/edge_of_stability.toml),
* mini-batch gradient descent (B chosen with a log-scale slider),
* pure SGD (B = 1, n updates per epoch).

The loss is ``L(w) = 1/(2n) * sum_i (x_i . w - y_i)^2`` with ``w = (w1, w2)``.
The page recomputes the paths in JavaScript; this module holds the reference
implementation in numpy/Python with the *same arithmetic order*, so the
browser's full-batch path equals :func:`full_batch_path` to rounding (tests
check 1e-9) and the mini-batch paths agree too because both sides use the same
PRNG (mulberry32) and the same Fisher-Yates shuffle.

Layer: pages (pages and servers a person opens; docs/architecture.md).
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

# --- limits and defaults -------------------------------------------------------

N_MIN, N_MAX = 100, 50_000  # examples; the page embeds all of them
SEED_MAX = 2**32 - 1  # mulberry32 takes a 32-bit unsigned seed
DEFAULT_N = 2_000
DEFAULT_SEED = 0

# Feature correlation: the Hessian X^T X / n has eigenvalues ~1 +- RHO, so the
# valley is elongated (condition number ~19) and full-batch GD creeps along it.
RHO = 0.9
W_TRUE = (1.5, -0.5)  # weights that generated y
NOISE_SD = 0.5  # label noise; keeps SGD noisy even at the optimum

# Page defaults, chosen so the three paths visibly differ: full batch takes
# 50 smooth steps and is still creeping along the valley, SGD takes 50 * n
# noisy ones and zig-zags around the optimum, mini-batch lies in between.
DEFAULT_LR = 0.25  # well below the full-batch limit 2/lambda_max (~1.03 here)
DEFAULT_EPOCHS = 50
DEFAULT_BATCH = 32
DEFAULT_START_OFFSET = (-3.5, 2.2)  # start point relative to the optimum w*
EPOCHS_MAX = 100  # epochs slider range 1..EPOCHS_MAX
# The page stores at most this many points per path (every k-th beyond it) so
# n = 50,000 with B = 1 stays within ~16 MB per path.
STORED_POINTS_MAX = 1_000_000

TEMPLATE = "surface_page.html"  # package data in the sgdtune folder, beside the report's page
CONFIG_MARKER = "/*__SGDTUNE_SURFACE_CONFIG__*/null"


# --- data ----------------------------------------------------------------------


@dataclass(frozen=True)
class SurfaceData:
    """Regression data set: features ``x1``, ``x2`` and targets ``y`` (float64, length n)."""

    x1: np.ndarray
    x2: np.ndarray
    y: np.ndarray
    seed: int

    @property
    def n(self) -> int:
        return int(self.y.shape[0])


def make_data(n: int = DEFAULT_N, seed: int = DEFAULT_SEED) -> SurfaceData:
    """Generate n examples with correlated, unit-variance features, seeded.

    Features are uniform on [-sqrt(3), sqrt(3)] rather than normal: bounded
    |x_i|^2 (<= ~8.4) keeps a single-example SGD step from blowing up at the
    default lr (one step is stable while lr * |x_i|^2 < 2), so the SGD path
    is noisy but not explosive. y = W_TRUE . x + N(0, NOISE_SD^2). The page
    embeds these exact float64 values, so Python and JS use identical data.
    """
    rng = np.random.default_rng(seed)
    z1, z2 = rng.uniform(-math.sqrt(3.0), math.sqrt(3.0), size=(2, n))
    noise = rng.standard_normal(n)
    x1 = z1
    x2 = RHO * z1 + math.sqrt(1.0 - RHO * RHO) * z2
    y = W_TRUE[0] * x1 + W_TRUE[1] * x2 + NOISE_SD * noise
    return SurfaceData(x1=x1.copy(), x2=x2.copy(), y=y.copy(), seed=seed)


def _seq_sum(values: np.ndarray) -> float:
    """Left-to-right sum, the same order as a JS ``for`` loop.

    ``np.sum`` uses pairwise summation, which rounds differently; ``cumsum``
    accumulates strictly in index order.
    """
    return float(np.cumsum(values)[-1]) if values.size else 0.0


@dataclass(frozen=True)
class Stats:
    """Sufficient statistics: A = X^T X / n, b = X^T y / n, c = y^T y / n.

    With them the full-batch gradient A w - b costs O(1) instead of O(n).
    """

    a11: float
    a12: float
    a22: float
    b1: float
    b2: float
    c: float


def sufficient_stats(data: SurfaceData) -> Stats:
    """Sums in index order then one division by n (mirrors the page's JS)."""
    x1, x2, y, n = data.x1, data.x2, data.y, data.n
    return Stats(
        a11=_seq_sum(x1 * x1) / n,
        a12=_seq_sum(x1 * x2) / n,
        a22=_seq_sum(x2 * x2) / n,
        b1=_seq_sum(x1 * y) / n,
        b2=_seq_sum(x2 * y) / n,
        c=_seq_sum(y * y) / n,
    )


def loss(data: SurfaceData, w: tuple[float, float] | np.ndarray) -> float:
    """L(w) = 1/(2n) * sum_i (x_i . w - y_i)^2, straight from the definition."""
    r = data.x1 * w[0] + data.x2 * w[1] - data.y
    return float(np.dot(r, r) / (2 * data.n))


def path_losses(data: SurfaceData, path: np.ndarray) -> np.ndarray:
    """L(w) for every row of an (m, 2) path, from the definition (no shortcut)."""
    r = np.outer(data.x1, path[:, 0]) + np.outer(data.x2, path[:, 1]) - data.y[:, None]
    return (r * r).sum(axis=0) / (2 * data.n)


def lr_limit(data: SurfaceData) -> float:
    """Largest stable full-batch learning rate, 2 / lambda_max(X^T X / n)."""
    s = sufficient_stats(data)
    half_trace = (s.a11 + s.a22) / 2
    lam_max = half_trace + math.hypot((s.a11 - s.a22) / 2, s.a12)
    return 2.0 / lam_max


def optimum(data: SurfaceData) -> tuple[float, float]:
    """Least-squares minimiser w* = A^-1 b (2x2 solve by Cramer's rule)."""
    s = sufficient_stats(data)
    det = s.a11 * s.a22 - s.a12 * s.a12
    return ((s.a22 * s.b1 - s.a12 * s.b2) / det, (s.a11 * s.b2 - s.a12 * s.b1) / det)


def default_start(data: SurfaceData) -> tuple[float, float]:
    """Default start: a fixed offset from w*, up the side of the valley."""
    w1, w2 = optimum(data)
    return (w1 + DEFAULT_START_OFFSET[0], w2 + DEFAULT_START_OFFSET[1])


# --- PRNG and shuffle shared with the page ----------------------------------------


class Mulberry32:
    """mulberry32, a 32-bit PRNG written with integer ops only.

    Every step is reduced mod 2^32, matching JavaScript's ``Math.imul`` and
    ``>>>``; the page's copy yields the same stream for the same seed.
    """

    def __init__(self, seed: int) -> None:
        self.state = seed & 0xFFFFFFFF

    def next_u32(self) -> int:
        self.state = (self.state + 0x6D2B79F5) & 0xFFFFFFFF
        a = self.state
        t = ((a ^ (a >> 15)) * (a | 1)) & 0xFFFFFFFF
        t = ((t + (((t ^ (t >> 7)) * (t | 61)) & 0xFFFFFFFF)) & 0xFFFFFFFF) ^ t
        return (t ^ (t >> 14)) & 0xFFFFFFFF

    def random(self) -> float:
        """Uniform float in [0, 1): u32 / 2^32 (exact in float64)."""
        return self.next_u32() / 4294967296.0


def shuffle_in_place(perm: list[int], rng: Mulberry32) -> None:
    """Fisher-Yates from the end, j = floor(u * (i + 1)), as in the page."""
    for i in range(len(perm) - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        perm[i], perm[j] = perm[j], perm[i]


# --- descent paths ---------------------------------------------------------------


def updates_per_epoch(n: int, batch_size: int) -> int:
    """ceil(n / B): the last batch of an epoch may be smaller than B."""
    return -(-n // batch_size)


def full_batch_path(
    data: SurfaceData, w0: tuple[float, float], lr: float, epochs: int
) -> np.ndarray:
    """Full-batch GD: one update per epoch, w <- w - lr * (A w - b).

    Returns an (epochs + 1, 2) array of (w1, w2) including the start. Python
    floats, not numpy vectors, so each operation rounds exactly like the JS.
    """
    s = sufficient_stats(data)
    w1, w2 = float(w0[0]), float(w0[1])
    out = [(w1, w2)]
    for _ in range(epochs):
        g1 = s.a11 * w1 + s.a12 * w2 - s.b1
        g2 = s.a12 * w1 + s.a22 * w2 - s.b2
        w1 = w1 - lr * g1
        w2 = w2 - lr * g2
        out.append((w1, w2))
    return np.array(out, dtype=np.float64)


def minibatch_path(
    data: SurfaceData,
    w0: tuple[float, float],
    lr: float,
    epochs: int,
    batch_size: int,
    seed: int,
) -> np.ndarray:
    """Mini-batch GD with a fresh shuffle every epoch (B = 1 is pure SGD).

    Each epoch reshuffles the running permutation with mulberry32(seed) and
    walks it in ceil(n/B) batches; the gradient is the mean over the batch,
    (1/m) * sum_i x_i (x_i . w - y_i). Returns an
    (epochs * ceil(n/B) + 1, 2) array of (w1, w2) including the start.
    """
    n = data.n
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must be in 1..{n}, got {batch_size}")
    # Plain lists of Python floats: per-example float ops round exactly like JS.
    x1, x2, y = data.x1.tolist(), data.x2.tolist(), data.y.tolist()
    rng = Mulberry32(seed)
    perm = list(range(n))
    w1, w2 = float(w0[0]), float(w0[1])
    out = np.empty((epochs * updates_per_epoch(n, batch_size) + 1, 2))
    out[0] = (w1, w2)
    k = 1
    for _ in range(epochs):
        shuffle_in_place(perm, rng)
        for start in range(0, n, batch_size):
            batch = perm[start : start + batch_size]
            g1 = 0.0
            g2 = 0.0
            for i in batch:
                r = x1[i] * w1 + x2[i] * w2 - y[i]
                g1 += x1[i] * r
                g2 += x2[i] * r
            m = len(batch)
            w1 = w1 - lr * (g1 / m)
            w2 = w2 - lr * (g2 / m)
            out[k] = (w1, w2)
            k += 1
    return out


# --- page --------------------------------------------------------------------------


def page_config(data: SurfaceData) -> dict:
    """Everything the page needs: data as base64 little-endian float64, defaults."""
    packed = np.stack([data.x1, data.x2, data.y]).astype("<f8").tobytes()
    return {
        "n": data.n,
        "dataSeed": data.seed,
        "data": base64.b64encode(packed).decode("ascii"),  # x1[0..n), x2[..], y[..]
        "defaults": {
            "lr": DEFAULT_LR,
            "epochs": DEFAULT_EPOCHS,
            "batch": min(DEFAULT_BATCH, data.n),
            "seed": data.seed,
            "start": list(default_start(data)),
        },
        "startOffset": list(DEFAULT_START_OFFSET),
        "limits": {"epochsMax": EPOCHS_MAX, "storedPointsMax": STORED_POINTS_MAX},
    }


def render_page(data: SurfaceData) -> str:
    """Fill the HTML template (package data) with the config as inline JSON."""
    template = resources.files("sgdtune").joinpath(TEMPLATE).read_text("utf-8")
    if CONFIG_MARKER not in template:
        raise RuntimeError(f"{TEMPLATE} lacks the config marker {CONFIG_MARKER!r}")
    # "</" would end the <script> element early; "<\/" means the same in JSON.
    blob = json.dumps(page_config(data), separators=(",", ":")).replace("</", "<\\/")
    return template.replace(CONFIG_MARKER, blob)


def write_page(out: Path | str, data: SurfaceData) -> Path:
    """Render the page for ``data`` and write it (UTF-8); returns the path written."""
    from ..errors import InputError
    from ..files import atomic_write

    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError("--out", "must be a file in a folder that can be created",
                         f"{str(out)!r} ({e.strerror})") from None

    atomic_write(out, render_page(data), field="--out")  # a kill or a full disk leaves the previous page
    return out
