"""Benchmarks: ``python -m mtdeq bench {solvers,train} ...`` -> results/bench/*.csv.

    solvers     PnP-ADMM ms/iteration/MP and DEQ fixed-point iterations (mtdeq.bench.solvers)
    train       seconds per training step of both stages (mtdeq.bench.train); with --config the
                projected CPU- and GPU-hours of a config's training runs (mtdeq.bench.projection)
    denoise     Gaussian-denoising PSNR of a backbone at sigma 15/25/50 (mtdeq.bench.denoise)
    eval        seconds per prior forward, default layout vs channels-last (mtdeq.bench.testtime)
    red         RED plain vs Anderson: iterations / seconds to converge (mtdeq.bench.testtime)
    floor       a reference's evaluation MACs against this core's forward and matmul rates (mtdeq.bench.floor)

Adding a benchmark: put ``name: (add_args, run)`` in BENCHES, where ``add_args(parser)`` adds
the arguments and ``run(args) -> int`` does the work; the first paragraph of ``run``'s
docstring is its line in ``bench --help``.
"""

from __future__ import annotations

from mtdeq.bench.denoise import add_denoise_args, run_denoise
from mtdeq.bench.floor import add_floor_args, run_floor
from mtdeq.bench.solvers import add_solver_args, run_solvers
from mtdeq.bench.testtime import add_eval_args, add_red_args, run_eval, run_red
from mtdeq.bench.train import add_bench_args, run_bench

BENCHES = {"solvers": (add_solver_args, run_solvers), "train": (add_bench_args, run_bench),
           "denoise": (add_denoise_args, run_denoise), "eval": (add_eval_args, run_eval),
           "red": (add_red_args, run_red), "floor": (add_floor_args, run_floor)}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="timing and convergence benchmarks (results/bench/*.csv)",
        description="Timing / convergence benchmarks; each writes a CSV under results/bench/.",
    )
    sub = parser.add_subparsers(dest="bench", metavar="<bench>")
    for name, (add_args, run) in BENCHES.items():
        summary = " ".join((run.__doc__ or f"bench {name}").strip().split("\n\n")[0].split())
        p = sub.add_parser(name, help=summary)
        add_args(p)
        p.set_defaults(func=run)
