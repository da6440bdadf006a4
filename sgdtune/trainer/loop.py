"""The training loop: one epoch/step loop for K >= 1 trials trained side by side.

A member is one trial: its config, shuffle order, learning-rate schedule, noise meter,
target, metrics and result. What updates the weights is a `Stepper`, the only part that
differs between one nn.Module stepped by torch.optim (module_step.py, K = 1) and K MLPs
stacked along a leading axis (stacked.py). Everything else is here, once for every K: the
timed shuffle, warmup, the finite check every FINITE_CHECK_EVERY updates, the cadence of
noise probes and target checks, evaluation at epoch end, EpochMetrics and TrainResult.

A member leaves the loop (the stepper drops its slice) when its budget is spent, when its
hook raises an Exception (a pruner), or when its loss turns non-finite; the others go on
unchanged. The members share one sequence of batch slices (the longest member's plan: a
shorter budget is a prefix of it), each slice taken from the member's own permutation.

Per update the loop does one stepper.step and a few integer comparisons, with no tensor op
of its own and no sync but the finite check's, once per FINITE_CHECK_EVERY updates: probes,
target checks and members ending mid-epoch are due at update counts known in advance
(`_next_due`), so nothing is scanned member by member between them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ..data import Dataset
from ..science.noise import GradientStats, NoiseScaleMeter, loss_noise, noise_temperature
from ..timing import StepTimer, peak_memory_mb, reset_peak_memory
from .config import BatchPlan, TrainConfig, lr_at
from .results import Diverged, EpochMetrics, TrainResult

FINITE_CHECK_EVERY = 32  # updates between NaN/inf checks: one cheap sync per 32 steps
FIXED_SUBSET_SEED = 20180101  # the probe and train-eval subsets are the same for every trial


class Stepper(Protocol):
    """What updates the weights of the K members in the loop, at positions 0..K-1."""

    def begin_epoch(self, orders: list[torch.Tensor]) -> None:
        """This epoch's shuffle: orders[i] is member i's permutation of the n examples."""

    def step(self, x: torch.Tensor, y: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """One update of every member on its own batch: the rows orders[i][start:stop] of x
        (n, d) and y (n,) for member i; when that is all n rows (full batch), x and y as they
        are, without a gather. Returns the K mean cross-entropies before the update, (K,) (or
        a scalar when K = 1), without a sync."""

    def set_lr(self, lrs: list[float]) -> None:
        """The members' learning rates from the next update on."""

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, positions: list[int]) -> list[tuple[float, float]]:
        """(mean cross-entropy, accuracy) on (x, y) of the members at `positions`, in that order."""

    def gradient_stats(self, x: torch.Tensor, y: torch.Tensor) -> list[GradientStats]:
        """Every member's per-example gradient statistics on the probe batch (x, y)."""

    def keep(self, positions: list[int]) -> None:
        """Keep the members at `positions` (in this order) and drop the others."""


def fixed_subset(n: int, size: int, device: torch.device) -> torch.Tensor:
    """Indices of a subset that is the same for every trial on the same data."""
    g = torch.Generator().manual_seed(FIXED_SUBSET_SEED)
    return torch.randperm(n, generator=g)[: min(size, n)].to(device)


def probe_at_epoch_end(updates: int, last_probe: int, measure_every: int, final: bool) -> bool:
    """Whether an epoch end runs the noise probe: once a tenth of measure_every updates has
    passed since the last probe, and always at the end of training. With only a few updates
    per epoch (large B), probing every epoch would cost more than the training itself."""
    return final or updates - max(last_probe, 0) >= -(-measure_every // 10)


@dataclass(eq=False)
class _Member:
    """One trial's own state beside its slice of the stepper."""

    index: int  # position in the configs list: the hook's first argument, the result's slot
    config: TrainConfig
    plan: BatchPlan
    shuffler: torch.Generator
    meter: NoiseScaleMeter | None  # the EMA of docs/science.md, section 3, fed by the probes
    lr_target: float
    warmup_updates: int
    lr_now: float
    history: list[EpochMetrics] = field(default_factory=list)
    compute_s: float = 0.0  # its share of the step time
    gpu_s: float = 0.0
    epoch_start_s: float = 0.0
    probe_s: float = 0.0  # its share of the noise probes and target checks
    last_probe: int = -1
    target_pending: bool = False
    stop: bool = False  # reached its target with stop_at_target: its training ends at this update
    updates_to_target: int | None = None
    examples_to_target: int | None = None


class Loop:
    """The epoch/step loop over the members of `configs` (which agree on batch_size,
    drop_last, measure_every, probe_size and eval_size). Build the stepper with `lrs`, the
    members' learning rates at the first update, then call `run` once.

    `on_epoch(i, metrics)` is called after each of member i's epochs; if it raises an
    Exception, member i leaves and its result is that exception. Any other BaseException
    (Ctrl-C) stops the whole loop.

    Times: the step time is split evenly among the members in the loop while it ran, so a
    member's compute_time_s, epoch_time_s and gpu_time_s are its share; probe_time_s is its
    share of the noise probes and target checks it took part in.
    """

    def __init__(self, configs: list[TrainConfig], data: Dataset,
                 on_epoch: Callable[[int, EpochMetrics], None] | None = None):
        self.wall_start = time.perf_counter()
        self.data, self.on_epoch = data, on_epoch
        self.device = device = data.x_train.device
        x, y, n = data.x_train, data.y_train, data.n_train
        first = configs[0]
        self.measure_every = first.measure_every
        eval_idx = fixed_subset(n, first.eval_size, device)
        self.x_eval, self.y_eval = x[eval_idx], y[eval_idx]
        self.probe = None
        if first.probe_size >= 2:
            probe_idx = fixed_subset(n, first.probe_size, device)
            self.probe = x[probe_idx], y[probe_idx]

        self.members: list[_Member] = []
        for i, c in enumerate(configs):
            plan = BatchPlan.of(n, c)
            warmup = round(c.warmup_epochs * plan.iterations_per_epoch)
            self.members.append(_Member(
                index=i,
                config=c,
                plan=plan,
                shuffler=torch.Generator(device=device).manual_seed(c.seed),
                meter=NoiseScaleMeter(None, None) if self.probe is not None else None,  # fed by update()
                lr_target=c.effective_lr,
                warmup_updates=warmup,
                lr_now=lr_at(0, c.lr, c.effective_lr, warmup),
                target_pending=c.target_val_acc is not None,
            ))
        self.plan = max((m.plan for m in self.members), key=lambda p: p.total_updates)  # the longest
        self.max_warmup = max(m.warmup_updates for m in self.members)
        self.results: list[TrainResult | Exception | None] = [None] * len(configs)
        self.timer = StepTimer(device)
        self.charged = (0.0, 0.0)  # compute and GPU time already split among members
        self.updates = self.examples = 0
        self.next_due = 0  # the next update count at which a probe, a target or an ending may be due
        self.losses: list[torch.Tensor] = []  # this epoch's step losses, one tensor of K per update
        self.checked = 0  # losses already checked for NaN/inf
        self.updates_before = 0  # updates before this epoch
        self.stepper: Stepper | None = None

    @property
    def lrs(self) -> list[float]:
        """The members' learning rates at the first update (warmup's start)."""
        return [m.lr_now for m in self.members]

    def run(self, stepper: Stepper) -> list[TrainResult | Exception]:
        """Train; one result per config, in their order: a TrainResult, or the Exception
        (Diverged, the hook's) that ended the member."""
        self.stepper = stepper
        step = stepper.step
        x, y, n, plan = self.data.x_train, self.data.y_train, self.data.n_train, self.plan
        reset_peak_memory(self.device)
        self.next_due = self._next_due()
        for epoch in range(1, plan.epochs + 1):
            if not self.members:
                break
            self.losses = losses = []  # a member leaving edits it in place
            self.checked, self.updates_before = 0, self.updates
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
        """The first update after this one at which a probe, a target check or a member's end
        can fall. Members only leave and targets only stop pending, so a value computed
        earlier is never later than the true one."""
        u = self.updates
        due = (u // self.measure_every + 1) * self.measure_every
        for m in self.members:
            if m.plan.total_updates > u:
                due = min(due, m.plan.total_updates)
            if m.target_pending:
                due = min(due, (u // m.config.target_every + 1) * m.config.target_every)
        return due

    def _due(self, epoch: int) -> None:
        """What falls at this update: the probe every measure_every updates, the target checks
        every target_every, and the epoch end of members whose training ends mid-epoch."""
        u = self.updates
        targets = [m for m in self.members if m.target_pending and u % m.config.target_every == 0]
        if u % self.measure_every == 0 or targets:
            self.timer.stop()
            if u % self.measure_every == 0:
                self._probe(self.members)
            if targets:
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
            self.max_warmup = max(m.warmup_updates for m in self.members)

    def _step_losses(self, first: int = 0) -> torch.Tensor:
        """This epoch's step losses from its update `first` on, (updates, members)."""
        chunk = torch.stack(self.losses[first:])
        return chunk.view(chunk.shape[0], -1)

    def _check_finite(self, epoch: int, timed: bool) -> None:
        """Members with a NaN/inf among the unchecked losses leave with Diverged; one sync."""
        if len(self.losses) <= self.checked:
            return
        chunk = self._step_losses(self.checked)
        bad = ~torch.isfinite(chunk)
        first_new, self.checked = self.checked, len(self.losses)
        if not bool(bad.any()):
            return
        diverged = {}
        for pos in bad.any(dim=0).nonzero().flatten().tolist():
            row = int(bad[:, pos].nonzero()[0, 0])
            update = self.updates_before + first_new + row + 1
            diverged[self.members[pos]] = Diverged(update, epoch, float(chunk[row, pos]))
        if timed:
            self.timer.stop()
        self._leave(diverged)
        if timed:
            self.timer.start()

    # -- per-member work, outside the timed steps -----------------------------------------

    def _evaluate(self, members: list[_Member], x: torch.Tensor, y: torch.Tensor) -> list[tuple[float, float]]:
        return self.stepper.evaluate(x, y, [self.members.index(m) for m in members])

    def _probe(self, members: list[_Member]) -> None:
        """Noise probe of these members, at most once per update count. One pass serves all
        members; its time is split among the members probed."""
        members = [m for m in members if m.meter is not None and m.last_probe != self.updates]
        if not members:
            return
        t0 = time.perf_counter()
        stats = self.stepper.gradient_stats(*self.probe)
        for m in members:
            m.last_probe = self.updates
            m.meter.update(stats[self.members.index(m)])
        share = (time.perf_counter() - t0) / len(members)
        for m in members:
            m.probe_s += share

    def _check_targets(self, members: list[_Member], val_accs: list[float] | None = None) -> None:
        """Record the first update count at which a member's val_acc >= its target; a member
        with stop_at_target then stops. Without val_accs they are evaluated here, in one pass
        whose time is split among these members."""
        if val_accs is None:
            t0 = time.perf_counter()
            val_accs = [acc for _, acc in self._evaluate(members, self.data.x_val, self.data.y_val)]
            share = (time.perf_counter() - t0) / len(members)
            for m in members:
                m.probe_s += share
        for m, val_acc in zip(members, val_accs):
            if val_acc >= m.config.target_val_acc:
                m.updates_to_target, m.examples_to_target, m.target_pending = self.updates, self.examples, False
                m.stop = m.config.stop_at_target

    def _end_epoch(self, epoch: int, members: list[_Member]) -> None:
        """Epoch end for these members (all, or those whose training ends mid-epoch):
        divergence check, evaluation, targets, probe, metrics, hook; then the members whose
        hook raised, whose budget is spent or who stop at their target leave."""
        self._charge()
        self._check_finite(epoch, timed=False)
        members = [m for m in members if m in self.members]
        if not members:  # all diverged
            return
        # Evaluation and targets first: they decide whether training ends here.
        train_eval = self._evaluate(members, self.x_eval, self.y_eval)
        val_eval = self._evaluate(members, self.data.x_val, self.data.y_val)
        evaluated = {m: t + v for m, t, v in zip(members, train_eval, val_eval)}
        pending = [m for m in members if m.target_pending]
        if pending:
            self._check_targets(pending, [evaluated[m][3] for m in pending])
        self._probe([m for m in members if probe_at_epoch_end(
            self.updates, m.last_probe, m.config.measure_every, m.stop or m.plan.total_updates == self.updates)])
        step_losses = self._step_losses()
        n, batch_size = self.data.n_train, self.plan.batch_size
        leaving: dict[_Member, TrainResult | Exception] = {}
        for m in members:
            train_loss, train_acc, val_loss, val_acc = evaluated[m]
            metrics = EpochMetrics(
                epoch=epoch,
                train_loss=train_loss,
                train_acc=train_acc,
                val_loss=val_loss,
                val_acc=val_acc,
                gen_gap=train_acc - val_acc,
                loss_noise=loss_noise(step_losses[:, self.members.index(m)]),
                grad_noise_scale=m.meter.value if m.meter is not None else None,
                noise_temperature=noise_temperature(m.lr_now, n, batch_size, m.config.effective_momentum),
                lr=m.lr_now,
                updates=self.updates,
                examples_seen=self.examples,
                epoch_time_s=m.compute_s - m.epoch_start_s,
            )
            m.history.append(metrics)
            try:
                if self.on_epoch is not None:
                    self.on_epoch(m.index, metrics)
            except Exception as e:  # a pruner's signal, or a failure of this trial alone
                leaving[m] = e
                continue
            if m.stop or m.plan.total_updates == self.updates:
                leaving[m] = self._result(m)
        self._leave(leaving)

    def _result(self, m: _Member) -> TrainResult:
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
        )
