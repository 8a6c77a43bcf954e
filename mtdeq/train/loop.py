"""Pieces shared by the two training loops: the per-step random generator, data, validation, guards.

Determinism.  Everything random in step k (crops, flips, tasks, masks, noise) is drawn from
``step_generator(seed, k)``, a CPU generator seeded from (seed, k) alone, so the draws of a step
do not depend on the device, the number of data-parallel ranks or on what ran before -- and a
resumed run only has to restore model, optimiser and scheduler (mtdeq.train.state).
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import torch

VAL_SEED = 0  # validation degradations are fixed, whatever the training seed


def step_generator(seed: int, step: int, part: int = 0) -> torch.Generator:
    """CPU generator for every random draw of training step ``step`` (1-based), from (seed, step) only.

    part > 0: the generator of the step's further mini-batches under gradient accumulation (part 0,
    the first mini-batch, draws what a step without accumulation draws).
    """
    entropy = [int(seed), int(step)] + ([int(part)] if part else [])
    hi, lo = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(hi) << 31) ^ int(lo))


def randn(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """N(0, I) noise drawn on the CPU generator (device-independent draws), moved to like's device."""
    return torch.randn(tuple(shape), generator=generator, dtype=like.dtype).to(like.device)


def open_dataset(train_dirs, crop: int):
    """Random square crops of the training images (mtdeq.data.PatchDataset)."""
    from mtdeq.data import PatchDataset

    return PatchDataset(list(train_dirs), crop=crop)


def stage_logger(quiet: bool, is_main: bool):
    """``log(msg)``: a line on stderr from rank 0 unless quiet, else nothing."""
    if quiet or not is_main:
        return lambda msg: None
    return lambda msg: print(msg, file=sys.stderr)


def load_val_crops(val_dir: str | None, crop: int, n: int, *, exclude: tuple[str, ...] = ()) -> torch.Tensor | None:
    """Centre crops (n, 3, s, s) of the first n images of val_dir whose file names are not in ``exclude``
    (mtdeq.leakage.validation_files), s = min(crop, smallest side); None without val_dir."""
    if val_dir is None:
        return None
    from mtdeq.io import read_image
    from mtdeq.leakage import validation_files

    images = [read_image(p) for p in validation_files(val_dir, n, exclude)]
    s = min([crop] + [min(im.shape[-2:]) for im in images])
    crops = []
    for im in images:
        top, left = (im.shape[-2] - s) // 2, (im.shape[-1] - s) // 2
        crops.append(im[:, top : top + s, left : left + s])
    return torch.stack(crops)


def check_validation_set(val_dir: str | None, n: int, *, exclude: tuple[str, ...] = (), test_set: str | None = None,
                         stage: str) -> None:
    """Refuse validation images that are test images or crops of one (mtdeq.leakage.refuse_test_images):
    the images load_val_crops(val_dir, ., n, exclude=exclude) would use, against the folder test_set.
    Nothing to check without val_dir or test_set.  Call it before the stage writes anything."""
    if val_dir is None or not test_set:
        return
    from mtdeq.leakage import refuse_test_images, validation_files

    refuse_test_images(validation_files(val_dir, n, exclude), test_set, stage=stage)


def mean_psnr(out: torch.Tensor, ref: torch.Tensor) -> float:
    from mtdeq.metrics import psnr

    return float(np.mean([psnr(out[i], ref[i]) for i in range(ref.shape[0])]))


def scheduler_step(scheduler) -> None:
    # The schedule follows the step count, also over skipped steps, where torch would warn
    # that scheduler.step() ran without optimizer.step().
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)`")
        scheduler.step()


def grads_finite(model: torch.nn.Module) -> bool:
    return all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def memory_format(channels_last: bool) -> torch.memory_format:
    """The layout of a training network: channels-last (faster oneDNN convolutions on CPU) or torch's default."""
    return torch.channels_last if channels_last else torch.contiguous_format
