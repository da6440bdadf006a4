"""The trainer: plain PyTorch over tensors already on the device, with one hook per epoch.

Definitions (the seed text): an iteration is one update on one mini-batch; an epoch is one
pass over the training set, reshuffled before batching; iterations per epoch = ceil(n/B)
(floor with drop_last). B >= n is full-batch gradient descent, B = 1 is pure SGD.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .data import Dataset
from .model import ModelConfig, build_model
from .noise import NoiseScaleMeter, loss_noise, noise_temperature
from .timing import StepTimer, peak_memory_mb, reset_peak_memory

FINITE_CHECK_EVERY = 32  # updates between NaN/inf checks: one cheap sync per 32 steps
EVAL_CHUNK = 8192  # examples per forward pass when evaluating
# Examples per forward/backward pass. A larger batch accumulates its gradient over chunks of
# this size, so a full-batch step on 10^6 examples holds one chunk's activations, not all.
STEP_CHUNK = 65_536
# Benchmarks set this to a file path: the trainer writes time.time() there at the first
# update of the process (benchmarks/startup.py measures start-up with it).
MARK_FIRST_UPDATE_ENV = "SGDTUNE_MARK_FIRST_UPDATE"
FIXED_SUBSET_SEED = 20180101  # the probe and train-eval subsets are the same for every trial


class TrainConfig(BaseModel):
    """Everything one training run needs beyond the data. Units in the descriptions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(default=64, ge=1, description="examples per update; >= n is full batch")
    lr: float = Field(default=0.05, gt=0, description="learning rate (the base lr when scaling)")
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(default=0.0, ge=0)
    budget: Literal["epochs", "updates", "examples"] = "epochs"
    epochs: int | None = Field(default=10, ge=1, description="budget size when budget = 'epochs'")
    updates: int | None = Field(default=None, ge=1, description="budget size when budget = 'updates'")
    examples: int | None = Field(default=None, ge=1, description="budget size when budget = 'examples'")
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    base_batch_size: int = Field(default=256, ge=1, description="batch size at which lr = lr_base")
    warmup_epochs: float = Field(default=0.0, ge=0, description="linear warmup from lr_base (epochs)")
    drop_last: bool = False
    target_val_acc: float | None = Field(default=None, gt=0, le=1)
    target_every: int = Field(default=10, ge=1, description="updates between val checks for the target")
    stop_at_target: bool = Field(default=False, description="end training once target_val_acc is reached")
    measure_every: int = Field(
        default=100, ge=1,
        description="updates between noise probes; an epoch end probes too once a tenth of that has passed",
    )
    probe_size: int = Field(default=128, ge=0, description="examples in the noise probe; 0 = off")
    eval_size: int = Field(default=10_000, ge=1, description="training examples evaluated per epoch")
    seed: int = Field(default=0, ge=0, description="initial weights and shuffle order")
    model: ModelConfig = ModelConfig()

    @property
    def budget_size(self) -> int:
        size = getattr(self, self.budget)
        if size is None:
            raise ValueError(f"train.{self.budget} must be set when budget = {self.budget!r}")
        return size

    @property
    def effective_lr(self) -> float:
        """The lr after scaling with the batch size (Goyal et al. 2017; Hoffer et al. 2017)."""
        return scaled_lr(self.lr, self.batch_size, self.lr_scaling, self.base_batch_size)


def scaled_lr(lr_base: float, batch_size: int, rule: str, base_batch_size: int) -> float:
    """lr_base * B/B_base (linear), * sqrt(B/B_base) (sqrt), or unchanged (none)."""
    ratio = batch_size / base_batch_size
    if rule == "linear":
        return lr_base * ratio
    if rule == "sqrt":
        return lr_base * math.sqrt(ratio)
    if rule == "none":
        return lr_base
    raise ValueError(f"lr_scaling must be one of 'none', 'linear', 'sqrt'; got {rule!r}")


def lr_at(update: int, lr_base: float, lr_target: float, warmup_updates: int) -> float:
    """Learning rate for update `update` (0-based): linear from lr_base to lr_target, then flat."""
    if update >= warmup_updates:
        return lr_target
    return lr_base + (lr_target - lr_base) * update / warmup_updates


@dataclass(frozen=True)
class BatchPlan:
    """How a budget turns into epochs and updates for n examples at batch size B."""

    n: int
    batch_size: int  # effective: min(B, n)
    iterations_per_epoch: int
    epochs: int
    total_updates: int
    total_examples: int

    @classmethod
    def of(cls, n: int, config: TrainConfig) -> "BatchPlan":
        b = min(config.batch_size, n)
        per_epoch = n // b if config.drop_last else -(-n // b)
        examples_per_epoch = per_epoch * b if config.drop_last else n
        size = config.budget_size
        if config.budget == "epochs":
            epochs, updates, examples = size, size * per_epoch, size * examples_per_epoch
        elif config.budget == "updates":
            epochs, updates = -(-size // per_epoch), size
            full, rest = divmod(size, per_epoch)
            examples = full * examples_per_epoch + rest * b
        else:
            examples = size
            full, rest = divmod(size, examples_per_epoch)
            epochs = full + (rest > 0)
            updates = full * per_epoch + -(-rest // b)
        return cls(n, b, per_epoch, epochs, updates, examples)

    def batches(self, epoch: int, examples_before: int, updates_before: int):
        """(start, stop) slices of the shuffled order for one epoch, budget-truncated."""
        for i in range(self.iterations_per_epoch):
            if updates_before + i >= self.total_updates:
                return
            start = i * self.batch_size
            stop = min(start + self.batch_size, self.n)
            stop = min(stop, start + self.total_examples - examples_before)
            yield start, stop
            examples_before += stop - start


@dataclass
class EpochMetrics:
    """What the trainer reports after each epoch (step = epoch, 1-based)."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    gen_gap: float  # train_acc - val_acc
    loss_noise: float
    grad_noise_scale: float | None  # examples; None before a probe or when |G|^2 <= 0
    noise_temperature: float
    lr: float
    updates: int
    examples_seen: int
    epoch_time_s: float  # wall time of this epoch's training steps

    def as_dict(self) -> dict[str, float]:
        """Metrics for logging: every value but `epoch`, skipping the absent ones."""
        return {k: v for k, v in asdict(self).items() if k != "epoch" and v is not None}


@dataclass
class TrainResult:
    """The whole run: per-epoch history and the summary (DESIGN.md names)."""

    history: list[EpochMetrics]
    plan: BatchPlan
    lr: float
    compute_time_s: float
    gpu_time_s: float | None
    wall_time_s: float
    probe_time_s: float
    peak_mem_mb: float
    updates_to_target: int | None = None
    examples_to_target: int | None = None

    @property
    def final(self) -> EpochMetrics:
        return self.history[-1]

    def summary(self) -> dict[str, float]:
        out = {
            **history_summary(self.history),
            "compute_time_s": self.compute_time_s,
            "gpu_time_s": self.gpu_time_s,
            "wall_time_s": self.wall_time_s,
            "noise_probe_time_s": self.probe_time_s,
            "throughput_eps": self.final.examples_seen / self.compute_time_s if self.compute_time_s > 0 else None,
            "peak_mem_mb": self.peak_mem_mb,
            "updates_to_target": self.updates_to_target,
            "examples_to_target": self.examples_to_target,
        }
        return {k: float(v) for k, v in out.items() if v is not None}


def history_summary(history: list[EpochMetrics]) -> dict[str, float]:
    """Summary metrics that follow from the epochs alone (also for a pruned run)."""
    if not history:
        return {}
    last = history[-1]
    out = {
        "final_val_acc": last.val_acc,
        "best_val_acc": max(m.val_acc for m in history),
        "final_train_acc": last.train_acc,
        "final_val_loss": last.val_loss,
        "final_gen_gap": last.gen_gap,
        "final_loss_noise": last.loss_noise,
        "final_grad_noise_scale": last.grad_noise_scale,
        "updates": last.updates,
        "examples_seen": last.examples_seen,
    }
    return {k: float(v) for k, v in out.items() if v is not None}


class Diverged(RuntimeError):
    """The training loss became NaN or infinite at update `update` (1-based)."""

    def __init__(self, update: int, epoch: int, value: float):
        super().__init__(f"training loss became {value} at update {update} (epoch {epoch})")
        self.update, self.epoch, self.value = update, epoch, value


def probe_at_epoch_end(updates: int, last_probe: int, measure_every: int, final: bool) -> bool:
    """Whether an epoch end runs the noise probe: once a tenth of measure_every updates has
    passed since the last probe, and always at the end of training. With only a few updates
    per epoch (large B), probing every epoch would cost more than the training itself."""
    return final or updates - max(last_probe, 0) >= -(-measure_every // 10)


def fixed_subset(n: int, size: int, device: torch.device) -> torch.Tensor:
    """Indices of a subset that is the same for every trial on the same data."""
    g = torch.Generator().manual_seed(FIXED_SUBSET_SEED)
    return torch.randperm(n, generator=g)[: min(size, n)].to(device)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy, in chunks; one sync at the end."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for start in range(0, x.shape[0], EVAL_CHUNK):
        logits = model(x[start : start + EVAL_CHUNK])
        target = y[start : start + EVAL_CHUNK]
        loss_sum += F.cross_entropy(logits, target, reduction="sum").double()
        correct += (logits.argmax(dim=1) == target).sum()
    model.train(was_training)
    loss, hits = torch.stack([loss_sum, correct.double()]).tolist()
    return loss / x.shape[0], hits / x.shape[0]


def make_optimizer(model: nn.Module, config: TrainConfig, lr: float) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


def _check_finite(losses: list[torch.Tensor], first: int, updates_before: int, epoch: int) -> None:
    """Raise Diverged at the first non-finite loss among losses[first:]; syncs once."""
    chunk = torch.stack(losses[first:])
    if not bool(torch.isfinite(chunk).all()):
        bad = int((~torch.isfinite(chunk)).nonzero()[0, 0])
        raise Diverged(updates_before + first + bad + 1, epoch, float(chunk[bad]))


def _backward_in_chunks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
    """Backpropagate the mean cross-entropy of a batch too big for one pass, STEP_CHUNK
    examples at a time (gradients accumulate); `idx` selects the rows, None = all of x.
    Returns the batch's mean loss."""
    total = x.shape[0] if idx is None else idx.shape[0]
    loss = torch.zeros((), device=x.device)
    for start in range(0, total, STEP_CHUNK):
        rows = slice(start, start + STEP_CHUNK) if idx is None else idx[start : start + STEP_CHUNK]
        part = F.cross_entropy(model(x[rows]), y[rows], reduction="sum") / total
        part.backward()
        loss += part.detach()
    return loss


def _mark_first_update() -> None:
    """Write the time of the process's first update where MARK_FIRST_UPDATE_ENV says (once)."""
    global _first_update_marked
    _first_update_marked = True
    path = os.environ.get(MARK_FIRST_UPDATE_ENV)
    if path:
        with open(path, "w") as f:
            f.write(repr(time.time()))


_first_update_marked = False


def train(
    config: TrainConfig,
    data: Dataset,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    model: nn.Module | None = None,
) -> TrainResult:
    """Train config.model (or `model`) on `data`; call `on_epoch` after each epoch.

    The hook may raise to stop training (a pruner does); the exception propagates.
    Raises Diverged when the loss turns NaN or infinite.
    """
    wall_start = time.perf_counter()
    device = data.x_train.device
    x, y, n = data.x_train, data.y_train, data.n_train
    plan = BatchPlan.of(n, config)
    if model is None:
        model = build_model(config.model, data.n_features, data.n_classes, config.seed)
    model = model.to(device).train()

    lr_target = config.effective_lr
    warmup_updates = round(config.warmup_epochs * plan.iterations_per_epoch)
    lr_now = lr_at(0, config.lr, lr_target, warmup_updates)
    optimizer = make_optimizer(model, config, lr_now)
    momentum = config.momentum if config.optimizer == "sgd" else 0.0
    shuffler = torch.Generator(device=device).manual_seed(config.seed)

    eval_idx = fixed_subset(n, config.eval_size, device)
    x_eval, y_eval = x[eval_idx], y[eval_idx]
    meter = None
    if config.probe_size >= 2:
        probe_idx = fixed_subset(n, config.probe_size, device)
        meter = NoiseScaleMeter(x[probe_idx], y[probe_idx], F.cross_entropy)

    timer = StepTimer(device)
    reset_peak_memory(device)
    probe_time = 0.0
    history: list[EpochMetrics] = []
    updates = examples = 0
    updates_to_target = examples_to_target = None
    last_probe = -1
    target_pending = config.target_val_acc is not None

    def probe() -> None:
        """Noise probe, outside the timed steps; at most once per update count."""
        nonlocal probe_time, last_probe
        if meter is None or last_probe == updates:
            return
        last_probe = updates
        t0 = time.perf_counter()
        meter.measure(model)
        probe_time += time.perf_counter() - t0

    def reached_target(val_acc: float | None = None) -> bool:
        """Record the first update count at which val_acc >= target (checked every target_every)."""
        nonlocal probe_time, updates_to_target, examples_to_target, target_pending
        if val_acc is None:
            t0 = time.perf_counter()
            val_acc = evaluate(model, data.x_val, data.y_val)[1]
            probe_time += time.perf_counter() - t0
        if val_acc >= config.target_val_acc:
            updates_to_target, examples_to_target, target_pending = updates, examples, False
            return True
        return False

    stop_early = False
    mark_first_update = not _first_update_marked
    for epoch in range(1, plan.epochs + 1):
        losses: list[torch.Tensor] = []
        checked = 0
        updates_before, epoch_start_compute = updates, timer.compute_time_s
        timer.start()  # the shuffle is part of an epoch's training work
        order = torch.randperm(n, generator=shuffler, device=device)
        for start, stop in plan.batches(epoch, examples, updates):
            full = plan.batch_size == n and stop - start == n  # full batch: no gather of the whole set
            if stop - start > STEP_CHUNK:
                optimizer.zero_grad(set_to_none=True)
                loss = _backward_in_chunks(model, x, y, None if full else order[start:stop])
            else:
                if full:
                    xb, yb = x, y
                else:
                    idx = order[start:stop]
                    xb, yb = x[idx], y[idx]
                loss = F.cross_entropy(model(xb), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
            losses.append(loss.detach())
            updates += 1
            if mark_first_update:
                mark_first_update = False
                _mark_first_update()
            examples += stop - start
            if updates <= warmup_updates:
                lr_now = lr_at(updates, config.lr, lr_target, warmup_updates)
                for group in optimizer.param_groups:
                    group["lr"] = lr_now
            if len(losses) - checked >= FINITE_CHECK_EVERY:
                _check_finite(losses, checked, updates_before, epoch)
                checked = len(losses)
            if updates % config.measure_every == 0 or (target_pending and updates % config.target_every == 0):
                timer.stop()
                if updates % config.measure_every == 0:
                    probe()
                if target_pending and updates % config.target_every == 0 and reached_target():
                    stop_early = config.stop_at_target
                timer.start()
                if stop_early:
                    break
        timer.stop()
        if len(losses) > checked:
            _check_finite(losses, checked, updates_before, epoch)

        train_loss, train_acc = evaluate(model, x_eval, y_eval)
        val_loss, val_acc = evaluate(model, data.x_val, data.y_val)
        if target_pending and reached_target(val_acc):
            stop_early = config.stop_at_target
        if probe_at_epoch_end(updates, last_probe, config.measure_every, stop_early or epoch == plan.epochs):
            probe()
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=train_loss,
            train_acc=train_acc,
            val_loss=val_loss,
            val_acc=val_acc,
            gen_gap=train_acc - val_acc,
            loss_noise=loss_noise(torch.stack(losses)),
            grad_noise_scale=meter.value if meter is not None else None,
            noise_temperature=noise_temperature(lr_now, n, plan.batch_size, momentum),
            lr=lr_now,
            updates=updates,
            examples_seen=examples,
            epoch_time_s=timer.compute_time_s - epoch_start_compute,
        )
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(metrics)
        if stop_early:
            break

    return TrainResult(
        history=history,
        plan=plan,
        lr=lr_target,
        compute_time_s=timer.compute_time_s,
        gpu_time_s=timer.gpu_time_s,
        wall_time_s=time.perf_counter() - wall_start,
        probe_time_s=probe_time,
        peak_mem_mb=peak_memory_mb(device),
        updates_to_target=updates_to_target,
        examples_to_target=examples_to_target,
    )
