"""Tests for mtdeq.tasks: test-task list, seeded degradation, SR crop, training task sets."""

import pytest
import torch

from mtdeq import tasks
from mtdeq.tasks import TASK_SETS, TEST_TASKS, Task, crop_to_multiple, degrade

EXPECTED_NAMES = [
    "comp80", "comp90", "blur1.6", "blur2.0",
    "sr2_bicubic_n0", "sr2_bicubic_n1", "sr2_gauss_n0", "sr2_gauss_n1",
    "sr3_bicubic_n0", "sr3_bicubic_n1", "sr3_gauss_n0", "sr3_gauss_n1",
]


def _image(shape=(1, 3, 20, 23), seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_test_tasks_names_and_tables():
    assert list(TEST_TASKS) == EXPECTED_NAMES
    assert tasks.TABLE1_TASKS == EXPECTED_NAMES[:4]
    assert tasks.TABLE2_TASKS == EXPECTED_NAMES[4:]
    for name, task in TEST_TASKS.items():
        assert task.name == name and task.label
    assert len({t.label for t in TEST_TASKS.values()}) == 12


def test_test_task_definitions():
    t = TEST_TASKS
    assert (t["comp80"].kind, dict(t["comp80"].params), t["comp80"].sigma_noise) == \
        ("inpaint", {"p_drop": 0.8}, 0.0)
    assert dict(t["comp90"].params) == {"p_drop": 0.9} and t["comp90"].sigma_noise == 0.0
    assert (t["blur1.6"].kind, dict(t["blur1.6"].params), t["blur1.6"].sigma_noise) == \
        ("blur", {"sigma": 1.6}, 0.01)
    assert dict(t["blur2.0"].params) == {"sigma": 2.0} and t["blur2.0"].sigma_noise == 0.01
    for scale in (2, 3):
        for noise, sigma in ((0, 0.0), (1, 0.01)):
            bic = t[f"sr{scale}_bicubic_n{noise}"]
            gau = t[f"sr{scale}_gauss_n{noise}"]
            assert (bic.kind, dict(bic.params), bic.sigma_noise, bic.scale) == \
                ("sr_bicubic", {"scale": scale}, sigma, scale)
            assert (gau.kind, dict(gau.params), gau.sigma_noise, gau.scale) == \
                ("sr_gauss", {"scale": scale, "sigma": 0.5}, sigma, scale)
    assert t["blur1.6"].scale == 1 and t["comp80"].scale == 1


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_degrade_deterministic_and_shapes(name):
    task = TEST_TASKS[name]
    x = _image((2, 3, 20, 23))
    a = degrade(task, x, seed=5)
    b = degrade(task, x, seed=5)
    assert torch.equal(a.y, b.y)
    s = task.scale
    h, w = 20 - 20 % s, 23 - 23 % s
    assert a.x_gt.shape == (2, 3, h, w)
    assert a.y.shape == (2, 3, h // s, w // s)
    assert a.op.image_shape == (h, w) and a.op.kind == task.kind
    noise = a.y - a.op.A(a.x_gt)
    if task.sigma_noise == 0:
        assert torch.equal(noise, torch.zeros_like(noise))
    else:
        assert abs(float(noise.std()) - task.sigma_noise) < 0.15 * task.sigma_noise
        c = degrade(task, x, seed=6)
        assert not torch.equal(a.y, c.y)
    # float32 input gives the same observation up to rounding (noise drawn in float64)
    f = degrade(task, x.float(), seed=5)
    assert f.y.dtype == torch.float32 and torch.allclose(f.y.double(), a.y, atol=1e-6)


def test_degrade_inpaint_mask_from_seed():
    x = _image((1, 3, 32, 32))
    a = degrade(TEST_TASKS["comp90"], x, seed=1)
    b = degrade(TEST_TASKS["comp90"], x, seed=2)
    assert not torch.equal(a.op.mask, b.op.mask)
    assert abs(float(1 - a.op.mask.mean()) - 0.9) < 0.05
    # a noisy inpaint task leaves dropped pixels at exactly 0
    noisy = Task("comp50_n", "inpaint", (("p_drop", 0.5),), 0.05)
    d = degrade(noisy, x, seed=3)
    dropped = d.op.mask == 0
    assert torch.all(d.y[..., dropped] == 0)
    assert not torch.equal(d.y, d.op.A(d.x_gt))


def test_sr_crop_top_left():
    x = _image((1, 3, 20, 23))
    assert torch.equal(crop_to_multiple(x, 3), x[..., :18, :21])
    assert torch.equal(crop_to_multiple(x, 1), x)
    d = degrade(TEST_TASKS["sr3_bicubic_n0"], x, seed=0)
    assert torch.equal(d.x_gt, x[..., :18, :21])
    assert torch.equal(d.y, d.op.A(x[..., :18, :21]))
    with pytest.raises(ValueError, match="scale"):
        crop_to_multiple(x, 0)
    with pytest.raises(ValueError, match="smaller"):
        crop_to_multiple(_image((1, 3, 2, 9)), 3)


def test_degrade_bad_inputs():
    with pytest.raises(ValueError, match=r"\(3, 20, 23\)"):
        degrade(TEST_TASKS["blur1.6"], _image((3, 20, 23)), seed=0)
    with pytest.raises(ValueError, match="seed"):
        degrade(TEST_TASKS["blur1.6"], _image(), seed=-1)
    with pytest.raises(ValueError, match="mask seed"):
        TEST_TASKS["comp80"].build((8, 8))
    fixed = Task("fixed", "inpaint", (("p_drop", 0.5), ("seed", 4)), 0.0)
    with pytest.raises(ValueError, match="fixes mask seed"):
        fixed.build((8, 8), seed=5)
    with pytest.raises(ValueError, match="nope"):
        Task("bad", "nope", (), 0.0).build((8, 8))


def test_task_sets_keys_and_single_task_sets():
    assert set(TASK_SETS) == {"mtdeq", "st_comp", "st_sr"}
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        t = TASK_SETS["st_comp"].sample(g)
        assert t.kind == "inpaint" and dict(t.params)["p_drop"] == 0.9 and t.sigma_noise == 0.0
        assert isinstance(dict(t.params)["seed"], int)
        u = TASK_SETS["st_sr"].sample(g)
        assert (u.kind, dict(u.params), u.sigma_noise) == ("sr_bicubic", {"scale": 2}, 0.01)
    # inpaint mask seeds differ between draws, so each draw has its own mask
    seeds = {dict(TASK_SETS["st_comp"].sample(g).params)["seed"] for _ in range(20)}
    assert len(seeds) > 15


def test_mtdeq_task_set_covers_paper_grid():
    g = torch.Generator().manual_seed(1)
    drawn = [TASK_SETS["mtdeq"].sample(g) for _ in range(3000)]
    degradations = set()
    for t in drawn:
        p = dict(t.params)
        p.pop("seed", None)
        degradations.add((t.kind, tuple(sorted(p.items()))))
    expected = ({("sr_bicubic", (("scale", s),)) for s in (1, 2, 3, 4)}
                | {("blur", (("sigma", s),)) for s in (0.4, 0.8, 1.2, 1.6, 2.0, 2.4)}
                | {("inpaint", (("p_drop", p),)) for p in (0.2, 0.4, 0.5, 0.6, 0.8, 0.9)})
    assert degradations == expected
    sigmas = {t.sigma_noise for t in drawn}
    assert sigmas == {round(0.005 * s, 4) for s in range(50)}
    assert max(sigmas) == 0.245 and min(sigmas) == 0.0
    # deterministic given the generator state
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert [TASK_SETS["mtdeq"].sample(g1) for _ in range(10)] == \
        [TASK_SETS["mtdeq"].sample(g2) for _ in range(10)]
    # every sampled task builds and degrades a 24x24 crop (multiple of 1..4)
    x = _image((1, 3, 24, 24))
    for t in drawn[:40]:
        d = degrade(t, x, seed=0)
        assert d.op.init(d.y).shape == x.shape


# ------------------------------------------------------------------- PnP-ReG's test crops
def _pil_centre_crop_32(height, width):
    """PnP-ReG's load_LR_HR_imgs_sr crop (factor != 3), done with PIL on an index image: the float
    box ((W - W')/2, (H - H')/2, (W + W')/2, (H + H')/2) as PnP-ReG passes it to Image.crop."""
    import numpy as np
    from PIL import Image

    index = np.arange(height * width, dtype=np.int32).reshape(height, width)
    img = Image.fromarray(index)  # int32 -> mode "I"
    new = (width - width % 32, height - height % 32)
    box = [(width - new[0]) / 2, (height - new[1]) / 2, (width + new[0]) / 2, (height + new[1]) / 2]
    return torch.from_numpy(np.asarray(img.crop(box), dtype=np.int64))


@pytest.mark.parametrize("height,width", [(45, 47), (47, 45), (77, 99), (228, 344), (280, 280),
                                          (64, 33), (32, 32)])
@pytest.mark.parametrize("name", ["sr2_bicubic_n0", "sr2_gauss_n1"])
def test_pnp_reg_crop_sr_x2_is_centred_multiple_of_32(name, height, width):
    task = TEST_TASKS[name]
    index = torch.arange(height * width).reshape(height, width)
    got = tasks.pnp_reg_crop(task, index)
    assert got.shape == (height - height % 32, width - width % 32)
    assert torch.equal(got, _pil_centre_crop_32(height, width))


def test_pnp_reg_crop_boxes():
    t = TEST_TASKS
    # odd margins are split with round-half-even, as PIL.Image.crop rounds the float box
    assert tasks.pnp_reg_crop_box(t["sr2_bicubic_n0"], 45, 47) == (6, 8, 32, 32)  # 6.5 -> 6, 7.5 -> 8
    assert tasks.pnp_reg_crop_box(t["sr2_bicubic_n0"], 228, 344) == (2, 12, 224, 320)  # Set5 woman
    assert tasks.pnp_reg_crop_box(Task("x4", "sr_bicubic", (("scale", 4),), 0.0), 45, 47) == \
        (6, 8, 32, 32)
    # x3: top-left crop to multiples of 3
    for name in ("sr3_bicubic_n0", "sr3_gauss_n1"):
        assert tasks.pnp_reg_crop_box(t[name], 46, 47) == (0, 0, 45, 45)
        assert tasks.pnp_reg_crop_box(t[name], 280, 344) == (0, 0, 279, 342)
    # deblurring: top-left crop to multiples of 8
    for name in ("blur1.6", "blur2.0"):
        assert tasks.pnp_reg_crop_box(t[name], 45, 47) == (0, 0, 40, 40)
        assert tasks.pnp_reg_crop_box(t[name], 228, 344) == (0, 0, 224, 344)
    # completion: the whole image
    for name in ("comp80", "comp90"):
        assert tasks.pnp_reg_crop_box(t[name], 45, 47) == (0, 0, 45, 47)
    x = _image((1, 3, 45, 47))
    assert torch.equal(tasks.pnp_reg_crop(t["comp80"], x), x)
    assert torch.equal(tasks.pnp_reg_crop(t["blur1.6"], x), x[..., :40, :40])
    assert torch.equal(tasks.pnp_reg_crop(t["sr3_gauss_n0"], x), x[..., :45, :45])
    assert torch.equal(tasks.pnp_reg_crop(t["sr2_gauss_n0"], x), x[..., 6:38, 8:40])
    with pytest.raises(ValueError, match="smaller"):
        tasks.pnp_reg_crop(t["sr2_bicubic_n0"], _image((1, 3, 31, 64)))
    with pytest.raises(ValueError, match="smaller"):
        tasks.pnp_reg_crop(t["blur1.6"], _image((1, 3, 7, 64)))


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_degrade_pnp_reg_crop(name):
    task = TEST_TASKS[name]
    x = _image((1, 3, 45, 47), seed=3)
    d = degrade(task, x, seed=2, crop="pnp-reg")
    expect = tasks.pnp_reg_crop(task, x)
    assert torch.equal(d.x_gt, expect)
    assert d.op.image_shape == tuple(expect.shape[-2:])
    if task.sigma_noise == 0:
        assert torch.equal(d.y, d.op.A(expect))
    # "multiple" (default) is the old top-left behaviour
    old = degrade(task, x, seed=2)
    assert torch.equal(old.x_gt, crop_to_multiple(x, task.scale))
    with pytest.raises(ValueError, match="crop"):
        degrade(task, x, seed=2, crop="centre")


def test_degrade_sr_init():
    x = _image((1, 3, 24, 30))
    for name in ("sr2_bicubic_n1", "sr3_gauss_n0"):
        task = TEST_TASKS[name]
        default = degrade(task, x, seed=0)
        bicubic = degrade(task, x, seed=0, init="bicubic")
        assert default.op.params["init"] == "bilinear" and bicubic.op.params["init"] == "bicubic"
        assert torch.equal(default.y, bicubic.y)  # the observation does not depend on the start
        assert not torch.allclose(default.op.init(default.y), bicubic.op.init(bicubic.y))
    # non-SR tasks have a fixed start and ignore init
    for name in ("comp80", "blur1.6"):
        a = degrade(TEST_TASKS[name], x, seed=0)
        b = degrade(TEST_TASKS[name], x, seed=0, init="bicubic")
        assert torch.equal(a.op.init(a.y), b.op.init(b.y))
    fixed = Task("sr2_fixed", "sr_bicubic", (("scale", 2), ("init", "bilinear")), 0.0)
    assert degrade(fixed, x, seed=0, init="bilinear").op.params["init"] == "bilinear"
    with pytest.raises(ValueError, match="fixes init"):
        degrade(fixed, x, seed=0, init="bicubic")
    with pytest.raises(ValueError, match="init"):
        degrade(TEST_TASKS["sr2_bicubic_n0"], x, seed=0, init="nearest")


# --------------------------------------------------------------------------- protocol
def test_protocol_adds_its_kernel_parameters_and_keeps_a_task_s_own():
    p = tasks.Protocol(bicubic_a=-0.5, gauss_sr_support=0.0)
    assert dict(p.task(tasks.TEST_TASKS["sr2_bicubic_n0"]).params)["a"] == -0.5
    assert dict(p.task(tasks.TEST_TASKS["sr3_gauss_n1"]).params)["support"] == 0.0
    assert p.task(tasks.TEST_TASKS["blur1.6"]) == tasks.TEST_TASKS["blur1.6"]
    own = tasks.Task("x", "sr_bicubic", (("scale", 2), ("a", -0.6)), 0.0)
    assert dict(p.task(own).params)["a"] == -0.6


def test_test_protocol_is_pnp_reg_s_and_degrades_accordingly():
    x = torch.rand(1, 3, 70, 75, generator=torch.Generator().manual_seed(0))
    deg = tasks.TEST_PROTOCOL.degrade(tasks.TEST_TASKS["sr2_bicubic_n1"], x, seed=3)
    assert deg.x_gt.shape[-2:] == (64, 64) and deg.op.params["a"] == -0.75 and deg.op.init_mode == "bicubic"
    assert torch.equal(deg.x_gt, tasks.TEST_PROTOCOL.crop_truth(tasks.TEST_TASKS["sr2_bicubic_n1"], x))
    legacy = tasks.Protocol(bicubic_a=-0.5, gauss_sr_support=0.0, sr_init="bilinear", crop="multiple")
    old = legacy.degrade(tasks.TEST_TASKS["sr2_bicubic_n1"], x, seed=3)
    assert old.x_gt.shape[-2:] == (70, 74) and torch.equal(old.x_gt, x[..., :70, :74])
    assert tasks.TRAIN_PROTOCOL.sr_init == "bilinear"


@pytest.mark.parametrize("kw, match", [({"sr_init": "nearest"}, "sr_init"), ({"crop": "centre"}, "crop")])
def test_bad_protocol_is_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        tasks.Protocol(**kw)
