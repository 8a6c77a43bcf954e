"""Denoiser backbones, their configuration, and checkpoint files.

A backbone is any ``nn.Module`` with ``forward(x, sigma)``: x (B, 3, H, W) in [0, 1],
sigma the Gaussian noise level in the same pixel units.  Two are provided, both with
KAIR's parameter names so published weights load strictly:

- ``DRUNet`` (the paper's prior, DPIR's ``UNetRes``), configured by widths nc = (c0..c3), nb;
- ``FFDNet`` (the pretrained colour model shipped offline), nc = (width,), nb = #convs.

Checkpoint format (a ``torch.save``'d dict, loadable with ``weights_only=True``)::

    {"backbone": asdict(BackboneConfig), "state_dict": {name: tensor},
     "provenance": mtdeq.io.provenance(), **extra}

``load_prior`` also accepts a raw KAIR state dict (``.pth``) when told the backbone.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from mtdeq.io import atomic_torch_save, provenance
from mtdeq.models.drunet import DRUNet
from mtdeq.models.ffdnet import FFDNet

__all__ = [
    "BackboneConfig",
    "DRUNet",
    "FFDNet",
    "build_backbone",
    "for_inference",
    "load_prior",
    "save_checkpoint",
]

BACKBONES = ("drunet", "ffdnet")
_RESERVED_KEYS = ("backbone", "state_dict", "provenance")


@dataclass(frozen=True)
class BackboneConfig:
    """Architecture of a denoiser backbone.

    name: "drunet" (nc = 4 widths) or "ffdnet" (nc = (width,), a 1-tuple).
    nb: residual blocks per scale (drunet) or number of convolutions (ffdnet, >= 2).
    in_channels: image channels (3 for RGB).
    """

    name: str
    nc: tuple[int, ...]
    nb: int
    in_channels: int = 3

    def __post_init__(self) -> None:
        if self.name not in BACKBONES:
            raise ValueError(f"backbone name {self.name!r} is unknown; expected one of {BACKBONES}")
        try:
            nc = tuple(int(c) for c in self.nc)
        except TypeError as exc:
            raise ValueError(f"backbone nc must be a sequence of ints, got {self.nc!r}") from exc
        object.__setattr__(self, "nc", nc)
        expected_len = 4 if self.name == "drunet" else 1
        if len(nc) != expected_len or min(nc) < 1:
            raise ValueError(
                f"backbone {self.name!r} needs nc = {expected_len} positive int(s), got {self.nc!r}"
            )
        min_nb = 1 if self.name == "drunet" else 2
        if not isinstance(self.nb, int) or isinstance(self.nb, bool) or self.nb < min_nb:
            raise ValueError(f"backbone {self.name!r} needs an int nb >= {min_nb}, got {self.nb!r}")
        if not isinstance(self.in_channels, int) or self.in_channels < 1:
            raise ValueError(f"backbone in_channels must be a positive int, got {self.in_channels!r}")

    @classmethod
    def from_dict(cls, d: dict) -> "BackboneConfig":
        """Build from a dict such as ``asdict(cfg)``; unknown keys raise ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown backbone config key(s) {unknown}; expected {sorted(known)}")
        return cls(**d)


def build_backbone(cfg: BackboneConfig) -> nn.Module:
    """Construct the (randomly initialised) network described by ``cfg``."""
    if cfg.name == "drunet":
        return DRUNet(in_channels=cfg.in_channels, nc=cfg.nc, nb=cfg.nb)
    return FFDNet(in_channels=cfg.in_channels, nc=cfg.nc[0], nb=cfg.nb)


def save_checkpoint(path: str | os.PathLike, model: nn.Module, cfg: BackboneConfig, **extra) -> Path:
    """Atomically save ``{"backbone", "state_dict", "provenance", **extra}`` to ``path``.

    Tensors are moved to the CPU.  ``extra`` values should be plain Python / tensors so the
    file loads with ``torch.load(weights_only=True)``; its keys may not be the reserved ones.
    """
    clash = sorted(set(extra) & set(_RESERVED_KEYS))
    if clash:
        raise ValueError(f"save_checkpoint: extra key(s) {clash} are reserved ({_RESERVED_KEYS})")
    state = {k: v.detach().to("cpu") for k, v in model.state_dict().items()}
    payload = {"backbone": asdict(cfg), "state_dict": state, "provenance": provenance(), **extra}
    return atomic_torch_save(payload, path)


def for_inference(model: nn.Module, device: torch.device | str = "cpu", *, channels_last: bool = True) -> nn.Module:
    """``model`` in eval mode on ``device`` with channels-last weights (default), for test-time solvers.

    ``channels_last=False`` keeps torch's default (contiguous) layout (``--no-channels-last`` of
    evaluate and tune).

    Channels-last lets oneDNN skip its layout reorders: FFDNet over the full Set5 takes 0.61 s
    instead of 0.98 s per pass on a 2-core CPU (float32), with outputs within 1.5e-6 of the
    default layout.  Inputs need no conversion.
    """
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return model.eval().to(device=device, memory_format=layout)


def _is_state_dict(obj: object) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def load_prior(
    path: str | os.PathLike, backbone: BackboneConfig | None = None
) -> tuple[nn.Module, BackboneConfig]:
    """Load a denoiser prior; return ``(model.eval(), cfg)`` on the CPU.

    ``path`` is either our checkpoint (see module docstring; the config inside is used and,
    if ``backbone`` is also given, must agree with it) or a raw KAIR state dict, in which
    case ``backbone`` is required.  Weights load with strict=True: missing or unexpected
    parameter names raise ValueError naming them and the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prior checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises a variety of unpickling errors
        raise ValueError(f"{path}: cannot load as a torch checkpoint ({type(exc).__name__}: {exc})") from exc

    if isinstance(obj, dict) and "backbone" in obj and "state_dict" in obj:
        try:
            cfg = BackboneConfig.from_dict(obj["backbone"])
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: invalid backbone config: {exc}") from exc
        if backbone is not None and backbone != cfg:
            raise ValueError(f"{path}: checkpoint holds backbone {cfg}, but {backbone} was requested")
        state = obj["state_dict"]
    elif _is_state_dict(obj):
        if backbone is None:
            raise ValueError(
                f"{path}: is a raw state dict with no backbone config; pass "
                "backbone=BackboneConfig(...) to say which network it belongs to"
            )
        cfg, state = backbone, obj
    else:
        keys = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(
            f"{path}: neither an mtdeq checkpoint (keys 'backbone', 'state_dict') nor a raw "
            f"state dict; found {keys}"
        )

    model = build_backbone(cfg)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match backbone {cfg}: unexpected keys {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''}, missing keys {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}"
        )
    bad_shapes = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if bad_shapes:
        raise ValueError(f"{path}: weight shapes do not match backbone {cfg}: {bad_shapes[:5]}")
    model.load_state_dict(state, strict=True)
    return model.eval(), cfg
