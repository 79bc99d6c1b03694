"""The committed benchmark of the fast ODE solvers against diffusers' schedulers
(Part II): the rows that ``benchmarks/solvers.py`` measured on the analytic mixtures
and stored in the package file ``benchmark.json``, and a compact table of them for the
chapters. Each row is a dict: ``problem`` ("2d", "64d", and the check mixtures
"2d-check", "64d-check"), ``library`` ("dlib" or "diffusers"), ``method``,
``namesake`` (the diffusers scheduler a dlib solver is compared with), ``grid``,
``nfe_target`` (the column), ``nfe`` (the real number of model calls, never more than
the column), ``mode`` ("end": at the method's own end point ``t_end``; "zero": at
sigma = 0, after the final jump where ``t_end`` > 0), ``own_end``, ``rms`` and ``se``
(:func:`dlib.metrics.rms_error` against the float64 reference), and for "zero" rows
``sw2`` (sliced W2 against fresh data)."""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from importlib import resources

from .. import _checks as C

__all__ = ["benchmark_rows", "print_benchmark"]

LIBRARIES = ("dlib", "diffusers")
MODES = ("zero", "own")


@lru_cache(maxsize=1)
def _data() -> dict:
    text = resources.files("dlib.solvers").joinpath("benchmark.json").read_text()
    return json.loads(text)


def _names(value, allowed, name):
    """None (no filter), one string or a list/tuple of strings, each in ``allowed``."""
    if value is None:
        return None
    vals = [value] if isinstance(value, str) else value
    if not isinstance(vals, (list, tuple)) or not vals or not all(
            isinstance(v, str) for v in vals):
        raise ValueError(f"{name} must be None, a string or a non-empty list of "
                         f"strings; got {value!r}")
    bad = [v for v in vals if v not in allowed]
    if bad:
        shown = ", ".join(repr(a) for a in sorted(allowed))
        raise ValueError(f"{name}={bad[0]!r} is not in the benchmark; choose from "
                         f"{shown}")
    return set(vals)


def benchmark_rows(method=None, problem=None, library=None) -> list[dict]:
    """The benchmark's rows (copies) whose ``method``, ``problem`` and ``library``
    match; each filter is None (all), one name or a list of names. Unknown names
    raise a ValueError listing the known ones. Introduced in Part II."""
    rows = _data()["rows"]
    m = _names(method, {r["method"] for r in rows}, "method")
    p = _names(problem, {r["problem"] for r in rows}, "problem")
    lib = _names(library, set(LIBRARIES), "library")
    return [dict(r) for r in rows
            if (m is None or r["method"] in m) and (p is None or r["problem"] in p)
            and (lib is None or r["library"] in lib)]


def _cell(rows, nfe, mode):
    cand = [r for r in rows if r["nfe_target"] == nfe and
            (r["mode"] == "zero" if mode == "zero" else r["own_end"])]
    if not cand:
        return "—"
    r = min(cand, key=lambda r: r["rms"])
    real = "" if r["nfe"] == nfe else f" ({r['nfe']})"
    return f"{r['rms']:.2e}±{r['se']:.0e}{real}"


def print_benchmark(method=None, problem: str = "2d", library=None, *,
                    mode: str = "zero", nfes=(5, 10, 20), file=None) -> str:
    """Print (and return) a compact table of the benchmark on one ``problem``: a row
    per method and library, a column per NFE, each cell RMS ± standard error of the
    best of the method's grids; a number in parentheses is the real NFE where it
    differs from the column's. ``mode="zero"``: error at sigma = 0 (after the final
    jump where a method stops at t > 0); ``"own"``: at each method's own end point.
    ``method`` and ``library`` filter as in :func:`benchmark_rows`; ``nfes`` picks
    the columns among the benchmark's NFEs (three fit the book's 88-column code
    cells). Introduced in Part II."""
    if not isinstance(problem, str):
        raise ValueError(f"problem must be one problem's name (a string); got "
                         f"{problem!r}")
    C.one_of(mode, MODES, "mode")
    rows = benchmark_rows(method, problem, library)
    allowed = _data()["nfes"]
    if isinstance(nfes, (str, bytes)) or not hasattr(nfes, "__iter__"):
        raise ValueError(f"nfes must be a list of NFEs from {allowed}; got {nfes!r}")
    nfes = list(nfes)
    if not nfes or any(isinstance(n, bool) or n not in allowed for n in nfes):
        raise ValueError(f"nfes must be a non-empty list of NFEs from {allowed}; got "
                         f"{nfes!r}")
    keys = []
    for r in rows:
        if (r["method"], r["library"]) not in keys:
            keys.append((r["method"], r["library"]))
    if method is not None:  # the order asked for
        order = [method] if isinstance(method, str) else list(method)
        keys.sort(key=lambda k: (order.index(k[0]), LIBRARIES.index(k[1])))
    width = max([len(f"{m} [{lib}]") for m, lib in keys] + [6])
    cells = {k: [_cell([r for r in rows if (r["method"], r["library"]) == k], n, mode)
                 for n in nfes] for k in keys}
    cw = max([len(c) for v in cells.values() for c in v] + [8])
    where = "at sigma = 0" if mode == "zero" else "at the own end point"
    lines = [f"ODE error (RMS ± se) {where} on {problem}, best grid per cell",
             f"{'method':<{width}} " + " ".join(f"{'NFE ' + str(n):>{cw}}"
                                                 for n in nfes)]
    for k in keys:
        lines.append(f"{k[0] + ' [' + k[1] + ']':<{width}} "
                     + " ".join(f"{c:>{cw}}" for c in cells[k]))
    text = "\n".join(lines)
    print(text, file=sys.stdout if file is None else file)
    return text
