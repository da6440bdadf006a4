"""Which configs can train together as one stacked model (stacked.py, func_stacked.py), and
how to group them: by every field that shapes the model (model.*, the factory's name
included, so the members' parameters have equal shapes) or the shared batches.

Layer: trainer (the one training loop; docs/architecture.md).
"""

from __future__ import annotations

from .config import TrainConfig

# TrainConfig fields that may differ between the members of a group. Every other field
# (batch_size, model, optimizer, budget, drop_last, the measurement settings, eval_size)
# must be equal: the members share one stacked model and one sequence of batch slices.
PER_MEMBER = frozenset({
    "lr", "momentum", "weight_decay", "lr_scaling", "base_batch_size", "warmup_epochs", "seed",
    "target_val_acc", "target_every", "stop_at_target",
})
# The budget's size may differ too when it counts epochs or updates: a shorter member's
# batches are a prefix of a longer one's, and it leaves when its budget is spent (or when it
# stops at its target). An examples budget can cut a member's last batch short, so its size
# must be equal.
BUDGET_SIZES = ("epochs", "updates", "examples")


def _shared_fields(config: TrainConfig) -> dict[str, object]:
    """The fields every member of a group must agree on, by name ('model.hidden', ...)."""
    out: dict[str, object] = {}
    for name in TrainConfig.model_fields:
        if name in PER_MEMBER or name in BUDGET_SIZES:
            continue
        if name == "model":
            out.update({f"model.{k}": v for k, v in config.model.model_dump().items()})
        else:
            out[name] = getattr(config, name)
    if config.budget == "examples":
        out["examples"] = config.examples
    return out


def group_key(config: TrainConfig) -> tuple:
    """Configs with equal keys can train together in `train_stacked`."""
    return tuple(sorted((k, repr(v)) for k, v in _shared_fields(config).items()))


def check_group(configs: list[TrainConfig], task: str = "classification") -> None:
    """ValueError naming the first field that keeps these configs from one stacked group (or
    the task: stacked training is for classification only)."""
    if not configs:
        raise ValueError("train_stacked needs at least one config; got an empty list")
    if task != "classification":
        raise ValueError(
            f"train_stacked trains classification only; got data.task = {task!r}. "
            "Train each trial one at a time with sgdtune.trainer.train."
        )
    first = configs[0]
    if first.precision != "fp32":
        raise ValueError(
            f"train_stacked trains in fp32 only; got precision = {first.precision!r}. "
            "Train mixed-precision configs one at a time with sgdtune.trainer.train."
        )
    if first.loss == "mse":
        raise ValueError(
            "train_stacked trains on cross-entropy only; got train.loss = 'mse'. Train each trial one at a time "
            "with sgdtune.trainer.train."
        )
    want = _shared_fields(first)
    for i, config in enumerate(configs[1:], start=1):
        got = _shared_fields(config)
        for name, value in want.items():
            if got[name] != value:
                raise ValueError(
                    f"every config of a stacked group must have the same {name} (one stacked model, "
                    f"one sequence of batches); got {value!r} in configs[0] and {got[name]!r} in "
                    f"configs[{i}]. Group configs by sgdtune.trainer.group_key(config) and train "
                    "each group on its own."
                )
