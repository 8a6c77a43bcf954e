"""Test images in a validation set: which validation images are used, and a content check.

Validation images (tuning on Set14, the training curves' validation PSNR) must never be test
images.  A folder-name check is not enough: ``Set14/face.png`` is an exact 276x276 crop of
``Set5/head.png`` (offset top 2, left 2; identical pixels), so a validation set that contains it
tunes on a test image.  This module holds, in one place:

- :func:`validation_files`: the validation images a stage uses, the sorted images of a folder
  without the excluded file names (``--val-exclude``, config ``data.val_exclude``), first n;
- :func:`find_crop`: where one image's pixels lie inside another's (any offset), or None;
- :func:`find_test_images`: every validation image whose pixels equal a test image or a crop of
  one (or, the other way round, contain a whole test image);
- :func:`refuse_test_images`: raise :class:`TestImageLeak` naming both files for the first one.

Pixels are compared as the project loads images (mtdeq.io.read_image: RGB, greyscale repeated on
the three channels, alpha dropped), as 8-bit values.  Rotations, flips and rescalings are not
searched for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# probe pixels per axis used to narrow the candidate offsets before a full comparison
_PROBES_PER_AXIS = 8


class TestImageLeak(ValueError):
    """A validation image is a test image, a crop of one, or contains one; the message names both files."""

    __test__ = False  # not a pytest test class


@dataclass(frozen=True)
class Overlap:
    """Validation image ``val`` and test image ``test`` share pixels: the smaller one is the larger one
    cropped at (top, left).  ``val_in_test``: the validation image is the smaller (or equal) one."""

    val: Path
    test: Path
    top: int
    left: int
    val_shape: tuple[int, int]
    test_shape: tuple[int, int]
    val_in_test: bool = True

    def describe(self) -> str:
        """One line naming both files, how they overlap and where."""
        (vh, vw), (th, tw) = self.val_shape, self.test_shape
        if self.val_shape == self.test_shape:
            return f"validation image {self.val} is the test image {self.test} (identical {vh}x{vw} pixels)"
        if self.val_in_test:
            return (f"validation image {self.val} ({vh}x{vw}) is a crop of the test image {self.test} ({th}x{tw}) "
                    f"at top {self.top}, left {self.left} (identical pixels)")
        return (f"validation image {self.val} ({vh}x{vw}) contains the whole test image {self.test} ({th}x{tw}) "
                f"at top {self.top}, left {self.left} (identical pixels)")


def image_pixels(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an image file as the project loads it (mtdeq.io.read_image)."""
    from mtdeq.io import read_image

    # read_image gives I / 255 exactly enough that rounding 255 x recovers I (as mtdeq.data.PatchDataset)
    return np.ascontiguousarray(read_image(path).mul_(255.0).round_().to(torch.uint8).permute(1, 2, 0).numpy())


def validation_files(folder: str | Path, n: int | None, exclude: tuple[str, ...] | list[str] = ()) -> list[Path]:
    """The validation images a stage uses: the sorted images of ``folder`` (mtdeq.io.list_images)
    whose file names are not in ``exclude``, the first ``n`` of them (None: all).

    Raises ValueError naming the folder when an excluded name is not an image of the folder (a
    misspelt exclusion would silently exclude nothing), when n < 1, or when no image is left.
    """
    from mtdeq.io import list_images

    if n is not None and n < 1:
        raise ValueError(f"{folder}: the number of validation images must be >= 1, got {n}")
    files = list_images(folder)
    names = {f.name for f in files}
    unknown = [name for name in exclude if name not in names]
    if unknown:
        raise ValueError(f"--val-exclude {' '.join(unknown)}: no such image in {folder} "
                         f"(its images: {', '.join(sorted(names))})")
    kept = [f for f in files if f.name not in set(exclude)]
    if not kept:
        raise ValueError(f"{folder}: every image is excluded by --val-exclude {' '.join(exclude)}")
    return kept if n is None else kept[:n]


def find_crop(small: np.ndarray, large: np.ndarray) -> tuple[int, int] | None:
    """(top, left) with large[top:top+h, left:left+w] == small (all channels), or None.

    small (h, w, C), large (H, W, C), same dtype.  The offsets where small's first pixel occurs
    are found at once with numpy, narrowed by a grid of probe pixels, and the few left are
    compared in full; the first match (in row-major order of the offset) is returned.
    """
    if small.ndim != 3 or large.ndim != 3 or small.shape[2] != large.shape[2]:
        raise ValueError(f"find_crop: expected (H, W, C) arrays with equal C, got {small.shape} and {large.shape}")
    h, w = small.shape[:2]
    big_h, big_w = large.shape[:2]
    if h > big_h or w > big_w:
        return None
    window = large[: big_h - h + 1, : big_w - w + 1]
    candidates = np.argwhere((window == small[0, 0]).all(axis=-1))
    rows = np.unique(np.linspace(0, h - 1, _PROBES_PER_AXIS).round().astype(int))
    cols = np.unique(np.linspace(0, w - 1, _PROBES_PER_AXIS).round().astype(int))
    for dy in rows:
        for dx in cols:
            if len(candidates) == 0:
                return None
            keep = (large[candidates[:, 0] + dy, candidates[:, 1] + dx] == small[dy, dx]).all(axis=-1)
            candidates = candidates[keep]
    for top, left in candidates:
        if np.array_equal(large[top : top + h, left : left + w], small):
            return int(top), int(left)
    return None


def find_test_images(val_files: list[str | Path], test_folder: str | Path) -> list[Overlap]:
    """Every (validation image, test image) pair where one is the other or a crop of it.

    ``test_folder``: every image of it (mtdeq.io.list_images) is a test image.  The pairs come in
    the order of ``val_files``, then of the sorted test images.
    """
    from mtdeq.io import list_images

    tests = [(path, image_pixels(path)) for path in list_images(test_folder)]
    found = []
    for val_path in val_files:
        val = image_pixels(val_path)
        for test_path, test in tests:
            where, val_in_test = find_crop(val, test), True
            if where is None:
                where, val_in_test = find_crop(test, val), False
            if where is not None:
                found.append(Overlap(Path(val_path), Path(test_path), *where, val_shape=val.shape[:2],
                                     test_shape=test.shape[:2], val_in_test=val_in_test))
    return found


def refuse_test_images(val_files: list[str | Path], test_folder: str | Path | None, *, stage: str) -> None:
    """Raise :class:`TestImageLeak` naming both files when a validation image is (a crop of) a test image.

    ``test_folder`` None or '': no check.  A test folder that does not exist is an error
    (FileNotFoundError naming it): the check cannot be made.  ``stage`` prefixes the message.
    """
    if not test_folder:
        return
    if not Path(test_folder).is_dir():
        raise FileNotFoundError(f"{stage}: --test-set {test_folder}: no such folder; the validation images are "
                                "checked against the test images, so give the test folder (e.g. data/Set5)")
    found = find_test_images(val_files, test_folder)
    if found:
        lines = "\n  ".join(overlap.describe() for overlap in found)
        names = " ".join(sorted({overlap.val.name for overlap in found}))
        raise TestImageLeak(f"{stage}: refusing to validate on test images (--test-set {test_folder}):\n  {lines}\n"
                            f"exclude them with --val-exclude {names} (config data.val_exclude)")
