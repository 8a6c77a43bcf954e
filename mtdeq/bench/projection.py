"""``bench train --config``: projected CPU- and GPU-hours of a config's training runs.

``run_projection`` times one Algorithm 1 step at the size of the config (e.g. config/paper.yaml
merged over config/config.yaml, ``load_run_config``) with K1 and K2 fixed-point iterations, counts
the convolution FLOP of one denoiser forward (``mtdeq.bench.floor.conv_macs``) and scales both to every training
run of the config (see its docstring for the formulas and what is ASSUMED rather than measured).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from mtdeq.bench.floor import conv_macs
from mtdeq.train.config import DenoiserTrainConfig, DEQTrainConfig, check_value
from mtdeq.train.denoiser import denoiser_loss
from mtdeq.train.deq import deq_step
from mtdeq.runtime import resolve_device
from mtdeq.train.loop import open_dataset, step_generator
from mtdeq.train.state import fmt_cell

PROJECTION_COLUMNS = [
    "run", "stage", "task_set", "n_tasks", "batch_size", "crop", "steps", "assumed_mean_iters",
    "seconds_per_fp_iter_per_image", "seconds_jfb_per_image", "seconds_denoiser_step_per_image",
    "projected_seconds_per_step_cpu", "cpu_hours", "assumed_gpu_speedup", "gpu_hours",
    "tflop_per_step", "pflop_total", "assumed_gpu_tflops", "gpu_hours_flop_based",
    "measured_step_seconds", "measured_step", "gflop_per_forward", "cpu_gflops", "backbone", "nc", "nb",
    "weights", "solver", "max_iter", "threads", "device", "config", "git_commit",
]


def _deep_merge(base: dict, override: dict) -> dict:
    """base with override's keys replaced; nested dicts merged key by key (as Snakemake does)."""
    out = dict(base)
    for key, value in override.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_run_config(path: str, base: str | None) -> dict:
    """The YAML at path merged over the YAML at base (None or missing: path alone)."""
    import yaml

    def read(p):
        if not Path(p).is_file():
            raise FileNotFoundError(f"bench train --config: {p} not found")
        return yaml.safe_load(Path(p).read_text()) or {}

    config = read(path)
    return _deep_merge(read(base), config) if base and Path(base).resolve() != Path(path).resolve() else config


def run_projection(args) -> int:
    """Projected CPU- and GPU-hours of the training runs of --config (e.g. config/paper.yaml).

    Measured on this machine: t(K), the seconds of one Algorithm 1 step (``deq_step``) on
    --measure-batch crops with one task (blur1.6) and exactly K fixed-point iterations (tol 0),
    for K = K1, K2 after a warm-up step.  Per image and task:

        t_iter = (t(K2) - t(K1)) / ((K2 - K1) b)        one fixed-point iteration (a denoiser forward)
        t_jfb  = t(K1) / b - K1 t_iter                  degradation, init, JFB forward + backward

    Projected (linear in batch and N; ASSUMED: --assume-iters mean iterations, --gpu-speedup):

        seconds/step = B N (assume_iters t_iter + t_jfb);  CPU-hours = steps seconds/step / 3600
        GPU-hours = CPU-hours / gpu_speedup

    and, from the convolution FLOP F of one forward (counted, not timed) with a JFB step taken as
    3 forwards: FLOP/step = B N (assume_iters + 3) F, GPU-hours = steps FLOP/step / --gpu-tflops
    for each prior of the config (priors.<name>: task_set, n_tasks, steps; deq: batch_size, crop),
    for the Gauss + same budget control (a denoiser step per image, same steps/batch as MTDEQ) and
    the Gaussian pretraining (denoiser.steps; 0 means convert only).  Writes args.out (CSV,
    PROJECTION_COLUMNS, one row per run and a total) and <out>.provenance.json.
    """
    from mtdeq.io import atomic_write_text, provenance
    from mtdeq.models import BackboneConfig, build_backbone, load_prior
    from mtdeq.tasks import TEST_TASKS

    config = load_run_config(args.config, args.base_config)
    model_cfg, deq, priors = config.get("model", {}), config.get("deq", {}), config.get("priors", {})
    pick = lambda flag, value: value if flag is None else flag  # noqa: E731  explicit flags win
    backbone = BackboneConfig(name=pick(args.backbone, model_cfg["backbone"]), nc=tuple(pick(args.nc, model_cfg["nc"])),
                              nb=pick(args.nb, model_cfg["nb"]))
    crop, batch = pick(args.crop, deq["crop"]), pick(args.batch_size, deq["batch_size"])
    solver = pick(args.solvers, [deq.get("solver", "plain")])[0]
    max_iter, eta = pick(args.max_iter, deq.get("max_iter", 350)), pick(args.eta, deq.get("eta", 0.49))
    k1, k2 = args.probe_iters
    check_value(0 < k1 < k2, "--probe-iters", args.probe_iters, "two iteration counts 0 < K1 < K2")
    check_value(0 < args.assume_iters <= max_iter, "--assume-iters", args.assume_iters, f"in (0, max_iter={max_iter}]")
    check_value(args.gpu_speedup > 0, "--gpu-speedup", args.gpu_speedup, "a positive speed ratio")
    check_value(args.gpu_tflops > 0, "--gpu-tflops", args.gpu_tflops, "a positive throughput")
    out = Path(args.out or "results/bench/paper_projection.csv")

    if args.threads:
        torch.set_num_threads(args.threads)
    # Denormal activations slow CPU convolutions many-fold; flushing them changes nothing visible.
    torch.set_flush_denormal(True)
    device = resolve_device(args.device)
    weights = args.init if args.init is not None else model_cfg.get("weights", {}).get("path")
    wanted = weights is not None and str(weights).lower() != "none"
    if wanted and Path(weights).is_file():
        base = load_prior(weights, backbone=backbone)[0]
        weights_note = str(weights)
    else:
        torch.manual_seed(args.seed)  # timing only: random weights have the same cost
        base = build_backbone(backbone)
        weights_note = f"random init ({weights} absent)" if wanted else "random init"
    model = base.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    dirs = [d for d in pick(args.train_dirs, config.get("data", {}).get("train_dirs", [])) if Path(d).is_dir()]
    if dirs:
        x = open_dataset(dirs, crop).sample_batch(step_generator(args.seed, 0), args.measure_batch).to(device)
    else:  # no training images here: uniform noise crops cost the same
        x = torch.rand(args.measure_batch, 3, crop, crop, generator=step_generator(args.seed, 0)).to(device)
    task = TEST_TASKS["blur1.6"]
    gflop = 2.0 * conv_macs(model, tuple(x[:1].shape)) / 1e9  # 2 FLOP per multiply-add

    def timed_step(k: int) -> float:
        cfg = DEQTrainConfig(out="bench", init="bench", train_dirs=("bench",), n_tasks=1, crop=crop,
                             batch_size=args.measure_batch, lr=args.lr, eta=eta, tol=0.0, max_iter=k, solver=solver)
        t0 = time.perf_counter()
        deq_step(model, optimizer, x, [task], step_generator(args.seed, k), cfg)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    print(f"bench train --config {args.config}: {backbone.name} nc {list(backbone.nc)} nb {backbone.nb}, "
          f"{weights_note}, crop {crop}, {args.measure_batch} image(s) per timed step", flush=True)
    timed_step(1)  # warm-up: allocations, kernel choice
    # Best of three per count: other processes only ever add time.
    t1, t2 = min(timed_step(k1) for _ in range(3)), min(timed_step(k2) for _ in range(3))
    b = args.measure_batch
    if t2 > t1:
        t_iter = (t2 - t1) / ((k2 - k1) * b)
    else:  # timing noise swamped the difference: bound one iteration by the whole K2 step
        t_iter = t2 / ((k2 + 1) * b)
    t_jfb = max(t1 / b - k1 * t_iter, 0.0)
    dcfg = DenoiserTrainConfig(out="bench", train_dirs=("bench",), backbone=backbone.name, nc=backbone.nc,
                               nb=backbone.nb, crop=crop, batch_size=b, steps=1, lr=args.lr)
    t0 = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    denoiser_loss(model, x, step_generator(args.seed, 1), dcfg).backward()
    optimizer.step()
    t_den = (time.perf_counter() - t0) / b
    print(f"measured: {t2:.1f} s for a step with {k2} iterations; {t_iter:.2f} s per fixed-point iteration "
          f"per image, {t_jfb:.2f} s JFB per image, {t_den:.2f} s per denoiser step per image "
          f"({gflop:.1f} GFLOP per forward, {gflop / max(t_iter, 1e-9):.1f} GFLOP/s)", flush=True)

    common = dict(assumed_gpu_speedup=args.gpu_speedup, assumed_gpu_tflops=args.gpu_tflops, measured_step_seconds=t2,
                  measured_step=f"{b} image(s), 1 task (blur1.6), {k2} fixed-point iterations",
                  seconds_per_fp_iter_per_image=t_iter, seconds_jfb_per_image=t_jfb,
                  seconds_denoiser_step_per_image=t_den, gflop_per_forward=gflop,
                  cpu_gflops=gflop / t_iter if t_iter > 0 else None, backbone=backbone.name,
                  nc=" ".join(map(str, backbone.nc)), nb=backbone.nb, weights=weights_note, solver=solver,
                  max_iter=max_iter, threads=torch.get_num_threads(), device=str(device), config=args.config,
                  git_commit=provenance()["git_commit"])
    rows = []
    for name, prior in priors.items():
        n_tasks = pick(args.n_tasks, prior["n_tasks"])
        seconds = batch * n_tasks * (args.assume_iters * t_iter + t_jfb)
        rows.append(dict(run=name, stage="train-deq", task_set=prior["task_set"], n_tasks=n_tasks, batch_size=batch,
                         crop=crop, steps=int(prior["steps"]), assumed_mean_iters=args.assume_iters,
                         projected_seconds_per_step_cpu=seconds,
                         tflop_per_step=batch * n_tasks * (args.assume_iters + 3) * gflop / 1e3))
    if "mtdeq" in priors:  # Gauss + same budget: denoiser steps with the MTDEQ prior's steps and batch
        rows.append(dict(run="gauss_budget", stage="pretrain-denoiser", batch_size=batch, crop=crop,
                         steps=int(priors["mtdeq"]["steps"]), projected_seconds_per_step_cpu=batch * t_den,
                         tflop_per_step=batch * 3 * gflop / 1e3))
    den = config.get("denoiser", {})
    if int(den.get("steps", 0)) > 0:  # Gaussian pretraining (0: the given weights are converted only)
        scale = (den.get("crop", crop) / crop) ** 2
        rows.append(dict(run="gauss", stage="pretrain-denoiser", batch_size=den.get("batch_size", batch),
                         crop=den.get("crop", crop), steps=int(den["steps"]),
                         projected_seconds_per_step_cpu=den.get("batch_size", batch) * t_den * scale,
                         tflop_per_step=den.get("batch_size", batch) * 3 * gflop * scale / 1e3))
    for row in rows:
        row["cpu_hours"] = row["steps"] * row["projected_seconds_per_step_cpu"] / 3600
        row["gpu_hours"] = row["cpu_hours"] / args.gpu_speedup
        row["pflop_total"] = row["steps"] * row["tflop_per_step"] / 1e3
        row["gpu_hours_flop_based"] = row["pflop_total"] * 1e3 / args.gpu_tflops / 3600
    rows.append({"run": "total", **{k: sum(r[k] for r in rows)
                                    for k in ("cpu_hours", "gpu_hours", "pflop_total", "gpu_hours_flop_based")}})
    for row in rows:
        row.update({k: v for k, v in common.items() if k not in row})
        print(f"{row['run']:13s} {row.get('steps') or '':>7} steps  {row['cpu_hours']:12.1f} CPU-hours  "
              f"{row['gpu_hours']:9.1f} GPU-hours (assumed GPU speed-up {args.gpu_speedup:g}); "
              f"{row['pflop_total']:10.0f} PFLOP = {row['gpu_hours_flop_based']:7.1f} GPU-hours at an assumed "
              f"{args.gpu_tflops:g} TFLOP/s", flush=True)

    lines = [",".join(PROJECTION_COLUMNS)]
    lines += [",".join(_csv_cell(r.get(c)) for c in PROJECTION_COLUMNS) for r in rows]
    atomic_write_text(out, "\n".join(lines) + "\n")
    settings = {k: v for k, v in vars(args).items() if k != "func"}
    atomic_write_text(out.with_name(out.name + ".provenance.json"),
                      json.dumps(provenance({"args": settings, "config": config}), indent=2, default=str))
    print(f"wrote {out}")
    return 0


def _csv_cell(value) -> str:
    text = str(fmt_cell(value))
    return f'"{text}"' if "," in text else text
