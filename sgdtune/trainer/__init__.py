"""The trainer: plain PyTorch over tensors already on the device, with one hook per epoch.

    config.py       TrainConfig, the learning-rate rules, BatchPlan
    results.py      EpochMetrics, TrainResult, history_summary
    loop.py         the one epoch/step loop for K >= 1 trials side by side, over a Stepper
    budget.py       the measurement budget: modelled costs of steps and measurements, probe sizes
    losses.py       the training losses (cross-entropy, one-hot square loss, regression's MSE)
    module_step.py  the Stepper of one nn.Module under torch.optim; train()
    stacked.py      the Stepper of K stacked MLPs (StackedMLP); train_stacked()
    func_stacked.py the Stepper of K stacked copies of any other model, through torch.func (FuncStacked)
    groups.py       which configs can be stacked together: group_key, check_group

Its errors, Diverged and UnstackableModel, live with the others in sgdtune/errors.py.

Layer: trainer (the one training loop; docs/architecture.md).
"""

from ..errors import Diverged, UnstackableModel
from .budget import auto_probe_size
from .config import BatchPlan, TrainConfig, lr_at, scaled_lr
from .func_stacked import FuncStacked, check_stackable
from .groups import BUDGET_SIZES, PER_MEMBER, check_group, group_key
from .loop import FINITE_CHECK_EVERY, fixed_subset
from .losses import loss_function
from .module_step import STEP_CHUNK, evaluate, make_optimizer, train
from .results import EpochMetrics, TrainResult, history_summary
from .stacked import MAX_STACKED_ROWS, StackedMLP, train_stacked

__all__ = [
    "BUDGET_SIZES", "FINITE_CHECK_EVERY", "MAX_STACKED_ROWS", "PER_MEMBER", "STEP_CHUNK",
    "BatchPlan", "Diverged", "EpochMetrics", "FuncStacked", "StackedMLP", "UnstackableModel",
    "check_stackable", "TrainConfig", "TrainResult",
    "check_group", "evaluate", "fixed_subset", "group_key", "history_summary", "lr_at", "make_optimizer",
    "auto_probe_size", "loss_function", "scaled_lr", "train", "train_stacked",
]
