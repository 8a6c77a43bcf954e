"""Data-parallel training under ``torchrun --nproc-per-node P`` (env WORLD_SIZE = P > 1, RANK, LOCAL_RANK).

Both stages join a process group (NCCL on CUDA, gloo on CPU) and wrap the model in
DistributedDataParallel (``setup_distributed``, ``wrap_ddp``).  Every rank draws the *whole*
batch of step k (crops, tasks, masks, noise) from ``step_generator(seed, k)`` and keeps its rows
``rank*B/P : (rank+1)*B/P`` (``Dist.rows``), so the effective batch stays the config's B (B must
be divisible by P) and the data a run sees does not depend on P; this replaces a
DistributedSampler, whose order would depend on P.

``pretrain-denoiser`` lets DDP average the equal-sized per-rank mean losses (= the global mean).
``train-deq`` back-propagates per task the *sum* of its valid losses under ``no_sync`` for tasks
1..N-1 and synchronises on the last (DDP all-reduces the accumulated gradient, dividing by P),
then all-reduces the valid count n and rescales by P / n: the gradient of the mean over all
valid (image, task) pairs of the global batch, as on one process (mtdeq.train.deq.deq_step).
Solver statistics are gathered so the log and run totals are those of the global batch.

Rank 0 alone logs, shows progress, validates and writes checkpoints (with a barrier after each
write); the resume state holds nothing per rank, so a run may resume with another P
(``check_same_step`` insists that all ranks resumed from the same step).  On one process
(``SINGLE``) none of this runs and results are unchanged.  Results with P > 1 equal the
one-process run up to float rounding (batched convolutions sum in another order).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mtdeq.runtime import resolve_device


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


def wrap_ddp(model: torch.nn.Module, dist: Dist, device: torch.device) -> torch.nn.Module:
    """model itself on one process, else DDP(model); DDP broadcasts rank 0's weights on entry.

    forward_sync_buffers=False: the fixed-point solve calls the model a different number of
    times on each rank, so no forward may hold a collective (the backbones have no buffers).
    """
    if not dist.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)


def all_reduce(values: list[float], dist: Dist, device: torch.device, op: str = "sum") -> list[float]:
    """Element-wise sum (or max) of a few numbers over the ranks (float64)."""
    if not dist.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    reduce_op = torch.distributed.ReduceOp
    torch.distributed.all_reduce(t, op=reduce_op.SUM if op == "sum" else reduce_op.MAX)
    return t.tolist()


def check_same_step(start: int, dist: Dist, device: torch.device, path: Path) -> None:
    """Every rank must have resumed from the same step (one resume file, on a shared filesystem)."""
    lo, hi = all_reduce([-start, start], dist, device, op="max")
    if -lo != hi:
        raise RuntimeError(f"{path}: ranks resumed from different steps ({-int(lo)}..{int(hi)}); the resume "
                           "state must be one file visible to every rank (a shared filesystem)")


def dump_rank_state(model: torch.nn.Module, dist: Dist) -> None:
    """With $MTDEQ_RANK_STATE_DIR set, each rank writes its final weights to rank<r>.pt there
    (a check that data-parallel ranks end identical; used by tests/test_ddp.py)."""
    folder = os.environ.get("MTDEQ_RANK_STATE_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                   Path(folder) / f"rank{dist.rank}.pt")
