"""Checks of the book's structure: every chapter is in the table of contents, starts
with the current Colab set-up cell (collapsed on the page), was executed top to bottom
with no stored error, stays within the size budget, prints no round-off in a checked
cell, and cites only keys that exist in book/references.bib."""

import json
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import notebooks  # noqa: E402

CHAPTERS = [p for p in notebooks.chapters([]) if not p.name.startswith("_")]
NOTEBOOKS = CHAPTERS + [notebooks.TEMPLATE]
BIB = (ROOT / "book" / "references.bib").read_text()
BIB_KEYS = set(re.findall(r"^@\w+\{([^,]+),", BIB, re.M))


def test_there_are_chapters_and_all_are_in_the_toc():
    toc = (ROOT / "_toc.yml").read_text()
    assert CHAPTERS, "no chapter notebooks found"
    for p in CHAPTERS:
        entry = f"file: {p.relative_to(ROOT).with_suffix('')}"
        assert entry in toc, f"{p} is not in _toc.yml"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_health(path):
    nb = json.loads(path.read_text())
    cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    code = [c for c in cells if "".join(c["source"]).strip()]
    first = code[0]
    tags = first["metadata"].get("tags", [])
    assert set(notebooks.SETUP_TAGS) <= set(tags), (
        f"the first code cell must carry the tags {notebooks.SETUP_TAGS} (the set-up "
        "cell, collapsed on the page): run scripts/notebooks.py sync-setup"
    )
    assert "".join(first["source"]) == notebooks.setup_source(), (
        "set-up cell is stale: run scripts/notebooks.py sync-setup"
    )
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), "execute it top to bottom"
    assert not any(o["output_type"] == "error" for c in code for o in c["outputs"]), (
        "a stored output is an error"
    )
    assert path.stat().st_size < notebooks.MAX_BYTES


def test_setup_cell_fits_the_column():
    lines = notebooks.setup_source().splitlines()
    assert max(map(len, lines)) <= 88, "the set-up cell is clipped on the page"


def test_sync_setup_rewrites_source_and_tags(tmp_path):
    import nbformat

    nb = nbformat.v4.new_notebook()
    old = nbformat.v4.new_code_cell("print('old set-up')", metadata={"tags": [
        "colab-setup", "keep-me"]})
    nb.cells = [nbformat.v4.new_markdown_cell("# T"), old]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    notebooks.sync_setup([path])
    cell = nbformat.read(path, as_version=4).cells[1]
    assert cell.source == notebooks.setup_source()
    assert cell.metadata["tags"] == ["colab-setup", "hide-input", "keep-me"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_checked_outputs_print_no_roundoff(path):
    """Cells tagged nbval-check-output are compared as text on every machine, so they
    must print rounded claims or bounds, never round-off (rule in scripts/notebooks.py:
    nonzero |x| < 1e-9, a zero in scientific notation, or more than 10 significant
    digits; a number right after '<' or '<=' is a bound and allowed)."""
    problems = notebooks.roundoff_problems(path)
    assert not problems, "print a bound or a rounded value instead:\n" + "\n".join(
        problems
    )


def test_the_roundoff_check_reads_some_checked_cell():
    # the template always has one, so the check above can never pass vacuously
    assert notebooks.checked_cells(notebooks.TEMPLATE) >= 1
    assert sum(notebooks.checked_cells(p) for p in NOTEBOOKS) >= 1


@pytest.mark.parametrize(
    "text, flagged",
    [
        ("VP identity error: 2.2e-16", ["2.2e-16"]),  # today's template
        ("max |difference| = 1e-11", ["1e-11"]),
        ("max |Tweedie - posterior mean| = 1.6e-15", ["1.6e-15"]),
        ("residual -3.0e-17 and 0.0e+00", ["-3.0e-17", "0.0e+00"]),
        ("mean 0.12345678901", ["0.12345678901"]),  # 11 significant digits
        ("sum = 1234567.8901", ["1234567.8901"]),
        ("error < 1e-12, <= 1e-10, &lt; 1e-14, &lt;= 1e-13, ≤ 1e-15", []),
        ("$\\le 10^{-12}$ and \\lt 1e-16", []),
        ("0.1234567890 and 1000000000000 and 0.000", []),  # 10 digits; integers; zero
        ("PF-ODE difference = 9.8e-07 nats, rate 0.0017, -0.0006", []),
        ("dlib 0.1.0, x0, W2, t_{min}, 1e-3, 66,946 parameters, [0, 0, 0]", []),
        ("a sentence ending in 2.5.", []),
    ],
)
def test_roundoff_rule(text, flagged):
    assert notebooks.roundoff_numbers(text) == flagged


def test_significant_digits():
    sig = notebooks.significant_digits
    assert [sig("0.00123"), sig("1.2300"), sig("1000000"), sig("2.2e-16")] == [
        3, 5, 1, 2
    ]
    assert [sig("-0.5"), sig("10.0"), sig("7")] == [1, 3, 1]


@pytest.mark.parametrize(
    "path", CHAPTERS + sorted((ROOT / "book").glob("*.md")), ids=lambda p: p.name
)
def test_citations_exist(path):
    text = path.read_text()
    groups = re.findall(r"\{cite[a-z]*\}`([^`]+)`", text)
    keys = {k.strip() for group in groups for k in group.split(",")}
    missing = keys - BIB_KEYS
    assert not missing, (
        f"{path.name} cites keys missing from references.bib: {sorted(missing)}"
    )
