"""Where and at what scale a chapter runs: device, CPU-budget vs full (GPU) scale,
Colab, seeds, timing, and ``show_source`` to print a library function inside the
book."""

from __future__ import annotations

import inspect
import os
import random
import sys
import textwrap
import time
from contextlib import contextmanager

import torch

from . import _checks as C

__all__ = [
    "device",
    "has_gpu",
    "in_colab",
    "full_scale",
    "gpu_cell",
    "seed_everything",
    "timer",
    "show_source",
]


def has_gpu() -> bool:
    """True when a CUDA GPU is available."""
    return torch.cuda.is_available()


def device() -> torch.device:
    """The device to use: CUDA when available, else CPU."""
    return torch.device("cuda" if has_gpu() else "cpu")


def in_colab() -> bool:
    """True inside Google Colab."""
    return "google.colab" in sys.modules


def full_scale() -> bool:
    """Whether the full-scale (paper-sized) cells should run: yes with a GPU, unless the
    environment variable ``DLIB_SCALE`` is ``cpu``; ``DLIB_SCALE=full`` forces them
    (slowly) on a CPU."""
    scale = os.environ.get("DLIB_SCALE", "").lower()
    if scale not in ("", "cpu", "full"):
        raise ValueError(f"DLIB_SCALE must be 'cpu', 'full' or unset; got {scale!r}")
    if scale == "cpu":
        return False
    return scale == "full" or has_gpu()


def gpu_cell(what: str) -> bool:
    """Guard for a full-scale cell: returns True if it should run; otherwise prints what
    was skipped and how to run it (wrapped to the page's 88 columns), and returns
    False."""
    if not isinstance(what, str) or not what.strip():
        raise ValueError(f"what must be a non-empty description; got {what!r}")
    if full_scale():
        print(textwrap.fill(f"Full scale on {device()}: {what}", 88))
        return True
    print(
        textwrap.fill(
            f"Skipped (no GPU here): {what}. To run it, open this chapter in "
            "Colab with a GPU runtime (or set DLIB_SCALE=full).",
            88,
        )
    )
    return False


def seed_everything(seed: int = 0) -> torch.Generator:
    """Seed Python's and torch's generators and return a fresh ``torch.Generator``
    seeded with ``seed``."""
    seed = C.seed(seed)
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:  # pragma: no cover
        pass
    return torch.Generator().manual_seed(seed)


@contextmanager
def timer(label: str | None = None, out: dict | None = None):
    """Context manager measuring wall time; prints ``label: 1.23 s`` if ``label`` is
    given and stores the seconds in ``out["seconds"]`` on exit. It yields that dict (a
    new one when ``out`` is None), so ``with timer() as t: ...`` then ``t["seconds"]``
    works too."""
    if label is not None and not isinstance(label, str):
        raise ValueError(f"label must be a string or None; got {label!r}")
    if out is not None and not isinstance(out, dict):
        raise ValueError(f"out must be a dict or None; got {type(out).__name__}")
    out = {} if out is None else out
    start = time.perf_counter()
    try:
        yield out
    finally:
        sec = time.perf_counter() - start
        out["seconds"] = sec
        if label is not None:
            print(f"{label}: {sec:.2f} s")


def show_source(obj, *, display: bool = True):
    """Show the source code of a function or class of ``dlib`` as a highlighted Markdown
    code block (in a notebook) and return the source text."""
    C.flag(display, "display")
    try:
        src = inspect.getsource(obj)
    except (TypeError, OSError) as exc:
        raise ValueError(
            f"obj must be a function, class or module of Python source; cannot show "
            f"the source of {obj!r}: {exc}"
        ) from None
    if display:
        try:
            from IPython.display import Markdown
            from IPython.display import display as ipy_display

            ipy_display(Markdown(f"```python\n{src}\n```"))
        except ImportError:  # pragma: no cover
            print(src)
    return src
