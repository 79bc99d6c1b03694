"""DPM-Solver (noise prediction) and DPM-Solver++ (data prediction): singlestep and
multistep exponential integrators in the log-SNR (Part II, DPM-Solver chapter)."""

from __future__ import annotations

from typing import Callable

import torch

from .. import _checks as C
from .._loop import _prepare, _report, _steps
from ..param import Denoiser
from ._core import METHODS, _check_below, _coefs, _first_order, _orders, _threshold

__all__ = ["sample_dpm_solver", "sample_dpm_solver_pp"]


def _solve(den, x, ts, order, method, r1, lower_final, lower_below, data, thr,
           callback, progress):
    """The loop shared by both samplers (inputs already checked)."""
    sch = den.schedule
    multistep = method == "multistep"
    lam = sch.log_snr(torch.tensor(ts, dtype=torch.float64)).tolist()
    orders = _orders(ts, lam, order, multistep, lower_final, lower_below)
    mids = {}  # step -> [(r, time, coefficients)] of its intermediate points
    if not multistep:
        for i, k in enumerate(orders):
            rs = [r1] if k == 2 else [1 / 3, 2 / 3] if k == 3 else []
            if rs:
                h = lam[i + 1] - lam[i]
                lr = torch.tensor([lam[i] + r * h for r in rs], dtype=torch.float64)
                tr = sch.t_from_log_snr(lr).clamp(ts[i + 1], ts[i]).tolist()
                mids[i] = [(r, u, sch._coefficients(u)) for r, u in zip(rs, tr)]

    def model(y, t):
        x0, eps = den._x0_eps(y, t)
        if thr is not None:  # keep the pair consistent: y = alpha x0 + sigma eps
            c = sch._coefficients(t)
            x0 = _threshold(x0, *thr)
            eps = torch.add(y, x0, alpha=-c.alpha).div_(c.sigma)
        return x0, eps

    past = []  # multistep: (lambda, model output) at the previous grid points
    for i, t, s in _steps(ts, progress, "DPM-Solver++" if data else "DPM-Solver"):
        x0, eps = model(x, t)
        m0 = x0 if data else eps
        ct, cs = sch._coefficients(t), sch._coefficients(s)
        h, k = lam[i + 1] - lam[i], orders[i]
        if s == 0:  # the final jump returns x0_hat, as in dlib.sampling
            x_new = x0
        elif k == 1:
            x_new = _first_order(x, x0, eps, ct, cs, h, data)
        elif multistep:
            x_new = _multistep(x, m0, past, lam[i], ct, cs, h, k, data)
        else:
            x_new = _singlestep(x, m0, model, ct, cs, h, mids[i], data)
        if multistep:
            past = (past + [(lam[i], m0)])[-2:]
        x = x_new
        _report(callback, i, t, s, x, x0)
    return x


def _multistep(x, m0, past, lam_t, ct, cs, h, k, data):
    r"""Order-k multistep update (k = 2, 3) from the model outputs at this and the
    previous grid points; r_j = h_j / h, D1_j = (m_j - m_{j+1}) / r_j. For k = 3,
    D2 ~ h^2 m'' as the Taylor expansion needs; the official code and diffusers use
    half of it, which tests/test_solvers.py measures as a second-order method."""
    a, c1, c2, c3 = _coefs(ct, cs, h, data)
    (lam1, m1) = past[-1]
    r0 = (lam_t - lam1) / h
    d10 = (m0 - m1) / r0
    if k == 2:  # the paper's form: the D1 coefficient is c1 / 2 (= c2 + O(h^2))
        return x.mul(a).add_(m0, alpha=c1).add_(d10, alpha=0.5 * c1)
    (lam2, m2) = past[-2]
    r1 = (lam1 - lam2) / h
    d11 = (m1 - m2) / r1
    d1 = d10 + (d10 - d11) * (r0 / (r0 + r1))
    d2 = (d10 - d11) * (2.0 / (r0 + r1))
    return x.mul(a).add_(m0, alpha=c1).add_(d1, alpha=c2).add_(d2, alpha=c3)


def _singlestep(x, m0, model, ct, cs, h, mids, data):
    """Singlestep update of order len(mids) + 1 (the paper's DPM-Solver-2/-3 and
    DPM-Solver++(2S)/(3S)); the intermediate points at lambda_t + r h are given."""
    def value(y, u):
        return model(y, u)[0 if data else 1]

    a, c1, c2, _ = _coefs(ct, cs, h, data)
    if len(mids) == 1:
        (r1, u1, cu1), = mids
        au, cu, _, _ = _coefs(ct, cu1, r1 * h, data)
        m1 = value(x.mul(au).add_(m0, alpha=cu), u1)
        return x.mul(a).add_(m0, alpha=c1).add_(m1 - m0, alpha=c1 / (2 * r1))
    (r1, u1, cu1), (r2, u2, cu2) = mids
    au1, cv1, _, _ = _coefs(ct, cu1, r1 * h, data)
    m1 = value(x.mul(au1).add_(m0, alpha=cv1), u1)
    au2, cv2, cw2, _ = _coefs(ct, cu2, r2 * h, data)
    y2 = x.mul(au2).add_(m0, alpha=cv2).add_(m1 - m0, alpha=cw2 * r2 / r1)
    m2 = value(y2, u2)
    return x.mul(a).add_(m0, alpha=c1).add_(m2 - m0, alpha=c2 / r2)


def _check_common(denoiser, x, ts, order, method, r1, lower_order_final,
                  lower_order_below, callback):
    ts = _prepare(denoiser, x, ts)
    order = C.positive_int(order, "order", maximum=3)
    C.one_of(method, METHODS, "method")
    r1 = C.in_range(r1, "r1", 0.0, 1.0, lo_open=True)
    C.flag(lower_order_final, "lower_order_final")
    below = _check_below(lower_order_below)
    C.optional_function(callback, "callback", "callback(dict)")
    return ts, order, r1, below


@torch.no_grad()
def sample_dpm_solver(
    denoiser: Denoiser,
    x: torch.Tensor,
    ts,
    *,
    order: int = 2,
    method: str = "multistep",
    r1: float = 0.5,
    lower_order_final: bool = True,
    lower_order_below: int | float = 10,
    callback: Callable | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""DPM-Solver (noise prediction), from $x_t$ at ``ts[0]`` along the grid;
    $h=\lambda_s-\lambda_t$ for a step from $t$ to $s$, $\hat\epsilon_t$ the model's
    noise prediction at $(x_t,t)$:

    - order 1 (DDIM): $x_s=\frac{\alpha_s}{\alpha_t}x_t-\sigma_s(e^h-1)\hat\epsilon_t$;
    - singlestep order 2 (intermediate $u$ at $\lambda_t+r_1h$, ``r1``, default 1/2):
      $x_u$ by order 1, then $x_s=\frac{\alpha_s}{\alpha_t}x_t-\sigma_s(e^h-1)
      \hat\epsilon_t-\frac{\sigma_s}{2r_1}(e^h-1)(\hat\epsilon_u-\hat\epsilon_t)$;
    - singlestep order 3 ($r_1=1/3$, $r_2=2/3$): $x_{u_1}$ by order 1,
      $x_{u_2}=\frac{\alpha_{u_2}}{\alpha_t}x_t
      -\sigma_{u_2}(e^{r_2h}-1)\hat\epsilon_t
      -\frac{r_2}{r_1}\sigma_{u_2}r_2h\varphi_2(r_2h)
      (\hat\epsilon_{u_1}-\hat\epsilon_t)$,
      $x_s=\frac{\alpha_s}{\alpha_t}x_t-\sigma_s(e^h-1)\hat\epsilon_t
      -\frac{\sigma_s}{r_2}h\varphi_2(h)(\hat\epsilon_{u_2}-\hat\epsilon_t)$;
    - multistep order 2: with $m_j$ the predictions at this and past grid points,
      $r_0=h_0/h$, $D_1=(m_0-m_1)/r_0$: $x_s=\frac{\alpha_s}{\alpha_t}x_t-
      \sigma_s(e^h-1)(m_0+\tfrac12D_1)$;
    - multistep order 3: also $D_{1,1}=(m_1-m_2)/r_1$,
      $D_1=D_{1,0}+\frac{r_0}{r_0+r_1}(D_{1,0}-D_{1,1})$ ($\approx h\epsilon'$),
      $D_2=\frac{2}{r_0+r_1}(D_{1,0}-D_{1,1})$ ($\approx h^2\epsilon''$):
      $x_s=\frac{\alpha_s}{\alpha_t}x_t-\sigma_s h[\varphi_1(h)m_0+\varphi_2(h)D_1+
      \varphi_3(h)D_2]$ (the Taylor expansion's coefficients; the official code and
      diffusers weight $D_2$ by 1/2, which makes the method second order).

    The order of each step follows :func:`step_orders` (warm-up, ``lower_order_final``
    below ``lower_order_below`` steps; when ``ts`` ends at 0 the last step is the
    DDIM step to t=0, which returns $\hat x_0$). NFE: multistep one per step;
    singlestep the sum of the step orders. ``callback`` and ``progress`` as in
    :mod:`dlib.sampling`. Introduced in Part II, DPM-Solver chapter."""
    ts, order, r1, below = _check_common(denoiser, x, ts, order, method, r1,
                                         lower_order_final, lower_order_below,
                                         callback)
    return _solve(denoiser, x, ts, order, method, r1, lower_order_final, below,
                  False, None, callback, progress)


@torch.no_grad()
def sample_dpm_solver_pp(
    denoiser: Denoiser,
    x: torch.Tensor,
    ts,
    *,
    order: int = 2,
    method: str = "multistep",
    r1: float = 0.5,
    lower_order_final: bool = True,
    lower_order_below: int | float = 10,
    clip_x0: float | None = None,
    threshold_quantile: float | None = None,
    callback: Callable | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""DPM-Solver++ (data prediction): the updates of :func:`sample_dpm_solver` with
    $\hat x_0$ in place of $\hat\epsilon$, $\sigma_s/\sigma_t$ in place of
    $\alpha_s/\alpha_t$ and $-h$ in the exponentials:

    - order 1 (DDIM): $x_s=\frac{\sigma_s}{\sigma_t}x_t-\alpha_s(e^{-h}-1)\hat x_{0,t}$;
    - 2S: $x_s=\frac{\sigma_s}{\sigma_t}x_t-\alpha_s(e^{-h}-1)\hat x_{0,t}-
      \frac{\alpha_s}{2r_1}(e^{-h}-1)(\hat x_{0,u}-\hat x_{0,t})$;
    - 2M: $x_s=\frac{\sigma_s}{\sigma_t}x_t-\alpha_s(e^{-h}-1)
      [(1+\frac1{2r_0})m_0-\frac1{2r_0}m_1]$;
    - 3M: $x_s=\frac{\sigma_s}{\sigma_t}x_t+\alpha_s h[\varphi_1(-h)m_0+
      \varphi_2(-h)D_1+\varphi_3(-h)D_2]$ ($D$'s as in the noise form); 3S likewise.

    ``clip_x0`` (a bound c > 0) clips every $\hat x_0$ to $[-c,c]$; with
    ``threshold_quantile`` p as well (or alone, c = 1) it is Imagen's dynamic
    thresholding per sample: $s=\max(\mathrm{quantile}_p|\hat x_0|,c)$,
    $\hat x_0\leftarrow\mathrm{clip}(\hat x_0,-s,s)\,c/s$. Only for bounded data.
    Orders, NFE, ``callback`` and ``progress`` as in :func:`sample_dpm_solver`.
    Introduced in Part II, DPM-Solver chapter."""
    ts, order, r1, below = _check_common(denoiser, x, ts, order, method, r1,
                                         lower_order_final, lower_order_below,
                                         callback)
    thr = None
    if clip_x0 is not None or threshold_quantile is not None:
        clip = 1.0 if clip_x0 is None else C.positive(clip_x0, "clip_x0")
        if threshold_quantile is not None:
            threshold_quantile = C.in_range(threshold_quantile, "threshold_quantile",
                                            0.0, 1.0, lo_open=True)
        thr = (clip, threshold_quantile)
    return _solve(denoiser, x, ts, order, method, r1, lower_order_final, below,
                  True, thr, callback, progress)
