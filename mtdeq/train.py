"""Training stages: Gaussian-denoiser pretraining and MTDEQ (Algorithm 1).

``pretrain-denoiser`` trains (or just converts) the Gauss prior Q_theta(x, sigma):

    sigma ~ U[sigma_min, sigma_max] per image,  x_noisy = x + sigma n,  n ~ N(0, I)
    loss = l1 | l2 of Q_theta(x_noisy, sigma) against x                  Adam, MultiStepLR

``train-deq`` fine-tunes a prior with the deep-equilibrium objective of Algorithm 1.  For a
mini-batch of ground-truth crops x (B, 3, C, C) and i = 1..N:

    (A_i, sigma_i) ~ task set x Sigma_noise                                (one draw per i)
    y_i = A_i x + sigma_i eps_i                         fresh noise for every image
    z_i = fixed point of f_i(z) = Q_theta(z - eta A_i^T (A_i z - y_i), eta sigma_i)   (Eq. 3)
          from z_i^0 = P(y_i) = op.init(y_i), without autograd
    L_i = 1/d ||f_i(z_i) - x||^2 per image, gradient only through this one application of f_i
          (Jacobian-free backprop, Eq. 4)
    L   = mean of L_i over the (image, i) pairs whose solve did not diverge;  Adam, StepLR.

The N tasks are shared by the B images of a mini-batch (each image still sees N different
degradations per step, as in Algorithm 1); sharing them lets one batched fixed-point solve
serve all B images.  ``st_comp`` and ``st_sr`` are the same trainer with other task sets.

Determinism and resume.  Everything random in step k (crops, flips, tasks, masks, noise) is
drawn from ``step_generator(seed, k)``, a generator seeded from (seed, k) alone, so a resumed
run only has to restore model, optimiser and scheduler.  The resume state ``<out>.ckpt``
(written atomically every ``--checkpoint-every`` steps and at the end) holds::

    {"format": "mtdeq-train-state/1", "stage": "train-deq" | "pretrain-denoiser",
     "config": asdict(config), "backbone": asdict(BackboneConfig), "step": k,
     "model": state_dict, "optimizer": ..., "scheduler": ...,
     "rng": {"torch", "python", "numpy", "data": {"scheme", "seed", "next_step"}},
     "totals": counters over the whole run, "provenance": mtdeq.io.provenance(config)}

Rerunning the same command resumes from it (a checkpoint written with another config is
ignored with a message) and ends, on CPU, with the same weights bit for bit as an
uninterrupted run.  The final model goes to ``--out`` via ``mtdeq.models.save_checkpoint``
(``load_prior`` reads it).  Because the draws of step k do not depend on how many processes
run, a later data-parallel run can take its shard of the same full batch and resume from a
checkpoint written with another world size.
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import os
import random
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch

STATE_FORMAT = "mtdeq-train-state/1"
VAL_SEED = 0  # validation degradations are fixed, whatever the training seed
VAL_SIGMA = 25 / 255  # noise level of the denoiser's validation PSNR
VAL_TASK_FOR_SET = {"mtdeq": "blur1.6", "st_comp": "comp90", "st_sr": "sr2_bicubic_n1"}
CRASH_EXIT_CODE = 75  # exit code of the simulated crash (--stop-after)


# --------------------------------------------------------------------------- configs
@dataclass(frozen=True)
class DenoiserTrainConfig:
    """Settings of ``pretrain-denoiser`` (stored inside every checkpoint it writes)."""

    out: str
    train_dirs: tuple[str, ...] = ()
    backbone: str = "drunet"
    nc: tuple[int, ...] = (64, 128, 256, 512)
    nb: int = 4
    init: str | None = None
    crop: int = 128
    batch_size: int = 16
    steps: int = 0
    lr: float = 1e-4
    lr_milestones: tuple[int, ...] = ()
    lr_gamma: float = 0.5
    sigma_min: float = 0.0
    sigma_max: float = 50 / 255
    loss: str = "l1"
    seed: int = 0
    log_csv: str | None = None
    checkpoint_every: int = 0
    val_dir: str | None = None
    val_every: int = 100
    val_images: int = 4

    def __post_init__(self):
        _check(self.loss in ("l1", "l2"), "--loss", self.loss, "'l1' or 'l2'")
        _check(self.backbone in ("drunet", "ffdnet"), "--backbone", self.backbone, "'drunet' or 'ffdnet'")
        _check(0 <= self.sigma_min <= self.sigma_max, "--sigma-min/--sigma-max",
               (self.sigma_min, self.sigma_max), "0 <= sigma_min <= sigma_max")
        _check_common(self)
        if self.steps > 0 and not self.train_dirs:
            raise ValueError(f"--train-dirs: training for {self.steps} steps needs at least one image folder")
        if self.steps == 0 and self.init is None:
            raise ValueError("--steps 0 only converts weights and needs --init (a checkpoint or KAIR .pth)")


@dataclass(frozen=True)
class DEQTrainConfig:
    """Settings of ``train-deq`` (Algorithm 1; stored inside every checkpoint it writes)."""

    out: str
    init: str
    train_dirs: tuple[str, ...]
    task_set: str = "mtdeq"
    n_tasks: int = 5
    crop: int = 128
    batch_size: int = 16
    steps: int = 1000
    lr: float = 1e-5
    lr_step: int = 0
    lr_gamma: float = 0.25
    eta: float = 0.49
    tol: float = 1e-7
    max_iter: int = 350
    diverge_at: float = 1e10
    solver: str = "plain"
    seed: int = 0
    log_csv: str | None = None
    checkpoint_every: int = 0
    val_dir: str | None = None
    val_task: str | None = None  # None: VAL_TASK_FOR_SET[task_set]
    val_every: int = 100
    val_images: int = 4

    def __post_init__(self):
        from mtdeq.tasks import TASK_SETS, TEST_TASKS

        _check(self.task_set in TASK_SETS, "--task-set", self.task_set, f"one of {sorted(TASK_SETS)}")
        _check(self.solver in ("plain", "anderson"), "--solver", self.solver, "'plain' or 'anderson'")
        _check(self.n_tasks >= 1, "--n-tasks", self.n_tasks, "an integer >= 1")
        _check(self.max_iter >= 1, "--max-iter", self.max_iter, "an integer >= 1")
        _check(self.lr_step >= 0, "--lr-step", self.lr_step, ">= 0 (0: constant learning rate)")
        _check(self.val_task is None or self.val_task in TEST_TASKS, "--val-task", self.val_task,
               f"one of {list(TEST_TASKS)}")
        _check(len(self.train_dirs) > 0, "--train-dirs", self.train_dirs, "at least one image folder")
        _check_common(self)


def _check(ok: bool, key: str, value, expected: str) -> None:
    if not ok:
        raise ValueError(f"{key}: got {value!r}, expected {expected}")


def _check_common(cfg) -> None:
    for key in ("crop", "batch_size", "val_images"):
        _check(getattr(cfg, key) >= 1, f"--{key.replace('_', '-')}", getattr(cfg, key), "an integer >= 1")
    for key in ("steps", "checkpoint_every", "val_every"):
        _check(getattr(cfg, key) >= 0, f"--{key.replace('_', '-')}", getattr(cfg, key), "an integer >= 0")
    _check(cfg.lr > 0, "--lr", cfg.lr, "a positive learning rate")


def config_from_dict(cls, values: dict):
    """Build a config dataclass from a dict; unknown keys are rejected (naming them)."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown key(s) {unknown}; known keys: {sorted(names)}")
    tuples = {f.name for f in fields(cls) if str(f.type).startswith("tuple")}
    return cls(**{k: tuple(v) if k in tuples and v is not None else v for k, v in values.items()})


def config_from_args(cls, args: argparse.Namespace):
    """The config of a stage from its parsed CLI arguments (runtime flags are not part of it)."""
    return config_from_dict(cls, {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)})


# --------------------------------------------------------------------------- shared pieces
def step_generator(seed: int, step: int) -> torch.Generator:
    """CPU generator for every random draw of training step ``step`` (1-based), from (seed, step) only."""
    hi, lo = np.random.SeedSequence([int(seed), int(step)]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed((int(hi) << 31) ^ int(lo))


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available else cpu; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def _randn(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """N(0, I) noise drawn on the CPU generator (device-independent draws), moved to like's device."""
    return torch.randn(tuple(shape), generator=generator, dtype=like.dtype).to(like.device)


def _open_dataset(train_dirs, crop: int):
    from mtdeq.data import PatchDataset

    return PatchDataset(list(train_dirs), crop=crop)


def _load_val_crops(val_dir: str | None, crop: int, n: int) -> torch.Tensor | None:
    """Centre crops (n, 3, s, s) of the first n images of val_dir, s = min(crop, smallest side)."""
    if val_dir is None:
        return None
    from mtdeq.io import list_images, read_image

    images = [read_image(p) for p in list_images(val_dir)[:n]]
    s = min([crop] + [min(im.shape[-2:]) for im in images])
    crops = []
    for im in images:
        top, left = (im.shape[-2] - s) // 2, (im.shape[-1] - s) // 2
        crops.append(im[:, top : top + s, left : left + s])
    return torch.stack(crops)


def _mean_psnr(out: torch.Tensor, ref: torch.Tensor) -> float:
    from mtdeq.metrics import psnr

    return float(np.mean([psnr(out[i], ref[i]) for i in range(ref.shape[0])]))


def _scheduler_step(scheduler) -> None:
    # The schedule follows the step count, also over skipped steps, where torch would warn
    # that scheduler.step() ran without optimizer.step().
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)`")
        scheduler.step()


def _grads_finite(model: torch.nn.Module) -> bool:
    return all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


class CsvLog:
    """Per-step CSV log; on resume, rows after the checkpoint's step are dropped first."""

    def __init__(self, path: str | None, columns: list[str], resume_step: int):
        self.path, self.columns = (Path(path) if path else None), columns
        if self.path is None:
            return
        kept = []
        if resume_step > 0 and self.path.exists():
            with self.path.open(newline="") as fh:
                kept = [r for r in csv.DictReader(fh) if r.get("step") and int(r["step"]) <= resume_step]
        from mtdeq.io import atomic_write_text

        text = [",".join(columns)] + [",".join(str(r.get(c, "")) for c in columns) for r in kept]
        atomic_write_text(self.path, "\n".join(text) + "\n")

    def write(self, **row) -> None:
        if self.path is None:
            return
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, self.columns).writerow({c: _fmt(row.get(c)) for c in self.columns})


def _fmt(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def _state_path(out: str) -> Path:
    return Path(str(out) + ".ckpt")


def save_train_state(path: Path, *, stage, cfg, backbone, step, model, optimizer, scheduler, totals) -> None:
    """Write the resume state atomically (see the module docstring for its layout)."""
    from mtdeq.io import atomic_torch_save, provenance

    state = {
        "format": STATE_FORMAT,
        "stage": stage,
        "config": asdict(cfg),
        "backbone": asdict(backbone),
        "step": step,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "data": {"scheme": "step_generator(seed, step)", "seed": cfg.seed, "next_step": step + 1},
        },
        "totals": dict(totals),
        "provenance": provenance(asdict(cfg)),
    }
    atomic_torch_save(state, path)


def load_train_state(path: Path, *, stage, cfg, model, optimizer, scheduler, log) -> tuple[int, dict]:
    """Restore a resume state written by the same stage and config; returns (step, totals).

    A missing file, or one written with another stage or config (the differing keys are
    printed), means a fresh start: (0, {}).
    """
    if not path.exists():
        return 0, {}
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("format") != STATE_FORMAT or state.get("stage") != stage:
        log(f"{path}: not a {stage} resume state ({state.get('format')}, {state.get('stage')}); starting fresh")
        return 0, {}
    current = asdict(cfg)
    differ = sorted(k for k in set(current) | set(state["config"]) if current.get(k) != state["config"].get(k))
    if differ:
        log(f"{path}: written with another config (differs in {differ}); starting fresh")
        return 0, {}
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    log(f"{path}: resuming after step {state['step']}")
    return int(state["step"]), dict(state["totals"])


def _save_final(cfg, stage, model, backbone, step, totals) -> None:
    from mtdeq.models import save_checkpoint

    cpu_model = copy.deepcopy(model).cpu().eval()
    save_checkpoint(cfg.out, cpu_model, backbone, stage=stage, train_config=asdict(cfg), step=step,
                    totals=dict(totals))


# --------------------------------------------------------------------------- denoiser pretraining
def _load_or_build_backbone(cfg: DenoiserTrainConfig):
    from mtdeq.models import BackboneConfig, build_backbone, load_prior

    wanted = BackboneConfig(name=cfg.backbone, nc=tuple(cfg.nc), nb=cfg.nb)
    if cfg.init is None:
        return build_backbone(wanted), wanted
    return load_prior(cfg.init, backbone=wanted)  # our checkpoint must agree with --backbone/--nc/--nb


def denoiser_loss(model, x: torch.Tensor, generator: torch.Generator, cfg: DenoiserTrainConfig) -> torch.Tensor:
    """Mean l1 | l2 of Q(x + sigma n, sigma) - x, sigma ~ U[sigma_min, sigma_max] per image."""
    sigma = cfg.sigma_min + (cfg.sigma_max - cfg.sigma_min) * torch.rand(x.shape[0], generator=generator)
    sigma = sigma.to(x)
    noisy = x + sigma.view(-1, 1, 1, 1) * _randn(x.shape, generator, x)
    err = model(noisy, sigma) - x
    return err.abs().mean() if cfg.loss == "l1" else err.pow(2).mean()


def pretrain_denoiser(cfg: DenoiserTrainConfig, *, device: str | torch.device = "cpu", resume: bool = True,
                      quiet: bool = False, stop_after: int | None = None) -> Path:
    """Train (or, with steps 0, just convert) a Gaussian denoiser; writes cfg.out and returns it."""
    from tqdm import tqdm

    device = torch.device(device)
    log = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr))
    model, backbone = _load_or_build_backbone(cfg)
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.lr_milestones),
                                                     gamma=cfg.lr_gamma)
    state_path = _state_path(cfg.out)
    start, totals = (0, {})
    if resume and cfg.steps > 0:
        start, totals = load_train_state(state_path, stage="pretrain-denoiser", cfg=cfg, model=model,
                                         optimizer=optimizer, scheduler=scheduler, log=log)
    totals = {"skipped_steps": 0, **totals}
    log_csv = CsvLog(cfg.log_csv, ["step", "loss", "val_psnr", "lr", "seconds"], start)
    data = _open_dataset(cfg.train_dirs, cfg.crop) if cfg.steps > 0 else None
    val_x = _load_val_crops(cfg.val_dir, cfg.crop, cfg.val_images)
    if val_x is not None:
        val_x = val_x.to(device)
        val_noisy = val_x + VAL_SIGMA * _randn(val_x.shape, torch.Generator().manual_seed(VAL_SEED), val_x)

    def validate() -> float | None:
        if val_x is None:
            return None
        with torch.no_grad():
            return _mean_psnr(model(val_noisy, VAL_SIGMA), val_x)

    if start == 0 and val_x is not None:
        log_csv.write(step=0, val_psnr=validate(), lr=cfg.lr)
    bar = tqdm(total=cfg.steps, initial=start, disable=quiet, desc="pretrain-denoiser", dynamic_ncols=True)
    for step in range(start + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        g = step_generator(cfg.seed, step)
        x = data.sample_batch(g, cfg.batch_size).to(device)
        lr = optimizer.param_groups[0]["lr"]
        optimizer.zero_grad(set_to_none=True)
        loss = denoiser_loss(model, x, g, cfg)
        loss.backward()
        if torch.isfinite(loss) and _grads_finite(model):
            optimizer.step()
        else:
            totals["skipped_steps"] += 1
            log(f"step {step}: non-finite loss or gradient, update skipped")
        _scheduler_step(scheduler)
        seconds = time.perf_counter() - t0
        val = validate() if (cfg.val_every and step % cfg.val_every == 0) or step == cfg.steps else None
        log_csv.write(step=step, loss=float(loss.detach()), val_psnr=val, lr=lr, seconds=seconds)
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
            save_train_state(state_path, stage="pretrain-denoiser", cfg=cfg, backbone=backbone, step=step,
                             model=model, optimizer=optimizer, scheduler=scheduler, totals=totals)
        if stop_after is not None and step == stop_after:
            os._exit(CRASH_EXIT_CODE)  # simulated crash (tests): no clean-up, no final checkpoint
    bar.close()
    _save_final(cfg, "pretrain-denoiser", model, backbone, cfg.steps, totals)
    return Path(cfg.out)


# --------------------------------------------------------------------------- MTDEQ (Algorithm 1)
@dataclass
class TaskOutcome:
    """One (task, mini-batch) solve: per-image loss L_i (B,) with its JFB graph, validity, solver info."""

    task: object
    per_image_loss: torch.Tensor
    valid: torch.Tensor
    iterations: list[int]
    status: list[str]


@dataclass
class DEQStepStats:
    """What one training step did (passed to ``on_step`` hooks and written to the log)."""

    step: int
    loss: float | None  # mean over valid (image, task) pairs; None when the step was skipped
    tasks: list = field(default_factory=list)
    iterations: list[int] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    n_valid: int = 0
    skipped: bool = False
    lr: float = 0.0
    seconds: float = 0.0


def solve_task(model, x: torch.Tensor, task, generator: torch.Generator, cfg: DEQTrainConfig) -> TaskOutcome:
    """Lines 84-91 of Algorithm 1 for one task on a batch x (B, 3, H, W).

    y = A x + sigma_noise eps through ``mtdeq.tasks.degrade`` (the test-time noise model: SR crops
    x to the scale multiple, inpainting masks the noise) with a seed drawn from ``generator``;
    z* = fixed point of Eq. (3) from op.init(y) with sigma_denoise = eta sigma_noise (no autograd);
    out = f(z*) with autograd (JFB); per-image loss mean((out - x)^2).  An image is valid when its
    solve did not diverge and its loss is finite.
    """
    from mtdeq.solvers import fb_map, fixed_point, jfb_output
    from mtdeq.tasks import degrade

    noise_seed = int(torch.randint(2**62, (1,), generator=generator))
    deg = degrade(task, x, seed=noise_seed)
    op, y, x = deg.op, deg.y, deg.x_gt
    f = fb_map(op, y, model, eta=cfg.eta, sigma_denoise=cfg.eta * task.sigma_noise)
    z_star, info = fixed_point(f, op.init(y), tol=cfg.tol, max_iter=cfg.max_iter, diverge_at=cfg.diverge_at,
                               method=cfg.solver)
    out = jfb_output(f, z_star.detach())
    per_image = (out - x).pow(2).flatten(1).mean(dim=1)
    not_diverged = torch.tensor([s != "diverged" for s in info.status], device=per_image.device)
    valid = not_diverged & torch.isfinite(per_image).detach()
    return TaskOutcome(task, per_image, valid, info.iterations.tolist(), list(info.status))


def deq_step(model, optimizer, x: torch.Tensor, tasks: list, generator: torch.Generator,
             cfg: DEQTrainConfig) -> DEQStepStats:
    """One optimiser step of Algorithm 1 on crops x (B, 3, H, W) with the N given tasks.

    Each task's summed valid losses are back-propagated as soon as they are computed (only one
    JFB graph is alive at a time); the accumulated gradient is then divided by the number of
    valid (image, task) pairs, which gives the gradient of L = mean of the valid L_i.  No valid
    pair, or a non-finite gradient, skips the update.
    """
    optimizer.zero_grad(set_to_none=True)
    stats = DEQStepStats(step=0, loss=None, tasks=list(tasks))
    loss_sum = 0.0
    for task in tasks:
        o = solve_task(model, x, task, generator, cfg)
        stats.iterations += o.iterations
        stats.status += o.status
        if o.valid.any():
            total = o.per_image_loss[o.valid].sum()
            total.backward()
            loss_sum += float(total.detach())
            stats.n_valid += int(o.valid.sum())
    if stats.n_valid == 0:
        stats.skipped = True
        optimizer.zero_grad(set_to_none=True)
        return stats
    for p in model.parameters():
        if p.grad is not None:
            p.grad.div_(stats.n_valid)
    stats.loss = loss_sum / stats.n_valid
    if not _grads_finite(model):
        stats.skipped = True
        optimizer.zero_grad(set_to_none=True)
        return stats
    optimizer.step()
    return stats


def _deq_validation(model, cfg: DEQTrainConfig, device):
    """A closure returning the mean PSNR of f(z*) on fixed val crops for a fixed task, or None."""
    val_x = _load_val_crops(cfg.val_dir, cfg.crop, cfg.val_images)
    if val_x is None:
        return lambda: None
    from mtdeq.solvers import fb_map, fixed_point
    from mtdeq.tasks import TEST_TASKS, degrade

    task = TEST_TASKS[cfg.val_task or VAL_TASK_FOR_SET[cfg.task_set]]
    deg = degrade(task, val_x, seed=VAL_SEED)
    y, x_gt = deg.y.to(device), deg.x_gt.to(device)

    def validate() -> float:
        f = fb_map(deg.op, y, model, eta=cfg.eta, sigma_denoise=cfg.eta * task.sigma_noise)
        z_star, _ = fixed_point(f, deg.op.init(y), tol=cfg.tol, max_iter=cfg.max_iter,
                                diverge_at=cfg.diverge_at, method=cfg.solver)
        with torch.no_grad():
            return _mean_psnr(f(z_star), x_gt)

    return validate


DEQ_LOG_COLUMNS = ["step", "loss", "val_psnr", "fp_iter_mean", "fp_iter_max", "pct_converged", "pct_diverged",
                   "n_valid", "skipped", "lr", "tasks", "seconds"]


def train_deq(cfg: DEQTrainConfig, *, device: str | torch.device = "cpu", resume: bool = True, quiet: bool = False,
              stop_after: int | None = None, on_step: Callable[[DEQStepStats], None] | None = None) -> dict:
    """Algorithm 1: fine-tune the prior cfg.init on cfg.task_set; writes cfg.out, returns run totals.

    totals: solves, converged, max_iter, diverged (fixed-point solves, one per image and task),
    skipped_steps.
    """
    from tqdm import tqdm

    from mtdeq.models import load_prior
    from mtdeq.tasks import TASK_SETS

    device = torch.device(device)
    log = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr))
    model, backbone = load_prior(cfg.init)
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if cfg.lr_step > 0:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    else:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[], gamma=cfg.lr_gamma)
    state_path = _state_path(cfg.out)
    start, totals = (0, {})
    if resume:
        start, totals = load_train_state(state_path, stage="train-deq", cfg=cfg, model=model,
                                         optimizer=optimizer, scheduler=scheduler, log=log)
    totals = {"solves": 0, "converged": 0, "max_iter": 0, "diverged": 0, "skipped_steps": 0, **totals}
    log_csv = CsvLog(cfg.log_csv, DEQ_LOG_COLUMNS, start)
    data = _open_dataset(cfg.train_dirs, cfg.crop)
    task_set = TASK_SETS[cfg.task_set]
    validate = _deq_validation(model, cfg, device)
    if start == 0 and cfg.val_dir is not None:
        log_csv.write(step=0, val_psnr=validate(), lr=cfg.lr)

    bar = tqdm(total=cfg.steps, initial=start, disable=quiet, desc=f"train-deq {cfg.task_set}", dynamic_ncols=True)
    for step in range(start + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        g = step_generator(cfg.seed, step)  # crops, flips, tasks, masks and noise of this step
        x = data.sample_batch(g, cfg.batch_size).to(device)
        tasks = [task_set.sample(g) for _ in range(cfg.n_tasks)]
        lr = optimizer.param_groups[0]["lr"]
        stats = deq_step(model, optimizer, x, tasks, g, cfg)
        _scheduler_step(scheduler)
        stats.step, stats.lr, stats.seconds = step, lr, time.perf_counter() - t0

        totals["solves"] += len(stats.status)
        for s in ("converged", "max_iter", "diverged"):
            totals[s] += stats.status.count(s)
        totals["skipped_steps"] += int(stats.skipped)
        if stats.skipped:
            log(f"step {step}: no valid sample or a non-finite gradient; update skipped")
        val = validate() if (cfg.val_every and step % cfg.val_every == 0) or step == cfg.steps else None
        n = max(len(stats.status), 1)
        log_csv.write(step=step, loss=stats.loss, val_psnr=val, fp_iter_mean=float(np.mean(stats.iterations)),
                      fp_iter_max=max(stats.iterations), pct_converged=100 * stats.status.count("converged") / n,
                      pct_diverged=100 * stats.status.count("diverged") / n, n_valid=stats.n_valid,
                      skipped=int(stats.skipped), lr=lr, tasks=";".join(t.name for t in tasks),
                      seconds=stats.seconds)
        if on_step is not None:
            on_step(stats)
        bar.update(1)
        bar.set_postfix(loss="skipped" if stats.loss is None else f"{stats.loss:.4g}",
                        it=f"{np.mean(stats.iterations):.0f}")
        if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
            save_train_state(state_path, stage="train-deq", cfg=cfg, backbone=backbone, step=step, model=model,
                             optimizer=optimizer, scheduler=scheduler, totals=totals)
        if stop_after is not None and step == stop_after:
            os._exit(CRASH_EXIT_CODE)  # simulated crash (tests): no clean-up, no final checkpoint
    bar.close()
    _save_final(cfg, "train-deq", model, backbone, cfg.steps, totals)
    return totals


def convergence_summary(totals: dict) -> str:
    """One line with the share of fixed-point solves that converged (paper: > 99 %)."""
    n = totals.get("solves", 0)
    if n == 0:
        return "fixed-point solves: none run"
    return (f"fixed-point solves converged: {100 * totals['converged'] / n:.2f}% of {n} "
            f"(max_iter {totals['max_iter']}, diverged {totals['diverged']}; "
            f"skipped steps {totals['skipped_steps']})")


# --------------------------------------------------------------------------- CLI
def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to train; bit-identical resume is guaranteed on cpu")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from <out>.ckpt when it was written with the same config (default: on)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no messages except the summary")
    p.add_argument("--stop-after", type=int, default=None, help=argparse.SUPPRESS)  # tests: simulated crash


class _Defaults:
    """Attribute access to a config dataclass's field defaults (without validating a config)."""

    def __init__(self, cls):
        self._fields = {f.name: f.default for f in fields(cls)}

    def __getattr__(self, name):
        return self._fields[name]


def _add_common_train_args(p: argparse.ArgumentParser, defaults: _Defaults) -> None:
    p.add_argument("--out", required=True, help="final model checkpoint (our format); resume state at <out>.ckpt")
    p.add_argument("--train-dirs", nargs="+", default=[], help="folders of training images")
    p.add_argument("--crop", type=int, default=defaults.crop, help="side of the random square training crops")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="crops per mini-batch")
    p.add_argument("--steps", type=int, default=defaults.steps, help="optimiser steps")
    p.add_argument("--lr", type=float, default=defaults.lr, help="Adam learning rate")
    p.add_argument("--lr-gamma", type=float, default=defaults.lr_gamma, help="learning-rate decay factor")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of all random draws")
    p.add_argument("--log-csv", default=None, help="per-step CSV log")
    p.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every,
                   help="write the resume state every K steps (and always at the end); 0: only at the end")
    p.add_argument("--val-dir", default=None, help="folder whose first --val-images images give centre crops "
                   "for the validation PSNR")
    p.add_argument("--val-every", type=int, default=defaults.val_every,
                   help="validation PSNR every K steps (and at the last step); 0: last step only")
    p.add_argument("--val-images", type=int, default=defaults.val_images, help="number of validation crops")


def register(subparsers) -> None:
    """Add the ``pretrain-denoiser`` and ``train-deq`` stages."""
    d = _Defaults(DenoiserTrainConfig)
    p = subparsers.add_parser(
        "pretrain-denoiser", help="train (or convert) the Gaussian denoiser prior",
        description="Train Q(x, sigma) on x + sigma n with sigma ~ U[sigma_min, sigma_max] per image "
                    "(Adam, MultiStepLR); with --steps 0 and --init just write the weights in our "
                    "checkpoint format. Resumes from <out>.ckpt.")
    _add_common_train_args(p, d)
    p.add_argument("--backbone", choices=("drunet", "ffdnet"), default=d.backbone, help="denoiser architecture")
    p.add_argument("--nc", type=int, nargs="+", default=list(d.nc), help="channel widths (ffdnet: one value)")
    p.add_argument("--nb", type=int, default=d.nb, help="blocks per scale (drunet) or convolutions (ffdnet)")
    p.add_argument("--init", default=None, help="start from this checkpoint, or a KAIR .pth of the given backbone")
    p.add_argument("--lr-milestones", type=int, nargs="*", default=list(d.lr_milestones),
                   help="steps at which the learning rate is multiplied by --lr-gamma")
    p.add_argument("--sigma-min", type=float, default=d.sigma_min, help="smallest training noise level ([0,1] units)")
    p.add_argument("--sigma-max", type=float, default=d.sigma_max, help="largest training noise level ([0,1] units)")
    p.add_argument("--loss", choices=("l1", "l2"), default=d.loss, help="training loss")
    _add_runtime_args(p)
    p.set_defaults(func=_cmd_pretrain_denoiser)

    q = subparsers.add_parser(
        "train-deq", help="train a DEQ prior with Algorithm 1 (MTDEQ, ST Comp, ST SR)",
        description="Fine-tune a denoiser as a deep-equilibrium prior: per step N tasks (shared by the "
                    "mini-batch), fixed point of the FB map (Eq. 3), Jacobian-free backprop, Adam, StepLR. "
                    "Resumes from <out>.ckpt.")
    e = _Defaults(DEQTrainConfig)
    _add_common_train_args(q, e)
    q.add_argument("--init", required=True, help="starting prior (our checkpoint, e.g. gauss.pt)")
    q.add_argument("--task-set", default=e.task_set, help="mtdeq | st_comp | st_sr")
    q.add_argument("--n-tasks", type=int, default=e.n_tasks, help="N degradations per image and step")
    q.add_argument("--lr-step", type=int, default=e.lr_step,
                   help="multiply the learning rate by --lr-gamma every K steps (0: never)")
    q.add_argument("--eta", type=float, default=e.eta, help="FB step size (Eq. 3)")
    q.add_argument("--tol", type=float, default=e.tol, help="stop when mean((f(z)-z)^2) < tol")
    q.add_argument("--max-iter", type=int, default=e.max_iter, help="fixed-point iteration cap")
    q.add_argument("--diverge-at", type=float, default=e.diverge_at,
                   help="a solve diverged when |z| exceeds this")
    q.add_argument("--solver", choices=("plain", "anderson"), default=e.solver, help="fixed-point method")
    q.add_argument("--val-task", default=None,
                   help=f"test task of the validation PSNR (default per task set: {VAL_TASK_FOR_SET})")
    _add_runtime_args(q)
    q.set_defaults(func=_cmd_train_deq)


def _apply_threads(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)


def _cmd_pretrain_denoiser(args) -> int:
    _apply_threads(args)
    cfg = config_from_args(DenoiserTrainConfig, args)
    out = pretrain_denoiser(cfg, device=resolve_device(args.device), resume=args.resume, quiet=args.quiet,
                            stop_after=args.stop_after)
    print(f"wrote {out}")
    return 0


def _cmd_train_deq(args) -> int:
    _apply_threads(args)
    cfg = config_from_args(DEQTrainConfig, args)
    totals = train_deq(cfg, device=resolve_device(args.device), resume=args.resume, quiet=args.quiet,
                       stop_after=args.stop_after)
    print(convergence_summary(totals))
    print(f"wrote {cfg.out}")
    return 0


# --------------------------------------------------------------------------- bench train
BENCH_COLUMNS = ["stage", "solver", "backbone", "nc", "nb", "init", "crop", "batch_size", "n_tasks", "max_iter",
                 "threads", "device", "steps", "seconds_per_step", "fp_iter_mean", "fp_iter_max",
                 "pct_converged", "pct_diverged", "git_commit"]


def add_bench_args(p: argparse.ArgumentParser) -> None:
    """Arguments of ``bench train`` (defaults: the quick scale's FFDNet prior)."""
    p.add_argument("--backbone", choices=("drunet", "ffdnet"), default="ffdnet")
    p.add_argument("--nc", type=int, nargs="+", default=[96])
    p.add_argument("--nb", type=int, default=12)
    p.add_argument("--init", default="data/weights/ffdnet_color.pth",
                   help="weights (checkpoint or KAIR .pth; realistic iteration counts need trained weights); "
                        "'none' for random weights")
    p.add_argument("--train-dirs", nargs="+", default=["data/BSDS500/train"])
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--n-tasks", type=int, default=5)
    p.add_argument("--steps", type=int, default=2, help="timed steps per measurement (after one warm-up step)")
    p.add_argument("--eta", type=float, default=0.49)
    p.add_argument("--tol", type=float, default=1e-7)
    p.add_argument("--max-iter", type=int, default=350)
    p.add_argument("--solvers", nargs="+", choices=("plain", "anderson"), default=["plain", "anderson"])
    p.add_argument("--task-set", default="mtdeq")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--out", default="results/bench/train.csv", help="CSV to write")


def run_bench(args) -> int:
    """Seconds per MTDEQ step (plain and Anderson, with mean fixed-point iterations) and per
    denoiser step, for one model size and crop; writes args.out (CSV)."""
    from mtdeq.io import atomic_write_text, provenance
    from mtdeq.models import BackboneConfig, build_backbone, load_prior
    from mtdeq.tasks import TASK_SETS

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    backbone = BackboneConfig(name=args.backbone, nc=tuple(args.nc), nb=args.nb)
    init = None if str(args.init).lower() == "none" else args.init
    if init is not None and not Path(init).exists():
        raise FileNotFoundError(f"--init {init}: weights file not found (pass --init none for random weights)")
    base = load_prior(init, backbone=backbone)[0] if init else build_backbone(backbone)
    data = _open_dataset(args.train_dirs, args.crop)
    common = dict(stage="", solver="", backbone=args.backbone, nc=" ".join(map(str, args.nc)), nb=args.nb,
                  init=init or "random", crop=args.crop, batch_size=args.batch_size, n_tasks=args.n_tasks,
                  max_iter=args.max_iter, threads=torch.get_num_threads(), device=str(device), steps=args.steps,
                  git_commit=provenance()["git_commit"])
    rows = []
    for solver in args.solvers:
        cfg = DEQTrainConfig(out="bench", init="bench", train_dirs=tuple(args.train_dirs), task_set=args.task_set,
                             n_tasks=args.n_tasks, crop=args.crop, batch_size=args.batch_size, lr=args.lr,
                             eta=args.eta, tol=args.tol, max_iter=args.max_iter, solver=solver, seed=args.seed)
        model = copy.deepcopy(base).to(device).train()
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
        rows.append({**common, "stage": "train-deq", "solver": solver, "seconds_per_step": float(np.mean(seconds)),
                     "fp_iter_mean": float(np.mean(its)), "fp_iter_max": max(its),
                     "pct_converged": 100 * status.count("converged") / n,
                     "pct_diverged": 100 * status.count("diverged") / n})
        print(f"train-deq {solver}: {rows[-1]['seconds_per_step']:.2f} s/step, fixed-point iterations mean "
              f"{rows[-1]['fp_iter_mean']:.1f} max {rows[-1]['fp_iter_max']}, converged "
              f"{rows[-1]['pct_converged']:.0f}%", flush=True)
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

    lines = [",".join(BENCH_COLUMNS)] + [",".join(str(_fmt(r.get(c))) for c in BENCH_COLUMNS) for r in rows]
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0
