"""Plug-and-play ADMM, the test-time scheme of the paper (Section III-B, after pnp-ReG [8]).

For the problem  min_x 1/2 ||A x - y||^2 + R(x)  with the proximal operator of R replaced by a
denoiser Q(., sigma_k) whose level decreases geometrically over the K iterations:

    rho_k = (lam / sigma_k)^2
    x     = argmin_x 1/2 ||A x - y||^2 + rho_k/2 ||x - (z - u)||^2     (op.prox_l2, closed form)
    z     = Q(x + u, sigma_k)
    u     = u + x - z

Scaling the data term by sigma_noise^2 turns the MAP penalty 1/sigma_k^2 into rho_k with
lam = sigma_noise; lam is floored at 1/255 so that noiseless tasks keep a finite penalty.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor


def geometric_sigmas(sigma_max: float, sigma_min: float, iterations: int) -> list[float]:
    """Denoiser levels sigma_k = sigma_max * (sigma_min / sigma_max)^(k / (K - 1)), k = 0..K-1."""
    if iterations < 1:
        raise ValueError(f"geometric_sigmas: iterations must be >= 1, got {iterations}")
    if not (sigma_max > 0 and sigma_min > 0):
        raise ValueError(f"geometric_sigmas: sigma_max={sigma_max}, sigma_min={sigma_min} must be > 0")
    if iterations == 1:
        return [float(sigma_max)]
    ratio = math.log(sigma_min / sigma_max) / (iterations - 1)
    return [float(sigma_max * math.exp(ratio * k)) for k in range(iterations)]


@dataclass
class AdmmInfo:
    """iterations: K run; seconds: wall-clock time of the loop."""

    iterations: int
    seconds: float


@torch.no_grad()
def pnp_admm(
    *,
    op,
    y: Tensor,
    denoiser,
    sigma_noise: float,
    iterations: int,
    sigma_max: float,
    sigma_min: float,
    lam: float | None = None,
    progress: bool = False,
) -> tuple[Tensor, AdmmInfo]:
    """PnP-ADMM with a geometric denoiser schedule; returns (z (B, C, H, W), AdmmInfo).

    y: observation (B, ...) of ``op``; denoiser: any callable ``denoiser(x, sigma)``.
    lam defaults to max(sigma_noise, 1/255).  The estimate is not clipped (metrics clip).
    """
    if lam is None:
        lam = max(float(sigma_noise), 1.0 / 255.0)
    sigmas = geometric_sigmas(sigma_max, sigma_min, iterations)
    start = time.perf_counter()
    z = op.init(y)
    u = torch.zeros_like(z)
    steps = sigmas
    if progress:
        from tqdm import tqdm

        steps = tqdm(sigmas, desc="pnp-admm", leave=False)
    for sigma_k in steps:
        rho_k = (lam / sigma_k) ** 2
        x = op.prox_l2(z - u, y, 1.0 / rho_k)  # data step, closed form
        z = denoiser(x + u, sigma_k)  # prior step: the denoiser replaces prox_R
        u = u + x - z  # scaled dual update
    return z, AdmmInfo(iterations=len(sigmas), seconds=time.perf_counter() - start)
