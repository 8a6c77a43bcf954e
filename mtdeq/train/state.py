"""Checkpoints, resume state and the per-step CSV log of both training stages.

The resume state ``<out>.ckpt`` (written atomically by rank 0 every ``--checkpoint-every`` steps
and at the last step, ``end_of_step``) holds::

    {"format": "mtdeq-train-state/1", "stage": "train-deq" | "pretrain-denoiser",
     "config": asdict(config), "init_sha256": init_fingerprint(config),
     "backbone": asdict(BackboneConfig), "step": k,
     "model": state_dict, "optimizer": ..., "scheduler": ...,
     "rng": {"torch", "python", "numpy", "data": {"scheme", "seed", "next_step"}},
     "totals": counters over the whole run, "provenance": mtdeq.io.provenance(config)}

Only plain containers, tensors and numpy arrays are pickled (no class of this package), so the
file does not depend on where the training code lives.  Since every draw of step k comes from
``step_generator(seed, k)`` (mtdeq.train.loop), restoring model, optimiser and scheduler is all
a resume needs.  Rerunning the same command resumes from the state (one written with another
config or from other initial weights, ``"init_sha256"``, is ignored with a message; the state
is removed once the final model is written, ``finish``) and ends, on CPU, with the same weights
bit for bit as an uninterrupted run.  The final model goes to ``--out`` via
``mtdeq.models.save_checkpoint`` (``load_prior`` reads it).  ``CsvLog`` drops, on resume, the
log rows written after the step the state was saved at.
"""

from __future__ import annotations

import copy
import csv
import os
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from mtdeq.train.distributed import Dist, dump_rank_state

STATE_FORMAT = "mtdeq-train-state/1"
CRASH_EXIT_CODE = 75  # exit code of the simulated crash (--stop-after)


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
            csv.DictWriter(fh, self.columns).writerow({c: fmt_cell(row.get(c)) for c in self.columns})


def fmt_cell(v):
    """A CSV cell: None -> '', floats to 6 significant digits, anything else as is."""
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


# Settings that say where a run writes and how far it goes, not what each step computes: a state
# written under other values of these is a prefix of this run's trajectory (the budget target trains
# 100, then 400, then 1600 steps of one run from one shared --state).
TRAJECTORY_NEUTRAL = ("out", "steps", "log_csv", "state", "checkpoint_every")


def state_path(cfg) -> Path:
    """Where the resume state of a run lives: ``cfg.state`` (shared, kept), else ``<cfg.out>.ckpt``."""
    return Path(cfg.state) if getattr(cfg, "state", None) else Path(str(cfg.out) + ".ckpt")


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

    A missing file, one written with another stage or config (the differing keys are printed;
    TRAJECTORY_NEUTRAL keys may differ) or one past ``cfg.steps`` means a fresh start: (0, {}).
    """
    if not path.exists():
        return 0, {}
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("format") != STATE_FORMAT or state.get("stage") != stage:
        log(f"{path}: not a {stage} resume state ({state.get('format')}, {state.get('stage')}); starting fresh")
        return 0, {}
    current = asdict(cfg)
    differ = sorted(k for k in set(current) | set(state["config"])
                    if k not in TRAJECTORY_NEUTRAL and current.get(k) != state["config"].get(k))
    if differ:
        log(f"{path}: written with another config (differs in {differ}); starting fresh")
        return 0, {}
    if state.get("init_sha256") != init_sha256:
        log(f"{path}: written for other initial weights ({cfg.init} has changed since); starting fresh")
        return 0, {}
    if int(state["step"]) > cfg.steps:
        log(f"{path}: at step {state['step']}, past this run's {cfg.steps} steps; starting fresh")
        return 0, {}
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    np.random.set_state(state["rng"]["numpy"])
    log(f"{path}: resuming after step {state['step']}")
    return int(state["step"]), dict(state["totals"])


def end_of_step(step, stage, cfg, backbone, model, optimizer, scheduler, totals, dist: Dist, path: Path,
                stop_after, init_sha256) -> None:
    """Checkpoint every ``cfg.checkpoint_every`` steps and at the last one; ``stop_after``: simulated crash."""
    if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:
        if dist.is_main:
            save_train_state(path, stage=stage, cfg=cfg, backbone=backbone, step=step, model=model,
                             optimizer=optimizer, scheduler=scheduler, totals=totals, init_sha256=init_sha256)
        dist.barrier()  # the state is on disk before any rank goes on (or stops)
    if stop_after is not None and step == stop_after:
        os._exit(CRASH_EXIT_CODE)  # simulated crash (tests): no clean-up, no final checkpoint


def finish(stage, cfg, backbone, model, totals, dist: Dist) -> None:
    """Write the final model checkpoint (rank 0) once every rank is done, then drop the resume state.

    The state only serves an interrupted run; a finished one that is run again (Snakemake
    reruns a job whose inputs or parameters changed) trains from the start.  An explicit
    ``cfg.state`` is kept: a longer budget of the same run resumes from it.
    """
    if dist.is_main:
        _save_final(cfg, stage, model, backbone, cfg.steps, totals)
        if not cfg.state:
            state_path(cfg).unlink(missing_ok=True)
    dump_rank_state(model, dist)
    dist.barrier()


def _save_final(cfg, stage, model, backbone, step, totals) -> None:
    from mtdeq.models import save_checkpoint

    cpu_model = copy.deepcopy(model).cpu().eval()
    save_checkpoint(cfg.out, cpu_model, backbone, stage=stage, train_config=asdict(cfg), step=step,
                    totals=dict(totals))
