"""Tables I and II: mean Set5 PSNR per (method, task), beside the paper's reported values.

Input: the per-image CSVs ``<eval-dir>/<method>/<task>.csv`` of the evaluate stage and the
paper's numbers ``results/paper/paper_tables.csv`` (long: table, method, task, psnr).
For table t in {table1, table2} the stage writes into --out-dir:

``<t>.csv`` (machine-readable, one row per method in the paper's order)
    columns ``method`` (the paper's row label), ``key`` (method name of the eval CSVs),
    ``kind`` and, for every task of the table in the paper's column order, three columns:
    ``<task>`` (ours: mean PSNR over the images, dB), ``<task> paper`` (the paper's value)
    and ``<task> Δ`` (ours - paper).  Empty cell = not available.  A method evaluated with
    several training seeds (eval methods m and ``m_seed<s>``) has as its cell the mean over
    the seeds per image, then over the images (mtdeq.per_image); ``kind`` is
      ours     a method we run (RED, ST Comp, ST SR, Gauss, Gauss + same budget, Proposed);
      paper    reported by the paper only, never run by us (pnP-ReG);
      derived  a difference of two rows ("Proposed vs. Gauss" = Proposed - Gauss, for ours
               and for the paper; "Proposed vs. Gauss + same budget", ours only);
      extra    any other method found in the eval dir (a labelled extra analysis), after the
               rows above: ``<m>_own`` = prior m evaluated with PnP-ADMM settings tuned for
               itself on the validation set ("Proposed (own settings)", ...),
               ``<m>_seed<s>`` = prior m retrained with seed s ("Proposed (seed s)", "ST Comp
               (seed s)", ..., that seed alone; the row m is then the mean over the seeds),
               anything else "<name> (extra)"; followed by the derived rows
               "Proposed (own settings) vs. Gauss" and "Proposed (own settings) vs. Gauss + same
               budget (own settings)" when both of their rows exist (ours only).
``<t>.provenance.json``
    scale, code version (git commit, versions), the config given by --config-json, the
    number and names of the images behind every cell, and the column description.
``<t>.md``
    a header naming the scale that produced our numbers, a table of ours with the paper's
    value in parentheses (bold = best, underlined = second best among kind "ours", per
    column, on the values as printed; a Gauss or RED cell that has not converged -- its
    mean PSNR moves by more than CONVERGED_DB = 0.1 dB with twice the iterations, from the
    --budget-check columns -- is marked † with a footnote giving its 2K - K and is left out
    of the ranking), the margin rows "Proposed vs. Gauss" / "... + same budget" as
    ``margin [ci_low, ci_high] W|T|L`` (mtdeq.verdict) with the paper's margin in
    parentheses and a W/T/L count column, a table of the differences ours - paper and, when
    seed rows exist, the run-to-run spread |Proposed (main seed) - Proposed (seed s)| per
    column with the seed standard deviation.
``<t>.html``
    the same page as self-contained HTML (for ``snakemake --report``).
``spread.csv`` (both tables, always written; no data rows without seed rows)
    columns table, task, seed, proposed, proposed_seed, spread = |proposed - proposed_seed| (dB),
    ``proposed`` being the main seed's Proposed.

and, for both tables together (always written, header only when empty):

``per_image.csv``
    the evidence: every row the cells are the mean of (mtdeq.per_image.PER_IMAGE_COLUMNS:
    method, task, image, seed, psnr, ssim, iterations, then psnr_unclipped, psnr_2x,
    iterations_2x where the eval CSVs hold them); ``m_seed<s>`` appears as method m, seed s,
    every other eval method with the main seed (--seed, config ``seed``).  ``check`` audits it.
``margins.csv``
    mtdeq.verdict.MARGIN_COLUMNS, one row per (prior, baseline, task) of MARGIN_PAIRS that
    was evaluated: prior, baseline, table, task, n_images, n_seeds, margin (mean paired
    per-image difference, dB), ci_low, ci_high (95 % bootstrap interval over the images),
    tolerance (τ: the larger of the two rows' tolerances from --tolerance), verdict
    (win / tie / loss), seed_sd (the prior's seed standard deviation; empty for one seed),
    degenerate (3 or fewer images: the interval is the range of the differences).
``margin_counts.csv``
    mtdeq.verdict.COUNT_COLUMNS: per (prior, baseline, table) n_tasks, wins, ties, losses and
    the mean margin; ``margins.md`` shows both as Markdown.
``seeds.csv``
    SEEDS_COLUMNS: per (table, method, task) of a method with several seeds: n_seeds, seeds,
    psnr (the seed-mean cell), seed_sd (sd over seeds of the per-seed means, ddof 1), n_images.

--tolerance names the reference's tolerance.yaml (mtdeq.tolerance); when it is not given or
does not exist every row gets mtdeq.tolerance.FALLBACK_TOLERANCE (0.05 dB), and the source is
printed in margins.md and the provenance.

--methods restricts the tables to those method folders of --eval-dir (the workflow passes
its list, so that extra evaluations lying in the same folder do not change Tables I-II).

A method with no eval CSVs keeps its row when the paper reports it (our cells empty) and is
dropped otherwise; cheap scales may skip methods.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mtdeq import verdict as vd
from mtdeq.cli import add_stage
from mtdeq.paper import (  # noqa: F401 (re-exported: check, budget and heldout import them from here)
    DELTA_SUFFIX, PAPER_SUFFIX, TABLES, TASK_LABELS, fmt_db, read_paper, table_tasks)
from mtdeq.per_image import cell_means, per_image_rows, seed_key, seed_means
from mtdeq.tolerance import Tolerance, tolerance_or_fallback
from mtdeq.validation import (  # noqa: F401 (re-exported for the stage's users and tests)
    BUDGET_CHECK_COLUMNS, CONVERGED_DB, NOT_CONVERGED, VALIDATED, VALIDATION_COLUMNS, _not_converged,
    budget_check, protocol_validation, unconverged_cells, validation_markdown)


@dataclass(frozen=True)
class Row:
    """One table row: ``key`` = eval method name, ``label`` = the paper's row name, ``kind`` (see module doc)."""

    key: str
    label: str
    kind: str


ROWS = (
    Row("red", "RED", "ours"),
    Row("st_comp", "ST Comp", "ours"),
    Row("st_sr", "ST SR", "ours"),
    Row("gauss", "Gauss", "ours"),
    Row("gauss_budget", "Gauss + same budget", "ours"),
    Row("pnp_reg", "pnP-ReG (paper-reported only)", "paper"),
    Row("proposed", "Proposed", "ours"),
    Row("proposed_vs_gauss", "Proposed vs. Gauss", "derived"),
    Row("proposed_vs_gauss_budget", "Proposed vs. Gauss + same budget", "derived"),
)
DERIVED = {
    "proposed_vs_gauss": ("proposed", "gauss"),
    "proposed_vs_gauss_budget": ("proposed", "gauss_budget"),
    "proposed_own_vs_gauss": ("proposed_own", "gauss"),
    "proposed_own_vs_gauss_budget_own": ("proposed_own", "gauss_budget_own"),
}
# derived rows of the extra analysis, after the extra rows (ours only: the paper has no such row)
EXTRA_DERIVED = (
    Row("proposed_own_vs_gauss", "Proposed (own settings) vs. Gauss", "derived"),
    Row("proposed_own_vs_gauss_budget_own", "Proposed (own settings) vs. Gauss + same budget (own settings)",
        "derived"),
)
OWN_SUFFIX = "_own"
SEED_ROW = re.compile(r"^proposed_seed(\d+)$")
ANY_SEED_ROW = re.compile(r"^(?P<method>[a-z][a-z0-9_]*?)_seed(?P<seed>\d+)$")  # any prior with seed s
SPREAD_COLUMNS = ["table", "task", "seed", "proposed", "proposed_seed", "spread"]
def extra_label(key: str) -> str:
    """Row label of an extra method: '<row> (own settings)', '<row> (seed s)' or '<key> (extra)'."""
    labels = {row.key: row.label for row in ROWS if row.kind == "ours"}
    if key.endswith(OWN_SUFFIX) and key.removesuffix(OWN_SUFFIX) in labels:
        return f"{labels[key.removesuffix(OWN_SUFFIX)]} (own settings)"
    seed = ANY_SEED_ROW.match(key)
    if seed and seed["method"] in labels:
        return f"{labels[seed['method']]} (seed {seed['seed']})"
    return f"{key} (extra)"


def _extra_order(key: str) -> tuple:
    """Own-settings rows (in ROWS order), then seed rows (by seed), then any other extra (by name)."""
    order = [row.key for row in ROWS]
    if key.endswith(OWN_SUFFIX) and key.removesuffix(OWN_SUFFIX) in order:
        return (0, order.index(key.removesuffix(OWN_SUFFIX)), 0, key)
    seed = ANY_SEED_ROW.match(key)
    if seed and seed["method"] in order:
        return (1, order.index(seed["method"]), int(seed["seed"]), key)
    return (2, 0, 0, key)


REQUIRED_COLUMNS = ["image", "method", "task", "psnr", "ssim", "iterations"]  # of the eval CSVs (mtdeq.evaluate)


def read_eval_dir(eval_dir: str | Path, methods: list[str] | None = None) -> pd.DataFrame:
    """All per-image rows of ``<eval_dir>/<method>/<task>.csv`` (only these methods, when given) in one table."""
    eval_dir = Path(eval_dir)
    if methods is None:
        files = sorted(eval_dir.glob("*/*.csv"))
    else:
        files = sorted(f for m in dict.fromkeys(methods) for f in (eval_dir / m).glob("*.csv"))
    if not files:
        which = "" if methods is None else f" for --methods {' '.join(methods)}"
        raise FileNotFoundError(f"{eval_dir}: no per-image CSVs (<method>/<task>.csv) found{which}")
    frames = []
    for path in files:
        frame = pd.read_csv(path)
        missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; expected at least {REQUIRED_COLUMNS}")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def eval_devices(eval_dir: Path, methods: list[str] | None) -> list[str]:
    """The devices recorded by the evaluation stage (``<method>/<task>.provenance.json``), sorted."""
    found = set()
    for path in sorted(eval_dir.glob("*/*.provenance.json")):
        if methods is None or path.parent.name in methods:
            found.add(str(json.loads(path.read_text()).get("device", "unrecorded")))
    return sorted(found)


def mean_psnr(per_image: pd.DataFrame) -> pd.DataFrame:
    """Mean PSNR per (method, task): columns method, task, psnr, n_images, images (sorted names), and
    n_seeds, seeds, seed_sd; with a ``seed`` column the seeds are averaged per image first
    (mtdeq.per_image.cell_means)."""
    return cell_means(per_image)


def table_means(per_image: pd.DataFrame, main_seed: int) -> pd.DataFrame:
    """The cells of the tables, keyed by row: (method, task) -> the seed-averaged cell of the method
    (``cell_means``), and for every other seed s of a seeded method a row ``<method>_seed<s>``
    (e.g. "Proposed (seed 1)") with that seed's mean over the images.  Columns method, task, psnr,
    n_images, images, n_seeds, seed_sd."""
    cells = cell_means(per_image)
    extra = seed_means(per_image[per_image["seed"] != main_seed])
    images = per_image.groupby(["method", "task", "seed"])["image"].agg(lambda s: tuple(sorted(s)))
    rows = [{"method": seed_key(m, s), "task": t, "psnr": p, "n_images": n, "images": images[(m, t, s)],
             "n_seeds": 1, "seed_sd": math.nan}
            for m, t, s, p, n in extra[["method", "task", "seed", "psnr", "n_images"]].itertuples(index=False)]
    columns = ["method", "task", "psnr", "n_images", "images", "n_seeds", "seed_sd"]
    return pd.concat([cells[columns], pd.DataFrame(rows, columns=columns)], ignore_index=True)


def build_table(means: pd.DataFrame, paper: pd.DataFrame, table: str) -> pd.DataFrame:
    """The wide table (see module doc) for ``table`` from mean PSNRs and the paper's numbers."""
    tasks = table_tasks(paper, table)
    ours = {(m, t): v for m, t, v in zip(means["method"], means["task"], means["psnr"]) if t in tasks}
    sub = paper[paper["table"] == table]
    theirs = {(m, t): v for m, t, v in zip(sub["method"], sub["task"], sub["psnr"])}
    our_methods = {m for m, _ in ours}
    paper_methods = {m for m, _ in theirs}
    known = {row.key for row in ROWS}
    extras = sorted(our_methods - known, key=_extra_order)
    rows = list(ROWS) + [Row(m, extra_label(m), "extra") for m in extras] + list(EXTRA_DERIVED)

    def cell(source: dict, key: str, task: str) -> float:
        if key in DERIVED:
            a, b = DERIVED[key]
            return source.get((a, task), math.nan) - source.get((b, task), math.nan)
        return source.get((key, task), math.nan)

    records = []
    for row in rows:
        if row.kind == "derived":
            a, b = DERIVED[row.key]
            present = {a, b} <= our_methods or {a, b} <= paper_methods
        else:
            present = row.key in our_methods or row.key in paper_methods
        if not present:
            continue
        record = {"method": row.label, "key": row.key, "kind": row.kind}
        for task in tasks:
            mine = math.nan if row.kind == "paper" else cell(ours, row.key, task)
            reported = cell(theirs, row.key, task)
            record[task] = mine
            record[task + PAPER_SUFFIX] = reported
            record[task + DELTA_SUFFIX] = mine - reported
        records.append(record)
    columns = ["method", "key", "kind"] + [c for t in tasks for c in (t, t + PAPER_SUFFIX, t + DELTA_SUFFIX)]
    return pd.DataFrame(records, columns=columns)


def spread_rows(table: pd.DataFrame, name: str, tasks: list[str], main: dict[str, float] | None = None) -> pd.DataFrame:
    """Run-to-run spread |Proposed - Proposed (seed s)| per task of one wide table (SPREAD_COLUMNS).

    ``main``: task -> Proposed of the main run's seed (the Proposed row itself is the mean over
    the seeds once seed rows exist); default: the table's Proposed row.  One row per (task, seed)
    where both have a value; no rows without seed rows.
    """
    records = []
    by_key = table.set_index("key")
    if "proposed" in by_key.index:
        if main is None:
            main = {task: by_key.loc["proposed", task] for task in tasks}
        for key in by_key.index:
            seed = SEED_ROW.match(key)
            if not seed:
                continue
            for task in tasks:
                ours, other = main.get(task, math.nan), by_key.loc[key, task]
                if pd.notna(ours) and pd.notna(other):
                    records.append({"table": name, "task": task, "seed": int(seed.group(1)), "proposed": ours,
                                    "proposed_seed": other, "spread": abs(ours - other)})
    return pd.DataFrame(records, columns=SPREAD_COLUMNS)


def ranks(table: pd.DataFrame, task: str, excluded: frozenset | set = frozenset()) -> tuple[float | None, float | None]:
    """(best, second best) of the printed (2-decimal) values of kind 'ours' rows in column ``task``,
    leaving out the row keys in ``excluded`` (baselines that have not converged on this task)."""
    values = table.loc[(table["kind"] == "ours") & ~table["key"].isin(excluded), task].dropna().round(2)
    distinct = sorted(set(values), reverse=True)
    return (distinct[0] if distinct else None, distinct[1] if len(distinct) > 1 else None)


def markdown_to_html(text: str, *, title: str) -> str:
    """A self-contained HTML page of the Markdown that ``to_markdown`` writes.

    Only that subset is handled: ``##``/``###`` headings, pipe tables (first row = header,
    second = alignment), paragraphs, ``**bold**`` and ``` `code` ```; the ``<u>`` marks pass through.
    """
    def inline(s: str) -> str:
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", s)

    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    body, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("### ") or line.startswith("## "):
            level = 3 if line.startswith("### ") else 2
            body.append(f"<h{level}>{inline(line[level + 1:])}</h{level}>")
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            head = "".join(f"<th>{inline(c)}</th>" for c in cells(block[0]))
            rows = ["<tr>" + "".join(f"<td>{inline(c)}</td>" for c in cells(r)) + "</tr>" for r in block[2:]]
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>")
            continue
        elif line.strip():
            body.append(f"<p>{inline(line)}</p>")
        i += 1
    style = ("body{font-family:sans-serif} table{border-collapse:collapse;margin:0.5em 0} "
             "td,th{border:1px solid #bbb;padding:2px 6px;text-align:right} td:first-child{text-align:left}")
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _section(heading: str, intro: str, first: list[str], tasks: list[str], last: list[str]) -> list[str]:
    """Markdown lines of a sub-section: heading, intro, and the header of a per-task table."""
    columns = first + [TASK_LABELS.get(t, t) for t in tasks] + last
    rule = "|---" * len(first) + "|" + "---:|" * (len(tasks) + len(last))
    return ["", f"### {heading}", "", intro, "", "| " + " | ".join(columns) + " |", rule]


def _margin_cells(margins: pd.DataFrame | None) -> dict[tuple[str, str, str], pd.Series]:
    if margins is None or margins.empty:
        return {}
    return {(r["prior"], r["baseline"], r["task"]): r for _, r in margins.iterrows()}


def to_markdown(table: pd.DataFrame, tasks: list[str], *, title: str, header_lines: list[str],
                spread: pd.DataFrame | None = None, budget: pd.DataFrame | None = None,
                margins: pd.DataFrame | None = None, seed_sd: pd.DataFrame | None = None,
                main_seed: int = 0) -> str:
    """Markdown: header, ours (paper) table with bold best / underlined second, Δ table, spread (if any).

    ``budget`` (budget_check): Gauss / RED cells that have not converged (|2K - K| > CONVERGED_DB)
    get a dagger and a footnote and are left out of the ranking.  ``margins`` (mtdeq.verdict
    MARGIN_COLUMNS): the derived rows show ``margin [ci_low, ci_high] W|T|L`` and a W/T/L count.
    ``seed_sd`` (SEEDS_COLUMNS): the seed standard deviation per column, in the spread section.
    """
    moved = unconverged_cells(budget)
    best = {task: ranks(table, task, {m for (m, t) in moved if t == task}) for task in tasks}
    by_margin = _margin_cells(margins)
    show_counts = any(t == task for (_, _, t) in by_margin for task in tasks)
    head = "| Method | " + " | ".join(TASK_LABELS.get(t, t) for t in tasks) + (" | W/T/L |" if show_counts else " |")
    rule = "|---|" + "---:|" * (len(tasks) + show_counts)
    lines = [f"## {title}", "", *header_lines, "", head, rule]
    degenerate = False
    for _, row in table.iterrows():
        signed = row["kind"] == "derived"
        pair = DERIVED.get(row["key"]) if signed else None
        cells, verdicts = [], []
        for task in tasks:
            mine = fmt_db(row[task], signed)
            margin = by_margin.get((*pair, task)) if pair else None
            if margin is not None:
                mine = vd.format_margin(margin["margin"], margin["ci_low"], margin["ci_high"], margin["verdict"])
                verdicts.append(margin["verdict"])
                degenerate |= bool(margin["degenerate"])
                if (pair[1], task) in moved:
                    mine += NOT_CONVERGED
            if row["kind"] == "ours" and mine != "—":
                first, second = best[task]
                if (row["key"], task) in moved:
                    mine += NOT_CONVERGED
                elif round(row[task], 2) == first:
                    mine = f"**{mine}**"
                elif round(row[task], 2) == second:
                    mine = f"<u>{mine}</u>"
            reported = fmt_db(row[task + PAPER_SUFFIX], signed)
            cells.append(mine if reported == "—" else f"{mine} ({reported})")
        if show_counts:
            cells.append(vd.format_counts(verdicts.count(vd.WIN), verdicts.count(vd.TIE), verdicts.count(vd.LOSS))
                         if verdicts else "")
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    notes = []
    if show_counts:
        notes.append("Margin rows: the mean of the paired per-image differences [95 % bootstrap interval over the "
                     "images] and the verdict: **W** when the interval lies above 0 and the margin exceeds the "
                     "reproducibility tolerance τ of the two rows, **L** the mirror image, **T** otherwise; a "
                     "seeded prior's PSNR is averaged over its seeds per image before pairing (mtdeq.verdict; "
                     "margins.csv). W/T/L: the counts over this table's columns.")
    if degenerate:
        notes.append("With 3 or fewer images the bootstrap interval is the range of the per-image differences: "
                     "a W or L says only that every image agrees in sign, not 95 % confidence.")
    ours_moved = [(m, t, d) for (m, t), d in moved.items() if t in tasks]
    if ours_moved:
        label = {r.key: r.label for r in ROWS}
        listed = ", ".join(f"{label.get(m, m)} {TASK_LABELS.get(t, t)} {d:+.2f}"
                           for m, t, d in sorted(ours_moved, key=lambda x: (tasks.index(x[1]), x[0])))
        notes.append(f"{NOT_CONVERGED} Not converged: the mean PSNR still moves by more than {CONVERGED_DB} dB "
                     f"with twice the iterations (2K − K: {listed}); left out of the bold/underline ranking, and "
                     f"a margin over such a baseline carries the mark too.")
    if notes:
        lines += [""] + [n for note in notes for n in (note, "")][:-1]
    labels = " | ".join(TASK_LABELS.get(t, t) for t in tasks)
    lines += ["", f"### {title}: ours − paper (dB)", "", f"| Method | {labels} |", "|---|" + "---:|" * len(tasks)]
    for _, row in table.iterrows():
        deltas = [fmt_db(row[t + DELTA_SUFFIX], True) for t in tasks]
        if all(d == "—" for d in deltas):
            continue
        lines.append(f"| {row['method']} | " + " | ".join(deltas) + " |")
    if spread is not None and len(spread):
        lines += _section(f"{title}: run-to-run spread (dB)",
                          f"|Proposed (seed {main_seed}) − Proposed (seed s)|: the MTDEQ prior retrained with "
                          "seed s, all else equal; the Proposed row above is the mean over the seeds. A difference between "
                          "two rows smaller than this is within run-to-run noise.",
                          ["Seed"], tasks, ["max", "mean"])
        for seed, group in spread.groupby("seed", sort=True):
            value = dict(zip(group["task"], group["spread"]))
            cells = [fmt_db(value.get(t, math.nan)) for t in tasks]
            lines.append(f"| {seed} | " + " | ".join(cells)
                         + f" | {fmt_db(group['spread'].max())} | {fmt_db(group['spread'].mean())} |")
        sd = None if seed_sd is None else seed_sd[(seed_sd["method"] == "proposed") & seed_sd["task"].isin(tasks)]
        if sd is not None and len(sd):
            value = dict(zip(sd["task"], sd["seed_sd"]))
            lines.append(f"| sd over seeds {', '.join(sorted(set(sd['seeds'])))} | "
                         + " | ".join(fmt_db(value.get(t, math.nan)) for t in tasks)
                         + f" | {fmt_db(sd['seed_sd'].max())} | {fmt_db(sd['seed_sd'].mean())} |")
    budget = None if budget is None else budget[budget["task"].isin(tasks)]
    if budget is not None and len(budget):
        lines += _section(f"{title}: iteration budget (dB)",
                          "Mean PSNR with the tuned K and with 2K iterations, ours; a small 2K − K means the "
                          f"solver has settled ({NOT_CONVERGED}: |2K − K| > {CONVERGED_DB} dB, not converged).",
                          ["Method", "K → 2K"], tasks, [])
        for method, group in budget.groupby("method", sort=False):
            cells = {row.task: row for row in group.itertuples(index=False)}
            label = next((r.label for r in ROWS if r.key == method), method)
            for what, key, signed in (("K", "psnr_k", False), ("2K − K", "delta", True)):
                values = []
                for t in tasks:
                    text = fmt_db(getattr(cells[t], key), signed) if t in cells else "—"
                    if key == "delta" and (method, t) in moved:
                        text += NOT_CONVERGED
                    values.append(text)
                lines.append(f"| {label} | {what} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


SEEDS_COLUMNS = ["table", "method", "task", "n_seeds", "seeds", "psnr", "seed_sd", "n_images"]
# the margins the tables stage judges (mtdeq.verdict): (prior, baseline), where both were evaluated
MARGIN_PAIRS = (
    ("proposed", "gauss"),
    ("proposed", "gauss_budget"),
    ("gauss_budget", "gauss"),
    ("st_comp", "gauss"),
    ("st_sr", "gauss"),
    ("proposed_own", "gauss"),
    ("proposed_own", "gauss_budget_own"),
)


@dataclass(frozen=True)
class TableSettings:
    """Inputs of the tables stage.

    ``seed``: the main run's training seed (config ``seed``; None -> the ``seed`` of --config-json,
    else 0): an eval method ``<m>_seed<s>`` is method m with seed s, every other one has this seed.
    ``tolerance``: the reference's tolerance.yaml, used by the verdicts when the file exists (else
    mtdeq.tolerance.FALLBACK_TOLERANCE for every row).
    """

    eval_dir: str
    paper: str
    scale: str
    out_dir: str
    config_json: str | None = None
    methods: tuple[str, ...] | None = None  # None -> every method folder of eval_dir
    seed: int | None = None
    tolerance: str | None = None


def seed_table(cells: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """SEEDS_COLUMNS: the cells of the methods evaluated with more than one training seed."""
    table_of = {task: name for name in TABLES for task in table_tasks(paper, name)}
    seeded = cells[(cells["n_seeds"] > 1) & cells["task"].isin(table_of)]
    return pd.DataFrame({
        "table": seeded["task"].map(table_of), "method": seeded["method"], "task": seeded["task"],
        "n_seeds": seeded["n_seeds"], "seeds": [" ".join(map(str, s)) for s in seeded["seeds"]],
        "psnr": seeded["psnr"], "seed_sd": seeded["seed_sd"], "n_images": seeded["n_images"],
    }, columns=SEEDS_COLUMNS).reset_index(drop=True)


def margins_markdown(margins: pd.DataFrame, counts: pd.DataFrame, scale: str, tolerance: Tolerance) -> str:
    """margins.md: per table the W/T/L counts of every (prior, baseline), then every column's margin."""
    labels = {row.key: row.label for row in ROWS}
    labels.update({f"{k}{OWN_SUFFIX}": extra_label(f"{k}{OWN_SUFFIX}") for k in list(labels)})
    lines = [f"## Margins and verdicts — scale {scale}", "",
             "Margin = mean over the test images of the paired difference prior − baseline (a seeded prior "
             "averaged over its seeds per image first), with its 95 % percentile-bootstrap interval over the "
             f"images ({vd.RESAMPLES} resamples, seed {vd.BOOTSTRAP_SEED}). **W**: interval above 0 and margin "
             "> τ; **L**: interval below 0 and margin < −τ; **T** otherwise. τ: the larger reproducibility "
             f"tolerance of the two rows, from {tolerance.source}. See mtdeq/verdict.py."]
    if margins.empty:
        return "\n".join(lines + ["", "No margin: no (prior, baseline) pair was evaluated."]) + "\n"
    if margins["degenerate"].any():
        lines += ["", "With 3 or fewer images the interval is the range of the per-image differences: a W or L "
                  "then says only that every image agrees in sign."]
    for name, title in TABLES.items():
        sub = margins[margins["table"] == name]
        if sub.empty:
            continue
        tasks = list(dict.fromkeys(sub["task"]))
        lines += ["", f"### {title}", "",
                  "| Prior − baseline | W/T/L | mean | " + " | ".join(TASK_LABELS.get(t, t) for t in tasks) + " |",
                  "|---|---:|---:|" + "---:|" * len(tasks)]
        for c in counts[counts["table"] == name].itertuples(index=False):
            rows = sub[(sub["prior"] == c.prior) & (sub["baseline"] == c.baseline)].set_index("task")
            cells = [vd.format_margin(rows.loc[t, "margin"], rows.loc[t, "ci_low"], rows.loc[t, "ci_high"],
                                      rows.loc[t, "verdict"]) if t in rows.index else "—" for t in tasks]
            lines.append(f"| {labels.get(c.prior, c.prior)} − {labels.get(c.baseline, c.baseline)} | "
                         f"{vd.format_counts(c.wins, c.ties, c.losses)} | {c.mean_margin:+.2f} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def make_tables(settings: TableSettings) -> dict[str, pd.DataFrame]:
    """Write the tables (<table>.csv, .md, .html, .provenance.json for Tables I and II), the per-image
    evidence (per_image.csv), the margins and verdicts (margins.csv, margin_counts.csv, margins.md),
    seeds.csv, spread.csv, budget_check.csv and the protocol validation; return the tables."""
    from mtdeq.fingerprint import run_fingerprints
    from mtdeq.io import atomic_write_text, provenance

    paper = read_paper(settings.paper)
    evals = read_eval_dir(settings.eval_dir, None if settings.methods is None else list(settings.methods))
    config = None
    if settings.config_json:
        config = json.loads(Path(settings.config_json).read_text())
    main_seed = settings.seed if settings.seed is not None else int((config or {}).get("seed", 0))
    per_image = per_image_rows(evals, main_seed)
    means = table_means(per_image, main_seed)
    cells_all = cell_means(per_image)
    tolerance = tolerance_or_fallback(settings.tolerance)
    table_of = {task: name for name in TABLES for task in table_tasks(paper, name)}
    margins = vd.margins_table(per_image, MARGIN_PAIRS, table_of, tolerance)
    counts = vd.counts(margins)
    seeds = seed_table(cells_all, paper)
    main_cells = seed_means(per_image[(per_image["method"] == "proposed") & (per_image["seed"] == main_seed)])
    main_proposed = dict(zip(main_cells["task"], main_cells["psnr"]))
    budget = budget_check(evals)
    record = provenance(config)
    commit = record["git_commit"][:10] + (" (uncommitted changes)" if record.get("git_dirty") else "")
    out_dir = Path(settings.out_dir)
    run_dir = Path(settings.eval_dir).parent
    methods = None if settings.methods is None else list(settings.methods)
    artefacts = run_fingerprints(run_dir, methods)
    devices = eval_devices(Path(settings.eval_dir), methods)
    result, spreads = {}, []
    for name, title in TABLES.items():
        tasks = table_tasks(paper, name)
        table = build_table(means, paper, name)
        spread = spread_rows(table, name, tasks, main_proposed)
        spreads.append(spread)
        cells = means[means["task"].isin(tasks)]
        for task, group in cells.groupby("task"):
            if len(set(group["images"])) > 1:
                print(f"WARNING: {name} {task}: methods were evaluated on different image sets: "
                      + "; ".join(f"{m}={list(i)}" for m, i in zip(group["method"], group["images"])))
        n_images = sorted(set(cells["n_images"]))
        seeded = seeds[seeds["table"] == name]
        sidecar = {
            "table": name,
            "title": title,
            "scale": settings.scale,
            "eval_dir": str(settings.eval_dir),
            "methods": None if settings.methods is None else list(settings.methods),
            "paper": str(settings.paper),
            "config_json": settings.config_json,
            "seed": main_seed,
            "tolerance": tolerance.source,
            "columns": "method, key, kind, then per task: <task> (ours, mean PSNR dB), "
            "'<task> paper', '<task> Δ' (ours - paper); see mtdeq/tables.py",
            "cells": [
                {"method": m, "task": t, "psnr": p, "n_images": int(n), "images": list(i), "n_seeds": int(k)}
                for m, t, p, n, i, k in cells[["method", "task", "psnr", "n_images", "images", "n_seeds"]]
                .itertuples(index=False)
            ],
            "devices": devices,
            "artefacts": artefacts,
            "provenance": record,
        }
        header = [
            f"Ours: scale **{settings.scale}**, git {commit}, torch {record['torch']}, "
            f"{'/'.join(map(str, n_images)) or 0} test image(s) per cell"
            + (f", config `{settings.config_json}`" if settings.config_json else "") + ".",
            "Cells: ours (paper), mean PSNR in dB. **Bold** best, <u>underlined</u> second best "
            "among the methods we ran; pnP-ReG is the paper's number only (we do not run it).",
        ]
        for method, group in seeded.groupby("method", sort=False):
            label = next((r.label for r in ROWS if r.key == method), method)
            header.append(f"{label}: the mean over training seeds {group['seeds'].iloc[0]} (averaged per image, "
                          f"then over the images); seed standard deviation up to {group['seed_sd'].max():.2f} dB "
                          "(seeds.csv).")
        atomic_write_text(out_dir / f"{name}.csv", table.to_csv(index=False, float_format="%.2f"))
        atomic_write_text(out_dir / f"{name}.provenance.json", json.dumps(sidecar, indent=2) + "\n")
        markdown = to_markdown(table, tasks, title=f"{title} — scale {settings.scale}", header_lines=header,
                               spread=spread, budget=budget, margins=margins[margins["table"] == name],
                               seed_sd=seeded, main_seed=main_seed)
        atomic_write_text(out_dir / f"{name}.md", markdown)
        atomic_write_text(out_dir / f"{name}.html", markdown_to_html(markdown, title=f"{title} — {settings.scale}"))
        result[name] = table
    filled = [s for s in spreads if len(s)]
    spread = pd.concat(filled, ignore_index=True) if filled else pd.DataFrame(columns=SPREAD_COLUMNS)
    atomic_write_text(out_dir / "spread.csv", spread.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(out_dir / "seeds.csv", seeds.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(out_dir / "per_image.csv", per_image.to_csv(index=False, float_format="%.6f"))
    atomic_write_text(out_dir / "margins.csv", margins.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(out_dir / "margin_counts.csv", counts.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(out_dir / "margins.md", margins_markdown(margins, counts, settings.scale, tolerance))
    atomic_write_text(out_dir / "budget_check.csv", budget.to_csv(index=False, float_format="%.4f"))
    validation = protocol_validation(means, paper, budget)
    atomic_write_text(out_dir / "protocol_validation.csv", validation.to_csv(index=False, float_format="%.4f"))
    markdown = validation_markdown(validation, settings.scale)
    atomic_write_text(out_dir / "protocol_validation.md", markdown)
    atomic_write_text(out_dir / "protocol_validation.html",
                      markdown_to_html(markdown, title=f"Protocol validation — {settings.scale}"))
    return result


def _run(args: argparse.Namespace) -> int:
    settings = TableSettings(eval_dir=args.eval_dir, paper=args.paper, scale=args.scale,
                             out_dir=args.out_dir, config_json=args.config_json,
                             methods=None if args.methods is None else tuple(args.methods),
                             seed=args.seed, tolerance=args.tolerance)
    tables = make_tables(settings)
    out = Path(args.out_dir)
    for name, table in tables.items():
        print(f"{name}: {len(table)} row(s) -> {out / name}.{{csv,md,provenance.json}}")
    print(f"tolerance of the verdicts: {tolerance_or_fallback(args.tolerance).source}")
    counts = pd.read_csv(out / "margin_counts.csv")
    for c in counts.itertuples(index=False):
        print(f"{c.table} {c.prior} vs {c.baseline}: W/T/L {c.wins}/{c.ties}/{c.losses} of {c.n_tasks}, "
              f"mean margin {c.mean_margin:+.3f} dB")
    print(f"per-image rows -> {out / 'per_image.csv'}; margins -> {out / 'margins.csv'}; "
          f"run-to-run spread -> {out / 'spread.csv'}")
    return 0


def register(subparsers) -> None:
    """Add the ``tables`` stage."""
    p = add_stage(subparsers, "tables", "Tables I and II (CSV, Markdown, provenance) from the per-image eval CSVs, beside the paper", __doc__)
    p.add_argument("--eval-dir", required=True, help="folder of <method>/<task>.csv, e.g. results/quick/eval")
    p.add_argument("--methods", nargs="+", default=None,
                   help="only these method folders of --eval-dir (default: every folder)")
    p.add_argument("--paper", required=True, help="results/paper/paper_tables.csv")
    p.add_argument("--scale", required=True, help="name of the scale that produced the eval CSVs (ci, quick, ...)")
    p.add_argument("--config-json", default=None, help="JSON dump of the run's config, stored in the provenance")
    p.add_argument("--out-dir", required=True, help="where table{1,2}.{csv,md,provenance.json} go, e.g. results")
    p.add_argument("--seed", type=int, default=None,
                   help="the main run's training seed (config seed; default: --config-json's seed, else 0); "
                   "an eval method <m>_seed<s> is method m retrained with seed s")
    p.add_argument("--tolerance", default=None,
                   help="the reference's tolerance.yaml (e.g. results/reference/quick/tolerance.yaml), used by the "
                   "verdicts when it exists; otherwise every row gets the fallback "
                   "(mtdeq.tolerance.FALLBACK_TOLERANCE dB)")
    p.set_defaults(func=_run)
