"""``train-deq``: fine-tune a prior with the deep-equilibrium objective of Algorithm 1 (MTDEQ).

Algorithm 1 of the paper, and where each line lives here (B crops per mini-batch, N tasks):

    for a number of epochs do                       train_deq:  for step k = 1..steps
      for x in D do                                 train_deq:  x = B random crops (B, 3, C, C)
        for i = 1, ..., N do                        deq_step:   for each of the N tasks
          (A_i, sigma_i) picked from A x Sigma      train_deq:  task_set.sample(g), one per i
          y_i <- A_i(x) + eps_i                     solve_task: mtdeq.tasks.degrade (fresh noise
                                                                for every image)
          z_i <- P(y_i)                             solve_task: start(): op.init(y_i), or for
                                                                completion op.fill(y_i) (comp_init)
          while 1/d ||z_i - f_i(z_i)||^2 >= tol     solve_task: mtdeq.solvers.fixed_point, no
            z_i <- f_i(z_i)                                     autograd (plain or Anderson); tol
                                                                is cfg.tol_at(step) (early_tol)
          L_i <- 1/d ||f_i(z_i) - x||^2             solve_task: per image, gradient only through
                                                                this one application of f_i
        L <- 1/N sum_i L_i                          deq_step:   mean over the (image, i) pairs
                                                                whose solve did not diverge
        theta <- Optim(theta, L)                    deq_step:   Jacobian-free gradient (Eq. 4),
                                                                Adam (after cfg.accum mini-batches);
                                                                train_deq: lr_scheduler (warm-up,
                                                                StepLR)

    with the forward-backward (FB) map of Eq. (3)

        f_i(z) = Q_theta(z - eta A_i^T (A_i z - y_i), eta sigma_i).

The N tasks are shared by the B images of a mini-batch (each image still sees N different
degradations per step, as in Algorithm 1); sharing them lets one batched fixed-point solve
serve all B images.  With ``batch_tasks`` the N solves of a step are stacked into one solve of
N*B images (grouped by image size), each image keeping its own operator, Anderson history and
stopping rule: one denoiser call per iteration instead of N, and one backward pass.  ``st_comp`` and ``st_sr`` are the same trainer with other task sets.
Resume, data parallelism and mixed precision: mtdeq.train.state, .distributed, .amp (devices:
mtdeq.runtime).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from mtdeq.train.amp import autocast
from mtdeq.train.config import DEQTrainConfig
from mtdeq.train.distributed import SINGLE, Dist, all_reduce, check_same_step, wrap_ddp
from mtdeq.train.loop import (
    VAL_SEED,
    check_validation_set,
    grads_finite,
    load_val_crops,
    mean_psnr,
    memory_format,
    open_dataset,
    scheduler_step,
    stage_logger,
    step_generator,
)
from mtdeq.train.state import CsvLog, end_of_step, finish, init_fingerprint, load_train_state, state_path

DEQ_LOG_COLUMNS = ["step", "loss", "val_psnr", "fp_iter_mean", "fp_iter_max", "pct_converged", "pct_diverged",
                   "n_valid", "skipped", "lr", "tasks", "seconds", "tol", "images"]


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


# --------------------------------------------------------------------------- the outer loops
def train_deq(cfg: DEQTrainConfig, *, device: str | torch.device = "cpu", resume: bool = True, quiet: bool = False,
              stop_after: int | None = None, on_step: Callable[[DEQStepStats], None] | None = None,
              dist: Dist = SINGLE, amp: str = "none", channels_last: bool = False,
              val_exclude: tuple[str, ...] = (), test_set: str | None = None) -> dict:
    """Algorithm 1: fine-tune the prior cfg.init on cfg.task_set; writes cfg.out, returns run totals.

    totals: solves, converged, max_iter, diverged (fixed-point solves, one per image and task),
    skipped_steps.  dist: this process's rank in a data-parallel run (mtdeq.train.distributed);
    amp: 'none' or 'bf16' (CUDA); channels_last: keep weights and activations channels-last.
    val_exclude: file names of cfg.val_dir left out of the validation images; test_set: a folder of
    test images the validation images must not be (or be crops of): refused before anything is written.
    """
    from tqdm import tqdm

    from mtdeq.models import load_prior
    from mtdeq.tasks import TASK_SETS

    device = torch.device(device)
    dist.rows(cfg.batch_size)  # fail early when the batch does not split over the ranks
    autocast(device, amp)  # fail early on --amp bf16 without CUDA
    check_validation_set(cfg.val_dir, cfg.val_images, exclude=val_exclude, test_set=test_set, stage="train-deq")
    log = stage_logger(quiet, dist.is_main)
    model, backbone = load_prior(cfg.init)
    model = model.to(device, memory_format=memory_format(channels_last)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = lr_scheduler(optimizer, cfg)
    ckpt = state_path(cfg)
    init_sha = init_fingerprint(cfg)  # once per run: the weights this run starts from
    start, totals = (0, {})
    if resume:
        start, totals = load_train_state(ckpt, stage="train-deq", cfg=cfg, init_sha256=init_sha, model=model,
                                         optimizer=optimizer, scheduler=scheduler, log=log)
        check_same_step(start, dist, device, ckpt)
    net = wrap_ddp(model, dist, device)  # the training forwards/backwards go through net
    totals = {"solves": 0, "converged": 0, "max_iter": 0, "diverged": 0, "skipped_steps": 0, **totals}
    log_csv = CsvLog(cfg.log_csv if dist.is_main else None, DEQ_LOG_COLUMNS, start)
    data = open_dataset(cfg.train_dirs, cfg.crop)
    task_set = TASK_SETS[cfg.task_set]
    validate = _deq_validation(model, cfg, device, val_exclude) if dist.is_main else (lambda: None)
    if start == 0 and cfg.val_dir is not None and dist.is_main:
        log_csv.write(step=0, val_psnr=validate(), lr=cfg.lr)

    bar = tqdm(total=cfg.steps, initial=start, disable=quiet or not dist.is_main, desc=f"train-deq {cfg.task_set}",
               dynamic_ncols=True)
    for step in range(start + 1, cfg.steps + 1):  # "for a number of epochs / for x in D"
        t0 = time.perf_counter()
        batches = []
        for part in range(cfg.accum):  # crops, flips, tasks, masks and noise of this step's mini-batches
            g = step_generator(cfg.seed, step, part)
            x = data.sample_batch(g, cfg.batch_size).to(device)  # the whole mini-batch, on every rank
            batches.append((x, [task_set.sample(g) for _ in range(cfg.n_tasks)], g))  # (A_i, sigma_i), i = 1..N
        lr = optimizer.param_groups[0]["lr"]
        (x, tasks, g), micro = batches[0], batches[1:]
        stats = deq_step(net, optimizer, x, tasks, g, cfg, dist=dist, amp=amp, tol=cfg.tol_at(step), micro=micro)
        scheduler_step(scheduler)
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
                      skipped=int(stats.skipped), lr=lr, tasks=";".join(t.name for t in stats.tasks),
                      seconds=stats.seconds, tol=cfg.tol_at(step), images=step * cfg.batch_per_step)
        if on_step is not None:
            on_step(stats)
        bar.update(1)
        bar.set_postfix(loss="skipped" if stats.loss is None else f"{stats.loss:.4g}",
                        it=f"{np.mean(stats.iterations):.0f}")
        end_of_step(step, "train-deq", cfg, backbone, model, optimizer, scheduler, totals, dist, ckpt,
                    stop_after, init_sha)
    bar.close()
    finish("train-deq", cfg, backbone, model, totals, dist)
    return totals


def lr_scheduler(optimizer, cfg: DEQTrainConfig):
    """The learning-rate schedule of train-deq, stepped once per optimiser step.

    Without warm-up: StepLR(lr_step, lr_gamma), or a constant rate when lr_step is 0.  With
    ``lr_warmup`` W > 0: step k uses lr * min(1, k / W) * lr_gamma ** ((k - 1) // lr_step).
    """
    if cfg.lr_warmup > 0:
        def factor(done: int) -> float:  # done = optimiser steps taken before this one
            decay = cfg.lr_gamma ** (done // cfg.lr_step) if cfg.lr_step > 0 else 1.0
            return min(1.0, (done + 1) / cfg.lr_warmup) * decay

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if cfg.lr_step > 0:
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[], gamma=cfg.lr_gamma)


# --------------------------------------------------------------------------- one mini-batch: L and Optim
def deq_step(model, optimizer, x: torch.Tensor, tasks: list, generator: torch.Generator,
             cfg: DEQTrainConfig, *, dist: Dist = SINGLE, amp: str = "none", tol: float | None = None,
             micro: list | tuple = ()) -> DEQStepStats:
    """One optimiser step of Algorithm 1 on crops x (B, 3, H, W) with the N given tasks.

    Each task's summed valid losses are back-propagated as soon as they are computed (only one
    JFB graph is alive at a time); the accumulated gradient is then divided by the number of
    valid (image, task) pairs, which gives the gradient of L = mean of the valid L_i.  No valid
    pair, or a non-finite gradient, skips the update.

    tol: the fixed-point tolerance of this step (default cfg.tol; train_deq passes cfg.tol_at(step)).
    micro: further mini-batches ``(x, tasks, generator)`` of the same step (gradient accumulation,
    cfg.accum): their pairs join the mean, so the step is that of one batch of (1 + len(micro)) * B
    crops, solved one mini-batch at a time.

    Data-parallel (dist.enabled; model is the DDP wrapper): x is the whole batch, this rank
    solves dist.rows(B).  Every task group but the last of the last mini-batch back-propagates
    under no_sync; that last one always back-propagates (0 * sum of the weights where it has no
    valid pair) so that every rank joins DDP's all-reduce, which leaves (sum over ranks)/P in .grad;
    the global n then gives the scale P / n.  The statistics returned are those of the whole batch,
    in one-process order.
    """
    optimizer.zero_grad(set_to_none=True)
    stats = DEQStepStats(step=0, loss=None)
    device = next(model.parameters()).device
    batches = [(x, tasks, generator)] + list(micro)
    loss_sum = 0.0
    for k, (xk, tasks_k, gk) in enumerate(batches):
        stats.tasks += list(tasks_k)
        n_valid, loss_k, per_task = _accumulate(model, xk, tasks_k, gk, cfg, tol=cfg.tol if tol is None else tol,
                                                dist=dist, amp=amp, final=k == len(batches) - 1)
        stats.n_valid += n_valid
        loss_sum += loss_k
        for iterations, status in per_task:
            stats.iterations += iterations
            stats.status += status
    if dist.enabled:
        n_valid, loss_sum = all_reduce([stats.n_valid, loss_sum], dist, device)
        stats.n_valid = int(round(n_valid))
    if stats.n_valid == 0:
        stats.skipped = True
        optimizer.zero_grad(set_to_none=True)
        return stats
    # "L <- 1/N sum_i L_i": the summed gradients divided by the number of valid (image, task) pairs
    for p in model.parameters():
        if p.grad is not None:
            p.grad.div_(stats.n_valid if not dist.enabled else stats.n_valid / dist.world_size)
    stats.loss = loss_sum / stats.n_valid
    if not grads_finite(model):
        stats.skipped = True
        optimizer.zero_grad(set_to_none=True)
        return stats
    optimizer.step()  # "theta <- Optim(theta, L)"
    return stats


def _accumulate(model, x: torch.Tensor, tasks: list, generator: torch.Generator, cfg: DEQTrainConfig, *,
                tol: float, dist: Dist, amp: str, final: bool) -> tuple[int, float, list]:
    """Back-propagate the summed valid losses of one mini-batch (no division, no optimiser step).

    Returns (valid pairs of this rank, their summed loss, per task (iterations, status) of the whole
    batch); ``final``: this mini-batch's last task group joins DDP's all-reduce.
    """
    rows = dist.rows(x.shape[0]) if dist.enabled else None
    device = next(model.parameters()).device
    # one noise seed per task, drawn in task order (the same draws in both modes)
    seeds = [noise_seed(generator) for _ in tasks]
    groups = task_groups(tasks, x, cfg) if cfg.batch_tasks else [[t] for t in range(len(tasks))]
    loss_sum, n_valid = 0.0, 0
    outcomes: dict[int, TaskOutcome] = {}
    for g, members in enumerate(groups):  # "for i = 1, ..., N" (a group of tasks solved as one batch)
        last = final and g == len(groups) - 1
        sync = model.no_sync() if dist.enabled and not last else contextlib.nullcontext()
        with sync:
            with autocast(device, amp):
                solved = solve_tasks(model, x, [tasks[t] for t in members], [seeds[t] for t in members], cfg,
                                     rows=rows, tol=tol)
            outcomes.update(zip(members, solved))
            valid = [o.per_image_loss[o.valid] for o in solved if o.valid.any()]
            total = None
            if valid:
                total = torch.cat(valid).sum()
            elif dist.enabled and last:  # join DDP's all-reduce with exact zeros (no 0 * inf from invalid rows)
                total = sum(p.sum() for p in model.parameters()) * 0.0
            if total is not None:
                total.backward()  # JFB (Eq. 4): d L_i / d theta through the one application of f_i
                loss_sum += float(total.detach())
                n_valid += sum(int(o.valid.sum()) for o in solved)
    per_task = [(outcomes[t].iterations, outcomes[t].status) for t in range(len(tasks))]
    if dist.enabled:
        gathered = [None] * dist.world_size
        torch.distributed.all_gather_object(gathered, per_task)
        per_task = [(sum((r[t][0] for r in gathered), []), sum((r[t][1] for r in gathered), []))
                    for t in range(len(tasks))]
    return n_valid, loss_sum, per_task


# --------------------------------------------------------------------------- tasks: y_i, z_i, L_i
def noise_seed(generator: torch.Generator) -> int:
    """The seed of one task's masks and noise, the next draw of the step's generator."""
    return int(torch.randint(2**62, (1,), generator=generator))


def task_groups(tasks: list, x: torch.Tensor, cfg: DEQTrainConfig) -> list[list[int]]:
    """Indices of the tasks whose estimates have one shape, in task order (one stacked solve each).

    SR crops x to a multiple of its factor (a 64-pixel crop is 63 pixels for x3), so the N tasks
    form at most a few groups of equal image size.
    """
    groups: dict[tuple, list[int]] = {}
    for t, task in enumerate(tasks):
        groups.setdefault(tuple(cfg.protocol.crop_truth(task, x).shape), []).append(t)
    return list(groups.values())


def solve_task(model, x: torch.Tensor, task, generator: torch.Generator, cfg: DEQTrainConfig,
               rows: slice | None = None) -> TaskOutcome:
    """One task alone (:func:`solve_tasks`), its noise seed drawn from ``generator``."""
    return solve_tasks(model, x, [task], [noise_seed(generator)], cfg, rows=rows)[0]


def solve_tasks(model, x: torch.Tensor, tasks: list, seeds: list[int], cfg: DEQTrainConfig,
                rows: slice | None = None, tol: float | None = None) -> list[TaskOutcome]:
    """The body of Algorithm 1's loop over i for tasks of one image size, on a batch x (B, 3, H, W).

    For each task, y = A x + sigma_noise eps through ``mtdeq.tasks.degrade`` (the test-time noise
    model: SR crops x to the scale multiple, inpainting masks the noise) with its seed; z* = fixed
    point of Eq. (3) from op.init(y) with sigma_denoise = eta sigma_noise (no autograd); out = f(z*)
    with autograd (JFB); per-image loss mean((out - x)^2).  An image is valid when its solve did not
    diverge and its loss is finite.  The whole batch is degraded (the noise of an image does not
    depend on how the batch is split); only ``rows`` (None: all) are solved.

    One task is one batched solve of B images.  Several tasks are stacked into one solve of T*B
    images: one denoiser call per iteration for all of them, each image with its own operator,
    noise level, Anderson history and stopping rule, so each image follows its own trajectory
    (the same as when solved alone, up to floating-point rounding of the batched convolutions).
    tol: the stopping tolerance (default cfg.tol).
    """
    from mtdeq.solvers import fb_map, fixed_point, jfb_output

    ops, ys, xs, sigmas = [], [], [], []
    for task, seed in zip(tasks, seeds):
        deg = cfg.protocol.degrade(task, x, seed=seed)  # y_i <- A_i(x) + eps_i
        y, x_gt = deg.y, deg.x_gt
        if rows is not None:  # the operators are batch-independent: only y and x are split
            y, x_gt = y[rows], x_gt[rows]
        ops.append(deg.op)
        ys.append(y)
        xs.append(x_gt)
        sigmas.append(cfg.eta * task.sigma_noise)
    batch = xs[0].shape[0]
    if len(tasks) == 1:  # f_i(z) = Q_theta(z - eta A_i^T(A_i z - y_i), eta sigma_i)             (Eq. 3)
        f = fb_map(ops[0], ys[0], model, eta=cfg.eta, sigma_denoise=sigmas[0])
    else:  # the stacked map: image t*B + b is image b under task t
        f = fb_map([op for op in ops for _ in range(batch)], [y[b : b + 1] for y in ys for b in range(batch)],
                   model, eta=cfg.eta, sigma_denoise=torch.tensor(sigmas).repeat_interleave(batch))
    # z_i <- P(y_i); while 1/d ||z_i - f_i(z_i)||^2 >= tol: z_i <- f_i(z_i)   (no autograd)
    z0 = torch.cat([start(op, y, cfg) for op, y in zip(ops, ys)])
    z_star, info = fixed_point(f, z0, tol=cfg.tol if tol is None else tol, max_iter=cfg.max_iter,
                               diverge_at=cfg.diverge_at, method=cfg.solver)
    # L_i <- 1/d ||f_i(z_i) - x||^2, with autograd through this one application of f_i   (JFB, Eq. 4)
    out = jfb_output(f, z_star.detach())
    per_image = (out - torch.cat(xs)).pow(2).flatten(1).mean(dim=1)
    outcomes = []
    for t, task in enumerate(tasks):
        span = slice(t * batch, (t + 1) * batch)
        status = list(info.status[span])
        not_diverged = torch.tensor([s != "diverged" for s in status], device=per_image.device)
        loss = per_image[span]
        valid = not_diverged & torch.isfinite(loss).detach()
        outcomes.append(TaskOutcome(task, loss, valid, info.iterations[span].tolist(), status))
    return outcomes


def start(op, y: torch.Tensor, cfg: DEQTrainConfig) -> torch.Tensor:
    """z_0 = P(y): the operator's start, or with cfg.comp_init 'fill' the hole-filled completion start.

    The fixed point does not depend on the start, but the number of iterations to reach it does:
    from grey holes, completion at small sigma spreads information by about a pixel per iteration
    and stalls under the cap (bench train --grad-check measures the gradient either way).
    """
    if cfg.comp_init == "fill" and getattr(op, "kind", "") == "inpaint":
        return op.fill(y)
    return op.init(y)


# --------------------------------------------------------------------------- validation and summary
def _deq_validation(model, cfg: DEQTrainConfig, device, val_exclude: tuple[str, ...] = ()):
    """A closure returning the mean PSNR of f(z*) on fixed val crops over the validation tasks
    (cfg.val_tasks, the mean over tasks of the mean over crops), or None without cfg.val_dir."""
    val_x = load_val_crops(cfg.val_dir, cfg.crop, cfg.val_images, exclude=val_exclude)
    if val_x is None:
        return lambda: None
    from mtdeq.solvers import fb_map, fixed_point
    from mtdeq.tasks import TEST_TASKS

    problems = []
    for name in cfg.val_tasks:
        task = TEST_TASKS[name]
        deg = cfg.protocol.degrade(task, val_x, seed=VAL_SEED)
        problems.append((task, deg.op, deg.y.to(device), deg.x_gt.to(device)))

    def validate() -> float:
        scores = []
        for task, op, y, x_gt in problems:
            f = fb_map(op, y, model, eta=cfg.eta, sigma_denoise=cfg.eta * task.sigma_noise)
            z_star, _ = fixed_point(f, start(op, y, cfg), tol=cfg.tol, max_iter=cfg.max_iter,
                                    diverge_at=cfg.diverge_at, method=cfg.solver)
            with torch.no_grad():
                scores.append(mean_psnr(f(z_star), x_gt))
        return float(np.mean(scores))

    return validate


def convergence_summary(totals: dict) -> str:
    """One line with the share of fixed-point solves that converged (paper: > 99 %)."""
    n = totals.get("solves", 0)
    if n == 0:
        return "fixed-point solves: none run"
    return (f"fixed-point solves converged: {100 * totals['converged'] / n:.2f}% of {n} "
            f"(max_iter {totals['max_iter']}, diverged {totals['diverged']}; "
            f"skipped steps {totals['skipped_steps']})")
