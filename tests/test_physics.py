"""Property tests for mtdeq.physics: adjointness, closed-form prox, FFT blur, SR kernels (PIL
bicubic, Keys a = -0.75 and the cut Gaussian of PnP-ReG), init."""

import math
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mtdeq import physics

# (kind, params, image_shape): every kind at odd and even sizes; SR at multiples of the scale,
# including odd LR sizes (e.g. 18x26 -> 9x13).
CASES = [
    ("identity", {}, (15, 17)),
    ("identity", {}, (24, 24)),
    ("inpaint", {"p_drop": 0.5, "seed": 3}, (15, 17)),
    ("inpaint", {"p_drop": 0.9, "seed": 0}, (24, 24)),
    ("blur", {"sigma": 1.6}, (15, 17)),
    ("blur", {"sigma": 0.4}, (24, 24)),
    ("blur", {"sigma": 2.4}, (31, 28)),
    ("sr_bicubic", {"scale": 1}, (15, 17)),
    ("sr_bicubic", {"scale": 2}, (18, 26)),
    ("sr_bicubic", {"scale": 2}, (24, 24)),
    ("sr_bicubic", {"scale": 3}, (21, 27)),
    ("sr_bicubic", {"scale": 4}, (20, 28)),
    ("sr_bicubic", {"scale": 2, "a": -0.5, "init": "bicubic"}, (18, 26)),
    ("sr_bicubic", {"scale": 3, "init": "bicubic"}, (21, 27)),
    ("sr_gauss", {"scale": 1, "sigma": 0.5}, (15, 17)),
    ("sr_gauss", {"scale": 2}, (18, 24)),
    ("sr_gauss", {"scale": 3, "sigma": 0.5}, (21, 27)),
    ("sr_gauss", {"scale": 4, "sigma": 0.7}, (24, 20)),
    ("sr_gauss", {"scale": 2, "support": 3.5, "init": "bicubic"}, (18, 24)),
]
IDS = [f"{k}-{'-'.join(f'{a}{b}' for a, b in p.items())}-{h}x{w}" for k, p, (h, w) in CASES]


def _rand(shape, seed, dtype=torch.float64):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _inner(a, b):
    return (a * b).sum(dim=(1, 2, 3))


def _cg(apply, rhs, iters=500, tol=1e-14):
    """Batched conjugate gradient for an SPD operator acting per image (B, 3, H, W)."""
    x = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rr = _inner(r, r)
    for _ in range(iters):
        ap = apply(p)
        alpha = rr / _inner(p, ap)
        x = x + alpha.view(-1, 1, 1, 1) * p
        r = r - alpha.view(-1, 1, 1, 1) * ap
        rr_new = _inner(r, r)
        if bool((rr_new.sqrt() <= tol * _inner(rhs, rhs).sqrt()).all()):
            break
        p = r + (rr_new / rr).view(-1, 1, 1, 1) * p
        rr = rr_new
    return x


@pytest.mark.parametrize("kind,params,shape", CASES, ids=IDS)
def test_adjointness(kind, params, shape):
    op = physics.build(kind, shape, **params)
    x = _rand((2, 3, *shape), 0)
    y = _rand((2, 3, *op.output_shape), 1)
    ax = op.A(x)
    aty = op.A_adjoint(y)
    assert ax.shape == y.shape and aty.shape == x.shape
    lhs, rhs = _inner(ax, y), _inner(x, aty)
    assert torch.allclose(lhs, rhs, rtol=1e-6, atol=0), (lhs, rhs)
    # data_grad is A^T (A x - y)
    assert torch.allclose(op.data_grad(x, y), op.A_adjoint(op.A(x) - y), atol=1e-12)


@pytest.mark.parametrize("kind,params,shape", CASES, ids=IDS)
def test_prox_l2_optimality_and_cg(kind, params, shape):
    op = physics.build(kind, shape, **params)
    z = _rand((2, 3, *shape), 2)
    y = _rand((2, 3, *op.output_shape), 3)
    gamma = torch.tensor([0.05, 3.0], dtype=torch.float64).view(2, 1, 1, 1)
    x = op.prox_l2(z, y, gamma)
    assert x.shape == z.shape and x.dtype == torch.float64
    # optimality: A^T (A x - y) + (x - z) / gamma = 0
    residual = op.data_grad(x, y) + (x - z) / gamma
    scale = (op.A_adjoint(y).abs() + (z / gamma).abs()).amax()
    assert residual.abs().max() / scale < 1e-6
    # agreement with an iterative solve of (A^T A + I/gamma) x = A^T y + z/gamma
    x_cg = _cg(lambda v: op.A_adjoint(op.A(v)) + v / gamma, op.A_adjoint(y) + z / gamma)
    assert (x - x_cg).abs().max() / x_cg.abs().max() < 1e-6
    # a python float gamma gives the same as a constant tensor
    x_float = op.prox_l2(z, y, 0.05)
    assert torch.allclose(x_float[0], x[0], atol=1e-12)


@pytest.mark.parametrize("kind,params,shape", CASES[::3], ids=IDS[::3])
def test_float32_and_not_mutated(kind, params, shape):
    op = physics.build(kind, shape, **params)
    x64 = _rand((1, 3, *shape), 4)
    x32 = x64.float()
    y64 = op.A(x64)
    y32 = op.A(x32)
    assert y32.dtype == torch.float32 and y64.dtype == torch.float64
    assert torch.allclose(y32.double(), y64, atol=1e-5)
    assert op.A_adjoint(y32).dtype == torch.float32
    assert op.prox_l2(x32, y32, 0.5).dtype == torch.float32
    assert op.init(y32).dtype == torch.float32
    assert torch.equal(op.A(x64), y64)  # repeated calls are identical
    assert torch.equal(x32, x64.float())  # inputs untouched


def _circular_conv_direct(x, kernel2d):
    """(k * x)[n] = sum_t k[t] x[n - t] with circular boundary, kernel centred at its middle."""
    r = kernel2d.shape[-1] // 2
    padded = F.pad(x, (r, r, r, r), mode="circular")
    weight = kernel2d.flip(-1, -2).expand(x.shape[1], 1, *kernel2d.shape)
    return F.conv2d(padded, weight, groups=x.shape[1])


@pytest.mark.parametrize("shape", [(15, 17), (24, 24), (33, 40)])
@pytest.mark.parametrize("sigma", [0.4, 1.6, 2.4])
def test_fft_blur_equals_direct_circular_convolution(shape, sigma):
    op = physics.build("blur", shape, sigma=sigma)
    t = torch.arange(-12, 13, dtype=torch.float64)
    g = torch.exp(-t**2 / (2 * sigma**2))
    kernel = torch.outer(g, g)
    kernel = kernel / kernel.sum()
    x = _rand((2, 3, *shape), 5)
    assert torch.allclose(op.A(x), _circular_conv_direct(x, kernel), atol=1e-12)


def test_blur_does_not_shift():
    op = physics.build("blur", (64, 60), sigma=2.0)
    x = torch.zeros(1, 3, 64, 60, dtype=torch.float64)
    x[..., 31, 27] = 1.0
    y = op.A(x)[0, 0]
    rows, cols = torch.meshgrid(torch.arange(64.0, dtype=torch.float64),
                                torch.arange(60.0, dtype=torch.float64), indexing="ij")
    assert abs(float((y * rows).sum()) - 31) < 1e-9 and abs(float((y * cols).sum()) - 27) < 1e-9
    assert abs(float(y.sum()) - 1) < 1e-12
    assert torch.allclose(y, y.flip(0).roll(2 * 31 - 63, 0), atol=1e-15)  # symmetric about row 31


def _pil_bicubic(img2d: np.ndarray, scale: int) -> np.ndarray:
    im = Image.fromarray(img2d.astype(np.float32))
    assert im.mode == "F"
    h, w = img2d.shape
    return np.asarray(im.resize((w // scale, h // scale), Image.BICUBIC), dtype=np.float64)


@pytest.mark.parametrize("scale,shape", [(2, (40, 46)), (2, (48, 48)), (3, (45, 51)), (3, (48, 60))])
def test_sr_bicubic_matches_pil(scale, shape):
    x = _rand((1, 3, *shape), 6)
    op = physics.build("sr_bicubic", shape, scale=scale, a=-0.5)
    y = op.A(x)
    b = 4  # drop 4 LR (= 4*scale HR) pixels each side: PIL renormalises at borders, we wrap
    for c in range(3):
        ref = _pil_bicubic(x[0, c].numpy(), scale)
        assert ref.shape == y.shape[-2:]
        diff = np.abs(y[0, c].numpy() - ref)[b:-b, b:-b]
        assert diff.max() < 1e-4, diff.max()


def test_sr_bicubic_scale1_is_identity_and_gauss_kernel_width():
    x = _rand((1, 3, 15, 17), 7)
    op = physics.build("sr_bicubic", (15, 17), scale=1)
    assert torch.allclose(op.A(x), x, atol=1e-12)
    # std = sigma*scale >= 1 HR pixel (a sampled Gaussian of std 0.5 has a visibly smaller variance)
    # support = 6 LR pixels: the Gaussian tails (>= 6 std) are negligible; the default cut
    # (support = 2, PnP-ReG) is tested in test_sr_gauss_kernel_is_pnp_reg_cut_gaussian
    for scale, sigma in [(1, 1.0), (2, 0.5), (3, 0.5), (4, 0.7)]:
        n = 16 * scale
        k = physics.build("sr_gauss", (n, n), scale=scale, sigma=sigma, support=6.0).kernel
        # LR pixel 0 is centred at HR coordinate (scale - 1) / 2; the kernel's second moment about
        # that centre is the variance (sigma * scale)^2 per axis.
        t = torch.arange(n, dtype=torch.float64)
        t = torch.where(t > n // 2, t - n, t)  # circular offsets
        marg = k.sum(dim=1)
        mean = float((marg * -t).sum())
        var = float((marg * (-t - mean) ** 2).sum())
        assert abs(mean - (scale - 1) / 2) < 1e-4
        assert abs(var - (sigma * scale) ** 2) < 1e-3 * (sigma * scale) ** 2


@pytest.mark.parametrize("kind,params,shape", CASES, ids=IDS)
def test_init_shapes(kind, params, shape):
    op = physics.build(kind, shape, **params)
    y = _rand((2, 3, *op.output_shape), 8)
    x0 = op.init(y)
    assert x0.shape == (2, 3, *shape)
    assert op.output_shape == tuple(op.A(x0).shape[-2:])
    assert op.kind == kind and op.image_shape == shape


def test_init_values():
    y = _rand((1, 3, 8, 10), 9)
    sr = physics.build("sr_bicubic", (16, 20), scale=2)  # default init: bilinear (paper, III-A)
    expect = F.interpolate(y, size=(16, 20), mode="bilinear", align_corners=False)
    assert torch.equal(sr.init(y), expect)
    assert sr.params["init"] == "bilinear"
    blur = physics.build("blur", (8, 10), sigma=1.0)
    assert torch.equal(blur.init(y), y)
    inp = physics.build("inpaint", (8, 10), p_drop=0.5, seed=1)
    yy = inp.A(y)
    x0 = inp.init(yy)
    mask = inp.mask.bool()
    assert torch.equal(x0[..., mask], y[..., mask])
    assert torch.all(x0[..., ~mask] == 0.5)


def test_inpaint_mask_determinism_and_rate():
    a = physics.build("inpaint", (64, 80), p_drop=0.8, seed=11)
    b = physics.build("inpaint", (64, 80), p_drop=0.8, seed=11)
    c = physics.build("inpaint", (64, 80), p_drop=0.8, seed=12)
    assert torch.equal(a.mask, b.mask)
    assert not torch.equal(a.mask, c.mask)
    for p_drop in (0.2, 0.5, 0.9):
        m = physics.build("inpaint", (128, 128), p_drop=p_drop, seed=0).mask
        assert abs(float(1 - m.mean()) - p_drop) < 0.02
    # one mask per pixel, shared by the three channels
    ax = a.A(torch.ones(2, 3, 64, 80, dtype=torch.float64))
    assert torch.equal(ax[:, 0], ax[:, 1]) and torch.equal(ax[:, 0], ax[:, 2])
    assert torch.equal(ax[0, 0], a.mask)


@pytest.mark.parametrize("kind,shape,params,match", [
    ("motion", (8, 8), {}, "motion"),
    ("blur", (8, 8), {}, "sigma"),
    ("blur", (8, 8), {"sigma": -1.0}, "sigma"),
    ("blur", (8, 8), {"sigma": 1.0, "size": 5}, "size"),
    ("inpaint", (8, 8), {"p_drop": 0.5}, "seed"),
    ("inpaint", (8, 8), {"p_drop": 1.5, "seed": 0}, "p_drop"),
    ("inpaint", (8, 8), {"p_drop": 0.5, "seed": -2}, "seed"),
    ("sr_bicubic", (8, 8), {"scale": 5}, "scale"),
    ("sr_bicubic", (8, 8), {"scale": 2.0}, "scale"),
    ("sr_bicubic", (9, 8), {"scale": 2}, r"\(9, 8\)"),
    ("sr_gauss", (9, 9), {"scale": 3, "sigma": 0.0}, "sigma"),
    ("identity", (0, 8), {}, "image_shape"),
    ("identity", (8,), {}, "image_shape"),
])
def test_bad_build_arguments(kind, shape, params, match):
    with pytest.raises(ValueError, match=match):
        physics.build(kind, shape, **params)


def test_bad_call_arguments():
    op = physics.build("sr_bicubic", (12, 12), scale=2)
    with pytest.raises(ValueError, match=r"\(1, 3, 10, 12\)"):
        op.A(torch.zeros(1, 3, 10, 12))
    with pytest.raises(ValueError, match="y has shape"):
        op.A_adjoint(torch.zeros(1, 3, 12, 12))
    with pytest.raises(ValueError, match="gamma"):
        op.prox_l2(torch.zeros(1, 3, 12, 12), torch.zeros(1, 3, 6, 6), 0.0)


# ------------------------------------------------------------------------ PnP-ReG's SR kernels
def _sr_direct(img: np.ndarray, scale: int, weight) -> np.ndarray:
    """y[i, j] = sum_{m, n} w(m - c_i) w(n - c_j) img[m mod H, n mod W], c_i = i*scale + (scale-1)/2.

    ``weight(d)`` gives the (unnormalised) 1-D weight of an HR pixel at signed distance d from the
    LR pixel centre; the weights are normalised to sum 1 over the HR pixels they cover. Plain
    numpy, one LR pixel at a time (the definition, not an FFT).
    """
    height, width = img.shape
    centre0 = (scale - 1) / 2.0
    span = np.arange(-4 * scale - 2, 4 * scale + 3)  # HR offsets around the LR pixel's first pixel
    w = np.array([weight(float(m) - centre0) for m in span], dtype=np.float64)
    keep = w != 0
    span, w = span[keep], w[keep] / w[keep].sum()
    out = np.zeros((height // scale, width // scale))
    for i in range(height // scale):
        rows = (i * scale + span) % height
        for j in range(width // scale):
            cols = (j * scale + span) % width
            out[i, j] = w @ img[np.ix_(rows, cols)] @ w
    return out


def _keys(t: float, a: float) -> float:
    """Keys (1981) cubic convolution kernel, written from the formula."""
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


@pytest.mark.parametrize("scale,shape", [(2, (18, 26)), (3, (21, 27)), (4, (20, 28))])
def test_sr_bicubic_default_is_keys_a075_antialiased(scale, shape):
    """Default sr_bicubic = PnP-ReG's ``bicubic``: Keys a = -0.75 stretched by the factor
    (support 4*scale HR pixels), normalised, circular boundary, stride scale."""
    x = _rand((1, 3, *shape), 12)
    op = physics.build("sr_bicubic", shape, scale=scale)
    assert op.params["a"] == -0.75
    y = op.A(x)
    for c in range(3):
        ref = _sr_direct(x[0, c].numpy(), scale, lambda d: _keys(d / scale, -0.75))
        assert np.abs(y[0, c].numpy() - ref).max() < 1e-5
    # the a = -0.5 kernel is a different operator (the test above is not vacuous)
    other = physics.build("sr_bicubic", shape, scale=scale, a=-0.5).A(x)
    assert (other - y).abs().max() > 1e-3


@pytest.mark.parametrize("scale,shape", [(1, (15, 17)), (2, (18, 26)), (3, (21, 27)), (4, (20, 28))])
def test_sr_gauss_kernel_is_pnp_reg_cut_gaussian(scale, shape):
    """Default sr_gauss = PnP-ReG's ``gauss`` (gauss4s_filter, sigma 0.5): std 0.5*scale HR pixels,
    HR pixels strictly closer than 2*scale to the LR pixel centre, normalised."""
    x = _rand((1, 3, *shape), 13)
    op = physics.build("sr_gauss", shape, scale=scale)
    assert op.params["support"] == 2.0 and op.params["sigma"] == 0.5
    std = 0.5 * scale

    def weight(d):
        return np.exp(-0.5 * (d / std) ** 2) if abs(d) < 2 * scale else 0.0

    y = op.A(x)
    for c in range(3):
        ref = _sr_direct(x[0, c].numpy(), scale, weight)
        assert np.abs(y[0, c].numpy() - ref).max() < 1e-12
    # taps per axis as in PnP-ReG's gen_dwn_kernel1D: x2 -> 8, x3 -> 11, x4 -> 16 (scale 1 -> 3)
    taps = int((op.kernel.sum(dim=0) != 0).sum())
    assert taps == {1: 3, 2: 8, 3: 11, 4: 16}[scale]
    # a wider support keeps more of the tails and changes the operator
    wide = physics.build("sr_gauss", shape, scale=scale, support=3.0)
    assert int((wide.kernel.sum(dim=0) != 0).sum()) > taps
    assert (wide.A(x) - y).abs().max() > 1e-6


def _cv2_cubic_resize(img: np.ndarray, scale: int) -> np.ndarray:
    """cv2.resize(img, INTER_CUBIC) upsampling, written from OpenCV's definition: destination pixel
    d samples source coordinate (d + 0.5) / scale - 0.5 with Keys a = -0.75 on the 4 nearest
    source pixels, indices clamped to the image (replicated border)."""
    def axis_matrix(n_in):
        mat = np.zeros((n_in * scale, n_in))
        for d in range(n_in * scale):
            src = (d + 0.5) / scale - 0.5
            base = int(np.floor(src))
            for k in range(-1, 3):
                mat[d, min(max(base + k, 0), n_in - 1)] += _keys(src - (base + k), -0.75)
        return mat

    rows, cols = axis_matrix(img.shape[0]), axis_matrix(img.shape[1])
    return rows @ img @ cols.T


@pytest.mark.parametrize("kind", ["sr_bicubic", "sr_gauss"])
@pytest.mark.parametrize("scale,shape", [(2, (18, 26)), (3, (21, 27))])
def test_sr_bicubic_init_is_pnp_reg_upsampling(kind, scale, shape):
    """init="bicubic": PnP-ReG's start, cv2 INTER_CUBIC upsampling of clip(y, 0, 1)."""
    op = physics.build(kind, shape, scale=scale, init="bicubic")
    y = _rand((1, 3, *op.output_shape), 14) * 1.2 - 0.1  # some values outside [0, 1]
    x0 = op.init(y)
    clipped = y.clamp(0, 1)
    for c in range(3):
        ref = _cv2_cubic_resize(clipped[0, c].numpy(), scale)
        assert np.abs(x0[0, c].numpy() - ref).max() < 1e-12
    assert not torch.allclose(x0, physics.build(kind, shape, scale=scale).init(y))  # != bilinear
    assert op.params["init"] == "bicubic"


def test_sr_bicubic_init_matches_opencv_if_installed():
    cv2 = pytest.importorskip("cv2")
    op = physics.build("sr_bicubic", (26, 34), scale=2, init="bicubic")
    y = _rand((1, 3, 13, 17), 15)
    ref = cv2.resize(y[0].permute(1, 2, 0).numpy().astype(np.float32), (34, 26),
                     interpolation=cv2.INTER_CUBIC)
    assert np.abs(op.init(y)[0].permute(1, 2, 0).numpy() - ref).max() < 1e-5


@pytest.mark.parametrize("kind,params,match", [
    ("sr_bicubic", {"scale": 2, "a": -1.5}, "'a'"),
    ("sr_bicubic", {"scale": 2, "a": 0.5}, "'a'"),
    ("sr_bicubic", {"scale": 2, "init": "nearest"}, "init"),
    ("sr_gauss", {"scale": 2, "support": -1.0}, "support"),
    ("sr_gauss", {"scale": 2, "support": 0.2}, "empty kernel"),
    ("sr_gauss", {"scale": 2, "init": None}, "init"),
    ("blur", {"sigma": 1.0, "init": "bicubic"}, "init"),
])
def test_bad_sr_parameters(kind, params, match):
    with pytest.raises(ValueError, match=match):
        physics.build(kind, (12, 12), **params)


@pytest.mark.parametrize("scale", [2, 3])
def test_gauss_sr_support_zero_is_the_uncut_kernel(scale):
    """support = 0: the Gaussian sampled out to 4 std + 1 pixel, nothing cut (the pre-PnP-ReG kernel)."""
    shape = (12 * scale, 12 * scale)
    op = physics.build("sr_gauss", shape, scale=scale, support=0.0)
    std, shift = 0.5 * scale, (scale - 1) / 2
    radius = int(np.ceil(4 * std + shift)) + 1
    offsets = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 * ((offsets + shift) / std) ** 2)
    w /= w.sum()
    k1 = np.zeros(shape[0])
    np.add.at(k1, offsets % shape[0], w)
    np.testing.assert_allclose(op.kernel.numpy(), np.outer(k1, k1), atol=1e-12)
    cut = physics.build("sr_gauss", shape, scale=scale).kernel.numpy()
    assert np.count_nonzero(cut) < np.count_nonzero(op.kernel.numpy())  # support 2 cuts taps


def test_inpaint_fill_keeps_observed_pixels_and_starts_closer_on_a_smooth_image():
    h = w = 32
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    x = (0.5 + 0.3 * torch.sin(2 * math.pi * xx / 32) * torch.cos(2 * math.pi * yy / 16)).expand(1, 3, h, w).clone()
    op = physics.build("inpaint", (h, w), p_drop=0.7, seed=3)
    y = op.A(x)
    z = op.fill(y)
    kept = op.mask.bool()
    assert torch.equal(z[..., kept], y[..., kept])
    assert (z - x).abs().mean() < 0.5 * (op.init(y) - x).abs().mean()  # measured 0.022 vs 0.088
    # nothing observed: grey, as init
    empty = physics.build("inpaint", (8, 8), p_drop=0.999999, seed=0)
    assert torch.equal(empty.fill(empty.A(x[..., :8, :8])), torch.full((1, 3, 8, 8), 0.5, dtype=torch.float64))


@pytest.mark.usefixtures("one_thread")
def test_fb_fixed_point_of_a_contraction_does_not_depend_on_the_completion_start():
    """With a Gaussian blur for "denoiser" the FB map is a contraction, so the plain iteration reaches its
    one fixed point from both completion starts (init: grey holes; fill).  That holds for any contraction:
    the test fails only if a start were not a finite image of the problem's shape or the iteration did
    not converge from it.  It shows nothing about a trained denoiser's FB map (with the pretrained FFDNet
    the grey and filled solves do not end at one point) nor that the start matters (next test)."""
    from mtdeq.solvers import fb_map, fixed_point

    h = w = 32
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    op = physics.build("inpaint", (h, w), p_drop=0.7, seed=3)
    y = op.A(x)
    f = fb_map(op, y, lambda z, sigma: physics._circular_gaussian_blur(z, 1.0), eta=0.49, sigma_denoise=0.0)
    ends = [fixed_point(f, z0, tol=1e-16, max_iter=5000, method="plain") for z0 in (op.init(y), op.fill(y))]
    assert all(info.status == ["converged"] for _, info in ends)
    torch.testing.assert_close(ends[0][0], ends[1][0], rtol=0, atol=1e-5)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("seed", [0, 3])
def test_filled_start_needs_fewer_fb_iterations_and_is_closer_under_a_cap_on_a_slow_completion(seed):
    """What the start changes (train-deq --comp-init): on 90 % completion of a smooth 32 x 32 image with
    a narrow blur (std 0.5) for "denoiser", a slow contraction (about 400-600 plain iterations to
    tol 1e-16), the filled start reaches the training tolerance 1e-6 in fewer iterations than grey
    (measured over mask seeds 0-5: 14-17 against 23-25) and after a cap of 10 iterations is nearer the
    fixed point (max error 0.062-0.070 against 0.105-0.127).  Fails if fill started no nearer than grey
    (e.g. fill returned init).  Not a property of every contraction: with a blur of std 1 on the same
    problem the filled start needed 16-17 iterations against grey's 13-14; and at tol 1e-6 both
    iterates were still 0.04-0.09 (max) from the fixed point."""
    from mtdeq.solvers import fb_map, fixed_point

    h = w = 32
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    x = (0.5 + 0.3 * torch.sin(2 * math.pi * xx / 32) * torch.cos(2 * math.pi * yy / 16)).expand(1, 3, h, w).clone()
    op = physics.build("inpaint", (h, w), p_drop=0.9, seed=seed)
    y = op.A(x)
    f = fb_map(op, y, lambda z, sigma: physics._circular_gaussian_blur(z, 0.5), eta=0.49, sigma_denoise=0.0)
    z_star, info = fixed_point(f, op.fill(y), tol=1e-16, max_iter=5000, method="plain")  # the one fixed point
    assert info.status == ["converged"]
    starts = {"grey": op.init(y), "fill": op.fill(y)}
    iterations, error_at_cap = {}, {}
    for name, z0 in starts.items():
        _, at_tol = fixed_point(f, z0, tol=1e-6, max_iter=60, method="plain")
        assert at_tol.status == ["converged"]
        iterations[name] = int(at_tol.iterations[0])
        capped, _ = fixed_point(f, z0, tol=0.0, max_iter=10, method="plain")
        error_at_cap[name] = float((capped - z_star).abs().max())
    assert iterations["fill"] + 5 <= iterations["grey"], iterations
    assert error_at_cap["fill"] < 0.75 * error_at_cap["grey"], error_at_cap
