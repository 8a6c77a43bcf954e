"""Per-image evidence: the rows every table cell is the mean of.

The evaluate stage writes one CSV per (eval method, task), one row per test image.  The tables
stage gathers them into one long table, ``per_image.csv`` (PER_IMAGE_COLUMNS, then those of
OPTIONAL_COLUMNS that the eval CSVs hold), where a retrained prior is a *seed* of its method
rather than a method of its own:

    eval method ``<m>_seed<s>`` (e.g. ``proposed_seed1``: the MTDEQ prior retrained with seed s)
        -> method m, seed s
    any other eval method m -> method m, seed = the main run's seed (config ``seed``)

A cell of Tables I-II is then, for method m and task t with seeds S(m) and images I,

    cell(m, t)    = (1/|I|) Σ_{i∈I} x̄(m, t, i),   x̄(m, t, i) = (1/|S(m)|) Σ_{s∈S(m)} PSNR(m, t, i, s)

(the seeds are averaged per image first, then the images), and its seed standard deviation is

    seed_sd(m, t) = sd_{s∈S(m)} [ (1/|I|) Σ_i PSNR(m, t, i, s) ]     (ddof 1; NaN for one seed).

With every image present for every seed, cell(m, t) is also the plain mean of the rows of
(m, t).  ``audit`` lists what breaks that: duplicated rows, a (method, task, seed) without every
image of the run, a (method, task) without every seed of its method.
"""

from __future__ import annotations

import re

import pandas as pd

PER_IMAGE_COLUMNS = ["method", "task", "image", "seed", "psnr", "ssim", "iterations"]
# carried when the eval CSVs hold them: [8]'s unclipped PSNR, the iteration-budget check (2K)
OPTIONAL_COLUMNS = ["psnr_unclipped", "psnr_2x", "iterations_2x"]
SEEDED = re.compile(r"^(?P<method>[a-z][a-z0-9_]*?)_seed(?P<seed>\d+)$")
KEY = ["method", "task", "image", "seed"]


def split_seed(name: str, main_seed: int) -> tuple[str, int]:
    """(method, seed) of an eval method name: '<m>_seed<s>' -> (m, s), else (name, main_seed)."""
    match = SEEDED.match(name)
    return (match["method"], int(match["seed"])) if match else (name, main_seed)


def seed_key(method: str, seed: int) -> str:
    """The eval method (and table row key) of method m retrained with seed s: '<m>_seed<s>'."""
    return f"{method}_seed{seed}"


def per_image_rows(evals: pd.DataFrame, main_seed: int) -> pd.DataFrame:
    """The long per-image table (PER_IMAGE_COLUMNS + present OPTIONAL_COLUMNS) of the eval rows."""
    pairs = [split_seed(str(name), main_seed) for name in evals["method"]]
    rows = evals.assign(method=[m for m, _ in pairs], seed=[s for _, s in pairs])
    columns = PER_IMAGE_COLUMNS + [c for c in OPTIONAL_COLUMNS if c in rows.columns and rows[c].notna().any()]
    return rows[columns].sort_values(KEY, ignore_index=True)


def seed_means(per_image: pd.DataFrame) -> pd.DataFrame:
    """Mean PSNR over the images per (method, task, seed): columns method, task, seed, psnr, n_images."""
    return per_image.groupby(["method", "task", "seed"], sort=True).agg(
        psnr=("psnr", "mean"), n_images=("image", "size")).reset_index()


def cell_means(per_image: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, task): psnr = cell(m, t) (seeds averaged per image, then images),
    n_images, images (sorted names), n_seeds, seeds (sorted), seed_sd (see the module doc)."""
    if "seed" not in per_image.columns:
        per_image = per_image.assign(seed=0)
    image_means = per_image.groupby(["method", "task", "image"], sort=True)["psnr"].mean().reset_index()
    cells = image_means.groupby(["method", "task"], sort=True).agg(
        psnr=("psnr", "mean"), n_images=("image", "size"), images=("image", lambda s: tuple(sorted(s))),
    ).reset_index()
    per_seed = seed_means(per_image).groupby(["method", "task"], sort=True).agg(
        n_seeds=("seed", "size"), seeds=("seed", lambda s: tuple(sorted(int(v) for v in s))),
        seed_sd=("psnr", lambda s: float(s.std(ddof=1)) if len(s) > 1 else float("nan")),
    ).reset_index()
    return cells.merge(per_seed, on=["method", "task"], how="left")


def audit(per_image: pd.DataFrame) -> list[str]:
    """What keeps the rows from being complete evidence (empty list: nothing).

    Every (method, task, seed) must hold every image of the run (the union over all rows), every
    (method, task) every seed of its method (the union over the method's tasks), and no
    (method, task, image, seed) may appear twice.
    """
    problems = []
    missing = [c for c in ("method", "task", "image", "seed", "psnr") if c not in per_image.columns]
    if missing:
        return [f"per-image rows lack column(s) {missing}"]
    duplicated = per_image[per_image.duplicated(KEY, keep=False)]
    for (method, task, image, seed), _ in duplicated.groupby(KEY, sort=True):
        problems.append(f"{method} {task}: image {image!r} seed {seed} appears more than once")
    images = set(per_image["image"])
    for (method, task, seed), group in per_image.groupby(["method", "task", "seed"], sort=True):
        lacking = sorted(images - set(group["image"]))
        if lacking:
            problems.append(f"{method} {task} seed {seed}: missing image(s) {lacking} "
                            f"(the run's images: {sorted(images)})")
    for method, rows in per_image.groupby("method", sort=True):
        seeds = set(rows["seed"])
        for task, group in rows.groupby("task", sort=True):
            lacking = sorted(int(s) for s in seeds - set(group["seed"]))
            if lacking:
                problems.append(f"{method} {task}: missing seed(s) {lacking} "
                                f"(seeds of {method}: {sorted(int(s) for s in seeds)})")
    return problems
