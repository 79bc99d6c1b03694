r"""Gaussian and Gaussian-mixture data whose noised marginals are known exactly: the
book's ground truth.

For $p_0=\sum_k\pi_k N(\mu_k,\mathrm{diag}(s_k))$ and
$x_t=\alpha_t x_0+\sigma_t\epsilon$,

$$p_t=\sum_k\pi_k N(\alpha_t\mu_k, \alpha_t^2 s_k+\sigma_t^2),\qquad
\nabla\log p_t(x)=\sum_k r_k(x)\frac{\alpha_t\mu_k-x}{\alpha_t^2s_k+\sigma_t^2},$$

with responsibilities
$r_k(x)\propto\pi_kN(x;\alpha_t\mu_k,\alpha_t^2 s_k+\sigma_t^2)$, and per component
$E[x_0\mid x,k]=\mu_k+\frac{\alpha_t s_k}{\alpha_t^2s_k+\sigma_t^2}(x-\alpha_t\mu_k)$,
$E[\epsilon\mid x,k]=\frac{\sigma_t}{\alpha_t^2s_k+\sigma_t^2}(x-\alpha_t\mu_k)$.
Everything is computed in float64 with log-sum-exp.
"""

from __future__ import annotations

import math

import torch

from . import _checks as C
from ._checks import one_of
from .param import KINDS, Denoiser, _prediction_from
from .schedules import Schedule

__all__ = ["GaussianMixture", "Gaussian", "ring", "song_ermon", "AnalyticDenoiser"]

_F64 = torch.float64


class GaussianMixture:
    """A mixture of Gaussians with diagonal covariances in any dimension.

    Args:
        means: (K, D) component means.
        variances: scalar, (K,) (isotropic per component) or (K, D) (diagonal)
            variances, all > 0.
        weights: (K,) non-negative mixture weights (normalised here); default uniform.
    """

    def __init__(self, means, variances=1.0, weights=None):
        means = C.real_tensor(means, "means")
        if means.dim() != 2 or means.shape[0] < 1 or means.shape[1] < 1:
            raise ValueError(
                f"means must have shape (K, D) with K, D >= 1; got {tuple(means.shape)}"
            )
        K, D = means.shape
        var = C.real_tensor(variances, "variances")
        if var.dim() == 0:
            var = var.expand(K, D)
        elif var.shape == (K,):
            var = var[:, None].expand(K, D)
        elif var.shape != (K, D):
            raise ValueError(
                f"variances must be a scalar, shape ({K},) or ({K}, {D}); got "
                f"{tuple(var.shape)}"
            )
        if not bool((var > 0).all()):
            raise ValueError("variances must be positive")
        if weights is None:
            weights = torch.full((K,), 1.0 / K, dtype=_F64)
        weights = C.real_tensor(weights, "weights")
        if weights.shape != (K,) or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError(
                f"weights must be {K} non-negative numbers with a positive sum; got "
                f"{weights.tolist()}"
            )
        self.means, self.variances = means.clone(), var.clone().contiguous()
        self.weights = weights / weights.sum()
        self.log_weights = torch.log(self.weights)

    def __repr__(self):
        return f"GaussianMixture(K={self.n_components}, D={self.dim})"

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    # ------------------------------------------------------------------------------
    def _check_x(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        if not torch.is_tensor(x) or x.dim() != 2 or x.shape[1] != self.dim:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(
                f"{name} must be a tensor of shape (B, {self.dim}); got {shape}"
            )
        if x.shape[0] < 1:
            raise ValueError(f"{name} must hold at least one point")
        if not x.is_floating_point():
            raise ValueError(
                f"{name} must be a floating-point tensor; got dtype {x.dtype}"
            )
        return C.finite(x, name)

    def _scales(self, x, t, schedule):
        """alpha, sigma in float64: floats for one time, (B, 1, 1) tensors for one time
        per sample; t=None means the data distribution (alpha = 1, sigma = 0)."""
        if t is None:
            return 1.0, 0.0
        if schedule is None:
            raise ValueError("a schedule is required when t is given")
        if isinstance(t, float):
            c = schedule._coefficients(t)
            return c.alpha, c.sigma
        t = t.to(device=x.device, dtype=_F64)
        a, s = schedule._log_alpha(t).exp(), schedule._log_sigma(t).exp()
        return a[:, None, None], s[:, None, None]

    def _time(self, x, t, schedule):
        """Validate a public call's time (None, a number or a (B,) tensor)."""
        if t is None:
            return None
        if schedule is None:
            raise ValueError("a schedule is required when t is given")
        C.schedule(schedule)
        return C.check_time(t, x)

    def _posterior(self, x, t, schedule):
        x = x.to(_F64)
        a, s = self._scales(x, t, schedule)
        m = a * self.means[None]  # (B, K, D)
        v = a**2 * self.variances[None] + s**2  # (B, K, D)
        diff = x[:, None, :] - m
        logn = -0.5 * (torch.log(2 * math.pi * v) + diff**2 / v).sum(-1)  # (B, K)
        joint = self.log_weights[None] + logn
        logp = torch.logsumexp(joint, dim=1)
        r = torch.softmax(joint, dim=1)
        return x, a, s, v, diff, r, logp

    def log_prob(
        self, x: torch.Tensor, t=None, schedule: Schedule | None = None
    ) -> torch.Tensor:
        r"""$\log p_t(x)$ (shape (B,), float64); ``t=None`` gives the data density
        $p_0$."""
        x = self._check_x(x)
        return self._posterior(x, self._time(x, t, schedule), schedule)[-1]

    def responsibilities(
        self, x: torch.Tensor, t=None, schedule: Schedule | None = None
    ) -> torch.Tensor:
        """Posterior component probabilities r_k(x) under p_t, shape (B, K)."""
        x = self._check_x(x)
        return self._posterior(x, self._time(x, t, schedule), schedule)[5]

    def score(
        self, x: torch.Tensor, t=None, schedule: Schedule | None = None
    ) -> torch.Tensor:
        r"""$\nabla_x\log p_t(x)$, shape (B, D), float64."""
        x = self._check_x(x)
        return self._score(x, self._time(x, t, schedule), schedule)

    def _score(self, x, t, schedule):
        _, _, _, v, diff, r, _ = self._posterior(x, t, schedule)
        return (r[..., None] * (-diff / v)).sum(1)

    def x0_eps(self, x: torch.Tensor, t, schedule: Schedule):
        r"""Exact $(E[x_0\mid x_t], E[\epsilon\mid x_t])$, each (B, D), float64."""
        if t is None:
            raise ValueError("x0_eps needs a time t and a schedule")
        x = self._check_x(x)
        return self._x0_eps(x, self._time(x, t, schedule), schedule)

    def _x0_eps(self, x, t, schedule):
        x, a, s, v, diff, r, _ = self._posterior(x, t, schedule)
        x0 = (
            r[..., None] * (self.means[None] + a * self.variances[None] / v * diff)
        ).sum(1)
        eps = (r[..., None] * (s / v * diff)).sum(1)
        return x0, eps

    def predict(
        self, x: torch.Tensor, t, schedule: Schedule, kind: str = "eps"
    ) -> torch.Tensor:
        """The exact prediction of ``kind`` (one of dlib.param.KINDS) at (x, t)."""
        one_of(kind, KINDS, "prediction kind")
        if t is None:
            raise ValueError("predict needs a time t and a schedule")
        x = self._check_x(x)
        return self._predict(x, self._time(x, t, schedule), schedule, kind)

    def _predict(self, x, t, schedule, kind):
        if kind == "score":  # direct formula: stable also where sigma_t is tiny
            return self._score(x, t, schedule)
        x0, eps = self._x0_eps(x, t, schedule)
        x64 = x.to(_F64)
        if not isinstance(t, float):
            t = t.to(_F64)
        return _prediction_from(x0, eps, kind, x64, t, schedule)

    def denoiser(self, schedule: Schedule) -> "AnalyticDenoiser":
        """This model's exact predictions wrapped as a :class:`dlib.param.Denoiser`
        (the oracle)."""
        return AnalyticDenoiser(self, schedule)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n exact samples of p_0, shape (n, D), float64."""
        n = C.positive_int(n, "n")
        C.generator(generator)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, dtype=_F64, generator=generator)
        return self.means[k] + self.variances[k].sqrt() * z

    def mean(self) -> torch.Tensor:
        """E[x_0], shape (D,)."""
        return (self.weights[:, None] * self.means).sum(0)

    def covariance(self) -> torch.Tensor:
        """Cov[x_0], shape (D, D)."""
        mu = self.mean()
        second = sum(
            w * (torch.diag(v) + torch.outer(m, m))
            for w, m, v in zip(self.weights, self.means, self.variances)
        )
        return second - torch.outer(mu, mu)


class AnalyticDenoiser(Denoiser):
    """The exact denoiser of a :class:`GaussianMixture` (every kind computed directly,
    no division by a vanishing alpha or sigma), evaluated in float64 and returned in
    x's dtype."""

    def __init__(self, model: GaussianMixture, schedule: Schedule):
        if not isinstance(model, GaussianMixture):
            raise ValueError(
                f"model must be a dlib.analytic.GaussianMixture; got "
                f"{type(model).__name__}"
            )
        super().__init__(
            lambda x, t: model.predict(x, t, schedule, "eps"), schedule, "eps"
        )
        self.model = model

    def __repr__(self):
        return f"AnalyticDenoiser({self.model!r}, schedule={self.schedule!r})"

    def _check_x(self, x, name: str = "x"):
        return self.model._check_x(x, name)

    def _predict(self, x, t, kind=None):
        self.nfe += 1
        return self.model._predict(x, t, self.schedule, kind or self.kind).to(x.dtype)

    def _x0_eps(self, x, t):
        self.nfe += 1
        x0, eps = self.model._x0_eps(x, t, self.schedule)
        return x0.to(x.dtype), eps.to(x.dtype)


def Gaussian(mean, variance=1.0) -> GaussianMixture:
    """A single Gaussian N(mean, diag(variance)) as a one-component mixture."""
    mean = C.real_tensor(mean, "mean")
    if mean.dim() != 1 or mean.numel() < 1:
        raise ValueError(
            f"mean must be a non-empty 1-D vector; got shape {tuple(mean.shape)}"
        )
    var = C.real_tensor(variance, "variance")
    if var.shape not in ((), mean.shape):
        raise ValueError(
            f"variance must be a number or have the shape of mean "
            f"{tuple(mean.shape)}; got shape {tuple(var.shape)}"
        )
    if not bool((var > 0).all()):
        raise ValueError("variance must be positive")
    var = var[None] if var.dim() == 1 else var
    return GaussianMixture(mean[None], var)


def ring(
    k: int = 8, radius: float = 4.0, std: float = 0.5, weights=None
) -> GaussianMixture:
    """k isotropic 2-D Gaussians evenly spaced on a circle of ``radius`` (the classic
    "8 Gaussians")."""
    k = C.positive_int(k, "k")
    radius, std = C.positive(radius, "radius"), C.positive(std, "std")
    ang = torch.arange(k, dtype=_F64) * (2 * math.pi / k)
    means = radius * torch.stack([ang.cos(), ang.sin()], 1)
    return GaussianMixture(means, std**2, weights)


def song_ermon() -> GaussianMixture:
    r"""Song & Ermon's (2019) example $\tfrac15N((-5,-5),I)+\tfrac45N((5,5),I)$ with
    separated modes."""
    return GaussianMixture([[-5.0, -5.0], [5.0, 5.0]], 1.0, [0.2, 0.8])
