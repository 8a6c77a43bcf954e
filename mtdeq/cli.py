"""Command-line entry point: ``python -m mtdeq <stage> ...``.

Every workflow rule calls one of these stages with explicit arguments, and each stage
also runs by hand with the same command.  A stage lives in the module that implements
it; that module exposes ``register(subparsers)`` which adds its sub-command and sets
``func`` (a callable taking the parsed ``argparse.Namespace`` and returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# Modules that contribute stages, in the order they appear in --help.
STAGE_MODULES = (
    "mtdeq.data",
    "mtdeq.train",
    "mtdeq.evaluate",
    "mtdeq.tune",
    "mtdeq.tables",
    "mtdeq.figures",
    "mtdeq.summary",
    "mtdeq.check",
    "mtdeq.budget",
    "mtdeq.lrstudy",
    "mtdeq.heldout",
    "mtdeq.bench",
    "mtdeq.docs",
)


def add_stage(subparsers, name: str, summary: str, doc: str | None) -> argparse.ArgumentParser:
    """Add one stage's sub-command: ``summary`` in the stage list, ``doc`` (the module docstring) verbatim under --help."""
    return subparsers.add_parser(name, help=summary, description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m mtdeq",
        description=(
            "Replication suite for 'Prior for Multi-Task Inverse Problems in Image "
            "Reconstruction Using Deep Equilibrium Models'. Each stage below is one step "
            "of the Snakemake workflow and can be run by hand; "
            "'python -m mtdeq <stage> --help' explains its arguments."
        ),
    )
    parser.add_argument(
        "--precision", choices=("float32", "float64"), default="float32",
        help="floating-point precision of every tensor the stage creates (default float32; the "
        "ci scale uses float64 so that its numbers do not depend on the CPU's SIMD kernels)",
    )
    sub = parser.add_subparsers(dest="stage", metavar="<stage>")
    for name in STAGE_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # stage not implemented yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Anderson/FB iterates can produce denormal floats, which make CPU convolutions 20-50x
    # slower; flushing them to zero changes no result beyond float32 round-off.
    import torch

    from mtdeq.runtime import set_precision

    torch.set_flush_denormal(True)
    set_precision(args.precision)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.stage is None else 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, KeyError, OSError, RuntimeError) as err:
        # Bad input (a file, key or value at fault): one clear line, no traceback.
        # Set MTDEQ_DEBUG=1 to see the full traceback.
        if os.environ.get("MTDEQ_DEBUG"):
            raise
        print(f"mtdeq {args.stage}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
