"""The measurement budget: what each measurement and each step costs, modelled in
example-equivalents of one forward+backward pass, and the probe sizes that fit.

The measurement budget (measure_share, default 0.05): every measurement of a member together,
the end-of-training evaluations of the train subset and the test set included, costs at most
measure_share of the modelled cost of its steps so far, both in example-equivalents (`step_cost`,
`probe_cost`, `curvature_cost`, `sharpness_cost`, `eval_cost`; their constants are calibrated
against timings on digits, docs/performance.md). The end-of-training evaluations are reserved
from the start. A measurement runs when its schedule above makes it due and its cost fits in
what is left (`_left`); else:
- at an epoch end before the member's last (and not at its target): it is left out, and so is
  one that would not leave room for the end's measurements at full size (`_end_reserve`);
- at the member's end and where its target is first reached, in this order: the train-subset
  evaluation (never left out: halved down to MEASURE_FLOOR examples, to that floor even beyond
  the budget, since the final train metrics and gen_gap are not optional), the test set (whole),
  the noise probe (halved down to MEASURE_FLOOR examples), B_noise (on that probe), the
  fixed-model loss noise, sharpness (its probe halved down to MEASURE_FLOOR examples, Lanczos
  capped at the iterations that fit, at least SHARPNESS_MIN_ITERS); each left out when even its
  floor does not fit.
A measurement left out leaves its metrics absent. Costs and rules depend on the config and the
update counts only, so a seeded trial records the same on any machine. measure_share "all" = no
budget: every scheduled measurement at full size, as without this rule. The validation pass of
each epoch is not a measurement (it is part of training with a target or a pruner).

Layer: trainer (the one training loop; docs/architecture.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ..science.noise import NoiseScaleEstimate

# The gradient noise probe (docs/science.md, section 3).
PROBE_CHUNKS = 8  # disjoint chunks behind the jackknife standard errors (K - 1 = 7 degrees of freedom)
AUTO_WHOLE_SET = 16_384  # probe_size "auto": the whole training set up to this n (then exact: no sampling error)
# ... else sized from the measured SE of |G|^2, not from a formula in B_simple: a probe mean of b
# gradients has Var(|G|^2) = 4 G'Sigma G / b + 2 tr(Sigma^2) / b^2 (docs/science.md, section 3), and
# the first term, which a rule "b = 16 B_simple" forgets, can dominate: for a rank-one Sigma
# aligned with G the relative SD at b = 16 B_simple is sqrt(4/16 + 2/256) = 0.51, not 9%.
AUTO_TARGET_REL_SE = 0.1  # the relative SE of |G|^2 the next probe aims at
AUTO_MIN_PROBE, AUTO_MAX_PROBE = 2048, 65_536  # ... rounded up to a power of two within these
# measure_every_epochs "auto": a probe is due once its modelled cost is at most this share of
# the modelled cost of the steps since the last one. Costs in example-equivalents of one
# forward+backward pass: an update costs STEP_OVERHEAD + B, a probe PROBE_CHUNKS x
# CHUNK_OVERHEAD + PROBE_PASSES x probe size (benchmarks/trainer.py measures the real ratio).
PROBE_COST_SHARE = 0.05
STEP_OVERHEAD, CHUNK_OVERHEAD, PROBE_PASSES = 200, 50, 2
# B_noise's cost per Hutchinson combination (and for G^T H G), in passes of the probe: a weighted
# backward pass and a Hessian-vector product (64-128-10 MLP, 1,437 examples, one thread: 1.1 and
# 2.6 ms against ~1.5 ms for a plain forward+backward pass; benchmarks/trainer.py measures it).
CURVATURE_PASSES = 3
# The measurement budget (measure_share; the module's docstring). A Lanczos step is one
# Hessian-vector product, HVP_PASSES passes of its probe plus HVP_OVERHEAD, and the operator's
# set-up costs about one more; an evaluation is forward only, EVAL_PASSES of a pass per example
# plus EVAL_OVERHEAD; the fixed-model loss noise is sums over shuffles of the per-example losses,
# LOSS_NOISE_COST whatever n. Measured on digits (64-128-10 MLP, one thread, in example-equivalents,
# a B = 8 step = 197): a Lanczos step 960 on 256 examples and 2,660 on 1,437; an evaluation 157
# and 688; the loss noise 630-740 (docs/performance.md, "Measurement budget").
HVP_OVERHEAD, HVP_PASSES = 600, 2
EVAL_OVERHEAD, EVAL_PASSES = 100, 0.55
LOSS_NOISE_COST = 750
MEASURE_FLOOR = 256  # examples: the smallest probe (noise, sharpness) or train subset the budget sizes down to
SHARPNESS_MIN_ITERS = 8  # Lanczos steps a budgeted sharpness must afford, else it is left out



def auto_probe_size(n: int, last: NoiseScaleEstimate | None) -> int:
    """probe_size "auto": n when n <= AUTO_WHOLE_SET; else, from the last measurement's relative SE r
    of |G|^2 on b examples, b (r / AUTO_TARGET_REL_SE)^2 (the SE falls at least as 1/sqrt(b), so this
    reaches the target), at most 16 b (also for an unresolved |G|^2 <= 0), rounded up to a power
    of two within [AUTO_MIN_PROBE, AUTO_MAX_PROBE], at most n. AUTO_MIN_PROBE before any measurement."""
    if n <= AUTO_WHOLE_SET:
        return n
    want = float(AUTO_MIN_PROBE)
    if last is not None:  # at most 16x the last probe per step: one noisy SE cannot jump to the maximum
        rel = last.grad_sq_norm_se / last.grad_sq_norm if last.grad_sq_norm > 0 else math.inf
        want = last.probe_size * min(rel / AUTO_TARGET_REL_SE, 4.0) ** 2
    size = AUTO_MIN_PROBE
    while size < min(want, AUTO_MAX_PROBE):
        size *= 2
    return min(size, n)


def probe_cost(probe_size: int) -> float:
    """Modelled cost of one noise measurement, in example-equivalents (see PROBE_COST_SHARE)."""
    return min(PROBE_CHUNKS, probe_size // 2) * CHUNK_OVERHEAD + PROBE_PASSES * probe_size


def curvature_cost(probe_size: int, samples: int) -> float:
    """Modelled cost of one B_noise measurement, in example-equivalents (see CURVATURE_PASSES)."""
    return CURVATURE_PASSES * (samples + 1) * probe_size


def sharpness_cost(probe_size: int, iters: int) -> float:
    """Modelled cost of one sharpness measurement of `iters` Lanczos steps, in example-equivalents."""
    return (iters + 1) * (HVP_OVERHEAD + HVP_PASSES * probe_size)


def eval_cost(examples: int) -> float:
    """Modelled cost of one forward-only evaluation pass over `examples`, in example-equivalents."""
    return EVAL_OVERHEAD + EVAL_PASSES * examples if examples else 0.0


def halved(full: int, fits: Callable[[int], bool], floor: int = MEASURE_FLOOR) -> int:
    """The largest of full, full // 2, full // 4, ... (not below min(floor, full)) that `fits`; 0 if none."""
    size = full
    while not fits(size):
        if size // 2 < min(floor, full):
            return 0
        size //= 2
    return size


def sized(full: int, fits: Callable[[int], bool], shrink: bool) -> int:
    """A measurement's size: with `shrink` (at a member's end or target) halved to fit (`halved`),
    else the full size if it fits, or 0 (left out)."""
    return halved(full, fits, MEASURE_FLOOR if shrink else full)


def sharpness_iters(probe_size: int, left: float, most: int) -> int:
    """The Lanczos steps (at most `most`) whose `sharpness_cost` on `probe_size` examples fits in `left`."""
    if left == math.inf:
        return most
    return min(most, int(left // sharpness_cost(probe_size, 0)) - 1)


def step_cost(updates: int, examples: int) -> float:
    """Modelled cost of `updates` steps over `examples` examples, in example-equivalents."""
    return updates * STEP_OVERHEAD + examples
