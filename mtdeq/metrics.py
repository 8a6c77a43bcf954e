"""Image-quality metrics used for every number in the tables.

Protocol (the same for all methods and tasks): the restored image x and the ground truth
ref are RGB tensors in [0, 1] shaped (3, H, W) or (1, 3, H, W); x is clipped to [0, 1];
all pixels are used (no border shave), all three channels together (no Y-channel
conversion), data range 1:

    PSNR(x, ref) = 10 log10( 1 / mean((clip(x, 0, 1) - ref)^2) )          [dB]

[8]'s ``compare_psnr`` does not clip; ``psnr(x, ref, clip=False)`` is that variant (the
evaluation CSVs carry it as ``psnr_unclipped``, so the choice is measured, not assumed).

SSIM is scikit-image's ``structural_similarity`` (7x7 uniform window, K1 = 0.01,
K2 = 0.03, data_range = 1) computed per channel and averaged over the three channels.
Computation is in float64 so results do not depend on the input dtype.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from skimage.metrics import structural_similarity


def _as_pair(x: torch.Tensor, ref: torch.Tensor, clip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (clip(x, 0, 1) or x, ref) as float64 CPU tensors of shape (3, H, W)."""
    out = []
    for name, t in (("x", x), ("ref", ref)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() == 4:
            if t.shape[0] != 1:
                raise ValueError(
                    f"{name}: expected one image (1, 3, H, W), got shape {tuple(t.shape)}"
                )
            t = t[0]
        if t.dim() != 3 or t.shape[0] != 3:
            raise ValueError(f"{name}: expected an RGB image (3, H, W), got shape {tuple(t.shape)}")
        out.append(t.detach().to("cpu", torch.float64))
    x64, ref64 = out
    if x64.shape != ref64.shape:
        raise ValueError(f"shape mismatch: x {tuple(x64.shape)} vs ref {tuple(ref64.shape)}")
    return (x64.clamp(0.0, 1.0) if clip else x64), ref64


def psnr(x: torch.Tensor, ref: torch.Tensor, *, clip: bool = True) -> float:
    """PSNR in dB of x against ref: 10 log10(1 / MSE(clip(x, 0, 1), ref)), all RGB pixels.

    x, ref: (3, H, W) or (1, 3, H, W), ref in [0, 1].  ``clip=False`` scores x as it is
    ([8]'s convention).  Returns ``inf`` when identical.
    """
    x64, ref64 = _as_pair(x, ref, clip)
    mse = torch.mean((x64 - ref64) ** 2).item()
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(1.0 / mse)


def ssim(x: torch.Tensor, ref: torch.Tensor) -> float:
    """SSIM of clip(x, 0, 1) against ref (skimage, data_range=1, channel mean over RGB).

    x, ref: (3, H, W) or (1, 3, H, W), values in [0, 1]; H and W must be at least 7.
    """
    x64, ref64 = _as_pair(x, ref)
    if min(x64.shape[1:]) < 7:
        raise ValueError(f"ssim needs images of at least 7x7 pixels, got {tuple(x64.shape)}")
    a = np.moveaxis(x64.numpy(), 0, -1)
    b = np.moveaxis(ref64.numpy(), 0, -1)
    return float(structural_similarity(a, b, channel_axis=-1, data_range=1.0))
