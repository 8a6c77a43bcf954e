"""``bench train``: seconds per training step of both stages -> results/bench/train.csv.

For one model size and crop: seconds per Algorithm 1 step (``mtdeq.train.deq.deq_step``) with the
plain and the Anderson fixed-point solver, each in the VARIANTS of the step (one solve per task or
the N solves stacked, ``--batch-tasks``; default or channels-last weights; grey or filled
completion start, ``--comp-init``; ``VARIANT@TOL`` for another tolerance), side by side on the same
crops, tasks and noise, with the mean and largest fixed-point iteration counts and the share of
converged / diverged solves, and seconds per ``pretrain-denoiser`` step; each after one untimed
warm-up step.  ``--grad-check`` instead compares each variant's step gradient with that of a tight
solve -> results/bench/train_grad.csv.  Without --config the defaults are the quick scale's FFDNet
prior (BENCH_DEFAULTS); with --config the run is the paper-scale projection of
mtdeq.bench.projection (the arguments are shared, see ``add_bench_args``).
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch

from mtdeq.bench.projection import run_projection
from mtdeq.train.config import DenoiserTrainConfig, DEQTrainConfig
from mtdeq.train.denoiser import denoiser_loss
from mtdeq.train.deq import deq_step
from mtdeq.runtime import resolve_device
from mtdeq.train.loop import memory_format, open_dataset, step_generator
from mtdeq.train.state import fmt_cell

BENCH_COLUMNS = ["stage", "solver", "variant", "batch_tasks", "channels_last", "comp_init", "tol", "backbone", "nc", "nb", "init", "crop", "batch_size", "n_tasks", "max_iter",
                 "threads", "device", "steps", "seconds_per_step", "fp_iter_mean", "fp_iter_max",
                 "pct_converged", "pct_diverged", "git_commit"]


# Defaults of ``bench train`` without --config: the quick scale's FFDNet prior.
BENCH_DEFAULTS = dict(backbone="ffdnet", nc=[96], nb=12, init="data/weights/ffdnet_color.pth",
                      train_dirs=["data/BSDS500/train"], crop=64, batch_size=2, n_tasks=5, eta=0.49, tol=1e-7,
                      max_iter=350, solvers=["plain", "anderson"], out="results/bench/train.csv")


# variant -> the DEQTrainConfig fields it sets (and channels_last, a runtime flag of train-deq)
VARIANTS = {
    "per-task": {},  # the step the quick and ci references were trained with
    "stacked": {"batch_tasks": True},
    "per-task-cl": {"channels_last": True},
    "stacked-cl": {"batch_tasks": True, "channels_last": True},
    "per-task-fill": {"comp_init": "fill"},
    "stacked-fill": {"batch_tasks": True, "comp_init": "fill"},
    "stacked-fill-cl": {"batch_tasks": True, "comp_init": "fill", "channels_last": True},
}
GRAD_COLUMNS = ["step", "variant", "comp_init", "tol", "max_iter", "rel_error", "cosine", "seed_noise_rel",
                "batch_noise_rel", "fp_iter_mean", "pct_converged", "ref_tol", "ref_max_iter", "git_commit"]


def add_bench_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``bench train``: a timing run, or with --config the projection of a full run."""
    p.add_argument("--config", default=None,
                   help="projection mode: time one Algorithm 1 step at the size of this YAML (merged over "
                        "--base-config: model, deq.crop/batch_size/solver/max_iter/eta, priors.*.n_tasks/steps) "
                        "and write the projected CPU- and GPU-hours of its training runs "
                        "(default --out results/bench/paper_projection.csv); flags given explicitly override "
                        "the YAML")
    p.add_argument("--base-config", default="config/config.yaml", help="config the --config file overrides")
    p.add_argument("--assume-iters", type=float, default=50.0,
                   help="projection: ASSUMED mean fixed-point iterations per solve of the full run (not "
                        "measured: the paper only reports < 350 in > 99%% of solves; results/bench/solvers.csv "
                        "has medians 21-52 and means 26-350 for the FFDNet prior at 64x64)")
    p.add_argument("--gpu-speedup", type=float, default=100.0,
                   help="projection: ASSUMED speed ratio of one GPU to this CPU process (not measured); "
                        "GPU-hours = CPU-hours / this")
    p.add_argument("--gpu-tflops", type=float, default=50.0,
                   help="projection: ASSUMED sustained TFLOP/s of one GPU on this network (not measured); "
                        "second estimate: GPU-hours = counted FLOP / this")
    p.add_argument("--probe-iters", type=int, nargs=2, default=[1, 4], metavar=("K1", "K2"),
                   help="projection: time a step with exactly K1 and K2 fixed-point iterations (tol 0); the "
                        "difference gives the cost of one iteration, the rest the JFB step")
    p.add_argument("--measure-batch", type=int, default=1,
                   help="projection: images per timed step (the cost is scaled linearly to the config's batch)")
    p.add_argument("--backbone", choices=("drunet", "ffdnet"), default=None)
    p.add_argument("--nc", type=int, nargs="+", default=None)
    p.add_argument("--nb", type=int, default=None)
    p.add_argument("--init", default=None,
                   help="weights (checkpoint or KAIR .pth; realistic iteration counts need trained weights); "
                        "'none' for random weights (projection: random when the config's weights are absent)")
    p.add_argument("--train-dirs", nargs="+", default=None)
    p.add_argument("--crop", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--n-tasks", type=int, default=None)
    p.add_argument("--steps", type=int, default=2, help="timed steps per measurement (after one warm-up step)")
    p.add_argument("--eta", type=float, default=None)
    p.add_argument("--tol", type=float, default=None)
    p.add_argument("--max-iter", type=int, default=None)
    p.add_argument("--solvers", nargs="+", choices=("plain", "anderson"), default=None)
    p.add_argument("--variants", nargs="+", type=_variant_name, default=list(VARIANTS), metavar="VARIANT[@TOL]",
                   help="DEQ step variants timed side by side on the same crops, tasks and noise: per-task (one "
                        "solve per task, the default step), stacked (train-deq --batch-tasks), either with "
                        "channels-last weights (-cl, --channels-last) or the filled completion start (-fill, "
                        f"--comp-init fill), one of {list(VARIANTS)}; '@TOL' solves that variant to tolerance TOL "
                        "instead of --tol (e.g. stacked-fill@1e-5); default: all")
    p.add_argument("--grad-check", action="store_true",
                   help="instead of timing: compare each variant's step gradient with the gradient at a tight "
                        "solve (--ref-tol, --ref-max-iter, filled start) on the same crops, tasks and noise, beside "
                        "two yardsticks: the same step with other noise (same tasks and masks: training tasks "
                        "carry their mask seed), and the previous step's batch "
                        "(default --out results/bench/train_grad.csv)")
    p.add_argument("--ref-tol", type=float, default=1e-8, help="grad-check: tolerance of the reference solve")
    p.add_argument("--ref-max-iter", type=int, default=300, help="grad-check: iteration cap of the reference solve")
    p.add_argument("--task-set", default="mtdeq")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--out", default=None, help="CSV to write (default results/bench/train.csv, or "
                                                 "results/bench/paper_projection.csv with --config)")


def _variant_name(text: str) -> str:
    """argparse type of --variants: VARIANT or VARIANT@TOL."""
    name, _, tol = text.partition("@")
    if name not in VARIANTS:
        raise argparse.ArgumentTypeError(f"unknown variant {name!r}; expected one of {list(VARIANTS)}")
    if tol:
        try:
            if not float(tol) > 0:
                raise ValueError
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: the tolerance after '@' must be a number > 0") from None
    return text


def _variant_cfg(args, solver: str, variant: str, **override) -> tuple[DEQTrainConfig, bool]:
    """(the DEQTrainConfig of a variant 'NAME' or 'NAME@TOL', its channels_last flag)."""
    name, _, tol = variant.partition("@")
    fields = dict(VARIANTS[name])
    if tol:
        fields["tol"] = float(tol)
    channels_last = fields.pop("channels_last", False)
    settings = dict(out="bench", init="bench", train_dirs=tuple(args.train_dirs), task_set=args.task_set,
                    n_tasks=args.n_tasks, crop=args.crop, batch_size=args.batch_size, lr=args.lr, eta=args.eta,
                    tol=args.tol, max_iter=args.max_iter, solver=solver, seed=args.seed)
    cfg = DEQTrainConfig(**{**settings, **fields, **override})
    return cfg, channels_last


def _time_deq_steps(args, base, data, device, common: dict, solver: str, variant: str) -> dict:
    """Seconds per Algorithm 1 step (after one untimed warm-up step) and the fixed-point statistics."""
    from mtdeq.tasks import TASK_SETS

    cfg, channels_last = _variant_cfg(args, solver, variant)
    batch_tasks = cfg.batch_tasks
    model = copy.deepcopy(base).to(device, memory_format=memory_format(channels_last)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    seconds, its, status = [], [], []
    for step in range(0, args.steps + 1):  # step 0: warm-up, not timed
        g = step_generator(args.seed, step)
        x = data.sample_batch(g, args.batch_size).to(device)
        tasks = [TASK_SETS[args.task_set].sample(g) for _ in range(args.n_tasks)]
        t0 = time.perf_counter()
        stats = deq_step(model, optimizer, x, tasks, g, cfg)
        if step > 0:
            seconds.append(time.perf_counter() - t0)
            its += stats.iterations
            status += stats.status
    n = max(len(status), 1)
    row = {**common, "stage": "train-deq", "solver": solver, "variant": variant, "batch_tasks": batch_tasks,
           "channels_last": channels_last, "comp_init": cfg.comp_init, "tol": cfg.tol,
           "seconds_per_step": float(np.mean(seconds)), "fp_iter_mean": float(np.mean(its)), "fp_iter_max": max(its),
           "pct_converged": 100 * status.count("converged") / n, "pct_diverged": 100 * status.count("diverged") / n}
    print(f"train-deq {solver} {variant}: {row['seconds_per_step']:.2f} s/step, "
          f"fixed-point iterations mean {row['fp_iter_mean']:.1f} max {row['fp_iter_max']}, converged "
          f"{row['pct_converged']:.0f}%", flush=True)
    return row


def run_bench(args) -> int:
    """Seconds per MTDEQ step (plain and Anderson, with mean fixed-point iterations) and per
    denoiser step, for one model size and crop; writes args.out (CSV).  With --config: the
    projected CPU- and GPU-hours of that config's training runs."""
    from mtdeq.io import provenance
    from mtdeq.models import BackboneConfig, build_backbone, load_prior

    if args.config:
        return run_projection(args)
    if args.grad_check and args.out is None:
        args.out = "results/bench/train_grad.csv"
    for key, value in BENCH_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    backbone = BackboneConfig(name=args.backbone, nc=tuple(args.nc), nb=args.nb)
    init = None if str(args.init).lower() == "none" else args.init
    if init is not None and not Path(init).exists():
        raise FileNotFoundError(f"--init {init}: weights file not found (pass --init none for random weights)")
    if init is None:
        torch.manual_seed(args.seed)  # random weights from --seed, not from whatever ran before in the process
    base = load_prior(init, backbone=backbone)[0] if init else build_backbone(backbone)
    data = open_dataset(args.train_dirs, args.crop)
    common = dict(stage="", solver="", backbone=args.backbone, nc=" ".join(map(str, args.nc)), nb=args.nb,
                  init=init or "random", crop=args.crop, batch_size=args.batch_size, n_tasks=args.n_tasks,
                  max_iter=args.max_iter, threads=torch.get_num_threads(), device=str(device), steps=args.steps,
                  git_commit=provenance()["git_commit"])
    if args.grad_check:
        return _grad_check(args, base, data, device)
    rows = []
    for solver in args.solvers:
        for variant in args.variants:
            rows.append(_time_deq_steps(args, base, data, device, common, solver, variant))
    dcfg = DenoiserTrainConfig(out="bench", train_dirs=tuple(args.train_dirs), backbone=args.backbone,
                               nc=tuple(args.nc), nb=args.nb, crop=args.crop, batch_size=args.batch_size,
                               steps=1, lr=args.lr)
    model = copy.deepcopy(base).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    seconds = []
    for step in range(0, args.steps + 1):
        g = step_generator(args.seed, step)
        x = data.sample_batch(g, args.batch_size).to(device)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        denoiser_loss(model, x, g, dcfg).backward()
        optimizer.step()
        if step > 0:
            seconds.append(time.perf_counter() - t0)
    rows.append({**common, "stage": "pretrain-denoiser", "solver": "", "seconds_per_step": float(np.mean(seconds))})
    print(f"pretrain-denoiser: {rows[-1]['seconds_per_step']:.3f} s/step", flush=True)

    _write_csv(args.out, BENCH_COLUMNS, rows)
    return 0


def _step_gradient(base, x, tasks, generator, cfg: DEQTrainConfig, channels_last: bool = False):
    """(flattened gradient of one Algorithm 1 step from the weights ``base``, its DEQStepStats)."""
    model = copy.deepcopy(base).to(x.device, memory_format=memory_format(channels_last)).train()
    stats = deq_step(model, torch.optim.SGD(model.parameters(), lr=0.0), x, tasks, generator, cfg)
    return torch.cat([p.grad.flatten() for p in model.parameters()]), stats


def _grad_check(args, base, data, device) -> int:
    """Does a variant change the step's gradient?  Per step: the relative error and cosine of each
    variant's gradient against a tight solve's, and as yardsticks the relative difference of the tight
    gradient under other noise (same crops, tasks and masks) and of the previous step's batch."""
    from mtdeq.io import provenance
    from mtdeq.tasks import TASK_SETS

    solver = args.solvers[-1]
    ref_cfg, _ = _variant_cfg(args, solver, "per-task", comp_init="fill", tol=args.ref_tol,
                              max_iter=args.ref_max_iter)
    commit = provenance()["git_commit"]
    rows, previous = [], None
    for step in range(1, args.steps + 1):
        g = step_generator(args.seed, step)
        x = data.sample_batch(g, args.batch_size).to(device)
        tasks = [TASK_SETS[args.task_set].sample(g) for _ in range(args.n_tasks)]
        state = g.get_state()
        reference, _ = _step_gradient(base, x, tasks, g, ref_cfg)
        other, _ = _step_gradient(base, x, tasks, step_generator(args.seed + 10_000, step), ref_cfg)
        seed_rel = float((other - reference).norm() / reference.norm())
        batch_rel = float((previous - reference).norm() / reference.norm()) if previous is not None else None
        for variant in args.variants:
            cfg, channels_last = _variant_cfg(args, solver, variant)
            g.set_state(state)  # the same noise as the reference
            grad, stats = _step_gradient(base, x, tasks, g, cfg, channels_last)
            rel = float((grad - reference).norm() / reference.norm())
            cos = float(grad @ reference / (grad.norm() * reference.norm()))
            n = max(len(stats.status), 1)
            rows.append({"step": step, "variant": variant, "comp_init": cfg.comp_init, "tol": cfg.tol,
                         "max_iter": cfg.max_iter, "rel_error": rel, "cosine": cos, "seed_noise_rel": seed_rel,
                         "batch_noise_rel": batch_rel, "fp_iter_mean": float(np.mean(stats.iterations)),
                         "pct_converged": 100 * stats.status.count("converged") / n, "ref_tol": args.ref_tol,
                         "ref_max_iter": args.ref_max_iter, "git_commit": commit})
            print(f"step {step} {variant}: gradient rel. error {rel:.3f} (cos {cos:.4f}); other noise "
                  f"{seed_rel:.3f}" + (f", previous batch {batch_rel:.3f}" if batch_rel is not None else "")
                  + f"; iterations {rows[-1]['fp_iter_mean']:.1f}, converged {rows[-1]['pct_converged']:.0f}%",
                  flush=True)
        previous = reference
    _write_csv(args.out, GRAD_COLUMNS, rows)
    return 0


def _write_csv(path, columns: list[str], rows: list[dict]) -> None:
    """Write ``rows`` (cells by column name, missing ones empty) as a CSV at ``path``, atomically."""
    from mtdeq.io import atomic_write_text

    lines = [",".join(columns)] + [",".join(str(fmt_cell(r.get(c))) for c in columns) for r in rows]
    atomic_write_text(path, "\n".join(lines) + "\n")
    print(f"wrote {path}")
