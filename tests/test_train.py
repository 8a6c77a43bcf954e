"""Tests of mtdeq.train: Algorithm 1 step, resume, divergence, task sets, memory, configs, amp.

Everything runs on CPU with a tiny DRUNet (nc 8 16 32 64, nb 1) on synthetic images.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import pickle
import subprocess
import sys
import types
from pathlib import Path

import pytest
from conftest import REPO, TINY
import torch

from mtdeq.data import PatchDataset
from mtdeq.models import BackboneConfig, build_backbone, load_prior, save_checkpoint
from mtdeq.tasks import TEST_TASKS
from mtdeq.train import (
    CRASH_EXIT_CODE,
    DEQTrainConfig,
    DenoiserTrainConfig,
    config_from_dict,
    deq_step,
    init_fingerprint,
    load_train_state,
    pretrain_denoiser,
    save_train_state,
    solve_task,
    step_generator,
    train_deq,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(images, prior, tmp_path, **kw) -> DEQTrainConfig:
    base = dict(out=str(tmp_path / "deq.pt"), init=str(prior), train_dirs=(str(images),), crop=16, batch_size=2,
                n_tasks=2, steps=2, lr=1e-3, max_iter=10, tol=1e-6, solver="anderson", seed=0)
    return DEQTrainConfig(**{**base, **kw})


def _model(prior):
    model, _ = load_prior(prior)
    return model.train()


# ----------------------------------------------------------------------------- Algorithm 1 step
def test_deq_steps_decrease_loss_on_a_fixed_batch(images, prior, tmp_path):
    cfg = _cfg(images, prior, tmp_path, lr=1e-3, max_iter=15)
    model = _model(prior)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    x = PatchDataset([str(images)], crop=16).sample_batch(torch.Generator().manual_seed(1), 4)
    tasks = [TEST_TASKS["blur1.6"], TEST_TASKS["comp80"]]
    losses = [deq_step(model, optimizer, x, tasks, step_generator(0, 1), cfg).loss for _ in range(4)]
    assert all(loss is not None for loss in losses)
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.95 * losses[0], losses


def test_deq_step_gradient_is_that_of_the_mean_over_image_task_pairs(images, prior, tmp_path):
    cfg = _cfg(images, prior, tmp_path)
    x = PatchDataset([str(images)], crop=16).sample_batch(torch.Generator().manual_seed(2), 3)
    tasks = [TEST_TASKS["blur2.0"], TEST_TASKS["sr2_bicubic_n1"]]  # SR crops 16 -> 16 (already a multiple)
    model = _model(prior)
    stats = deq_step(model, torch.optim.SGD(model.parameters(), lr=0.0), x, tasks, step_generator(0, 5), cfg)
    grads = [p.grad.clone() for p in model.parameters()]

    reference = _model(prior)
    g = step_generator(0, 5)
    losses = torch.cat([solve_task(reference, x, t, g, cfg).per_image_loss for t in tasks])
    losses.mean().backward()  # L = 1/(B N) sum over images and tasks of L_i
    assert stats.n_valid == 6 and stats.loss == pytest.approx(float(losses.mean().detach()), rel=1e-5)
    for a, p in zip(grads, reference.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("solver", ["plain", "anderson"])
def test_stacked_step_is_the_sequential_step(images, prior, tmp_path, solver):
    """--batch-tasks: the N*B images solved as one batch follow the same trajectories, stop at the
    same iterations and give the same loss and gradient as one solve per task (float64, so that
    only the rounding of the batched convolutions differs)."""
    torch.set_default_dtype(torch.float64)
    try:
        x = PatchDataset([str(images)], crop=16).sample_batch(torch.Generator().manual_seed(4), 2).double()
        # sr3 crops 16 -> 15: it forms its own group; completion and deblurring share one
        tasks = [TEST_TASKS["blur1.6"], TEST_TASKS["sr3_bicubic_n1"], TEST_TASKS["comp80"]]
        runs = {}
        for batch_tasks in (False, True):
            cfg = _cfg(images, prior, tmp_path, solver=solver, max_iter=25, tol=1e-7, batch_tasks=batch_tasks)
            model = _model(prior).double()
            stats = deq_step(model, torch.optim.SGD(model.parameters(), lr=0.0), x, tasks, step_generator(0, 3), cfg)
            runs[batch_tasks] = (stats, [p.grad.clone() for p in model.parameters()])
        from mtdeq.train.deq import task_groups

        assert task_groups(tasks, x, cfg) == [[0, 2], [1]]
        (seq, g_seq), (stk, g_stk) = runs[False], runs[True]
        assert stk.iterations == seq.iterations and stk.status == seq.status and stk.n_valid == seq.n_valid == 6
        assert 1 < max(seq.iterations) < 25 and len(set(seq.iterations)) > 1  # per-image stopping was exercised
        assert stk.loss == pytest.approx(seq.loss, rel=1e-9)
        for a, b in zip(g_stk, g_seq):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-12)
    finally:
        torch.set_default_dtype(torch.float32)


def test_memory_of_a_step_does_not_grow_with_the_iteration_cap(images, prior, tmp_path):
    """JFB: the graph kept for backward is one application of f, whatever max_iter is."""
    x = PatchDataset([str(images)], crop=16).sample_batch(torch.Generator().manual_seed(3), 2)
    model = _model(prior)

    def graph_of(max_iter):
        cfg = _cfg(images, prior, tmp_path, max_iter=max_iter, tol=0.0, solver="plain")  # tol 0: run the cap
        saved_bytes = []

        def pack(t):
            saved_bytes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = solve_task(model, x, TEST_TASKS["blur1.6"], step_generator(0, 1), cfg)
        nodes, stack = set(), [out.per_image_loss.sum().grad_fn]
        while stack:
            fn = stack.pop()
            if fn is not None and fn not in nodes:
                nodes.add(fn)
                stack.extend(nxt for nxt, _ in fn.next_functions)
        return out.iterations, len(nodes), sum(saved_bytes)

    its10, nodes10, bytes10 = graph_of(10)
    its100, nodes100, bytes100 = graph_of(100)
    assert its10 == [10, 10] and its100 == [100, 100]
    assert nodes10 == nodes100 and bytes10 == bytes100 > 0


# ----------------------------------------------------------------------------- divergence
def test_forced_divergence_is_counted_and_the_update_skipped(images, prior, tmp_path):
    cfg = _cfg(images, prior, tmp_path, eta=1e3, max_iter=50)
    model = _model(prior)
    before = [p.detach().clone() for p in model.parameters()]
    x = PatchDataset([str(images)], crop=16).sample_batch(torch.Generator().manual_seed(4), 2)
    stats = deq_step(model, torch.optim.Adam(model.parameters(), lr=1e-2), x, [TEST_TASKS["blur1.6"]],
                     step_generator(0, 1), cfg)
    assert stats.status == ["diverged", "diverged"] and stats.skipped and stats.loss is None
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))

    log = tmp_path / "log.csv"
    totals = train_deq(_cfg(images, prior, tmp_path, eta=1e3, max_iter=50, steps=2, log_csv=str(log)), quiet=True)
    assert totals["diverged"] == totals["solves"] == 2 * 2 * 2 and totals["skipped_steps"] == 2
    rows = list(csv.DictReader(log.open()))
    assert [r["skipped"] for r in rows] == ["1", "1"] and all(float(r["pct_diverged"]) == 100 for r in rows)
    trained, _ = load_prior(tmp_path / "deq.pt")  # the run still ends with a loadable prior
    assert all(torch.equal(a, b) for a, b in zip(_model(prior).state_dict().values(),
                                                  trained.state_dict().values()))


# ----------------------------------------------------------------------------- task sets
@pytest.mark.parametrize("task_set, kind, params, sigma", [
    ("st_comp", "inpaint", {"p_drop": 0.9}, 0.0),
    ("st_sr", "sr_bicubic", {"scale": 2}, 0.01),
])
def test_single_task_configs_train_only_their_task(images, prior, tmp_path, task_set, kind, params, sigma):
    seen = []
    log = tmp_path / "log.csv"
    cfg = _cfg(images, prior, tmp_path, task_set=task_set, n_tasks=1, steps=3, max_iter=3, log_csv=str(log))
    train_deq(cfg, quiet=True, on_step=lambda stats: seen.extend(stats.tasks))
    assert len(seen) == 3
    for task in seen:
        assert task.kind == kind and task.sigma_noise == sigma
        assert {k: v for k, v in task.params if k != "seed"} == params
    assert [r["tasks"] for r in csv.DictReader(log.open())] == [t.name for t in seen]
    if task_set == "st_comp":  # a fresh mask per step
        assert len({dict(t.params)["seed"] for t in seen}) == 3


def test_mtdeq_set_mixes_degradations(images, prior, tmp_path):
    seen = []
    train_deq(_cfg(images, prior, tmp_path, n_tasks=5, steps=2, max_iter=2), quiet=True,
              on_step=lambda stats: seen.extend(stats.tasks))
    assert len(seen) == 10 and len({t.kind for t in seen}) >= 2


# ----------------------------------------------------------------------------- resume
def _train_cmd(images, prior, out: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "mtdeq", "train-deq", "--out", str(out), "--init", str(prior),
            "--task-set", "mtdeq", "--n-tasks", "2", "--train-dirs", str(images), "--crop", "16",
            "--batch-size", "2", "--steps", "5", "--lr", "1e-3", "--lr-step", "3", "--lr-gamma", "0.5",
            "--max-iter", "8", "--tol", "1e-6", "--solver", "anderson", "--seed", "3",
            "--log-csv", str(out.with_suffix(".csv")), "--checkpoint-every", "2", "--threads", "1",
            "--device", "cpu", "--quiet", *extra]


def test_kill_and_resume_reproduces_the_uninterrupted_run_bit_for_bit(images, prior, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    crashed, straight = tmp_path / "a" / "m.pt", tmp_path / "b" / "m.pt"
    reference = subprocess.Popen(_train_cmd(images, prior, straight), cwd=REPO, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # crash after step 3: the resume state is from step 2, step 3's log row must be dropped
    first = subprocess.run(_train_cmd(images, prior, crashed, "--stop-after", "3"), cwd=REPO, env=env,
                           capture_output=True, text=True)
    assert first.returncode == CRASH_EXIT_CODE, first.stderr
    state = torch.load(str(crashed) + ".ckpt", weights_only=False)
    assert state["step"] == 2 and not crashed.exists()
    assert config_from_dict(DEQTrainConfig, state["config"]).steps == 5  # config round-trips
    second = subprocess.run(_train_cmd(images, prior, crashed), cwd=REPO, env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert "fixed-point solves converged" in second.stdout
    out, err = reference.communicate(timeout=120)
    assert reference.returncode == 0, err

    a, b = torch.load(crashed, weights_only=True), torch.load(straight, weights_only=True)
    assert a["step"] == b["step"] == 5 and a["train_config"]["steps"] == 5
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert a["totals"] == b["totals"] and a["totals"]["solves"] == 5 * 2 * 2
    rows_a = list(csv.DictReader(crashed.with_suffix(".csv").open()))
    rows_b = list(csv.DictReader(straight.with_suffix(".csv").open()))
    assert [r["step"] for r in rows_a] == ["1", "2", "3", "4", "5"]
    assert [r["loss"] for r in rows_a] == [r["loss"] for r in rows_b]
    assert [float(r["lr"]) for r in rows_a] == [1e-3, 1e-3, 1e-3, 5e-4, 5e-4]  # StepLR survives resume


def test_resume_state_is_used_only_for_the_same_config_and_initial_weights(images, prior, tmp_path):
    import dataclasses
    import shutil

    init = tmp_path / "init.pt"
    shutil.copy(prior, init)
    cfg = _cfg(images, init, tmp_path, steps=1, max_iter=2)
    model, backbone = load_prior(init)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[])
    state = tmp_path / "deq.pt.ckpt"
    save_train_state(state, stage="train-deq", cfg=cfg, backbone=backbone, step=1, model=model,
                     optimizer=optimizer, scheduler=scheduler, totals={}, init_sha256=init_fingerprint(cfg))
    messages: list[str] = []

    def resume(c):
        return load_train_state(state, stage="train-deq", cfg=c, model=model, optimizer=optimizer,
                                scheduler=scheduler, log=messages.append, init_sha256=init_fingerprint(c))[0]

    assert resume(cfg) == 1 and "resuming after step 1" in messages[-1]
    assert resume(dataclasses.replace(cfg, max_iter=3)) == 0 and "differs in ['max_iter']" in messages[-1]
    torch.manual_seed(7)  # the same --init path, other weights (e.g. the Gauss prior was retrained)
    save_checkpoint(init, build_backbone(TINY), TINY)
    assert resume(cfg) == 0 and "other initial weights" in messages[-1]


def test_a_finished_run_leaves_no_resume_state(images, prior, tmp_path):
    cfg = _cfg(images, prior, tmp_path, steps=2, max_iter=2, checkpoint_every=1)
    train_deq(cfg, quiet=True)
    assert Path(cfg.out).is_file() and not Path(cfg.out + ".ckpt").exists()


def test_budgets_of_one_run_share_a_state_and_equal_the_straight_run(images, prior, tmp_path):
    """--state: the 4-step budget resumes the kept state of the 2-step budget and ends with the
    weights of an uninterrupted 4-step run; a state past the requested steps is not used."""
    shared = str(tmp_path / "run.ckpt")
    short = _cfg(images, prior, tmp_path, steps=2, max_iter=3, out=str(tmp_path / "m2.pt"), state=shared)
    long = dataclasses.replace(short, steps=4, out=str(tmp_path / "m4.pt"))
    train_deq(short, quiet=True)
    assert Path(shared).is_file() and torch.load(shared, weights_only=False)["step"] == 2  # kept
    totals = train_deq(long, quiet=True)
    straight = dataclasses.replace(long, out=str(tmp_path / "straight.pt"), state=None)
    train_deq(straight, quiet=True)
    a, b = torch.load(long.out, weights_only=True), torch.load(straight.out, weights_only=True)
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert totals["solves"] == 4 * 2 * 2 and a["totals"] == b["totals"]
    model, _ = load_prior(prior)
    optimizer = torch.optim.Adam(model.parameters(), lr=short.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[])
    messages = []
    start, _ = load_train_state(Path(shared), stage="train-deq", cfg=short, model=model, optimizer=optimizer,
                                scheduler=scheduler, log=messages.append, init_sha256=init_fingerprint(short))
    assert start == 0 and "past this run's 2 steps" in messages[-1]


def test_channels_last_training_is_the_same_maths(images, prior, tmp_path):
    """--channels-last changes the memory layout only: two float64 steps give the same weights
    (to rounding), and the checkpoint loads into a default-layout network."""
    torch.set_default_dtype(torch.float64)
    try:
        runs = []
        for layout in (False, True):
            cfg = _cfg(images, prior, tmp_path, steps=2, max_iter=4, out=str(tmp_path / f"cl{int(layout)}.pt"),
                       batch_tasks=True)
            train_deq(cfg, quiet=True, channels_last=layout)
            runs.append(load_prior(cfg.out)[0].state_dict())
        for key in runs[0]:
            torch.testing.assert_close(runs[0][key], runs[1][key], rtol=1e-9, atol=1e-12)
    finally:
        torch.set_default_dtype(torch.float32)


def _pickled_modules(path: Path) -> set[str]:
    """The modules of every global (class or function) the pickle of a torch.save file names."""
    seen: set[str] = set()

    class Recording(pickle.Unpickler):
        def find_class(self, module, name):
            seen.add(module)
            return super().find_class(module, name)

    torch.load(path, map_location="cpu", weights_only=False,
               pickle_module=types.SimpleNamespace(Unpickler=Recording, load=pickle.load, __name__="pickle"))
    return seen


def test_checkpoints_pickle_nothing_from_the_training_code(images, prior, tmp_path):
    """Resume states and final checkpoints hold plain containers, tensors and numpy arrays only, so
    files written before mtdeq/train.py became the mtdeq.train package (or after any later move of
    the training code) still load and resume."""
    cfg = DenoiserTrainConfig(out=str(tmp_path / "g.pt"), backbone="drunet", nc=TINY.nc, nb=TINY.nb,
                              train_dirs=(str(images),), crop=16, batch_size=2, steps=2, lr_milestones=(1,))
    model, backbone = load_prior(prior)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(cfg.lr_milestones))
    model(torch.rand(1, 3, 16, 16), 0.1).mean().backward()
    optimizer.step()  # an optimiser state with moments
    scheduler.step()
    state = tmp_path / "g.pt.ckpt"
    save_train_state(state, stage="pretrain-denoiser", cfg=cfg, backbone=backbone, step=1, model=model,
                     optimizer=optimizer, scheduler=scheduler, totals={"skipped_steps": 0}, init_sha256=None)
    train_deq(_cfg(images, prior, tmp_path, steps=1, max_iter=2), quiet=True)
    for path in (state, tmp_path / "deq.pt"):
        modules = _pickled_modules(path)
        assert modules and not any(m == "mtdeq" or m.startswith("mtdeq.") for m in modules), (path, modules)


# ----------------------------------------------------------------------------- configs
def test_configs_reject_unknown_keys_and_bad_values(images, prior, tmp_path):
    good = {"out": "m.pt", "init": str(prior), "train_dirs": [str(images)]}
    assert config_from_dict(DEQTrainConfig, good).train_dirs == (str(images),)
    with pytest.raises(ValueError, match="bogus"):
        config_from_dict(DEQTrainConfig, {**good, "bogus": 1})
    with pytest.raises(ValueError, match="--task-set.*'st_blur'"):
        config_from_dict(DEQTrainConfig, {**good, "task_set": "st_blur"})
    with pytest.raises(ValueError, match="--solver"):
        config_from_dict(DEQTrainConfig, {**good, "solver": "broyden"})
    with pytest.raises(ValueError, match="--init"):
        DenoiserTrainConfig(out="m.pt", steps=0)


# ----------------------------------------------------------------------------- denoiser
def test_pretrain_converts_kair_weights_and_trains(images, tmp_path):
    ffd = BackboneConfig("ffdnet", (8,), 3)
    torch.manual_seed(1)
    raw = tmp_path / "kair.pth"
    torch.save(build_backbone(ffd).state_dict(), raw)  # a raw KAIR-style state dict
    common = dict(backbone="ffdnet", nc=(8,), nb=3, init=str(raw), train_dirs=(str(images),), crop=16,
                  batch_size=4, lr=1e-2)
    out = pretrain_denoiser(DenoiserTrainConfig(out=str(tmp_path / "g.pt"), steps=0, **common), quiet=True)
    converted, cfg = load_prior(out)
    assert cfg == ffd
    assert all(torch.equal(v, torch.load(raw)[k]) for k, v in converted.state_dict().items())

    log = tmp_path / "den.csv"
    cfg = DenoiserTrainConfig(out=str(tmp_path / "g2.pt"), steps=40, log_csv=str(log), val_dir=str(images),
                              val_every=40, **common)
    pretrain_denoiser(cfg, quiet=True)
    rows = list(csv.DictReader(log.open()))
    assert rows[0]["step"] == "0" and rows[-1]["step"] == "40"
    assert float(rows[-1]["val_psnr"]) > float(rows[0]["val_psnr"])  # denoising got better
    assert torch.load(tmp_path / "g2.pt", weights_only=True)["train_config"]["sigma_max"] == cfg.sigma_max


def test_amp_bf16_is_a_clear_error_on_cpu(images, prior, tmp_path):
    with pytest.raises(ValueError, match="--amp bf16: mixed precision is for GPU training"):
        train_deq(_cfg(images, prior, tmp_path, steps=1), amp="bf16", quiet=True)
    with pytest.raises(ValueError, match="--amp bf16"):
        pretrain_denoiser(DenoiserTrainConfig(out=str(tmp_path / "g.pt"), backbone="drunet", nc=TINY.nc, nb=TINY.nb,
                                              train_dirs=(str(images),), crop=16, batch_size=2, steps=1),
                          amp="bf16", quiet=True)


def test_pretrain_from_scratch_is_reproducible(images, tmp_path):
    """No --init: the initial weights come from --seed, so two runs are bit-identical."""
    common = dict(backbone="drunet", nc=(8, 16, 32, 64), nb=1, train_dirs=(str(images),), crop=16, batch_size=2,
                  steps=2, lr=1e-3)
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        torch.manual_seed(100 + len(runs))  # global RNG state must not matter
        out = pretrain_denoiser(DenoiserTrainConfig(out=str(tmp_path / f"{name}.pt"), seed=seed, **common), quiet=True)
        runs.append(load_prior(out)[0].state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


# ----------------------------------------------------------------------------- accumulation, warm-up, early tolerance
def test_accumulated_step_is_the_mean_over_the_pairs_of_all_mini_batches(images, prior, tmp_path):
    """--accum: a step over two mini-batches has the gradient of the mean loss over all their (image,
    task) pairs, each mini-batch with its own crops, tasks and noise."""
    cfg = _cfg(images, prior, tmp_path, accum=2)
    data = PatchDataset([str(images)], crop=16)
    x1, x2 = data.sample_batch(torch.Generator().manual_seed(2), 2), data.sample_batch(torch.Generator().manual_seed(3), 2)
    tasks1, tasks2 = [TEST_TASKS["blur2.0"], TEST_TASKS["comp80"]], [TEST_TASKS["sr2_bicubic_n1"], TEST_TASKS["blur1.6"]]
    model = _model(prior)
    stats = deq_step(model, torch.optim.SGD(model.parameters(), lr=0.0), x1, tasks1, step_generator(0, 5), cfg,
                     micro=[(x2, tasks2, step_generator(0, 5, 1))])
    grads = [p.grad.clone() for p in model.parameters()]

    reference = _model(prior)
    losses = []
    for x, tasks, g in ((x1, tasks1, step_generator(0, 5)), (x2, tasks2, step_generator(0, 5, 1))):
        losses += [solve_task(reference, x, t, g, cfg).per_image_loss for t in tasks]
    losses = torch.cat(losses)
    losses.mean().backward()
    assert stats.n_valid == 8 and len(stats.status) == 8 and len(stats.tasks) == 4
    assert stats.loss == pytest.approx(float(losses.mean().detach()), rel=1e-5)
    for a, p in zip(grads, reference.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-4, atol=1e-7)


def test_first_mini_batch_draws_what_a_step_without_accumulation_draws():
    a, b, c = step_generator(3, 7), step_generator(3, 7, 0), step_generator(3, 7, 1)
    first = torch.rand(4, generator=a)
    assert torch.equal(first, torch.rand(4, generator=b)) and not torch.equal(first, torch.rand(4, generator=c))


def test_warm_up_and_step_decay_of_the_learning_rate(images, prior, tmp_path):
    from mtdeq.train.deq import lr_scheduler

    lrs = {}
    for warmup in (0, 4):
        cfg = _cfg(images, prior, tmp_path, lr=1.0, lr_warmup=warmup, lr_step=3, lr_gamma=0.5)
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
        scheduler = lr_scheduler(optimizer, cfg)
        lrs[warmup] = []
        for _ in range(7):
            lrs[warmup].append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
    assert lrs[0] == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25])  # StepLR unchanged without warm-up
    assert lrs[4] == pytest.approx([0.25, 0.5, 0.75, 0.5, 0.5, 0.5, 0.25])


def test_early_tolerance_applies_to_the_first_steps_only(images, prior, tmp_path):
    cfg = _cfg(images, prior, tmp_path, tol=1e-6, early_tol=1e-4, early_steps=2)
    assert [cfg.tol_at(k) for k in (1, 2, 3)] == [1e-4, 1e-4, 1e-6]
    assert _cfg(images, prior, tmp_path, tol=1e-6).tol_at(1) == 1e-6
    with pytest.raises(ValueError, match="--early-tol"):
        _cfg(images, prior, tmp_path, tol=1e-6, early_tol=1e-7, early_steps=2)
    with pytest.raises(ValueError, match="--accum"):
        _cfg(images, prior, tmp_path, accum=0)
    # a looser tolerance stops the same solves earlier
    x = PatchDataset([str(images)], crop=16).sample_batch(torch.Generator().manual_seed(1), 2)
    its = {}
    for tol in (1e-7, 1e-3):
        model = _model(prior)
        stats = deq_step(model, torch.optim.SGD(model.parameters(), lr=0.0), x, [TEST_TASKS["blur1.6"]],
                         step_generator(0, 1), cfg, tol=tol)
        its[tol] = stats.iterations
    assert all(a < b for a, b in zip(its[1e-3], its[1e-7])), its
