"""Where and in which floating-point precision a stage computes.

Two choices decide whether a number travels from one machine to another:

* **precision** (``--precision`` of ``python -m mtdeq``, config key ``precision``):
  ``float32`` (default) or ``float64``.  It sets torch's default dtype before any model or
  image tensor exists, so networks, images, operators and solvers all follow it.  Training
  in float32 amplifies the last-bit differences between SIMD kernels (AVX-512 vs AVX2 vs
  SSE, 1 vs 2 threads) into visible PSNR differences; in float64 those round-off
  differences are ~1e-16 relative and stay far below what a table prints, which is why the
  ``ci`` scale, trained from scratch, runs in float64 (docs/reference-check.md).
* **device** (``--device`` of every computing stage, config key ``device``): ``auto``
  (default) picks CUDA when available, then Apple's MPS, else the CPU, and says which.
"""

from __future__ import annotations

import sys

import torch

PRECISIONS = {"float32": torch.float32, "float64": torch.float64}
DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def set_precision(name: str) -> torch.dtype:
    """Make ``name`` torch's default floating dtype (for every tensor created afterwards)."""
    try:
        dtype = PRECISIONS[name]
    except KeyError:
        raise ValueError(f"precision {name!r}: expected one of {', '.join(PRECISIONS)}") from None
    torch.set_default_dtype(dtype)
    return dtype


def precision_name() -> str:
    """The current default dtype as a config value ('float32' or 'float64')."""
    return str(torch.get_default_dtype()).removeprefix("torch.")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str, *, log: bool = True) -> torch.device:
    """``auto`` -> cuda, else mps, else cpu (printed to stderr); an unavailable explicit choice is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            chosen = "cuda"
        elif _mps_available() and torch.get_default_dtype() != torch.float64:
            chosen = "mps"  # MPS has no float64
        else:
            chosen = "cpu"
        if log:
            print(f"device: auto -> {chosen}", file=sys.stderr)
        return torch.device(chosen)
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    if name == "mps" and not _mps_available():
        raise RuntimeError("--device mps: Apple's MPS backend is not available (use --device cpu or auto)")
    if name not in DEVICE_CHOICES and not name.startswith("cuda:"):
        raise ValueError(f"--device {name!r}: expected one of {', '.join(DEVICE_CHOICES)} or cuda:<index>")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    """A human-readable name of ``device`` for provenance records (GPU model, or the CPU's ISA)."""
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "mps"
    return f"cpu:{torch.backends.cpu.get_cpu_capability()}"
