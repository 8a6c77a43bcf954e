"""Test-time benches (issue 24): ``bench eval`` (network layout) and ``bench red`` (RED's scheme).

``bench eval``: seconds per denoiser forward of a prior (default: the quick scale's FFDNet) on one
centre-cropped Set14 image (default barbara, 512x512), default layout vs channels-last
(mtdeq.models.for_inference), in the same run with a fixed thread count (default 1).  The two
layouts are timed in alternation (after one warm-up pass each), so that a load change on the
machine hits both; the CSV has one row per layout (columns EVAL_COLUMNS): median and minimum
seconds over the repeats and the largest |difference| of the outputs.

``bench red``: RED (mtdeq.solvers.red) with the plain fixed-point iteration vs safeguarded Anderson
acceleration, side by side on one centre crop of a Set14 (validation) image, per task, with the
prior and RED's (lam, sigma_denoise, step) of a tuned_params.csv.  Each scheme is one run with the
relative-change stop ``--tol`` and cap ``--cap``, with snapshots after K = k0, 2 k0, 4 k0, ... iterations.
One row per (task, scheme), columns RED_COLUMNS: iterations and seconds to the tol stop, the final
PSNR, k_stable (the smallest snapshot K with |PSNR(2K) - PSNR(K)| <= --db, the budget check's
criterion; a stopped run's estimate is frozen, so K past the stop counts as stable) with its PSNR
and estimated seconds (total seconds x K / iterations), and ``dist_to_plain``: ||x - x_plain|| /
||x_plain|| of the final estimates (0 for plain), which says whether Anderson found the same
fixed point.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from mtdeq.bench.solvers import _centre_crop, _default_data

EVAL_COLUMNS = ["prior", "image", "size", "threads", "layout", "repeats", "median_s", "min_s", "max_abs_diff"]
RED_COLUMNS = ["task", "image", "crop", "accel", "anderson_m", "anderson_lam", "lam", "sigma_denoise", "step", "tol", "cap",
               "iterations", "converged", "seconds", "psnr", "k_stable", "psnr_k_stable", "seconds_k_stable",
               "dist_to_plain", "threads"]


def _load_prior(path: str):
    """Our checkpoint, or the KAIR FFDNet-colour state dict of the mirror."""
    from mtdeq.models import BackboneConfig, load_prior

    try:
        return load_prior(path)[0]
    except ValueError:
        return load_prior(path, BackboneConfig(name="ffdnet", nc=(96,), nb=12))[0]


def _read(path: str, size: int):
    from mtdeq.io import read_image

    return _centre_crop(read_image(path).unsqueeze(0), size)


def add_timed_forward_args(p: argparse.ArgumentParser) -> None:
    """The options of a timed prior forward (bench eval, bench floor): prior, image, crop, repeats, threads."""
    p.add_argument("--prior", default=_default_data("weights/ffdnet_color.pth"), help="prior (default: quick's FFDNet)")
    p.add_argument("--image", default=_default_data("Set14/barbara.png"),
                   help="image of the timed forward (default Set14 barbara)")
    p.add_argument("--size", type=int, default=512, help="centre crop of the timed forward (default 512)")
    p.add_argument("--repeats", type=int, default=5, help="timed passes (default 5)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the evaluate jobs)")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    add_timed_forward_args(p)
    p.add_argument("--sigma", type=float, default=25.0, help="denoiser level /255 (default 25)")
    p.add_argument("--out", default="results/bench/eval_layout.csv", help="CSV to write")


def run_eval(args: argparse.Namespace) -> int:
    """Seconds per prior forward, default layout vs channels-last, same run (one image, fixed threads)."""
    import copy

    from mtdeq.io import atomic_write_text
    from mtdeq.models import for_inference

    torch.set_num_threads(args.threads)
    base = _load_prior(args.prior)
    x = _read(args.image, args.size)
    g = torch.Generator().manual_seed(0)
    sigma = args.sigma / 255.0
    y = x + sigma * torch.randn(x.shape, generator=g)
    level = torch.full((1,), sigma)
    models = {name: for_inference(copy.deepcopy(base), "cpu", channels_last=name == "channels_last")
              for name in ("default", "channels_last")}
    times = {name: [] for name in models}
    outputs = {}
    with torch.inference_mode():
        for name, model in models.items():  # warm-up (oneDNN primitive creation)
            outputs[name] = model(y, level)
        for _ in range(args.repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(y, level)
                times[name].append(time.perf_counter() - start)
    diff = float((outputs["default"] - outputs["channels_last"]).abs().max())
    rows = [{"prior": args.prior, "image": args.image, "size": "x".join(map(str, x.shape[-2:])),
             "threads": args.threads, "layout": name, "repeats": args.repeats,
             "median_s": statistics.median(t), "min_s": min(t), "max_abs_diff": diff} for name, t in times.items()]
    for r in rows:
        print(f"{r['layout']:>14}: median {r['median_s']:.3f} s, min {r['min_s']:.3f} s per forward ({r['size']}, "
              f"{args.threads} thread(s))")
    print(f"max |default - channels_last| = {diff:.2e}")
    out = Path(args.out)
    atomic_write_text(out, pd.DataFrame(rows, columns=EVAL_COLUMNS).to_csv(index=False, float_format="%.6g"))
    print(f"-> {out}")
    return 0


def add_red_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prior", default=_default_data("weights/ffdnet_color.pth"), help="prior (default: quick's FFDNet)")
    p.add_argument("--params", default="results/reference/quick/tuned_params.csv",
                   help="tuned_params.csv with the red rows (default: quick's blessed one)")
    p.add_argument("--image", default=_default_data("Set14/barbara.png"),
                   help="a validation (Set14) image, not a test one (default barbara)")
    p.add_argument("--crop", type=int, default=64, help="centre crop (default 64)")
    p.add_argument("--tasks", nargs="+", default=["comp80", "comp90", "sr2_bicubic_n1"], help="test tasks")
    p.add_argument("--tol", type=float, default=1e-5, help="relative-change stop (default 1e-5)")
    p.add_argument("--cap", type=int, default=1280, help="iteration cap (default 1280)")
    p.add_argument("--k0", type=int, default=5, help="first snapshot K; then 2K, 4K, ... (default 5)")
    p.add_argument("--db", type=float, default=0.1, help="|PSNR(2K) - PSNR(K)| criterion in dB (default 0.1)")
    p.add_argument("--anderson-m", type=int, default=5, help="Anderson memory (default 5)")
    p.add_argument("--anderson-lam", type=float, default=1e-4,
                   help="Anderson Tikhonov weight, relative to the mean squared residual (default 1e-4, as fixed_point)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--seed", type=int, default=0, help="degradation seed (default 0)")
    p.add_argument("--out", default="results/bench/red_accel.csv", help="CSV to write")


def k_stable(psnrs: dict[int, float], db: float) -> int | None:
    """The smallest K of ``psnrs`` (K -> PSNR) with 2K also in it and |PSNR(2K) - PSNR(K)| <= db."""
    for k in sorted(psnrs):
        if 2 * k in psnrs and abs(psnrs[2 * k] - psnrs[k]) <= db:
            return k
    return None


def run_red(args: argparse.Namespace) -> int:
    """RED plain vs Anderson on one Set14 crop: iterations / seconds to the tol stop and to a stable PSNR."""
    from mtdeq import tasks
    from mtdeq.evaluate import read_params
    from mtdeq.io import atomic_write_text
    from mtdeq.metrics import psnr
    from mtdeq.models import for_inference
    from mtdeq.solvers import red

    torch.set_num_threads(args.threads)
    denoiser = for_inference(_load_prior(args.prior), "cpu")
    x = _read(args.image, args.crop)
    snaps, k = [], args.k0
    while k <= args.cap:
        snaps.append(k)
        k *= 2
    rows = []
    for name in args.tasks:
        task = tasks.TEST_TASKS[name]
        p = read_params(args.params, "red", name)
        step = 1.0 if p.step is None else p.step
        deg = tasks.degrade(task, x, seed=args.seed)
        finals = {}
        for accel in ("plain", "anderson"):
            z, info = red(op=deg.op, y=deg.y, denoiser=denoiser, sigma_noise=task.sigma_noise, iterations=args.cap,
                          sigma_denoise=p.sigma_denoise, lam=p.lam, step=step, tol=args.tol,
                          snapshots_at=tuple(snaps), accel=accel, anderson_m=args.anderson_m,
                          anderson_lam=args.anderson_lam)
            finals[accel] = z
            curve = {k: psnr(info.snapshots[k], deg.x_gt) for k in snaps}
            ks = k_stable(curve, args.db)
            rows.append({"task": name, "image": Path(args.image).name, "crop": args.crop, "accel": accel,
                         "anderson_m": args.anderson_m if accel == "anderson" else None,
                         "anderson_lam": args.anderson_lam if accel == "anderson" else None, "lam": p.lam,
                         "sigma_denoise": p.sigma_denoise, "step": step, "tol": args.tol, "cap": args.cap,
                         "iterations": info.iterations, "converged": info.converged, "seconds": info.seconds,
                         "psnr": psnr(z, deg.x_gt), "k_stable": ks,
                         "psnr_k_stable": curve[ks] if ks else None,
                         "seconds_k_stable": info.seconds * min(ks, info.iterations) / info.iterations if ks else None,
                         "dist_to_plain": float((z - finals["plain"]).norm() / finals["plain"].norm()),
                         "threads": args.threads})
            r = rows[-1]
            print(f"{name} {accel:>8}: {r['iterations']} it ({'tol met' if r['converged'] else 'cap'}), "
                  f"{r['seconds']:.1f} s, PSNR {r['psnr']:.2f} dB; stable (<= {args.db} dB) at K = {ks}; "
                  f"dist to plain {r['dist_to_plain']:.2e}; curve "
                  + " ".join(f"{k}:{v:.2f}" for k, v in curve.items()))
    out = Path(args.out)
    atomic_write_text(out, pd.DataFrame(rows, columns=RED_COLUMNS).to_csv(index=False, float_format="%.6g"))
    print(f"-> {out}")
    return 0
