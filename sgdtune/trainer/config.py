"""What one training run is asked to do: TrainConfig, the learning-rate rules, BatchPlan.

Definitions (docs/science.md, section 1): an iteration is one update on one mini-batch; an
epoch is one pass over the training set, reshuffled before batching; iterations per epoch =
ceil(n/B) (floor with drop_last). B >= n is full-batch gradient descent, B = 1 is pure SGD.

Layer: trainer (the one training loop; docs/architecture.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..model import ModelConfig


class TrainConfig(BaseModel):
    """Everything one training run needs beyond the data. Units in the descriptions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    batch_size: int = Field(default=64, ge=1, description="examples per update; >= n is full batch")
    lr: float = Field(default=0.05, gt=0, description="learning rate (the base lr when scaling)")
    optimizer: Literal["sgd", "adam"] = Field(default="sgd", description="torch.optim.SGD (with momentum) or "
                                              "Adam (which ignores momentum)")
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD momentum")
    loss: Literal["cross_entropy", "mse"] | None = Field(
        default=None,
        description="the training loss: unset = the task's own (cross_entropy for classification, mse for "
                    "regression); 'mse' for classification = the square loss 1/2 |outputs - one-hot target|^2, "
                    "summed over classes, mean over examples (Cohen et al. 2021; accuracy still by argmax); "
                    "regression trains on mse only")
    weight_decay: float = Field(default=0.0, ge=0, description="L2 coefficient of the optimizer (per update)")
    budget: Literal["epochs", "updates", "examples"] = Field(
        default="epochs", description="what bounds training: passes over the training set, mini-batch updates, "
        "or examples seen; its size is the key of that name")
    epochs: int | None = Field(default=10, ge=1, description="budget size when budget = 'epochs'")
    updates: int | None = Field(default=None, ge=1, description="budget size when budget = 'updates'")
    examples: int | None = Field(default=None, ge=1, description="budget size when budget = 'examples'")
    lr_scaling: Literal["none", "linear", "sqrt"] = Field(
        default="none", description="lr used = lr x B / base_batch_size (linear), lr x sqrt(B / base_batch_size) "
        "(sqrt), or lr (none)")
    base_batch_size: int = Field(default=256, ge=1, description="batch size at which lr = lr_base")
    warmup_epochs: float = Field(default=0.0, ge=0, description="linear warmup from lr_base (epochs)")
    drop_last: bool = Field(default=False, description="skip each epoch's last partial mini-batch: floor(n/B) "
                            "updates per epoch in place of ceil(n/B)")
    target_val_acc: float | None = Field(default=None, gt=0, le=1, description="validation accuracy (fraction) "
                                         "whose first reaching gives updates_to_target and examples_to_target; "
                                         "unset = none")
    target_every: int = Field(default=10, ge=1, description="updates between val checks for the target")
    stop_at_target: bool = Field(default=False, description="end training once target_val_acc is reached")
    measure_every_epochs: int | Literal["auto"] = Field(
        default="auto",
        description="epochs between gradient-noise measurements, >= 1 (at epoch ends; also at the end of "
                    "training and when a target is first reached; all within measure_share); 'auto' = as often "
                    "as keeps the "
                    "measurement's modelled cost <= 5% of the steps' (PROBE_COST_SHARE in trainer/budget.py)",
    )
    probe_size: int | Literal["auto"] = Field(
        default="auto",
        description="examples in the gradient-noise probe (a fixed subset of the training set); "
                    "0 = off, else >= 4; 'auto' = the whole training set when n <= 16,384, else sized from the "
                    "last measurement's SE of |G|^2 (aiming at 10%), a power of two within [2,048, 65,536]",
    )
    b_noise_samples: int = Field(
        default=0, ge=0,
        description="Rademacher combinations behind tr(H Sigma) for B_noise and eps_max, measured at the "
                    "target, at the end and where the noise probe runs, within measure_share (with "
                    "measure_every_epochs 'auto': "
                    "once their own modelled cost is <= 5% of the steps'); exact when the probe or the model "
                    "has at most this many examples or parameters; 0 = off (the default: one measurement with "
                    "32 costs about a second on digits, more than a short trial's steps), else >= 2 (32 is a "
                    "good start)",
    )
    sharpness_every: int = Field(
        default=50, ge=0,
        description="epochs between sharpness measurements (top Hessian eigenvalue), plus one at the "
                    "end of training, within measure_share; 0 = off",
    )
    sharpness_size: int = Field(
        default=8192, ge=1,
        description="examples in the fixed sharpness probe (n if fewer: then the training loss's own Hessian)",
    )
    measure_share: float | Literal["all"] = Field(
        default=0.05,
        description="the most every measurement of a trial together may cost (noise probes, B_noise, sharpness, "
                    "the end-of-training train-subset and test evaluations, the fixed-model loss noise), as a "
                    "share of its steps' cost so far, both modelled in example-equivalents (trainer/budget.py); a "
                    "measurement the share does not cover is sized down or left out (docs/usage.md, "
                    "'Measurement budget'); 'all' = no cap: every scheduled measurement at full size",
    )
    eval_size: int = Field(default=10_000, ge=1, description="training examples evaluated per epoch")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32",
        description="arithmetic of the training steps' forward pass and loss: fp32, or torch.autocast to bf16 "
                    "or fp16 (fp16 with a gradient scaler); weights, optimizer, evaluation and every science "
                    "measurement stay fp32")
    tf32: bool = Field(default=False, description="CUDA only: let float32 matrix products use TF32 tensor cores "
                       "(faster, ~10 mantissa bits); no effect on a CPU")
    seed: int = Field(default=0, ge=0, description="initial weights and shuffle order")
    model: ModelConfig = ModelConfig()

    @model_validator(mode="before")
    @classmethod
    def _no_update_cadence(cls, values):
        if isinstance(values, dict) and "measure_every" in values:
            raise ValueError(
                "train.measure_every (updates between noise probes) was removed: the gradient noise scale "
                "is measured at epoch ends now; use train.measure_every_epochs (an int, or 'auto')"
            )
        return values

    @field_validator("b_noise_samples")
    @classmethod
    def _two_or_none(cls, value):
        if value == 1:
            raise ValueError(f"must be 0 (off) or >= 2 (a standard error needs two samples); got {value}")
        return value

    @field_validator("measure_share", mode="before")
    @classmethod
    def _a_share(cls, value):
        share = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1
        if value != "all" and not share:
            raise ValueError(f"must be a share in (0, 1] or 'all'; got {value!r}")
        return value

    @field_validator("probe_size", "measure_every_epochs")
    @classmethod
    def _positive(cls, value, info):
        smallest = 4 if info.field_name == "probe_size" else 1
        if isinstance(value, int) and not (value >= smallest or (value == 0 and info.field_name == "probe_size")):
            allowed = "0 (off), >= 4 or 'auto'" if info.field_name == "probe_size" else ">= 1 or 'auto'"
            raise ValueError(f"must be {allowed}; got {value}")
        return value

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

    @property
    def effective_momentum(self) -> float:
        """The momentum of the updates: `momentum` under SGD, 0 under Adam (which ignores it)."""
        return self.momentum if self.optimizer == "sgd" else 0.0


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
    def of(cls, n: int, config: TrainConfig) -> BatchPlan:
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
