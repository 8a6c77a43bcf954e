"""Grid search of the test-time hyper-parameters on a validation set that is never Set5.

The paper reuses the PnP-ADMM settings that were best for the Gaussian-denoiser prior
(Section III-C) without printing them, so we find them ourselves: for one task and one
algorithm, every combination of the given value lists is run on the validation images
(Set14, centre crops) and scored by the mean PSNR.

    admm : iterations K x sigma_max x sigma_min x lam_scale,  lam = lam_scale * max(sigma_noise, 1/255)
    red  : iterations x red_lam (lam) x red_sigma (sigma_denoise) x red_step (step)

PnP-ADMM's schedule decreases from sigma_max to sigma_min, so the admm grid is the product of the
value lists *restricted to sigma_min <= sigma_max* (sigma_min = sigma_max, a constant level, is
allowed; an increasing schedule is never tried).

Edge extension (``--extend-rounds R``, default 0): when the best candidate's value of a swept
parameter is the smallest or largest value tried, one more value is tried beyond that edge
(the next step of the grid's own geometric spacing, e.g. K 15, 30 -> 8; sigma_min 0.025, 0.06
-> 0.144), with the other parameters at the current best, and this is repeated up to R times.
Values never leave the bounds: K in [1, --max-iterations], every denoiser level at most
--sigma-cap (the backbone's training range), sigma_min <= sigma_max.  A step that would cross a
bound is clamped to it, so the bound itself is tried before it is reported (sigma_min 0.144 with
sigma_max 0.2 steps to 0.2, not to 0.346; a sigma step past the cap tries the cap).  A stopping
rule ends the extension of an edge early: ``--min-gain G`` > 0 stops extending an edge once its
last step gained less than G dB.  This is a rule about when to stop searching, not a bound on
what further steps would gain.

Stage ``tune`` writes one CSV row per candidate (``round`` 0 = the grid, r > 0 = extension r;
``iterations_run``: the most iterations any validation image ran; ``at_cap``: for RED with a
relative-change stop (``--red-tol`` > 0), the number of validation images that ran to the cap K
without the stop firing, empty for PnP-ADMM and for RED without a stop, which run exactly K).
Stage ``collect-tuned`` picks the best candidate per (method, task) and writes tuned_params.csv,
with ``on_edge`` naming every swept parameter whose chosen value is still the smallest or largest
value tried ('name=min' / 'name=max'; a warning is printed) and every K that is a binding cap
('iterations=cap'), and ``edge_bound`` why each was not extended further: a bound ('K cap 60',
'sigma cap 0.294', 'sigma_min = sigma_max'), the stopping rule ('stopped: last step gained +0.004
dB < min_gain 0.01'), or 'rounds spent' (more extension rounds would have tried a value beyond it).
K is reported as a binding cap wherever it binds, swept or not: for RED with a stop rule when the
selected setting ran to K on some tuning image without the stop firing ('K cap 100 (binding: stop
rule not reached on 3 of 3 images)'); for PnP-ADMM (and RED without a stop) when K is at
--max-iterations.

Validation images are never test images.  The folder is refused by name when it is Set5, and by
content: with ``--test-set`` (default data/Set5) every validation image used (the first
--max-images sorted images not named in ``--val-exclude``) is compared with every test image, and
one that equals a test image or a crop of one, or contains one, is refused with an error naming
both files before anything is written (mtdeq.leakage; Set14's face.png is Set5's head.png cropped
by 2 pixels, and Set5's butterfly.png is a crop of Set14's monarch.png).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from mtdeq.cli import add_stage
from mtdeq.evaluate import SolverParams, add_runtime_args, centre_crop, run_solver
from mtdeq.runtime import resolve_device
from mtdeq.tasks import TEST_PROTOCOL, Protocol, add_protocol_args, protocol_from_args

CANDIDATE_COLUMNS = [
    "method", "task", "iterations", "sigma_max", "sigma_min", "lam_scale", "lam",
    "sigma_denoise", "step", "val_psnr", "n_images", "seconds", "round", "iterations_run", "at_cap",
]
# candidate columns that older tune CSVs lack (collect-tuned reads them without)
OPTIONAL_CANDIDATE_COLUMNS = ("round", "iterations_run", "at_cap")
TUNED_COLUMNS = [
    "method", "task", "iterations", "sigma_max", "sigma_min", "lam", "sigma_denoise", "step",
    "val_psnr", "on_edge", "lam_scale", "n_images", "edge_bound",
]
# the columns that are swept, per algorithm (lam is derived from lam_scale for admm), each with
# the Grid field that holds its values
GRID_FIELDS = {
    "admm": {"iterations": "iterations", "sigma_max": "sigma_max", "sigma_min": "sigma_min",
             "lam_scale": "lam_scale"},
    "red": {"iterations": "iterations", "lam": "red_lam", "sigma_denoise": "red_sigma", "step": "red_step"},
}
SWEPT = {algorithm: tuple(fields) for algorithm, fields in GRID_FIELDS.items()}
FORBIDDEN_VALIDATION = "set5"
# the parameters that carry a denoiser level (bounded by --sigma-cap)
SIGMA_PARAMS = ("sigma_max", "sigma_min", "sigma_denoise")


@dataclass(frozen=True)
class Grid:
    """Value lists to sweep.  admm uses the first four, red the last three plus iterations."""

    iterations: tuple[int, ...]
    sigma_max: tuple[float, ...] = ()
    sigma_min: tuple[float, ...] = ()
    lam_scale: tuple[float, ...] = (1.0,)
    red_lam: tuple[float, ...] = ()
    red_sigma: tuple[float, ...] = ()
    red_step: tuple[float, ...] = (1.0,)


def admm_lam(lam_scale: float, sigma_noise: float) -> float:
    """lam = lam_scale * max(sigma_noise, 1/255): the ADMM penalty scale (see mtdeq.solvers.admm)."""
    return float(lam_scale) * max(float(sigma_noise), 1.0 / 255.0)


def make_candidate(algorithm: str, values: dict, sigma_noise: float) -> tuple[dict, SolverParams]:
    """(row fields, SolverParams) of one candidate; ``values`` holds the SWEPT[algorithm] entries."""
    if algorithm not in SWEPT:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected 'admm' or 'red'")
    fields = {name: float(values[name]) for name in SWEPT[algorithm]}
    fields["iterations"] = k = int(values["iterations"])
    if algorithm == "admm":
        fields["lam"] = admm_lam(fields["lam_scale"], sigma_noise)
        params = SolverParams("admm", k, sigma_max=fields["sigma_max"], sigma_min=fields["sigma_min"],
                              lam=fields["lam"])
    else:
        params = SolverParams("red", k, lam=fields["lam"], sigma_denoise=fields["sigma_denoise"], step=fields["step"])
    return fields, params


def grid_axes(algorithm: str, grid: Grid) -> dict[str, tuple]:
    """The value list of every SWEPT[algorithm] parameter; ValueError when one is empty."""
    if algorithm not in GRID_FIELDS:
        raise ValueError(f"unknown algorithm {algorithm!r}; expected 'admm' or 'red'")
    axes = {name: getattr(grid, field) for name, field in GRID_FIELDS[algorithm].items()}
    for name, field in GRID_FIELDS[algorithm].items():
        if not axes[name]:
            raise ValueError(f"tune --method {algorithm}: the grid for {field} is empty")
    return axes


def candidates(algorithm: str, grid: Grid, sigma_noise: float) -> list[tuple[dict, SolverParams]]:
    """Every legal combination of the grid as (row fields, SolverParams), in a fixed order.

    admm: combinations with sigma_min > sigma_max (an increasing schedule) are left out;
    ValueError when none is left.
    """
    axes = grid_axes(algorithm, grid)
    names = list(axes)
    combos = [dict(zip(names, combo)) for combo in itertools.product(*axes.values())]
    if algorithm == "admm":
        combos = [c for c in combos if c["sigma_min"] <= c["sigma_max"]]
        if not combos:
            raise ValueError(f"tune --method admm: no grid value of sigma_min {list(grid.sigma_min)} is <= a "
                             f"value of sigma_max {list(grid.sigma_max)} (the schedule decreases from sigma_max "
                             "to sigma_min)")
    return [make_candidate(algorithm, combo, sigma_noise) for combo in combos]


@dataclass(frozen=True)
class Bounds:
    """Limits of edge extension: K in [1, max_iterations], denoiser levels in [sigma_floor, sigma_cap].

    min_gain > 0 is a stopping rule: an edge is no longer extended once its last step gained less
    than min_gain dB (0: only the bounds and the rounds stop extension).
    """

    max_iterations: int = 200
    sigma_cap: float = 0.3
    sigma_floor: float = 1e-3
    min_gain: float = 0.0


def extend_value(name: str, tried: list[float], side: str, best: dict, bounds: Bounds) -> float | None:
    """The next value beyond the ``side`` ('min'|'max') edge of ``tried``, or None at a bound.

    The step is the ratio of the two outermost values on that side (geometric spacing), or a
    factor 2 when only one value was tried.  Integers (K) are rounded and must change.  A denoiser
    level is clamped to sigma_cap, sigma_min to the best's sigma_max and sigma_max to the best's
    sigma_min, so the bound itself is tried; None once the edge is the bound.
    """
    return _extension(name, tried, side, best, bounds)[0]


def _extension(name: str, tried: list[float], side: str, best: dict, bounds: Bounds) -> tuple[float | None, str]:
    """(:func:`extend_value`'s value, or None with the bound that stops it, e.g. 'K cap 60')."""
    values = sorted(set(float(v) for v in tried))
    edge = values[0] if side == "min" else values[-1]
    inner = None if len(values) < 2 else values[1] if side == "min" else values[-2]
    ratio = edge / inner if inner is not None and edge > 0 and inner > 0 else (0.5 if side == "min" else 2.0)
    new = edge * ratio
    if name == "iterations":
        new = float(round(new))
        if new == edge:
            new = edge - 1 if side == "min" else edge + 1
        if side == "min":
            return (None, "K = 1") if edge <= 1 else (max(new, 1.0), "")
        if edge >= bounds.max_iterations:
            return None, f"K cap {bounds.max_iterations}"
        return min(new, float(bounds.max_iterations)), ""  # a step past the cap tries the cap
    if name in SIGMA_PARAMS:
        # the bound on this side, tried itself before it is reported: the sigma cap / floor, and for a
        # decreasing schedule (sigma_min <= sigma_max) the best's other level
        if side == "max":
            limit, label = bounds.sigma_cap, f"sigma cap {bounds.sigma_cap:g}"
            if name == "sigma_min" and float(best["sigma_max"]) < limit:
                limit, label = float(best["sigma_max"]), "sigma_min = sigma_max"
            if edge >= limit:
                return None, label
            return (limit, "") if new >= limit else (float(f"{new:.4g}"), "")
        limit, label = bounds.sigma_floor, f"sigma floor {bounds.sigma_floor:g}"
        if name == "sigma_max" and float(best["sigma_min"]) > limit:
            limit, label = float(best["sigma_min"]), "sigma_max = sigma_min"
        if edge <= limit:
            return None, label
        return (limit, "") if new <= limit else (float(f"{new:.4g}"), "")
    if new <= 0 or not math.isfinite(new):
        return None, "bound"
    return float(f"{new:.4g}"), ""


def refuse_test_set(images: str | Path) -> None:
    """Raise ValueError when the validation folder is named Set5 (the test set; never tune on it).

    A name check only; the content check (a validation image that is a test image or a crop of
    one) is mtdeq.leakage.refuse_test_images, run by :func:`tune` with TuneSettings.test_set.
    """
    if Path(images).resolve().name.lower() == FORBIDDEN_VALIDATION:
        raise ValueError(
            f"--images {images}: refusing to tune on Set5, the test set of Tables I-II; "
            "use a validation set such as data/Set14"
        )


@dataclass(frozen=True)
class TuneSettings:
    """One tune run: grid-search ``method`` (admm|red) for ``task`` with the prior ``prior``."""

    method: str
    task: str
    prior: str
    images: str
    out: str
    grid: Grid
    max_images: int | None = 4
    crop: int | None = 128
    seed: int = 0
    device: str = "auto"
    extend_rounds: int = 0
    bounds: Bounds = Bounds()
    protocol: Protocol = TEST_PROTOCOL  # kernels, SR start and crops of the observations
    red_tol: float = 0.0  # RED's relative-change stop (0: exactly K iterations; K is then the cap)
    val_exclude: tuple[str, ...] = ()  # file names in ``images`` never used (mtdeq.leakage.validation_files)
    test_set: str | None = None  # test folder the validation images are checked against (None: no check;
    #                              the CLI's default is data/Set5)
    channels_last: bool = True  # channels-last network weights (mtdeq.models.for_inference)
    red_accel: str = "plain"  # RED's scheme: plain or anderson (mtdeq.solvers.red)


def tune(settings: TuneSettings, *, progress: bool = True) -> pd.DataFrame:
    """Score every grid candidate by the mean validation PSNR; write and return the candidate table.

    Refuses (before anything is written) a validation folder named Set5 and, with
    settings.test_set, validation images that are test images or crops of one (mtdeq.leakage).
    """
    from tqdm import tqdm

    from mtdeq import tasks
    from mtdeq.io import atomic_write_text, provenance, read_image
    from mtdeq.leakage import refuse_test_images, validation_files
    from mtdeq.metrics import psnr
    from mtdeq.models import for_inference, load_prior

    refuse_test_set(settings.images)
    files = validation_files(settings.images, settings.max_images, settings.val_exclude)
    refuse_test_images(files, settings.test_set, stage=f"tune --images {settings.images}")
    if settings.task not in tasks.TEST_TASKS:
        raise KeyError(f"--task {settings.task!r}: unknown task; expected one of {list(tasks.TEST_TASKS)}")
    task = tasks.TEST_TASKS[settings.task]
    grid = candidates(settings.method, settings.grid, task.sigma_noise)
    denoiser, _ = load_prior(settings.prior)
    device = resolve_device(settings.device)
    denoiser = for_inference(denoiser, device, channels_last=settings.channels_last)
    images = [(f.stem, centre_crop(read_image(f), settings.crop).unsqueeze(0)) for f in files]
    # degrade once: every candidate sees the same observations
    observed = [settings.protocol.degrade(task, x, seed=settings.seed + i) for i, (_, x) in enumerate(images)]

    stop_rule = settings.method == "red" and settings.red_tol > 0  # K is then a cap that may bind

    def score(fields: dict, params: SolverParams, round_: int) -> dict:
        scores, seconds, ran, at_cap = [], 0.0, 0, 0
        for deg in observed:  # one image per solve: RedInfo.converged is that image's stop
            x_hat, info = run_solver(params, op=deg.op, y=deg.y.to(device), denoiser=denoiser,
                                     sigma_noise=task.sigma_noise, red_tol=settings.red_tol,
                                     red_accel=settings.red_accel)
            value = psnr(x_hat.detach().cpu(), deg.x_gt)
            scores.append(value if math.isfinite(value) else float("nan"))
            seconds += float(info.seconds)
            ran = max(ran, int(info.iterations))
            at_cap += int(stop_rule and not info.converged)
        mean = sum(scores) / len(scores)  # nan if any image produced a non-finite estimate
        return {"method": settings.method, "task": settings.task, **fields,
                "val_psnr": mean, "n_images": len(scores), "seconds": seconds, "round": round_,
                "iterations_run": ran, "at_cap": at_cap if stop_rule else None}

    rows, best = [], float("-inf")
    bar = tqdm(grid, desc=f"tune {settings.method}/{settings.task}", disable=not progress)
    for fields, params in bar:
        rows.append(score(fields, params, 0))
        if rows[-1]["val_psnr"] > best:  # False for nan
            best = rows[-1]["val_psnr"]
            bar.set_postfix(best=f"{best:.2f}")

    swept = [name for name, values in grid_axes(settings.method, settings.grid).items() if len(values) > 1]
    for round_ in range(1, settings.extend_rounds + 1):
        proposal = next_extension(pd.DataFrame(rows), settings.method, swept, settings.bounds)
        if proposal is None:
            break
        fields, params = make_candidate(settings.method, proposal, task.sigma_noise)
        rows.append(score(fields, params, round_))
        print(f"tune {settings.method}/{settings.task}: extension {round_}: "
              + ", ".join(f"{k}={proposal[k]:g}" for k in swept) + f" -> {rows[-1]['val_psnr']:.2f} dB")

    table = pd.DataFrame(rows, columns=CANDIDATE_COLUMNS)
    out = Path(settings.out)
    atomic_write_text(out, table.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(out.with_suffix(".provenance.json"),
                      json.dumps(provenance({"settings": asdict(settings)}), indent=2) + "\n")
    return table


def next_extension(table: pd.DataFrame, algorithm: str, swept: list[str], bounds: Bounds) -> dict | None:
    """The next candidate of edge extension (SWEPT values), or None when nothing can be extended.

    The best row so far is moved one step beyond a swept parameter whose value is the smallest or
    largest tried, skipping parameters already at a bound, edges ended by the stopping rule (their
    last step gained less than bounds.min_gain, :func:`edge_gain`) and candidates already scored.
    Among the parameters left, the one extended the fewest times so far goes first (then SWEPT
    order), so that one open-ended parameter (RED's lam on a noise-free task) cannot spend every
    round.
    """
    if table["val_psnr"].isna().all():
        return None
    best = table.loc[table["val_psnr"].idxmax()]
    current = {name: float(best[name]) for name in SWEPT[algorithm]}
    seen = {tuple(float(r[n]) for n in SWEPT[algorithm]) for _, r in table.iterrows()}
    grid = table[table["round"] == 0] if "round" in table.columns else table
    options = []
    for order, flag in enumerate(edge_flags(table, best, algorithm)):
        name, side = flag.split("=")
        if name not in swept or _flat_gain(table, best, algorithm, name, side, bounds) is not None:
            continue
        new = extend_value(name, table[name].tolist(), side, current, bounds)
        if new is None:
            continue
        proposal = {**current, name: new}
        if tuple(proposal[n] for n in SWEPT[algorithm]) not in seen:
            extended = len(set(table[name].dropna()) - set(grid[name].dropna()))
            options.append((extended, order, proposal))
    return min(options, key=lambda o: o[:2])[2] if options else None


def edge_gain(table: pd.DataFrame, best: pd.Series, algorithm: str, name: str, side: str) -> float | None:
    """What the last step onto the edge value gained: best's val_psnr minus that of the candidate with
    the next inner value of ``name`` and every other swept parameter equal (None if not scored)."""
    values = sorted(set(float(v) for v in table[name].dropna()))
    edge = float(best[name])
    inner = [v for v in values if (v > edge if side == "min" else v < edge)]
    if not inner:
        return None
    neighbour = min(inner) if side == "min" else max(inner)
    others = [n for n in SWEPT[algorithm] if n != name]
    match = table[(table[name].astype(float) == neighbour)
                  & pd.concat([table[n].astype(float) == float(best[n]) for n in others], axis=1).all(axis=1)]
    if match.empty or match["val_psnr"].isna().all():
        return None
    return float(best["val_psnr"]) - float(match["val_psnr"].max())


def _flat_gain(table, best, algorithm, name, side, bounds: Bounds) -> float | None:
    """The last step's gain (:func:`edge_gain`) when it is below bounds.min_gain (the stopping rule ends
    this edge's extension), else None."""
    gain = edge_gain(table, best, algorithm, name, side) if bounds.min_gain > 0 else None
    return gain if gain is not None and gain < bounds.min_gain else None


def edge_flags(group: pd.DataFrame, best: pd.Series, algorithm: str) -> list[str]:
    """Swept parameters (more than one grid value) whose chosen value is the grid's min or max.

    Returned as 'name=min' / 'name=max', in SWEPT order.
    """
    flags = []
    for name in SWEPT[algorithm]:
        values = group[name].dropna().unique()
        if len(values) < 2:
            continue
        if best[name] == values.min():
            flags.append(f"{name}=min")
        elif best[name] == values.max():
            flags.append(f"{name}=max")
    return flags


def edge_bounds(group: pd.DataFrame, best: pd.Series, algorithm: str, flags: list[str],
                bounds: Bounds | None) -> list[str]:
    """Why each edge flag was not extended further, one string per flag: a bound ('iterations: K cap
    60', 'sigma_max: sigma cap 0.294', 'sigma_min: sigma_min = sigma_max', ...), the stopping rule
    ('lam: stopped, last step gained +0.006 dB < min_gain 0.01': bounds.min_gain ended the search
    there, which says nothing of what further steps would gain) or 'rounds spent' (more extension
    rounds would have tried a value beyond it); 'unknown' without the run's bounds."""
    reasons = []
    current = {name: float(best[name]) for name in SWEPT[algorithm]}
    for flag in flags:
        name, side = flag.split("=")
        if bounds is None:
            reasons.append(f"{name}: unknown")
            continue
        value, bound = _extension(name, group[name].tolist(), side, current, bounds)
        gain = None if value is None else _flat_gain(group, best, algorithm, name, side, bounds)
        if value is None:
            reasons.append(f"{name}: {bound}")
        elif gain is not None:
            limit = " (noise-free: lam -> 0 is the limit A x = y)" if _noise_free_lam(best, algorithm, name, side) else ""
            reasons.append(f"{name}: stopped, last step gained {gain:+.3f} dB < min_gain {bounds.min_gain:g}{limit}")
        else:
            reasons.append(f"{name}: rounds spent")
    return reasons


def cap_report(best: pd.Series, algorithm: str, flags: list[str], reasons: list[str],
               bounds: Bounds | None) -> tuple[list[str], list[str]]:
    """(flags, reasons) of :func:`edge_flags` / :func:`edge_bounds` with the iteration cap reported
    wherever it binds, whether K was swept or not.

    RED with a relative-change stop (the candidate's ``at_cap`` recorded): K binds when some tuning
    image ran to K without the stop firing; an 'iterations=max' edge gets '(binding: stop rule not
    reached on a of n images)' (or '(not binding: ...)') appended, otherwise 'iterations=cap' with
    'iterations: K cap K (binding: ...)' is added.  PnP-ADMM and RED without a stop run exactly K:
    a K at bounds.max_iterations that is not already an 'iterations=max' edge adds 'iterations=cap'
    with 'iterations: K cap <max_iterations>'.
    """
    flags, reasons = list(flags), list(reasons)
    k = int(best["iterations"])
    at_cap = best.get("at_cap")
    has_stop = algorithm == "red" and at_cap is not None and not pd.isna(at_cap)
    if has_stop:
        n = int(best["n_images"])
        note = (f"binding: stop rule not reached on {int(at_cap)} of {n} images" if int(at_cap) > 0
                else "not binding: the stop rule fired on every image")
        if "iterations=max" in flags:
            i = flags.index("iterations=max")
            reasons[i] = f"{reasons[i]} ({note})"
        elif int(at_cap) > 0:
            flags.append("iterations=cap")
            reasons.append(f"iterations: K cap {k} ({note})")
    elif bounds is not None and k >= bounds.max_iterations and "iterations=max" not in flags:
        flags.append("iterations=cap")
        reasons.append(f"iterations: K cap {bounds.max_iterations}")
    return flags, reasons


def _noise_free_lam(best: pd.Series, algorithm: str, name: str, side: str) -> bool:
    """RED's lam at its small edge on a noise-free task: lam -> 0 solves x = P_{Ax=y}(D(x))."""
    from mtdeq.tasks import TEST_TASKS

    task = TEST_TASKS.get(str(best.get("task")))
    return algorithm == "red" and name == "lam" and side == "min" and task is not None and task.sigma_noise == 0


def _run_bounds(path: Path) -> Bounds | None:
    """The edge-extension bounds a tune CSV was made with (its provenance sidecar), if recorded."""
    sidecar = Path(path).with_suffix(".provenance.json")
    try:
        settings = json.loads(sidecar.read_text())["config"]["settings"]
        return Bounds(**settings["bounds"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def collect_tuned(inputs: list[str | Path], out: str | Path) -> pd.DataFrame:
    """Best candidate (highest val_psnr) per (method, task) of the candidate CSVs -> tuned_params.csv."""
    from mtdeq.io import atomic_write_text

    frames, bounds_of = [], {}
    for path in inputs:
        frame = pd.read_csv(path)
        missing = [c for c in CANDIDATE_COLUMNS if c not in frame.columns and c not in OPTIONAL_CANDIDATE_COLUMNS]
        if missing:
            raise ValueError(f"{path}: not a tune candidate table, missing column(s) {missing}")
        frames.append(frame)
        for key in frame[["method", "task"]].drop_duplicates().itertuples(index=False):
            bounds_of[tuple(key)] = _run_bounds(Path(path))
    if not frames:
        raise ValueError("collect-tuned: no --inputs given")
    table = pd.concat(frames, ignore_index=True)

    rows = []
    for (algorithm, task), group in table.groupby(["method", "task"], sort=True):
        if algorithm not in SWEPT:
            raise ValueError(f"candidate rows with method={algorithm!r}; expected 'admm' or 'red'")
        if group["val_psnr"].isna().all():
            raise ValueError(f"method={algorithm!r}, task={task!r}: every candidate failed (val_psnr is NaN)")
        best = group.loc[group["val_psnr"].idxmax()]  # first of equal scores: the grid's order
        bounds = bounds_of.get((algorithm, task))
        flags = edge_flags(group, best, algorithm)
        flags, reasons = cap_report(best, algorithm, flags, edge_bounds(group, best, algorithm, flags, bounds), bounds)
        if flags:
            print(f"WARNING: tuned {algorithm}/{task} lies on an edge of the values tried or on its K cap: "
                  + "; ".join(f"{flag} ({reason.partition(': ')[2]})" for flag, reason in zip(flags, reasons)))
        rows.append({**{c: best[c] for c in TUNED_COLUMNS if c in best.index},
                     "on_edge": ";".join(flags), "edge_bound": ";".join(reasons)})
    result = pd.DataFrame(rows, columns=TUNED_COLUMNS)
    result["iterations"] = result["iterations"].astype(int)
    atomic_write_text(out, result.to_csv(index=False, float_format="%.6g"))
    return result



def _run_tune(args: argparse.Namespace) -> int:
    grid = Grid(
        iterations=tuple(args.iterations),
        sigma_max=tuple(args.sigma_max or ()),
        sigma_min=tuple(args.sigma_min or ()),
        lam_scale=tuple(args.lam_scale),
        red_lam=tuple(args.red_lam or ()),
        red_sigma=tuple(args.red_sigma or ()),
        red_step=tuple(args.red_step),
    )
    settings = TuneSettings(method=args.method, task=args.task, prior=args.prior, images=args.images,
                            out=args.out, grid=grid, max_images=args.max_images, crop=args.crop,
                            seed=args.seed, device=args.device, extend_rounds=args.extend_rounds,
                            bounds=Bounds(max_iterations=args.max_iterations, sigma_cap=args.sigma_cap,
                                          min_gain=args.min_gain),
                            protocol=protocol_from_args(args), red_tol=args.red_tol,
                            val_exclude=tuple(args.val_exclude), test_set=args.test_set or None,
                            channels_last=args.channels_last, red_accel=args.red_accel)
    table = tune(settings)
    best = table.loc[table["val_psnr"].idxmax()] if table["val_psnr"].notna().any() else None
    summary = "no finite candidate" if best is None else f"best val PSNR {best['val_psnr']:.2f} dB"
    print(f"tune {args.method}/{args.task}: {len(table)} candidate(s), {summary} -> {args.out}")
    return 0


def _run_collect(args: argparse.Namespace) -> int:
    result = collect_tuned(args.inputs, args.out)
    print(f"collect-tuned: {len(result)} (method, task) row(s) -> {args.out}")
    return 0


def register(subparsers) -> None:
    """Add the ``tune`` and ``collect-tuned`` stages."""
    p = add_stage(subparsers, "tune", "grid-search PnP-ADMM or RED hyper-parameters for one task on validation images (never Set5)", __doc__)
    p.add_argument("--method", required=True, choices=("admm", "red"), help="algorithm to tune")
    p.add_argument("--task", required=True, help="test task name (mtdeq.tasks.TEST_TASKS)")
    p.add_argument("--prior", required=True, help="checkpoint of the prior (the Gauss prior for the tables)")
    p.add_argument("--images", required=True, help="validation image folder, e.g. data/Set14 (Set5 is refused)")
    p.add_argument("--max-images", type=int, default=4,
                   help="first N sorted images not named in --val-exclude (default 4)")
    p.add_argument("--val-exclude", nargs="*", default=[], metavar="FILE",
                   help="file names in --images never tuned on (config data.val_exclude), e.g. face.png, "
                        "a crop of Set5's head.png")
    p.add_argument("--test-set", default="data/Set5",
                   help="test image folder (default data/Set5): a validation image that is a test image or a crop "
                        "of one (or contains one) is refused, naming both files, before anything is written; "
                        "'' = no check")
    p.add_argument("--crop", type=int, default=128, help="centre crop size (default 128)")
    p.add_argument("--iterations", type=int, nargs="+", required=True, help="values of K (both algorithms)")
    p.add_argument("--sigma-max", type=float, nargs="+", help="admm: first denoiser level(s), [0,1] units")
    p.add_argument("--sigma-min", type=float, nargs="+", help="admm: last denoiser level(s)")
    p.add_argument("--lam-scale", type=float, nargs="+", default=[1.0],
                   help="admm: lam = lam_scale * max(sigma_noise, 1/255) (default 1)")
    p.add_argument("--red-lam", type=float, nargs="+", help="red: prior weight(s) lam")
    p.add_argument("--red-sigma", type=float, nargs="+", help="red: denoiser level(s) sigma_denoise")
    p.add_argument("--red-step", type=float, nargs="+", default=[1.0], help="red: relaxation step(s) (default 1)")
    p.add_argument("--extend-rounds", type=int, default=0,
                   help="extra candidates tried beyond a grid edge that the best value sits on (default 0)")
    p.add_argument("--max-iterations", type=int, default=200, help="largest K edge extension may try (default 200)")
    p.add_argument("--sigma-cap", type=float, default=0.3,
                   help="largest denoiser level edge extension may try: the backbone's training range (default 0.3)")
    p.add_argument("--min-gain", type=float, default=0.0,
                   help="stopping rule: stop extending an edge once its last step gained less than this many dB "
                        "(default 0: only the bounds and --extend-rounds stop extension)")
    p.add_argument("--seed", type=int, default=0, help="image i is degraded with seed + i (default 0)")
    p.add_argument("--device", default="auto", help="torch device: auto (cuda, else mps, else cpu; the default), cpu, cuda, mps")
    p.add_argument("--out", required=True, help="candidate CSV, e.g. results/quick/tune/admm_comp90.csv")
    p.add_argument("--red-tol", type=float, default=0.0,
                   help="red: stop at this relative change, K being the cap (default 0: exactly K iterations)")
    add_runtime_args(p)
    add_protocol_args(p, test=True)
    p.set_defaults(func=_run_tune)

    c = subparsers.add_parser(
        "collect-tuned",
        help="pick the best candidate per (method, task) from tune CSVs; write tuned_params.csv",
    )
    c.add_argument("--inputs", nargs="+", required=True, help="candidate CSVs written by the tune stage")
    c.add_argument("--out", required=True, help="tuned_params.csv to write")
    c.set_defaults(func=_run_collect)
