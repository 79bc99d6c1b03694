"""DPM-Solver (noise prediction) and DPM-Solver++ (data prediction): singlestep and
multistep exponential integrators in the log-SNR, and the adaptive DPM-Solver-12/-23
(Part II, DPM-Solver chapter)."""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from .. import _checks as C
from .._loop import _prepare, _progress, _report, _steps
from ..param import Denoiser
from ._core import METHODS, _check_below, _coefs, _first_order, _orders, _threshold

__all__ = ["sample_dpm_solver", "sample_dpm_solver_pp", "sample_dpm_solver_adaptive"]


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


_H_MIN = 1e-10  # smallest step in lambda before the adaptive solver gives up


def _adaptive(den, x, t_start, t_end, order, rtol, atol, h, theta, lam_min, data,
              callback, bar):
    """The loop of :func:`sample_dpm_solver_adaptive` (inputs already checked); a
    trial step goes from the current time t to s < t, h = lambda_s - lambda_t."""
    sch = den.schedule
    r1 = 0.5 if order == 2 else 1 / 3
    rs = [r1] if order == 2 else [1 / 3, 2 / 3]

    def lam_of(t):
        return float(sch.log_snr(torch.tensor(t, dtype=torch.float64)))

    def t_of(lam, lo, hi):
        t = sch._t_from_log_snr(torch.tensor(lam, dtype=torch.float64))
        return min(max(float(t), lo), hi)

    t, lam_t, lam_end = t_start, lam_of(t_start), lam_of(t_end)
    x_prev, nfe, grid, rejected, i = x, 0, [t_start], 0, 0
    while t > t_end:
        base = max(lam_t, lam_min)  # the clipped start (see the docstring)
        s = t_end if h >= lam_end - base else t_of(base + h, t_end, t)
        if not s < t or h < _H_MIN:
            raise RuntimeError(
                f"the adaptive step size fell to h={h:.3g} at t={t:.6g} without "
                f"meeting the tolerance: the model is not smooth there, or (noise "
                f"form) alpha is nearly 0 at t_start; loosen rtol/atol, start later "
                f"or use prediction='x0'"
            )
        step = lam_of(s) - lam_t
        ct, cs = sch._coefficients(t), sch._coefficients(s)
        x0, eps = den._x0_eps(x, t)
        m0 = x0 if data else eps
        mids = []
        for r in rs:
            u = t_of(lam_t + r * step, s, t)
            mids.append((r, u, sch._coefficients(u)))
        calls = []

        def model(y, u, calls=calls):  # record the intermediate evaluations
            calls.append(den._x0_eps(y, u))
            return calls[-1]

        x_high = _singlestep(x, m0, model, ct, cs, step, mids, data)
        if order == 2:  # DPM-Solver-1 (DDIM) shares the evaluation at t
            x_low = _first_order(x, x0, eps, ct, cs, step, data)
        else:  # DPM-Solver-2 with r1 = 1/3 shares the evaluation at its midpoint
            x_low = _singlestep(x, m0, lambda y, u: calls[0], ct, cs, step,
                                mids[:1], data)
        nfe += order
        delta = torch.maximum(x_low.abs(), x_prev.abs()).mul_(rtol).clamp_min_(atol)
        ratio = ((x_high - x_low) / delta).reshape(x.shape[0], -1).to(torch.float64)
        err = float(ratio.square().mean(1).sqrt().max())
        if not math.isfinite(err):
            raise RuntimeError(
                f"the model returned non-finite values at t={t:.6g}; the adaptive "
                f"solver cannot estimate its error"
            )
        if err <= 1.0:
            x, x_prev = x_high, x_low
            _report(callback, i, t, s, x, x0)
            if bar is not None:
                bar.update(float(lam_of(s) - lam_t))
            t, lam_t, i = s, lam_of(s), i + 1
            grid.append(s)
        else:
            rejected += 1
        grow = math.inf if err == 0 else err ** (-1.0 / order)
        h = min(theta * h * grow, lam_end - max(lam_t, lam_min))
    return x, {"ts": grid, "nfe": nfe, "accepted": i, "rejected": rejected}


@torch.no_grad()
def sample_dpm_solver_adaptive(
    denoiser: Denoiser,
    x: torch.Tensor,
    t_start: float = 1.0,
    t_end: float = 1e-3,
    *,
    order: int = 2,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    theta: float = 0.9,
    lambda_min: float = -5.1,
    prediction: str = "eps",
    final_zero: bool = False,
    return_info: bool = False,
    callback: Callable | None = None,
    progress: bool | None = None,
):
    r"""Adaptive DPM-Solver-12 (``order=2``) or -23 (``order=3``): the step in
    $\lambda$ is chosen on the way, so there is no grid ``ts``; the solver goes from
    ``t_start`` to ``t_end`` (both with a finite log-SNR).

    A trial step from the time reached, $t$, with size $h$ (first $h$ = ``h_init``)
    to $s=t_\lambda(\lambda_t+h)<t$ computes a lower-order and a higher-order
    solution from shared model evaluations: DPM-Solver-1 (DDIM) and singlestep
    DPM-Solver-2 ($r_1=\tfrac12$), 2 NFE; or singlestep DPM-Solver-2 with
    $r_1=\tfrac13$ and DPM-Solver-3 ($r_1=\tfrac13$, $r_2=\tfrac23$), 3 NFE. With the
    elementwise tolerance $\delta=\max(\mathrm{atol},\,\mathrm{rtol}\cdot
    \max(|x_{\rm low}|,|x_{\rm prev}|))$ ($x_{\rm prev}$ the lower-order solution of
    the last accepted step, first $x$ itself) the error estimate is the largest
    per-sample RMS $E=\max_b\sqrt{\mathrm{mean}((x_{\rm high}-x_{\rm low})^2/
    \delta^2)}$; the step is accepted if $E\le1$ (then $x\leftarrow x_{\rm high}$),
    and in every case $h\leftarrow\min(\theta hE^{-1/k},\lambda_{t_{\rm end}}-
    \lambda_t)$ with $k$ = ``order`` (the book's step direction: from $t$ to $s<t$,
    $h=\lambda_s-\lambda_t$; the paper writes the step from $s$ to $t$). Where
    $\lambda_{t_{\rm start}}$ is below ``lambda_min`` (the cosine schedule's -37 at
    t=1, where $\lambda$ moves by more than ``h_init`` within one float64 time step),
    steps are proposed from $\lambda$ = ``lambda_min`` as
    :func:`dlib.sampling.time_grid` clips its grids, so the first step covers the
    clipped part too (in the noise form that first step is ill-conditioned where
    $\alpha_{t_{\rm start}}\approx0$; a step size that falls below 1e-10 raises a
    RuntimeError instead of looping). As in the official code a rejected trial is
    paid in full (it evaluates the model at $t$ again); the last step lands exactly
    on ``t_end``.
    ``prediction="x0"`` runs the same scheme in the data form (DPM-Solver++).
    The defaults are the paper's (``atol`` = 0.0078 is meant for data in [-1, 1]).

    ``final_zero=True`` ends with the jump to $t=0$ (one more NFE; returns
    $\hat x_0$). With ``return_info=True`` returns ``(x, info)``: ``info["ts"]`` the
    accepted times (a grid from ``t_start`` to ``t_end``, plus 0), ``info["nfe"]`` the
    network calls spent (every trial counts), ``info["accepted"]``,
    ``info["rejected"]``. ``callback`` gets each accepted step; ``progress`` shows
    the progress in $\lambda$. Introduced in Part II, DPM-Solver chapter."""
    t_start = C.scalar_time(t_start, "t_start")
    t_end = C.scalar_time(t_end, "t_end")
    if not t_end < t_start:
        raise ValueError(f"need t_end < t_start; got t_start={t_start}, t_end={t_end}")
    ts = _prepare(denoiser, x, [t_start, t_end])
    lam = denoiser.schedule.log_snr(torch.tensor(ts, dtype=torch.float64))
    if not bool(torch.isfinite(lam).all()):
        raise ValueError(
            f"t_start and t_end need a finite log-SNR (0 < alpha, sigma); got "
            f"lambda={lam.tolist()} at t={ts}; end at t_end > 0 and use final_zero"
        )
    order = C.positive_int(order, "order", minimum=2, maximum=3)
    rtol = C.positive(rtol, "rtol")
    atol = C.positive(atol, "atol")
    h_init = C.positive(h_init, "h_init")
    theta = C.in_range(theta, "theta", 0.0, 1.0, lo_open=True)
    lambda_min = C.number(lambda_min, "lambda_min")
    if not lambda_min < float(lam[1]):
        raise ValueError(
            f"lambda_min={lambda_min} must be below the log-SNR at t_end "
            f"({float(lam[1]):.4g})"
        )
    C.one_of(prediction, ("eps", "x0"), "prediction")
    C.flag(final_zero, "final_zero")
    C.flag(return_info, "return_info")
    C.optional_function(callback, "callback", "callback(dict)")
    show = _progress(progress, 0)
    bar = None
    if show:
        bar = tqdm(total=float(lam[1] - lam[0]), desc="adaptive DPM-Solver",
                   leave=False)
    try:
        x, info = _adaptive(denoiser, x, t_start, t_end, order, rtol, atol, h_init,
                            theta, lambda_min, prediction == "x0", callback, bar)
    finally:
        if bar is not None:
            bar.close()
    if final_zero:
        x0 = denoiser._x0_eps(x, t_end)[0]
        _report(callback, info["accepted"], t_end, 0.0, x0, x0)
        x = x0
        info["nfe"] += 1
        info["ts"].append(0.0)
    return (x, info) if return_info else x
