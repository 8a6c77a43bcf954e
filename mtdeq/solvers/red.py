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

Acceleration.  T is a proximal-gradient step with step 1/lam on E (Reehorst & Schniter, 2019),
so FISTA momentum with adaptive restart was tried: on toy problems with a linear symmetric
"denoiser" (where E is a convex quadratic) it cut the iterations to tol by 1.2-2.4x and reached the
same point, but with the FFDNet prior (64x64 butterfly crop, tuned lam / sigma_denoise) it landed on
a different fixed point of T for completion 90% (both residuals ~1e-7, 7% apart) and did not settle
for SR x2 (relative change stuck at ~1e-4 after 1500 iterations, where the plain iteration met
1e-5 after 1147).  A CNN denoiser gives RED several fixed points and no objective, so FISTA was
dropped.  ``accel="anderson"`` instead applies the suite's safeguarded type-II Anderson mixing
(the one of mtdeq.solvers.fixed_point) to the relaxed map; it is an option, "plain" stays the
default.  Measured (``bench red``, FFDNet, quick's tuned RED settings, tol 1e-5, 64x64 centre crops
of Set14 images, 1 thread, m = 5): on a linear symmetric smoother both schemes stop on the same
point, Anderson in about a third of the iterations.  With FFDNet, on barbara it reached the plain
fixed point (relative distance <= 1.3e-4) in 58 iterations instead of 97 for completion 90% and
6 and 5 instead of 8 and 6 for SR x2 (sigma 0.01 and 0; on baboon 12 instead of 23 for sigma 0.01),
but needed 992 instead of 60 for completion 80% (lam 0.0027); on baboon it stalled at a different point for completion 80% and 90% (22% away from the plain
fixed point, 16.9-17.0 dB instead of 21.7-23.0 dB, relative change above 1e-5 at the cap of 640
where the plain iteration stopped after 323-347) -- FISTA's failure again -- and a larger Tikhonov
weight (anderson_lam 0.1) moved it close to the plain point (0.4-3% away) but still not to the
tol within 640 iterations.  So Anderson is not a safe default for RED with a CNN denoiser.
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
    snapshots: dict[int, Tensor] = field(default_factory=dict)  # snapshots_at k -> estimate after k iterations
    snapshots_iterations: dict[int, int] = field(default_factory=dict)  # k -> iterations run by then (<= k)


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
    snapshots_at: tuple[int, ...] = (),
    progress: bool = False,
    accel: str = "plain",
    anderson_m: int = 5,
    anderson_lam: float = 1e-4,
) -> tuple[Tensor, RedInfo]:
    """RED fixed-point iterations from x_0 = op.init(y); returns (x (B, C, H, W), RedInfo).

    lam weighs the RED prior against 1/2||Ax - y||^2 (so it scales like sigma_noise^2 times
    Romano's lambda); sigma_denoise is the fixed denoiser level.  sigma_noise is not used by the
    iteration (the data term is unweighted); it is recorded in the info for the result files.

    iterations: the number of iterations when ``tol = 0`` (default, the fixed-K scheme), else the
    cap.  tol: relative-change tolerance; each image stops once ||x_{k+1} - x_k|| / ||x_k|| < tol
    and is then frozen (not evaluated again).  snapshot_at: also return (as ``info.snapshot``) the
    estimate after that many iterations; the run with cap 2K and snapshot_at K gives the results of
    caps K and 2K in one run, because the iteration has no memory beyond x_k.  snapshots_at: more
    such iteration counts (each in [1, iterations]), returned in ``info.snapshots`` (the budget
    curve of ``evaluate --budget-curve``).  The denoiser is called as
    ``denoiser(x, sigma_denoise)`` on the images still running, and the operator must be shared by
    the batch (``op.prox_l2`` is called on a subset of the rows of y).

    accel: "plain" (x_{k+1} = (1 - step) x_k + step T(x_k), the default) or "anderson": type-II
    Anderson mixing of the relaxed map over the last ``anderson_m`` iterates, with the suite's
    safeguarded machinery (:func:`mtdeq.solvers.fixed_point._anderson_mix`, Tikhonov anderson_lam
    relative to the mean squared residual; an image takes the plain step where the solve fails or
    the mix is non-finite).  The stop rule and the per-image freezing are unchanged (the change is
    measured between consecutive accepted iterates).  With Anderson the iteration has memory, so a
    snapshot at K of a 2K run equals the run with cap K (same history up to K), but the 2K result
    is not a restart from x_K.

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
    snapshots_at = tuple(int(k) for k in snapshots_at)
    if any(not 1 <= k <= iterations for k in snapshots_at):
        raise ValueError(f"red: snapshots_at must be in [1, iterations={iterations}], got {snapshots_at}")
    if accel not in ("plain", "anderson"):
        raise ValueError(f"red: accel must be 'plain' or 'anderson', got {accel!r}")
    if accel == "anderson" and (isinstance(anderson_m, bool) or int(anderson_m) != anderson_m or anderson_m < 1):
        raise ValueError(f"red: anderson_m must be an int >= 1, got {anderson_m!r}")
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
    snapshots: dict[int, Tensor] = {}
    snapshots_iterations: dict[int, int] = {}
    if accel == "anderson":
        from mtdeq.solvers.fixed_point import _anderson_mix

        m = int(anderson_m)
        hist_x = torch.zeros(batch, m, x[0].numel(), dtype=x.dtype, device=x.device)
        hist_f = torch.zeros_like(hist_x)
    steps = range(iterations)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="red", leave=False)
    for k in steps:
        all_rows = len(active) == batch
        rows = None if all_rows else active.to(x.device)
        x_old = x if all_rows else x[rows]
        x_new = T(x_old, rows)
        if step != 1.0:
            x_new = (1.0 - step) * x_old + step * x_new
        if accel == "anderson":
            hist_rows = active.to(x.device)
            hist_x[hist_rows, k % m] = x_old.flatten(1)
            hist_f[hist_rows, k % m] = x_new.flatten(1)
            used = min(k + 1, m)
            mixed, ok = _anderson_mix(hist_x[hist_rows, :used], hist_f[hist_rows, :used], anderson_lam)
            mixed = mixed.view_as(x_new)
            ok = ok & torch.isfinite(mixed.flatten(1)).all(dim=1)
            x_new = torch.where(ok.view(-1, *([1] * (x_new.ndim - 1))), mixed, x_new)
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
        if done in snapshots_at:
            snapshots[done], snapshots_iterations[done] = x.clone(), done
        if tol > 0:
            active = active[~(change < tol)]
            if len(active) == 0:
                break
    if snapshot_at is not None and snapshot is None:  # every image stopped on tol before snapshot_at
        snapshot, snapshot_iterations = x.clone(), done
    for k in snapshots_at:  # every image stopped on tol before k: the estimate is final
        if k not in snapshots:
            snapshots[k], snapshots_iterations[k] = x.clone(), done
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
        snapshots=snapshots,
        snapshots_iterations=snapshots_iterations,
    )
    return x, info
