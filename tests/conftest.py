"""Shared test fixtures and helpers: repository root, a tiny DRUNet, synthetic images, data-mirror
files, and real (not dry) Snakemake runs of a target on a copy of the workflow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtdeq.models import BackboneConfig, build_backbone, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = BackboneConfig("drunet", (8, 16, 32, 64), 1)


def mirror_file(relative: str) -> Path:
    """A file of the data mirror (e.g. "weights/ffdnet_color.pth"): the fetched copy under data/,
    $MTDEQ_DATA_MIRROR, or ../shared/data; the calling test is skipped when none has it."""
    candidates = [REPO / "data" / relative]
    if os.environ.get("MTDEQ_DATA_MIRROR"):
        candidates.append(Path(os.environ["MTDEQ_DATA_MIRROR"]) / relative)
    candidates.append(REPO.parent / "shared" / "data" / relative)
    for path in candidates:
        if path.is_file():
            return path
    pytest.skip(f"{relative} not found in {[str(c) for c in candidates]}")


# what a Snakemake run needs besides the installed package: the workflow, its configs, the paper's
# numbers (input of tables and budget) and the ci reference's tolerance (optional input of budget)
WORKFLOW_FILES = ("Snakefile", "environment.yml", "workflow", "config", "results/paper",
                  "results/reference/ci/tolerance.yaml")


def data_mirror() -> Path:
    """The data mirror folder ($MTDEQ_DATA_MIRROR, else ../shared/data); the calling test is skipped
    without one."""
    folder = Path(os.environ.get("MTDEQ_DATA_MIRROR") or REPO.parent / "shared" / "data")
    if not (folder / "Set5").is_dir():
        pytest.skip(f"no data mirror at {folder} (set MTDEQ_DATA_MIRROR)")
    return folder


def run_workflow(workdir: Path, target: str, *configfiles: str, timeout: int = 900) -> str:
    """Run ``snakemake <target> --cores 2 --configfile <configfiles>`` for real in ``workdir``, a fresh
    copy of WORKFLOW_FILES (data fetched from the mirror, stages from the installed mtdeq package);
    returns its output (it printed every shell command).  Skipped without snakemake or a data mirror;
    a failing run fails the test with the end of its output."""
    if shutil.which("snakemake") is None:
        pytest.skip("snakemake is not installed")
    env = {**os.environ, "MTDEQ_DATA_MIRROR": str(data_mirror())}
    for name in WORKFLOW_FILES:
        source, dest = REPO / name, workdir / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, dest, dirs_exist_ok=True)
        elif source.is_file():
            shutil.copy2(source, dest)
    proc = subprocess.run([sys.executable, "-m", "snakemake", target, "--cores", "2", "-p", "--configfile",
                           *configfiles], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    return out


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


def extend_to_optimum(objective, grid, rounds: int, bounds=None):
    """Drive mtdeq.tune.next_extension with a known objective of the ADMM fields, as tune() does;
    return the candidate table (round 0 = the grid, then one extension per round until none)."""
    import pandas as pd

    from mtdeq import tune as tn

    bounds = tn.Bounds() if bounds is None else bounds
    rows = [{"method": "admm", **fields, "val_psnr": objective(fields), "round": 0}
            for fields, _ in tn.candidates("admm", grid, 0.0)]
    swept = [n for n, v in tn.grid_axes("admm", grid).items() if len(v) > 1]
    for round_ in range(1, rounds + 1):
        proposal = tn.next_extension(pd.DataFrame(rows), "admm", swept, bounds)
        if proposal is None:
            break
        fields, _ = tn.make_candidate("admm", proposal, 0.0)
        rows.append({"method": "admm", **fields, "val_psnr": objective(fields), "round": round_})
    return pd.DataFrame(rows)


def write_budget_rows(runs: Path, out: Path, budget_id: str = "test") -> tuple[str, ...]:
    """budget-rows for every seed of a <prior>/s<seed>/<steps>/<settings>/<task>.csv tree: one
    rows/s<seed>.csv each, as separate runs of the workflow would leave them; returns their paths."""
    from mtdeq.budget import seed_rows

    out.mkdir(parents=True, exist_ok=True)
    by_seed: dict[int, list[Path]] = {}
    for path in sorted(runs.glob("*/s*/*/*/*.csv")):
        by_seed.setdefault(int(path.relative_to(runs).parts[1][1:]), []).append(path)
    written = []
    for seed, evals in sorted(by_seed.items()):
        path = out / f"s{seed}.csv"
        seed_rows(evals, runs, seed, budget_id).to_csv(path, index=False)
        written.append(str(path))
    return tuple(written)
