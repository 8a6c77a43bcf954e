"""Target ``heldout``: the margins on images that neither training nor tuning has seen.

Set5 has five images, so a margin's bootstrap interval over them is wide (and degenerate for
n <= 3).  BSDS500's 200 test images are used by neither training (BSDS500 train + val) nor
tuning (Set14); this module draws N of them and judges the same margins on them.

``heldout-draw`` (stage 1)
    draw = the sorted image files of --dir (IMAGE_SUFFIXES), N = --images of them chosen without
    replacement by ``numpy.random.default_rng(--seed).choice(len, N, replace=False)``, then
    sorted by name.  The drawn files are copied into --out-dir (which evaluate reads as its
    --images folder) and listed in --list (DRAW_COLUMNS: draw, file, source, sha256): the same
    (folder, N, seed) always gives the same list.
``heldout`` (stage 2)
    from the per-image CSVs of the held-out evaluations (--eval-dir) and of Set5's (--set5-eval-dir),
    with '<m>_seed<s>' read as method m, seed s (mtdeq.per_image), writes into --out-dir:

    ``per_image.csv``       the held-out per-image rows (mtdeq.per_image.PER_IMAGE_COLUMNS ...)
    ``margins.csv``         mtdeq.verdict.MARGIN_COLUMNS of PAIRS on the held-out images, plus
                            ``sd_diff`` and ``half_width`` (below)
    ``margin_counts.csv``   mtdeq.verdict.COUNT_COLUMNS
    ``comparison.csv``      COMPARISON_COLUMNS: per (baseline, task) the margin, interval and
                            verdict on Set5 beside the held-out set's, the held-out per-image sd of
                            the differences, the interval half-width and the N that a half-width of
                            TARGET_HALF_WIDTH dB would need
    ``comparison.md``       the same as a Markdown table
    ``margins.png``         per task, the margin over each baseline with its interval, Set5 and
                            held-out side by side (margins_figure)
    ``timings.csv``         with --benchmarks: the seconds of the draw and of every held-out
                            evaluation job (TIMED_RULES; mtdeq.summary's columns and TOTAL row)

    With d_i the seed-averaged paired difference of image i (mtdeq.verdict):

        sd_diff    = sd_i d_i (ddof 1)
        half_width = (ci_high - ci_low) / 2        (95 % percentile bootstrap, mtdeq.verdict)
        n_needed   = ceil((1.96 sd_diff / TARGET_HALF_WIDTH)^2)   (normal approximation)

    so that after a pilot draw, n_needed says how many images a given precision takes.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from mtdeq import verdict as vd
from mtdeq.cli import add_stage
from mtdeq.per_image import per_image_rows
from mtdeq.tolerance import tolerance_or_fallback

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DRAW_COLUMNS = ["draw", "file", "source", "sha256"]
PAIRS = (("proposed", "gauss"), ("proposed", "gauss_budget"))
BASELINE_LABELS = {"gauss": "Gauss", "gauss_budget": "Gauss + same budget (control)"}
TARGET_HALF_WIDTH = 0.1  # dB
TIMED_RULES = ("heldout_images", "evaluate_heldout")  # timings.csv: the draw and the evaluations
Z95 = 1.959964
COMPARISON_COLUMNS = ["prior", "baseline", "table", "task",
                      "set5_n_images", "set5_margin", "set5_ci_low", "set5_ci_high", "set5_verdict",
                      "heldout_n_images", "heldout_margin", "heldout_ci_low", "heldout_ci_high", "heldout_verdict",
                      "sd_diff", "half_width", "n_needed"]


def image_files(folder: str | Path) -> list[Path]:
    """The image files of ``folder`` (IMAGE_SUFFIXES, case-insensitive), sorted by name."""
    files = sorted(f for f in Path(folder).iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def draw(names: list[str], n: int, seed: int) -> list[str]:
    """N distinct names of ``names`` (sorted first), drawn with default_rng(seed), returned sorted."""
    pool = sorted(names)
    if len(set(pool)) != len(pool):
        raise ValueError("draw: duplicated names")
    if not 1 <= n <= len(pool):
        raise ValueError(f"draw: cannot draw {n} of {len(pool)} images")
    picked = np.random.default_rng(seed).choice(len(pool), size=n, replace=False)
    return sorted(pool[i] for i in picked)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stage_draw(folder: str | Path, n: int, seed: int, out_dir: str | Path, list_csv: str | Path) -> pd.DataFrame:
    """Copy the draw into ``out_dir`` (emptied first) and write its list (DRAW_COLUMNS) to ``list_csv``."""
    from mtdeq.io import atomic_write_text

    files = {f.name: f for f in image_files(folder)}
    names = draw(list(files), n, seed)
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    for name in names:
        shutil.copyfile(files[name], out / name)
    table = pd.DataFrame({"draw": range(len(names)), "file": names, "source": [str(files[m]) for m in names],
                          "sha256": [_sha256(files[m]) for m in names]}, columns=DRAW_COLUMNS)
    atomic_write_text(list_csv, table.to_csv(index=False))
    return table


def paired_differences(per_image: pd.DataFrame, prior: str, baseline: str, task: str) -> pd.Series:
    """d_i per image: the seed-averaged PSNR of ``prior`` minus that of ``baseline`` (images of both)."""
    def by_image(method: str) -> pd.Series:
        rows = per_image[(per_image["method"] == method) & (per_image["task"] == task)]
        return rows.groupby("image", sort=True)["psnr"].mean()

    return (by_image(prior) - by_image(baseline)).dropna()


def spread_columns(margins: pd.DataFrame, per_image: pd.DataFrame,
                   target: float = TARGET_HALF_WIDTH) -> pd.DataFrame:
    """``margins`` with sd_diff, half_width and n_needed (module doc) added."""
    sds = []
    for r in margins.itertuples(index=False):
        d = paired_differences(per_image, r.prior, r.baseline, r.task)
        sds.append(float(d.std(ddof=1)) if len(d) > 1 else math.nan)
    out = margins.assign(sd_diff=sds, half_width=(margins["ci_high"] - margins["ci_low"]) / 2)
    out["n_needed"] = [math.ceil((Z95 * s / target) ** 2) if np.isfinite(s) else pd.NA for s in out["sd_diff"]]
    return out


def comparison(set5: pd.DataFrame, heldout: pd.DataFrame) -> pd.DataFrame:
    """COMPARISON_COLUMNS: Set5's margins beside the held-out ones (``heldout`` with spread_columns),
    per (prior, baseline, task) of the held-out set, in its order."""
    keys = ["prior", "baseline", "task"]
    left = set5.set_index(keys)
    records = []
    for r in heldout.itertuples(index=False):
        key = (r.prior, r.baseline, r.task)
        s = left.loc[key] if key in left.index else None
        record = {"prior": r.prior, "baseline": r.baseline, "table": r.table, "task": r.task}
        for name in ("n_images", "margin", "ci_low", "ci_high", "verdict"):
            record[f"set5_{name}"] = s[name] if s is not None else (math.nan if name != "verdict" else "")
            record[f"heldout_{name}"] = getattr(r, name)
        record.update(sd_diff=r.sd_diff, half_width=r.half_width, n_needed=r.n_needed)
        records.append(record)
    return pd.DataFrame(records, columns=COMPARISON_COLUMNS)


def comparison_markdown(table: pd.DataFrame, *, scale: str, n_heldout: int, source: str,
                        target: float = TARGET_HALF_WIDTH, seeds: dict[str, list[int]] | None = None) -> str:
    """The comparison as Markdown: one section per baseline, one row per task.  ``seeds``: the
    training seeds read per trained method (named, since Set5's column uses the same ones)."""
    from mtdeq.tables import TASK_LABELS

    lines = [f"## Margins on Set5 and on the held-out set — scale {scale}", "",
             f"Held-out set: {n_heldout} image(s) drawn from {source} (images.csv), used by neither training "
             "nor tuning, evaluated with the Gauss prior's tuned settings. Cells: margin [95 % bootstrap "
             "interval over the images] verdict (mtdeq.verdict; a seeded prior averaged over its seeds per image). "
             f"sd: per-image standard deviation of the held-out differences; ±: the interval's half-width; "
             f"N for ±{target:.2f}: images a half-width of {target:.2f} dB would take, (1.96 sd / {target:.2f})²."]
    if seeds:
        listed = "; ".join(f"{m} {', '.join(str(s) for s in sorted(v))}" for m, v in sorted(seeds.items()))
        lines += ["", f"Training seeds, on both sets: {listed}. The Set5 column uses these seeds only, so it "
                  "differs from the main tables' margin where those average more seeds of a method."]
    if table.empty:
        return "\n".join(lines + ["", "No margin: no (prior, baseline) pair was evaluated."]) + "\n"
    counts = pd.concat([table["set5_n_images"], table["heldout_n_images"]]).dropna()
    if any(vd.is_degenerate(int(n)) for n in counts):
        lines += ["", "With 3 or fewer images the bootstrap interval is the range of the per-image differences: "
                  "a W or L then says only that every image agrees in sign, not 95 % confidence."]

    def cell(row, side: str) -> str:
        if not isinstance(row[f"{side}_verdict"], str) or not row[f"{side}_verdict"]:
            return "—"
        return vd.format_margin(row[f"{side}_margin"], row[f"{side}_ci_low"], row[f"{side}_ci_high"],
                                row[f"{side}_verdict"])

    for (prior, baseline), group in table.groupby(["prior", "baseline"], sort=False):
        label = BASELINE_LABELS.get(baseline, baseline)
        lines += ["", f"### {prior.capitalize()} − {label}", "",
                  "| Task | Set5 | Held-out | sd | ± | N for ±%.2f |" % target, "|---|---:|---:|---:|---:|---:|"]
        for _, row in group.iterrows():
            sd = "—" if pd.isna(row["sd_diff"]) else f"{row['sd_diff']:.2f}"
            n = "—" if pd.isna(row["n_needed"]) else str(int(row["n_needed"]))
            lines.append(f"| {TASK_LABELS.get(row['task'], row['task'])} | {cell(row, 'set5')} | "
                         f"{cell(row, 'heldout')} | {sd} | {row['half_width']:.2f} | {n} |")
        lines.append(f"| mean | {group['set5_margin'].mean():+.2f} | {group['heldout_margin'].mean():+.2f} | "
                     f"{group['sd_diff'].mean():.2f} | {group['half_width'].mean():.2f} | |")
    return "\n".join(lines) + "\n"


def margins_figure(table: pd.DataFrame, *, title: str = ""):
    """One panel per (prior, baseline): per task the margin and its interval, Set5 beside held-out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mtdeq.tables import TASK_LABELS

    groups = list(table.groupby(["prior", "baseline"], sort=False)) if not table.empty else []
    fig, axes = plt.subplots(max(len(groups), 1), 1, figsize=(10, 3.2 * max(len(groups), 1)), squeeze=False)
    for ax, ((prior, baseline), group) in zip(axes[:, 0], groups):
        x = np.arange(len(group))
        for offset, side, label, colour in ((-0.15, "set5", "Set5", "tab:blue"),
                                            (0.15, "heldout", "held-out", "tab:orange")):
            m = group[f"{side}_margin"].to_numpy(dtype=float)
            lo = m - group[f"{side}_ci_low"].to_numpy(dtype=float)
            hi = group[f"{side}_ci_high"].to_numpy(dtype=float) - m
            n = group[f"{side}_n_images"].dropna()
            ax.errorbar(x + offset, m, yerr=np.vstack([lo, hi]), fmt="o", capsize=3, color=colour,
                        label=f"{label} (n={int(n.max()) if len(n) else 0})")
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xticks(x, [TASK_LABELS.get(t, t) for t in group["task"]], rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("margin (dB)")
        ax.set_title(f"{prior.capitalize()} − {BASELINE_LABELS.get(baseline, baseline)}", fontsize=10)
        ax.legend(fontsize=8)
    if not groups:
        axes[0, 0].text(0.5, 0.5, "no margin evaluated", ha="center", va="center")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _margins(per_image: pd.DataFrame, table_of: dict, tolerance) -> pd.DataFrame:
    return vd.margins_table(per_image, PAIRS, table_of, tolerance)


def make_heldout(*, eval_dir: str, set5_eval_dir: str, methods: list[str], paper: str, scale: str, out_dir: str,
                 seed: int = 0, tolerance: str | None = None, draw_list: str | None = None,
                 benchmarks: str | None = None) -> pd.DataFrame:
    """Write the outputs of the module doc's stage 2; return the comparison table."""
    from mtdeq.io import atomic_write_text, write_png_figure
    from mtdeq.tables import TABLES, read_eval_dir, read_paper, table_tasks

    paper_table = read_paper(paper)
    table_of = {task: name for name in TABLES for task in table_tasks(paper_table, name)}
    tol = tolerance_or_fallback(tolerance)
    heldout = per_image_rows(read_eval_dir(eval_dir, methods), seed)
    set5 = per_image_rows(read_eval_dir(set5_eval_dir, methods), seed)
    margins = spread_columns(_margins(heldout, table_of, tol), heldout)
    set5_margins = _margins(set5, table_of, tol)
    table = comparison(set5_margins, margins)
    out = Path(out_dir)
    source = "the held-out folder"
    if draw_list and Path(draw_list).is_file():
        drawn = pd.read_csv(draw_list)
        source = str(Path(drawn["source"].iloc[0]).parent) if len(drawn) else source
    n_heldout = heldout["image"].nunique()
    atomic_write_text(out / "per_image.csv", heldout.to_csv(index=False, float_format="%.6f"))
    atomic_write_text(out / "margins.csv", margins.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(out / "margin_counts.csv", vd.counts(margins).to_csv(index=False, float_format="%.4f"))
    atomic_write_text(out / "comparison.csv", table.to_csv(index=False, float_format="%.4f"))
    trained = heldout[heldout["method"] != "gauss"]  # the Gauss prior is not trained here: no seed
    seeds = {m: sorted(int(s) for s in g.unique()) for m, g in trained.groupby("method")["seed"]}
    atomic_write_text(out / "comparison.md", comparison_markdown(table, scale=scale, n_heldout=n_heldout,
                                                                 source=source, seeds=seeds))
    write_png_figure(out / "margins.png", margins_figure(
        table, title=f"Margins on Set5 and on {n_heldout} held-out images — scale {scale}"))
    if benchmarks is not None:
        from mtdeq.summary import timings

        times = timings(benchmarks, rules=TIMED_RULES)
        atomic_write_text(out / "timings.csv", times.to_csv(index=False, float_format="%.2f"))
    return table


def _run_draw(args: argparse.Namespace) -> int:
    table = stage_draw(args.dir, args.images, args.seed, args.out_dir, args.list)
    print(f"drew {len(table)} of {len(image_files(args.dir))} images of {args.dir} (seed {args.seed}) -> "
          f"{args.out_dir}; list {args.list}")
    return 0


def _run(args: argparse.Namespace) -> int:
    table = make_heldout(eval_dir=args.eval_dir, set5_eval_dir=args.set5_eval_dir, methods=args.methods,
                         paper=args.paper, scale=args.scale, out_dir=args.out_dir, seed=args.seed,
                         tolerance=args.tolerance, draw_list=args.draw_list, benchmarks=args.benchmarks)
    for r in table.itertuples(index=False):
        print(f"{r.prior} - {r.baseline} {r.task}: Set5 {r.set5_margin:+.3f}, held-out {r.heldout_margin:+.3f} "
              f"[{r.heldout_ci_low:+.3f}, {r.heldout_ci_high:+.3f}] {r.heldout_verdict}, sd {r.sd_diff:.3f}")
    return 0


def register(subparsers) -> None:
    """Add the ``heldout-draw`` and ``heldout`` stages."""
    p = add_stage(subparsers, "heldout-draw", "Draw N held-out test images (seeded) into a folder and list them",
                  __doc__)
    p.add_argument("--dir", required=True, help="folder to draw from, e.g. data/BSDS500/test")
    p.add_argument("--images", type=int, required=True, help="N images to draw")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw (default 0)")
    p.add_argument("--out-dir", required=True, help="folder that receives copies of the drawn images")
    p.add_argument("--list", required=True, help="CSV of the drawn images (draw, file, source, sha256)")
    p.set_defaults(func=_run_draw)
    p = add_stage(subparsers, "heldout", "Margins on the held-out images beside Set5's: CSVs, Markdown, figure",
                  __doc__)
    p.add_argument("--eval-dir", required=True, help="held-out per-image CSVs <method>/<task>.csv")
    p.add_argument("--set5-eval-dir", required=True, help="Set5's per-image CSVs <method>/<task>.csv")
    p.add_argument("--methods", nargs="+", required=True, help="method folders to read (incl. <m>_seed<s>)")
    p.add_argument("--paper", required=True, help="results/paper/paper_tables.csv (task -> table)")
    p.add_argument("--scale", required=True, help="name of the scale")
    p.add_argument("--out-dir", required=True, help="e.g. results/quick/heldout")
    p.add_argument("--seed", type=int, default=0, help="the main run's training seed (config seed)")
    p.add_argument("--tolerance", default=None, help="tolerance.yaml of the verdicts (else the fallback)")
    p.add_argument("--draw-list", default=None, help="images.csv of heldout-draw (named in comparison.md)")
    p.add_argument("--benchmarks", default=None,
                   help="the run's benchmark folder (e.g. benchmarks/quick): write timings.csv of the draw and "
                        "the held-out evaluations (mtdeq.summary's columns)")
    p.set_defaults(func=_run)
