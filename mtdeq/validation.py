"""Do our baselines reproduce the paper's, and have they converged?

The Gauss and RED rows involve no training of ours, so ours - paper measures the test protocol,
the tuning and the backbone (``protocol_validation``).  ``budget_check`` reads the evaluations run
with ``evaluate --budget-check`` (the same solve with twice the iterations): a cell whose mean PSNR
still moves by more than CONVERGED_DB dB from K to 2K has not converged; the tables mark it
NOT_CONVERGED and leave it out of their ranking (``unconverged_cells``).
"""

from __future__ import annotations

import math

import pandas as pd

from mtdeq.paper import TABLES, TASK_LABELS, fmt_db, table_tasks

BUDGET_CHECK_COLUMNS = ["method", "task", "n_images", "psnr_k", "psnr_2k", "delta", "k", "best_k", "best_psnr"]
# multiples f of the tuned K an evaluation may carry (--budget-check: 2; --budget-curve: 0.5, 1.5, 2)
BUDGET_FACTORS = {0.5: "psnr_0.5x", 1.0: "psnr", 1.5: "psnr_1.5x", 2.0: "psnr_2x"}


def best_factor(means: dict[float, float]) -> float:
    """The multiple of K with the highest mean PSNR (ties: the smaller budget)."""
    return max(means, key=lambda f: (means[f], -f))


def budget_check(per_image: pd.DataFrame) -> pd.DataFrame:
    """Mean PSNR at the tuned K and at 2K per (method, task) for the rows evaluated with --budget-check.

    ``delta`` = psnr_2k - psnr_k: how much the result still moves with twice the iterations.
    ``k`` is the tuned K (iterations of the K solve, the largest over the images; RED stops early),
    ``best_k`` / ``best_psnr`` the best of the budgets evaluated (K and 2K, plus K/2 and 3K/2 with
    --budget-curve; ties: the smaller): where more iterations make a cell worse, the best K, not the cap.
    """
    if "psnr_2x" not in per_image.columns:
        return pd.DataFrame(columns=BUDGET_CHECK_COLUMNS)
    checked = per_image[per_image["psnr_2x"].notna()]
    rows = []
    for (method, task), group in checked.groupby(["method", "task"], sort=True):
        means = {f: float(group[c].mean()) for f, c in BUDGET_FACTORS.items()
                 if c in group.columns and group[c].notna().all()}
        best = best_factor(means)
        k = int(group["iterations"].max())
        rows.append({"method": method, "task": task, "n_images": len(group), "psnr_k": means[1.0],
                     "psnr_2k": means[2.0], "delta": means[2.0] - means[1.0], "k": k,
                     "best_k": max(1, int(round(best * k))), "best_psnr": means[best]})
    return pd.DataFrame(rows, columns=BUDGET_CHECK_COLUMNS)


VALIDATION_COLUMNS = ["table", "task", "method", "ours", "paper", "delta", "psnr_2k_minus_k", "converged"]
VALIDATED = ("gauss", "red")  # the rows whose method and protocol are the paper's (not our training)


def protocol_validation(means: pd.DataFrame, paper: pd.DataFrame, budget: pd.DataFrame) -> pd.DataFrame:
    """Our Gauss and RED rows against the paper's, per column (VALIDATION_COLUMNS).

    These two rows involve no training of ours, so ours - paper measures the test protocol, the
    tuning and the backbone rather than Algorithm 1; ``psnr_2k_minus_k`` is the iteration-budget
    check of the same cell (NaN when it was not run) and ``converged`` whether |2K - K| <= CONVERGED_DB
    (empty when it was not run).
    """
    ours = {(m, t): v for m, t, v in zip(means["method"], means["task"], means["psnr"])}
    moved = {(m, t): v for m, t, v in zip(budget["method"], budget["task"], budget["delta"])}
    records = []
    for name in TABLES:
        sub = paper[paper["table"] == name]
        reported = {(m, t): v for m, t, v in zip(sub["method"], sub["task"], sub["psnr"])}
        for task in table_tasks(paper, name):
            for method in VALIDATED:
                mine, theirs = ours.get((method, task), math.nan), reported.get((method, task), math.nan)
                change = moved.get((method, task), math.nan)
                records.append({"table": name, "task": task, "method": method, "ours": mine, "paper": theirs,
                                "delta": mine - theirs, "psnr_2k_minus_k": change,
                                "converged": None if math.isnan(change) else bool(abs(change) <= CONVERGED_DB)})
    return pd.DataFrame(records, columns=VALIDATION_COLUMNS)


def _not_converged(value) -> bool:
    """True for a ``converged`` value that says no (False), not for one that is unknown (None / NaN)."""
    return value is not None and not (isinstance(value, float) and math.isnan(value)) and not bool(value)


def validation_markdown(validation: pd.DataFrame, scale: str) -> str:
    """The protocol-validation table: one row per column of Tables I-II, Gauss and RED ours / paper / Δ."""
    lines = [f"## Protocol validation — scale {scale}", "",
             "The Gauss and RED rows involve no training of ours: ours − paper measures the test protocol, "
             "the tuning and the backbone. 2K − K: the change of our mean PSNR with twice the iterations.", "",
             "| Column | Gauss ours | Gauss paper | Gauss Δ | Gauss 2K − K | RED ours | RED paper | RED Δ | RED 2K − K |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for task, group in validation.groupby("task", sort=False):
        by = group.set_index("method")
        cells = []
        for method in VALIDATED:
            if method in by.index:
                r = by.loc[method]
                moved = fmt_db(r["psnr_2k_minus_k"], True)
                if _not_converged(r["converged"]):
                    moved += NOT_CONVERGED
                cells += [fmt_db(r["ours"]), fmt_db(r["paper"]), fmt_db(r["delta"], True), moved]
            else:
                cells += ["—"] * 4
        lines.append(f"| {TASK_LABELS.get(task, task)} | " + " | ".join(cells) + " |")
    if validation["converged"].map(_not_converged).any():
        lines += ["", f"{NOT_CONVERGED} not converged: |2K − K| > {CONVERGED_DB} dB; such a cell is left out of the "
                  "ranking of Tables I-II and marked there."]
    for method in VALIDATED:
        d = validation.loc[validation["method"] == method, "delta"].dropna()
        if len(d):
            lines.append("")
            lines.append(f"{method}: mean Δ {d.mean():+.2f} dB over {len(d)} columns (min {d.min():+.2f}, "
                         f"max {d.max():+.2f}).")
    return "\n".join(lines) + "\n"


CONVERGED_DB = 0.1  # a Gauss / RED cell with |PSNR(2K) - PSNR(K)| above this has not converged
NOT_CONVERGED = "†"


def unconverged_cells(budget: pd.DataFrame | None, threshold: float = CONVERGED_DB) -> dict[tuple[str, str], float]:
    """{(method, task): PSNR(2K) - PSNR(K)} of the baseline cells (VALIDATED: Gauss, RED) that still move by
    more than ``threshold`` dB with twice the iterations (budget_check's rows)."""
    if budget is None or budget.empty:
        return {}
    moved = budget[budget["method"].isin(VALIDATED) & (budget["delta"].abs() > threshold)]
    return {(m, t): float(d) for m, t, d in zip(moved["method"], moved["task"], moved["delta"])}
