"""Keep the tables of README.md and docs/*.md equal to the blessed files they quote.

A table in the documentation is never typed: it sits in a *generated block* that names the
blessed file it comes from, and ``python -m mtdeq docs`` rewrites the block's content from that
file (atomically, only the files that changed). ``--check`` rewrites nothing and exits 1 naming
every stale file and block; CI runs it through tests/test_docs.py.

Block syntax (the two marker lines are HTML comments, invisible on GitHub)::

    <!-- BEGIN generated: results/reference/quick/table1.md section="Table I — scale quick" show=body -->
    (content written by the stage; edits here are overwritten)
    <!-- END generated -->

The first word after ``generated:`` is the blessed file, relative to the repository root (not
to the Markdown file). Attributes, ``key=value`` or ``key="value with spaces"``:

``.md`` files (the tables stage's table1.md / table2.md / protocol_validation.md, margins.md,
lr_study.md; they hold headings, paragraphs and several tables)
    ``section="<heading>"``  only the part under the heading with exactly this text, up to the
                             next heading of any level (default: the whole file)
    ``show=table``           the section's table (default); ``table=N`` picks the N-th (1-based)
    ``show=body``            the section's text and tables as they are (heading line excluded)

``.csv`` files
    ``columns="a,b,c"``      these columns, in this order (default: all); cells are copied as
                             written in the file, numeric columns right-aligned

``.yaml`` / ``.yml`` files (tolerance.yaml)
    ``key=rows``             one row per entry of ``rows`` after a ``default`` row (a scalar
                             applies to every column; columns: the keys of the nested mappings)
    ``key=<name>``           another top-level entry: a list of mappings (e.g. ``measured``) is a
                             table whose columns are the union of the keys; a mapping as above

A marker naming a missing file, an unknown attribute, a heading that is not in the file, a
BEGIN without END (or the reverse) is an error naming the Markdown file and line.

The stage also checks every relative link and image of the files it processes (the target must
exist, relative to the Markdown file's folder; a ``#anchor`` into a Markdown file must match one
of its headings as GitHub derives anchors), and fails on a broken one.
"""

from __future__ import annotations

import csv
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from mtdeq.cli import add_stage

BEGIN = re.compile(r"^<!-- BEGIN generated: (?P<spec>.+?) -->\s*$")
END = re.compile(r"^<!-- END generated -->\s*$")
HEADING = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<text>.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
ATTRIBUTES = {
    ".md": {"section", "show", "table"},
    ".csv": {"columns"},
    ".yaml": {"key"},
    ".yml": {"key"},
}


class DocsError(ValueError):
    """A generated block that cannot be rendered (the message names the file and line)."""


@dataclass
class Block:
    """One generated block: its marker lines (0-based indices) and what it quotes."""

    doc: Path
    begin: int
    end: int
    source: str
    attrs: dict

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.begin + 1}"


# --------------------------------------------------------------------------- blocks
def find_blocks(doc: Path, lines: list[str]) -> list[Block]:
    """The generated blocks of a Markdown file, in order; malformed markers raise DocsError.

    Markers inside fenced code (outside a block) are examples, not blocks."""
    blocks, open_at, spec, fenced = [], None, None, False
    for i, line in enumerate(lines):
        if open_at is None and FENCE.match(line):
            fenced = not fenced
        if fenced:
            continue
        m = BEGIN.match(line)
        if m:
            if open_at is not None:
                raise DocsError(f"{doc}:{i + 1}: BEGIN generated inside the block opened at line {open_at + 1}")
            open_at, spec = i, m.group("spec")
        elif END.match(line):
            if open_at is None:
                raise DocsError(f"{doc}:{i + 1}: END generated without a BEGIN")
            source, attrs = _parse_spec(spec, f"{doc}:{open_at + 1}")
            blocks.append(Block(doc, open_at, i, source, attrs))
            open_at = None
        elif "generated:" in line and line.lstrip().startswith("<!-- BEGIN"):
            raise DocsError(f"{doc}:{i + 1}: malformed marker {line.strip()!r} "
                            "(expected '<!-- BEGIN generated: <path> [key=value ...] -->' on one line)")
    if open_at is not None:
        raise DocsError(f"{doc}:{open_at + 1}: BEGIN generated without an END generated")
    return blocks


def _parse_spec(spec: str, where: str) -> tuple[str, dict]:
    try:
        words = shlex.split(spec)
    except ValueError as err:
        raise DocsError(f"{where}: cannot parse the marker {spec!r}: {err}") from None
    source, attrs = words[0], {}
    suffix = Path(source).suffix.lower()
    if suffix not in ATTRIBUTES:
        raise DocsError(f"{where}: {source}: only {', '.join(sorted(ATTRIBUTES))} files can be quoted")
    for word in words[1:]:
        key, sep, value = word.partition("=")
        if not sep:
            raise DocsError(f"{where}: attribute {word!r} is not key=value")
        if key not in ATTRIBUTES[suffix]:
            raise DocsError(f"{where}: unknown attribute {key!r} for a {suffix} file "
                            f"(known: {', '.join(sorted(ATTRIBUTES[suffix]))})")
        attrs[key] = value
    return source, attrs


def render(block: Block, root: Path) -> str:
    """The content of a block (no marker lines, no surrounding blank lines)."""
    path = root / block.source
    if not path.is_file():
        raise DocsError(f"{block.where}: the generated block names {block.source}, which does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".md":
            return _render_markdown(path.read_text(encoding="utf-8"), block.attrs)
        if suffix == ".csv":
            return _render_csv(path, block.attrs)
        return _render_yaml(path, block.attrs)
    except DocsError as err:
        raise DocsError(f"{block.where}: {block.source}: {err}") from None


def update_text(doc: Path, text: str, root: Path) -> tuple[str, list[Block]]:
    """(text with every block regenerated, the blocks whose content changed)."""
    lines = text.split("\n")
    blocks = find_blocks(doc, lines)
    out, stale, last = [], [], 0
    for block in blocks:
        content = render(block, root)
        new = ["", *content.split("\n"), ""]
        if lines[block.begin + 1:block.end] != new:
            stale.append(block)
        out += lines[last:block.begin + 1] + new
        last = block.end
    out += lines[last:]
    return "\n".join(out), stale


# --------------------------------------------------------------------------- renderers
def _render_markdown(text: str, attrs: dict) -> str:
    show = attrs.get("show", "table")
    if show not in ("table", "body"):
        raise DocsError(f"show={show!r}: expected table or body")
    if "table" in attrs and show != "table":
        raise DocsError("table=N selects a table: it goes with show=table")
    lines = _section(text.split("\n"), attrs.get("section"))
    if show == "body":
        return "\n".join(_strip_blank(lines))
    tables = _tables(lines)
    try:
        n = int(attrs.get("table", "1"))
    except ValueError:
        raise DocsError(f"table={attrs['table']!r}: expected a number") from None
    where = f"section {attrs['section']!r}" if "section" in attrs else "the file"
    if not 1 <= n <= len(tables):
        raise DocsError(f"{where} has {len(tables)} table(s); table={n} asked")
    return "\n".join(tables[n - 1])


def _section(lines: list[str], heading: str | None) -> list[str]:
    if heading is None:
        return lines
    found, inside, fenced = [], None, False
    for i, line in enumerate(lines):
        if FENCE.match(line):
            fenced = not fenced
        m = None if fenced else HEADING.match(line)
        if m:
            found.append(m.group("text"))
            if inside is not None:
                return lines[inside:i]
            if m.group("text") == heading:
                inside = i + 1
    if inside is not None:
        return lines[inside:]
    listed = "; ".join(repr(h) for h in found) or "none"
    raise DocsError(f"no heading {heading!r} (headings: {listed})")


def _tables(lines: list[str]) -> list[list[str]]:
    tables, current = [], []
    for line in lines + [""]:
        if line.lstrip().startswith("|"):
            current.append(line.rstrip())
        elif current:
            tables.append(current)
            current = []
    return tables


def _strip_blank(lines: list[str]) -> list[str]:
    start, stop = 0, len(lines)
    while start < stop and not lines[start].strip():
        start += 1
    while stop > start and not lines[stop - 1].strip():
        stop -= 1
    return [line.rstrip() for line in lines[start:stop]]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table; a column whose non-empty cells are all numbers is right-aligned."""
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    align = []
    for j in range(len(header)):
        values = [r[j] for r in rows if j < len(r) and str(r[j]).strip()]
        align.append("---:" if values and all(_is_number(str(v)) for v in values) else "---")
    out = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def _render_csv(path: Path, attrs: dict) -> str:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise DocsError("the file is empty") from None
        rows = [r for r in reader if r]
    columns = [c.strip() for c in attrs["columns"].split(",")] if "columns" in attrs else header
    missing = [c for c in columns if c not in header]
    if missing:
        raise DocsError(f"no column(s) {missing} (columns: {header})")
    index = [header.index(c) for c in columns]
    if not rows:
        raise DocsError("the file has a header and no rows")
    return markdown_table(columns, [[r[j] if j < len(r) else "" for j in index] for r in rows])


def _render_yaml(path: Path, attrs: dict) -> str:
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    key = attrs.get("key")
    if key is None:
        raise DocsError("a YAML file needs key=<top-level entry>")
    if key not in data and not (key == "rows" and "default" in data):
        raise DocsError(f"no top-level entry {key!r} (entries: {list(data)})")
    if key == "rows":
        return _render_tolerance_rows(path)
    value = data.get(key) or {}
    if isinstance(value, list):
        if not value or not all(isinstance(v, dict) for v in value):
            raise DocsError(f"{key!r} is not a non-empty list of mappings")
        columns = list(dict.fromkeys(k for v in value for k in v))
        return markdown_table(columns, [[_yaml_cell(v.get(c, "")) for c in columns] for v in value])
    if not isinstance(value, dict):
        raise DocsError(f"{key!r} is a {type(value).__name__}, not a mapping or a list of mappings")
    columns = list(dict.fromkeys(k for v in value.values() if isinstance(v, dict) for k in v)) or ["value"]
    rows = [[name] + [_yaml_cell(v.get(c, "") if isinstance(v, dict) else v) for c in columns]
            for name, v in value.items()]
    return markdown_table(["entry"] + columns, rows)


def _render_tolerance_rows(path: Path) -> str:
    """A tolerance.yaml's effective tolerance per row and table (mtdeq.tolerance semantics: a row's
    own value, else the table's, else the default), with the default row first."""
    from mtdeq.tolerance import ToleranceError, read_tolerance

    try:
        tol = read_tolerance(path)
    except ToleranceError as err:
        raise DocsError(str(err)) from None
    named = [*tol.tables, *(t for v in tol.rows.values() if isinstance(v, dict) for t in v)]
    tables = list(dict.fromkeys(["table1", "table2", *named])) if named else []
    if not tables:
        return markdown_table(["row", "tolerance"], [["default", _yaml_cell(tol.default)]]
                              + [[name, _yaml_cell(float(v))] for name, v in tol.rows.items()])
    rows = [["default (every other row)"] + [_yaml_cell(tol.tables.get(t, tol.default)) for t in tables]]
    rows += [[name] + [_yaml_cell(tol.of(t, name)) for t in tables] for name in tol.rows]
    return markdown_table(["row"] + tables, rows)


def _yaml_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# --------------------------------------------------------------------------- links
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?(?P<target>[^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(?P<target>\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def _prose(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code, inline code spans and HTML comments removed."""
    out, fenced = [], False
    text = re.sub(r"<!--.*?-->", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)
    for i, line in enumerate(text.split("\n"), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((i, re.sub(r"(`+)(?:(?!\1).)+?\1", "", line)))
    return out


def anchors(text: str) -> set[str]:
    """The anchors GitHub derives from the headings of a Markdown text."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_keep_code(text):
        m = HEADING.match(line)
        if not m:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group("text"))  # link text only
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _prose_keep_code(text: str) -> list[tuple[int, str]]:
    out, fenced = [], False
    for i, line in enumerate(text.split("\n"), 1):
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            out.append((i, line))
    return out


def broken_links(doc: Path) -> list[str]:
    """'<file>:<line>: <target>' for every relative link or image of ``doc`` that leads nowhere."""
    text = doc.read_text(encoding="utf-8")
    bad = []
    for lineno, line in _prose(text):
        targets = [m.group("target") for m in LINK.finditer(line)]
        ref = REFERENCE.match(line)
        if ref:
            targets.append(ref.group("target"))
        for target in targets:
            if SCHEME.match(target):
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc.resolve()
            if not dest.exists():
                bad.append(f"{doc}:{lineno}: {target} (no such file)")
            elif anchor and dest.suffix.lower() == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
                bad.append(f"{doc}:{lineno}: {target} (no heading with anchor #{anchor} in {dest.name})")
    return bad


# --------------------------------------------------------------------------- stage
def default_files(root: Path) -> list[Path]:
    """README.md and every docs/*.md under root."""
    files = [root / "README.md"] if (root / "README.md").exists() else []
    return files + sorted((root / "docs").glob("*.md"))


def run(files: list[Path], root: Path, check: bool, out=sys.stdout) -> int:
    """Regenerate (or with ``check`` only compare) the blocks of ``files``; 0 when all is current."""
    stale_files, broken = [], []
    for doc in files:
        text = doc.read_text(encoding="utf-8")
        new, stale = update_text(doc, text, root)
        if stale:
            names = ", ".join(sorted({b.source for b in stale}))
            stale_files.append(doc)
            if check:
                print(f"stale: {doc} ({len(stale)} block(s) from {names})", file=out)
            else:
                from mtdeq.io import atomic_write_text

                atomic_write_text(doc, new)
                print(f"updated: {doc} ({len(stale)} block(s) from {names})", file=out)
        broken += broken_links(doc)
    for line in broken:
        print(f"broken link: {line}", file=out)
    if check and stale_files:
        print(f"{len(stale_files)} file(s) out of date with the blessed files: "
              f"{', '.join(str(f) for f in stale_files)}; run 'python -m mtdeq docs' to rewrite them", file=out)
        return 1
    if not stale_files and not broken:
        print(f"docs: {len(files)} file(s) up to date", file=out)
    return 1 if broken else 0


def _run(args) -> int:
    root = Path(args.root)
    files = [Path(f) for f in args.files] if args.files else default_files(root)
    if not files:
        raise DocsError(f"no README.md or docs/*.md under {root}")
    return run(files, root, args.check)


def register(subparsers) -> None:
    """Add the ``docs`` stage."""
    p = add_stage(subparsers, "docs", "rewrite the generated tables of README.md and docs/*.md from the blessed "
                  "files (--check: fail naming stale files); check relative links", __doc__)
    p.add_argument("files", nargs="*", help="Markdown files (default: README.md and docs/*.md under --root)")
    p.add_argument("--root", default=".", help="repository root: marker paths are relative to it (default .)")
    p.add_argument("--check", action="store_true", help="rewrite nothing; exit 1 if a block is stale or a link broken")
    p.set_defaults(func=_run)
