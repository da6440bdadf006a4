"""The training losses: cross-entropy, the one-hot square loss of classification, and the
mean squared error of regression, each `loss(out, y, reduction=...)`.

Layer: trainer (the one training loop; docs/architecture.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def loss_function(task: str, loss: str | None = None):
    """The training loss of a task, `loss(out, y, reduction="mean")`: cross-entropy for
    classification, torch's mean squared error (no 1/2) of out.squeeze(-1) for regression;
    with loss = "mse" for classification, `one_hot_mse`. `loss` None = the task's own."""
    if task == "classification":
        if loss in (None, "cross_entropy"):
            return F.cross_entropy
        if loss == "mse":
            return one_hot_mse
        raise ValueError(f"loss must be 'cross_entropy' or 'mse' for classification; got {loss!r}")
    if task == "regression":
        if loss not in (None, "mse"):
            raise ValueError(f"train.loss: regression trains on 'mse' only; got {loss!r}")
        return lambda out, y, reduction="mean": F.mse_loss(out.squeeze(-1), y, reduction=reduction)
    raise ValueError(f"task must be 'classification' or 'regression'; got {task!r}")


def one_hot_mse(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The square loss of Cohen et al. (2021) for classification: per example 1/2 |out - e_y|^2,
    the outputs `out` (n, C) against the one-hot target e_y of label y, summed over the C classes;
    then `reduction` over examples. (Torch's MSELoss, a mean over classes with no 1/2, would be
    C/2 times smaller: lr 0.2 on digits would then start 10x below the edge of stability instead
    of at half of it.) One-hot by comparison with arange (works under vmap, unlike F.one_hot)."""
    target = (torch.arange(out.shape[-1], device=out.device) == y.unsqueeze(-1)).to(out.dtype)
    per_example = 0.5 * (out - target).square().sum(dim=-1)
    if reduction == "none":
        return per_example
    return per_example.sum() if reduction == "sum" else per_example.mean()
