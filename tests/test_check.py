"""`mtdeq check`: cell-by-cell comparison with a blessed reference, and --bless."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from mtdeq import tables as tb
from mtdeq.check import run_check
from mtdeq.cli import main

PAPER = Path(__file__).resolve().parents[1] / "results" / "paper" / "paper_tables.csv"
OURS = {"red": 26.0, "gauss": 29.0, "proposed": 30.0}
TASKS = ("comp80", "blur1.6", "sr2_bicubic_n1")


def make_results(root: Path, scale: str = "ci", shift: dict | None = None) -> Path:
    """Eval CSVs (one image per cell) -> tables in <root>/results, at ``scale``; shift[(method, task)] adds dB."""
    shift = shift or {}
    for method, value in OURS.items():
        for task in TASKS:
            folder = root / "eval" / method
            folder.mkdir(parents=True, exist_ok=True)
            psnr = value + shift.get((method, task), 0.0)
            pd.DataFrame([{"image": "baby", "method": method, "task": task, "sigma_noise": 0.0, "psnr": psnr,
                           "ssim": 0.9, "iterations": 5, "seconds": 0.1}]).to_csv(folder / f"{task}.csv", index=False)
    tb.make_tables(tb.TableSettings(str(root / "eval"), str(PAPER), scale, str(root / "results")))
    return root / "results"


@pytest.fixture
def blessed(tmp_path):
    """Results at scale ci, blessed into <tmp>/reference/ci (with a fig2.png)."""
    results = make_results(tmp_path / "run0")
    (results / "fig2.png").write_bytes(b"\x89PNG fake")
    reference = tmp_path / "reference" / "ci"
    rc = main(["check", "--reference", str(reference), "--results", str(results), "--bless"])
    assert rc == 0
    return reference


def test_bless_writes_reference(blessed):
    names = sorted(p.name for p in blessed.iterdir())
    assert names == sorted(["fig2.png", "table1.csv", "table1.md", "table1.provenance.json",
                            "table2.csv", "table2.md", "table2.provenance.json", "spread.csv",
                            "budget_check.csv", "protocol_validation.csv", "protocol_validation.md",
                            "per_image.csv", "margins.csv", "margin_counts.csv", "margins.md", "seeds.csv"])
    assert json.loads((blessed / "table1.provenance.json").read_text())["scale"] == "ci"


def test_identical_tables_pass_and_print_every_cell(blessed, tmp_path, capsys):
    results = make_results(tmp_path / "run1")
    assert run_check(blessed, results, 0.05) == 0
    out = capsys.readouterr().out
    assert "check: OK: 9/9 cell(s)" in out  # 3 methods x 3 tasks, paper-only and derived rows excluded
    assert out.count(" OK") >= 9 and "proposed" in out and "sr2_bicubic_n1" in out


def test_cell_beyond_tolerance_fails(blessed, tmp_path, capsys):
    results = make_results(tmp_path / "run1", shift={("gauss", "blur1.6"): 0.1})
    assert run_check(blessed, results, 0.05) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "8/9" in out
    assert run_check(blessed, results, 0.2) == 0  # within a looser tolerance
    results = make_results(tmp_path / "run2", shift={("gauss", "blur1.6"): 0.04})
    assert run_check(blessed, results, 0.05) == 0


def test_missing_cell_fails(blessed, tmp_path, capsys):
    results = make_results(tmp_path / "run1")
    table = pd.read_csv(results / "table1.csv")
    table.loc[table["key"] == "red", "comp80"] = float("nan")
    table.to_csv(results / "table1.csv", index=False)
    assert run_check(blessed, results, 0.05) == 1
    assert "missing in results" in capsys.readouterr().out


def test_zero_compared_cells_fail(blessed, tmp_path, capsys):
    results = make_results(tmp_path / "run1")
    for name in ("table1.csv", "table2.csv"):
        table = pd.read_csv(blessed / name)
        table = table[table["kind"] != "ours"]  # only paper-reported / derived rows left
        table.to_csv(blessed / name, index=False)
    assert run_check(blessed, results, 0.05) == 1
    assert "zero cells compared" in capsys.readouterr().out


def test_other_scale_is_refused(blessed, tmp_path, capsys):
    results = make_results(tmp_path / "run1", scale="quick")
    assert run_check(blessed, results, 0.05) == 1
    assert "scale 'ci'" in capsys.readouterr().out
    # blessing quick results into the ci folder is refused too
    assert run_check(blessed, results, 0.05, do_bless=True) == 1
    assert json.loads((blessed / "table1.provenance.json").read_text())["scale"] == "ci"


def test_bless_copies_the_run_records_and_drops_stale_ones(tmp_path, capsys):
    results = make_results(tmp_path / "run0")
    make_results(tmp_path / "run0" / "x")  # tables at the same scale, moved to <results>/extra
    (tmp_path / "run0" / "x" / "results").rename(results / "extra")
    records = {"ci/tuned_params.csv": "method,task\nadmm,comp80\n", "ci/timings.csv": "rule,job,seconds\n",
               "ci/convergence.csv": "prior,steps\n", "ci/tuned_params_own/proposed.csv": "method,task\n"}
    for name, text in records.items():
        (results / name).parent.mkdir(parents=True, exist_ok=True)
        (results / name).write_text(text)
    reference = tmp_path / "reference" / "ci"
    assert run_check(reference, results, 0.05, do_bless=True) == 0
    for name, text in records.items():
        assert (reference / name.removeprefix("ci/")).read_text() == text
    assert (reference / "extra" / "table1.csv").is_file() and (reference / "extra" / "spread.csv").is_file()
    assert (reference / "spread.csv").is_file()
    # the check still compares the table cells only
    (reference / "timings.csv").write_text("rule,job,seconds\nall,,1e9\n")
    assert run_check(reference, results, 0.05) == 0
    assert "9/9 cell(s)" in capsys.readouterr().out

    # a later bless without the own-settings tuning and the extra tables removes their old copies
    (results / "ci" / "tuned_params_own" / "proposed.csv").unlink()
    for path in (results / "extra").iterdir():
        path.unlink()
    assert run_check(reference, results, 0.05, do_bless=True) == 0
    assert not (reference / "tuned_params_own" / "proposed.csv").exists()
    assert not (reference / "extra" / "table1.csv").exists() and (reference / "timings.csv").is_file()


def test_bless_skips_extra_tables_of_another_scale(tmp_path, capsys):
    results = make_results(tmp_path / "run0")
    make_results(tmp_path / "other", scale="quick")
    (tmp_path / "other" / "results").rename(results / "extra")
    reference = tmp_path / "reference" / "ci"
    assert run_check(reference, results, 0.05, do_bless=True) == 0
    assert not (reference / "extra").exists()
    assert "another scale" in capsys.readouterr().out


# --------------------------------------------------------------------------- measured tolerances
def test_reference_tolerance_file_is_the_default_and_per_row_values_apply(blessed, tmp_path, capsys):
    results = make_results(tmp_path / "run1", shift={("gauss", "blur1.6"): 0.1, ("proposed", "comp80"): 0.3})
    (blessed / "tolerance.yaml").write_text("default: 0.15\nrows: {proposed: 0.5}\nmeasured: []\n")
    assert run_check(blessed, results) == 0
    out = capsys.readouterr().out
    assert "tolerance.yaml" in out and "9/9" in out
    (blessed / "tolerance.yaml").write_text("default: 0.15\nrows: {proposed: 0.2}\n")
    assert run_check(blessed, results) == 1  # the per-row value is the limit for Proposed
    (blessed / "tolerance.yaml").write_text("default: 0.05\nrows: {proposed: {table1: 0.35}}\n")
    assert run_check(blessed, results) == 1  # gauss blur1.6 (+0.1) is held to the default
    (blessed / "tolerance.yaml").write_text("default: 0.15\nrows: {proposed: {table1: 0.35, table2: 0.01}}\n")
    assert run_check(blessed, results) == 0
    (blessed / "tolerance.yaml").write_text("default: 0.05\ntables: {table1: 0.35}\n")
    assert run_check(blessed, results) == 0  # both shifted cells are Table I cells
    assert run_check(blessed, results, 0.05) == 1  # --tolerance overrides the file


@pytest.mark.parametrize("text, message", [
    ("rows: {gauss: 0.1}\n", "'default'"),
    ("default: -0.1\n", "not a number >= 0"),
    ("default: 0.1\nrow: {gauss: 0.1}\n", "unknown key"),
    ("default: 0.1\nrows: {gauss: {table1: x}}\n", "gauss.table1"),
    ("default: [0.1\n", "not valid YAML"),
])
def test_bad_tolerance_file_is_an_error_naming_the_file(blessed, tmp_path, capsys, text, message):
    results = make_results(tmp_path / "run1")
    (blessed / "tolerance.yaml").write_text(text)
    assert run_check(blessed, results) == 1
    out = capsys.readouterr().out
    assert "tolerance.yaml" in out and message in out


def test_bless_keeps_the_measured_tolerance(blessed, tmp_path):
    (blessed / "tolerance.yaml").write_text("default: 0.01\n")
    results = make_results(tmp_path / "run1")
    assert run_check(blessed, results, do_bless=True) == 0
    assert (blessed / "tolerance.yaml").read_text() == "default: 0.01\n"


def test_failing_cells_are_sorted_by_size_and_the_first_differing_stage_is_named(tmp_path, capsys):
    def run(name, shift=None, weight=0.0):
        root = tmp_path / name
        (root / "models").mkdir(parents=True)
        for prior in ("gauss", "mtdeq"):
            torch.save({"state_dict": {"w": torch.full((2, 2), weight if prior == "mtdeq" else 0.0)},
                        "provenance": {"time": name}}, root / "models" / f"{prior}.pt")
        return make_results(root, shift=shift)

    reference = tmp_path / "reference" / "ci"
    assert run_check(reference, run("run0"), do_bless=True) == 0
    # equal weights, different evaluation output
    results = run("run1", shift={("gauss", "blur1.6"): 0.1, ("red", "comp80"): -0.3})
    assert run_check(reference, results, 0.05) == 1
    out = capsys.readouterr().out
    failing = out.split("largest |diff| first:")[1].splitlines()[1:3]
    assert "red" in failing[0] and "-0.30" in failing[0] and "gauss" in failing[1]
    assert "first difference at evaluation" in out and "eval/gauss/blur1.6.csv" in out
    # a trained prior whose weights differ is named before the evaluation (file time does not count)
    results = run("run2", shift={("gauss", "blur1.6"): 0.1}, weight=1e-7)
    assert run_check(reference, results, 0.05) == 1
    out = capsys.readouterr().out
    assert "first difference at training: models/mtdeq.pt" in out and "gauss.pt" not in out.split("where")[-1]


# --------------------------------------------------------------------------- per-image evidence
def make_evidence_results(root: Path) -> Path:
    """Eval CSVs of gauss, proposed and proposed_seed1 (two images, TASKS) -> tables in <root>/results."""
    for method, base in (("gauss", 29.0), ("proposed", 30.0), ("proposed_seed1", 30.3)):
        folder = root / "eval" / method
        folder.mkdir(parents=True, exist_ok=True)
        for task in TASKS:
            pd.DataFrame({"image": ["baby", "bird"], "method": method, "task": task, "sigma_noise": 0.0,
                          "psnr": [base, base + 1.234567], "ssim": 0.9, "iterations": 5, "seconds": 0.1,
                          "psnr_unclipped": [base, base + 1.234567]}).to_csv(folder / f"{task}.csv", index=False)
    tb.make_tables(tb.TableSettings(str(root / "eval"), str(PAPER), "ci", str(root / "results"), seed=0))
    return root / "results"


@pytest.fixture
def evidence(tmp_path):
    """(reference with per_image.csv, results of an identical rerun)."""
    reference = tmp_path / "reference" / "ci"
    assert run_check(reference, make_evidence_results(tmp_path / "run0"), do_bless=True) == 0
    assert (reference / "per_image.csv").is_file() and (reference / "margins.csv").is_file()
    return reference, make_evidence_results(tmp_path / "run1")


def _edit_rows(path: Path, edit) -> None:
    rows = pd.read_csv(path)
    edit(rows).to_csv(path, index=False)


def test_per_image_evidence_is_audited_and_old_references_are_skipped(evidence, capsys):
    reference, results = evidence
    assert run_check(reference, results, 0.05) == 0
    out = capsys.readouterr().out
    assert "per-image evidence (reference): OK, 18 rows, 2 image(s), seeds [0, 1]" in out
    assert "per-image evidence (results): OK" in out
    (reference / "per_image.csv").unlink()  # a reference blessed before per-image evidence
    assert run_check(reference, results, 0.05) == 0
    out = capsys.readouterr().out
    assert "per-image evidence (reference):" in out and "audit skipped" in out and "check: OK" in out


def test_a_missing_image_fails(evidence, capsys):
    reference, results = evidence
    _edit_rows(reference / "per_image.csv", lambda r: r[~((r["method"] == "gauss") & (r["task"] == "comp80")
                                                          & (r["image"] == "bird"))])
    assert run_check(reference, results, 0.05) == 1
    out = capsys.readouterr().out
    assert "gauss comp80 seed 0: missing image(s) ['bird']" in out and "check: FAIL" in out
    assert "9/9 cell(s) within tolerance" in out  # the cells themselves agree; the evidence does not


def test_a_missing_seed_fails(evidence, capsys):
    reference, results = evidence
    _edit_rows(reference / "per_image.csv", lambda r: r[~((r["method"] == "proposed") & (r["task"] == "blur1.6")
                                                          & (r["seed"] == 1))])
    assert run_check(reference, results, 0.05) == 1
    out = capsys.readouterr().out
    assert "proposed blur1.6: missing seed(s) [1]" in out
    assert "proposed_seed1 blur1.6: cell" in out and "no per-image rows" in out


def test_rows_that_do_not_average_to_the_cell_fail(evidence, capsys):
    reference, results = evidence

    def shift(rows):
        hit = (rows["method"] == "gauss") & (rows["task"] == "sr2_bicubic_n1") & (rows["image"] == "baby")
        rows.loc[hit, "psnr"] += 0.1  # the cell would move by 0.05 dB: beyond the 2-decimal rounding
        return rows

    _edit_rows(reference / "per_image.csv", shift)
    assert run_check(reference, results, 0.05) == 1
    out = capsys.readouterr().out
    assert "table2 gauss sr2_bicubic_n1: cell 29.62 but its per-image rows average to 29.6673" in out


def test_bless_refuses_results_whose_rows_are_not_their_evidence(evidence, capsys):
    reference, results = evidence
    _edit_rows(results / "per_image.csv", lambda r: r[r["image"] != "baby"].assign(psnr=lambda f: f["psnr"] + 1))
    assert run_check(reference, results, do_bless=True) == 1
    out = capsys.readouterr().out
    assert "refusing to bless" in out and "average to" in out
