r"""Solver-schedule search (USF/S3): the unified per-step decisions of a fast solver
and a search over them (Part II, solver-schedule search chapter).

A :class:`SolverSchedule` lists, for each step from grid point $i$ to $i+1$, one
:class:`Update`: the Taylor ``order`` $p$, the quantity expanded (``prediction``:
noise $\hat\epsilon$ or data $\hat x_0$), the ``start`` point $t$ the expansion is
made at, the ``points`` whose model values estimate the derivatives, and a
``relaxation`` of the first derivative; optionally a pseudo-corrector (another
:class:`Update` that also uses the new point). In the book's convention a step goes
from the start point $t$ to the next grid time $s<t$ with $h=\lambda_s-\lambda_t>0$
(the paper writes it from $s$ to $t$); it is the exponential-integrator Taylor step

$$x_s=\frac{\alpha_s}{\alpha_t}x_t-\sigma_s\sum_{k=0}^{p-1}h^{k+1}\varphi_{k+1}(h)
\hat\epsilon^{(k)}_t\ \text{(noise)},\qquad
x_s=\frac{\sigma_s}{\sigma_t}x_t+\alpha_s\sum_{k=0}^{p-1}h^{k+1}\varphi_{k+1}(-h)
\hat x^{(k)}_{0,t}\ \text{(data)},$$

with the derivatives in $\lambda$ at $t$ estimated by :func:`difference_weights`. DDIM,
DPM-Solver(++) single- and multistep and UniPC are points of this space
(:meth:`SolverSchedule.ddim`, :meth:`SolverSchedule.dpm_solver`,
:meth:`SolverSchedule.unipc`); :func:`sample_usf` runs any of them and
:func:`search_solver_schedule` searches the space.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import _checks as C
from .._loop import _prepare, _progress, _report, _steps
from ..param import Denoiser
from ._core import _check_below, _coefs, _first_order, _orders, _phi

__all__ = [
    "Update",
    "SolverSchedule",
    "SearchResult",
    "difference_weights",
    "sample_usf",
    "search_solver_schedule",
]

PREDICTIONS = ("eps", "x0")
RELAXATIONS = ("none", "dpmsolver-2", "unipc-bh1", "linear")
UNIPC_VARIANTS = ("bh1", "bh2")
DECISIONS = ("times", "end", "orders", "predictions", "points", "relaxations",
             "starts", "correctors", "afs")
MAX_ORDER = 4


def _int(value, name, lo, hi=None):
    return C.positive_int(value, name, minimum=lo, maximum=hi)


# --- the decisions of one step ----------------------------------------------------
@dataclass(frozen=True)
class Update:
    r"""The decisions of one exponential-integrator Taylor update (USF's per-step
    decisions; Part II, solver-schedule search chapter).

    - ``order`` $p$ (1 to 4): the number of Taylor terms; 1 is the DDIM step.
    - ``prediction``: ``"eps"`` (noise form) or ``"x0"`` (data form).
    - ``start``: the point $t$ the expansion starts from (the step goes from it to
      the next grid time $s$), counted back from the latest point before the step
      (1 = the latest: multistep; 2 or more: singlestep, where the points in
      between act as intermediate stages).
    - ``points``: the points whose model values estimate the derivatives, counted
      the same way; 0 is the new point (only in a corrector). At least $p-1$ of
      them; $n$ points determine derivatives up to order $n$ (the Vandermonde
      system of :func:`difference_weights`), so $n>p-1$ over-determines nothing:
      the extra points raise the accuracy of the lower derivatives.
    - ``relaxation`` of the first derivative $\hat F^{(1)}$, with $g=h$ (noise) or
      $g=-h$ (data): ``"none"``; ``"dpmsolver-2"``
      $\frac{\varphi_1(g)}{2\varphi_2(g)}$ (turns the Taylor step into
      DPM-Solver-2 / DPM-Solver++(2M) / UniPC-B2); ``"unipc-bh1"``
      $\frac{1}{2\varphi_2(g)}$ (UniPC-B1); ``"linear"`` $1+c\,h$ with $c$ =
      ``coef``."""

    order: int = 1
    prediction: str = "eps"
    start: int = 1
    points: tuple[int, ...] = ()
    relaxation: str = "none"
    coef: float = 0.0

    def __post_init__(self):
        _int(self.order, "order", 1, MAX_ORDER)
        C.one_of(self.prediction, PREDICTIONS, "prediction")
        _int(self.start, "start", 1)
        pts = self.points
        if not isinstance(pts, (tuple, list)):
            raise ValueError(f"points must be a tuple of integers >= 0; got {pts!r}")
        pts = tuple(_int(p, "points", 0) for p in pts)
        object.__setattr__(self, "points", pts)
        if len(set(pts)) != len(pts) or self.start in pts:
            raise ValueError(f"points must be distinct and exclude start={self.start}; "
                             f"got {pts}")
        if self.order == 1 and pts:
            raise ValueError(f"points must be empty for order 1 (no derivative); got "
                             f"{pts}")
        if len(pts) < self.order - 1:
            raise ValueError(f"points: order {self.order} needs at least "
                             f"{self.order - 1} points; got {pts}")
        C.one_of(self.relaxation, RELAXATIONS, "relaxation")
        if self.relaxation != "none" and self.order < 2:
            raise ValueError("relaxation needs order >= 2 (it scales the first "
                             "derivative)")
        object.__setattr__(self, "coef", C.number(self.coef, "coef"))

    def _label(self, prediction: bool = True) -> str:
        out = f"{self.prediction} " if prediction else ""
        out += f"p={self.order}"
        if self.start != 1:
            out += f" s=-{self.start}"
        if self.points:
            out += " pts=" + ",".join(map(str, self.points))
        short = {"dpmsolver-2": "dpm2", "unipc-bh1": "bh1"}
        if self.relaxation == "linear":
            out += f" lin{self.coef:+.2f}"
        elif self.relaxation != "none":
            out += f" {short[self.relaxation]}"
        return out


def _as_update(u, name) -> Update:
    if isinstance(u, Update):
        return u
    if isinstance(u, dict):
        try:
            return Update(**u)
        except TypeError as err:
            raise ValueError(f"{name}: {err}") from None
    raise ValueError(f"{name} must be an Update (or a dict of its fields); got "
                     f"{type(u).__name__}")


def _decreasing(ts, name="timesteps") -> list[float]:
    if torch.is_tensor(ts):
        ts = ts.detach().cpu()
    ts = C.as_time(ts, name=name, dtype=torch.float64).to(torch.float64)
    if ts.dim() != 1 or ts.numel() < 2 or bool((ts[1:] >= ts[:-1]).any()):
        raise ValueError(f"{name} must be a strictly decreasing 1-D grid with at "
                         f"least 2 times")
    return ts.tolist()


# --- the schedule -----------------------------------------------------------------
@dataclass(frozen=True)
class SolverSchedule:
    r"""A solver schedule (USF): ``timesteps`` $t_0>t_1>\dots>t_n$, one predictor
    :class:`Update` per step in ``steps``, an optional pseudo-corrector per step in
    ``correctors`` (None: no corrector; it redoes the step with the model value at
    the predicted point, point 0, and costs no evaluation), and ``afs``, the
    analytic first step ($\hat x_0(x_{t_0},t_0):=0$, saving the first evaluation;
    exact as $\alpha_{t_0}\to0$ for data of mean 0).

    Point $k$ of step $i$ is grid point $i+1-k$, so a step may use only $k\le i+1$.
    A step to $t=0$ (the final jump to $\sigma=0$, which returns $\hat x_0$) has order
    1; the last step has no corrector. ``nfe`` = $n$ - ``afs``: the model is
    evaluated at $t_0,\dots,t_{n-1}$. Introduced in Part II, solver-schedule search
    chapter."""

    timesteps: tuple[float, ...]
    steps: tuple[Update, ...]
    correctors: tuple[Update | None, ...] | None = None
    afs: bool = False

    def __post_init__(self):
        ts = tuple(_decreasing(self.timesteps))
        n = len(ts) - 1
        if not isinstance(self.steps, (tuple, list)) or len(self.steps) != n:
            raise ValueError(f"steps must hold one Update per step ({n}); got "
                             f"{self.steps!r:.80}")
        steps = tuple(_as_update(u, f"steps[{i}]") for i, u in enumerate(self.steps))
        cor = self.correctors
        if cor is None:
            cor = (None,) * n
        if not isinstance(cor, (tuple, list)) or len(cor) != n:
            raise ValueError(f"correctors must hold one Update or None per step ({n})")
        cor = tuple(None if u is None else _as_update(u, f"correctors[{i}]")
                    for i, u in enumerate(cor))
        C.flag(self.afs, "afs")
        for i, (u, c) in enumerate(zip(steps, cor)):
            if max((u.start,) + u.points) > i + 1 or 0 in u.points:
                raise ValueError(
                    f"steps[{i}] uses points {u.points} from start {u.start}; step {i} "
                    f"has only the points 1..{i + 1} before it")
            if ts[i + 1] == 0 and u.order != 1:
                raise ValueError(f"steps[{i}] goes to t=0 (the jump to sigma=0) and "
                                 f"must have order 1; got {u.order}")
            if c is None:
                continue
            if i == n - 1 or ts[i + 1] == 0:
                raise ValueError(f"correctors[{i}]: the last step (and a step to t=0) "
                                 f"cannot have a corrector (the model is not "
                                 f"evaluated at its end)")
            if 0 not in c.points or max((c.start,) + c.points) > i + 1:
                raise ValueError(f"correctors[{i}] must use the new point 0 and points "
                                 f"up to {i + 1}; got {c.points} from start {c.start}")
        object.__setattr__(self, "timesteps", ts)
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "correctors", cor)

    @property
    def n_steps(self) -> int:
        return len(self.steps)

    @property
    def nfe(self) -> int:
        """Model evaluations of :func:`sample_usf` on this schedule."""
        return self.n_steps - int(self.afs)

    # --- the special cases ---------------------------------------------------------
    @classmethod
    def ddim(cls, ts) -> SolverSchedule:
        """DDIM (every step order 1) on the grid ``ts``: equal to
        ``sampling.sample_ancestral(eta=0)``."""
        ts = _decreasing(ts, "ts")
        return cls(tuple(ts), (Update(),) * (len(ts) - 1))

    @classmethod
    def dpm_solver(cls, ts, schedule, *, order: int = 2, method: str = "multistep",
                   prediction: str = "x0", r1: float = 0.5,
                   lower_order_final: bool = True,
                   lower_order_below: int | float = 10) -> SolverSchedule:
        r"""DPM-Solver (``prediction="eps"``) or DPM-Solver++ (``"x0"``) as a
        schedule, equal to ``sample_dpm_solver`` / ``sample_dpm_solver_pp`` with the
        same options (orders from :func:`step_orders`).

        - multistep: an order-$k$ step starts at the latest point and uses the $k-1$
          previous grid points; order 2 with the ``"dpmsolver-2"`` relaxation
          (the paper's $\tfrac12D_1$ form), order 3 plain Taylor (quadratic
          interpolation of the three model values).
        - singlestep: the intermediate points become grid points: order 2 adds
          $u$ at $\lambda_t+r_1h$, $h=\lambda_s-\lambda_t$ (a DDIM step to $u$,
          then an order-2 step from two points back with ``"dpmsolver-2"``); order 3
          adds $u_1,u_2$ at $r=1/3,2/3$ (DDIM to $u_1$; order 2 from $t$ with $u_1$
          to $u_2$; order 2 from $t$ with $u_2$ only, no relaxation)."""
        C.schedule(schedule)
        ts = _decreasing(ts, "ts")
        order = _int(order, "order", 1, 3)
        C.one_of(method, ("multistep", "singlestep"), "method")
        C.one_of(prediction, PREDICTIONS, "prediction")
        r1 = C.in_range(r1, "r1", 0.0, 1.0, lo_open=True, hi_open=True)
        C.flag(lower_order_final, "lower_order_final")
        below = _check_below(lower_order_below)
        lam = schedule.log_snr(torch.tensor(ts, dtype=torch.float64)).tolist()
        multi = method == "multistep"
        orders = _orders(ts, lam, order, multi, lower_order_final, below)
        if multi:
            steps = [_multistep_update(k, prediction, "dpmsolver-2") for k in orders]
            return cls(tuple(ts), tuple(steps))
        grid, steps = [ts[0]], []
        for i, k in enumerate(orders):
            rs = [r1] if k == 2 else [1 / 3, 2 / 3] if k == 3 else []
            if rs:
                h = lam[i + 1] - lam[i]
                lr = torch.tensor([lam[i] + r * h for r in rs], dtype=torch.float64)
                grid += schedule.t_from_log_snr(lr).clamp(ts[i + 1], ts[i]).tolist()
            steps.append(Update(1, prediction))
            if k == 2:
                steps.append(Update(2, prediction, 2, (1,), "dpmsolver-2"))
            elif k == 3:
                steps += [Update(2, prediction, 2, (1,)),
                          Update(2, prediction, 3, (1,))]
            grid.append(ts[i + 1])
        return cls(tuple(grid), tuple(steps))

    @classmethod
    def unipc(cls, ts, schedule, *, order: int = 2, variant: str = "bh2",
              prediction: str = "x0", lower_order_final: bool = True,
              lower_order_below: int | float = 10) -> SolverSchedule:
        r"""UniPC as a schedule: the predictor UniP-$k$ is the multistep update with
        the B(h) relaxation for $k=2$ (``"bh2"``: ``"dpmsolver-2"``, ``"bh1"``:
        ``"unipc-bh1"``) and plain Taylor for $k\ge3$ (there the B(h) factor
        cancels); after every step but the last, the corrector UniC redoes it with
        order $k+1$ and the new point added to the points (relaxed as the predictor
        only when it has one point, $k=1$). Orders as in :meth:`dpm_solver`."""
        C.schedule(schedule)
        ts = _decreasing(ts, "ts")
        order = _int(order, "order", 1, 3)
        C.one_of(variant, UNIPC_VARIANTS, "variant")
        C.one_of(prediction, PREDICTIONS, "prediction")
        C.flag(lower_order_final, "lower_order_final")
        below = _check_below(lower_order_below)
        lam = schedule.log_snr(torch.tensor(ts, dtype=torch.float64)).tolist()
        orders = _orders(ts, lam, order, True, lower_order_final, below)
        relax = "dpmsolver-2" if variant == "bh2" else "unipc-bh1"
        steps = [_multistep_update(k, prediction, relax) for k in orders]
        cor = []
        for i, u in enumerate(steps):
            if i == len(steps) - 1 or ts[i + 1] == 0:
                cor.append(None)
                continue
            cor.append(Update(u.order + 1, prediction, 1, (0,) + u.points,
                              relax if u.order == 1 else "none"))
        return cls(tuple(ts), tuple(steps), tuple(cor))

    # --- storage and display -------------------------------------------------------
    def to_dict(self) -> dict:
        """The schedule as plain Python data (JSON-ready); :meth:`from_dict` inverts
        it."""
        def upd(u):
            return None if u is None else {
                "order": u.order, "prediction": u.prediction, "start": u.start,
                "points": list(u.points), "relaxation": u.relaxation, "coef": u.coef}
        return {"timesteps": list(self.timesteps),
                "steps": [upd(u) for u in self.steps],
                "correctors": [upd(u) for u in self.correctors], "afs": self.afs}

    @classmethod
    def from_dict(cls, data: dict) -> SolverSchedule:
        """Inverse of :meth:`to_dict` (validated like the constructor)."""
        if not isinstance(data, dict) or not {"timesteps", "steps"} <= set(data):
            raise ValueError("data must be a dict with at least 'timesteps' and "
                             "'steps' (as written by to_dict)")
        def upd(u):
            if u is None:
                return None
            if isinstance(u, dict) and "points" in u:
                u = {**u, "points": tuple(u["points"])}
            return u
        cor = data.get("correctors")
        return cls(tuple(data["timesteps"]), tuple(upd(u) for u in data["steps"]),
                   None if cor is None else tuple(upd(u) for u in cor),
                   data.get("afs", False))

    def describe(self) -> str:
        """One line per step: times, the predictor's and the corrector's decisions
        (``p`` order, ``s=-k`` start point, ``pts`` estimation points, relaxation
        ``dpm2``/``bh1``/``lin+c``)."""
        lines = [f"{'step':>4}  {'t':>8} -> {'t next':<8}  predictor | corrector"]
        if self.afs:
            lines.append("      analytic first step: x0_hat(t0) := 0 (no evaluation)")
        for i, (u, c) in enumerate(zip(self.steps, self.correctors)):
            t, s = self.timesteps[i], self.timesteps[i + 1]
            extra = "" if c is None else \
                f" | {c._label(c.prediction != u.prediction)}"
            lines.append(f"{i:>4}  {t:8.5f} -> {s:<8.5f}  {u._label()}{extra}")
        lines.append(f"NFE = {self.nfe}")
        return "\n".join(lines)


def _multistep_update(k, prediction, relax2):
    if k == 1:
        return Update(1, prediction)
    return Update(k, prediction, 1, tuple(range(2, k + 1)),
                  relax2 if k == 2 else "none")


# --- derivative estimation --------------------------------------------------------
def difference_weights(offsets, m: int) -> list[float]:
    r"""Weights $a_j$ of the estimate $\hat F^{(m)}_t=\sum_ja_j(F_j-F_t)$ of the m-th
    derivative in $\lambda$ at the start point $t$ from the values at $n$ other points
    with ``offsets`` $\delta_j=\lambda_j-\lambda_t$ (USF's "Difference_n"): the
    solution of the Vandermonde-type system $\sum_ja_j\delta_j^q/q!=[q=m]$,
    $q=1,\dots,n$. Exact when F is a polynomial of degree $\le n$ in $\lambda$ (its
    Taylor expansion at t then ends at $q=n$). Introduced in Part II,
    solver-schedule search chapter."""
    d = C.real_tensor(offsets, "offsets").reshape(-1).tolist()
    n = len(d)
    if n < 1 or len(set(d)) != n or 0.0 in d:
        raise ValueError(f"offsets must be distinct, nonzero and at least one; got {d}")
    m = _int(m, "m", 1, n)
    return _weights(d, m)


def _weights(d, m):
    n = len(d)
    mat = np.array([[dj**q / math.factorial(q) for dj in d] for q in range(1, n + 1)])
    rhs = np.zeros(n)
    rhs[m - 1] = 1.0
    return np.linalg.solve(mat, rhs).tolist()


def _relax(u, h, data):
    g = -h if data else h
    if u.relaxation == "dpmsolver-2":
        return 0.5 * _phi(1, g) / _phi(2, g)
    if u.relaxation == "unipc-bh1":
        return 0.5 / _phi(2, g)
    if u.relaxation == "linear":
        return 1.0 + u.coef * h
    return 1.0


def _plan(u, i, target, sch, ts, lam):
    """One update compiled to scalars: ('jump'|'ddim'|'taylor', data, start index,
    A, c_t, [(weight, point index)]) for x_s = A x_t + c_t m_t + sum w_j m_j, from the
    start point t (index si) to the target s; h = lambda_s - lambda_t, ct and cs the
    schedule's coefficients at t and s, m the expanded model output."""
    data = u.prediction == "x0"
    si = i + 1 - u.start
    ct, cs = sch._coefficients(ts[si]), sch._coefficients(ts[target])
    h = lam[target] - lam[si]
    if ts[target] == 0:
        return ("jump", data, si, 0.0, 0.0, [])
    if u.order == 1:
        return ("ddim", data, si, h, (ct, cs), [])
    a, c1, c2, c3 = _coefs(ct, cs, h, data)
    c = [c1, c2, c3]
    if u.order == 4:
        b = cs.alpha if data else -cs.sigma
        c.append(b * h * _phi(4, -h if data else h))
    idx = [i + 1 - p for p in u.points]
    d = [lam[j] - lam[si] for j in idx]
    w = [0.0] * len(idx)
    c_t = c1
    for k in range(1, u.order):
        scale = c[k] * h**k * (_relax(u, h, data) if k == 1 else 1.0)
        for j, aj in enumerate(_weights(d, k)):
            w[j] += scale * aj
            c_t -= scale * aj
    return ("taylor", data, si, a, c_t, list(zip(w, idx)))


def _apply(plan, xs, pairs):
    kind, data, si, a, c, terms = plan
    x0, eps = pairs[si]
    if kind == "jump":
        return x0
    if kind == "ddim":
        ct, cs = c
        return _first_order(xs[si], x0, eps, ct, cs, a, data)
    k = 0 if data else 1
    out = xs[si].mul(a).add_(pairs[si][k], alpha=c)
    for w, j in terms:
        out = out.add_(pairs[j][k], alpha=w)
    return out


def _compile(sched, ts, lam, sch):
    plans = []
    for i, (u, c) in enumerate(zip(sched.steps, sched.correctors)):
        p = _plan(u, i, i + 1, sch, ts, lam)
        q = None if c is None else _plan(c, i, i + 1, sch, ts, lam)
        plans.append((p, q))
    return plans


def _run(den, x, ts, plans, afs, callback=None, progress=False):
    sch = den.schedule
    if afs:
        x0 = torch.zeros_like(x)
        pair = (x0, x / sch._coefficients(ts[0]).sigma)
    else:
        pair = den._x0_eps(x, ts[0])
    xs, pairs = [x], [pair]
    n = len(plans)
    for i, t, s in _steps(ts, progress, "USF"):
        p, q = plans[i]
        x_new = _apply(p, xs, pairs)
        if i < n - 1:
            new = den._x0_eps(x_new, s)
            if q is not None:  # pseudo-corrector: the new point's model value stays
                x_new = _apply(q, xs + [x_new], pairs + [new])
            xs.append(x_new)
            pairs.append(new)
        _report(callback, i, t, s, x_new, pairs[i][0])
    return x_new


def _lambdas(sch, ts):
    lam = sch.log_snr(torch.tensor(ts, dtype=torch.float64)).tolist()
    bad = [t for t, v in zip(ts, lam) if not math.isfinite(v) and t != 0]
    if bad:
        raise ValueError(f"schedule.timesteps: the log-SNR is singular (infinite) at "
                         f"t={bad[0]} under the denoiser's schedule; every time but a "
                         f"final t=0 needs a finite one")
    return lam


@torch.no_grad()
def sample_usf(
    denoiser: Denoiser,
    x: torch.Tensor,
    schedule: SolverSchedule,
    *,
    callback: Callable | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""Run a :class:`SolverSchedule` from ``x`` at ``schedule.timesteps[0]`` (USF's
    unified sampler). Each step applies its predictor :class:`Update`

    $$x_s=A\,x_t+b\sum_{k=0}^{p-1}h^{k+1}\varphi_{k+1}(g)\,r_k\hat F^{(k)}_t,$$

    from its start point $t$ to the next grid time $s<t$, $h=\lambda_s-\lambda_t$
    ($A=\alpha_s/\alpha_t$, $b=-\sigma_s$, $g=h$, $F=\hat\epsilon$ for noise;
    $A=\sigma_s/\sigma_t$, $b=\alpha_s$, $g=-h$, $F=\hat x_0$ for data; $r_1$ the
    relaxation, $r_{k>1}=1$; the derivatives from :func:`difference_weights`), an
    order-1 update being the shared DDIM step; then evaluates the model at the new
    point (not after the last step) and applies the corrector, if any, keeping that
    model value. A step to t=0 returns $\hat x_0$. NFE = ``schedule.nfe``.
    ``callback``/``progress`` as in :mod:`dlib.sampling`. Introduced in Part II,
    solver-schedule search chapter."""
    if not isinstance(schedule, SolverSchedule):
        raise ValueError(f"schedule must be a SolverSchedule; got "
                         f"{type(schedule).__name__}")
    ts = _prepare(denoiser, x, list(schedule.timesteps))
    C.optional_function(callback, "callback", "callback(dict)")
    _progress(progress, 0)
    sch = denoiser.schedule
    lam = _lambdas(sch, ts)
    plans = _compile(schedule, ts, lam, sch)
    return _run(denoiser, x, ts, plans, schedule.afs, callback, progress)


# --- the search ---------------------------------------------------------------------
@dataclass(frozen=True)
class SearchResult:
    """What :func:`search_solver_schedule` returns: the best ``schedule``, its
    ``error`` on the search set, the starting schedule's ``start_error``, the best
    error after each evaluation (``history``) and ``n_evaluated``."""

    schedule: SolverSchedule
    error: float
    start_error: float
    history: tuple[float, ...]
    n_evaluated: int


def _default_points(start, n, corrector, avail):
    """USF's default active points: the new point first (corrector), then the
    points after the start nearest first, then the ones before it."""
    pts = [0] if corrector else []
    later = list(range(start - 1, 0, -1))
    earlier = list(range(start + 1, avail + 1))
    for p in later + earlier:
        if len(pts) >= n + int(corrector):
            break
        pts.append(p)
    return tuple(pts)


def _genes(sched):
    """Per-step decisions of a schedule as mutable dicts."""
    genes = []
    for u, c in zip(sched.steps, sched.correctors):
        genes.append({
            "order": u.order, "prediction": u.prediction, "start": u.start,
            "extra": int(len(u.points) > u.order - 1), "relaxation": u.relaxation,
            "coef": u.coef, "corrector": c is not None,
            "crelax": "none" if c is None else c.relaxation,
            "ccoef": 0.0 if c is None else c.coef})
    return genes


def _build(ts, genes, afs):
    """A valid schedule from (possibly invalid) decisions: orders lowered to what the
    history allows, points by USF's default rule, no corrector where none fits."""
    n = len(genes)
    steps, cors = [], []
    for i, g in enumerate(genes):
        jump = ts[i + 1] == 0
        start = g["start"] if g["start"] <= i + 1 and not jump else 1
        order = 1 if jump else max(1, min(g["order"], i + 1, 3))
        if start > 1 and order == 1:
            start = 1
        if order == 1:
            u = Update(1, g["prediction"], start)
        else:
            npts = min(order - 1 + g["extra"], i)
            pts = _default_points(start, npts, False, i + 1)
            u = Update(order, g["prediction"], start, pts, g["relaxation"], g["coef"])
        steps.append(u)
        c = None
        if g["corrector"] and i < n - 1 and not ts[i + 1] == 0:
            cpts = (0,) + u.points
            corder = min(u.order + 1, MAX_ORDER, len(cpts) + 1)
            c = Update(corder, u.prediction, u.start, cpts, g["crelax"], g["ccoef"])
        cors.append(c)
    return SolverSchedule(tuple(ts), tuple(steps), tuple(cors), afs)


class _Searcher:
    """The evolutionary search's moves (see :func:`search_solver_schedule`)."""

    ORDER_PRIOR = ((1, 0.2), (2, 0.5), (3, 0.3))
    RELAX_PRIOR = (("none", 0.4), ("dpmsolver-2", 0.3), ("unipc-bh1", 0.15),
                   ("linear", 0.15))

    def __init__(self, sch, t0, t_range, rate, decisions, rng):
        self.sch, self.rate, self.free, self.rng = sch, rate, set(decisions), rng
        self.t0, self.t_lo, self.t_hi = t0, *t_range
        lam = sch.log_snr(torch.tensor([t0, self.t_lo], dtype=torch.float64)).tolist()
        self.lam_span = lam[1] - lam[0]

    def pick(self, prior):
        r, acc = self.rng.random(), 0.0
        for v, p in prior:
            acc += p
            if r < acc:
                return v
        return prior[-1][0]

    def hit(self, what):
        return what in self.free and self.rng.random() < self.rate

    def times(self, ts):
        """Jitter the free times in lambda (sigma 3 % of the range) and keep t_0; the
        last positive time (before a final jump to 0, or the final time itself) stays
        in [t_lo, t_hi]. None if two times coincide."""
        ts = list(ts)
        jump = ts[-1] == 0
        last = len(ts) - 2 if jump else len(ts) - 1  # index of the last positive time
        if "times" in self.free:
            idx = [j for j in range(1, last + 1) if self.rng.random() < self.rate]
            if idx:
                lam = self.sch.log_snr(torch.tensor([ts[j] for j in idx],
                                                    dtype=torch.float64))
                lam = lam + torch.tensor([self.rng.gauss(0.0, 0.03 * self.lam_span)
                                          for _ in idx], dtype=torch.float64)
                new = self.sch.t_from_log_snr(lam.clamp(*self.sch.log_snr_range()))
                for j, t in zip(idx, new.tolist()):
                    ts[j] = t
        inner = sorted((min(max(t, self.t_lo), self.t0) for t in ts[1:last + 1]),
                       reverse=True)
        if inner:
            inner[-1] = min(max(inner[-1], self.t_lo), self.t_hi)
        ts = [ts[0]] + inner + ([0.0] if jump else [])
        if any(b >= a * (1 - 1e-6) for a, b in zip(ts[:-1], ts[1:])):
            return None
        return ts

    def toggle_end(self, ts, genes):
        """Switch between ending with the jump to sigma = 0 (one evaluation at the last
        positive time, then x0_hat) and ending at the last positive time; a time is
        added or removed elsewhere so that the NFE stays the same."""
        if ts[-1] == 0:
            ts, genes = ts[:-1], genes[:-1]
            j = self.rng.randrange(0, len(ts) - 1)
            lam = self.sch.log_snr(torch.tensor(ts[j:j + 2], dtype=torch.float64))
            mid = float(self.sch.t_from_log_snr(lam.mean()))
            return ts[:j + 1] + [mid] + ts[j + 1:], genes[:j + 1] + [dict(
                genes[j], order=1)] + genes[j + 1:]
        if len(ts) < 3:
            return ts, genes
        j = self.rng.randrange(1, len(ts) - 1)
        ts, genes = ts[:j] + ts[j + 1:], genes[:j] + genes[j + 1:]
        return ts + [0.0], genes + [dict(genes[-1], order=1, corrector=False)]

    def mutate(self, ts, genes, afs):
        genes = [dict(g) for g in genes]
        if self.hit("afs"):
            ts, genes, afs = self.toggle_afs(ts, genes, afs)
        if self.hit("end"):
            ts, genes = self.toggle_end(ts, genes)
        for g in genes:
            if self.hit("orders"):
                g["order"] = self.pick(self.ORDER_PRIOR)
            if self.hit("predictions"):
                g["prediction"] = self.rng.choice(PREDICTIONS)
            if self.hit("points"):
                g["extra"] = 1 - g["extra"]
            if self.hit("relaxations"):
                g["relaxation"] = self.pick(self.RELAX_PRIOR)
                if g["relaxation"] == "linear":
                    g["coef"] = self.rng.gauss(0.0, 0.1)
            elif g["relaxation"] == "linear" and self.hit("relaxations"):
                g["coef"] += self.rng.gauss(0.0, 0.03)
            if self.hit("starts"):
                g["start"] = 2 if g["start"] == 1 and self.rng.random() < 0.3 else 1
            if self.hit("correctors"):
                g["corrector"] = not g["corrector"]
                g["crelax"] = self.pick(self.RELAX_PRIOR)
        return self.times(ts), genes, afs

    def toggle_afs(self, ts, genes, afs):
        """The analytic first step saves an evaluation: switching it on adds a step
        (a new time in the middle of a random interval), off removes one."""
        jump = ts[-1] == 0
        last = len(ts) - (2 if jump else 1)
        if not afs:
            j = self.rng.randrange(0, last)
            lam = self.sch.log_snr(torch.tensor(ts[j:j + 2], dtype=torch.float64))
            mid = float(self.sch.t_from_log_snr(lam.mean()))
            return ts[:j + 1] + [mid] + ts[j + 1:], genes[:j + 1] + [dict(
                genes[j], order=1)] + genes[j + 1:], True
        if last < 2:
            return ts, genes, afs
        j = self.rng.randrange(1, last)
        return ts[:j] + ts[j + 1:], genes[:j] + genes[j + 1:], False

    def crossover(self, a, b):
        (ta, ga, fa), (tb, gb, fb) = a, b
        if len(ta) != len(tb) or fa != fb:
            return a
        ts = [x if self.rng.random() < 0.5 else y for x, y in zip(ta, tb)]
        gs = [x if self.rng.random() < 0.5 else y for x, y in zip(ga, gb)]
        ts = [ts[0]] + sorted(ts[1:], reverse=True)
        if any(y >= x for x, y in zip(ts[:-1], ts[1:])):
            return a
        return ts, gs, fa


def _key(s):
    return (tuple(round(t, 9) for t in s.timesteps), s.steps, s.correctors, s.afs)


@torch.no_grad()
def search_solver_schedule(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    reference: torch.Tensor,
    nfe: int,
    *,
    start: SolverSchedule | None = None,
    budget: int = 300,
    seed: int = 0,
    t_min_range: tuple[float, float] = (1e-4, 1e-2),
    mutation_rate: float = 0.3,
    top_k: int = 15,
    decisions=DECISIONS,
    progress: bool | None = None,
) -> SearchResult:
    r"""Search the solver schedule at a fixed ``nfe`` (S3's evolutionary search, at
    CPU scale): candidates are scored by the RMS error of :func:`sample_usf` from
    ``x_T`` against ``reference`` (the converged solutions from the same noise), not
    by FID, and there is no learned predictor pre-screening candidates.

    The population starts from ``start`` (default: DPM-Solver++(2M) on a grid
    uniform in $\lambda$ from ``x_T``'s time 1 to $10^{-3}$ with the final jump to
    $\sigma=0$); each new candidate mutates a parent drawn by rank from the
    ``top_k`` best (after a crossover with a second parent of the same length with
    probability 1/2): each free decision of each step changes with probability
    ``mutation_rate``: times (a Gaussian jitter in $\lambda$, 3 % of the range; the
    last positive time stays in ``t_min_range``), the end (a final jump to
    $\sigma=0$ or not, at the same NFE), order (prior 1: 0.2, 2: 0.5,
    3: 0.3), prediction, one more estimation point, relaxation, start point,
    corrector, analytic first step (which adds a step at the same NFE); a linear
    relaxation's coefficient starts from N(0, 0.1^2) and is jittered by
    N(0, 0.03^2). Invalid choices are lowered to what the history allows.
    ``decisions`` restricts what may change (a subset of ``"times", "end",
    "orders", "predictions", "points", "relaxations", "starts", "correctors",
    "afs"``).
    ``budget`` evaluations,
    ``seed`` makes it reproducible; the start is always in the population, so the
    result is never worse than it on the search set. Introduced in Part II,
    solver-schedule search chapter."""
    C.denoiser(denoiser)
    denoiser._check_x(x_T, "x_T")
    ref = C.batch(reference, "reference")
    if ref.shape != x_T.shape:
        raise ValueError(f"reference must have x_T's shape {tuple(x_T.shape)}; got "
                         f"{tuple(ref.shape)}")
    nfe = _int(nfe, "nfe", 2, 100)
    budget = _int(budget, "budget", 1)
    rng = random.Random(C.seed(seed))
    lo, hi = C.time_range(t_min_range, "t_min_range")
    if lo <= 0:
        raise ValueError(f"t_min_range must be above 0; got {t_min_range!r}")
    rate = C.in_range(mutation_rate, "mutation_rate", 0.0, 1.0, lo_open=True)
    top_k = _int(top_k, "top_k", 1)
    if isinstance(decisions, str) or not set(decisions) <= set(DECISIONS) or \
            not decisions:
        raise ValueError(f"decisions must be a non-empty collection of "
                         f"{DECISIONS}; got {decisions!r}")
    sch = denoiser.schedule
    if start is None:
        from ..sampling import time_grid
        ts = time_grid(nfe - 1, 1.0, 1e-3, spacing="log_snr", schedule=sch,
                       final_zero=True)
        start = SolverSchedule.dpm_solver(ts, sch, order=2)
    if not isinstance(start, SolverSchedule):
        raise ValueError(f"start must be a SolverSchedule; got {type(start).__name__}")
    if start.nfe != nfe:
        raise ValueError(f"start spends {start.nfe} evaluations; nfe={nfe} asked")
    if not lo < start.timesteps[0]:
        raise ValueError("t_min_range must lie below start's first time")
    _lambdas(sch, list(start.timesteps))
    x_T = x_T.detach()

    def score(s):
        ts = list(s.timesteps)
        out = _run(denoiser, x_T, ts, _compile(s, ts, _lambdas(sch, ts), sch), s.afs)
        if not bool(torch.isfinite(out).all()):
            return math.inf
        return float(((out.to(ref.dtype) - ref) ** 2).mean().sqrt())

    moves = _Searcher(sch, start.timesteps[0], (lo, hi), rate, decisions, rng)
    first = score(start)
    pop = [(first, 0, start)]
    seen = {_key(start)}
    history = [first]
    bar = tqdm(total=budget, desc="S3 search", leave=False,
               disable=not _progress(progress, budget))
    bar.update(1)
    attempts = 0
    while len(history) < budget and attempts < 50 * budget:
        attempts += 1
        ranked = sorted(pop)[:top_k]
        weights = [1.0 / (r + 1) for r in range(len(ranked))]
        par = rng.choices(ranked, weights)[0][2]
        gene = (list(par.timesteps), _genes(par), par.afs)
        if rng.random() < 0.5 and len(ranked) > 1:
            other = rng.choices(ranked, weights)[0][2]
            gene = moves.crossover(gene, (list(other.timesteps), _genes(other),
                                          other.afs))
        ts, genes, afs = moves.mutate(*gene)
        if ts is None:
            continue
        try:
            cand = _build(ts, genes, afs)
        except ValueError:
            continue
        if cand.nfe != nfe or _key(cand) in seen:
            continue
        seen.add(_key(cand))
        pop.append((score(cand), len(pop), cand))
        history.append(min(history[-1], pop[-1][0]))
        bar.update(1)
    bar.close()
    best = min(pop)
    return SearchResult(best[2], best[0], first, tuple(history), len(history))
