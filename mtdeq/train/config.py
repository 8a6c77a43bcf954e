"""Settings of the two training stages: one frozen dataclass each, validated on construction.

``DenoiserTrainConfig`` (``pretrain-denoiser``) and ``DEQTrainConfig`` (``train-deq``) hold every
setting that changes what a run computes; runtime flags (threads, device, amp, resume, quiet) are
not part of them.  A config is stored, as ``asdict(config)``, in every checkpoint and resume state
a stage writes (mtdeq.train.state), and a resume state is used only when it was written with an
equal config.  Bad values raise ValueError naming the CLI flag (``--key: got ..., expected ...``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

COMP_INITS = ("grey", "fill")  # the completion start of a training solve (DEQTrainConfig.comp_init)
# the default validation task(s) of train-deq per task set (DEQTrainConfig.val_tasks; --val-task overrides)
VAL_TASK_FOR_SET = {"mtdeq": "blur1.6", "st_comp": "comp90", "st_sr": "sr2_bicubic_n1"}


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
    state: str | None = None  # resume state shared by the budgets of one run (None: <out>.ckpt)
    val_dir: str | None = None
    val_every: int = 100
    val_images: int = 4

    def __post_init__(self):
        check_value(self.loss in ("l1", "l2"), "--loss", self.loss, "'l1' or 'l2'")
        check_value(self.backbone in ("drunet", "ffdnet"), "--backbone", self.backbone, "'drunet' or 'ffdnet'")
        check_value(0 <= self.sigma_min <= self.sigma_max, "--sigma-min/--sigma-max",
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
    lr_warmup: int = 0  # linear warm-up: step k <= lr_warmup uses lr * k / lr_warmup
    accum: int = 1  # mini-batches of batch_size per optimiser step (gradient accumulation)
    eta: float = 0.49
    tol: float = 1e-7
    early_tol: float = 0.0  # the looser tolerance of steps 1..early_steps (0 / early_steps 0: tol throughout)
    early_steps: int = 0
    max_iter: int = 350
    diverge_at: float = 1e10
    solver: str = "plain"
    batch_tasks: bool = False  # stack the N solves of a step into one (mtdeq.train.deq.solve_tasks)
    comp_init: str = "grey"  # completion start P(y): "grey" (PnP-ReG's, op.init) or "fill" (op.fill)
    seed: int = 0
    log_csv: str | None = None
    checkpoint_every: int = 0
    state: str | None = None  # resume state shared by the budgets of one run (None: <out>.ckpt)
    val_dir: str | None = None
    val_task: str | None = None  # "T" or "T1,T2,..." (mean PSNR); None: VAL_TASK_FOR_SET[task_set]
    val_every: int = 100
    val_images: int = 4
    bicubic_a: float = -0.75  # mtdeq.tasks.Protocol of the training observations
    gauss_sr_support: float = 2.0
    sr_init: str = "bilinear"

    @property
    def val_tasks(self) -> tuple[str, ...]:
        """The validation tasks (--val-task, comma-separated; default per task set)."""
        return tuple((self.val_task or VAL_TASK_FOR_SET[self.task_set]).split(","))

    def tol_at(self, step: int) -> float:
        """The fixed-point tolerance of training step ``step`` (1-based): early_tol up to early_steps."""
        return self.early_tol if step <= self.early_steps else self.tol

    @property
    def batch_per_step(self) -> int:
        """Crops per optimiser step: batch_size x accum."""
        return self.batch_size * self.accum

    @property
    def protocol(self):
        """The training observations' mtdeq.tasks.Protocol (random crops: crop rule 'multiple')."""
        from mtdeq.tasks import Protocol

        return Protocol(bicubic_a=self.bicubic_a, gauss_sr_support=self.gauss_sr_support, sr_init=self.sr_init)

    def __post_init__(self):
        from mtdeq.tasks import TASK_SETS, TEST_TASKS

        check_value(self.task_set in TASK_SETS, "--task-set", self.task_set, f"one of {sorted(TASK_SETS)}")
        check_value(self.solver in ("plain", "anderson"), "--solver", self.solver, "'plain' or 'anderson'")
        check_value(self.comp_init in COMP_INITS, "--comp-init", self.comp_init, f"one of {COMP_INITS}")
        check_value(self.n_tasks >= 1, "--n-tasks", self.n_tasks, "an integer >= 1")
        check_value(self.max_iter >= 1, "--max-iter", self.max_iter, "an integer >= 1")
        check_value(self.lr_step >= 0, "--lr-step", self.lr_step, ">= 0 (0: constant learning rate)")
        check_value(self.lr_warmup >= 0, "--lr-warmup", self.lr_warmup, ">= 0 (0: no warm-up)")
        check_value(self.accum >= 1, "--accum", self.accum, "an integer >= 1")
        check_value(self.tol >= 0, "--tol", self.tol, "a tolerance >= 0 (0: run to --max-iter)")
        check_value(self.early_steps >= 0, "--early-steps", self.early_steps, ">= 0 (0: --tol at every step)")
        check_value(self.early_steps == 0 or self.early_tol >= self.tol, "--early-tol", self.early_tol,
                    f"a tolerance >= --tol {self.tol:g} (looser) when --early-steps > 0")
        check_value(self.val_task is None or all(t in TEST_TASKS for t in self.val_tasks), "--val-task", self.val_task,
                    f"one of {list(TEST_TASKS)}")
        check_value(len(self.train_dirs) > 0, "--train-dirs", self.train_dirs, "at least one image folder")
        self.protocol  # noqa: B018 -- validates sr_init
        _check_common(self)


def check_value(ok: bool, key: str, value, expected: str) -> None:
    """Raise ``ValueError("<key>: got <value>, expected <expected>")`` unless ok."""
    if not ok:
        raise ValueError(f"{key}: got {value!r}, expected {expected}")


def _check_common(cfg) -> None:
    for key in ("crop", "batch_size", "val_images"):
        check_value(getattr(cfg, key) >= 1, f"--{key.replace('_', '-')}", getattr(cfg, key), "an integer >= 1")
    for key in ("steps", "checkpoint_every", "val_every"):
        check_value(getattr(cfg, key) >= 0, f"--{key.replace('_', '-')}", getattr(cfg, key), "an integer >= 0")
    check_value(cfg.lr > 0, "--lr", cfg.lr, "a positive learning rate")


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
