"""The trainer: plain PyTorch over tensors already on the device, with one hook per epoch.

    config.py       TrainConfig, the learning-rate rules, BatchPlan
    results.py      EpochMetrics, TrainResult, history_summary, Diverged
    loop.py         the one epoch/step loop, for K >= 1 trials side by side
    module_step.py  its stepper for one nn.Module under torch.optim; train()
    stacked.py      its stepper for K stacked MLPs (StackedMLP); train_stacked()
"""

from .config import BatchPlan, TrainConfig, lr_at, scaled_lr
from .loop import FINITE_CHECK_EVERY, Stepper, fixed_subset, probe_at_epoch_end
from .module_step import STEP_CHUNK, ModuleStepper, evaluate, make_optimizer, train
from .results import Diverged, EpochMetrics, TrainResult, history_summary
from .stacked import BUDGET_SIZES, MAX_STACKED_ROWS, PER_MEMBER, StackedMLP, check_group, group_key, train_stacked

__all__ = [
    "BUDGET_SIZES", "FINITE_CHECK_EVERY", "MAX_STACKED_ROWS", "PER_MEMBER", "STEP_CHUNK",
    "BatchPlan", "Diverged", "EpochMetrics", "ModuleStepper", "StackedMLP", "Stepper", "TrainConfig", "TrainResult",
    "check_group", "evaluate", "fixed_subset", "group_key", "history_summary", "lr_at", "make_optimizer",
    "probe_at_epoch_end", "scaled_lr", "train", "train_stacked",
]
