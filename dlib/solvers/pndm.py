"""PNDM: pseudo numerical methods for diffusion models, S-PNDM and F-PNDM
(Part II, DDIM and PNDM chapter)."""

from __future__ import annotations

import math
from typing import Callable

import torch

from .. import _checks as C
from .._loop import _prepare, _report, _steps
from ..param import Denoiser
from ._core import _first_order

__all__ = ["sample_pndm"]

PNDM_VARIANTS = ("f", "s")
_PLMS = (55 / 24, -59 / 24, 37 / 24, -9 / 24)  # Adams-Bashforth 4, newest first
_WARMUP = {"f": 3, "s": 1}  # pseudo Runge-Kutta steps before the multistep rule


@torch.no_grad()
def sample_pndm(
    denoiser: Denoiser,
    x: torch.Tensor,
    ts,
    *,
    variant: str = "f",
    callback: Callable | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""PNDM (Liu et al. 2022): every step from $t$ to $s<t$ is the DDIM step (the
    *transfer part*, :func:`dlib.solvers.first_order_step` in noise form)
    $x_s=\frac{\alpha_s}{\alpha_t}x_t-\sigma_s(e^h-1)\,e'$, $h=\lambda_s-\lambda_t$,
    with the model's noise prediction replaced by a combination $e'$ of several
    predictions (the *gradient part*). With $\mathcal T(x,e,t,s)$ that step (the
    paper's $\phi$, renamed: $\varphi_k$ are the phi-functions) and
    $\hat\epsilon(\cdot,\cdot)$ the model's noise prediction:

    - ``variant="f"`` (F-PNDM): the first three steps are pseudo Runge-Kutta steps
      (4 evaluations each, midpoint $u=(t+s)/2$ in time, every stage starting from
      $x_t$): $e_1=\hat\epsilon(x_t,t)$, $e_2=\hat\epsilon(\mathcal T(x_t,e_1,t,u),u)$,
      $e_3=\hat\epsilon(\mathcal T(x_t,e_2,t,u),u)$,
      $e_4=\hat\epsilon(\mathcal T(x_t,e_3,t,s),s)$,
      $e'=(e_1+2e_2+2e_3+e_4)/6$; then the pseudo linear multistep rule
      $e'=(55e_0-59e_1+37e_2-9e_3)/24$ with $e_j$ the prediction at the grid point j
      steps back (one evaluation per step). The history holds only $e_1$ of each
      warm-up step, as in the official code.
    - ``variant="s"`` (S-PNDM): one pseudo improved Euler step (2 evaluations:
      $e_1=\hat\epsilon(x_t,t)$, $e_2=\hat\epsilon(\mathcal T(x_t,e_1,t,s),s)$,
      $e'=(e_1+e_2)/2$), then $e'=(3e_0-e_1)/2$.

    The multistep weights assume equal steps in the variable in which $e'$ is
    averaged: in $\rho=\sigma/\alpha$ with $\bar x=x/\alpha$ the PF-ODE reads
    $d\bar x/d\rho=\hat\epsilon$ and the transfer is $\bar x_s=\bar x_t+
    (\rho_s-\rho_t)e'$, so on a grid uniform in $\rho$ whose time midpoints are
    midpoints in $\rho$ ($\rho$ affine in $t$), F-PNDM is classical RK4 + AB4 in
    $\rho$ (order 4); on other grids both variants are second order (measured in
    tests/test_pndm.py and in the chapter).

    NFE, for a grid of n steps between positive times: F-PNDM $4\min(n,3)+
    \max(n-3,0)$ ($=n+9$ for $n\ge3$), S-PNDM $n+1$. A step to t=0 (the final jump,
    which returns $\hat x_0$ as every sampler of :mod:`dlib.sampling`) costs one
    more. A step from a time where $\alpha_t=0$ (infinite $h$) is a plain DDIM step
    (one evaluation) and the warm-up starts after it. ``callback`` and ``progress``
    as in :mod:`dlib.sampling`. Introduced in Part II, DDIM and PNDM chapter."""
    ts = _prepare(denoiser, x, ts)
    C.one_of(variant, PNDM_VARIANTS, "variant")
    C.optional_function(callback, "callback", "callback(dict)")
    sch = denoiser.schedule
    n = len(ts) - 1
    mids = [0.5 * (t + s) for t, s in zip(ts[:-1], ts[1:])]
    lam = sch.log_snr(torch.tensor(ts + mids, dtype=torch.float64)).tolist()
    lam, lam_mid = lam[: n + 1], lam[n + 1 :]
    warmup, past = _WARMUP[variant], []  # past: e_1 of the previous steps, newest last
    name = "F-PNDM" if variant == "f" else "S-PNDM"
    for i, t, s in _steps(ts, progress, name):
        x0, e1 = denoiser._x0_eps(x, t)
        ct, cs = sch._coefficients(t), sch._coefficients(s)
        h = lam[i + 1] - lam[i]
        if s == 0:  # the final jump returns x0_hat, as in dlib.sampling
            x = x0
        elif not math.isfinite(h):  # from alpha_t = 0: a DDIM step in pair form
            x = _first_order(x, x0, e1, ct, cs, h, False)
            past = []
        else:
            if len(past) < warmup:
                e = _warmup_step(denoiser, x, e1, t, s, mids[i], ct, cs, h,
                                 lam_mid[i] - lam[i], variant)
            elif variant == "f":
                e = e1 * _PLMS[0]
                for w, ej in zip(_PLMS[1:], reversed(past[-3:])):
                    e = e.add_(ej, alpha=w)
            else:
                e = torch.add(e1 * 1.5, past[-1], alpha=-0.5)
            past = (past + [e1])[-3:]
            x = _first_order(x, None, e, ct, cs, h, False)
        _report(callback, i, t, s, x, x0)
    return x


def _warmup_step(den, x, e1, t, s, u, ct, cs, h, h_mid, variant):
    """The gradient part e' of a pseudo Runge-Kutta step (F: 3 more evaluations, S:
    1 more); every stage is a transfer from (x, t)."""
    if variant == "s":
        e2 = den._x0_eps(_first_order(x, None, e1, ct, cs, h, False), s)[1]
        return torch.add(e1, e2).mul_(0.5)
    cu = den.schedule._coefficients(u)
    e2 = den._x0_eps(_first_order(x, None, e1, ct, cu, h_mid, False), u)[1]
    e3 = den._x0_eps(_first_order(x, None, e2, ct, cu, h_mid, False), u)[1]
    e4 = den._x0_eps(_first_order(x, None, e3, ct, cs, h, False), s)[1]
    return (e1 + 2 * e2 + 2 * e3 + e4) / 6
