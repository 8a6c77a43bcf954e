"""Tests of ``bench train`` (mtdeq.bench.train) and its paper-scale projection (mtdeq.bench.projection).

Everything runs on CPU with a tiny DRUNet (nc 8 16 32 64, nb 1) on synthetic images.
"""

from __future__ import annotations

import argparse
import csv

import pytest

from mtdeq.bench.train import add_bench_args, run_bench

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bench_train_writes_csv(images, tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    add_bench_args(parser)
    out = tmp_path / "bench" / "train.csv"
    args = parser.parse_args(["--backbone", "drunet", "--nc", "8", "16", "32", "64", "--nb", "1", "--init", "none",
                              "--train-dirs", str(images), "--crop", "16", "--batch-size", "1", "--n-tasks", "2",
                              "--steps", "1", "--max-iter", "5", "--threads", "1", "--out", str(out),
                              "--variants", "per-task", "stacked"])
    assert run_bench(args) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["stage"], r["solver"], r["batch_tasks"]) for r in rows] == [
        ("train-deq", "plain", "False"), ("train-deq", "plain", "True"),
        ("train-deq", "anderson", "False"), ("train-deq", "anderson", "True"), ("pretrain-denoiser", "", "")]
    # side by side on the same crops, tasks and noise: the same fixed-point work in both modes
    assert rows[0]["fp_iter_mean"] == rows[1]["fp_iter_mean"] and rows[2]["fp_iter_mean"] == rows[3]["fp_iter_mean"]
    assert all(float(r["seconds_per_step"]) > 0 for r in rows)
    assert 1 <= float(rows[0]["fp_iter_mean"]) <= 5


def test_bench_train_grad_check_plumbing(images, tmp_path):
    """Plumbing of ``bench train --grad-check`` only, not a claim about any start: one row per step x
    variant in order, the '@TOL' of a variant reaching its solve, the yardsticks filled.

    per-task-fill@1e-9 has the reference's own settings (--ref-tol 1e-9, --ref-max-iter = --max-iter 40,
    filled start), so its zero error holds by construction; it fails if the variant's tolerance, start
    or cap were mis-parsed (e.g. '@1e-9' dropped: --tol 1e-7).  stacked-fill@1e-9 takes the stacked
    code path to the same solves; per-task-fill@1e-2 must differ (fails if '@1e-2' were ignored).
    Whether the grey start's gradient is wrong is tested below with the pretrained FFDNet.
    """
    parser = argparse.ArgumentParser()
    add_bench_args(parser)
    out = tmp_path / "grad.csv"
    args = parser.parse_args(["--backbone", "drunet", "--nc", "8", "16", "32", "64", "--nb", "1", "--init", "none",
                              "--train-dirs", str(images), "--crop", "16", "--batch-size", "2", "--n-tasks", "2",
                              "--steps", "2", "--max-iter", "40", "--threads", "1", "--out", str(out), "--grad-check",
                              "--ref-tol", "1e-9", "--ref-max-iter", "40", "--solvers", "anderson",
                              "--variants", "per-task-fill@1e-9", "per-task-fill@1e-2", "stacked-fill@1e-9"])
    assert run_bench(args) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["step"], r["variant"]) for r in rows] == [
        (s, v) for s in ("1", "2") for v in ("per-task-fill@1e-9", "per-task-fill@1e-2", "stacked-fill@1e-9")]
    assert [(r["comp_init"], float(r["tol"])) for r in rows[:3]] == [("fill", 1e-9), ("fill", 1e-2), ("fill", 1e-9)]
    same = [r for r in rows if r["variant"].endswith("@1e-9")]
    loose = [r for r in rows if r["variant"] == "per-task-fill@1e-2"]
    assert all(float(r["rel_error"]) < 1e-4 and float(r["cosine"]) > 0.9999 for r in same)  # the reference itself
    assert all(float(r["rel_error"]) > 1e-3 for r in loose), [r["rel_error"] for r in loose]
    assert rows[0]["batch_noise_rel"] == "" and float(rows[3]["batch_noise_rel"]) > 0
    assert all(float(r["seed_noise_rel"]) > 0 for r in rows)


def test_bench_train_random_weights_come_from_its_seed_not_the_process_state(images, tmp_path):
    """--init none draws the weights from --seed: the same rows whatever the global RNG held before
    (a test or a stage run earlier in the same process), other rows with another --seed."""
    import torch

    def rows(global_seed: int, seed: int) -> list[str]:
        torch.manual_seed(global_seed)
        parser = argparse.ArgumentParser()
        add_bench_args(parser)
        out = tmp_path / f"g{global_seed}_{seed}.csv"
        run_bench(parser.parse_args(["--backbone", "drunet", "--nc", "8", "16", "32", "64", "--nb", "1", "--init", "none",
                                     "--train-dirs", str(images), "--crop", "16", "--batch-size", "2", "--n-tasks", "2",
                                     "--steps", "1", "--max-iter", "40", "--threads", "1", "--out", str(out),
                                     "--grad-check", "--ref-tol", "1e-6", "--solvers", "anderson", "--seed", str(seed),
                                     "--variants", "per-task-fill@1e-2"]))
        return [r["rel_error"] for r in csv.DictReader(out.open())]

    assert rows(1, 0) == rows(2, 0) != rows(1, 3)


def test_grey_completion_start_gives_a_wrong_step_gradient_and_the_filled_start_a_close_one():
    """README "Filled completion start": the grad check's comparison on one completion solve with the
    pretrained FFDNet (skipped without the data mirror).

    ST Comp's training task (90 % of the pixels dropped, sigma_noise 0, its mask seed fixed) on a 24 x 24
    centre crop of Set14's monarch, the quick step's solve (Anderson, tol 1e-6, cap 60) against the grad
    check's tight solve (filled start, tol 1e-8, cap 300: --ref-tol / --ref-max-iter), on one thread.
    Measured: grey start 60 iterations (the cap), gradient relative error 31.5 (cosine 0.01); filled
    start 2 iterations (converged), 0.106 (cosine 0.995).  (The tight solve itself ends at its cap of 300
    above 1e-8 in float32.)  Fails if the grey start's gradient were as close as
    the filled one's (within 10x, or below 5), or if the filled start's were not close (>= 0.3, cosine
    <= 0.95) or needed the cap, or if comp_init 'fill' did not reach the solve (both rows would be equal).
    Other crops and masks (24 x 24 and 32 x 32, Set14 and BSDS500 train): grey 6.1 to 81, fill 0.04 to 1.2.
    """
    import torch

    from conftest import mirror_file
    from mtdeq.bench.train import _step_gradient
    from mtdeq.io import read_image
    from mtdeq.models import BackboneConfig, load_prior
    from mtdeq.tasks import Task
    from mtdeq.train.config import DEQTrainConfig

    base, _ = load_prior(mirror_file("weights/ffdnet_color.pth"), BackboneConfig("ffdnet", (96,), 12))
    image, crop = read_image(mirror_file("Set14/monarch.png")), 24
    top, left = (image.shape[1] - crop) // 2, (image.shape[2] - crop) // 2
    x = image[None, :, top : top + crop, left : left + crop].contiguous()
    task = Task("inpaint0.9_n0.000", "inpaint", (("p_drop", 0.9), ("seed", 2)), 0.0)

    def gradient(comp_init: str, tol: float, max_iter: int):
        cfg = DEQTrainConfig(out="-", init="-", train_dirs=("-",), task_set="st_comp", n_tasks=1, crop=crop,
                             batch_size=1, solver="anderson", comp_init=comp_init, tol=tol, max_iter=max_iter)
        return _step_gradient(base, x, [task], torch.Generator().manual_seed(0), cfg)

    reference, _ = gradient("fill", 1e-8, 300)

    def error(grad):
        return float((grad - reference).norm() / reference.norm()), float(
            grad @ reference / (grad.norm() * reference.norm()))

    grey, grey_stats = gradient("grey", 1e-6, 60)
    fill, fill_stats = gradient("fill", 1e-6, 60)
    (grey_rel, _), (fill_rel, fill_cos) = error(grey), error(fill)
    assert grey_stats.status == ["max_iter"] and grey_stats.iterations == [60]
    assert fill_stats.status == ["converged"] and fill_stats.iterations[0] < 60
    assert fill_rel < 0.3 and fill_cos > 0.95
    assert grey_rel > 5 and grey_rel > 10 * fill_rel


def test_bench_train_projection_from_a_config(images, prior, tmp_path):
    """--config: cost per iteration and per JFB step measured, scaled to the config's runs."""
    base, paper = tmp_path / "base.yaml", tmp_path / "paper.yaml"
    base.write_text("model: {backbone: ffdnet, nc: [96], nb: 12, weights: {path: none.pth}}\n"
                    "deq: {crop: 64, batch_size: 2, solver: plain, max_iter: 350, eta: 0.49}\n"
                    "priors: {mtdeq: {task_set: mtdeq, n_tasks: 5, steps: 10}}\n"
                    "denoiser: {steps: 0}\n")
    paper.write_text("model: {backbone: drunet, nc: [8, 16, 32, 64], nb: 1}\n"
                     "deq: {crop: 16, batch_size: 4}\n"
                     "priors: {mtdeq: {task_set: mtdeq, n_tasks: 5, steps: 1000},\n"
                     "         st_sr: {task_set: st_sr, n_tasks: 1, steps: 1000}}\n")
    parser = argparse.ArgumentParser()
    add_bench_args(parser)
    out = tmp_path / "projection.csv"
    args = parser.parse_args(["--config", str(paper), "--base-config", str(base), "--train-dirs", str(images),
                              "--probe-iters", "1", "3", "--assume-iters", "40", "--gpu-speedup", "50",
                              "--threads", "1", "--out", str(out)])
    assert run_bench(args) == 0
    rows = {r["run"]: r for r in csv.DictReader(out.open())}
    assert list(rows) == ["mtdeq", "st_sr", "gauss_budget", "total"]
    mt, st = rows["mtdeq"], rows["st_sr"]
    assert (mt["backbone"], mt["nc"], mt["crop"], mt["batch_size"], mt["steps"]) == ("drunet", "8 16 32 64", "16",
                                                                                   "4", "1000")
    assert mt["weights"].startswith("random init (none.pth absent)") and mt["solver"] == "plain"
    t_iter, t_jfb = float(mt["seconds_per_fp_iter_per_image"]), float(mt["seconds_jfb_per_image"])
    assert t_iter > 0 and float(mt["gflop_per_forward"]) > 0
    assert float(mt["projected_seconds_per_step_cpu"]) == pytest.approx(4 * 5 * (40 * t_iter + t_jfb), rel=1e-4)
    assert float(st["projected_seconds_per_step_cpu"]) == pytest.approx(
        float(mt["projected_seconds_per_step_cpu"]) / 5, rel=1e-4)
    assert float(mt["cpu_hours"]) == pytest.approx(1000 * float(mt["projected_seconds_per_step_cpu"]) / 3600,
                                                   rel=1e-4)
    assert float(mt["gpu_hours"]) == pytest.approx(float(mt["cpu_hours"]) / 50, rel=1e-4)
    assert float(mt["tflop_per_step"]) == pytest.approx(4 * 5 * 43 * float(mt["gflop_per_forward"]) / 1e3, rel=1e-4)
    assert float(mt["gpu_hours_flop_based"]) == pytest.approx(
        1000 * float(mt["tflop_per_step"]) / float(mt["assumed_gpu_tflops"]) / 3600, rel=1e-4)
    assert float(rows["total"]["gpu_hours"]) == pytest.approx(
        sum(float(rows[r]["gpu_hours"]) for r in ("mtdeq", "st_sr", "gauss_budget")), rel=1e-4)
    with pytest.raises(ValueError, match="--assume-iters"):
        run_bench(parser.parse_args(["--config", str(paper), "--base-config", str(base), "--assume-iters", "400"]))


def test_bench_train_is_registered():
    from mtdeq.cli import build_parser

    args = build_parser().parse_args(["bench", "train", "--config", "paper.yaml", "--assume-iters", "40"])
    assert args.func is run_bench and args.config == "paper.yaml" and args.assume_iters == 40.0


def test_bench_denoise_identity_gives_the_noise_psnr_and_writes_the_csv(tmp_path):
    import math

    import pandas as pd
    import torch

    from conftest import write_synthetic_images, write_tiny_prior
    from mtdeq.bench.denoise import DENOISE_COLUMNS, denoise_psnr
    from mtdeq.cli import main

    class Identity(torch.nn.Module):
        def forward(self, x, sigma):
            return x

    images = [torch.full((1, 3, 64, 64), 0.5)]  # mid-grey: clipping never acts
    sigma = 25 / 255
    value = denoise_psnr(Identity(), images, sigma, seed=0, device=torch.device("cpu"))
    assert value == pytest.approx(-20 * math.log10(sigma), abs=0.15)  # PSNR of the noise alone

    folder = tmp_path / "img"
    folder.mkdir()
    write_synthetic_images(folder, 2, 24, 24)
    prior = write_tiny_prior(tmp_path / "prior.pt")
    out = tmp_path / "denoise.csv"
    assert main(["bench", "denoise", "--priors", str(prior), "--images", str(folder), "--sigmas", "15", "50",
                 "--device", "cpu", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == DENOISE_COLUMNS and table["sigma_255"].tolist() == [15, 50]
    assert (table["n_images"] == 2).all() and table["psnr"].notna().all()


def test_bench_eval_and_red_write_their_csvs(images, prior, tmp_path):
    """``bench eval`` (layouts side by side) and ``bench red`` (plain vs Anderson) on a tiny DRUNet and a
    synthetic image: plumbing, and the two layouts compute the same outputs."""
    import pandas as pd

    from mtdeq.bench.testtime import RED_COLUMNS, add_eval_args, add_red_args, run_eval, run_red

    image = str(sorted(images.iterdir())[0])
    parser = argparse.ArgumentParser()
    add_eval_args(parser)
    out = tmp_path / "eval.csv"
    assert run_eval(parser.parse_args(["--prior", str(prior), "--image", image, "--size", "32", "--repeats", "1",
                                       "--out", str(out)])) == 0
    table = pd.read_csv(out)
    assert table["layout"].tolist() == ["default", "channels_last"] and (table["min_s"] > 0).all()
    assert (table["max_abs_diff"] < 1e-4).all() and table["size"].tolist() == ["32x32"] * 2
    params = tmp_path / "tuned.csv"
    pd.DataFrame([{"method": "red", "task": "comp80", "iterations": 10, "lam": 0.3, "sigma_denoise": 0.05,
                   "step": 1.0}]).to_csv(params, index=False)
    parser = argparse.ArgumentParser()
    add_red_args(parser)
    out = tmp_path / "red.csv"
    assert run_red(parser.parse_args(["--prior", str(prior), "--params", str(params), "--image", image,
                                      "--crop", "16", "--tasks", "comp80", "--cap", "8", "--k0", "2",
                                      "--out", str(out)])) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == RED_COLUMNS and table["accel"].tolist() == ["plain", "anderson"]
    assert table["dist_to_plain"].iloc[0] == 0 and (table["iterations"] <= 8).all()


def test_k_stable_is_the_smallest_k_whose_doubling_changes_little():
    from mtdeq.bench.testtime import k_stable

    assert k_stable({5: 20.0, 10: 25.0, 20: 25.05, 40: 25.0}, 0.1) == 10
    assert k_stable({5: 20.0, 10: 25.0}, 0.1) is None


def test_bench_eval_red_and_floor_are_registered():
    from mtdeq.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["bench", "red", "--tasks", "comp90"]).tasks == ["comp90"]
    assert parser.parse_args(["bench", "eval", "--threads", "1"]).threads == 1
    assert parser.parse_args(["bench", "floor", "--cores", "4"]).cores == 4


def test_conv_macs_counts_ffdnet_and_drunet_convolutions_exactly():
    """FFDNet: every conv at half resolution, 9 (13 nc + (nb-2) nc^2 + 12 nc) MACs per half-res pixel; a
    DRUNet's transposed convolutions are counted on their input; odd sizes are padded as the forward pads."""
    import torch

    from mtdeq.bench.floor import conv_macs
    from mtdeq.models import BackboneConfig, build_backbone
    from mtdeq.models.ffdnet import FFDNet

    nc, nb = 8, 4
    per_half_pixel = 9 * (13 * nc + (nb - 2) * nc * nc + nc * 12)  # in: 4 x 3 unshuffled + 1 noise channel
    assert conv_macs(FFDNet(nc=nc, nb=nb), (1, 3, 16, 24)) == per_half_pixel * 8 * 12
    assert conv_macs(FFDNet(nc=nc, nb=nb), (2, 3, 15, 24)) == 2 * per_half_pixel * 8 * 12  # 15 -> padded 16
    drunet = build_backbone(BackboneConfig(name="drunet", nc=(4, 8, 16, 32), nb=1))
    hooks = []
    counted = {"macs": 0}

    def hook(module, inputs, output):  # a real forward, counted independently of conv_macs
        kh, kw = module.kernel_size
        if isinstance(module, torch.nn.ConvTranspose2d):
            counted["macs"] += inputs[0].numel() * module.out_channels * kh * kw
        else:
            counted["macs"] += output.numel() * module.in_channels * kh * kw

    for m in drunet.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        drunet(torch.rand(1, 3, 16, 16), torch.full((1,), 0.1))
    for h in hooks:
        h.remove()
    assert any(isinstance(m, torch.nn.ConvTranspose2d) for m in drunet.modules())
    assert conv_macs(drunet, (1, 3, 16, 16)) == counted["macs"] > 0


def test_floor_counts_admm_k_plus_2k_red_2k_and_maps_seeds_to_their_jobs():
    import pandas as pd

    from mtdeq.bench.floor import FLOOR_COLUMNS, evaluation_forwards, floor_table

    per_image = pd.DataFrame([
        {"method": "gauss", "task": "t", "image": "a", "seed": 0, "iterations": 10, "iterations_2x": 20},
        {"method": "red", "task": "t", "image": "a", "seed": 0, "iterations": 10, "iterations_2x": 14},  # stopped at 14
        {"method": "proposed", "task": "t", "image": "a", "seed": 0, "iterations": 10, "iterations_2x": None},
        {"method": "proposed", "task": "t", "image": "b", "seed": 1, "iterations": 10, "iterations_2x": None},
    ])
    assert evaluation_forwards(per_image).tolist() == [30, 14, 10, 10]
    timings = pd.DataFrame([{"rule": "evaluate", "job": "gauss/t", "seconds": 7.0},
                            {"rule": "evaluate", "job": "proposed_seed1/t", "seconds": 3.0},
                            {"rule": "train_deq", "job": "mtdeq", "seconds": 11.0},
                            {"rule": "TOTAL", "job": "", "seconds": 21.0}])
    macs = {("t", "a"): 2e9, ("t", "b"): 1e9}  # 2 and 1 GMAC per forward
    table = floor_table(per_image, timings, macs, {"forward": 10.0, "gemm": 20.0}, threads=1, cores=2)
    assert list(table.columns) == FLOOR_COLUMNS
    rows = table.set_index(["kind", "name"])
    assert rows.loc[("evaluate", "gauss"), "gmac"] == 60 and rows.loc[("evaluate", "gauss"), "job_s"] == 7
    assert rows.loc[("evaluate", "proposed_seed1"), "gmac"] == 10 and rows.loc[("evaluate", "proposed_seed1"), "job_s"] == 3
    assert rows.loc[("evaluate", "red"), "s_at_gemm_rate"] == 28 / 20
    assert rows.loc[("other", "train_deq"), "job_s"] == 11 and ("other", "TOTAL") not in rows.index
    total = rows.loc[("total", "evaluate")]
    assert total["gmac"] == 60 + 28 + 20 + 10 and total["s_at_forward_rate"] == 118 / 10
    assert total["wall_min_at_gemm_rate"] == 118 / 20 / 2 / 60 and total["forwards"] == 30 + 14 + 10 + 10


def test_bench_floor_runs_on_a_reference_folder(images, prior, tmp_path):
    """Plumbing of ``bench floor``: per_image.csv + timings.csv of a reference, a tiny prior; a missing
    file of the reference is a clear error."""
    import pandas as pd

    from mtdeq.bench.floor import add_floor_args, run_floor

    ref = tmp_path / "ref"
    ref.mkdir()
    names = [p.stem for p in sorted(images.iterdir())][:2]
    pd.DataFrame([{"method": "gauss", "task": "blur1.6", "image": n, "seed": 0, "iterations": 3, "iterations_2x": 6}
                  for n in names]).to_csv(ref / "per_image.csv", index=False)
    parser = argparse.ArgumentParser()
    add_floor_args(parser)
    argv = ["--reference", str(ref), "--images", str(images), "--prior", str(prior), "--image",
            str(sorted(images.iterdir())[0]), "--size", "32", "--gemm-size", "64", "--repeats", "1",
            "--out", str(tmp_path / "floor.csv")]
    with pytest.raises(SystemExit, match="timings.csv not found"):
        run_floor(parser.parse_args(argv))
    pd.DataFrame([{"rule": "evaluate", "job": "gauss/blur1.6", "seconds": 1.0}]).to_csv(ref / "timings.csv", index=False)
    assert run_floor(parser.parse_args(argv)) == 0
    table = pd.read_csv(tmp_path / "floor.csv")
    total = table[table["kind"] == "total"].iloc[0]
    assert total["forwards"] == 18 and total["gmac"] > 0 and (table.loc[table["kind"] == "rate", "gmac_per_s"] > 0).all()
