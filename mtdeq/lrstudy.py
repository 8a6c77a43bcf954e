"""``lr-study``: learning rate, warm-up and batch for a longer DEQ run, judged on Set14, never Set5.

The target ``lr_study`` (workflow/rules/lr_study.smk, outside ``all``) trains the MTDEQ prior from
the Gauss prior once per entry of ``lr_study.runs`` (each entry overrides deq.* settings: lr,
lr_warmup, accum, ...), with the validation PSNR of train-deq (centre crops of data.val_set, the
tasks of ``lr_study.val_task``) every ``lr_study.val_every`` steps.  This stage collects the runs'
train-deq logs into

    lr_study.csv   LR_COLUMNS: one row per run and validated step (step 0 = the Gauss prior)
    lr_study.md    per run: its settings, the validation PSNR change at the end, its best and worst
    lr_study.png   validation PSNR change from the start against training crops seen

A run "damages" the prior when its validation PSNR ends below where it started.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mtdeq.cli import add_stage

LR_COLUMNS = ["run", "step", "images", "lr", "val_psnr", "delta"]


@dataclass(frozen=True)
class StudySettings:
    """Inputs and outputs of the lr-study stage: ``logs`` maps run name -> train-deq log CSV."""

    logs: dict
    spec: dict  # run name -> its deq overrides (for the Markdown table)
    out: str
    markdown: str
    figure: str
    scale: str = ""


def collect(logs: dict) -> pd.DataFrame:
    """lr_study.csv: the validated steps of every run, with the change from its step-0 PSNR."""
    frames = []
    for name, path in logs.items():
        log = pd.read_csv(path)
        missing = {"step", "val_psnr", "lr"} - set(log.columns)
        if missing:
            raise ValueError(f"{path}: not a train-deq log (missing columns {sorted(missing)})")
        log = log.dropna(subset=["val_psnr"])
        if log.empty or log["step"].iloc[0] != 0:
            raise ValueError(f"{path}: run {name!r} has no validation at step 0 (train-deq --val-dir, a fresh run)")
        images = log["images"] if "images" in log.columns else pd.Series(float("nan"), index=log.index)
        frames.append(pd.DataFrame({"run": name, "step": log["step"].astype(int), "images": images.fillna(0).astype(int),
                                    "lr": log["lr"], "val_psnr": log["val_psnr"],
                                    "delta": log["val_psnr"] - log["val_psnr"].iloc[0]}))
    if not frames:
        raise ValueError("lr-study: no runs given")
    return pd.concat(frames, ignore_index=True)[LR_COLUMNS]


def summary(study: pd.DataFrame, spec: dict) -> pd.DataFrame:
    """Per run: settings, crops seen, final / best / worst change of the validation PSNR (dB)."""
    rows = []
    for name, group in study.groupby("run", sort=False):
        group = group.sort_values("step")
        best, worst = group.loc[group["delta"].idxmax()], group.loc[group["delta"].idxmin()]
        rows.append(dict(run=name, settings=", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}"
                                                      for k, v in spec.get(name, {}).items()),
                         steps=int(group["step"].iloc[-1]), images=int(group["images"].iloc[-1]),
                         start=float(group["val_psnr"].iloc[0]), final=float(group["delta"].iloc[-1]),
                         best=float(best["delta"]), best_step=int(best["step"]), worst=float(worst["delta"]),
                         worst_step=int(worst["step"])))
    return pd.DataFrame(rows)


def to_markdown(table: pd.DataFrame, scale: str = "") -> str:
    lines = [f"## Learning rate and batch for a longer run{f' — scale {scale}' if scale else ''}", "",
             "Validation PSNR (data.val_set crops) change from the Gauss prior, dB.", "",
             "| Run | Settings | Steps | Crops seen | Start (dB) | Final Δ | Best Δ (step) | Worst Δ (step) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in table.itertuples(index=False):
        lines.append(f"| {r.run} | {r.settings} | {r.steps} | {r.images} | {r.start:.2f} | {r.final:+.3f} | "
                     f"{r.best:+.3f} ({r.best_step}) | {r.worst:+.3f} ({r.worst_step}) |")
    return "\n".join(lines) + "\n"


def plot(study: pd.DataFrame, path: str | Path, *, scale: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mtdeq.io import write_png_figure

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, group in study.groupby("run", sort=False):
        group = group.sort_values("step")
        ax.plot(group["images"], group["delta"], marker="o", markersize=3, label=name)
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xlabel("training crops seen (steps x batch x accumulation)")
    ax.set_ylabel("validation PSNR change (dB)")
    ax.set_title(f"MTDEQ fine-tuning: learning rate and batch{f' ({scale} scale)' if scale else ''}")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    write_png_figure(path, fig)


def run(settings: StudySettings) -> pd.DataFrame:
    """Collect, summarise, write the CSV, the Markdown and the figure (all or nothing on error)."""
    from mtdeq.io import atomic_write_text

    study = collect(settings.logs)
    table = summary(study, settings.spec)
    plot(study, settings.figure, scale=settings.scale)
    atomic_write_text(settings.markdown, to_markdown(table, settings.scale))
    atomic_write_text(settings.out, study.to_csv(index=False, float_format="%.4f"))
    return table


def _pairs(values: list[str]) -> dict:
    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise argparse.ArgumentTypeError(f"--log {value!r}: expected NAME=PATH")
        out[name] = path
    return out


def _run(args: argparse.Namespace) -> int:
    try:
        logs = _pairs(args.log)
        spec = json.loads(args.spec) if args.spec else {}
    except (argparse.ArgumentTypeError, json.JSONDecodeError) as err:
        raise SystemExit(f"lr-study: {err}") from None
    table = run(StudySettings(logs=logs, spec=spec, out=args.out, markdown=args.markdown, figure=args.figure,
                              scale=args.scale))
    for r in table.itertuples(index=False):
        print(f"{r.run:>16}: {r.settings}; final {r.final:+.3f} dB, best {r.best:+.3f} at step {r.best_step}, "
              f"worst {r.worst:+.3f} at step {r.worst_step}")
    print(f"wrote {args.out}, {args.markdown}, {args.figure}")
    return 0


def register(subparsers) -> None:
    """Add the ``lr-study`` stage."""
    p = add_stage(subparsers, "lr-study", "collect the learning-rate / batch runs: lr_study.csv, .md, .png", __doc__)
    p.add_argument("--log", nargs="+", required=True, metavar="NAME=PATH", help="train-deq log CSV of each run")
    p.add_argument("--spec", default="", help="JSON {run: {deq key: value}} of the runs' settings (for the table)")
    p.add_argument("--out", required=True, help="lr_study.csv to write")
    p.add_argument("--markdown", required=True, help="lr_study.md to write")
    p.add_argument("--figure", required=True, help="lr_study.png to write")
    p.add_argument("--scale", default="", help="scale name for the titles")
    p.set_defaults(func=_run)
