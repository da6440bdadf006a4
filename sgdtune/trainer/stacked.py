"""Several trials of one MLP and one batch size trained as one stacked model.

At small batch sizes an update of a small MLP costs far more in framework overhead than in
arithmetic. K trials that share the architecture and the batch size are trained together:
every weight gets a leading member axis, (K, in + 1, out) with the bias as the last row,
and an update is a few batched matrix products (torch.bmm / baddbmm) over (K, B, d)
tensors, so the overhead of one update is paid once for K trials. Each member is still its
own trial, the computation of `train` up to float rounding, in the same loop (loop.py):
StackedMLP is that loop's stepper for K stacked members. Each member has

- its own initial weights (`build_model(config.model, ..., config.seed)`), shuffle order (a
  generator seeded with its seed, the same `randperm` calls), lr (scaling, warmup),
  momentum, weight decay, budget size, and optimizer state with torch.optim's formulas;
- its own metrics and hook call: evaluation and target checks compute what
  `module_step.evaluate` computes, for all members in one stacked forward pass (tests hold
  the two equal); the noise probe computes every member's per-chunk gradient sums
  (science.noise.ChunkSums) in stacked passes, one per chunk, without materializing
  per-example gradients (tests hold the estimates equal to noise_scale_estimate's); the
  sharpness loads each member into an nn.Module and calls science.sharpness.sharpness.

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

About 460 lines: one Stepper, the stacked MLP's forward, backward by hand and optimizer
step, which must be read together to see that each member computes what `train` would.

Layer: trainer (the one training loop; docs/architecture.md).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data import Dataset
from ..model import build_model
from ..science.curvature_noise import CurvatureNoiseEstimate, curvature_noise_estimate
from ..science.noise import ChunkSums
from ..science.sharpness import SharpnessEstimate, sharpness
from .config import TrainConfig
from .func_stacked import FuncStacked, check_stackable
from .groups import check_group
from .loop import SHARPNESS_ITERS, SHARPNESS_SEED, SHARPNESS_TOL, Loop
from .results import EpochMetrics, TrainResult

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
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, which make_optimizer uses

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


def train_stacked(
    configs: list[TrainConfig],
    data: Dataset,
    on_epoch: Callable[[int, EpochMetrics], None] | None = None,
) -> list[TrainResult | Exception]:
    """Train the configs as one stacked model; one result per config, in their order: the
    built-in MLP as StackedMLP (hand-written batched products), any other model (a CNN, a
    factory's) through torch.func (func_stacked.FuncStacked). A model with buffers
    (BatchNorm) or dropout raises func_stacked.UnstackableModel (a ValueError) before training.

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
    `probe_time_s` is the member's share of the noise probes it took part in, `target_time_s`
    of the target checks between epoch ends, `sharpness_time_s` its sharpness measurements.
    Regression data (`data.task`) is refused: train those one by one with `train`.
    """
    check_group(configs, getattr(data, "task", "classification"))
    b = min(configs[0].batch_size, data.n_train)
    if len(configs) * b > MAX_STACKED_ROWS:
        raise ValueError(
            f"a stacked step holds members x batch size <= {MAX_STACKED_ROWS} rows; got {len(configs)} x "
            f"{b} = {len(configs) * b}. Stack fewer members, or train batches this large "
            "one trial at a time with sgdtune.trainer.train (stacking gains little there)."
        )
    device = data.x_train.device
    shape = getattr(data, "input_shape", None)  # images (C, H, W), given flat
    modules = [build_model(c.model, data.n_features, data.n_classes, c.seed, shape).to(device) for c in configs]
    if uses_stacked_mlp(configs[0]):
        loop = Loop(configs, data, on_epoch)
        return loop.run(StackedMLP(modules, configs, loop.lrs))
    for module in modules:
        check_stackable(module)  # before the loop starts: UnstackableModel, nothing trained yet
    loop = Loop(configs, data, on_epoch)
    return loop.run(FuncStacked(modules, configs, loop.lrs, loop.task))


def uses_stacked_mlp(config: TrainConfig) -> bool:
    """Whether train_stacked runs the hand-written StackedMLP (the built-in MLP) rather than
    FuncStacked (any other model). On the MLP, StackedMLP's steps took 0.38 of FuncStacked's
    time at B = 8 and 0.8 at B = 64 (K = 8, 64-256-256-10, one thread, warm)."""
    return config.model.factory is None and getattr(config.model, "name", "mlp") == "mlp"


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
        self._set_momenta([c.effective_momentum for c in configs])
        # SGD: buf[l] is the momentum buffer (the gradient itself where momentum is 0).
        # Adam: buf[l] receives the gradient, exp_avg and exp_avg_sq are the moments.
        zeros = lambda: [torch.zeros_like(w) for w in self.weights]  # noqa: E731
        self.buf = zeros()
        self.exp_avg, self.exp_avg_sq = (zeros(), zeros()) if self.adam else ([], [])
        self._workspaces: dict[tuple[int, int], _Workspace] = {}
        self._template = copy.deepcopy(modules[0])  # an nn.Module to load a member into (sharpness)
        self._set_weights(self.weights)
        self.orders = torch.empty(self.size, 0, dtype=torch.long, device=self.weights[0].device)  # begin_epoch's

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
        self.orders = self.orders.index_select(0, idx)
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

    def module(self, position: int) -> nn.Module:
        """A new nn.Module holding the member at `position` (a copy of its weights)."""
        return self.load_into(copy.deepcopy(self._template), position)

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

    def begin_epoch(self, orders: list[torch.Tensor]) -> None:
        """This epoch's permutations, one per member (the loop's Stepper interface)."""
        self.orders = torch.stack(orders)

    def step(self, x: torch.Tensor, y: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """`update` on rows orders[i, start:stop] for member i, or on all of x when that is the
        whole set (the loop's Stepper interface)."""
        return self.update(x, y, None if stop - start == x.shape[0] else self.orders[:, start:stop])

    @torch.no_grad()
    def update(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None) -> torch.Tensor:
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

    def _backward(self, g: torch.Tensor, ws: _Workspace, weights_t: list[torch.Tensor] | None = None):
        """From d(loss)/d(logits), yield (layer, d(loss)/d(z_layer), the layer's input with its
        ones column, transposed: (k, in + 1, b)), last layer first. Reads weights[i] after
        yielding layer i (weights_t: the transposed weights of a subset of members)."""
        weights_t = self.weights_t if weights_t is None else weights_t
        for i in range(len(weights_t) - 1, -1, -1):
            yield i, g, ws.inputs_t[i]
            if i > 0:
                dh = torch.bmm(g, weights_t[i], out=ws.grad[i - 1])
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

    def _subset(self, positions: list[int] | None) -> list[torch.Tensor]:
        """The weights of the members at `positions` (all of them: None, or all in order)."""
        if positions is None or positions == list(range(self.size)):
            return self.weights
        idx = torch.tensor(positions, dtype=torch.long, device=self.weights[0].device)
        return [w.index_select(0, idx) for w in self.weights]

    @torch.no_grad()
    def noise_sums(self, x: torch.Tensor, y: torch.Tensor, positions: list[int], chunks: int) -> list[ChunkSums]:
        """science.noise.chunk_sums of the members at `positions` on one probe, one stacked
        forward/backward pass per chunk for all of them.

        Example i's gradient in layer l is the outer product of the layer's input a_i (ones
        column included: the bias) and its output gradient d_i, so its squared norm is
        |d_i|^2 |a_i|^2, and a chunk's summed gradient is one batched product h^T d: no
        per-example gradient is materialized. Squared norms come from float32 vector norms,
        summed in float64; the summed gradients are (members, chunks, P) float64 and their
        Gram matrices one batched product.
        """
        weights = self._subset(positions)
        weights_t = [w[:, :-1].transpose(1, 2) for w in weights]
        k, k_chunks = weights[0].shape[0], min(chunks, x.shape[0] // 2)
        sq_norm = lambda t, dim: torch.linalg.vector_norm(t, dim=dim).double().square_()  # noqa: E731
        sum_sq = torch.zeros(k, k_chunks, dtype=torch.float64, device=x.device)
        sums, sizes = [], []
        for c, (xc, yc) in enumerate(zip(torch.tensor_split(x, k_chunks), torch.tensor_split(y, k_chunks))):
            ws = self._workspace(k, xc.shape[0])
            ws.values[0].copy_(xc)  # broadcast over the members
            _, g = self._dlogits(self._forward(ws, weights), yc.expand(k, -1), ws.minus_one)
            parts = []
            for i, delta, h_t in self._backward(g, ws, weights_t):
                sum_sq[:, c] += (sq_norm(delta, 2) * sq_norm(ws.inputs[i], 2)).sum(dim=1)  # sum_i |d_i|^2 |a_i|^2
                parts.append(torch.bmm(h_t, delta).reshape(k, -1).double())
            sums.append(torch.cat(parts, dim=1))
            sizes.append(float(xc.shape[0]))
        stacked_sums = torch.stack(sums, dim=1)  # (k, chunks, P)
        gram = torch.bmm(stacked_sums, stacked_sums.transpose(1, 2)).cpu()
        sum_sq, sizes_t = sum_sq.cpu(), torch.tensor(sizes, dtype=torch.float64)
        return [ChunkSums(sizes_t, sum_sq[j], gram[j]) for j in range(k)]

    def sharpness(self, x: torch.Tensor, y: torch.Tensor, positions: list[int],
                  starts: list[torch.Tensor | None], iters: int = SHARPNESS_ITERS) -> list[SharpnessEstimate]:
        """science.sharpness.sharpness of each member at `positions`, loaded into an nn.Module
        (one Lanczos run per member: an epoch-end measurement, not a step), from its start."""
        return [sharpness(self.load_into(self._template, position), F.cross_entropy, x, y, iters=iters,
                          tol=SHARPNESS_TOL, seed=SHARPNESS_SEED, start=start)
                for position, start in zip(positions, starts)]

    def curvature_noise(self, x: torch.Tensor, y: torch.Tensor, positions: list[int],
                        grad_sq: list[tuple[float, float]], population: int, samples: int,
                        ) -> list[CurvatureNoiseEstimate]:
        """science.curvature_noise.curvature_noise_estimate of each member at `positions`, loaded
        into an nn.Module (as sharpness)."""
        return [curvature_noise_estimate(self.load_into(self._template, p), F.cross_entropy, x, y, *g,
                                         population=population, samples=samples)
                for p, g in zip(positions, grad_sq)]

    def evaluate(self, x: torch.Tensor, y: torch.Tensor,
                 positions: list[int] | None = None) -> list[tuple[float, float]]:
        """module_step.evaluate of every member (or of those at `positions`) in one stacked forward
        pass, EVAL_ROWS rows (members x examples) at a time: mean cross-entropy, summed in
        float64, and accuracy. One sync at the end."""
        return [(loss, score) for loss, score, _ in self._evaluate(x, y, positions, keep=False)]

    def evaluate_examples(self, x: torch.Tensor, y: torch.Tensor,
                          positions: list[int]) -> list[tuple[float, float, torch.Tensor]]:
        """`evaluate` and the per-example cross-entropies (n,) of the same stacked forward pass."""
        return self._evaluate(x, y, positions, keep=True)

    @torch.no_grad()
    def _evaluate(self, x: torch.Tensor, y: torch.Tensor, positions: list[int] | None,
                  keep: bool) -> list[tuple[float, float, torch.Tensor | None]]:
        weights = self._subset(positions)
        k = weights[0].shape[0]
        loss_sum = torch.zeros(k, dtype=torch.float64, device=x.device)
        correct = torch.zeros(k, dtype=torch.int64, device=x.device)
        kept = []
        rows = max(1, EVAL_ROWS // k)
        for start in range(0, x.shape[0], rows):
            xc, yc = x[start : start + rows], y[start : start + rows]
            ws = self._workspace(k, xc.shape[0])
            ws.values[0].copy_(xc)  # broadcast over the members
            logits = self._forward(ws, weights).transpose(1, 2).contiguous()  # (k, classes, rows): see _dlogits
            logp = torch.log_softmax(logits, dim=1)
            picked = logp.gather(1, yc.expand(k, 1, -1))  # (k, 1, rows): minus the per-example losses
            if keep:
                kept.append(-picked[:, 0])
            loss_sum -= picked.sum(dim=(1, 2), dtype=torch.float64)
            # max's indices are argmax's (the first maximum), 6x faster over the middle axis here.
            correct += (logits.max(dim=1).indices == yc).sum(dim=1)
        n = x.shape[0]
        losses, hits = torch.stack([loss_sum, correct.double()]).tolist()
        examples = torch.cat(kept, dim=1).unbind(0) if keep else [None] * k
        return [(loss / n, hit / n, ex) for loss, hit, ex in zip(losses, hits, examples)]
