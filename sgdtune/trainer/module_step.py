"""One nn.Module trained by torch.optim: the loop's stepper for K = 1, and `train`.

Any model works here, the built-in MLP or a factory's: a step is autograd's backward and the
optimizer's step, accumulated over chunks of STEP_CHUNK examples when the batch is larger,
the noise probe is science.noise.chunk_sums and the sharpness science.sharpness.sharpness
(docs/science.md, sections 3 and 7), on the task's loss (losses.loss_function).

Layer: trainer (the one training loop; docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from ..model import build_model
from ..science.curvature_noise import CurvatureNoiseEstimate, curvature_noise_estimate
from ..science.noise import ChunkSums, chunk_sums
from ..science.sharpness import SharpnessEstimate, sharpness
from .config import TrainConfig
from .loop import SHARPNESS_ITERS, SHARPNESS_SEED, SHARPNESS_TOL, Loop
from .losses import loss_function
from .results import EpochMetrics, TrainResult

EVAL_CHUNK = 8192  # examples per forward pass when evaluating
# Examples per forward/backward pass. A larger batch accumulates its gradient over chunks of
# this size, so a full-batch step on 10^6 examples holds one chunk's activations, not all.
STEP_CHUNK = 65_536


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
    loop = Loop([config], data, None if on_epoch is None else lambda _, metrics: on_epoch(metrics))
    if model is None:
        outputs = 1 if loop.task == "regression" else data.n_classes
        model = build_model(config.model, data.n_features, outputs, config.seed, getattr(data, "input_shape", None))
    model = model.to(data.x_train.device).train()
    (result,) = loop.run(ModuleStepper(model, config, loop.lrs[0], loop.task))
    if isinstance(result, Exception):  # Diverged, or what the hook raised
        raise result
    return result


def make_optimizer(model: nn.Module, config: TrainConfig, lr: float) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=lr, momentum=config.momentum, weight_decay=config.weight_decay
    )


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str = "classification",
             loss_fn=F.cross_entropy) -> tuple[float, float]:
    """Mean loss and score, in chunks; one sync at the end. Classification: `loss_fn` (the
    training loss: cross-entropy, or one-hot MSE) and accuracy by argmax; regression: mean
    squared error and R^2 = 1 - SSE/SST, SST about the mean of y."""
    loss, score, _ = evaluate_examples(model, x, y, task, loss_fn, keep=False)
    return loss, score


@torch.no_grad()
def evaluate_examples(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str = "classification",
                      loss_fn=F.cross_entropy, keep: bool = True) -> tuple[float, float, torch.Tensor | None]:
    """`evaluate`'s (mean loss, score) and, with `keep`, the per-example losses (n,) of the same
    forward pass (the fixed-model loss noise reads them: no second pass over the examples)."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.float64)
    kept = []
    for start in range(0, x.shape[0], EVAL_CHUNK):
        out = model(x[start : start + EVAL_CHUNK])
        target = y[start : start + EVAL_CHUNK]
        if task == "regression":
            out = out.squeeze(-1)
            if keep:
                kept.append(F.mse_loss(out, target, reduction="none"))
            loss_sum += F.mse_loss(out, target, reduction="sum").double()
        else:
            if keep:
                kept.append(loss_fn(out, target, reduction="none"))
            loss_sum += loss_fn(out, target, reduction="sum").double()
            correct += (out.argmax(dim=1) == target).sum()
    model.train(was_training)
    examples = torch.cat(kept) if keep else None
    if task == "regression":
        total = (y.double() - y.double().mean()).square().sum()
        loss, sst = torch.stack([loss_sum, total]).tolist()
        return loss / x.shape[0], 1.0 - loss / sst if sst > 0 else 0.0, examples
    loss, hits = torch.stack([loss_sum, correct]).tolist()
    return loss / x.shape[0], hits / x.shape[0], examples


class Precision:
    """The arithmetic of a training step (TrainConfig.precision): the forward pass and loss run
    under torch.autocast in bf16 or fp16; fp16 scales the loss before backward so that small
    gradients do not underflow (torch.amp.GradScaler). Weights and optimizer state stay fp32."""

    def __init__(self, precision: str, device: torch.device, tf32: bool = False):
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        if device.type == "cuda":  # a process-wide switch: set by every trial, so it follows the trial's config
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32

    def forward(self):
        """The context the forward pass and loss run in."""
        if self.dtype is None:  # fp32: no autocast context on the hot path at all
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:  # skips the update when a scaled gradient overflowed, and lowers the scale
            self.scaler.step(optimizer)
            self.scaler.update()


class ModuleStepper:
    """The loop's Stepper for one member: `model` stepped by torch.optim (make_optimizer)."""

    def __init__(self, model: nn.Module, config: TrainConfig, lr: float, task: str = "classification"):
        self.model, self.task, self.loss_fn = model, task, loss_function(task, config.loss)
        self.optimizer = make_optimizer(model, config, lr)
        device = next(model.parameters(), torch.empty(0)).device
        self.precision = Precision(config.precision, device, config.tf32)
        # fp32 arithmetic and weights: step's fast path, whose loss needs no cast
        self.plain = self.precision.dtype is None and next(model.parameters(), torch.empty(0)).dtype == torch.float32
        self.order = torch.empty(0, dtype=torch.long)

    def begin_epoch(self, orders: list[torch.Tensor]) -> None:
        (self.order,) = orders

    def step(self, x: torch.Tensor, y: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """One update on rows order[start:stop] of (x, y); returns the batch's mean loss before
        the update (a scalar tensor, no sync)."""
        model, optimizer, precision = self.model, self.optimizer, self.precision
        full = stop - start == x.shape[0]  # full batch: no gather of the whole set
        if self.plain and stop - start <= STEP_CHUNK:  # fp32: a minimal loop's step, no wrapper on the hot path
            if full:
                xb, yb = x, y
            else:
                idx = self.order[start:stop]
                xb, yb = x[idx], y[idx]
            loss = self.loss_fn(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            return loss.detach()  # fp32 already
        if stop - start > STEP_CHUNK:
            optimizer.zero_grad(set_to_none=True)
            loss = _backward_in_chunks(model, self.loss_fn, x, y, None if full else self.order[start:stop], precision)
        else:
            if full:
                xb, yb = x, y
            else:
                idx = self.order[start:stop]
                xb, yb = x[idx], y[idx]
            with precision.forward():
                loss = self.loss_fn(model(xb), yb)
            optimizer.zero_grad(set_to_none=True)
            precision.backward(loss)
        precision.step(optimizer)
        return loss.detach().float()

    def set_lr(self, lrs: list[float]) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lrs[0]

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, positions: list[int]) -> list[tuple[float, float]]:
        return [evaluate(self.model, x, y, self.task, self.loss_fn) for _ in positions]

    def evaluate_examples(self, x: torch.Tensor, y: torch.Tensor,
                          positions: list[int]) -> list[tuple[float, float, torch.Tensor]]:
        return [evaluate_examples(self.model, x, y, self.task, self.loss_fn) for _ in positions]

    def noise_sums(self, x: torch.Tensor, y: torch.Tensor, positions: list[int], chunks: int) -> list[ChunkSums]:
        return [chunk_sums(self.model, self.loss_fn, x, y, chunks) for _ in positions]

    def curvature_noise(self, x: torch.Tensor, y: torch.Tensor, positions: list[int],
                        grad_sq: list[tuple[float, float]], population: int, samples: int,
                        ) -> list[CurvatureNoiseEstimate]:
        return [curvature_noise_estimate(self.model, self.loss_fn, x, y, *g, population=population, samples=samples)
                for g in grad_sq]

    def sharpness(self, x: torch.Tensor, y: torch.Tensor, positions: list[int],
                  starts: list[torch.Tensor | None], iters: int = SHARPNESS_ITERS) -> list[SharpnessEstimate]:
        return [sharpness(self.model, self.loss_fn, x, y, iters=iters, tol=SHARPNESS_TOL,
                          seed=SHARPNESS_SEED, start=start) for start in starts]

    def keep(self, positions: list[int]) -> None:
        if positions != [0]:
            raise ValueError(f"a ModuleStepper holds one member; got positions {positions}")

    def module(self, position: int) -> nn.Module:
        """The trained model itself (no copy)."""
        return self.model


def _backward_in_chunks(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor,
                        idx: torch.Tensor | None, precision: Precision) -> torch.Tensor:
    """Backpropagate the mean loss of a batch too big for one pass, STEP_CHUNK
    examples at a time (gradients accumulate); `idx` selects the rows, None = all of x.
    Returns the batch's mean loss."""
    total = x.shape[0] if idx is None else idx.shape[0]
    loss = torch.zeros((), device=x.device)
    for start in range(0, total, STEP_CHUNK):
        rows = slice(start, start + STEP_CHUNK) if idx is None else idx[start : start + STEP_CHUNK]
        with precision.forward():
            part = loss_fn(model(x[rows]), y[rows], reduction="sum") / total
        precision.backward(part)
        loss += part.detach()
    return loss
