"""Tests for mtdeq.solvers: DEQ fixed point (Eq. 3, Algorithm 1), JFB, PnP-ADMM, RED.

Toy operators and denoisers are defined here so that the solver logic is tested on its own;
the last tests use the real FFDNet weights and the blur1.6 task of mtdeq.tasks.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mtdeq.solvers import (
    fb_map,
    fb_step,
    fixed_point,
    geometric_sigmas,
    jfb_output,
    pnp_admm,
    red,
)

DATA = Path(os.environ.get("MTDEQ_DATA_MIRROR") or Path(__file__).resolve().parents[2] / "shared" / "data")
FFDNET_WEIGHTS = DATA / "weights" / "ffdnet_color.pth"
BUTTERFLY = DATA / "Set5" / "butterfly.png"


# ----------------------------------------------------------------------------- toy pieces
class IdentityOp:
    """A = I."""

    def A(self, x):
        return x

    def data_grad(self, x, y):
        return x - y

    def prox_l2(self, z, y, gamma):
        return (z + gamma * y) / (1.0 + gamma)

    def init(self, y):
        return y.clone()


class MaskOp:
    """A = diag(mask), inpainting with a fixed 0/1 mask of shape (1, 1, H, W)."""

    def __init__(self, mask):
        self.mask = mask

    def A(self, x):
        return self.mask * x

    def data_grad(self, x, y):
        return self.mask * (self.mask * x - y)

    def prox_l2(self, z, y, gamma):
        return (z + gamma * self.mask * y) / (1.0 + gamma * self.mask)

    def init(self, y):
        return y.clone()


def smooth(x, width=1.0, padding="reflect"):
    """Separable Gaussian smoothing (radius 3), per channel; padding "reflect" or "circular"."""
    radius = 3
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / width) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    x = F.pad(x, (radius, radius, radius, radius), mode=padding)
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


class SmoothingDenoiser(torch.nn.Module):
    """Tiny denoiser: Gaussian smoothing whose width grows with sigma (forward(x, sigma))."""

    def forward(self, x, sigma):
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(x.shape[0])
        out = []
        for xi, s in zip(x.split(1), sigma.tolist()):
            out.append(xi if s <= 0 else smooth(xi, min(0.3 + 20.0 * s, 3.0)))
        return torch.cat(out)


def smooth_image(seed=0, size=32, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, size // 4, size // 4, generator=g, dtype=dtype)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------- fixed point
def test_contractive_map_converges_to_tolerance():
    g = torch.Generator().manual_seed(0)
    c = torch.rand(4, 3, 8, 8, generator=g)
    z_star, info = fixed_point(lambda z: 0.5 * z + c, torch.zeros_like(c), tol=1e-7)
    assert info.status == ["converged"] * 4
    assert (info.residual < 1e-7).all()
    assert (info.iterations < 30).all() and (info.iterations > 3).all()
    assert torch.allclose(z_star, 2 * c, atol=1e-3)
    assert info.summary()["converged"] == 1.0


def test_blow_up_is_flagged_without_leaking_nan():
    """Image 1 explodes, image 2 returns NaN; images 0 and 3 still converge, nothing leaks."""
    g = torch.Generator().manual_seed(1)
    c = torch.rand(4, 3, 8, 8, generator=g)
    gain = torch.tensor([0.5, 3.0, 0.5, 0.5]).view(4, 1, 1, 1)

    def f(z, idx):
        out = gain[idx] * z + c[idx] + 1.0
        return torch.where((idx == 2).view(-1, 1, 1, 1), torch.full_like(out, float("nan")), out)

    z_star, info = fixed_point(f, torch.zeros_like(c), diverge_at=1e10, max_iter=350)
    assert info.status == ["converged", "diverged", "diverged", "converged"]
    assert torch.isfinite(z_star).all()
    assert z_star[1].abs().max() <= 1e10  # last finite iterate below the guard
    assert int(info.iterations[2]) == 1
    assert 20 < int(info.iterations[1]) < 40  # 3^k growth crosses 1e10 after ~21 steps
    assert torch.allclose(z_star[[0, 3]], 2 * (c[[0, 3]] + 1.0), atol=1e-3)


def test_max_iter_status():
    z_star, info = fixed_point(lambda z: 0.999 * z + 1.0, torch.zeros(2, 1, 4, 4), max_iter=7, progress=True)
    assert info.status == ["max_iter", "max_iter"]
    assert info.iterations.tolist() == [7, 7]


def nonlinear_map(b):
    # q-Lipschitz with q = 0.8: f(z) = 0.8 * smooth(tanh(z)) + b
    return lambda z: 0.8 * smooth(torch.tanh(z)) + b


def test_anderson_matches_plain_in_fewer_iterations():
    g = torch.Generator().manual_seed(2)
    b = torch.rand(3, 3, 16, 16, generator=g, dtype=torch.float64)
    f = nonlinear_map(b)
    z0 = torch.zeros_like(b)
    z_plain, info_plain = fixed_point(f, z0, tol=1e-14, method="plain")
    z_and, info_and = fixed_point(f, z0, tol=1e-14, method="anderson")
    assert info_plain.status == ["converged"] * 3 and info_and.status == ["converged"] * 3
    assert (z_plain - z_and).abs().max() <= 1e-5
    assert (info_and.iterations < info_plain.iterations).all()


def test_anderson_safeguard_keeps_diverging_image_isolated():
    g = torch.Generator().manual_seed(3)
    b = torch.rand(2, 3, 8, 8, generator=g)
    gain = torch.tensor([0.5, 4.0]).view(2, 1, 1, 1)
    z_star, info = fixed_point(lambda z: gain * z + b, torch.zeros_like(b), method="anderson")
    assert info.status[0] == "converged"
    # a linear map is solved exactly by Anderson, so image 1 may converge to its (repelling)
    # fixed point -b/3 or be flagged as diverged -- never NaN
    assert info.status[1] in ("converged", "diverged")
    assert torch.isfinite(z_star).all()
    assert torch.allclose(z_star[0], 2 * b[0], atol=1e-3)


def test_fb_map_subset_matches_full_batch_and_fb_step():
    """f(z[idx], idx) == f(z)[idx] with one operator per image, and equals Eq. (3)."""
    g = torch.Generator().manual_seed(4)
    masks = [(torch.rand(1, 1, 8, 8, generator=g) > p).float() for p in (0.2, 0.5, 0.9)]
    ops = [MaskOp(m) for m in masks]
    x = torch.rand(3, 3, 8, 8, generator=g)
    ys = [op.A(x[i : i + 1]) for i, op in enumerate(ops)]
    sigma = torch.tensor([0.0, 0.02, 0.05])
    den = SmoothingDenoiser()
    f = fb_map(ops, ys, den, eta=0.49, sigma_denoise=sigma)
    z = torch.rand(3, 3, 8, 8, generator=g)
    full = f(z)
    idx = torch.tensor([0, 2])
    assert torch.allclose(f(z[idx], idx), full[idx])
    one = fb_step(z[1:2], op=ops[1], y=ys[1], denoiser=den, eta=0.49, sigma_denoise=sigma[1:2])
    assert torch.allclose(full[1:2], one)
    # the plain-f(z) path (full batch, masked) and the subset path give the same fixed point
    z1, i1 = fixed_point(f, torch.cat(ys))
    z2, i2 = fixed_point(lambda v: f(v), torch.cat(ys))
    assert torch.allclose(z1, z2) and i1.iterations.tolist() == i2.iterations.tolist()


# ----------------------------------------------------------------------------- JFB
class LinearPrior(torch.nn.Module):
    """f(z) = w * smooth(z) + b with trainable scalar w (a contractive toy 'network')."""

    def __init__(self, b):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.7, dtype=b.dtype))
        self.b = b

    def forward(self, z):
        return self.w * smooth(z) + self.b


def test_jfb_gradient_is_one_step_gradient():
    g = torch.Generator().manual_seed(5)
    b = torch.rand(2, 3, 12, 12, generator=g, dtype=torch.float64)
    target = torch.rand(2, 3, 12, 12, generator=g, dtype=torch.float64)
    f = LinearPrior(b)
    z_star, info = fixed_point(f, torch.zeros_like(b), tol=1e-12)
    assert z_star.grad_fn is None and not z_star.requires_grad
    out = jfb_output(f, z_star)
    loss = ((out - target) ** 2).mean()
    loss.backward()
    # d/dw mean((w S z* + b - t)^2) with z* held fixed
    expected = (2 * (out.detach() - target) * smooth(z_star)).mean()
    assert torch.allclose(f.w.grad, expected)
    # ... which is not the implicit (full) gradient: dz*/dw != 0 is ignored
    w = f.w.detach().clone().requires_grad_(True)
    z = torch.zeros_like(b)
    for _ in range(200):
        z = w * smooth(z) + b
    full = torch.autograd.grad(((w * smooth(z) + b - target) ** 2).mean(), w)[0]
    assert not torch.allclose(full, expected, rtol=1e-3)


def saved_tensor_bytes(max_iter):
    """Bytes saved for backward during fixed_point + jfb_output, forcing max_iter iterations."""
    g = torch.Generator().manual_seed(6)
    b = torch.rand(2, 3, 16, 16, generator=g)
    f = LinearPrior(b)
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        z_star, info = fixed_point(f, torch.zeros_like(b), tol=0.0, max_iter=max_iter)
        out = jfb_output(f, z_star)
    assert info.iterations.tolist() == [max_iter] * 2
    out.sum().backward()
    return total


def test_jfb_memory_does_not_grow_with_iterations():
    small, large = saved_tensor_bytes(10), saved_tensor_bytes(100)
    assert small > 0
    assert small == large


# ----------------------------------------------------------------------------- PnP-ADMM, RED
def test_geometric_sigmas():
    s = geometric_sigmas(0.2, 0.01, 5)
    assert s[0] == pytest.approx(0.2) and s[-1] == pytest.approx(0.01)
    ratios = [s[k + 1] / s[k] for k in range(4)]
    assert max(ratios) == pytest.approx(min(ratios))
    with pytest.raises(ValueError, match="iterations"):
        geometric_sigmas(0.2, 0.01, 0)


def test_pnp_admm_identity_denoises():
    x = smooth_image(seed=7, size=32)
    g = torch.Generator().manual_seed(7)
    y = x + 0.1 * torch.randn(x.shape, generator=g)
    z, info = pnp_admm(
        op=IdentityOp(), y=y, denoiser=SmoothingDenoiser(), sigma_noise=0.1,
        iterations=10, sigma_max=0.1, sigma_min=0.05, lam=0.03,
    )
    assert info.iterations == 10 and info.seconds >= 0
    assert ((z - x) ** 2).mean() < 0.3 * ((y - x) ** 2).mean()


def test_red_identity_denoises():
    x = smooth_image(seed=8, size=32)
    g = torch.Generator().manual_seed(8)
    y = x + 0.1 * torch.randn(x.shape, generator=g)
    z, info = red(
        op=IdentityOp(), y=y, denoiser=SmoothingDenoiser(), sigma_noise=0.1,
        iterations=30, sigma_denoise=0.05, lam=2.0,
    )
    assert info.iterations == 30
    assert ((z - x) ** 2).mean() < 0.5 * ((y - x) ** 2).mean()


def red_inpaint_problem(batch=1, size=24, p_drop=0.7, seed=9):
    """Small RED problem: inpainting of smooth images with a shared mask (float64)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([smooth_image(seed=seed + i, size=size, dtype=torch.float64) for i in range(batch)])
    mask = (torch.rand(1, 1, size, size, generator=g, dtype=torch.float64) > p_drop).double()
    op = MaskOp(mask)
    return op, op.A(x), x


RED_SETTINGS = dict(denoiser=SmoothingDenoiser(), sigma_noise=0.0, sigma_denoise=0.05, lam=0.3)


def test_red_default_is_fixed_k_romano_iteration():
    """tol = 0 (default): exactly `iterations` steps of x <- prox(D(x), y, 1/lam), as before."""
    op, y, _ = red_inpaint_problem(batch=2)
    z, info = red(op=op, y=y, iterations=7, **RED_SETTINGS)
    x = op.init(y)
    for _ in range(7):
        x = op.prox_l2(RED_SETTINGS["denoiser"](x, 0.05), y, 1.0 / 0.3)
    assert torch.allclose(z, x, rtol=0, atol=1e-14)
    assert info.iterations == 7 and info.image_iterations == [7, 7] and info.converged is False
    assert len(info.rel_change) == 2 and all(c > 0 for c in info.rel_change)


def test_red_stop_rule_fires():
    op, y, _ = red_inpaint_problem(batch=1)
    tol = 1e-4
    z, info = red(op=op, y=y, iterations=5000, tol=tol, **RED_SETTINGS)
    assert info.converged is True
    assert 1 < info.iterations < 5000 and info.image_iterations == [info.iterations]
    assert info.rel_change[0] < tol
    # the rule fired at the first iteration whose relative change is below tol: stopping does not
    # alter the trajectory, and one iteration fewer had not reached it yet
    z_fixed, _ = red(op=op, y=y, iterations=info.iterations, **RED_SETTINGS)
    assert torch.equal(z, z_fixed)
    _, before = red(op=op, y=y, iterations=info.iterations - 1, **RED_SETTINGS)
    assert before.rel_change[0] >= tol


def test_red_converges_doubling_the_cap_changes_little():
    """A real convergence check: the stopped output is (nearly) the limit of the iteration."""
    op, y, _ = red_inpaint_problem(batch=1)
    z_stop, info = red(op=op, y=y, iterations=5000, tol=1e-6, **RED_SETTINGS)
    assert info.converged and info.iterations < 2500
    z_2x, info_2x = red(op=op, y=y, iterations=2 * info.iterations, **RED_SETTINGS)  # tol = 0
    assert info_2x.iterations == 2 * info.iterations
    assert float((z_stop - z_2x).norm() / z_2x.norm()) < 2e-5
    # ... and so is the fixed-K iterate: doubling K again changes nothing visible
    z_4x, _ = red(op=op, y=y, iterations=4 * info.iterations, **RED_SETTINGS)
    assert float((z_4x - z_2x).norm() / z_2x.norm()) < 1e-7


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("tol", [0.0, 1e-4])
def test_red_snapshot_is_the_run_with_the_smaller_cap(tol):
    """Cap 2K with a snapshot at K gives the results of caps K and 2K (the budget check's one run)."""
    op, y, _ = red_inpaint_problem(batch=2)
    k = 9 if tol == 0 else 400
    z_2k, info = red(op=op, y=y, iterations=2 * k, tol=tol, snapshot_at=k, **RED_SETTINGS)
    z_k, info_k = red(op=op, y=y, iterations=k, tol=tol, **RED_SETTINGS)
    z_2k_alone, _ = red(op=op, y=y, iterations=2 * k, tol=tol, **RED_SETTINGS)
    assert torch.equal(info.snapshot, z_k) and torch.equal(z_2k, z_2k_alone)
    assert info.snapshot_iterations == info_k.iterations
    assert not torch.equal(z_k, z_2k) if tol == 0 else info_k.converged
    with pytest.raises(ValueError, match="snapshot_at"):
        red(op=op, y=y, iterations=k, snapshot_at=k + 1, **RED_SETTINGS)


@pytest.mark.usefixtures("one_thread")
def test_red_snapshot_when_one_image_stops_before_k_and_another_runs_past_it():
    """The mixed stop of the budget check's one run: image 1 (a zero-mean checkerboard, whose holes the
    smoothing fills with about 0) stops on its tolerance before K while image 0 (a smooth image) is
    still running at K and stops only after it.  The snapshot at K is, per image, the run capped at K,
    and the cap-2K result the run capped at 2K, each also solved alone.  Fails if a stopped image were
    iterated again (not frozen), or the snapshot were not every image's estimate after K iterations."""
    op, _, x = red_inpaint_problem(batch=1)
    size = x.shape[-1]
    ii, jj = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    texture = (0.5 * (-1.0) ** (ii + jj)).to(torch.float64).expand(1, 3, size, size)
    y = op.A(torch.cat([x, texture]))
    tol, k = 1e-4, 32
    z_2k, info = red(op=op, y=y, iterations=2 * k, tol=tol, snapshot_at=k, **RED_SETTINGS)
    stop_smooth, stop_texture = info.image_iterations  # measured 35 and 29
    assert stop_texture < k < stop_smooth < 2 * k and info.converged
    assert info.snapshot_iterations == k
    z_k, info_k = red(op=op, y=y, iterations=k, tol=tol, **RED_SETTINGS)
    assert info_k.image_iterations == [k, stop_texture] and not info_k.converged
    assert torch.equal(info.snapshot, z_k)
    for i in range(2):  # each image alone, capped at K and at 2K
        alone_k, _ = red(op=op, y=y[i : i + 1], iterations=k, tol=tol, **RED_SETTINGS)
        alone_2k, _ = red(op=op, y=y[i : i + 1], iterations=2 * k, tol=tol, **RED_SETTINGS)
        assert torch.equal(info.snapshot[i : i + 1], alone_k) and torch.equal(z_2k[i : i + 1], alone_2k)
    assert not torch.equal(info.snapshot[0], z_2k[0]) and torch.equal(info.snapshot[1], z_2k[1])


@pytest.mark.parametrize("step", [1.0, 0.7])
def test_red_stopped_images_are_frozen_and_batch_independent(step):
    op, y, _ = red_inpaint_problem(batch=3)
    y = y * torch.tensor([1.0, 0.3, 1.0], dtype=y.dtype).view(3, 1, 1, 1)  # different speeds
    z, info = red(op=op, y=y, iterations=5000, tol=1e-5, step=step, **RED_SETTINGS)
    assert info.converged and info.iterations == max(info.image_iterations)
    assert all(c < 1e-5 for c in info.rel_change)
    for i in range(3):
        zi, info_i = red(op=op, y=y[i : i + 1], iterations=5000, tol=1e-5, step=step, **RED_SETTINGS)
        assert info_i.image_iterations == [info.image_iterations[i]]
        assert torch.allclose(zi, z[i : i + 1], rtol=0, atol=1e-12)


def test_red_cap_without_convergence():
    op, y, _ = red_inpaint_problem(batch=1)
    z, info = red(op=op, y=y, iterations=3, tol=1e-12, **RED_SETTINGS)
    assert info.iterations == 3 and info.converged is False and info.rel_change[0] >= 1e-12


@pytest.mark.parametrize("kwargs,match", [
    (dict(tol=-1.0), "tol"),
    (dict(tol=float("nan")), "tol"),
    (dict(step=1.5), "step"),
    (dict(iterations=0), "iterations"),
])
def test_red_bad_arguments(kwargs, match):
    op, y, _ = red_inpaint_problem(batch=1, size=8)
    args = dict(op=op, y=y, iterations=5, **RED_SETTINGS)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        red(**args)


class CircularSmoother(torch.nn.Module):
    """A linear, symmetric, contractive "denoiser": Gaussian smoothing with circular padding
    (a symmetric kernel on a torus is a symmetric matrix with eigenvalues in (0, 1])."""

    def forward(self, x, sigma):
        return smooth(x, width=1.2, padding="circular")


LINEAR_RED = dict(denoiser=CircularSmoother(), sigma_noise=0.0, sigma_denoise=0.05, lam=0.3)


def test_red_anderson_reaches_the_plain_fixed_point_in_fewer_iterations():
    """With a linear symmetric denoiser E is a convex quadratic with one minimiser: both schemes stop
    on the same point, Anderson after fewer iterations (measured 69-70 plain vs 22 Anderson here)."""
    op, y, _ = red_inpaint_problem(batch=2)
    z_plain, info_plain = red(op=op, y=y, iterations=5000, tol=1e-7, **LINEAR_RED)
    z_and, info_and = red(op=op, y=y, iterations=5000, tol=1e-7, accel="anderson", anderson_m=5, **LINEAR_RED)
    assert info_plain.converged and info_and.converged
    assert max(info_and.image_iterations) * 2 < min(info_plain.image_iterations)
    # the exact minimiser: (A^T A + lam (I - D)) x = A^T y, checked through the plain run 4x longer
    z_ref, _ = red(op=op, y=y, iterations=4 * info_plain.iterations, **LINEAR_RED)
    for z in (z_plain, z_and):
        assert float((z - z_ref).norm() / z_ref.norm()) < 1e-4
    assert float((z_and - z_plain).norm() / z_plain.norm()) < 1e-4


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("tol", [0.0, 1e-5])
def test_red_anderson_snapshot_and_stop_semantics(tol):
    """Anderson keeps the budget check's one run: cap 2K with a snapshot at K equals the runs capped at
    K and 2K; stopped images are frozen and each image's result is the one it gets alone."""
    op, y, _ = red_inpaint_problem(batch=2)
    y = y * torch.tensor([1.0, 0.3], dtype=y.dtype).view(2, 1, 1, 1)  # different speeds
    args = dict(op=op, tol=tol, accel="anderson", anderson_m=4, **LINEAR_RED)
    k = 6 if tol == 0 else 12  # tol 1e-5: the images stop after 19 and 18 iterations, past K
    z_2k, info = red(y=y, iterations=2 * k, snapshot_at=k, **args)
    z_k, info_k = red(y=y, iterations=k, **args)
    assert torch.equal(info.snapshot, z_k) and info.snapshot_iterations == info_k.iterations
    for i in range(2):
        alone, info_i = red(y=y[i : i + 1], iterations=2 * k, **args)
        assert info_i.image_iterations == [info.image_iterations[i]]
        assert torch.allclose(alone, z_2k[i : i + 1], rtol=0, atol=1e-12)
    assert not torch.equal(info.snapshot, z_2k)
    if tol > 0:
        assert info.converged and all(c < tol for c in info.rel_change) and not info_k.converged
        assert info.image_iterations[0] != info.image_iterations[1]


def test_red_anderson_bad_arguments():
    op, y, _ = red_inpaint_problem(batch=1, size=8)
    with pytest.raises(ValueError, match="accel"):
        red(op=op, y=y, iterations=3, accel="fista", **RED_SETTINGS)
    with pytest.raises(ValueError, match="anderson_m"):
        red(op=op, y=y, iterations=3, accel="anderson", anderson_m=0, **RED_SETTINGS)


# ----------------------------------------------------------------------------- real prior
@pytest.fixture(scope="module")
def blur_problem():
    tasks = pytest.importorskip("mtdeq.tasks")
    io = pytest.importorskip("mtdeq.io")
    models = pytest.importorskip("mtdeq.models")
    metrics = pytest.importorskip("mtdeq.metrics")
    if not (FFDNET_WEIGHTS.exists() and BUTTERFLY.exists()):
        pytest.skip(f"missing {FFDNET_WEIGHTS} or {BUTTERFLY}")
    x = io.read_image(BUTTERFLY)[None]
    h, w = x.shape[-2:]
    x = x[..., (h - 128) // 2 : (h - 128) // 2 + 128, (w - 128) // 2 : (w - 128) // 2 + 128].contiguous()
    degraded = tasks.degrade(tasks.TEST_TASKS["blur1.6"], x, seed=0)
    model, _ = models.load_prior(FFDNET_WEIGHTS, models.BackboneConfig(name="ffdnet", nc=(96,), nb=12))
    for p in model.parameters():
        p.requires_grad_(False)
    input_psnr = metrics.psnr(degraded.op.init(degraded.y), degraded.x_gt)
    return degraded, model, metrics.psnr, input_psnr


def test_pnp_admm_ffdnet_deblurs_butterfly(blur_problem):
    degraded, model, psnr, input_psnr = blur_problem
    z, info = pnp_admm(
        op=degraded.op, y=degraded.y, denoiser=model, sigma_noise=0.01,
        iterations=12, sigma_max=0.1, sigma_min=0.02,
    )
    assert psnr(z, degraded.x_gt) >= input_psnr + 3.0


def test_red_ffdnet_improves_butterfly(blur_problem):
    degraded, model, psnr, input_psnr = blur_problem
    z, info = red(
        op=degraded.op, y=degraded.y, denoiser=model, sigma_noise=0.01,
        iterations=12, sigma_denoise=0.02, lam=0.05,
    )
    assert psnr(z, degraded.x_gt) >= input_psnr + 3.0


def _admm_both_layouts(model, degraded, iterations):
    """PnP-ADMM with the default and the channels-last layout (mtdeq.models.for_inference)."""
    import copy

    from mtdeq.models import for_inference

    out = []
    for channels_last in (False, True):
        denoiser = for_inference(copy.deepcopy(model), "cpu", channels_last=channels_last)
        z, _ = pnp_admm(op=degraded.op, y=degraded.y, denoiser=denoiser, sigma_noise=0.0,
                        iterations=iterations, sigma_max=0.2, sigma_min=0.02)
        out.append(z)
    return out


@pytest.mark.usefixtures("one_thread")
def test_channels_last_admm_is_the_default_layout_ffdnet(blur_problem):
    """Real FFDNet, comp80 on a 64x64 crop, 15 ADMM iterations: max |diff| measured 6.4e-6 (float32);
    tolerance 1e-4, PSNR within 1e-3 dB."""
    from mtdeq import tasks

    degraded, model, psnr, _ = blur_problem
    x = degraded.x_gt[..., 32:96, 32:96].contiguous()
    comp = tasks.degrade(tasks.TEST_TASKS["comp80"], x, seed=0)
    default, channels_last = _admm_both_layouts(model, comp, 15)
    assert float((default - channels_last).abs().max()) < 1e-4
    assert psnr(channels_last, comp.x_gt) == pytest.approx(psnr(default, comp.x_gt), abs=1e-3)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_channels_last_admm_is_the_default_layout_drunet(dtype, tol):
    """Tiny random DRUNet, comp80 on 32x32, 8 ADMM iterations: max |diff| measured 8.3e-7 in float32."""
    from mtdeq import tasks
    from mtdeq.models import BackboneConfig, build_backbone

    torch.manual_seed(0)
    model = build_backbone(BackboneConfig("drunet", (8, 8, 8, 8), 1)).to(dtype)
    comp = tasks.degrade(tasks.TEST_TASKS["comp80"], smooth_image(seed=3, size=32, dtype=dtype), seed=0)
    default, channels_last = _admm_both_layouts(model, comp, 8)
    assert default.dtype == dtype and float((default - channels_last).abs().max()) < tol


def test_bench_solvers_is_registered():
    from mtdeq.bench import run_solvers
    from mtdeq.cli import build_parser

    args = build_parser().parse_args(["bench", "solvers", "--out", "x.csv", "--tasks", "blur1.6"])
    assert args.func is run_solvers and args.tasks == ["blur1.6"] and args.tol == 1e-7
