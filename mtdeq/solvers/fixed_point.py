"""Deep-equilibrium forward pass: the forward-backward map of Eq. (3) and its fixed point.

The DEQ of Algorithm 1 iterates

    f(z) = Q_theta( z - eta * A^T (A z - y), sigma_denoise )                        (Eq. 3)

until the per-image mean squared difference of consecutive iterates drops below 1e-7, with a
cap of 350 iterations and a divergence guard at |z| > 1e10 (Section III-A).  The fixed point is
found without autograd; training back-propagates through one extra application of ``f``
(Jacobian-free backprop, Fig. 1), see :func:`jfb_output`.

Active-subset design
--------------------
Images in a batch stop on their own criterion.  Stopped images are frozen and are not
evaluated again when ``f`` can be evaluated on a subset: a map built by :func:`fb_map` has the
signature ``f(z, idx)`` where ``z`` holds only the active images (shape (len(idx), C, H, W)) and
``idx`` is a LongTensor of their batch positions, so that per-image operators, observations and
noise levels are picked inside the map.  A plain ``f(z)`` (one argument) is also accepted: it is
evaluated on the full batch and the stopped images are masked out, which costs a full-batch
evaluation per iteration but is correct for any map.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

def fb_step(z: Tensor, *, op, y: Tensor, denoiser, eta: float = 0.49, sigma_denoise) -> Tensor:
    """One forward-backward step, Eq. (3): ``denoiser(z - eta * A^T(A z - y), sigma_denoise)``.

    z: (B, C, H, W) current estimate; y: observation of shape ``op.output_shape`` batched like z;
    sigma_denoise: float, 0-d tensor or (B,) tensor in [0, 1] pixel units (paper: eta*sigma_noise).
    """
    return denoiser(z - eta * op.data_grad(z, y), sigma_denoise)


def fb_map(op, y, denoiser, eta: float = 0.49, sigma_denoise=0.0) -> Callable:
    """The closure ``f(z, idx=None)`` of Eq. (3) used by :func:`fixed_point` and training.

    op, y: one operator with a batched observation y (B, ...), or one operator and one observation
    (1, ...) per image (sequences of length B) -- the multi-task case of Algorithm 1, where the
    N problems of a batch may have different output shapes.
    sigma_denoise: float or tensor (B,) of denoising levels (paper: eta * sigma_noise).
    ``f(z, idx)`` evaluates the map on the images at batch positions ``idx`` only (z then has
    len(idx) rows); ``idx=None`` means the whole batch.  The data-gradient step is done per
    problem, the denoiser once on the stacked batch.
    """
    per_image = isinstance(op, Sequence) and not isinstance(op, (str, bytes))
    if per_image and (not isinstance(y, Sequence) or len(y) != len(op)):
        raise ValueError(f"fb_map: got {len(op)} operators but y is not a sequence of the same length")
    batch = len(op) if per_image else y.shape[0]
    sigma_all = torch.as_tensor(sigma_denoise, dtype=torch.get_default_dtype()).detach().cpu()
    if sigma_all.ndim == 0:
        sigma_all = sigma_all.expand(batch)
    sigma_all = sigma_all.reshape(-1)
    if sigma_all.numel() != batch:
        raise ValueError(f"fb_map: sigma_denoise has {sigma_all.numel()} entries for a batch of {batch}")

    def f(z: Tensor, idx: Tensor | None = None) -> Tensor:
        rows = torch.arange(batch) if idx is None else idx.cpu()
        sigma = sigma_all[rows].to(device=z.device, dtype=z.dtype)
        if per_image:
            grad = _grouped_data_grad(op, y, z, rows.tolist())
        else:
            grad = op.data_grad(z, y if idx is None else y[idx.to(y.device)])
        return denoiser(z - eta * grad, sigma)  # Eq. (3)

    return f


def _grouped_data_grad(ops, ys, z: Tensor, rows: list[int]) -> Tensor:
    """A_i^T(A_i z_k - y_i) for the images ``rows`` (z row k is image rows[k]).

    Images that share one operator object (the B images of one task in a stacked multi-task
    solve) go through it in one batched call; the rows then return to z's order.
    """
    groups: dict[int, list[int]] = {}
    for k, i in enumerate(rows):
        groups.setdefault(id(ops[i]), []).append(k)
    if len(groups) == len(rows):  # every image has its own operator
        return torch.cat([ops[i].data_grad(z[k : k + 1], ys[i]) for k, i in enumerate(rows)])
    parts, order = [], []
    for ks in groups.values():
        op = ops[rows[ks[0]]]
        y = torch.cat([ys[rows[k]] for k in ks])
        parts.append(op.data_grad(z[torch.tensor(ks, device=z.device)], y))
        order += ks
    inverse = torch.argsort(torch.tensor(order)).to(z.device)
    return torch.cat(parts)[inverse]


@dataclass
class FixedPointInfo:
    """Per-image outcome of :func:`fixed_point`.

    iterations: LongTensor (B,) number of evaluations of f; residual: (B,) last
    mean((f(z) - z)^2); status: list of "converged" | "max_iter" | "diverged".
    """

    iterations: Tensor
    residual: Tensor
    status: list[str]

    def summary(self) -> dict:
        """Fractions per status and mean / max iteration counts (for logs)."""
        n = max(len(self.status), 1)
        its = self.iterations.double()
        return {
            "converged": self.status.count("converged") / n,
            "max_iter": self.status.count("max_iter") / n,
            "diverged": self.status.count("diverged") / n,
            "mean_iterations": float(its.mean()) if its.numel() else 0.0,
            "max_iterations": int(self.iterations.max()) if its.numel() else 0,
        }


def _accepts_index(f: Callable) -> bool:
    """True when f declares two positional parameters, f(z, idx) (nn.Module: its forward).

    Callables taking ``*args`` are treated as plain f(z): the full-batch path is always correct.
    """
    target = f.forward if isinstance(f, torch.nn.Module) else f
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return False
    positional = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2


def _unsafe(t: Tensor, diverge_at: float) -> Tensor:
    """Per-row CPU BoolTensor: a non-finite entry or an entry with |.| > diverge_at."""
    flat = t.flatten(1)
    return (~torch.isfinite(flat).all(dim=1) | (flat.abs().amax(dim=1) > diverge_at)).cpu()


def _per_row(mask: Tensor, like: Tensor) -> Tensor:
    """(b,) mask -> broadcastable to ``like`` (b, ...), on its device."""
    return mask.to(like.device).view(-1, *([1] * (like.ndim - 1)))


def _anderson_mix(X: Tensor, F: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """Type-II Anderson mixing (beta = 1) for a batch of histories.

    X, F: (b, k, d) last k iterates x_j and their images f(x_j).  With residuals G = F - X,
    solve  min_alpha ||G^T alpha||^2 + lam * s ||alpha||^2  s.t.  sum(alpha) = 1  through the
    bordered normal equations, and return (sum_j alpha_j f(x_j) of shape (b, d), ok mask (b,)).
    s = mean_j ||g_j||^2 makes lam relative, so the damping does not fade as the residuals
    shrink towards the 1e-7 tolerance nor depend on the image size.
    Solved in float64; ``ok`` is False where the system is singular or alpha is not finite.
    """
    b, k, _ = X.shape
    G = (F - X).double()
    H = G @ G.transpose(1, 2)
    scale = H.diagonal(dim1=1, dim2=2).mean(dim=1).clamp_min(torch.finfo(G.dtype).tiny)
    H = H + (lam * scale)[:, None, None] * torch.eye(k, dtype=G.dtype, device=G.device)
    system = torch.zeros(b, k + 1, k + 1, dtype=G.dtype, device=G.device)
    system[:, 0, 1:] = 1.0
    system[:, 1:, 0] = 1.0
    system[:, 1:, 1:] = H
    rhs = torch.zeros(b, k + 1, 1, dtype=G.dtype, device=G.device)
    rhs[:, 0] = 1.0
    solution, solve_info = torch.linalg.solve_ex(system, rhs)
    alpha = solution[:, 1:, 0]
    ok = (solve_info == 0) & torch.isfinite(alpha).all(dim=1)
    alpha = torch.where(ok[:, None], alpha, torch.zeros_like(alpha))
    mixed = (alpha.to(F.dtype)[:, None, :] @ F).squeeze(1)
    return mixed, ok


@torch.no_grad()
def fixed_point(
    f: Callable,
    z0: Tensor,
    *,
    tol: float = 1e-7,
    max_iter: int = 350,
    diverge_at: float = 1e10,
    method: str = "plain",
    anderson_m: int = 5,
    anderson_lam: float = 1e-4,
    progress: bool = False,
) -> tuple[Tensor, FixedPointInfo]:
    """Solve z = f(z) per image (Algorithm 1, inner while-loop), without autograd.

    z0: (B, C, H, W) start (paper: P(y), the resized observation).  For every image:
    residual r = mean((f(z) - z)^2) over its C*H*W entries; r < tol -> "converged" (z <- f(z));
    after max_iter evaluations of f -> "max_iter"; a new iterate with a non-finite entry or one
    with |.| > diverge_at -> "diverged", and the image keeps its last finite iterate.  Stopped
    images are frozen; other images are unaffected.
    method: "plain" (z <- f(z), the paper's) or "anderson" (type-II Anderson acceleration, mixing
    beta = 1, memory anderson_m, Tikhonov anderson_lam relative to the mean squared residual; an
    image falls back to the plain step when the least-squares solve fails or the mixed iterate is
    non-finite or beyond diverge_at).  The stopping rules are the same for both.
    f: ``f(z, idx)`` evaluated on active images only, or ``f(z)`` on the full batch (see module
    docstring).  Returns (z_star (B, C, H, W), FixedPointInfo).
    """
    if method not in ("plain", "anderson"):
        raise ValueError(f"fixed_point: method must be 'plain' or 'anderson', got {method!r}")
    if max_iter < 1:
        raise ValueError(f"fixed_point: max_iter must be >= 1, got {max_iter}")
    use_index = _accepts_index(f)
    batch = z0.shape[0]
    z = z0.detach().clone()
    iterations = torch.zeros(batch, dtype=torch.long)
    residual = torch.full((batch,), float("inf"), dtype=torch.float64)
    status = ["max_iter"] * batch
    active = torch.arange(batch)
    if method == "anderson":
        m = max(int(anderson_m), 1)
        hist_x = torch.zeros(batch, m, z0[0].numel(), dtype=z.dtype, device=z.device)
        hist_f = torch.zeros_like(hist_x)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=max_iter, desc=f"fixed point ({method})", leave=False)
    for k in range(max_iter):
        rows = active.to(z.device)
        x = z[rows]
        fx = f(x, active) if use_index else f(z)[rows]
        iterations[active] += 1
        # Algorithm 1 stopping rule: (1/d) ||z - f(z)||^2 < 1e-7, per image; Section III-A guard
        bad = _unsafe(fx, diverge_at)
        r = (fx - x).double().pow(2).flatten(1).mean(dim=1).cpu().masked_fill(bad, float("inf"))
        residual[active] = r
        converged = (r < tol) & ~bad
        going = ~converged & ~bad

        step = fx  # plain iteration z <- f(z)
        if method == "anderson":
            hist_x[rows, k % m] = x.flatten(1)
            hist_f[rows, k % m] = fx.flatten(1)
            used = min(k + 1, m)
            mixed, ok = _anderson_mix(hist_x[rows, :used], hist_f[rows, :used], anderson_lam)
            mixed = mixed.view_as(fx)
            # safeguard: keep the plain step where the solve failed or the mix leaves the safe region
            ok = ok.cpu() & ~_unsafe(mixed, diverge_at)
            step = torch.where(_per_row(ok, fx), mixed, fx)

        # converged images keep the evaluated f(z); diverged ones keep their last finite z
        z[rows[converged.to(z.device)]] = fx[converged.to(z.device)]
        z[rows[going.to(z.device)]] = step[going.to(z.device)]
        for i in active[converged].tolist():
            status[i] = "converged"
        for i in active[bad].tolist():
            status[i] = "diverged"
        active = active[going]
        if bar is not None:
            bar.update(1)
            bar.set_postfix(active=len(active), residual=f"{float(r.min()):.2e}")
        if len(active) == 0:
            break
    if bar is not None:
        bar.close()
    return z, FixedPointInfo(iterations=iterations, residual=residual.float(), status=status)


def jfb_output(f: Callable, z_star: Tensor) -> Tensor:
    """Jacobian-free backprop (Fig. 1, Eq. 4): ``f(z_star.detach())`` with autograd enabled.

    Gradients flow through this one application of f only, so training memory does not depend
    on how many iterations :func:`fixed_point` took.
    """
    with torch.enable_grad():
        return f(z_star.detach())
