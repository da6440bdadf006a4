"""McCandlish et al.'s (2018) predictions from B_noise and eps_max: the best learning rate per
batch size and the updates and examples to a target (docs/science.md, sections 3b and 5).

NumPy only (no torch): the report imports this module.

    eps_opt(B) = eps_max / (1 + B_noise / B)
    S(B) = S_min (1 + B_noise / B)        E(B) = B S(B) = S_min (B_noise + B)

The learning rate to compare with eps_opt is the step SGD takes along a gradient: lr under plain
SGD, lr / (1 - m) under heavy-ball momentum m once the momentum buffer has filled, and less
before that (momentum_warmup).

Layer: science (the estimators; docs/architecture.md).
"""

from __future__ import annotations

import numpy as np

from .fits import steps_model


def optimal_lr(batch_size, eps_max: float, b_noise: float) -> np.ndarray:
    """eps_opt(B) = eps_max / (1 + B_noise / B): the step along a batch gradient of B examples that
    lowers a quadratic loss most (lr units, as eps_max; B and B_noise in examples)."""
    return eps_max / (1.0 + b_noise / np.asarray(batch_size, dtype=float))


def predicted_updates(batch_size, s_min: float, b_noise: float) -> np.ndarray:
    """S(B) = S_min (1 + B_noise / B): updates to the target, with B_noise in the place of B_crit."""
    return steps_model(batch_size, s_min, b_noise)


def predicted_examples(batch_size, s_min: float, b_noise: float) -> np.ndarray:
    """E(B) = B S(B) = E_min (1 + B / B_noise) with E_min = S_min B_noise: examples to the target."""
    return np.asarray(batch_size, dtype=float) * predicted_updates(batch_size, s_min, b_noise)


def effective_lr(lr, momentum: float | None) -> np.ndarray:
    """lr / (1 - m): the step per unit gradient of heavy-ball SGD once its buffer has filled
    (a constant gradient g gives steps lr g (1 + m + m^2 + ...)). No momentum (None): lr."""
    return np.asarray(lr, dtype=float) / (1.0 - (momentum or 0.0))


def momentum_warmup(momentum: float | None, updates) -> np.ndarray:
    """The mean over the first S updates of the step's share of its full value lr / (1 - m).

    PyTorch's SGD keeps buf_t = m buf_(t-1) + g_t (buf_1 = g_1) and steps lr buf_t, so under a
    constant gradient update t moves lr g (1 - m^t) / (1 - m). Averaged over t = 1..S:
    1 - m (1 - m^S) / (S (1 - m)). At m = 0.9 that is 0.41 for S = 10, 0.64 for S = 25, 0.94
    for S = 150: a trial that reaches its target in a few updates steps well short of lr / (1 - m).
    1 without momentum."""
    s = np.asarray(updates, dtype=float)
    m = momentum or 0.0
    if m == 0.0:
        return np.ones_like(s)
    return 1.0 - m * (1.0 - m ** s) / (s * (1.0 - m))
