#!/usr/bin/env python
"""The project's notebook tool.

    python scripts/notebooks.py execute [NOTEBOOK ...]   execute in place (fresh kernel, top to bottom,
                                                         one torch thread, widget state stored)
    python scripts/notebooks.py sync-setup [NOTEBOOK ...] rewrite each chapter's Colab set-up cell from
                                                         the template (repository URL from _config.yml)
    python scripts/notebooks.py check [NOTEBOOK ...]     health: executed 1..N, no stored errors,
                                                         size < 2 MB, Colab set-up cell first
    python scripts/notebooks.py new PATH TITLE           start a chapter from the template

With no notebook given, every notebook under chapters/ is used (the template included).
"""

from __future__ import annotations

import os
import pathlib
import re
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "chapters" / "_template.ipynb"
SETUP_TAG = "colab-setup"
MAX_BYTES = 2 * 1024 * 1024


def chapters(args):
    if args:
        return [pathlib.Path(a).resolve() for a in args]
    return sorted(p for p in (ROOT / "chapters").rglob("*.ipynb")
                  if ".ipynb_checkpoints" not in p.parts)


def repo_url() -> str:
    text = (ROOT / "_config.yml").read_text()
    m = re.search(r"^repository:\s*\n(?:\s+.*\n)*?\s+url:\s*(\S+)", text, re.M)
    if not m:
        sys.exit("_config.yml has no repository.url")
    return m.group(1)


def setup_source() -> str:
    url = repo_url()
    return f'''# Set-up. In Colab this installs the book's library `dlib` from the repository (keeping Colab's
# torch); PyPI's unrelated C++ package also called "dlib" is removed first. Elsewhere it does nothing.
import importlib, importlib.metadata, subprocess, sys
REPO = "{url}"  # edit repository.url in _config.yml, then run scripts/notebooks.py sync-setup
if "google.colab" in sys.modules:
    owners = importlib.metadata.packages_distributions().get("dlib", [])
    if owners != ["diffbook-dlib"]:
        subprocess.run([sys.executable, "-m", "pip", "uninstall", "-y", "-q", "dlib", "diffbook-dlib"], check=False)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"diffbook-dlib @ git+{{REPO}}"], check=True)
    for name in [m for m in sys.modules if m == "dlib" or m.startswith("dlib.")]:
        del sys.modules[name]
    importlib.invalidate_caches()
import dlib
assert getattr(dlib, "__book__", None) == "diffusion-book", f"this dlib is not the book's library: {{dlib.__file__}}"
print("dlib", dlib.__version__)'''


def sync_setup(paths):
    import nbformat

    src = setup_source()
    for p in paths:
        nb = nbformat.read(p, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        if not code:
            sys.exit(f"{p}: no code cell")
        cell = code[0]
        if SETUP_TAG not in cell.metadata.get("tags", []):
            sys.exit(f"{p}: the first code cell is not tagged {SETUP_TAG!r}")
        if cell.source != src:
            cell.source = src
            nbformat.write(nb, p)
            print(f"updated {p.relative_to(ROOT)}")


def execute(paths):
    import nbformat
    from nbclient import NotebookClient

    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYDEVD_DISABLE_FILE_VALIDATION="1")
    times = {}
    for p in paths:
        nb = nbformat.read(p, as_version=4)
        client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(p.parent)}},
                                store_widget_state=True)
        start = time.perf_counter()
        client.execute()
        sec = time.perf_counter() - start
        for cell in nb.cells:  # drop per-cell timestamps: they only add noise to diffs
            cell.metadata.pop("execution", None)
        nbformat.write(nb, p)
        rel = str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)
        times[rel] = round(sec, 1)
        print(f"{rel}: executed in {sec:.1f} s, {p.stat().st_size / 1e6:.2f} MB")
    return times


def check(paths) -> int:
    import nbformat

    problems = []
    for p in paths:
        nb = nbformat.read(p, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
        counts = [c.get("execution_count") for c in code]
        if counts != list(range(1, len(code) + 1)):
            problems.append(f"{p}: not executed top to bottom in one fresh kernel (counts {counts[:5]}...)")
        for c in code:
            if any(o.get("output_type") == "error" for o in c.get("outputs", [])):
                problems.append(f"{p}: a stored output is an error")
        if p.stat().st_size > MAX_BYTES:
            problems.append(f"{p}: {p.stat().st_size / 1e6:.1f} MB > 2 MB")
        if not code or SETUP_TAG not in code[0].metadata.get("tags", []) or "google.colab" not in code[0].source:
            problems.append(f"{p}: the first code cell must be the Colab set-up cell (tag {SETUP_TAG})")
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
