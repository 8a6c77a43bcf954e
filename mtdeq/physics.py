"""Degradation operators y = A x (+ noise) for the paper's tasks (Section III-A).

All operators act on image tensors x of shape (B, 3, H, W), float32 or float64, values ~[0, 1],
and share one small interface::

    op = build(kind, image_shape=(H, W), **params)
    op.A(x)                -> y, shape (B, 3, *op.output_shape)
    op.A_adjoint(y)        -> A^T y, shape (B, 3, H, W)
    op.data_grad(x, y)     -> A^T (A x - y)                         (gradient of 1/2 ||A x - y||^2)
    op.prox_l2(z, y, gamma)-> argmin_x 1/2 ||A x - y||^2 + 1/(2 gamma) ||x - z||^2   (closed form)
    op.init(y)             -> starting image for the solvers, shape (B, 3, H, W)

Kinds and their parameters:

- ``identity``                     A = I (denoising).
- ``inpaint(p_drop, seed)``        A = diag(m), m a Bernoulli keep-mask (P[keep] = 1 - p_drop), one
                                   value per pixel shared by the 3 channels, drawn from
                                   ``torch.Generator().manual_seed(seed)``.
- ``blur(sigma)``                  A x = k * x, k an isotropic Gaussian (std ``sigma`` pixels) sampled
                                   on a centred 25x25 grid and normalised to sum 1; circular boundary.
- ``sr_bicubic(scale, a=-0.75, init="bilinear")``
                                   A x = S (k * x): circular convolution with the antialiased Keys
                                   cubic kernel of parameter ``a`` (support widened by ``scale``,
                                   normalised to sum 1) then decimation S by ``scale``.
                                   ``a = -0.75`` is PnP-ReG's ``bicubic`` kernel
                                   (``cubic_filter_a75``, also OpenCV's and torch's bicubic);
                                   ``a = -0.5`` is PIL ``BICUBIC`` / MATLAB ``imresize`` (PnP-ReG's
                                   ``bicubic_matlab``).
- ``sr_gauss(scale, sigma=0.5, support=2.0, init="bilinear")``
                                   as ``sr_bicubic`` with a sampled Gaussian kernel of std
                                   ``sigma * scale`` HR pixels, cut to the HR pixels at distance
                                   ``|x| < support * scale`` from the LR pixel centre (PnP-ReG:
                                   ``gauss4s_filter``, zero beyond 4 std, i.e. ``support = 2`` for
                                   sigma = 0.5); ``support = 0``: no cut, sampled out to 4 std + 1
                                   pixel (mtdeq's kernel before it followed PnP-ReG).

SR start ``init`` (what ``op.init(y)`` returns, the one place the solvers start from):

- ``"bilinear"``: bilinear resize of y to (H, W) (half-pixel centres, ``align_corners=False``); the
  MTDEQ paper's training initialisation (Section III-A). Default, so training is unchanged.
- ``"bicubic"``: PnP-ReG's test initialisation, ``cv2.resize(clip(y, 0, 1), INTER_CUBIC)``:
  Keys a = -0.75, half-pixel centres, replicated border; computed with
  ``F.interpolate(mode="bicubic", align_corners=False)``, which is the same map (checked against
  OpenCV 4.10 to float32 rounding). y is clipped to [0, 1] first, as PnP-ReG's ``tensor2single``
  does before the resize. :func:`mtdeq.tasks.degrade` selects it for the PnP-ReG test protocol.

Decimation keeps every ``scale``-th sample of the filtered image, and the SR kernels are shifted so
that LR pixel i is centred at HR coordinate i * scale + (scale - 1) / 2 (the pixel-centre
convention of PIL and of PnP-ReG's ``Downsampler``); with ``a = -0.5``, ``sr_bicubic`` reproduces
``PIL.Image.resize(..., BICUBIC)`` away from the borders.

Blur and SR are diagonal in the Fourier domain; the SR proximal operator uses the decimation
identity of Zhao et al. (2016, "Fast single image super-resolution using a new analytical
solution for l2-l2 problems"): for B = S K, B B^T is diagonal in the LR Fourier domain with entries
the block-average of |K_hat|^2, so the prox needs two FFTs and no iterations.

Operators are fixed at construction: calls never modify them (a small per-dtype/device cache of
the cast kernel or mask is the only state that changes).
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

KINDS = ("identity", "inpaint", "blur", "sr_bicubic", "sr_gauss")

BLUR_KERNEL_SIZE = 25
SR_SCALES = (1, 2, 3, 4)

# Parameters each kind accepts, and their defaults (a missing key without default is an error).
_PARAMS: dict[str, dict[str, object]] = {
    "identity": {},
    "inpaint": {"p_drop": None, "seed": None},
    "blur": {"sigma": None},
    "sr_bicubic": {"scale": None, "a": -0.75, "init": "bilinear"},
    "sr_gauss": {"scale": None, "sigma": 0.5, "support": 2.0, "init": "bilinear"},
}

SR_INITS = ("bilinear", "bicubic")
"""Accepted values of the SR operators' ``init`` parameter (see the module docstring)."""


def build(kind: str, image_shape: tuple[int, int], **params):
    """Build the operator ``kind`` for images of spatial size ``image_shape = (H, W)``.

    ``params`` are the kind's parameters (see the module docstring). Unknown kinds, unknown or
    missing parameters and out-of-range values raise ``ValueError`` naming the kind, key and value.
    """
    if kind not in _PARAMS:
        raise ValueError(f"unknown operator kind {kind!r}; expected one of {KINDS}")
    shape = _check_image_shape(kind, image_shape)
    spec = _PARAMS[kind]
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise ValueError(
            f"operator {kind!r}: unknown parameter(s) {unknown}; accepted: {sorted(spec)}")
    values = {}
    for key, default in spec.items():
        if key in params:
            values[key] = params[key]
        elif default is not None:
            values[key] = default
        else:
            raise ValueError(f"operator {kind!r}: missing parameter {key!r}")

    if kind == "identity":
        return Identity(shape)
    if kind == "inpaint":
        p_drop = _check_float(kind, "p_drop", values["p_drop"], low=0.0, high=1.0, high_open=True)
        seed = _check_int(kind, "seed", values["seed"], low=0)
        return Inpaint(shape, p_drop=p_drop, seed=seed)
    if kind == "blur":
        sigma = _check_float(kind, "sigma", values["sigma"], low=0.0, low_open=True)
        radius = BLUR_KERNEL_SIZE // 2
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
        taps = _gaussian(offsets, sigma)
        return ConvDecimate(kind, shape, scale=1, taps=(offsets, taps), params={"sigma": sigma})

    # super-resolution
    scale = _check_int(kind, "scale", values["scale"], low=1)
    if scale not in SR_SCALES:
        raise ValueError(f"operator {kind!r}: parameter 'scale'={scale} not in {SR_SCALES}")
    if shape[0] % scale or shape[1] % scale:
        raise ValueError(
            f"operator {kind!r}: image_shape {shape} is not a multiple of scale {scale} "
            "(crop it first, e.g. mtdeq.tasks.crop_to_multiple)")
    init = values["init"]
    if init not in SR_INITS:
        raise ValueError(f"operator {kind!r}: parameter 'init'={init!r} not in {SR_INITS}")
    # LR pixel i is centred at HR coordinate i*scale + shift; tap at circular offset o weighs the HR
    # pixel i*scale - o, at distance -(o + shift) from that centre.
    shift = (scale - 1) / 2.0
    if kind == "sr_bicubic":
        a = _check_float(kind, "a", values["a"], low=-1.0, high=0.0)
        radius = 2 * scale + 1  # bicubic support is 2 LR pixels = 2*scale HR pixels
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
        taps = _keys_cubic((offsets + shift) / scale, a=a)
        params_out = {"scale": scale, "a": a, "init": init}
    else:
        sigma = _check_float(kind, "sigma", values["sigma"], low=0.0, low_open=True)
        support = _check_float(kind, "support", values["support"], low=0.0)
        if support > 0:
            cut = support * scale  # keep HR pixels strictly closer than this to the LR pixel centre
            radius = math.ceil(cut + shift) + 1
        else:  # no cut: sampled out to 4 std + 1 pixel (mtdeq's kernel before PnP-ReG's protocol)
            cut = math.inf
            radius = math.ceil(4.0 * sigma * scale + shift) + 1
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
        distance = offsets + shift
        taps = torch.where(distance.abs() < cut, _gaussian(distance, sigma * scale),
                           torch.zeros_like(distance))
        params_out = {"scale": scale, "sigma": sigma, "support": support, "init": init}
    keep = taps != 0
    if not bool(keep.any()):
        raise ValueError(f"operator {kind!r}: parameters {params_out} leave an empty kernel")
    taps = taps[keep] / taps[keep].sum()
    return ConvDecimate(kind, shape, scale=scale, taps=(offsets[keep], taps), params=params_out,
                        init=init)


# --------------------------------------------------------------------------------------------
# Operators


class _Operator:
    """What every operator shares: the data-term gradient and the prox's input checks."""

    image_shape: tuple[int, int]
    output_shape: tuple[int, int]

    def data_grad(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A^T (A x - y), the gradient of 1/2 ||A x - y||^2."""
        return self.A_adjoint(self.A(x) - y)

    def _prox_inputs(self, z: torch.Tensor, y: torch.Tensor, gamma):
        """Check prox_l2's z and y; return gamma as a positive float or a tensor like z (_as_gamma)."""
        _check_input(self, z, self.image_shape, "z")
        _check_input(self, y, self.output_shape, "y")
        return _as_gamma(gamma, z)


class Identity(_Operator):
    """A = I (Gaussian denoising). prox: x = (z + gamma y) / (1 + gamma)."""

    kind = "identity"

    def __init__(self, image_shape: tuple[int, int]):
        self.image_shape = image_shape
        self.output_shape = image_shape
        self.params: dict[str, object] = {}

    def A(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x, self.image_shape, "x")
        return x.clone()

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        _check_input(self, y, self.output_shape, "y")
        return y.clone()

    def prox_l2(self, z: torch.Tensor, y: torch.Tensor, gamma) -> torch.Tensor:
        gamma = self._prox_inputs(z, y, gamma)
        return (z + gamma * y) / (1.0 + gamma)

    def init(self, y: torch.Tensor) -> torch.Tensor:
        _check_input(self, y, self.output_shape, "y")
        return y.clone()

    def __repr__(self) -> str:
        return f"Identity(image_shape={self.image_shape})"


class Inpaint(_Operator):
    """A x = m * x with a fixed keep-mask m in {0,1}^(H, W), shared by the channels.

    P[m = 0] = p_drop for each pixel independently; m is drawn from a CPU ``torch.Generator``
    seeded with ``seed``, so it depends only on (image_shape, p_drop, seed).
    prox: x = (m y + z / gamma) / (m + 1 / gamma); init: y + 0.5 (1 - m) (dropped pixels grey).
    """

    kind = "inpaint"

    def __init__(self, image_shape: tuple[int, int], *, p_drop: float, seed: int):
        self.image_shape = image_shape
        self.output_shape = image_shape
        self.params = {"p_drop": p_drop, "seed": seed}
        generator = torch.Generator().manual_seed(seed)
        uniform = torch.rand(image_shape, generator=generator, dtype=torch.float64)
        self._mask = (uniform >= p_drop).to(torch.float64)  # (H, W), 1 = observed
        self._cache: dict[tuple, torch.Tensor] = {}

    @property
    def mask(self) -> torch.Tensor:
        """The keep-mask, float64 (H, W), 1 where the pixel is observed (a copy)."""
        return self._mask.clone()

    def _mask_like(self, x: torch.Tensor) -> torch.Tensor:
        key = (x.dtype, x.device)
        if key not in self._cache:
            self._cache[key] = self._mask.to(dtype=x.dtype, device=x.device)
        return self._cache[key]

    def A(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x, self.image_shape, "x")
        return x * self._mask_like(x)

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        _check_input(self, y, self.output_shape, "y")
        return y * self._mask_like(y)

    def prox_l2(self, z: torch.Tensor, y: torch.Tensor, gamma) -> torch.Tensor:
        gamma = self._prox_inputs(z, y, gamma)
        mask = self._mask_like(z)
        return (gamma * mask * y + z) / (gamma * mask + 1.0)

    def init(self, y: torch.Tensor) -> torch.Tensor:
        _check_input(self, y, self.output_shape, "y")
        mask = self._mask_like(y)
        return y + 0.5 * (1.0 - mask)

    def fill(self, y: torch.Tensor) -> torch.Tensor:
        """A start closer to the image than :meth:`init`: observed pixels kept, dropped ones filled.

        Normalised convolution: a dropped pixel takes (g * (m y)) / (g * m) for a Gaussian g of
        std 1, 2, 4 or 8 pixels, the smallest whose observed weight g * m exceeds 0.05 there
        (circular, as the other operators); grey (0.5) where even std 8 sees no observed pixel.
        """
        _check_input(self, y, self.output_shape, "y")
        mask = self._mask_like(y)  # (H, W), broadcast over batch and channels
        out, todo = y.clone(), (mask == 0).expand_as(y)
        for std in (1.0, 2.0, 4.0, 8.0):
            if not todo.any():
                break
            weight = _circular_gaussian_blur(mask, std)  # once per level, not per image and channel
            est = _circular_gaussian_blur(y * mask, std) / weight.clamp_min(1e-12)
            take = todo & (weight > 0.05)
            out = torch.where(take, est, out)
            todo = todo & ~take
        return torch.where(todo, torch.full_like(out, 0.5), out)

    def __repr__(self) -> str:
        return f"Inpaint(image_shape={self.image_shape}, p_drop={self.params['p_drop']}, " \
               f"seed={self.params['seed']})"


class ConvDecimate(_Operator):
    """A x = S (k * x): circular convolution with a fixed kernel k, then decimation S by ``scale``.

    Used for ``blur`` (scale 1) and for ``sr_bicubic`` / ``sr_gauss``. With K = FFT(k) (HR grid,
    H x W) and S keeping samples (s i, s j):

    - A x       = S IFFT(K . FFT(x))                     output (B, 3, H/s, W/s)
    - A^T y     = IFFT(conj(K) . FFT(S^T y))             S^T = zero-filling upsampling
    - prox_l2   (1/gamma + A^T A) x = A^T y + z / gamma =: r, solved in closed form
        scale 1 : x = IFFT(FFT(r) / (|K|^2 + 1/gamma))
        scale s : x = gamma [r - A^T (1/gamma + S K K^H S^T)^(-1) A r]       (Woodbury)
                  where S K K^H S^T is diagonal in the LR Fourier domain with entries
                  D = blockmean(|K|^2) (mean over the s x s aliased copies; Zhao et al. 2016).
    - init      = y (blur, and SR with scale 1), else the resize of y to (H, W) named by ``init``:
                  "bilinear" (the paper's P in Algorithm 1) or "bicubic" (PnP-ReG's start:
                  clip(y, 0, 1) resized with Keys a = -0.75, half-pixel centres, replicated border).

    ``taps = (offsets, weights)`` is the separable 1-D kernel: k[a, b] = w[a'] w[b'] placed at the
    circular offsets (offsets[a'] mod H, offsets[b'] mod W); the SR kernels already include the
    half-pixel shift of PIL's pixel-centre convention.
    """

    def __init__(self, kind: str, image_shape: tuple[int, int], *, scale: int,
                 taps: tuple[torch.Tensor, torch.Tensor], params: dict[str, object],
                 init: str = "bilinear"):
        if init not in SR_INITS:
            raise ValueError(f"operator {kind!r}: init={init!r} not in {SR_INITS}")
        self.kind = kind
        self.init_mode = init
        self.image_shape = image_shape
        self.scale = scale
        self.output_shape = (image_shape[0] // scale, image_shape[1] // scale)
        self.params = dict(params)
        offsets, weights = taps
        height, width = image_shape
        k_h = torch.zeros(height, dtype=torch.float64).index_add_(
            0, offsets.long() % height, weights)
        k_w = torch.zeros(width, dtype=torch.float64).index_add_(
            0, offsets.long() % width, weights)
        self._kernel = torch.outer(k_h, k_w)  # (H, W), circular, origin at [0, 0]
        self._k_rfft = torch.fft.rfft2(self._kernel)  # (H, W//2+1) complex128
        if scale > 1:
            self._k_fft = torch.fft.fft2(self._kernel)  # (H, W)
            self._block_power = _block_mean(self._k_fft.abs() ** 2, scale)  # (H/s, W/s) real
        self._cache: dict[tuple, torch.Tensor] = {}

    @property
    def kernel(self) -> torch.Tensor:
        """The circular kernel on the HR grid, float64 (H, W), origin at [0, 0] (a copy)."""
        return self._kernel.clone()

    def _const(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """Fixed array ``name`` cast to the (complex) dtype and device matching ``like``."""
        key = (name, like.dtype, like.device)
        if key not in self._cache:
            value = getattr(self, name)
            if value.is_complex():
                dtype = torch.complex64 if like.dtype == torch.float32 else torch.complex128
            else:
                dtype = like.dtype
            self._cache[key] = value.to(dtype=dtype, device=like.device)
        return self._cache[key]

    def _convolve(self, x: torch.Tensor, adjoint: bool = False) -> torch.Tensor:
        k_hat = self._const("_k_rfft", x)
        if adjoint:
            k_hat = k_hat.conj()
        return torch.fft.irfft2(torch.fft.rfft2(x) * k_hat, s=self.image_shape)

    def _upsample_zero(self, y: torch.Tensor) -> torch.Tensor:
        s = self.scale
        up = y.new_zeros(*y.shape[:-2], *self.image_shape)
        up[..., ::s, ::s] = y
        return up

    def A(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x, self.image_shape, "x")
        s = self.scale
        filtered = self._convolve(x)
        return filtered if s == 1 else filtered[..., ::s, ::s].contiguous()

    def A_adjoint(self, y: torch.Tensor) -> torch.Tensor:
        _check_input(self, y, self.output_shape, "y")
        up = y if self.scale == 1 else self._upsample_zero(y)
        return self._convolve(up, adjoint=True)

    def prox_l2(self, z: torch.Tensor, y: torch.Tensor, gamma) -> torch.Tensor:
        gamma = self._prox_inputs(z, y, gamma)
        s = self.scale
        if s == 1:
            k_hat = self._const("_k_rfft", z)
            rhs = k_hat.conj() * torch.fft.rfft2(y) + torch.fft.rfft2(z) / gamma
            return torch.fft.irfft2(rhs / (k_hat.abs() ** 2 + 1.0 / gamma), s=self.image_shape)
        k_hat = self._const("_k_fft", z)
        power = self._const("_block_power", z)
        # FFT(r) with r = A^T y + z / gamma; FFT(S^T y) tiles FFT(y) s x s times.
        y_hat = torch.fft.fft2(y).tile(s, s)
        r_hat = k_hat.conj() * y_hat + torch.fft.fft2(z) / gamma
        # (1/gamma + S K K^H S^T)^(-1) S K r in the LR Fourier domain; FFT(S u) = blockmean(FFT u).
        lr = _block_mean(k_hat * r_hat, s) / (power + 1.0 / gamma)
        x_hat = gamma * (r_hat - k_hat.conj() * lr.tile(s, s))
        return torch.fft.ifft2(x_hat).real.contiguous()

    def init(self, y: torch.Tensor) -> torch.Tensor:
        _check_input(self, y, self.output_shape, "y")
        if self.scale == 1:
            return y.clone()
        if self.init_mode == "bicubic":
            return F.interpolate(y.clamp(0.0, 1.0), size=self.image_shape, mode="bicubic",
                                 align_corners=False)
        return F.interpolate(y, size=self.image_shape, mode="bilinear", align_corners=False)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return f"ConvDecimate(kind={self.kind!r}, image_shape={self.image_shape}, {args})"


# --------------------------------------------------------------------------------------------
# Kernels and helpers


def _keys_cubic(t: torch.Tensor, a: float = -0.75) -> torch.Tensor:
    """Keys' cubic convolution kernel with parameter ``a``, support |t| < 2.

    a = -0.75: PnP-ReG's ``bicubic`` (``cubic_filter_a75``), OpenCV INTER_CUBIC, torch bicubic;
    a = -0.5: PIL BICUBIC, MATLAB ``imresize`` (PnP-ReG's ``bicubic_matlab``).
    """
    t = t.abs()
    near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    far = ((a * t - 5.0 * a) * t + 8.0 * a) * t - 4.0 * a
    return torch.where(t < 1.0, near, torch.where(t < 2.0, far, torch.zeros_like(t)))


def _gaussian(t: torch.Tensor, std: float) -> torch.Tensor:
    """Normalised samples exp(-t^2 / (2 std^2)) / sum."""
    w = torch.exp(-0.5 * (t / std) ** 2)
    return w / w.sum()


def _circular_gaussian_blur(u: torch.Tensor, std: float) -> torch.Tensor:
    """Separable circular convolution of u (..., H, W) with normalised Gaussian taps of std ``std``
    (radius 3 std, at most half the image side)."""
    for dim in (-1, -2):
        n = u.shape[dim]
        radius = max(1, min(int(3 * std), (n - 1) // 2))
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
        taps = _gaussian(offsets, std).to(dtype=u.dtype, device=u.device)
        u = sum(w * torch.roll(u, int(o), dims=dim) for o, w in zip(offsets.tolist(), taps))
    return u


def _block_mean(u: torch.Tensor, s: int) -> torch.Tensor:
    """(..., s*M, s*N) -> (..., M, N): mean of u[k + l M, j + q N] over l, q in 0..s-1."""
    *lead, height, width = u.shape
    blocks = u.reshape(*lead, s, height // s, s, width // s)
    return blocks.mean(dim=(-4, -2))


def _as_gamma(gamma, like: torch.Tensor):
    """gamma as a positive float or a tensor broadcastable to (B, 1, 1, 1) on like's device."""
    if isinstance(gamma, torch.Tensor):
        return gamma.to(dtype=like.dtype, device=like.device)
    gamma = float(gamma)
    if not (gamma > 0.0 and math.isfinite(gamma)):
        raise ValueError(f"prox_l2: gamma must be a positive finite number, got {gamma!r}")
    return gamma


def _check_input(op, x: torch.Tensor, shape: tuple[int, int], name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or tuple(x.shape[-2:]) != shape:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(
            f"operator {op.kind!r}: {name} has shape {got}, expected (B, 3, {shape[0]}, {shape[1]})")


def _check_image_shape(kind: str, image_shape) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in image_shape)
        ok = (height, width) == tuple(image_shape) and height > 0 and width > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"operator {kind!r}: image_shape must be (H, W) with positive ints, got {image_shape!r}")
    return (height, width)


def _check_float(kind: str, key: str, value, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> float:
    bad = isinstance(value, bool) or not isinstance(value, numbers.Real)
    if not bad:
        value = float(value)
        bad = not math.isfinite(value)
        bad = bad or (low is not None and (value <= low if low_open else value < low))
        bad = bad or (high is not None and (value >= high if high_open else value > high))
    if bad:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        interval = f"{'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
        raise ValueError(f"operator {kind!r}: parameter {key!r}={value!r} must be a number in {interval}")
    return value


def _check_int(kind: str, key: str, value, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"operator {kind!r}: parameter {key!r}={value!r} must be an int >= {low}")
    return int(value)


Operator = Identity | Inpaint | ConvDecimate
"""Type of the objects returned by :func:`build`."""

__all__: list[str] = ["build", "KINDS", "SR_SCALES", "SR_INITS", "BLUR_KERNEL_SIZE", "Identity",
                      "Inpaint", "ConvDecimate", "Operator"]
