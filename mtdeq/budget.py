"""``budget``: does the MTDEQ gain grow with training?  The training-budget curve.

The target ``budget`` (workflow/rules/budget.smk) trains the MTDEQ prior and the same-budget
control (the Gauss prior trained further as a plain denoiser, with the MTDEQ run's steps, batch,
crop and learning rate) as one run each, saving the model at every budget of ``budget.steps``
(one resume state shared by the budgets, mtdeq.train.state), retrains both with a second seed up
to one budget, and evaluates every saved model on the 12 Set5 tasks with the Gauss prior's tuned
settings (and, at the largest budget, also with each prior's own tuned settings).  The Gauss row
itself is the main run's evaluation (steps 0).

This stage collects those per-image CSVs,

    <runs>/<prior>/s<seed>/<steps>/<settings>/<task>.csv   prior: proposed | control,
                                                           settings: gauss | own
    <gauss-dir>/<task>.csv                                 the Gauss row (steps 0)

into ``budget.csv`` (columns BUDGET_COLUMNS: the mean PSNR over the test images per row), judges every
column's margin with the suite's verdict rule (mtdeq.verdict: the paired per-image differences, their
95 % bootstrap interval over the images, win / tie / loss against the reproducibility tolerance of
--tolerance, the reference's tolerance.yaml; rows proposed -> ``proposed``, control -> ``gauss_budget``,
gauss -> ``gauss``) into ``--task-margins`` (TASK_MARGIN_COLUMNS, one row per steps x seed x settings x
comparison x task), and summarises them per table into ``margins.csv`` and ``margins.md``
(MARGIN_COLUMNS: Proposed - Gauss, Control - Gauss and Proposed - Control per table, the mean margin
over the tasks and the W/T/L counts of the verdicts; ``wins`` is no longer "ahead by any amount"), and draws
``budget.png``: the mean margin against the number of steps, one line per table and comparison,
the seed spread as a band where a second seed was trained, and the paper's Proposed - Gauss
margin as a dotted line (the paper trained 134k steps; the line marks where it ended, not a point
of the curve).
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

    runs: str
    gauss_dir: str
    paper: str
    out: str
    margins: str
    figure: str
    seed: int = 0
    scale: str = ""
    tolerance: str | None = None  # tolerance.yaml of the reference (mtdeq.tolerance); None/absent -> fallback
    task_margins: str | None = None  # per-column verdicts CSV; None -> margins_per_task.csv beside --margins


def _image_rows(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    if not {"image", "psnr"} <= set(frame.columns) or frame.empty:
        raise ValueError(f"{path}: expected a per-image evaluation CSV with image and psnr columns")
    return frame[["image", "psnr"]]


def collect_images(settings: BudgetSettings) -> pd.DataFrame:
    """The per-image rows (IMAGE_COLUMNS) of the Gauss row (steps 0) and of every run under settings.runs."""
    paper = read_paper(settings.paper)
    table_of = {task: table for table in TABLES for task in table_tasks(paper, table)}
    frames = []
    gauss_files = sorted(Path(settings.gauss_dir).glob("*.csv"))
    if not gauss_files:
        raise FileNotFoundError(f"{settings.gauss_dir}: no Gauss evaluation CSVs (<task>.csv)")
    for path in gauss_files:
        frames.append(_image_rows(path).assign(steps=0, prior="gauss", seed=settings.seed, settings="gauss",
                                               task=path.stem))
    runs = Path(settings.runs)
    found = 0
    for path in sorted(runs.glob("*/s*/*/*/*.csv")):
        match = _RUN.match(path.relative_to(runs).as_posix())
        if match is None or match["prior"] not in PRIORS or match["settings"] not in SETTINGS:
            raise ValueError(f"{path}: not <prior>/s<seed>/<steps>/<settings>/<task>.csv with prior in {PRIORS} "
                             f"and settings in {SETTINGS}")
        frames.append(_image_rows(path).assign(steps=int(match["steps"]), prior=match["prior"],
                                               seed=int(match["seed"]), settings=match["settings"],
                                               task=match["task"]))
        found += 1
    if found == 0:
        raise FileNotFoundError(f"{runs}: no budget evaluations (<prior>/s<seed>/<steps>/<settings>/<task>.csv)")
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
    """budget.csv's rows: the Gauss row (steps 0) and every run found under settings.runs."""
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


def plot(margin: pd.DataFrame, paper: dict[str, float], path: str | Path, *, scale: str = "") -> None:
    """budget.png: mean margin vs steps at Gauss's settings; seed band; the paper's margin dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mtdeq.io import write_png_figure

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colours = {"table1": "tab:blue", "table2": "tab:orange"}
    styles = {"proposed-gauss": "-", "proposed-control": "--"}
    at_gauss = margin[margin["settings"] == "gauss"]
    for table, colour in colours.items():
        for comparison, style in styles.items():
            rows = at_gauss[(at_gauss["table"] == table) & (at_gauss["comparison"] == comparison)]
            if rows.empty:
                continue
            per_steps = rows.groupby("steps")["mean_margin"]
            main = rows[rows["seed"] == rows["seed"].min()].sort_values("steps")
            label = f"{TABLES[table]}: Proposed − {'Gauss' if comparison.endswith('gauss') else 'control'}"
            ax.plot(main["steps"], main["mean_margin"], style, marker="o", color=colour, label=label)
            spread = per_steps.agg(["min", "max", "count"])
            spread = spread[spread["count"] > 1]
            for steps, r in spread.iterrows():  # a band where a second seed was trained
                ax.fill_between([steps * 0.93, steps * 1.07], r["min"], r["max"], color=colour, alpha=0.25,
                                linewidth=0)
        if table in paper:
            ax.axhline(paper[table], color=colour, linestyle=":", linewidth=1.2,
                       label=f"{TABLES[table]}: paper, Proposed − Gauss (134k steps)")
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("MTDEQ / control training steps")
    ax.set_ylabel("mean PSNR margin (dB)")
    ax.set_title(f"Does the gain grow with training?{f' ({scale} scale)' if scale else ''}")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    write_png_figure(path, fig)


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
    plot(margin, paper, settings.figure, scale=settings.scale)
    atomic_write_text(Path(settings.margins).with_suffix(".md"),
                      to_markdown(margin, paper, settings.scale, per_task, tolerance))
    atomic_write_text(settings.out, budget.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(task_margins_path(settings), per_task.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(settings.margins, margin.to_csv(index=False, float_format="%.4f"))
    return budget, margin


def _run(args: argparse.Namespace) -> int:
    settings = BudgetSettings(runs=args.runs, gauss_dir=args.gauss_dir, paper=args.paper, out=args.out,
                              margins=args.margins, figure=args.figure, seed=args.seed, scale=args.scale,
                              tolerance=args.tolerance, task_margins=args.task_margins)
    _, margin = run(settings)
    print(f"tolerance of the verdicts: {tolerance_or_fallback(settings.tolerance).source}")
    for _, r in margin.iterrows():
        print(f"steps {r['steps']:>6} seed {r['seed']} {r['settings']:5} {r['table']} {r['comparison']:16} "
              f"{r['mean_margin']:+.3f} dB, W/T/L {r['wins']}/{r['ties']}/{r['losses']} of {r['n_tasks']}")
    print(f"wrote {settings.out}, {settings.margins}, {task_margins_path(settings)}, {settings.figure}")
    return 0


def register(subparsers) -> None:
    """Add the ``budget`` stage."""
    p = add_stage(subparsers, "budget", "collect the training-budget runs: budget.csv, margins, budget.png", __doc__)
    p.add_argument("--runs", required=True, help="folder of <prior>/s<seed>/<steps>/<settings>/<task>.csv")
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
    p.set_defaults(func=_run)
