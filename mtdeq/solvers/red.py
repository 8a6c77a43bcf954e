"""Regularisation by denoising (RED, Romano, Elad & Milanfar 2017), fixed-point variant.

Objective, with a denoiser D(x) = Q(x, sigma_denoise):

    E(x) = 1/2 ||A x - y||^2 + (lam/2) x^T (x - D(x)).

Under RED's assumptions (local homogeneity, symmetric Jacobian) grad E = A^T(Ax - y) + lam (x - D(x)),
and the fixed-point iteration of Romano et al. freezes D at the current estimate and solves
grad E = 0 for x:

    (A^T A + lam I) x_{k+1} = A^T y + lam D(x_k)   <=>   x_{k+1} = op.prox_l2(D(x_k), y, 1/lam),

which is one denoiser call plus one closed-form prox per iteration.  An optional relaxation
x_{k+1} <- (1 - step) x_k + step x_{k+1} (step in (0, 1], 1 = Romano's scheme) damps the
iteration on hard tasks.  We chose this variant over RED-ADMM because it has no inner
solver and no extra penalty parameter: the hyper-parameters are (iterations, lam,
sigma_denoise, step).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class RedInfo:
    """iterations: run; seconds: wall-clock time; sigma_noise: noise level of the task (recorded)."""

    iterations: int
    seconds: float
    sigma_noise: float


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
    progress: bool = False,
) -> tuple[Tensor, RedInfo]:
    """RED fixed-point iterations from x_0 = op.init(y); returns (x (B, C, H, W), RedInfo).

    lam weighs the RED prior against 1/2||Ax - y||^2 (so it scales like sigma_noise^2 times
    Romano's lambda); sigma_denoise is the fixed denoiser level.  sigma_noise is not used by the
    iteration (the data term is unweighted); it is recorded in the info for the result files.
    """
    if iterations < 1:
        raise ValueError(f"red: iterations must be >= 1, got {iterations}")
    if not lam > 0:
        raise ValueError(f"red: lam must be > 0, got {lam}")
    if not 0 < step <= 1:
        raise ValueError(f"red: step must be in (0, 1], got {step}")
    start = time.perf_counter()
    x = op.init(y)
    steps = range(iterations)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="red", leave=False)
    for _ in steps:
        x_new = op.prox_l2(denoiser(x, sigma_denoise), y, 1.0 / lam)  # (A^T A + lam I) x = A^T y + lam D(x)
        x = x_new if step == 1.0 else (1.0 - step) * x + step * x_new
    return x, RedInfo(iterations=iterations, seconds=time.perf_counter() - start, sigma_noise=float(sigma_noise))
