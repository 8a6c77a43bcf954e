"""Target `heldout`: the seeded draw, the Set5-vs-held-out margins table and the margins figure."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mtdeq import heldout as ho
from mtdeq import verdict as vd
from mtdeq.cli import main
from mtdeq.evaluate import CSV_COLUMNS

PAPER = Path(__file__).resolve().parents[1] / "results" / "paper" / "paper_tables.csv"
BSDS_NAMES = [f"{100000 + 37 * i}.jpg" for i in range(200)]


def test_draw_is_seeded_reproducible_distinct_and_sorted():
    first = ho.draw(BSDS_NAMES, 30, 0)
    assert first == ho.draw(list(reversed(BSDS_NAMES)), 30, 0)  # the input order does not matter
    assert len(first) == len(set(first)) == 30 and set(first) <= set(BSDS_NAMES)
    assert first == sorted(first)
    assert first != ho.draw(BSDS_NAMES, 30, 1)
    assert ho.draw(BSDS_NAMES, 200, 5) == sorted(BSDS_NAMES)
    with pytest.raises(ValueError, match="cannot draw 201 of 200"):
        ho.draw(BSDS_NAMES, 201, 0)
    with pytest.raises(ValueError, match="cannot draw 0"):
        ho.draw(BSDS_NAMES, 0, 0)


def test_stage_draw_copies_the_images_and_records_the_list(tmp_path):
    src = tmp_path / "test"
    src.mkdir()
    for i in range(12):
        Image.fromarray(np.full((8, 8, 3), i * 20, dtype=np.uint8)).save(src / f"{i:03d}.png")
    (src / "notes.txt").write_text("not an image")
    rc = main(["heldout-draw", "--dir", str(src), "--images", "4", "--seed", "7",
               "--out-dir", str(tmp_path / "images"), "--list", str(tmp_path / "images.csv")])
    assert rc == 0
    listing = pd.read_csv(tmp_path / "images.csv", dtype={"file": str})
    assert list(listing.columns) == ho.DRAW_COLUMNS
    assert list(listing["file"]) == ho.draw([f"{i:03d}.png" for i in range(12)], 4, 7)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == list(listing["file"])
    for row in listing.itertuples(index=False):
        copied = (tmp_path / "images" / row.file).read_bytes()
        assert copied == Path(row.source).read_bytes()
        assert hashlib.sha256(copied).hexdigest() == row.sha256
    # the same draw again: same list, and a stale folder is replaced
    (tmp_path / "images" / "stale.png").write_bytes(b"x")
    again = ho.stage_draw(src, 4, 7, tmp_path / "images", tmp_path / "again.csv")
    assert list(again["file"]) == list(listing["file"]) and not (tmp_path / "images" / "stale.png").exists()


def _write(root: Path, method: str, task: str, psnr) -> None:
    images = [f"im{i}" for i in range(len(psnr))]
    frame = pd.DataFrame({"image": images, "method": method, "task": task, "sigma_noise": 0.0, "psnr": psnr,
                          "ssim": 0.9, "iterations": 10, "seconds": 0.1}, columns=CSV_COLUMNS)
    (root / method).mkdir(parents=True, exist_ok=True)
    frame.to_csv(root / method / f"{task}.csv", index=False)


@pytest.fixture
def constructed(tmp_path):
    """Set5 (5 images) and held-out (8 images) evaluations with known per-image margins."""
    rng = np.random.default_rng(3)
    set5, held = tmp_path / "set5", tmp_path / "held"
    diffs = {"comp80": 0.5, "blur1.6": -0.2, "sr2_bicubic_n0": 0.1}
    for root, n in ((set5, 5), (held, 8)):
        for task, margin in diffs.items():
            gauss = 28.0 + rng.normal(0, 1, n)
            d = margin + np.linspace(-0.3, 0.3, n)
            _write(root, "gauss", task, gauss)
            _write(root, "gauss_budget", task, gauss + 0.1)
            _write(root, "proposed", task, gauss + d + 0.1)       # seed 0
            _write(root, "proposed_seed1", task, gauss + d - 0.1)  # seed 1: the seed mean is gauss + d
    return tmp_path, diffs


def test_heldout_stage_writes_margins_beside_set5_and_the_figure(constructed):
    root, diffs = constructed
    out = root / "out"
    rc = main(["heldout", "--eval-dir", str(root / "held"), "--set5-eval-dir", str(root / "set5"),
               "--methods", "gauss", "proposed", "gauss_budget", "proposed_seed1", "--paper", str(PAPER),
               "--scale", "unit", "--out-dir", str(out), "--seed", "0"])
    assert rc == 0
    table = pd.read_csv(out / "comparison.csv")
    assert list(table.columns) == ho.COMPARISON_COLUMNS
    assert len(table) == 2 * len(diffs)
    d = np.linspace(-0.3, 0.3, 8)
    for task, margin in diffs.items():
        row = table[(table["baseline"] == "gauss") & (table["task"] == task)].iloc[0]
        assert row["set5_margin"] == pytest.approx(margin, abs=1e-4) and row["set5_n_images"] == 5
        assert row["heldout_margin"] == pytest.approx(margin, abs=1e-4) and row["heldout_n_images"] == 8
        assert row["sd_diff"] == pytest.approx(np.std(d, ddof=1), abs=1e-4)
        assert row["half_width"] == pytest.approx((row["heldout_ci_high"] - row["heldout_ci_low"]) / 2, abs=1e-4)
        assert row["n_needed"] == int(np.ceil((ho.Z95 * np.std(d, ddof=1) / ho.TARGET_HALF_WIDTH) ** 2))
        control = table[(table["baseline"] == "gauss_budget") & (table["task"] == task)].iloc[0]
        assert control["heldout_margin"] == pytest.approx(margin - 0.1, abs=1e-4)
    margins = pd.read_csv(out / "margins.csv")
    assert list(margins.columns) == vd.MARGIN_COLUMNS + ["sd_diff", "half_width", "n_needed"]
    assert set(margins["n_seeds"]) == {2}  # proposed and proposed_seed1: one method with two seeds
    comp = margins[(margins["baseline"] == "gauss") & (margins["task"] == "comp80")].iloc[0]
    assert comp["verdict"] == vd.WIN and not comp["degenerate"]
    per_image = pd.read_csv(out / "per_image.csv")
    assert set(per_image["method"]) == {"gauss", "gauss_budget", "proposed"} and per_image["image"].nunique() == 8
    md = (out / "comparison.md").read_text()
    assert "### Proposed − Gauss" in md and "### Proposed − Gauss + same budget (control)" in md
    assert "| Completion 80% | +0.50 [" in md and "N for ±0.10" in md
    assert "Training seeds, on both sets: gauss_budget 0; proposed 0, 1." in md
    png = Image.open(out / "margins.png")
    assert png.size[0] > 500 and png.size[1] > 300
    assert (out / "margin_counts.csv").is_file()
    assert not (out / "timings.csv").exists()  # only with --benchmarks


def test_heldout_stage_times_the_held_out_jobs_only(constructed):
    root, _ = constructed
    bench = root / "bench"
    for rule, job, seconds in (("evaluate_heldout", "gauss/comp80", 650.0), ("evaluate", "gauss/comp80", 90.0),
                               ("heldout_images", "", 2.0)):
        path = bench / rule / f"{job}.tsv" if job else bench / f"{rule}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"s\tmax_rss\tcpu_time\n{seconds}\t100\t{seconds}\n")
    out = root / "out"
    assert main(["heldout", "--eval-dir", str(root / "held"), "--set5-eval-dir", str(root / "set5"),
                 "--methods", "gauss", "proposed", "--paper", str(PAPER), "--scale", "unit", "--out-dir", str(out),
                 "--benchmarks", str(bench)]) == 0
    times = pd.read_csv(out / "timings.csv")
    assert list(times["rule"]) == ["evaluate_heldout", "heldout_images", "TOTAL"]
    assert times.iloc[-1]["seconds"] == pytest.approx(652.0)  # Set5's evaluate is not the held-out set's


def test_comparison_and_figure_on_constructed_margins(tmp_path):
    def margins(n, shift):
        return pd.DataFrame([
            {"prior": "proposed", "baseline": b, "table": "table1", "task": t, "n_images": n, "n_seeds": 1,
             "margin": m + shift, "ci_low": m + shift - 0.2, "ci_high": m + shift + 0.3, "tolerance": 0.05,
             "verdict": vd.decide(m + shift, m + shift - 0.2, m + shift + 0.3, 0.05), "seed_sd": np.nan,
             "degenerate": False}
            for b in ("gauss", "gauss_budget") for t, m in (("comp80", 0.4), ("blur1.6", 0.1))])

    held = margins(30, 0.05).assign(sd_diff=0.5, half_width=0.25, n_needed=97)
    table = ho.comparison(margins(5, 0.0), held)
    assert list(table["set5_margin"]) == pytest.approx([0.4, 0.1, 0.4, 0.1])
    assert list(table["heldout_margin"]) == pytest.approx([0.45, 0.15, 0.45, 0.15])
    md = ho.comparison_markdown(table, scale="unit", n_heldout=30, source="data/BSDS500/test")
    assert "| Completion 80% | +0.40 [+0.20, +0.70] W | +0.45 [+0.25, +0.75] W | 0.50 | 0.25 | 97 |" in md
    assert "30 image(s) drawn from data/BSDS500/test" in md and "3 or fewer images" not in md
    assert "3 or fewer images" in ho.comparison_markdown(ho.comparison(margins(3, 0.0), held), scale="u",
                                                         n_heldout=30, source="x")
    # a task Set5 lacks is shown as a dash
    lone = ho.comparison(margins(5, 0.0).iloc[:1], held)
    assert "| Deblur σ_blur=1.6 | — |" in ho.comparison_markdown(lone, scale="u", n_heldout=30, source="x")
    fig = ho.margins_figure(table, title="unit")
    assert len(fig.axes) == 2
    from mtdeq.io import write_png_figure
    write_png_figure(tmp_path / "m.png", fig)
    assert Image.open(tmp_path / "m.png").format == "PNG"
