"""The training loop: one epoch/step loop for K >= 1 trials trained side by side.

A member is one trial: its config, shuffle order, learning-rate schedule, noise meter,
target, metrics and result. What updates the weights is a `Stepper`, the only part that
differs between one nn.Module stepped by torch.optim (module_step.py, K = 1) and K MLPs
stacked along a leading axis (stacked.py). Everything else is here, once for every K: the
timed shuffle, warmup, the finite check every FINITE_CHECK_EVERY updates, the cadence of
target checks, evaluation at epoch end, the epoch-end measurements (gradient noise scale,
sharpness: docs/science.md, sections 3 and 7), EpochMetrics and TrainResult.

A member leaves the loop (the stepper drops its slice) when its budget is spent, when its
hook raises an Exception (a pruner), or when its loss turns non-finite; the others go on
unchanged. The members share one sequence of batch slices (the longest member's plan: a
shorter budget is a prefix of it), each slice taken from the member's own permutation.

Per update the loop does one stepper.step and a few integer comparisons, with no tensor op
of its own and no sync but the finite check's, once per FINITE_CHECK_EVERY updates: target
checks and members ending mid-epoch are due at update counts known in advance (`_next_due`),
so nothing is scanned member by member between them. Measurements run at epoch ends (and
when a member first reaches its target), outside the timed steps.

The measurements, per member (docs/science.md, section 3):
- gradient noise scale: tr(Sigma), |G|^2 and B_simple with jackknife standard errors
  (science.noise.estimate_from_sums over PROBE_CHUNKS disjoint chunks), on a probe drawn
  without replacement from the n training examples, with the finite-population |G|^2.
  Probe: `probe_size` examples, or with "auto" the whole set when n <= AUTO_WHOLE_SET, else
  sized from the last measurement's standard error of |G|^2 so that the next one resolves it
  to AUTO_TARGET_REL_SE (auto_probe_size), a power of two within [AUTO_MIN_PROBE, AUTO_MAX_PROBE].
  Cadence: every `measure_every_epochs` epochs, or with
  "auto" at the first epoch end where the modelled probe cost is <= PROBE_COST_SHARE of the
  modelled step cost since the last one (`noise_due`); always at the end of training and
  when the target is first reached.
- B_noise and eps_max (science.curvature_noise, docs/science.md, section 3b): on the same probe,
  with b_noise_samples Hutchinson combinations, at a subset of the noise probe's points: always
  at the end of training and when the target is first reached; with an int measure_every_epochs
  at every probe; with "auto" once their modelled cost (CURVATURE_PASSES x (samples + 1) x probe
  size) is <= PROBE_COST_SHARE of the modelled step cost since their last measurement
  (`_curvature_due`). Their time is kept apart (TrainResult.curvature_time_s), as sharpness's.
- sharpness: science.sharpness.sharpness on the first `sharpness_size` examples of the fixed
  order, every `sharpness_every` epochs and at the end of training, each Lanczos run started
  from the member's last top Ritz vector (fewer Hessian-vector products where it barely moved).

The measurement budget (measure_share, default 0.05): every measurement of a member together
costs at most measure_share of the modelled cost of its steps so far; the costs, the rule and
the sizes are in budget.py, applied here where a measurement is due (`_left`, `_end_reserve`).

Evaluation passes are not repeated: a target check and the epoch end at the same update count
(a trial that stops at its target mid-epoch) share one validation pass, and at a member's end
one pass over the train-evaluation subset gives its train metrics and the per-example losses
of the fixed-model loss noise (science.noise.fixed_model_loss_noise).

One module of about 700 lines on purpose: the loop, its members and their epoch-end
measurements are one sequence, read top to bottom; what a measurement costs is in budget.py,
how the weights move in the steppers.

Layer: trainer (the one training loop; docs/architecture.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..data import Dataset
from ..errors import Diverged
from ..science.curvature_noise import CurvatureNoiseEstimate
from ..science.fits import loglog_slope
from ..science.noise import (
    ChunkSums,
    NoiseScaleEstimate,
    estimate_from_sums,
    fixed_model_loss_noise,
    loss_noise,
    noise_temperature,
)
from ..science.sharpness import SharpnessEstimate
from ..timing import GpuMonitor, StepTimer, peak_memory_mb, reset_peak_memory
from .budget import (
    LOSS_NOISE_COST,
    MEASURE_FLOOR,
    PROBE_CHUNKS,
    PROBE_COST_SHARE,
    SHARPNESS_MIN_ITERS,
    auto_probe_size,
    curvature_cost,
    eval_cost,
    halved,
    probe_cost,
    sharpness_cost,
    sharpness_iters,
    sized,
    step_cost,
)
from .config import BatchPlan, TrainConfig, lr_at
from .losses import loss_function
from .results import EpochMetrics, TrainResult

FINITE_CHECK_EVERY = 32  # updates between NaN/inf checks: one cheap sync per 32 steps
# A finite loss above this many times the member's first loss is divergence too (docs/science.md,
# "Divergence"): lr 739 on digits reached 1.5e31 and would otherwise complete. The first loss
# counts as at least DIVERGENCE_FLOOR, so that a near-zero start does not make the bound tiny.
DIVERGENCE_FACTOR, DIVERGENCE_FLOOR = 1e6, 1e-3
FIXED_SUBSET_SEED = 20180101  # the probe and train-eval subsets are the same for every trial

# Sharpness: Lanczos stops when its top Ritz value moves by <= SHARPNESS_TOL (relative) twice.
SHARPNESS_TOL, SHARPNESS_ITERS, SHARPNESS_SEED = 1e-3, 60, 0
class Stepper(Protocol):
    """What updates the weights of the K members in the loop, at positions 0..K-1."""

    def begin_epoch(self, orders: list[torch.Tensor]) -> None:
        """This epoch's shuffle: orders[i] is member i's permutation of the n examples."""

    def step(self, x: torch.Tensor, y: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """One update of every member on its own batch: the rows orders[i][start:stop] of x
        (n, d) and y (n,) for member i; when that is all n rows (full batch), x and y as they
        are, without a gather. Returns the K mean training losses before the update, (K,) (or
        a scalar when K = 1), without a sync."""

    def set_lr(self, lrs: list[float]) -> None:
        """The members' learning rates from the next update on."""

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, positions: list[int]) -> list[tuple[float, float]]:
        """(mean loss, score) on (x, y) of the members at `positions`, in that order; the score
        is the accuracy (classification) or R^2 (regression)."""

    def noise_sums(self, x: torch.Tensor, y: torch.Tensor, positions: list[int], chunks: int) -> list[ChunkSums]:
        """The per-chunk gradient sums (science.noise.chunk_sums) of the members at `positions`
        on the probe (x, y), cut into `chunks` chunks by tensor_split."""

    def curvature_noise(self, x: torch.Tensor, y: torch.Tensor, positions: list[int],
                        grad_sq: list[tuple[float, float]], population: int, samples: int,
                        ) -> list[CurvatureNoiseEstimate]:
        """science.curvature_noise.curvature_noise_estimate of the members at `positions` on the
        probe (x, y), given each one's |G|^2 and its SE there."""

    def sharpness(self, x: torch.Tensor, y: torch.Tensor, positions: list[int],
                  starts: list[torch.Tensor | None]) -> list[SharpnessEstimate]:
        """science.sharpness.sharpness (the top Hessian eigenvalue of the mean loss on (x, y)) of
        the members at `positions`, each Lanczos run warm-started from its entry of `starts`."""

    def evaluate_examples(self, x: torch.Tensor, y: torch.Tensor,
                          positions: list[int]) -> list[tuple[float, float, torch.Tensor]]:
        """`evaluate` and the per-example losses (n,) of the same forward pass, forward only."""

    def keep(self, positions: list[int]) -> None:
        """Keep the members at `positions` (in this order) and drop the others."""

    def module(self, position: int) -> torch.nn.Module:
        """The member at `position` as an nn.Module of its own, at its current weights
        (optional: a stepper without it hands back no network, TrainResult.module = None)."""


def fixed_subset(n: int, size: int, device: torch.device) -> torch.Tensor:
    """Indices of a subset that is the same for every trial on the same data."""
    g = torch.Generator().manual_seed(FIXED_SUBSET_SEED)
    return torch.randperm(n, generator=g)[: min(size, n)].to(device)


@dataclass(eq=False)
class _Member:
    """One trial's own state beside its slice of the stepper."""

    index: int  # position in the configs list: the hook's first argument, the result's slot
    config: TrainConfig
    plan: BatchPlan
    shuffler: torch.Generator
    lr_target: float
    warmup_updates: int
    lr_now: float
    noise_size: int  # examples in its next noise probe; 0 = off
    history: list[EpochMetrics] = field(default_factory=list)
    compute_s: float = 0.0  # its share of the step time
    gpu_s: float = 0.0
    epoch_start_s: float = 0.0
    probe_s: float = 0.0  # its share of the noise probes
    target_s: float = 0.0  # its share of the target checks between epoch ends
    sharpness_s: float = 0.0  # its sharpness measurements
    sharpness_vector: torch.Tensor | None = None  # the last one's top Ritz vector: the next one's start
    eval_s: float = 0.0  # its share of the evaluations at its end: train subset, test, fixed-model loss noise (not val)
    fixed_loss_noise_slope: float | None = None  # at its final weights (science.noise.fixed_model_loss_noise)
    test: tuple[float, float] | None = None  # (loss, score) on the held-out test set, at the end
    noise: NoiseScaleEstimate | None = None  # the last noise measurement
    noise_update: int = -1  # ... at this update count
    noise_mark: tuple[int, int] = (0, 0)  # (updates, examples) at the last measurement
    noise_at_target: tuple[float, float] | None = None
    curvature: CurvatureNoiseEstimate | None = None  # the last B_noise measurement
    curvature_update: int = -1  # ... at this update count
    curvature_mark: tuple[int, int] = (0, 0)  # (updates, examples) at the last B_noise measurement
    curvature_s: float = 0.0  # its B_noise measurements (not in probe_s)
    curvature_at_target: CurvatureNoiseEstimate | None = None
    spent: float = 0.0  # modelled cost of its measurements so far (measure_share), example-equivalents
    evaluated: bool = False  # its end-of-training evaluations are charged (no longer reserved)
    target_pending: bool = False
    stop: bool = False  # reached its target with stop_at_target: its training ends at this update
    updates_to_target: int | None = None
    examples_to_target: int | None = None


class Loop:
    """The epoch/step loop over the members of `configs` (which agree on batch_size,
    drop_last, measure_every_epochs, probe_size, sharpness_every, sharpness_size and
    eval_size). Build the stepper with `lrs`, the members' learning rates at the first
    update, then call `run` once.

    `on_epoch(i, metrics)` is called after each of member i's epochs; if it raises an
    Exception, member i leaves and its result is that exception. Any other BaseException
    (Ctrl-C) stops the whole loop.

    Times: the step time is split evenly among the members in the loop while it ran, so a
    member's compute_time_s, epoch_time_s and gpu_time_s are its share; probe_time_s is its
    share of the noise probes it took part in, target_time_s of the target checks between
    epoch ends; sharpness_time_s its own sharpness measurements; eval_time_s its share of the
    evaluations at its end (train subset, test, fixed-model loss noise; the validation pass is not a measurement).

    The task is `getattr(data, "task", "classification")`: "regression" trains on the mean
    squared error and scores R^2 (`loss_function`).
    """

    def __init__(self, configs: list[TrainConfig], data: Dataset,
                 on_epoch: Callable[[int, EpochMetrics], None] | None = None):
        self.wall_start = time.perf_counter()
        self.data, self.on_epoch = data, on_epoch
        self.device = device = data.x_train.device
        x, y, n = data.x_train, data.y_train, data.n_train
        first = configs[0]
        self.task = getattr(data, "task", "classification")
        self.loss_fn = loss_function(self.task, first.loss)
        order = fixed_subset(n, n, device)  # the fixed order: every probe and subset is a prefix of it
        eval_idx = order[: first.eval_size]
        self.x_eval, self.y_eval = x[eval_idx], y[eval_idx]
        self.probe_order = order
        self.auto_probe = first.probe_size == "auto"
        noise_size = auto_probe_size(n, None) if self.auto_probe else min(first.probe_size, n)
        if noise_size < 4:  # off (0), or too few examples for a standard error
            noise_size = 0
        # The end-of-training evaluations, reserved in the measurement budget from the start.
        self.end_eval_cost = eval_cost(len(eval_idx)) + eval_cost(data.n_test)
        self.sharpness_probe = None
        if first.sharpness_every > 0:
            sharp_idx = order[: first.sharpness_size]
            self.sharpness_probe = x[sharp_idx], y[sharp_idx]

        self.members: list[_Member] = []
        for i, c in enumerate(configs):
            plan = BatchPlan.of(n, c)
            warmup = round(c.warmup_epochs * plan.iterations_per_epoch)
            self.members.append(_Member(
                index=i,
                config=c,
                plan=plan,
                shuffler=torch.Generator(device=device).manual_seed(c.seed),
                noise_size=noise_size,
                lr_target=c.effective_lr,
                warmup_updates=warmup,
                lr_now=lr_at(0, c.lr, c.effective_lr, warmup),
                target_pending=c.target_val_acc is not None,
            ))
        self.plan = max((m.plan for m in self.members), key=lambda p: p.total_updates)  # the longest
        self.max_warmup = max(m.warmup_updates for m in self.members)
        self.results: list[TrainResult | Exception | None] = [None] * len(configs)
        self.timer = StepTimer(device)
        self.gpu = GpuMonitor(device)  # NVML's utilisation and memory, on a GPU with the extra `gpu`
        self.charged = (0.0, 0.0)  # compute and GPU time already split among members
        self.updates = self.examples = 0
        self.next_due = 0  # the next update count at which a probe, a target or an ending may be due
        self.losses: list[torch.Tensor] = []  # this epoch's step losses, one tensor of K per update
        self.checked = 0  # losses already checked for NaN/inf
        self.loss_bound: torch.Tensor | None = None  # (members,): DIVERGENCE_FACTOR x each first loss
        self.updates_before = 0  # updates before this epoch
        self.examples_before = 0  # examples before this epoch
        self.stepper: Stepper | None = None
        # The last validation pass: (update count, {member: (loss, score)}). A target check and the
        # epoch end at the same update count share it: the weights have not moved in between.
        self.val_at: tuple[int, dict[_Member, tuple[float, float]]] = (-1, {})

    @property
    def lrs(self) -> list[float]:
        """The members' learning rates at the first update (warmup's start)."""
        return [m.lr_now for m in self.members]

    def run(self, stepper: Stepper) -> list[TrainResult | Exception]:
        """Train; one result per config, in their order: a TrainResult, or the Exception
        (Diverged, the hook's) that ended the member."""
        self.stepper = stepper
        reset_peak_memory(self.device)
        self.gpu.start()
        try:
            return self._epochs(stepper)
        finally:
            self.gpu.stop()

    def _epochs(self, stepper: Stepper) -> list[TrainResult | Exception]:
        step = stepper.step
        x, y, n, plan = self.data.x_train, self.data.y_train, self.data.n_train, self.plan
        self.next_due = self._next_due()
        for epoch in range(1, plan.epochs + 1):
            if not self.members:
                break
            self.losses = losses = []  # a member leaving edits it in place
            self.checked, self.updates_before, self.examples_before = 0, self.updates, self.examples
            for m in self.members:
                m.epoch_start_s = m.compute_s
            self.timer.start()  # the shuffle is part of an epoch's training work
            stepper.begin_epoch([torch.randperm(n, generator=m.shuffler, device=self.device) for m in self.members])
            for start, stop in plan.batches(epoch, self.examples, self.updates):
                losses.append(step(x, y, start, stop))
                self.updates += 1
                self.examples += stop - start
                if self.updates <= self.max_warmup:
                    self._warm_up()
                if len(losses) - self.checked >= FINITE_CHECK_EVERY:
                    self._check_finite(epoch, timed=True)
                    if not self.members:
                        break
                if self.updates >= self.next_due:
                    self._due(epoch)
                    if not self.members:
                        break
            self.timer.stop()
            if self.members:
                self._end_epoch(epoch, list(self.members))
        return self.results

    # -- the schedule ----------------------------------------------------------------------

    def _warm_up(self) -> None:
        for m in self.members:
            m.lr_now = lr_at(min(self.updates, m.warmup_updates), m.config.lr, m.lr_target, m.warmup_updates)
        self.stepper.set_lr([m.lr_now for m in self.members])

    def _next_due(self) -> int:
        """The first update after this one at which a target check or a member's end can fall.
        Members only leave and targets only stop pending, so a value computed earlier is never
        later than the true one."""
        u = self.updates
        due = self.plan.total_updates + 1  # never, unless a member's end or target comes first
        for m in self.members:
            if m.plan.total_updates > u:
                due = min(due, m.plan.total_updates)
            if m.target_pending:
                due = min(due, (u // m.config.target_every + 1) * m.config.target_every)
        return due

    def _due(self, epoch: int) -> None:
        """What falls at this update: the target checks every target_every updates, and the
        epoch end of members whose training ends mid-epoch."""
        u = self.updates
        targets = [m for m in self.members if m.target_pending and u % m.config.target_every == 0]
        if targets:
            self.timer.stop()
            self._check_targets(targets)
            self.timer.start()
        ending = [m for m in self.members if m.stop or m.plan.total_updates == u]
        if ending and u < self.plan.total_updates:  # the loop's last update ends its epoch anyway
            self.timer.stop()
            self._end_epoch(epoch, ending)
            self.timer.start()
        self.next_due = self._next_due()

    # -- members leaving -------------------------------------------------------------------

    def _charge(self) -> None:
        """Split the step time since the last call evenly among the members in the loop.
        Called with the timer stopped, before the members change."""
        gpu = self.timer.gpu_time_s or 0.0
        if self.members:
            k = len(self.members)
            for m in self.members:
                m.compute_s += (self.timer.compute_time_s - self.charged[0]) / k
                m.gpu_s += (gpu - self.charged[1]) / k
        self.charged = (self.timer.compute_time_s, gpu)

    def _leave(self, leaving: dict[_Member, TrainResult | Exception]) -> None:
        """These members leave; their result slots get what they hold."""
        if not leaving:
            return
        self._charge()
        for m, result in leaving.items():
            self.results[m.index] = result
        keep = [pos for pos, m in enumerate(self.members) if m not in leaving]
        self.members = [self.members[pos] for pos in keep]
        if self.members:
            self.stepper.keep(keep)
            if self.losses:
                self.losses[:] = self._step_losses()[:, keep].unbind(0)
            if self.loss_bound is not None:
                self.loss_bound = self.loss_bound[keep]
            self.max_warmup = max(m.warmup_updates for m in self.members)

    def _step_losses(self, first: int = 0) -> torch.Tensor:
        """This epoch's step losses from its update `first` on, (updates, members)."""
        chunk = torch.stack(self.losses[first:])
        return chunk.view(chunk.shape[0], -1)

    def _check_finite(self, epoch: int, timed: bool) -> None:
        """Members with a NaN/inf among the unchecked losses, or a loss above their bound
        (DIVERGENCE_FACTOR x their first loss), leave with Diverged; one sync."""
        if len(self.losses) <= self.checked:
            return
        chunk = self._step_losses(self.checked)
        if self.loss_bound is None:  # the first check: row 0 is every member's first update
            self.loss_bound = DIVERGENCE_FACTOR * chunk[0].detach().clamp(min=DIVERGENCE_FLOOR)
        bad = ~torch.isfinite(chunk) | (chunk > self.loss_bound)
        first_new, self.checked = self.checked, len(self.losses)
        if not bool(bad.any()):
            return
        diverged = {}
        for pos in bad.any(dim=0).nonzero().flatten().tolist():
            row = int(bad[:, pos].nonzero()[0, 0])
            update = self.updates_before + first_new + row + 1
            value, bound = float(chunk[row, pos]), float(self.loss_bound[pos])
            diverged[self.members[pos]] = Diverged(update, epoch, value, bound if math.isfinite(value) else None)
        if timed:
            self.timer.stop()
        self._leave(diverged)
        if timed:
            self.timer.start()

    # -- per-member work, outside the timed steps -----------------------------------------

    def _evaluate(self, members: list[_Member], x: torch.Tensor, y: torch.Tensor) -> list[tuple[float, float]]:
        return self.stepper.evaluate(x, y, [self.members.index(m) for m in members])

    def _left(self, m: _Member, last: bool) -> float:
        """Example-equivalents member m may still spend on a measurement (the module's docstring):
        measure_share of its steps' modelled cost so far, less what it spent, less its end-of-training
        evaluations until they are charged; before its end (`last` False) also less the rest of what
        its end will want at full size (`_end_reserve`). inf with measure_share "all"."""
        share = m.config.measure_share
        if share == "all":
            return math.inf
        reserve = 0.0 if m.evaluated else self.end_eval_cost
        if not last:
            reserve += self._end_reserve(m)
        return share * step_cost(self.updates, self.examples) - m.spent - reserve

    def _end_reserve(self, m: _Member) -> float:
        """The modelled cost of member m's end-of-training measurements at full size, beside the
        evaluations: the noise probe, B_noise, the fixed-model loss noise and a sharpness of
        SHARPNESS_MIN_ITERS Lanczos steps. The end comes first: a measurement before it runs only
        where these still fit after it."""
        cost = LOSS_NOISE_COST
        if m.noise_size:
            cost += probe_cost(m.noise_size) + (curvature_cost(m.noise_size, m.config.b_noise_samples)
                                                if m.config.b_noise_samples else 0.0)
        if self.sharpness_probe is not None:
            cost += sharpness_cost(len(self.sharpness_probe[1]), SHARPNESS_MIN_ITERS)
        return cost

    def _noise_due(self, m: _Member, epoch: int, final: bool) -> bool:
        """Whether member m's epoch end measures the gradient noise scale (see the module's
        docstring): always at its end; else every measure_every_epochs epochs, or with "auto"
        once the probe's modelled cost is <= PROBE_COST_SHARE of the steps' since the last."""
        if not m.noise_size:
            return False
        every = m.config.measure_every_epochs
        if final:
            return True
        if every != "auto":
            return epoch % every == 0
        updates, examples = m.noise_mark
        since = step_cost(self.updates - updates, self.examples - examples)
        return PROBE_COST_SHARE * since >= probe_cost(m.noise_size)

    def _curvature_due(self, m: _Member, epoch: int, final: bool) -> bool:
        """Whether member m's epoch end measures B_noise (see the module's docstring): always at
        its end; with an int measure_every_epochs at every probe; with "auto" once its modelled
        cost is <= PROBE_COST_SHARE of the steps' since its last."""
        if not (m.noise_size and m.config.b_noise_samples):
            return False
        if final:
            return True
        every = m.config.measure_every_epochs
        if every != "auto":
            return epoch % every == 0
        updates, examples = m.curvature_mark
        since = step_cost(self.updates - updates, self.examples - examples)
        return PROBE_COST_SHARE * since >= curvature_cost(m.noise_size, m.config.b_noise_samples)

    def _measure_noise(self, members: list[_Member], curvature: list[_Member] = (),
                       last: list[_Member] = ()) -> None:
        """Noise measurement of these members, at most once per update count, within their
        measurement budgets (those in `last`, at their end or target, on a probe halved to fit):
        members with the same probe size share one pass (the stepper's noise_sums); the time is
        split among the members measured. Those also in `curvature` measure B_noise on the same
        probe where it fits too, each timed to itself (curvature_s, apart from probe_s)."""
        sizes: dict[_Member, int] = {}
        for m in members:
            if not m.noise_size or m.noise_update == self.updates:
                continue
            left = self._left(m, m in last)
            size = sized(m.noise_size, lambda s, left=left: probe_cost(s) <= left, m in last)
            if size:
                sizes[m] = size
                m.spent += probe_cost(size)
        members = list(sizes)
        curvature = [m for m in curvature if m in sizes and m.config.b_noise_samples]
        if not members:
            return
        t0 = time.perf_counter()
        n = self.data.n_train
        by_size: dict[int, list[_Member]] = {}
        for m in members:
            by_size.setdefault(sizes[m], []).append(m)
        for size, group in by_size.items():
            idx = self.probe_order[:size]
            sums = self.stepper.noise_sums(self.data.x_train[idx], self.data.y_train[idx],
                                           [self.members.index(m) for m in group], PROBE_CHUNKS)
            for m, chunk in zip(group, sums):
                m.noise = estimate_from_sums(chunk, population=n)
                m.noise_update, m.noise_mark = self.updates, (self.updates, self.examples)
                if self.auto_probe:
                    m.noise_size = auto_probe_size(n, m.noise)
        share = (time.perf_counter() - t0) / len(members)
        for m in members:
            m.probe_s += share
        for m in curvature:
            cost = curvature_cost(m.noise.probe_size, m.config.b_noise_samples)
            if cost > self._left(m, m in last):
                continue
            m.spent += cost
            t0 = time.perf_counter()
            idx = self.probe_order[:m.noise.probe_size]
            (m.curvature,) = self.stepper.curvature_noise(
                self.data.x_train[idx], self.data.y_train[idx], [self.members.index(m)],
                [(m.noise.grad_sq_norm, m.noise.grad_sq_norm_se)], n, m.config.b_noise_samples)
            m.curvature_update, m.curvature_mark = self.updates, (self.updates, self.examples)
            m.curvature_s += time.perf_counter() - t0

    def _measure_sharpness(self, members: list[_Member], last: list[_Member]) -> dict[_Member, float]:
        """Sharpness of these members on the fixed sharpness probe, within their measurement
        budgets (those in `last` on a prefix of the probe halved to fit; Lanczos capped at the
        steps that fit, at least SHARPNESS_MIN_ITERS), each timed to itself, each Lanczos run
        warm-started from the member's last top Ritz vector."""
        out = {}
        x, y = self.sharpness_probe
        full = len(y)
        for m in members:
            left = self._left(m, m in last)

            def fits(size: int, left: float = left) -> bool:
                return sharpness_cost(size, SHARPNESS_MIN_ITERS) <= left

            size = sized(full, fits, m in last)
            if not size:
                continue
            iters = sharpness_iters(size, left, SHARPNESS_ITERS)
            t0 = time.perf_counter()
            (est,) = self.stepper.sharpness(x[:size], y[:size], [self.members.index(m)], [m.sharpness_vector], iters)
            out[m], m.sharpness_vector = est.eigenvalue, est.vector
            m.spent += sharpness_cost(size, est.iterations)
            m.sharpness_s += time.perf_counter() - t0
        return out

    def _check_targets(self, members: list[_Member], val_accs: list[float] | None = None) -> None:
        """Record the first update count at which a member's val_acc >= its target; a member
        with stop_at_target then stops. Without val_accs they are evaluated here, in one pass
        whose time is split among these members."""
        if val_accs is None:
            t0 = time.perf_counter()
            evaluated = self._evaluate(members, self.data.x_val, self.data.y_val)
            self.val_at = (self.updates, dict(zip(members, evaluated)))
            val_accs = [acc for _, acc in evaluated]
            share = (time.perf_counter() - t0) / len(members)
            for m in members:
                m.target_s += share
        reached = [m for m, val_acc in zip(members, val_accs) if val_acc >= m.config.target_val_acc]
        for m in reached:
            m.updates_to_target, m.examples_to_target, m.target_pending = self.updates, self.examples, False
            m.stop = m.config.stop_at_target
        self._measure_noise(reached, reached, reached)  # the noise scales where the target is first reached
        for m in reached:
            if m.noise_update == self.updates:
                m.noise_at_target = (m.noise.simple, m.noise.simple_se)
            if m.curvature_update == self.updates:
                m.curvature_at_target = m.curvature

    def _end_epoch(self, epoch: int, members: list[_Member]) -> None:
        """Epoch end for these members (all, or those whose training ends mid-epoch):
        divergence check, evaluation, targets, probe, metrics, hook; then the members whose
        hook raised, whose budget is spent or who stop at their target leave."""
        self._charge()
        self._check_finite(epoch, timed=False)
        members = [m for m in members if m in self.members]
        if not members:  # all diverged
            return
        # Validation and targets first: they decide whether training ends here.
        val_eval = self._validate(members)  # not a measurement: its time is neither eval_s nor budgeted
        pending = [m for m in members if m.target_pending]
        if pending:
            self._check_targets(pending, [val_eval[m][1] for m in pending])
        ending = {m: m.stop or m.plan.total_updates == self.updates for m in members}
        last = [m for m in members if ending[m]]
        train_eval, example_losses = self._evaluate_train(members, ending)
        evaluated = {m: train_eval[m] + val_eval[m] for m in members}
        curvature = [m for m in members if self._curvature_due(m, epoch, ending[m])]
        self._measure_noise([m for m in members if self._noise_due(m, epoch, ending[m]) or m in curvature],
                            curvature, last)
        loss_noise_fits = set()  # the fixed-model loss noise of members ending here, where it fits
        for m in last:
            if LOSS_NOISE_COST <= self._left(m, True):
                m.spent += LOSS_NOISE_COST
                loss_noise_fits.add(m)
        sharp = {}
        if self.sharpness_probe is not None:
            every = members[0].config.sharpness_every
            sharp = self._measure_sharpness([m for m in members if ending[m] or epoch % every == 0], last)
        step_losses = self._step_losses()
        n, batch_size = self.data.n_train, self.plan.batch_size
        short_last = self.examples - self.examples_before < len(self.losses) * batch_size
        leaving: dict[_Member, TrainResult | Exception] = {}
        for m in members:
            train_loss, train_acc, val_loss, val_acc = evaluated[m]
            noise = m.noise if m.noise_update == self.updates else None
            curv = m.curvature if m.curvature_update == self.updates else None
            sharpness = sharp.get(m)
            metrics = EpochMetrics(
                epoch=epoch,
                train_loss=train_loss,
                train_acc=train_acc,
                val_loss=val_loss,
                val_acc=val_acc,
                gen_gap=train_acc - val_acc,
                loss_noise=loss_noise(step_losses[:, self.members.index(m)], short_last),
                grad_noise_scale=None if noise is None else noise.simple,
                noise_temperature=noise_temperature(m.lr_now, n, batch_size, m.config.effective_momentum),
                lr=m.lr_now,
                updates=self.updates,
                examples_seen=self.examples,
                epoch_time_s=m.compute_s - m.epoch_start_s,
                grad_noise_scale_se=None if noise is None else noise.simple_se,
                grad_noise_scale_bound=None if noise is None else float(noise.bound),
                sharpness=sharpness,
                lr_sharpness=None if sharpness is None else m.lr_now * sharpness,
                b_noise=None if curv is None else curv.b_noise,
                b_noise_se=None if curv is None else curv.b_noise_se,
                eps_max=None if curv is None else curv.eps_max,
                eps_max_se=None if curv is None else curv.eps_max_se,
                task=self.task,
            )
            m.history.append(metrics)
            try:
                if self.on_epoch is not None:
                    self.on_epoch(m.index, metrics)
            except Exception as e:  # a pruner's signal, or a failure of this trial alone
                leaving[m] = e
                continue
            if ending[m]:
                t0 = time.perf_counter()
                if m in loss_noise_fits:
                    self._measure_fixed_loss_noise(m, example_losses[m])
                self._evaluate_test(m)
                m.eval_s += time.perf_counter() - t0
                leaving[m] = self._result(m)
        self._leave(leaving)

    def _validate(self, members: list[_Member]) -> dict[_Member, tuple[float, float]]:
        """(val loss, score) of these members: a target check's pass at this update count is
        reused (one validation pass per update count), the others in one pass."""
        at, cached = self.val_at
        out = {m: cached[m] for m in members if at == self.updates and m in cached}
        fresh = [m for m in members if m not in out]
        if fresh:
            evaluated = self._evaluate(fresh, self.data.x_val, self.data.y_val)
            self.val_at = (self.updates, dict(zip(fresh, evaluated)))
            out.update(zip(fresh, evaluated))
        return out

    def _evaluate_train(self, members: list[_Member], ending: dict[_Member, bool],
                        ) -> tuple[dict[_Member, tuple[float, float]], dict[_Member, torch.Tensor]]:
        """(train loss, score) of these members on the fixed train-evaluation subset; for those
        whose training ends here also the per-example losses of the same forward pass (the
        fixed-model loss noise reads them)."""
        out, examples = {}, {}
        going = [m for m in members if not ending[m]]
        if going:
            out.update(zip(going, self._evaluate(going, self.x_eval, self.y_eval)))
        by_size: dict[int, list[_Member]] = {}
        full, test = len(self.y_eval), eval_cost(self.data.n_test)
        for m in members:
            if ending[m]:  # a prefix of the subset halved to fit the budget, never below MEASURE_FLOOR
                room = self._left(m, True) + self.end_eval_cost - test
                size = halved(full, lambda s, room=room: eval_cost(s) <= room) or min(MEASURE_FLOOR, full)
                m.spent += eval_cost(size) + test
                m.evaluated = True
                by_size.setdefault(size, []).append(m)
        for size, ends in by_size.items():
            t0 = time.perf_counter()
            found = self.stepper.evaluate_examples(self.x_eval[:size], self.y_eval[:size],
                                                   [self.members.index(m) for m in ends])
            for m, (loss, score, losses) in zip(ends, found):
                out[m], examples[m] = (loss, score), losses
            for m in ends:
                m.eval_s += (time.perf_counter() - t0) / len(ends)
        return out, examples

    def _measure_fixed_loss_noise(self, m: _Member, losses: torch.Tensor) -> None:
        """The loss-noise slope of this member's final weights over a grid of B, from the
        per-example losses of its last pass over the fixed train-evaluation subset."""
        curve = fixed_model_loss_noise(losses)
        if len(curve) >= 2 and all(v > 0 for v in curve.values()):  # else: too few examples, or no spread
            m.fixed_loss_noise_slope = loglog_slope(list(curve), list(curve.values()))

    def _evaluate_test(self, m: _Member) -> None:
        """The held-out test set, once, at the member's final weights (never seen by pruning or
        the sampler); nothing when the data has none."""
        if self.data.n_test > 0:
            (m.test,) = self._evaluate([m], self.data.x_test, self.data.y_test)

    def _result(self, m: _Member) -> TrainResult:
        network = getattr(self.stepper, "module", None)
        return TrainResult(
            history=m.history,
            plan=m.plan,
            lr=m.lr_target,
            compute_time_s=m.compute_s,
            gpu_time_s=m.gpu_s if self.timer.gpu_time_s is not None else None,
            wall_time_s=time.perf_counter() - self.wall_start,
            probe_time_s=m.probe_s,
            peak_mem_mb=peak_memory_mb(self.device),
            updates_to_target=m.updates_to_target,
            examples_to_target=m.examples_to_target,
            noise_at_target=m.noise_at_target,
            curvature_at_target=None if m.curvature_at_target is None else (
                m.curvature_at_target.b_noise, m.curvature_at_target.b_noise_se,
                m.curvature_at_target.eps_max, m.curvature_at_target.eps_max_se),
            curvature_time_s=m.curvature_s,
            target_time_s=m.target_s,
            sharpness_time_s=m.sharpness_s,
            eval_time_s=m.eval_s,
            fixed_model_loss_noise_slope=m.fixed_loss_noise_slope,
            test=m.test,
            gpu=self.gpu.summary(),
            module=None if network is None else network(self.members.index(m)),
        )
