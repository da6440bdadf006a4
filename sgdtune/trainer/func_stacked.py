"""K trials of any one model trained side by side through torch.func: the loop's stepper for
stacked models that are not the built-in MLP (a CNN, a factory's model).

The members' parameters are stacked along a leading axis (torch.func.stack_module_state),
and one update is a forward pass vmapped over that axis (`functional_call(template, member's
params, xb)`, each member on its own batch, the rows orders[i][start:stop]), the members'
mean losses (vmap of the loss) and one autograd backward of their sum: the gradient in
member i's slice is member i's own. One batched forward/backward for K trials; torch.func's
vmap(grad_and_value(loss)) gives the same gradients (to 1e-8) and took 1.3x as long (a CNN,
K = 8, B = 8, one thread). The optimizer is written
out per member, with (K,) learning rates, momenta and weight decays:

- SGD is torch.optim.SGD (no dampening, no Nesterov): g += wd p; buf = m buf + g; p -= lr buf.
  The buffer starts at zero, so the first step gives torch's buf = g, and m = 0 gives plain
  SGD (buf = g): one formula for every member;
- Adam is torch.optim.Adam (betas 0.9/0.999, eps 1e-8, L2 weight decay, bias correction),
  the step size rounded as torch's (-lr / bias_correction1 first).

Members never mix: every op acts per member along axis 0. Measurements at epoch ends load a
member into a template nn.Module (its parameters copied in) and call what ModuleStepper
calls: science.noise.chunk_sums, science.sharpness.sharpness (evaluation is one stacked
forward pass, vmap over the members). The noise probe thus costs what it costs one by one:
every member's per-example gradients at once (vmap over the members of vmap over the
examples of grad) was tried and took 1.9x longer than member by member (a CNN on the 2-core
CPU: the doubly batched convolutions' weight gradients are slow), so for a CNN at B = 8 it
is about half of a stacked run. benchmarks/batched.py's CNN group (digits as 8x8 images,
convolutions 16-16, K = 8, one thread, 2-core machine at load 3, 3 rounds): 2.1x the trials
per minute at B = 8 (steps alone 2.9x), 1.65x at B = 64 (steps 2.3x); the steps are mostly
the grouped convolutions' backward that vmap turns them into. The first vmap in a process takes a few seconds more.

Models whose training changes state outside their parameters cannot be stacked this way:
buffers (BatchNorm's running statistics) and dropout (vmap's random draws are not those of
the model trained alone). `check_stackable` refuses them with UnstackableModel (a
ValueError); study/cohorts.py then trains such trials one by one.

Layer: trainer (the one training loop; docs/architecture.md).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from ..errors import UnstackableModel
from ..science.curvature_noise import CurvatureNoiseEstimate, curvature_noise_estimate
from ..science.noise import ChunkSums, chunk_sums
from ..science.sharpness import SharpnessEstimate, sharpness
from .config import TrainConfig
from .loop import SHARPNESS_ITERS, SHARPNESS_SEED, SHARPNESS_TOL
from .losses import loss_function
from .module_step import evaluate_examples

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, which make_optimizer uses
EVAL_CHUNK = 8192  # examples per stacked forward pass when evaluating


def check_stackable(module: nn.Module) -> None:
    """UnstackableModel when `module` has buffers (BatchNorm's running statistics) or dropout."""
    buffers = [name for name, _ in module.named_buffers()]
    if buffers:
        raise UnstackableModel(
            f"stacked training needs a model whose state is its parameters alone; this one has buffers "
            f"{buffers[:3]} (BatchNorm's running statistics, say). Train it one trial at a time with "
            "sgdtune.trainer.train."
        )
    dropout = [name for name, m in module.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    if dropout:
        raise UnstackableModel(
            f"stacked training cannot reproduce dropout's random draws member by member; this model has "
            f"dropout at {dropout[:3]}. Train it one trial at a time with sgdtune.trainer.train."
        )


class FuncStacked:
    """The loop's Stepper for K members of one model through torch.func (see the module's docstring)."""

    def __init__(self, modules: list[nn.Module], configs: list[TrainConfig], lrs: list[float],
                 task: str = "classification"):
        for module in modules:
            check_stackable(module)
        self.task, self.loss_fn = task, loss_function(task)
        self.template = copy.deepcopy(modules[0])  # what functional_call runs, and where a member is loaded
        params, _ = stack_module_state(modules)
        self.names = list(params)
        self.params = [params[name].detach().clone() for name in self.names]
        self.adam = configs[0].optimizer == "adam"
        self.steps = 0
        self.lr = self._vector(lrs)
        self.momentum = self._vector([c.effective_momentum for c in configs])
        self.weight_decay = self._vector([c.weight_decay for c in configs])
        self.use_decay = any(c.weight_decay != 0 for c in configs)
        self.use_momentum = any(c.effective_momentum != 0 for c in configs)
        zeros = lambda: [torch.zeros_like(p) for p in self.params]  # noqa: E731
        self.buf = zeros() if not self.adam and self.use_momentum else []
        self.exp_avg, self.exp_avg_sq = (zeros(), zeros()) if self.adam else ([], [])
        self.orders = torch.empty(self.size, 0, dtype=torch.long, device=self.params[0].device)

        template, loss_fn, names = self.template, self.loss_fn, self.names

        def forward(params: list[torch.Tensor], xb: torch.Tensor) -> torch.Tensor:
            return functional_call(template, dict(zip(names, params)), (xb,))

        self._losses = vmap(lambda out, yb: loss_fn(out, yb))  # (K, B, ...), (K, B) -> (K,) mean losses
        self._forward_each = vmap(forward)  # each member on its own batch
        self._forward = vmap(forward, in_dims=(0, None))  # every member on the same x

    @property
    def size(self) -> int:
        return self.params[0].shape[0]

    def _vector(self, values: list[float]) -> torch.Tensor:
        p = self.params[0]
        return torch.tensor(values, dtype=p.dtype, device=p.device)

    @staticmethod
    def _per_member(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A (K,) vector shaped to broadcast against a stacked parameter (K, ...)."""
        return v.view(-1, *([1] * (like.dim() - 1)))

    # -- the Stepper interface ---------------------------------------------------------------

    def begin_epoch(self, orders: list[torch.Tensor]) -> None:
        self.orders = torch.stack(orders)

    def set_lr(self, lrs: list[float]) -> None:
        self.lr = self._vector(lrs)

    def step(self, x: torch.Tensor, y: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        params = [p.detach().requires_grad_() for p in self.params]
        if stop - start == x.shape[0]:
            out, yb = self._forward(params, x), y.expand(self.size, -1)
        else:
            idx = self.orders[:, start:stop]
            out, yb = self._forward_each(params, x[idx]), y[idx]
        losses = self._losses(out, yb)
        # The members' losses are independent, so the gradient of their sum in member i's
        # slice is member i's gradient.
        grads = torch.autograd.grad(losses.sum(), params)
        with torch.no_grad():
            if self.adam:
                self._adam(grads)
            else:
                self._sgd(grads)
        return losses.detach()

    def _sgd(self, grads: list[torch.Tensor]) -> None:
        """torch.optim.SGD per member: g += wd p; buf = m buf + g (buf = g at the first step:
        it starts at 0); p -= lr buf."""
        for i, (p, g) in enumerate(zip(self.params, grads)):
            if self.use_decay:
                g = g.addcmul(p, self._per_member(self.weight_decay, p))
            if self.use_momentum:
                g = self.buf[i].mul_(self._per_member(self.momentum, p)).add_(g)
            p.addcmul_(g, self._per_member(self.lr, p), value=-1.0)

    def _adam(self, grads: list[torch.Tensor]) -> None:
        """torch.optim.Adam per member (betas 0.9/0.999, eps 1e-8, L2 weight decay)."""
        self.steps += 1
        beta1, beta2 = ADAM_BETAS
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2_sqrt = (1 - beta2**self.steps) ** 0.5
        for p, g, m, v in zip(self.params, grads, self.exp_avg, self.exp_avg_sq):
            if self.use_decay:
                g = g.addcmul(p, self._per_member(self.weight_decay, p))
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = v.sqrt().div_(bias_correction2_sqrt).add_(ADAM_EPS)
            # The step size rounded as torch's: -lr / bias_correction1 first (see stacked.py).
            p.addcmul_(m.div(denom), self._per_member(self.lr.neg() / bias_correction1, p))

    def keep(self, positions: list[int]) -> None:
        idx = torch.tensor(positions, dtype=torch.long, device=self.params[0].device)
        pick = lambda ts: [t.index_select(0, idx) for t in ts]  # noqa: E731
        self.params, self.buf = pick(self.params), pick(self.buf)
        self.exp_avg, self.exp_avg_sq = pick(self.exp_avg), pick(self.exp_avg_sq)
        self.lr, self.momentum, self.weight_decay = pick([self.lr, self.momentum, self.weight_decay])
        self.orders = self.orders.index_select(0, idx)

    @torch.no_grad()
    def load_into(self, module: nn.Module, position: int) -> nn.Module:
        """Copy the parameters of the member at `position` into `module` and return it."""
        own = dict(module.named_parameters())
        for name, p in zip(self.names, self.params):
            own[name].copy_(p[position])
        return module

    def module(self, position: int) -> nn.Module:
        """A new nn.Module holding the member at `position` (a copy of its parameters)."""
        return self.load_into(copy.deepcopy(self.template), position)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor, positions: list[int]) -> list[tuple[float, float]]:
        """module_step.evaluate of the members at `positions`: classification in one stacked
        forward pass per chunk (loss summed in float64, accuracy), one sync at the end;
        regression member by member through module_step.evaluate."""
        return [(loss, score) for loss, score, _ in self._evaluate(x, y, positions, keep=False)]

    def evaluate_examples(self, x: torch.Tensor, y: torch.Tensor,
                          positions: list[int]) -> list[tuple[float, float, torch.Tensor]]:
        """`evaluate` and the per-example losses (n,) of the same forward pass."""
        return self._evaluate(x, y, positions, keep=True)

    @torch.no_grad()
    def _evaluate(self, x: torch.Tensor, y: torch.Tensor, positions: list[int],
                  keep: bool) -> list[tuple[float, float, torch.Tensor | None]]:
        if self.task != "classification":
            return [evaluate_examples(self.load_into(self.template, p), x, y, self.task, keep=keep) for p in positions]
        idx = torch.tensor(positions, dtype=torch.long, device=x.device)
        params = [p.index_select(0, idx) for p in self.params]
        k = len(positions)
        loss_sum = torch.zeros(k, dtype=torch.float64, device=x.device)
        correct = torch.zeros(k, dtype=torch.float64, device=x.device)
        kept = []
        for start in range(0, x.shape[0], EVAL_CHUNK):
            out = self._forward(params, x[start : start + EVAL_CHUNK])  # (k, b, classes)
            target = y[start : start + EVAL_CHUNK]
            losses = self.loss_fn(out.flatten(0, 1), target.repeat(k), reduction="none").view(k, -1)
            if keep:
                kept.append(losses)
            loss_sum += losses.sum(dim=1).double()
            correct += (out.argmax(dim=2) == target).sum(dim=1)
        n = x.shape[0]
        losses, hits = torch.stack([loss_sum, correct]).tolist()
        examples = torch.cat(kept, dim=1).unbind(0) if keep else [None] * k
        return [(loss / n, hit / n, ex) for loss, hit, ex in zip(losses, hits, examples)]

    def noise_sums(self, x: torch.Tensor, y: torch.Tensor, positions: list[int], chunks: int) -> list[ChunkSums]:
        return [chunk_sums(self.load_into(self.template, p), self.loss_fn, x, y, chunks) for p in positions]

    def curvature_noise(self, x: torch.Tensor, y: torch.Tensor, positions: list[int],
                        grad_sq: list[tuple[float, float]], population: int, samples: int,
                        ) -> list[CurvatureNoiseEstimate]:
        return [curvature_noise_estimate(self.load_into(self.template, p), self.loss_fn, x, y, *g,
                                         population=population, samples=samples)
                for p, g in zip(positions, grad_sq)]

    def sharpness(self, x: torch.Tensor, y: torch.Tensor, positions: list[int],
                  starts: list[torch.Tensor | None], iters: int = SHARPNESS_ITERS) -> list[SharpnessEstimate]:
        return [sharpness(self.load_into(self.template, p), self.loss_fn, x, y, iters=iters,
                          tol=SHARPNESS_TOL, seed=SHARPNESS_SEED, start=start) for p, start in zip(positions, starts)]

