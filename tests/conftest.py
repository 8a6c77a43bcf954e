"""Shared test fixtures and helpers: repository root, a tiny DRUNet, synthetic images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtdeq.models import BackboneConfig, build_backbone, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = BackboneConfig("drunet", (8, 16, 32, 64), 1)


def write_synthetic_images(folder: Path, count: int, height: int, width: int) -> Path:
    """Write `count` smooth RGB PNGs (height x width) with a sharp-edged patch each; seeded."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width] / float(width)
    for i in range(count):
        img = np.stack([np.sin(2 * np.pi * (rng.uniform(0.5, 2) * xx + rng.uniform() * yy) + rng.uniform(0, 6))
                        for _ in range(3)], axis=-1) * 0.3 + 0.5
        top, left = height // 4, width // 4
        img[top : top + height * 3 // 8, left + i : left + width * 3 // 8 + i] = rng.uniform(0, 1, size=3)
        Image.fromarray((img.clip(0, 1) * 255).round().astype(np.uint8)).save(folder / f"img{i}.png")
    return folder


def write_tiny_prior(path: Path) -> Path:
    """A randomly initialised (seed 0) tiny DRUNet saved in our checkpoint format."""
    torch.manual_seed(0)
    save_checkpoint(path, build_backbone(TINY), TINY)
    return path


@pytest.fixture
def one_thread():
    """Tiny convolutions are fastest, and least disturbed by other processes, on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images(request, tmp_path_factory) -> Path:
    """Smooth synthetic RGB PNGs with edges, one folder per test module: 5 images of 40 x 48, or
    (count, height, width) from the module's SYNTHETIC_IMAGES."""
    count, height, width = getattr(request.module, "SYNTHETIC_IMAGES", (5, 40, 48))
    return write_synthetic_images(tmp_path_factory.mktemp("images"), count, height, width)


@pytest.fixture(scope="module")
def prior(tmp_path_factory) -> Path:
    """A randomly initialised tiny DRUNet (TINY) in our checkpoint format."""
    return write_tiny_prior(tmp_path_factory.mktemp("prior") / "init.pt")
