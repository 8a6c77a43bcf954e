"""DRUNet: the residual U-Net denoiser of DPIR (Zhang et al., TPAMI 2021).

    D(x, sigma) = tail( U( head([x, sigma 1]) ) )

Input: a noisy image x (B, C, H, W) and its noise level sigma (pixel units, [0, 1]),
given to the network as a constant extra channel (the noise-level map).  Four scales with
widths nc = (c0, c1, c2, c3); each scale holds nb residual blocks
r(u) = u + conv3x3(ReLU(conv3x3(u))).  Going down: 2x2 convolutions with stride 2; going
up: 2x2 transposed convolutions with stride 2; skip connections add encoder features.
No convolution has a bias.  Parameter names and shapes are those of KAIR's ``UNetRes``
(m_head, m_down1..3, m_body, m_up3..1, m_tail), so DPIR's ``drunet_color.pth`` loads with
``load_state_dict(strict=True)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv3x3(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, padding=1, bias=False)


class ResBlock(nn.Module):
    """r(u) = u + conv3x3(ReLU(conv3x3(u))), width-preserving; keys ``res.0``, ``res.2``."""

    def __init__(self, channels: int):
        super().__init__()
        self.res = nn.Sequential(_conv3x3(channels, channels), nn.ReLU(), _conv3x3(channels, channels))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return u + self.res(u)


def noise_level_map(sigma: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast sigma to a (B, 1, H, W) map matching x (B, C, H, W) in dtype and device.

    sigma: python float, 0-d tensor, or a tensor of shape (B,), (B, 1) or (B, 1, 1, 1).
    """
    b, _, h, w = x.shape
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if s.dim() == 0 or s.numel() == 1:
        s = s.reshape(1, 1, 1, 1).expand(b, 1, 1, 1)
    elif s.numel() == b and (s.dim() == 1 or all(d == 1 for d in s.shape[1:])):
        s = s.reshape(b, 1, 1, 1)
    else:
        raise ValueError(
            f"sigma must be a scalar or have one value per image (batch {b}); "
            f"got shape {tuple(s.shape)}"
        )
    return s.expand(b, 1, h, w)


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad x (B, C, H, W) at the bottom/right so H and W are multiples of ``multiple``."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


class DRUNet(nn.Module):
    """Noise-level-conditioned residual U-Net (KAIR ``UNetRes`` layout).

    Args:
        in_channels: image channels C (3 for colour); the head sees C + 1 channels.
        nc: widths (c0, c1, c2, c3) of the four scales.
        nb: residual blocks per scale.

    ``forward(x, sigma)``: x (B, C, H, W), any H, W (replicate-padded to multiples of 8 and
    cropped back); sigma as in :func:`noise_level_map`.  Returns the denoised (B, C, H, W).
    """

    def __init__(self, in_channels: int = 3, nc: tuple[int, ...] = (64, 128, 256, 512), nb: int = 4):
        super().__init__()
        nc = tuple(int(c) for c in nc)
        if len(nc) != 4 or min(nc) < 1:
            raise ValueError(f"DRUNet needs four positive widths nc, got {nc}")
        if nb < 1 or in_channels < 1:
            raise ValueError(
                f"DRUNet needs nb >= 1 and in_channels >= 1, got nb={nb}, in_channels={in_channels}"
            )
        self.in_channels, self.nc, self.nb = in_channels, nc, nb
        c0, c1, c2, c3 = nc

        def blocks(c: int) -> list[nn.Module]:
            return [ResBlock(c) for _ in range(nb)]

        def down(c_in: int, c_out: int) -> nn.Conv2d:
            return nn.Conv2d(c_in, c_out, kernel_size=2, stride=2, bias=False)

        def up(c_in: int, c_out: int) -> nn.ConvTranspose2d:
            return nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2, bias=False)

        self.m_head = _conv3x3(in_channels + 1, c0)
        self.m_down1 = nn.Sequential(*blocks(c0), down(c0, c1))
        self.m_down2 = nn.Sequential(*blocks(c1), down(c1, c2))
        self.m_down3 = nn.Sequential(*blocks(c2), down(c2, c3))
        self.m_body = nn.Sequential(*blocks(c3))
        self.m_up3 = nn.Sequential(up(c3, c2), *blocks(c2))
        self.m_up2 = nn.Sequential(up(c2, c1), *blocks(c1))
        self.m_up1 = nn.Sequential(up(c1, c0), *blocks(c0))
        self.m_tail = _conv3x3(c0, in_channels)

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        u = torch.cat([x, noise_level_map(sigma, x)], dim=1)
        u = pad_to_multiple(u, 8)
        x1 = self.m_head(u)
        x2 = self.m_down1(x1)
        x3 = self.m_down2(x2)
        x4 = self.m_down3(x3)
        out = self.m_body(x4)
        out = self.m_up3(out + x4)
        out = self.m_up2(out + x3)
        out = self.m_up1(out + x2)
        out = self.m_tail(out + x1)
        return out[..., :h, :w]
