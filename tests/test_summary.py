"""`mtdeq summarize`: per-job timings from benchmark TSVs and DEQ convergence from training logs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest

from mtdeq import summary
from mtdeq.cli import main

HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
# benchmark path below benchmarks/<scale> -> (seconds, max_rss MB, cpu seconds, end time)
JOBS = {
    "pretrain_denoiser.tsv": (100.0, 500.0, 190.0, 1_000.0),
    "train_deq/mtdeq.tsv": (300.0, 900.0, 590.0, 1_400.0),
    "evaluate/gauss/comp90.tsv": (20.0, 300.0, 19.0, 1_500.0),
    "evaluate/proposed/comp90.tsv": (30.0, "NA", 29.0, 1_510.0),
    "summarize.tsv": (5.0, 100.0, 4.0, 9_999.0),  # the stage's own benchmark from an earlier run
}


def write_benchmarks(root: Path) -> Path:
    for name, (seconds, rss, cpu, end) in JOBS.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(HEADER + f"{seconds}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n")
        os.utime(path, (end, end))
    return root


def write_deq_log(path: Path, rows: list[dict]) -> None:
    columns = ["step", "loss", "val_psnr", "fp_iter_mean", "fp_iter_max", "pct_converged", "pct_diverged",
               "n_valid", "skipped", "lr", "tasks", "seconds"]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)


def write_logs(root: Path) -> Path:
    write_deq_log(root / "mtdeq.csv", [
        {"step": 0, "val_psnr": 25.0, "lr": 1e-4},
        {"step": 1, "loss": 0.5, "fp_iter_mean": 10.0, "fp_iter_max": 20, "pct_converged": 100.0,
         "pct_diverged": 0.0, "skipped": 0},
        {"step": 2, "loss": 0.9, "fp_iter_mean": 99.0, "fp_iter_max": 99, "pct_converged": 0.0,
         "pct_diverged": 50.0, "skipped": 1},  # overwritten below by the resumed run
        {"step": 2, "loss": 0.4, "fp_iter_mean": 30.0, "fp_iter_max": 60, "pct_converged": 80.0,
         "pct_diverged": 10.0, "skipped": 1, "val_psnr": 26.5},
    ])
    # a Gaussian-denoiser log: no fixed point, skipped
    pd.DataFrame({"step": [0, 1], "loss": [None, 0.3], "val_psnr": [20.0, None]}).to_csv(root / "gauss.csv",
                                                                                     index=False)
    return root


def test_timings_one_row_per_job_and_a_total(tmp_path):
    table = summary.timings(write_benchmarks(tmp_path / "bench"), cores=2)
    assert list(table.columns) == summary.TIMING_COLUMNS
    assert list(zip(table["rule"], table["job"])) == [
        ("evaluate", "gauss/comp90"), ("evaluate", "proposed/comp90"), ("pretrain_denoiser", ""),
        ("train_deq", "mtdeq"), ("TOTAL", "sum of 4 job(s) run on 2 core(s)")]
    total = table.iloc[-1]
    assert total["seconds"] == pytest.approx(450.0) and total["cpu_time_s"] == pytest.approx(828.0)
    assert total["max_rss_mb"] == pytest.approx(900.0)  # NA memory readings are ignored
    assert total["wall_span_s"] == pytest.approx(1_510.0 - (1_000.0 - 100.0))  # first start to last end
    assert math.isnan(table.loc[0, "wall_span_s"]) and math.isnan(table.loc[1, "max_rss_mb"])


def test_targets_outside_the_run_are_left_out_or_selected(tmp_path):
    bench = write_benchmarks(tmp_path / "bench")
    extra = {"budget/train/proposed_s1_400.tsv": (900.0, 1.0, 900.0, 1_600.0),
             "evaluate_heldout/gauss/comp80.tsv": (700.0, 1.0, 700.0, 1_700.0)}
    for name, (seconds, rss, cpu, end) in extra.items():
        path = bench / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(HEADER + f"{seconds}\t0:00:00\t{rss}\t1\t1\t1\t0\t0\t50\t{cpu}\n")
        os.utime(path, (end, end))
    everything = summary.timings(bench)
    assert everything.iloc[-1]["seconds"] == pytest.approx(450.0 + 1_600.0)
    run = summary.timings(bench, exclude=["budget", "evaluate_heldout"])
    assert run.iloc[-1]["seconds"] == pytest.approx(450.0) and set(run["rule"]) == {
        "pretrain_denoiser", "train_deq", "evaluate", "TOTAL"}
    assert run.iloc[-1]["wall_span_s"] == pytest.approx(1_510.0 - 900.0)  # the excluded jobs' times too
    held = summary.timings(bench, rules=["evaluate_heldout"])
    assert list(held["job"]) == ["gauss/comp80", "sum of 1 job(s) run on an unrecorded number of cores"]
    with pytest.raises(FileNotFoundError, match="no benchmark files of rule\\(s\\) heldout_images"):
        summary.timings(bench, rules=["heldout_images"])
    out = tmp_path / "out"
    assert main(["summarize", "--scale", "unit", "--benchmarks", str(bench), "--train-logs",
                 str(write_logs(tmp_path / "logs")), "--out-timings", str(out / "t.csv"), "--out-convergence",
                 str(out / "c.csv"), "--exclude-rules", "budget", "evaluate_heldout"]) == 0
    assert pd.read_csv(out / "t.csv").iloc[-1]["seconds"] == pytest.approx(450.0)
    assert json.loads((out / "t.provenance.json").read_text())["config"]["excluded_rules"] == [
        "budget", "evaluate_heldout"]


def test_convergence_per_deq_prior(tmp_path):
    table = summary.convergence(write_logs(tmp_path / "logs"))
    assert list(table.columns) == summary.CONVERGENCE_COLUMNS
    assert list(table["prior"]) == ["mtdeq"]
    row = table.iloc[0]
    assert row["steps"] == 2 and row["fp_iter_mean"] == pytest.approx(20.0) and row["fp_iter_max"] == 60
    assert row["pct_converged"] == pytest.approx(90.0) and row["pct_diverged"] == pytest.approx(5.0)
    assert row["skipped_steps"] == 1 and row["final_loss"] == pytest.approx(0.4)
    assert (row["val_psnr_first"], row["val_psnr_last"]) == (25.0, 26.5)


def test_cli_writes_both_tables_and_provenance(tmp_path, capsys):
    bench, logs = write_benchmarks(tmp_path / "bench"), write_logs(tmp_path / "logs")
    out = tmp_path / "out"
    rc = main(["summarize", "--scale", "unit", "--benchmarks", str(bench), "--train-logs", str(logs),
               "--out-timings", str(out / "timings.csv"), "--out-convergence", str(out / "convergence.csv"),
               "--cores", "2"])
    assert rc == 0
    assert pd.read_csv(out / "timings.csv")["rule"].iloc[-1] == "TOTAL"
    assert pd.read_csv(out / "convergence.csv")["prior"].tolist() == ["mtdeq"]
    record = json.loads((out / "timings.provenance.json").read_text())
    assert record["config"]["scale"] == "unit" and record["config"]["cores"] == 2
    assert "90.0% converged" in capsys.readouterr().out


def test_bad_inputs_name_the_path(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="no-such-dir"):
        summary.timings(tmp_path / "no-such-dir")
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "tables.tsv").write_text("a\tb\n1\t2\n")
    with pytest.raises(ValueError, match="tables.tsv: not a Snakemake benchmark"):
        summary.timings(tmp_path / "bench")
    rc = main(["summarize", "--scale", "unit", "--benchmarks", str(tmp_path / "bench"), "--train-logs",
               str(tmp_path / "nologs"), "--out-timings", str(tmp_path / "t.csv"),
               "--out-convergence", str(tmp_path / "c.csv")])
    assert rc == 1 and "tables.tsv" in capsys.readouterr().err
