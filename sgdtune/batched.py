"""Several trials of one MLP and one batch size trained as one stacked model.

At small batch sizes an update of a small MLP costs far more in framework overhead than in
arithmetic. K trials that share the architecture and the batch size are trained together:
every weight gets a leading member axis, (K, in, out), and an update is a few batched
matrix products (torch.baddbmm / torch.bmm) over (K, B, d) tensors, so the overhead of one
update is paid once for K trials. Each member is still its own trial, the computation of
`train.train` up to float rounding:

- its own initial weights (`build_model(config.model, ..., config.seed)`), shuffle order (a
  generator seeded with its seed, the same `randperm` calls), lr (scaling, warmup),
  momentum, weight decay, budget size, and optimizer state with torch.optim's formulas;
- its own metrics and hook call: evaluation and target checks run `train.evaluate` on a
  module holding that member's weights; the noise probe computes every member's
  per-example gradient statistics in one stacked pass, without materializing per-example
  gradients (the estimators of noise.py; tests hold them equal to NoiseScaleMeter's).

Members never mix: every operation acts per member along axis 0, so a NaN in one member's
weights cannot reach another. A member leaves the group (its slice is dropped) when its
budget is spent, when its hook raises (a pruner), or when its loss turns non-finite.

The backward pass is written out (two batched products per layer) rather than taken from
autograd: on the 2-core CPU this was measured on, that is 15-25% faster at B = 8 than
autograd through the same baddbmm forward, and torch.func.vmap over stack_module_state
was slower than both. The activation derivatives are the aten kernels autograd itself
calls. benchmarks/batched.py measures the whole against one-by-one training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .data import Dataset
from .model import build_model
from .noise import GradientStats, NoiseScaleMeter, gradient_stats, loss_noise, noise_temperature
from .timing import StepTimer, peak_memory_mb, reset_peak_memory
from .train import (
    FINITE_CHECK_EVERY,
    BatchPlan,
    Diverged,
    EpochMetrics,
    TrainConfig,
    TrainResult,
    evaluate,
    fixed_subset,
    lr_at,
    probe_at_epoch_end,
)

# TrainConfig fields that may differ between the members of a group. Every other field
# (batch_size, model, optimizer, budget, drop_last, measure_every, probe_size, eval_size)
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
# Rows (members x examples) of one stacked step: each layer's activations are that many rows.
# Bigger batches gain nothing from stacking (the products are large already); train them alone.
MAX_STACKED_ROWS = 2**18
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, which train.py uses

# activation -> (forward, backward(grad_out, pre_activation, output)): the kernels autograd
# runs for nn.ReLU, nn.Tanh and nn.GELU (model.ACTIVATIONS).
_ACTIVATIONS = {
    "relu": (torch.relu, lambda g, z, h: torch.ops.aten.threshold_backward(g, h, 0.0)),
    "tanh": (torch.tanh, lambda g, z, h: torch.ops.aten.tanh_backward(g, h)),
    "gelu": (F.gelu, lambda g, z, h: torch.ops.aten.gelu_backward(g, z)),
}


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


def check_group(configs: list[TrainConfig]) -> None:
    """ValueError naming the first field that keeps these configs from one stacked group."""
    if not configs:
        raise ValueError("train_stacked needs at least one config; got an empty list")
    first = configs[0]
    if first.model.factory is not None:
        raise ValueError(
            f"train_stacked stacks the built-in MLP only; got model.factory = {first.model.factory!r}. "
            "Train a factory model one trial at a time with sgdtune.train.train."
        )
    want = _shared_fields(first)
    for i, config in enumerate(configs[1:], start=1):
        got = _shared_fields(config)
        for name, value in want.items():
            if got[name] != value:
                raise ValueError(
                    f"every config of a stacked group must have the same {name} (one stacked model, "
                    f"one sequence of batches); got {value!r} in configs[0] and {got[name]!r} in "
                    f"configs[{i}]. Group configs by sgdtune.batched.group_key(config) and train "
                    "each group on its own."
                )


class StackedMLP:
    """K MLPs of one architecture as stacked tensors, with per-member SGD or Adam.

    weights[l] is (K, in, out), nn.Linear's weight transposed so that h @ W needs no
    transpose; biases[l] is (K, 1, out). Hyperparameters per member are (K, 1, 1) tensors.
    """

    def __init__(self, modules: list[nn.Module], configs: list[TrainConfig], lrs: list[float]):
        layers = [[m for m in module if isinstance(m, nn.Linear)] for module in modules]
        with torch.no_grad():
            depth = range(len(layers[0]))
            self.weights = [torch.stack([ls[i].weight.t() for ls in layers]).contiguous() for i in depth]
            self.biases = [torch.stack([ls[i].bias for ls in layers]).unsqueeze(1) for i in depth]
        self.activation, self.activation_backward = _ACTIVATIONS[configs[0].model.activation]
        self.adam = configs[0].optimizer == "adam"
        self.steps = 0
        self.lr = self._column(lrs)
        self.weight_decay = self._column([c.weight_decay for c in configs])
        self.momentum = self._column([c.momentum for c in configs])
        self.use_decay = any(c.weight_decay != 0 for c in configs)
        self.use_momentum = not self.adam and any(c.momentum != 0 for c in configs)
        zeros = lambda: [torch.zeros_like(p) for p in self.params]  # noqa: E731
        self.buf = zeros() if self.use_momentum else []
        self.exp_avg, self.exp_avg_sq = (zeros(), zeros()) if self.adam else ([], [])
        # Gradients are written into these each step: a fresh tensor of a few MiB per step
        # costs more in page faults (the allocator maps and unmaps it) than its product.
        self.grads = zeros()

    @property
    def params(self) -> list[torch.Tensor]:
        return [*self.weights, *self.biases]

    def _column(self, values: list[float]) -> torch.Tensor:
        w = self.weights[0]
        return torch.tensor(values, dtype=w.dtype, device=w.device).view(-1, 1, 1)

    def set_lr(self, lrs: list[float]) -> None:
        self.lr = self._column(lrs)

    def keep(self, positions: list[int]) -> None:
        """Keep the members at `positions` (in this order) and drop the others."""
        idx = torch.tensor(positions, dtype=torch.long, device=self.weights[0].device)
        pick = lambda ts: [t.index_select(0, idx) for t in ts]  # noqa: E731
        self.weights, self.biases = pick(self.weights), pick(self.biases)
        self.buf, self.exp_avg, self.exp_avg_sq = pick(self.buf), pick(self.exp_avg), pick(self.exp_avg_sq)
        self.lr, self.weight_decay, self.momentum = pick([self.lr, self.weight_decay, self.momentum])
        self.grads = pick(self.grads)

    @torch.no_grad()
    def load_into(self, module: nn.Module, position: int) -> nn.Module:
        """Copy the weights of the member at `position` into `module` and return it."""
        layers = [m for m in module if isinstance(m, nn.Linear)]
        for layer, w, b in zip(layers, self.weights, self.biases):
            layer.weight.copy_(w[position].t())
            layer.bias.copy_(b[position, 0])
        return module

    @torch.no_grad()
    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """One update of every member on its own batch, xb (K, B, d) and yb (K, B).
        Returns the (K,) mean cross-entropies before the update."""
        grads, losses = self._gradients(xb, yb)
        if self.adam:
            self._adam(grads)
        else:
            self._sgd(grads)
        return losses

    def _forward(self, xb: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Logits (K, B, classes), each layer's input and each hidden pre-activation."""
        inputs, pre = [], []
        h, last = xb, len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            inputs.append(h)
            z = torch.baddbmm(b, h, w)  # z = h W_i + b_i
            if i < last:
                pre.append(z)
                h = self.activation(z)
        return z, inputs, pre

    def _backward(self, g: torch.Tensor, inputs: list[torch.Tensor], pre: list[torch.Tensor]):
        """From d(loss)/d(logits), yield (layer, d(loss)/d(z_layer), layer input), last layer first."""
        for i in range(len(self.weights) - 1, -1, -1):
            yield i, g, inputs[i]
            if i > 0:
                g = self.activation_backward(torch.bmm(g, self.weights[i].transpose(1, 2)), pre[i - 1], inputs[i])

    @staticmethod
    def _dlogits(logits: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example cross-entropies (K, B) and their gradients in the logits, softmax - onehot."""
        logp = torch.log_softmax(logits, dim=2)
        target = yb.unsqueeze(2)
        losses = logp.gather(2, target).squeeze(2).neg_()
        g = logp.exp_()
        g.scatter_add_(2, target, torch.full(target.shape, -1.0, dtype=g.dtype, device=g.device))
        return losses, g

    def _gradients(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Gradients of each member's mean cross-entropy, and those means (K,)."""
        logits, inputs, pre = self._forward(xb)
        losses, g = self._dlogits(logits, yb)
        g.div_(yb.shape[1])  # of the mean over the batch
        depth = len(self.weights)
        for i, delta, h in self._backward(g, inputs, pre):
            torch.bmm(h.transpose(1, 2), delta, out=self.grads[i])
            torch.sum(delta, dim=1, keepdim=True, out=self.grads[depth + i])
        return self.grads, losses.mean(dim=1)

    @torch.no_grad()
    def gradient_stats(self, x: torch.Tensor, y: torch.Tensor) -> list[GradientStats]:
        """Every member's per-example gradient statistics on one probe batch, in one pass.

        The quantities of noise.gradient_stats_from_per_example without materializing the
        per-example gradients: example i's gradient in layer l is the outer product of the
        layer's input a_i and its output gradient d_i (plus d_i for the bias), so its squared
        norm is |d_i|^2 (|a_i|^2 + 1); the mean gradient is one batched product. Sums in float64.
        """
        k, b = self.weights[0].shape[0], x.shape[0]
        logits, inputs, pre = self._forward(x.expand(k, -1, -1))
        _, g = self._dlogits(logits, y.expand(k, -1))
        sum_sq = torch.zeros(k, dtype=torch.float64, device=x.device)
        mean_sq = torch.zeros(k, dtype=torch.float64, device=x.device)
        for _, delta, h in self._backward(g, inputs, pre):
            d2 = delta.square().sum(dim=2).double()
            a2 = h.square().sum(dim=2).double()
            sum_sq += (d2 * (a2 + 1.0)).sum(dim=1)
            mean_w = torch.bmm(h.transpose(1, 2), delta).div_(b).double()
            mean_sq += mean_w.square().sum(dim=(1, 2)) + delta.mean(dim=1).double().square().sum(dim=1)
        return [gradient_stats(s, m, b) for s, m in zip(sum_sq.tolist(), mean_sq.tolist())]

    def _sgd(self, grads: list[torch.Tensor]) -> None:
        """torch.optim.SGD (no dampening, no Nesterov) with per-member lr, momentum, decay.

        buf = m buf + g starting from buf = 0 gives torch's first step (buf = g), and m = 0
        gives plain SGD: one formula serves members with and without momentum.
        """
        neg_lr = self.lr.neg()
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if self.use_decay:
                g.addcmul_(p, self.weight_decay)
            if self.use_momentum:
                g = torch.addcmul(g, self.buf[i], self.momentum, out=self.buf[i])
            p.addcmul_(g, neg_lr)

    def _adam(self, grads: list[torch.Tensor]) -> None:
        """torch.optim.Adam (betas 0.9/0.999, eps 1e-8, L2 weight decay) with per-member lr."""
        self.steps += 1
        beta1, beta2 = ADAM_BETAS
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2_sqrt = (1 - beta2**self.steps) ** 0.5
        neg_step_size = self.lr.neg() / bias_correction1
        for p, g, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq):
            if self.use_decay:
                g.addcmul_(p, self.weight_decay)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = torch.sqrt(v, out=g).div_(bias_correction2_sqrt).add_(ADAM_EPS)  # g is spent: reuse it
            p.addcmul_(torch.div(m, denom, out=denom), neg_step_size)


@dataclass(eq=False)
class _Member:
    """One trial's own state beside its slice of the stacked tensors."""

    index: int  # position in the configs list: the hook's first argument, the result's slot
    config: TrainConfig
    plan: BatchPlan
    shuffler: torch.Generator
    meter: NoiseScaleMeter | None
    lr_target: float
    warmup_updates: int
    lr_now: float
    history: list[EpochMetrics] = field(default_factory=list)
    compute_s: float = 0.0  # its share of the group's step time
    gpu_s: float = 0.0
    epoch_start_s: float = 0.0
    probe_s: float = 0.0  # its share of the noise probes, and its own target checks
    last_probe: int = -1
    target_pending: bool = False
    stop: bool = False  # reached its target with stop_at_target: leaves at this epoch's end
    updates_to_target: int | None = None
    examples_to_target: int | None = None


def train_stacked(
    configs: list[TrainConfig],
    data: Dataset,
    on_epoch: Callable[[int, EpochMetrics], None] | None = None,
) -> list[TrainResult | Exception]:
    """Train the configs as one stacked model; one result per config, in their order.

    The configs must agree on every field but PER_MEMBER and the budget's size (ValueError
    otherwise; `group_key` groups them). After each of its epochs, member i is handed to
    `on_epoch(i, metrics)`. If that raises an Exception (optuna.TrialPruned, say), member i
    leaves the group and results[i] is the exception; a loss that turns NaN or infinite
    puts a `Diverged` there, with the update `train` would report. The other members go on
    unchanged. An exception that is not an Exception (Ctrl-C) stops the whole group.

    Times: the group's step time is split evenly among the members in the group while it
    ran, so `compute_time_s`, `epoch_time_s` and `gpu_time_s` are a member's share (the
    shares add up to the group's time) and `throughput_eps` is the trial's rate within the
    group. `wall_time_s` is the wall clock from the group's start to the member's end;
    `probe_time_s` is the member's own noise probes and target checks.
    """
    check_group(configs)
    return _Group(configs, data, on_epoch).run()


class _Group:
    """The training loop of `train_stacked`: train.train's loop, with members leaving."""

    def __init__(self, configs: list[TrainConfig], data: Dataset, on_epoch):
        self.wall_start = time.perf_counter()
        self.data, self.on_epoch = data, on_epoch
        self.device = device = data.x_train.device
        x, n = data.x_train, data.n_train
        first = configs[0]
        rows = len(configs) * min(first.batch_size, n)
        if rows > MAX_STACKED_ROWS:
            raise ValueError(
                f"a stacked step holds members x batch size <= {MAX_STACKED_ROWS} rows; got {len(configs)} x "
                f"{min(first.batch_size, n)} = {rows}. Stack fewer members, or train batches this large "
                "one trial at a time with sgdtune.train.train (stacking gains little there)."
            )
        modules = [build_model(c.model, data.n_features, data.n_classes, c.seed).to(device) for c in configs]
        self.template = modules[0].train()  # holds one member's weights at a time: probes, evaluation

        eval_idx = fixed_subset(n, first.eval_size, device)
        self.x_eval, self.y_eval = x[eval_idx], data.y_train[eval_idx]
        self.probe = None
        if first.probe_size >= 2:
            probe_idx = fixed_subset(n, first.probe_size, device)
            self.probe = x[probe_idx], data.y_train[probe_idx]

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
        self.stack = StackedMLP(modules, configs, [m.lr_now for m in self.members])
        self.max_warmup = max(m.warmup_updates for m in self.members)
        self.results: list[TrainResult | Exception | None] = [None] * len(configs)
        self.timer = StepTimer(device)
        self.charged = (0.0, 0.0)  # group compute and GPU time already split among members
        self.updates = self.examples = 0
        self.orders = torch.empty(0)
        self.losses: list[torch.Tensor] = []  # this epoch's (members,) losses, one per update
        self.checked = 0  # losses already checked for NaN/inf
        self.updates_before = 0  # updates before this epoch

    def run(self) -> list[TrainResult | Exception]:
        x, y, n, plan = self.data.x_train, self.data.y_train, self.data.n_train, self.plan
        measure_every = self.members[0].config.measure_every
        reset_peak_memory(self.device)
        for epoch in range(1, plan.epochs + 1):
            if not self.members:
                break
            self.losses, self.checked, self.updates_before = [], 0, self.updates
            for m in self.members:
                m.epoch_start_s = m.compute_s
            self.timer.start()  # the shuffle is part of an epoch's training work, as in train.py
            self.orders = torch.stack([torch.randperm(n, generator=m.shuffler, device=self.device)
                                       for m in self.members])
            for start, stop in plan.batches(epoch, self.examples, self.updates):
                if plan.batch_size == n and stop - start == n:
                    k = len(self.members)
                    xb, yb = x.expand(k, -1, -1), y.expand(k, -1)  # full batch: no gather
                else:
                    idx = self.orders[:, start:stop]
                    xb, yb = x[idx], y[idx]
                self.losses.append(self.stack.step(xb, yb))
                self.updates += 1
                self.examples += stop - start
                if self.updates <= self.max_warmup:
                    for m in self.members:
                        t = min(self.updates, m.warmup_updates)
                        m.lr_now = lr_at(t, m.config.lr, m.lr_target, m.warmup_updates)
                    self.stack.set_lr([m.lr_now for m in self.members])
                if len(self.losses) - self.checked >= FINITE_CHECK_EVERY:
                    self._check_finite(epoch, timed=True)
                targets = [m for m in self.members if m.target_pending and self.updates % m.config.target_every == 0]
                if self.updates % measure_every == 0 or targets:
                    self.timer.stop()
                    if self.updates % measure_every == 0:
                        self._probe(self.members)
                    for m in targets:
                        m.stop = self._reached_target(m) and m.config.stop_at_target
                    self.timer.start()
                ending = [m for m in self.members if m.stop or m.plan.total_updates == self.updates]
                if ending and self.updates < plan.total_updates:  # a member's training ends mid-way
                    self.timer.stop()
                    self._end_epoch(epoch, ending)
                    self.timer.start()
                if not self.members:
                    break
            self.timer.stop()
            if self.members:
                self._end_epoch(epoch, list(self.members))
        return self.results

    # -- members leaving -------------------------------------------------------------------

    def _charge(self) -> None:
        """Split the step time since the last call evenly among the members in the group.
        Called with the timer stopped, before the group changes."""
        gpu = self.timer.gpu_time_s or 0.0
        if self.members:
            k = len(self.members)
            for m in self.members:
                m.compute_s += (self.timer.compute_time_s - self.charged[0]) / k
                m.gpu_s += (gpu - self.charged[1]) / k
        self.charged = (self.timer.compute_time_s, gpu)

    def _leave(self, leaving: dict[_Member, TrainResult | Exception]) -> None:
        """These members leave the group; their result slots get what they hold."""
        if not leaving:
            return
        self._charge()
        for m, result in leaving.items():
            self.results[m.index] = result
        keep = [pos for pos, m in enumerate(self.members) if m not in leaving]
        self.members = [self.members[pos] for pos in keep]
        if self.members:
            self.stack.keep(keep)
            self.orders = self.orders[keep]
            if self.losses:
                self.losses = list(torch.stack(self.losses)[:, keep].unbind(0))

    def _check_finite(self, epoch: int, timed: bool) -> None:
        """Members with a NaN/inf among the unchecked losses leave with Diverged; one sync."""
        if len(self.losses) <= self.checked:
            return
        chunk = torch.stack(self.losses[self.checked :])  # (updates, members)
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

    def _model(self, m: _Member) -> nn.Module:
        return self.stack.load_into(self.template, self.members.index(m))

    def _probe(self, members: list[_Member]) -> None:
        """Noise probe of these members, as train.py's: at most once per update count. One
        pass serves the whole group; its time is split among the members probed."""
        members = [m for m in members if m.meter is not None and m.last_probe != self.updates]
        if not members:
            return
        t0 = time.perf_counter()
        stats = self.stack.gradient_stats(*self.probe)
        for m in members:
            m.last_probe = self.updates
            m.meter.update(stats[self.members.index(m)])
        share = (time.perf_counter() - t0) / len(members)
        for m in members:
            m.probe_s += share

    def _reached_target(self, m: _Member, val_acc: float | None = None) -> bool:
        """Record the first update count at which the member's val_acc >= its target."""
        if val_acc is None:
            t0 = time.perf_counter()
            val_acc = evaluate(self._model(m), self.data.x_val, self.data.y_val)[1]
            m.probe_s += time.perf_counter() - t0
        if val_acc >= m.config.target_val_acc:
            m.updates_to_target, m.examples_to_target, m.target_pending = self.updates, self.examples, False
            return True
        return False

    def _end_epoch(self, epoch: int, members: list[_Member]) -> None:
        """Epoch end for these members (all, or those whose training ends mid-epoch):
        divergence check, probe, evaluation, hook; then the members whose hook raised, whose
        budget is spent or who stop at their target leave the group."""
        self._charge()
        self._check_finite(epoch, timed=False)
        members = [m for m in members if m in self.members]
        evaluated = {}
        for m in members:  # evaluation and target first: they decide whether training ends here
            model = self._model(m)
            evaluated[m] = evaluate(model, self.x_eval, self.y_eval) + evaluate(model, self.data.x_val, self.data.y_val)
            if m.target_pending and self._reached_target(m, evaluated[m][3]):
                m.stop = m.config.stop_at_target
        # The same rule as train.py, so a member's grad_noise_scale equals its one-by-one value.
        self._probe([m for m in members if probe_at_epoch_end(
            self.updates, m.last_probe, m.config.measure_every, m.stop or m.plan.total_updates == self.updates)])
        step_losses = torch.stack(self.losses)  # (updates this epoch, members)
        leaving: dict[_Member, TrainResult | Exception] = {}
        for m in members:
            train_loss, train_acc, val_loss, val_acc = evaluated[m]
            c = m.config
            metrics = EpochMetrics(
                epoch=epoch,
                train_loss=train_loss,
                train_acc=train_acc,
                val_loss=val_loss,
                val_acc=val_acc,
                gen_gap=train_acc - val_acc,
                loss_noise=loss_noise(step_losses[:, self.members.index(m)]),
                grad_noise_scale=m.meter.value if m.meter is not None else None,
                noise_temperature=noise_temperature(
                    m.lr_now, self.data.n_train, self.plan.batch_size, c.momentum if c.optimizer == "sgd" else 0.0
                ),
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
