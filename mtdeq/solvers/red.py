"""Regularisation by denoising (RED, Romano, Elad & Milanfar 2017), fixed-point variant.

Objective, with a denoiser D(x) = Q(x, sigma_denoise):

    E(x) = 1/2 ||A x - y||^2 + (lam/2) x^T (x - D(x)).

Under RED's assumptions (local homogeneity, symmetric Jacobian) grad E = A^T(Ax - y) + lam (x - D(x)),
and the fixed-point iteration of Romano et al. freezes D at the current estimate and solves
grad E = 0 for x:

    (A^T A + lam I) x_{k+1} = A^T y + lam D(x_k)   <=>   x_{k+1} = T(x_k) := op.prox_l2(D(x_k), y, 1/lam),

which is one denoiser call plus one closed-form prox per iteration.  An optional relaxation
x_{k+1} <- (1 - step) x_k + step x_{k+1} (step in (0, 1], 1 = Romano's scheme) damps the
iteration on hard tasks.  We chose this variant over RED-ADMM because it has no inner
solver and no extra penalty parameter: the hyper-parameters are (iterations, lam,
sigma_denoise, step).

Stopping.  ``tol = 0`` runs exactly ``iterations`` iterations (the fixed-K scheme).  ``tol > 0``
makes ``iterations`` a cap and stops each image once ||x_{k+1} - x_k|| / ||x_k|| < tol (norms
over its C*H*W entries); a stopped image is frozen and no longer evaluated, so an image's result
does not depend on the other images of the batch.

No acceleration.  T is a proximal-gradient step with step 1/lam on E (Reehorst & Schniter, 2019),
so FISTA momentum with adaptive restart was tried: on toy problems with a linear symmetric
"denoiser" (where E is a convex quadratic) it cut the iterations to tol by 1.2-2.4x and reached the
same point, but with the FFDNet prior (64x64 butterfly crop, tuned lam / sigma_denoise) it landed on
a different fixed point of T for completion 90% (both residuals ~1e-7, 7% apart) and did not settle
for SR x2 (relative change stuck at ~1e-4 after 1500 iterations, where the plain iteration met
1e-5 after 1147).  A CNN denoiser gives RED several fixed points and no objective, so the plain
iteration is kept as the one scheme.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class RedInfo:
    """Outcome of :func:`red`.

    iterations: iterations run (the most any image of the batch used; ``iterations`` when tol = 0);
    seconds: wall-clock time; sigma_noise: noise level of the task (recorded);
    converged: True when every image stopped on the tolerance (always False when tol = 0);
    image_iterations: iterations used per image; rel_change: last ||x_{k+1} - x_k|| / ||x_k|| per
    image.
    """

    iterations: int
    seconds: float
    sigma_noise: float
    converged: bool = False
    image_iterations: list[int] = field(default_factory=list)
    rel_change: list[float] = field(default_factory=list)
    snapshot: Tensor | None = None
    snapshot_iterations: int = 0


def _per_image_norm(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1).norm(dim=1)


@torch.no_grad()
def red(
    *,
    op,
    y: Tensor,
    denoiser,
    sigma_noise: float,
    iterations: int,
    sigma_denoise: float,
    lam: float,
    step: float = 1.0,
    tol: float = 0.0,
    snapshot_at: int | None = None,
    progress: bool = False,
) -> tuple[Tensor, RedInfo]:
    """RED fixed-point iterations from x_0 = op.init(y); returns (x (B, C, H, W), RedInfo).

    lam weighs the RED prior against 1/2||Ax - y||^2 (so it scales like sigma_noise^2 times
    Romano's lambda); sigma_denoise is the fixed denoiser level.  sigma_noise is not used by the
    iteration (the data term is unweighted); it is recorded in the info for the result files.

    iterations: the number of iterations when ``tol = 0`` (default, the fixed-K scheme), else the
    cap.  tol: relative-change tolerance; each image stops once ||x_{k+1} - x_k|| / ||x_k|| < tol
    and is then frozen (not evaluated again).  snapshot_at: also return (as ``info.snapshot``) the
    estimate after that many iterations; the run with cap 2K and snapshot_at K gives the results of
    caps K and 2K in one run, because the iteration has no memory beyond x_k.  The denoiser is called as
    ``denoiser(x, sigma_denoise)`` on the images still running, and the operator must be shared by
    the batch (``op.prox_l2`` is called on a subset of the rows of y).

    With the FFDNet prior the plain iteration converges slowly where A has a large null space
    (64x64 butterfly crop, tuned parameters: tol 1e-5 after 56 iterations for blur1.6, 792 for
    comp90, 1147 for sr2_bicubic_n1), so the cap must be generous (a few thousand) for tol <= 1e-5.
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"red: iterations must be an int >= 1, got {iterations!r}")
    if not lam > 0:
        raise ValueError(f"red: lam must be > 0, got {lam}")
    if not 0 < step <= 1:
        raise ValueError(f"red: step must be in (0, 1], got {step}")
    if not (tol >= 0 and math.isfinite(tol)):
        raise ValueError(f"red: tol must be a finite number >= 0, got {tol}")
    if snapshot_at is not None and not 1 <= snapshot_at <= iterations:
        raise ValueError(f"red: snapshot_at must be in [1, iterations={iterations}], got {snapshot_at}")
    start = time.perf_counter()
    x = op.init(y)
    batch = x.shape[0]
    gamma = 1.0 / lam

    def T(z: Tensor, rows: Tensor | None) -> Tensor:
        """(A^T A + lam I)^-1 (A^T y + lam D(z)) for the images ``rows`` (None: all)."""
        y_rows = y if rows is None else y[rows.to(y.device)]
        return op.prox_l2(denoiser(z, sigma_denoise), y_rows, gamma)

    active = torch.arange(batch)  # images still iterating (CPU indices)
    image_iterations = torch.zeros(batch, dtype=torch.long)
    rel_change = torch.full((batch,), float("nan"), dtype=torch.float64)
    done = 0
    snapshot, snapshot_iterations = None, 0
    steps = range(iterations)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="red", leave=False)
    for _ in steps:
        all_rows = len(active) == batch
        rows = None if all_rows else active.to(x.device)
        x_old = x if all_rows else x[rows]
        x_new = T(x_old, rows)
        if step != 1.0:
            x_new = (1.0 - step) * x_old + step * x_new
        image_iterations[active] += 1
        done += 1
        change = _per_image_norm(x_new - x_old) / _per_image_norm(x_old).clamp_min(1e-30)
        change = change.double().cpu()
        rel_change[active] = change
        if all_rows:
            x = x_new
        else:
            x = x.clone()
            x[rows] = x_new
        if progress:
            steps.set_postfix(active=len(active), rel_change=f"{float(change.max()):.2e}")
        if done == snapshot_at:
            snapshot, snapshot_iterations = x.clone(), done
        if tol > 0:
            active = active[~(change < tol)]
            if len(active) == 0:
                break
    if snapshot_at is not None and snapshot is None:  # every image stopped on tol before snapshot_at
        snapshot, snapshot_iterations = x.clone(), done
    converged = tol > 0 and len(active) == 0
    info = RedInfo(
        iterations=done,
        seconds=time.perf_counter() - start,
        sigma_noise=float(sigma_noise),
        converged=bool(converged),
        image_iterations=image_iterations.tolist(),
        rel_change=rel_change.tolist(),
        snapshot=snapshot,
        snapshot_iterations=snapshot_iterations,
    )
    return x, info
