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
import numbers

import torch

from . import _checks as C
from ._checks import one_of
from .param import KINDS, Denoiser, _prediction_from
from .schedules import Schedule

__all__ = [
    "GaussianMixture",
    "Gaussian",
    "ring",
    "song_ermon",
    "thin_mixture",
    "AnalyticDenoiser",
    "GaussianPCA",
    "grid_mixture",
]

_F64 = torch.float64


class GaussianMixture:
    """A mixture of Gaussians with diagonal covariances in any dimension.

    Args:
        means: (K, D) component means.
        variances: scalar, (K,) (isotropic per component) or (K, D) (diagonal)
            variances, all > 0.
        weights: (K,) non-negative mixture weights (normalised here); default uniform.
        labels: optional (K,) class labels of the components, integers 0..C-1 with
            every class used. Then p(x | y) is the mixture of the components labelled
            y (weights renormalised) and p(y) the total weight of those components
            (chapter I.5, guidance).
    """

    def __init__(self, means, variances=1.0, weights=None, labels=None):
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
        self.labels = None if labels is None else self._labels(labels, K)

    @staticmethod
    def _labels(labels, K: int) -> torch.Tensor:
        """Check component labels: K integers 0..C-1 with every class used."""
        if torch.is_tensor(labels):
            ok = labels.dtype != torch.bool and not labels.is_floating_point()
            lab = labels.to(torch.int64) if ok and not labels.is_complex() else None
        else:
            vals = list(labels) if hasattr(labels, "__iter__") else None
            ok = vals is not None and all(
                isinstance(v, numbers.Integral) and not isinstance(v, bool)
                for v in vals
            )
            lab = torch.tensor(vals, dtype=torch.int64) if ok and vals else None
        if lab is None or lab.shape != (K,) or bool((lab < 0).any()):
            raise ValueError(
                f"labels must be {K} non-negative integers (one class per component); "
                f"got {labels!r}"
            )
        used = torch.bincount(lab, minlength=int(lab.max()) + 1)
        if bool((used == 0).any()):
            missing = torch.nonzero(used == 0).flatten().tolist()
            raise ValueError(
                f"labels must use every class 0..{len(used) - 1}; classes {missing} "
                "have no component"
            )
        return lab.clone()

    def __repr__(self):
        classes = f", classes={self.n_classes}" if self.labels is not None else ""
        return f"GaussianMixture(K={self.n_components}, D={self.dim}{classes})"

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def n_classes(self) -> int:
        """Number of classes C (0 for a mixture without labels)."""
        return 0 if self.labels is None else int(self.labels.max()) + 1

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

    def _joint(self, x, t, schedule):
        """log pi_k N(x; alpha mu_k, alpha^2 s_k + sigma^2), shape (B, K), and the
        pieces the other quantities need."""
        x = x.to(_F64)
        a, s = self._scales(x, t, schedule)
        m = a * self.means[None]  # (B, K, D)
        v = a**2 * self.variances[None] + s**2  # (B, K, D)
        diff = x[:, None, :] - m
        logn = -0.5 * (torch.log(2 * math.pi * v) + diff**2 / v).sum(-1)  # (B, K)
        return x, a, s, v, diff, self.log_weights[None] + logn

    def _posterior(self, x, t, schedule):
        x, a, s, v, diff, joint = self._joint(x, t, schedule)
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

    # --- class-conditional mixtures (chapter I.5) -----------------------------------
    def _need_labels(self, what: str) -> None:
        if self.labels is None:
            raise ValueError(
                f"{what} needs class labels: build the mixture with "
                "GaussianMixture(..., labels=[one class per component])"
            )

    def _class(self, y, name: str = "y") -> int:
        if isinstance(y, bool) or not isinstance(y, numbers.Integral) or not (
            0 <= y < self.n_classes
        ):
            raise ValueError(
                f"{name} must be a class label, an integer in 0..{self.n_classes - 1}; "
                f"got {y!r}"
            )
        return int(y)

    def class_prior(self) -> torch.Tensor:
        r"""The class probabilities $p(y)=\sum_{k:\,y_k=y}\pi_k$, shape (C,)."""
        self._need_labels("class_prior")
        return torch.zeros(self.n_classes, dtype=_F64).index_add_(
            0, self.labels, self.weights
        )

    def class_log_prob(
        self, x: torch.Tensor, t=None, schedule: Schedule | None = None
    ) -> torch.Tensor:
        r"""The exact noisy classifier $\log p_t(y\mid x)$ for every class, shape
        (B, C), float64 and differentiable in ``x``; ``t=None`` gives the clean
        classifier $p_0(y\mid x)$.

        $p_t(y\mid x)=\sum_{k:\,y_k=y}r_k(x)$ with the responsibilities $r_k$ under
        $p_t$; it equals $\int p_0(y\mid x_0)\,p(x_0\mid x_t=x)\,dx_0$, the clean
        classifier averaged over the denoising posterior (not the clean classifier
        evaluated at the noisy point)."""
        self._need_labels("class_log_prob")
        x = self._check_x(x)
        joint = self._joint(x, self._time(x, t, schedule), schedule)[-1]
        log_r = joint - torch.logsumexp(joint, dim=1, keepdim=True)
        return torch.stack(
            [
                torch.logsumexp(log_r[:, self.labels == c], dim=1)
                for c in range(self.n_classes)
            ],
            dim=1,
        )

    def conditional(self, y: int) -> "GaussianMixture":
        r"""The class-conditional data law $p_0(x\mid y)$ as a mixture of the
        components labelled ``y`` (weights renormalised, no labels): its
        :meth:`denoiser` is the exact conditional model at every t."""
        self._need_labels("conditional")
        keep = self.labels == self._class(y)
        return GaussianMixture(
            self.means[keep], self.variances[keep], self.weights[keep]
        )

    # --- the noise-level posterior (chapter II.6, denoising MCMC) --------------------
    def noise_level_log_posterior(
        self, x: torch.Tensor, sigmas, log_prior=None
    ) -> torch.Tensor:
        r"""The exact noise-level classifier $\log p(i\mid x)$ on a grid of VE noise
        levels $\sigma_1,\dots,\sigma_L$ (shape (B, L), float64).

        With $x=x_0+\sigma_i\epsilon$ and a prior $\pi_i$ on the index (uniform by
        default, or ``log_prior`` of shape (L,), normalised here),
        $p(i\mid x)=\mathrm{softmax}_i(\log\pi_i+\log p_{\sigma_i}(x))$, where
        $p_\sigma=\sum_kw_kN(\mu_k,\mathrm{diag}(s_k^2)+\sigma^2I)$ (weights $w_k$,
        variances $s_k^2$) is this mixture convolved with
        $N(0,\sigma^2I)$ (the VE marginal, $\alpha=1$). This is what a classifier
        trained by cross-entropy on pairs $(x_0+\sigma_i\epsilon,\,i)$ converges to
        (chapter II.6, denoising MCMC)."""
        x = self._check_x(x).to(_F64)
        sig = C.real_tensor(sigmas, "sigmas")
        if sig.dim() != 1 or sig.numel() < 1 or not bool((sig > 0).all()):
            raise ValueError(
                "sigmas must be a non-empty 1-D tensor of positive noise levels; got "
                f"{sig.tolist() if sig.numel() <= 8 else tuple(sig.shape)}"
            )
        if log_prior is None:
            lp = torch.zeros_like(sig)
        else:
            lp = C.real_tensor(log_prior, "log_prior")
            if lp.shape != sig.shape:
                raise ValueError(
                    f"log_prior must have the shape of sigmas {tuple(sig.shape)}; got "
                    f"{tuple(lp.shape)}"
                )
        lp = lp - torch.logsumexp(lp, 0)
        s2 = sig**2
        var = self.variances
        if bool((var == var[:, :1]).all()):  # isotropic per component: (B, K, L)
            d2 = (x[:, None, :] - self.means[None]).pow(2).sum(-1)  # (B, K)
            v = var[:, :1] + s2[None]  # (K, L)
            logn = -0.5 * (
                self.dim * torch.log(2 * math.pi * v)[None] + d2[..., None] / v[None]
            )
            loglik = torch.logsumexp(self.log_weights[None, :, None] + logn, 1)
        else:  # diagonal: one level at a time keeps the memory at (B, K, D)
            diff2 = (x[:, None, :] - self.means[None]).pow(2)
            cols = []
            for s2_i in s2.tolist():
                v = var + s2_i
                logn = -0.5 * (torch.log(2 * math.pi * v).sum(-1)[None]
                               + (diff2 / v[None]).sum(-1))
                cols.append(torch.logsumexp(self.log_weights[None] + logn, 1))
            loglik = torch.stack(cols, 1)
        joint = lp[None] + loglik
        return joint - torch.logsumexp(joint, 1, keepdim=True)


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


def thin_mixture(
    dim: int = 2, n_components: int = 8, width: float = 0.05, seed: int = 0
) -> GaussianMixture:
    r"""A hard test problem for fast ODE solvers (Part II): ``n_components`` thin,
    anisotropic Gaussians with unequal weights in ``dim`` dimensions, at the scale of
    image data ([-1, 1]). Component k has mean uniform in $[-0.8,0.8]^D$, diagonal
    standard deviations ``width`` times a uniform factor in [0.5, 1.5] per coordinate,
    and weight proportional to $1/(k+1)$ (the heaviest is ``n_components`` times the
    lightest). Different ``seed`` values give different mixtures of the same kind:
    a solver tuned on one is checked on another."""
    dim = C.positive_int(dim, "dim")
    k = C.positive_int(n_components, "n_components")
    width = C.positive(width, "width")
    g = torch.Generator().manual_seed(C.seed(seed))
    means = (torch.rand(k, dim, generator=g, dtype=_F64) * 2 - 1) * 0.8
    std = width * (0.5 + torch.rand(k, dim, generator=g, dtype=_F64))
    weights = 1.0 / torch.arange(1, k + 1, dtype=_F64)
    return GaussianMixture(means, std**2, weights)


# --- chapter I.7: Gaussian data with a full covariance, and its closed-form flow ----
class GaussianPCA:
    r"""Gaussian data $N(\mu,\Sigma)$ with $\Sigma=U\mathrm{diag}(\kappa)U^\top$ given
    by its principal components, and the closed-form probability-flow ODE of its
    noised marginals $p_t=N(\alpha_t\mu,\alpha_t^2\Sigma+\sigma_t^2I)$ (chapter I.7,
    "The Gaussian closed form").

    With $c_k=u_k^\top(x_t-\alpha_t\mu)$ and $V_k(t)=\alpha_t^2\kappa_k+\sigma_t^2$ the
    PF-ODE decouples into $\dot c_k=\tfrac12(\dot V_k/V_k)c_k$, so under any schedule
    $c_k(t)=\sqrt{V_k(t)/V_k(s)}\,c_k(s)$; directions outside the span of $U$ have zero
    variance and scale by $\sigma_t/\sigma_s$.

    Args:
        mean: (D,) the mean $\mu$.
        eigvals: (r,) the variances $\kappa_k\ge0$ along the columns of ``eigvecs``.
        eigvecs: (D, r) orthonormal columns $u_k$, r <= D; default the identity
            (then ``eigvals`` has D entries: a diagonal covariance).
    Everything is computed in float64.
    """

    def __init__(self, mean, eigvals, eigvecs=None):
        mean = C.real_tensor(mean, "mean")
        if mean.dim() != 1 or mean.numel() < 1:
            raise ValueError(
                f"mean must be a non-empty 1-D vector; got shape {tuple(mean.shape)}"
            )
        D = mean.numel()
        kappa = C.real_tensor(eigvals, "eigvals")
        if kappa.dim() != 1 or not 1 <= kappa.numel() <= D:
            raise ValueError(
                f"eigvals must be a 1-D vector of 1 to {D} variances; got shape "
                f"{tuple(kappa.shape)}"
            )
        if bool((kappa < 0).any()):
            raise ValueError(
                f"eigvals must be >= 0 (variances); got {kappa.min().item():.3g}"
            )
        r = kappa.numel()
        if eigvecs is None:
            if r != D:
                raise ValueError(
                    f"without eigvecs, eigvals must have one variance per dimension "
                    f"({D}); got {r}"
                )
            U = torch.eye(D, dtype=_F64)
        else:
            U = C.real_tensor(eigvecs, "eigvecs")
            if U.shape != (D, r):
                raise ValueError(
                    f"eigvecs must have shape ({D}, {r}) (one column per eigenvalue); "
                    f"got {tuple(U.shape)}"
                )
            gram_err = (U.T @ U - torch.eye(r, dtype=_F64)).abs().max().item()
            if gram_err > 1e-6:
                raise ValueError(
                    f"eigvecs must have orthonormal columns; U^T U differs from the "
                    f"identity by {gram_err:.2g}"
                )
        self.mean, self.eigvals, self.eigvecs = mean.clone(), kappa.clone(), U.clone()

    def __repr__(self):
        return f"GaussianPCA(D={self.dim}, rank={self.rank})"

    @property
    def dim(self) -> int:
        return self.mean.numel()

    @property
    def rank(self) -> int:
        """The number of principal components kept (columns of ``eigvecs``)."""
        return self.eigvals.numel()

    @classmethod
    def from_data(cls, x, rank: int | None = None) -> "GaussianPCA":
        r"""The Gaussian fitted to the rows of ``x`` (N, D) by maximum likelihood:
        the sample mean and the eigendecomposition of the covariance
        $\frac1N\sum_n(x_n-\mu)(x_n-\mu)^\top$, eigenvalues in decreasing order and
        clipped at 0 (round-off); ``rank`` keeps the leading components only (the
        rest then count as zero-variance directions)."""
        x = C.batch(C.real_tensor(x, "x"), "x")
        if x.dim() != 2 or x.shape[0] < 2:
            raise ValueError(
                f"x must have shape (N, D) with N >= 2; got {tuple(x.shape)}"
            )
        D = x.shape[1]
        r = D if rank is None else C.positive_int(rank, "rank")
        if r > D:
            raise ValueError(f"rank must be at most the dimension {D}; got {r}")
        mu = x.mean(0)
        xc = x - mu
        kappa, U = torch.linalg.eigh(xc.T @ xc / x.shape[0])
        kappa, U = kappa.flip(0).clamp_min(0.0), U.flip(1)
        return cls(mu, kappa[:r], U[:, :r].contiguous())

    # ------------------------------------------------------------------------------
    def _check_x(self, x, name: str = "x") -> torch.Tensor:
        if not torch.is_tensor(x) or x.dim() != 2 or x.shape[1] != self.dim:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(
                f"{name} must be a tensor of shape (B, {self.dim}); got {shape}"
            )
        return C.batch(x, name)

    def _V(self, a, s):
        """V_k = alpha^2 kappa_k + sigma^2 for (T,) alpha, sigma: shape (T, r)."""
        return a[:, None] ** 2 * self.eigvals + s[:, None] ** 2

    def _gain(self, a, s):
        """alpha kappa_k / V_k (T, r), 0 where kappa_k = sigma = 0 (the limit)."""
        V = self._V(a, s)
        num = a[:, None] * self.eigvals
        return torch.where(V > 0, num / torch.where(V > 0, V, 1.0), 0.0)

    def _split(self, x, a):
        """(coordinates c_k (B, r), residual outside span U (B, D)) of x - a mu."""
        d = x - a * self.mean
        c = d @ self.eigvecs
        return c, d - c @ self.eigvecs.T

    def flow(self, x, s, t, schedule: Schedule) -> torch.Tensor:
        r"""The exact PF-ODE flow map from time ``s`` to time(s) ``t``:

        $$x_t=\alpha_t\mu+\sum_k\sqrt{\tfrac{V_k(t)}{V_k(s)}}\,u_ku_k^\top
        (x_s-\alpha_s\mu)+\frac{\sigma_t}{\sigma_s}P_\perp(x_s-\alpha_s\mu),$$

        $V_k(t)=\alpha_t^2\kappa_k+\sigma_t^2$, $P_\perp=I-UU^\top$. ``x``: (B, D)
        states at time ``s`` (a number with $\sigma_s>0$); ``t``: a number (returns
        (B, D)) or a 1-D tensor of T times (returns (T, B, D)), earlier or later than
        ``s``. float64."""
        x = self._check_x(x).to(_F64)
        C.schedule(schedule)
        s = C.scalar_time(s, "s")
        many = torch.is_tensor(t) and t.dim() > 0
        if many and t.dim() != 1:
            raise ValueError(f"t must be a number or a 1-D tensor; shape {t.shape}")
        ts = C.as_time(t, dtype=_F64).reshape(-1).to(_F64)
        a_s, s_s = schedule._coefficients(s)[:2]
        if not s_s > 0:
            raise ValueError(
                f"the flow map is singular at s = {s} where sigma_s = 0 (the data "
                f"distribution is not invertible there); start at s with sigma_s > 0"
            )
        a_t, s_t = schedule._log_alpha(ts).exp(), schedule._log_sigma(ts).exp()
        V_s = self._V(torch.tensor([a_s], dtype=_F64), torch.tensor([s_s], dtype=_F64))
        ratio = (self._V(a_t, s_t) / V_s).sqrt()  # (T, r)
        c, perp = self._split(x, a_s)
        out = (
            a_t[:, None, None] * self.mean
            + (ratio[:, None, :] * c) @ self.eigvecs.T
            + (s_t / s_s)[:, None, None] * perp
        )
        return out if many else out[0]

    def x0_hat(self, x, t, schedule: Schedule) -> torch.Tensor:
        r"""The exact denoiser (Wiener filter) $E[x_0\mid x_t=x]=
        \mu+\sum_k\frac{\alpha_t\kappa_k}{\alpha_t^2\kappa_k+\sigma_t^2}u_ku_k^\top
        (x-\alpha_t\mu)$ at one time ``t`` (a number), shape (B, D), float64. Along
        the closed-form trajectory, ``x0_hat(flow(x1, 1, t), t)`` is the running
        estimate $\mu+\sum_k\frac{\alpha_t\kappa_k}{\sqrt{V_k(t)V_k(1)}}c_k(1)u_k$."""
        x = self._check_x(x).to(_F64)
        C.schedule(schedule)
        t = C.scalar_time(t, "t")
        a, s = schedule._coefficients(t)[:2]
        a, s = torch.tensor([a], dtype=_F64), torch.tensor([s], dtype=_F64)
        return self._x0_hat(x, a, s)

    def _x0_hat(self, x, a, s):
        """Wiener filter for (B, D) x and (1,) or (B,) alpha, sigma."""
        c, _ = self._split(x, a[:, None])
        return self.mean + (self._gain(a, s) * c) @ self.eigvecs.T

    def commitment(self, t, schedule: Schedule) -> torch.Tensor:
        r"""The fraction of each principal component already decided at time ``t``,
        $\rho_k(t)=\sqrt{\alpha_t^2\kappa_k/(\alpha_t^2\kappa_k+\sigma_t^2)}$, i.e.
        $\rho_k^2=\mathrm{logistic}(2\lambda_t+\log\kappa_k)$: along the closed-form
        flow, $u_k^\top(\hat x_0(t)-\mu)=\rho_k(t)\,u_k^\top(x_0-\mu)$. ``t`` a number
        (returns (r,)) or a 1-D tensor of T times (returns (T, r)); 0 where
        $\kappa_k=0$."""
        C.schedule(schedule)
        many = torch.is_tensor(t) and t.dim() > 0
        if many and t.dim() != 1:
            raise ValueError(f"t must be a number or a 1-D tensor; shape {t.shape}")
        ts = C.as_time(t, dtype=_F64).reshape(-1).to(_F64)
        a, s = schedule._log_alpha(ts).exp(), schedule._log_sigma(ts).exp()
        V = self._V(a, s)
        num = a[:, None] ** 2 * self.eigvals
        rho = torch.where(V > 0, num / torch.where(V > 0, V, 1.0), 0.0).sqrt()
        return rho if many else rho[0]

    def denoiser(self, schedule: Schedule) -> Denoiser:
        """The exact denoiser :meth:`x0_hat` as a :class:`dlib.param.Denoiser` (kind
        "x0"), evaluated in float64 and returned in x's dtype: an oracle for the
        samplers (e.g. to integrate the PF-ODE numerically)."""
        C.schedule(schedule)

        def fn(x, t):
            t64 = t.to(_F64).reshape(-1)
            a, s = schedule._log_alpha(t64).exp(), schedule._log_sigma(t64).exp()
            return self._x0_hat(x.to(_F64), a, s).to(x.dtype)

        return _PCADenoiser(self, fn, schedule)


class _PCADenoiser(Denoiser):
    def __init__(self, model: GaussianPCA, fn, schedule: Schedule):
        super().__init__(fn, schedule, "x0")
        self.model = model

    def __repr__(self):
        return f"Denoiser({self.model!r}, schedule={self.schedule!r})"

    def _check_x(self, x, name: str = "x"):
        return self.model._check_x(x, name)


# --- chapter II.7: the 25-Gaussian grid, a standard test of mode mixture -----------
def grid_mixture(
    n: int = 5, spacing: float = 0.5, std: float = 0.05
) -> GaussianMixture:
    r"""$n\times n$ isotropic 2-D Gaussians of standard deviation ``std`` with equal
    weights, centred on a square grid of step ``spacing`` around the origin (n = 5:
    the 25-Gaussian grid of the mode-mixture literature; the default fills
    [-1, 1]^2, the data range of images). Component k has label k, so the exact
    noisy classifier is available (chapter II.7, DPM-OT)."""
    n = C.positive_int(n, "n")
    spacing, std = C.positive(spacing, "spacing"), C.positive(std, "std")
    c = (torch.arange(n, dtype=_F64) - (n - 1) / 2) * spacing
    means = torch.cartesian_prod(c, c)
    return GaussianMixture(means, std**2, labels=list(range(n * n)))
