"""The paper's Tables I-II as data: which tasks each table holds, their labels, the reported numbers.

``results/paper/paper_tables.csv`` (the only typed-in numbers of the suite) is read as a long
table (table, method, task, psnr); the tables stage puts our cells beside it, and the protocol
validation (mtdeq.validation) compares our Gauss and RED rows with it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

TABLES = {"table1": "Table I", "table2": "Table II"}
TASK_LABELS = {
    "comp80": "Completion 80%",
    "comp90": "Completion 90%",
    "blur1.6": "Deblur σ_blur=1.6",
    "blur2.0": "Deblur σ_blur=2.0",
}
for _f in (2, 3):
    for _kernel, _name in (("bicubic", "bicubic"), ("gauss", "Gaussian")):
        for _n, _sigma in (("n0", "0.00"), ("n1", "0.01")):
            TASK_LABELS[f"sr{_f}_{_kernel}_{_n}"] = f"{_f}x SR {_name} σ_n={_sigma}"
PAPER_SUFFIX, DELTA_SUFFIX = " paper", " Δ"


def read_paper(path: str | Path) -> pd.DataFrame:
    """The paper's numbers as a long table (table, method, task, psnr), file order kept."""
    table = pd.read_csv(path)
    expected = ["table", "method", "task", "psnr"]
    if list(table.columns) != expected:
        raise ValueError(f"{path}: columns {list(table.columns)}, expected {expected}")
    unknown = set(table["table"]) - set(TABLES)
    if unknown:
        raise ValueError(f"{path}: unknown table name(s) {sorted(unknown)}; expected {list(TABLES)}")
    return table


def table_tasks(paper: pd.DataFrame, table: str) -> list[str]:
    """Task columns of ``table`` in the paper's order (the order of first appearance in the paper file)."""
    return list(dict.fromkeys(paper.loc[paper["table"] == table, "task"]))


def fmt_db(value: float, signed: bool = False) -> str:
    """A dB value as the tables print it: 2 decimals (signed on request), an em dash when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:+.2f}" if signed else f"{value:.2f}"
