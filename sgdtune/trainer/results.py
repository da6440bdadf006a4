"""What training hands back: each epoch's metrics, the run's result, and divergence."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .config import BatchPlan


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
    """The whole run: per-epoch history, the plan, times, and the first crossing of the target."""

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
