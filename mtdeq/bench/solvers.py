"""``bench solvers``: PnP-ADMM cost and DEQ fixed-point convergence -> results/bench/solvers.csv.

Measured on the CPU with torch's default thread count and denormal floats flushed to zero
(torch.set_flush_denormal, for the whole run):

1. the cost of PnP-ADMM (mtdeq.solvers.pnp_admm) in milliseconds per iteration per megapixel
   for FFDNet (the given weights) and a small, randomly initialised DRUNet, on the blur1.6
   task of a Set5 image;
2. the DEQ forward pass of Algorithm 1 -- the forward-backward map of Eq. (3) with the FFDNet
   denoiser, eta = 0.49, sigma_denoise = eta * sigma_noise -- solved to 1e-7 with the plain
   iteration and with Anderson acceleration: iterations used (mean / max), fraction converged,
   seconds and PSNR of the fixed point, on a few Set5 tasks (centre crops, to keep the run to a
   few minutes).

The CSV is in long format (one measured number per row, columns CSV_COLUMNS); a sidecar
``<out>.provenance.json`` records the arguments and code version.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

CSV_COLUMNS = ["bench", "denoiser", "task", "solver", "metric", "value", "unit", "images", "crop", "threads"]
DEFAULT_DEQ_TASKS = ("blur1.6", "sr2_bicubic_n1", "comp80")


def _default_data(relative: str) -> str:
    """data/<relative> when it exists, else $MTDEQ_DATA_MIRROR/<relative> (else data/<relative>)."""
    local = Path("data") / relative
    mirror = os.environ.get("MTDEQ_DATA_MIRROR", "")
    if not local.exists() and mirror and (Path(mirror) / relative).exists():
        return str(Path(mirror) / relative)
    return str(local)


def _centre_crop(x, size: int):
    """Centre crop (.., H, W) -> (.., min(H, size), min(W, size))."""
    h, w = x.shape[-2:]
    ch, cw = min(h, size), min(w, size)
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top : top + ch, left : left + cw].contiguous()


def _load_ffdnet(weights: str):
    from mtdeq.models import BackboneConfig, load_prior

    model, _ = load_prior(weights, BackboneConfig(name="ffdnet", nc=(96,), nb=12))
    return model.requires_grad_(False)


def _small_drunet():
    import torch

    from mtdeq.models import BackboneConfig, build_backbone

    torch.manual_seed(0)  # timing only: random weights
    return build_backbone(BackboneConfig(name="drunet", nc=(32, 64, 128, 256), nb=2)).eval().requires_grad_(False)


def _admm_rows(args, images, ffdnet, threads) -> list[dict]:
    """ms per PnP-ADMM iteration per megapixel, per denoiser (one blur1.6 image, K iterations)."""
    import torch

    from mtdeq.solvers import pnp_admm
    from mtdeq.tasks import TEST_TASKS, degrade

    x = _centre_crop(images[0][1], args.admm_crop)
    task = TEST_TASKS["blur1.6"]
    degraded = degrade(task, x, seed=0)
    megapixels = x.shape[-2] * x.shape[-1] / 1e6
    rows = []
    for name, model in (("ffdnet", ffdnet), ("drunet_small", _small_drunet())):
        with torch.no_grad():  # warm-up: first calls allocate and pick kernels
            model(degraded.y, 0.05)
        _, info = pnp_admm(op=degraded.op, y=degraded.y, denoiser=model, sigma_noise=task.sigma_noise,
                           iterations=args.admm_iterations, sigma_max=0.1, sigma_min=0.02)
        ms = 1000.0 * info.seconds / info.iterations / megapixels
        rows.append(dict(bench="admm", denoiser=name, task=task.name, solver="pnp_admm",
                         metric="ms_per_iter_per_mp", value=ms, unit="ms/iter/MP", images=1,
                         crop=x.shape[-1], threads=threads))
        print(f"pnp_admm {name:13s} {x.shape[-2]}x{x.shape[-1]}: {ms:9.1f} ms / iteration / MP")
    return rows


def _deq_rows(args, images, ffdnet, threads) -> list[dict]:
    """Iterations to 1e-7 of the FB fixed point (Eq. 3), plain vs Anderson, per task."""
    import torch

    from mtdeq.metrics import psnr
    from mtdeq.solvers import fb_map, fixed_point
    from mtdeq.tasks import TEST_TASKS, degrade

    eta = 0.49
    rows = []
    for task_name in args.tasks:
        if task_name not in TEST_TASKS:
            raise SystemExit(f"bench solvers: unknown task {task_name!r}; known: {', '.join(TEST_TASKS)}")
        task = TEST_TASKS[task_name]
        problems = [degrade(task, _centre_crop(x, args.deq_crop), seed=i) for i, (_, x) in enumerate(images)]
        ops, ys = [p.op for p in problems], [p.y for p in problems]
        x_gt = torch.cat([p.x_gt for p in problems])
        z0 = torch.cat([p.op.init(p.y) for p in problems])
        f = fb_map(ops, ys, ffdnet, eta=eta, sigma_denoise=eta * task.sigma_noise)
        for method in ("plain", "anderson"):
            start = time.perf_counter()
            z_star, info = fixed_point(f, z0, tol=args.tol, max_iter=args.max_iter, method=method)
            seconds = time.perf_counter() - start
            summary = info.summary()
            mean_psnr = sum(psnr(z_star[i : i + 1], x_gt[i : i + 1]) for i in range(len(problems))) / len(problems)
            measured = {
                "mean_iterations": (summary["mean_iterations"], "iterations"),
                "median_iterations": (float(info.iterations.double().median()), "iterations"),
                "max_iterations": (summary["max_iterations"], "iterations"),
                "frac_converged": (summary["converged"], "fraction"),
                "frac_diverged": (summary["diverged"], "fraction"),
                "seconds": (seconds, "s"),
                "psnr": (mean_psnr, "dB"),
            }
            for metric, (value, unit) in measured.items():
                rows.append(dict(bench="deq_forward", denoiser="ffdnet", task=task.name, solver=method,
                                 metric=metric, value=value, unit=unit, images=len(problems),
                                 crop=args.deq_crop, threads=threads))
            print(f"deq {task.name:15s} {method:8s}: iterations {info.iterations.tolist()} "
                  f"mean {summary['mean_iterations']:6.1f} max {summary['max_iterations']:3d}, converged {summary['converged']:.2f}, "
                  f"{seconds:6.1f} s, PSNR {mean_psnr:5.2f} dB")
    return rows


def run_solvers(args: argparse.Namespace) -> int:
    """PnP-ADMM ms/iteration/MP and DEQ fixed-point iterations to 1e-7 (plain vs Anderson)."""
    import pandas as pd
    import torch

    from mtdeq.io import atomic_write_text, list_images, provenance, read_image

    weights = Path(args.weights)
    if not weights.is_file():
        raise SystemExit(f"bench solvers: --weights {weights} not found (FFDNet KAIR state dict expected)")
    paths = list_images(args.images)[: args.max_images]
    images = [(p.stem, read_image(p)[None]) for p in paths]
    threads = torch.get_num_threads()
    # Denormal floats inside the CNNs' activations slow CPU convolutions by 20-50x on some
    # inputs (seen with Anderson iterates of Eq. 3); flushing them to zero changes results by
    # < 1e-38 and makes the timings comparable.
    torch.set_flush_denormal(True)
    ffdnet = _load_ffdnet(str(weights))
    rows = []
    if "admm" in args.parts:
        rows += _admm_rows(args, images, ffdnet, threads)
    if "deq" in args.parts:
        rows += _deq_rows(args, images, ffdnet, threads)

    out = Path(args.out)
    atomic_write_text(out, pd.DataFrame(rows, columns=CSV_COLUMNS).to_csv(index=False))
    config = {k: v for k, v in vars(args).items() if k != "func"}
    atomic_write_text(out.with_name(out.name + ".provenance.json"), json.dumps(provenance(config), indent=2, default=str))
    print(f"wrote {out}")
    return 0


def add_solver_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="results/bench/solvers.csv", help="output CSV (default %(default)s)")
    p.add_argument("--images", default=_default_data("Set5"),
                   help="test images (default data/Set5, or $MTDEQ_DATA_MIRROR/Set5 when data/ is absent)")
    p.add_argument("--weights", default=_default_data("weights/ffdnet_color.pth"),
                   help="FFDNet colour weights, KAIR state dict (default %(default)s)")
    p.add_argument("--parts", nargs="+", choices=("admm", "deq"), default=["admm", "deq"],
                   help="what to measure (default: both)")
    p.add_argument("--max-images", type=int, default=3, help="images used for the DEQ forward (default 3)")
    p.add_argument("--tasks", nargs="+", default=list(DEFAULT_DEQ_TASKS),
                   help="test tasks for the DEQ forward (default: %(default)s)")
    p.add_argument("--deq-crop", type=int, default=64, help="centre crop for the DEQ forward (default 64)")
    p.add_argument("--admm-crop", type=int, default=256, help="centre crop for ADMM timing (default 256)")
    p.add_argument("--admm-iterations", type=int, default=10, help="ADMM iterations timed (default 10)")
    p.add_argument("--tol", type=float, default=1e-7, help="fixed-point tolerance on the MSE (default 1e-7)")
    p.add_argument("--max-iter", type=int, default=350, help="fixed-point iteration cap (default 350)")
