"""The pieces every fast solver shares: the phi-functions, the first-order
exponential-integrator (DDIM) step, the coefficients of the exponential-integrator
updates and the one rule for lowering orders at the first and last steps."""

from __future__ import annotations

import math

import torch

from .. import _checks as C
from ..schedules import Schedule

__all__ = ["phi", "first_order_step", "step_orders"]

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


ALPHA_PAIR = 1e-3  # below it the noise-form DDIM step cancels catastrophically


def _first_order(x, x0, eps, ct, cs, h: float, data: bool):
    """The DDIM step from (x, t) to s given the model's pair at t; ``ct``, ``cs`` the
    schedule's coefficients, ``h`` = lambda_s - lambda_t. An infinite h (an end where
    alpha or sigma is 0) takes the pair form alpha_s x0 + sigma_s eps; so does the
    noise form from alpha_t < ALPHA_PAIR when x0 is given (there x alpha_s/alpha_t and
    the eps term are huge and cancel: at t = 1 of the cosine schedule alpha_t ~ 1e-16
    leaves no correct digit, in float32 or float64)."""
    if not math.isfinite(h) or (not data and x0 is not None and ct.alpha < ALPHA_PAIR):
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
    infinite (a step to $\sigma_s=0$, or from $\alpha_t=0$) and, for the noise form,
    from $\alpha_t<10^{-3}$, where the two terms above cancel catastrophically.
    Introduced in Part II, DPM-Solver chapter."""
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


def _coefs(ct, cs, h, data):
    """(A, c1, c2, c3): x_s = A x_t + sum_k c_k D_{k-1}, with D_j ~ h^j m^{(j)} the
    j-th derivative of the model output m in lambda scaled by h^j."""
    if data:
        a, b, g = cs.sigma / ct.sigma, cs.alpha, -h
    else:
        a, b, g = cs.alpha / ct.alpha, -cs.sigma, h
    return a, b * h * _phi(1, g), b * h * _phi(2, g), b * h * _phi(3, g)
