"""Mixed precision of the denoiser during training.

(The device is chosen by ``mtdeq.runtime.resolve_device``: ``--device auto`` = CUDA, else MPS,
else the CPU; under torchrun rank r uses cuda:LOCAL_RANK, see mtdeq.train.distributed.)

``--amp bf16`` (CUDA only; ``autocast``) runs the denoiser under bfloat16 autocast in the
fixed-point solve and the JFB step; iterates, losses and parameters stay in torch's default
dtype (float32).  bf16 rounding (~4e-3 relative) puts a floor near 1e-6 under the fixed-point
residual, so with the paper's tol 1e-7 solves tend to stop at max_iter: use it for speed studies
or with a looser --tol.  The fixed-point solve runs under no_grad and its Anderson history is
local to the call (freed on return); training memory is one JFB graph.
"""

from __future__ import annotations

import contextlib

import torch

AMP_CHOICES = ("none", "bf16")


def autocast(device: torch.device, amp: str):
    """Context of the denoiser evaluations: bfloat16 autocast for --amp bf16 (CUDA only), else none."""
    if amp in (None, "none"):
        return contextlib.nullcontext()
    if amp != "bf16":
        raise ValueError(f"--amp: got {amp!r}, expected 'none' or 'bf16'")
    if device.type != "cuda":
        raise ValueError(f"--amp bf16: mixed precision is for GPU training; the device is {device} "
                         "(use --amp none on CPU)")
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
