"""Tests of data-parallel training (mtdeq.train.distributed under torchrun): 2 gloo processes on the CPU.

A tiny DRUNet (nc 8 16 32 64, nb 1) on synthetic images.  The fixed-point tolerance is 0, so
every solve runs exactly max_iter iterations and the runs being compared make the same
number of steps of the same map (the one- and two-process results then differ by float
rounding only: batched convolutions sum in another order).
"""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path

import pytest
from conftest import REPO, TINY
import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp

from mtdeq.data import PatchDataset
from mtdeq.models import load_prior
from mtdeq.tasks import TEST_TASKS
from mtdeq.train import (
    CRASH_EXIT_CODE,
    DEQTrainConfig,
    DenoiserTrainConfig,
    Dist,
    deq_step,
    pretrain_denoiser,
    step_generator,
    train_deq,
)
from mtdeq.train.distributed import wrap_ddp

pytestmark = [
    pytest.mark.skipif(not (torch_dist.is_available() and torch_dist.is_gloo_available()),
                       reason="torch.distributed with the gloo backend is not available in this torch build"),
    pytest.mark.usefixtures("one_thread"),
]

REL_TOL = 1e-5
SYNTHETIC_IMAGES = (4, 32, 40)  # the conftest `images` fixture: 4 smooth synthetic RGB PNGs (32 x 40)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_close_rel(a: dict, b: dict) -> None:
    """Every tensor of a equals b's to REL_TOL relative (Frobenius norm of the difference)."""
    assert a.keys() == b.keys()
    for key in a:
        diff = float((a[key].double() - b[key].double()).norm())
        assert diff <= REL_TOL * float(b[key].double().norm()) + 1e-12, (key, diff)


def _cli(stage: str, cfg) -> list[str]:
    """The command line of a stage that builds exactly the config ``cfg``."""
    args = ["-m", "mtdeq", stage]
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if value is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):  # BooleanOptionalAction: --x / --no-x
            args.append(flag if value else "--no-" + flag[2:])
            continue
        args.append(flag)
        args += [str(v) for v in value] if isinstance(value, tuple) else [str(value)]
    return args + ["--threads", "1", "--device", "cpu", "--quiet"]


def _torchrun(nproc: int, stage: str, cfg, *extra, dump: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if dump is not None:
        env["MTDEQ_RANK_STATE_DIR"] = str(dump)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), *_cli(stage, cfg), *extra]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _deq_cfg(images, prior, out: Path, **kw) -> DEQTrainConfig:
    base = dict(out=str(out), init=str(prior), train_dirs=(str(images),), task_set="mtdeq", n_tasks=2, crop=16,
                batch_size=2, steps=3, lr=1e-3, lr_step=2, lr_gamma=0.5, max_iter=4, tol=0.0,
                solver="anderson", seed=1, log_csv=str(out.with_suffix(".csv")), checkpoint_every=2)
    return DEQTrainConfig(**{**base, **kw})


def _weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["state_dict"]


def _losses(csv_path: Path) -> list[float]:
    return [float(r["loss"]) for r in csv.DictReader(csv_path.open())]


# ----------------------------------------------------------------------------- units
def test_batch_must_split_evenly_over_the_ranks():
    assert Dist(rank=1, world_size=2).rows(4) == slice(2, 4)
    with pytest.raises(ValueError, match="--batch-size 3: not divisible by the world size 2"):
        Dist(rank=0, world_size=2).rows(3)


def _gradient_worker(rank: int, world_size: int, port: int, images: str, prior: str, out: str) -> None:
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        dist = Dist(rank=rank, world_size=world_size)
        cfg = DEQTrainConfig(out="m.pt", init=prior, train_dirs=(images,), crop=16, max_iter=3, tol=0.0,
                             solver="anderson")
        model = load_prior(prior)[0].train()
        net = wrap_ddp(model, dist, torch.device("cpu"))
        x = PatchDataset([images], crop=16).sample_batch(torch.Generator().manual_seed(2), 4)
        tasks = [TEST_TASKS["blur2.0"], TEST_TASKS["sr2_bicubic_n1"], TEST_TASKS["comp80"]]
        stats = deq_step(net, torch.optim.SGD(model.parameters(), lr=0.0), x, tasks, step_generator(0, 5), cfg,
                         dist=dist)
        grads = {name: p.grad for name, p in model.named_parameters()}
        torch.save({"grads": grads, "stats": asdict(stats)}, Path(out) / f"rank{rank}.pt")
    finally:
        torch_dist.destroy_process_group()


def test_two_process_gradient_is_the_mean_over_the_global_batch(images, prior, tmp_path):
    """DDP step on 2 ranks (2 images each) = one-process step on the 4 images (grad, loss, stats)."""
    mp.spawn(_gradient_worker, args=(2, _free_port(), str(images), str(prior), str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    cfg = DEQTrainConfig(out="m.pt", init=str(prior), train_dirs=(str(images),), crop=16, max_iter=3, tol=0.0,
                         solver="anderson")
    model = load_prior(prior)[0].train()
    x = PatchDataset([str(images)], crop=16).sample_batch(torch.Generator().manual_seed(2), 4)
    tasks = [TEST_TASKS["blur2.0"], TEST_TASKS["sr2_bicubic_n1"], TEST_TASKS["comp80"]]
    stats = deq_step(model, torch.optim.SGD(model.parameters(), lr=0.0), x, tasks, step_generator(0, 5), cfg)
    single = {name: p.grad for name, p in model.named_parameters()}

    assert all(torch.equal(ranks[0]["grads"][k], ranks[1]["grads"][k]) for k in single)
    _assert_close_rel(ranks[0]["grads"], single)  # the scale P / n included
    for r in ranks:
        assert r["stats"]["n_valid"] == stats.n_valid == 12
        assert r["stats"]["loss"] == pytest.approx(stats.loss, rel=REL_TOL)
        assert r["stats"]["iterations"] == stats.iterations and r["stats"]["status"] == stats.status


# ----------------------------------------------------------------------------- CLI under torchrun
@pytest.fixture(scope="module")
def one_process_run(images, prior, tmp_path_factory) -> Path:
    """The reference: train-deq on one process, in this process."""
    out = tmp_path_factory.mktemp("single") / "m.pt"
    torch.set_num_threads(1)
    train_deq(_deq_cfg(images, prior, out), quiet=True)
    return out


def test_torchrun_two_processes_match_one_process(images, prior, tmp_path, one_process_run):
    out = tmp_path / "m.pt"
    run = _torchrun(2, "train-deq", _deq_cfg(images, prior, out), dump=tmp_path / "ranks")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("wrote") == 1  # rank 0 alone reports (and writes)

    rank0, rank1 = (torch.load(tmp_path / "ranks" / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # the ranks hold identical weights
    _assert_close_rel(_weights(out), _weights(one_process_run))
    _assert_close_rel(_weights(out), rank0)
    assert _losses(out.with_suffix(".csv")) == pytest.approx(_losses(one_process_run.with_suffix(".csv")),
                                                             rel=REL_TOL)
    assert (torch.load(out, weights_only=True)["totals"]
            == torch.load(one_process_run, weights_only=True)["totals"])  # statistics of the global batch


def test_resume_after_changing_the_world_size(images, prior, tmp_path, one_process_run):
    out = tmp_path / "m.pt"
    cfg = _deq_cfg(images, prior, out)
    first = _torchrun(2, "train-deq", cfg, "--stop-after", "2")  # 2 ranks, checkpoint at step 2, crash
    assert first.returncode != 0 and f"exitcode  : {CRASH_EXIT_CODE}" in first.stderr, first.stderr[-3000:]
    assert torch.load(str(out) + ".ckpt", weights_only=False)["step"] == 2 and not out.exists()

    train_deq(cfg, quiet=True)  # one process finishes the run
    _assert_close_rel(_weights(out), _weights(one_process_run))
    assert [int(r["step"]) for r in csv.DictReader(out.with_suffix(".csv").open())] == [1, 2, 3]
    assert _losses(out.with_suffix(".csv")) == pytest.approx(_losses(one_process_run.with_suffix(".csv")),
                                                             rel=REL_TOL)


def test_torchrun_pretrain_denoiser_matches_one_process(images, prior, tmp_path):
    common = dict(train_dirs=(str(images),), nc=TINY.nc, nb=TINY.nb, init=str(prior), crop=16, batch_size=4,
                  steps=3, lr=1e-3, lr_milestones=(2,), seed=2)
    single = DenoiserTrainConfig(out=str(tmp_path / "a" / "g.pt"), **common)
    pretrain_denoiser(single, quiet=True)
    run = _torchrun(2, "pretrain-denoiser", DenoiserTrainConfig(out=str(tmp_path / "b" / "g.pt"), **common),
                    dump=tmp_path / "ranks")
    assert run.returncode == 0, run.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / "ranks" / f"rank{r}.pt", weights_only=True) for r in range(2))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    _assert_close_rel(_weights(tmp_path / "b" / "g.pt"), _weights(tmp_path / "a" / "g.pt"))


def test_torchrun_stacked_step_matches_the_per_task_step(images, prior, tmp_path, one_process_run):
    """--batch-tasks under DDP: every group of tasks but the last back-propagates under no_sync, and
    the run ends where the one-process per-task run does (to the tolerance of DDP's reductions)."""
    out = tmp_path / "m.pt"
    run = _torchrun(2, "train-deq", _deq_cfg(images, prior, out, batch_tasks=True))
    assert run.returncode == 0, run.stderr[-3000:]
    _assert_close_rel(_weights(out), _weights(one_process_run))
    assert _losses(out.with_suffix(".csv")) == pytest.approx(_losses(one_process_run.with_suffix(".csv")),
                                                             rel=REL_TOL)
