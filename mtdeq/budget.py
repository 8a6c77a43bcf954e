"""``budget``: does the MTDEQ gain grow with training?  The training-budget curve.

The target ``budget`` (workflow/rules/budget.smk) trains the MTDEQ prior and the same-budget
control (the Gauss prior trained further as a plain denoiser, with the MTDEQ run's steps, batch,
crop and learning rate) as one run per seed of ``budget.seeds``, saving the model at every budget
of ``budget.steps`` up to the seed's ``up_to`` (one resume state shared by the budgets,
mtdeq.train.state), and evaluates every saved model on the 12 Set5 tasks with the Gauss prior's
tuned settings (and, at the first seed's largest budget, also with each prior's own tuned
settings).  The Gauss row itself is the main run's evaluation (steps 0).

Two stages, so that a seed is a target of its own whose rows survive the session that ran it:

``budget-rows``
    one seed's evaluation CSVs ``<runs>/<prior>/s<seed>/<steps>/<settings>/<task>.csv`` (prior:
    proposed | control, settings: gauss | own) -> ``rows/s<seed>.csv`` (ROW_COLUMNS: one row per
    image), stamped with the config's ``budget_id`` (a digest of the settings the rows depend on).
``budget``
    every seed's rows file (a committed one or this run's) plus ``<gauss-dir>/<task>.csv`` ->
    ``budget.csv`` (BUDGET_COLUMNS: the mean PSNR over the test images per row).  Files of another
    budget_id, a seed in two files or a file mixing seeds are refused.  Every column's margin is
    judged with the suite's verdict rule (mtdeq.verdict: the paired per-image differences, their
    95 % bootstrap interval over the images, win / tie / loss against the reproducibility tolerance
    of --tolerance; rows proposed -> ``proposed``, control -> ``gauss_budget``, gauss -> ``gauss``)
    into ``--task-margins`` (TASK_MARGIN_COLUMNS, one row per steps x seed x settings x comparison x
    task), summarised per table into ``margins.csv`` and ``margins.md`` (MARGIN_COLUMNS: mean margin
    over the tasks and W/T/L counts of the verdicts).  ``budget.png`` draws, per column group
    (completion, deblurring, super-resolution), the mean margin over the seeds against the number
    of steps at Gauss's settings, the range over the seeds as a band, and the paper's Proposed -
    Gauss margin as a dotted line (the paper trained 134k steps; the line marks where it ended,
    not a point of the curve).  Where the curve flattens: ``trend.csv`` (TREND_COLUMNS) judges the
    change of each group's margin between consecutive budgets with the same rule (paired on images
    and seeds); ``extrapolation.csv`` (FIT_COLUMNS) fits a line in log2(steps) to the seed means and
    evaluates it at --paper-steps; both are the last section of ``margins.md``.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from mtdeq import verdict as vd
from mtdeq.cli import add_stage
from mtdeq.tables import TABLES, TASK_LABELS, read_paper, table_tasks
from mtdeq.tolerance import Tolerance, tolerance_or_fallback

BUDGET_COLUMNS = ["steps", "prior", "seed", "settings", "table", "task", "psnr", "n_images"]
IMAGE_COLUMNS = ["steps", "prior", "seed", "settings", "table", "task", "image", "psnr"]
ROW_COLUMNS = ["budget_id", "prior", "seed", "steps", "settings", "task", "image", "psnr"]  # rows/s<seed>.csv
MARGIN_COLUMNS = ["steps", "seed", "settings", "table", "comparison", "mean_margin", "wins", "ties", "losses",
                  "n_tasks"]
RUN_KEY = ["steps", "seed", "settings", "comparison"]
TASK_MARGIN_COLUMNS = RUN_KEY + vd.MARGIN_COLUMNS
TOLERANCE_ROW = {"proposed": "proposed", "control": "gauss_budget", "gauss": "gauss"}  # -> tolerance.yaml row
COMPARISONS = {  # name -> (prior ahead, prior behind)
    "proposed-gauss": ("proposed", "gauss"),
    "control-gauss": ("control", "gauss"),
    "proposed-control": ("proposed", "control"),
}
PRIORS = ("proposed", "control")
SETTINGS = ("gauss", "own")
_RUN = re.compile(r"^(?P<prior>[a-z_]+)/s(?P<seed>\d+)/(?P<steps>\d+)/(?P<settings>[a-z_]+)/(?P<task>[^/]+)\.csv$")


@dataclass(frozen=True)
class BudgetSettings:
    """Inputs and outputs of the budget stage."""

    rows: tuple[str, ...]  # one rows/s<seed>.csv per seed (budget-rows)
    gauss_dir: str
    paper: str
    out: str
    margins: str
    figure: str
    seed: int = 0
    scale: str = ""
    tolerance: str | None = None  # tolerance.yaml of the reference (mtdeq.tolerance); None/absent -> fallback
    task_margins: str | None = None  # per-column verdicts CSV; None -> margins_per_task.csv beside --margins
    budget_id: str | None = None  # every rows file must carry this one (None: they must agree with each other)
    paper_steps: float | None = None  # the paper's training crops in this run's steps (extrapolation); None: none


def _image_rows(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    if not {"image", "psnr"} <= set(frame.columns) or frame.empty:
        raise ValueError(f"{path}: expected a per-image evaluation CSV with image and psnr columns")
    return frame[["image", "psnr"]]


def seed_rows(evals: list[str | Path], runs: str | Path, seed: int, budget_id: str) -> pd.DataFrame:
    """One seed's rows (ROW_COLUMNS) from its evaluation CSVs under ``runs``
    (<prior>/s<seed>/<steps>/<settings>/<task>.csv); an error for a path of another seed or layout."""
    runs = Path(runs)
    frames = []
    for path in map(Path, evals):
        try:
            match = _RUN.match(path.relative_to(runs).as_posix())
        except ValueError:
            match = None
        if match is None or match["prior"] not in PRIORS or match["settings"] not in SETTINGS:
            raise ValueError(f"{path}: not {runs}/<prior>/s<seed>/<steps>/<settings>/<task>.csv with prior in "
                             f"{PRIORS} and settings in {SETTINGS}")
        if int(match["seed"]) != seed:
            raise ValueError(f"{path}: an evaluation of seed {match['seed']}, not of seed {seed}")
        frames.append(_image_rows(path).assign(budget_id=budget_id, prior=match["prior"], seed=seed,
                                               steps=int(match["steps"]), settings=match["settings"],
                                               task=match["task"]))
    if not frames:
        raise FileNotFoundError(f"seed {seed}: no budget evaluations given")
    rows = pd.concat(frames, ignore_index=True)[ROW_COLUMNS]
    return rows.sort_values(["prior", "steps", "settings", "task", "image"], ignore_index=True)


def read_rows(paths: list[str | Path], budget_id: str | None = None) -> pd.DataFrame:
    """The rows of every seed, combined: each file one seed, no seed twice, one budget_id throughout
    (``budget_id`` when given: the config's).  Errors name the file."""
    frames, origin = [], {}
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such rows file (python -m mtdeq budget-rows writes it)")
        frame = pd.read_csv(path, dtype={"budget_id": str})
        missing = set(ROW_COLUMNS) - set(frame.columns)
        if missing or frame.empty:
            raise ValueError(f"{path}: not a budget rows file (missing columns {sorted(missing)} or no rows)")
        seeds, ids = sorted(set(frame["seed"])), sorted(set(frame["budget_id"]))
        if len(seeds) != 1:
            raise ValueError(f"{path}: rows of seeds {seeds}; a rows file holds one seed")
        if len(ids) != 1 or (budget_id is not None and ids[0] != budget_id):
            raise ValueError(f"{path}: budget_id {', '.join(ids)} differs from "
                             f"{budget_id if budget_id is not None else 'the other files'}: its seed was trained or "
                             "evaluated under other settings; delete the file (or restore those settings) and rerun "
                             "that seed")
        if budget_id is None:
            budget_id = ids[0]
        if seeds[0] in origin:
            raise ValueError(f"{path}: seed {seeds[0]} is also in {origin[seeds[0]]}")
        origin[seeds[0]] = path
        frames.append(frame[ROW_COLUMNS])
    if not frames:
        raise FileNotFoundError("no budget rows files given")
    return pd.concat(frames, ignore_index=True)


def collect_images(settings: BudgetSettings) -> pd.DataFrame:
    """The per-image rows (IMAGE_COLUMNS) of the Gauss row (steps 0) and of every seed's rows file."""
    paper = read_paper(settings.paper)
    table_of = {task: table for table in TABLES for task in table_tasks(paper, table)}
    frames = []
    gauss_files = sorted(Path(settings.gauss_dir).glob("*.csv"))
    if not gauss_files:
        raise FileNotFoundError(f"{settings.gauss_dir}: no Gauss evaluation CSVs (<task>.csv)")
    for path in gauss_files:
        frames.append(_image_rows(path).assign(steps=0, prior="gauss", seed=settings.seed, settings="gauss",
                                               task=path.stem))
    frames.append(read_rows(list(settings.rows), settings.budget_id).drop(columns="budget_id"))
    images = pd.concat(frames, ignore_index=True)
    unknown = sorted(set(images["task"]) - set(table_of))
    if unknown:
        raise ValueError(f"tasks {unknown} are in no table of {settings.paper}")
    images["table"] = images["task"].map(table_of)
    return images[IMAGE_COLUMNS].sort_values(["steps", "prior", "seed", "settings", "table", "task", "image"],
                                             ignore_index=True)


def means(images: pd.DataFrame) -> pd.DataFrame:
    """budget.csv's rows (BUDGET_COLUMNS): the mean PSNR over the images per run and task."""
    keys = ["steps", "prior", "seed", "settings", "table", "task"]
    table = images.groupby(keys, sort=True).agg(psnr=("psnr", "mean"), n_images=("image", "size")).reset_index()
    return table[BUDGET_COLUMNS].sort_values(keys, ignore_index=True)


def collect(settings: BudgetSettings) -> pd.DataFrame:
    """budget.csv's rows: the Gauss row (steps 0) and every seed's rows."""
    return means(collect_images(settings))


def task_margins(images: pd.DataFrame, tolerance: Tolerance, **bootstrap) -> pd.DataFrame:
    """Every column's margin with its interval and verdict (TASK_MARGIN_COLUMNS), at every budget.

    Gauss (steps 0) is compared with every run at its tuned settings; Proposed - Control pairs the
    two priors of one (steps, seed, settings); the images are paired (mtdeq.verdict.paired_margin).
    τ = the larger tolerance of the two priors' rows (TOLERANCE_ROW).  Only tasks present on both
    sides count.
    """
    gauss = images[images["prior"] == "gauss"]
    runs = images[images["prior"] != "gauss"]
    records = []
    for (steps, seed, setting), group in runs.groupby(["steps", "seed", "settings"], sort=True):
        by_prior = {p: g for p, g in group.groupby("prior")}
        by_prior["gauss"] = gauss
        for name, (ahead, behind) in COMPARISONS.items():
            if ahead not in by_prior or behind not in by_prior:
                continue
            a, b = by_prior[ahead], by_prior[behind]
            for task in sorted(set(a["task"]) & set(b["task"]), key=_task_order):
                table = a.loc[a["task"] == task, "table"].iloc[0]
                tau = vd.margin_tolerance(tolerance, table, TOLERANCE_ROW[ahead], TOLERANCE_ROW[behind])
                margin = vd.paired_margin(a[a["task"] == task], b[b["task"] == task], tolerance=tau,
                                          prior_name=ahead, baseline_name=behind, table=table, task=task,
                                          **bootstrap)
                records.append({"steps": steps, "seed": seed, "settings": setting, "comparison": name,
                                **asdict(margin)})
    return pd.DataFrame(records, columns=TASK_MARGIN_COLUMNS)


def _task_order(task: str) -> tuple:
    """Sort key: the tasks in the paper's column order (TASK_LABELS), unknown ones last."""
    order = list(TASK_LABELS)
    return (order.index(task) if task in order else len(order), task)


def margins(per_task: pd.DataFrame) -> pd.DataFrame:
    """Mean margin and W/T/L counts of the verdicts per (steps, seed, settings, table, comparison)."""
    if per_task.empty:
        return pd.DataFrame(columns=MARGIN_COLUMNS)
    summary = vd.counts(per_task, by=("steps", "seed", "settings", "table", "comparison"))
    return summary[MARGIN_COLUMNS].sort_values(["steps", "seed", "settings", "table", "comparison"],
                                              ignore_index=True)


def paper_margins(paper_path: str | Path) -> dict[str, float]:
    """The paper's mean Proposed - Gauss margin per table (over the tasks of that table)."""
    paper = read_paper(paper_path)
    result = {}
    for table in TABLES:
        rows = paper[paper["table"] == table].pivot_table(index="task", columns="method", values="psnr")
        if {"proposed", "gauss"} <= set(rows.columns):
            result[table] = float((rows["proposed"] - rows["gauss"]).mean())
    return result


GROUPS = {"comp": "completion", "blur": "deblurring", "sr": "super-resolution"}  # task prefix -> column group


def group_of(task: str) -> str:
    """The column group of a test task (its name's prefix: comp / blur / sr)."""
    for prefix, group in GROUPS.items():
        if task.startswith(prefix):
            return group
    raise ValueError(f"task {task!r}: no column group (prefixes {sorted(GROUPS)})")


def group_margins(per_task: pd.DataFrame) -> pd.DataFrame:
    """Mean margin over the tasks of each column group, per (steps, seed, settings, comparison, group)."""
    frame = per_task.assign(group=per_task["task"].map(group_of))
    keys = ["steps", "seed", "settings", "comparison", "group"]
    return frame.groupby(keys, sort=True)["margin"].mean().reset_index(name="mean_margin")


def paper_group_margins(paper_path: str | Path) -> dict[str, float]:
    """The paper's mean Proposed - Gauss margin per column group."""
    paper = read_paper(paper_path)
    rows = paper.pivot_table(index="task", columns="method", values="psnr")
    if not {"proposed", "gauss"} <= set(rows.columns):
        return {}
    diff = (rows["proposed"] - rows["gauss"]).dropna()
    return {g: float(v) for g, v in diff.groupby(diff.index.map(group_of)).mean().items()}


def plot(per_task: pd.DataFrame, paper: dict[str, float], path: str | Path, *, scale: str = "") -> None:
    """budget.png: per column group, the mean margin over the seeds vs steps at Gauss's settings, the
    range over the seeds as a band (where 2 or more seeds reach a budget), the paper's margin dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mtdeq.io import write_png_figure

    groups = group_margins(per_task[per_task["settings"] == "gauss"]) if len(per_task) else pd.DataFrame()
    fig, axes = plt.subplots(1, len(GROUPS), figsize=(12, 4), sharey=True)
    styles = {"proposed-gauss": ("-", "tab:blue"), "proposed-control": ("--", "tab:orange")}
    for ax, group in zip(axes, GROUPS.values()):
        for comparison, (style, colour) in styles.items():
            rows = groups[(groups["group"] == group) & (groups["comparison"] == comparison)] if len(groups) else groups
            if rows.empty:
                continue
            over = rows.groupby("steps")["mean_margin"].agg(["mean", "min", "max", "count"]).reset_index()
            ax.plot(over["steps"], over["mean"], style, marker="o", color=colour,
                    label=f"Proposed − {'Gauss' if comparison.endswith('gauss') else 'control'} (mean of seeds)")
            band = over[over["count"] > 1]
            if len(band):
                ax.fill_between(band["steps"], band["min"], band["max"], color=colour, alpha=0.2, linewidth=0,
                                label="range over seeds")
            for r in over.itertuples(index=False):
                ax.annotate(f"n={r.count}", (r.steps, r.mean), textcoords="offset points", xytext=(0, 6),
                            fontsize=6, ha="center", color=colour)
        if group in paper:
            ax.axhline(paper[group], color="tab:blue", linestyle=":", linewidth=1.2,
                       label="paper, Proposed − Gauss (134k steps)")
        ax.axhline(0.0, color="black", linewidth=0.6)
        ax.set_xscale("log")
        ax.set_xlabel("MTDEQ / control training steps")
        ax.set_title(group)
    axes[0].set_ylabel("mean PSNR margin over the group's columns (dB)")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes[1:]:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=4)
    fig.suptitle(f"Does the gain grow with training?{f' ({scale} scale)' if scale else ''} — Gauss's settings, "
                 "n = seeds")
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    write_png_figure(path, fig)


TREND_COLUMNS = ["comparison", "group", "table", "from_steps", "to_steps", "n_seeds", "n_images", "change", "ci_low",
                 "ci_high", "tolerance", "verdict", "seed_sd"]
FIT_COLUMNS = ["comparison", "group", "budgets", "margin_last", "slope_per_doubling", "paper_steps",
               "extrapolated", "paper_margin", "steps_to_paper"]
TRENDS = ("proposed-gauss", "proposed-control")


def group_image_margins(images: pd.DataFrame) -> pd.DataFrame:
    """Per (steps, seed, comparison, group, image): the comparison's PSNR margin on that image, averaged
    over the group's tasks (Gauss's settings only; Gauss is the steps-0 row of every budget)."""
    runs = images[(images["prior"] != "gauss") & (images["settings"] == "gauss")]
    gauss = images[images["prior"] == "gauss"].set_index(["task", "image"])["psnr"]
    wide = runs.pivot_table(index=["steps", "seed", "task", "image"], columns="prior", values="psnr").reset_index()
    wide["gauss"] = gauss.reindex(pd.MultiIndex.from_frame(wide[["task", "image"]])).to_numpy()
    frames = []
    for name in TRENDS:
        ahead, behind = COMPARISONS[name]
        if ahead not in wide or behind not in wide:
            continue
        part = wide[["steps", "seed", "task", "image"]].assign(comparison=name, group=wide["task"].map(group_of),
                                                              margin=wide[ahead] - wide[behind])
        frames.append(part.dropna(subset=["margin"]))
    if not frames:
        return pd.DataFrame(columns=["steps", "seed", "comparison", "group", "image", "margin"])
    return (pd.concat(frames).groupby(["steps", "seed", "comparison", "group", "image"], sort=True)["margin"]
            .mean().reset_index())


def trend(images: pd.DataFrame, per_image: pd.DataFrame, tolerance: Tolerance, **bootstrap) -> pd.DataFrame:
    """Does the margin still grow?  For each comparison (Proposed − Gauss, Proposed − control) and column
    group, the change of the group's margin between consecutive budgets (TREND_COLUMNS), paired on the
    images and on the seeds that reached both budgets (each seed's later model against its own earlier
    one), with the verdict rule of mtdeq.verdict: W = still growing, T = flat within the interval or
    τ, L = shrinking.  τ = the tolerance of the Proposed row in the group's table (its reproducibility
    across CPUs); seed_sd = the spread of the per-seed changes (NaN with one seed).  ``per_image``:
    group_image_margins(images); ``images`` gives each group's table."""
    table_of = images.drop_duplicates("task").assign(group=lambda f: f["task"].map(group_of))
    table_of = table_of.groupby("group")["table"].first().to_dict()
    steps = sorted(set(per_image["steps"]))
    records = []
    for (name, group), rows in per_image.groupby(["comparison", "group"], sort=True):
        table = table_of[group]
        tau = vd.margin_tolerance(tolerance, table, TOLERANCE_ROW["proposed"],
                                  TOLERANCE_ROW["control" if name == "proposed-control" else "proposed"])
        for low, high in zip(steps, steps[1:]):
            seeds = sorted(set(rows.loc[rows["steps"] == low, "seed"]) & set(rows.loc[rows["steps"] == high, "seed"]))
            if not seeds:
                continue
            later = rows[(rows["steps"] == high) & rows["seed"].isin(seeds)].rename(columns={"margin": "psnr"})
            earlier = rows[(rows["steps"] == low) & rows["seed"].isin(seeds)].rename(columns={"margin": "psnr"})
            change = vd.paired_margin(later, earlier, tolerance=tau, prior_name=f"{high}", baseline_name=f"{low}",
                                      table=table, task=group, **bootstrap)
            per_seed = [float(later[later["seed"] == s]["psnr"].mean() - earlier[earlier["seed"] == s]["psnr"].mean())
                        for s in seeds]
            records.append({"comparison": name, "group": group, "table": table, "from_steps": low, "to_steps": high,
                            "n_seeds": len(seeds), "n_images": change.n_images, "change": change.margin,
                            "ci_low": change.ci_low, "ci_high": change.ci_high, "tolerance": tau,
                            "verdict": change.verdict,
                            "seed_sd": float(pd.Series(per_seed).std(ddof=1)) if len(seeds) > 1 else float("nan")})
    frame = pd.DataFrame(records, columns=TREND_COLUMNS)
    return frame.sort_values("comparison", key=lambda c: c.map(TRENDS.index), kind="stable", ignore_index=True)


def extrapolate(per_image: pd.DataFrame, paper_steps: float | None, paper: dict[str, float]) -> pd.DataFrame:
    """A straight line in log2(steps) through the seed-mean group margins (``per_image``:
    group_image_margins) at every budget (least squares),
    evaluated at ``paper_steps`` (the paper's training crops in this run's steps) and solved for the
    steps at which it would reach the paper's group margin (Proposed − Gauss only; NaN when the slope
    is not positive).  FIT_COLUMNS.  A description of the measured points, not a prediction."""
    import numpy as np

    means_ = per_image.groupby(["comparison", "group", "steps", "seed"])["margin"].mean().groupby(
        ["comparison", "group", "steps"]).mean().reset_index()
    records = []
    for (name, group), rows in means_.groupby(["comparison", "group"], sort=True):
        rows = rows.sort_values("steps")
        if len(rows) < 2:
            continue
        x, y = np.log2(rows["steps"].to_numpy(float)), rows["margin"].to_numpy(float)
        slope, intercept = np.polyfit(x, y, 1)
        target = paper.get(group, float("nan")) if name == "proposed-gauss" else float("nan")
        reach = 2.0 ** ((target - intercept) / slope) if slope > 0 and np.isfinite(target) else float("nan")
        records.append({"comparison": name, "group": group, "budgets": "/".join(str(int(k)) for k in rows["steps"]),
                        "margin_last": float(y[-1]), "slope_per_doubling": float(slope),
                        "paper_steps": float(paper_steps) if paper_steps else float("nan"),
                        "extrapolated": float(intercept + slope * np.log2(paper_steps)) if paper_steps else float("nan"),
                        "paper_margin": target, "steps_to_paper": reach})
    frame = pd.DataFrame(records, columns=FIT_COLUMNS)
    return frame.sort_values("comparison", key=lambda c: c.map(TRENDS.index), kind="stable", ignore_index=True)


def trend_markdown(changes: pd.DataFrame, fit: pd.DataFrame, scale: str = "") -> str:
    """The "where does it flatten?" section of margins.md: the changes between budgets and the fit."""
    lines = [f"## Where does the curve flatten?{f' — scale {scale}' if scale else ''}", "",
             "Change of the mean margin over each column group between consecutive budgets, Gauss's settings, "
             "paired on the images and on the seeds that reached both budgets, dB [95 % bootstrap interval over "
             "the images]: W = still growing (interval above 0 and change > τ), T = flat within the noise, "
             "L = shrinking. seed sd: the spread of the per-seed changes.", "",
             "| Comparison | Group | Steps | Seeds | Change [95 % interval] | τ | Verdict | seed sd |",
             "|---|---|---|---:|---:|---:|---|---:|"]
    for r in changes.itertuples(index=False):
        sd = "—" if pd.isna(r.seed_sd) else f"{r.seed_sd:.2f}"
        lines.append(f"| {NAMES[r.comparison]} | {r.group} | {r.from_steps} → {r.to_steps} | {r.n_seeds} | "
                     f"{r.change:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}] | {r.tolerance:.2f} | "
                     f"{vd.LETTER[r.verdict]} | {sd} |")
    if len(fit):
        paper_steps = fit["paper_steps"].iloc[0]
        lines += ["", "A straight line in log2(steps) through the seed-mean group margins (least squares over the "
                  "budgets), evaluated at the paper's training budget"
                  + (f" ({paper_steps:,.0f} steps of this run's batch: the paper's crops)" if pd.notna(paper_steps)
                     else "") + ", and the steps at which it would reach the paper's margin:", "",
                  "| Comparison | Group | Budgets | Margin at the last | Slope per doubling | At the paper's budget "
                  "| Paper | Steps to the paper's margin |", "|---|---|---|---:|---:|---:|---:|---:|"]
        for r in fit.itertuples(index=False):
            def num(v, fmt):
                return "—" if pd.isna(v) else format(v, fmt)
            steps = num(r.steps_to_paper, ",.0f" if pd.isna(r.steps_to_paper) or r.steps_to_paper < 1e9 else ".1e")
            lines.append(f"| {NAMES[r.comparison]} | {r.group} | {r.budgets} | {r.margin_last:+.2f} | "
                         f"{r.slope_per_doubling:+.3f} | {num(r.extrapolated, '+.2f')} | {num(r.paper_margin, '+.2f')} "
                         f"| {steps} |")
    return "\n".join(lines) + "\n"


NAMES = {"proposed-gauss": "Proposed − Gauss", "proposed-control": "Proposed − control",
         "control-gauss": "control − Gauss"}


def to_markdown(margin: pd.DataFrame, paper: dict[str, float], scale: str = "",
                per_task: pd.DataFrame | None = None, tolerance: Tolerance | None = None) -> str:
    """The margins per budget as Markdown: mean margin (columns won / columns) per table and comparison,
    then, with ``per_task``, every column's margin [95 % interval] and verdict."""
    cols = [(c, t) for c in ("proposed-gauss", "proposed-control", "control-gauss") for t in TABLES]
    lines = [f"## Does the gain grow with training?{f' — scale {scale}' if scale else ''}", "",
             "Mean PSNR margin over the test tasks of each table, dB (columns won / columns; a column is won "
             "when its 95 % bootstrap interval over the images lies above 0 and its margin exceeds the "
             "reproducibility tolerance, mtdeq/verdict.py).", "",
             "| Steps | Seed | Settings | " + " | ".join(f"{NAMES[c]}, {TABLES[t]}" for c, t in cols) + " |",
             "|---:|---:|---|" + "---:|" * len(cols)]
    for (steps, seed, setting), group in margin.groupby(["steps", "seed", "settings"], sort=True):
        by = {(r.comparison, r.table): r for r in group.itertuples(index=False)}
        cells = [f"{by[k].mean_margin:+.2f} ({by[k].wins}/{by[k].n_tasks})" if k in by else "—" for k in cols]
        lines.append(f"| {steps} | {seed} | {setting} | " + " | ".join(cells) + " |")
    if paper:
        lines += ["", "Paper (134k steps), Proposed − Gauss: "
                  + ", ".join(f"{TABLES[t]} {v:+.2f}" for t, v in paper.items()) + "."]
    if per_task is not None and len(per_task):
        tasks = sorted(set(per_task["task"]), key=_task_order)
        lines += ["", "### Every column: margin [95 % interval] and verdict", "",
                  "W: interval above 0 and margin > τ; L: interval below 0 and margin < −τ; T otherwise; τ = the "
                  "larger tolerance of the two rows"
                  + (f" ({tolerance.source})" if tolerance is not None else "") + ". W/T/L: over all columns.", ""]
        if per_task["degenerate"].any():
            lines += ["With 3 or fewer images the interval is the range of the per-image differences: a W or L "
                      "then says only that every image agrees in sign.", ""]
        lines += ["| Steps | Seed | Settings | Comparison | W/T/L | " + " | ".join(TASK_LABELS.get(t, t) for t in tasks)
                  + " |", "|---:|---:|---|---|---:|" + "---:|" * len(tasks)]
        for (steps, seed, setting, comparison), group in per_task.groupby(RUN_KEY, sort=True):
            rows = group.set_index("task")
            verdicts = list(group["verdict"])
            cells = [vd.format_margin(rows.loc[t, "margin"], rows.loc[t, "ci_low"], rows.loc[t, "ci_high"],
                                      rows.loc[t, "verdict"]) if t in rows.index else "—" for t in tasks]
            counts = vd.format_counts(verdicts.count(vd.WIN), verdicts.count(vd.TIE), verdicts.count(vd.LOSS))
            lines.append(f"| {steps} | {seed} | {setting} | {NAMES[comparison]} | {counts} | " + " | ".join(cells)
                         + " |")
    return "\n".join(lines) + "\n"


def task_margins_path(settings: BudgetSettings) -> Path:
    """Where the per-column verdicts go: settings.task_margins, else margins_per_task.csv beside margins.csv."""
    if settings.task_margins:
        return Path(settings.task_margins)
    return Path(settings.margins).with_name("margins_per_task.csv")


def run(settings: BudgetSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Collect, judge the margins, write the CSVs, margins.md and the figure (all or nothing on error)."""
    from mtdeq.io import atomic_write_text

    tolerance = tolerance_or_fallback(settings.tolerance)
    images = collect_images(settings)
    budget = means(images)
    per_task = task_margins(images, tolerance)
    margin = margins(per_task)
    paper = paper_margins(settings.paper)
    plot(per_task, paper_group_margins(settings.paper), settings.figure, scale=settings.scale)
    per_image = group_image_margins(images)
    changes = trend(images, per_image, tolerance)
    fit = extrapolate(per_image, settings.paper_steps, paper_group_margins(settings.paper))
    atomic_write_text(Path(settings.margins).with_suffix(".md"),
                      to_markdown(margin, paper, settings.scale, per_task, tolerance) + "\n"
                      + trend_markdown(changes, fit, settings.scale))
    atomic_write_text(settings.out, budget.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(task_margins_path(settings), per_task.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(settings.margins, margin.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(Path(settings.margins).with_name("trend.csv"), changes.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(Path(settings.margins).with_name("extrapolation.csv"),
                      fit.to_csv(index=False, float_format="%.4f"))
    return budget, margin


def _run(args: argparse.Namespace) -> int:
    settings = BudgetSettings(rows=tuple(args.rows), gauss_dir=args.gauss_dir, paper=args.paper, out=args.out,
                              margins=args.margins, figure=args.figure, seed=args.seed, scale=args.scale,
                              tolerance=args.tolerance, task_margins=args.task_margins, budget_id=args.budget_id,
                              paper_steps=args.paper_steps)
    _, margin = run(settings)
    print(f"tolerance of the verdicts: {tolerance_or_fallback(settings.tolerance).source}")
    for _, r in margin.iterrows():
        print(f"steps {r['steps']:>6} seed {r['seed']} {r['settings']:5} {r['table']} {r['comparison']:16} "
              f"{r['mean_margin']:+.3f} dB, W/T/L {r['wins']}/{r['ties']}/{r['losses']} of {r['n_tasks']}")
    print(f"wrote {settings.out}, {settings.margins} (+ trend.csv, extrapolation.csv beside it), "
          f"{task_margins_path(settings)}, {settings.figure}")
    return 0


def _run_rows(args: argparse.Namespace) -> int:
    from mtdeq.io import atomic_write_text

    rows = seed_rows(args.evals, args.runs, args.seed, args.budget_id)
    atomic_write_text(args.out, rows.to_csv(index=False, float_format="%.6f"))
    runs = rows.groupby(["prior", "steps", "settings"]).size()
    print(f"seed {args.seed}: {len(rows)} rows of {len(runs)} (prior, steps, settings) runs -> {args.out}")
    return 0


def register(subparsers) -> None:
    """Add the ``budget-rows`` and ``budget`` stages."""
    p = add_stage(subparsers, "budget-rows", "one seed of the training-budget curve: its per-image rows", __doc__)
    p.add_argument("evals", nargs="+", help="the seed's evaluation CSVs, <runs>/<prior>/s<seed>/<steps>/<settings>/"
                   "<task>.csv")
    p.add_argument("--runs", required=True, help="the folder the evaluation paths are relative to")
    p.add_argument("--seed", type=int, required=True, help="the seed these evaluations belong to")
    p.add_argument("--budget-id", required=True, help="digest of the config the rows were produced under "
                   "(workflow/rules/common.smk: budget_id); budget refuses rows of another one")
    p.add_argument("--out", required=True, help="rows/s<seed>.csv to write")
    p.set_defaults(func=_run_rows)

    p = add_stage(subparsers, "budget", "combine the seeds' rows: budget.csv, margins, budget.png", __doc__)
    p.add_argument("--rows", nargs="+", required=True, help="one rows/s<seed>.csv per seed (budget-rows)")
    p.add_argument("--budget-id", default=None, help="the config's digest; every rows file must carry it "
                   "(default: they must agree with each other)")
    p.add_argument("--gauss-dir", required=True, help="the Gauss row's per-task CSVs, e.g. results/quick/eval/gauss")
    p.add_argument("--paper", default="results/paper/paper_tables.csv", help="the paper's numbers")
    p.add_argument("--out", required=True, help="budget.csv to write")
    p.add_argument("--margins", required=True, help="margins.csv to write")
    p.add_argument("--figure", required=True, help="budget.png to write")
    p.add_argument("--seed", type=int, default=0, help="seed recorded for the Gauss row (the main run's)")
    p.add_argument("--scale", default="", help="scale name for the figure title")
    p.add_argument("--tolerance", default=None,
                   help="the reference's tolerance.yaml (e.g. results/reference/quick/tolerance.yaml), used by the "
                   "verdicts when it exists; otherwise the fallback of mtdeq.tolerance for every row")
    p.add_argument("--task-margins", default=None,
                   help="per-column margins with intervals and verdicts to write (default: margins_per_task.csv "
                   "beside --margins)")
    p.add_argument("--paper-steps", type=float, default=None,
                   help="the paper's training budget in this run's steps (its steps x batch / this batch): where "
                   "extrapolation.csv evaluates the straight line in log2(steps); default: not evaluated")
    p.set_defaults(func=_run)
