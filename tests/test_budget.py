"""Tests of the training-budget curve: mtdeq.budget (collect, margins, figure) and the `budget` DAG."""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import replace

import pandas as pd
import pytest
import torch
from conftest import REPO, run_workflow, write_budget_rows

from mtdeq.budget import (BUDGET_COLUMNS, MARGIN_COLUMNS, BudgetSettings, group_of, paper_group_margins, paper_margins,
                          run, seed_rows)

PAPER = REPO / "results" / "paper" / "paper_tables.csv"
TABLE1 = ["comp80", "comp90", "blur1.6", "blur2.0"]
TABLE2 = ["sr2_bicubic_n0", "sr2_bicubic_n1", "sr2_gauss_n0", "sr2_gauss_n1",
          "sr3_bicubic_n0", "sr3_bicubic_n1", "sr3_gauss_n0", "sr3_gauss_n1"]


def _write(path, psnrs):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"image": [f"im{i}" for i in range(len(psnrs))], "psnr": psnrs}).to_csv(path, index=False)


def _layout(tmp_path, offsets):
    """Gauss at 30 dB on every task; run (prior, seed, steps, settings) at 30 + offset(task)."""
    gauss, runs = tmp_path / "gauss", tmp_path / "runs"
    for task in TABLE1 + TABLE2:
        _write(gauss / f"{task}.csv", [29.0, 31.0])
    for (prior, seed, steps, settings), offset in offsets.items():
        for task in TABLE1 + TABLE2:
            delta = offset(task)
            _write(runs / prior / f"s{seed}" / str(steps) / settings / f"{task}.csv", [29.0 + delta, 31.0 + delta])
    return BudgetSettings(rows=write_budget_rows(runs, tmp_path / "rows"), gauss_dir=str(gauss), paper=str(PAPER), out=str(tmp_path / "b.csv"),
                          margins=str(tmp_path / "m.csv"), figure=str(tmp_path / "b.png"), seed=0, scale="test")


def test_margins_are_mean_differences_and_win_counts(tmp_path):
    # proposed: +0.5 on table I, -0.2 on table II at 100 steps; +1.0 everywhere at 400
    # control: +0.1 on every task at both budgets
    offsets = {
        ("proposed", 0, 100, "gauss"): lambda t: 0.5 if t in TABLE1 else -0.2,
        ("proposed", 0, 400, "gauss"): lambda t: 1.0,
        ("control", 0, 100, "gauss"): lambda t: 0.1,
        ("control", 0, 400, "gauss"): lambda t: 0.1,
        ("proposed", 1, 100, "gauss"): lambda t: 0.3 if t in TABLE1 else -0.2,
        ("control", 1, 100, "gauss"): lambda t: 0.1,
    }
    budget, margin = run(_layout(tmp_path, offsets))
    assert list(budget.columns) == BUDGET_COLUMNS and list(margin.columns) == MARGIN_COLUMNS
    gauss = budget[budget["prior"] == "gauss"]
    assert len(gauss) == 12 and set(gauss["steps"]) == {0} and gauss["psnr"].eq(30.0).all()
    assert len(budget) == 12 + 6 * 12

    def m(steps, seed, table, comparison):
        row = margin[(margin["steps"] == steps) & (margin["seed"] == seed) & (margin["table"] == table)
                     & (margin["comparison"] == comparison)]
        assert len(row) == 1
        return float(row["mean_margin"].iloc[0]), int(row["wins"].iloc[0]), int(row["n_tasks"].iloc[0])

    assert m(100, 0, "table1", "proposed-gauss") == pytest.approx((0.5, 4, 4))
    assert m(100, 0, "table2", "proposed-gauss") == pytest.approx((-0.2, 0, 8))
    assert m(100, 0, "table1", "proposed-control") == pytest.approx((0.4, 4, 4))
    assert m(400, 0, "table2", "proposed-control") == pytest.approx((0.9, 8, 8))
    assert m(400, 0, "table1", "control-gauss") == pytest.approx((0.1, 4, 4))
    assert m(100, 1, "table1", "proposed-gauss") == pytest.approx((0.3, 4, 4))
    assert (tmp_path / "b.png").stat().st_size > 10_000
    written = pd.read_csv(tmp_path / "m.csv")
    assert len(written) == len(margin)
    md = (tmp_path / "m.md").read_text()
    assert "| 100 | 0 | gauss | +0.50 (4/4) | -0.20 (0/8) | +0.40 (4/4) |" in md and "Paper (134k steps)" in md


def test_paper_margin_is_the_mean_proposed_minus_gauss_per_table():
    paper = pd.read_csv(PAPER)
    t1 = paper[paper["table"] == "table1"].pivot_table(index="task", columns="method", values="psnr")
    expected = float((t1["proposed"] - t1["gauss"]).mean())
    assert paper_margins(PAPER)["table1"] == pytest.approx(expected)
    assert set(paper_margins(PAPER)) == {"table1", "table2"}


def test_bad_layouts_fail_clearly_and_write_nothing(tmp_path):
    settings = _layout(tmp_path, {("proposed", 0, 100, "gauss"): lambda t: 0.0})
    bad = tmp_path / "runs" / "proposed" / "s0" / "100" / "tuned" / "comp80.csv"
    _write(bad, [30.0])
    with pytest.raises(ValueError, match="settings in"):
        seed_rows([bad], tmp_path / "runs", 0, "test")
    other_seed = tmp_path / "runs" / "proposed" / "s1" / "100" / "gauss" / "comp80.csv"
    _write(other_seed, [30.0])
    with pytest.raises(ValueError, match="not of seed 0"):
        seed_rows([other_seed], tmp_path / "runs", 0, "test")
    missing = BudgetSettings(rows=(str(tmp_path / "none.csv"),), gauss_dir=settings.gauss_dir, paper=str(PAPER),
                             out=settings.out, margins=settings.margins, figure=settings.figure)
    with pytest.raises(FileNotFoundError, match="no such rows file"):
        run(missing)
    assert not any((tmp_path / name).exists() for name in ("b.csv", "m.csv", "b.png"))


def test_rows_of_separate_runs_combine_into_one_curve_and_stale_rows_are_refused(tmp_path):
    """Seeds run in separate sessions (each its own rows file, written from its own tree) combine into
    the curve a single run of all seeds gives; a file of another budget_id, a seed in two files or a
    file mixing two seeds is refused with the file's name, before anything is written."""
    offsets = {("proposed", 0, 100, "gauss"): lambda t: 0.5, ("proposed", 0, 400, "gauss"): lambda t: 0.8,
               ("control", 0, 100, "gauss"): lambda t: 0.1, ("control", 0, 400, "gauss"): lambda t: 0.1,
               ("proposed", 1, 100, "gauss"): lambda t: 0.3, ("control", 1, 100, "gauss"): lambda t: 0.1,
               ("proposed", 2, 100, "gauss"): lambda t: 0.4, ("control", 2, 100, "gauss"): lambda t: 0.2}
    whole = _layout(tmp_path / "whole", offsets)
    budget_whole, margin_whole = run(whole)
    rows = []
    for seed in (0, 1, 2):  # three sessions, one seed each
        part = tmp_path / f"session{seed}"
        _layout(part, {k: v for k, v in offsets.items() if k[1] == seed})
        rows += write_budget_rows(part / "runs", tmp_path / "committed", budget_id="cfg1")
    combined = replace(whole, rows=tuple(rows), budget_id="cfg1", out=str(tmp_path / "c.csv"),
                       margins=str(tmp_path / "cm.csv"), figure=str(tmp_path / "c.png"))
    budget, margin = run(combined)
    pd.testing.assert_frame_equal(budget, budget_whole)
    pd.testing.assert_frame_equal(margin, margin_whole)
    assert sorted(set(budget["seed"])) == [0, 1, 2] and (tmp_path / "c.png").stat().st_size > 10_000
    outputs = [tmp_path / n for n in ("d.csv", "dm.csv", "d.png")]
    fresh = replace(combined, out=str(outputs[0]), margins=str(outputs[1]), figure=str(outputs[2]))
    with pytest.raises(ValueError, match=r"s0\.csv: budget_id cfg1 differs from cfg2"):
        run(replace(fresh, budget_id="cfg2"))
    with pytest.raises(ValueError, match=r"seed 1 is also in"):
        run(replace(fresh, rows=(*rows, rows[1])))
    mixed = tmp_path / "mixed.csv"
    pd.concat([pd.read_csv(r) for r in rows[:2]]).to_csv(mixed, index=False)
    with pytest.raises(ValueError, match=r"mixed\.csv: rows of seeds \[0, 1\]"):
        run(replace(fresh, rows=(str(mixed),)))
    assert not any(p.exists() for p in outputs)


def test_column_groups_and_the_papers_group_margins():
    assert [group_of(t) for t in ("comp80", "blur2.0", "sr3_gauss_n1")] == ["completion", "deblurring",
                                                                           "super-resolution"]
    with pytest.raises(ValueError, match="no column group"):
        group_of("denoise25")
    paper = pd.read_csv(PAPER).pivot_table(index="task", columns="method", values="psnr")
    comp = [t for t in paper.index if t.startswith("comp")]
    assert paper_group_margins(PAPER)["completion"] == pytest.approx(
        float((paper.loc[comp, "proposed"] - paper.loc[comp, "gauss"]).mean()))


def test_budget_target_trains_one_run_per_prior_and_seed_job_by_job():
    """The DAG of `snakemake budget` at ci: each budget's job needs the previous budget's model and
    shares the run's resume state; seed 1 stops at its up_to; own settings only at the first seed's
    largest budget; each seed's rows are a job of their own, stamped with the config's budget_id;
    the Gauss row is the main run's evaluation."""
    out = subprocess.run([sys.executable, "-m", "snakemake", "budget", "-n", "-p", "--forceall",
                          "--configfile", "config/ci.yaml"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout
    text = out.stdout + out.stderr
    trains = re.findall(r"train-deq --out results/ci/budget/models/(proposed_s\d+_\d+)\.pt.*?--state (\S+)", text)
    assert sorted(trains) == [("proposed_s0_4", "results/ci/budget/state/proposed_s0.ckpt"),
                              ("proposed_s0_8", "results/ci/budget/state/proposed_s0.ckpt"),
                              ("proposed_s1_4", "results/ci/budget/state/proposed_s1.ckpt")]
    assert all("--batch-tasks" in line for line in text.splitlines() if "train-deq --out results/ci/budget" in line)
    controls = re.findall(r"pretrain-denoiser --out results/ci/budget/models/(control_s\d+_\d+)\.pt", text)
    assert sorted(controls) == ["control_s0_4", "control_s0_8", "control_s1_4"]
    own = set(re.findall(r"--out results/ci/budget/eval/(\w+)/s(\d)/(\d+)/own/", text))
    assert own == {("proposed", "0", "8"), ("control", "0", "8")}
    evals = re.findall(r"--out results/ci/budget/eval/\S+\.csv", text)
    assert len(evals) == (2 * 2 + 2 + 2) * 12  # 2 budgets x 2 priors, own at 8, seed 1 at 4
    assert "--gauss-dir results/ci/eval/gauss" in text
    stamps = re.findall(r"budget-rows --runs results/ci/budget/eval --seed (\d) --budget-id (\w+)", text)
    assert sorted(s for s, _ in stamps) == ["0", "1"] and len({i for _, i in stamps}) == 1
    assert f"--rows results/ci/budget/rows/s0.csv results/ci/budget/rows/s1.csv --budget-id {stamps[0][1]}" in text


def test_committed_seed_rows_are_used_only_when_they_reach_the_seeds_up_to(tmp_path):
    """budget.rows: a committed seed file of this config's budget_id is read instead of training the seed,
    unless it lacks a budget up to the seed's up_to (a seed committed at 4 steps and now asked for 8 is
    run, saying why); a file of another budget_id is run again."""
    def plan(*overlays):
        out = subprocess.run([sys.executable, "-m", "snakemake", "budget", "-n", "-p", "--forceall", "--nolock",
                              "--configfile", "config/ci.yaml", *overlays], cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr + out.stdout
        return out.stdout + out.stderr

    (ours,) = set(re.findall(r"budget-rows --runs \S+ --seed \d --budget-id (\w+)", plan()))
    rows = tmp_path / "rows"
    rows.mkdir()
    overlay = tmp_path / "rows.yaml"
    overlay.write_text(f"budget:\n  rows: {rows}\n")
    for seed, budget_id in ((0, ours), (1, ours)):  # both stop at 4 steps: seed 0's up_to is 8
        pd.DataFrame([{"budget_id": budget_id, "prior": "proposed", "seed": seed, "steps": 4, "settings": "gauss",
                       "task": "comp90", "image": "a", "psnr": 30.0}]).to_csv(rows / f"s{seed}.csv", index=False)
    text = plan(str(overlay))
    trained = set(re.findall(r"train-deq --out results/ci/budget/models/(proposed_s\d+_\d+)\.pt", text))
    assert trained == {"proposed_s0_4", "proposed_s0_8"}  # seed 1 is read from its committed file
    assert f"s0.csv has no rows at steps [8] (budget.seeds: seed 0 up to 8); seed 0 is run" in text
    assert f"--rows results/ci/budget/rows/s0.csv {rows / 's1.csv'} --budget-id {ours}" in text
    (rows / "s1.csv").write_text((rows / "s1.csv").read_text().replace(ours, "another"))
    text = plan(str(overlay))
    assert "has another budget_id" in text and "proposed_s1_4" in text


def test_budget_reuses_alls_evaluations_where_its_checkpoint_is_alls_model(tmp_path):
    """At priors.mtdeq.steps (ci: 12) a budget run of the config seed (0) or of a seed of spread.seeds
    (ci: 1) is the model that `all` trained (measured at quick: bit-identical weights, seed 1, 400
    steps), so its Gauss-settings evaluations pass --reuse with all's model and CSV; other budgets,
    seeds outside the main run, own settings and budget.reuse_main false solve."""
    override = tmp_path / "reuse.yaml"
    seeds = "[{seed: 0, up_to: 12}, {seed: 1, up_to: 12}, {seed: 5, up_to: 12}]"
    override.write_text(f"budget: {{steps: [4, 12], seeds: {seeds}}}\n")

    def plan(*extra):
        out = subprocess.run([sys.executable, "-m", "snakemake", "budget", "-n", "-p", "--forceall",
                              "--configfile", "config/ci.yaml", str(override), *extra],
                             cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr + out.stdout
        return re.findall(r"--out results/ci/budget/eval/(\w+)/s(\d)/(\d+)/(\w+)/(\S+)\.csv.*?(--reuse \S+ \S+)?"
                          r" >", out.stdout + out.stderr)

    evals = plan()
    reused = {(m, s, k, setting, t): r for m, s, k, setting, t, r in evals if r}
    assert len(evals) == (2 * 2 * 3 + 2) * 12  # 2 priors x 2 budgets x 3 seeds, own settings at seed 0
    assert {(m, s, k, setting) for m, s, k, setting, _ in reused} == {
        (m, s, "12", "gauss") for m in ("proposed", "control") for s in ("0", "1")}
    assert reused[("proposed", "1", "12", "gauss", "comp80")] == (
        "--reuse results/ci/models/mtdeq_seed1.pt results/ci/eval/proposed_seed1/comp80.csv")
    assert reused[("control", "0", "12", "gauss", "sr2_gauss_n1")] == (
        "--reuse results/ci/models/gauss_budget.pt results/ci/eval/gauss_budget/sr2_gauss_n1.csv")
    off = tmp_path / "off.yaml"
    off.write_text("budget: {reuse_main: false}\n")
    solved = plan(str(off))
    assert len(solved) == len(evals) and not any(r for *_, r in solved)  # the same curve, every job solved


# The `budget` target at a toy size on top of config/ci.yaml: 10 Gauss pretraining steps, one test
# image (a 32 x 32 crop) and one task per table, a one-point tuning grid; budgets 2 and 4, seed 1 to
# 2 steps, own settings at 4.
TOY_BUDGET = """\
denoiser: {steps: 10, lr_milestones: [], checkpoint_every: 0}
tune:
  max_images: 1
  crop: 32
  extend_rounds: 0
  admm: {iterations: [4], sigma_max: [0.1], sigma_min: [0.01], lam_scale: [1.0]}
evaluate: {methods: [gauss], tasks: [comp90, sr2_bicubic_n1], max_images: 1, crop: 32}
budget: {steps: [2, 4], seeds: [{seed: 0, up_to: 4}, {seed: 1, up_to: 2}], own_settings: true, batch_tasks: true}
"""


@pytest.mark.slow
def test_budget_target_runs_end_to_end_and_its_budgets_are_one_run(tmp_path):
    """`snakemake budget` for real (about 2.5 min on 2 busy cores): budget.csv has the Gauss row and one
    row per budget x prior x seed x settings x task, margins.csv every comparison per table, and the
    figure exists.  The 4-step models are the 2-step jobs' runs continued: the MTDEQ run's 4-step
    checkpoint is bit-for-bit the one of its training command run alone from scratch (float64, one
    thread), and the two jobs' logs are that run's log split at step 2.  Fails if a budget job
    restarted from the Gauss prior or skipped the shared state, or a row, task or file were missing."""
    (tmp_path / "toy.yaml").write_text(TOY_BUDGET)
    run_workflow(tmp_path, "budget", "config/ci.yaml", "toy.yaml")
    out = tmp_path / "results" / "ci" / "budget"
    tasks = {"table1": "comp90", "table2": "sr2_bicubic_n1"}
    budget = pd.read_csv(out / "budget.csv")
    priors = ("proposed", "control")
    runs = ([(0, "gauss", 0, "gauss")] + [(k, p, 0, "gauss") for k in (2, 4) for p in priors]
            + [(4, p, 0, "own") for p in priors] + [(2, p, 1, "gauss") for p in priors])
    expected = {(*run, table, task) for run in runs for table, task in tasks.items()}
    keys = ["steps", "prior", "seed", "settings", "table", "task"]
    assert len(budget) == len(expected) == 18 and set(budget[keys].itertuples(index=False, name=None)) == expected
    assert budget["n_images"].eq(1).all() and budget["psnr"].between(5, 60).all()
    margin = pd.read_csv(out / "margins.csv")
    keys = ["steps", "seed", "settings", "table", "comparison"]
    assert set(margin[keys].itertuples(index=False, name=None)) == {
        (k, s, setting, table, comparison) for k, s, setting in ((2, 0, "gauss"), (4, 0, "gauss"), (4, 0, "own"),
                                                                 (2, 1, "gauss"))
        for table in tasks for comparison in ("proposed-gauss", "control-gauss", "proposed-control")}
    assert (out / "budget.png").stat().st_size > 10_000 and (out / "margins.md").is_file()
    trend = pd.read_csv(out / "trend.csv")  # 2 -> 4 steps, seed 0 only (seed 1 stops at 2)
    assert set(trend[["comparison", "group", "from_steps", "to_steps", "n_seeds"]].itertuples(index=False, name=None)) == {
        (c, g, 2, 4, 1) for c in ("proposed-gauss", "proposed-control") for g in ("completion", "super-resolution")}
    fit = pd.read_csv(out / "extrapolation.csv")
    import yaml
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    ci = yaml.safe_load((REPO / "config" / "ci.yaml").read_text())["deq"]
    assert set(fit["budgets"]) == {"2/4"} and len(fit) == 4
    assert fit["paper_steps"].eq(paper["priors"]["mtdeq"]["steps"] * paper["deq"]["batch_size"]
                                 / (ci["batch_size"] * ci.get("accum", 1))).all()

    # one run per prior and seed: rerun the 4-step MTDEQ job's command alone, from scratch
    chained = torch.load(out / "models" / "proposed_s0_4.pt", map_location="cpu", weights_only=False)
    argv = list(chained["provenance"]["argv"][1:])  # after __main__.py: --precision float64 train-deq ...
    for flag, value in (("--out", "alone.pt"), ("--state", "alone.ckpt"), ("--log-csv", "alone.csv")):
        argv[argv.index(flag) + 1] = value
    assert "--steps" in argv and argv[argv.index("--steps") + 1] == "4" and "--threads" in argv
    proc = subprocess.run([sys.executable, "-m", "mtdeq", *argv], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    alone = torch.load(tmp_path / "alone.pt", map_location="cpu", weights_only=False)
    assert chained["state_dict"].keys() == alone["state_dict"].keys()
    assert all(torch.equal(chained["state_dict"][k], alone["state_dict"][k]) for k in alone["state_dict"])
    first, second = (pd.read_csv(out / "logs" / f"proposed_s0_{k}.csv") for k in (2, 4))
    assert first["step"].tolist() == [0, 1, 2] and second["step"].tolist() == [3, 4]
    whole = pd.read_csv(tmp_path / "alone.csv")
    pd.testing.assert_series_equal(pd.concat([first, second], ignore_index=True)["loss"], whole["loss"])
