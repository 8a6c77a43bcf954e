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

Rerunning the same command resumes from it (a checkpoint written with another config or
from other initial weights, ``"init_sha256"``, is ignored with a message; the state is
removed once the final model is written) and ends, on CPU, with the same weights bit for bit as an
uninterrupted run.  The final model goes to ``--out`` via ``mtdeq.models.save_checkpoint``
(``load_prior`` reads it).

Data parallelism.  Under ``torchrun --nproc-per-node P`` (env WORLD_SIZE = P > 1, RANK,
LOCAL_RANK) both stages join a process group (NCCL on CUDA, gloo on CPU) and wrap the model in
DistributedDataParallel.  Every rank draws the *whole* batch of step k (crops, tasks, masks,
noise) from ``step_generator(seed, k)`` and keeps its rows ``rank*B/P : (rank+1)*B/P``, so the
effective batch stays the config's B (B must be divisible by P) and the data a run sees does
not depend on P; this replaces a DistributedSampler, whose order would depend on P.
``pretrain-denoiser`` lets DDP average the equal-sized per-rank mean losses (= the global
mean).  ``train-deq`` back-propagates per task the *sum* of its valid losses under
``no_sync`` for tasks 1..N-1 and synchronises on the last (DDP all-reduces the accumulated
gradient, dividing by P), then all-reduces the valid count n and rescales by P / n: the
gradient of the mean over all valid (image, task) pairs of the global batch, as on one
process.  Solver statistics are gathered so the log and run totals are those of the global
batch.  Rank 0 alone logs, shows progress, validates and writes checkpoints (with a barrier
after each write); the resume state holds nothing per rank, so a run may resume with another
P.  On one process none of this runs and results are unchanged.  Results with P > 1 equal
the one-process run up to float rounding (batched convolutions sum in another order).

Devices.  ``--device auto|cpu|cuda`` (auto: CUDA when available; under torchrun rank r uses
cuda:LOCAL_RANK); cudnn.benchmark is switched on for CUDA (crop sizes are fixed, so the
per-shape autotuning is paid once per active-batch size).  ``--amp bf16`` (CUDA only) runs the
denoiser under bfloat16 autocast in the fixed-point solve and the JFB step; iterates, losses
and parameters stay float32.  bf16 rounding (~4e-3 relative) puts a floor near 1e-6 under the
fixed-point residual, so with the paper's tol 1e-7 solves tend to stop at max_iter: use it for
speed studies or with a looser --tol.  The fixed-point solve runs under no_grad and its
Anderson history is local to the call (freed on return); training memory is one JFB graph.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import json
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


@dataclass(frozen=True)
class Dist:
    """This process's place in a data-parallel run; world_size 1 is a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def rows(self, batch_size: int) -> slice:
        """This rank's rows of a global batch of batch_size (divisible by world_size)."""
        if batch_size % self.world_size:
            raise ValueError(f"--batch-size {batch_size}: not divisible by the world size {self.world_size} "
                             "(WORLD_SIZE); the global batch is split evenly over the processes")
        per_rank = batch_size // self.world_size
        return slice(self.rank * per_rank, (self.rank + 1) * per_rank)

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


SINGLE = Dist()


def setup_distributed(device_name: str) -> tuple[Dist, torch.device]:
    """(Dist, device) from torchrun's environment; joins the process group when WORLD_SIZE > 1.

    Backend: NCCL when the device is CUDA (rank r on cuda:LOCAL_RANK), gloo on CPU.  Without
    WORLD_SIZE (or WORLD_SIZE = 1) nothing is initialised: (SINGLE, resolve_device(device_name)).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop sizes: autotune each conv shape once
    if world_size <= 1:
        return SINGLE, device
    import torch.distributed as torch_dist

    if not torch_dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world_size}: this torch build has no torch.distributed")
    dist = Dist(rank=int(os.environ["RANK"]), world_size=world_size,
                local_rank=int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(dist.local_rank)
        device = torch.device("cuda", dist.local_rank)
    if not torch_dist.is_initialized():
        torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist, device


def teardown_distributed(dist: Dist) -> None:
    if dist.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _wrap_ddp(model: torch.nn.Module, dist: Dist, device: torch.device) -> torch.nn.Module:
    """model itself on one process, else DDP(model); DDP broadcasts rank 0's weights on entry.

    forward_sync_buffers=False: the fixed-point solve calls the model a different number of
    times on each rank, so no forward may hold a collective (the backbones have no buffers).
    """
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)


def _all_reduce(values: list[float], dist: Dist, device: torch.device, op: str = "sum") -> list[float]:
    """Element-wise sum (or max) of a few numbers over the ranks (float64)."""
    if not dist.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    reduce_op = torch.distributed.ReduceOp
    torch.distributed.all_reduce(t, op=reduce_op.SUM if op == "sum" else reduce_op.MAX)
    return t.tolist()


def _check_same_step(start: int, dist: Dist, device: torch.device, path: Path) -> None:
    """Every rank must have resumed from the same step (one resume file, on a shared filesystem)."""
    lo, hi = _all_reduce([-start, start], dist, device, op="max")
    if -lo != hi:
        raise RuntimeError(f"{path}: ranks resumed from different steps ({-int(lo)}..{int(hi)}); the resume "
                           "state must be one file visible to every rank (a shared filesystem)")


def autocast(device: torch.device, amp: str):
    """Context of the denoiser evaluations: bfloat16 autocast for --amp bf16 (CUDA only), else none."""
    if amp in (None, "none"):
        return contextlib.nullcontext()
    if amp != "bf16":
        raise ValueError(f"--amp: got {amp!r}, expected 'none' or 'bf16'")
    if device.type != "cuda":
        raise ValueError(f"--amp bf16: mixed precision is for GPU training; the device is {device} "
                         "(use --amp none on CPU)")
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)


def _dump_rank_state(model: torch.nn.Module, dist: Dist) -> None:
    """With $MTDEQ_RANK_STATE_DIR set, each rank writes its final weights to rank<r>.pt there
    (a check that data-parallel ranks end identical; used by tests/test_ddp.py)."""
    folder = os.environ.get("MTDEQ_RANK_STATE_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                   Path(folder) / f"rank{dist.rank}.pt")


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


def init_fingerprint(cfg) -> str | None:
    """SHA-256 of the run's initial checkpoint (``cfg.init``), None when it starts from scratch.

    The config names the file only; a resume state is valid only for the same file content
    (a rerun after the Gauss prior was retrained must not resume the old fine-tuning).
    """
    from mtdeq.data import sha256_file

    init = getattr(cfg, "init", None)
    return sha256_file(init) if init else None


def save_train_state(path: Path, *, stage, cfg, backbone, step, model, optimizer, scheduler, totals,
                     init_sha256: str | None) -> None:
    """Write the resume state atomically (see the module docstring for its layout).

    ``init_sha256``: ``init_fingerprint(cfg)``, taken once when the run starts.
    """
    from mtdeq.io import atomic_torch_save, provenance

    state = {
        "format": STATE_FORMAT,
        "stage": stage,
        "config": asdict(cfg),
        "init_sha256": init_sha256,
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


def load_train_state(path: Path, *, stage, cfg, model, optimizer, scheduler, log,
                     init_sha256: str | None) -> tuple[int, dict]:
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
    if state.get("init_sha256") != init_sha256:
        log(f"{path}: written for other initial weights ({cfg.init} has changed since); starting fresh")
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
def _end_of_step(step, stage, cfg, backbone, model, optimizer, scheduler, totals, dist, state_path, stop_after,
                 init_sha256):
    """Checkpoint every ``cfg.checkpoint_every`` steps and at the last one; ``stop_after``: simulated crash."""
    if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
        if dist.is_main:
            save_train_state(state_path, stage=stage, cfg=cfg, backbone=backbone, step=step, model=model,
                             optimizer=optimizer, scheduler=scheduler, totals=totals, init_sha256=init_sha256)
        dist.barrier()  # the state is on disk before any rank goes on (or stops)
    if stop_after is not None and step == stop_after:
        os._exit(CRASH_EXIT_CODE)  # simulated crash (tests): no clean-up, no final checkpoint


def _finish(stage, cfg, backbone, model, totals, dist):
    """Write the final model checkpoint (rank 0) once every rank is done, then drop the resume state.

    The state only serves an interrupted run; a finished one that is run again (Snakemake
    reruns a job whose inputs or parameters changed) trains from the start.
    """
    if dist.is_main:
        _save_final(cfg, stage, model, backbone, cfg.steps, totals)
        _state_path(cfg.out).unlink(missing_ok=True)
    _dump_rank_state(model, dist)
    dist.barrier()


def _load_or_build_backbone(cfg: DenoiserTrainConfig):
    from mtdeq.models import BackboneConfig, build_backbone, load_prior

    wanted = BackboneConfig(name=cfg.backbone, nc=tuple(cfg.nc), nb=cfg.nb)
    if cfg.init is None:
        torch.manual_seed(cfg.seed)  # reproducible initial weights: the run depends on (config, seed) only
        return build_backbone(wanted), wanted
    return load_prior(cfg.init, backbone=wanted)  # our checkpoint must agree with --backbone/--nc/--nb


def denoiser_loss(model, x: torch.Tensor, generator: torch.Generator, cfg: DenoiserTrainConfig,
                  rows: slice | None = None) -> torch.Tensor:
    """Mean l1 | l2 of Q(x + sigma n, sigma) - x, sigma ~ U[sigma_min, sigma_max] per image.

    x: the whole batch (B, 3, C, C); sigma (B,) and n are drawn for all of it, then only
    ``rows`` (a data-parallel rank's share; None: all) are denoised.
    """
    sigma = cfg.sigma_min + (cfg.sigma_max - cfg.sigma_min) * torch.rand(x.shape[0], generator=generator)
    sigma = sigma.to(x)
    noise = _randn(x.shape, generator, x)
    if rows is not None:
        x, sigma, noise = x[rows], sigma[rows], noise[rows]
    noisy = x + sigma.view(-1, 1, 1, 1) * noise
    err = model(noisy, sigma) - x
    return err.abs().mean() if cfg.loss == "l1" else err.pow(2).mean()


def pretrain_denoiser(cfg: DenoiserTrainConfig, *, device: str | torch.device = "cpu", resume: bool = True,
                      quiet: bool = False, stop_after: int | None = None, dist: Dist = SINGLE,
                      amp: str = "none") -> Path:
    """Train (or, with steps 0, just convert) a Gaussian denoiser; writes cfg.out and returns it.

    dist: this process's rank in a data-parallel run (see the module docstring); amp: 'none'
    or 'bf16' (CUDA).
    """
    from tqdm import tqdm

    device = torch.device(device)
    autocast(device, amp)  # fail early on --amp bf16 without CUDA
    rows = dist.rows(cfg.batch_size) if dist.enabled and cfg.steps > 0 else None
    log = (lambda msg: None) if quiet or not dist.is_main else (lambda msg: print(msg, file=sys.stderr))
    model, backbone = _load_or_build_backbone(cfg)
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.lr_milestones),
                                                     gamma=cfg.lr_gamma)
    state_path = _state_path(cfg.out)
    init_sha = init_fingerprint(cfg)  # once per run: the weights this run starts from
    start, totals = (0, {})
    if resume and cfg.steps > 0:
        start, totals = load_train_state(state_path, stage="pretrain-denoiser", cfg=cfg, init_sha256=init_sha,
                                         model=model,
                                         optimizer=optimizer, scheduler=scheduler, log=log)
        _check_same_step(start, dist, device, state_path)
    net = _wrap_ddp(model, dist, device) if cfg.steps > 0 else model  # forward/backward go through net
    totals = {"skipped_steps": 0, **totals}
    log_csv = CsvLog(cfg.log_csv if dist.is_main else None, ["step", "loss", "val_psnr", "lr", "seconds"], start)
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

    if start == 0 and val_x is not None and dist.is_main:
        log_csv.write(step=0, val_psnr=validate(), lr=cfg.lr)
    bar = tqdm(total=cfg.steps, initial=start, disable=quiet or not dist.is_main, desc="pretrain-denoiser",
               dynamic_ncols=True)
    for step in range(start + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        g = step_generator(cfg.seed, step)
        x = data.sample_batch(g, cfg.batch_size).to(device)  # the whole batch, on every rank
        lr = optimizer.param_groups[0]["lr"]
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = denoiser_loss(net, x, g, cfg, rows)
        loss.backward()  # DDP: gradients averaged over ranks = gradient of the global mean
        if dist.enabled:  # the loss of the whole batch: mean of the equal-sized rank means
            loss = torch.tensor(_all_reduce([float(loss.detach())], dist, device)[0] / dist.world_size)
        if torch.isfinite(loss) and _grads_finite(model):
            optimizer.step()
        else:
            totals["skipped_steps"] += 1
            log(f"step {step}: non-finite loss or gradient, update skipped")
        _scheduler_step(scheduler)
        seconds = time.perf_counter() - t0
        val = None
        if dist.is_main and ((cfg.val_every and step % cfg.val_every == 0) or step == cfg.steps):
            val = validate()
        log_csv.write(step=step, loss=float(loss.detach()), val_psnr=val, lr=lr, seconds=seconds)
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
        _end_of_step(step, "pretrain-denoiser", cfg, backbone, model, optimizer, scheduler, totals, dist,
                     state_path, stop_after, init_sha)
    bar.close()
    _finish("pretrain-denoiser", cfg, backbone, model, totals, dist)
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


def solve_task(model, x: torch.Tensor, task, generator: torch.Generator, cfg: DEQTrainConfig,
               rows: slice | None = None) -> TaskOutcome:
    """Lines 84-91 of Algorithm 1 for one task on a batch x (B, 3, H, W).

    y = A x + sigma_noise eps through ``mtdeq.tasks.degrade`` (the test-time noise model: SR crops
    x to the scale multiple, inpainting masks the noise) with a seed drawn from ``generator``;
    z* = fixed point of Eq. (3) from op.init(y) with sigma_denoise = eta sigma_noise (no autograd);
    out = f(z*) with autograd (JFB); per-image loss mean((out - x)^2).  An image is valid when its
    solve did not diverge and its loss is finite.  The whole batch is degraded (the noise of an
    image does not depend on how the batch is split); only ``rows`` (None: all) are solved.
    """
    from mtdeq.solvers import fb_map, fixed_point, jfb_output
    from mtdeq.tasks import degrade

    noise_seed = int(torch.randint(2**62, (1,), generator=generator))
    deg = degrade(task, x, seed=noise_seed)
    op, y, x = deg.op, deg.y, deg.x_gt
    if rows is not None:  # the operators are batch-independent: only y and x are split
        y, x = y[rows], x[rows]
    f = fb_map(op, y, model, eta=cfg.eta, sigma_denoise=cfg.eta * task.sigma_noise)
    z_star, info = fixed_point(f, op.init(y), tol=cfg.tol, max_iter=cfg.max_iter, diverge_at=cfg.diverge_at,
                               method=cfg.solver)
    out = jfb_output(f, z_star.detach())
    per_image = (out - x).pow(2).flatten(1).mean(dim=1)
    not_diverged = torch.tensor([s != "diverged" for s in info.status], device=per_image.device)
    valid = not_diverged & torch.isfinite(per_image).detach()
    return TaskOutcome(task, per_image, valid, info.iterations.tolist(), list(info.status))


def deq_step(model, optimizer, x: torch.Tensor, tasks: list, generator: torch.Generator,
             cfg: DEQTrainConfig, *, dist: Dist = SINGLE, amp: str = "none") -> DEQStepStats:
    """One optimiser step of Algorithm 1 on crops x (B, 3, H, W) with the N given tasks.

    Each task's summed valid losses are back-propagated as soon as they are computed (only one
    JFB graph is alive at a time); the accumulated gradient is then divided by the number of
    valid (image, task) pairs, which gives the gradient of L = mean of the valid L_i.  No valid
    pair, or a non-finite gradient, skips the update.

    Data-parallel (dist.enabled; model is the DDP wrapper): x is the whole batch, this rank
    solves dist.rows(B).  Tasks 1..N-1 back-propagate under no_sync; the last task always
    back-propagates (0 * sum of the weights where it has no valid pair) so that every rank joins DDP's
    all-reduce, which leaves (sum over ranks)/P in .grad; the global n then gives the scale
    P / n.  The statistics returned are those of the whole batch, in one-process order.
    """
    optimizer.zero_grad(set_to_none=True)
    stats = DEQStepStats(step=0, loss=None, tasks=list(tasks))
    rows = dist.rows(x.shape[0]) if dist.enabled else None
    device = next(model.parameters()).device
    loss_sum = 0.0
    per_task = []  # (iterations, status) of this rank's images, per task
    for t, task in enumerate(tasks):
        last = t == len(tasks) - 1
        sync = model.no_sync() if dist.enabled and not last else contextlib.nullcontext()
        with sync:
            with autocast(device, amp):
                o = solve_task(model, x, task, generator, cfg, rows=rows)
            per_task.append((o.iterations, o.status))
            total = None
            if o.valid.any():
                total = o.per_image_loss[o.valid].sum()
            elif dist.enabled and last:  # join DDP's all-reduce with exact zeros (no 0 * inf from invalid rows)
                total = sum(p.sum() for p in model.parameters()) * 0.0
            if total is not None:
                total.backward()
                loss_sum += float(total.detach())
                stats.n_valid += int(o.valid.sum())
    if dist.enabled:
        n_valid, loss_sum = _all_reduce([stats.n_valid, loss_sum], dist, device)
        stats.n_valid = int(round(n_valid))
        gathered = [None] * dist.world_size
        torch.distributed.all_gather_object(gathered, per_task)
        per_task = [(sum((r[t][0] for r in gathered), []), sum((r[t][1] for r in gathered), []))
                    for t in range(len(tasks))]
    for iterations, status in per_task:
        stats.iterations += iterations
        stats.status += status
    if stats.n_valid == 0:
        stats.skipped = True
        optimizer.zero_grad(set_to_none=True)
        return stats
    for p in model.parameters():
        if p.grad is not None:
            p.grad.div_(stats.n_valid if not dist.enabled else stats.n_valid / dist.world_size)
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
              stop_after: int | None = None, on_step: Callable[[DEQStepStats], None] | None = None,
              dist: Dist = SINGLE, amp: str = "none") -> dict:
    """Algorithm 1: fine-tune the prior cfg.init on cfg.task_set; writes cfg.out, returns run totals.

    totals: solves, converged, max_iter, diverged (fixed-point solves, one per image and task),
    skipped_steps.  dist: this process's rank in a data-parallel run (module docstring); amp:
    'none' or 'bf16' (CUDA).
    """
    from tqdm import tqdm

    from mtdeq.models import load_prior
    from mtdeq.tasks import TASK_SETS

    device = torch.device(device)
    dist.rows(cfg.batch_size)  # fail early when the batch does not split over the ranks
    autocast(device, amp)  # fail early on --amp bf16 without CUDA
    log = (lambda msg: None) if quiet or not dist.is_main else (lambda msg: print(msg, file=sys.stderr))
    model, backbone = load_prior(cfg.init)
    model = model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if cfg.lr_step > 0:
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    else:
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[], gamma=cfg.lr_gamma)
    state_path = _state_path(cfg.out)
    init_sha = init_fingerprint(cfg)  # once per run: the weights this run starts from
    start, totals = (0, {})
    if resume:
        start, totals = load_train_state(state_path, stage="train-deq", cfg=cfg, init_sha256=init_sha, model=model,
                                         optimizer=optimizer, scheduler=scheduler, log=log)
        _check_same_step(start, dist, device, state_path)
    net = _wrap_ddp(model, dist, device)  # the training forwards/backwards go through net
    totals = {"solves": 0, "converged": 0, "max_iter": 0, "diverged": 0, "skipped_steps": 0, **totals}
    log_csv = CsvLog(cfg.log_csv if dist.is_main else None, DEQ_LOG_COLUMNS, start)
    data = _open_dataset(cfg.train_dirs, cfg.crop)
    task_set = TASK_SETS[cfg.task_set]
    validate = _deq_validation(model, cfg, device) if dist.is_main else (lambda: None)
    if start == 0 and cfg.val_dir is not None and dist.is_main:
        log_csv.write(step=0, val_psnr=validate(), lr=cfg.lr)

    bar = tqdm(total=cfg.steps, initial=start, disable=quiet or not dist.is_main, desc=f"train-deq {cfg.task_set}",
               dynamic_ncols=True)
    for step in range(start + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        g = step_generator(cfg.seed, step)  # crops, flips, tasks, masks and noise of this step
        x = data.sample_batch(g, cfg.batch_size).to(device)  # the whole batch, on every rank
        tasks = [task_set.sample(g) for _ in range(cfg.n_tasks)]
        lr = optimizer.param_groups[0]["lr"]
        stats = deq_step(net, optimizer, x, tasks, g, cfg, dist=dist, amp=amp)
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
        _end_of_step(step, "train-deq", cfg, backbone, model, optimizer, scheduler, totals, dist, state_path,
                     stop_after, init_sha)
    bar.close()
    _finish("train-deq", cfg, backbone, model, totals, dist)
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
                   help="where to train (auto: cuda when available; under torchrun rank r uses cuda:LOCAL_RANK); "
                        "bit-identical resume is guaranteed on cpu")
    p.add_argument("--amp", choices=("none", "bf16"), default="none",
                   help="bf16: bfloat16 autocast of the denoiser (CUDA only; see the train module docstring)")
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
    dist, device = setup_distributed(args.device)
    try:
        out = pretrain_denoiser(cfg, device=device, resume=args.resume, quiet=args.quiet,
                                stop_after=args.stop_after, dist=dist, amp=args.amp)
    finally:
        teardown_distributed(dist)
    if dist.is_main:
        print(f"wrote {out}")
    return 0


def _cmd_train_deq(args) -> int:
    _apply_threads(args)
    cfg = config_from_args(DEQTrainConfig, args)
    dist, device = setup_distributed(args.device)
    try:
        totals = train_deq(cfg, device=device, resume=args.resume, quiet=args.quiet, stop_after=args.stop_after,
                           dist=dist, amp=args.amp)
    finally:
        teardown_distributed(dist)
    if dist.is_main:
        print(convergence_summary(totals))
        print(f"wrote {cfg.out}")
    return 0


# --------------------------------------------------------------------------- bench train
BENCH_COLUMNS = ["stage", "solver", "backbone", "nc", "nb", "init", "crop", "batch_size", "n_tasks", "max_iter",
                 "threads", "device", "steps", "seconds_per_step", "fp_iter_mean", "fp_iter_max",
                 "pct_converged", "pct_diverged", "git_commit"]


# Defaults of ``bench train`` without --config: the quick scale's FFDNet prior.
BENCH_DEFAULTS = dict(backbone="ffdnet", nc=[96], nb=12, init="data/weights/ffdnet_color.pth",
                      train_dirs=["data/BSDS500/train"], crop=64, batch_size=2, n_tasks=5, eta=0.49, tol=1e-7,
                      max_iter=350, solvers=["plain", "anderson"], out="results/bench/train.csv")


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
    p.add_argument("--task-set", default="mtdeq")
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--out", default=None, help="CSV to write (default results/bench/train.csv, or "
                                                 "results/bench/paper_projection.csv with --config)")


def run_bench(args) -> int:
    """Seconds per MTDEQ step (plain and Anderson, with mean fixed-point iterations) and per
    denoiser step, for one model size and crop; writes args.out (CSV).  With --config: the
    projected CPU- and GPU-hours of that config's training runs."""
    from mtdeq.io import atomic_write_text, provenance
    from mtdeq.models import BackboneConfig, build_backbone, load_prior
    from mtdeq.tasks import TASK_SETS

    if args.config:
        return run_projection(args)
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


# --------------------------------------------------------------------------- bench train --config
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


def _conv_gflop(model: torch.nn.Module, x: torch.Tensor, sigma: float) -> float:
    """GFLOP (2 per multiply-add) of the convolutions of one forward on x, counted by hooks."""
    total = [0.0]

    def hook(module, inputs, output):
        taps = module.kernel_size[0] * module.kernel_size[1]
        if isinstance(module, torch.nn.ConvTranspose2d):  # each input entry meets taps x C_out/groups weights
            total[0] += 2.0 * inputs[0].numel() * taps * module.out_channels // module.groups
        else:  # each output entry sums taps x C_in/groups products
            total[0] += 2.0 * output.numel() * taps * module.in_channels // module.groups

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.no_grad():
        model(x, sigma)
    for h in handles:
        h.remove()
    return total[0] / 1e9


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
    _check(0 < k1 < k2, "--probe-iters", args.probe_iters, "two iteration counts 0 < K1 < K2")
    _check(0 < args.assume_iters <= max_iter, "--assume-iters", args.assume_iters, f"in (0, max_iter={max_iter}]")
    _check(args.gpu_speedup > 0, "--gpu-speedup", args.gpu_speedup, "a positive speed ratio")
    _check(args.gpu_tflops > 0, "--gpu-tflops", args.gpu_tflops, "a positive throughput")
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
        x = _open_dataset(dirs, crop).sample_batch(step_generator(args.seed, 0), args.measure_batch).to(device)
    else:  # no training images here: uniform noise crops cost the same
        x = torch.rand(args.measure_batch, 3, crop, crop, generator=step_generator(args.seed, 0)).to(device)
    task = TEST_TASKS["blur1.6"]
    gflop = _conv_gflop(model, x[:1], 0.05)

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
    text = str(_fmt(value))
    return f'"{text}"' if "," in text else text
