"""The ``pretrain-denoiser`` and ``train-deq`` stages of ``python -m mtdeq`` (``register``).

Each stage builds its config from the parsed arguments (mtdeq.train.config), joins a
data-parallel run when started by torchrun (mtdeq.train.distributed) and calls
mtdeq.train.denoiser.pretrain_denoiser or mtdeq.train.deq.train_deq.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

import torch

from mtdeq.runtime import DEVICE_CHOICES
from mtdeq.tasks import add_protocol_args
from mtdeq.train.amp import AMP_CHOICES
from mtdeq.train.config import COMP_INITS, VAL_TASK_FOR_SET, DenoiserTrainConfig, DEQTrainConfig, config_from_args
from mtdeq.train.denoiser import pretrain_denoiser
from mtdeq.train.deq import convergence_summary, train_deq
from mtdeq.train.distributed import setup_distributed, teardown_distributed


def _add_runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto",
                   help="where to train (auto: cuda, else mps, else cpu; under torchrun rank r uses cuda:LOCAL_RANK); "
                        "bit-identical resume is guaranteed on cpu")
    p.add_argument("--amp", choices=AMP_CHOICES, default="none",
                   help="bf16: bfloat16 autocast of the denoiser (CUDA only; see mtdeq/train/amp.py)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from <out>.ckpt when it was written with the same config (default: on)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no messages except the summary")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=False,
                   help="keep the network's weights and activations channels-last (faster oneDNN convolutions on "
                        "CPU; the same maths, other rounding; default: off); see python -m mtdeq bench train")
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
    p.add_argument("--state", default=None,
                   help="resume state to share between runs of one trajectory that differ only in --steps/--out/"
                        "--log-csv (kept after the run: a longer budget resumes from it); default <out>.ckpt, "
                        "removed once the run ends")
    p.add_argument("--val-dir", default=None, help="folder whose first --val-images images give centre crops "
                   "for the validation PSNR")
    p.add_argument("--val-every", type=int, default=defaults.val_every,
                   help="validation PSNR every K steps (and at the last step); 0: last step only")
    p.add_argument("--val-images", type=int, default=defaults.val_images, help="number of validation crops")
    p.add_argument("--val-exclude", nargs="*", default=[], metavar="FILE",
                   help="file names in --val-dir never used for validation (config data.val_exclude), e.g. "
                        "face.png, a crop of Set5's head.png")
    p.add_argument("--test-set", default="data/Set5",
                   help="test image folder (default data/Set5): the stage refuses, before writing anything, "
                        "validation images that are test images or crops of one (or contain one); '' = no check")


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
    q.add_argument("--lr-warmup", type=int, default=e.lr_warmup,
                   help="linear learning-rate warm-up over the first W steps (0: none)")
    q.add_argument("--accum", type=int, default=e.accum,
                   help="mini-batches of --batch-size per optimiser step (gradient accumulation; 1: none)")
    q.add_argument("--eta", type=float, default=e.eta, help="FB step size (Eq. 3)")
    q.add_argument("--tol", type=float, default=e.tol, help="stop when mean((f(z)-z)^2) < tol")
    q.add_argument("--early-tol", type=float, default=e.early_tol,
                   help="the looser tolerance of steps 1..--early-steps (bench train --grad-check measures "
                        "what it does to the gradient)")
    q.add_argument("--early-steps", type=int, default=e.early_steps,
                   help="steps solved to --early-tol instead of --tol (0: --tol throughout)")
    q.add_argument("--max-iter", type=int, default=e.max_iter, help="fixed-point iteration cap")
    q.add_argument("--diverge-at", type=float, default=e.diverge_at,
                   help="a solve diverged when |z| exceeds this")
    q.add_argument("--solver", choices=("plain", "anderson"), default=e.solver, help="fixed-point method")
    q.add_argument("--batch-tasks", action=argparse.BooleanOptionalAction, default=e.batch_tasks,
                   help="solve the N tasks of a step as one stacked batch of N*B images (one denoiser call "
                        "per iteration; each image keeps its own stopping rule); default: one solve per task")
    q.add_argument("--comp-init", choices=COMP_INITS, default=e.comp_init,
                   help="completion start of the training solves: grey (PnP-ReG's y + 0.5 (1 - m)) or fill "
                        "(dropped pixels from a normalised Gaussian convolution of the observed ones; the same "
                        "fixed point, reached in fewer iterations)")
    q.add_argument("--val-task", default=None,
                   help=f"test task(s) of the validation PSNR, comma-separated for the mean over several "
                        f"(default per task set: {VAL_TASK_FOR_SET})")
    add_protocol_args(q, test=False)
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
                                stop_after=args.stop_after, dist=dist, amp=args.amp, channels_last=args.channels_last,
                                val_exclude=tuple(args.val_exclude), test_set=args.test_set)
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
                           dist=dist, amp=args.amp, channels_last=args.channels_last,
                           val_exclude=tuple(args.val_exclude), test_set=args.test_set)
    finally:
        teardown_distributed(dist)
    if dist.is_main:
        print(convergence_summary(totals))
        print(f"wrote {cfg.out}")
    return 0
