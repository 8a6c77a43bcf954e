"""Test-time evaluation: restore every Set5 image of one task with one prior, write a per-image CSV.

For a method m (a row of Tables I-II) and a task t (a column), each test image x_gt is

    1. read as (1, 3, H, W) in [0, 1] (optionally centre-cropped to --crop for cheap scales);
    2. degraded: (op, y, x_gt) = mtdeq.tasks.degrade(t, x_gt, seed = seed + image index) --
       the seed depends only on the image's position in the sorted folder, so every method
       sees the very same mask and noise;
    3. restored with PnP-ADMM (every method but RED) or RED, using the hyper-parameters of
       the row (algorithm, task) of tuned_params.csv -- all ADMM priors share the row tuned
       for the Gauss prior, as in the paper (Section III-C);
    4. scored: PSNR / SSIM (mtdeq.metrics) against x_gt, which degrade() has already cropped
       to a multiple of the SR factor.

The per-image CSV has the columns of CSV_COLUMNS; a sidecar ``<out>.provenance.json`` records
the parameters, prior, seed and code version.  With ``--reuse PRIOR CSV`` (the training-budget
curve: a budget run's checkpoint can be the very model that `all` trained and evaluated) the rows of
CSV are copied instead of solved again when PRIOR's weights are bit-identical to --prior's
(mtdeq.fingerprint.weights_digest) and CSV's provenance records the same task, images, seed,
protocol, solver options, precision and tuned parameters (REUSE_KEYS); otherwise the images are
solved as usual and the log says which of these differed.  With --save-dir the restored images are
written as ``<save-dir>/<image>.png``; for method ``gauss`` (run once per task, so one copy
suffices) the degraded input is also written, as ``<save-dir>/../../input/<task>/<image>.png``:
y itself when it has the image's shape (completion, deblurring) and op.init(y) (the
solvers' start, an upsampling of y) when it does not (super-resolution).
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd

from mtdeq.cli import add_stage
from mtdeq.tasks import TEST_PROTOCOL, Protocol, add_protocol_args, protocol_from_args

# psnr: clipped to [0, 1] (our convention); psnr_unclipped: [8]'s compare_psnr, which does not clip
CSV_COLUMNS = ["image", "method", "task", "sigma_noise", "psnr", "ssim", "iterations", "seconds", "psnr_unclipped"]
BUDGET_COLUMNS = ["psnr_2x", "iterations_2x"]  # with --budget-check: the same solve with 2x the iterations
# with --budget-curve (implies --budget-check): PSNR after round(f K) iterations for f in CURVE_FRACTIONS
# (f = 1 and 2 are the psnr and psnr_2x columns), so a cell whose PSNR falls with more iterations
# can report its best K (best_budget)
CURVE_FRACTIONS = (0.5, 1.5)
CURVE_COLUMNS = [f"psnr_{f:g}x" for f in CURVE_FRACTIONS] + [f"iterations_{f:g}x" for f in CURVE_FRACTIONS]
TUNED_COLUMNS = ["method", "task", "iterations", "sigma_max", "sigma_min", "lam", "sigma_denoise", "step"]
# eval method -> which tuned-parameter row (algorithm) it uses; every method not listed uses admm
METHODS = ("red", "gauss", "gauss_budget", "st_comp", "st_sr", "proposed")
_METHOD_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# EvalSettings fields that must agree for --reuse (with the tuned parameters and the precision)
REUSE_KEYS = ("task", "images", "max_images", "crop", "seed", "algorithm", "protocol", "red_tol", "red_accel",
              "channels_last")


@dataclass(frozen=True)
class SolverParams:
    """Hyper-parameters of one (algorithm, task) row of tuned_params.csv.

    admm uses iterations, sigma_max, sigma_min, lam (None -> solver default max(sigma_noise, 1/255));
    red uses iterations, lam, sigma_denoise, step (None -> 1).
    """

    algorithm: str
    iterations: int
    sigma_max: float | None = None
    sigma_min: float | None = None
    lam: float | None = None
    sigma_denoise: float | None = None
    step: float | None = None


def algorithm_for(method: str) -> str:
    """The tuned-parameter row a method uses: ``red`` for RED, ``admm`` for every PnP-ADMM prior."""
    return "red" if method == "red" else "admm"


def _optional(value) -> float | None:
    return None if pd.isna(value) else float(value)


def read_params(path: str | Path, algorithm: str, task: str, *, method: str | None = None) -> SolverParams:
    """Read the row (method == algorithm, task) of a tuned_params.csv file.

    Raises:
        FileNotFoundError: the file does not exist.
        KeyError: no such row, or more than one (the message names file, method and task).
        ValueError: a required column is missing or empty.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tuned-parameter file not found (run the tune/collect-tuned stages)")
    table = pd.read_csv(path)
    missing = [c for c in ("method", "task", "iterations") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; expected at least {TUNED_COLUMNS}")
    rows = table[(table["method"] == algorithm) & (table["task"] == task)]
    via = f" (needed by --method {method})" if method and method != algorithm else ""
    if len(rows) == 0:
        have = sorted(set(zip(table["method"], table["task"])))
        raise KeyError(
            f"{path}: no tuned parameters for method={algorithm!r}, task={task!r}{via}; "
            f"the file has rows for (method, task) = {have}"
        )
    if len(rows) > 1:
        raise KeyError(f"{path}: {len(rows)} rows for method={algorithm!r}, task={task!r}; expected exactly one")
    row = rows.iloc[0]
    params = SolverParams(
        algorithm=algorithm,
        iterations=int(row["iterations"]),
        sigma_max=_optional(row.get("sigma_max")),
        sigma_min=_optional(row.get("sigma_min")),
        lam=_optional(row.get("lam")),
        sigma_denoise=_optional(row.get("sigma_denoise")),
        step=_optional(row.get("step")),
    )
    needed = ("sigma_max", "sigma_min") if algorithm == "admm" else ("lam", "sigma_denoise")
    empty = [name for name in needed if getattr(params, name) is None]
    if empty:
        raise ValueError(f"{path}: row method={algorithm!r}, task={task!r} has no value for {empty}")
    return params


def centre_crop(x, size: int | None):
    """Centre crop x (..., H, W) to (..., min(size, H), min(size, W)); size None -> x unchanged."""
    if size is None:
        return x
    if size < 1:
        raise ValueError(f"centre_crop: size must be >= 1, got {size}")
    h, w = x.shape[-2:]
    ch, cw = min(size, h), min(size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return x[..., top : top + ch, left : left + cw]


def load_test_images(folder: str | Path, *, max_images: int | None = None, crop: int | None = None):
    """[(name, x (1, 3, H, W))] for the sorted images of ``folder`` (first max_images, centre crop)."""
    from mtdeq.io import list_images, read_image

    files = list_images(folder)
    if max_images is not None:
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        files = files[:max_images]
    return [(f.stem, centre_crop(read_image(f), crop).unsqueeze(0)) for f in files]


def run_solver(params: SolverParams, *, op, y, denoiser, sigma_noise: float, progress: bool = False,
               red_tol: float = 0.0, snapshot_at: int | None = None, snapshots_at: tuple[int, ...] = (),
               red_accel: str = "plain"):
    """Run PnP-ADMM or RED with ``params``; returns (x (B, 3, H, W), info with .iterations, .seconds).

    ``red_tol`` > 0 makes RED stop at that relative change, ``params.iterations`` being the cap;
    ``snapshot_at`` / ``snapshots_at`` (RED only) also return the estimates after those many iterations
    (info.snapshot / info.snapshots); ``red_accel`` is RED's scheme, "plain" or "anderson"
    (mtdeq.solvers.red).
    """
    from mtdeq.solvers import pnp_admm, red

    common = dict(op=op, y=y, denoiser=denoiser, sigma_noise=sigma_noise, iterations=params.iterations,
                  lam=params.lam, progress=progress)
    if params.algorithm == "admm":
        if snapshot_at is not None or snapshots_at:
            raise ValueError("run_solver: snapshot_at applies to RED only (PnP-ADMM's schedule depends on K)")
        return pnp_admm(**common, sigma_max=params.sigma_max, sigma_min=params.sigma_min)
    if params.algorithm == "red":
        return red(**common, sigma_denoise=params.sigma_denoise, step=1.0 if params.step is None else params.step,
                   tol=red_tol, snapshot_at=snapshot_at, snapshots_at=snapshots_at, accel=red_accel)
    raise ValueError(f"unknown algorithm {params.algorithm!r}; expected 'admm' or 'red'")


def curve_iterations(k: int) -> list[int]:
    """The iteration counts max(1, round(f K)) of CURVE_FRACTIONS for the tuned K."""
    return [max(1, int(round(f * k))) for f in CURVE_FRACTIONS]


def solve_with_budget_check(params: SolverParams, budget_check: bool, x_gt, *, budget_curve: bool = False,
                            **solve):
    """run_solver, and with ``budget_check`` also the solve with twice the iterations.

    Returns (x_hat on the CPU, info, {} or {"psnr_2x": PSNR of the 2K solve against x_gt,
    "iterations_2x": int}).  RED has no memory beyond its iterate (and with Anderson the snapshot at K
    of a longer run is still the run capped at K), so one run with cap 2K and a snapshot at K gives
    both results; PnP-ADMM's schedule depends on K, so its 2K solve is a second run.
    ``budget_curve`` (implies budget_check) adds the CURVE_COLUMNS: PSNR and iterations after
    round(f K) iterations for f in CURVE_FRACTIONS (RED: snapshots of the same run; ADMM: one more
    solve per fraction, with its schedule over that many iterations).
    """
    from mtdeq.metrics import psnr

    if not (budget_check or budget_curve):
        x_hat, info = run_solver(params, **solve)
        return x_hat.detach().cpu(), info, {}
    k = params.iterations
    double = replace(params, iterations=2 * k)
    extra = curve_iterations(k) if budget_curve else []
    curve = {}
    if params.algorithm == "red":
        x_2x, info_2x = run_solver(double, snapshot_at=k, snapshots_at=tuple(extra), **solve)
        info = replace(info_2x, iterations=info_2x.snapshot_iterations, snapshot=None, snapshots={},
                       snapshots_iterations={})
        x_hat = info_2x.snapshot
        for f, n in zip(CURVE_FRACTIONS, extra):
            curve[f] = (info_2x.snapshots[n], info_2x.snapshots_iterations[n])
    else:
        x_hat, info = run_solver(params, **solve)
        x_2x, info_2x = run_solver(double, **solve)
        for f, n in zip(CURVE_FRACTIONS, extra):
            x_f, info_f = run_solver(replace(params, iterations=n), **solve)
            curve[f] = (x_f, int(info_f.iterations))
    budget = {"psnr_2x": psnr(x_2x.detach().cpu(), x_gt), "iterations_2x": int(info_2x.iterations)}
    for f, (x_f, n) in curve.items():
        budget[f"psnr_{f:g}x"] = psnr(x_f.detach().cpu(), x_gt)
        budget[f"iterations_{f:g}x"] = int(n)
    return x_hat.detach().cpu(), info, budget


def best_budget(table: pd.DataFrame) -> pd.DataFrame:
    """Per (method, task) of an evaluation table with the budget-curve columns: the mean PSNR at each
    multiple f of the tuned K (0.5, 1, 1.5, 2) and the best of them -- "report the best K, not only
    the cap" where more iterations hurt.  Columns method, task, k (the tuned K = iterations of the
    f = 1 solve, the largest over the images), psnr_<f>x, best_factor, best_k (round(best_factor * K)),
    best_psnr, psnr_k (the mean at K, the reported cell).  A fraction whose column is absent is skipped.
    """
    from mtdeq.validation import BUDGET_FACTORS, best_factor

    rows = []
    for (method, task), group in table.groupby(["method", "task"], sort=False):
        means = {f: float(group[c].mean()) for f, c in BUDGET_FACTORS.items() if c in group.columns}
        best = best_factor(means)
        k = int(group["iterations"].max())
        rows.append({"method": method, "task": task, "k": k,
                     **{f"psnr_{f:g}x": v for f, v in means.items()},
                     "best_factor": best, "best_k": max(1, int(round(best * k))), "best_psnr": means[best],
                     "psnr_k": means[1.0]})
    return pd.DataFrame(rows)


def degraded_view(op, y, x_gt):
    """The degraded input as an image of x_gt's shape: y itself, or op.init(y) when shapes differ."""
    return y if tuple(y.shape) == tuple(x_gt.shape) else op.init(y)


def input_dir_for(save_dir: str | Path, task: str) -> Path:
    """Where the degraded inputs of ``task`` go: <save_dir>/../../input/<task> (save_dir = .../<method>/<task>)."""
    return Path(save_dir).parent.parent / "input" / task


@dataclass(frozen=True)
class EvalSettings:
    """One evaluate run: which prior restores which task on which images."""

    method: str
    task: str
    prior: str
    images: str
    params: str
    out: str
    save_dir: str | None = None
    max_images: int | None = None
    crop: int | None = None
    seed: int = 0
    device: str = "auto"
    algorithm: str | None = None  # None -> algorithm_for(method)
    protocol: Protocol = TEST_PROTOCOL  # kernels, SR start and crops of the observations
    red_tol: float = 0.0  # RED's relative-change stop (0: exactly the tuned K iterations)
    budget_check: bool = False  # also run with twice the iterations: columns psnr_2x, iterations_2x
    budget_curve: bool = False  # also K/2 and 3K/2 (CURVE_COLUMNS; implies budget_check)
    channels_last: bool = True  # channels-last network weights (mtdeq.models.for_inference)
    red_accel: str = "plain"  # RED's scheme: plain or anderson (mtdeq.solvers.red)


def _plain(value):
    """JSON round trip: dataclasses and tuples as a provenance record stores them."""
    return json.loads(json.dumps(value, default=str))


def reusable(settings: EvalSettings, params: SolverParams, prior: str | Path, csv: str | Path) -> tuple[bool, str]:
    """Whether ``csv`` (an earlier evaluation of checkpoint ``prior``) holds exactly the rows that
    ``settings`` would compute: (True, the weights' SHA-256) or (False, what differs)."""
    from mtdeq.fingerprint import weights_digest
    from mtdeq.runtime import precision_name

    csv, sidecar = Path(csv), Path(csv).with_suffix(".provenance.json")
    if not csv.is_file() or not sidecar.is_file():
        return False, f"{csv} or its provenance file is missing"
    digest = weights_digest(prior)
    if digest != weights_digest(settings.prior):
        return False, f"the weights of {prior} and {settings.prior} differ"
    record = json.loads(sidecar.read_text())
    earlier = record.get("config", {}).get("settings", {})
    ours = _plain(asdict(settings))
    differ = [k for k in REUSE_KEYS if earlier.get(k) != ours.get(k)]
    if record.get("config", {}).get("params") != _plain(asdict(params)):
        differ.append("tuned parameters")
    if record.get("precision") != precision_name():
        differ.append("precision")
    return (False, f"{csv} was evaluated with another {', '.join(differ)}") if differ else (True, digest)


def evaluate(settings: EvalSettings, *, progress: bool = True,
             reuse: tuple[str | Path, str | Path] | None = None) -> pd.DataFrame:
    """Restore every image of ``settings.images`` for one (method, task); write and return the CSV rows."""
    from tqdm import tqdm

    from mtdeq import tasks
    from mtdeq.io import atomic_write_text, provenance, write_image
    from mtdeq.metrics import psnr, ssim
    from mtdeq.models import for_inference, load_prior
    from mtdeq.runtime import describe_device, resolve_device

    if not _METHOD_NAME.match(settings.method):
        raise ValueError(f"--method {settings.method!r}: expected a lower-case name such as {METHODS}")
    if settings.task not in tasks.TEST_TASKS:
        raise KeyError(f"--task {settings.task!r}: unknown task; expected one of {list(tasks.TEST_TASKS)}")
    task = tasks.TEST_TASKS[settings.task]
    algorithm = settings.algorithm or algorithm_for(settings.method)
    params = read_params(settings.params, algorithm, settings.task, method=settings.method)
    if reuse is not None:
        same, why = reusable(settings, params, *reuse)
        if same:
            return _copy_rows(settings, params, *reuse, digest=why)
        print(f"--reuse: solving, since {why}")
    denoiser, backbone = load_prior(settings.prior)
    device = resolve_device(settings.device)
    denoiser = for_inference(denoiser, device, channels_last=settings.channels_last)
    images = load_test_images(settings.images, max_images=settings.max_images, crop=settings.crop)

    rows = []
    bar = tqdm(images, desc=f"evaluate {settings.method}/{settings.task}", disable=not progress)
    for index, (name, x) in enumerate(bar):
        deg = settings.protocol.degrade(task, x, seed=settings.seed + index)  # same seed: same y for every method
        y = deg.y.to(device)
        solve = dict(op=deg.op, y=y, denoiser=denoiser, sigma_noise=task.sigma_noise, red_tol=settings.red_tol,
                     red_accel=settings.red_accel)
        x_hat, info, budget = solve_with_budget_check(params, settings.budget_check, deg.x_gt,
                                                      budget_curve=settings.budget_curve, **solve)
        rows.append(
            {
                "image": name,
                "method": settings.method,
                "task": settings.task,
                "sigma_noise": task.sigma_noise,
                "psnr": psnr(x_hat, deg.x_gt),
                "ssim": ssim(x_hat, deg.x_gt),
                "iterations": int(info.iterations),
                "seconds": float(info.seconds),
                "psnr_unclipped": psnr(x_hat, deg.x_gt, clip=False),
                **budget,
            }
        )
        bar.set_postfix(psnr=f"{rows[-1]['psnr']:.2f}")
        if settings.save_dir:
            write_image(Path(settings.save_dir) / f"{name}.png", x_hat)
            if settings.method == "gauss":
                view = degraded_view(deg.op, deg.y, deg.x_gt)
                write_image(input_dir_for(settings.save_dir, settings.task) / f"{name}.png", view)

    columns = CSV_COLUMNS + (BUDGET_COLUMNS if settings.budget_check or settings.budget_curve else [])
    table = pd.DataFrame(rows, columns=columns + (CURVE_COLUMNS if settings.budget_curve else []))
    out = Path(settings.out)
    atomic_write_text(out, table.to_csv(index=False, float_format="%.6f"))
    record = provenance(
        {"settings": asdict(settings), "params": asdict(params), "backbone": asdict(backbone)}
    )
    record["device"] = describe_device(device)
    atomic_write_text(out.with_suffix(".provenance.json"), json.dumps(record, indent=2) + "\n")
    return table


def _copy_rows(settings: EvalSettings, params: SolverParams, prior: str | Path, csv: str | Path, *,
               digest: str) -> pd.DataFrame:
    """The rows of ``csv`` under this method's name, with a provenance record that says so (``digest``:
    the SHA-256 of the weights that ``reusable`` found equal)."""
    from mtdeq.io import atomic_write_text, provenance

    table = pd.read_csv(csv)[CSV_COLUMNS].assign(method=settings.method)
    out = Path(settings.out)
    atomic_write_text(out, table.to_csv(index=False, float_format="%.6f"))
    source = json.loads(Path(csv).with_suffix(".provenance.json").read_text())
    record = provenance({"settings": asdict(settings), "params": asdict(params)})
    record["reused"] = {"csv": str(csv), "prior": str(prior), "weights_sha256": digest,
                        "evaluated_at": {k: source.get(k) for k in ("git_commit", "utc_time", "cpu_capability")}}
    atomic_write_text(out.with_suffix(".provenance.json"), json.dumps(record, indent=2) + "\n")
    print(f"--reuse: {settings.prior} has the weights of {prior}: rows copied from {csv}")
    return table


def _run(args: argparse.Namespace) -> int:
    settings = EvalSettings(
        method=args.method,
        task=args.task,
        prior=args.prior,
        images=args.images,
        params=args.params,
        out=args.out,
        save_dir=args.save_dir,
        max_images=args.max_images,
        crop=args.crop,
        seed=args.seed,
        device=args.device,
        algorithm=args.algorithm,
        protocol=protocol_from_args(args),
        red_tol=args.red_tol,
        budget_check=args.budget_check,
        budget_curve=args.budget_curve,
        channels_last=args.channels_last,
        red_accel=args.red_accel,
    )
    table = evaluate(settings, reuse=tuple(args.reuse) if args.reuse else None)
    print(
        f"{settings.method}/{settings.task}: mean PSNR {table['psnr'].mean():.2f} dB, "
        f"SSIM {table['ssim'].mean():.4f} over {len(table)} image(s) -> {settings.out}"
    )
    return 0


def register(subparsers) -> None:
    """Add the ``evaluate`` stage."""
    p = add_stage(subparsers, "evaluate", "restore the test images of one task with one prior (PnP-ADMM or RED); per-image CSV", __doc__)
    p.add_argument("--method", required=True, help=f"table row, one of {', '.join(METHODS)} (or an extra label)")
    p.add_argument("--prior", required=True, help="checkpoint of the prior (mtdeq.models.load_prior)")
    p.add_argument("--task", required=True, help="test task name (mtdeq.tasks.TEST_TASKS), e.g. comp90")
    p.add_argument("--images", required=True, help="folder of test images, e.g. data/Set5")
    p.add_argument("--params", required=True, help="tuned_params.csv (row admm for ADMM priors, red for RED)")
    p.add_argument("--out", required=True, help="per-image CSV to write, e.g. results/quick/eval/gauss/comp90.csv")
    p.add_argument("--save-dir", default=None, help="write restored PNGs here (and, for gauss, the inputs)")
    p.add_argument("--max-images", type=int, default=None, help="use only the first N sorted images")
    p.add_argument("--crop", type=int, default=None, help="centre-crop images to this size (cheap scales)")
    p.add_argument("--seed", type=int, default=0, help="image i is degraded with seed + i (default 0)")
    p.add_argument("--device", default="auto", help="torch device: auto (cuda, else mps, else cpu; the default), cpu, cuda, mps")
    p.add_argument(
        "--algorithm",
        choices=("admm", "red"),
        default=None,
        help="override which tuned row to use (default: red for --method red, admm otherwise)",
    )
    p.add_argument("--red-tol", type=float, default=0.0,
                   help="RED: stop at this relative change ||x_k+1 - x_k|| / ||x_k||, the tuned K being the cap "
                        "(default 0: exactly K iterations)")
    p.add_argument("--budget-check", action="store_true",
                   help="also solve with twice the iterations and write psnr_2x, iterations_2x (a convergence check)")
    p.add_argument("--budget-curve", action="store_true",
                   help="also PSNR after K/2 and 3K/2 iterations (columns psnr_0.5x, psnr_1.5x, iterations_0.5x, "
                        "iterations_1.5x; implies --budget-check), so a cell that loses PSNR with more iterations "
                        "can report its best K (mtdeq.evaluate.best_budget)")
    p.add_argument("--reuse", nargs=2, metavar=("PRIOR", "CSV"), default=None,
                   help="copy the rows of CSV (an evaluation of checkpoint PRIOR) instead of solving, when PRIOR's "
                        "weights equal --prior's and CSV's provenance has the same settings (else solve as usual)")
    add_runtime_args(p)
    add_protocol_args(p, test=True)
    p.set_defaults(func=_run)


def add_runtime_args(p) -> None:
    """--channels-last/--no-channels-last and --red-accel, shared by evaluate and tune."""
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels-last network weights (faster oneDNN convolutions on CPU; the same maths up to "
                        "rounding); default on, as before the flag existed")
    p.add_argument("--red-accel", choices=("plain", "anderson"), default="plain",
                   help="RED's scheme: plain fixed-point iteration (default) or safeguarded Anderson acceleration")
