r"""Fast ODE solvers for the probability-flow ODE: exponential integrators in the
half log-SNR $\lambda=\log(\alpha_t/\sigma_t)$ (introduced in Part II, DPM-Solver
chapter).

In $\lambda$ the PF-ODE is semi-linear and its linear part integrates exactly. From
$x_t$ at time $t$ to time $s<t$, with $h=\lambda_s-\lambda_t>0$,

$$x_s=\frac{\alpha_s}{\alpha_t}x_t-\sigma_s\sum_{k\ge0}h^{k+1}\varphi_{k+1}(h)\,
\hat\epsilon^{(k)}_t \quad\text{(noise prediction)},$$

$$x_s=\frac{\sigma_s}{\sigma_t}x_t+\alpha_s\sum_{k\ge0}h^{k+1}\varphi_{k+1}(-h)\,
\hat x_0^{(k)}{}_t \quad\text{(data prediction)},$$

where $\hat\epsilon^{(k)}$ is the k-th derivative in $\lambda$ and
$\varphi_k(h)=\int_0^1 e^{(1-\theta)h}\theta^{k-1}/(k-1)!\,d\theta$ (:func:`phi`).
Keeping the first term is the DDIM step (:func:`first_order_step`, identical in both
forms); a solver of order k estimates the next k-1 derivatives by finite differences
of the model at intermediate points (singlestep, Runge-Kutta-like) or at past grid
points (multistep, Adams-like). :func:`step_orders` holds the rule for the order of
each step. The samplers have the signature shape of :mod:`dlib.sampling` and call the
denoiser's unchecked fast path; ``Denoiser.nfe`` counts their network calls.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from . import _checks as C
from .param import Denoiser
from .sampling import _prepare, _report, _steps
from .schedules import Schedule

__all__ = [
    "phi",
    "first_order_step",
    "step_orders",
    "sample_dpm_solver",
    "sample_dpm_solver_pp",
    "sample_deis",
]

METHODS = ("multistep", "singlestep")
_SERIES_TERMS = 20  # |h| <= 1: h^20 / 20! < 5e-19, below float64 round-off


def _phi(k: int, h: float) -> float:
    """Unchecked :func:`phi` for a Python float."""
    if abs(h) <= 1.0:  # Taylor series sum_j h^j / (j + k)!, by Horner
        out = 1.0 / math.factorial(k + _SERIES_TERMS)
        for j in range(_SERIES_TERMS - 1, -1, -1):
            out = out * h + 1.0 / math.factorial(k + j)
        return out
    try:
        if k == 0:
            return math.exp(h)
        out = math.expm1(h) / h  # phi_1; phi_{j+1} = (phi_j - 1/j!) / h
    except OverflowError:  # h > 709: phi_k(h) ~ e^h / h^k overflows float64 too
        return math.inf
    for j in range(1, k):
        out = (out - 1.0 / math.factorial(j)) / h
    return out


def phi(k: int, h):
    r"""The $\varphi$-functions of exponential integrators:
    $\varphi_0(h)=e^h$, $\varphi_{k+1}(h)=(\varphi_k(h)-1/k!)/h$, so
    $\varphi_1=(e^h-1)/h$, $\varphi_2=(e^h-1-h)/h^2$, and $\varphi_k(0)=1/k!$.
    ``h`` is a float or a tensor (evaluated elementwise, float64). Accurate to
    round-off for every finite h: a Taylor series for $|h|\le1$ (where the recursion
    cancels), the recursion from ``expm1`` elsewhere. Introduced in Part II,
    DPM-Solver chapter."""
    k = C.positive_int(k, "k", minimum=0)
    if torch.is_tensor(h):
        h = C.real_tensor(h, "h", dtype=torch.float64)
        out = h.detach().to("cpu", copy=True).apply_(lambda v: _phi(k, v))
        return out.to(h.device)
    return _phi(k, C.number(h, "h"))


def _first_order(x, x0, eps, ct, cs, h: float, data: bool):
    """The DDIM step from (x, t) to s given the model's pair at t; ``ct``, ``cs`` the
    schedule's coefficients, ``h`` = lambda_s - lambda_t. An infinite h (an end where
    alpha or sigma is 0) takes the pair form alpha_s x0 + sigma_s eps."""
    if not math.isfinite(h):
        return torch.add(x0 * cs.alpha, eps, alpha=cs.sigma)
    if data:
        b = -cs.alpha * math.expm1(-h)
        return torch.add(x * (cs.sigma / ct.sigma), x0, alpha=b)
    return torch.add(x * (cs.alpha / ct.alpha), eps, alpha=-cs.sigma * math.expm1(h))


def first_order_step(
    x: torch.Tensor,
    x0: torch.Tensor,
    eps: torch.Tensor,
    t,
    s,
    schedule: Schedule,
    *,
    prediction: str = "eps",
) -> torch.Tensor:
    r"""One DDIM step (the first-order exponential integrator) from $x_t$ to time
    $s<t$, given the model's $\hat x_0$ and $\hat\epsilon$ at $(x_t,t)$; with
    $h=\lambda_s-\lambda_t$:

    - ``prediction="eps"``:
      $x_s=\frac{\alpha_s}{\alpha_t}x_t-\sigma_s(e^h-1)\hat\epsilon$,
    - ``prediction="x0"``:
      $x_s=\frac{\sigma_s}{\sigma_t}x_t-\alpha_s(e^{-h}-1)\hat x_0$.

    Both equal $\alpha_s\hat x_0+\sigma_s\hat\epsilon$ (DDIM with $\eta=0$) when
    $x_t=\alpha_t\hat x_0+\sigma_t\hat\epsilon$; that form is used where $h$ is
    infinite (a step to $\sigma_s=0$, or from $\alpha_t=0$). Introduced in Part II,
    DPM-Solver chapter."""
    C.schedule(schedule)
    x = C.batch(x, "x")
    x0 = C.output(C.batch(x0, "x0"), x, "x0")
    eps = C.output(C.batch(eps, "eps"), x, "eps")
    t, s = C.scalar_time(t, "t"), C.scalar_time(s, "s")
    if not s < t:
        raise ValueError(f"need s < t (a step towards the data); got s={s}, t={t}")
    C.one_of(prediction, ("eps", "x0"), "prediction")
    lam = schedule.log_snr(torch.tensor([t, s], dtype=torch.float64)).tolist()
    ct, cs = schedule._coefficients(t), schedule._coefficients(s)
    return _first_order(x, x0, eps, ct, cs, lam[1] - lam[0], prediction == "x0")


def _orders(ts, lam, order, multistep, lower_final, lower_below):
    """Unchecked :func:`step_orders` on the grid and its log-SNR values (floats)."""
    n = len(lam) - 1
    finite = [math.isfinite(v) for v in lam]
    out, history = [], 0  # history: consecutive finite grid points before step i
    for i in range(n):
        k = order
        if multistep:
            k = min(k, history + 1)
        if lower_final and n < lower_below:
            k = min(k, n - i)
        if not (finite[i] and finite[i + 1]) or ts[i + 1] == 0:
            k = 1
        out.append(k)
        history = history + 1 if finite[i] else 0
    return out


def _check_below(value) -> float:
    if value == math.inf:
        return math.inf
    return float(C.positive_int(value, "lower_order_below", minimum=0))


def step_orders(
    ts,
    schedule: Schedule,
    order: int,
    *,
    method: str = "multistep",
    lower_order_final: bool = True,
    lower_order_below: int | float = 10,
) -> list[int]:
    """The order of each step of a solver of nominal ``order`` on the grid ``ts``
    (the one rule for lowering orders; ``n`` steps):

    - multistep: step i uses at most i + 1 (it has only i past evaluations: the
      warm-up), counting only grid points with a finite log-SNR;
    - ``lower_order_final`` and ``n < lower_order_below``: step i uses at most
      ``n - i``, so the last step is first order and the one before at most second
      order. The official DPM-Solver lowers below 10 steps (the default), diffusers
      below 15; ``math.inf`` lowers always;
    - a step to t=0 (the final jump, which returns $\\hat x_0$ as in
      :mod:`dlib.sampling`) or one whose $h$ is infinite (from $\\alpha=0$) is first
      order: a DDIM step.

    Introduced in Part II, DPM-Solver chapter."""
    order = C.positive_int(order, "order", maximum=3)
    C.one_of(method, METHODS, "method")
    C.flag(lower_order_final, "lower_order_final")
    below = _check_below(lower_order_below)
    C.schedule(schedule)
    ts = C.as_time(ts, name="ts", dtype=torch.float64).to(torch.float64)
    if ts.dim() != 1 or ts.numel() < 2 or bool((ts[1:] >= ts[:-1]).any()):
        raise ValueError("ts must be a strictly decreasing 1-D grid with at least 2 "
                         "times")
    lam = schedule.log_snr(ts).tolist()
    return _orders(ts.tolist(), lam, order, method == "multistep", lower_order_final,
                   below)


def _threshold(x0, clip, quantile):
    """Static clipping to [-clip, clip], or (with ``quantile``) Imagen's dynamic
    thresholding per sample: s = max(quantile of |x0|, clip), x0 <- clip(x0, -s, s)
    * clip / s."""
    if quantile is None:
        return x0.clamp(-clip, clip)
    q = torch.quantile(x0.abs().reshape(x0.shape[0], -1), quantile, dim=1)
    s = q.clamp_min(clip).reshape((-1,) + (1,) * (x0.dim() - 1))
    return torch.maximum(torch.minimum(x0, s), -s) * (clip / s)


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


def _coefs(ct, cs, h, data):
    """(A, c1, c2, c3): x_s = A x_t + sum_k c_k D_{k-1}, with D_j ~ h^j m^{(j)} the
    j-th derivative of the model output m in lambda scaled by h^j."""
    if data:
        a, b, g = cs.sigma / ct.sigma, cs.alpha, -h
    else:
        a, b, g = cs.alpha / ct.alpha, -cs.sigma, h
    return a, b * h * _phi(1, g), b * h * _phi(2, g), b * h * _phi(3, g)


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


# --- DEIS (Part II, DEIS chapter) ----------------------------------------------------
DEIS_VARIANTS = ("tab", "rhoab")
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
    for a DDIM step (order 1 with an infinite h, or the jump to t=0)."""
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
        if ts[i + 1] == 0 or not math.isfinite(lam[i + 1] - lam[i]):
            plan.append(None)
            continue
        ct, cs = sch._coefficients(ts[i]), sch._coefficients(ts[i + 1])
        a = cs.alpha / ct.alpha
        if variant == "rhoab":
            cj = [sch._coefficients(ts[i - j]) for j in range(k)]
            rho = [c_.sigma / c_.alpha for c_ in cj]
            H = cs.sigma / cs.alpha - rho[0]
            c = [cs.alpha * wj for wj in _rho_weights([r - rho[0] for r in rho[1:]], H)]
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

    ``order`` k (1 to 4) is the number of points of the polynomial (degree k - 1) and
    the order of convergence; the paper and the official code name the degree, so
    their tAB3 (the official default) is ``order=4`` here and DDIM is their tAB0.
    Order 1 is DDIM in both variants:
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
