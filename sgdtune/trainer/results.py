"""What training hands back: each epoch's metrics, the run's result, and divergence.

Layer: trainer (the one training loop; docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from .config import BatchPlan

if TYPE_CHECKING:
    from torch import nn


@dataclass
class EpochMetrics:
    """What the trainer reports after each epoch (step = epoch, 1-based).

    For a regression task (`task = "regression"`) the losses are mean squared errors and
    `train_acc` / `val_acc` hold the score R^2 = 1 - SSE/SST instead of the accuracy; as_dict()
    names them `train_r2` / `val_r2`. The gradient noise scale and sharpness are None at the
    epochs that did not measure them (docs/science.md, sections 3 and 7).
    """

    epoch: int
    train_loss: float
    train_acc: float  # accuracy; R^2 for regression
    val_loss: float
    val_acc: float  # accuracy; R^2 for regression
    gen_gap: float  # train_acc - val_acc
    loss_noise: float
    grad_noise_scale: float | None  # B_simple (examples), or its lower bound when grad_noise_scale_bound = 1
    noise_temperature: float
    lr: float
    updates: int
    examples_seen: int
    epoch_time_s: float  # wall time of this epoch's training steps
    grad_noise_scale_se: float | None = None  # its standard error (examples)
    grad_noise_scale_bound: float | None = None  # 1.0: grad_noise_scale is a lower bound; 0.0: an estimate
    sharpness: float | None = None  # top eigenvalue of the training loss's Hessian (loss / parameter^2)
    lr_sharpness: float | None = None  # lr x sharpness: GD is stable below 2, 2(1 + m) with momentum m
    b_noise: float | None = None  # B_noise = tr(H Sigma) / G^T H G (examples; docs/science.md, section 3b)
    b_noise_se: float | None = None
    eps_max: float | None = None  # eps_max = |G|^2 / G^T H G: the best step along G without noise (lr units)
    eps_max_se: float | None = None
    task: str = "classification"  # not a metric: names the scores in as_dict

    def as_dict(self) -> dict[str, float]:
        """Metrics for logging: every value but `epoch` and `task`, skipping the absent ones;
        `train_acc`/`val_acc` are `train_r2`/`val_r2` for a regression task."""
        names = SCORE_NAMES.get(self.task, {})
        return {names.get(k, k): v for k, v in asdict(self).items() if k not in ("epoch", "task") and v is not None}


# Per task, the metric names of the score fields (classification keeps the field names).
SCORE_NAMES = {"regression": {"train_acc": "train_r2", "val_acc": "val_r2"}}
SUMMARY_SCORE_NAMES = {"regression": {"final_val_acc": "final_val_r2", "best_val_acc": "best_val_r2",
                                      "final_train_acc": "final_train_r2"}}


@dataclass
class TrainResult:
    """The whole run: per-epoch history, the plan, times, and the first crossing of the target."""

    history: list[EpochMetrics]
    plan: BatchPlan
    lr: float
    compute_time_s: float
    gpu_time_s: float | None
    wall_time_s: float
    probe_time_s: float  # the gradient-noise measurements
    peak_mem_mb: float
    updates_to_target: int | None = None
    examples_to_target: int | None = None
    noise_at_target: tuple[float, float] | None = None  # (B_simple, its SE) when the target was first reached
    # (B_noise, SE, eps_max, SE) when the target was first reached; an entry is None where G^T H G <= 0.
    curvature_at_target: tuple[float | None, float | None, float | None, float | None] | None = None
    # Slope of log loss_noise against log B at the final weights, forward only (docs/science.md, §2).
    fixed_model_loss_noise_slope: float | None = None
    # (loss, score) on the held-out test set at the final weights (final_test_loss, final_test_acc
    # or final_test_r2); None without a test set. Evaluated once, never used for selection.
    test: tuple[float, float] | None = None
    # Not in summary() (tests/e2e/test_study.py's TIMING set lists the volatile keys it may hold):
    sharpness_time_s: float = 0.0  # the sharpness measurements (not in probe_time_s nor compute_time_s)
    target_time_s: float = 0.0  # the target checks between epoch ends
    gpu: dict[str, float] | None = None  # NVML's gpu_util_mean_pct, gpu_mem_used_max_mb (timing.GpuMonitor)
    curvature_time_s: float = 0.0  # the B_noise measurements (not in probe_time_s nor compute_time_s)
    # The evaluations at the end of training: its last train-subset pass, the test set and the
    # fixed-model loss noise, which reads that pass's per-example losses (not the validation
    # pass: part of training).
    eval_time_s: float = 0.0
    # The trained network at its final weights, on the training device (the caller's own
    # module for `train`; a copy of its slice for a stacked member). Not a metric.
    module: nn.Module | None = None

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
            "fixed_model_loss_noise_slope": self.fixed_model_loss_noise_slope,
        }
        if self.test is not None:
            score = "final_test_r2" if self.final.task == "regression" else "final_test_acc"
            out["final_test_loss"], out[score] = self.test
        out.update(self.gpu or {})
        if self.noise_at_target is not None:
            out["grad_noise_scale_at_target"], out["grad_noise_scale_at_target_se"] = self.noise_at_target
        if self.curvature_at_target is not None:
            names = ("b_noise_at_target", "b_noise_at_target_se", "eps_max_at_target", "eps_max_at_target_se")
            out.update(zip(names, self.curvature_at_target))
        return {k: float(v) for k, v in out.items() if v is not None}


def history_summary(history: list[EpochMetrics]) -> dict[str, float]:
    """Summary metrics that follow from the epochs alone (also for a pruned run)."""
    if not history:
        return {}
    last = history[-1]
    noise = next((m for m in reversed(history) if m.grad_noise_scale is not None), None)
    sharp = next((m for m in reversed(history) if m.sharpness is not None), None)
    out = {
        "final_val_acc": last.val_acc,
        "best_val_acc": max(m.val_acc for m in history),
        "final_train_acc": last.train_acc,
        "final_val_loss": last.val_loss,
        "final_gen_gap": last.gen_gap,
        "final_loss_noise": last.loss_noise,
        "updates": last.updates,
        "examples_seen": last.examples_seen,
    }
    if noise is not None:  # the last measurement: at the last epoch of a complete trial
        out["final_grad_noise_scale"] = noise.grad_noise_scale
        out["final_grad_noise_scale_se"] = noise.grad_noise_scale_se
        out["final_grad_noise_scale_bound"] = noise.grad_noise_scale_bound
    curvature = next((m for m in reversed(history) if m.b_noise is not None), None)
    if curvature is not None:  # the last measurement where G^T H G > 0
        out["final_b_noise"], out["final_b_noise_se"] = curvature.b_noise, curvature.b_noise_se
        out["final_eps_max"], out["final_eps_max_se"] = curvature.eps_max, curvature.eps_max_se
    if sharp is not None:
        out["final_sharpness"], out["final_lr_sharpness"] = sharp.sharpness, sharp.lr_sharpness
    names = SUMMARY_SCORE_NAMES.get(last.task, {})
    return {names.get(k, k): float(v) for k, v in out.items() if v is not None}
