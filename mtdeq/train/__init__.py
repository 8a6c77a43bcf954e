"""Training stages: Gaussian-denoiser pretraining and MTDEQ (Algorithm 1), resumable, data-parallel.

One concept per module:

    config       DenoiserTrainConfig, DEQTrainConfig: settings and their validation
    denoiser     ``pretrain-denoiser``: the Gauss prior Q_theta(x, sigma) and its loss
    deq          ``train-deq``: Algorithm 1 (train_deq, deq_step, solve_task), FB map of Eq. (3)
    loop         pieces both loops share: step_generator (determinism), data, validation, guards
    state        resume state <out>.ckpt, final checkpoint, initial-weights fingerprint, CSV log
    distributed  torchrun / DDP: Dist, process group, all-reduce, rank dumps
    amp          --amp bf16 (autocast); the device comes from mtdeq.runtime.resolve_device
    cli          ``register(subparsers)``: the two stages of ``python -m mtdeq``

The training benchmark (``bench train``) and the paper-scale projection live in mtdeq.bench.
"""

from mtdeq.train.cli import register
from mtdeq.train.config import DenoiserTrainConfig, DEQTrainConfig, config_from_args, config_from_dict
from mtdeq.train.denoiser import denoiser_loss, pretrain_denoiser
from mtdeq.train.deq import DEQStepStats, TaskOutcome, convergence_summary, deq_step, solve_task, train_deq
from mtdeq.runtime import resolve_device
from mtdeq.train.amp import autocast
from mtdeq.train.distributed import SINGLE, Dist, setup_distributed, teardown_distributed, wrap_ddp
from mtdeq.train.loop import step_generator
from mtdeq.train.state import (
    CRASH_EXIT_CODE,
    STATE_FORMAT,
    CsvLog,
    init_fingerprint,
    load_train_state,
    save_train_state,
)

__all__ = [
    "CRASH_EXIT_CODE", "STATE_FORMAT", "SINGLE", "CsvLog", "DEQStepStats", "DEQTrainConfig", "DenoiserTrainConfig",
    "Dist", "TaskOutcome", "autocast", "config_from_args", "config_from_dict", "convergence_summary", "denoiser_loss",
    "deq_step", "init_fingerprint", "load_train_state", "pretrain_denoiser", "register", "resolve_device",
    "save_train_state", "setup_distributed", "solve_task", "step_generator", "teardown_distributed", "train_deq",
    "wrap_ddp",
]
