"""Solvers: the DEQ forward-backward fixed point (training), PnP-ADMM and RED (testing).

Each solver is a plain function with keyword-only arguments returning (estimate, info).
A denoiser is any callable ``denoiser(x, sigma)``; solvers never know the backbone.
"""

from mtdeq.solvers.admm import AdmmInfo, geometric_sigmas, pnp_admm
from mtdeq.solvers.fixed_point import FixedPointInfo, fb_map, fb_step, fixed_point, jfb_output
from mtdeq.solvers.red import RedInfo, red

__all__ = [
    "AdmmInfo",
    "FixedPointInfo",
    "RedInfo",
    "fb_map",
    "fb_step",
    "fixed_point",
    "geometric_sigmas",
    "jfb_output",
    "pnp_admm",
    "red",
]
