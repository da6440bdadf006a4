"""Sharpness: the largest eigenvalue of the Hessian of the mean training loss (docs/science.md,
section 7, "Sharpness and the edge of stability").

Pure torch. The Hessian is never formed: Lanczos runs on Hessian-vector products computed
through torch.func, reverse-over-reverse (`grad` of <`grad`, v>, a double backward) over
`functional_call`.

Layer: science (the estimators; docs/architecture.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call, grad, vmap


@dataclass(frozen=True)
class SharpnessEstimate:
    """The top of the Hessian spectrum of the mean loss on a probe, at fixed parameters.

    Units of the eigenvalues: the loss's units per parameter² (nats / parameter² for
    cross-entropy). Gradient descent with step lr and heavy-ball momentum m is stable on a
    quadratic while eigenvalue < 2 (1 + m) / lr: 2 / lr without momentum, 3.8 / lr at m = 0.9
    (docs/science.md, section 7). The loss is the data loss: weight decay wd adds wd to it.
    """

    eigenvalue: float  # lambda_max: the algebraically largest Ritz value (can be < 0 only if H is negative definite)
    iterations: int  # Lanczos steps taken = Hessian-vector products computed
    converged: bool  # the stopping rule was met (or the Krylov space became exact) within `iters`
    residual: float  # |H s - eigenvalue s| for the Ritz vector s: some eigenvalue of H lies this close
    lowest: float  # the algebraically smallest Ritz value, >= lambda_min; not checked for convergence
    probe_size: int
    # The unit Ritz vector of `eigenvalue`, flat float64 (P,): the start of the next measurement
    # (`sharpness(start=...)`) a little later in training.
    vector: torch.Tensor | None = field(default=None, compare=False, repr=False)


def _modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    return [(m, m.training) for m in model.modules()]


def _restore(modes: list[tuple[nn.Module, bool]]) -> None:
    for module, training in modes:
        module.training = training


class HessianOperator:
    """Products of the Hessian of the MEAN loss over (x, y) w.r.t. the trainable parameters
    with flat float64 vectors: `op(v)` for v of shape (P,) or a batch (S, P), the result in
    float64 of the same shape. Never forms the Hessian.

    `loss_fn(model(x_c), y_c)` must be the mean of the per-example losses of the chunk it is
    given; the probe is cut into chunks of at most `chunk_size` examples and the product of
    the mean loss is the size-weighted mean of the chunks' (exact, whatever the chunking).
    A batch of S vectors runs as one vmap over the tangents, at most `rows` examples x
    vectors at a time (memory). Products are computed in the parameters' dtype.
    Reverse-over-reverse (`grad` of <`grad`, v>): see `sharpness`. The caller puts the model
    in eval mode (dropout would make the Hessian random).

    With `keep_graph` and a probe of one chunk, the first single-vector product keeps the
    gradient's autograd graph and every product after it is one backward pass through that
    graph (the forward pass and the first backward pass are not repeated): 5.2 against 11 ms
    per product (64-128-10 MLP, 1,437 examples, one CPU thread), at the memory of that graph.
    """

    def __init__(self, model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor,
                 chunk_size: int = 4096, rows: int = 2**16, keep_graph: bool = False):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1; got {chunk_size}")
        self.n = n = x.shape[0]
        if n < 1:
            raise ValueError("the probe is empty")
        named = list(model.named_parameters())
        self.trainable = {k: p.detach() for k, p in named if p.requires_grad}
        if not self.trainable:
            raise ValueError("the model has no trainable parameters")
        frozen = {k: p.detach() for k, p in named if not p.requires_grad}
        buffers = {k: b.detach() for k, b in model.named_buffers()}
        self.shapes = [(k, p.shape, p.numel(), p.dtype) for k, p in self.trainable.items()]
        self.size = sum(numel for _, _, numel, _ in self.shapes)
        self.device = next(iter(self.trainable.values())).device
        self.chunks = [(x[i:i + chunk_size], y[i:i + chunk_size]) for i in range(0, n, chunk_size)]
        self.rows = rows
        self.keep_graph = keep_graph and len(self.chunks) == 1
        self._graph: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

        def chunk_loss(params, xc, yc):
            return loss_fn(functional_call(model, (params, frozen, buffers), (xc,)), yc)

        self._chunk_loss = chunk_loss

        def directional_slope(params, v, xc, yc):  # <grad L_c(params), v>; its gradient is H_c v
            slope = grad(chunk_loss)(params, xc, yc)
            return sum((slope[k] * v[k]).sum() for k in slope)

        self._hv = grad(directional_slope)
        self._hv_batch = vmap(grad(directional_slope), in_dims=(None, 0, None, None))

    def unflatten(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat (..., P) vector as the parameters' dict, in their dtype (views where it can)."""
        out, start = {}, 0
        lead = v.shape[:-1]
        for k, shape, numel, dtype in self.shapes:
            out[k] = v[..., start:start + numel].reshape(*lead, *shape).to(dtype)
            start += numel
        return out

    def flatten(self, tensors: dict[str, torch.Tensor], lead: tuple = ()) -> torch.Tensor:
        return torch.cat([tensors[k].reshape(*lead, -1).double() for k, *_ in self.shapes], dim=-1)

    def _kept_product(self, v: torch.Tensor) -> torch.Tensor:
        """H v through the kept gradient graph of the one chunk (built at the first call)."""
        with torch.enable_grad():
            if self._graph is None:
                leaves = [p.detach().requires_grad_(True) for p in self.trainable.values()]
                xc, yc = self.chunks[0]
                loss = self._chunk_loss(dict(zip(self.trainable, leaves)), xc, yc)
                slopes = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
                self._graph = leaves, [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, slopes)]
            leaves, slopes = self._graph
            tangent = self.unflatten(v)
            slope = sum((g * tangent[k]).sum() for k, g in zip(self.trainable, slopes))
            if not slope.requires_grad:  # the gradient does not depend on the parameters: H = 0
                return torch.zeros(self.size, dtype=torch.float64, device=self.device)
            hv = torch.autograd.grad(slope, leaves, retain_graph=True, allow_unused=True)
        return self.flatten({k: torch.zeros_like(p) if h is None else h
                             for k, p, h in zip(self.trainable, leaves, hv)})

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        if v.dim() == 1 and self.keep_graph:
            return self._kept_product(v)
        if v.dim() == 1:
            total = torch.zeros(self.size, dtype=torch.float64, device=self.device)
            for xc, yc in self.chunks:
                hv = self._hv(self.trainable, self.unflatten(v), xc, yc)
                total += self.flatten(hv) * (xc.shape[0] / self.n)
            return total
        out = torch.zeros(v.shape, dtype=torch.float64, device=self.device)
        for xc, yc in self.chunks:
            per = max(1, self.rows // xc.shape[0])  # vectors per pass
            for s in range(0, v.shape[0], per):
                hv = self._hv_batch(self.trainable, self.unflatten(v[s:s + per]), xc, yc)
                out[s:s + per] += self.flatten(hv, (min(per, v.shape[0] - s),)) * (xc.shape[0] / self.n)
        return out


def sharpness(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    iters: int = 100,
    tol: float = 1e-4,
    seed: int = 0,
    chunk_size: int = 4096,
    start: torch.Tensor | None = None,
) -> SharpnessEstimate:
    """Top eigenvalue of the Hessian of the MEAN loss over (x, y) w.r.t. the trainable parameters.

    `loss_fn(model(x_c), y_c)` must be the mean of the per-example losses of the chunk it is
    given (torch's default `reduction="mean"`). The probe is cut into chunks of at most
    `chunk_size` examples; the Hessian-vector product of the mean loss is the mean of the
    chunks' products weighted by their sizes, so the result does not depend on
    `chunk_size` (only memory does).

    Method: Lanczos with full reorthogonalisation, started from a unit Gaussian vector drawn
    from `torch.Generator().manual_seed(seed)` (the global RNG is untouched). Power
    iteration would converge to the eigenvalue of largest |lambda|, which away from a
    minimum can be a large negative one; Lanczos gives Ritz values at both ends of the
    spectrum and this returns the algebraically largest, the one that bounds the stable
    step size. The Ritz value rises monotonically towards lambda_max from below (it is a
    lower bound at every step). Stopping rule: the relative change of that Ritz value is at
    most `tol` on two successive steps, or the Krylov space stops growing (then the value
    is exact); otherwise `iters` steps and `converged=False`. Products are computed in the
    parameters' dtype, the Lanczos recurrence in float64.

    Warm start: `start` (P,), e.g. the last measurement's `vector` on the same model a little
    earlier in training, replaces the random vector; a vector near the top eigenvector makes
    the Ritz value settle in fewer steps. With a start, Lanczos also stops as soon as the
    residual |H s - theta s| of the top Ritz pair is <= `tol` x |theta| (an eigenvalue of H lies
    within tol x |theta| of theta): one or two products where the top eigenvector has barely
    moved. A start that is not finite or not of size P (another model) is ignored.

    The model's parameters, gradients and train/eval flags are left as they were. It is
    evaluated in eval mode (no dropout noise; BatchNorm uses its running statistics), so
    the Hessian is that of a deterministic function of the parameters.

    Reverse-over-reverse rather than forward-over-reverse (`jvp(grad(f))`): as fast here,
    and torch 2.13's forward-mode rules fail on some losses (MSELoss: "ZeroTensors are
    immutable").

    Cost: one Hessian-vector product is a forward pass, a backward pass that records its own
    graph and a backward pass through that, over the whole probe: 3-5 plain forward+backward
    passes of the probe (64-256-256-10 ReLU MLP, 1,000 examples, one CPU thread: 28-43 ms
    against 7-10 ms). A measurement costs `iterations` of them (11-21 on that MLP at
    tol=1e-4: 0.4-0.9 s) plus the Lanczos bookkeeping, O(iterations x P) time and float64
    memory for P trainable parameters (8 MB per 10 steps at P = 100,000).
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1; got {iters}")
    if not tol > 0:
        raise ValueError(f"tol must be > 0; got {tol}")
    operator = HessianOperator(model, loss_fn, x, y, chunk_size, keep_graph=True)
    modes = _modes(model)
    model.eval()
    if start is not None and (start.shape != (operator.size,) or not bool(torch.isfinite(start).all())
                              or not float(start.norm()) > 0):
        start = None
    try:
        return _lanczos(operator, operator.size, operator.device, iters, tol, seed, operator.n, start)
    finally:
        _restore(modes)


def _lanczos(hvp, size: int, device, iters: int, tol: float, seed: int, n: int,
             start: torch.Tensor | None = None) -> SharpnessEstimate:
    """Lanczos with full reorthogonalisation (twice, "twice is enough") on the float64 basis."""
    if start is None:
        generator = torch.Generator().manual_seed(seed)
        q = torch.randn(size, generator=generator, dtype=torch.float64).to(device)
    else:
        q = start.detach().to(device=device, dtype=torch.float64).clone()
    q /= q.norm()
    basis: list[torch.Tensor] = [q]
    alphas: list[float] = []
    betas: list[float] = []
    top = previous = -math.inf
    lowest, residual, calm, converged = math.inf, math.inf, 0, False
    scale = 0.0
    for step in range(1, min(iters, size) + 1):
        w = hvp(basis[-1])
        alpha = float(basis[-1] @ w)
        alphas.append(alpha)
        q_matrix = torch.stack(basis)
        for _ in range(2):
            w -= q_matrix.T @ (q_matrix @ w)
        beta = float(w.norm())
        tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        if betas:
            off = torch.tensor(betas, dtype=torch.float64)
            tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
        ritz, vectors = torch.linalg.eigh(tridiagonal)
        top, lowest = float(ritz[-1]), float(ritz[0])
        residual = beta * abs(float(vectors[-1, -1]))
        scale = max(scale, abs(alpha), beta, abs(top), abs(lowest))
        exhausted = beta <= 1e-12 * scale or step == size  # the Krylov space is invariant: Ritz values exact
        calm = calm + 1 if abs(top - previous) <= tol * max(abs(top), 1e-300) else 0
        settled = start is not None and residual <= tol * abs(top)
        if exhausted or calm >= 2 or settled:
            converged = True
            break
        previous = top
        betas.append(beta)
        basis.append(w / beta)
    ritz_vector = vectors[:, -1].to(device) @ torch.stack(basis[:len(alphas)])
    return SharpnessEstimate(top, len(alphas), converged, residual, lowest, n, ritz_vector / ritz_vector.norm())
