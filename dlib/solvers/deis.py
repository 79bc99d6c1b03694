"""DEIS: multistep exponential integrators with polynomial extrapolation of the noise
prediction in t (tAB) or in rho (rhoAB), the improved PNDM (iPNDM: Adams-Bashforth in
rho with the fixed equal-step coefficients) and Runge-Kutta in rho (rhoRK)
(Part II, DEIS chapter)."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .. import _checks as C
from .._loop import _prepare, _report, _steps
from ..param import Denoiser
from ._core import ALPHA_PAIR, _check_below, _first_order, _orders

__all__ = ["sample_deis", "sample_deis_rk"]

DEIS_VARIANTS = ("tab", "rhoab", "ipndm")
# Butcher tableaus (c, a, b) of the explicit Runge-Kutta methods of sample_deis_rk,
# with their order; the official code's "1euler", "2heun", "3kutta", "3ral", "4rk"
RK_TABLEAUS = {
    "euler": (1, [0.0], [[]], [1.0]),
    "heun": (2, [0.0, 1.0], [[], [1.0]], [0.5, 0.5]),
    "kutta": (3, [0.0, 0.5, 1.0], [[], [0.5], [-1.0, 2.0]], [1 / 6, 4 / 6, 1 / 6]),
    "ralston": (3, [0.0, 0.5, 0.75], [[], [0.5], [0.0, 0.75]], [2 / 9, 1 / 3, 4 / 9]),
    "rk4": (4, [0.0, 0.5, 0.5, 1.0], [[], [0.5], [0.0, 0.5], [0.0, 0.0, 1.0]],
            [1 / 6, 1 / 3, 1 / 3, 1 / 6]),
}
_GL_NODES = 32  # Gauss-Legendre nodes per panel of the tAB coefficient quadrature
_GL_PANEL = 1.0  # the widest panel in lambda


def _rho_weights(dr: list[float], H: float) -> list[float]:
    r"""$W_j=\int_0^H\ell_j(u)\,du$ for the Lagrange basis $\ell_j$ on the nodes
    $u_0=0,u_1=d_1,u_2=d_2$ (``dr`` = $[d_1,\dots]$, $u=\rho-\rho_i$), written out for
    k = len(dr) + 1 points (1 to 4):

    - k = 1: $W_0=H$;
    - k = 2: $W_0=H-\frac{H^2}{2d_1}$, $W_1=\frac{H^2}{2d_1}$;
    - k = 3: $W_0=\frac{H^3/3-(d_1+d_2)H^2/2+d_1d_2H}{d_1d_2}$,
      $W_1=\frac{H^3/3-d_2H^2/2}{d_1(d_1-d_2)}$,
      $W_2=\frac{H^3/3-d_1H^2/2}{d_2(d_2-d_1)}$;
    - k = 4: the same definition, integrated by polynomial arithmetic."""
    if not dr:
        return [H]
    if len(dr) == 1:
        (d1,) = dr
        w1 = H * H / (2 * d1)
        return [H - w1, w1]
    if len(dr) == 3:  # k = 4: the same integrals, by polynomial arithmetic
        u = [0.0] + list(dr)
        out = []
        for j in range(4):
            rest = [um for m, um in enumerate(u) if m != j]
            num = np.polyint(np.poly(rest))  # antiderivative of prod (u - u_m)
            out.append(float(np.polyval(num, H)) / math.prod(u[j] - um for um in rest))
        return out
    d1, d2 = dr
    h2, h3 = H * H / 2, H**3 / 3
    return [
        (h3 - (d1 + d2) * h2 + d1 * d2 * H) / (d1 * d2),
        (h3 - d2 * h2) / (d1 * (d1 - d2)),
        (h3 - d1 * h2) / (d2 * (d2 - d1)),
    ]


def _tab_weights(sch, lam_t: float, lam_s: float, nodes_t: list[float],
                 n_nodes: int = _GL_NODES, panel: float = _GL_PANEL) -> list[float]:
    r"""$\int_{\lambda_t}^{\lambda_s}e^{\lambda_s-\lambda}\ell_j(t(\lambda))\,
    d\lambda$ for the Lagrange basis $\ell_j$ in t on ``nodes_t`` (newest first), by
    composite Gauss-Legendre quadrature in float64: panels of width <= ``panel`` in
    lambda, ``n_nodes`` nodes each. The integrand is analytic in a strip around the
    real lambda axis (for VP-linear the nearest singularity of $t(\lambda)$
    is $\pi/2$ away), so on panels of width 1 the quadrature error of 32 nodes is far
    below float64 round-off (tests/test_solvers.py compares with a finer one)."""
    lam, wts = _gl_rule(lam_t, lam_s, n_nodes, panel)
    tau = sch.t_from_log_snr(torch.from_numpy(lam)).numpy()
    return _lagrange_integrals(tau, wts, nodes_t)


def _gl_rule(lam_t, lam_s, n_nodes=_GL_NODES, panel=_GL_PANEL):
    """Nodes in lambda and weights (times e^{lambda_s - lambda}) of the composite
    Gauss-Legendre rule of :func:`_tab_weights`."""
    m = max(1, math.ceil(abs(lam_s - lam_t) / panel))
    g, w = np.polynomial.legendre.leggauss(n_nodes)
    edges = np.linspace(lam_t, lam_s, m + 1)
    mid, half = (edges[1:] + edges[:-1]) / 2, (edges[1:] - edges[:-1]) / 2
    lam = (mid[:, None] + half[:, None] * g[None, :]).ravel()
    return lam, (half[:, None] * w[None, :]).ravel() * np.exp(lam_s - lam)


def _lagrange_integrals(tau, wts, nodes_t):
    """sum(wts * l_j(tau)) for the Lagrange basis l_j in t on ``nodes_t``."""
    out = []
    for j, tj in enumerate(nodes_t):
        basis = wts
        for m, tm in enumerate(nodes_t):
            if m != j:
                basis = basis * (tau - tm) / (tj - tm)
        out.append(float(basis.sum()))
    return out


def _deis_plan(sch, ts, lam, orders, variant):
    """Per step: (a, [c_0, c_1, ...]) with x_s = a x_t + sum_j c_j eps_{i-j}, or None
    for a DDIM step (order 1 with an infinite h, from alpha_t < ALPHA_PAIR where the
    exponential weights cancel catastrophically, or the jump to t=0)."""
    rules = {}  # tab: the quadrature nodes of every step, mapped to t in one call
    if variant == "tab":
        for i, k in enumerate(orders):
            if ts[i + 1] != 0 and math.isfinite(lam[i + 1] - lam[i]):
                rules[i] = _gl_rule(lam[i], lam[i + 1])
        if rules:
            allnodes = torch.from_numpy(np.concatenate([r[0] for r in rules.values()]))
            tau = sch.t_from_log_snr(allnodes).numpy()
            sizes = np.cumsum([len(r[0]) for r in rules.values()])[:-1]
            for i, part in zip(list(rules), np.split(tau, sizes)):
                rules[i] = (part, rules[i][1])
    plan = []
    for i, k in enumerate(orders):
        if (ts[i + 1] == 0 or not math.isfinite(lam[i + 1] - lam[i])
                or sch._coefficients(ts[i]).alpha < ALPHA_PAIR):
            plan.append(None)
            continue
        ct, cs = sch._coefficients(ts[i]), sch._coefficients(ts[i + 1])
        a = cs.alpha / ct.alpha
        if variant == "rhoab":
            cj = [sch._coefficients(ts[i - j]) for j in range(k)]
            rho = [c_.sigma / c_.alpha for c_ in cj]
            H = cs.sigma / cs.alpha - rho[0]
            c = [cs.alpha * wj for wj in _rho_weights([r - rho[0] for r in rho[1:]], H)]
        elif variant == "ipndm":  # the same weights as if the past steps were equal
            H = cs.sigma / cs.alpha - ct.sigma / ct.alpha
            ab = _rho_weights([-float(j) for j in range(1, k)], 1.0)
            c = [cs.alpha * H * wj for wj in ab]
        else:
            tau, wts = rules[i]
            nodes = [ts[i - j] for j in range(k)]
            c = [-cs.sigma * wj for wj in _lagrange_integrals(tau, wts, nodes)]
        plan.append((a, c))
    return plan


@torch.no_grad()
def sample_deis(
    denoiser: Denoiser,
    x: torch.Tensor,
    ts,
    *,
    order: int = 3,
    variant: str = "tab",
    lower_order_final: bool = False,
    lower_order_below: int | float = 10,
    callback: Callable | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""DEIS (Zhang & Chen 2022), multistep exponential integrators with the noise
    prediction: step i from $t_i$ to $t_{i+1}$ of order k uses
    $\hat\epsilon_{i-j}=\hat\epsilon(x_{t_{i-j}},t_{i-j})$, $j<k$, and

    - ``variant="tab"`` (tAB-DEIS): $x_{t_{i+1}}=\frac{\alpha_{t_{i+1}}}{\alpha_{t_i}}
      x_{t_i}+\sum_jC_{ij}\hat\epsilon_{i-j}$ with
      $C_{ij}=-\sigma_{t_{i+1}}\int_{\lambda_{t_i}}^{\lambda_{t_{i+1}}}
      e^{\lambda_{t_{i+1}}-\lambda}\ell_j(t(\lambda))\,d\lambda$, $\ell_j$ the
      Lagrange basis in t on $t_i,\dots,t_{i-k+1}$: the exact weight of the
      exponential integrator times the polynomial extrapolation of $\hat\epsilon$ in
      t. The integrals are computed once per grid by composite Gauss-Legendre
      quadrature in $\lambda$ (float64, accurate to round-off for these smooth
      integrands; see :func:`_tab_weights`).
    - ``variant="rhoab"`` ($\rho$AB-DEIS): in $\rho=\sigma/\alpha=e^{-\lambda}$ and
      $\bar x=x/\alpha$ the PF-ODE is $d\bar x/d\rho=\hat\epsilon$; Adams-Bashforth
      in $\rho$: $\bar x_{i+1}=\bar x_i+\sum_jW_{ij}\hat\epsilon_{i-j}$,
      $W_{ij}=\int_{\rho_i}^{\rho_{i+1}}\ell^\rho_j(\rho)\,d\rho$ in closed form
      (:func:`_rho_weights`), $\ell^\rho_j$ the Lagrange basis in $\rho$.
    - ``variant="ipndm"`` (iPNDM, the DEIS paper's improved PNDM): the same update
      with the weights of equal steps,
      $W_{ij}=(\rho_{i+1}-\rho_i)\,b^{(k)}_j$, $b^{(1)}=(1)$,
      $b^{(2)}=(3,-1)/2$, $b^{(3)}=(23,-16,5)/12$, $b^{(4)}=(55,-59,37,-9)/24$
      (PNDM's Adams-Bashforth coefficients; the official code's warm-up uses orders
      1, 2, 3 where PNDM uses Runge-Kutta steps). It is the DDIM step with
      $\hat\epsilon_i$ replaced by $\sum_jb^{(k)}_j\hat\epsilon_{i-j}$. Of order k
      on a grid uniform in $\rho$ only: on any other grid the fixed weights make it
      second order at best (the DEIS chapter measures both).

    ``order`` k (1 to 4) is the number of points of the polynomial (degree k - 1) and
    the order of convergence; the paper and the official code name the degree, so
    their tAB3 (the official default) is ``order=4`` here and DDIM is their tAB0;
    the paper's iPNDM is ``variant="ipndm", order=4``.
    Order 1 is DDIM in every variant:
    $x_{t_{i+1}}=\frac{\alpha_{t_{i+1}}}{\alpha_{t_i}}x_{t_i}-\sigma_{t_{i+1}}
    (e^h-1)\hat\epsilon_i$. The order of each step follows :func:`step_orders`
    (multistep warm-up: orders 1, 2, ... as the history fills; lowering at the end
    only with ``lower_order_final``, off by default as in the paper and the official
    code). A step to t=0 (the final jump, returning $\hat x_0$) or with an infinite
    h (from $\alpha=0$) is a DDIM step. NFE: one per step. Introduced in Part II,
    DEIS chapter."""
    ts = _prepare(denoiser, x, ts)
    order = C.positive_int(order, "order", maximum=4)
    C.one_of(variant, DEIS_VARIANTS, "variant")
    C.flag(lower_order_final, "lower_order_final")
    below = _check_below(lower_order_below)
    C.optional_function(callback, "callback", "callback(dict)")
    sch = denoiser.schedule
    lam = sch.log_snr(torch.tensor(ts, dtype=torch.float64)).tolist()
    orders = _orders(ts, lam, order, True, lower_order_final, below)
    plan = _deis_plan(sch, ts, lam, orders, variant)
    past = []  # the noise predictions at this and the previous grid points
    for i, t, s in _steps(ts, progress, "DEIS"):
        x0, eps = denoiser._x0_eps(x, t)
        past = ([eps] + past)[:order]
        if s == 0:  # the final jump returns x0_hat, as in dlib.sampling
            x = x0
        elif plan[i] is None:
            ct, cs = sch._coefficients(t), sch._coefficients(s)
            x = _first_order(x, x0, eps, ct, cs, lam[i + 1] - lam[i], False)
        else:
            a, c = plan[i]
            x = x.mul(a)
            for cj, ej in zip(c, past):
                x = x.add_(ej, alpha=cj)
        _report(callback, i, t, s, x, x0)
    return x


def _rk_plan(sch, ts, lam, c_nodes):
    """Per step: None for a DDIM step (to t=0, an infinite h, or from alpha_t <
    ALPHA_PAIR), else (rho_t, H,
    stages) with stages = [(t_m, alpha_m)] at rho_t + c_m H, the stage times mapped
    back to t in one call (c = 0 and c = 1 are the grid times themselves)."""
    inner, plan = [], []
    for i in range(len(ts) - 1):
        if (ts[i + 1] == 0 or not math.isfinite(lam[i + 1] - lam[i])
                or sch._coefficients(ts[i]).alpha < ALPHA_PAIR):
            plan.append(None)
            continue
        ct, cs = sch._coefficients(ts[i]), sch._coefficients(ts[i + 1])
        rt, rs = ct.sigma / ct.alpha, cs.sigma / cs.alpha
        for cm in c_nodes:
            if 0 < cm < 1:
                inner.append(-math.log(rt + cm * (rs - rt)))
        plan.append([rt, rs - rt])
    tau = []
    if inner:
        tau = sch.t_from_log_snr(torch.tensor(inner, dtype=torch.float64)).tolist()
    it = iter(tau)
    for i, p in enumerate(plan):
        if p is None:
            continue
        stages = []
        for cm in c_nodes:
            tm = ts[i] if cm == 0 else ts[i + 1] if cm == 1 else next(it)
            stages.append((tm, sch._coefficients(tm).alpha))
        p.append(stages)
    return plan


@torch.no_grad()
def sample_deis_rk(
    denoiser: Denoiser,
    x: torch.Tensor,
    ts,
    *,
    tableau: str = "kutta",
    callback: Callable | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""$\rho$RK-DEIS (Zhang & Chen 2022): a classical explicit Runge-Kutta method on
    the probability-flow ODE written in $\rho=\sigma_t/\alpha_t=e^{-\lambda_t}$ and
    $\bar x=x/\alpha_t$,

    $$\frac{d\bar x}{d\rho}=\hat\epsilon(\alpha_{t(\rho)}\bar x,\,t(\rho)),$$

    where the linear part of the ODE has disappeared. Step i from $\rho_i$ to
    $\rho_{i+1}$ ($H=\rho_{i+1}-\rho_i<0$) with the tableau $(c,a,b)$:
    $k_m=\hat\epsilon(\alpha_{t_m}(\bar x_i+H\sum_{l<m}a_{ml}k_l),t_m)$ at
    $\rho_i+c_mH$, whose time $t_m=t(\rho_i+c_mH)$ comes from the schedule's
    inverse log-SNR, and $\bar x_{i+1}=\bar x_i+H\sum_mb_mk_m$.

    ``tableau``: ``"euler"`` (order 1: exactly DDIM), ``"heun"`` (2), ``"kutta"``
    (Kutta's third-order method, the official default), ``"ralston"`` (Ralston's
    third-order method) or ``"rk4"`` (the classic fourth-order method). NFE: the
    number of stages per step; a step to t=0 (the final jump, returning $\hat x_0$)
    or with an infinite h (from $\alpha=0$) is a DDIM step with one evaluation.
    Exact when $\hat\epsilon$ is a polynomial in $\rho$ of degree below the order.
    Introduced in Part II, DEIS chapter."""
    ts = _prepare(denoiser, x, ts)
    C.one_of(tableau, tuple(RK_TABLEAUS), "tableau")
    C.optional_function(callback, "callback", "callback(dict)")
    _, c_nodes, a, b = RK_TABLEAUS[tableau]
    sch = denoiser.schedule
    lam = sch.log_snr(torch.tensor(ts, dtype=torch.float64)).tolist()
    plan = _rk_plan(sch, ts, lam, c_nodes)
    for i, t, s in _steps(ts, progress, "DEIS-RK"):
        if plan[i] is None:
            x0, eps = denoiser._x0_eps(x, t)
            ct, cs = sch._coefficients(t), sch._coefficients(s)
            x = x0 if s == 0 else _first_order(x, x0, eps, ct, cs,
                                               lam[i + 1] - lam[i], False)
            _report(callback, i, t, s, x, x0)
            continue
        _, H, stages = plan[i]
        v = x / stages[0][1]
        ks, x0 = [], None
        for m, (tm, am) in enumerate(stages):
            vm = v
            for aml, kl in zip(a[m], ks):
                if aml != 0:
                    vm = vm + (H * aml) * kl
            x0m, km = denoiser._x0_eps(vm * am if m else x, tm)
            x0 = x0m if m == 0 else x0
            ks.append(km)
        for bm, km in zip(b, ks):
            if bm != 0:
                v = v + (H * bm) * km
        x = v * sch._coefficients(s).alpha
        _report(callback, i, t, s, x, x0)
    return x
