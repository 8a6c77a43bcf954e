"""Fig. 2 of the paper: visual comparison on one Set5 image per task.

Rows (a) completion 90 % / sigma_noise 0, (b) deblurring sigma_blur 1.6 / sigma_noise 0.01,
(c) bicubic x2 super-resolution / sigma_noise 0.01; columns ground truth, degraded input,
RED, Gauss, Proposed.  Under each panel: its PSNR in dB -- for the restorations the
value of the evaluate stage's CSV (computed before 8-bit rounding), for the input the PSNR of
the saved input image (y, or op.init(y) for SR) against the ground truth.

The restored images come from ``<restored-dir>/<method>/<task>/<image>.png`` and the inputs
from ``<restored-dir>/input/<task>/<image>.png`` (see mtdeq.evaluate).  The ground truth is
read from --images and cropped as the evaluate stage did (centre crop --crop, then the
task's --test-crop, mtdeq.tasks.crop_truth).  A method without images gets an empty panel.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mtdeq.cli import add_stage
from mtdeq.tasks import CROPS, TEST_PROTOCOL

DEFAULT_ROWS = ("comp90=butterfly", "blur1.6=bird", "sr2_bicubic_n1=baby")
ROW_TITLES = {
    "comp90": "(a) completion, 90% of pixels dropped, σ_noise = 0",
    "blur1.6": "(b) Gaussian deblurring, σ_blur = 1.6, σ_noise = 0.01",
    "sr2_bicubic_n1": "(c) bicubic super-resolution ×2, σ_noise = 0.01",
}
METHOD_TITLES = {"red": "RED", "gauss": "Gauss", "proposed": "Proposed", "gauss_budget": "Gauss + same budget",
                 "st_comp": "ST Comp", "st_sr": "ST SR"}


@dataclass(frozen=True)
class FigureSettings:
    """Inputs of the figure stage; rows are (task, image stem) pairs."""

    eval_dir: str
    restored_dir: str
    images: str
    out: str
    rows: tuple[tuple[str, str], ...]
    methods: tuple[str, ...] = ("red", "gauss", "proposed")
    crop: int | None = None
    scale: str | None = None
    test_crop: str = TEST_PROTOCOL.crop  # the evaluate stage's --test-crop


def parse_row(text: str) -> tuple[str, str]:
    """'task=image' -> (task, image)."""
    task, sep, image = text.partition("=")
    if not sep or not task or not image:
        raise argparse.ArgumentTypeError(f"--rows entry {text!r}: expected TASK=IMAGE, e.g. comp90=butterfly")
    return task, image


def _find_image(folder: Path, stem: str) -> Path:
    from mtdeq.io import list_images

    for path in list_images(folder):
        if path.stem == stem:
            return path
    raise FileNotFoundError(f"{folder}: no image named {stem!r}")


def ground_truth(images: str | Path, stem: str, task_name: str, crop: int | None,
                 test_crop: str = TEST_PROTOCOL.crop):
    """The ground truth (3, H, W) as evaluate scored it: centre crop, then the task's --test-crop."""
    from mtdeq import tasks
    from mtdeq.evaluate import centre_crop
    from mtdeq.io import read_image

    x = centre_crop(read_image(_find_image(Path(images), stem)), crop)
    return tasks.crop_truth(tasks.TEST_TASKS[task_name], x.unsqueeze(0), test_crop)[0]


def eval_psnr(eval_dir: Path, method: str, task: str, stem: str) -> float | None:
    """PSNR of ``stem`` in <eval_dir>/<method>/<task>.csv, or None when absent."""
    path = eval_dir / method / f"{task}.csv"
    if not path.is_file():
        return None
    table = pd.read_csv(path)
    match = table.loc[table["image"].astype(str) == stem, "psnr"]
    return float(match.iloc[0]) if len(match) else None


def make_figure(settings: FigureSettings) -> Path:
    """Draw the grid (rows x [GT, input, methods...]) and write it atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mtdeq.io import read_image, write_png_figure
    from mtdeq.metrics import psnr

    restored, eval_dir = Path(settings.restored_dir), Path(settings.eval_dir)
    columns = ["Ground truth", "Degraded input"] + [METHOD_TITLES.get(m, m) for m in settings.methods]
    n_rows, n_cols = len(settings.rows), len(columns)
    fig = plt.figure(figsize=(2.3 * n_cols, 2.7 * n_rows + 0.5), layout="constrained")
    title = "Fig. 2 replication: restorations of Set5 images (PSNR under each panel)"
    fig.suptitle(title + (f" — scale {settings.scale}" if settings.scale else ""), fontsize=11)
    row_figures = fig.subfigures(n_rows, 1, squeeze=False)[:, 0]
    for r, (task, stem) in enumerate(settings.rows):
        gt = ground_truth(settings.images, stem, task, settings.crop, settings.test_crop)
        panels = [(gt, f"({stem})")]
        sources = [("input", None)] + [(m, m) for m in settings.methods]
        for folder, method in sources:
            path = restored / folder / task / f"{stem}.png"
            if not path.is_file():
                panels.append((None, "not run"))
                continue
            image = read_image(path)
            if tuple(image.shape) != tuple(gt.shape):
                raise ValueError(
                    f"{path}: shape {tuple(image.shape)} differs from the ground truth {tuple(gt.shape)}; "
                    "pass the --crop and --test-crop the evaluate stage used"
                )
            value = psnr(image, gt) if method is None else eval_psnr(eval_dir, method, task, stem)
            panels.append((image, "PSNR n/a" if value is None else f"{value:.2f} dB"))
        row_figures[r].suptitle(ROW_TITLES.get(task, task), fontsize=10, x=0.01, ha="left")
        axes = row_figures[r].subplots(1, n_cols)
        for ax, column, (image, caption) in zip(axes, columns, panels):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if image is not None:
                ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xlabel(f"{column}\n{caption}", fontsize=9)
    return write_png_figure(settings.out, fig)


def _run(args: argparse.Namespace) -> int:
    settings = FigureSettings(eval_dir=args.eval_dir, restored_dir=args.restored_dir, images=args.images,
                              out=args.out, rows=tuple(args.rows), methods=tuple(args.methods),
                              crop=args.crop, scale=args.scale, test_crop=args.test_crop)
    print(f"figure -> {make_figure(settings)}")
    return 0


def register(subparsers) -> None:
    """Add the ``figure`` stage."""
    p = add_stage(subparsers, "figure", "Fig. 2: ground truth, degraded input, RED, Gauss, Proposed with PSNRs", __doc__)
    p.add_argument("--eval-dir", required=True, help="results/<scale>/eval (for the PSNRs)")
    p.add_argument("--restored-dir", required=True, help="results/<scale>/restored (<method>/<task>/<image>.png)")
    p.add_argument("--images", required=True, help="ground-truth folder, e.g. data/Set5")
    p.add_argument("--out", required=True, help="PNG to write, e.g. results/fig2.png")
    p.add_argument("--rows", type=parse_row, nargs="+", default=[parse_row(r) for r in DEFAULT_ROWS],
                   help=f"TASK=IMAGE per row (default: {' '.join(DEFAULT_ROWS)})")
    p.add_argument("--methods", nargs="+", default=["red", "gauss", "proposed"], help="restoration columns")
    p.add_argument("--crop", type=int, default=None, help="the --crop the evaluate stage used, if any")
    p.add_argument("--scale", default=None, help="scale name for the title")
    p.add_argument("--test-crop", choices=CROPS, default=TEST_PROTOCOL.crop,
                   help=f"the --test-crop the evaluate stage used (default {TEST_PROTOCOL.crop})")
    p.set_defaults(func=_run)
