"""Per-job run times and DEQ fixed-point convergence of one workflow run.

    python -m mtdeq summarize --scale S --benchmarks benchmarks/S --train-logs results/S/logs \\
        --out-timings results/S/timings.csv --out-convergence results/S/convergence.csv [--cores N]

``timings.csv``: one row per job, read from the Snakemake benchmark files
``<benchmarks>/<rule>[/<wildcards>].tsv`` (the workflow names every benchmark so), sorted by
rule and job:

    rule         first component of the path below --benchmarks (the file stem at top level)
    job          the rest of the path without ``.tsv`` (the job's wildcards); empty at top level
    seconds      wall-clock seconds of the job (benchmark column ``s``; mean of repeated rows)
    max_rss_mb   peak resident memory in MB (column ``max_rss``)
    cpu_time_s   CPU seconds, user + system (column ``cpu_time``)
    wall_span_s  TOTAL row only (below)

and a last row ``rule = TOTAL``: ``seconds`` = the sum of the jobs' seconds, i.e. the run time
on one core with no overlap -- with ``--cores N`` Snakemake ran up to N jobs at once, so the
run took less; ``job`` says how many jobs and N.  ``max_rss_mb`` = the largest job's.
``wall_span_s`` = from the first job's start to the last job's end, where a job ends at its
benchmark file's modification time and starts ``seconds`` earlier; it includes any pause
between Snakemake invocations, and means nothing once the files have been copied.  The
benchmark of rule ``summarize`` itself is skipped: it is written only after this stage ends, and so
are the rules of ``--exclude-rules`` (targets outside the run whose benchmarks share the folder).

``convergence.csv``: one row per DEQ prior, read from the training logs ``<train-logs>/<prior>.csv``
of train-deq (logs without fixed-point columns, i.e. the Gaussian-denoiser ones, are skipped):

    prior          log file stem (mtdeq, st_comp, st_sr, mtdeq_seed<s>, ...)
    steps          training steps logged (the last row of a step counts after a resume)
    fp_iter_mean   mean fixed-point iterations per solve, over all steps
    fp_iter_max    largest fixed-point iteration count of any solve
    pct_converged  % of solves that met the tolerance (every step solves batch x N problems,
                   so this is the mean of the per-step percentages); the paper reports > 99 %
    pct_diverged   % of solves flagged as diverged
    skipped_steps  steps whose update was skipped (no valid sample or a non-finite gradient)
    final_loss     loss of the last step that has one
    val_psnr_first, val_psnr_last   first and last validation PSNR (dB) of the log

A sidecar ``<out-timings>.provenance.json`` records the scale, --cores, the inputs and the
code version.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Collection
from pathlib import Path

import pandas as pd

from mtdeq.cli import add_stage

TIMING_COLUMNS = ["rule", "job", "seconds", "max_rss_mb", "cpu_time_s", "wall_span_s"]
CONVERGENCE_COLUMNS = ["prior", "steps", "fp_iter_mean", "fp_iter_max", "pct_converged", "pct_diverged",
                       "skipped_steps", "final_loss", "val_psnr_first", "val_psnr_last"]
FIXED_POINT_COLUMNS = ("step", "fp_iter_mean", "fp_iter_max", "pct_converged", "pct_diverged")
SELF_RULE = "summarize"
TOTAL = "TOTAL"


def _number(frame: pd.DataFrame, column: str) -> float:
    """Mean of a benchmark column (NA/absent -> nan)."""
    if column not in frame.columns:
        return float("nan")
    return float(pd.to_numeric(frame[column], errors="coerce").mean())


def read_benchmarks(folder: str | Path, rules: Collection[str] | None = None,
                    exclude: Collection[str] = ()) -> tuple[pd.DataFrame, list[tuple[float, float]]]:
    """Job rows (TIMING_COLUMNS, wall_span_s empty) of every benchmark TSV below ``folder``,
    and (start, end) in seconds since the epoch of each job (end = the file's mtime).
    ``rules``: keep only these rules; ``exclude``: leave these out (targets outside the run)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--benchmarks {folder}: no such folder (Snakemake writes it as jobs end)")
    rows, spans = [], []
    for path in sorted(folder.rglob("*.tsv")):
        parts = path.relative_to(folder).with_suffix("").parts
        rule, job = parts[0], "/".join(parts[1:])
        if rule == SELF_RULE or rule in exclude or (rules is not None and rule not in rules):
            continue
        frame = pd.read_csv(path, sep="\t")
        if "s" not in frame.columns or frame.empty:
            raise ValueError(f"{path}: not a Snakemake benchmark file (no column 's' or no row)")
        seconds = _number(frame, "s")
        rows.append({"rule": rule, "job": job, "seconds": seconds, "max_rss_mb": _number(frame, "max_rss"),
                     "cpu_time_s": _number(frame, "cpu_time"), "wall_span_s": float("nan")})
        end = path.stat().st_mtime
        spans.append((end - seconds, end))
    return pd.DataFrame(rows, columns=TIMING_COLUMNS), spans


def timings(folder: str | Path, cores: int | None = None, *, rules: Collection[str] | None = None,
            exclude: Collection[str] = ()) -> pd.DataFrame:
    """timings.csv (module doc): the job rows sorted by (rule, job), then the TOTAL row; ``rules`` /
    ``exclude`` as in read_benchmarks."""
    jobs, spans = read_benchmarks(folder, rules, exclude)
    if jobs.empty:
        which = f" of rule(s) {', '.join(sorted(rules))}" if rules is not None else ""
        raise FileNotFoundError(f"--benchmarks {folder}: no benchmark files{which} (<rule>[/<wildcards>].tsv)")
    jobs = jobs.sort_values(["rule", "job"], ignore_index=True)
    on = f"{cores} core(s)" if cores else "an unrecorded number of cores"
    total = {
        "rule": TOTAL,
        "job": f"sum of {len(jobs)} job(s) run on {on}",
        "seconds": jobs["seconds"].sum(),
        "max_rss_mb": jobs["max_rss_mb"].max(),
        "cpu_time_s": jobs["cpu_time_s"].sum(),
        "wall_span_s": max(e for _, e in spans) - min(s for s, _ in spans),
    }
    return pd.concat([jobs, pd.DataFrame([total], columns=TIMING_COLUMNS)], ignore_index=True)


def _first_last(series: pd.Series) -> tuple[float, float]:
    values = pd.to_numeric(series, errors="coerce").dropna()
    return (float(values.iloc[0]), float(values.iloc[-1])) if len(values) else (float("nan"), float("nan"))


def prior_convergence(path: str | Path) -> dict | None:
    """One convergence.csv row from a train-deq log; None for a log without fixed-point columns."""
    path = Path(path)
    log = pd.read_csv(path)
    if not all(c in log.columns for c in FIXED_POINT_COLUMNS):
        return None
    log = log.drop_duplicates("step", keep="last").sort_values("step")  # a resumed run rewrites steps
    steps = log.dropna(subset=["fp_iter_mean"])  # row 0 holds the initial validation only
    skipped = pd.to_numeric(steps.get("skipped", pd.Series(dtype=float)), errors="coerce").fillna(0)
    val_first, val_last = _first_last(log.get("val_psnr", pd.Series(dtype=float)))
    return {
        "prior": path.stem,
        "steps": len(steps),
        "fp_iter_mean": steps["fp_iter_mean"].mean(),
        "fp_iter_max": steps["fp_iter_max"].max(),
        "pct_converged": steps["pct_converged"].mean(),
        "pct_diverged": steps["pct_diverged"].mean(),
        "skipped_steps": int(skipped.sum()),
        "final_loss": _first_last(log.get("loss", pd.Series(dtype=float)))[1],
        "val_psnr_first": val_first,
        "val_psnr_last": val_last,
    }


def convergence(folder: str | Path) -> pd.DataFrame:
    """convergence.csv (module doc): one row per DEQ training log in ``folder``, sorted by prior."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--train-logs {folder}: no such folder (the training stages write their logs there)")
    rows = [row for path in sorted(folder.glob("*.csv")) if (row := prior_convergence(path)) is not None]
    return pd.DataFrame(rows, columns=CONVERGENCE_COLUMNS)


def summarize(*, scale: str, benchmarks: str, train_logs: str, out_timings: str, out_convergence: str,
              cores: int | None = None, exclude: Collection[str] = ()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write timings.csv, convergence.csv and the provenance sidecar; return both tables."""
    from mtdeq.io import atomic_write_text, provenance

    times, conv = timings(benchmarks, cores, exclude=exclude), convergence(train_logs)
    atomic_write_text(out_timings, times.to_csv(index=False, float_format="%.2f"))
    atomic_write_text(out_convergence, conv.to_csv(index=False, float_format="%.4g"))
    record = provenance({"scale": scale, "benchmarks": str(benchmarks), "train_logs": str(train_logs),
                         "cores": cores, "excluded_rules": sorted(exclude), "convergence": str(out_convergence)})
    atomic_write_text(Path(out_timings).with_suffix(".provenance.json"), json.dumps(record, indent=2) + "\n")
    return times, conv


def _run(args: argparse.Namespace) -> int:
    times, conv = summarize(scale=args.scale, benchmarks=args.benchmarks, train_logs=args.train_logs,
                            out_timings=args.out_timings, out_convergence=args.out_convergence, cores=args.cores,
                            exclude=args.exclude_rules)
    total = times.iloc[-1]
    print(f"{total['job']}: {total['seconds']:.0f} s summed, {total['wall_span_s']:.0f} s from first start "
          f"to last end -> {args.out_timings}")
    for row in conv.itertuples(index=False):
        print(f"{row.prior}: {row.steps} steps, fixed point {row.fp_iter_mean:.1f} iterations on average "
              f"(max {row.fp_iter_max:.0f}), {row.pct_converged:.1f}% converged, {row.pct_diverged:.1f}% diverged")
    print(f"{len(conv)} DEQ prior(s) -> {args.out_convergence}")
    return 0


def register(subparsers) -> None:
    """Add the ``summarize`` stage."""
    p = add_stage(subparsers, "summarize", "per-job run times (benchmark TSVs) and DEQ fixed-point convergence (training logs) of a run", __doc__)
    p.add_argument("--scale", required=True, help="scale of the run (recorded in the provenance)")
    p.add_argument("--benchmarks", required=True, help="benchmark folder of the run, e.g. benchmarks/quick")
    p.add_argument("--train-logs", required=True, help="training-log folder, e.g. results/quick/logs")
    p.add_argument("--out-timings", required=True, help="CSV to write, e.g. results/quick/timings.csv")
    p.add_argument("--out-convergence", required=True, help="CSV to write, e.g. results/quick/convergence.csv")
    p.add_argument("--cores", type=int, default=None, help="--cores of the Snakemake run (recorded)")
    p.add_argument("--exclude-rules", nargs="*", default=[], metavar="RULE",
                   help="benchmark folders/files of these rules are left out: the targets outside the run "
                        "(budget, lr_study, heldout) that share the benchmark folder")
    p.set_defaults(func=_run)
