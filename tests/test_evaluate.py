"""evaluate / tune / collect-tuned / figure on a tiny synthetic setup (random tiny DRUNet, 2 images)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mtdeq import evaluate as ev
from mtdeq import tune as tn
from mtdeq.cli import main
from conftest import extend_to_optimum
from mtdeq.models import BackboneConfig, build_backbone, save_checkpoint

ADMM_ROW = {"method": "admm", "iterations": 4, "sigma_max": 0.2, "sigma_min": 0.02, "lam": np.nan,
            "sigma_denoise": np.nan, "step": np.nan, "val_psnr": np.nan, "on_edge": ""}
RED_ROW = {"method": "red", "iterations": 3, "sigma_max": np.nan, "sigma_min": np.nan, "lam": 0.5,
           "sigma_denoise": 0.05, "step": 1.0, "val_psnr": np.nan, "on_edge": ""}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny DRUNet checkpoint, two 20x20 test images, a tuned_params.csv for comp80 and blur1.6."""
    root = tmp_path_factory.mktemp("eval")
    torch.manual_seed(0)
    cfg = BackboneConfig("drunet", (4, 4, 4, 4), 1)
    prior = save_checkpoint(root / "prior.pt", build_backbone(cfg), cfg)
    images = root / "val"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("img1", "img0"):  # written out of order: evaluate must sort
        Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(images / f"{name}.png")
    rows = [{**ADMM_ROW, "task": t} for t in ("comp80", "blur1.6")] + [{**RED_ROW, "task": "comp80"}]
    params = root / "tuned_params.csv"
    pd.DataFrame(rows).to_csv(params, index=False)
    return {"root": root, "prior": prior, "images": images, "params": params}


def _settings(setup, method, task="comp80", **kw):
    out = setup["root"] / "eval" / method / f"{task}.csv"
    kw.setdefault("params", str(setup["params"]))
    return ev.EvalSettings(method=method, task=task, prior=str(setup["prior"]), images=str(setup["images"]),
                           out=str(out), **kw)


def test_evaluate_writes_csv_and_every_method_sees_the_same_input(setup, monkeypatch):
    seen: dict[str, list[torch.Tensor]] = {}
    original = ev.run_solver

    def recording(params, *, op, y, denoiser, sigma_noise, progress=False, red_tol=0.0, **solver_options):
        seen.setdefault(current, []).append(y.clone())
        return original(params, op=op, y=y, denoiser=denoiser, sigma_noise=sigma_noise, red_tol=red_tol,
                        **solver_options)

    monkeypatch.setattr(ev, "run_solver", recording)
    tables = {}
    for current in ("gauss", "red", "proposed"):
        tables[current] = ev.evaluate(_settings(setup, current), progress=False)

    for method, table in tables.items():
        written = pd.read_csv(setup["root"] / "eval" / method / "comp80.csv")
        assert list(written.columns) == ev.CSV_COLUMNS
        assert list(written["image"]) == ["img0", "img1"]
        assert (written["method"] == method).all() and (written["task"] == "comp80").all()
        assert np.isfinite(written["psnr"]).all() and written["ssim"].between(-1, 1).all()
        assert (setup["root"] / "eval" / method / "comp80.provenance.json").is_file()
    assert list(tables["gauss"]["iterations"]) == [4, 4] and list(tables["red"]["iterations"]) == [3, 3]
    for other in ("red", "proposed"):
        for y_gauss, y_other in zip(seen["gauss"], seen[other]):
            assert torch.equal(y_gauss, y_other)
    assert not torch.equal(seen["gauss"][0], seen["gauss"][1])  # image i gets seed + i
    # ADMM vs RED restore differently from the same input
    assert not np.allclose(tables["gauss"]["psnr"], tables["red"]["psnr"])


def test_evaluate_save_dir_writes_restored_and_input(setup):
    save = setup["root"] / "restored" / "gauss" / "blur1.6"
    table = ev.evaluate(_settings(setup, "gauss", task="blur1.6", save_dir=str(save), max_images=1), progress=False)
    assert len(table) == 1
    assert (save / "img0.png").is_file()
    assert (setup["root"] / "restored" / "input" / "blur1.6" / "img0.png").is_file()
    assert not (save / "img1.png").exists()


def test_evaluate_missing_params_row_names_file_method_and_task(setup):
    with pytest.raises(KeyError, match=r"tuned_params\.csv.*method='red'.*task='blur1\.6'"):
        ev.evaluate(_settings(setup, "red", task="blur1.6"), progress=False)


def test_evaluate_cli_and_crop(setup):
    out = setup["root"] / "cli" / "st_sr" / "comp80.csv"
    rc = main(["evaluate", "--method", "st_sr", "--prior", str(setup["prior"]), "--task", "comp80",
               "--images", str(setup["images"]), "--params", str(setup["params"]), "--out", str(out),
               "--crop", "12", "--save-dir", str(setup["root"] / "cli_restored" / "st_sr" / "comp80")])
    assert rc == 0
    assert len(pd.read_csv(out)) == 2
    assert Image.open(setup["root"] / "cli_restored" / "st_sr" / "comp80" / "img0.png").size == (12, 12)


def test_tune_refuses_set5(setup, tmp_path):
    (tmp_path / "Set5").mkdir()
    grid = tn.Grid(iterations=(2,), sigma_max=(0.1,), sigma_min=(0.01,))
    settings = tn.TuneSettings("admm", "comp80", str(setup["prior"]), str(tmp_path / "Set5"),
                               str(tmp_path / "out.csv"), grid)
    with pytest.raises(ValueError, match="Set5"):
        tn.tune(settings, progress=False)


def test_tune_scores_match_evaluate_and_collect_picks_the_best(setup, tmp_path):
    grid = tn.Grid(iterations=(2, 4), sigma_max=(0.1, 0.3), sigma_min=(0.01,), lam_scale=(1.0,))
    out = tmp_path / "admm_comp80.csv"
    settings = tn.TuneSettings("admm", "comp80", str(setup["prior"]), str(setup["images"]), str(out), grid,
                               max_images=None, crop=None)
    table = tn.tune(settings, progress=False)
    assert len(table) == 4 and list(table.columns) == tn.CANDIDATE_COLUMNS
    assert np.allclose(table["lam"], 1 / 255)  # sigma_noise 0 -> lam = lam_scale / 255

    tuned = tn.collect_tuned([out], tmp_path / "tuned_params.csv")
    best = table.loc[table["val_psnr"].idxmax()]
    assert tuned.loc[0, "val_psnr"] == pytest.approx(best["val_psnr"], abs=1e-5)
    # the tuned row reproduces its validation score through the evaluate stage
    eval_settings = ev.EvalSettings("gauss", "comp80", str(setup["prior"]), str(setup["images"]),
                                    str(tmp_path / "tuned_params.csv"), str(tmp_path / "gauss.csv"))
    assert ev.evaluate(eval_settings, progress=False)["psnr"].mean() == pytest.approx(best["val_psnr"], abs=1e-4)


def _candidates(rows):
    base = {"method": "admm", "task": "comp90", "sigma_min": 0.01, "lam_scale": 1.0, "lam": 1 / 255,
            "sigma_denoise": np.nan, "step": np.nan, "n_images": 4, "seconds": 1.0}
    return pd.DataFrame([{**base, **r} for r in rows], columns=tn.CANDIDATE_COLUMNS)


def test_collect_tuned_picks_known_best_and_flags_edges(tmp_path, capsys):
    rows = [{"iterations": k, "sigma_max": s, "val_psnr": 20 + k / 10 - abs(s - 0.2) * 10}
            for k in (10, 20, 40) for s in (0.1, 0.2, 0.4)]  # best: K = 40 (grid max), sigma_max 0.2 (interior)
    a = tmp_path / "a.csv"
    _candidates(rows).to_csv(a, index=False)
    red = pd.DataFrame([{"method": "red", "task": "comp90", "iterations": 5, "sigma_max": np.nan, "sigma_min": np.nan,
                         "lam_scale": np.nan, "lam": lam, "sigma_denoise": 0.05, "step": 1.0,
                         "val_psnr": psnr, "n_images": 4, "seconds": 1.0}
                        for lam, psnr in ((0.1, 20.0), (0.2, np.nan), (0.3, 19.0))])
    b = tmp_path / "b.csv"
    red.to_csv(b, index=False)

    tuned = tn.collect_tuned([a, b], tmp_path / "tuned_params.csv")
    assert list(tuned.columns) == tn.TUNED_COLUMNS
    admm = tuned[tuned["method"] == "admm"].iloc[0]
    assert (admm["iterations"], admm["sigma_max"]) == (40, 0.2)
    assert admm["on_edge"] == "iterations=max"  # sigma_min and lam_scale have one value: not swept
    red_row = tuned[tuned["method"] == "red"].iloc[0]
    assert red_row["lam"] == 0.1 and red_row["on_edge"] == "lam=min"  # NaN candidate ignored
    assert "WARNING" in capsys.readouterr().out
    written = pd.read_csv(tmp_path / "tuned_params.csv")
    assert ev.read_params(tmp_path / "tuned_params.csv", "admm", "comp90").iterations == 40
    assert len(written) == 2


def test_figure_draws_available_panels(setup, tmp_path):
    from mtdeq.figures import FigureSettings, make_figure

    restored = setup["root"] / "fig_restored"
    for method in ("gauss", "red"):
        ev.evaluate(_settings(setup, method, save_dir=str(restored / method / "comp80")), progress=False)
    out = make_figure(FigureSettings(eval_dir=str(setup["root"] / "eval"), restored_dir=str(restored),
                                     images=str(setup["images"]), out=str(tmp_path / "fig2.png"),
                                     rows=(("comp80", "img0"), ("comp80", "img1")), scale="test"))
    with Image.open(out) as img:
        assert img.size[0] > img.size[1] > 100  # 5 columns wider than 2 rows are tall


def test_extend_value_follows_the_grid_spacing_and_stops_at_bounds():
    bounds = tn.Bounds(max_iterations=64, sigma_cap=0.3)
    best = {"sigma_max": 0.2, "sigma_min": 0.06}
    assert tn.extend_value("iterations", [15, 30], "min", best, bounds) == 8  # 15 * 15/30, rounded
    assert tn.extend_value("iterations", [15, 30], "max", best, bounds) == 60
    assert tn.extend_value("iterations", [32, 64], "max", best, bounds) is None  # already at max_iterations
    assert tn.extend_value("iterations", [24, 48], "max", best, bounds) == 64  # 96 clamped: the cap is tried
    assert tn.extend_value("iterations", [1, 2], "min", best, bounds) is None  # K >= 1
    assert tn.extend_value("sigma_min", [0.01, 0.025, 0.06], "max", {**best, "sigma_max": 0.3}, bounds) == 0.144
    # 0.144 > sigma_max 0.1: clamped, so sigma_min = sigma_max is tried before the bound is reported
    assert tn.extend_value("sigma_min", [0.01, 0.025, 0.06], "max", {**best, "sigma_max": 0.1}, bounds) == 0.1
    assert tn.extend_value("sigma_min", [0.025, 0.06, 0.1], "max", {**best, "sigma_max": 0.1}, bounds) is None
    assert tn.extend_value("sigma_max", [0.1, 0.2], "min", {**best, "sigma_min": 0.06}, bounds) == 0.06
    assert tn.extend_value("sigma_max", [0.1, 0.2], "max", best, bounds) == 0.3  # 0.4 clipped to the cap
    assert tn.extend_value("sigma_max", [0.15, 0.3], "max", best, bounds) is None  # already at the cap
    assert tn.extend_value("lam", [0.03, 0.1], "min", best, bounds) == pytest.approx(0.009)


def test_edge_extension_walks_past_the_grid_to_an_interior_optimum():
    # optimum at K = 4, sigma_min = 0.14: both outside the grid, below resp. above
    def objective(f):
        return 30 - np.log(f["iterations"] / 4) ** 2 - 10 * np.log(f["sigma_min"] / 0.14) ** 2 - (f["sigma_max"] - 0.3) ** 2

    grid = tn.Grid(iterations=(15, 30), sigma_max=(0.1, 0.2, 0.3), sigma_min=(0.01, 0.025, 0.06))
    table = extend_to_optimum(objective, grid, rounds=10)
    best = table.loc[table["val_psnr"].idxmax()]
    assert best["iterations"] == 4 and best["sigma_min"] == 0.144 and best["sigma_max"] == 0.3
    assert tn.edge_flags(table, best, "admm") == ["sigma_max=max"]  # at the cap 0.3; K, sigma_min interior
    assert len(table) <= 18 + 10
    # without extension the best sits on two edges
    plain = extend_to_optimum(objective, grid, rounds=0)
    assert tn.edge_flags(plain, plain.loc[plain["val_psnr"].idxmax()], "admm") == ["iterations=min", "sigma_max=max", "sigma_min=max"]


def test_edge_extension_stops_when_every_edge_is_at_a_bound():
    def objective(f):  # always wants more of everything
        return f["iterations"] + 100 * f["sigma_max"] + 100 * f["sigma_min"]

    grid = tn.Grid(iterations=(10, 20), sigma_max=(0.2, 0.3), sigma_min=(0.01, 0.02))
    table = extend_to_optimum(objective, grid, rounds=50, bounds=tn.Bounds(max_iterations=40, sigma_cap=0.3))
    best = table.loc[table["val_psnr"].idxmax()]
    assert best["iterations"] == 40 and best["sigma_max"] == 0.3 and best["sigma_min"] <= 0.3
    assert len(table) < 8 + 50  # stopped early: nothing left to extend


def test_edge_bound_says_which_bound_stopped_the_extension():
    def objective(f):  # wants more of everything
        return f["iterations"] + 100 * f["sigma_max"] + 100 * f["sigma_min"]

    grid = tn.Grid(iterations=(10, 20), sigma_max=(0.2, 0.3), sigma_min=(0.01, 0.02))
    bounds = tn.Bounds(max_iterations=40, sigma_cap=0.3)
    done = extend_to_optimum(objective, grid, rounds=50, bounds=bounds)
    best = done.loc[done["val_psnr"].idxmax()]
    flags = tn.edge_flags(done, best, "admm")
    reasons = tn.edge_bounds(done, best, "admm", flags, bounds)
    assert "iterations: K cap 40" in reasons and "sigma_max: sigma cap 0.3" in reasons
    assert not any("rounds spent" in r for r in reasons)
    # one round only: the edges it did not reach are non-physical
    early = extend_to_optimum(objective, grid, rounds=1, bounds=bounds)
    best = early.loc[early["val_psnr"].idxmax()]
    reasons = tn.edge_bounds(early, best, "admm", tn.edge_flags(early, best, "admm"), bounds)
    assert any(r.endswith("rounds spent") for r in reasons)
    assert tn.edge_bounds(early, best, "admm", ["iterations=max"], None) == ["iterations: unknown"]


def test_edge_extension_takes_turns_between_open_ended_parameters():
    """Two parameters that both improve without end: the rounds alternate between them instead of
    the first one (SWEPT order) spending them all."""
    def objective(f):
        return 30 - np.log(f["iterations"]) + 10 * np.log(f["sigma_min"])

    grid = tn.Grid(iterations=(15, 30), sigma_max=(0.3,), sigma_min=(0.01, 0.025))
    table = extend_to_optimum(objective, grid, rounds=4, bounds=tn.Bounds(sigma_cap=0.3))
    extended = table[table["round"] > 0]
    new_k = set(extended["iterations"]) - set(grid.iterations)
    new_sigma = set(extended["sigma_min"]) - set(grid.sigma_min)
    assert (len(new_k), len(new_sigma)) == (2, 2), extended


def test_flat_edge_stops_extension_and_says_so():
    """An edge whose last step gained less than min_gain is flat: not extended, reported as flat."""
    def objective(f):  # fewer iterations always better, by ever smaller amounts
        return 30 - 0.02 * np.log(f["iterations"])

    grid = tn.Grid(iterations=(15, 30), sigma_max=(0.3,), sigma_min=(0.01,))
    bounds = tn.Bounds(min_gain=0.01)
    table = extend_to_optimum(objective, grid, rounds=10, bounds=bounds)
    best = table.loc[table["val_psnr"].idxmax()]
    # 30 -> 15 gains 0.0139 dB, 15 -> 8 gains 0.0126, 8 -> 4 gains 0.0139 ... each >= 0.01: keep going;
    # the gain of a step is 0.02 log(ratio), flat once the ratio is below e^0.5 = 1.65 (4 -> 2 -> 1: 2, 2)
    assert table["iterations"].min() == best["iterations"]
    flat = tn.Bounds(min_gain=0.02)
    table = extend_to_optimum(objective, grid, rounds=10, bounds=flat)
    best = table.loc[table["val_psnr"].idxmax()]
    assert best["iterations"] == 15 and len(table) == 2  # 30 -> 15 gained 0.0139 < 0.02: flat, no round
    reasons = tn.edge_bounds(table, best, "admm", tn.edge_flags(table, best, "admm"), flat)
    assert reasons == ["iterations: stopped, last step gained +0.014 dB < min_gain 0.02"]
    unbounded = extend_to_optimum(objective, grid, rounds=10, bounds=tn.Bounds())
    assert unbounded["iterations"].min() == 1  # min_gain 0: only the bound K = 1 stops it


def test_tune_extension_rows_change_one_parameter_of_the_best(setup, tmp_path):
    grid = tn.Grid(iterations=(2, 3), sigma_max=(0.1, 0.2), sigma_min=(0.01,), lam_scale=(1.0,))
    out = tmp_path / "admm_blur.csv"
    settings = tn.TuneSettings("admm", "blur1.6", str(setup["prior"]), str(setup["images"]), str(out), grid,
                               max_images=1, crop=None, extend_rounds=2)
    table = tn.tune(settings, progress=False)
    assert list(table["round"][:4]) == [0, 0, 0, 0]
    assert 4 < len(table) <= 6 and list(table["round"][4:]) == list(range(1, len(table) - 3))
    first = table.iloc[4]
    grid_best = table.iloc[:4].loc[table.iloc[:4]["val_psnr"].idxmax()]
    changed = [n for n in ("iterations", "sigma_max", "sigma_min") if first[n] != grid_best[n]]
    assert len(changed) == 1
    assert not ((table.iloc[:4][["iterations", "sigma_max"]] == first[["iterations", "sigma_max"]]).all(axis=1)).any()


def test_budget_check_reports_the_psnr_at_twice_the_iterations(setup):
    plain = ev.evaluate(_settings(setup, "gauss", task="blur1.6"), progress=False)
    table = ev.evaluate(_settings(setup, "gauss", task="blur1.6", budget_check=True), progress=False)
    assert list(table.columns) == ev.CSV_COLUMNS + ev.BUDGET_COLUMNS
    assert table["psnr"].tolist() == plain["psnr"].tolist()  # the reported result is unchanged
    assert (table["iterations_2x"] == 2 * table["iterations"]).all()
    doubled = ev.evaluate(_settings(setup, "gauss", task="blur1.6", params=str(_doubled(setup))), progress=False)
    assert table["psnr_2x"].tolist() == pytest.approx(doubled["psnr"].tolist(), abs=1e-9)


def _doubled(setup):
    """A copy of tuned_params.csv with every K doubled."""
    table = pd.read_csv(setup["params"])
    table["iterations"] = 2 * table["iterations"]
    path = setup["root"] / "tuned_params_2x.csv"
    table.to_csv(path, index=False)
    return path


def test_red_tolerance_stops_early_and_is_recorded(setup):
    fixed = ev.evaluate(_settings(setup, "red"), progress=False)
    loose = ev.evaluate(_settings(setup, "red", red_tol=1e3), progress=False)  # any change is "small"
    assert (loose["iterations"] <= fixed["iterations"]).all() and (loose["iterations"] < fixed["iterations"]).any()


def _scaled(setup, factor, name):
    """A copy of tuned_params.csv with every K multiplied by ``factor`` (rounded, >= 1)."""
    table = pd.read_csv(setup["params"])
    table["iterations"] = [max(1, int(round(factor * k))) for k in table["iterations"]]
    path = setup["root"] / name
    table.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("method,task", [("gauss", "blur1.6"), ("red", "comp80")])
def test_budget_curve_adds_psnr_at_half_and_one_and_a_half_k(setup, method, task):
    """--budget-curve: new columns only (psnr / psnr_2x unchanged); each curve point is the solve capped
    at round(f K) (ADMM: its own run; RED: a snapshot of the one 2K run)."""
    check = ev.evaluate(_settings(setup, method, task=task, budget_check=True), progress=False)
    table = ev.evaluate(_settings(setup, method, task=task, budget_curve=True), progress=False)
    assert list(table.columns) == ev.CSV_COLUMNS + ev.BUDGET_COLUMNS + ev.CURVE_COLUMNS
    for column in ev.CSV_COLUMNS + ev.BUDGET_COLUMNS:
        if column != "seconds":
            assert table[column].tolist() == check[column].tolist(), column
    for f in ev.CURVE_FRACTIONS:
        capped = ev.evaluate(_settings(setup, method, task=task, params=str(_scaled(setup, f, f"k{f:g}.csv"))),
                             progress=False)
        assert table[f"psnr_{f:g}x"].tolist() == pytest.approx(capped["psnr"].tolist(), abs=1e-9)
        assert table[f"iterations_{f:g}x"].tolist() == capped["iterations"].tolist()


def test_best_budget_reports_the_best_k_where_more_iterations_hurt():
    table = pd.DataFrame({
        "image": ["a", "b", "a", "b"], "method": ["red"] * 2 + ["gauss"] * 2, "task": ["sr2"] * 4,
        "iterations": [100, 100, 40, 40],
        "psnr_0.5x": [31.0, 30.0, 29.0, 29.0], "psnr": [30.8, 29.8, 29.5, 29.5],
        "psnr_1.5x": [30.7, 29.7, 29.6, 29.6], "psnr_2x": [30.6, 29.6, 29.6, 29.6],
    })
    best = ev.best_budget(table).set_index("method")
    assert best.loc["red", "best_k"] == 50 and best.loc["red", "best_psnr"] == pytest.approx(30.5)
    assert best.loc["red", "psnr_k"] == pytest.approx(30.3)
    assert best.loc["gauss", "best_factor"] == 1.5 and best.loc["gauss", "best_k"] == 60  # tie: smaller budget


def test_evaluate_channels_last_flag_is_the_same_maths(setup):
    """--no-channels-last changes the layout only (tiny float32 DRUNet, ADMM): measured max |diff| of the
    PSNRs ~1e-5 dB; the CLI flag reaches the settings."""
    cl = ev.evaluate(_settings(setup, "gauss", task="blur1.6"), progress=False)
    plain = ev.evaluate(_settings(setup, "gauss", task="blur1.6", channels_last=False), progress=False)
    assert plain["psnr"].tolist() == pytest.approx(cl["psnr"].tolist(), abs=1e-3)
    out = setup["root"] / "cli_nocl.csv"
    assert main(["evaluate", "--method", "gauss", "--task", "blur1.6", "--prior", str(setup["prior"]),
                 "--images", str(setup["images"]), "--params", str(setup["params"]), "--out", str(out),
                 "--no-channels-last"]) == 0
    import json
    settings = json.loads(out.with_suffix(".provenance.json").read_text())["config"]["settings"]
    assert settings["channels_last"] is False and settings["red_accel"] == "plain"
    assert pd.read_csv(out)["psnr"].tolist() == pytest.approx(plain["psnr"].tolist(), abs=1e-5)


def test_reuse_copies_rows_only_for_the_same_weights_and_settings(setup, monkeypatch):
    """--reuse: a checkpoint bit-identical to an evaluated one gets that evaluation's rows (no solve);
    other weights, another seed or other tuned parameters are solved again."""
    import json
    import shutil

    ev.evaluate(_settings(setup, "proposed_seed1", task="blur1.6"), progress=False)
    earlier = setup["root"] / "eval" / "proposed_seed1" / "blur1.6.csv"
    first = pd.read_csv(earlier)
    twin = setup["root"] / "twin.pt"
    shutil.copy(setup["prior"], twin)  # a budget checkpoint with the same weights
    solved = []
    original = ev.run_solver
    monkeypatch.setattr(ev, "run_solver", lambda *a, **k: solved.append(1) or original(*a, **k))

    def run(**kw):
        settings = _settings(setup, "proposed", task="blur1.6", **kw)
        settings = ev.replace(settings, prior=str(twin), out=str(setup["root"] / "reuse" / f"{len(solved)}.csv"))
        return ev.evaluate(settings, progress=False, reuse=(setup["prior"], earlier)), settings

    copied, settings = run()
    assert not solved and list(copied["method"]) == ["proposed", "proposed"]
    pd.testing.assert_frame_equal(copied.drop(columns="method"), first.drop(columns="method"))
    record = json.loads(ev.Path(settings.out).with_suffix(".provenance.json").read_text())
    assert record["reused"]["csv"] == str(earlier)
    from mtdeq.fingerprint import weights_digest
    assert record["reused"]["weights_sha256"] == weights_digest(setup["prior"])
    _, settings = run(seed=1)  # other noise: solved
    assert len(solved) == 2
    ok, why = ev.reusable(settings, ev.read_params(settings.params, "admm", "blur1.6"), setup["prior"], earlier)
    assert not ok and "seed" in why
    other = setup["root"] / "other.pt"
    state = torch.load(setup["prior"], map_location="cpu", weights_only=False)
    key = next(k for k, v in state["state_dict"].items() if v.is_floating_point())
    state["state_dict"][key] = state["state_dict"][key] + 1e-6
    torch.save(state, other)
    ok, why = ev.reusable(ev.replace(settings, prior=str(other), seed=0),
                          ev.read_params(settings.params, "admm", "blur1.6"), setup["prior"], earlier)
    assert not ok and "weights" in why
