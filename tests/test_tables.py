"""Tables I-II from synthetic per-image eval CSVs, and the transcription of the paper's numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtdeq import tables as tb
from mtdeq import verdict as vd
from mtdeq.cli import main
from mtdeq.evaluate import CSV_COLUMNS

PAPER = Path(__file__).resolve().parents[1] / "results" / "paper" / "paper_tables.csv"
# the paper's printed "Proposed vs. Gauss" rows (Table I, Table II 2x, Table II 3x)
PRINTED_GAIN = {
    "comp80": 0.52, "comp90": 0.89, "blur1.6": 0.76, "blur2.0": 0.95,
    "sr2_bicubic_n0": 0.41, "sr2_bicubic_n1": 0.63, "sr2_gauss_n0": 0.28, "sr2_gauss_n1": 0.71,
    "sr3_bicubic_n0": 0.61, "sr3_bicubic_n1": 0.76, "sr3_gauss_n0": 0.49, "sr3_gauss_n1": 1.00,
}
# synthetic per-image PSNRs: (method -> (image a, image b)); Table I tasks get task offsets
OURS = {"red": (25.0, 27.0), "gauss": (28.0, 30.0), "gauss_budget": (28.5, 30.5), "proposed": (29.0, 31.5),
        "st_sr": (20.0, 21.0)}
TASK_OFFSET = {"comp80": 0.0, "comp90": -3.0, "blur1.6": 2.0, "blur2.0": 1.0, "sr2_bicubic_n0": 5.0}


def test_paper_transcription_is_consistent_with_the_printed_gain_row():
    paper = tb.read_paper(PAPER)
    assert len(paper) == 6 * 12 and not paper.duplicated(["method", "task"]).any()
    value = paper.set_index(["method", "task"])["psnr"]
    assert value[("gauss", "comp80")] == 30.20
    assert value[("pnp_reg", "sr3_gauss_n1")] == 30.39
    for task, gain in PRINTED_GAIN.items():
        assert value[("proposed", task)] - value[("gauss", task)] == pytest.approx(gain, abs=1e-9)


def test_paper_column_order_matches_tasks_module():
    from mtdeq import tasks

    paper = tb.read_paper(PAPER)
    assert tb.table_tasks(paper, "table1") == tasks.TABLE1_TASKS
    assert tb.table_tasks(paper, "table2") == tasks.TABLE2_TASKS
    assert set(tb.TASK_LABELS) == set(tasks.TEST_TASKS)


def write_eval_dir(root: Path, ours=OURS, offsets=TASK_OFFSET) -> Path:
    """Per-image CSVs <root>/eval/<method>/<task>.csv with PSNR = base + task offset."""
    for method, (a, b) in ours.items():
        for task, offset in offsets.items():
            frame = pd.DataFrame({"image": ["a", "b"], "method": method, "task": task, "sigma_noise": 0.0,
                                  "psnr": [a + offset, b + offset], "ssim": 0.9, "iterations": 10, "seconds": 0.1},
                                 columns=CSV_COLUMNS)
            (root / "eval" / method).mkdir(parents=True, exist_ok=True)
            frame.to_csv(root / "eval" / method / f"{task}.csv", index=False)
    return root / "eval"


def test_tables_means_order_paper_columns_and_markdown(tmp_path):
    eval_dir = write_eval_dir(tmp_path)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"scale": "unit", "seed": 0}))
    rc = main(["tables", "--eval-dir", str(eval_dir), "--paper", str(PAPER), "--scale", "unit",
               "--config-json", str(config), "--out-dir", str(tmp_path / "out")])
    assert rc == 0
    t1 = pd.read_csv(tmp_path / "out" / "table1.csv")
    assert list(t1["key"]) == ["red", "st_comp", "st_sr", "gauss", "gauss_budget", "pnp_reg", "proposed",
                               "proposed_vs_gauss", "proposed_vs_gauss_budget"]
    assert list(t1.columns[:6]) == ["method", "key", "kind", "comp80", "comp80 paper", "comp80 Δ"]
    assert [c for c in t1.columns[3:] if " " not in c] == ["comp80", "comp90", "blur1.6", "blur2.0"]
    row = t1.set_index("key")
    assert row.loc["gauss", "comp80"] == 29.0 and row.loc["gauss", "comp80 paper"] == 30.20
    assert row.loc["gauss", "comp80 Δ"] == pytest.approx(-1.20)
    assert row.loc["proposed", "comp90"] == pytest.approx(27.25)  # mean(29, 31.5) - 3
    assert row.loc["proposed_vs_gauss", "blur1.6"] == pytest.approx(1.25)
    assert row.loc["proposed_vs_gauss", "blur1.6 paper"] == pytest.approx(0.76)
    assert row.loc["proposed_vs_gauss_budget", "comp80"] == pytest.approx(0.75)
    assert math.isnan(row.loc["proposed_vs_gauss_budget", "comp80 paper"])
    assert math.isnan(row.loc["st_comp", "comp80"]) and row.loc["st_comp", "comp80 paper"] == 30.24
    assert math.isnan(row.loc["pnp_reg", "comp80"]) and row.loc["pnp_reg", "kind"] == "paper"

    # Table II: only sr2_bicubic_n0 was evaluated; the other columns are empty for us
    t2 = pd.read_csv(tmp_path / "out" / "table2.csv").set_index("key")
    assert t2.loc["proposed", "sr2_bicubic_n0"] == pytest.approx(35.25)
    assert t2["sr3_gauss_n1"].isna().all() and t2.loc["red", "sr3_gauss_n1 paper"] == 30.05

    md = (tmp_path / "out" / "table1.md").read_text()
    html = (tmp_path / "out" / "table1.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.count("<table>") == md.count("\n|---|")
    assert "<b>30.25</b> (30.72)" in html and "<u>29.50</u>" in html
    assert "scale **unit**" in md
    assert "| Proposed | **30.25** (30.72) |" in md
    assert "| Gauss + same budget | <u>29.50</u> |" in md
    assert "| pnP-ReG (paper-reported only) | — (30.36) |" in md
    assert "+1.25 [+1.00, +1.50] W (+0.76)" in md  # margin [95 % interval] verdict (paper's margin)
    assert "| Proposed vs. Gauss + same budget | +0.75 [+0.50, +1.00] W | " in md and "| 4/0/0 |" in md
    provenance = json.loads((tmp_path / "out" / "table1.provenance.json").read_text())
    assert provenance["scale"] == "unit" and provenance["provenance"]["config"]["seed"] == 0
    assert {c["n_images"] for c in provenance["cells"]} == {2}


def test_tables_skip_methods_without_results_or_paper_values(tmp_path):
    eval_dir = write_eval_dir(tmp_path, ours={"gauss": (30.0, 30.0), "my_extra": (31.0, 31.0)},
                              offsets={"comp80": 0.0})
    result = tb.make_tables(tb.TableSettings(eval_dir=str(eval_dir), paper=str(PAPER), scale="unit",
                                             out_dir=str(tmp_path / "out")))
    keys = list(result["table1"]["key"])
    assert "gauss_budget" not in keys and "proposed_vs_gauss_budget" not in keys  # neither ours nor paper
    assert "proposed" in keys and keys[-1] == "my_extra"  # paper-reported rows stay; extras go last
    md = (tmp_path / "out" / "table1.md").read_text()
    assert "| my_extra (extra) | 31.00 |" in md  # extras are not ranked
    assert "| Gauss | **30.00** (30.20) |" in md


def test_tables_without_eval_csvs_fail_clearly(tmp_path):
    (tmp_path / "eval").mkdir()
    with pytest.raises(FileNotFoundError, match="no per-image CSVs"):
        tb.make_tables(tb.TableSettings(str(tmp_path / "eval"), str(PAPER), "unit", str(tmp_path)))


def test_extra_rows_are_labelled_and_followed_by_their_differences(tmp_path):
    ours = {"gauss": (30.0, 30.0), "gauss_budget": (30.5, 30.5), "proposed": (31.0, 31.0),
            "proposed_seed2": (30.6, 30.8), "proposed_seed1": (31.3, 31.3), "proposed_own": (32.0, 32.0),
            "gauss_budget_own": (31.5, 31.5), "my_probe": (1.0, 1.0)}
    eval_dir = write_eval_dir(tmp_path, ours=ours, offsets={"comp80": 0.0, "blur1.6": 1.0})
    result = tb.make_tables(tb.TableSettings(str(eval_dir), str(PAPER), "unit", str(tmp_path / "out")))
    t1 = result["table1"].set_index("key")
    extras = list(t1.index[t1.index.get_loc("proposed_vs_gauss_budget") + 1:])
    assert extras == ["gauss_budget_own", "proposed_own", "proposed_seed1", "proposed_seed2", "my_probe",
                      "proposed_own_vs_gauss", "proposed_own_vs_gauss_budget_own"]
    assert t1.loc["proposed_own", "method"] == "Proposed (own settings)"
    assert t1.loc["gauss_budget_own", "method"] == "Gauss + same budget (own settings)"
    assert t1.loc["proposed_seed2", "method"] == "Proposed (seed 2)" and t1.loc["proposed_seed2", "kind"] == "extra"
    assert t1.loc["proposed_own_vs_gauss_budget_own", "comp80"] == pytest.approx(0.5)
    assert math.isnan(t1.loc["proposed_own_vs_gauss", "comp80 paper"])

    spread = pd.read_csv(tmp_path / "out" / "spread.csv")
    assert list(spread.columns) == tb.SPREAD_COLUMNS
    assert len(spread) == 2 * 2 and set(spread["table"]) == {"table1"}  # 2 seeds x 2 tasks
    by = spread.set_index(["seed", "task"])["spread"]
    assert by[(1, "comp80")] == pytest.approx(0.3) and by[(2, "blur1.6")] == pytest.approx(0.3)
    md = (tmp_path / "out" / "table1.md").read_text()
    assert "| Proposed (own settings) | 32.00 |" in md  # extras are not ranked
    assert "run-to-run spread" in md and "| 1 | 0.30 | — | 0.30 | — | 0.30 | 0.30 |" in md
    assert "run-to-run spread" not in (tmp_path / "out" / "table2.md").read_text()  # no Table II cells


def test_methods_option_restricts_the_rows_and_spread_csv_is_always_written(tmp_path):
    eval_dir = write_eval_dir(tmp_path, ours={"gauss": (30.0, 30.0), "proposed": (31.0, 31.0),
                                              "proposed_seed1": (30.0, 30.0)}, offsets={"comp80": 0.0})
    rc = main(["tables", "--eval-dir", str(eval_dir), "--methods", "gauss", "proposed", "--paper", str(PAPER),
               "--scale", "unit", "--out-dir", str(tmp_path / "out")])
    assert rc == 0
    t1 = pd.read_csv(tmp_path / "out" / "table1.csv")
    assert "proposed_seed1" not in set(t1["key"]) and t1.set_index("key").loc["proposed", "comp80"] == 31.0
    spread = pd.read_csv(tmp_path / "out" / "spread.csv")
    assert list(spread.columns) == tb.SPREAD_COLUMNS and spread.empty
    assert "run-to-run spread" not in (tmp_path / "out" / "table1.md").read_text()
    with pytest.raises(FileNotFoundError, match="--methods nothing_here"):
        tb.make_tables(tb.TableSettings(str(eval_dir), str(PAPER), "unit", str(tmp_path / "o2"),
                                        methods=("nothing_here",)))


def test_budget_check_table_and_markdown(tmp_path):
    rows = []
    for method, k, k2 in (("gauss", 30.0, 30.02), ("red", 25.0, 26.0)):
        for image in ("a", "b"):
            rows.append({"image": image, "method": method, "task": "blur1.6", "sigma_noise": 0.01, "psnr": k,
                         "ssim": 0.9, "iterations": 10, "seconds": 1.0, "psnr_2x": k2, "iterations_2x": 20})
    rows.append({"image": "a", "method": "proposed", "task": "blur1.6", "sigma_noise": 0.01, "psnr": 31.0,
                 "ssim": 0.9, "iterations": 10, "seconds": 1.0})
    per_image = pd.DataFrame(rows)
    table = tb.budget_check(per_image).set_index("method")
    assert list(table.index) == ["gauss", "red"]  # proposed was not checked
    assert table.loc["gauss", "delta"] == pytest.approx(0.02) and table.loc["red", "n_images"] == 2
    # 2K is better for both: the best budget is 2K = 20 (k = the K solve's iterations)
    assert table.loc["gauss", "k"] == 10 and table.loc["gauss", "best_k"] == 20
    assert table.loc["red", "best_psnr"] == pytest.approx(26.0)
    worse = per_image.assign(psnr_2x=per_image["psnr"] - 0.5, **{"psnr_0.5x": per_image["psnr"] + 0.1})
    best = tb.budget_check(worse).set_index("method")
    assert best.loc["gauss", "best_k"] == 5 and best.loc["gauss", "best_psnr"] == pytest.approx(30.1)
    md = tb.to_markdown(tb.build_table(tb.mean_psnr(per_image), tb.read_paper(str(PAPER)), "table1"),
                        ["comp80", "comp90", "blur1.6", "blur2.0"],
                        title="T", header_lines=[], budget=tb.budget_check(per_image))
    assert "iteration budget" in md and "| RED | 2K − K |" in md and "+1.00" in md
    assert tb.budget_check(per_image.drop(columns=["psnr_2x", "iterations_2x"])).empty


def test_protocol_validation_compares_gauss_and_red_with_the_paper(tmp_path):
    eval_dir = write_eval_dir(tmp_path)
    tb.make_tables(tb.TableSettings(str(eval_dir), str(PAPER), "unit", str(tmp_path / "out")))
    validation = pd.read_csv(tmp_path / "out" / "protocol_validation.csv")
    assert len(validation) == 2 * 12 and set(validation["method"]) == {"gauss", "red"}
    row = validation.set_index(["method", "task"])
    assert row.loc[("gauss", "comp80"), "ours"] == 29.0 and row.loc[("gauss", "comp80"), "paper"] == 30.20
    assert row.loc[("gauss", "comp80"), "delta"] == pytest.approx(-1.20)
    assert row.loc[("red", "blur1.6"), "delta"] == pytest.approx(28.0 - 31.76)
    assert math.isnan(row.loc[("gauss", "sr3_gauss_n1"), "ours"])  # not evaluated: no number invented
    md = (tmp_path / "out" / "protocol_validation.md").read_text()
    assert "| Completion 80% | 29.00 | 30.20 | -1.20 | — | 26.00 | 27.17 | -1.17 | — |" in md
    assert (tmp_path / "out" / "protocol_validation.html").read_text().startswith("<!DOCTYPE html>")


# --------------------------------------------------------------------------- per-image evidence, verdicts
def test_per_image_rows_map_seed_methods_and_seeded_cells_are_seed_means(tmp_path):
    ours = {"gauss": (28.0, 30.0), "proposed": (29.0, 31.5), "proposed_seed1": (29.4, 31.7)}
    eval_dir = write_eval_dir(tmp_path, ours=ours, offsets={"comp80": 0.0})
    result = tb.make_tables(tb.TableSettings(str(eval_dir), str(PAPER), "unit", str(tmp_path / "out"), seed=0))
    per_image = pd.read_csv(tmp_path / "out" / "per_image.csv")
    assert list(per_image.columns) == ["method", "task", "image", "seed", "psnr", "ssim", "iterations"]
    assert set(per_image["method"]) == {"gauss", "proposed"}  # proposed_seed1 is proposed with seed 1
    assert sorted(set(per_image.loc[per_image["method"] == "proposed", "seed"])) == [0, 1]
    assert len(per_image) == 2 * 3  # two images x (gauss, proposed seed 0, proposed seed 1)
    t1 = result["table1"].set_index("key")
    # Proposed = the mean over its seeds per image, then over the images; the seed row keeps seed 1 alone
    assert t1.loc["proposed", "comp80"] == pytest.approx((29.2 + 31.6) / 2)
    assert t1.loc["proposed_seed1", "comp80"] == pytest.approx(30.55)
    assert t1.loc["proposed_vs_gauss", "comp80"] == pytest.approx(30.4 - 29.0)
    seeds = pd.read_csv(tmp_path / "out" / "seeds.csv")
    assert list(seeds.columns) == tb.SEEDS_COLUMNS and len(seeds) == 1
    assert seeds.loc[0, "seeds"] == "0 1"
    assert seeds.loc[0, "seed_sd"] == pytest.approx(np.std([30.25, 30.55], ddof=1), abs=1e-4)
    spread = pd.read_csv(tmp_path / "out" / "spread.csv")
    assert spread.loc[0, "proposed"] == pytest.approx(30.25) and spread.loc[0, "spread"] == pytest.approx(0.3)
    margins = pd.read_csv(tmp_path / "out" / "margins.csv")
    assert list(margins.columns) == vd.MARGIN_COLUMNS
    row = margins[(margins["prior"] == "proposed") & (margins["baseline"] == "gauss")].iloc[0]
    assert row["n_seeds"] == 2 and row["n_images"] == 2 and row["margin"] == pytest.approx(1.4)
    md = (tmp_path / "out" / "table1.md").read_text()
    assert "Proposed: the mean over training seeds 0 1" in md and "| sd over seeds 0 1 | 0.21 |" in md
    counts = pd.read_csv(tmp_path / "out" / "margin_counts.csv")
    assert list(counts.columns) == vd.COUNT_COLUMNS
    # every table cell is the mean of its per-image rows
    from mtdeq.check import evidence_problems
    assert evidence_problems(tmp_path / "out") == []

    # another main seed: proposed_seed1 stays seed 1, the plain rows get seed 3
    tb.make_tables(tb.TableSettings(str(eval_dir), str(PAPER), "unit", str(tmp_path / "o3"), seed=3))
    per_image = pd.read_csv(tmp_path / "o3" / "per_image.csv")
    assert set(per_image["seed"]) == {1, 3} and set(per_image.loc[per_image["method"] == "gauss", "seed"]) == {3}


def write_budget_checked(root: Path, cells: dict) -> Path:
    """Eval CSVs with the 2K check: cells[(method, task)] = (psnr, psnr_2x), two images at psnr -/+ 1."""
    for (method, task), (psnr, psnr_2x) in cells.items():
        frame = pd.DataFrame({"image": ["a", "b"], "method": method, "task": task, "sigma_noise": 0.0,
                              "psnr": [psnr - 1, psnr + 1], "ssim": 0.9, "iterations": 10, "seconds": 0.1,
                              "psnr_unclipped": [psnr - 1, psnr + 1]})
        if psnr_2x is not None:
            frame["psnr_2x"], frame["iterations_2x"] = [psnr_2x - 1, psnr_2x + 1], 20
        (root / "eval" / method).mkdir(parents=True, exist_ok=True)
        frame.to_csv(root / "eval" / method / f"{task}.csv", index=False)
    return root / "eval"


def test_unconverged_baselines_are_marked_and_left_out_of_the_ranking(tmp_path):
    eval_dir = write_budget_checked(tmp_path, {
        ("gauss", "comp80"): (31.0, 31.5),  # still moves by +0.50 dB with 2K: not converged
        ("red", "comp80"): (29.0, 29.05),  # converged
        ("proposed", "comp80"): (30.0, None),
        ("gauss", "blur1.6"): (33.0, 32.95),
        ("proposed", "blur1.6"): (32.0, None),
    })
    tb.make_tables(tb.TableSettings(str(eval_dir), str(PAPER), "unit", str(tmp_path / "out")))
    md = (tmp_path / "out" / "table1.md").read_text()
    assert "| Gauss | 31.00† (30.20) | — (26.20) | **33.00** (32.06) |" in md  # out of the comp80 ranking only
    assert "| Proposed | **30.00** (30.72) |" in md and "| RED | <u>29.00</u> (27.17) |" in md
    assert "† Not converged" in md and "Gauss Completion 80% +0.50" in md
    assert "| Proposed vs. Gauss | -1.00 [-1.00, -1.00] L† (+0.52) |" in md  # the margin over it is marked too
    assert "| Gauss | 2K − K | +0.50† |" in md
    per_image = pd.read_csv(tmp_path / "out" / "per_image.csv")
    assert {"psnr_unclipped", "psnr_2x", "iterations_2x"} <= set(per_image.columns)
    validation = pd.read_csv(tmp_path / "out" / "protocol_validation.csv").set_index(["method", "task"])
    assert list(validation.columns)[-1] == "converged"
    assert not validation.loc[("gauss", "comp80"), "converged"] and validation.loc[("red", "comp80"), "converged"]
    assert pd.isna(validation.loc[("gauss", "sr2_bicubic_n0"), "converged"])  # not evaluated: unknown
    assert "+0.50†" in (tmp_path / "out" / "protocol_validation.md").read_text()
    moved = tb.unconverged_cells(tb.budget_check(tb.read_eval_dir(eval_dir)))
    assert moved == {("gauss", "comp80"): pytest.approx(0.5)}


def test_the_tolerance_file_feeds_the_verdicts(tmp_path):
    eval_dir = write_eval_dir(tmp_path, offsets={"comp80": 0.0, "blur1.6": 1.0, "sr2_bicubic_n0": 5.0})
    tolerance = tmp_path / "tolerance.yaml"
    tolerance.write_text("default: 0.05\nrows: {proposed: {table1: 2.0}}\n")
    rc = main(["tables", "--eval-dir", str(eval_dir), "--paper", str(PAPER), "--scale", "unit",
               "--out-dir", str(tmp_path / "out"), "--tolerance", str(tolerance)])
    assert rc == 0
    margins = pd.read_csv(tmp_path / "out" / "margins.csv").set_index(["prior", "baseline", "task"])
    row = margins.loc[("proposed", "gauss", "comp80")]
    assert row["tolerance"] == 2.0 and row["margin"] == pytest.approx(1.25) and row["verdict"] == "tie"
    assert margins.loc[("proposed", "gauss", "sr2_bicubic_n0"), "verdict"] == "win"  # Table II: default 0.05
    md = (tmp_path / "out" / "table1.md").read_text()
    assert "+1.25 [+1.00, +1.50] T (+0.52)" in md and "| 0/2/0 |" in md
    assert str(tolerance) in (tmp_path / "out" / "margins.md").read_text()
    # a tolerance file that does not exist: the documented fallback
    rc = main(["tables", "--eval-dir", str(eval_dir), "--paper", str(PAPER), "--scale", "unit",
               "--out-dir", str(tmp_path / "o2"), "--tolerance", str(tmp_path / "none.yaml")])
    assert rc == 0
    margins = pd.read_csv(tmp_path / "o2" / "margins.csv")
    assert set(margins["tolerance"]) == {0.05} and "fallback 0.05 dB" in (tmp_path / "o2" / "margins.md").read_text()


@pytest.mark.parametrize("method", ["proposed", "st_comp", "st_sr", "gauss_budget"])
def test_every_seeded_prior_is_its_method_with_a_seed(tmp_path, method):
    """'<m>_seed<s>' of every prior spread.priors may retrain: method m, seed s; cells and margins
    average the seeds per image, seeds.csv holds the seed mean and sd, spread.csv stays Proposed's."""
    from mtdeq.per_image import split_seed

    assert split_seed(f"{method}_seed1", 0) == (method, 1) and split_seed(method, 0) == (method, 0)
    base = {"gauss": (28.0, 30.0), "gauss_budget": (28.5, 30.5), "proposed": (29.0, 31.5),
            "st_comp": (27.0, 29.0), "st_sr": (27.5, 29.5)}
    a, b = base[method]
    ours = {**base, f"{method}_seed1": (a + 0.4, b + 0.2), f"{method}_seed2": (a + 0.8, b + 0.4)}
    eval_dir = write_eval_dir(tmp_path, ours=ours, offsets={"comp80": 0.0})
    result = tb.make_tables(tb.TableSettings(str(eval_dir), str(PAPER), "unit", str(tmp_path / "out"), seed=0))
    per_image = pd.read_csv(tmp_path / "out" / "per_image.csv")
    assert set(per_image["method"]) == set(base)
    assert sorted(set(per_image.loc[per_image["method"] == method, "seed"])) == [0, 1, 2]
    t1 = result["table1"].set_index("key")
    assert t1.loc[method, "comp80"] == pytest.approx((a + b) / 2 + 0.3)  # mean of seeds 0, 1, 2 per image
    label = t1.loc[f"{method}_seed1", "method"]
    assert label.endswith("(seed 1)") and "(extra)" not in label
    seeds = pd.read_csv(tmp_path / "out" / "seeds.csv")
    (row,) = seeds[seeds["method"] == method].itertuples(index=False)
    assert row.n_seeds == 3 and row.seeds == "0 1 2"
    assert row.seed_sd == pytest.approx(np.std([(a + b) / 2, (a + b) / 2 + 0.3, (a + b) / 2 + 0.6], ddof=1), abs=1e-4)
    margins = pd.read_csv(tmp_path / "out" / "margins.csv").set_index(["prior", "baseline"])
    if method == "proposed":
        assert margins.loc[("proposed", "gauss"), "margin"] == pytest.approx(1.25 + 0.3)
        assert len(pd.read_csv(tmp_path / "out" / "spread.csv")) == 2
    elif method == "gauss_budget":  # the control as baseline is seed-averaged too
        assert margins.loc[("proposed", "gauss_budget"), "margin"] == pytest.approx(0.75 - 0.3)
        assert margins.loc[("gauss_budget", "gauss"), "n_seeds"] == 3
    else:
        assert margins.loc[(method, "gauss"), "margin"] == pytest.approx((a + b) / 2 - 29.0 + 0.3)
        assert len(pd.read_csv(tmp_path / "out" / "spread.csv")) == 0
