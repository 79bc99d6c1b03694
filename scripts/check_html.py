#!/usr/bin/env python
"""Check the built book's HTML for math and MyST markup that did not render.

    python scripts/check_html.py [--html _build/html]

Run after `jupyter-book build` (scripts/test.sh does). For every page it checks

1. text outside math, code and cell outputs: no TeX control word (`\\alpha`), no TeX
   sub/superscript (`t_{min}`, `x^{2}`), no `$`, no MyST role or directive left as text
   (`{cite}`, `{note}`); and no MyST role inside a math element (a swallowed `{cite}`);
2. every display block of the page's source (`$$ ... $$`, an amsmath environment, a
   `{math}` directive) became display math in the HTML: the counts must be equal. A
   `$$` block without a blank line before it is paired as inline math by MyST, the page
   renders garbled, and the strict build does not notice.

Code, outputs and `<pre>` blocks may contain `$` and backslashes; they are not checked.
Exit status 1 on any finding, with the page, the counts and up to five examples each.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

from bs4 import BeautifulSoup, NavigableString

ROOT = pathlib.Path(__file__).resolve().parents[1]

# what must not appear in rendered text (outside math, code and outputs)
TEXT_PATTERNS = {
    "TeX control word": re.compile(r"\\(?:[A-Za-z]+|[()\[\]{}|,;!])"),
    "TeX sub/superscript": re.compile(r"[A-Za-z0-9)\]}][_^]\{"),
    "stray $": re.compile(r"\$"),
    "MyST role/directive as text": re.compile(r"(?<![\w\\^_])\{[a-z][\w.:+-]*\}"),
}
ROLE_IN_MATH = re.compile(r"\{[a-z][\w.:+-]*\}`")
# elements whose text is not prose
SKIP = ["script", "style", "pre", "code", "kbd", "samp", "mjx-container", "svg", "math"]
SKIP_CLASSES = ["math", "cell_output", "output", "highlight", "MathJax"]
AMS_ENVS = ("equation", "multline", "gather", "align", "alignat", "flalign", "eqnarray",
            "matrix")  # myst's amsmath extension turns these into display math
# directives whose content is not Markdown
VERBATIM = {"math", "code", "code-block", "code-cell", "sourcecode", "literalinclude",
            "raw", "eval-rst", "bibliography", "glue:math"}
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,}|:{3,})(.*)$")


def display_blocks(markdown: str) -> int:
    """Number of display-math blocks a MyST source asks for: `$$...$$` pairs, top-level
    amsmath environments and `{math}` directives, outside code and inline code."""
    count, kept, stack = 0, [], []  # stack of open fences: (marker, skips its content)
    for line in markdown.splitlines():
        m = FENCE.match(line)
        if stack and m and not m.group(3).strip() and m.group(2)[0] == stack[-1][0][0] \
                and len(m.group(2)) >= len(stack[-1][0]):
            stack.pop()
            continue
        if stack and stack[-1][1]:
            continue
        if m:
            info = m.group(3).strip()
            directive = info.startswith("{") and "}" in info
            name = info[1:info.find("}")] if directive else None
            if name == "math":
                count += 1
            # Markdown inside admonitions and the like; code, math or raw text otherwise
            stack.append((m.group(2), name is None or name in VERBATIM))
            continue
        kept.append(line)
    text = re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", "", "\n".join(kept), flags=re.S)
    count += len(re.findall(r"(?<!\\)\$\$", text)) // 2
    outside = re.sub(r"(?<!\\)\$\$.*?(?<!\\)\$\$", "", text, flags=re.S)
    envs = "|".join(AMS_ENVS)
    count += len(re.findall(rf"^\s*\\begin\{{({envs})\*?\}}", outside, flags=re.M))
    return count


def markdown_parts(path: pathlib.Path) -> list[tuple[str, str]]:
    """(where, text) for each Markdown cell of a notebook (where = "cell N", counted
    from 0 over all cells, as nbformat does), or the whole of a .md file."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        return [(f"cell {i}", "".join(c["source"])) for i, c in enumerate(cells)
                if c["cell_type"] == "markdown"]
    return [("", path.read_text())]


def source_markdown(path: pathlib.Path) -> str:
    return "\n\n".join(text for _, text in markdown_parts(path))


def blank_line_problems(path: pathlib.Path) -> list[str]:
    """Where a `$$` display block lacks its blank line before or after, or shares its
    opening line with text: "cell 4, line 9: ..." (lines counted from 1 in the cell)."""
    out = []
    for where, text in markdown_parts(path):
        lines, inside, fence = text.split("\n"), False, None
        for j, line in enumerate(lines):
            m = FENCE.match(line)
            if fence is None and m and not inside and not m.group(2).startswith(":"):
                fence = m.group(2)
                continue
            if fence is not None:
                if m and m.group(2).startswith(fence) and not m.group(3).strip():
                    fence = None
                continue
            code_free = re.sub(r"(`+)(?!`).*?(?<!`)\1(?!`)", "", line)
            n = len(re.findall(r"(?<!\\)\$\$", code_free))
            if not n:
                continue
            at = f"{where}, line {j + 1}".lstrip(", ")
            stripped = code_free.strip()
            if not inside:
                if not stripped.startswith("$$"):
                    out.append(f"{at}: text before $$ on the same line: "
                               f"{line.strip()[:50]!r}")
                elif j > 0 and lines[j - 1].strip():
                    out.append(f"{at}: $$ block starts right after text "
                               "(no blank line)")
            closes = (n % 2 == 0) if not inside else (n % 2 == 1)
            inside = not closes
            if closes and j + 1 < len(lines) and lines[j + 1].strip():
                if not stripped.endswith("$$"):
                    out.append(f"{at}: text after the closing $$ on the same line")
                else:
                    out.append(f"{at}: text right after the closing $$ (no blank line)")
    return out


def source_of(page: pathlib.Path, html: pathlib.Path, root: pathlib.Path):
    stem = page.relative_to(html).with_suffix("")
    for ext in (".ipynb", ".md"):
        p = root / stem.with_suffix(ext)
        if p.exists():
            return p
    return None


def _skipped(node) -> bool:
    for parent in node.parents:
        if parent.name in SKIP:
            return True
        classes = parent.get("class") or []
        if any(c in SKIP_CLASSES for c in classes):
            return True
    return False


def _context(text: str, start: int, end: int, width: int = 40) -> str:
    snippet = text[max(0, start - width):end + width]
    return " ".join(snippet.split())


def check_page(page: pathlib.Path, html: pathlib.Path, root: pathlib.Path) -> list[str]:
    soup = BeautifulSoup(page.read_text(errors="replace"), "html.parser")
    body = soup.select_one("article.bd-article") or soup.body
    if body is None:
        return []
    found: dict[str, list[str]] = {}
    for node in body.find_all(string=True):
        if not isinstance(node, NavigableString) or _skipped(node):
            continue
        text = str(node)
        for label, pattern in TEXT_PATTERNS.items():
            for m in pattern.finditer(text):
                found.setdefault(label, []).append(_context(text, m.start(), m.end()))
    outputs = {id(e) for e in body.select(".cell_output")}
    for el in body.select(".math"):
        if any(id(p) in outputs for p in el.parents):
            continue
        for m in ROLE_IN_MATH.finditer(el.get_text()):
            found.setdefault("MyST role inside math", []).append(
                _context(el.get_text(), m.start(), m.end()))
    problems = [f"{label}: {len(ex)} found, e.g. " + " | ".join(repr(e) for e in ex[:5])
                for label, ex in found.items()]
    src = source_of(page, html, root)
    if src is not None:
        want = display_blocks(source_markdown(src))
        got = sum(1 for el in body.select("div.math")
                  if not any(id(p) in outputs for p in el.parents))
        if want != got:
            where = blank_line_problems(src)
            problems.insert(0, f"display math: {want} display blocks in "
                               f"{src.relative_to(root)}, {got} rendered as display "
                               "math (a $$ block needs a blank line before and after)"
                            + "".join(f"\n      {w}" for w in where))
    return problems


def pages(html: pathlib.Path) -> list[pathlib.Path]:
    skip = {"_static", "_sources", "_images"}
    return sorted(p for p in html.rglob("*.html")
                  if not skip & set(p.relative_to(html).parts))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--html", default=str(ROOT / "_build" / "html"), help="built book")
    ap.add_argument("--root", default=str(ROOT), help="book sources (repository root)")
    args = ap.parse_args()
    html, root = pathlib.Path(args.html).resolve(), pathlib.Path(args.root).resolve()
    todo = pages(html)
    if not todo:
        print(f"check_html: no HTML pages under {html}; build the book first",
              file=sys.stderr)
        return 1
    bad = 0
    for page in todo:
        problems = check_page(page, html, root)
        if problems:
            bad += 1
            print(f"FAIL {page.relative_to(html)}")
            for p in problems:
                print(f"  - {p}")
    print(f"check_html: {len(todo)} pages, {bad} with unrendered math or markup")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
