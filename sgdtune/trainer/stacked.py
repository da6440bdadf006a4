"""Several trials of one MLP and one batch size trained as one stacked model.

At small batch sizes an update of a small MLP costs far more in framework overhead than in
arithmetic. K trials that share the architecture and the batch size are trained together:
every weight gets a leading member axis, (K, in + 1, out) with the bias as the last row,
and an update is a few batched matrix products (torch.bmm / baddbmm) over (K, B, d)
tensors, so the overhead of one update is paid once for K trials. Each member is still its
own trial, the computation of `train.train` up to float rounding:

- its own initial weights (`build_model(config.model, ..., config.seed)`), shuffle order (a
  generator seeded with its seed, the same `randperm` calls), lr (scaling, warmup),
  momentum, weight decay, budget size, and optimizer state with torch.optim's formulas;
- its own metrics and hook call: evaluation and target checks compute what
  `train.evaluate` computes, for all members in one stacked forward pass (tests hold the
  two equal); the noise probe computes every member's per-example gradient statistics in
  one stacked pass, without materializing per-example gradients (the estimators of
  noise.py; tests hold them equal to NoiseScaleMeter's).

Members never mix: every operation acts per member along axis 0, so a NaN in one member's
weights cannot reach another. A member leaves the group (its slice is dropped) when its
budget is spent, when its hook raises (a pruner), or when its loss turns non-finite.

Where the time goes, and what was done about it (measured on the 2-core CPU of
benchmarks/batched.py, K = 8, 64-256-256-10 MLP, one thread): at B = 64 a step is ~2.4 ms
of batched products, close to the core's peak, plus ~1 ms of everything else, and
evaluation is a quarter of a run. So:
- the backward pass is written out (two batched products per layer) rather than taken from
  autograd: 15-25% faster at B = 8 than autograd through the same forward, and
  torch.func.vmap over stack_module_state was slower than both; the activation derivatives
  are the aten kernels autograd itself calls;
- the bias rides in the weights against a ones column of each layer's input: one product
  and one optimizer update per layer instead of two of each;
- when the members share one momentum (the usual case) the gradient product adds into the
  momentum buffer (BLAS's beta * C + A B): no gradient tensor is written and read back;
- activations, gradients and inputs live in buffers kept between steps (without them a step
  takes ~10% longer, evaluation ~40%), gathered into by index_select;
- log-softmax runs over the classes on the middle axis, where this CPU build vectorizes it
  (over a last axis of 10 it costs ~0.2 us a row: 100 us of a 3.5 ms step);
- evaluation runs all members at once, in chunks small enough to stay in cache.
A flat (K, P) parameter buffer, for one optimizer op instead of three, was tried: the
products on its strided views got slower by more than it saved.

benchmarks/batched.py measures the whole against one-by-one training. On that shared
machine, K = 8 ran 4.5-5x the trials per minute at B = 8 and 2.3-2.4x at B = 64 on one
thread; 7-9x and 3.1-3.5x on two (one process, both sides; load-dependent). At B = 64 on
one thread the products, already near peak, and the evaluation (the same arithmetic as one
by one, a quarter of the stacked run) leave little above that.
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
# Evaluation runs members x examples <= EVAL_ROWS rows at a time: a chunk's activations then
# stay in the core's L2 cache between layers (measured at K = 8 on 1,437 examples: 128-row
# chunks take 2/3 of the time of one pass over all).
EVAL_ROWS = 1024
# A step's buffers are kept between steps up to this many floats (16 MiB); bigger ones are
# made afresh each time, which their products dwarf, so the cache stays small.
CACHED_WORKSPACE_FLOATS = 2**22
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, which train.py uses

# activation -> (forward(z, out), backward(grad_out, pre_activation, output, out)): the aten
# kernels autograd runs for nn.ReLU, nn.Tanh and nn.GELU (model.ACTIVATIONS), in their out=
# forms so that every step writes into the same buffers.
_ACTIVATIONS = {
    "relu": (lambda z, out: torch.clamp_min(z, 0.0, out=out),
             lambda g, z, h, out: torch.ops.aten.threshold_backward.grad_input(g, h, 0.0, grad_input=out)),
    "tanh": (lambda z, out: torch.tanh(z, out=out),
             lambda g, z, h, out: torch.ops.aten.tanh_backward.grad_input(g, h, grad_input=out)),
    # gelu.out writes wrong values into a strided `out` (torch 2.13): computed, then copied.
    "gelu": (lambda z, out: out.copy_(F.gelu(z)),
             lambda g, z, h, out: torch.ops.aten.gelu_backward.grad_input(g, z, grad_input=out)),
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


class _Workspace:
    """The tensors one forward/backward pass of k members on b rows writes into, kept between
    steps: with fresh ones each time (page faults, allocator calls) a step at K = 8, B = 64
    took ~10% longer and evaluation ~40%."""

    def __init__(self, widths: list[int], k: int, b: int, like: torch.Tensor):
        new = lambda *shape: torch.empty(*shape, dtype=like.dtype, device=like.device)  # noqa: E731
        # Each layer's input with a last column of ones (the bias row of the stacked weights),
        # and views of it made once: at ~5 us a view, a step would spend ~0.1 ms making them.
        self.inputs = [new(k, b, w + 1) for w in widths[:-1]]
        for a in self.inputs:
            a[..., -1] = 1.0
        self.values = [a[..., :-1] for a in self.inputs]  # without the ones column
        self.rows = self.inputs[0].view(k * b, -1)[:, :-1]  # the first input, one row per example
        self.inputs_t = [a.transpose(1, 2) for a in self.inputs]
        self.pre = [new(k, b, w) for w in widths[1:]]  # pre-activations; the last is the logits
        self.grad = [new(k, b, w) for w in widths[1:-1]]  # d(loss)/d(hidden pre-activation)
        self.minus_one = torch.full((k, 1, b), -1.0, dtype=like.dtype, device=like.device)


class StackedMLP:
    """K MLPs of one architecture as stacked tensors, with per-member SGD or Adam.

    weights[l] is (K, in + 1, out): nn.Linear's weight transposed (h @ W needs no transpose)
    with its bias as the last row. A layer's input carries a column of ones, so one batched
    product gives the layer's output bias included, and the weight-gradient product h^T d
    gives the bias gradient in its last row: per layer one product and one optimizer update
    where a separate bias takes two. Hyperparameters per member are (K, 1, 1) tensors.
    """

    def __init__(self, modules: list[nn.Module], configs: list[TrainConfig], lrs: list[float]):
        layers = [[m for m in module if isinstance(m, nn.Linear)] for module in modules]
        with torch.no_grad():
            self.weights = [
                torch.stack([torch.cat([ls[i].weight.t(), ls[i].bias.unsqueeze(0)]) for ls in layers]).contiguous()
                for i in range(len(layers[0]))
            ]
        self.widths = [w.shape[1] - 1 for w in self.weights] + [self.weights[-1].shape[2]]
        self.activation, self.activation_backward = _ACTIVATIONS[configs[0].model.activation]
        self.adam = configs[0].optimizer == "adam"
        self.steps = 0
        self.lr = self._column(lrs)
        self.weight_decay = self._column([c.weight_decay for c in configs])
        self.use_decay = any(c.weight_decay != 0 for c in configs)
        self._set_momenta([0.0 if self.adam else c.momentum for c in configs])
        # SGD: buf[l] is the momentum buffer (the gradient itself where momentum is 0).
        # Adam: buf[l] receives the gradient, exp_avg and exp_avg_sq are the moments.
        zeros = lambda: [torch.zeros_like(w) for w in self.weights]  # noqa: E731
        self.buf = zeros()
        self.exp_avg, self.exp_avg_sq = (zeros(), zeros()) if self.adam else ([], [])
        self._workspaces: dict[tuple[int, int], _Workspace] = {}
        self._set_weights(self.weights)

    def _set_weights(self, weights: list[torch.Tensor]) -> None:
        self.weights = weights
        # W^T without the bias row, for the backward pass: d(loss)/d(input) = d W^T.
        self.weights_t = [w[:, :-1].transpose(1, 2) for w in weights]

    def _set_momenta(self, momenta: list[float]) -> None:
        self.momenta, self.momentum = momenta, self._column(momenta)
        # One momentum for all (the usual case: it is rarely searched): BLAS applies it.
        self.shared_momentum = momenta[0] if all(m == momenta[0] for m in momenta) else None

    @property
    def size(self) -> int:
        """Members in the stack."""
        return self.weights[0].shape[0]

    def _column(self, values: list[float]) -> torch.Tensor:
        w = self.weights[0]
        return torch.tensor(values, dtype=w.dtype, device=w.device).view(-1, 1, 1)

    def set_lr(self, lrs: list[float]) -> None:
        self.lr = self._column(lrs)

    def keep(self, positions: list[int]) -> None:
        """Keep the members at `positions` (in this order) and drop the others."""
        idx = torch.tensor(positions, dtype=torch.long, device=self.weights[0].device)
        pick = lambda ts: [t.index_select(0, idx) for t in ts]  # noqa: E731
        self._set_weights(pick(self.weights))
        self.buf, self.exp_avg, self.exp_avg_sq = pick(self.buf), pick(self.exp_avg), pick(self.exp_avg_sq)
        self.lr, self.weight_decay = pick([self.lr, self.weight_decay])
        self._set_momenta([self.momenta[p] for p in positions])
        self._workspaces.clear()

    @torch.no_grad()
    def load_into(self, module: nn.Module, position: int) -> nn.Module:
        """Copy the weights of the member at `position` into `module` and return it."""
        layers = [m for m in module if isinstance(m, nn.Linear)]
        for layer, w in zip(layers, self.weights):
            layer.weight.copy_(w[position, :-1].t())
            layer.bias.copy_(w[position, -1])
        return module

    def _workspace(self, k: int, b: int) -> _Workspace:
        ws = self._workspaces.get((k, b))
        if ws is None:
            ws = _Workspace(self.widths, k, b, self.weights[0])
            if k * b * 3 * sum(self.widths) <= CACHED_WORKSPACE_FLOATS:
                self._workspaces[(k, b)] = ws
        return ws

    def _fill_input(self, x: torch.Tensor, idx: torch.Tensor | None) -> _Workspace:
        """The workspace of this batch with x[idx] (k, b) (idx None: all of x for every member)
        in its first input."""
        k = self.size
        b = x.shape[0] if idx is None else idx.shape[1]
        ws = self._workspace(k, b)
        if idx is None:
            ws.values[0].copy_(x)  # broadcast over the members
        else:  # gathered straight into the buffer: x[idx] would allocate, then a copy
            torch.index_select(x, 0, idx.reshape(-1), out=ws.rows)
        return ws

    @torch.no_grad()
    def step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
        """One update of every member on its own batch: rows idx[i] (b indices) of x (n, d) and
        y (n,) for member i, or all rows for every member when idx is None.
        Returns the (K,) mean cross-entropies before the update."""
        ws = self._fill_input(x, idx)
        yb = y.expand(self.size, -1) if idx is None else y.take(idx)
        losses, g = self._dlogits(self._forward(ws), yb, ws.minus_one)
        # The deltas stay those of the per-example losses; the products take the 1/b of the
        # mean (BLAS's alpha), which saves a pass over them.
        for i, delta, h_t in self._backward(g, ws):
            self._accumulate(i, h_t, delta, 1.0 / yb.shape[1])
        for i in range(len(self.weights)):
            if self.adam:
                self._adam(i)
            else:
                self._sgd(i)
        return losses.mean(dim=1)

    def _forward(self, ws: _Workspace, weights: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Logits (k, b, classes) of the input in ws.inputs[0]; fills the workspace."""
        weights = self.weights if weights is None else weights
        last = len(weights) - 1
        for i, w in enumerate(weights):
            z = torch.bmm(ws.inputs[i], w, out=ws.pre[i])  # the bias comes with the ones column
            if i < last:
                self.activation(z, out=ws.values[i + 1])
        return z

    def _backward(self, g: torch.Tensor, ws: _Workspace):
        """From d(loss)/d(logits), yield (layer, d(loss)/d(z_layer), the layer's input with its
        ones column, transposed: (k, in + 1, b)), last layer first. Reads weights[i] after
        yielding layer i."""
        for i in range(len(self.weights) - 1, -1, -1):
            yield i, g, ws.inputs_t[i]
            if i > 0:
                dh = torch.bmm(g, self.weights_t[i], out=ws.grad[i - 1])
                g = self.activation_backward(dh, ws.pre[i - 1], ws.values[i], out=dh)

    @staticmethod
    def _dlogits(logits: torch.Tensor, yb: torch.Tensor, minus_one: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example cross-entropies (K, B) and their gradients in the logits, softmax - onehot.

        The classes are moved to the middle axis first: this CPU build's log_softmax over a
        short last axis (10 classes) takes ~0.2 us a row, 100 us a step at K = 8, B = 64,
        while over the middle axis it runs vectorized along the batch, in 8 us."""
        logp = torch.log_softmax(logits.transpose(1, 2).contiguous(), dim=1)  # (K, classes, B)
        target = yb.unsqueeze(1)
        losses = logp.gather(1, target).squeeze(1).neg_()
        g = logp.exp_().scatter_add_(1, target, minus_one)  # minus_one: (K, 1, B) of -1
        return losses, g.transpose(1, 2)

    def _accumulate(self, i: int, h_t: torch.Tensor, delta: torch.Tensor, scale: float) -> None:
        """buf[i] = momentum * buf[i] + scale * h^T delta, the gradient product and the momentum
        in one BLAS call (beta * C + alpha * A B) when the members share one momentum; Adam:
        buf[i] = the gradient."""
        buf, beta = self.buf[i], self.shared_momentum  # 0 (Adam, plain SGD): the old buffer is ignored
        if beta is None:
            buf.mul_(self.momentum)
            beta = 1.0
        buf.baddbmm_(h_t, delta, beta=beta, alpha=scale)

    def _sgd(self, i: int) -> None:
        """torch.optim.SGD (no dampening, no Nesterov) with per-member lr, momentum, decay:
        buf = m buf + (g + wd p), p -= lr buf. buf starts at 0, which gives torch's first
        step (buf = g), and m = 0 gives plain SGD: one formula serves every member."""
        p, buf = self.weights[i], self.buf[i]
        if self.use_decay:
            buf.addcmul_(p, self.weight_decay)
        p.addcmul_(buf, self.lr, value=-1.0)

    def _adam(self, i: int) -> None:
        """torch.optim.Adam (betas 0.9/0.999, eps 1e-8, L2 weight decay) with per-member lr."""
        if i == 0:
            self.steps += 1
        beta1, beta2 = ADAM_BETAS
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2_sqrt = (1 - beta2**self.steps) ** 0.5
        p, g, m, v = self.weights[i], self.buf[i], self.exp_avg[i], self.exp_avg_sq[i]
        if self.use_decay:
            g.addcmul_(p, self.weight_decay)
        m.lerp_(g, 1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        denom = torch.sqrt(v, out=g).div_(bias_correction2_sqrt).add_(ADAM_EPS)  # g is spent: reuse it
        # The step size rounded as torch's, -lr / bias_correction1 first: Adam carries a 1-ulp
        # difference here far (lr * value=-1/bc1 moved a test's val_loss by 8e-5).
        p.addcmul_(torch.div(m, denom, out=denom), self.lr.neg() / bias_correction1)

    @torch.no_grad()
    def gradient_stats(self, x: torch.Tensor, y: torch.Tensor) -> list[GradientStats]:
        """Every member's per-example gradient statistics on one probe batch, in one pass.

        The quantities of noise.gradient_stats_from_per_example without materializing the
        per-example gradients: example i's gradient in layer l is the outer product of the
        layer's input a_i (ones column included: the bias) and its output gradient d_i, so
        its squared norm is |d_i|^2 |a_i|^2; the mean gradient is one batched product.
        Sums of squares come from vector norms (float32, one pass, no squared copy), combined
        in float64.
        """
        k, b = self.size, x.shape[0]
        ws = self._fill_input(x, None)
        _, g = self._dlogits(self._forward(ws), y.expand(k, -1), ws.minus_one)
        sum_sq = torch.zeros(k, dtype=torch.float64, device=x.device)
        mean_sq = torch.zeros(k, dtype=torch.float64, device=x.device)
        sq_norm = lambda t, dim: torch.linalg.vector_norm(t, dim=dim).double().square_()  # noqa: E731
        for i, delta, h_t in self._backward(g, ws):
            sum_sq += (sq_norm(delta, 2) * sq_norm(ws.inputs[i], 2)).sum(dim=1)  # sum_i |d_i|^2 |a_i|^2
            grad_sum = torch.bmm(h_t, delta)  # b x the mean gradient
            mean_sq += sq_norm(grad_sum, (1, 2)).div_(b * b)
        return [gradient_stats(s, m, b) for s, m in zip(sum_sq.tolist(), mean_sq.tolist())]

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor, positions: list[int] | None = None) -> list[tuple[float, float]]:
        """train.evaluate of every member (or of those at `positions`) in one stacked forward
        pass, EVAL_ROWS rows (members x examples) at a time: mean cross-entropy, summed in
        float64, and accuracy. One sync at the end."""
        weights = self.weights
        if positions is not None and positions != list(range(self.size)):
            idx = torch.tensor(positions, dtype=torch.long, device=x.device)
            weights = [w.index_select(0, idx) for w in weights]
        k = weights[0].shape[0]
        loss_sum = torch.zeros(k, dtype=torch.float64, device=x.device)
        correct = torch.zeros(k, dtype=torch.int64, device=x.device)
        rows = max(1, EVAL_ROWS // k)
        for start in range(0, x.shape[0], rows):
            xc, yc = x[start : start + rows], y[start : start + rows]
            ws = self._workspace(k, xc.shape[0])
            ws.values[0].copy_(xc)  # broadcast over the members
            logits = self._forward(ws, weights).transpose(1, 2).contiguous()  # (k, classes, rows): see _dlogits
            logp = torch.log_softmax(logits, dim=1)
            loss_sum -= logp.gather(1, yc.expand(k, 1, -1)).sum(dim=(1, 2), dtype=torch.float64)
            # max's indices are argmax's (the first maximum), 6x faster over the middle axis here.
            correct += (logits.max(dim=1).indices == yc).sum(dim=1)
        n = x.shape[0]
        losses, hits = torch.stack([loss_sum, correct.double()]).tolist()
        return [(loss / n, hit / n) for loss, hit in zip(losses, hits)]


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
    probe_s: float = 0.0  # its share of the noise probes and target checks
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
    `probe_time_s` is the member's share of the noise probes and target checks it took part in.
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
                full = plan.batch_size == n and stop - start == n  # full batch: no gather
                self.losses.append(self.stack.step(x, y, None if full else self.orders[:, start:stop]))
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
                    if targets:
                        self._check_targets(targets)
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

    def _evaluate(self, members: list[_Member], x: torch.Tensor, y: torch.Tensor) -> list[tuple[float, float]]:
        """(mean cross-entropy, accuracy) of these members on (x, y), in one stacked pass."""
        return self.stack.evaluate(x, y, [self.members.index(m) for m in members])

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

    def _check_targets(self, members: list[_Member], val_accs: list[float] | None = None) -> None:
        """Record the first update count at which a member's val_acc >= its target; a member
        with stop_at_target then stops. Without val_accs they are evaluated here, in one pass
        whose time is split among these members."""
        if val_accs is None:
            t0 = time.perf_counter()
            val_accs = [acc for _, acc in self._evaluate(members, self.data.x_val, self.data.y_val)]
            share = (time.perf_counter() - t0) / len(members)
            for m in members:
                m.probe_s += share
        for m, val_acc in zip(members, val_accs):
            if val_acc >= m.config.target_val_acc:
                m.updates_to_target, m.examples_to_target, m.target_pending = self.updates, self.examples, False
                m.stop = m.config.stop_at_target

    def _end_epoch(self, epoch: int, members: list[_Member]) -> None:
        """Epoch end for these members (all, or those whose training ends mid-epoch):
        divergence check, probe, evaluation, hook; then the members whose hook raised, whose
        budget is spent or who stop at their target leave the group."""
        self._charge()
        self._check_finite(epoch, timed=False)
        members = [m for m in members if m in self.members]
        if not members:  # all diverged
            return
        # Evaluation and targets first: they decide whether training ends here.
        train_eval = self._evaluate(members, self.x_eval, self.y_eval)
        val_eval = self._evaluate(members, self.data.x_val, self.data.y_val)
        evaluated = {m: t + v for m, t, v in zip(members, train_eval, val_eval)}
        pending = [m for m in members if m.target_pending]
        if pending:
            self._check_targets(pending, [evaluated[m][3] for m in pending])
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
