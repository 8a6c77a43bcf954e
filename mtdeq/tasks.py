"""The paper's degradation tasks: training sets (Section III-A, III-C) and Table I/II test tasks.

A :class:`Task` is one degradation y = A x + eps, eps ~ N(0, sigma_noise^2 I), with A built by
:func:`mtdeq.physics.build`. :func:`degrade` turns a ground-truth batch into the observation
deterministically from an integer seed, so every method sees identical inputs.

Super-resolution crop: a ground truth whose height or width is not a multiple of the SR factor is
cropped to the largest multiple, keeping the **top-left** corner (rows/columns at the bottom/right
are dropped); :func:`degrade` returns the cropped ground truth, which is also the PSNR reference.

Noise for completion: the observation of a dropped pixel is 0 (y = m . (x + eps)), so the noise only
affects observed pixels and ``op.init(y)`` shows dropped pixels as exactly 0.5.
"""

from __future__ import annotations

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

    def build(self, image_shape: tuple[int, int], *, seed: int | None = None):
        """Operator for images of size ``image_shape`` (H, W; multiples of ``scale`` for SR).

        ``seed`` is the inpainting mask seed, used only when the task does not fix one in
        ``params`` (giving both is an error); other kinds ignore it.
        """
        params = dict(self.params)
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


def degrade(task: Task, x_gt: torch.Tensor, *, seed: int) -> Degraded:
    """y = A x_gt + eps for a ground-truth batch x_gt (B, 3, H, W), deterministic in ``seed``.

    SR tasks first crop x_gt top-left to multiples of the factor. The inpaint mask seed (unless the
    task fixes one) and the noise generator are derived from ``seed``; the noise is drawn in
    float64 on the CPU (B, 3, *output_shape) and cast, so it does not depend on dtype or device.
    For inpaint the noise is masked too (dropped pixels observe 0).
    """
    if not isinstance(x_gt, torch.Tensor) or x_gt.dim() != 4 or x_gt.shape[1] != 3:
        got = tuple(x_gt.shape) if isinstance(x_gt, torch.Tensor) else type(x_gt).__name__
        raise ValueError(f"degrade({task.name!r}): x_gt must have shape (B, 3, H, W), got {got}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"degrade({task.name!r}): seed must be an int >= 0, got {seed!r}")
    x = crop_to_multiple(x_gt, task.scale)
    mask_seed = None
    if task.kind == "inpaint" and "seed" not in dict(task.params):
        mask_seed = _derive_seed(seed, "mask")
    op = task.build(tuple(x.shape[-2:]), seed=mask_seed)
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
