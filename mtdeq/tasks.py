"""The paper's degradation tasks: training sets (Section III-A, III-C) and Table I/II test tasks.

A :class:`Task` is one degradation y = A x + eps, eps ~ N(0, sigma_noise^2 I), with A built by
:func:`mtdeq.physics.build`. :func:`degrade` turns a ground-truth batch into the observation
deterministically from an integer seed, so every method sees identical inputs.

Crops (``degrade(..., crop=...)``); :func:`degrade` returns the cropped ground truth, which is also
the PSNR reference:

- ``"multiple"`` (default): SR ground truths whose height or width is not a multiple of the SR factor
  are cropped to the largest multiple, keeping the **top-left** corner; other tasks are not cropped.
- ``"pnp-reg"``: the crops of PnP-ReG's test scripts (Fermanian et al. 2022, ref. [8] of the paper),
  see :func:`pnp_reg_crop_box`: completion none, deblurring top-left to a multiple of 8, SR x3
  top-left to a multiple of 3, other SR factors centred to a multiple of 32.

SR start (``degrade(..., init=...)``): ``None`` keeps the operator's default (bilinear resize, the
paper's training initialisation, Section III-A); ``"bicubic"`` is PnP-ReG's test start (see
:mod:`mtdeq.physics`). The PnP-ReG test protocol is ``crop="pnp-reg", init="bicubic"``.

Noise for completion: the observation of a dropped pixel is 0 (y = m . (x + eps)), so the noise only
affects observed pixels and ``op.init(y)`` shows dropped pixels as exactly 0.5.
"""

from __future__ import annotations

import argparse
import dataclasses
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from mtdeq import physics

SIGMA_NOISE_GRID = tuple(round(0.005 * s, 4) for s in range(50))  # Sigma_noise, Section III-A
SR_FACTORS = (1, 2, 3, 4)
BLUR_SIGMAS = (0.4, 0.8, 1.2, 1.6, 2.0, 2.4)
P_DROPS = (0.2, 0.4, 0.5, 0.6, 0.8, 0.9)
SR_GAUSS_SIGMA = 0.5  # PnP-ReG protocol: Gaussian kernel std 0.5 * scale HR pixels


@dataclass(frozen=True)
class Task:
    """One degradation: operator ``kind`` with ``params`` ((key, value) pairs) and AWGN std.

    ``sigma_noise`` is in [0, 1] pixel units. ``label`` is a short human-readable name for tables
    (not part of equality). Inpaint tasks may fix their mask seed with a ``("seed", s)`` param;
    otherwise the seed comes from :meth:`build`'s ``seed`` argument (``degrade`` derives it).
    """

    name: str
    kind: str
    params: tuple[tuple[str, object], ...]
    sigma_noise: float
    label: str = field(default="", compare=False)

    @property
    def scale(self) -> int:
        """Super-resolution factor (1 unless the task is SR)."""
        return int(dict(self.params).get("scale", 1)) if self.kind.startswith("sr_") else 1

    def build(self, image_shape: tuple[int, int], *, seed: int | None = None,
              init: str | None = None):
        """Operator for images of size ``image_shape`` (H, W; multiples of ``scale`` for SR).

        ``seed`` is the inpainting mask seed, used only when the task does not fix one in
        ``params`` (giving both is an error); other kinds ignore it.
        ``init`` is the SR start (``physics.SR_INITS``), used only by SR tasks (other kinds have a
        fixed start and ignore it); ``None`` keeps the task's or the operator's default, and a value
        that differs from one the task fixes in ``params`` is an error.
        """
        params = dict(self.params)
        if init is not None and self.kind.startswith("sr_"):
            if "init" in params and params["init"] != init:
                raise ValueError(
                    f"task {self.name!r} fixes init {params['init']!r}; got init={init!r} as well")
            params["init"] = init
        if self.kind == "inpaint" and seed is not None:
            if "seed" in params:
                raise ValueError(
                    f"task {self.name!r} fixes mask seed {params['seed']}; got seed={seed} as well")
            params["seed"] = seed
        if self.kind == "inpaint" and "seed" not in params:
            raise ValueError(f"task {self.name!r}: inpaint needs a mask seed (params or seed=)")
        return physics.build(self.kind, image_shape, **params)


def _sr_task(scale: int, kernel: str, noise: int) -> Task:
    sigma = (0.0, 0.01)[noise]
    if kernel == "bicubic":
        kind, params, what = "sr_bicubic", (("scale", scale),), "Bicubic"
    else:
        kind, params, what = "sr_gauss", (("scale", scale), ("sigma", SR_GAUSS_SIGMA)), "Gaussian"
    return Task(f"sr{scale}_{kernel}_n{noise}", kind, params, sigma,
                label=f"{what} SR ×{scale}, σ_noise={sigma:.2f}")


TEST_TASKS: dict[str, Task] = {
    t.name: t for t in [
        Task("comp80", "inpaint", (("p_drop", 0.8),), 0.0, label="Completion 80%"),
        Task("comp90", "inpaint", (("p_drop", 0.9),), 0.0, label="Completion 90%"),
        Task("blur1.6", "blur", (("sigma", 1.6),), 0.01, label="σ_blur=1.6"),
        Task("blur2.0", "blur", (("sigma", 2.0),), 0.01, label="σ_blur=2.0"),
        *(_sr_task(scale, kernel, noise)
          for scale in (2, 3) for kernel in ("bicubic", "gauss") for noise in (0, 1)),
    ]
}
"""The Table I and Table II test tasks, in the paper's column order."""

TABLE1_TASKS = ["comp80", "comp90", "blur1.6", "blur2.0"]
TABLE2_TASKS = ["sr2_bicubic_n0", "sr2_bicubic_n1", "sr2_gauss_n0", "sr2_gauss_n1",
                "sr3_bicubic_n0", "sr3_bicubic_n1", "sr3_gauss_n0", "sr3_gauss_n1"]


def crop_to_multiple(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Top-left crop of x (..., H, W) to (..., scale*floor(H/scale), scale*floor(W/scale))."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"crop_to_multiple: scale must be an int >= 1, got {scale!r}")
    height, width = x.shape[-2:]
    h_crop, w_crop = height - height % scale, width - width % scale
    if h_crop == 0 or w_crop == 0:
        raise ValueError(f"crop_to_multiple: image of shape {tuple(x.shape)} is smaller than scale {scale}")
    return x[..., :h_crop, :w_crop]


CROPS = ("multiple", "pnp-reg")
"""Accepted values of :func:`degrade`'s ``crop``."""

PNP_REG_BLUR_MULTIPLE = 8  # deblurring_regularizer.py: util.modcrop(img_H, 8)
PNP_REG_SR_MULTIPLE = 32  # sr_utils2.load_LR_HR_imgs_sr(..., enforse_div32='CROP'), factor != 3


def pnp_reg_crop_box(task: Task, height: int, width: int) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) of PnP-ReG's test crop of a ``height x width`` image.

    As PnP-ReG's test scripts (github.com/rita442/PnP-ReG) do it:

    - completion (``inpaint``) and ``identity``: no crop (``completion_regularizer.py`` uses the
      whole image);
    - deblurring (``blur``): top-left crop to multiples of 8 (``util.modcrop(img_H, 8)``);
    - SR with factor 3: top-left crop to multiples of 3 (``load_LR_HR_imgs_sr``, ``factor == 3``);
    - SR with any other factor: **centred** crop to multiples of 32 (``load_LR_HR_imgs_sr``): the
      box ((W - W') / 2, (H - H') / 2, ...) goes to ``PIL.Image.crop``, which rounds half-integers
      with Python's ``round`` (half to even), so an odd margin d puts round(d / 2) rows/columns
      before the crop.

    Raises ``ValueError`` when the crop would be empty (an image smaller than the multiple).
    """
    if task.kind.startswith("sr_"):
        if task.scale == 3:
            multiple, centred = 3, False
        else:
            multiple, centred = PNP_REG_SR_MULTIPLE, True
    elif task.kind == "blur":
        multiple, centred = PNP_REG_BLUR_MULTIPLE, False
    else:
        return 0, 0, int(height), int(width)
    h_crop, w_crop = height - height % multiple, width - width % multiple
    if h_crop == 0 or w_crop == 0:
        raise ValueError(f"pnp_reg_crop({task.name!r}): image of size {height}x{width} is smaller "
                         f"than the crop multiple {multiple}")
    if not centred:
        return 0, 0, h_crop, w_crop
    # round() of an exact half-integer is Python's half-to-even, as in PIL.Image.crop
    return round((height - h_crop) / 2), round((width - w_crop) / 2), h_crop, w_crop


def crop_truth(task: Task, x: torch.Tensor, crop: str) -> torch.Tensor:
    """Ground truth x (..., H, W) cropped by the rule ``crop`` (CROPS) for ``task`` (a view)."""
    if crop == "multiple":
        return crop_to_multiple(x, task.scale)
    if crop == "pnp-reg":
        return pnp_reg_crop(task, x)
    raise ValueError(f"task {task.name!r}: crop must be one of {CROPS}, got {crop!r}")


def pnp_reg_crop(task: Task, x: torch.Tensor) -> torch.Tensor:
    """PnP-ReG's test crop of x (..., H, W) for ``task`` (a view; see :func:`pnp_reg_crop_box`)."""
    top, left, h_crop, w_crop = pnp_reg_crop_box(task, *x.shape[-2:])
    return x[..., top:top + h_crop, left:left + w_crop]


@dataclass(frozen=True)
class Degraded:
    """A degraded observation: operator ``op``, observation ``y`` and (cropped) ground truth."""

    op: object
    y: torch.Tensor
    x_gt: torch.Tensor


def _derive_seed(seed: int, stream: str) -> int:
    """Independent 63-bit seed for ``stream`` ("mask", "noise") from the user seed."""
    state = np.random.SeedSequence([seed, zlib.crc32(stream.encode())]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


def degrade(task: Task, x_gt: torch.Tensor, *, seed: int, crop: str = "multiple",
            init: str | None = None) -> Degraded:
    """y = A x_gt + eps for a ground-truth batch x_gt (B, 3, H, W), deterministic in ``seed``.

    x_gt is first cropped: ``crop="multiple"`` (default) crops SR ground truths top-left to
    multiples of the factor and leaves the others whole; ``crop="pnp-reg"`` applies PnP-ReG's test
    crop (:func:`pnp_reg_crop`). ``init`` selects the SR operator's start (``"bilinear"``,
    ``"bicubic"``; ``None``: the task's / operator's default), see :meth:`Task.build`; non-SR
    tasks ignore it. The inpaint mask seed (unless the
    task fixes one) and the noise generator are derived from ``seed``; the noise is drawn in
    float64 on the CPU (B, 3, *output_shape) and cast, so it does not depend on dtype or device.
    For inpaint the noise is masked too (dropped pixels observe 0).
    """
    if not isinstance(x_gt, torch.Tensor) or x_gt.dim() != 4 or x_gt.shape[1] != 3:
        got = tuple(x_gt.shape) if isinstance(x_gt, torch.Tensor) else type(x_gt).__name__
        raise ValueError(f"degrade({task.name!r}): x_gt must have shape (B, 3, H, W), got {got}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"degrade({task.name!r}): seed must be an int >= 0, got {seed!r}")
    x = crop_truth(task, x_gt, crop)
    mask_seed = None
    if task.kind == "inpaint" and "seed" not in dict(task.params):
        mask_seed = _derive_seed(seed, "mask")
    op = task.build(tuple(x.shape[-2:]), seed=mask_seed, init=init)
    y = op.A(x)
    if task.sigma_noise > 0:
        generator = torch.Generator().manual_seed(_derive_seed(seed, "noise"))
        noise = torch.randn(y.shape, generator=generator, dtype=torch.float64)
        noise = task.sigma_noise * noise.to(dtype=y.dtype, device=y.device)
        y = y + (op.A(noise) if task.kind == "inpaint" else noise)
    return Degraded(op=op, y=y, x_gt=x)


@dataclass(frozen=True)
class TaskSet:
    """A training set A x Sigma (Algorithm 1): degradations (kind, params) and noise levels.

    :meth:`sample` draws a degradation and a noise level uniformly and independently.
    """

    name: str
    degradations: tuple[tuple[str, tuple[tuple[str, object], ...]], ...]
    sigma_noise: tuple[float, ...]

    def sample(self, generator: torch.Generator) -> Task:
        """A random task (incl. sigma_noise); inpaint tasks get a mask seed drawn from generator."""
        i = int(torch.randint(len(self.degradations), (1,), generator=generator))
        j = int(torch.randint(len(self.sigma_noise), (1,), generator=generator))
        kind, params = self.degradations[i]
        sigma = self.sigma_noise[j]
        if kind == "inpaint":
            mask_seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
            params = params + (("seed", mask_seed),)
        return Task(_train_name(kind, params, sigma), kind, params, sigma,
                    label=_train_name(kind, params, sigma))


def _train_name(kind: str, params: tuple, sigma: float) -> str:
    p = dict(params)
    if kind == "inpaint":
        what = f"inpaint{p['p_drop']}"
    elif kind == "blur":
        what = f"blur{p['sigma']}"
    elif kind.startswith("sr_"):
        what = f"{kind}_x{p['scale']}"
    else:
        what = kind
    return f"{what}_n{sigma:.3f}"


TASK_SETS: dict[str, TaskSet] = {
    "mtdeq": TaskSet(
        "mtdeq",
        tuple([("sr_bicubic", (("scale", s),)) for s in SR_FACTORS]
              + [("blur", (("sigma", s),)) for s in BLUR_SIGMAS]
              + [("inpaint", (("p_drop", p),)) for p in P_DROPS]),
        SIGMA_NOISE_GRID,
    ),
    "st_comp": TaskSet("st_comp", (("inpaint", (("p_drop", 0.9),)),), (0.0,)),
    "st_sr": TaskSet("st_sr", (("sr_bicubic", (("scale", 2),)),), (0.01,)),
}
"""Training task sets: the MTDEQ set (Section III-A) and the single-task ST Comp / ST SR (III-C)."""


# --------------------------------------------------------------------------- protocol
@dataclass(frozen=True)
class Protocol:
    """How a task's observation is made, beyond the task itself (config section ``protocol``).

    ``bicubic_a``: Keys parameter of ``sr_bicubic`` (-0.75 PnP-ReG's ``bicubic``; -0.5 PIL/MATLAB);
    ``gauss_sr_support``: cut of the Gaussian SR kernel, |x| < support * scale (2 = PnP-ReG's;
    0 = no cut); ``sr_init``: the SR solvers' start (``physics.SR_INITS``); ``crop``: the ground
    truth's crop before degrading (``CROPS``: "pnp-reg" = PnP-ReG's test crops, "multiple" = top-left
    to a multiple of the SR factor).  TEST_PROTOCOL is PnP-ReG's test protocol, TRAIN_PROTOCOL the
    MTDEQ paper's training (bilinear SR start, Section III-A; random crops need no crop rule).
    """

    bicubic_a: float = -0.75
    gauss_sr_support: float = 2.0
    sr_init: str = "bilinear"
    crop: str = "multiple"

    def __post_init__(self):
        if self.sr_init not in physics.SR_INITS:
            raise ValueError(f"protocol sr_init: got {self.sr_init!r}, expected one of {physics.SR_INITS}")
        if self.crop not in CROPS:
            raise ValueError(f"protocol crop: got {self.crop!r}, expected one of {CROPS}")

    def task(self, task: Task) -> Task:
        """``task`` with this protocol's kernel parameter added (a task that fixes it keeps its own)."""
        extra = {"sr_bicubic": ("a", self.bicubic_a), "sr_gauss": ("support", self.gauss_sr_support)}.get(task.kind)
        if extra is None or extra[0] in dict(task.params):
            return task
        return dataclasses.replace(task, params=(*task.params, extra))

    def crop_truth(self, task: Task, x: torch.Tensor) -> torch.Tensor:
        """The ground truth x (..., H, W) cropped as :meth:`degrade` crops it (a view)."""
        return crop_truth(task, x, self.crop)

    def degrade(self, task: Task, x_gt: torch.Tensor, *, seed: int) -> Degraded:
        """:func:`degrade` under this protocol."""
        return degrade(self.task(task), x_gt, seed=seed, crop=self.crop, init=self.sr_init)


TEST_PROTOCOL = Protocol(sr_init="bicubic", crop="pnp-reg")
TRAIN_PROTOCOL = Protocol()


def add_protocol_args(p: argparse.ArgumentParser, *, test: bool) -> None:
    """The protocol options of a stage (``test``: tune/evaluate/figure, else training)."""
    d = TEST_PROTOCOL if test else TRAIN_PROTOCOL
    p.add_argument("--bicubic-a", type=float, default=d.bicubic_a,
                   help=f"Keys parameter of the bicubic SR kernel (default {d.bicubic_a}: PnP-ReG's; -0.5: PIL/MATLAB)")
    p.add_argument("--gauss-sr-support", type=float, default=d.gauss_sr_support,
                   help="Gaussian SR kernel cut |x| < support*scale (default 2: PnP-ReG's; 0: no cut)")
    p.add_argument("--sr-init", choices=physics.SR_INITS, default=d.sr_init,
                   help=f"SR start of the solvers (default {d.sr_init})")
    if test:
        p.add_argument("--test-crop", choices=CROPS, default=d.crop,
                       help=f"ground-truth crop before degrading (default {d.crop}: PnP-ReG's per-task crops)")


def protocol_from_args(args: argparse.Namespace) -> Protocol:
    """The Protocol of parsed ``add_protocol_args`` options (training: crop 'multiple')."""
    return Protocol(bicubic_a=args.bicubic_a, gauss_sr_support=args.gauss_sr_support, sr_init=args.sr_init,
                    crop=getattr(args, "test_crop", TRAIN_PROTOCOL.crop))
