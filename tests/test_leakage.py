"""Test images in a validation set (mtdeq.leakage): the content check, and the stages that refuse.

Set14's face.png is Set5's head.png cropped by 2 pixels on every side, and Set5's butterfly.png is a
crop of Set14's monarch.png; tuning and the training curves' validation must not use them.  The
tests on the real images read the data mirror ($MTDEQ_DATA_MIRROR, a fetched data/ folder or
../shared/data) and are skipped without it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mtdeq import tune as tn
from mtdeq.cli import main
from mtdeq.leakage import TestImageLeak, find_crop, find_test_images, image_pixels, validation_files
from mtdeq.train.config import DenoiserTrainConfig, DEQTrainConfig
from mtdeq.train.denoiser import pretrain_denoiser
from mtdeq.train.deq import train_deq

REPO = Path(__file__).resolve().parents[1]


def _mirror() -> Path:
    """The folder holding Set5/ and Set14/: $MTDEQ_DATA_MIRROR, the fetched data/, or ../shared/data."""
    candidates = [Path(os.environ["MTDEQ_DATA_MIRROR"])] if os.environ.get("MTDEQ_DATA_MIRROR") else []
    candidates += [REPO / "data", REPO.parent / "shared" / "data"]
    for root in candidates:
        if (root / "Set5" / "head.png").is_file() and (root / "Set14" / "face.png").is_file():
            return root
    pytest.skip(f"Set5/head.png and Set14/face.png not found in {[str(c) for c in candidates]}")


@pytest.fixture(scope="module")
def mirror() -> Path:
    return _mirror()


@pytest.fixture
def leaky(mirror, tmp_path) -> Path:
    """A validation folder with Set14's baboon.png and face.png (a crop of Set5's head.png)."""
    val = tmp_path / "val"
    val.mkdir()
    for name in ("baboon.png", "face.png"):
        shutil.copy(mirror / "Set14" / name, val / name)
    return val


# ----------------------------------------------------------------------------- the check itself
def test_face_is_head_cropped_at_offset_2_2(mirror):
    face, head = image_pixels(mirror / "Set14" / "face.png"), image_pixels(mirror / "Set5" / "head.png")
    assert face.shape == (276, 276, 3) and head.shape == (280, 280, 3)
    assert find_crop(face, head) == (2, 2)
    (overlap,) = find_test_images([mirror / "Set14" / "face.png"], mirror / "Set5")
    assert (overlap.test.name, overlap.top, overlap.left, overlap.val_in_test) == ("head.png", 2, 2, True)
    assert "face.png" in overlap.describe() and "head.png" in overlap.describe()


def test_butterfly_lies_inside_monarch(mirror):
    (overlap,) = find_test_images([mirror / "Set14" / "monarch.png"], mirror / "Set5")
    assert (overlap.test.name, overlap.top, overlap.left, overlap.val_in_test) == ("butterfly.png", 144, 271, False)


def test_other_images_are_not_crops_of_test_images(mirror):
    others = [mirror / "Set14" / n for n in ("baboon.png", "barbara.png", "lenna.png", "zebra.png")]
    assert find_test_images(others, mirror / "Set5") == []
    kept = validation_files(mirror / "Set14", None, ("face.png", "monarch.png"))  # config data.val_exclude
    assert len(kept) == 12 and find_test_images(kept, mirror / "Set5") == []


def test_configured_exclusion_clears_every_scale(mirror):
    """config data.val_exclude (inherited by ci, quick-drunet and paper) leaves no test image among the
    validation images of any scale: the most any stage uses is paper's tune.max_images 14, i.e. all."""
    import yaml

    from mtdeq.leakage import refuse_test_images

    exclude = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["data"]["val_exclude"]
    assert {"face.png", "monarch.png"} <= set(exclude)
    for config in ("ci.yaml", "quick-drunet.yaml", "paper.yaml"):  # none overrides the list
        assert "val_exclude" not in (yaml.safe_load((REPO / "config" / config).read_text()).get("data") or {})
    refuse_test_images(validation_files(mirror / "Set14", 14, exclude), mirror / "Set5", stage="test")
    with pytest.raises(TestImageLeak, match=r"(?s)face\.png.*head\.png.*monarch\.png.*butterfly\.png"):
        refuse_test_images(validation_files(mirror / "Set14", 14), mirror / "Set5", stage="test")


def test_find_crop_any_offset_and_not_a_crop():
    rng = np.random.default_rng(0)
    large = rng.integers(0, 4, (30, 40, 3), dtype=np.uint8)  # few values: many first-pixel candidates
    for top, left in ((0, 0), (3, 5), (12, 17)):
        small = large[top : top + 18, left : left + 23].copy()
        assert find_crop(small, large) == (top, left)
    small = large[3:21, 5:28].copy()
    small[-1, -1] = (small[-1, -1] + 1) % 4  # one pixel off
    assert find_crop(small, large) is None
    assert find_crop(large, large[:10]) is None  # larger than the other
    assert find_crop(large, large) == (0, 0)


def test_validation_files_exclude_and_count(mirror):
    files = validation_files(mirror / "Set14", 6, ("face.png",))
    assert [f.name for f in files] == ["baboon.png", "barbara.png", "bridge.png", "coastguard.png", "comic.png",
                                       "flowers.png"]
    with pytest.raises(ValueError, match=r"--val-exclude fcae\.png: no such image in .*Set14"):
        validation_files(mirror / "Set14", 4, ("fcae.png",))


# ----------------------------------------------------------------------------- tune refuses
def _tune_settings(prior, images, out, **kw):
    grid = tn.Grid(iterations=(1,), sigma_max=(0.1,), sigma_min=(0.05,))
    return tn.TuneSettings("admm", "blur1.6", str(prior), str(images), str(out), grid, max_images=None, crop=16, **kw)


def test_tune_refuses_a_crop_of_a_test_image_and_writes_nothing(mirror, leaky, prior, tmp_path):
    out = tmp_path / "tune" / "admm_blur1.6.csv"
    with pytest.raises(TestImageLeak, match=r"(?s)face\.png.*head\.png.*top 2, left 2.*--val-exclude face\.png"):
        tn.tune(_tune_settings(prior, leaky, out, test_set=str(mirror / "Set5")), progress=False)
    assert not out.parent.exists()  # no CSV, no provenance
    # the CLI's --test-set and --val-exclude: excluded, it tunes on baboon alone
    rc = main(["tune", "--method", "admm", "--task", "blur1.6", "--prior", str(prior), "--images", str(leaky),
               "--crop", "16", "--iterations", "1", "--sigma-max", "0.1", "--sigma-min", "0.05",
               "--test-set", str(mirror / "Set5"), "--val-exclude", "face.png", "--out", str(out)])
    assert rc == 0 and out.is_file() and (tmp_path / "tune" / "admm_blur1.6.provenance.json").is_file()
    assert int(pd.read_csv(out)["n_images"].iloc[0]) == 1


def test_tune_cli_checks_against_data_set5_by_default(leaky, prior, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no data/Set5 here: the check cannot be made
    out = tmp_path / "out.csv"
    rc = main(["tune", "--method", "admm", "--task", "blur1.6", "--prior", str(prior), "--images", str(leaky),
               "--crop", "16", "--iterations", "1", "--sigma-max", "0.1", "--sigma-min", "0.05", "--out", str(out)])
    assert rc == 1 and "--test-set data/Set5: no such folder" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- training validation refuses
def _deq_cfg(images, prior, tmp_path, val_dir) -> DEQTrainConfig:
    return DEQTrainConfig(out=str(tmp_path / "run" / "deq.pt"), init=str(prior), train_dirs=(str(images),), crop=16,
                          batch_size=2, n_tasks=1, steps=1, lr=1e-3, max_iter=2, tol=1e-6, val_dir=str(val_dir),
                          val_images=4, val_every=1, log_csv=str(tmp_path / "run" / "log.csv"), checkpoint_every=1)


def test_train_deq_refuses_a_crop_of_a_test_image_and_writes_nothing(mirror, leaky, images, prior, tmp_path):
    cfg = _deq_cfg(images, prior, tmp_path, leaky)
    with pytest.raises(TestImageLeak, match=r"(?s)train-deq.*face\.png.*head\.png"):
        train_deq(cfg, quiet=True, test_set=str(mirror / "Set5"))
    assert not (tmp_path / "run").exists()  # no checkpoint, resume state or log
    train_deq(cfg, quiet=True, test_set=str(mirror / "Set5"), val_exclude=("face.png",))
    assert Path(cfg.out).is_file()
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert len(log) == 3  # header, step 0, step 1


def test_train_cli_passes_test_set_and_exclusion(mirror, leaky, images, prior, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--init", str(prior), "--train-dirs", str(images), "--crop", "16", "--batch-size", "2", "--steps", "1",
              "--val-dir", str(leaky), "--test-set", str(mirror / "Set5"), "--quiet"]
    deq = ["train-deq", "--out", str(run / "deq.pt"), "--n-tasks", "1", "--max-iter", "2", *common]
    assert main(deq) == 1
    err = capsys.readouterr().err
    assert "mtdeq train-deq: error: train-deq: refusing" in err and "face.png" in err and "head.png" in err
    den = ["pretrain-denoiser", "--out", str(run / "g.pt"), "--backbone", "drunet", "--nc", "8", "16", "32", "64",
           "--nb", "1", "--log-csv", str(run / "g.csv"), *common]
    assert main(den) == 1
    err = capsys.readouterr().err
    assert "pretrain-denoiser: refusing" in err and "face.png" in err and "head.png" in err
    assert not run.exists()
    assert main([*den, "--val-exclude", "face.png"]) == 0 and (run / "g.pt").is_file()


def test_pretrain_denoiser_validation_skips_excluded_files(mirror, leaky, images, prior, tmp_path):
    cfg = DenoiserTrainConfig(out=str(tmp_path / "g.pt"), init=str(prior), backbone="drunet", nc=(8, 16, 32, 64), nb=1,
                              steps=0, val_dir=str(leaky), log_csv=str(tmp_path / "g.csv"))
    with pytest.raises(TestImageLeak):
        pretrain_denoiser(cfg, quiet=True, test_set=str(mirror / "Set5"))
    assert not (tmp_path / "g.pt").exists() and not (tmp_path / "g.csv").exists()
    pretrain_denoiser(cfg, quiet=True, test_set=str(mirror / "Set5"), val_exclude=("face.png",))
    assert (tmp_path / "g.pt").is_file()


def test_a_synthetic_crop_is_refused_without_the_mirror(images, prior, tmp_path):
    """The same refusal on synthetic images: a validation image cut out of a test image."""
    test, val = tmp_path / "test", tmp_path / "val"
    test.mkdir(), val.mkdir()
    shutil.copy(images / "img0.png", test / "img0.png")
    pixels = np.asarray(Image.open(images / "img0.png"))
    Image.fromarray(pixels[5:35, 7:40]).save(val / "cut.png")
    shutil.copy(images / "img1.png", val / "other.png")
    out = tmp_path / "out.csv"
    with pytest.raises(TestImageLeak, match=r"(?s)cut\.png.*img0\.png.*top 5, left 7"):
        tn.tune(_tune_settings(prior, val, out, test_set=str(test)), progress=False)
    assert not out.exists()
    table = tn.tune(_tune_settings(prior, val, out, test_set=str(test), val_exclude=("cut.png",)), progress=False)
    assert table["n_images"].tolist() == [1] and out.is_file()
