"""Fingerprints of a run's artefacts, stage by stage, to say where two runs part.

A table cell is the end of a chain: denoiser pretraining -> DEQ fine-tuning (and the
same-budget control) -> tuning on Set14 -> evaluation on Set5.  When a regenerated cell
differs from the blessed one, the first artefact of that chain that differs tells why:
"gauss.pt differs" means training is not bit-reproducible here, while equal weights with
a different evaluation CSV point at evaluation.

Each artefact is reduced to a SHA-256 of its *content*, not of its file: a checkpoint's
digest covers its tensors (names, dtypes, shapes, bytes) and not its provenance (time,
command line); an evaluation CSV's digest covers image, PSNR, SSIM and iteration count and
not the run time.  The tables stage records the fingerprints in ``<table>.provenance.json``
(key ``artefacts``, in STAGES order) and ``mtdeq check`` compares them with the reference's.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import torch

# the chain of stages, upstream first: (stage, glob relative to results/<scale>/)
STAGES = (
    ("pretraining", "models/gauss.pt"),
    ("training", "models/*.pt"),
    ("tuning", "tuned_params.csv"),
    ("evaluation", "eval/*/*.csv"),
)
# run-dependent columns left out of a CSV's digest
VOLATILE_COLUMNS = ("seconds",)
WHY = {
    "pretraining": "the Gauss prior's weights differ: denoiser training is not bit-reproducible on this machine",
    "training": "a DEQ/control prior's weights differ: fine-tuning is not bit-reproducible on this machine",
    "tuning": "the weights are equal but the tuned Set14 settings differ",
    "evaluation": "the weights and tuned settings are equal but the evaluation output differs",
}


def weights_digest(path: str | Path) -> str:
    """SHA-256 over a checkpoint's tensors in key order (name, dtype, shape, bytes)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else payload
    h = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().contiguous()
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        h.update(tensor.numpy().tobytes())
    return h.hexdigest()


def table_digest(path: str | Path) -> str:
    """SHA-256 of a CSV without its run-dependent columns (VOLATILE_COLUMNS)."""
    table = pd.read_csv(path)
    table = table.drop(columns=[c for c in VOLATILE_COLUMNS if c in table.columns])
    return hashlib.sha256(table.to_csv(index=False).encode()).hexdigest()


def digest(path: Path) -> str:
    return weights_digest(path) if path.suffix == ".pt" else table_digest(path)


def run_fingerprints(run_dir: str | Path, methods: list[str] | None = None) -> dict[str, dict[str, str]]:
    """{stage: {path relative to run_dir: digest}} for the artefacts present under ``run_dir``.

    ``methods`` restricts the evaluation CSVs to those method folders (None = all).
    """
    run_dir = Path(run_dir)
    seen: set[Path] = set()
    record: dict[str, dict[str, str]] = {}
    for stage, pattern in STAGES:
        entries = {}
        for path in sorted(run_dir.glob(pattern)):
            if path in seen or not path.is_file():
                continue
            if stage == "evaluation" and methods is not None and path.parent.name not in methods:
                continue
            seen.add(path)
            entries[str(path.relative_to(run_dir))] = digest(path)
        if entries:
            record[stage] = entries
    return record


def first_difference(reference: dict, ours: dict) -> tuple[str, list[str]] | None:
    """The first stage (STAGES order) whose shared artefacts differ, with those artefacts.

    Artefacts recorded on one side only are not compared.  None when every shared artefact
    is equal (or nothing is shared).
    """
    for stage, _ in STAGES:
        ref, our = reference.get(stage, {}), ours.get(stage, {})
        differing = sorted(name for name in ref.keys() & our.keys() if ref[name] != our[name])
        if differing:
            return stage, differing
    return None


def explain(reference: dict | None, ours: dict | None) -> str:
    """One paragraph saying where the two runs part (for ``mtdeq check``)."""
    if not reference:
        return "the reference records no artefact fingerprints (blessed before they existed)"
    if not ours:
        return "the results record no artefact fingerprints (tables written by an older mtdeq)"
    found = first_difference(reference, ours)
    if found is None:
        return "every artefact shared with the reference is identical (weights, tuned settings, evaluation)"
    stage, names = found
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"first difference at {stage}: {shown} differ(s): {WHY[stage]}"
