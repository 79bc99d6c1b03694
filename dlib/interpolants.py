r"""Stochastic interpolants (chapter I.4, "Stochastic interpolants").

A stochastic interpolant joins two densities $\rho_0$ (at $t=0$) and $\rho_1$ (at $t=1$)
by the random path

$$x_t=\alpha_t x_0+\sigma_t x_1+\gamma_t z,\qquad (x_0,x_1)\sim\rho_0\otimes\rho_1,
\quad z\sim N(0,I),$$

with $\alpha_0=\sigma_1=1$, $\alpha_1=\sigma_0=0$ and $\gamma_0=\gamma_1=0$. As in the
rest of the book the data sit at $t=0$; with $x_1\sim N(0,I)$ and $\gamma\equiv0$ this
is exactly the diffusion $x_t=\alpha_tx_0+\sigma_t\epsilon$ of :mod:`dlib.schedules`.
Albergo, Boffi and Vanden-Eijnden run time the other way: their time is $1-t$, their
$x_0$ is our $x_1$, and their velocity $b$ is $-v$ here.

* :class:`Interpolant`: the path (``"linear"``, ``"trig"``, ``"vp"``) and the latent
  scale $\gamma_t$ (``"zero"``, ``"brownian"``, ``"quadratic"``); one call returns
  every coefficient and its time derivative.
* :class:`MixtureBridge`: the exact velocity, score, latent denoiser and density of
  the interpolant between two :class:`dlib.analytic.GaussianMixture` endpoints
  (float64, log-sum-exp over the pairs of components).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from . import _checks as C
from .analytic import GaussianMixture

__all__ = ["PATHS", "GAMMAS", "InterpolantCoefficients", "Interpolant",
           "MixtureBridge"]

PATHS = ("linear", "trig", "vp")
GAMMAS = ("zero", "brownian", "quadratic")
_F64 = torch.float64


class InterpolantCoefficients(NamedTuple):
    r"""$(\alpha_t,\sigma_t,\gamma_t,\dot\alpha_t,\dot\sigma_t,\dot\gamma_t,
    \gamma_t\dot\gamma_t)$ from one call of :meth:`Interpolant.coefficients`. The
    product $\gamma\dot\gamma$ is returned on its own because it stays finite at the
    ends where $\dot\gamma$ of $\sqrt{at(1-t)}$ does not. Float64 tensors of t's
    shape."""

    alpha: torch.Tensor
    sigma: torch.Tensor
    gamma: torch.Tensor
    d_alpha: torch.Tensor
    d_sigma: torch.Tensor
    d_gamma: torch.Tensor
    gamma_d_gamma: torch.Tensor


def _path(name, t):
    if name == "linear":  # alpha = 1 - t, sigma = t
        return 1 - t, t, -torch.ones_like(t), torch.ones_like(t)
    if name == "trig":  # alpha = cos(pi t / 2), sigma = sin(pi t / 2)
        h = 0.5 * math.pi
        return (h * t).cos(), (h * t).sin(), -h * (h * t).sin(), h * (h * t).cos()
    # "vp": alpha = 1 - t, sigma = sqrt(1 - (1 - t)^2); alpha^2 + sigma^2 = 1
    sig = (t * (2 - t)).sqrt()
    return 1 - t, sig, -torch.ones_like(t), (1 - t) / sig


def _gamma(name, a, t):
    if name == "zero":
        zero = torch.zeros_like(t)
        return zero, zero, zero
    if name == "brownian":  # sqrt(a t (1 - t)); gamma * d gamma = a (1 - 2t) / 2
        g = (a * t * (1 - t)).sqrt()
        gdg = 0.5 * a * (1 - 2 * t)
        return g, gdg / g, gdg
    g = a * t * (1 - t)  # "quadratic"
    dg = a * (1 - 2 * t)
    return g, dg, g * dg


class Interpolant:
    r"""The spatially linear interpolant $x_t=\alpha_tx_0+\sigma_tx_1+\gamma_tz$
    (chapter I.4), data $x_0$ at $t=0$.

    ``path``: ``"linear"`` $(\alpha,\sigma)=(1-t,t)$ (rectified flow when
    $\gamma=0$); ``"trig"`` $(\cos\frac{\pi t}{2},\sin\frac{\pi t}{2})$; ``"vp"``
    $(1-t,\sqrt{1-(1-t)^2})$, the one-sided interpolant with the variance-preserving
    marginals. ``gamma``: ``"zero"``; ``"brownian"`` $\gamma_t=\sqrt{a\,t(1-t)}$;
    ``"quadratic"`` $\gamma_t=a\,t(1-t)$; ``a`` > 0 is the scale."""

    def __init__(self, path: str = "linear", gamma: str = "brownian", a: float = 1.0):
        self.path = C.one_of(path, PATHS, "path")
        self.gamma = C.one_of(gamma, GAMMAS, "gamma")
        self.a = C.positive(a, "a")

    def __repr__(self):
        return f"Interpolant(path={self.path!r}, gamma={self.gamma!r}, a={self.a})"

    def _coefficients(self, t: torch.Tensor) -> InterpolantCoefficients:
        al, si, dal, dsi = _path(self.path, t)
        g, dg, gdg = _gamma(self.gamma, self.a, t)
        return InterpolantCoefficients(al, si, g, dal, dsi, dg, gdg)

    def coefficients(self, t) -> InterpolantCoefficients:
        r"""Every coefficient at time(s) ``t`` in [0, 1] (float64, t's shape). Where a
        derivative is singular ($\dot\gamma$ of ``"brownian"`` at $t\in\{0,1\}$,
        $\dot\sigma$ of ``"vp"`` at $t=0$) it is $\pm\infty$."""
        return self._coefficients(C.as_time(t, dtype=_F64).to(_F64))

    def _check_pair(self, x0, x1):
        x0 = C.batch(x0, "x0")
        x1 = C.tensor(x1, "x1", floating=True)
        if x1.shape != x0.shape:
            raise ValueError(
                f"x1 must have the shape of x0 {tuple(x0.shape)}; got "
                f"{tuple(x1.shape)}"
            )
        return x0, x1

    def sample(self, x0: torch.Tensor, x1: torch.Tensor, t,
               generator: torch.Generator | None = None, *,
               z: torch.Tensor | None = None):
        r"""Return $(x_t, u_t, z)$: the point $x_t=\alpha_tx_0+\sigma_tx_1+\gamma_tz$
        and its conditional velocity $u_t=\dot\alpha_tx_0+\dot\sigma_tx_1+\dot\gamma_tz$
        (the target of the velocity objective), for a batch of pairs (any coupling)
        and one time or one time per pair; $z$ is drawn with ``generator`` unless
        given. Times where $u_t$ is singular (the ends of ``"brownian"``, $t=0$ of
        ``"vp"``) raise a ValueError."""
        x0, x1 = self._check_pair(x0, x1)
        t = C.batch_time(t, x0)
        C.generator(generator)
        if z is None:
            z = C.randn(x0.shape, x0, generator)
        else:
            z = C.tensor(z, "z", floating=True)
            if z.shape != x0.shape:
                raise ValueError(f"z must have the shape of x0 {tuple(x0.shape)}; "
                                 f"got {tuple(z.shape)}")
        c = self._coefficients(t.to(_F64))
        if not bool(torch.isfinite(c.d_gamma).all() & torch.isfinite(c.d_sigma).all()):
            raise ValueError(
                "t contains an end point where the interpolant's time derivative is "
                "singular; use t in (0, 1)"
            )
        return self._sample(x0, x1, t, z)

    def _sample(self, x0, x1, t, z):
        c = self._coefficients(t.to(_F64))
        b = [C.bcast(v.to(x0.dtype), x0) for v in c]
        xt = b[0] * x0 + b[1] * x1 + b[2] * z
        ut = b[3] * x0 + b[4] * x1 + b[5] * z
        return xt, ut, z

    def score_from_z(self, z_hat: torch.Tensor, t) -> torch.Tensor:
        r"""The score $s=-\hat z/\gamma_t$ from a latent denoiser's output
        $\hat z\approx E[z\mid x_t]$ (needs $\gamma_t>0$)."""
        z_hat = C.batch(z_hat, "z_hat")
        t = C.batch_time(t, z_hat)
        g = self._coefficients(t.to(_F64)).gamma
        if not bool((g > 0).all()):
            raise ValueError(
                "t must be a time where gamma_t > 0 (the score -z_hat / gamma_t is "
                f"singular where gamma_t = 0); {self!r} has gamma_t = 0 there"
            )
        return -z_hat / C.bcast(g.to(z_hat.dtype), z_hat)


class MixtureBridge:
    r"""The exact interpolant between two Gaussian mixtures (chapter I.4):
    $x_0\sim$ ``data`` (at $t=0$), $x_1\sim$ ``base`` (at $t=1$), independent, and
    $x_t=\alpha_tx_0+\sigma_tx_1+\gamma_tz$ for ``interpolant``.

    Given components $(i,j)$ the point $x_t$ is Gaussian with mean
    $m_{ij}=\alpha_t\mu_i+\sigma_t\nu_j$ and diagonal variance
    $V_{ij}=\alpha_t^2S_i+\sigma_t^2T_j+\gamma_t^2$; Gaussian conditioning gives

    $$E[x_0\mid x,ij]=\mu_i+\tfrac{\alpha_tS_i}{V_{ij}}(x-m_{ij}),\quad
    E[x_1\mid x,ij]=\nu_j+\tfrac{\sigma_tT_j}{V_{ij}}(x-m_{ij}),\quad
    E[z\mid x,ij]=\tfrac{\gamma_t}{V_{ij}}(x-m_{ij}),$$

    and the responsibilities $r_{ij}(x)\propto\pi_i\varpi_jN(x;m_{ij},V_{ij})$ mix them.
    The velocity is $v=\dot\alpha_t\hat x_0+\dot\sigma_t\hat x_1+\dot\gamma_t\hat z$
    (written with $\gamma\dot\gamma/V$ so that it stays finite at the ends) and the
    score $s=-\sum r_{ij}(x-m_{ij})/V_{ij}$. Everything in float64."""

    def __init__(self, data: GaussianMixture, base: GaussianMixture,
                 interpolant: Interpolant):
        for obj, name in ((data, "data"), (base, "base")):
            if not isinstance(obj, GaussianMixture):
                raise ValueError(f"{name} must be a dlib.analytic.GaussianMixture; "
                                 f"got {type(obj).__name__}")
        if data.dim != base.dim:
            raise ValueError(f"base must have the dimension of data ({data.dim}); "
                             f"got {base.dim}")
        if not isinstance(interpolant, Interpolant):
            raise ValueError("interpolant must be a dlib.interpolants.Interpolant; "
                             f"got {type(interpolant).__name__}")
        self.data, self.base, self.interpolant = data, base, interpolant

    def __repr__(self):
        return f"MixtureBridge({self.data!r} -> {self.base!r}, {self.interpolant!r})"

    @property
    def dim(self) -> int:
        return self.data.dim

    def _check(self, x, t, derivative: bool = False):
        x = self.data._check_x(x)
        t = C.batch_time(t, x).to(_F64)
        if derivative and not bool(
            torch.isfinite(self.interpolant._coefficients(t).d_sigma).all()
        ):
            raise ValueError("t must avoid t = 0 for the 'vp' path (its d sigma/dt "
                             "is singular there)")
        return x, t

    def _posterior(self, x, t):
        c = self.interpolant._coefficients(t)
        col = [v[:, None, None] for v in c]  # (B, 1, 1)
        al, si, g = col[0], col[1], col[2]
        mu = self.data.means[:, None, :]  # (K0, 1, D)
        nu = self.base.means[None, :, :]  # (1, K1, D)
        s0 = self.data.variances[:, None, :]
        s1 = self.base.variances[None, :, :]
        k0, k1, d = self.data.n_components, self.base.n_components, self.dim
        m = (al[..., None] * mu + si[..., None] * nu).reshape(-1, k0 * k1, d)
        v = (al[..., None] ** 2 * s0 + si[..., None] ** 2 * s1).reshape(-1, k0 * k1, d)
        v = v + g**2
        diff = x.to(_F64)[:, None, :] - m  # (B, K, D)
        logw = (self.data.log_weights[:, None] + self.base.log_weights[None, :])
        logn = -0.5 * (torch.log(2 * math.pi * v) + diff**2 / v).sum(-1)
        joint = logw.reshape(1, -1) + logn
        r = torch.softmax(joint, dim=1)[..., None]
        w = diff / v
        x0 = (r * (mu.expand(k0, k1, d).reshape(1, -1, d)
                   + al * s0.expand(k0, k1, d).reshape(1, -1, d) * w)).sum(1)
        x1 = (r * (nu.expand(k0, k1, d).reshape(1, -1, d)
                   + si * s1.expand(k0, k1, d).reshape(1, -1, d) * w)).sum(1)
        return c, r, w, x0, x1, torch.logsumexp(joint, dim=1)

    def posterior_means(self, x: torch.Tensor, t):
        r"""$(E[x_0\mid x_t=x], E[x_1\mid x_t=x], E[z\mid x_t=x])$, each (B, D),
        float64."""
        x, t = self._check(x, t)
        c, r, w, x0, x1, _ = self._posterior(x, t)
        return x0, x1, c.gamma[:, None] * (r * w).sum(1)

    def velocity(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""The exact velocity $v(x,t)=E[\dot\alpha_tx_0+\dot\sigma_tx_1+\dot\gamma_tz
        \mid x_t=x]$ (the paper's $b$ with time reversed: $b=-v$), (B, D), float64."""
        x, t = self._check(x, t, derivative=True)
        return self._velocity(x, t)

    def _velocity(self, x, t):
        c, r, w, x0, x1, _ = self._posterior(x, t)
        gz = c.gamma_d_gamma[:, None] * (r * w).sum(1)  # d gamma * E[z | x]
        return c.d_alpha[:, None] * x0 + c.d_sigma[:, None] * x1 + gz

    def score(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""The exact score $\nabla_x\log\rho_t(x)$, (B, D), float64."""
        x, t = self._check(x, t)
        return self._score(x, t)

    def _score(self, x, t):
        _, r, w, _, _, _ = self._posterior(x, t)
        return -(r * w).sum(1)

    def log_prob(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""$\log\rho_t(x)$, shape (B,), float64."""
        x, t = self._check(x, t)
        return self._posterior(x, t)[-1]

    def sample(self, n: int, t, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """n exact draws of x_t at one time ``t``, shape (n, D), float64."""
        n = C.positive_int(n, "n")
        t = C.scalar_time(t)
        C.generator(generator)
        x0 = self.data.sample(n, generator)
        x1 = self.base.sample(n, generator)
        z = torch.randn(x0.shape, dtype=_F64, generator=generator)
        c = self.interpolant._coefficients(torch.tensor(t, dtype=_F64))
        return c.alpha * x0 + c.sigma * x1 + c.gamma * z
