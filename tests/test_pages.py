"""What the rendered page shows, checked on the notebooks' sources and stored outputs:
no hand-numbered headings (the book numbers them), no figure that warned of illegible
text when it was drawn, no printed line wider than the code column; and the HTML
check's own logic (scripts/check_html.py, run on the built book by scripts/test.sh)."""

import json
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import check_html  # noqa: E402
import notebooks  # noqa: E402

CHAPTERS = [p for p in notebooks.chapters([]) if not p.name.startswith("_")]
NOTEBOOKS = CHAPTERS + [notebooks.TEMPLATE]
PAGES = NOTEBOOKS + sorted((ROOT / "book").glob("*.md"))
# The code column's width in characters is the lint limit (ruff's line-length): printed
# output is shown in the same column and font as code.
COLUMN_CHARS = int(re.search(r"^line-length\s*=\s*(\d+)",
                             (ROOT / "pyproject.toml").read_text(), re.M).group(1))
# "## 2. Title", "### 1.2 Title", "### (a) Title", "## IV. Title"
HAND_NUMBER = re.compile(
    r"^ {0,3}#{1,6}\s+(\(?\d+(?:\.\d+)*[.):]?|\(?[a-z]\)|[IVX]+\.)\s+\S")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _id(p):
    return p.relative_to(ROOT).as_posix()


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _shown_text(output):
    """Text a page shows in a <pre> for this output: streams, and text/plain results
    that have no richer representation (image, HTML, widget, LaTeX, Markdown)."""
    if output["output_type"] == "stream":
        return "".join(output["text"])
    data = output.get("data", {})
    if output["output_type"] in ("execute_result", "display_data") and set(data) == {
            "text/plain"}:
        return "".join(data["text/plain"])
    return ""


@pytest.mark.parametrize("path", PAGES, ids=_id)
def test_headings_carry_no_hand_written_numbers(path):
    parts = check_html.markdown_parts(path)
    bad = []
    for where, text in parts:
        in_code = False
        for line in text.split("\n"):
            if line.lstrip().startswith(("```", "~~~")):
                in_code = not in_code
            elif not in_code and HAND_NUMBER.match(line):
                bad.append(f"{where}: {line.strip()[:70]}".lstrip(": "))
    assert not bad, ("headings are numbered by the book (_toc.yml `numbered: true`); "
                     "remove these hand-written numbers:\n  " + "\n  ".join(bad))


@pytest.mark.parametrize("path", PAGES, ids=_id)
def test_display_math_starts_after_a_blank_line(path):
    """The book's one form of display math: a blank line, then `$$` glued to the first
    line of the formula, and `$$` closing the last one. A `$$` line right after text is
    the defect of chapter 3 (MyST paired the `$$` as inline math), and a `$$` alone on
    a line after the formula looks like it to every line-based check."""
    bad = []
    for where, text in check_html.markdown_parts(path):
        lines, in_code = text.split("\n"), False
        for k, line in enumerate(lines):
            if line.lstrip().startswith(("```", "~~~")):
                in_code = not in_code
            elif (not in_code and k and line.lstrip().startswith("$$")
                  and lines[k - 1].strip()):
                after = lines[k - 1].strip()[:50]
                bad.append(f"{where}: line {k}: after {after!r}".lstrip(": "))
    assert not bad, ("`$$` right after a text line; put a blank line before the block "
                     "and glue the closing `$$` to the formula:\n  " + "\n  ".join(bad))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_no_stored_figure_is_illegible(path):
    bad = [f"cell {i}: {_shown_text(o).strip()[:300]}"
           for i, c in enumerate(_cells(path)) if c["cell_type"] == "code"
           for o in c["outputs"] if "IllegibleFigureWarning" in _shown_text(o)]
    assert not bad, ("figures with text under dlib.plot.MIN_TEXT_PT on the page "
                     "(make them narrower or their text larger, then re-execute):\n  "
                     + "\n  ".join(bad))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_id)
def test_printed_lines_fit_the_code_column(path):
    bad = []
    for i, c in enumerate(_cells(path)):
        if c["cell_type"] != "code":
            continue
        for o in c["outputs"]:
            for line in ANSI.sub("", _shown_text(o)).split("\n"):
                line = line.split("\r")[-1].expandtabs()
                if len(line) > COLUMN_CHARS:
                    bad.append(f"cell {i}: {len(line)} chars: {line[:60]}...")
    assert not bad, (f"printed lines longer than {COLUMN_CHARS} characters are clipped "
                     "on the page:\n  " + "\n  ".join(bad))


# --- scripts/check_html.py: the checks must fire on the defects they are for ----------

GOOD_MD = "Text\n\n$$\nx^2\n$$\n\nmore text\n\n$$ y $$\n"
BAD_MD = "Text with no blank line\n$$\nx^2\n$$\nmore text\n"


def test_display_blocks_counts_only_math_outside_code():
    assert check_html.display_blocks(GOOD_MD) == 2
    assert check_html.display_blocks(BAD_MD) == 1
    src = ("```python\nprint('$$')\n```\n\n`$$` inline code\n\n```{math}\na\n```\n\n"
           "\\begin{align}\na &= b\n\\end{align}\n\n:::{note}\n$$\nz\n$$\n:::\n")
    assert check_html.display_blocks(src) == 3  # {math}, align, $$ inside the note


def test_blank_line_problems_names_cell_and_line(tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": "x = 1", "outputs": []},
                    {"cell_type": "markdown", "source": GOOD_MD},
                    {"cell_type": "markdown", "source": BAD_MD}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "page.ipynb"
    path.write_text(json.dumps(nb))
    assert check_html.blank_line_problems(path) == [
        "cell 2, line 2: $$ block starts right after text (no blank line)",
        "cell 2, line 4: text right after the closing $$ (no blank line)"]


def _page(tmp_path, body, markdown):
    html, root = tmp_path / "html", tmp_path / "src"
    html.mkdir()
    root.mkdir()
    (root / "page.md").write_text(markdown)
    page = html / "page.html"
    page.write_text(f"<html><body><article class='bd-article'>{body}</article>"
                    "</body></html>")
    return check_html.check_page(page, html, root)


def test_hand_number_pattern():
    for heading in ("## 2. Derivation", "### 1.2 Tweedie", "### (a) One network",
                    "## IV. Part", "### 3) Step"):
        assert HAND_NUMBER.match(heading), heading
    for heading in ("## Derivation", "### 2-D toy data", "### A change of schedule",
                    "# 8x8 digits"):
        assert not HAND_NUMBER.match(heading), heading


def test_check_page_passes_rendered_math_and_code(tmp_path):
    body = ("<p>Let <span class='math'>\\(\\alpha_{t}\\)</span> be given.</p>"
            "<div class='math'>\\[x^2\\]</div>"
            "<pre>cost = '$5' \\n {cite}</pre><p><code>a_{b} $</code></p>"
            "<div class='cell_output'><p>$ \\alpha</p></div>")
    assert _page(tmp_path, body, "Let $\\alpha_t$ be given.\n\n$$\nx^2\n$$\n") == []


def test_check_page_fails_on_unrendered_math_and_roles(tmp_path):
    # what MyST makes of BAD_MD-style sources: $$ paired as inline math
    body = ("<p>text $<span class='math'>\\(x\\)</span> by \\varphi and t_{min} "
            "{cite}</p><span class='math'>\\( see {cite}`key` \\)</span>")
    problems = _page(tmp_path, body, BAD_MD)
    text = "\n".join(problems)
    assert problems[0].startswith("display math: 1 display blocks in page.md, "
                                  "0 rendered")
    for label in ("TeX control word", "TeX sub/superscript", "stray $",
                  "MyST role/directive as text", "MyST role inside math"):
        assert label in text


# --- book/_ext/bookstyle.py: reference labels in the citations' author-year style -----

def test_author_year_labels():
    from pybtex.database import Entry, Person

    sys.path.insert(0, str(ROOT / "book" / "_ext"))
    import bookstyle

    def entry(authors, year="2021"):
        return Entry("article", fields={"title": "T", "year": year},
                     persons={"author": [Person(a) for a in authors]})

    style = bookstyle.AuthorYearLabelStyle()
    entries = [entry(["Hyv{\\\"a}rinen, Aapo"], "2005"),
               entry(["Salimans, Tim", "Ho, Jonathan"], "2022"),
               entry(["Song, Jiaming", "Meng, Chenlin", "Ermon, Stefano"]),
               entry(["Song, Yang", "Sohl-Dickstein, Jascha", "Kingma, Diederik P."]),
               entry(["van den Oord, Aaron"], "2017")]
    assert list(style.format_labels(entries)) == [
        "Hyvärinen, 2005", "Salimans and Ho, 2022", "Song et al., 2021a",
        "Song et al., 2021b", "van den Oord, 2017"]


def test_library_source_fits_the_code_column():
    """Chapters show dlib's source with show_source, so every line of it must fit the
    column. ruff's E501 lets a long line without spaces through (a formula in a
    docstring, a URL): this test does not."""
    long = [f"{p.name}:{i}: {len(line)} chars"
            for p in sorted((ROOT / "dlib").glob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if len(line) > COLUMN_CHARS]
    assert not long, long
