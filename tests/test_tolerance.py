"""The measured tolerance of the ci reference still catches real regressions.

A real evaluation (tiny DRUNet prior, synthetic images, PnP-ADMM) is blessed as a reference
with the ci scale's own ``tolerance.yaml``; a slightly perturbed prior, or a deblurring
kernel of σ 1.7 instead of 1.6, must then fail ``mtdeq check`` while an identical rerun passes.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import REPO, TINY, write_synthetic_images
from mtdeq import evaluate as ev
from mtdeq import tables as tb
from mtdeq import tasks
from mtdeq.check import run_check
from mtdeq.models import build_backbone, save_checkpoint

CI_TOLERANCE = REPO / "results" / "reference" / "ci" / "tolerance.yaml"
PAPER = REPO / "results" / "paper" / "paper_tables.csv"
TASKS = ("blur1.6", "sr2_bicubic_n1")
ROW = {"method": "admm", "iterations": 6, "sigma_max": 0.1, "sigma_min": 0.02, "lam": np.nan,
       "sigma_denoise": np.nan, "step": np.nan, "val_psnr": np.nan, "on_edge": ""}


def train_tiny_denoiser(images, steps: int = 60) -> torch.nn.Module:
    """A tiny DRUNet trained for a few seconds to denoise the synthetic images (seeded)."""
    from mtdeq.io import list_images, read_image

    torch.manual_seed(0)
    model = build_backbone(TINY)
    clean = torch.stack([read_image(p) for p in list_images(images)])
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        sigma = 0.05
        noisy = clean + sigma * torch.randn_like(clean)
        loss = (model(noisy, torch.full((len(clean),), sigma)) - clean).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tolerance")
    (root / "images").mkdir()
    images = write_synthetic_images(root / "images", 2, 32, 32)
    model = train_tiny_denoiser(images)
    save_checkpoint(root / "prior.pt", model, TINY)
    params = root / "tuned_params.csv"
    pd.DataFrame([{**ROW, "task": t} for t in TASKS]).to_csv(params, index=False)
    return {"root": root, "model": model, "images": images, "params": params}


def run(world, name: str, prior_of: dict) -> tuple:
    """Evaluate gauss and proposed on TASKS with the given checkpoints; return the results folder."""
    run_dir = world["root"] / name
    for method, prior in prior_of.items():
        for task in TASKS:
            ev.evaluate(ev.EvalSettings(method=method, task=task, prior=str(prior), images=str(world["images"]),
                                        params=str(world["params"]), out=str(run_dir / "eval" / method / f"{task}.csv"),
                                        device="cpu"), progress=False)
    tb.make_tables(tb.TableSettings(str(run_dir / "eval"), str(PAPER), "ci", str(run_dir / "results")))
    return run_dir / "results"


@pytest.fixture(scope="module")
def reference(world):
    prior = world["root"] / "prior.pt"
    results = run(world, "run0", {"gauss": prior, "proposed": prior})
    folder = world["root"] / "reference" / "ci"
    assert run_check(folder, results, do_bless=True) == 0
    shutil.copy(CI_TOLERANCE, folder / "tolerance.yaml")
    return folder


def test_identical_rerun_passes(world, reference):
    prior = world["root"] / "prior.pt"
    assert run_check(reference, run(world, "same", {"gauss": prior, "proposed": prior})) == 0


def test_slightly_perturbed_prior_fails(world, reference, capsys):
    torch.manual_seed(1)
    model = build_backbone(TINY)
    model.load_state_dict(world["model"].state_dict())
    with torch.no_grad():  # 5 % relative noise on every weight
        for p in model.parameters():
            p.add_(0.05 * p.abs().mean() * torch.randn_like(p))
    perturbed = save_checkpoint(world["root"] / "perturbed.pt", model, TINY)
    results = run(world, "perturbed", {"gauss": world["root"] / "prior.pt", "proposed": perturbed})
    capsys.readouterr()
    assert run_check(reference, results) == 1
    out = capsys.readouterr().out
    assert "proposed" in out.split("largest |diff| first:")[1]


def test_changed_blur_kernel_fails(world, reference, monkeypatch, capsys):
    blur = tasks.TEST_TASKS["blur1.6"]
    monkeypatch.setitem(tasks.TEST_TASKS, "blur1.6", dataclasses.replace(blur, params=(("sigma", 1.7),)))
    prior = world["root"] / "prior.pt"
    results = run(world, "kernel", {"gauss": prior, "proposed": prior})
    capsys.readouterr()
    assert run_check(reference, results) == 1
    failing = capsys.readouterr().out.split("largest |diff| first:")[1]
    assert "blur1.6" in failing and "sr2_bicubic_n1" not in failing
