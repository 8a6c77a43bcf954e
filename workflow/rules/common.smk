# Helpers shared by the .smk files (which fetched dataset provides a path, which prior a
# method uses, how a group of jobs launches Python). Only small pure functions live here.
import csv
import hashlib
import json
import re
import sys
from pathlib import Path

SCALE = config["scale"]
DATA = config["data"]["dest"]
RES = config["resources"]
DEQ = config["deq"]
PRIORS = config["priors"]
# eval method (table row) -> checkpoint results/<scale>/models/<prior>.pt
PRIOR_OF = {
    "red": "gauss",
    "gauss": "gauss",
    "gauss_budget": "gauss_budget",
    "st_comp": "st_comp",
    "st_sr": "st_sr",
    "proposed": "mtdeq",
}
FIG2_TASKS = [row.split("=")[0] for row in config["figure"]["rows"]]

# Extra, labelled analyses (issue 8): a prior evaluated with PnP-ADMM settings tuned for itself
# ("<method>_own", params results/<scale>/tuned_params_own/<method>.csv), and a prior of
# spread.priors retrained with another seed ("<method>_seed<s>", e.g. proposed_seed<s>, checkpoint
# models/<prior>_seed<s>.pt, the Gauss prior's settings) to measure the run-to-run spread; the
# tables stage reads '<method>_seed<s>' as method <method> with seed s (mtdeq.per_image).
OWN_PRIORS = ["proposed", "gauss_budget", "st_comp", "st_sr"]
# priors that spread.priors may retrain with other seeds -> their eval method (table row)
SEEDED_METHOD = {"mtdeq": "proposed", "st_comp": "st_comp", "st_sr": "st_sr", "gauss_budget": "gauss_budget"}
EVAL_METHOD_RE = (f"{'|'.join(PRIOR_OF)}|(?:{'|'.join(OWN_PRIORS)})_own"
                  f"|(?:{'|'.join(SEEDED_METHOD.values())})_seed[0-9]+")


def extra_methods(own_priors, seeds, seeds_key, priors=("mtdeq",)):
    """Eval method names of the own-settings rows and the seed rows: every prior of ``priors``
    (spread.priors) retrained with every seed (from config seeds_key), '<method>_seed<s>'."""
    for s in seeds:
        if s == config["seed"]:
            raise ValueError(
                f"config {seeds_key}: seed {s} is the main run's seed (config seed); "
                "a retrained prior with it would equal the main run's prior"
            )
    return [f"{m}_own" for m in own_priors] + [f"{SEEDED_METHOD[p]}_seed{s}" for p in priors for s in seeds]


def extra_target_methods():
    """Table rows of target `extra`: those of `all`, with extra.own_priors / extra.seeds standing in
    for empty tune.own_priors / spread.seeds. Called from input functions only, so that `all`
    never reads extra.*."""
    seeds = config["spread"]["seeds"] or config["extra"]["seeds"]
    seeds_key = "spread.seeds" if config["spread"]["seeds"] else "extra.seeds"
    own = config["tune"]["own_priors"] or config["extra"]["own_priors"]
    return config["evaluate"]["methods"] + extra_methods(own, seeds, seeds_key, config["spread"]["priors"])


def prior_of(method):
    """Checkpoint name (results/<scale>/models/<name>.pt) behind an eval method."""
    if "_seed" in method:  # '<m>_seed<s>': prior m retrained with seed s
        base, seed = method.rsplit("_seed", 1)
        return f"{PRIOR_OF[base]}_seed{seed}"
    return PRIOR_OF[method.removesuffix("_own")]


def prior_setting(prior, key):
    """priors.<prior>.<key>; <prior>_seed<s> (e.g. mtdeq_seed1) takes the settings of priors.<prior>."""
    return PRIORS[prior.split("_seed")[0]][key]


# the rules of target `heldout` (heldout.smk); summarize leaves them out of `all`'s time unless heldout.in_all
HELDOUT_RULES = ["evaluate_heldout", "heldout_images", "heldout_tables"]


def prior_seed(prior):
    """Training seed of a DEQ prior: s for mtdeq_seed<s>, else the config seed."""
    return int(prior.split("_seed")[1]) if "_seed" in prior else config["seed"]


def params_of(scale, method):
    """Tuned-parameter file of an eval method: its own settings for '<m>_own', else the Gauss prior's."""
    if method.endswith("_own"):
        return f"results/{scale}/tuned_params_own/{method.removesuffix('_own')}.csv"
    return f"results/{scale}/tuned_params.csv"


def _manifest_files(manifest):
    """{dataset: [data/<path>, ...]} of the manifest TSV."""
    files = {}
    with open(manifest, newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            files.setdefault(row["dataset"], []).append(f"{DATA}/{row['path']}")
    return files


MANIFEST = _manifest_files(config["data"]["manifest"])


def fetched(path, key):
    """Sentinel of the fetch job that provides ``path`` (file or folder), for config ``key``."""
    path = str(Path(path))
    weights = config["model"]["weights"]
    if weights["url"] and path == str(Path(weights["path"])):
        return f"{DATA}/.fetched/model_weights.ok"
    for name in config["data"]["downloads"]:
        root = f"{DATA}/{name}"
        if path == root or path.startswith(f"{root}/"):
            return f"{DATA}/.fetched/{name}.ok"
    for name, files in MANIFEST.items():
        if any(f == path or f.startswith(f"{path}/") for f in files):
            return f"{DATA}/.fetched/{name}.ok"
    raise ValueError(
        f"config {key}: {path!r} is not provided by any dataset of "
        f"{config['data']['manifest']} ({', '.join(MANIFEST)}) nor by data.downloads "
        f"(folders {DATA}/<name>/); fix the path or add a download"
    )


def train_data():
    """Sentinels of the training folders, of the validation set and of the test set (which the
    validation images are checked against: validation_args)."""
    dirs = config["data"]["train_dirs"]
    sentinels = {fetched(d, "data.train_dirs") for d in dirs}
    return sorted(sentinels | {fetched(config["data"]["val_set"], "data.val_set"),
                               fetched(config["data"]["test_set"], "data.test_set")})


def validation_args():
    """'--test-set <data.test_set> [--val-exclude <data.val_exclude>...]' of every stage that uses
    data.val_set (tune, pretrain-denoiser, train-deq): the excluded files are never used, and a
    validation image that is a test image or a crop of one is refused (mtdeq.leakage)."""
    exclude = " ".join(config["data"]["val_exclude"])
    return f"--test-set {config['data']['test_set']}" + (f" --val-exclude {exclude}" if exclude else "")


def launcher(group):
    """'python' or, for a group with several GPUs, torchrun with one process per GPU."""
    gpus = RES[group]["gpus"]
    return f"torchrun --standalone --nproc-per-node {gpus}" if gpus > 1 else "python"


def device(group):
    """--device of a stage: cuda when its resource group asks for GPUs, else config device (auto)."""
    return "cuda" if RES[group]["gpus"] > 0 else config["device"]


def protocol_args(stage):
    """The protocol options (config protocol) of a 'train' (train-deq) or 'test' (tune, evaluate) stage."""
    p = config["protocol"]
    shared = f"--bicubic-a {p['bicubic_a']} --gauss-sr-support {p['gauss_sr_support']}"
    if stage == "train":
        return f"{shared} --sr-init {p['train_sr_init']}"
    return f"{shared} --sr-init {p['test_sr_init']} --test-crop {p['test_crop']}"


def option(flag, value):
    """'--flag value' when value is set (non-empty, non-zero), else ''."""
    return f"{flag} {value}" if value else ""


def step_milestones(every, steps):
    """The decay steps of train-deq's StepLR(every) as pretrain-denoiser --lr-milestones."""
    return list(range(every, steps + 1, every)) if every else []


def save_dir_option(scale, method, task):
    """--save-dir for the (method, task) pairs of Fig. 2; gauss also writes the degraded inputs."""
    methods = set(config["figure"]["methods"]) | {"gauss"}
    if task in FIG2_TASKS and method in methods:
        return f"--save-dir results/{scale}/restored/{method}/{task}"
    return ""


# The verdicts (win / tie / loss) of the tables' and the budget curve's margins use the
# reproducibility tolerance measured for this scale's reference (mtdeq.verdict); without that
# file, mtdeq.tolerance's fallback for every row. An input when present, so editing it reruns them.
TOLERANCE_YAML = f"results/reference/{SCALE}/tolerance.yaml"
TOLERANCE_INPUT = [TOLERANCE_YAML] if Path(TOLERANCE_YAML).is_file() else []


def tolerance_option(w, input):
    """--tolerance of the tables and budget stages: the file, also when absent (the stage says so)."""
    return (list(input.tolerance) or [TOLERANCE_YAML])[0]


# --- target `budget` (workflow/rules/budget.smk)
BUDGET = config["budget"]
BUDGET_STEPS = sorted(BUDGET["steps"])
BUDGET_DIR = f"results/{SCALE}/budget"
BUDGET_PRIOR = {"proposed": "mtdeq", "control": "gauss_budget"}  # budget label -> main-run prior
BATCH_TASKS = "--batch-tasks" if BUDGET["batch_tasks"] else "--no-batch-tasks"


def deq_setting(key, *overrides):
    """A deq.* setting: the first of the override dicts that sets it, else config deq."""
    for source in overrides:
        if key in source:
            return source[key]
    return DEQ[key]


def early_tol_option(*overrides):
    """'--early-tol T --early-steps N' of the deq settings (overrides first), or '' when early_steps is 0."""
    steps = deq_setting("early_steps", *overrides)
    return f"--early-tol {deq_setting('early_tol', *overrides)} --early-steps {steps}" if steps else ""


def paper_steps_here(paper_config="config/paper.yaml"):
    """The paper's MTDEQ training budget in this config's budget steps: its crops (priors.mtdeq.steps x
    deq.batch_size x deq.accum of config/paper.yaml) over the crops of one budget step here (where
    mtdeq budget evaluates the straight-line extrapolation)."""
    import yaml

    with open(paper_config) as handle:
        paper = yaml.safe_load(handle)
    crops = paper["priors"]["mtdeq"]["steps"] * paper["deq"]["batch_size"] * paper["deq"].get("accum", 1)
    return crops / (deq_setting("batch_size", BUDGET["deq"]) * deq_setting("accum", BUDGET["deq"]))


PAPER_STEPS_HERE = paper_steps_here()


def budget_previous(w):
    """The model of the run's previous budget (the job that leaves the shared state behind), if any."""
    earlier = [k for k in BUDGET_STEPS if k < int(w.steps)]
    return [f"results/{w.scale}/budget/models/{w.method}_s{w.seed}_{earlier[-1]}.pt"] if earlier else []


def budget_state(w):
    return f"--state results/{w.scale}/budget/state/{w.method}_s{w.seed}.ckpt"


BUDGET_SEEDS = {int(run["seed"]): int(run["up_to"]) for run in BUDGET["seeds"]}  # seed -> its largest budget
if len(BUDGET_SEEDS) != len(BUDGET["seeds"]):
    raise ValueError("budget.seeds: a seed is listed twice")
for _seed, _up_to in BUDGET_SEEDS.items():
    if _up_to not in BUDGET_STEPS:
        raise ValueError(f"budget.seeds: seed {_seed} up_to {_up_to} is not one of budget.steps {BUDGET_STEPS}")
BUDGET_OWN_SEED = int(BUDGET["seeds"][0]["seed"])  # own settings: at the first seed's largest budget


def budget_id():
    """A digest of every setting a budget seed's rows depend on (training, tuning, evaluation): rows
    written under another config (committed in budget.rows by an earlier session) are refused by
    mtdeq.budget instead of being mixed into the curve.  Which budgets and seeds run is not part of it."""
    deq = {**DEQ, **BUDGET["deq"]}
    settings = {
        "precision": config["precision"], "seed": config["seed"], "model": config["model"],
        "denoiser": config["denoiser"], "deq": deq, "batch_tasks": BUDGET["batch_tasks"],
        "mtdeq": PRIORS["mtdeq"], "control": config["control"], "protocol": config["protocol"],
        "tune": config["tune"], "own_settings": BUDGET["own_settings"],
        "data": {k: config["data"][k] for k in ("train_dirs", "val_set", "val_exclude", "test_set")},
        "evaluate": {k: config["evaluate"][k] for k in ("tasks", "max_images", "crop", "channels_last")},
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


BUDGET_ID = budget_id()


def budget_reuse(w):
    """[model, eval CSV] of `all`'s run that a budget checkpoint may equal bit for bit (same prior, seed
    and steps, Gauss's settings: a run resumed through the smaller budgets is the run of `all`,
    measured), so that evaluate --reuse copies those rows instead of solving again; [] otherwise or
    with budget.reuse_main false.  evaluate checks the weights and settings before it copies."""
    if not BUDGET["reuse_main"] or w.settings != "gauss" or int(w.steps) != int(PRIORS["mtdeq"]["steps"]):
        return []
    prior, seed = {"proposed": "mtdeq", "control": "gauss_budget"}[w.method], int(w.seed)
    if seed == int(config["seed"]):
        suffix = ""
    elif seed in config["spread"]["seeds"] and prior in config["spread"]["priors"]:
        suffix = f"_seed{seed}"
    else:
        return []
    return [f"results/{w.scale}/models/{prior}{suffix}.pt",
            f"results/{w.scale}/eval/{SEEDED_METHOD[prior]}{suffix}/{w.task}.csv"]


def budget_seed_evaluations(seed):
    """The eval CSVs of one seed: both priors at every budget up to its up_to with the Gauss prior's
    settings; the first seed also with each prior's own settings at its largest budget."""
    if seed not in BUDGET_SEEDS:
        raise ValueError(f"budget seed {seed} is not in budget.seeds {sorted(BUDGET_SEEDS)}")
    runs = [(m, k, "gauss") for m in BUDGET_PRIOR for k in BUDGET_STEPS if k <= BUDGET_SEEDS[seed]]
    if BUDGET["own_settings"] and seed == BUDGET_OWN_SEED:
        runs += [(m, BUDGET_SEEDS[seed], "own") for m in BUDGET_PRIOR]
    return [f"{BUDGET_DIR}/eval/{m}/s{seed}/{k}/{settings}/{task}.csv"
            for m, k, settings in runs for task in config["evaluate"]["tasks"]]


def committed_budget_rows(path):
    """(budget_id of the first row or None, the set of budgets (steps) with rows) of a committed rows CSV,
    in one read."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return (rows[0].get("budget_id") if rows else None), {int(row["steps"]) for row in rows}


def budget_rows_files():
    """One rows CSV per seed: the committed one in budget.rows when it is there, was made with this
    config (same budget_id: another scale's or an older config's rows are not this curve) and holds
    every budget of the seed up to its up_to (a seed committed at 400 steps and now asked for 1,600
    is run on: its run resumes from the state it left), else this run's."""
    files, ours = [], budget_id()
    for seed, up_to in BUDGET_SEEDS.items():
        committed = Path(BUDGET["rows"]) / f"s{seed}.csv" if BUDGET["rows"] else None
        if committed is not None and committed.is_file():
            their_id, steps = committed_budget_rows(committed)
            missing = sorted({k for k in BUDGET_STEPS if k <= up_to} - steps)
            if their_id != ours:
                print(f"budget.rows: {committed} has another budget_id than this config's {ours}; "
                      f"seed {seed} is run again", file=sys.stderr)
            elif missing:
                print(f"budget.rows: {committed} has no rows at steps {missing} (budget.seeds: seed {seed} "
                      f"up to {up_to}); seed {seed} is run", file=sys.stderr)
            else:
                files.append(str(committed))
                continue
        files.append(f"{BUDGET_DIR}/rows/s{seed}.csv")
    return files


# the lr_study target (workflow/rules/lr_study.smk)
LR_STUDY = config["lr_study"]
LR_DIR = f"results/{SCALE}/lr_study"
LR_RUNS = {run["name"]: {k: v for k, v in run.items() if k != "name"} for run in LR_STUDY["runs"]}
if len(LR_RUNS) != len(LR_STUDY["runs"]):
    raise ValueError("lr_study.runs: two runs share a name")


def lr_setting(run, key):
    """A deq.* setting of lr_study run `run`: its own value, else lr_study.base's, else deq's."""
    if key == "steps":
        return LR_RUNS[run].get("steps", LR_STUDY["base"].get("steps", LR_STUDY["steps"]))
    return deq_setting(key, LR_RUNS[run], LR_STUDY["base"])


def lr_flag(run, key, flag):
    """'--flag' / '--no-flag' for a boolean setting of a run."""
    return f"--{flag}" if lr_setting(run, key) else f"--no-{flag}"


def lr_study_files(kind):
    """The runs' logs or models; a clear error when lr_study.runs is empty."""
    def files(w):
        if not LR_RUNS:
            raise ValueError("target lr_study: lr_study.runs is empty; add runs to the config (see config/config.yaml)")
        if kind == "logs":
            return [f"{LR_DIR}/logs/{r}.csv" for r in LR_RUNS]
        return [f"{LR_DIR}/models/{r}.pt" for r in LR_RUNS]

    return files


# RED's scheme (tune.red.accel) for tuning and evaluation; "" = the plain iteration (the default)
RED_ACCEL = (
    "" if config["tune"]["red"]["accel"] == "plain" else f"--red-accel {config['tune']['red']['accel']}"
)


def layout_option(section):
    """'' (channels-last test-time networks, the default) or --no-channels-last, from section.channels_last."""
    return "" if section["channels_last"] else "--no-channels-last"
