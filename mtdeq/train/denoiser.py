"""``pretrain-denoiser``: train (or just convert) the Gauss prior Q_theta(x, sigma).

    sigma ~ U[sigma_min, sigma_max] per image,  x_noisy = x + sigma n,  n ~ N(0, I)
    loss = l1 | l2 of Q_theta(x_noisy, sigma) against x                  Adam, MultiStepLR

With ``steps`` 0 the weights of ``init`` (our checkpoint or a KAIR .pth) are only written in our
checkpoint format.  Resume, data parallelism and devices: mtdeq.train.state, .distributed, .device.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from mtdeq.train.amp import autocast
from mtdeq.train.config import DenoiserTrainConfig
from mtdeq.train.distributed import SINGLE, Dist, all_reduce, check_same_step, wrap_ddp
from mtdeq.train.loop import (
    memory_format,
    VAL_SEED,
    check_validation_set,
    grads_finite,
    load_val_crops,
    mean_psnr,
    open_dataset,
    randn,
    scheduler_step,
    stage_logger,
    step_generator,
)
from mtdeq.train.state import CsvLog, end_of_step, finish, init_fingerprint, load_train_state, state_path

VAL_SIGMA = 25 / 255  # noise level of the denoiser's validation PSNR
LOG_COLUMNS = ["step", "loss", "val_psnr", "lr", "seconds"]


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
    noise = randn(x.shape, generator, x)
    if rows is not None:
        x, sigma, noise = x[rows], sigma[rows], noise[rows]
    noisy = x + sigma.view(-1, 1, 1, 1) * noise
    err = model(noisy, sigma) - x
    return err.abs().mean() if cfg.loss == "l1" else err.pow(2).mean()


def pretrain_denoiser(cfg: DenoiserTrainConfig, *, device: str | torch.device = "cpu", resume: bool = True,
                      quiet: bool = False, stop_after: int | None = None, dist: Dist = SINGLE,
                      amp: str = "none", channels_last: bool = False, val_exclude: tuple[str, ...] = (),
                      test_set: str | None = None) -> Path:
    """Train (or, with steps 0, just convert) a Gaussian denoiser; writes cfg.out and returns it.

    dist: this process's rank in a data-parallel run (mtdeq.train.distributed); amp: 'none'
    or 'bf16' (CUDA).  val_exclude: file names of cfg.val_dir left out of the validation images;
    test_set: a folder of test images the validation images must not be (or be crops of): refused
    before anything is written.
    """
    from tqdm import tqdm

    device = torch.device(device)
    autocast(device, amp)  # fail early on --amp bf16 without CUDA
    check_validation_set(cfg.val_dir, cfg.val_images, exclude=val_exclude, test_set=test_set,
                         stage="pretrain-denoiser")
    rows = dist.rows(cfg.batch_size) if dist.enabled and cfg.steps > 0 else None
    log = stage_logger(quiet, dist.is_main)
    model, backbone = _load_or_build_backbone(cfg)
    model = model.to(device, memory_format=memory_format(channels_last)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.lr_milestones),
                                                     gamma=cfg.lr_gamma)
    ckpt = state_path(cfg)
    init_sha = init_fingerprint(cfg)  # once per run: the weights this run starts from
    start, totals = (0, {})
    if resume and cfg.steps > 0:
        start, totals = load_train_state(ckpt, stage="pretrain-denoiser", cfg=cfg, init_sha256=init_sha,
                                         model=model, optimizer=optimizer, scheduler=scheduler, log=log)
        check_same_step(start, dist, device, ckpt)
    net = wrap_ddp(model, dist, device) if cfg.steps > 0 else model  # forward/backward go through net
    totals = {"skipped_steps": 0, **totals}
    log_csv = CsvLog(cfg.log_csv if dist.is_main else None, LOG_COLUMNS, start)
    data = open_dataset(cfg.train_dirs, cfg.crop) if cfg.steps > 0 else None
    val_x = load_val_crops(cfg.val_dir, cfg.crop, cfg.val_images, exclude=val_exclude)
    if val_x is not None:
        val_x = val_x.to(device)
        val_noisy = val_x + VAL_SIGMA * randn(val_x.shape, torch.Generator().manual_seed(VAL_SEED), val_x)

    def validate() -> float | None:
        if val_x is None:
            return None
        with torch.no_grad():
            return mean_psnr(model(val_noisy, VAL_SIGMA), val_x)

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
            loss = torch.tensor(all_reduce([float(loss.detach())], dist, device)[0] / dist.world_size)
        if torch.isfinite(loss) and grads_finite(model):
            optimizer.step()
        else:
            totals["skipped_steps"] += 1
            log(f"step {step}: non-finite loss or gradient, update skipped")
        scheduler_step(scheduler)
        seconds = time.perf_counter() - t0
        val = None
        if dist.is_main and ((cfg.val_every and step % cfg.val_every == 0) or step == cfg.steps):
            val = validate()
        log_csv.write(step=step, loss=float(loss.detach()), val_psnr=val, lr=lr, seconds=seconds)
        bar.update(1)
        bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
        end_of_step(step, "pretrain-denoiser", cfg, backbone, model, optimizer, scheduler, totals, dist,
                    ckpt, stop_after, init_sha)
    bar.close()
    finish("pretrain-denoiser", cfg, backbone, model, totals, dist)
    return Path(cfg.out)
