"""The verdict rule (mtdeq.verdict) on constructed per-image differences."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mtdeq import verdict as vd
from mtdeq.tolerance import Tolerance

IMAGES = ["baby", "bird", "butterfly", "head", "woman"]
# five standardised deviations: mean 0, sample sd 1
Z = np.array([-2.0, -1.0, 0.0, 1.0, 2.0]) / np.std([-2.0, -1.0, 0.0, 1.0, 2.0], ddof=1)


def sides(diffs, base=30.0, seeds=None):
    """(prior rows, baseline rows): baseline PSNR `base` + image offset, prior = baseline + diffs."""
    offsets = np.linspace(-2.0, 2.0, len(diffs))
    baseline = pd.DataFrame({"image": IMAGES[:len(diffs)], "seed": 0, "psnr": base + offsets})
    prior = pd.DataFrame({"image": IMAGES[:len(diffs)], "seed": 0, "psnr": base + offsets + np.asarray(diffs)})
    return prior, baseline


def judge(diffs, tolerance=0.05, **kw):
    prior, baseline = sides(diffs)
    return vd.paired_margin(prior, baseline, tolerance=tolerance, prior_name="proposed", baseline_name="gauss",
                            table="table1", task="comp80", **kw)


def test_a_margin_inside_the_noise_is_a_tie():
    m = judge(0.02 + 0.3 * Z)
    assert m.margin == pytest.approx(0.02) and m.n_images == 5 and not m.degenerate
    assert m.ci_low < 0 < m.ci_high and m.verdict == vd.TIE


def test_a_clear_interval_below_the_tolerance_is_a_tie():
    m = judge(0.03 + 0.005 * Z, tolerance=0.05)
    assert m.ci_low > 0  # every resample is ahead ...
    assert m.verdict == vd.TIE  # ... but a rerun on another CPU may move the margin by 0.05 dB
    assert judge(0.03 + 0.005 * Z, tolerance=0.01).verdict == vd.WIN


def test_a_clear_margin_is_a_win_and_its_mirror_a_loss():
    win = judge(0.5 + 0.05 * Z)
    assert win.verdict == vd.WIN and win.letter == "W" and 0.4 < win.ci_low < 0.5 < win.ci_high < 0.6
    loss = judge(-(0.5 + 0.05 * Z))
    assert loss.verdict == vd.LOSS and loss.letter == "L"
    assert loss.ci_low == pytest.approx(-win.ci_high) and loss.ci_high == pytest.approx(-win.ci_low)


def test_decide_needs_both_the_interval_and_the_tolerance():
    assert vd.decide(0.2, 0.1, 0.3, 0.05) == vd.WIN
    assert vd.decide(0.2, -0.01, 0.3, 0.05) == vd.TIE  # interval touches zero
    assert vd.decide(0.04, 0.01, 0.07, 0.05) == vd.TIE  # margin within the tolerance
    assert vd.decide(-0.2, -0.3, -0.1, 0.05) == vd.LOSS
    assert vd.decide(-0.2, -0.3, 0.0, 0.05) == vd.TIE


def test_bootstrap_is_reproducible_with_its_seed():
    d = np.array([0.31, -0.2, 0.05, 0.77, -0.41, 0.123, 0.5, 0.037])  # irregular: quantiles off a lattice
    assert vd.bootstrap_interval(d) == vd.bootstrap_interval(d)
    assert vd.bootstrap_interval(d, seed=7) == vd.bootstrap_interval(d, seed=7)
    assert vd.bootstrap_interval(d, seed=7) != vd.bootstrap_interval(d, seed=8)
    assert vd.RESAMPLES >= 10_000
    low, high = vd.bootstrap_interval(d)
    assert low < d.mean() < high and d.min() < low and high < d.max()
    with pytest.raises(ValueError, match="non-empty"):
        vd.bootstrap_interval([])


def test_seeds_are_averaged_per_image_before_pairing():
    baseline = pd.DataFrame({"image": IMAGES, "seed": 0, "psnr": 30.0})
    e = np.array([1.1, -0.9, 1.1, -0.9, 0.1])  # seed noise, opposite in the two seeds
    prior = pd.concat([pd.DataFrame({"image": IMAGES, "seed": 0, "psnr": 30.5 + e}),
                       pd.DataFrame({"image": IMAGES, "seed": 1, "psnr": 30.5 - e})], ignore_index=True)
    m = vd.paired_margin(prior, baseline, tolerance=0.05)
    # the seed mean per image is 30.5 on every image: the paired differences are all 0.5
    assert m.n_seeds == 2 and m.n_images == 5 and m.margin == pytest.approx(0.5)
    assert m.ci_low == pytest.approx(0.5) and m.ci_high == pytest.approx(0.5) and m.verdict == vd.WIN
    # the seed spread is reported beside it: sd of the per-seed margins 0.6 and 0.4
    assert m.seed_sd == pytest.approx(np.std([0.6, 0.4], ddof=1))
    # pooling the ten (image, seed) rows as if they were independent images would have tied
    low, _ = vd.bootstrap_interval(prior["psnr"].to_numpy() - 30.0)
    assert low < 0.05
    assert np.isnan(judge(0.5 + 0.05 * Z).seed_sd)  # one seed: no spread


def test_few_images_are_flagged_degenerate():
    assert vd.is_degenerate(1) and vd.is_degenerate(2) and vd.is_degenerate(3)
    assert not vd.is_degenerate(4) and not vd.is_degenerate(5)
    m = judge([0.4, 0.6])
    assert m.degenerate and (m.ci_low, m.ci_high) == pytest.approx((0.4, 0.6))  # the range of the two
    assert m.verdict == vd.WIN  # every image agrees and the margin exceeds τ: said so by the flag
    assert judge([-0.4, 0.6]).verdict == vd.TIE


def test_margins_table_pairs_images_and_takes_the_larger_row_tolerance():
    rows = []
    for method, shift in (("gauss", 0.0), ("gauss_budget", 0.25), ("proposed", 0.5)):
        for task in ("comp80", "sr2_bicubic_n0"):
            for image, z in zip(IMAGES, Z):
                rows.append({"method": method, "task": task, "image": image, "seed": 0,
                             "psnr": 30.0 + z + shift + (0.02 * z if method != "gauss" else 0.0)})
    per_image = pd.DataFrame(rows)
    tolerance = Tolerance(0.05, {}, {"gauss": 0.01, "gauss_budget": {"table2": 0.3}}, "test")
    table_of = {"comp80": "table1", "sr2_bicubic_n0": "table2", "blur1.6": "table1"}
    margins = vd.margins_table(per_image, [("proposed", "gauss"), ("proposed", "gauss_budget"), ("st_sr", "gauss")],
                               table_of, tolerance)
    assert list(margins.columns) == vd.MARGIN_COLUMNS
    assert len(margins) == 4  # st_sr and blur1.6 were not evaluated
    by = margins.set_index(["baseline", "task"])
    assert by.loc[("gauss", "comp80"), "tolerance"] == 0.05  # max(proposed 0.05 default, gauss 0.01)
    assert by.loc[("gauss_budget", "sr2_bicubic_n0"), "tolerance"] == 0.3
    assert by.loc[("gauss_budget", "sr2_bicubic_n0"), "verdict"] == vd.TIE  # +0.25 < τ 0.3
    assert by.loc[("gauss_budget", "comp80"), "verdict"] == vd.WIN
    counts = vd.counts(margins)
    assert list(counts.columns) == vd.COUNT_COLUMNS
    row = counts[(counts["baseline"] == "gauss_budget") & (counts["table"] == "table2")].iloc[0]
    assert (row["wins"], row["ties"], row["losses"], row["n_tasks"]) == (0, 1, 0, 1)
    assert vd.format_margin(0.1423, 0.051, 0.2249, vd.WIN) == "+0.14 [+0.05, +0.22] W"
    assert vd.format_counts(3, 1, 0) == "3/1/0"
