"""The training-budget curve judges every column with the suite's verdict rule (mtdeq.verdict)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from conftest import REPO, write_budget_rows

from mtdeq import verdict as vd
from mtdeq.budget import MARGIN_COLUMNS, TASK_MARGIN_COLUMNS, BudgetSettings, run
from mtdeq.cli import main

PAPER = REPO / "results" / "paper" / "paper_tables.csv"
TABLE1 = ["comp80", "comp90", "blur1.6", "blur2.0"]
TABLE2 = ["sr2_bicubic_n0", "sr2_bicubic_n1", "sr2_gauss_n0", "sr2_gauss_n1",
          "sr3_bicubic_n0", "sr3_bicubic_n1", "sr3_gauss_n0", "sr3_gauss_n1"]
IMAGES = ["baby", "bird", "butterfly", "head", "woman"]
Z = np.array([-2.0, -1.0, 0.0, 1.0, 2.0]) / np.std([-2.0, -1.0, 0.0, 1.0, 2.0], ddof=1)
GAUSS = 30.0 + np.array([-2.0, 1.0, 0.5, -0.5, 1.0])  # per-image Gauss PSNRs, the same on every task


def _write(path, psnrs):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"image": IMAGES, "psnr": psnrs}).to_csv(path, index=False)


def _layout(tmp_path, runs: dict) -> BudgetSettings:
    """Gauss as GAUSS on every task; run key (prior, seed, steps, settings) -> task -> per-image differences."""
    for task in TABLE1 + TABLE2:
        _write(tmp_path / "gauss" / f"{task}.csv", GAUSS)
    for (prior, seed, steps, settings), diffs in runs.items():
        for task in TABLE1 + TABLE2:
            _write(tmp_path / "runs" / prior / f"s{seed}" / str(steps) / settings / f"{task}.csv", GAUSS + diffs(task))
    return BudgetSettings(rows=write_budget_rows(tmp_path / "runs", tmp_path / "rows"), gauss_dir=str(tmp_path / "gauss"), paper=str(PAPER),
                          out=str(tmp_path / "b.csv"), margins=str(tmp_path / "m.csv"),
                          figure=str(tmp_path / "b.png"), seed=0, scale="test")


RUNS = {
    # Table I: a clear +0.5 dB; Table II: +0.02 dB inside 0.3 dB of image-to-image noise
    ("proposed", 0, 100, "gauss"): lambda t: 0.5 + 0.05 * Z if t in TABLE1 else 0.02 + 0.3 * Z,
    ("control", 0, 100, "gauss"): lambda t: -(0.5 + 0.05 * Z),
}


def test_budget_margins_count_verdicts_not_positive_differences(tmp_path):
    settings = _layout(tmp_path, RUNS)
    _, margin = run(settings)
    assert list(margin.columns) == MARGIN_COLUMNS
    by = margin.set_index(["table", "comparison"])
    assert tuple(by.loc[("table1", "proposed-gauss"), ["wins", "ties", "losses", "n_tasks"]]) == (4, 0, 0, 4)
    # ahead on every Table II column by +0.02 dB, but inside the noise: ties, not wins
    row = by.loc[("table2", "proposed-gauss")]
    assert row["mean_margin"] > 0 and (row["wins"], row["ties"], row["losses"]) == (0, 8, 0)
    assert tuple(by.loc[("table1", "control-gauss"), ["wins", "ties", "losses"]]) == (0, 0, 4)
    assert tuple(by.loc[("table1", "proposed-control"), ["wins", "ties", "losses"]]) == (4, 0, 0)

    per_task = pd.read_csv(tmp_path / "margins_per_task.csv")  # default: beside --margins
    assert list(per_task.columns) == TASK_MARGIN_COLUMNS
    assert len(per_task) == 3 * 12 and set(per_task["n_images"]) == {5} and not per_task["degenerate"].any()
    row = per_task[(per_task["comparison"] == "proposed-gauss") & (per_task["task"] == "comp80")].iloc[0]
    assert row["ci_low"] > 0.4 and row["ci_high"] < 0.6 and row["verdict"] == vd.WIN and row["tolerance"] == 0.05
    assert list(per_task.loc[per_task["comparison"] == "proposed-gauss", "task"]) == TABLE1 + TABLE2  # paper order
    md = (tmp_path / "m.md").read_text()
    assert "| 100 | 0 | gauss | +0.50 (4/4) | +0.02 (0/8) |" in md
    assert "Every column" in md and "| 100 | 0 | gauss | Proposed − Gauss | 4/8/0 | +0.50 [" in md
    assert (tmp_path / "b.png").stat().st_size > 10_000  # the curve is still drawn


def test_budget_verdicts_use_the_tolerance_file(tmp_path):
    settings = _layout(tmp_path, RUNS)
    tolerance = tmp_path / "tolerance.yaml"
    tolerance.write_text("default: 0.05\nrows: {proposed: {table1: 1.5}}\n")
    rc = main(["budget", "--rows", *settings.rows, "--gauss-dir", settings.gauss_dir, "--paper", str(PAPER),
               "--out", settings.out, "--margins", settings.margins, "--figure", settings.figure,
               "--tolerance", str(tolerance), "--task-margins", str(tmp_path / "tm.csv")])
    assert rc == 0
    per_task = pd.read_csv(tmp_path / "tm.csv")
    t1 = per_task[per_task["table"] == "table1"].set_index(["comparison", "task"])
    # proposed's row allows 1.5 dB on Table I: +0.5 over Gauss is a tie, and so is +1.0 over the control
    assert t1.loc[("proposed-gauss", "comp80"), "tolerance"] == 1.5
    assert set(t1.loc["proposed-gauss", "verdict"]) == {vd.TIE}
    assert t1.loc[("proposed-control", "comp80"), "verdict"] == vd.TIE
    assert set(t1.loc["control-gauss", "verdict"]) == {vd.LOSS}  # control -> gauss_budget: default 0.05
    assert str(tolerance) in (tmp_path / "m.md").read_text()


def test_trend_says_growing_then_flat_and_the_fit_is_the_line_through_the_seed_means(tmp_path):
    # Proposed − Gauss: +0.2 at 100 (seeds 0, 1), +0.6 at 400 (both seeds), +0.6 ± noise at 1,600 (seed 0):
    # a clear rise 100 -> 400 (W), then flat (T); the control stays at −0.1 so Proposed − control follows
    runs = {}
    for seed in (0, 1):
        runs[("proposed", seed, 100, "gauss")] = lambda t, s=seed: 0.2 + 0.01 * s + 0.02 * Z
        runs[("proposed", seed, 400, "gauss")] = lambda t, s=seed: 0.6 + 0.01 * s + 0.02 * Z
        for steps in (100, 400):
            runs[("control", seed, steps, "gauss")] = lambda t: -0.1 + 0.0 * Z
    runs[("proposed", 0, 1600, "gauss")] = lambda t: 0.6 + 0.3 * Z  # same mean, image noise: flat
    runs[("control", 0, 1600, "gauss")] = lambda t: -0.1 + 0.0 * Z
    settings = _layout(tmp_path, runs)
    from dataclasses import replace

    run(replace(settings, paper_steps=1_074_256))
    changes = pd.read_csv(tmp_path / "trend.csv")
    from mtdeq.budget import FIT_COLUMNS, TREND_COLUMNS
    assert list(changes.columns) == TREND_COLUMNS
    by = changes.set_index(["comparison", "group", "from_steps"])
    for group in ("completion", "deblurring", "super-resolution"):
        first = by.loc[("proposed-gauss", group, 100)]
        assert first["n_seeds"] == 2 and abs(first["change"] - 0.4) < 1e-6 and first["verdict"] == vd.WIN
        assert abs(first["seed_sd"]) < 1e-6  # both seeds rise by the same 0.4
        last = by.loc[("proposed-gauss", group, 400)]
        assert last["n_seeds"] == 1 and abs(last["change"]) < 1e-6 and last["verdict"] == vd.TIE
        assert last["ci_low"] < 0 < last["ci_high"] and np.isnan(last["seed_sd"])
        assert abs(by.loc[("proposed-control", group, 100), "change"] - 0.4) < 1e-6
    fit = pd.read_csv(tmp_path / "extrapolation.csv")
    assert list(fit.columns) == FIT_COLUMNS
    row = fit[(fit["comparison"] == "proposed-gauss") & (fit["group"] == "completion")].iloc[0]
    # least squares through (log2 100, 0.205), (log2 400, 0.605), (log2 1600, 0.6): slope per doubling
    x = np.log2([100, 400, 1600])
    slope, intercept = np.polyfit(x, [0.205, 0.605, 0.6], 1)
    assert row["budgets"] == "100/400/1600" and abs(row["slope_per_doubling"] - slope) < 1e-4
    assert abs(row["extrapolated"] - (intercept + slope * np.log2(1_074_256))) < 1e-3
    assert abs(row["margin_last"] - 0.6) < 1e-4
    paper = row["paper_margin"]
    assert np.isfinite(paper) and abs(row["steps_to_paper"] - 2 ** ((paper - intercept) / slope)) / row["steps_to_paper"] < 1e-3
    md = (tmp_path / "m.md").read_text()
    assert "## Where does the curve flatten? — scale test" in md
    assert "| Proposed − Gauss | completion | 400 → 1600 | 1 | " in md and "1,074,256 steps" in md
    assert md.index("| Proposed − Gauss | completion | 100 → 400") < md.index("| Proposed − control | completion")


def test_steps_to_the_papers_margin_print_in_digits_or_as_a_power_of_ten():
    """A nearly flat fitted line reaches the paper's margin after an absurd number of steps: the
    markdown writes it as 1.7e+33, not as 34 digits; a reachable count keeps its digits."""
    from mtdeq.budget import FIT_COLUMNS, TREND_COLUMNS, trend_markdown

    fit = pd.DataFrame([dict(zip(FIT_COLUMNS, ("proposed-gauss", g, "100/400", 0.1, s, 1e6, 0.2, 0.7, reach)))
                        for g, s, reach in (("completion", 0.009, 1.742634e33), ("deblurring", 0.3, 123_456.0),
                                            ("super-resolution", -0.1, float("nan")))])
    md = trend_markdown(pd.DataFrame(columns=TREND_COLUMNS), fit)
    assert "| +0.70 | 1.7e+33 |" in md and "| +0.70 | 123,456 |" in md and "| +0.70 | — |" in md
