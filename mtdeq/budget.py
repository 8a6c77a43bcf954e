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

into ``budget.csv`` (columns BUDGET_COLUMNS: the mean PSNR over the test images per row), the mean
margins per budget into ``margins.csv`` and ``margins.md`` (MARGIN_COLUMNS: Proposed - Gauss, Control - Gauss and
Proposed - Control per table, with the count of tasks where the first is ahead), and draws
``budget.png``: the mean margin against the number of steps, one line per table and comparison,
the seed spread as a band where a second seed was trained, and the paper's Proposed - Gauss
margin as a dotted line (the paper trained 134k steps; the line marks where it ended, not a point
of the curve).
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mtdeq.cli import add_stage
from mtdeq.tables import TABLES, read_paper, table_tasks

BUDGET_COLUMNS = ["steps", "prior", "seed", "settings", "table", "task", "psnr", "n_images"]
MARGIN_COLUMNS = ["steps", "seed", "settings", "table", "comparison", "mean_margin", "wins", "n_tasks"]
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


def _mean_row(path: Path) -> tuple[float, int]:
    frame = pd.read_csv(path)
    if "psnr" not in frame.columns or frame.empty:
        raise ValueError(f"{path}: expected a per-image evaluation CSV with a psnr column")
    return float(frame["psnr"].mean()), len(frame)


def collect(settings: BudgetSettings) -> pd.DataFrame:
    """budget.csv's rows: the Gauss row (steps 0) and every run found under settings.runs."""
    paper = read_paper(settings.paper)
    table_of = {task: table for table in TABLES for task in table_tasks(paper, table)}
    rows = []
    gauss_files = sorted(Path(settings.gauss_dir).glob("*.csv"))
    if not gauss_files:
        raise FileNotFoundError(f"{settings.gauss_dir}: no Gauss evaluation CSVs (<task>.csv)")
    for path in gauss_files:
        psnr, n = _mean_row(path)
        rows.append(dict(steps=0, prior="gauss", seed=settings.seed, settings="gauss", task=path.stem,
                         psnr=psnr, n_images=n))
    runs = Path(settings.runs)
    found = 0
    for path in sorted(runs.glob("*/s*/*/*/*.csv")):
        match = _RUN.match(path.relative_to(runs).as_posix())
        if match is None or match["prior"] not in PRIORS or match["settings"] not in SETTINGS:
            raise ValueError(f"{path}: not <prior>/s<seed>/<steps>/<settings>/<task>.csv with prior in {PRIORS} "
                             f"and settings in {SETTINGS}")
        psnr, n = _mean_row(path)
        rows.append(dict(steps=int(match["steps"]), prior=match["prior"], seed=int(match["seed"]),
                         settings=match["settings"], task=match["task"], psnr=psnr, n_images=n))
        found += 1
    if found == 0:
        raise FileNotFoundError(f"{runs}: no budget evaluations (<prior>/s<seed>/<steps>/<settings>/<task>.csv)")
    table = pd.DataFrame(rows)
    unknown = sorted(set(table["task"]) - set(table_of))
    if unknown:
        raise ValueError(f"tasks {unknown} are in no table of {settings.paper}")
    table["table"] = table["task"].map(table_of)
    return table[BUDGET_COLUMNS].sort_values(["steps", "prior", "seed", "settings", "table", "task"],
                                             ignore_index=True)


def margins(budget: pd.DataFrame) -> pd.DataFrame:
    """Mean margin and win count per (steps, seed, settings, table, comparison).

    Gauss (steps 0) is compared with every run at its tuned settings; Proposed - Control pairs the
    two priors of one (steps, seed, settings).  Only tasks present on both sides count.
    """
    gauss = budget[budget["prior"] == "gauss"].set_index("task")["psnr"]
    runs = budget[budget["prior"] != "gauss"]
    out = []
    for (steps, seed, setting), group in runs.groupby(["steps", "seed", "settings"]):
        by_prior = {p: g.set_index("task")["psnr"] for p, g in group.groupby("prior")}
        by_prior["gauss"] = gauss
        for name, (ahead, behind) in COMPARISONS.items():
            if ahead not in by_prior or behind not in by_prior:
                continue
            diff = (by_prior[ahead] - by_prior[behind]).dropna()
            for table in TABLES:
                d = diff[diff.index.isin(group.loc[group["table"] == table, "task"])]
                if d.empty:
                    continue
                out.append(dict(steps=steps, seed=seed, settings=setting, table=table, comparison=name,
                                mean_margin=float(d.mean()), wins=int((d > 0).sum()), n_tasks=len(d)))
    return pd.DataFrame(out, columns=MARGIN_COLUMNS)


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


def to_markdown(margin: pd.DataFrame, paper: dict[str, float], scale: str = "") -> str:
    """The margins per budget as Markdown: mean margin (tasks ahead / tasks) per table and comparison."""
    cols = [(c, t) for c in ("proposed-gauss", "proposed-control", "control-gauss") for t in TABLES]
    names = {"proposed-gauss": "Proposed − Gauss", "proposed-control": "Proposed − control",
             "control-gauss": "control − Gauss"}
    lines = [f"## Does the gain grow with training?{f' — scale {scale}' if scale else ''}", "",
             "Mean PSNR margin over the test tasks of each table, dB (tasks ahead / tasks).", "",
             "| Steps | Seed | Settings | " + " | ".join(f"{names[c]}, {TABLES[t]}" for c, t in cols) + " |",
             "|---:|---:|---|" + "---:|" * len(cols)]
    for (steps, seed, setting), group in margin.groupby(["steps", "seed", "settings"], sort=True):
        by = {(r.comparison, r.table): r for r in group.itertuples(index=False)}
        cells = [f"{by[k].mean_margin:+.2f} ({by[k].wins}/{by[k].n_tasks})" if k in by else "—" for k in cols]
        lines.append(f"| {steps} | {seed} | {setting} | " + " | ".join(cells) + " |")
    if paper:
        lines += ["", "Paper (134k steps), Proposed − Gauss: "
                  + ", ".join(f"{TABLES[t]} {v:+.2f}" for t, v in paper.items()) + "."]
    return "\n".join(lines) + "\n"


def run(settings: BudgetSettings) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Collect, compute the margins, write the two CSVs and the figure (all or nothing on error)."""
    from mtdeq.io import atomic_write_text

    budget = collect(settings)
    margin = margins(budget)
    paper = paper_margins(settings.paper)
    plot(margin, paper, settings.figure, scale=settings.scale)
    atomic_write_text(Path(settings.margins).with_suffix(".md"), to_markdown(margin, paper, settings.scale))
    atomic_write_text(settings.out, budget.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(settings.margins, margin.to_csv(index=False, float_format="%.4f"))
    return budget, margin


def _run(args: argparse.Namespace) -> int:
    settings = BudgetSettings(runs=args.runs, gauss_dir=args.gauss_dir, paper=args.paper, out=args.out,
                              margins=args.margins, figure=args.figure, seed=args.seed, scale=args.scale)
    _, margin = run(settings)
    for _, r in margin.iterrows():
        print(f"steps {r['steps']:>6} seed {r['seed']} {r['settings']:5} {r['table']} {r['comparison']:16} "
              f"{r['mean_margin']:+.3f} dB, ahead in {r['wins']}/{r['n_tasks']}")
    print(f"wrote {settings.out}, {settings.margins}, {settings.figure}")
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
    p.set_defaults(func=_run)
