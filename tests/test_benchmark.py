"""The committed benchmark table (dlib/solvers/benchmark.json, written by
benchmarks/solvers.py) and its loader: the rows are well formed, never claim an NFE
their method did not spend, and reproduce on their own the diffusers agreement that
tests/test_diffusers_agreement.py checks directly."""

from __future__ import annotations

import io
import math

import pytest

from dlib import solvers
from dlib.solvers import benchmark

KEYS = {"problem", "dim", "seed", "library", "method", "namesake", "grid",
        "nfe_target", "nfe", "mode", "own_end", "t_end", "rms", "se", "n_samples"}


def test_rows_are_well_formed():
    rows = solvers.benchmark_rows()
    assert rows and all(KEYS <= set(r) for r in rows)
    data = benchmark._data()
    for r in rows:
        assert r["library"] in ("dlib", "diffusers")
        assert r["mode"] in ("end", "zero")
        assert math.isfinite(r["rms"]) and r["rms"] >= 0 and r["se"] >= 0
        assert r["nfe_target"] in data["nfes"]
        # a row never claims an NFE its method did not spend, nor more than its column
        assert 1 <= r["nfe"] <= r["nfe_target"], r
        if r["mode"] == "zero":
            assert math.isfinite(r["sw2"]) and r["sw2"] >= 0
    problems = {p["key"]: p for p in data["problems"]}
    assert {"2d", "64d"} <= set(problems)
    for p in problems.values():  # the reference converges as its tolerance shrinks
        errs = [e for _, e in p["reference_convergence"]]
        assert all(b < a for a, b in zip(errs, errs[1:]))
    if not data["quick"]:
        assert problems["64d"]["n_samples"] >= 500  # the "enough samples"


def test_filters():
    rows = solvers.benchmark_rows(method="DDIM", problem="2d")
    assert rows and {(r["method"], r["problem"]) for r in rows} == {("DDIM", "2d")}
    assert {r["library"] for r in rows} == {"dlib", "diffusers"}
    dl = solvers.benchmark_rows(method=["DDIM"], problem=["2d", "64d"],
                                library="dlib")
    assert dl and all(r["library"] == "dlib" for r in dl)
    assert {r["problem"] for r in dl} == {"2d", "64d"}
    rows[0]["rms"] = -1.0  # copies: the package's table is not changed
    assert all(r["rms"] >= 0 for r in solvers.benchmark_rows(method="DDIM"))


@pytest.mark.parametrize("kw, arg", [
    ({"method": "no such solver"}, "method"),
    ({"method": 3}, "method"),
    ({"method": []}, "method"),
    ({"problem": "128d"}, "problem"),
    ({"library": "k-diffusion"}, "library"),
])
def test_rows_reject_unknown_names(kw, arg):
    with pytest.raises(ValueError, match=arg):
        solvers.benchmark_rows(**kw)


def test_print_benchmark():
    buf = io.StringIO()
    text = solvers.print_benchmark(["DDIM", "DPM-Solver++(2M)"], "64d", file=buf)
    assert buf.getvalue().strip() == text
    lines = text.splitlines()
    assert "64d" in lines[0] and "NFE 5" in lines[1] and "NFE 20" in lines[1]
    assert lines[2].startswith("DDIM [dlib]") and lines[3].startswith(
        "DDIM [diffusers]")
    assert any(line.startswith("DPM-Solver++(2M) [diffusers]") for line in lines)
    assert "±" in lines[2]
    own = solvers.print_benchmark("DDIM", "2d", "dlib", mode="own", file=buf)
    assert "own end point" in own
    for kw, arg in (({"mode": "best"}, "mode"), ({"problem": ["2d"]}, "problem"),
                    ({"problem": "3d"}, "problem"), ({"library": "x"}, "library")):
        with pytest.raises(ValueError, match=arg):
            solvers.print_benchmark(file=buf, **kw)


def test_print_benchmark_columns_fit_the_code_column():
    buf = io.StringIO()
    text = solvers.print_benchmark(["DPM-Solver++(3M) below=10"], "2d", nfes=[5, 50],
                                   file=buf)
    assert "NFE 50" in text and "NFE 10" not in text
    assert max(len(line) for line in text.splitlines()) <= 88
    for bad in ([], [7], "5", 5, [True]):
        with pytest.raises(ValueError, match="nfes"):
            solvers.print_benchmark(nfes=bad, file=buf)


def _pair(dlib_method, dlib_grid, diff_method, problem, nfe):
    a = [r for r in solvers.benchmark_rows(dlib_method, problem, "dlib")
         if r["grid"] == dlib_grid and r["nfe_target"] == nfe and r["mode"] == "zero"]
    b = [r for r in solvers.benchmark_rows(diff_method, problem, "diffusers")
         if r["grid"] == "default" and r["nfe_target"] == nfe and r["mode"] == "zero"]
    return a, b


@pytest.mark.parametrize("problem", ["2d", "64d"])
def test_table_reproduces_the_diffusers_agreement(problem):
    """Configured identically (DDIM on diffusers' leading timesteps with the jump to
    alpha = 1; DPM-Solver++(2M) on its linspace timesteps, lowering below 15), dlib's
    and diffusers' rows agree to float32 precision at every NFE: the table compares
    the same solver where the names match."""
    for dm, grid, fm in (("DDIM", "discrete:leading", "DDIM"),
                         ("DPM-Solver++(2M) below=15", "discrete:dpm_linspace",
                          "DPM-Solver++(2M)")):
        for nfe in benchmark._data()["nfes"]:
            a, b = _pair(dm, grid, fm, problem, nfe)
            if not (a and b):
                continue
            assert a[0]["nfe"] == b[0]["nfe"] == nfe
            assert abs(a[0]["rms"] - b[0]["rms"]) <= 1e-3 * b[0]["rms"] + 1e-5, (
                dm, nfe, a[0]["rms"], b[0]["rms"])
