"""Grid search of the test-time hyper-parameters on a validation set that is never Set5.

The paper reuses the PnP-ADMM settings that were best for the Gaussian-denoiser prior
(Section III-C) without printing them, so we find them ourselves: for one task and one
algorithm, every combination of the given value lists is run on the validation images
(Set14, centre crops) and scored by the mean PSNR.

    admm : iterations K x sigma_max x sigma_min x lam_scale,  lam = lam_scale * max(sigma_noise, 1/255)
    red  : iterations x red_lam (lam) x red_sigma (sigma_denoise) x red_step (step)

Stage ``tune`` writes one CSV row per candidate; stage ``collect-tuned`` picks the best
candidate per (method, task) and writes tuned_params.csv, with ``on_edge`` naming every
swept parameter whose chosen value is the smallest or largest of its grid (a hint that the
grid should be widened; a warning is printed for each).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from mtdeq.evaluate import SolverParams, load_test_images, run_solver

CANDIDATE_COLUMNS = [
    "method", "task", "iterations", "sigma_max", "sigma_min", "lam_scale", "lam",
    "sigma_denoise", "step", "val_psnr", "n_images", "seconds",
]
TUNED_COLUMNS = [
    "method", "task", "iterations", "sigma_max", "sigma_min", "lam", "sigma_denoise", "step",
    "val_psnr", "on_edge", "lam_scale", "n_images",
]
# the columns that are swept, per algorithm (lam is derived from lam_scale for admm)
SWEPT = {
    "admm": ("iterations", "sigma_max", "sigma_min", "lam_scale"),
    "red": ("iterations", "lam", "sigma_denoise", "step"),
}
FORBIDDEN_VALIDATION = "set5"


@dataclass(frozen=True)
class Grid:
    """Value lists to sweep.  admm uses the first four, red the last three plus iterations."""

    iterations: tuple[int, ...]
    sigma_max: tuple[float, ...] = ()
    sigma_min: tuple[float, ...] = ()
    lam_scale: tuple[float, ...] = (1.0,)
    red_lam: tuple[float, ...] = ()
    red_sigma: tuple[float, ...] = ()
    red_step: tuple[float, ...] = (1.0,)


def admm_lam(lam_scale: float, sigma_noise: float) -> float:
    """lam = lam_scale * max(sigma_noise, 1/255): the ADMM penalty scale (see mtdeq.solvers.admm)."""
    return float(lam_scale) * max(float(sigma_noise), 1.0 / 255.0)


def candidates(algorithm: str, grid: Grid, sigma_noise: float) -> list[tuple[dict, SolverParams]]:
    """Every combination of the grid as (row fields, SolverParams), in a fixed order."""
    out = []
    if algorithm == "admm":
        for name in ("iterations", "sigma_max", "sigma_min", "lam_scale"):
            if not getattr(grid, name):
                raise ValueError(f"tune --method admm: the grid for {name} is empty")
        for k, s_max, s_min, scale in itertools.product(grid.iterations, grid.sigma_max, grid.sigma_min, grid.lam_scale):
            params = SolverParams("admm", int(k), sigma_max=s_max, sigma_min=s_min, lam=admm_lam(scale, sigma_noise))
            fields = {"iterations": int(k), "sigma_max": s_max, "sigma_min": s_min, "lam_scale": scale, "lam": params.lam}
            out.append((fields, params))
    elif algorithm == "red":
        for name in ("iterations", "red_lam", "red_sigma", "red_step"):
            if not getattr(grid, name):
                raise ValueError(f"tune --method red: the grid for {name} is empty")
        for k, lam, sig, step in itertools.product(grid.iterations, grid.red_lam, grid.red_sigma, grid.red_step):
            params = SolverParams("red", int(k), lam=lam, sigma_denoise=sig, step=step)
            fields = {"iterations": int(k), "lam": lam, "sigma_denoise": sig, "step": step}
            out.append((fields, params))
    else:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected 'admm' or 'red'")
    return out


def refuse_test_set(images: str | Path) -> None:
    """Raise ValueError when the validation folder is Set5 (the test set; never tune on it)."""
    if Path(images).resolve().name.lower() == FORBIDDEN_VALIDATION:
        raise ValueError(
            f"--images {images}: refusing to tune on Set5, the test set of Tables I-II; "
            "use a validation set such as data/Set14"
        )


@dataclass(frozen=True)
class TuneSettings:
    """One tune run: grid-search ``method`` (admm|red) for ``task`` with the prior ``prior``."""

    method: str
    task: str
    prior: str
    images: str
    out: str
    grid: Grid
    max_images: int | None = 4
    crop: int | None = 128
    seed: int = 0
    device: str = "cpu"


def tune(settings: TuneSettings, *, progress: bool = True) -> pd.DataFrame:
    """Score every grid candidate by the mean validation PSNR; write and return the candidate table."""
    import torch
    from tqdm import tqdm

    from mtdeq import tasks
    from mtdeq.io import atomic_write_text, provenance
    from mtdeq.metrics import psnr
    from mtdeq.models import load_prior

    refuse_test_set(settings.images)
    if settings.task not in tasks.TEST_TASKS:
        raise KeyError(f"--task {settings.task!r}: unknown task; expected one of {list(tasks.TEST_TASKS)}")
    task = tasks.TEST_TASKS[settings.task]
    grid = candidates(settings.method, settings.grid, task.sigma_noise)
    denoiser, _ = load_prior(settings.prior)
    device = torch.device(settings.device)
    denoiser = denoiser.to(device)
    images = load_test_images(settings.images, max_images=settings.max_images, crop=settings.crop)
    # degrade once: every candidate sees the same observations
    observed = [tasks.degrade(task, x, seed=settings.seed + i) for i, (_, x) in enumerate(images)]

    rows, best = [], float("-inf")
    bar = tqdm(grid, desc=f"tune {settings.method}/{settings.task}", disable=not progress)
    for fields, params in bar:
        scores, seconds = [], 0.0
        for deg in observed:
            x_hat, info = run_solver(params, op=deg.op, y=deg.y.to(device), denoiser=denoiser, sigma_noise=task.sigma_noise)
            value = psnr(x_hat.detach().cpu(), deg.x_gt)
            scores.append(value if math.isfinite(value) else float("nan"))
            seconds += float(info.seconds)
        mean = sum(scores) / len(scores)  # nan if any image produced a non-finite estimate
        rows.append({"method": settings.method, "task": settings.task, **fields,
                     "val_psnr": mean, "n_images": len(scores), "seconds": seconds})
        if mean > best:  # False for nan
            best = mean
            bar.set_postfix(best=f"{best:.2f}")

    table = pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)
    out = Path(settings.out)
    atomic_write_text(out, table.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(out.with_suffix(".provenance.json"),
                      json.dumps(provenance({"settings": asdict(settings)}), indent=2) + "\n")
    return table


def edge_flags(group: pd.DataFrame, best: pd.Series, algorithm: str) -> list[str]:
    """Swept parameters (more than one grid value) whose chosen value is the grid's min or max.

    Returned as 'name=min' / 'name=max', in SWEPT order.
    """
    flags = []
    for name in SWEPT[algorithm]:
        values = group[name].dropna().unique()
        if len(values) < 2:
            continue
        if best[name] == values.min():
            flags.append(f"{name}=min")
        elif best[name] == values.max():
            flags.append(f"{name}=max")
    return flags


def collect_tuned(inputs: list[str | Path], out: str | Path) -> pd.DataFrame:
    """Best candidate (highest val_psnr) per (method, task) of the candidate CSVs -> tuned_params.csv."""
    from mtdeq.io import atomic_write_text

    frames = []
    for path in inputs:
        frame = pd.read_csv(path)
        missing = [c for c in CANDIDATE_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: not a tune candidate table, missing column(s) {missing}")
        frames.append(frame)
    if not frames:
        raise ValueError("collect-tuned: no --inputs given")
    table = pd.concat(frames, ignore_index=True)

    rows = []
    for (algorithm, task), group in table.groupby(["method", "task"], sort=True):
        if algorithm not in SWEPT:
            raise ValueError(f"candidate rows with method={algorithm!r}; expected 'admm' or 'red'")
        if group["val_psnr"].isna().all():
            raise ValueError(f"method={algorithm!r}, task={task!r}: every candidate failed (val_psnr is NaN)")
        best = group.loc[group["val_psnr"].idxmax()]  # first of equal scores: the grid's order
        flags = edge_flags(group, best, algorithm)
        if flags:
            print(f"WARNING: tuned {algorithm}/{task} lies on the edge of its grid: {', '.join(flags)} "
                  "-- consider widening the grid")
        rows.append({**{c: best[c] for c in TUNED_COLUMNS if c in best.index},
                     "on_edge": ";".join(flags)})
    result = pd.DataFrame(rows, columns=TUNED_COLUMNS)
    result["iterations"] = result["iterations"].astype(int)
    atomic_write_text(out, result.to_csv(index=False, float_format="%.6g"))
    return result



def _run_tune(args: argparse.Namespace) -> int:
    grid = Grid(
        iterations=tuple(args.iterations),
        sigma_max=tuple(args.sigma_max or ()),
        sigma_min=tuple(args.sigma_min or ()),
        lam_scale=tuple(args.lam_scale),
        red_lam=tuple(args.red_lam or ()),
        red_sigma=tuple(args.red_sigma or ()),
        red_step=tuple(args.red_step),
    )
    settings = TuneSettings(method=args.method, task=args.task, prior=args.prior, images=args.images,
                            out=args.out, grid=grid, max_images=args.max_images, crop=args.crop,
                            seed=args.seed, device=args.device)
    table = tune(settings)
    best = table.loc[table["val_psnr"].idxmax()] if table["val_psnr"].notna().any() else None
    summary = "no finite candidate" if best is None else f"best val PSNR {best['val_psnr']:.2f} dB"
    print(f"tune {args.method}/{args.task}: {len(table)} candidate(s), {summary} -> {args.out}")
    return 0


def _run_collect(args: argparse.Namespace) -> int:
    result = collect_tuned(args.inputs, args.out)
    print(f"collect-tuned: {len(result)} (method, task) row(s) -> {args.out}")
    return 0


def register(subparsers) -> None:
    """Add the ``tune`` and ``collect-tuned`` stages."""
    p = subparsers.add_parser(
        "tune",
        help="grid-search PnP-ADMM or RED hyper-parameters for one task on validation images (never Set5)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--method", required=True, choices=("admm", "red"), help="algorithm to tune")
    p.add_argument("--task", required=True, help="test task name (mtdeq.tasks.TEST_TASKS)")
    p.add_argument("--prior", required=True, help="checkpoint of the prior (the Gauss prior for the tables)")
    p.add_argument("--images", required=True, help="validation image folder, e.g. data/Set14 (Set5 is refused)")
    p.add_argument("--max-images", type=int, default=4, help="first N sorted images (default 4)")
    p.add_argument("--crop", type=int, default=128, help="centre crop size (default 128)")
    p.add_argument("--iterations", type=int, nargs="+", required=True, help="values of K (both algorithms)")
    p.add_argument("--sigma-max", type=float, nargs="+", help="admm: first denoiser level(s), [0,1] units")
    p.add_argument("--sigma-min", type=float, nargs="+", help="admm: last denoiser level(s)")
    p.add_argument("--lam-scale", type=float, nargs="+", default=[1.0],
                   help="admm: lam = lam_scale * max(sigma_noise, 1/255) (default 1)")
    p.add_argument("--red-lam", type=float, nargs="+", help="red: prior weight(s) lam")
    p.add_argument("--red-sigma", type=float, nargs="+", help="red: denoiser level(s) sigma_denoise")
    p.add_argument("--red-step", type=float, nargs="+", default=[1.0], help="red: relaxation step(s) (default 1)")
    p.add_argument("--seed", type=int, default=0, help="image i is degraded with seed + i (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--out", required=True, help="candidate CSV, e.g. results/quick/tune/admm_comp90.csv")
    p.set_defaults(func=_run_tune)

    c = subparsers.add_parser(
        "collect-tuned",
        help="pick the best candidate per (method, task) from tune CSVs; write tuned_params.csv",
    )
    c.add_argument("--inputs", nargs="+", required=True, help="candidate CSVs written by the tune stage")
    c.add_argument("--out", required=True, help="tuned_params.csv to write")
    c.set_defaults(func=_run_collect)
