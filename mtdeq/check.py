"""Compare regenerated Tables I-II with a blessed reference, cell by cell.

    python -m mtdeq check --reference results/reference/<scale> [--results results] [--tolerance DB] [--bless]

The allowed difference of each cell comes from ``<reference>/tolerance.yaml``, written with
the measurement it came from (how far the cells moved when the same DAG ran under other SIMD
kernels and thread counts): a ``default`` in dB, optionally overridden per table (``tables``)
and per method key (``rows``: one value, or one per table, e.g. ``proposed: {table1: 0.75}``).  ``--tolerance`` replaces all of them by one value; without
either, 0.05 dB.

When a cell fails, the check also says where the two runs part: the tables' provenance
records a fingerprint of every trained checkpoint, the tuned settings and every evaluation
CSV (``mtdeq.fingerprint``), and the first stage whose fingerprint differs from the
reference's is named ("gauss.pt differs: training is not bit-reproducible on this machine"
as opposed to "weights equal, evaluation differs").  Failing cells are listed again sorted
by |difference|, and the devices and CPU kernels of both runs are printed.

Only our numbers are compared (rows of kind ``ours`` and ``extra``, the ``<task>`` columns;
never the paper's values, the differences or the derived rows, which follow from the
compared cells).  Each cell is printed as ``table method task reference ours diff OK|FAIL``.
The exit status is 1 when any cell differs by more than the tolerance (dB), when a reference
cell has no value in the results, when no cell was compared at all, when the results
were produced at another scale than the reference (read from ``<table>.provenance.json``), or
when the per-image evidence fails its audit (below).

Per-image evidence.  The tables stage writes ``per_image.csv``, the rows every cell is the mean
of (mtdeq.per_image: method, task, image, seed, psnr, ...).  When the reference holds one, the
check audits it against the reference's own tables and fails, naming the row, when

* a (method, task, seed) lacks an image that other rows of the run have (every method x task
  must hold the same image set), or a (method, task) lacks a seed of its method;
* a (method, task, image, seed) appears twice;
* a cell is not the mean of its rows within rounding (ROUNDING: the cells carry 2 decimals) --
  a seeded method's cell is the mean over its seeds per image, then over the images, and a
  ``<m>_seed<s>`` row the mean of seed s -- or rows of a table's task have no cell.

The results' ``per_image.csv`` is audited the same way.  A folder without one (a reference
blessed before per-image evidence, such as the quick and quick-drunet references of 2026-12)
is reported as skipped and does not fail the check.

``--bless`` copies the current tables (``table{1,2}.csv``, ``.md``, ``.provenance.json``)
and ``fig2.png`` when present into the reference folder, after checking that the folder is
named after the results' scale and does not hold another scale's reference.  It also copies,
when present, the run's records (EXTRA_FILES, same relative names): ``spread.csv``,
``budget_check.csv`` (PSNR at K and 2K of the baselines), the per-image evidence and the
verdicts (``per_image.csv``, ``margins.csv``, ``margin_counts.csv``, ``margins.md``,
``seeds.csv``; results whose per-image rows fail the audit are not blessed), the extra
tables ``extra/`` (target ``extra``), and from ``<results>/<scale>/`` the tuned parameters
(``tuned_params.csv``, ``tuned_params_own/*.csv``), ``timings.csv``, ``convergence.csv`` and the
held-out records ``heldout/`` (HELDOUT_FILES, target ``heldout``);
a copy left in the reference from an earlier bless whose source is now absent is removed,
so that the reference describes one run.  These records are for reading (README, review):
the check compares Tables I-II cells only, since run times vary and the tuned parameters and
convergence statistics act on the results only through the table cells.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mtdeq.cli import add_stage
from mtdeq.fingerprint import explain
from mtdeq.per_image import audit, cell_means, split_seed
from mtdeq.tables import DELTA_SUFFIX, PAPER_SUFFIX, TABLES
from mtdeq.tolerance import FALLBACK_TOLERANCE, TOLERANCE_FILE, Tolerance, ToleranceError, tolerance_or_fallback

COMPARED_KINDS = ("ours", "extra")
TABLE_FILES = [f"{t}{ext}" for t in TABLES for ext in (".csv", ".md", ".provenance.json")]
BLESSED_FILES = TABLE_FILES + ["fig2.png"]
# optional records of the run, relative to --results ({scale} = the results' scale)
PER_IMAGE_FILE = "per_image.csv"  # the rows every cell is the mean of (mtdeq.per_image)
# target `heldout` (mtdeq.heldout): its per-image rows, margins and figure, blessed beside Set5's
HELDOUT_FILES = ["images.csv", "per_image.csv", "margins.csv", "margin_counts.csv", "comparison.csv", "comparison.md",
                 "margins.png", "timings.csv"]
EVIDENCE_FILES = [PER_IMAGE_FILE, "margins.csv", "margin_counts.csv", "margins.md", "seeds.csv"]
EXTRA_FILES = ["spread.csv", "budget_check.csv", "protocol_validation.csv", "protocol_validation.md", *EVIDENCE_FILES,
               *(f"extra/{name}" for name in TABLE_FILES), "extra/spread.csv",
               *(f"extra/{name}" for name in EVIDENCE_FILES),
               "{scale}/tuned_params.csv", "{scale}/timings.csv", "{scale}/convergence.csv",
               *(f"{{scale}}/heldout/{name}" for name in HELDOUT_FILES)]
EXTRA_GLOBS = ["{scale}/tuned_params_own/*.csv"]


class CheckError(RuntimeError):
    """The comparison cannot be made (missing files, different scales); the message says why."""


@dataclass(frozen=True)
class Cell:
    """One compared cell; ours is nan when the results lack it."""

    table: str
    method: str
    task: str
    reference: float
    ours: float
    tolerance: float

    @property
    def diff(self) -> float:
        return self.ours - self.reference

    @property
    def ok(self) -> bool:
        return math.isfinite(self.ours) and abs(self.diff) <= self.tolerance + 1e-9


def read_scale(folder: Path, table: str) -> str:
    """The ``scale`` recorded in ``<folder>/<table>.provenance.json``."""
    path = folder / f"{table}.provenance.json"
    if not path.is_file():
        raise CheckError(f"{path}: provenance file not found (written by the tables stage)")
    scale = json.loads(path.read_text()).get("scale")
    if not scale:
        raise CheckError(f"{path}: no 'scale' key")
    return str(scale)


def our_cells(path: Path) -> dict[tuple[str, str], float]:
    """{(method key, task): our value} for the compared rows of one table CSV (empty cells skipped)."""
    if not path.is_file():
        raise CheckError(f"{path}: table not found")
    table = pd.read_csv(path)
    for column in ("key", "kind"):
        if column not in table.columns:
            raise CheckError(f"{path}: no column {column!r}; not a table written by the tables stage")
    tasks = [c for c in table.columns[3:] if not c.endswith(PAPER_SUFFIX) and not c.endswith(DELTA_SUFFIX)]
    cells = {}
    for _, row in table[table["kind"].isin(COMPARED_KINDS)].iterrows():
        for task in tasks:
            if pd.notna(row[task]):
                cells[(row["key"], task)] = float(row[task])
    return cells


def load_tolerance(reference: Path, override: float | None) -> Tolerance:
    """--tolerance when given, else <reference>/tolerance.yaml, else FALLBACK_TOLERANCE (mtdeq.tolerance)."""
    if override is not None:
        if not (override >= 0):
            raise CheckError(f"--tolerance {override}: must be a number >= 0 (dB)")
        return Tolerance(override, {}, {}, "--tolerance")
    try:
        return tolerance_or_fallback(reference / TOLERANCE_FILE)
    except ToleranceError as err:
        raise CheckError(str(err)) from None


def compare(reference: Path, results: Path, tolerance: Tolerance) -> list[Cell]:
    """Every reference cell against the results; raises CheckError when the scales differ."""
    cells = []
    for table in TABLES:
        ref_scale, our_scale = read_scale(reference, table), read_scale(results, table)
        if ref_scale != our_scale:
            raise CheckError(
                f"{table}: the reference {reference} is for scale {ref_scale!r} but the results in "
                f"{results} were produced at scale {our_scale!r}; compare like with like"
            )
        ours = our_cells(results / f"{table}.csv")
        for (method, task), value in our_cells(reference / f"{table}.csv").items():
            cells.append(Cell(table, method, task, value, ours.get((method, task), math.nan),
                              tolerance.of(table, method)))
    return cells


ROUNDING = 0.005 + 1e-4  # dB: the cells are printed with 2 decimals, the per-image rows with 6


def cell_problems(per_image: pd.DataFrame, folder: Path) -> list[str]:
    """Where the table cells of ``folder`` are not the means of its per-image rows (within ROUNDING).

    A row key ``<m>_seed<s>`` is checked against method m's rows of seed s (mean over images), any
    other key against all of the method's rows (seeds averaged per image, then images:
    mtdeq.per_image.cell_means); per-image rows of a table's task without a cell are listed too.
    """
    problems = []
    cells = {(m, t): v for m, t, v in cell_means(per_image)[["method", "task", "psnr"]].itertuples(index=False)}
    for table in TABLES:
        ours = our_cells(folder / f"{table}.csv")
        tasks = set(pd.read_csv(folder / f"{table}.csv", nrows=0).columns)
        for (key, task), value in ours.items():
            method, seed = split_seed(key, -1)
            if seed >= 0:
                rows = per_image[(per_image["method"] == method) & (per_image["seed"] == seed)
                                 & (per_image["task"] == task)]
                mean = float(rows["psnr"].mean()) if len(rows) else math.nan
            else:
                mean = cells.get((key, task), math.nan)
            if math.isnan(mean):
                problems.append(f"{table} {key} {task}: cell {value:.2f} but no per-image rows")
            elif abs(mean - value) > ROUNDING:
                problems.append(f"{table} {key} {task}: cell {value:.2f} but its per-image rows average to "
                                f"{mean:.4f} (|diff| {abs(mean - value):.4f} > {ROUNDING:.4f} dB)")
        for (method, task) in cells:
            if task in tasks and (method, task) not in ours:
                problems.append(f"{table} {method} {task}: per-image rows but no table cell")
    return problems


def evidence_problems(folder: Path) -> list[str] | None:
    """None when ``folder`` holds no per_image.csv (tables written before per-image evidence);
    else what is wrong with it: mtdeq.per_image.audit (a missing image or seed, duplicates) and
    cell_problems (rows that do not average to the cells)."""
    path = folder / PER_IMAGE_FILE
    if not path.is_file():
        return None
    per_image = pd.read_csv(path)
    problems = audit(per_image)
    if problems and problems[0].startswith("per-image rows lack"):
        return [f"{path}: {p}" for p in problems]
    return problems + cell_problems(per_image, folder)


def report_evidence(label: str, folder: Path) -> bool:
    """Print the per-image audit of one folder; True when it found problems (False when skipped)."""
    problems = evidence_problems(folder)
    if problems is None:
        print(f"per-image evidence ({label}): {folder / PER_IMAGE_FILE} not found (tables written before "
              "per-image evidence); audit skipped")
        return False
    if problems:
        print(f"per-image evidence ({label}): FAIL, {len(problems)} problem(s) in {folder / PER_IMAGE_FILE}:")
        for problem in problems:
            print(f"  {problem}")
        return True
    rows = pd.read_csv(folder / PER_IMAGE_FILE)
    print(f"per-image evidence ({label}): OK, {len(rows)} rows, {rows['image'].nunique()} image(s), "
          f"seeds {sorted(int(s) for s in set(rows['seed']))}; every cell is the mean of its rows")
    return False


def _reference_name(relative: str, scale: str) -> str:
    """Where a record of <results>/<relative> goes in the reference: <scale>/x -> x."""
    prefix = f"{scale}/"
    return relative.removeprefix(prefix)


def bless(reference: Path, results: Path) -> list[Path]:
    """Copy the current tables, fig2.png and the run's records into ``reference``; return the copies."""
    from mtdeq.io import atomic_write_bytes

    scales = {read_scale(results, table) for table in TABLES}
    if len(scales) != 1:
        raise CheckError(f"{results}: tables come from different scales {sorted(scales)}")
    scale = scales.pop()
    if reference.name != scale:
        raise CheckError(
            f"--reference {reference}: the folder must be named after the results' scale {scale!r} "
            f"(results/reference/{scale})"
        )
    if (reference / "table1.provenance.json").is_file():
        old = read_scale(reference, "table1")
        if old != scale:
            raise CheckError(f"{reference} holds a reference for scale {old!r}; refusing to overwrite with {scale!r}")
    problems = evidence_problems(results)
    if problems:
        raise CheckError(f"{results / PER_IMAGE_FILE}: refusing to bless tables whose per-image rows are not "
                         "their evidence:\n  " + "\n  ".join(problems))
    copied = []
    for name in BLESSED_FILES:
        source = results / name
        if source.is_file():
            copied.append(atomic_write_bytes(reference / name, source.read_bytes()))
        elif name != "fig2.png":
            raise CheckError(f"{source}: missing; run the tables stage before --bless")
    records = [name.format(scale=scale) for name in EXTRA_FILES]
    for pattern in EXTRA_GLOBS:
        records += sorted(str(p.relative_to(results)) for p in results.glob(pattern.format(scale=scale)))
    present = [r for r in records if (results / r).is_file()]
    if any(r.startswith("extra/") for r in present) and read_scale(results / "extra", "table1") != scale:
        print(f"skipped {results / 'extra'}: its tables come from another scale than {scale!r}")
        present = [r for r in present if not r.startswith("extra/")]
    for relative in present:
        target = reference / _reference_name(relative, scale)
        copied.append(atomic_write_bytes(target, (results / relative).read_bytes()))
    # a record blessed earlier whose source is gone now would describe another run
    earlier = [reference / _reference_name(name.format(scale=scale), scale) for name in EXTRA_FILES]
    for pattern in EXTRA_GLOBS:
        earlier += sorted(reference.glob(_reference_name(pattern.format(scale=scale), scale)))
    kept = {reference / _reference_name(r, scale) for r in present}
    for path in earlier:
        if path.is_file() and path not in kept:
            path.unlink()
            print(f"removed {path} (absent from {results})")
    return copied


def _sidecar(folder: Path) -> dict:
    path = folder / "table1.provenance.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def describe_run(sidecar: dict) -> str:
    """Devices, CPU kernels, precision and threads of a run, from its table provenance."""
    record = sidecar.get("provenance", {})
    devices = ", ".join(sidecar.get("devices") or ["unrecorded"])
    env = " ".join(f"{k}={v}" for k, v in (record.get("env") or {}).items())
    return (f"device(s) {devices}; tables written with CPU kernels {record.get('cpu_capability', '?')}, "
            f"precision {record.get('precision', '?')}, torch {record.get('torch', '?')}"
            + (f", {env}" if env else ""))


def run_check(reference: str | Path, results: str | Path, tolerance: float | None = None, *,
              do_bless: bool = False) -> int:
    """Print every cell and return the exit status (0 = all within tolerance)."""
    reference, results = Path(reference), Path(results)
    try:
        if do_bless:
            for path in bless(reference, results):
                print(f"blessed {path}")
            return 0
        limits = load_tolerance(reference, tolerance)
        cells = compare(reference, results, limits)
    except CheckError as err:
        print(f"check: ERROR: {err}")
        return 1
    ref_side, our_side = _sidecar(reference), _sidecar(results)
    print(f"reference: {describe_run(ref_side)}")
    print(f"results:   {describe_run(our_side)}")
    print(f"tolerance: {limits.source}")
    evidence_failed = [report_evidence(label, folder) for label, folder in (("reference", reference),
                                                                            ("results", results))]
    print(f"{'table':7} {'method':26} {'task':16} {'reference':>9} {'ours':>9} {'diff':>7} {'tol':>5}")
    for c in cells:
        print(_cell_line(c))
    failed = [c for c in cells if not c.ok]
    if not cells:
        print(f"check: FAIL: zero cells compared (reference {reference} has no values)")
        return 1
    if failed:
        print("failing cells, largest |diff| first:")
        for c in sorted(failed, key=lambda c: -abs(c.diff) if math.isfinite(c.diff) else -math.inf):
            print(_cell_line(c))
        print(f"where the runs part: {explain(ref_side.get('artefacts'), our_side.get('artefacts'))}")
    verdict = "FAIL" if failed or any(evidence_failed) else "OK"
    worst = max((abs(c.diff) for c in cells if math.isfinite(c.diff)), default=math.nan)
    broken = [label for label, bad in zip(("reference", "results"), evidence_failed) if bad]
    print(f"check: {verdict}: {len(cells) - len(failed)}/{len(cells)} cell(s) within tolerance "
          f"(max |diff| {worst:.3f} dB)"
          + (f"; the {' and '.join(broken)} per-image rows are not the cells' evidence (see above)" if broken else ""))
    return 1 if verdict == "FAIL" else 0


def _cell_line(c: Cell) -> str:
    status = "OK" if c.ok else ("FAIL (missing in results)" if math.isnan(c.ours) else "FAIL")
    return (f"{c.table:7} {c.method:26} {c.task:16} {c.reference:9.2f} {c.ours:9.2f} {c.diff:+7.2f} "
            f"{c.tolerance:5.2f} {status}")


def _run(args: argparse.Namespace) -> int:
    return run_check(args.reference, args.results, args.tolerance, do_bless=args.bless)


def register(subparsers) -> None:
    """Add the ``check`` stage."""
    p = add_stage(subparsers, "check", "compare results/table{1,2}.csv with a blessed reference cell by cell (or --bless it)", __doc__)
    p.add_argument("--reference", required=True, help="blessed folder, e.g. results/reference/ci")
    p.add_argument("--results", default="results", help="folder with the regenerated tables (default results)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest allowed |ours - reference| in dB for every cell; default: the "
                   f"reference's {TOLERANCE_FILE} (measured spread), else {FALLBACK_TOLERANCE}")
    p.add_argument("--bless", action="store_true", help="copy the current tables into --reference instead")
    p.set_defaults(func=_run)
