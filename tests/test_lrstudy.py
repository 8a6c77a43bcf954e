"""Tests of the learning-rate / batch study: train-deq's warm-up, accumulation and multi-task
validation feeding mtdeq.lrstudy, and the `lr_study` DAG."""

from __future__ import annotations

import re
import subprocess
import sys

import pandas as pd
import pytest
from conftest import REPO, run_workflow

from mtdeq.lrstudy import LR_COLUMNS, StudySettings, collect, run
from mtdeq.train import DEQTrainConfig, train_deq

pytestmark = pytest.mark.usefixtures("one_thread")


def _log(path, steps, psnrs, images_per_step=2):
    rows = [{"step": s, "loss": "" if s == 0 else 0.01, "val_psnr": p, "lr": 1e-5, "images": s * images_per_step}
            for s, p in zip(steps, psnrs)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return str(path)


def _settings(tmp_path, logs):
    return StudySettings(logs=logs, spec={"a": {"lr": 1e-5, "accum": 1}}, out=str(tmp_path / "s.csv"),
                         markdown=str(tmp_path / "s.md"), figure=str(tmp_path / "s.png"), scale="test")


def test_study_is_the_change_from_the_start_per_run(tmp_path):
    logs = {"a": _log(tmp_path / "a.csv", [0, 10, 20], [25.0, 25.5, 25.2]),
            "b": _log(tmp_path / "b.csv", [0, 5, 10], [25.0, 24.0, 23.0], images_per_step=8)}
    table = run(_settings(tmp_path, logs))
    study = pd.read_csv(tmp_path / "s.csv")
    assert list(study.columns) == LR_COLUMNS
    assert study[study["run"] == "a"]["delta"].round(3).tolist() == [0.0, 0.5, 0.2]
    assert study[study["run"] == "b"]["images"].tolist() == [0, 40, 80]
    a, b = table.set_index("run").loc["a"], table.set_index("run").loc["b"]
    assert (a.final, a.best, a.best_step) == (pytest.approx(0.2), pytest.approx(0.5), 10)
    assert (b.final, b.worst, b.worst_step) == (pytest.approx(-2.0), pytest.approx(-2.0), 10)
    md = (tmp_path / "s.md").read_text()
    assert "| a | lr 1e-05, accum 1 | 20 | 40 | 25.00 | +0.200 | +0.500 (10) |" in md
    assert (tmp_path / "s.png").stat().st_size > 0


def test_a_run_without_a_start_validation_fails_and_writes_nothing(tmp_path):
    logs = {"a": _log(tmp_path / "a.csv", [10, 20], [25.5, 25.2])}
    with pytest.raises(ValueError, match="no validation at step 0"):
        run(_settings(tmp_path, logs))
    assert not any((tmp_path / f"s.{ext}").exists() for ext in ("csv", "md", "png"))


def test_train_deq_with_warm_up_accumulation_and_several_validation_tasks(images, prior, tmp_path):
    cfg = DEQTrainConfig(out=str(tmp_path / "m.pt"), init=str(prior), train_dirs=(str(images),), crop=16,
                         batch_size=2, n_tasks=2, steps=2, lr=1e-3, lr_warmup=2, accum=2, max_iter=8, tol=1e-5,
                         solver="anderson", comp_init="fill", batch_tasks=True, val_dir=str(images), val_every=1,
                         val_images=2, val_task="blur1.6,comp80", log_csv=str(tmp_path / "log.csv"))
    totals = train_deq(cfg, quiet=True)
    log = pd.read_csv(tmp_path / "log.csv")
    assert totals["solves"] == 2 * 2 * 2 * 2  # steps x accum x batch x tasks
    assert log["step"].tolist() == [0, 1, 2] and log["val_psnr"].notna().all()
    assert log["images"].tolist()[1:] == [4, 8] and log["lr"].tolist()[1:] == pytest.approx([5e-4, 1e-3])
    assert all(len(t.split(";")) == 4 for t in log["tasks"].iloc[1:])  # the tasks of both mini-batches
    study = collect({"run": str(tmp_path / "log.csv")})
    assert study["delta"].iloc[0] == 0.0 and len(study) == 3


def test_lr_study_target_plans_one_training_per_run_with_its_settings():
    out = subprocess.run([sys.executable, "-m", "snakemake", "lr_study", "-n", "-p", "--forceall",
                          "--configfile", "config/ci.yaml"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout
    text = out.stdout + out.stderr
    trains = {m.group(1): m.group(0) for m in
              re.finditer(r"train-deq --out results/ci/lr_study/models/(\w+)\.pt.*", text)}
    assert sorted(trains) == ["base", "warm_accum"]
    assert "--lr-warmup 2 --accum 2" in trains["warm_accum"] and "--steps 2 " in trains["warm_accum"]
    assert "--lr-warmup 0 --accum 1" in trains["base"] and "--steps 4 " in trains["base"]
    assert all("--val-task blur1.6,comp90,sr2_bicubic_n1" in t for t in trains.values())
    assert "lr-study --log base=results/ci/lr_study/logs/base.csv warm_accum=" in text


# The `lr_study` target at a toy size on top of config/ci.yaml: 10 Gauss pretraining steps, then two
# runs validated every 2 steps on 2 Set14 crops: 4 steps of batch 2, and 2 steps of 2 x 2 accumulated
# crops with a 2-step warm-up.
TOY_LR_STUDY = """\
denoiser: {steps: 10, lr_milestones: [], checkpoint_every: 0}
lr_study:
  steps: 4
  val_every: 2
  val_images: 2
  runs:
    - {name: base}
    - {name: warm_accum, lr: 1.0e-3, lr_warmup: 2, accum: 2, steps: 2}
"""


@pytest.mark.slow
def test_lr_study_target_runs_end_to_end(tmp_path):
    """`snakemake lr_study` for real (about 30 s): lr_study.csv has one row per run x validated step (0,
    every val_every, the last), crops seen = step x batch x accum, delta 0 at the start, which is the
    same Gauss prior for both runs; one table row per run; the figure exists.  Fails if a run, a
    validation or the accumulation were missing or a file not written."""
    (tmp_path / "toy.yaml").write_text(TOY_LR_STUDY)
    run_workflow(tmp_path, "lr_study", "config/ci.yaml", "toy.yaml")
    out = tmp_path / "results" / "ci" / "lr_study"
    study = pd.read_csv(out / "lr_study.csv")
    assert list(study.columns) == LR_COLUMNS
    rows = list(study[["run", "step", "images"]].itertuples(index=False, name=None))
    assert rows == [("base", 0, 0), ("base", 2, 4), ("base", 4, 8), ("warm_accum", 0, 0), ("warm_accum", 2, 8)]
    assert study["val_psnr"].between(5, 60).all()
    start = study[study["step"] == 0]
    assert start["delta"].eq(0).all() and start["val_psnr"].nunique() == 1
    assert (study.loc[study["step"] > 0, "delta"] != 0).all()
    assert study.groupby("run")["lr"].first().to_dict() == pytest.approx({"base": 1e-4, "warm_accum": 1e-3})
    md = (out / "lr_study.md").read_text()
    assert "| base | lr 0.0001, lr_warmup 0, accum 1, batch_size 2, steps 4 | 4 | 8 |" in md
    assert "| warm_accum | lr 0.001, lr_warmup 2, accum 2, batch_size 2, steps 2 | 2 | 8 |" in md
    assert (out / "lr_study.png").stat().st_size > 10_000
    assert {p.name for p in (out / "models").glob("*.pt")} == {"base.pt", "warm_accum.pt"}
