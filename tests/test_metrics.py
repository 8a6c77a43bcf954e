"""PSNR/SSIM protocol: clip output, all pixels, RGB, data range 1 — checked against skimage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from mtdeq.metrics import psnr, ssim


def _pair(seed: int = 0, shape=(3, 20, 17)):
    g = torch.Generator().manual_seed(seed)
    ref = torch.rand(shape, generator=g)
    x = ref + 0.1 * torch.randn(shape, generator=g)  # leaves [0, 1] in places
    return x, ref


def _hwc(t: torch.Tensor) -> np.ndarray:
    return np.moveaxis(t.double().numpy(), 0, -1)


def test_psnr_matches_skimage_on_clipped_output():
    x, ref = _pair()
    expected = peak_signal_noise_ratio(_hwc(ref), _hwc(x.clamp(0, 1)), data_range=1.0)
    assert psnr(x, ref) == pytest.approx(expected, abs=1e-10)
    # clipping matters here, so an unclipped implementation would fail
    unclipped = peak_signal_noise_ratio(_hwc(ref), _hwc(x), data_range=1.0)
    assert abs(unclipped - expected) > 1e-3


def test_psnr_known_value_batch_shape_and_identity():
    ref = torch.zeros(1, 3, 8, 8)
    assert psnr(torch.full((1, 3, 8, 8), 0.1), ref) == pytest.approx(20.0)
    assert psnr(torch.full((3, 8, 8), 0.1, dtype=torch.float64), ref[0]) == pytest.approx(20.0)
    assert psnr(ref, ref) == math.inf


def test_ssim_matches_skimage_rgb():
    x, ref = _pair(1, (3, 32, 29))
    expected = structural_similarity(
        _hwc(x.clamp(0, 1)), _hwc(ref), channel_axis=-1, data_range=1.0
    )
    assert ssim(x[None], ref[None]) == pytest.approx(expected, abs=1e-10)
    assert ssim(ref, ref) == pytest.approx(1.0)
    assert ssim(x, ref) < 0.99


def test_metrics_reject_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        psnr(torch.rand(3, 8, 8), torch.rand(3, 8, 9))
    with pytest.raises(ValueError, match=r"\(2, 3, 8, 8\)"):
        psnr(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match="RGB"):
        ssim(torch.rand(1, 8, 8), torch.rand(1, 8, 8))


def test_psnr_unclipped_is_pnp_reg_convention():
    """clip=False scores x as it is (as [8]'s compare_psnr): out-of-range values then cost PSNR."""
    gen = torch.Generator().manual_seed(3)
    ref = torch.rand(3, 16, 16, generator=gen)
    x = ref + 0.2 * torch.randn(3, 16, 16, generator=gen)            # leaves [0, 1] in places
    expected = peak_signal_noise_ratio(ref.double().numpy(), x.double().numpy(), data_range=1.0)
    assert psnr(x, ref, clip=False) == pytest.approx(expected, abs=1e-9)
    assert psnr(x, ref, clip=False) < psnr(x, ref)                     # clipping only moves x closer
    inside = ref.clamp(0.1, 0.9)
    assert psnr(inside, ref, clip=False) == pytest.approx(psnr(inside, ref), abs=1e-12)
