#!/usr/bin/env python
"""The project's notebook tool.

    python scripts/notebooks.py execute [NOTEBOOK ...]
        execute in place: fresh kernel, top to bottom, one torch thread, widget state
        stored
    python scripts/notebooks.py sync-setup [NOTEBOOK ...]
        rewrite each chapter's Colab set-up cell (source and tags) from setup_source();
        the repository URL comes from _config.yml
    python scripts/notebooks.py check [NOTEBOOK ...]
        health: executed 1..N, no stored error, size < 2 MB, the current Colab set-up
        cell first, no round-off printed in a checked (nbval-check-output) cell
    python scripts/notebooks.py new PATH TITLE
        start a chapter from the template

With no notebook given, every notebook under chapters/ is used (the template included).
"""

from __future__ import annotations

import math
import os
import pathlib
import re
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "chapters" / "_template.ipynb"
SETUP_TAG = "colab-setup"
# Jupyter Book 1 collapses the input of a cell with this tag (Colab ignores it).
SETUP_TAGS = [SETUP_TAG, "hide-input"]
CHECK_TAG = "nbval-check-output"
MAX_BYTES = 2 * 1024 * 1024


def chapters(args):
    if args:
        return [pathlib.Path(a).resolve() for a in args]
    return sorted(
        p
        for p in (ROOT / "chapters").rglob("*.ipynb")
        if ".ipynb_checkpoints" not in p.parts
    )


def repo_url() -> str:
    text = (ROOT / "_config.yml").read_text()
    m = re.search(r"^repository:\s*\n(?:\s+.*\n)*?\s+url:\s*(\S+)", text, re.M)
    if not m:
        sys.exit("_config.yml has no repository.url")
    return m.group(1)


# The first code cell of every chapter. In Colab it builds the book's package first and
# swaps it in for PyPI's `dlib` only when that worked; elsewhere it only checks the
# import. tests/test_colab_setup.py runs it in a simulated Colab (both paths).
SETUP_SOURCE = r"""
# Set-up. In Colab this installs the book's library `dlib` from its repository, keeping
# Colab's torch; PyPI's unrelated C++ package, also called `dlib`, is replaced only once
# ours has been built. Elsewhere the cell only checks that `import dlib` is the book's.
import importlib
import importlib.metadata as md
import pathlib
import re
import subprocess
import sys
import tempfile

REPO = "@REPO@"  # from _config.yml
EXTRA = "full"  # the optional packages that the full-scale cells use
status = "already installed"


def pip(*args):
    cmd = [sys.executable, "-m", "pip", "-q", *args]
    run = subprocess.run(cmd, capture_output=True, text=True)
    lines = run.stderr.splitlines()
    why = [s.strip() for s in lines if re.match(r"\s*(fatal|error):", s, re.I)]
    return run.returncode == 0, "\n".join(why or lines[-6:])


owners = md.packages_distributions().get("dlib", [])
if "google.colab" in sys.modules and owners != ["diffbook-dlib"]:
    tmp = tempfile.mkdtemp()
    ok, err = pip("wheel", "--no-deps", "-w", tmp, f"git+{REPO}")
    if ok:  # resolve, install nothing yet; Colab's torch must stay as it is
        book = f"{next(pathlib.Path(tmp).glob('*.whl'))}[{EXTRA}]"
        keep = f"torch=={md.version('torch')}"
        ok, err = pip("install", "--dry-run", book, keep)
    if not ok:
        raise RuntimeError(
            f"Could not get the book's dlib from {REPO}; nothing was changed.\n"
            f"{err}\nCheck that this runtime is online and the repository exists, "
            "then run this cell again."
        )
    old = ", ".join(f"{name} {md.version(name)}" for name in owners)
    pip("uninstall", "-y", "dlib", "diffbook-dlib")
    ok, err = pip("install", book, keep)
    if not ok:
        raise RuntimeError(
            f"Removed {old or 'nothing'}, but installing the book's dlib failed:\n"
            f"{err}\nRun this cell again."
        )
    status = f"installed from {REPO}" + (f", replacing {old}" if old else "")
    for name in [m for m in sys.modules if m.split(".")[0] == "dlib"]:
        del sys.modules[name]
    importlib.invalidate_caches()

import dlib

assert getattr(dlib, "__book__", None) == "diffusion-book", (
    f"`import dlib` found {dlib.__file__}, not this book's library (PyPI's C++ package "
    "is also called dlib). To fix it: `pip uninstall dlib`, then `pip install -e .` in "
    "a clone of the book's repository."
)
print(f"The book's dlib {dlib.__version__}: {status}.")"""


def setup_source() -> str:
    """The Colab set-up cell's source, with the repository URL from _config.yml."""
    return SETUP_SOURCE[1:].replace("@REPO@", repo_url())


def sync_setup(paths):
    import nbformat

    src = setup_source()
    for p in paths:
        nb = nbformat.read(p, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        if not code:
            sys.exit(f"{p}: no code cell")
        cell = code[0]
        tags = cell.metadata.get("tags", [])
        if SETUP_TAG not in tags:
            sys.exit(f"{p}: the first code cell is not tagged {SETUP_TAG!r}")
        new_tags = SETUP_TAGS + [t for t in tags if t not in SETUP_TAGS]
        if cell.source != src or tags != new_tags:
            cell.source = src
            cell.metadata["tags"] = new_tags
            nbformat.write(nb, p)
            print(f"updated {_rel(p)}")


# --- Round-off in checked outputs ---------------------------------------------------
# A number printed by a cell tagged nbval-check-output is compared as text on every CI
# machine. float64 results agree across CPUs (Intel vs AMD, other BLAS kernels) only to
# a relative 1e-16 per operation, and errors compound, so the rule is:
#   * a nonzero number with |x| < TINY (1e-9) is round-off-sized: print a bound instead;
#   * a zero printed in scientific notation (0.0e+00) is round-off that happened to
#     vanish on this CPU: print a bound instead;
#   * a number with more than MAX_DIGITS (10) significant digits claims more than a
#     float64 result reproduces across CPUs: round it;
#   * a number right after "<" or "<=" (also "≤", "&lt;", "\\le") is a bound, not a
#     value, and is allowed.
# Integers written without a decimal point or exponent count their digits without the
# trailing zeros (1000000 has one significant digit).
TINY = 1e-9
MAX_DIGITS = 10
_NUMBER = re.compile(
    r"(?<![\w.])[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?(?!\w|\.\d)"
)
_BOUND_BEFORE = re.compile(r"(?:<=?|≤|&lt;=?|&le;|\\leq?|\\lt)\s*[-+]?$")


def significant_digits(token: str) -> int:
    """Significant digits of a printed number: '0.00123' -> 3, '1.2300' -> 5,
    '1000000' -> 1, '2.2e-16' -> 2."""
    mantissa = re.split(r"[eE]", token.lstrip("+-"))[0]
    digits = mantissa.replace(".", "").lstrip("0")
    if "." not in mantissa and not re.search(r"[eE]", token):
        digits = digits.rstrip("0")
    return len(digits)


def roundoff_numbers(text: str) -> list[str]:
    """The numbers in ``text`` that break the round-off rule above (bounds excepted)."""
    found = []
    for m in _NUMBER.finditer(text):
        token = m.group()
        if _BOUND_BEFORE.search(text[max(0, m.start() - 8):m.start()]):
            continue
        value = float(token)
        if not math.isfinite(value):
            continue
        sci = bool(re.search(r"[eE]", token))
        if (
            (value != 0 and abs(value) < TINY)
            or (value == 0 and sci)
            or significant_digits(token) > MAX_DIGITS
        ):
            found.append(token)
    return found


def output_texts(cell) -> list[str]:
    """Every text output of a code cell that nbval compares (streams, plain, HTML,
    LaTeX, Markdown)."""
    texts = []
    for out in cell.get("outputs", []):
        if "text" in out:
            texts.append(_joined(out["text"]))
        for mime, value in out.get("data", {}).items():
            if mime in ("text/plain", "text/html", "text/latex", "text/markdown"):
                texts.append(_joined(value))
    return texts


def _joined(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def roundoff_problems(path) -> list[str]:
    """One line per checked cell of the notebook that prints round-off."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    problems = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or CHECK_TAG not in cell.metadata.get("tags", []):
            continue
        bad = [tok for text in output_texts(cell) for tok in roundoff_numbers(text)]
        if bad:
            problems.append(
                f"{_rel(path)}: cell {index} (In [{cell.get('execution_count')}]) "
                f"prints round-off: {', '.join(bad)}"
            )
    return problems


def checked_cells(path) -> int:
    """How many cells of the notebook carry the nbval-check-output tag."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    return sum(CHECK_TAG in c.metadata.get("tags", []) for c in nb.cells)


def _rel(p) -> str:
    p = pathlib.Path(p).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def execute(paths):
    import nbformat
    from nbclient import NotebookClient

    os.environ.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        OPENBLAS_NUM_THREADS="1",
        PYDEVD_DISABLE_FILE_VALIDATION="1",
    )
    times = {}
    for p in paths:
        nb = nbformat.read(p, as_version=4)
        client = NotebookClient(
            nb,
            timeout=900,
            kernel_name="python3",
            resources={"metadata": {"path": str(p.parent)}},
            store_widget_state=True,
        )
        start = time.perf_counter()
        client.execute()
        sec = time.perf_counter() - start
        for cell in nb.cells:  # drop per-cell timestamps: they only add noise to diffs
            cell.metadata.pop("execution", None)
        nbformat.write(nb, p)
        rel = _rel(p)
        times[rel] = round(sec, 1)
        print(f"{rel}: executed in {sec:.1f} s, {p.stat().st_size / 1e6:.2f} MB")
    return times


def check(paths) -> int:
    import nbformat

    problems = []
    src = setup_source()
    for p in paths:
        nb = nbformat.read(p, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
        counts = [c.get("execution_count") for c in code]
        if counts != list(range(1, len(code) + 1)):
            problems.append(
                f"{p}: not executed top to bottom in one fresh kernel "
                f"(counts {counts[:5]}...)"
            )
        for c in code:
            if any(o.get("output_type") == "error" for o in c.get("outputs", [])):
                problems.append(f"{p}: a stored output is an error")
        if p.stat().st_size > MAX_BYTES:
            problems.append(f"{p}: {p.stat().st_size / 1e6:.1f} MB > 2 MB")
        tags = code[0].metadata.get("tags", []) if code else []
        if not code or not set(SETUP_TAGS) <= set(tags) or code[0].source != src:
            problems.append(
                f"{p}: the first code cell must be the current Colab set-up cell "
                f"(tags {SETUP_TAGS}): run scripts/notebooks.py sync-setup"
            )
        problems += roundoff_problems(p)
    for line in problems:
        print(line)
    print(f"{len(paths)} notebook(s) checked, {len(problems)} problem(s)")
    return 1 if problems else 0


def new(path: str, title: str):
    import nbformat

    dest = ROOT / path
    if dest.exists():
        sys.exit(f"{dest} exists")
    nb = nbformat.read(TEMPLATE, as_version=4)
    nb.cells[0].source = nb.cells[0].source.replace("Chapter title", title, 1)
    dest.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, dest)
    print(f"created {dest.relative_to(ROOT)}; add it to _toc.yml")


def main(argv):
    if not argv or argv[0] not in ("execute", "sync-setup", "check", "new"):
        sys.exit(__doc__)
    cmd, rest = argv[0], argv[1:]
    if cmd == "new":
        if len(rest) != 2:
            sys.exit("usage: notebooks.py new PATH TITLE")
        return new(*rest)
    paths = chapters(rest)
    if cmd == "execute":
        execute(paths)
    elif cmd == "sync-setup":
        sync_setup(paths)
    else:
        return check(paths)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
