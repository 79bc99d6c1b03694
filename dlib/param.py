r"""One model, five parameterisations: conversions between noise, data, v, score and velocity.

At a fixed $(x_t, t)$ with $x_t=\alpha_t x_0+\sigma_t\epsilon$, every prediction is a fixed linear
function of the pair $(\hat x_0, \hat\epsilon)$, and $x_t=\alpha_t\hat x_0+\sigma_t\hat\epsilon$ holds for the
exact conditional expectations, so any one prediction determines all others:

=============  =======================================================  ======================
kind           definition                                               name in the literature
=============  =======================================================  ======================
``"eps"``      $\hat\epsilon=E[\epsilon\mid x_t]$                         noise prediction (DDPM)
``"x0"``       $\hat x_0=E[x_0\mid x_t]$                                  data / "sample" prediction
``"v"``        $\hat{\mathrm v}=\alpha_t\hat\epsilon-\sigma_t\hat x_0$     v-prediction (Salimans & Ho)
``"score"``    $\nabla\log p_t=-\hat\epsilon/\sigma_t$                     score (Tweedie)
``"velocity"`` $v=\dot\alpha_t\hat x_0+\dot\sigma_t\hat\epsilon$            flow velocity = PF-ODE drift
=============  =======================================================  ======================

"v" ($\mathrm v$) and "velocity" ($v$) are different objects (they coincide only for $\alpha=\cos\phi,\sigma=\sin\phi$ in
the time $\phi$).
"""

from __future__ import annotations

from typing import Callable

import torch

from ._checks import batch_time, bcast, one_of
from .schedules import Schedule

__all__ = ["KINDS", "to_x0_eps", "from_x0_eps", "convert", "target", "Denoiser", "change_schedule"]

KINDS = ("eps", "x0", "v", "score", "velocity")


def _coeffs(schedule: Schedule, t: torch.Tensor, x: torch.Tensor):
    a, s = bcast(schedule.alpha(t), x), bcast(schedule.sigma(t), x)
    return a, s


def to_x0_eps(pred: torch.Tensor, kind: str, x: torch.Tensor, t, schedule: Schedule):
    r"""Return $(\hat x_0, \hat\epsilon)$ given a prediction of ``kind`` at $(x_t, t)$."""
    one_of(kind, KINDS, "prediction kind")
    if pred.shape != x.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} must equal x shape {tuple(x.shape)}")
    t = batch_time(t, x)
    a, s = _coeffs(schedule, t, x)
    if kind == "eps":
        return (x - s * pred) / a, pred
    if kind == "x0":
        return pred, (x - a * pred) / s
    if kind == "score":
        eps = -s * pred
        return (x - s * eps) / a, eps
    if kind == "v":  # [x; v] = [[a, s], [-s, a]] [x0; eps]
        det = a * a + s * s
        return (a * x - s * pred) / det, (s * x + a * pred) / det
    # velocity: [x; u] = [[a, s], [da, ds]] [x0; eps], det = a ds - s da = -a s dlambda > 0
    da, ds = bcast(schedule.d_alpha(t), x), bcast(schedule.d_sigma(t), x)
    det = a * ds - s * da
    return (ds * x - s * pred) / det, (a * pred - da * x) / det


def from_x0_eps(x0: torch.Tensor, eps: torch.Tensor, kind: str, x: torch.Tensor, t, schedule: Schedule):
    """Return the prediction of ``kind`` implied by the pair (x0_hat, eps_hat) at (x_t, t)."""
    one_of(kind, KINDS, "prediction kind")
    t = batch_time(t, x)
    if kind == "eps":
        return eps
    if kind == "x0":
        return x0
    a, s = _coeffs(schedule, t, x)
    if kind == "score":
        return -eps / s
    if kind == "v":
        return a * eps - s * x0
    return bcast(schedule.d_alpha(t), x) * x0 + bcast(schedule.d_sigma(t), x) * eps


def convert(pred: torch.Tensor, src: str, dst: str, x: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
    """Convert a prediction of kind ``src`` into one of kind ``dst`` at (x_t, t)."""
    one_of(dst, KINDS, "prediction kind")
    if src == dst:
        one_of(src, KINDS, "prediction kind")
        return pred
    x0, eps = to_x0_eps(pred, src, x, t, schedule)
    return from_x0_eps(x0, eps, dst, x, t, schedule)


def target(kind: str, x0: torch.Tensor, eps: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
    r"""The regression target of ``kind`` for one training pair: the quantity whose conditional
    expectation given $x_t$ is the optimal prediction (for "score": $-\epsilon/\sigma_t$, the score of
    the Gaussian corruption kernel; for "velocity": $\dot\alpha_t x_0+\dot\sigma_t\epsilon$)."""
    one_of(kind, KINDS, "prediction kind")
    if x0.shape != eps.shape:
        raise ValueError(f"x0 and eps must have the same shape; got {tuple(x0.shape)} and {tuple(eps.shape)}")
    t = batch_time(t, x0)
    xt = bcast(schedule.alpha(t), x0) * x0 + bcast(schedule.sigma(t), x0) * eps
    return from_x0_eps(x0, eps, kind, xt, t, schedule)


class Denoiser:
    """A prediction function together with its kind and schedule, viewable in every parameterisation.

    ``fn(x, t)`` takes a batch ``x`` of shape (B, ...) and times ``t`` of shape (B,) and returns a
    prediction of ``kind``. Samplers and metrics take a ``Denoiser``; so analytic oracles and trained
    networks are interchangeable. ``Denoiser(net, schedule, "eps").velocity(x, t)`` is the PF-ODE drift.
    """

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], schedule: Schedule, kind: str = "eps"):
        one_of(kind, KINDS, "prediction kind")
        if not callable(fn):
            raise ValueError("fn must be callable as fn(x, t)")
        if not isinstance(schedule, Schedule):
            raise ValueError(f"schedule must be a dlib.schedules.Schedule; got {type(schedule).__name__}")
        self.fn, self.schedule, self.kind = fn, schedule, kind
        self.nfe = 0  # number of function evaluations so far (reset it to 0 to count a sampler's cost)

    def __repr__(self):
        return f"Denoiser(kind={self.kind!r}, schedule={self.schedule!r})"

    def predict(self, x: torch.Tensor, t, kind: str | None = None) -> torch.Tensor:
        """The prediction of ``kind`` (default: the native kind) at (x, t)."""
        t = batch_time(t, x)
        self.nfe += 1
        out = self.fn(x, t)
        return out if kind is None else convert(out, self.kind, kind, x, t, self.schedule)

    def x0_eps(self, x: torch.Tensor, t):
        """Both (x0_hat, eps_hat) from one evaluation of ``fn``."""
        t = batch_time(t, x)
        self.nfe += 1
        return to_x0_eps(self.fn(x, t), self.kind, x, t, self.schedule)

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


class _Rescheduled(Denoiser):
    def __init__(self, base: Denoiser, schedule: Schedule):
        super().__init__(lambda x, t: self.x0_eps(x, t)[1], schedule, "eps")
        self.base = base

    def __repr__(self):
        return f"change_schedule({self.base!r}, {self.schedule!r})"

    def x0_eps(self, x, t):
        self.nfe += 1
        t = batch_time(t, x)
        old, new = self.base.schedule, self.schedule
        lo, hi = old.log_snr_range()
        lam = new.log_snr(t).clamp(lo, hi)
        t_old = old.t_from_log_snr(lam).to(x.dtype)
        scale = (old.alpha(t_old) + old.sigma(t_old)) / (new.alpha(t) + new.sigma(t))
        return self.base.x0_eps(bcast(scale, x) * x, t_old)

    def predict(self, x, t, kind=None):
        t = batch_time(t, x)
        x0, eps = self.x0_eps(x, t)
        return from_x0_eps(x0, eps, kind or self.kind, x, t, self.schedule)


def change_schedule(denoiser: Denoiser, schedule: Schedule) -> Denoiser:
    r"""The same model seen in another schedule (a change of variables, no retraining).

    Two schedules with the same log-SNR describe the same noisy point up to scale: with
    $c_t=\alpha_t+\sigma_t$, $x_t/c_t$ depends on $(x_0,\epsilon)$ only through $\lambda_t$. So at a new time
    $\tau$ the pair $(\hat x_0,\hat\epsilon)$ is the old model's at the old time $t$ with $\lambda_t=\lambda_\tau$, evaluated
    at $x\,c_t/c_\tau$. Log-SNRs outside the old schedule's range are clamped to it (for example the
    linear path reaches $\lambda=-\infty$ at $\tau=1$, where a VP schedule stops near $\lambda\approx-5$)."""
    if not isinstance(denoiser, Denoiser):
        raise ValueError(f"denoiser must be a dlib.param.Denoiser; got {type(denoiser).__name__}")
    if not isinstance(schedule, Schedule):
        raise ValueError(f"schedule must be a dlib.schedules.Schedule; got {type(schedule).__name__}")
    return _Rescheduled(denoiser, schedule)
