# Helpers shared by the .smk files (which fetched dataset provides a path, which prior a
# method uses, how a group of jobs launches Python). Only small pure functions live here.
import csv
import re
from pathlib import Path

SCALE = config["scale"]
DATA = config["data"]["dest"]
RES = config["resources"]
DEQ = config["deq"]
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
    """Sentinels of the training folders and of the validation set."""
    dirs = config["data"]["train_dirs"]
    sentinels = {fetched(d, "data.train_dirs") for d in dirs}
    return sorted(sentinels | {fetched(config["data"]["val_set"], "data.val_set")})


def launcher(group):
    """'python' or, for a group with several GPUs, torchrun with one process per GPU."""
    gpus = RES[group]["gpus"]
    return f"torchrun --standalone --nproc-per-node {gpus}" if gpus > 1 else "python"


def device(group):
    return "cuda" if RES[group]["gpus"] > 0 else "cpu"


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
