"""Image reading/writing, folder listing, atomic writes and provenance."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtdeq.io import (
    ImageReadError,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    list_images,
    provenance,
    read_image,
    write_image,
)


def _rgb_array(seed: int = 0, h: int = 7, w: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_png_round_trip_is_exact(tmp_path):
    arr = _rgb_array()
    Image.fromarray(arr).save(tmp_path / "a.png")
    x = read_image(tmp_path / "a.png")
    assert x.dtype == torch.float32 and x.shape == (3, 7, 5)
    assert np.array_equal((x * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), arr)

    write_image(tmp_path / "b.png", x[None])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), arr)


def test_write_image_clips_and_rounds(tmp_path):
    x = torch.tensor([-0.5, 0.5 / 255 + 1e-6, 1.7]).view(3, 1, 1).expand(3, 2, 2).contiguous()
    write_image(tmp_path / "c.png", x)
    out = np.asarray(Image.open(tmp_path / "c.png"))
    assert out.dtype == np.uint8 and out[0, 0].tolist() == [0, 1, 255]
    assert [p.name for p in tmp_path.iterdir()] == ["c.png"]


@pytest.mark.parametrize("mode", ["L", "P", "RGBA"])
def test_non_rgb_files_become_rgb(tmp_path, mode):
    img = Image.fromarray(_rgb_array(1)).convert(mode)
    img.save(tmp_path / "m.png")
    x = read_image(tmp_path / "m.png")
    assert x.shape == (3, 7, 5)
    if mode == "L":
        assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_jpeg_and_bmp_are_read(tmp_path):
    Image.fromarray(_rgb_array(2)).save(tmp_path / "j.jpg", quality=95)
    Image.fromarray(_rgb_array(2)).save(tmp_path / "b.bmp")
    assert read_image(tmp_path / "j.jpg").shape == (3, 7, 5)
    expected = torch.from_numpy(_rgb_array(2)).permute(2, 0, 1) / 255.0
    assert torch.equal(read_image(tmp_path / "b.bmp"), expected)


def test_broken_and_missing_files_raise_named_error(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    with pytest.raises(ImageReadError, match="broken.png"):
        read_image(tmp_path / "broken.png")

    Image.fromarray(_rgb_array(3, 64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match="truncated.png"):
        read_image(tmp_path / "truncated.png")

    with pytest.raises(ImageReadError, match="nothere.png"):
        read_image(tmp_path / "nothere.png")


def test_list_images_sorted_filtered_and_errors(tmp_path):
    for name in ["b.png", "a.JPG", "c.bmp", "notes.txt", "d.jpeg"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "c.bmp", "d.jpeg"]

    with pytest.raises(FileNotFoundError, match="missing"):
        list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        list_images(tmp_path / "empty")


def test_atomic_writes_leave_only_the_target(tmp_path):
    atomic_write_text(tmp_path / "sub" / "t.txt", "hello")
    atomic_write_bytes(tmp_path / "sub" / "b.bin", b"\x00\x01")
    atomic_torch_save({"a": torch.arange(3)}, tmp_path / "sub" / "o.pt")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["b.bin", "o.pt", "t.txt"]
    assert (tmp_path / "sub" / "t.txt").read_text() == "hello"
    assert torch.equal(torch.load(tmp_path / "sub" / "o.pt", weights_only=True)["a"], torch.arange(3))


def test_failed_atomic_save_keeps_old_file_and_no_temp(tmp_path):
    target = tmp_path / "o.pt"
    atomic_torch_save({"v": 1}, target)
    with pytest.raises(Exception):
        atomic_torch_save({"f": lambda: 0}, target)  # lambdas cannot be pickled
    assert [p.name for p in tmp_path.iterdir()] == ["o.pt"]
    assert torch.load(target, weights_only=True) == {"v": 1}


def _saved(obj) -> "io.BytesIO":
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_provenance_records_code_and_versions():
    rec = provenance({"seed": 3})
    assert rec["config"] == {"seed": 3}
    assert rec["torch"] == torch.__version__ and rec["numpy"] == np.__version__
    torch.load(_saved(rec), weights_only=True)  # plain types only: loadable with weights_only
    assert rec["utc_time"].endswith("+00:00")
    assert isinstance(rec["argv"], list)
    repo = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    if head.returncode == 0:
        assert rec["git_commit"] == head.stdout.strip() and isinstance(rec["git_dirty"], bool)
        assert rec["git_dirty"] == bool(rec["git_dirty_files"])
    else:
        assert rec["git_commit"] == "unknown"


def test_dirty_files_names_every_changed_path():
    from mtdeq.io import dirty_files

    status = "M mtdeq/io.py\nM  README.md\nR  old.py -> mtdeq/new.py\nMM tests/test_io.py"
    # the first line as provenance() gets it: git's output stripped, so " M" lost its blank
    assert dirty_files(status) == ["README.md", "mtdeq/io.py", "mtdeq/new.py", "tests/test_io.py"]
    assert dirty_files(" M a.py\n?? b.py") == ["a.py", "b.py"]
    assert dirty_files("") == [] and dirty_files(None) == []


def test_png_figure_is_lossless_and_drops_only_an_opaque_alpha(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mtdeq.io import write_png_figure

    def figure(transparent):
        fig, ax = plt.subplots(figsize=(2, 2))
        ax.imshow(np.random.default_rng(0).random((16, 16, 3)))
        if transparent:
            fig.patch.set_alpha(0.0)
        return fig

    for transparent in (False, True):
        raw = io.BytesIO()
        figure(transparent).savefig(raw, format="png", dpi=50)
        expected = np.asarray(Image.open(raw))
        out = write_png_figure(tmp_path / f"f{transparent}.png", figure(transparent), dpi=50)
        written = Image.open(out)
        assert written.mode == ("RGBA" if transparent else "RGB")
        assert np.array_equal(np.asarray(written), expected if transparent else expected[..., :3])
        plt.close("all")
