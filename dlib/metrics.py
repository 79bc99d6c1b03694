r"""Sample-quality and likelihood metrics: sliced Wasserstein-2, MMD, energy distance,
Frechet distance, exact and PF-ODE log-likelihoods."""

from __future__ import annotations

import math
from typing import Callable

import torch

from . import _checks as C
from ._checks import as_time, one_of, positive
from .param import Denoiser
from .sampling import _solve_ivp, sample_heun

__all__ = [
    "sliced_wasserstein",
    "mmd",
    "energy_distance",
    "log_likelihood",
    "pf_ode_log_likelihood",
    "straightness",
    "rms_error",
    "frechet_distance",
]


def _pair(x, y):
    x, y = C.real_tensor(x, "x"), C.real_tensor(y, "y")
    if (
        x.dim() != 2
        or y.dim() != 2
        or x.shape[1] != y.shape[1]
        or min(x.shape[0], y.shape[0]) < 2
    ):
        raise ValueError(
            f"x and y must be (N, D) and (M, D) with N, M >= 2; got {tuple(x.shape)} "
            f"and {tuple(y.shape)}"
        )
    return x.to(torch.float64), y.to(torch.float64)


def _quantiles(v: torch.Tensor, n: int) -> torch.Tensor:
    """Empirical quantile function of the columns of v (N, P) at the n mid-points
    (i + 1/2)/n."""
    v = v.sort(0).values
    N = v.shape[0]
    pos = ((torch.arange(n, dtype=torch.float64) + 0.5) / n * N - 0.5).clamp(0, N - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=N - 1)
    w = (pos - lo)[:, None]
    return v[lo] * (1 - w) + v[hi] * w


def sliced_wasserstein(
    x, y, n_projections: int = 256, generator: torch.Generator | None = None
) -> float:
    r"""Sliced Wasserstein-2 distance
    $\big(E_\theta W_2^2(\theta^\top x,\theta^\top y)\big)^{1/2}$ over random unit
    directions $\theta$; 1-D distances from the empirical quantile functions (sizes may
    differ)."""
    x, y = _pair(x, y)
    n_projections = C.positive_int(n_projections, "n_projections")
    C.generator(generator)
    theta = torch.randn(
        x.shape[1], n_projections, dtype=torch.float64, generator=generator
    )
    theta = theta / theta.norm(dim=0, keepdim=True)
    n = max(x.shape[0], y.shape[0])
    d2 = ((_quantiles(x @ theta, n) - _quantiles(y @ theta, n)) ** 2).mean()
    return float(d2.sqrt())


def mmd(x, y, bandwidths=(0.5, 1.0, 2.0)) -> float:
    r"""Unbiased estimate of the squared MMD with a sum of Gaussian kernels
    $k(a,b)=\sum_h\exp(-\|a-b\|^2/(2h^2))$ (can be slightly negative when the laws
    agree)."""
    x, y = _pair(x, y)
    if not isinstance(bandwidths, (tuple, list)) or not bandwidths:
        raise ValueError(
            f"bandwidths must be a non-empty tuple or list of positive numbers; got "
            f"{bandwidths!r}"
        )
    hs = [positive(h, "bandwidths") for h in bandwidths]

    def k(a, b):
        d2 = torch.cdist(a, b) ** 2
        return sum(torch.exp(-d2 / (2 * h * h)) for h in hs)

    n, m = x.shape[0], y.shape[0]
    kxx, kyy = k(x, x), k(y, y)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return float(sxx + syy - 2 * k(x, y).mean())


def energy_distance(x, y) -> float:
    r"""Energy distance $2E\|X-Y\|-E\|X-X'\|-E\|Y-Y'\|$ (within-sample terms exclude the
    diagonal)."""
    x, y = _pair(x, y)
    n, m = x.shape[0], y.shape[0]
    exy = torch.cdist(x, y).mean()
    exx = torch.cdist(x, x).sum() / (n * (n - 1))
    eyy = torch.cdist(y, y).sum() / (m * (m - 1))
    return float(2 * exy - exx - eyy)


def log_likelihood(model, x) -> float:
    """Mean exact log-likelihood (nats per example) of samples ``x`` under an analytic
    model with a ``log_prob`` method (e.g. :class:`dlib.analytic.GaussianMixture`)."""
    if not hasattr(model, "log_prob"):
        raise ValueError("model must have a log_prob(x) method")
    return float(model.log_prob(x).mean())


def _divergence_exact(fn, x):
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        v = fn(x)
        div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        flat = v.reshape(x.shape[0], -1)
        for d in range(flat.shape[1]):
            g = torch.autograd.grad(
                flat[:, d].sum(), x, retain_graph=d < flat.shape[1] - 1
            )[0]
            div = div + g.reshape(x.shape[0], -1)[:, d]
    return v.detach(), div.detach()


def _divergence_hutchinson(fn, x, probes):
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        v = fn(x)
        div = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for k, z in enumerate(probes):
            g = torch.autograd.grad((v * z).sum(), x, retain_graph=k < len(probes) - 1)[
                0
            ]
            div = div + (g * z).reshape(x.shape[0], -1).sum(1)
    return v.detach(), (div / len(probes)).detach()


def pf_ode_log_likelihood(
    denoiser: Denoiser,
    x: torch.Tensor,
    *,
    t_min: float = 1e-3,
    t_max: float = 1.0,
    prior_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
    divergence: str = "exact",
    n_probes: int = 1,
    rtol: float = 1e-6,
    atol: float = 1e-6,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""$\log p_{t_{min}}(x)=\log p_{t_{max}}(x(t_{max}))
    +\int_{t_{min}}^{t_{max}}\nabla\cdot v(x(t),t)\,dt$ per example (nats), integrating
    the PF-ODE and the divergence together from the data up to $t_{max}$ (scipy
    RK45).

    ``divergence="exact"`` uses one autograd pass per dimension; ``"hutchinson"`` uses
    ``n_probes`` fixed Rademacher probes $E[z^\top\partial_xv\,z]$. The default prior is
    $N(0,(\alpha^2+\sigma^2)I)$ at $t_{max}$ (right for unit-variance data); pass
    ``prior_log_prob`` for anything else (it receives the end points on the CPU in
    float64). The ODE state is kept on the CPU in float64 by scipy; the model is
    evaluated in ``x``'s dtype and on ``x``'s device, so a GPU model needs no
    wrapper."""
    one_of(divergence, ("exact", "hutchinson"), "divergence")
    t_min, t_max = C.scalar_time(t_min, "t_min"), C.scalar_time(t_max, "t_max")
    if not 0 < t_min < t_max:
        raise ValueError(
            f"need 0 < t_min < t_max (t_min > 0: the PF-ODE starts off the data); got "
            f"t_min={t_min}, t_max={t_max}"
        )
    C.denoiser(denoiser)
    denoiser._check_x(x, "x")
    n_probes = C.positive_int(n_probes, "n_probes")
    rtol, atol = positive(rtol, "rtol"), positive(atol, "atol")
    C.optional_function(prior_log_prob, "prior_log_prob", "prior_log_prob(x)")
    C.generator(generator)
    shape, B = x.shape, x.shape[0]
    D = x[0].numel()
    dtype = torch.float64
    probes = None
    if divergence == "hutchinson":
        probes = [
            (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(
                device=x.device, dtype=x.dtype
            )
            for _ in range(n_probes)
        ]

    def rhs(t: float, y: torch.Tensor) -> torch.Tensor:
        # the ODE state lives on the CPU in float64; the model runs in x's dtype and
        # device
        xt = y[: B * D].reshape(shape).to(device=x.device, dtype=x.dtype)
        fn = lambda z: denoiser._predict(z, t, "velocity")  # noqa: E731
        if probes is None:
            v, div = _divergence_exact(fn, xt)
        else:
            v, div = _divergence_hutchinson(fn, xt, probes)
        return torch.cat([v.reshape(-1), div]).to("cpu", dtype)

    y0 = torch.cat(
        [x.detach().to("cpu", dtype).reshape(-1), torch.zeros(B, dtype=dtype)]
    )
    yT = _solve_ivp(rhs, y0, (t_min, t_max), None, method="RK45", rtol=rtol, atol=atol)[
        -1
    ]
    xT, int_div = yT[: B * D].reshape(shape), yT[B * D :]
    if prior_log_prob is None:
        sch = denoiser.schedule
        c = sch.coefficients(t_max)
        var = c.alpha**2 + c.sigma**2
        prior = -0.5 * (xT.reshape(B, -1) ** 2).sum(1) / var - 0.5 * D * math.log(
            2 * math.pi * var
        )
    else:
        prior = prior_log_prob(xT)
    return prior + int_div


def straightness(
    denoiser: Denoiser, x: torch.Tensor, ts, *, relative: bool = False
) -> float:
    r"""Straightness of the PF-ODE paths started at ``x`` (time ``ts[0]``) and solved
    with Heun on the grid ``ts``:

    $$S=\frac{1}{|t_N-t_0|}\int_{t_N}^{t_0}E\,\Big\|\frac{x(t_N)-x(t_0)}{t_N-t_0}
    -v(x(t),t)\Big\|^2dt,$$

    the mean squared deviation of the velocity from the constant speed of the chord (Liu
    et al. 2023 use $t_0=1$, $t_N=0$, where the chord is $x_1-x_0$). $S=0$ exactly when
    every path is a straight segment run at constant speed, which is when a single Euler
    step over the whole interval is exact. The integral is the trapezoid rule on ``ts``
    (one extra velocity evaluation at the end), the expectation the batch mean.
    ``relative=True`` divides by the mean squared chord speed, which makes $S$ free of
    the scale of ``x``. $S$ depends on the time variable: the same curves in another
    schedule's time have another $S$. ``ts`` must not end at 0 (a grid ending at 0 means
    a denoising step)."""
    C.denoiser(denoiser)
    denoiser._check_x(x, "x")
    C.flag(relative, "relative")
    ts = as_time(ts, name="ts", dtype=torch.float64).to(torch.float64)
    if ts.dim() != 1 or ts.numel() < 2 or (ts[1:] >= ts[:-1]).any():
        raise ValueError(
            "ts must be a strictly decreasing 1-D grid with at least 2 times"
        )
    if ts[-1] == 0:
        raise ValueError(
            "ts must end at a positive time (at t=0 the samplers take a denoising "
            "step, not an ODE step)"
        )
    states = [x]
    sample_heun(denoiser, x, ts, callback=lambda info: states.append(info["x"]))
    B = x.shape[0]
    with torch.no_grad():
        vel = [
            denoiser._predict(xi, float(ti), "velocity") for xi, ti in zip(states, ts)
        ]
    span = float(ts[-1] - ts[0])  # negative: the ODE runs backwards in time
    chord = (states[-1] - states[0]) / span
    dev = torch.stack(
        [(chord - v).reshape(B, -1).pow(2).sum(1).to(torch.float64) for v in vel]
    )  # (N+1, B)
    h = (ts[:-1] - ts[1:])[:, None]
    integral = (0.5 * h * (dev[1:] + dev[:-1])).sum(0) / abs(span)
    value = integral.mean()
    if relative:
        value = value / chord.reshape(B, -1).pow(2).sum(1).to(torch.float64).mean()
    return float(value)


def rms_error(x, reference) -> tuple[float, float]:
    r"""The root-mean-square error of a batch of solutions against the reference
    solutions from the same starting noise, and its standard error:
    $e_i=\tfrac1D\lVert x_i-x^{\rm ref}_i\rVert^2$, $\mathrm{RMS}=(\bar e)^{1/2}$,
    $\mathrm{se}=\mathrm{sd}(e)/(2\sqrt N\,\mathrm{RMS})$ (the delta method). Few
    samples that land in another mixture component than their reference dominate
    $\bar e$ in high dimension: compare solvers only where the difference exceeds a few
    standard errors. Introduced in Part II (fast solvers)."""
    x = C.real_tensor(x, "x").to(torch.float64)
    ref = C.real_tensor(reference, "reference").to(torch.float64)
    if x.dim() != 2 or x.shape[0] < 2 or x.shape != ref.shape:
        raise ValueError(
            f"x and reference must both be (N, D) with N >= 2 (one reference per "
            f"sample); got {tuple(x.shape)} and {tuple(ref.shape)}"
        )
    e = ((x - ref) ** 2).mean(1)
    rms = float(e.mean().sqrt())
    se = float(e.std() / math.sqrt(e.numel())) / (2 * rms) if rms > 0 else 0.0
    return rms, se


def frechet_distance(x, y) -> float:
    r"""The Frechet distance between Gaussians fitted to two samples (FID's formula, in
    whatever feature space ``x`` and ``y`` live in; Part II uses raw pixels):
    $\lVert\mu_x-\mu_y\rVert^2+\mathrm{tr}\,\Sigma_x+\mathrm{tr}\,\Sigma_y
    -2\,\mathrm{tr}\,(\Sigma_x^{1/2}\Sigma_y\Sigma_x^{1/2})^{1/2}$, the squared
    Wasserstein-2 distance between the two fitted Gaussians (unbiased covariances,
    float64; the matrix square roots by symmetric eigendecompositions, so the value
    is exact up to round-off, not an iterative approximation). Even two samples of
    one law give a positive value that shrinks like D/N: report that floor next to
    it. Introduced in Part II (chapters II.7-II.9)."""
    x, y = _pair(x, y)
    mx, my = x.mean(0), y.mean(0)
    cx, cy = torch.cov(x.T).reshape(x.shape[1], -1), torch.cov(y.T).reshape(
        y.shape[1], -1
    )
    root_x = _psd_sqrt(cx)
    cross = _psd_sqrt(root_x @ cy @ root_x)
    value = (mx - my).pow(2).sum() + cx.trace() + cy.trace() - 2 * cross.trace()
    return max(float(value), 0.0)


def _psd_sqrt(m: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative round-off
    eigenvalues set to 0)."""
    vals, vecs = torch.linalg.eigh((m + m.T) / 2)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T
