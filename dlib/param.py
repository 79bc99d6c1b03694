r"""One model, five parameterisations: conversions between noise, data, v, score and
velocity.

At a fixed $(x_t, t)$ with $x_t=\alpha_t x_0+\sigma_t\epsilon$, every prediction is a
fixed linear function of the pair $(\hat x_0, \hat\epsilon)$, and
$x_t=\alpha_t\hat x_0+\sigma_t\hat\epsilon$ holds for the exact conditional
expectations, so any one prediction determines all others:

==============  ==================================================  ===============
kind            definition                                          also called
==============  ==================================================  ===============
``"eps"``       $\hat\epsilon=E[\epsilon\mid x_t]$                     noise prediction
``"x0"``        $\hat x_0=E[x_0\mid x_t]$                              data prediction
``"v"``         $\hat{\mathrm v}=\alpha_t\hat\epsilon-\sigma_t\hat x_0$   v-prediction
``"score"``     $\nabla\log p_t=-\hat\epsilon/\sigma_t$                 score (Tweedie)
``"velocity"``  $v=\dot\alpha_t\hat x_0+\dot\sigma_t\hat\epsilon$         PF-ODE drift
==============  ==================================================  ===============

The v-prediction $\mathrm v$ (upright) and the velocity $v$ are different objects (they
coincide only for $\alpha=\cos\phi,\sigma=\sin\phi$ in the time $\phi$).

Where a conversion divides by zero (recovering $\hat\epsilon$ from $\hat x_0$ where
$\sigma_t=0$, $\hat x_0$ from $\hat\epsilon$ where $\alpha_t=0$, the velocity of a VP
schedule at $t=0$ where $\dot\sigma_t=\infty$), it raises a ValueError saying so instead
of returning NaN.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from . import _checks as C
from .schedules import Coefficients, Schedule

__all__ = [
    "KINDS",
    "to_x0_eps",
    "from_x0_eps",
    "convert",
    "target",
    "Denoiser",
    "change_schedule",
]

KINDS = ("eps", "x0", "v", "score", "velocity")

# what each conversion divides by / multiplies with: kind -> coefficients that must be
# nonzero (to recover the pair from the prediction, or to form the prediction from it)
_NEEDS_IN = {
    "eps": ("alpha",),
    "x0": ("sigma",),
    "score": ("alpha",),
    "v": (),
    "velocity": ("finite_d",),
}
_NEEDS_OUT = {
    "eps": (),
    "x0": (),
    "score": ("sigma",),
    "v": (),
    "velocity": ("finite_d",),
}


def _singular(need: str, kind: str, direction: str, t) -> ValueError:
    why = {
        "alpha": "alpha_t = 0",
        "sigma": "sigma_t = 0",
        "finite_d": "d alpha_t/dt or d sigma_t/dt is infinite",
    }[need]
    where = f"t = {t}" if isinstance(t, float) else "some of the times t"
    return ValueError(
        f"cannot convert {direction} a {kind!r} prediction at {where}: {why} "
        f"there, so the conversion is singular; use a time inside (0, 1)"
    )


def _check_coefficients(kind: str, needs: tuple, c: Coefficients, t, direction: str):
    """Raise a clear ValueError where a conversion would divide by zero or by
    infinity."""
    for need in needs:
        if isinstance(c.alpha, float):
            bad = {
                "alpha": c.alpha == 0.0,
                "sigma": c.sigma == 0.0,
                "finite_d": not (math.isfinite(c.d_alpha) and math.isfinite(c.d_sigma)),
            }[need]
        else:
            bad = bool(
                {
                    "alpha": lambda: (c.alpha == 0).any(),
                    "sigma": lambda: (c.sigma == 0).any(),
                    "finite_d": lambda: (
                        ~(
                            torch.isfinite(c.d_alpha).all()
                            & torch.isfinite(c.d_sigma).all()
                        )
                    ),
                }[need]()
            )
        if bad:
            raise _singular(need, kind, direction, t)


def _bcast_all(c: Coefficients, x: torch.Tensor) -> Coefficients:
    return Coefficients(*(C.bcast(v, x) for v in c))


def _lin(p, x, q, y):
    """p x + q y. With float coefficients (one time for the batch: the samplers' case)
    it is two fused tensor operations, which matters for small networks."""
    if isinstance(p, float) and isinstance(q, float):
        big = torch.finfo(x.dtype).max
        if not (abs(p) <= big and abs(q) <= big):
            raise ValueError(
                f"the conversion's coefficients ({p:.3g}, {q:.3g}) overflow {x.dtype}: "
                "t is too close to a singular end for this dtype; use a time further "
                "from the end or float64"
            )
        return torch.add(x if p == 1.0 else x * p, y, alpha=q)
    return p * x + q * y


def _to_pair(pred, kind, x, c):
    """(x0_hat, eps_hat) from a prediction; ``c`` already broadcast against ``x``."""
    a, s = c.alpha, c.sigma
    if kind == "eps":
        return _lin(1 / a, x, -s / a, pred), pred
    if kind == "x0":
        return pred, _lin(1 / s, x, -a / s, pred)
    if kind == "score":  # eps = -s score, x0 = (x + s^2 score) / a
        return _lin(1 / a, x, s * s / a, pred), pred * -s
    if kind == "v":  # [x; v] = [[a, s], [-s, a]] [x0; eps]
        det = a * a + s * s
        return _lin(a / det, x, -s / det, pred), _lin(s / det, x, a / det, pred)
    # velocity: [x; u] = [[a, s], [da, ds]] [x0; eps], det = a ds - s da > 0
    da, ds = c.d_alpha, c.d_sigma
    det = a * ds - s * da
    return _lin(ds / det, x, -s / det, pred), _lin(-da / det, x, a / det, pred)


def _from_pair(x0, eps, kind, x, c):
    """The prediction of ``kind`` from the pair; ``c`` already broadcast against
    ``x``."""
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    if kind == "score":
        return eps * (-1 / c.sigma)
    if kind == "v":
        return _lin(c.alpha, eps, -c.sigma, x0)
    return _lin(c.d_alpha, x0, c.d_sigma, eps)


def _x0_eps_from(pred, kind, x, t, schedule):
    """Trusted inputs; ``t`` a float or a (B,) tensor. Checks only for singular
    times."""
    c = schedule._coefficients(t)
    _check_coefficients(kind, _NEEDS_IN[kind], c, t, "from")
    return _to_pair(pred, kind, x, _bcast_all(c, x))


def _prediction_from(x0, eps, kind, x, t, schedule):
    c = schedule._coefficients(t)
    _check_coefficients(kind, _NEEDS_OUT[kind], c, t, "to")
    return _from_pair(x0, eps, kind, x, _bcast_all(c, x))


def _convert(pred, src, dst, x, t, schedule):
    if src == dst:
        return pred
    c = schedule._coefficients(t)
    _check_coefficients(src, _NEEDS_IN[src], c, t, "from")
    _check_coefficients(dst, _NEEDS_OUT[dst], c, t, "to")
    cb = _bcast_all(c, x)
    x0, eps = _to_pair(pred, src, x, cb)
    return _from_pair(x0, eps, dst, x, cb)


def _like_x(y, x, name, ref="x"):
    y = C.tensor(y, name, floating=True)
    if y.shape != x.shape:
        raise ValueError(
            f"{name} must have the shape of {ref} {tuple(x.shape)}; got "
            f"{tuple(y.shape)}"
        )
    return y


def to_x0_eps(pred: torch.Tensor, kind: str, x: torch.Tensor, t, schedule: Schedule):
    r"""Return $(\hat x_0, \hat\epsilon)$ given a prediction of ``kind`` at $(x_t,
    t)$."""
    C.one_of(kind, KINDS, "prediction kind")
    C.schedule(schedule)
    x = C.batch(x, "x")
    pred = _like_x(pred, x, "pred")
    return _x0_eps_from(pred, kind, x, C.check_time(t, x), schedule)


def from_x0_eps(
    x0: torch.Tensor,
    eps: torch.Tensor,
    kind: str,
    x: torch.Tensor,
    t,
    schedule: Schedule,
):
    """Return the prediction of ``kind`` implied by the pair (x0_hat, eps_hat) at (x_t,
    t)."""
    C.one_of(kind, KINDS, "prediction kind")
    C.schedule(schedule)
    x = C.batch(x, "x")
    x0, eps = _like_x(x0, x, "x0"), _like_x(eps, x, "eps")
    return _prediction_from(x0, eps, kind, x, C.check_time(t, x), schedule)


def convert(
    pred: torch.Tensor, src: str, dst: str, x: torch.Tensor, t, schedule: Schedule
) -> torch.Tensor:
    """Convert a prediction of kind ``src`` into one of kind ``dst`` at (x_t, t)."""
    C.one_of(src, KINDS, "prediction kind")
    C.one_of(dst, KINDS, "prediction kind")
    C.schedule(schedule)
    x = C.batch(x, "x")
    pred = _like_x(pred, x, "pred")
    return _convert(pred, src, dst, x, C.check_time(t, x), schedule)


def target(
    kind: str, x0: torch.Tensor, eps: torch.Tensor, t, schedule: Schedule
) -> torch.Tensor:
    r"""The regression target of ``kind`` for one training pair: the quantity whose
    conditional expectation given $x_t$ is the optimal prediction (for "score":
    $-\epsilon/\sigma_t$, the score of the Gaussian corruption kernel; for "velocity":
    $\dot\alpha_t x_0+\dot\sigma_t\epsilon$)."""
    C.one_of(kind, KINDS, "prediction kind")
    C.schedule(schedule)
    x0 = C.batch(x0, "x0")
    eps = _like_x(eps, x0, "eps", "x0")
    return _target(kind, x0, eps, C.check_time(t, x0), schedule)


def _target(kind, x0, eps, t, schedule):
    c = schedule._coefficients(t)
    _check_coefficients(kind, _NEEDS_OUT[kind], c, t, "to")
    cb = _bcast_all(c, x0)
    return _from_pair(x0, eps, kind, cb.alpha * x0 + cb.sigma * eps, cb)


class Denoiser:
    """A prediction function together with its kind and schedule, viewable in every
    parameterisation.

    ``fn(x, t)`` takes a batch ``x`` of shape (B, ...) and times ``t`` of shape (B,) and
    returns a prediction of ``kind`` with the shape of ``x``. Samplers and metrics take
    a ``Denoiser``; so analytic oracles and trained networks are interchangeable.
    ``Denoiser(net, schedule, "eps").velocity(x, t)`` is the PF-ODE drift.

    The public methods validate ``x`` (a finite floating batch) and ``t`` (a number in
    [0, 1], one time for the batch, or a (B,) tensor of times). The samplers call the
    underscored methods ``_x0_eps`` and ``_predict``, which trust their inputs and take
    a float time, so a sampler step does no validation and no host-device
    synchronisation. ``nfe`` counts the evaluations of ``fn`` (set it to 0 to count a
    sampler's cost).
    """

    def __init__(
        self,
        fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        schedule: Schedule,
        kind: str = "eps",
    ):
        C.one_of(kind, KINDS, "prediction kind")
        C.function(fn, "fn", "fn(x, t)")
        C.schedule(schedule)
        self.fn, self.schedule, self.kind = fn, schedule, kind
        self.nfe = 0

    def __repr__(self):
        return f"Denoiser(kind={self.kind!r}, schedule={self.schedule!r})"

    # --- public, validated
    # ----------------------------------------------------------------
    def _check_x(self, x, name: str = "x") -> torch.Tensor:
        """Validate a batch for this model once (a finite floating batch; an analytic
        model also checks its dimension): what samplers and metrics call on entry."""
        return C.batch(x, name)

    def _inputs(self, x, t):
        x = self._check_x(x)
        return x, C.check_time(t, x)

    def predict(self, x: torch.Tensor, t, kind: str | None = None) -> torch.Tensor:
        """The prediction of ``kind`` (default: the native kind) at (x, t)."""
        if kind is not None:
            C.one_of(kind, KINDS, "prediction kind")
        x, t = self._inputs(x, t)
        return self._predict(x, t, kind)

    def x0_eps(self, x: torch.Tensor, t):
        """Both (x0_hat, eps_hat) from one evaluation of ``fn``."""
        x, t = self._inputs(x, t)
        return self._x0_eps(x, t)

    def x0(self, x, t):
        return self.predict(x, t, "x0")

    def eps(self, x, t):
        return self.predict(x, t, "eps")

    def v(self, x, t):
        return self.predict(x, t, "v")

    def score(self, x, t):
        return self.predict(x, t, "score")

    def velocity(self, x, t):
        return self.predict(x, t, "velocity")

    # --- internal: trusted inputs, t a float or a (B,) tensor
    # ---------------------------
    def _evaluate(self, x, t):
        self.nfe += 1
        out = self.fn(x, C.time_tensor(t, x))
        C.output(out, x, "fn(x, t)")
        return out

    def _x0_eps(self, x, t):
        return _x0_eps_from(self._evaluate(x, t), self.kind, x, t, self.schedule)

    def _predict(self, x, t, kind=None):
        out = self._evaluate(x, t)
        if kind is None:
            return out
        return _convert(out, self.kind, kind, x, t, self.schedule)


class _Rescheduled(Denoiser):
    def __init__(self, base: Denoiser, schedule: Schedule):
        super().__init__(base.fn, schedule, "eps")
        self.base = base

    def __repr__(self):
        return f"change_schedule({self.base!r}, {self.schedule!r})"

    def _check_x(self, x, name: str = "x") -> torch.Tensor:
        return self.base._check_x(x, name)

    def _old_time_and_scale(self, t):
        old, new = self.base.schedule, self.schedule
        lo, hi = old.log_snr_range()
        tt = torch.as_tensor(t, dtype=torch.float64)
        lam = (new._log_alpha(tt) - new._log_sigma(tt)).clamp(lo, hi)
        t_old = old._t_from_log_snr(lam).clamp(0.0, 1.0)
        k_old = old._log_alpha(t_old).exp() + old._log_sigma(t_old).exp()
        k_new = new._log_alpha(tt).exp() + new._log_sigma(tt).exp()
        if isinstance(t, float):
            return float(t_old), float(k_old / k_new)
        return t_old.to(t.dtype), (k_old / k_new).to(t.dtype)

    def _x0_eps(self, x, t):
        self.nfe += 1
        t_old, scale = self._old_time_and_scale(t)
        return self.base._x0_eps(C.bcast(scale, x) * x, t_old)

    def _predict(self, x, t, kind=None):
        x0, eps = self._x0_eps(x, t)
        return _prediction_from(x0, eps, kind or self.kind, x, t, self.schedule)


def change_schedule(denoiser: Denoiser, schedule: Schedule) -> Denoiser:
    r"""The same model seen in another schedule (a change of variables, no retraining).

    Two schedules with the same log-SNR describe the same noisy point up to scale: with
    $k_t=\alpha_t+\sigma_t$, $x_t/k_t$ depends on $(x_0,\epsilon)$ only through
    $\lambda_t$. So at a new time $\tau$ the pair $(\hat x_0,\hat\epsilon)$ is the old
    model's at the old time $t$ with $\lambda_t=\lambda_\tau$, evaluated at
    $x\,k_t/k_\tau$. Log-SNRs outside the old schedule's range are clamped to it (for
    example the linear path reaches $\lambda=-\infty$ at $\tau=1$, where a VP schedule
    stops near $\lambda\approx-5$)."""
    C.denoiser(denoiser)
    C.schedule(schedule)
    return _Rescheduled(denoiser, schedule)
