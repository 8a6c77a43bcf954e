"""``bench denoise``: how strong is a backbone as a plain Gaussian denoiser?

A prior's quality in PnP-ADMM is bounded by its quality as a denoiser, so a gap between our
Gauss row and the paper's (DPIR's DRUNet) is first a gap in denoising PSNR.  For each image
folder and noise level sigma (pixel units /255) every image x gets y = x + sigma n (n ~ N(0, I),
seeded per image, drawn in float64), is denoised once with D(y, sigma) on the full image, and
the PSNR (mtdeq.metrics.psnr, RGB, clipped, no shave) is averaged per folder.  One CSV row per
(prior, folder, sigma): columns prior, images, sigma_255, n_images, psnr, seconds.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

DENOISE_COLUMNS = ["prior", "images", "sigma_255", "n_images", "psnr", "seconds"]


def add_denoise_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--priors", nargs="+", required=True, help="checkpoints (ours or KAIR .pth via load_prior)")
    p.add_argument("--images", nargs="+", required=True, help="image folders, e.g. data/Set5 data/Set14")
    p.add_argument("--sigmas", type=float, nargs="+", default=[15, 25, 50], help="noise levels /255 (default 15 25 50)")
    p.add_argument("--seed", type=int, default=0, help="image i of a folder gets noise seed + i (default 0)")
    p.add_argument("--device", default="auto", help="auto (cuda, else mps, else cpu), cpu, cuda, mps")
    p.add_argument("--out", default="results/bench/denoise.csv", help="CSV to write")


def denoise_psnr(model, images: list, sigma: float, seed: int, device) -> float:
    """Mean PSNR of ``model`` denoising each (1, 3, H, W) image of ``images`` at noise level sigma."""
    from mtdeq.metrics import psnr

    scores = []
    for index, x in enumerate(images):
        generator = torch.Generator().manual_seed(seed + index)
        noise = torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x.dtype)
        with torch.inference_mode():
            out = model((x + sigma * noise).to(device), torch.full((1,), sigma, device=device))
        scores.append(psnr(out[0].cpu(), x[0]))
    return sum(scores) / len(scores)


def run_denoise(args: argparse.Namespace) -> int:
    """Gaussian-denoising PSNR of each prior on each image folder and noise level (full images)."""
    from mtdeq.io import atomic_write_text, list_images, read_image
    from mtdeq.models import for_inference, load_prior
    from mtdeq.runtime import resolve_device

    device = resolve_device(args.device)
    folders = {folder: [read_image(f).unsqueeze(0) for f in list_images(folder)] for folder in args.images}
    rows = []
    for prior in args.priors:
        model = for_inference(load_prior(prior)[0], device)
        for folder, images in folders.items():
            for sigma_255 in args.sigmas:
                start = time.perf_counter()
                value = denoise_psnr(model, images, sigma_255 / 255.0, args.seed, device)
                rows.append({"prior": prior, "images": folder, "sigma_255": sigma_255, "n_images": len(images),
                             "psnr": value, "seconds": time.perf_counter() - start})
                print(f"{prior} {folder} sigma {sigma_255:g}/255: {value:.2f} dB")
    out = Path(args.out)
    atomic_write_text(out, pd.DataFrame(rows, columns=DENOISE_COLUMNS).to_csv(index=False, float_format="%.4f"))
    print(f"-> {out}")
    return 0
