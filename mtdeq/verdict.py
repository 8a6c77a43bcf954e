"""The verdict rule: is a prior's margin over a baseline a win, a tie or a loss?

One rule for every comparison the suite reports (the tables' "Proposed vs. Gauss" rows, the
training-budget curve).  For one task, a prior p evaluated with training seeds s = 1..S and a
baseline b (Gauss, RED: untrained, one seed; or the same-budget control) on the same test images
i = 1..n:

    x_i    = (1/S) Σ_s PSNR_p(i, s)          the prior's seeds averaged per image first
    y_i    = PSNR_b(i)                       (seed-averaged the same way should b have seeds)
    d_i    = x_i - y_i                       paired per-image differences
    margin = d̄ = (1/n) Σ_i d_i               = cell(p) - cell(b) of the tables

95 % interval: percentile bootstrap over the images.  B = RESAMPLES (10,000) resamples
i*_1..i*_n are drawn with replacement by ``numpy.random.default_rng(seed)`` (so the interval is
reproducible), d̄*_b = (1/n) Σ_k d_{i*_k}, and [ci_low, ci_high] = the (1-level)/2 and
(1+level)/2 quantiles of d̄*_1..d̄*_B.

Verdict, with τ the reproducibility tolerance of the margin (``margin_tolerance``: the larger of
the two rows' tolerances in the reference's tolerance.yaml, i.e. how far a rerun of the same
DAG on another CPU may move the cells):

    win   ci_low > 0  and margin >  τ
    loss  ci_high < 0 and margin < -τ
    tie   otherwise

so a win needs both an interval clear of zero (the images agree) and a margin that a rerun could
not erase.

Seeds enter only through x_i (the seed mean per image, before pairing): the interval measures
how much the margin depends on which images were drawn, at the seed-averaged prior.  How much it
depends on the training seed is reported beside it, not folded in:

    seed_sd = sd_s [ (1/n) Σ_i (PSNR_p(i, s) - y_i) ]     (ddof 1; NaN with one seed)

which is also the seed standard deviation of the cell of p (y does not depend on s).

Few images: a resample repeats one image n times with probability n^-n.  When that is at least
(1-level)/2 (n <= 3 at 95 %) the percentile interval is exactly the range [min d_i, max d_i] of
the differences; such a result is flagged ``degenerate`` and a W or L then says only that every
image agrees in sign (and the margin exceeds τ), not that it holds with 95 % confidence.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from mtdeq.tolerance import Tolerance

RESAMPLES = 10_000
LEVEL = 0.95
BOOTSTRAP_SEED = 0
WIN, TIE, LOSS = "win", "tie", "loss"
LETTER = {WIN: "W", TIE: "T", LOSS: "L"}
MARGIN_COLUMNS = ["prior", "baseline", "table", "task", "n_images", "n_seeds", "margin", "ci_low", "ci_high",
                  "tolerance", "verdict", "seed_sd", "degenerate"]
COUNT_COLUMNS = ["prior", "baseline", "table", "n_tasks", "wins", "ties", "losses", "mean_margin"]


def bootstrap_interval(diffs, *, resamples: int = RESAMPLES, level: float = LEVEL,
                       seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``diffs`` (resampling the entries with replacement)."""
    d = np.asarray(diffs, dtype=float)
    if d.ndim != 1 or d.size == 0 or not np.isfinite(d).all():
        raise ValueError(f"bootstrap_interval: need a non-empty 1-D array of finite differences, got {d!r}")
    if resamples < 1 or not 0 < level < 1:
        raise ValueError(f"bootstrap_interval: resamples {resamples} must be >= 1 and level {level} in (0, 1)")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def is_degenerate(n_images: int, level: float = LEVEL) -> bool:
    """True when the percentile interval of n_images differences is their range (n^-n >= (1-level)/2)."""
    return float(n_images) ** -n_images >= (1 - level) / 2


def decide(margin: float, ci_low: float, ci_high: float, tolerance: float) -> str:
    """win / loss / tie by the rule of the module doc."""
    if ci_low > 0 and margin > tolerance:
        return WIN
    if ci_high < 0 and margin < -tolerance:
        return LOSS
    return TIE


@dataclass(frozen=True)
class Margin:
    """The margin of ``prior`` over ``baseline`` on one task (columns of MARGIN_COLUMNS)."""

    prior: str
    baseline: str
    table: str
    task: str
    n_images: int
    n_seeds: int
    margin: float
    ci_low: float
    ci_high: float
    tolerance: float
    verdict: str
    seed_sd: float
    degenerate: bool

    @property
    def letter(self) -> str:
        return LETTER[self.verdict]


def paired_margin(prior: pd.DataFrame, baseline: pd.DataFrame, *, tolerance: float, prior_name: str = "",
                  baseline_name: str = "", table: str = "", task: str = "", resamples: int = RESAMPLES,
                  level: float = LEVEL, seed: int = BOOTSTRAP_SEED) -> Margin:
    """The margin of one prior over one baseline on one task.

    ``prior`` and ``baseline`` hold per-image rows (columns image, psnr, and seed when a side has
    several training seeds); each side is averaged over its seeds per image, the two are paired
    on the images both hold, and the module doc's rule gives the interval and the verdict.
    """
    def by_image(rows: pd.DataFrame) -> pd.Series:
        return rows.groupby("image", sort=True)["psnr"].mean()

    x, y = by_image(prior), by_image(baseline)
    d = (x - y).dropna()
    if d.empty:
        raise ValueError(f"{prior_name} vs {baseline_name} {task}: no image evaluated by both")
    low, high = bootstrap_interval(d.to_numpy(), resamples=resamples, level=level, seed=seed)
    margin = float(d.mean())
    seeds = sorted(set(prior["seed"])) if "seed" in prior.columns else [0]
    if len(seeds) > 1:
        images = d.index
        per_seed = [float((g.set_index("image")["psnr"].reindex(images) - y.reindex(images)).mean())
                    for _, g in prior.groupby("seed", sort=True)]
        seed_sd = float(np.std(per_seed, ddof=1))
    else:
        seed_sd = float("nan")
    return Margin(prior=prior_name, baseline=baseline_name, table=table, task=task, n_images=int(d.size),
                  n_seeds=len(seeds), margin=margin, ci_low=low, ci_high=high, tolerance=float(tolerance),
                  verdict=decide(margin, low, high, tolerance), seed_sd=seed_sd,
                  degenerate=is_degenerate(int(d.size), level))


def margin_tolerance(tolerance: Tolerance, table: str, prior_row: str, baseline_row: str) -> float:
    """τ of the margin prior - baseline: the larger of the two rows' tolerances in ``table``."""
    return max(tolerance.of(table, prior_row), tolerance.of(table, baseline_row))


def margins_table(per_image: pd.DataFrame, pairs, table_of: dict[str, str], tolerance: Tolerance,
                  **bootstrap) -> pd.DataFrame:
    """MARGIN_COLUMNS for every (prior, baseline) of ``pairs`` and every task of ``table_of``
    (task -> table) that both methods were evaluated on; per_image: columns method, task, image, seed, psnr."""
    records = []
    tasks = [t for t in table_of if t in set(per_image["task"])]
    for prior, baseline in pairs:
        for task in tasks:
            p = per_image[(per_image["method"] == prior) & (per_image["task"] == task)]
            b = per_image[(per_image["method"] == baseline) & (per_image["task"] == task)]
            if p.empty or b.empty:
                continue
            table = table_of[task]
            records.append(asdict(paired_margin(
                p, b, tolerance=margin_tolerance(tolerance, table, prior, baseline), prior_name=prior,
                baseline_name=baseline, table=table, task=task, **bootstrap)))
    return pd.DataFrame(records, columns=MARGIN_COLUMNS)


def counts(margins: pd.DataFrame, by=("prior", "baseline", "table")) -> pd.DataFrame:
    """W/T/L counts and the mean margin over the tasks, per group ``by`` (default: COUNT_COLUMNS)."""
    by = list(by)
    records = []
    for key, group in margins.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        verdicts = list(group["verdict"])
        records.append({**dict(zip(by, key)), "n_tasks": len(group), "wins": verdicts.count(WIN),
                        "ties": verdicts.count(TIE), "losses": verdicts.count(LOSS),
                        "mean_margin": float(group["margin"].mean())})
    return pd.DataFrame(records, columns=by + ["n_tasks", "wins", "ties", "losses", "mean_margin"])


def format_margin(margin: float, ci_low: float, ci_high: float, verdict: str) -> str:
    """'+0.14 [+0.05, +0.22] W': the margin, its interval and the verdict's letter."""
    return f"{margin:+.2f} [{ci_low:+.2f}, {ci_high:+.2f}] {LETTER[verdict]}"


def format_counts(wins: int, ties: int, losses: int) -> str:
    """'3/1/0' (W/T/L)."""
    return f"{wins}/{ties}/{losses}"
