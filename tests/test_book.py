"""Checks of the book's structure: every chapter is in the table of contents, starts with the
current Colab set-up cell, was executed top to bottom with no stored error, stays within the size
budget, and cites only keys that exist in book/references.bib."""

import json
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import notebooks  # noqa: E402

CHAPTERS = [p for p in notebooks.chapters([]) if not p.name.startswith("_")]
BIB_KEYS = set(re.findall(r"^@\w+\{([^,]+),", (ROOT / "book" / "references.bib").read_text(), re.M))


def test_there_are_chapters_and_all_are_in_the_toc():
    toc = (ROOT / "_toc.yml").read_text()
    assert CHAPTERS, "no chapter notebooks found"
    for p in CHAPTERS:
        assert f"file: {p.relative_to(ROOT).with_suffix('')}" in toc, f"{p} is not in _toc.yml"


@pytest.mark.parametrize("path", CHAPTERS + [notebooks.TEMPLATE], ids=lambda p: p.name)
def test_notebook_health(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    first = code[0]
    assert "colab-setup" in first["metadata"].get("tags", []), "first code cell must be tagged colab-setup"
    assert "".join(first["source"]) == notebooks.setup_source(), "set-up cell is stale: run scripts/notebooks.py sync-setup"
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), "execute it top to bottom"
    assert not any(o["output_type"] == "error" for c in code for o in c["outputs"]), "a stored output is an error"
    assert path.stat().st_size < notebooks.MAX_BYTES


@pytest.mark.parametrize("path", CHAPTERS + sorted((ROOT / "book").glob("*.md")), ids=lambda p: p.name)
def test_citations_exist(path):
    text = path.read_text()
    keys = {k.strip() for group in re.findall(r"\{cite[a-z]*\}`([^`]+)`", text) for k in group.split(",")}
    missing = keys - BIB_KEYS
    assert not missing, f"{path.name} cites keys missing from references.bib: {sorted(missing)}"
