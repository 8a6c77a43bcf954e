"""Tests of the Snakemake workflow: lint, config validation and the planned DAG of every scale.

All runs are dry runs (-n) in the repository root with --forceall, so they list every job
whatever is already built, and nothing is executed.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")

# jobs of `all` for every scale: 3 DEQ priors, 2 x 12 tuning runs, 6 methods x 12 tasks
COMMON_JOBS = {
    "config_json": 1, "pretrain_denoiser": 1, "train_control": 1, "train_deq": 3,
    "tune_admm": 12, "tune_red": 12, "collect_tuned": 1, "evaluate": 72,
    "figure": 1, "tables": 1, "all": 1,
}
EXPECTED_JOBS = {
    "config/config.yaml": {**COMMON_JOBS, "fetch": 4},          # Set5, Set14, BSDS500, FFDNet weights
    "config/ci.yaml": {**COMMON_JOBS, "fetch": 3},              # from scratch: no weights
    "config/quick-drunet.yaml": {**COMMON_JOBS, "fetch": 3},
    "config/paper.yaml": {**COMMON_JOBS, "fetch": 3, "fetch_download": 4, "fetch_weights": 1},
}


def snakemake(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@functools.lru_cache(maxsize=None)
def dry_run(*args: str) -> tuple[Counter, str]:
    """Plan `all` (every job, printing shell commands); return job counts and the output."""
    proc = snakemake("all", "-n", "-F", "-p", "--cores", "2", *args)  # target first: --configfile takes 1+ values
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    stats = out[out.index("Job stats:"):]
    counts = Counter()
    for line in stats.splitlines()[3:]:
        name, _, count = line.strip().rpartition(" ")
        if name.strip() == "total" or not count.isdigit():
            break
        counts[name.strip()] = int(count)
    return counts, out


def shell_commands(out: str, stage: str) -> list[str]:
    return [line for line in out.splitlines() if f"-m mtdeq {stage} " in line]


def test_lint_is_clean():
    proc = snakemake("--lint")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out, out[-3000:]


@pytest.mark.parametrize("configfile", sorted(EXPECTED_JOBS))
def test_dry_run_plans_every_rule(configfile):
    counts, out = dry_run("--configfile", configfile)
    assert dict(counts) == EXPECTED_JOBS[configfile]
    # every job that runs a stage has a log and a benchmark
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        if re.match(r"(?:local)?rule (?!all:)\w+:", block):
            assert "    log: " in block and "    benchmark: " in block, block[:500]


def test_ci_config_reaches_the_stage_commands():
    _, out = dry_run("--configfile", "config/ci.yaml")
    train = shell_commands(out, "train-deq")
    assert len(train) == 3
    assert all("--steps 12" in c and "--crop 32" in c and "--max-iter 20" in c for c in train)
    assert {re.search(r"--task-set (\w+)", c).group(1) for c in train} == {"mtdeq", "st_comp", "st_sr"}
    (gauss, control) = sorted(shell_commands(out, "pretrain-denoiser"), key=lambda c: "gauss_budget" in c)
    assert "--nc 8 16 32 64 --nb 1" in gauss and "--init" not in gauss and "--steps 40" in gauss
    # same budget as the MTDEQ prior: its steps, batch and crop, starting from the Gauss prior
    assert "--init results/ci/models/gauss.pt" in control
    assert "--steps 12" in control and "--batch-size 2" in control and "--crop 32" in control
    tunes = shell_commands(out, "tune")
    assert tunes and all("--images data/Set14" in c for c in tunes)
    evals = shell_commands(out, "evaluate")
    assert evals and all("--images data/Set5" in c and "--max-images 2 --crop 48" in c for c in evals)
    saved = [c for c in evals if "--save-dir" in c]
    assert len(saved) == 9  # red, gauss, proposed x comp90, blur1.6, sr2_bicubic_n1
    assert all(stage not in out for stage in ("torchrun", "--device cuda"))


def test_quick_scale_converts_the_pretrained_ffdnet():
    _, out = dry_run("--configfile", "config/config.yaml")
    (gauss,) = [c for c in shell_commands(out, "pretrain-denoiser") if "--out results/quick/models/gauss.pt " in c]
    assert "--backbone ffdnet" in gauss and "--init data/weights/ffdnet_color.pth" in gauss
    assert "--steps 0" in gauss
    assert "fetch --dataset ffdnet_weights" in out


@pytest.mark.parametrize(
    "bad_yaml, key",
    [
        ("deq:\n  lr_stpe: 5\n", "lr_stpe"),                       # misspelled nested key
        ("sead: 1\n", "sead"),                                     # misspelled top-level key
        ("priors:\n  mtdeq: {task_set: mtdeq, steps: many}\n", "steps"),  # wrong type
    ],
)
def test_bad_config_fails_before_any_job_naming_the_key(tmp_path, bad_yaml, key):
    bad = tmp_path / "bad.yaml"
    bad.write_text(bad_yaml)
    proc = snakemake("all", "-n", "--configfile", str(bad))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Error validating config" in out and key in out
    assert "Job stats" not in out


def test_path_outside_every_dataset_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  train_dirs: [data/NoSuchSet/train]\n")
    proc = snakemake("all", "-n", "--configfile", str(bad))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "data.train_dirs" in out and "data/NoSuchSet/train" in out


def test_slurm_profile_plans_the_paper_run():
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("snakemake-executor-plugin-slurm is not installed (pip install mtdeq[slurm])")
    counts, out = dry_run("--profile", "workflow/profiles/slurm", "--configfile", "config/paper.yaml")
    assert dict(counts) == EXPECTED_JOBS["config/paper.yaml"]
    train = [b for b in re.split(r"\n(?=rule \w+:)", out) if b.startswith("rule train_deq:")]
    assert len(train) == 3
    for block in train:
        assert re.search(r"resources: .*runtime=2880.*gpu=4", block) or re.search(
            r"resources: .*gpu=4.*runtime=2880", block), block
        assert "torchrun --standalone --nproc-per-node 4 -m mtdeq train-deq" in block
        assert "--steps 134282" in block and "--crop 128" in block and "--tol 1e-07" in block
