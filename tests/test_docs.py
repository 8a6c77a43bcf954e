"""Tests of mtdeq.docs: the README and docs/*.md quote the blessed files exactly, stale blocks and
bad markers are caught, relative links lead somewhere, and the README stays a front door."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mtdeq import docs
from mtdeq.docs import DocsError

from conftest import REPO

README_MAX_LINES = 250


def _run(files, root, check):
    out = io.StringIO()
    rc = docs.run(files, root, check, out=out)
    return rc, out.getvalue()


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of README.md and docs/ whose results/ is the repository's (a symlink)."""
    shutil.copy(REPO / "README.md", tmp_path / "README.md")
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    os.symlink(REPO / "results", tmp_path / "results", target_is_directory=True)
    return tmp_path


# --------------------------------------------------------------------------- the committed docs
def test_committed_readme_and_docs_are_generated_from_the_blessed_files():
    files = docs.default_files(REPO)
    assert REPO / "README.md" in files and len(files) > 1
    rc, out = _run(files, REPO, check=True)
    assert rc == 0, f"run 'python -m mtdeq docs' and commit the result:\n{out}"
    assert sum(len(docs.find_blocks(f, f.read_text().split("\n"))) for f in files) >= 10


def test_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    text = "\n".join(lines)
    for command in ("pip install torch==2.13.0 && pip install -e '.[test]'",
                    "MTDEQ_DATA_MIRROR=../shared/data snakemake --cores 2 all", "python -m pytest"):
        assert command in text
    for table in ("results/reference/quick/table1.md", "results/reference/quick/table2.md"):
        assert f"<!-- BEGIN generated: {table}" in text


def test_every_relative_link_and_image_of_readme_and_docs_exists():
    broken = [line for f in docs.default_files(REPO) for line in docs.broken_links(f)]
    assert not broken, "\n".join(broken)


# --------------------------------------------------------------------------- stale and bad blocks
def test_a_stale_block_is_detected_named_and_rewritten(tree):
    readme = tree / "README.md"
    original = readme.read_text(encoding="utf-8")
    cell = re.search(r"\| RED \| (\d+\.\d\d)", original)  # the first RED cell of Table I, as generated
    assert cell, "README.md lost its generated Table I"
    edited = f"{float(cell.group(1)) + 0.01:.2f}"
    readme.write_text(original.replace(cell.group(0), f"| RED | {edited}", 1), encoding="utf-8")
    files = docs.default_files(tree)
    rc, out = _run(files, tree, check=True)
    assert rc == 1 and f"stale: {readme}" in out and "results/reference/quick/table1.md" in out
    assert "docs/" not in out.split("stale:")[1].split("\n")[0]  # only README is named stale
    assert f"| RED | {edited}" in readme.read_text()  # --check writes nothing
    rc, out = _run(files, tree, check=False)
    assert rc == 0 and "updated:" in out
    assert readme.read_text(encoding="utf-8") == original
    assert _run(files, tree, check=True)[0] == 0


def test_docs_check_cli_exits_nonzero_naming_the_stale_file(tree):
    readme = tree / "README.md"
    readme.write_text(readme.read_text().replace("| Gauss | 29.56", "| Gauss | 9.56", 1))
    proc = subprocess.run([sys.executable, "-m", "mtdeq", "docs", "--check", "--root", str(tree)],
                          capture_output=True, text=True, cwd=tree, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "README.md" in proc.stdout and "python -m mtdeq docs" in proc.stdout


def test_a_marker_naming_a_missing_file_is_a_clear_error(tmp_path):
    doc = tmp_path / "page.md"
    doc.write_text("# Page\n\n<!-- BEGIN generated: results/reference/quick/no_such_table.md -->\n"
                   "<!-- END generated -->\n", encoding="utf-8")
    with pytest.raises(DocsError, match=r"page\.md:3: .*no_such_table\.md, which does not exist"):
        docs.run([doc], REPO, check=True, out=io.StringIO())


@pytest.mark.parametrize("body, match", [
    ("<!-- BEGIN generated: results/reference/quick/table1.md -->\n", "without an END"),
    ("<!-- END generated -->\n", "END generated without a BEGIN"),
    ("<!-- BEGIN generated: results/reference/quick/table1.md -->\n"
     "<!-- BEGIN generated: results/reference/quick/table2.md -->\n<!-- END generated -->\n", "inside the block"),
    ("<!-- BEGIN generated: results/reference/quick/table1.md colour=red -->\n<!-- END generated -->\n",
     "unknown attribute 'colour'"),
    ("<!-- BEGIN generated: results/reference/quick/table1.md section=\"No such heading\" -->\n"
     "<!-- END generated -->\n", r"no heading 'No such heading' \(headings: 'Table I — scale quick'"),
    ("<!-- BEGIN generated: results/reference/quick/table1.md table=9 -->\n<!-- END generated -->\n",
     r"has \d+ table\(s\); table=9 asked"),
    ("<!-- BEGIN generated: results/reference/quick/fig2.png -->\n<!-- END generated -->\n", "only"),
    ("<!-- BEGIN generated: results/reference/quick/tolerance.yaml key=nothing -->\n<!-- END generated -->\n",
     "no top-level entry 'nothing'"),
])
def test_malformed_blocks_are_errors_naming_the_file(tmp_path, body, match):
    doc = tmp_path / "page.md"
    doc.write_text("# Page\n\n" + body, encoding="utf-8")
    with pytest.raises(DocsError, match=match):
        docs.update_text(doc, doc.read_text(), REPO)


# --------------------------------------------------------------------------- renderers
def _block(source, **attrs):
    spec = " ".join([source] + [f'{k}="{v}"' for k, v in attrs.items()])
    return f"<!-- BEGIN generated: {spec} -->\n<!-- END generated -->\n"


def _render(tmp_path, source, **attrs):
    doc = tmp_path / "page.md"
    text, stale = docs.update_text(doc, _block(source, **attrs), tmp_path)
    assert len(stale) == 1
    return text.split("\n")[2:-3]  # the content between the markers and their blank lines


def test_markdown_sections_tables_and_bodies(tmp_path):
    (tmp_path / "t.md").write_text(
        "## Main\n\nIntro line.\n\n| a | b |\n|---|---:|\n| x | 1 |\n\nBetween.\n\n| c |\n|---|\n| y |\n\n"
        "### Sub: other (dB)\n\n| d |\n|---|\n| z |\n\nTail.\n", encoding="utf-8")
    assert _render(tmp_path, "t.md") == ["| a | b |", "|---|---:|", "| x | 1 |"]
    assert _render(tmp_path, "t.md", section="Main", table=2) == ["| c |", "|---|", "| y |"]
    assert _render(tmp_path, "t.md", section="Sub: other (dB)") == ["| d |", "|---|", "| z |"]
    body = _render(tmp_path, "t.md", section="Main", show="body")
    assert body[0] == "Intro line." and body[-1] == "| y |" and "### Sub: other (dB)" not in body
    assert _render(tmp_path, "t.md", section="Sub: other (dB)", show="body")[-1] == "Tail."


def test_csv_is_rendered_as_written_with_numeric_columns_right_aligned(tmp_path):
    (tmp_path / "t.csv").write_text("name,value,note\nalpha,0.1000,x|y\nbeta,-2,\n", encoding="utf-8")
    assert _render(tmp_path, "t.csv") == [
        "| name | value | note |", "|---|---:|---|", "| alpha | 0.1000 | x\\|y |", "| beta | -2 |  |"]
    assert _render(tmp_path, "t.csv", columns="value,name")[0] == "| value | name |"
    doc = tmp_path / "page.md"
    with pytest.raises(DocsError, match=r"no column\(s\) \['nope'\]"):
        docs.update_text(doc, _block("t.csv", columns="nope"), tmp_path)


def test_tolerance_yaml_rows_and_measurements(tmp_path):
    (tmp_path / "tol.yaml").write_text(
        "default: 0.05\nrows:\n  gauss: 0.01\n  proposed: {table1: 0.15, table2: 0.05}\n"
        "measured:\n  - {setting: a, gauss: 0.0}\n  - {setting: b, proposed_table1: 0.028}\n", encoding="utf-8")
    assert _render(tmp_path, "tol.yaml", key="rows") == [
        "| row | table1 | table2 |", "|---|---:|---:|", "| default (every other row) | 0.05 | 0.05 |",
        "| gauss | 0.01 | 0.01 |", "| proposed | 0.15 | 0.05 |"]
    # a per-table value reaches every row without its own value (mtdeq.tolerance semantics)
    (tmp_path / "tol2.yaml").write_text("default: 0.03\ntables: {table1: 0.14}\nrows:\n  red: 0.01\n",
                                        encoding="utf-8")
    assert _render(tmp_path, "tol2.yaml", key="rows") == [
        "| row | table1 | table2 |", "|---|---:|---:|", "| default (every other row) | 0.14 | 0.03 |",
        "| red | 0.01 | 0.01 |"]
    assert _render(tmp_path, "tol.yaml", key="measured") == [
        "| setting | gauss | proposed_table1 |", "|---|---:|---:|", "| a | 0 |  |", "| b |  | 0.028 |"]


def test_markers_in_fenced_code_are_examples(tmp_path):
    doc = tmp_path / "page.md"
    text = "```\n<!-- BEGIN generated: results/reference/quick/no_such.md -->\n<!-- END generated -->\n```\n"
    assert docs.find_blocks(doc, text.split("\n")) == []
    assert docs.update_text(doc, text, REPO) == (text, [])


def test_text_outside_the_blocks_is_kept_byte_for_byte(tmp_path):
    (tmp_path / "t.csv").write_text("a\n1\n", encoding="utf-8")
    doc = tmp_path / "page.md"
    before, after = "# Title\n\nHand-written *prose*.  \n", "\nMore prose.\n"
    text, _ = docs.update_text(doc, before + _block("t.csv") + after, tmp_path)
    assert text.startswith(before) and text.endswith("<!-- END generated -->\n" + after)
    again, stale = docs.update_text(doc, text, tmp_path)
    assert again == text and stale == []


# --------------------------------------------------------------------------- links
def test_broken_links_and_anchors_are_reported(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## What [8]'s code says, and more\n", encoding="utf-8")
    (tmp_path / "img.png").write_bytes(b"")
    doc = tmp_path / "page.md"
    doc.write_text(
        "# Page\n\n[ok](other.md) [ok](other.md#what-8s-code-says-and-more) ![ok](img.png) [web](https://x.org/y)\n"
        "[self](#page) `[not a link](missing.md)`\n\n```\n[in code](missing.md)\n```\n"
        "[bad](missing.md) ![bad](../nowhere/fig.png)\n[bad anchor](other.md#no-such-heading)\n", encoding="utf-8")
    broken = docs.broken_links(doc)
    assert len(broken) == 3, broken
    assert "page.md:9: missing.md (no such file)" in broken[0]
    assert "../nowhere/fig.png" in broken[1]
    assert "no heading with anchor #no-such-heading" in broken[2]
