"""FFDNet: fast and flexible CNN denoiser (Zhang, Zuo & Zhang, TIP 2018), colour version.

    D(x, sigma) = PS( f( [PU(x), sigma 1] ) )

PU is the 2x2 pixel-unshuffle (B, C, H, W) -> (B, 4C, H/2, W/2) with channel order
c * 4 + 2 i + j for the pixel at offset (i, j) of each 2x2 cell (identical to
``torch.nn.functional.pixel_unshuffle`` and KAIR's ``PixelUnShuffle``); PS is its inverse.
The noise level sigma (pixel units, [0, 1]) enters as a constant channel at half
resolution.  f is a plain CNN of nb 3x3 convolutions with biases: conv(4C+1 -> nc) + ReLU,
(nb - 2) x [conv(nc -> nc) + ReLU], conv(nc -> 4C).  The output is the clean image itself
(no residual).  Parameter names follow KAIR's ``network_ffdnet`` (``model.0`` ...
``model.{2 nb - 2}``), so the pretrained ``ffdnet_color.pth`` loads with strict=True.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mtdeq.models.drunet import noise_level_map, pad_to_multiple


class FFDNet(nn.Module):
    """Colour FFDNet (KAIR layout).

    Args:
        in_channels: image channels C (3 for colour).
        nc: width of the hidden layers.
        nb: number of convolutions (>= 2).

    ``forward(x, sigma)``: x (B, C, H, W), any H, W (odd sizes replicate-padded to even and
    cropped back); sigma a float, 0-d tensor, or one value per image ((B,) or (B, 1, 1, 1)).
    """

    def __init__(self, in_channels: int = 3, nc: int = 96, nb: int = 12):
        super().__init__()
        if nb < 2 or nc < 1 or in_channels < 1:
            raise ValueError(
                f"FFDNet needs nb >= 2, nc >= 1, in_channels >= 1; got nb={nb}, nc={nc}, "
                f"in_channels={in_channels}"
            )
        self.in_channels, self.nc, self.nb = in_channels, int(nc), int(nb)
        layers: list[nn.Module] = [nn.Conv2d(4 * in_channels + 1, nc, 3, padding=1), nn.ReLU()]
        for _ in range(nb - 2):
            layers += [nn.Conv2d(nc, nc, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(nc, 4 * in_channels, 3, padding=1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        u = F.pixel_unshuffle(pad_to_multiple(x, 2), 2)
        u = torch.cat([u, noise_level_map(sigma, u)], dim=1)
        out = F.pixel_shuffle(self.model(u), 2)
        return out[..., :h, :w]
