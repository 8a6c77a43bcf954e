"""The reproducibility tolerance of a reference: how far a table cell may move between runs.

``results/reference/<scale>/tolerance.yaml`` is written by hand from a measurement (the same DAG
rerun under other SIMD kernels and thread counts) and read by two stages:

* ``check`` allows each cell |ours - reference| <= tolerance(table, row);
* ``tables`` and ``budget`` call a margin "win"/"loss" only when it exceeds the tolerance of
  its rows (``mtdeq.verdict``): a margin smaller than what a rerun on another CPU may move is
  not a result.

The file is a mapping::

    default: 0.05                       # dB, every cell
    tables: {table1: 0.1}               # optional, per table
    rows:                               # optional, per method key (a row of the tables)
      gauss: 0.01                       #   one value for both tables, or
      proposed: {table1: 0.15, table2: 0.05}   # one per table
    measured: [...]                     # free-form record of the measurement (not read)

tolerance(table, row) = rows[row][table] if given, else rows[row] if a number, else
tables[table], else default.  Without a file: FALLBACK_TOLERANCE for every cell.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

TOLERANCE_FILE = "tolerance.yaml"  # in a reference folder; written by hand, kept across --bless
FALLBACK_TOLERANCE = 0.05  # dB, when no tolerance file is given or found


class ToleranceError(ValueError):
    """tolerance.yaml is malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Tolerance:
    """Allowed move of a cell in dB: per method key (one value, or one per table), else per table,
    else the default.  ``source`` says where the values came from (printed by the stages)."""

    default: float
    tables: dict = field(default_factory=dict)
    rows: dict = field(default_factory=dict)
    source: str = ""

    def of(self, table: str, method: str) -> float:
        """Tolerance of the cell (table, method key)."""
        fallback = self.tables.get(table, self.default)
        row = self.rows.get(method, fallback)
        return float(row.get(table, fallback) if isinstance(row, dict) else row)


def fallback(reason: str) -> Tolerance:
    """FALLBACK_TOLERANCE for every cell, with ``reason`` in the source."""
    return Tolerance(FALLBACK_TOLERANCE, {}, {}, f"fallback {FALLBACK_TOLERANCE} dB ({reason})")


def read_tolerance(path: str | Path) -> Tolerance:
    """Parse and validate one tolerance.yaml (see the module doc); ToleranceError when malformed."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ToleranceError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(spec, dict) or "default" not in spec:
        raise ToleranceError(f"{path}: expected a mapping with a 'default' tolerance in dB")
    unknown = sorted(set(spec) - {"default", "tables", "rows", "measured"})
    if unknown:
        raise ToleranceError(f"{path}: unknown key(s) {unknown}; expected default, tables, rows, measured")
    tables, rows = spec.get("tables") or {}, spec.get("rows") or {}
    values = [("default", spec["default"]), *tables.items()]
    for method, value in rows.items():  # a number, or {table: number}
        values += [(f"{method}.{t}", v) for t, v in value.items()] if isinstance(value, dict) else [(method, value)]
    for key, value in values:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ToleranceError(f"{path}: tolerance {key}: {value!r} is not a number >= 0 (dB)")
    return Tolerance(float(spec["default"]), dict(tables), dict(rows), str(path))


def tolerance_or_fallback(path: str | Path | None) -> Tolerance:
    """read_tolerance(path) when the file exists, else the fallback (the reason says which)."""
    if path is None:
        return fallback("no tolerance file given")
    if not Path(path).is_file():
        return fallback(f"{path} not found")
    return read_tolerance(path)
