"""``bench floor``: how fast could the quick DAG's evaluations be on this CPU?  (issue 24)

The evaluations are two thirds of the quick DAG's job time (``timings.csv``), and every one of their
seconds is spent in denoiser forwards: one per PnP-ADMM or RED iteration.  This bench counts that
arithmetic exactly and sets it against the fastest arithmetic the core does:

1. **Work.**  From a reference's ``per_image.csv`` (method, task, image, seed, iterations and, with
   the budget check, iterations_2x), the denoiser forwards of every evaluation: PnP-ADMM runs K and
   then 2K (its sigma schedule depends on K, :func:`mtdeq.evaluate.solve_with_budget_check`), RED
   one run of 2K with a snapshot at K.  Each forward's multiply-accumulates (MACs) are counted by
   hooks on the prior's convolutions, run on torch's ``meta`` device (shapes only, no arithmetic),
   at the shape the solver sees: the test image cropped as the protocol crops it for that task.
2. **Rates**, measured in one run with a fixed thread count (default 1, as the DAG's evaluate
   jobs): the prior's forward on a centre crop of an image (``--size``, channels-last as in the
   DAG), in GMAC/s, and float32 matrix multiplication (``torch.mm``, n x n, ``--gemm-size``), the
   fastest dense arithmetic torch does on the core; best of ``--repeats`` after a warm-up.
3. **Floor.**  Per method, the measured job-seconds of its evaluate jobs (``timings.csv``), the
   seconds its MACs take at the forward's rate (what the jobs should cost if forwards are all they
   do) and at the GEMM rate (a lower bound for any layout or kernel change that keeps the
   arithmetic: convolutions do not outrun GEMM).  A TOTAL row sums them and, with ``--cores``,
   gives the wall minutes of the evaluations alone at full use of the cores.  The other rules'
   job-seconds (training, tuning) are a row each, measured only.

Columns FLOOR_COLUMNS; ``rate`` rows hold the two rates (``gmac_per_s``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from mtdeq.bench.solvers import _default_data
from mtdeq.bench.testtime import _load_prior, _read, add_timed_forward_args

FLOOR_COLUMNS = ["kind", "name", "forwards", "gmac", "job_s", "s_at_forward_rate", "s_at_gemm_rate", "gmac_per_s",
                 "threads", "cores", "wall_min_at_gemm_rate"]


def conv_macs(model: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of the convolutions of one ``model(x, sigma)`` forward on x of ``shape``.

    Counted by forward hooks on a copy of the model on the ``meta`` device, so nothing is computed:
    Conv2d out.numel() * in/groups * kh * kw, ConvTranspose2d in.numel() * out/groups * kh * kw.
    """
    import copy

    meta = copy.deepcopy(model).to("meta")
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        kh, kw = module.kernel_size
        if isinstance(module, torch.nn.ConvTranspose2d):
            total += inputs[0].numel() * (module.out_channels // module.groups) * kh * kw
        else:
            total += output.numel() * (module.in_channels // module.groups) * kh * kw

    handles = [m.register_forward_hook(hook) for m in meta.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    try:
        with torch.no_grad():
            meta(torch.empty(shape, device="meta"), torch.full((shape[0],), 0.1, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return int(total)


def evaluation_forwards(per_image: pd.DataFrame) -> pd.Series:
    """Denoiser forwards of each per-image row (see the module docstring): PnP-ADMM K + 2K, RED 2K."""
    from mtdeq.evaluate import algorithm_for

    it = per_image["iterations"].astype(float)
    it2 = per_image["iterations_2x"].astype(float) if "iterations_2x" in per_image else pd.Series(0.0, index=it.index)
    it2 = it2.fillna(0.0)
    red = per_image["method"].map(lambda m: algorithm_for(str(m).removesuffix("_own")) == "red")
    return (it + it2).where(~red, it2.where(it2 > 0, it)).astype(int)


def _time_best(fn, repeats: int) -> float:
    fn()  # warm-up: oneDNN primitive creation, allocator
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_rates(model, image, *, size: int, gemm_size: int, repeats: int) -> dict[str, float]:
    """GMAC/s of the prior's forward (channels-last, centre crop ``size``) and of an n x n float32 matmul."""
    from mtdeq.models import for_inference

    net = for_inference(model, "cpu", channels_last=True)
    x = _read(image, size)
    level = torch.full((1,), 25.0 / 255.0)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(gemm_size, gemm_size, generator=g), torch.randn(gemm_size, gemm_size, generator=g)
    with torch.inference_mode():
        t_fwd = _time_best(lambda: net(x, level), repeats)
        t_mm = _time_best(lambda: torch.mm(a, b), repeats)
    return {"forward": conv_macs(model, tuple(x.shape)) / t_fwd / 1e9, "gemm": gemm_size**3 / t_mm / 1e9,
            "forward_shape": "x".join(map(str, x.shape[-2:]))}


def floor_table(per_image: pd.DataFrame, timings: pd.DataFrame, macs: dict[tuple[str, str], int],
                rates: dict[str, float], *, threads: int, cores: int) -> pd.DataFrame:
    """FLOOR_COLUMNS rows: the two rates, one row per evaluated method, the other rules, TOTAL (evaluations)."""
    work = per_image.assign(forwards=evaluation_forwards(per_image))
    if "seed" in work:  # the evaluate job of seed s > 0 is <method>_seed<s> (the spread.seeds rows)
        work["method"] = [m if int(s) == 0 else f"{m}_seed{int(s)}" for m, s in zip(work["method"], work["seed"])]
    work["gmac"] = [f * macs[(t, i)] / 1e9 for f, t, i in zip(work["forwards"], work["task"], work["image"])]
    jobs = timings[timings["rule"] == "evaluate"].copy()
    jobs["method"] = jobs["job"].astype(str).str.split("/").str[0]
    rows = [{"kind": "rate", "name": name, "gmac_per_s": rates[name], "threads": threads} for name in ("forward", "gemm")]
    for method, group in work.groupby("method", sort=False):
        gmac = float(group["gmac"].sum())
        rows.append({"kind": "evaluate", "name": method, "forwards": int(group["forwards"].sum()), "gmac": gmac,
                     "job_s": float(jobs.loc[jobs["method"] == method, "seconds"].sum()),
                     "s_at_forward_rate": gmac / rates["forward"], "s_at_gemm_rate": gmac / rates["gemm"],
                     "threads": threads})
    evals = pd.DataFrame(rows[2:])
    for rule, group in timings[~timings["rule"].isin(["evaluate", "TOTAL"])].groupby("rule"):
        rows.append({"kind": "other", "name": rule, "job_s": float(group["seconds"].sum())})
    total = {"kind": "total", "name": "evaluate", "forwards": int(evals["forwards"].sum()), "gmac": evals["gmac"].sum(),
             "job_s": evals["job_s"].sum(), "s_at_forward_rate": evals["s_at_forward_rate"].sum(),
             "s_at_gemm_rate": evals["s_at_gemm_rate"].sum(), "threads": threads, "cores": cores}
    total["wall_min_at_gemm_rate"] = total["s_at_gemm_rate"] / cores / 60
    rows.append(total)
    return pd.DataFrame(rows, columns=FLOOR_COLUMNS)


def add_floor_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference", default="results/reference/quick",
                   help="reference folder with per_image.csv and timings.csv (default: quick's blessed one)")
    p.add_argument("--images", default=_default_data("Set5"), help="the test images of per_image.csv (default Set5)")
    add_timed_forward_args(p)  # --prior --image --size --repeats --threads (the best pass is kept)
    p.add_argument("--gemm-size", type=int, default=2048, help="n of the n x n matmul (default 2048)")
    p.add_argument("--cores", type=int, default=2, help="cores of the DAG run, for the wall minutes (default 2)")
    p.add_argument("--out", default="results/bench/floor.csv", help="CSV to write")


def run_floor(args: argparse.Namespace) -> int:
    """Evaluation MACs of a reference counted exactly, against this core's forward and GEMM rates."""
    from mtdeq import tasks
    from mtdeq.evaluate import load_test_images
    from mtdeq.io import atomic_write_text

    reference = Path(args.reference)
    for name in ("per_image.csv", "timings.csv"):
        if not (reference / name).is_file():
            raise SystemExit(f"bench floor: {reference / name} not found (a blessed reference folder holds both)")
    per_image = pd.read_csv(reference / "per_image.csv")
    timings = pd.read_csv(reference / "timings.csv")
    torch.set_num_threads(args.threads)
    model = _load_prior(args.prior)
    images = dict(load_test_images(args.images))
    missing = sorted(set(per_image["image"].astype(str)) - set(images))
    if missing:
        raise SystemExit(f"bench floor: images {missing} of per_image.csv are not in {args.images}")
    macs = {}
    for task, image in per_image[["task", "image"]].drop_duplicates().itertuples(index=False):
        truth = tasks.TEST_PROTOCOL.crop_truth(tasks.TEST_TASKS[task], images[image])
        macs[(task, image)] = conv_macs(model, tuple(truth.shape))
    rates = measure_rates(model, args.image, size=args.size, gemm_size=args.gemm_size, repeats=args.repeats)
    table = floor_table(per_image, timings, macs, rates, threads=args.threads, cores=args.cores)
    print(f"forward {rates['forward']:.1f} GMAC/s ({rates['forward_shape']}), matmul {rates['gemm']:.1f} GMAC/s "
          f"({args.threads} thread(s))")
    total = table[table["kind"] == "total"].iloc[0]
    print(f"evaluations: {int(total['forwards']):,} forwards, {total['gmac']:,.0f} GMAC; measured {total['job_s']:,.0f} "
          f"job-s, {total['s_at_forward_rate']:,.0f} s at the forward rate, {total['s_at_gemm_rate']:,.0f} s at the "
          f"matmul rate = {total['wall_min_at_gemm_rate']:.0f} min on {args.cores} cores")
    out = Path(args.out)
    atomic_write_text(out, table.to_csv(index=False, float_format="%.6g"))
    print(f"-> {out}")
    return 0
