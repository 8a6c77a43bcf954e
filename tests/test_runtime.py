"""Device selection (``device: auto``, accelerators faked) and the precision switch."""

from __future__ import annotations

import pytest
import torch

from mtdeq import runtime
from mtdeq.cli import main


@pytest.fixture
def fake(monkeypatch):
    """Pretend CUDA and/or MPS are (not) available."""
    def set_available(cuda: bool, mps: bool):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(runtime, "_mps_available", lambda: mps)
    return set_available


@pytest.mark.parametrize("cuda, mps, expected", [
    (True, True, "cuda"), (True, False, "cuda"), (False, True, "mps"), (False, False, "cpu"),
])
def test_auto_prefers_cuda_then_mps_then_cpu_and_says_so(fake, capsys, cuda, mps, expected):
    fake(cuda, mps)
    assert runtime.resolve_device("auto").type == expected
    assert f"device: auto -> {expected}" in capsys.readouterr().err


def test_auto_skips_mps_in_float64(fake):
    fake(False, True)
    before = torch.get_default_dtype()
    try:
        runtime.set_precision("float64")
        assert runtime.resolve_device("auto", log=False).type == "cpu"  # MPS has no float64
    finally:
        torch.set_default_dtype(before)


@pytest.mark.parametrize("name, message", [("cuda", "no CUDA device"), ("mps", "MPS backend is not available"),
                                           ("tpu", "expected one of")])
def test_unavailable_or_unknown_device_is_a_clear_error(fake, name, message):
    fake(False, False)
    with pytest.raises((RuntimeError, ValueError), match=message):
        runtime.resolve_device(name)


def test_explicit_cpu_needs_no_accelerator(fake):
    fake(False, False)
    assert runtime.resolve_device("cpu") == torch.device("cpu")
    assert runtime.describe_device(torch.device("cpu")).startswith("cpu:")


def test_precision_sets_the_default_dtype_and_rejects_others():
    before = torch.get_default_dtype()
    try:
        assert runtime.set_precision("float64") is torch.float64
        assert torch.zeros(1).dtype is torch.float64 and runtime.precision_name() == "float64"
    finally:
        torch.set_default_dtype(before)
    with pytest.raises(ValueError, match="float32, float64"):
        runtime.set_precision("float16")


def test_cli_precision_flag_reaches_the_stage(tmp_path, monkeypatch):
    from mtdeq.io import read_image, write_image

    write_image(tmp_path / "a.png", torch.rand(3, 4, 4))
    seen = {}

    def stage(args):
        seen["dtype"] = read_image(tmp_path / "a.png").dtype
        return 0

    import mtdeq.cli as cli
    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    parser._subparsers._group_actions[0].choices["check"].set_defaults(func=stage)
    before = torch.get_default_dtype()
    try:
        assert main(["--precision", "float64", "check", "--reference", "x"]) == 0
        assert seen["dtype"] is torch.float64
    finally:
        torch.set_default_dtype(before)
