"""Backbones: KAIR-compatible names, shapes and behaviour; checkpoint save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import mirror_file
from skimage import data as skdata

from mtdeq.metrics import psnr
from mtdeq.models import (
    BackboneConfig,
    DRUNet,
    FFDNet,
    build_backbone,
    load_prior,
    save_checkpoint,
)

SMALL = BackboneConfig("drunet", (8, 16, 24, 32), 1)
FFDNET_COLOR = BackboneConfig("ffdnet", (96,), 12)


def _ffdnet_weights() -> Path:
    """The shipped pretrained colour FFDNet: fetched copy, $MTDEQ_DATA_MIRROR, or ../shared/data."""
    return mirror_file("weights/ffdnet_color.pth")


def _astronaut(size: int = 256) -> torch.Tensor:
    """(1, 3, size, size) crop of skimage's astronaut (face region), in [0, 1]."""
    img = skdata.astronaut()[:size, 128 : 128 + size]
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float() / 255.0


# ---------------------------------------------------------------------------- DRUNet
def test_drunet_default_parameter_count_matches_dpir_colour_model():
    with torch.device("meta"):
        model = DRUNet()
    assert sum(p.numel() for p in model.parameters()) == 32_640_960


def test_drunet_uses_kair_unetres_names_and_shapes():
    with torch.device("meta"):
        sd = DRUNet().state_dict()
    expected_shapes = {
        "m_head.weight": (64, 4, 3, 3),
        "m_down1.0.res.0.weight": (64, 64, 3, 3),
        "m_down1.0.res.2.weight": (64, 64, 3, 3),
        "m_down1.4.weight": (128, 64, 2, 2),  # strided 2x2 conv after nb=4 blocks
        "m_down3.4.weight": (512, 256, 2, 2),
        "m_body.3.res.2.weight": (512, 512, 3, 3),
        "m_up3.0.weight": (512, 256, 2, 2),  # ConvTranspose2d: (in, out, kH, kW)
        "m_up1.0.weight": (128, 64, 2, 2),
        "m_up1.4.res.2.weight": (64, 64, 3, 3),
        "m_tail.weight": (3, 64, 3, 3),
    }
    for key, shape in expected_shapes.items():
        assert tuple(sd[key].shape) == shape, key
    # 1 head + 3 x (4 blocks x 2 + 1 down) + 4 x 2 body + 3 x (1 up + 4 x 2) + 1 tail, no biases
    assert len(sd) == 1 + 3 * 9 + 8 + 3 * 9 + 1
    assert not any(k.endswith("bias") for k in sd)


def test_drunet_state_dict_round_trips_strictly(tmp_path):
    torch.manual_seed(0)
    a = build_backbone(SMALL).eval()
    torch.save(a.state_dict(), tmp_path / "w.pth")
    b = DRUNet(nc=SMALL.nc, nb=SMALL.nb).eval()
    b.load_state_dict(torch.load(tmp_path / "w.pth", weights_only=True), strict=True)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(a(x, 0.1), b(x, 0.1))


@pytest.mark.parametrize("size", [(13, 21), (8, 8), (1, 30)])
def test_drunet_forward_keeps_shape_on_any_size(size):
    torch.manual_seed(0)
    model = build_backbone(SMALL).eval()
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = model(x, 0.05)
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_drunet_output_depends_on_sigma_and_per_image_sigma_matches_scalar():
    torch.manual_seed(0)
    model = build_backbone(SMALL).eval()
    x = torch.rand(2, 3, 12, 12)
    sig = torch.tensor([0.02, 0.2])
    with torch.no_grad():
        batched = model(x, sig)
        batched_4d = model(x, sig.view(2, 1, 1, 1))
        one = model(x[:1], 0.02)
        two = model(x[1:], torch.tensor(0.2))
    torch.testing.assert_close(batched, batched_4d)
    torch.testing.assert_close(batched[:1], one)
    torch.testing.assert_close(batched[1:], two)
    assert not torch.allclose(one, model(x[:1], 0.2).detach())


def test_drunet_rejects_wrong_sigma_shape():
    model = build_backbone(SMALL)
    with pytest.raises(ValueError, match="sigma"):
        model(torch.rand(2, 3, 8, 8), torch.tensor([0.1, 0.2, 0.3]))


def test_drunet_is_differentiable_in_input():
    torch.manual_seed(0)
    model = build_backbone(SMALL)
    x = torch.rand(1, 3, 9, 11, requires_grad=True)
    model(x, 0.1).square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# ---------------------------------------------------------------------------- FFDNet
def test_ffdnet_loads_shipped_weights_strictly_and_denoises():
    path = _ffdnet_weights()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = FFDNet().eval()
    model.load_state_dict(state, strict=True)

    x = _astronaut(256)
    g = torch.Generator().manual_seed(0)
    sigma = 25 / 255
    y = x + sigma * torch.randn(x.shape, generator=g)
    with torch.no_grad():
        out = model(y, sigma)
    gain = psnr(out, x) - psnr(y, x)
    assert gain >= 5.0, f"FFDNet PSNR gain {gain:.2f} dB < 5 dB (acceptance bar)"
    # Measured 12.7 dB.  A wrong pixel-unshuffle channel order still gains ~4.8 dB, so a
    # tighter bound is what actually pins the layout down.
    assert gain >= 10.0, f"FFDNet PSNR gain {gain:.2f} dB, expected about 12.7 dB"


def test_ffdnet_per_image_sigma_and_odd_sizes():
    torch.manual_seed(0)
    model = FFDNet(nc=16, nb=4).eval()
    x = torch.rand(2, 3, 15, 9)
    with torch.no_grad():
        both = model(x, torch.tensor([0.05, 0.15]))
        first = model(x[:1], 0.05)
        second = model(x[1:], 0.15)
    assert both.shape == x.shape
    torch.testing.assert_close(both, torch.cat([first, second]))


def test_ffdnet_uses_kair_names():
    keys = list(FFDNet().state_dict())
    expected = [f"model.{2 * i}.{p}" for i in range(12) for p in ("weight", "bias")]
    assert keys == expected


# ---------------------------------------------------------------------------- config and checkpoints
def test_backbone_config_validation():
    with pytest.raises(ValueError, match="unet"):
        BackboneConfig("unet", (8,), 1)
    with pytest.raises(ValueError, match="nc"):
        BackboneConfig("drunet", (8, 16), 1)
    with pytest.raises(ValueError, match="nc"):
        BackboneConfig("ffdnet", (96, 96), 12)
    with pytest.raises(ValueError, match="nb"):
        BackboneConfig("ffdnet", (96,), 1)
    with pytest.raises(ValueError, match="colour"):
        BackboneConfig.from_dict({"name": "drunet", "nc": [8, 8, 8, 8], "nb": 1, "colour": True})
    cfg = BackboneConfig.from_dict({"name": "drunet", "nc": [8, 16, 24, 32], "nb": 1})
    assert cfg == SMALL and isinstance(cfg.nc, tuple)


def test_save_checkpoint_and_load_prior_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_backbone(SMALL)
    path = save_checkpoint(tmp_path / "m.pt", model, SMALL, step=7, seed=0)
    raw = torch.load(path, weights_only=True)
    assert raw["backbone"]["name"] == "drunet" and raw["step"] == 7
    assert {"git_commit", "torch", "utc_time"} <= set(raw["provenance"])
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]

    loaded, cfg = load_prior(path)
    assert cfg == SMALL and not loaded.training
    x = torch.rand(1, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, 0.1), model.eval()(x, 0.1))


def test_load_prior_raw_kair_state_dict(tmp_path):
    path = _ffdnet_weights()
    model, cfg = load_prior(path, backbone=FFDNET_COLOR)
    assert isinstance(model, FFDNet) and cfg == FFDNET_COLOR
    with pytest.raises(ValueError, match="ffdnet_color.pth.*backbone"):
        load_prior(path)
    with pytest.raises(ValueError, match=r"model\.0\.weight"):
        load_prior(path, backbone=SMALL)  # wrong architecture: names the keys at fault


def test_load_prior_reports_unexpected_keys_and_config_mismatch(tmp_path):
    model = build_backbone(SMALL)
    state = dict(model.state_dict())
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth.*extra\.weight"):
        load_prior(tmp_path / "bad.pth", backbone=SMALL)

    save_checkpoint(tmp_path / "ok.pt", model, SMALL)
    with pytest.raises(ValueError, match="ok.pt"):
        load_prior(tmp_path / "ok.pt", backbone=BackboneConfig("drunet", (8, 16, 24, 32), 2))

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_prior(tmp_path / "junk.pt", backbone=SMALL)


def test_save_checkpoint_rejects_reserved_extra_keys(tmp_path):
    with pytest.raises(ValueError, match="state_dict"):
        save_checkpoint(tmp_path / "m.pt", build_backbone(SMALL), SMALL, state_dict={})
    assert not any(tmp_path.iterdir())
