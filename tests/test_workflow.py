"""Tests of the Snakemake workflow: lint, config validation and the planned DAG of every scale.

All runs are dry runs (-n) in the repository root with --forceall, so they list every job
whatever is already built, and nothing is executed; --rerun-incomplete lets them plan while a
real run in the same checkout has jobs in flight (a dry run changes no metadata).
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
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")

# jobs of `all` for every scale: 3 DEQ priors, 2 x 12 tuning runs, 6 methods x 12 tasks
COMMON_JOBS = {
    "config_json": 1, "pretrain_denoiser": 1, "train_control": 1, "train_deq": 3,
    "tune_admm": 12, "tune_red": 12, "collect_tuned": 1, "evaluate": 72,
    "figure": 1, "tables": 1, "summarize": 1, "all": 1,
}
# jobs that target `extra` adds with the defaults extra.own_priors [proposed, gauss_budget] and
# extra.seeds [1]: 2 x 12 own tunings, one more MTDEQ prior, 3 more rows x 12 tasks
EXTRA_JOBS = {"tune_admm_own": 24, "collect_tuned_own": 2, "train_deq": 1, "evaluate": 36,
              "tables_extra": 1, "extra": 1}
# spread.seeds x spread.priors [mtdeq, gauss_budget]: one more MTDEQ and control per seed, 2 x 12 evaluations
def _seeded(jobs: dict, seeds: int) -> dict:
    return {**jobs, "train_deq": jobs["train_deq"] + seeds, "train_control_seed": seeds,
            "evaluate": jobs["evaluate"] + 2 * 12 * seeds}


EXPECTED_JOBS = {
    "config/config.yaml": _seeded({**COMMON_JOBS, "fetch": 4}, 2),  # Set5, Set14, BSDS500, FFDNet; seeds 1, 2
    "config/ci.yaml": _seeded({**COMMON_JOBS, "fetch": 3}, 1),      # from scratch: no weights; seed 1
    "config/quick-drunet.yaml": {**COMMON_JOBS, "fetch": 3},
    "config/paper.yaml": {**COMMON_JOBS, "fetch": 3, "fetch_download": 4, "fetch_weights": 1},
}


def snakemake(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@functools.lru_cache(maxsize=None)
def dry_run(*args: str, target: str = "all") -> tuple[Counter, str]:
    """Plan ``target`` (every job, printing shell commands); return job counts and the output."""
    # target first: --configfile takes 1+ values
    proc = snakemake(target, "-n", "-F", "-p", "--rerun-incomplete", "--cores", "2", *args)
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
    pattern = re.compile(rf"-m mtdeq (--precision \w+ )?{re.escape(stage)} ")
    return [line for line in out.splitlines() if pattern.search(line)]


def test_lint_is_clean():
    proc = snakemake("--lint")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Lints for" not in out, out[-3000:]


@pytest.mark.parametrize("configfile", sorted(EXPECTED_JOBS))
def test_dry_run_plans_every_rule(configfile):
    counts, out = dry_run("--configfile", configfile)
    assert dict(counts) == EXPECTED_JOBS[configfile]
    assert_logs_and_benchmarks(out)


def assert_logs_and_benchmarks(out: str) -> None:
    """Every planned job that runs a stage has a log and a benchmark."""
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", out):
        if re.match(r"(?:local)?rule (?!all:|extra:|heldout:)\w+:", block):
            assert "    log: " in block and "    benchmark: " in block, block[:500]


def test_ci_config_reaches_the_stage_commands():
    _, out = dry_run("--configfile", "config/ci.yaml")
    train = shell_commands(out, "train-deq")
    assert len(train) == 4  # + mtdeq_seed1
    assert all("--steps 12" in c and "--crop 32" in c and "--max-iter 20" in c for c in train)
    assert all("--batch-tasks" in c and "--comp-init fill" in c and "--channels-last" in c for c in train)
    assert {re.search(r"--task-set (\w+)", c).group(1) for c in train} == {"mtdeq", "st_comp", "st_sr"}
    denoisers = [c for c in shell_commands(out, "pretrain-denoiser") if "_seed" not in c]
    (gauss, control) = sorted(denoisers, key=lambda c: "gauss_budget" in c)
    steps = yaml.safe_load((REPO / "config" / "ci.yaml").read_text())["denoiser"]["steps"]
    assert "--nc 8 16 32 64 --nb 1" in gauss and "--init" not in gauss and f"--steps {steps} " in gauss
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
    # the ci scale computes in float64 on whatever device is available
    computing = train + gauss.splitlines() + control.splitlines() + tunes + evals
    assert all("-m mtdeq --precision float64 " in c and "--device auto" in c for c in computing)


def test_protocol_reaches_training_tuning_evaluation_and_figure():
    _, out = dry_run("--configfile", "config/ci.yaml")  # PnP-ReG's test protocol
    test = "--bicubic-a -0.75 --gauss-sr-support 2.0 --sr-init bicubic --test-crop pnp-reg"
    assert all(test in c for c in shell_commands(out, "tune") + shell_commands(out, "evaluate"))
    assert all("--bicubic-a -0.75 --gauss-sr-support 2.0 --sr-init bilinear" in c
               for c in shell_commands(out, "train-deq"))
    assert all("--test-crop pnp-reg" in c for c in shell_commands(out, "figure"))
    for config in ("config/config.yaml", "config/quick-drunet.yaml"):  # [8]'s protocol on full images
        _, out = dry_run("--configfile", config)
        evals = shell_commands(out, "evaluate")
        assert evals and all(test in c and "--crop" not in c for c in evals)
        assert all("--test-crop pnp-reg" in c for c in shell_commands(out, "figure"))


@pytest.mark.parametrize("configfile", sorted(EXPECTED_JOBS))
def test_validation_stages_exclude_and_check_test_images(configfile):
    """Every stage that uses data.val_set gets --test-set and data.val_exclude (face.png is a crop of
    Set5's head.png, monarch.png contains Set5's butterfly.png): mtdeq.leakage refuses them otherwise."""
    _, out = dry_run("--configfile", configfile)
    stages = [c for stage in ("tune", "train-deq", "pretrain-denoiser") for c in shell_commands(out, stage)]
    jobs = EXPECTED_JOBS[configfile]  # 24 tunings, every DEQ prior, Gauss and every control
    assert len(stages) == 24 + jobs["train_deq"] + 2 + jobs.get("train_control_seed", 0)
    assert all("--test-set data/Set5 --val-exclude face.png monarch.png " in c for c in stages)


def test_quick_scale_computes_in_float32_and_gpu_groups_use_cuda():
    _, out = dry_run("--configfile", "config/config.yaml")
    evals = shell_commands(out, "evaluate")
    assert evals and all("--precision float32 " in c and "--device auto" in c for c in evals)
    _, out = dry_run("--configfile", "config/paper.yaml")
    assert all("--device cuda" in c for c in shell_commands(out, "train-deq"))


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


NO_SEEDS = str(REPO / "tests" / "configs" / "no_seeds.yaml")  # ci with spread.seeds []


def test_extra_target_plans_own_settings_and_seed_rows():
    base, _ = dry_run("--configfile", "config/ci.yaml", NO_SEEDS)
    counts, out = dry_run("--configfile", "config/ci.yaml", NO_SEEDS, target="extra")
    assert {k: counts[k] - base.get(k, 0) for k in EXTRA_JOBS} == EXTRA_JOBS
    assert "summarize" not in counts and "tables" not in counts  # `extra` leaves the main tables alone
    assert_logs_and_benchmarks(out)
    (seed,) = [c for c in shell_commands(out, "train-deq") if "mtdeq_seed1.pt" in c]
    assert "--seed 1 " in seed and "--task-set mtdeq" in seed and "--steps 12" in seed
    assert "--log-csv results/ci/logs/mtdeq_seed1.csv" in seed
    own = [c for c in shell_commands(out, "tune") if "tune_own" in c]
    assert len(own) == 24 and all("--images data/Set14" in c and "--iterations 4 8" in c for c in own)
    assert {re.search(r"--prior (\S+)", c).group(1) for c in own} == {
        "results/ci/models/mtdeq.pt", "results/ci/models/gauss_budget.pt"}
    evals = shell_commands(out, "evaluate")
    (proposed_own,) = [c for c in evals if "--method proposed_own --prior results/ci/models/mtdeq.pt --task comp90 " in c]
    assert "--params results/ci/tuned_params_own/proposed.csv" in proposed_own
    (seed_eval,) = [c for c in evals if "--method proposed_seed1 " in c and "--task comp90 " in c]
    assert "--prior results/ci/models/mtdeq_seed1.pt" in seed_eval and "--params results/ci/tuned_params.csv" in seed_eval
    (tables,) = shell_commands(out, "tables")
    assert "--out-dir results/extra" in tables
    assert "gauss_budget_own proposed_seed1" in tables and "proposed_own" in tables


def test_all_ignores_extra_keys_and_uses_the_configured_lists(tmp_path):
    fallbacks = tmp_path / "fallbacks.yaml"
    fallbacks.write_text("extra:\n  own_priors: [st_sr]\n  seeds: [3]\n")
    counts, out = dry_run("--configfile", "config/ci.yaml", NO_SEEDS, str(fallbacks))
    assert dict(counts) == {**COMMON_JOBS, "fetch": 3}
    (tables,) = shell_commands(out, "tables")
    assert "--methods red gauss gauss_budget st_comp st_sr proposed --paper" in tables
    assert "--out-dir results " in tables
    (summarize,) = shell_commands(out, "summarize")
    assert "--benchmarks benchmarks/ci --train-logs results/ci/logs" in summarize
    assert "--out-timings results/ci/timings.csv --out-convergence results/ci/convergence.csv" in summarize
    # the benchmarks of targets outside `all` (same folder) are not part of its time
    assert "--exclude-rules budget lr_study evaluate_heldout heldout_images heldout_tables" in summarize

    lists = tmp_path / "lists.yaml"
    lists.write_text("tune:\n  own_priors: [st_comp]\nspread:\n  seeds: [2]\n  priors: [mtdeq]\n")
    counts, out = dry_run("--configfile", "config/ci.yaml", str(lists))
    assert counts["tune_admm_own"] == 12 and counts["train_deq"] == 4 and counts["evaluate"] == 72 + 24
    (tables,) = shell_commands(out, "tables")
    assert "--methods red gauss gauss_budget st_comp st_sr proposed st_comp_own proposed_seed2 --paper" in tables
    counts, out = dry_run("--configfile", "config/ci.yaml", str(lists), str(fallbacks), target="extra")
    assert counts["tune_admm_own"] == 12 and counts["collect_tuned_own"] == 1  # the lists win over extra.*
    assert "mtdeq_seed3" not in out and "mtdeq_seed2.pt" in out


def test_spread_seed_equal_to_the_main_seed_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("spread:\n  seeds: [0]\n")
    proc = snakemake("all", "-n", "--configfile", "config/ci.yaml", str(bad))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "config spread.seeds: seed 0" in out
    # extra.seeds [1] is checked only when target `extra` is planned
    seed1 = tmp_path / "seed1.yaml"
    seed1.write_text("seed: 1\nspread:\n  seeds: []\n")
    counts, _ = dry_run("--configfile", "config/ci.yaml", str(seed1))
    assert counts["tables"] == 1
    proc = snakemake("extra", "-n", "--rerun-incomplete", "--configfile", "config/ci.yaml", str(seed1))
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "config extra.seeds: seed 1" in out


@pytest.mark.parametrize(
    "bad_yaml, message",
    [
        ("tune:\n  own_prior: [proposed]\n", "'own_prior' was unexpected"),  # misspelled keys
        ("spread:\n  seed: [1]\n", "'seed' was unexpected"),
        ("extras:\n  seeds: [1]\n", "'extras' was unexpected"),
        ("extra:\n  own_priors: [proposd]\n", "'proposd' is not one of"),   # not a prior
        ("extra:\n  seeds: [one]\n", "'one' is not of type 'integer'"),
        ("spread:\n  seeds: [1, 1]\n", "non-unique"),
    ],
)
def test_schema_rejects_bad_extra_keys(bad_yaml, message):
    """The schema itself (fast; the Snakemake path is covered above) on config.yaml + an override."""
    import jsonschema

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    jsonschema.validate(config, schema)
    for key, value in yaml.safe_load(bad_yaml).items():
        config[key] = {**config.get(key, {}), **value}
    with pytest.raises(jsonschema.ValidationError, match=re.escape(message)):
        jsonschema.validate(config, schema)


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
        assert "torchrun --standalone --nproc-per-node 4 -m mtdeq --precision float32 train-deq" in block
        assert "--steps 134282" in block and "--crop 128" in block and "--tol 1e-07" in block


SEEDS_ALL_PRIORS = "spread:\n  seeds: [1, 2]\n  priors: [mtdeq, st_comp, st_sr, gauss_budget]\n"


def test_spread_priors_retrain_every_prior_with_every_seed(tmp_path):
    seeds = tmp_path / "seeds.yaml"
    seeds.write_text(SEEDS_ALL_PRIORS)
    counts, out = dry_run("--configfile", "config/ci.yaml", str(seeds))
    base = COMMON_JOBS  # the lists replace ci's spread.seeds [1]
    # 3 DEQ priors x 2 seeds, the control x 2 seeds, 4 priors x 2 seeds x 12 tasks
    assert counts["train_deq"] == base["train_deq"] + 6 and counts["train_control_seed"] == 2
    assert counts["evaluate"] == base["evaluate"] + 8 * 12
    assert_logs_and_benchmarks(out)
    train = shell_commands(out, "train-deq")
    for prior, task_set in (("mtdeq", "mtdeq"), ("st_comp", "st_comp"), ("st_sr", "st_sr")):
        for s in (1, 2):
            (cmd,) = [c for c in train if f"--out results/ci/models/{prior}_seed{s}.pt " in c]
            assert f"--task-set {task_set} " in cmd and f"--seed {s} " in cmd and "--steps 12 " in cmd
            assert f"--log-csv results/ci/logs/{prior}_seed{s}.csv " in cmd
    controls = [c for c in shell_commands(out, "pretrain-denoiser") if "gauss_budget_seed" in c]
    assert len(controls) == 2
    for s in (1, 2):
        (cmd,) = [c for c in controls if f"--out results/ci/models/gauss_budget_seed{s}.pt " in c]
        assert f"--seed {s} " in cmd and "--init results/ci/models/gauss.pt" in cmd and "--steps 12 " in cmd
    evals = shell_commands(out, "evaluate")
    for method, prior in (("proposed", "mtdeq"), ("st_comp", "st_comp"), ("st_sr", "st_sr"),
                          ("gauss_budget", "gauss_budget")):
        mine = [c for c in evals if f"--method {method}_seed2 " in c]
        assert len(mine) == 12 and all(f"--prior results/ci/models/{prior}_seed2.pt " in c
                                       and "--params results/ci/tuned_params.csv" in c for c in mine)
    (tables,) = shell_commands(out, "tables")
    assert ("--methods red gauss gauss_budget st_comp st_sr proposed proposed_seed1 proposed_seed2 st_comp_seed1 "
            "st_comp_seed2 st_sr_seed1 st_sr_seed2 gauss_budget_seed1 gauss_budget_seed2 --paper") in tables


# gauss, proposed, gauss_budget and (heldout.seeded [proposed], ci's spread.seeds [1]) proposed_seed1
HELDOUT_JOBS = {"heldout_images": 1, "evaluate_heldout": 4 * 12, "heldout_tables": 1, "heldout": 1}


def test_heldout_target_plans_the_draw_the_evaluations_and_the_tables(tmp_path):
    counts, out = dry_run("--configfile", "config/ci.yaml", target="heldout")
    assert {k: counts[k] for k in HELDOUT_JOBS} == HELDOUT_JOBS
    assert counts["evaluate"] == 4 * 12  # Set5's margins beside: the same methods on Set5
    assert "tables" not in counts and "summarize" not in counts
    assert_logs_and_benchmarks(out)
    (draw,) = shell_commands(out, "heldout-draw")
    assert ("--dir data/BSDS500/test --images 3 --seed 0 --out-dir results/ci/heldout/images"
            " --list results/ci/heldout/images.csv") in draw
    evals = [c for c in shell_commands(out, "evaluate") if "--out results/ci/heldout/eval/" in c]
    assert len(evals) == 48
    for c in evals:
        assert "--images results/ci/heldout/images --params results/ci/tuned_params.csv" in c
        assert "--crop 48 " in c and "--max-images" not in c and "--save-dir" not in c and "--budget-check" not in c
        assert "--sr-init bicubic --test-crop pnp-reg" in c and "--precision float64" in c
    assert {re.search(r"--method (\S+)", c).group(1) for c in evals} == {"gauss", "proposed", "gauss_budget",
                                                                         "proposed_seed1"}
    (tables,) = shell_commands(out, "heldout")
    assert "--eval-dir results/ci/heldout/eval --set5-eval-dir results/ci/eval" in tables
    assert "--methods gauss proposed gauss_budget proposed_seed1 --paper" in tables and "--out-dir results/ci/heldout " in tables
    assert "--benchmarks benchmarks/ci " in tables  # timings.csv of the held-out jobs

    # seeded priors: every seed on the held-out images; heldout.in_all puts the target in `all`
    seeds = tmp_path / "seeds.yaml"
    seeds.write_text(SEEDS_ALL_PRIORS + "heldout:\n  in_all: true\n  seeded: [proposed, gauss_budget]\n")
    counts, out = dry_run("--configfile", "config/ci.yaml", str(seeds))
    assert counts["evaluate_heldout"] == (3 + 4) * 12 and counts["heldout_tables"] == 1 and counts["tables"] == 1
    (summarize,) = shell_commands(out, "summarize")
    assert summarize.split("--exclude-rules")[1].split(">")[0].split() == ["budget", "lr_study"]  # in `all` now
    (tables,) = shell_commands(out, "heldout")
    assert ("--methods gauss proposed gauss_budget proposed_seed1 proposed_seed2 gauss_budget_seed1"
            " gauss_budget_seed2 --paper") in tables


def test_heldout_seeded_method_must_be_evaluated_and_retrained(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("heldout:\n  seeded: [st_comp]\n")
    proc = snakemake("heldout", "-n", "--configfile", "config/ci.yaml", str(bad))
    assert proc.returncode != 0
    assert "heldout.seeded: st_comp must be in heldout.methods" in proc.stdout + proc.stderr
