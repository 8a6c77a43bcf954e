"""Tuning rules of mtdeq.tune: the legal ADMM grid (sigma_min <= sigma_max), extension clamped to a bound
before the bound is reported, the min_gain stopping rule's wording, and the iteration cap reported
wherever it binds (RED's stop rule not reached, ADMM's K at max_iterations)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import extend_to_optimum, write_synthetic_images, write_tiny_prior
from mtdeq import tune as tn


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny random DRUNet checkpoint (conftest TINY) and two 16x16 validation images."""
    root = tmp_path_factory.mktemp("tune")
    prior = write_tiny_prior(root / "prior.pt")
    images = root / "val"
    images.mkdir()
    write_synthetic_images(images, 2, 16, 16)
    return {"root": root, "prior": str(prior), "images": str(images)}


# ----------------------------------------------------------------------------- sigma_min <= sigma_max
def test_admm_grid_holds_only_decreasing_schedules():
    grid = tn.Grid(iterations=(5,), sigma_max=(0.05, 0.2), sigma_min=(0.01, 0.06, 0.2))
    pairs = [(f["sigma_max"], f["sigma_min"]) for f, _ in tn.candidates("admm", grid, 0.0)]
    assert pairs == [(0.05, 0.01), (0.2, 0.01), (0.2, 0.06), (0.2, 0.2)]  # never sigma_min > sigma_max
    with pytest.raises(ValueError, match=r"sigma_min \[0\.1\].*sigma_max \[0\.05\]"):
        tn.candidates("admm", tn.Grid(iterations=(5,), sigma_max=(0.05,), sigma_min=(0.1,)), 0.0)
    red = tn.Grid(iterations=(5,), red_lam=(0.1, 0.3), red_sigma=(0.02,))
    assert len(tn.candidates("red", red, 0.0)) == 2  # RED has no schedule


def test_extension_tries_sigma_min_equal_to_sigma_max_before_reporting_the_bound():
    """The quick-scale case: sigma_min wants to grow past sigma_max = 0.2; 0.06 -> 0.144 -> 0.2 (clamped,
    not refused as 0.346 would be), and only then is 'sigma_min = sigma_max' the reported bound."""
    def objective(f):  # sigma_max best at 0.2, sigma_min as large as possible
        return 30 - 10 * (f["sigma_max"] - 0.2) ** 2 + f["sigma_min"]

    grid = tn.Grid(iterations=(15,), sigma_max=(0.1, 0.2, 0.294), sigma_min=(0.01, 0.025, 0.06))
    bounds = tn.Bounds(sigma_cap=0.294)
    table = extend_to_optimum(objective, grid, rounds=10, bounds=bounds)
    assert (table["sigma_min"] <= table["sigma_max"]).all()
    assert sorted(set(table["sigma_min"])) == [0.01, 0.025, 0.06, 0.144, 0.2]
    best = table.loc[table["val_psnr"].idxmax()]
    assert (best["sigma_max"], best["sigma_min"]) == (0.2, 0.2)
    flags = tn.edge_flags(table, best, "admm")
    assert flags == ["sigma_min=max"]
    assert tn.edge_bounds(table, best, "admm", flags, bounds) == ["sigma_min: sigma_min = sigma_max"]


# ----------------------------------------------------------------------------- the stopping rule's wording
def test_min_gain_is_reported_as_a_stopping_rule():
    def objective(f):  # fewer iterations better by a small amount
        return 30 - 0.02 * np.log(f["iterations"])

    grid = tn.Grid(iterations=(15, 30), sigma_max=(0.3,), sigma_min=(0.01,))
    bounds = tn.Bounds(min_gain=0.02)
    table = extend_to_optimum(objective, grid, rounds=10, bounds=bounds)
    best = table.loc[table["val_psnr"].idxmax()]
    (reason,) = tn.edge_bounds(table, best, "admm", tn.edge_flags(table, best, "admm"), bounds)
    assert reason == "iterations: stopped, last step gained +0.014 dB < min_gain 0.02"
    assert "flat" not in reason


# ----------------------------------------------------------------------------- the iteration cap
def _tune(setup, tmp_path, method, grid, **kw):
    out = tmp_path / f"{method}.csv"
    settings = tn.TuneSettings(method, kw.pop("task", "comp80"), setup["prior"], setup["images"], str(out), grid,
                               max_images=None, crop=None, **kw)
    return tn.tune(settings, progress=False), out


def test_red_cap_is_an_edge_when_the_stop_rule_is_not_reached(setup, tmp_path, capsys):
    grid = tn.Grid(iterations=(2,), red_lam=(0.1, 0.3), red_sigma=(0.05,))
    # tol 1e-12 is never reached in 2 iterations: every image runs to the cap
    table, out = _tune(setup, tmp_path, "red", grid, red_tol=1e-12)
    assert table["iterations_run"].tolist() == [2, 2] and table["at_cap"].tolist() == [2, 2]
    tuned = tn.collect_tuned([out], tmp_path / "tuned.csv")
    row = tuned.iloc[0]
    assert "iterations=cap" in row["on_edge"].split(";")
    assert "iterations: K cap 2 (binding: stop rule not reached on 2 of 2 images)" in row["edge_bound"].split(";")
    assert "iterations=cap" in capsys.readouterr().out  # and a warning says so
    written = pd.read_csv(tmp_path / "tuned.csv", keep_default_na=False)
    assert written.loc[0, "on_edge"] == row["on_edge"] and written.loc[0, "edge_bound"] == row["edge_bound"]

    # a stop that fires on every image (any change is below tol 1e3): the cap does not bind
    table, out = _tune(setup, tmp_path, "red", grid, red_tol=1e3)
    assert table["iterations_run"].tolist() == [1, 1] and table["at_cap"].tolist() == [0, 0]
    row = tn.collect_tuned([out], tmp_path / "tuned.csv").iloc[0]
    assert "iterations" not in row["on_edge"] and "K cap" not in row["edge_bound"]


def test_red_without_a_stop_and_admm_report_k_at_max_iterations(setup, tmp_path):
    red = tn.Grid(iterations=(2,), red_lam=(0.1, 0.3), red_sigma=(0.05,))
    table, out = _tune(setup, tmp_path, "red", red, red_tol=0.0)  # exactly K: no stop rule to reach
    assert table["at_cap"].isna().all()
    row = tn.collect_tuned([out], tmp_path / "tuned.csv").iloc[0]
    assert "iterations" not in row["on_edge"]  # K 2 is a chosen budget below max_iterations 200

    admm = tn.Grid(iterations=(2,), sigma_max=(0.1, 0.2), sigma_min=(0.01,))
    table, out = _tune(setup, tmp_path, "admm", admm, bounds=tn.Bounds(max_iterations=2))
    assert table["at_cap"].isna().all() and table["iterations_run"].tolist() == [2, 2]
    row = tn.collect_tuned([out], tmp_path / "tuned.csv").iloc[0]
    assert "iterations=cap" in row["on_edge"].split(";")
    assert "iterations: K cap 2" in row["edge_bound"].split(";")


def test_cap_report_on_a_swept_k_and_on_old_candidate_tables():
    best = pd.Series({"iterations": 800, "n_images": 3, "at_cap": 1.0, "task": "comp90"})
    flags, reasons = tn.cap_report(best, "red", ["iterations=max"], ["iterations: K cap 800"], tn.Bounds(800))
    assert flags == ["iterations=max"]
    assert reasons == ["iterations: K cap 800 (binding: stop rule not reached on 1 of 3 images)"]
    fired = best.copy()
    fired["at_cap"] = 0.0
    _, reasons = tn.cap_report(fired, "red", ["iterations=max"], ["iterations: rounds spent"], tn.Bounds())
    assert reasons == ["iterations: rounds spent (not binding: the stop rule fired on every image)"]
    old = best.drop("at_cap")  # a candidate table written before at_cap: ADMM's rule (K at max_iterations)
    assert tn.cap_report(old, "red", [], [], tn.Bounds(max_iterations=1000)) == ([], [])
    assert tn.cap_report(old, "red", [], [], tn.Bounds(max_iterations=800)) == (["iterations=cap"],
                                                                              ["iterations: K cap 800"])


def test_collect_reads_candidate_tables_without_the_new_columns(tmp_path):
    rows = [{"method": "admm", "task": "comp90", "iterations": k, "sigma_max": 0.2, "sigma_min": 0.01,
             "lam_scale": 1.0, "lam": 1 / 255, "sigma_denoise": np.nan, "step": np.nan, "val_psnr": 20 + k,
             "n_images": 1, "seconds": 1.0} for k in (2, 4)]
    path = tmp_path / "old.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    (tmp_path / "old.provenance.json").write_text(json.dumps({"config": {"settings": {"bounds": {
        "max_iterations": 4, "sigma_cap": 0.3, "sigma_floor": 1e-3, "min_gain": 0.0}}}}))
    row = tn.collect_tuned([path], tmp_path / "tuned.csv").iloc[0]
    assert row["on_edge"] == "iterations=max" and row["edge_bound"] == "iterations: K cap 4"
