"""Bad input, measured: every public function and method of dlib called the way a new
user gets it wrong, and every outcome classified.

    python benchmarks/bad_input_sweep.py --json after.json
    python benchmarks/bad_input_sweep.py --json after.json --before before.json \
        --markdown benchmarks/bad_input_sweep.md

Part A makes bad calls: each replaces ONE argument of a valid call by a bad value
(wrong type, None, NaN/inf, a time outside [0, 1], a mismatched shape, an empty batch,
a zero/negative/bool count, a non-callable, an unknown option, a wrong dtype) and
classifies what happens:

* ``clear``: a ValueError whose message names the argument (the word, or one of the
  aliases listed with the case, appears in the message);
* ``ValueError, argument not named``;
* ``other exception``: TypeError, RuntimeError, IndexError, AttributeError, ...;
* ``silent NaN/inf``: the call returned NaN or inf;
* ``accepted although wrong``: it returned finite values.

Part B makes valid calls at the edges (t = 0 and t = 1 for every schedule, prediction
kind and dtype; float64 data into networks; samplers down to t = 0) and classifies:
``finite``, ``±inf where the math says so`` (a schedule's own singular values such as a
VP ``d_sigma(0) = +inf``), ``documented singular ValueError`` (a conversion that divides
by zero at an end point says so), ``NaN``, ``unexpected inf`` and ``exception``.

The script imports whatever ``dlib`` is first on the path, so the same sweep measures
the library before and after a change (``PYTHONPATH=/tmp/old`` for an older copy, e.g.
made with ``git archive <commit> dlib | tar -x -C /tmp/old``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import platform
import re
import signal
import sys
import tempfile
import time
import warnings
from collections import Counter, defaultdict
from typing import Any, Callable, NamedTuple

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import dlib  # noqa: E402
from dlib import (  # noqa: E402
    analytic,
    data,
    fullscale,
    losses,
    metrics,
    nets,
    param,
    plot,
    runtime,
    sampling,
    schedules,
    train,
)

torch.set_num_threads(1)
nan, inf = math.nan, math.inf
B, D = 4, 2

BAD_CLASSES = (
    "clear",
    "ValueError, argument not named",
    "other exception",
    "silent NaN/inf",
    "accepted although wrong",
)
EDGE_CLASSES = (
    "finite",
    "±inf where the math says so",
    "documented singular ValueError",
    "NaN",
    "unexpected inf",
    "exception",
)


class Case(NamedTuple):
    module: str
    func: str
    arg: str
    category: str
    thunk: Callable[[], Any]
    names: tuple
    part: str  # "bad" or "edge"
    inf_ok: bool
    what: str


CASES: list[Case] = []


class Lazy:
    """A value built fresh for every call (modules, generators, files)."""

    def __init__(self, make, label=""):
        self.make, self.label = make, label

    def __repr__(self):
        return self.label or "<lazy>"


def _resolve(v):
    return v.make() if isinstance(v, Lazy) else v


def _short(v) -> str:
    if torch.is_tensor(v):
        dtype = str(v.dtype).replace("torch.", "")
        if 0 < v.numel() <= 3:
            return f"tensor({v.tolist()}, {dtype})"
        flags = (
            " with NaN"
            if v.is_floating_point() and bool(v.isnan().any())
            else (
                " with inf" if v.is_floating_point() and bool(v.isinf().any()) else ""
            )
        )
        return f"tensor{tuple(v.shape)} {dtype}{flags}"
    if isinstance(v, np.ndarray):
        return f"ndarray{v.shape}"
    if isinstance(v, type):
        return f"class {v.__name__}"
    if callable(v) and not isinstance(v, (str, Lazy)):
        return type(v).__name__
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def add(
    module, func, arg, category, thunk, names=None, part="bad", inf_ok=False, what=""
):
    CASES.append(
        Case(
            module,
            func,
            arg,
            category,
            thunk,
            tuple(names or (arg,)),
            part,
            inf_ok,
            what,
        )
    )


def sweep(module, func, fn, valid, bad, names=None, call=None):
    """One bad call per (argument, bad value): ``valid()`` gives fresh valid keyword
    arguments; ``bad`` maps an argument to [(category, value), ...]."""
    names = names or {}
    for arg, values in bad.items():
        for category, value in values:

            def thunk(arg=arg, value=value):
                kw = valid()
                kw[arg] = _resolve(value)
                return call(fn, kw) if call else fn(**kw)

            add(
                module,
                func,
                arg,
                category,
                thunk,
                names.get(arg, (arg,)),
                what=_short(value),
            )


def edge(module, func, what, thunk, inf_ok=False):
    add(module, func, "", "edge", thunk, part="edge", inf_ok=inf_ok, what=what)


# --- bad values ----------------------------------------------------------------------
def with_nan(x):
    y = x.clone()
    y.view(-1)[0] = nan
    return y


def with_inf(x):
    y = x.clone()
    y.view(-1)[-1] = inf
    return y


def T_ANY():
    """Bad times where a time of any shape is allowed."""
    return [
        ("type", "0.5"),
        ("type", None),
        ("type", True),
        ("nan/inf", nan),
        ("nan/inf", inf),
        ("nan/inf", torch.tensor([0.5, nan])),
        ("range", -0.1),
        ("range", 1.5),
        ("range", torch.tensor([0.2, 1.2])),
        ("dtype", torch.tensor([0.5 + 0j])),
    ]


def T_SMALL():
    """A few bad times, for functions whose time check is shared with one swept in
    full."""
    return [("type", "0.5"), ("type", None), ("nan/inf", nan), ("range", 1.5)]


def X_SMALL(x):
    return [("type", "x"), ("type", None), ("nan/inf", with_nan(x)), ("empty", x[:0])]


def no_none(values):
    """The same bad values without None (for arguments where None is allowed)."""
    return [v for v in values if v[1] is not None]


def T_SCALAR():
    return [v for v in T_ANY() if not torch.is_tensor(v[1])] + [
        ("shape", torch.tensor([0.2, 0.5]))
    ]


def T_BATCH(b=B):
    """Bad times for a batch of b: a scalar or shape (b,)."""
    return T_ANY() + [
        ("shape", torch.full((b + 1,), 0.5)),
        ("shape", torch.full((b, 1), 0.5)),
    ]


def X_BAD(x, *, floating=True, multi=False, arrays=False, empty=True, tokens=False):
    """Bad data tensors, from a valid one ``x``; ``multi``: the call has another tensor
    whose shape x must match; ``arrays``: arrays are accepted by design; ``empty``: an
    empty batch is wrong (networks and reshapes map it to an empty batch, correctly);
    ``tokens``: any dtype and a 1-D tensor of examples are fine (data pipelines)."""
    out = [
        ("type", "x"),
        ("type", None),
        ("type", 1.0),
        ("nan/inf", with_nan(x)),
        ("nan/inf", with_inf(x)),
    ]
    if empty:
        out.append(("empty", x[:0]))
    if not tokens:
        out += [("shape", x[0]), ("dtype", x > 0)]
    if not arrays:
        out += [("type", x.tolist())]
    if floating:
        out.append(("dtype", x.round().long()))
    if multi:
        out += [("shape", x[:-1]), ("shape", x[..., :1])]
    return out


def COUNT(minimum=1):
    return [
        ("count", minimum - 1),
        ("count", True),
        ("type", 2.5),
        ("type", "10"),
        ("count", -3),
        ("type", None),
    ]


def POS(none_ok=False):
    out = [
        ("range", 0.0),
        ("range", -1.0),
        ("nan/inf", nan),
        ("nan/inf", inf),
        ("type", "0.1"),
        ("type", True),
    ]
    return out if none_ok else out + [("type", None)]


def NUM():
    """A finite number (any sign)."""
    return [
        ("nan/inf", nan),
        ("nan/inf", inf),
        ("type", "1"),
        ("type", None),
        ("type", True),
    ]


def CALL(none_ok=False):
    out = [("callable", 3), ("callable", "f"), ("callable", torch.zeros(2))]
    return out if none_ok else out + [("callable", None)]


def GEN():
    return [
        ("type", 0),
        ("type", "seed"),
        ("type", Lazy(lambda: np.random.default_rng(0), "numpy Generator")),
    ]


def OPT(valid, none_ok=False):
    out = [("option", "nope"), ("option", valid.swapcase()), ("type", 3)]
    return out if none_ok else out + [("type", None)]


def FLAG(none_ok=False):
    out = [("type", "yes"), ("type", 2)]
    return out if none_ok else out + [("type", None)]


def SCH():
    return [
        ("type", "vp_linear"),
        ("type", None),
        ("type", schedules.VPLinear),
        ("type", 3),
    ]


# --- shared valid objects -------------------------------------------------------------
def mk_schedules():
    return {
        "VPLinear": schedules.VPLinear(),
        "VPCosine": schedules.VPCosine(),
        "VE": schedules.VE(),
        "LinearInterpolant": schedules.LinearInterpolant(),
        "DiscreteVP": schedules.DiscreteVP(schedules.ddpm_betas("linear", 100)),
    }


SCHS = mk_schedules()
VP = SCHS["VPLinear"]
GM = analytic.GaussianMixture([[1.0, 0.0], [-1.0, 0.5]], [0.3, 0.5])
ORACLE = GM.denoiser(VP)
X = torch.randn(B, D, generator=torch.Generator().manual_seed(0))
X64 = X.double()


def tiny_mlp():
    torch.manual_seed(0)
    return nets.MLP(D, hidden=8, depth=2, emb_dim=4)


def net_denoiser(kind="eps", sch=VP):
    return param.Denoiser(tiny_mlp(), sch, kind)


def DEN():
    return [
        ("type", None),
        ("type", Lazy(tiny_mlp, "MLP (a module, not a Denoiser)")),
        ("type", Lazy(lambda: lambda x, t: x, "function")),
        ("type", "eps"),
        ("type", GM),
    ]


def gen():
    return torch.Generator().manual_seed(0)


# === schedules ========================================================================
def build_schedules():
    m = "schedules"
    methods = [
        "alpha",
        "sigma",
        "coefficients",
        "log_snr",
        "d_alpha",
        "d_sigma",
        "d_log_snr",
        "sde",
    ]
    for sname, sch in SCHS.items():
        full = sname == "VPLinear"  # the checks are shared: the others in brief
        TT = T_ANY if full else (lambda: [("type", None), ("range", 1.5)])
        for meth in methods:
            sweep(
                m,
                f"{sname}.{meth}",
                getattr(sch, meth),
                lambda: {"t": 0.5},
                {"t": TT()},
            )
        for meth in ("transition", "posterior"):
            fn = getattr(sch, meth)
            sweep(
                m,
                f"{sname}.{meth}",
                fn,
                lambda: {"s": 0.3, "t": 0.6},
                {"s": TT() + [("range", 0.9)], "t": TT()},
            )
            add(
                m,
                f"{sname}.{meth}",
                "s",
                "shape",
                lambda fn=fn: fn(torch.full((3,), 0.2), torch.full((4,), 0.8)),
                names=("s", "t"),
                what="s (3,) with t (4,)",
            )
            add(
                m,
                f"{sname}.{meth}",
                "s",
                "range",
                lambda fn=fn: fn(torch.tensor([0.2, 0.7]), torch.tensor([0.5, 0.5])),
                names=("s", "t"),
                what="s > t in one entry",
            )
        lam_bad = [
            ("type", "0"),
            ("type", None),
            ("type", True),
            ("nan/inf", nan),
            ("nan/inf", torch.tensor([0.0, nan])),
            ("dtype", torch.tensor([1j])),
        ]
        lo, hi = sch.log_snr_range()
        if math.isfinite(hi):
            lam_bad.append(("range", hi + 5.0))
        if math.isfinite(lo):
            lam_bad.append(("range", lo - 5.0))
        sweep(
            m,
            f"{sname}.t_from_log_snr",
            sch.t_from_log_snr,
            lambda: {"lam": 0.0},
            {"lam": lam_bad},
            names={"lam": ("lam", "log-snr", "log_snr")},
        )
    sweep(m, "VPLinear.beta", VP.beta, lambda: {"t": 0.5}, {"t": T_ANY()})
    sweep(
        m,
        "VPLinear",
        schedules.VPLinear,
        lambda: {"beta_min": 0.1, "beta_max": 20.0},
        {"beta_min": POS() + [("range", 30.0)], "beta_max": POS()},
    )
    sweep(m, "VPCosine", schedules.VPCosine, lambda: {"s": 0.008}, {"s": POS()})
    sweep(
        m,
        "VE",
        schedules.VE,
        lambda: {"sigma_min": 0.01, "sigma_max": 50.0},
        {"sigma_min": POS() + [("range", 100.0)], "sigma_max": POS()},
    )
    sweep(
        m,
        "DiscreteVP",
        schedules.DiscreteVP,
        lambda: {"betas": torch.full((10,), 0.02)},
        {
            "betas": [
                ("type", "0.1"),
                ("type", None),
                ("type", 0.02),
                ("type", ["a", "b"]),
                ("empty", torch.zeros(0)),
                ("shape", torch.full((2, 5), 0.02)),
                ("nan/inf", torch.tensor([0.1, nan])),
                ("nan/inf", torch.tensor([0.1, inf])),
                ("range", torch.tensor([0.1, 1.0])),
                ("range", torch.tensor([0.1, 0.0])),
                ("range", torch.tensor([0.1, -0.2])),
                ("range", torch.tensor([0.1, 1.5])),
                ("dtype", torch.tensor([0.1 + 0j])),
                ("dtype", torch.tensor([True])),
            ]
        },
    )
    sweep(
        m,
        "ddpm_betas",
        schedules.ddpm_betas,
        lambda: {"kind": "linear", "T": 10},
        {"kind": OPT("linear"), "T": COUNT()},
        names={"kind": ("kind", "beta schedule")},
    )
    sweep(
        m,
        "ddpm_betas",
        schedules.ddpm_betas,
        lambda: {"kind": "linear", "T": 10},
        {
            "beta_start": POS() + [("range", 1.0), ("range", 2.0)],
            "beta_end": POS() + [("range", 1.0)],
        },
    )
    sweep(
        m,
        "ddpm_betas",
        schedules.ddpm_betas,
        lambda: {"kind": "cosine", "T": 10},
        {"s": POS(), "max_beta": POS() + [("range", 1.0), ("range", 2.0)]},
    )
    sweep(
        m,
        "get_schedule",
        schedules.get_schedule,
        lambda: {"name": "vp_linear"},
        {"name": OPT("vp_linear") + [("option", "VP"), ("type", schedules.VE)]},
        names={"name": ("name", "schedule")},
    )
    sweep(
        m,
        "get_schedule",
        lambda **kw: schedules.get_schedule("vp_linear", **kw),
        lambda: {},
        {"beta_max": POS(), "foo": [("option", 1.0)]},
        names={"foo": ("foo", "option", "options")},
    )
    sweep(
        m,
        "get_schedule",
        lambda **kw: schedules.get_schedule("ve", **kw),
        lambda: {},
        {"sigma_max": POS()},
    )


# === param ============================================================================
def build_param():
    m = "param"

    def val(**extra):
        return lambda: {
            "pred": X.clone(),
            "kind": "eps",
            "x": X.clone(),
            "t": 0.5,
            "schedule": VP,
            **extra,
        }

    for fname, fn, kinds in (("to_x0_eps", param.to_x0_eps, ("kind",)),):
        sweep(
            m,
            fname,
            fn,
            val(),
            {
                "pred": X_BAD(X, multi=True),
                "kind": OPT("eps"),
                "x": X_BAD(X, multi=True),
                "t": T_BATCH(),
                "schedule": SCH(),
            },
            names={"kind": ("kind", "prediction kind")},
        )
    sweep(
        m,
        "from_x0_eps",
        param.from_x0_eps,
        lambda: {
            "x0": X.clone(),
            "eps": X.clone(),
            "kind": "v",
            "x": X.clone(),
            "t": 0.5,
            "schedule": VP,
        },
        {
            "x0": X_BAD(X, multi=True),
            "eps": X_SMALL(X) + [("shape", X[:-1])],
            "kind": OPT("v"),
            "x": X_SMALL(X) + [("shape", X[:-1])],
            "t": T_SMALL(),
            "schedule": SCH(),
        },
        names={"kind": ("kind", "prediction kind")},
    )
    sweep(
        m,
        "convert",
        param.convert,
        lambda: {
            "pred": X.clone(),
            "src": "eps",
            "dst": "x0",
            "x": X.clone(),
            "t": 0.5,
            "schedule": VP,
        },
        {
            "pred": X_SMALL(X) + [("shape", X[:-1])],
            "src": OPT("eps"),
            "dst": OPT("x0"),
            "x": X_SMALL(X) + [("shape", X[:-1])],
            "t": T_SMALL(),
            "schedule": SCH(),
        },
        names={"src": ("src", "prediction kind"), "dst": ("dst", "prediction kind")},
    )
    sweep(
        m,
        "target",
        param.target,
        lambda: {
            "kind": "velocity",
            "x0": X.clone(),
            "eps": X.clone(),
            "t": 0.5,
            "schedule": VP,
        },
        {
            "kind": OPT("velocity"),
            "x0": X_BAD(X, multi=True),
            "eps": X_SMALL(X) + [("shape", X[:-1])],
            "t": T_BATCH(),
            "schedule": SCH(),
        },
        names={"kind": ("kind", "prediction kind")},
    )
    sweep(
        m,
        "Denoiser",
        param.Denoiser,
        lambda: {"fn": tiny_mlp(), "schedule": VP, "kind": "eps"},
        {"fn": CALL(), "schedule": SCH(), "kind": OPT("eps")},
        names={"kind": ("kind", "prediction kind")},
    )
    # a fn that breaks its contract is found at the first call, with fn named
    for label, fn in (
        ("returns wrong shape", lambda x, t: x[:, :1]),
        ("returns a list", lambda x, t: x.tolist()),
        ("returns None", lambda x, t: None),
    ):
        add(
            m,
            "Denoiser.predict",
            "fn",
            "callable",
            lambda fn=fn: param.Denoiser(fn, VP).predict(X, 0.5),
            what=label,
        )
    den = net_denoiser()
    for meth in ("predict", "x0_eps", "x0", "eps", "v", "score", "velocity"):
        bad = {"x": X_SMALL(X) + [("shape", torch.randn(B, 3))], "t": T_SMALL()}
        if meth == "predict":
            bad = {
                "x": X_BAD(X, floating=False) + [("shape", torch.randn(B, 3))],
                "t": T_BATCH(),
                "kind": OPT("x0", none_ok=True),
            }
        sweep(
            m,
            f"Denoiser.{meth}",
            getattr(den, meth),
            lambda: {"x": X.clone(), "t": 0.5},
            bad,
            names={"kind": ("kind", "prediction kind")},
        )
    sweep(
        m,
        "change_schedule",
        param.change_schedule,
        lambda: {"denoiser": ORACLE, "schedule": SCHS["VE"]},
        {"denoiser": DEN(), "schedule": SCH()},
    )
    resched = param.change_schedule(ORACLE, SCHS["LinearInterpolant"])
    sweep(
        m,
        "change_schedule(...).predict",
        resched.predict,
        lambda: {"x": X.clone(), "t": 0.5},
        {"x": X_SMALL(X), "t": T_SMALL()},
    )


# === analytic =========================================================================
def build_analytic():
    m = "analytic"
    sweep(
        m,
        "GaussianMixture",
        analytic.GaussianMixture,
        lambda: {"means": [[0.0, 0.0], [1.0, 1.0]], "variances": 1.0, "weights": None},
        {
            "means": [
                ("type", "x"),
                ("type", None),
                ("empty", torch.zeros(0, 2)),
                ("shape", torch.zeros(2)),
                ("shape", torch.zeros(2, 2, 2)),
                ("nan/inf", [[nan, 0.0], [1.0, 1.0]]),
                ("nan/inf", [[inf, 0.0], [1.0, 1.0]]),
                ("dtype", torch.tensor([[1j, 0], [0, 0]])),
            ],
            "variances": [
                ("range", 0.0),
                ("range", -1.0),
                ("nan/inf", nan),
                ("nan/inf", inf),
                ("type", "1"),
                ("type", None),
                ("shape", torch.ones(3)),
                ("range", torch.tensor([1.0, -1.0])),
            ],
            "weights": [
                ("range", [1.0, -0.5]),
                ("range", [0.0, 0.0]),
                ("nan/inf", [nan, 1.0]),
                ("nan/inf", [inf, 1.0]),
                ("shape", [1.0, 1.0, 1.0]),
                ("type", "ab"),
                ("type", 1.0),
            ],
        },
    )
    for meth in ("log_prob", "responsibilities", "score"):
        full = meth == "log_prob"
        sweep(
            m,
            f"GaussianMixture.{meth}",
            getattr(GM, meth),
            lambda: {"x": X64.clone(), "t": 0.5, "schedule": VP},
            {
                "x": (X_BAD(X64) if full else X_SMALL(X64))
                + [("shape", torch.randn(B, 3))],
                "t": no_none(T_BATCH() if full else T_SMALL()),
                "schedule": SCH()[:1] + SCH()[2:],
            },
        )
    sweep(
        m,
        "GaussianMixture.x0_eps",
        GM.x0_eps,
        lambda: {"x": X64.clone(), "t": 0.5, "schedule": VP},
        {
            "x": X_SMALL(X64) + [("shape", torch.randn(B, 3))],
            "t": T_SMALL(),
            "schedule": SCH(),
        },
    )
    sweep(
        m,
        "GaussianMixture.predict",
        GM.predict,
        lambda: {"x": X64.clone(), "t": 0.5, "schedule": VP, "kind": "x0"},
        {
            "x": X_BAD(X64) + [("shape", torch.randn(B, 3))],
            "t": T_BATCH(),
            "schedule": SCH(),
            "kind": OPT("x0"),
        },
        names={"kind": ("kind", "prediction kind")},
    )
    sweep(
        m,
        "GaussianMixture.denoiser",
        GM.denoiser,
        lambda: {"schedule": VP},
        {"schedule": SCH()},
    )
    sweep(
        m,
        "GaussianMixture.sample",
        GM.sample,
        lambda: {"n": 5, "generator": gen()},
        {"n": COUNT(), "generator": GEN()},
    )
    sweep(
        m,
        "AnalyticDenoiser",
        analytic.AnalyticDenoiser,
        lambda: {"model": GM, "schedule": VP},
        {
            "model": [
                ("type", None),
                ("type", "ring"),
                ("type", analytic.ring),
                ("type", Lazy(tiny_mlp, "MLP")),
            ],
            "schedule": SCH(),
        },
    )
    for meth in ("predict", "velocity", "x0_eps"):
        sweep(
            m,
            f"AnalyticDenoiser.{meth}",
            getattr(ORACLE, meth),
            lambda: {"x": X.clone(), "t": 0.5},
            {"x": X_SMALL(X) + [("shape", torch.randn(B, 3))], "t": T_SMALL()},
        )
    sweep(
        m,
        "Gaussian",
        analytic.Gaussian,
        lambda: {"mean": [0.0, 0.0], "variance": 1.0},
        {
            "mean": [
                ("type", "x"),
                ("type", None),
                ("shape", 0.0),
                ("shape", [[0.0, 0.0]]),
                ("empty", []),
                ("nan/inf", [nan, 0.0]),
                ("nan/inf", [inf, 0.0]),
            ],
            "variance": [
                ("range", 0.0),
                ("range", -1.0),
                ("nan/inf", nan),
                ("type", "1"),
                ("type", None),
                ("shape", [1.0, 1.0, 1.0]),
            ],
        },
    )
    sweep(
        m,
        "ring",
        analytic.ring,
        lambda: {"k": 8, "radius": 4.0, "std": 0.5, "weights": None},
        {
            "k": COUNT(),
            "radius": POS(),
            "std": POS(),
            "weights": [("shape", [1.0, 2.0]), ("range", [-1.0] * 8), ("type", "w")],
        },
    )


# === data =============================================================================
def build_data():
    m = "data"
    for fname, fn, extra in (
        (
            "two_moons",
            data.two_moons,
            {
                "noise": [
                    ("range", -0.1),
                    ("nan/inf", nan),
                    ("type", "0.1"),
                    ("type", None),
                ]
            },
        ),
        ("checkerboard", data.checkerboard, {}),
        (
            "swiss_roll",
            data.swiss_roll,
            {"noise": [("range", -1.0), ("nan/inf", inf), ("type", "x")]},
        ),
        ("gaussian_ring", data.gaussian_ring, {}),
    ):
        sweep(
            m,
            fname,
            fn,
            lambda: {"n": 10, "seed": 0},
            {
                "n": COUNT(),
                "seed": [
                    ("range", -1),
                    ("type", "0"),
                    ("type", None),
                    ("type", 1.5),
                    ("type", True),
                ],
                **extra,
            },
        )
    sweep(
        m,
        "toy_2d",
        data.toy_2d,
        lambda: {"name": "moons", "n": 10, "seed": 0},
        {
            "name": OPT("moons"),
            "n": COUNT(),
            "seed": [("range", -1), ("type", "0"), ("type", 1.5)],
        },
        names={"name": ("name", "toy data set")},
    )
    sweep(
        m,
        "digits",
        data.digits,
        lambda: {"split": "train", "seed": 0, "test_fraction": 0.2},
        {
            "split": OPT("train"),
            "seed": [("range", -1), ("type", "0"), ("type", 1.5), ("type", None)],
            "test_fraction": [
                ("range", 0.0),
                ("range", 1.0),
                ("range", -0.2),
                ("nan/inf", nan),
                ("type", "0.2"),
                ("type", True),
            ],
        },
    )
    flat = torch.zeros(3, 64)
    sweep(
        m,
        "to_images",
        data.to_images,
        lambda: {"x": flat.clone(), "size": 8},
        {
            "x": X_BAD(flat, empty=False) + [("shape", torch.zeros(3, 63))],
            "size": COUNT() + [("shape", 4)],
        },
    )
    sweep(
        m,
        "batches",
        data.batches,
        lambda: {"data": X.clone(), "batch_size": 2, "generator": gen()},
        {
            "data": X_BAD(X, floating=False, tokens=True) + [("empty", X[:0])],
            "batch_size": COUNT(),
            "generator": GEN(),
        },
        call=lambda fn, kw: next(fn(**kw)),
    )
    sweep(
        m,
        "image_dataset",
        data.image_dataset,
        lambda: {"name": "mnist", "root": "data_cache_sweep", "train": True},
        {"name": OPT("mnist"), "root": [("type", None), ("type", 3)], "train": FLAG()},
        names={"name": ("name", "data set")},
    )
    sweep(
        m,
        "digits_images",
        data.digits_images,
        lambda: {"split": "test", "size": 8, "seed": 0},
        {
            "split": OPT("test"),
            "size": COUNT(8) + [("range", 4)],
            "seed": [("range", -1), ("type", "0")],
        },
    )


# === nets =============================================================================
def build_nets():
    m = "nets"
    sweep(
        m,
        "SinusoidalEmbedding",
        nets.SinusoidalEmbedding,
        lambda: {"dim": 8, "max_period": 10000.0},
        {
            "dim": COUNT() + [("range", 7)],
            "max_period": POS() + [("range", 1.0), ("range", 0.5)],
        },
    )
    emb = nets.SinusoidalEmbedding(8)
    sweep(
        m,
        "SinusoidalEmbedding.forward",
        emb,
        lambda: {"t": torch.rand(B)},
        {"t": T_ANY() + [("shape", torch.rand(B, 1)), ("shape", torch.tensor(0.5))]},
        call=lambda fn, kw: fn(kw["t"]),
    )
    sweep(
        m,
        "MLP",
        nets.MLP,
        lambda: {"dim": 2, "hidden": 8, "depth": 2, "emb_dim": 4},
        {
            "dim": COUNT(),
            "hidden": COUNT(),
            "depth": COUNT(2),
            "emb_dim": COUNT(2) + [("range", 5)],
        },
    )
    mlp = tiny_mlp()
    call = lambda fn, kw: fn(kw["x"], kw["t"])  # noqa: E731
    sweep(
        m,
        "MLP.forward",
        mlp,
        lambda: {"x": X.clone(), "t": 0.5},
        {
            "x": X_BAD(X, floating=False, empty=False)
            + [("shape", torch.randn(B, 3)), ("shape", torch.randn(B, 2, 1))],
            "t": T_BATCH(),
        },
        call=call,
    )
    sweep(
        m,
        "UNet",
        nets.UNet,
        lambda: {
            "in_channels": 1,
            "base_channels": 8,
            "channel_mults": (1, 2),
            "img_size": 8,
            "emb_dim": 8,
        },
        {
            "in_channels": COUNT(),
            "base_channels": COUNT(),
            "img_size": COUNT() + [("shape", 7)],
            "emb_dim": COUNT(2) + [("range", 5)],
            "channel_mults": [
                ("empty", ()),
                ("range", (1, 0)),
                ("type", "12"),
                ("type", (1, 2.5)),
                ("type", None),
                ("type", 2),
            ],
        },
    )
    sweep(
        m,
        "UNet",
        nets.UNet,
        lambda: {
            "in_channels": 1,
            "base_channels": 8,
            "channel_mults": (1, 2),
            "img_size": 8,
            "emb_dim": 8,
        },
        {
            "num_res_blocks": COUNT(),
            "attn_resolutions": [("range", (3,)), ("type", "8"), ("type", 8)],
            "dropout": [
                ("range", 1.0),
                ("range", -0.1),
                ("nan/inf", nan),
                ("type", "0.1"),
                ("type", None),
            ],
            "norm_groups": COUNT(),
            "mid_attention": FLAG(),
            "resample_skips": FLAG(),
        },
    )
    sweep(
        m,
        "UNet.ddpm_cifar10",
        nets.UNet.ddpm_cifar10,
        lambda: {"in_channels": 3, "dropout": 0.1},
        {
            "in_channels": COUNT()[:3],
            "dropout": [("range", 1.5), ("nan/inf", nan), ("type", "0.1")],
        },
    )
    torch.manual_seed(0)
    unet = nets.UNet(1, base_channels=8, channel_mults=(1, 2), img_size=8, emb_dim=8)
    img = torch.randn(B, 1, 8, 8, generator=gen())
    sweep(
        m,
        "UNet.forward",
        unet,
        lambda: {"x": img.clone(), "t": 0.5},
        {
            "x": X_BAD(img, floating=False, empty=False)
            + [
                ("shape", torch.randn(B, 3, 8, 8)),
                ("shape", torch.randn(B, 1, 16, 16)),
                ("shape", torch.randn(B, 64)),
            ],
            "t": T_BATCH(),
        },
        call=call,
    )
    sweep(
        m,
        "count_params",
        nets.count_params,
        lambda: {"module": tiny_mlp()},
        {
            "module": [
                ("type", None),
                ("type", "mlp"),
                ("type", nets.MLP),
                ("type", torch.zeros(3)),
                ("type", [tiny_mlp()]),
            ]
        },
    )


# === losses ===========================================================================
def build_losses():
    m = "losses"
    v = torch.ones(3)
    sweep(
        m,
        "gaussian_kl",
        losses.gaussian_kl,
        lambda: {
            "mean1": torch.zeros(3),
            "var1": v.clone(),
            "mean2": torch.ones(3),
            "var2": 2 * v,
        },
        {
            "mean1": [
                ("type", "0"),
                ("type", None),
                ("nan/inf", torch.tensor([nan] * 3)),
                ("shape", torch.zeros(4)),
                ("dtype", torch.zeros(3) + 0j),
            ],
            "var1": [
                ("type", "1"),
                ("type", None),
                ("range", torch.zeros(3)),
                ("range", -v),
                ("nan/inf", torch.tensor([nan, 1.0, 1.0])),
                ("nan/inf", torch.tensor([inf, 1.0, 1.0])),
                ("shape", torch.ones(2)),
            ],
            "mean2": [
                ("type", "0"),
                ("nan/inf", torch.tensor([inf] * 3)),
                ("shape", torch.zeros(2, 2)),
            ],
            "var2": [
                ("type", None),
                ("range", -v),
                ("nan/inf", torch.full((3,), nan)),
                ("shape", torch.ones(5)),
            ],
        },
    )
    sweep(
        m,
        "sample_xt",
        losses.sample_xt,
        lambda: {"x0": X.clone(), "t": 0.5, "schedule": VP, "generator": gen()},
        {
            "x0": X_BAD(X),
            "t": T_BATCH(),
            "schedule": SCH(),
            "generator": GEN(),
            "eps": no_none(X_SMALL(X)) + [("shape", X[:-1]), ("shape", X[..., :1])],
        },
    )
    net = tiny_mlp()

    def dl_valid():
        return {
            "net": net,
            "x0": X.clone(),
            "schedule": VP,
            "kind": "eps",
            "generator": gen(),
        }

    sweep(
        m,
        "denoising_loss",
        losses.denoising_loss,
        dl_valid,
        {
            "net": CALL()
            + [("callable", Lazy(lambda: nets.MLP(3, 8, 2, 4), "MLP for dim 3"))],
            "x0": X_BAD(X),
            "schedule": SCH(),
            "kind": OPT("eps"),
            "weight": CALL(none_ok=True),
            "t": no_none(T_BATCH()),
            "t_range": [
                ("range", (0.5, 0.1)),
                ("range", (0.0, 2.0)),
                ("nan/inf", (nan, 1.0)),
                ("type", "ab"),
                ("type", None),
                ("shape", (0.1, 0.5, 0.9)),
                ("type", 0.5),
            ],
            "generator": GEN(),
            "reduce": FLAG(),
        },
        names={"kind": ("kind", "prediction kind")},
    )
    sweep(
        m,
        "flow_matching_loss",
        losses.flow_matching_loss,
        lambda: {
            "net": net,
            "x0": X.clone(),
            "schedule": SCHS["LinearInterpolant"],
            "generator": gen(),
        },
        {
            "net": CALL()[:2],
            "x0": X_SMALL(X),
            "schedule": SCH()[:2],
            "t": no_none(T_SMALL()),
            "generator": GEN()[:1],
        },
    )
    sweep(
        m,
        "elbo_weight",
        losses.elbo_weight,
        lambda: {"kind": "eps", "t": 0.5, "schedule": VP},
        {"kind": OPT("eps"), "t": T_ANY(), "schedule": SCH()},
        names={"kind": ("kind", "prediction kind")},
    )
    score_fn = lambda x, t: -x  # noqa: E731
    sweep(
        m,
        "dsm_loss",
        losses.dsm_loss,
        lambda: {
            "score_fn": score_fn,
            "x0": X.clone(),
            "t": 0.5,
            "schedule": VP,
            "generator": gen(),
        },
        {
            "score_fn": CALL(),
            "x0": X_SMALL(X),
            "t": T_SMALL(),
            "schedule": SCH(),
            "generator": GEN()[:1],
        },
    )
    sweep(
        m,
        "esm_loss",
        losses.esm_loss,
        lambda: {
            "score_fn": score_fn,
            "true_score": score_fn,
            "x": X.clone(),
            "t": 0.5,
        },
        {"score_fn": CALL(), "true_score": CALL(), "x": X_SMALL(X), "t": T_SMALL()},
    )
    sweep(
        m,
        "discrete_nelbo",
        losses.discrete_nelbo,
        lambda: {
            "denoiser": ORACLE,
            "x0": X.clone(),
            "ts": torch.tensor([0.1, 0.5, 1.0]),
            "generator": gen(),
        },
        {
            "denoiser": DEN(),
            "x0": X_BAD(X) + [("shape", torch.randn(B, 3))],
            "ts": [
                ("type", "ts"),
                ("type", None),
                ("range", [0.5, 0.1]),
                ("range", [0.0, 0.5]),
                ("range", [0.5, 1.5]),
                ("nan/inf", [0.1, nan]),
                ("empty", []),
                ("shape", [[0.1, 0.5]]),
            ],
            "generator": GEN(),
            "chunk": COUNT(),
            "reverse_var": [
                ("option", "medium"),
                ("shape", torch.ones(5)),
                ("range", -torch.ones(2)),
                ("type", 3),
            ],
        },
        names={"reverse_var": ("reverse_var",)},
    )
    sweep(
        m,
        "continuous_nelbo",
        losses.continuous_nelbo,
        lambda: {"denoiser": ORACLE, "x0": X.clone(), "generator": gen()},
        {
            "denoiser": DEN(),
            "x0": X_BAD(X) + [("shape", torch.randn(B, 3))],
            "t_range": [
                ("range", (0.5, 0.1)),
                ("range", (0.0, 2.0)),
                ("nan/inf", (nan, 1.0)),
                ("type", "ab"),
                ("type", None),
                ("shape", (0.1, 0.5, 0.9)),
            ],
            "n_t": COUNT(),
            "sampling": OPT("uniform"),
            "generator": GEN(),
        },
    )
    ts = torch.tensor([0.1, 0.5, 1.0])
    ts_bad = [
        ("type", "ts"),
        ("type", None),
        ("range", [0.5, 0.1]),
        ("range", [0.0, 0.5]),
        ("nan/inf", [0.1, nan]),
        ("empty", []),
    ]
    sweep(
        m,
        "gaussian_discretization_excess",
        losses.gaussian_discretization_excess,
        lambda: {"schedule": VP, "ts": ts, "data_var": 1.0},
        {"schedule": SCH(), "ts": ts_bad, "data_var": POS(), "dim": COUNT()},
    )
    sweep(
        m,
        "optimal_reverse_variance",
        losses.optimal_reverse_variance,
        lambda: {"schedule": VP, "ts": ts, "x0_mse": 0.1},
        {
            "schedule": SCH(),
            "ts": ts_bad,
            "x0_mse": [
                ("range", -0.1),
                ("nan/inf", nan),
                ("type", "0.1"),
                ("type", None),
                ("shape", torch.ones(5)),
            ],
        },
    )
    sweep(
        m,
        "gaussian_nelbo",
        losses.gaussian_nelbo,
        lambda: {"schedule": VP, "ts": ts, "data_var": 1.0},
        {
            "schedule": SCH(),
            "ts": ts_bad,
            "data_var": POS(),
            "dim": COUNT(),
            "mean": NUM(),
            "reverse_var": [
                ("option", "medium"),
                ("shape", torch.ones(5)),
                ("type", 3),
            ],
        },
    )


# === sampling =========================================================================
def TS_BAD():
    return [
        ("type", "ts"),
        ("type", None),
        ("type", 0.5),
        ("range", [0.1, 0.5, 1.0]),
        ("range", [1.0, 1.0, 0.5]),
        ("range", [1.5, 0.5, 0.0]),
        ("range", [1.0, 0.5, -0.1]),
        ("nan/inf", [1.0, nan, 0.0]),
        ("empty", []),
        ("shape", [1.0]),
        ("shape", [[1.0, 0.5], [0.4, 0.0]]),
        ("dtype", torch.tensor([1 + 0j, 0j])),
    ]


def build_sampling():
    m = "sampling"
    sweep(
        m,
        "time_grid",
        sampling.time_grid,
        lambda: {"n_steps": 5, "t_max": 1.0, "t_min": 1e-3},
        {
            "n_steps": COUNT(),
            "t_max": T_SCALAR() + [("range", 1e-4)],
            "t_min": T_SCALAR() + [("range", 1.0)],
            "spacing": OPT("uniform"),
            "final_zero": FLAG(),
        },
    )
    sweep(
        m,
        "time_grid",
        sampling.time_grid,
        lambda: {"n_steps": 5, "spacing": "karras", "schedule": VP},
        {"schedule": SCH(), "rho": POS(), "lambda_min": NUM() + [("range", 50.0)]},
    )
    tsg = torch.tensor([1.0, 0.5, 0.1, 0.0], dtype=torch.float64)
    common = {
        "denoiser": DEN(),
        "x": X_BAD(X) + [("shape", torch.randn(B, 3))],
        "ts": TS_BAD(),
        "callback": CALL(none_ok=True),
        "progress": FLAG(True),
    }
    with_gen = dict(common, generator=GEN())

    def valid():
        return {"denoiser": ORACLE, "x": X.clone(), "ts": tsg.clone()}

    sweep(
        m,
        "sample_ancestral",
        sampling.sample_ancestral,
        valid,
        dict(
            with_gen,
            eta=[
                ("range", -0.5),
                ("range", 1.5),
                ("nan/inf", nan),
                ("type", "1"),
                ("type", None),
            ],
            clip_x0=POS(none_ok=True),
        ),
    )
    # the same entry checks as sample_ancestral's: in brief
    brief = {
        "denoiser": DEN()[:2],
        "x": X_SMALL(X),
        "ts": TS_BAD()[:1] + TS_BAD()[3:4] + TS_BAD()[7:8],
        "callback": CALL(none_ok=True)[:1],
        "progress": FLAG(True)[:1],
    }
    sweep(
        m,
        "sample_euler_maruyama",
        sampling.sample_euler_maruyama,
        valid,
        dict(
            brief,
            generator=GEN()[:1],
            zeta=[
                ("range", -1.0),
                ("nan/inf", nan),
                ("nan/inf", inf),
                ("type", "1"),
                ("type", None),
            ],
        ),
    )
    sweep(m, "sample_euler", sampling.sample_euler, valid, brief)
    sweep(m, "sample_heun", sampling.sample_heun, valid, brief)

    def valid_ode():
        return dict(valid(), rtol=1e-4, atol=1e-4)

    sweep(
        m,
        "sample_ode",
        sampling.sample_ode,
        valid_ode,
        dict(brief, rtol=POS(), atol=POS(), method=OPT("RK45"), variable=OPT("auto")),
    )
    sweep(
        m,
        "sample_langevin",
        sampling.sample_langevin,
        lambda: {
            "score_fn": lambda x: -x,
            "x": X.clone(),
            "step_size": 0.01,
            "n_steps": 3,
            "generator": gen(),
        },
        {
            "score_fn": CALL(),
            "x": X_BAD(X),
            "step_size": POS(),
            "n_steps": COUNT(),
            "generator": GEN(),
            "callback": CALL(none_ok=True),
            "progress": FLAG(True),
        },
    )
    lev = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    sweep(
        m,
        "sample_annealed_langevin",
        sampling.sample_annealed_langevin,
        lambda: {
            "denoiser": ORACLE,
            "x": X.clone(),
            "ts": lev.clone(),
            "n_steps_each": 2,
            "generator": gen(),
        },
        dict(
            with_gen,
            ts=TS_BAD()[:-3] + [("range", [0.5, 0.0])],
            n_steps_each=COUNT(),
            step_scale=POS(),
        ),
    )
    sweep(
        m,
        "sample_predictor_corrector",
        sampling.sample_predictor_corrector,
        valid,
        dict(brief, generator=GEN()[:1], n_corrector=COUNT(0), snr=POS()),
    )


# === metrics ==========================================================================
def build_metrics():
    m = "metrics"
    y = torch.randn(6, D, generator=gen())
    xy_bad = X_BAD(X, arrays=True, floating=False) + [
        ("shape", torch.randn(B, 3)),
        ("shape", X[:1]),
    ]
    sweep(
        m,
        "sliced_wasserstein",
        metrics.sliced_wasserstein,
        lambda: {"x": X.clone(), "y": y, "generator": gen()},
        {
            "x": xy_bad,
            "y": [("type", "y"), ("nan/inf", with_nan(y))],
            "n_projections": COUNT(),
            "generator": GEN(),
        },
    )
    sweep(
        m,
        "mmd",
        metrics.mmd,
        lambda: {"x": X.clone(), "y": y},
        {
            "x": xy_bad,
            "y": [("type", None), ("nan/inf", with_inf(y))],
            "bandwidths": [
                ("empty", ()),
                ("range", (0.5, -1.0)),
                ("nan/inf", (nan,)),
                ("type", "1.0"),
                ("type", 1.0),
                ("type", None),
            ],
        },
        names={"bandwidths": ("bandwidths", "bandwidth")},
    )
    sweep(
        m,
        "energy_distance",
        metrics.energy_distance,
        lambda: {"x": X.clone(), "y": y},
        {
            "x": xy_bad,
            "y": [
                ("type", "y"),
                ("nan/inf", with_nan(y)),
                ("shape", torch.randn(6, 3)),
            ],
        },
    )
    sweep(
        m,
        "log_likelihood",
        metrics.log_likelihood,
        lambda: {"model": GM, "x": X64.clone()},
        {
            "model": [("type", None), ("type", "gm"), ("type", VP), ("type", ORACLE)],
            "x": X_BAD(X64) + [("shape", torch.randn(B, 3))],
        },
    )

    def valid_pf():
        return {"denoiser": ORACLE, "x": X.clone(), "rtol": 1e-3, "atol": 1e-3}

    sweep(
        m,
        "pf_ode_log_likelihood",
        metrics.pf_ode_log_likelihood,
        valid_pf,
        {
            "denoiser": DEN(),
            "x": X_BAD(X) + [("shape", torch.randn(B, 3))],
            "t_min": [
                ("range", 0.0),
                ("range", -0.1),
                ("range", 1.0),
                ("nan/inf", nan),
                ("type", "0.001"),
                ("type", None),
            ],
            "t_max": [("range", 1.5), ("range", 1e-4), ("nan/inf", nan), ("type", "1")],
            "prior_log_prob": CALL(none_ok=True),
            "divergence": OPT("exact"),
            "n_probes": COUNT(),
            "rtol": POS(),
            "atol": POS(),
            "generator": GEN(),
        },
        names={"t_min": ("t_min",), "t_max": ("t_max",)},
    )
    sweep(
        m,
        "straightness",
        metrics.straightness,
        lambda: {
            "denoiser": ORACLE,
            "x": X.clone(),
            "ts": torch.tensor([1.0, 0.5, 0.1]),
        },
        {
            "denoiser": DEN(),
            "x": X_BAD(X) + [("shape", torch.randn(B, 3))],
            "ts": TS_BAD()[:-1] + [("range", [1.0, 0.5, 0.0])],
            "relative": FLAG(),
        },
    )


# === train ============================================================================
def build_train():
    m = "train"
    sweep(
        m,
        "EMA",
        train.EMA,
        lambda: {"model": tiny_mlp(), "decay": 0.9},
        {
            "model": [
                ("type", None),
                ("type", "mlp"),
                ("type", nets.MLP),
                ("type", lambda x: x),
            ],
            "decay": [
                ("range", 1.0),
                ("range", 1.5),
                ("range", -0.1),
                ("nan/inf", nan),
                ("type", "0.9"),
                ("type", None),
            ],
            "warmup": FLAG(),
        },
    )
    sweep(
        m,
        "EMA.update",
        lambda model: train.EMA(tiny_mlp()).update(model),
        lambda: {"model": tiny_mlp()},
        {
            "model": [
                ("type", None),
                ("type", "mlp"),
                ("shape", Lazy(lambda: nets.MLP(3, 8, 2, 4), "MLP(dim=3)")),
                ("shape", Lazy(lambda: nets.MLP(2, 16, 2, 4), "MLP(hidden=16)")),
                ("shape", Lazy(lambda: torch.nn.Linear(2, 2), "Linear(2, 2)")),
            ]
        },
    )

    def ema_state():
        return train.EMA(tiny_mlp(), 0.9).state_dict()

    def load(**kw):
        train.EMA(tiny_mlp(), 0.9).load_state_dict(kw["state"])

    bad_states = [("type", None), ("type", "state"), ("empty", {}), ("type", [1, 2])]
    for label, patch in (
        ("decay 1.5", {"decay": 1.5}),
        ("decay nan", {"decay": nan}),
        ("decay '0.9'", {"decay": "0.9"}),
        ("num_updates -1", {"num_updates": -1}),
        ("num_updates 1.5", {"num_updates": 1.5}),
        ("warmup 'yes'", {"warmup": "yes"}),
        ("model {}", {"model": {}}),
        ("model of MLP(hidden=16)", {"model": nets.MLP(2, 16, 2, 4).state_dict()}),
        ("model None", {"model": None}),
    ):
        bad_states.append(
            (
                "range" if "model" not in label else "shape",
                Lazy(lambda p=patch: {**ema_state(), **p}, label),
            )
        )
    sweep(
        m,
        "EMA.load_state_dict",
        load,
        lambda: {"state": ema_state()},
        {"state": bad_states},
        names={
            "state": (
                "state",
                "state['decay']",
                "state['num_updates']",
                "state['warmup']",
                "state['model']",
            )
        },
    )

    data_ok = torch.randn(16, D, generator=gen())

    def loss_fn(model, batch, g):
        return losses.denoising_loss(model, batch, VP, generator=g)

    def valid():
        return {
            "model": tiny_mlp(),
            "loss_fn": loss_fn,
            "data": data_ok.clone(),
            "steps": 2,
            "batch_size": 4,
            "progress": False,
        }

    tmp = tempfile.mkdtemp(prefix="sweep_")
    sweep(
        m,
        "train",
        train.train,
        valid,
        {
            "model": [
                ("type", None),
                ("type", "mlp"),
                ("type", nets.MLP),
                ("type", Lazy(lambda: lambda x, t: x, "function")),
            ],
            "loss_fn": CALL()
            + [
                ("callable", lambda mo, b, g: 1.0),
                ("callable", lambda mo, b, g: torch.ones(3)),
            ],
            "data": X_BAD(data_ok, floating=False)[:9] + [("callable", 3)],
            "steps": COUNT(),
            "batch_size": COUNT(),
            "lr": POS(),
            "seed": COUNT(0),
            "ema_decay": [
                ("range", 1.0),
                ("range", 1.5),
                ("nan/inf", nan),
                ("type", "0.9"),
            ],
            "grad_clip": POS(none_ok=True),
            "warmup_steps": COUNT(0),
            "max_seconds": POS(none_ok=True),
            "progress": FLAG(),
            "desc": [("type", 3), ("type", None)],
            "checkpoint": [
                ("type", 3),
                ("type", True),
                ("shape", Lazy(lambda: tmp, "an existing folder")),
            ],
            "checkpoint_every": no_none(COUNT()),
            "resume": FLAG(),
        },
        names={
            "loss_fn": ("loss_fn",),
            "ema_decay": ("ema_decay", "decay"),
            # 1-D or bool data pass train's own check and are refused by the
            # loss function the user wrote (denoising_loss names its x0)
            "data": ("data", "x0"),
        },
    )
    add(
        m,
        "train",
        "resume",
        "type",
        lambda: train.train(
            tiny_mlp(),
            loss_fn,
            data_ok,
            steps=2,
            batch_size=4,
            progress=False,
            resume=True,
        ),
        names=("resume", "checkpoint"),
        what="resume=True without a checkpoint",
    )
    add(
        m,
        "train",
        "data",
        "nan/inf",
        lambda: train.train(
            tiny_mlp(),
            loss_fn,
            lambda n, g: with_nan(torch.randn(n, D)),
            steps=2,
            batch_size=4,
            progress=False,
        ),
        names=("data", "x0"),
        what="sampler returning NaN",
    )
    sweep(
        m,
        "save_checkpoint",
        train.save_checkpoint,
        lambda: {"path": os.path.join(tmp, "ok.pt"), "state": {"a": 1}},
        {
            "path": [
                ("type", None),
                ("type", 3),
                ("shape", Lazy(lambda: tmp, "a folder")),
            ],
            "state": [("type", None), ("type", [1, 2]), ("type", "state")],
        },
    )
    garbage = os.path.join(tmp, "garbage.pt")
    with open(garbage, "w") as f:
        f.write("not a checkpoint")
    listfile = os.path.join(tmp, "list.pt")
    torch.save([1, 2], listfile)
    sweep(
        m,
        "load_checkpoint",
        train.load_checkpoint,
        lambda: {"path": os.path.join(tmp, "ok.pt")},
        {
            "path": [
                ("type", None),
                ("type", 3),
                ("shape", Lazy(lambda: tmp, "a folder")),
                ("type", garbage),
                ("type", listfile),
            ]
        },
    )
    # a file that is not a dlib checkpoint, given to train(resume=True)
    for label, path in (("text file", garbage), ("list", listfile)):
        add(
            m,
            "train",
            "checkpoint",
            "type",
            lambda path=path: train.train(
                tiny_mlp(),
                loss_fn,
                data_ok,
                steps=2,
                batch_size=4,
                progress=False,
                checkpoint=path,
                resume=True,
            ),
            what=f"resume from a {label}",
        )

    def world(value):
        old = os.environ.get("WORLD_SIZE")
        os.environ["WORLD_SIZE"] = value
        try:
            return train.init_distributed()
        finally:
            if old is None:
                del os.environ["WORLD_SIZE"]
            else:
                os.environ["WORLD_SIZE"] = old

    for value in ("two", "", "1.5"):
        add(
            m,
            "init_distributed",
            "WORLD_SIZE",
            "type",
            lambda value=value: world(value),
            what=repr(value),
        )


# === fullscale ========================================================================
def build_fullscale():
    m = "fullscale"
    den = param.Denoiser(lambda x, t: torch.zeros_like(x), VP)

    def valid_gen():
        return {
            "denoiser": den,
            "sampler": "ddim",
            "sample_steps": 2,
            "n_samples": 3,
            "shape": (1, 4, 4),
            "batch": 2,
            "progress": False,
        }

    sweep(
        m,
        "generate",
        fullscale.generate,
        valid_gen,
        {
            "denoiser": DEN(),
            "sampler": OPT("ddim") + [("callable", 3)],
            "sample_steps": COUNT(),
            "n_samples": COUNT(),
            "batch": COUNT(),
            "shape": [
                ("empty", ()),
                ("range", (1, 0, 4)),
                ("type", "1x4x4"),
                ("type", None),
                ("type", (1, 4.5, 4)),
            ],
            "t_range": [
                ("range", (0.5, 0.1)),
                ("range", (0.0, 2.0)),
                ("nan/inf", (nan, 1.0)),
                ("type", "ab"),
                ("type", None),
            ],
            "seed": COUNT(0)[:4],
            "device": [("option", "gpu0"), ("type", 3)],
            "progress": FLAG(),
        },
        names={"sampler": ("sampler",)},
    )
    imgs = torch.rand(4, 1, 4, 4, generator=gen()) * 2 - 1

    def valid_score():
        return {
            "samples": imgs.clone(),
            "reference": imgs.flip(0),
            "fid": False,
            "n_pixel": 4,
        }

    sweep(
        m,
        "score_images",
        fullscale.score_images,
        valid_score,
        {
            "samples": X_BAD(imgs)[:-2]
            + [
                ("shape", torch.rand(4, 16)),
                ("shape", imgs[:1]),
                ("shape", torch.rand(4, 3, 4, 4)),
            ],
            "reference": [
                ("type", "r"),
                ("type", None),
                ("nan/inf", with_nan(imgs)),
                ("shape", imgs[:1]),
            ],
            "real": [
                ("type", "r"),
                ("nan/inf", with_nan(imgs)),
                ("shape", torch.rand(4, 3, 4, 4)),
                ("empty", imgs[:0]),
            ],
            "fid": FLAG(),
            "device": [("option", "gpu0"), ("type", 3)],
            "n_pixel": COUNT(2),
            "seed": COUNT(0)[:4],
        },
    )
    torch.manual_seed(0)
    small = nets.UNet(1, base_channels=8, channel_mults=(1,), img_size=32, emb_dim=8)

    def valid_run():
        return {
            "dataset": "digits",
            "schedule": VP,
            "net": small,
            "steps": 1,
            "batch_size": 2,
            "warmup_steps": 0,
            "sample_steps": 2,
            "n_samples": 2,
            "n_pixel": 2,
            "fid": False,
            "progress": False,
            "verbose": False,
        }

    sweep(
        m,
        "run_image_experiment",
        fullscale.run_image_experiment,
        valid_run,
        {
            "dataset": OPT("digits")[:2],
            "schedule": SCH()[:2],
            "kind": OPT("eps")[:2],
            "net": [("option", "big"), ("type", 3), ("type", None)],
            "steps": COUNT()[:4],
            "batch_size": COUNT()[:3],
            "lr": POS()[:4],
            "warmup_steps": [("count", -1), ("type", "0")],
            "grad_clip": [("range", 0.0), ("nan/inf", nan)],
            "ema_decay": [("range", 1.5), ("nan/inf", nan)],
            "hflip": [("type", "yes")],
            "t_range": [("range", (0.5, 0.1)), ("nan/inf", (nan, 1.0))],
            "sampler": OPT("ddim")[:2],
            "sample_steps": COUNT()[:2],
            "n_samples": COUNT(2)[:2],
            "n_pixel": COUNT(2)[:2],
            "max_minutes": POS(none_ok=True)[:4],
            "checkpoint": [("type", 3)],
            "checkpoint_every": [("count", 0)],
            "resume": FLAG()[:1],
            "fid": FLAG()[:1],
            "allow_tf32": FLAG()[:1],
            "seed": COUNT(0)[:2],
            "device": [("option", "gpu0"), ("type", 3)],
            "data_root": [("type", 3)],
            "progress": FLAG()[:1],
            "verbose": FLAG()[:1],
        },
        names={
            "kind": ("kind", "prediction kind"),
            "ema_decay": ("ema_decay", "decay"),
        },
    )


# === plot =============================================================================
def build_plot():
    m = "plot"
    pts = torch.randn(20, 2, generator=gen())
    lp = lambda z: -(z**2).sum(1)  # noqa: E731
    LIM = [
        ("range", 0.0),
        ("range", -1.0),
        ("range", (1.0, -1.0)),
        ("nan/inf", nan),
        ("type", "3"),
        ("shape", (1.0, 2.0, 3.0)),
    ]
    AX = [("type", "ax"), ("type", 3)]
    if not hasattr(plot, "check_legible"):  # added after commit a57d153
        return _build_plot_common(m, pts, lp, LIM, AX)
    sweep(
        m,
        "column_width",
        plot.column_width,
        lambda: {"dpi": 90},
        {"dpi": POS(none_ok=True)},
    )
    sweep(
        m,
        "check_legible",
        plot.check_legible,
        lambda: {"fig": plt.figure()},
        {
            "fig": [
                ("type", None),
                ("type", "fig"),
                ("type", Lazy(lambda: plt.subplots()[1], "an Axes")),
            ],
            "min_pt": POS(),
            "column_px": POS(),
        },
    )
    _build_plot_common(m, pts, lp, LIM, AX)


def _build_plot_common(m, pts, lp, LIM, AX):
    sweep(
        m,
        "samples_2d",
        plot.samples_2d,
        lambda: {"x": pts},
        {
            "x": X_BAD(pts, arrays=True)[:-1] + [("shape", torch.randn(5, 3))],
            "ax": AX,
            "density": CALL(none_ok=True),
            "lim": LIM,
            "s": [("range", -1.0), ("nan/inf", nan), ("type", "2")],
            "alpha": [("range", 2.0), ("range", -0.5), ("type", "0.5")],
            "color": [("option", "notacolour")],
        },
    )
    sweep(
        m,
        "density_contours",
        plot.density_contours,
        lambda: {"log_prob": lp, "lim": 3.0, "n": 20},
        {
            "log_prob": CALL() + [("callable", lambda z: z)],
            "lim": LIM + [("type", None)],
            "ax": AX,
            "n": COUNT(2),
            "levels": [("count", 0), ("count", -2), ("type", "8")],
            "filled": FLAG()[:1],
            "cmap": [("option", "nope")],
        },
    )
    traj = torch.randn(4, 6, 2, generator=gen())
    sweep(
        m,
        "trajectories",
        plot.trajectories,
        lambda: {"traj": traj},
        {
            "traj": X_BAD(traj, arrays=True)[:-1]
            + [("shape", torch.randn(4, 6, 3)), ("empty", [])],
            "ax": AX,
            "n": COUNT(),
            "alpha": [("range", 2.0)],
        },
    )
    sweep(
        m,
        "vector_field",
        plot.vector_field,
        lambda: {"fn": lambda z: -z, "lim": 3.0, "n": 5},
        {
            "fn": CALL() + [("callable", lambda z: z[:, :1])],
            "lim": LIM + [("type", None)],
            "ax": AX,
            "n": COUNT(2),
            "normalize": FLAG()[:1],
        },
    )
    imgs = torch.rand(6, 1, 4, 4, generator=gen())
    sweep(
        m,
        "image_grid",
        plot.image_grid,
        lambda: {"images": imgs},
        {
            "images": X_BAD(imgs, arrays=True)[:-1]
            + [("shape", torch.rand(6, 2, 4, 4)), ("shape", torch.rand(6, 15))],
            "ax": AX,
            "nrow": COUNT(),
            "vmin": NUM() + [("range", 1.0), ("range", 2.0)],
            "vmax": NUM() + [("range", -1.0)],
        },
    )
    sweep(
        m,
        "line",
        plot.line,
        lambda: {"x": [1, 2, 3], "ys": {"a": [1, 2, 3]}},
        {
            "x": [
                ("type", "123"),
                ("type", None),
                ("shape", [[1, 2, 3]]),
                ("nan/inf", [1, nan, 3]),
            ],
            "ys": [
                ("type", [1, 2, 3]),
                ("type", None),
                ("empty", {}),
                ("shape", {"a": [1, 2]}),
                ("type", {"a": "abc"}),
            ],
            "ax": AX,
            "logx": FLAG()[:1],
            "logy": FLAG()[:1],
        },
    )


# === runtime ==========================================================================
def build_runtime():
    m = "runtime"
    sweep(
        m,
        "gpu_cell",
        runtime.gpu_cell,
        lambda: {"what": "demo"},
        {
            "what": [
                ("type", None),
                ("empty", ""),
                ("empty", "   "),
                ("type", 3),
                ("type", ["a"]),
            ]
        },
    )
    sweep(
        m,
        "seed_everything",
        runtime.seed_everything,
        lambda: {"seed": 0},
        {"seed": COUNT(0) + [("range", 2**70)]},
    )

    def timed(**kw):
        with runtime.timer(**kw):
            pass
        return kw.get("out")

    sweep(
        m,
        "timer",
        timed,
        lambda: {"label": None, "out": None},
        {
            "label": [("type", 3), ("type", ["a"])],
            "out": [("type", []), ("type", "out"), ("type", 3)],
        },
    )
    sweep(
        m,
        "show_source",
        runtime.show_source,
        lambda: {"obj": runtime.device, "display": False},
        {
            "obj": [
                ("type", None),
                ("type", 3),
                ("type", "dlib.runtime.device"),
                ("type", torch.zeros(2)),
            ],
            "display": FLAG(),
        },
    )

    def scale(value):
        old = os.environ.get("DLIB_SCALE")
        os.environ["DLIB_SCALE"] = value
        try:
            return runtime.full_scale()
        finally:
            if old is None:
                del os.environ["DLIB_SCALE"]
            else:
                os.environ["DLIB_SCALE"] = old

    for value in ("gpu", "yes", "1"):
        add(
            m,
            "full_scale",
            "DLIB_SCALE",
            "option",
            lambda value=value: scale(value),
            what=repr(value),
        )


# === part B: valid calls at the edges =================================================
def build_edges():
    ts01 = [0.0, 1.0]
    for sname, sch in SCHS.items():
        for meth in (
            "alpha",
            "sigma",
            "log_snr",
            "d_alpha",
            "d_sigma",
            "d_log_snr",
            "sde",
            "coefficients",
        ):
            for t in ts01:
                edge(
                    "schedules",
                    f"{sname}.{meth}",
                    f"t={t}",
                    lambda sch=sch, meth=meth, t=t: getattr(sch, meth)(t),
                    inf_ok=True,
                )
            for dtype in (torch.float32, torch.float64):
                tt = torch.tensor([0.0, 0.5, 1.0], dtype=dtype)
                edge(
                    "schedules",
                    f"{sname}.{meth}",
                    f"t=[0, 0.5, 1] {dtype}",
                    lambda sch=sch, meth=meth, tt=tt: getattr(sch, meth)(tt),
                    inf_ok=True,
                )
        for meth in ("transition", "posterior"):
            for s, t in ((0.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.0, 0.5), (0.5, 1.0)):
                edge(
                    "schedules",
                    f"{sname}.{meth}",
                    f"s={s}, t={t}",
                    lambda sch=sch, meth=meth, s=s, t=t: getattr(sch, meth)(s, t),
                )
        lo, hi = sch.log_snr_range()
        for lam in (lo, hi):
            edge(
                "schedules",
                f"{sname}.t_from_log_snr",
                f"lam={lam:.3g}",
                lambda sch=sch, lam=lam: sch.t_from_log_snr(lam),
            )
    for kind in ("linear", "cosine"):
        for T in (1, 2, 1000):
            edge(
                "schedules",
                "ddpm_betas",
                f"{kind}, T={T}",
                lambda kind=kind, T=T: schedules.ddpm_betas(kind, T),
            )
    for sname, sch in SCHS.items():
        for kind in param.KINDS:
            for t in ts01:
                for dtype in (torch.float32, torch.float64):
                    x = X.to(dtype)
                    tag = f"{kind}, t={t}, {str(dtype)[6:]}"
                    edge(
                        "param",
                        f"Denoiser.predict [{sname}]",
                        tag,
                        lambda sch=sch, kind=kind, t=t, x=x: GM.denoiser(sch).predict(
                            x, t, kind
                        ),
                    )
                    edge(
                        "param",
                        f"Denoiser(MLP).predict [{sname}]",
                        tag,
                        lambda sch=sch, kind=kind, t=t, x=x: net_denoiser(
                            "eps", sch
                        ).predict(x, t, kind),
                    )
                    edge(
                        "param",
                        f"target [{sname}]",
                        tag,
                        lambda sch=sch, kind=kind, t=t, x=x: param.target(
                            kind, x, x.flip(0), t, sch
                        ),
                    )
                edge(
                    "param",
                    f"convert eps->{kind} [{sname}]",
                    f"t={t}",
                    lambda sch=sch, kind=kind, t=t: param.convert(
                        X, "eps", kind, X, t, sch
                    ),
                )
                edge(
                    "param",
                    f"from_x0_eps [{sname}]",
                    f"{kind}, t={t}",
                    lambda sch=sch, kind=kind, t=t: param.from_x0_eps(
                        X, X.flip(0), kind, X, t, sch
                    ),
                )
                edge(
                    "losses",
                    f"elbo_weight [{sname}]",
                    f"{kind}, t={t}",
                    lambda sch=sch, kind=kind, t=t: losses.elbo_weight(kind, t, sch),
                    inf_ok=True,
                )
                edge(
                    "losses",
                    f"denoising_loss [{sname}]",
                    f"{kind}, t={t}",
                    lambda sch=sch, kind=kind, t=t: losses.denoising_loss(
                        tiny_mlp(), X, sch, kind, t=t, generator=gen()
                    ),
                )
        for t in ts01:
            edge(
                "losses",
                f"sample_xt [{sname}]",
                f"t={t}",
                lambda sch=sch, t=t: losses.sample_xt(X, t, sch, gen()),
            )
            edge(
                "analytic",
                f"GaussianMixture.score [{sname}]",
                f"t={t}",
                lambda sch=sch, t=t: GM.score(X64, t, sch),
            )
            edge(
                "analytic",
                f"GaussianMixture.log_prob [{sname}]",
                f"t={t}",
                lambda sch=sch, t=t: GM.log_prob(X64, t, sch),
            )
        for spacing in sampling.SPACINGS:
            for final_zero in (False, True):
                edge(
                    "sampling",
                    f"time_grid [{sname}]",
                    f"{spacing}, {final_zero}",
                    lambda sch=sch, spacing=spacing, fz=final_zero: sampling.time_grid(
                        10, 1.0, 1e-3, spacing=spacing, schedule=sch, final_zero=fz
                    ),
                )
        grid = torch.tensor([1.0, 0.6, 0.2, 0.0], dtype=torch.float64)
        for name in (
            "sample_ancestral",
            "sample_euler",
            "sample_heun",
            "sample_euler_maruyama",
            "sample_predictor_corrector",
            "sample_ode",
        ):
            for dtype in (torch.float32, torch.float64):
                edge(
                    "sampling",
                    f"{name} [{sname}]",
                    f"1 -> 0, {str(dtype)[6:]}",
                    lambda sch=sch, name=name, dtype=dtype: getattr(sampling, name)(
                        GM.denoiser(sch), X.to(dtype), grid, generator=gen()
                    ),
                )
                edge(
                    "sampling",
                    f"{name}, MLP [{sname}]",
                    f"1 -> 0, {str(dtype)[6:]}",
                    lambda sch=sch, name=name, dtype=dtype: getattr(sampling, name)(
                        net_denoiser("eps", sch), X.to(dtype), grid, generator=gen()
                    ),
                )
    for dtype in (torch.float64, torch.int64):
        edge(
            "nets",
            "MLP.forward",
            f"{dtype} x",
            lambda dtype=dtype: tiny_mlp()(X.to(dtype), 0.5),
        )
        torch.manual_seed(0)
        edge(
            "nets",
            "UNet.forward",
            f"{dtype} x",
            lambda dtype=dtype: nets.UNet(1, 8, (1, 2), 8, 8)(
                torch.randn(2, 1, 8, 8).to(dtype), torch.tensor([0.0, 1.0])
            ),
        )
    edge(
        "nets",
        "MLP.forward",
        "int time tensor",
        lambda: tiny_mlp()(X, torch.tensor([0, 1, 0, 1])),
    )
    edge(
        "metrics",
        "pf_ode_log_likelihood",
        "t_max=1",
        lambda: metrics.pf_ode_log_likelihood(
            ORACLE, X, t_max=1.0, rtol=1e-4, atol=1e-4
        ),
    )
    edge(
        "metrics",
        "straightness",
        "ts from 1",
        lambda: metrics.straightness(ORACLE, X, torch.tensor([1.0, 0.5, 1e-3])),
    )
    edge(
        "losses",
        "continuous_nelbo",
        "t_range=(0, 1)",
        lambda: losses.continuous_nelbo(ORACLE, X, (0.0, 1.0), generator=gen()),
    )
    edge(
        "losses",
        "continuous_nelbo",
        "t_range=(1e-3, 1), log_snr",
        lambda: losses.continuous_nelbo(ORACLE, X, sampling="log_snr", generator=gen()),
    )
    edge(
        "train",
        "train",
        "float64 data into a float32 MLP",
        lambda: (
            train.train(
                tiny_mlp(),
                lambda mo, b, g: losses.denoising_loss(mo, b, VP, generator=g),
                torch.randn(16, D, dtype=torch.float64),
                steps=2,
                batch_size=4,
                progress=False,
            ).losses
        ),
    )
    edge("analytic", "ring", "k=1", lambda: analytic.ring(1).sample(3, gen()))
    edge(
        "plot",
        "image_grid",
        "constant images",
        lambda: plot.image_grid(torch.zeros(4, 1, 4, 4)),
    )


# === running and classifying ==========================================================
class Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise Timeout("call took longer than the limit")


def _bad_values(obj, depth=0) -> tuple[bool, bool]:
    """(has NaN, has inf) anywhere in a result."""
    if depth > 4:
        return False, False
    if torch.is_tensor(obj):
        if obj.is_floating_point() or obj.is_complex():
            return bool(torch.isnan(obj).any()), bool(torch.isinf(obj).any())
        return False, False
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "fc":
        return bool(np.isnan(obj).any()), bool(np.isinf(obj).any())
    if isinstance(obj, float):
        return math.isnan(obj), math.isinf(obj)
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        items = list(obj)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        items = [getattr(obj, f.name) for f in dataclasses.fields(obj)]
    else:
        return False, False
    has_nan = has_inf = False
    for item in items[:10_000]:
        n, i = _bad_values(item, depth + 1)
        has_nan, has_inf = has_nan or n, has_inf or i
    return has_nan, has_inf


def _names_in(message: str, names) -> bool:
    msg = message.lower()
    for name in names:
        name = name.lower()
        if not re.match(r"^\w+$", name):
            if name in msg:
                return True
        elif re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", msg):
            return True
    return False


def run_case(case: Case, limit: float = 60.0) -> tuple[str, str]:
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            result = case.thunk()
        exc = None
    except Exception as e:  # noqa: BLE001 - classifying every outcome is the point
        exc = e
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        plt.close("all")
    if exc is not None:
        first = (str(exc).splitlines() or [""])[0][:160]
        detail = f"{type(exc).__name__}: {first}"
        if case.part == "edge":
            if isinstance(exc, ValueError) and "singular" in str(exc):
                return "documented singular ValueError", detail
            return "exception", detail
        if type(exc) is ValueError or (
            isinstance(exc, ValueError) and type(exc).__module__.startswith("dlib")
        ):
            if _names_in(str(exc), case.names):
                return "clear", detail
            return "ValueError, argument not named", detail
        return "other exception", detail
    has_nan, has_inf = _bad_values(result)
    if case.part == "edge":
        if has_nan:
            return "NaN", "returned NaN"
        if has_inf:
            if case.inf_ok:
                return "±inf where the math says so", "returned ±inf"
            return "unexpected inf", "returned inf"
        return "finite", ""
    if has_nan or has_inf:
        return "silent NaN/inf", "returned " + ("NaN" if has_nan else "inf")
    return "accepted although wrong", "returned without an error"


def build_all():
    for build in (
        build_schedules,
        build_param,
        build_analytic,
        build_data,
        build_nets,
        build_losses,
        build_sampling,
        build_metrics,
        build_train,
        build_fullscale,
        build_plot,
        build_runtime,
        build_edges,
    ):
        build()


def run(verbose=False) -> list[dict]:
    build_all()
    rows = []
    cwd = os.getcwd()
    work = tempfile.mkdtemp(prefix="bad_input_sweep_")
    os.chdir(work)  # anything written by a bad call lands here
    try:
        t0 = time.perf_counter()
        for i, case in enumerate(CASES):
            outcome, detail = run_case(case)
            rows.append(
                {
                    "module": case.module,
                    "func": case.func,
                    "arg": case.arg,
                    "category": case.category,
                    "what": case.what,
                    "part": case.part,
                    "outcome": outcome,
                    "detail": detail,
                }
            )
            if verbose and i % 200 == 0:
                print(
                    f"{i}/{len(CASES)} {time.perf_counter() - t0:.0f} s",
                    file=sys.stderr,
                )
    finally:
        os.chdir(cwd)
    return rows


# === reporting ========================================================================
MODULES = (
    "schedules",
    "param",
    "analytic",
    "data",
    "nets",
    "losses",
    "sampling",
    "metrics",
    "train",
    "fullscale",
    "plot",
    "runtime",
)


def _table(rows, part, classes, by):
    counts = defaultdict(Counter)
    for r in rows:
        if r["part"] == part:
            counts[r[by]][r["outcome"]] += 1
    keys = [k for k in MODULES if k in counts] if by == "module" else sorted(counts)
    lines = [
        "| " + by + " | " + " | ".join(classes) + " | total |",
        "|---|" + "---:|" * (len(classes) + 1),
    ]
    total = Counter()
    for k in keys:
        c = counts[k]
        total.update(c)
        lines.append(
            f"| {k} | "
            + " | ".join(str(c[x]) for x in classes)
            + f" | {sum(c.values())} |"
        )
    lines.append(
        "| **all** | "
        + " | ".join(f"**{total[x]}**" for x in classes)
        + f" | **{sum(total.values())}** |"
    )
    return lines


def _summary(rows, part, classes):
    c = Counter(r["outcome"] for r in rows if r["part"] == part)
    n = sum(c.values())
    return ", ".join(f"{x}: {c[x]} ({100 * c[x] / max(n, 1):.0f} %)" for x in classes)


def markdown(after, before=None, meta=None) -> str:
    out = ["# Bad input, measured", ""]
    out += [
        "Made by `python benchmarks/bad_input_sweep.py` (see its docstring for what "
        "each class means). Part A replaces one argument of a valid call by a bad "
        "value; part B makes valid calls at the edges (t = 0 and t = 1, every "
        "schedule, prediction kind and dtype).",
        "",
    ]
    if meta:
        out += [meta, ""]
    runs = [("Before", before), ("After", after)] if before else [("Now", after)]
    for title, rows in runs:
        if rows is None:
            continue
        label = rows[0].get("label", "") if rows else ""
        n_bad = sum(r["part"] == "bad" for r in rows)
        n_edge = len(rows) - n_bad
        out += [
            f"## {title}{': ' + label if label else ''}",
            "",
            f"Part A, {n_bad} bad calls: " + _summary(rows, "bad", BAD_CLASSES) + ".",
            "",
            "By module:",
            "",
        ]
        out += _table(rows, "bad", BAD_CLASSES, "module") + [
            "",
            "By kind of bad input:",
            "",
        ]
        out += _table(rows, "bad", BAD_CLASSES, "category") + [""]
        out += [
            f"Part B, {n_edge} valid calls at the edges: "
            + _summary(rows, "edge", EDGE_CLASSES)
            + ".",
            "",
        ]
        out += _table(rows, "edge", EDGE_CLASSES, "module") + [""]
    rest = [
        r
        for r in after
        if r["outcome"]
        not in (
            "clear",
            "finite",
            "±inf where the math says so",
            "documented singular ValueError",
        )
    ]
    out += ["## What is left", ""]
    if not rest:
        out += ["Nothing: every bad call gives a ValueError naming the argument.", ""]
    else:
        out += [
            "| module | function | argument | bad value | outcome | detail |",
            "|---|---|---|---|---|---|",
        ]
        for r in rest:
            detail = r["detail"].replace("|", "\\|")[:120]
            what = r["what"].replace("|", "\\|")
            out.append(
                f"| {r['module']} | `{r['func']}` | {r['arg']} | `{what}` | "
                f"{r['outcome']} | {detail} |"
            )
        out.append("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the classified calls here")
    ap.add_argument("--label", default="", help="a name for this run (e.g. a commit)")
    ap.add_argument("--before", help="a JSON file of an earlier run, for the markdown")
    ap.add_argument("--markdown", help="write the markdown report here")
    ap.add_argument("--note", default="", help="a paragraph for the report")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = run(args.verbose)
    seconds = time.perf_counter() - t0
    for r in rows:
        r["label"] = args.label
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=0)
    before = None
    if args.before:
        with open(args.before) as f:
            before = json.load(f)
    meta = (
        f"Run on {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}, torch {torch.__version__}, dlib from "
        f"`{os.path.dirname(dlib.__file__)}`; {len(rows)} calls in {seconds:.0f} s."
    )
    report = markdown(rows, before, meta + ("\n\n" + args.note if args.note else ""))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report)
    print("\n".join(report.splitlines()[:60]))
    print(f"\n{len(rows)} calls in {seconds:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
