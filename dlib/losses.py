r"""Training losses and likelihood bounds: the denoising family, score matching, flow
matching, ELBOs.

All denoising-type losses regress a network output onto :func:`dlib.param.target` of
some kind at $x_t=\alpha_tx_0+\sigma_t\epsilon$; they differ only in the kind and in a
weight $w(t)$. The continuous-time ELBO is the member with $w(t)=$
:func:`elbo_weight`.

Each loss validates its inputs once per call (types, shapes, finite data), as every
public function does (see :mod:`dlib._checks`): a training step costs one such check.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from . import _checks as C
from ._checks import as_time, batch_time, bcast, one_of, rand, randn
from .param import KINDS, Denoiser, target
from .schedules import Schedule

__all__ = ["gaussian_kl", "sample_xt", "denoising_loss", "flow_matching_loss",
           "elbo_weight", "dsm_loss", "esm_loss", "discrete_nelbo", "continuous_nelbo",
           "gaussian_discretization_excess", "gaussian_nelbo",
           "optimal_reverse_variance", "INTERPOLANT_TARGETS", "interpolant_loss"]


def gaussian_kl(mean1, var1, mean2, var2) -> torch.Tensor:
    r"""Elementwise $KL(N(m_1,v_1)\,\|\,N(m_2,v_2))
    =\tfrac12\big(\log\frac{v_2}{v_1}+\frac{v_1+(m_1-m_2)^2}{v_2}-1\big)$.

    Numbers, arrays or tensors of real numbers with broadcastable shapes (numbers and
    arrays become float64); the variances must be positive, everything finite."""
    names = ("mean1", "var1", "mean2", "var2")
    args = [C.real_tensor(a, n, dtype=None if torch.is_tensor(a) else torch.float64)
            for a, n in zip((mean1, var1, mean2, var2), names)]
    try:
        torch.broadcast_shapes(*(a.shape for a in args))
    except RuntimeError:
        shapes = ", ".join(f"{n} {tuple(a.shape)}" for n, a in zip(names, args))
        raise ValueError(
            f"mean1, var1, mean2 and var2 must have broadcastable shapes; got {shapes}"
        ) from None
    mean1, var1, mean2, var2 = args
    for v, n in ((var1, "var1"), (var2, "var2")):
        if not bool((v > 0).all()):
            raise ValueError(f"{n} (a variance) must be positive")
    return 0.5 * (torch.log(var2 / var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


def _sum_dims(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).sum(1)


def sample_xt(x0: torch.Tensor, t, schedule: Schedule,
              generator: torch.Generator | None = None, *,
              eps: torch.Tensor | None = None):
    r"""Return $(x_t, \epsilon)$ with $x_t=\alpha_tx_0+\sigma_t\epsilon$:
    $\epsilon\sim N(0,I)$ is drawn (with ``generator``) unless given as ``eps`` (same
    shape as ``x0``), which is how a coupling of data and noise (reflow, optimal
    transport) reuses the forward process."""
    C.schedule(schedule)
    x0 = C.batch(x0, "x0")
    t = C.check_time(t, x0)
    C.generator(generator)
    if eps is None:
        eps = randn(x0.shape, x0, generator)
    else:
        eps = C.tensor(eps, "eps", floating=True)
        if eps.shape != x0.shape:
            raise ValueError(f"eps must have the shape of x0 {tuple(x0.shape)}; got "
                             f"{tuple(eps.shape)}")
    c = schedule._coefficients(t)
    return bcast(c.alpha, x0) * x0 + bcast(c.sigma, x0) * eps, eps


def _draw_t(x0, t, t_range, generator):
    if t is not None:
        return batch_time(t, x0)
    lo, hi = C.time_range(t_range)
    u = rand(x0.shape[0], x0, generator)
    return lo + (hi - lo) * u


def denoising_loss(net: Callable, x0: torch.Tensor, schedule: Schedule,
                   kind: str = "eps", *,
                   weight: Callable[[torch.Tensor], torch.Tensor] | None = None, t=None,
                   t_range: tuple[float, float] = (1e-3, 1.0),
                   generator: torch.Generator | None = None,
                   reduce: bool = True) -> torch.Tensor:
    r"""$E_{t,x_0,\epsilon}\,w(t)\,\|\mathrm{net}(x_t,t)-\mathrm{target}_{kind}\|^2$
    (squared error summed over dims).

    ``kind="eps"`` with ``weight=None`` is DDPM's $L_{simple}$; ``"x0"``, ``"v"`` are
    its re-weighted twins; ``"velocity"`` is (conditional) flow matching; ``"score"``
    is denoising score matching. ``t`` fixes the time(s); otherwise
    $t\sim U(t_{min},t_{max})$. Returns the batch mean (or the per-example values with
    ``reduce=False``)."""
    C.function(net, "net", "net(x_t, t)")
    one_of(kind, KINDS, "prediction kind")
    C.schedule(schedule)
    x0 = C.batch(x0, "x0")
    C.optional_function(weight, "weight", "weight(t)")
    C.generator(generator)
    C.flag(reduce, "reduce")
    t = _draw_t(x0, t, t_range, generator)
    xt, eps = sample_xt(x0, t, schedule, generator)
    out = C.output(net(xt, t), xt, "net(x_t, t)")
    err = _sum_dims((out - target(kind, x0, eps, t, schedule)) ** 2)
    if weight is not None:
        w = weight(t)
        if not torch.is_tensor(w) or w.shape not in ((), t.shape):
            got = tuple(w.shape) if torch.is_tensor(w) else type(w).__name__
            raise ValueError(
                f"weight(t) must return a tensor of shape {tuple(t.shape)} (or a "
                f"0-d tensor); got {got}"
            )
        err = err * w
    return err.mean() if reduce else err


def flow_matching_loss(net: Callable, x0: torch.Tensor, schedule: Schedule,
                       **kwargs) -> torch.Tensor:
    r"""Conditional flow matching: regress onto $\dot\alpha_tx_0+\dot\sigma_t\epsilon$
    (= ``denoising_loss(kind="velocity")``)."""
    return denoising_loss(net, x0, schedule, "velocity", **kwargs)


def elbo_weight(kind: str, t, schedule: Schedule) -> torch.Tensor:
    r"""The weight $w(t)$ that turns $w(t)\|\hat y-y\|^2$ for prediction ``kind`` into
    the continuous-time ELBO integrand $-\dot\lambda_t\|\epsilon-\hat\epsilon\|^2$
    (VDM):

    eps: $-\dot\lambda$;  x0: $-\dot\lambda e^{2\lambda}$;
    v: $-\dot\lambda\,\alpha^2/(\alpha^2+\sigma^2)^2$;
    score: $-\dot\lambda\sigma^2=g^2/2$;
    velocity: $-1/(\sigma^2\dot\lambda)=2/g^2$.

    The score and velocity weights are computed from $g^2(t)$, which stays finite where
    $\sigma_t=0$ (at $t=0$ the forms with $\dot\lambda$ are $0\cdot\infty$)."""
    one_of(kind, KINDS, "prediction kind")
    C.schedule(schedule)
    t = as_time(t)
    if kind in ("score", "velocity"):
        g2 = schedule._sde(t)[1]
        return 0.5 * g2 if kind == "score" else 2.0 / g2
    c = schedule._coefficients(t)
    # -d lambda/dt = d sigma/dt / sigma - d alpha/dt / alpha; multiplied out by alpha^2
    # so that the x0 and v weights stay finite where alpha_t = 0
    if kind == "eps":
        return c.d_sigma / c.sigma - c.d_alpha / c.alpha
    num = c.alpha**2 * c.d_sigma / c.sigma - c.alpha * c.d_alpha
    if kind == "x0":
        return num / c.sigma**2
    return num / (c.alpha**2 + c.sigma**2) ** 2


def dsm_loss(score_fn: Callable, x0: torch.Tensor, t, schedule: Schedule,
             generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Denoising score matching at fixed t:
    $\tfrac12E\|s(x_t,t)+\epsilon/\sigma_t\|^2$ (batch mean). Singular where
    $\sigma_t=0$ (a ValueError says so)."""
    C.function(score_fn, "score_fn", "score_fn(x, t)")
    C.schedule(schedule)
    x0 = C.batch(x0, "x0")
    t = batch_time(t, x0)
    xt, eps = sample_xt(x0, t, schedule, generator)
    s = C.output(score_fn(xt, t), xt, "score_fn(x, t)")
    return 0.5 * _sum_dims((s - target("score", x0, eps, t, schedule)) ** 2).mean()


def esm_loss(score_fn: Callable, true_score: Callable, x: torch.Tensor,
             t) -> torch.Tensor:
    r"""Explicit score matching $\tfrac12E\|s(x,t)-\nabla\log p_t(x)\|^2$ on samples
    ``x`` of $p_t$."""
    C.function(score_fn, "score_fn", "score_fn(x, t)")
    C.function(true_score, "true_score", "true_score(x, t)")
    x = C.batch(x, "x")
    t = batch_time(t, x)
    s = C.output(score_fn(x, t), x, "score_fn(x, t)")
    s_true = C.output(true_score(x, t), x, "true_score(x, t)")
    return 0.5 * _sum_dims((s - s_true) ** 2).mean()


def _reverse_variance(schedule: Schedule, s, t, reverse_var, n_steps: int):
    r"""The variance $\sigma_p^2$ of $p(x_s\mid x_t)$ for each step $(s, t)$ and the
    posterior coefficients: ``(b, sigma2_post, sigma2_p)``, each of shape (n_steps,)."""
    _, b, post = schedule.posterior(s, t)
    if isinstance(reverse_var, str):
        one_of(reverse_var, ("small", "large"), "reverse_var")
        if reverse_var == "small":
            return b, post, post
        return b, post, schedule.transition(s, t)[1]
    if not torch.is_tensor(reverse_var):
        raise ValueError(
            "reverse_var must be 'small', 'large' or a 1-D tensor of variances, one "
            f"per step; got {type(reverse_var).__name__}"
        )
    var = reverse_var.to(torch.float64)
    if var.shape != (n_steps,) or not bool(
        (torch.isfinite(var) & (var > 0)).all()
    ):
        raise ValueError(
            f"reverse_var as a tensor must hold {n_steps} positive finite variances "
            f"(one per step t_(i-1) < t_i); got shape {tuple(var.shape)}"
        )
    return b, post, var


def discrete_nelbo(
    denoiser: Denoiser,
    x0: torch.Tensor,
    ts: torch.Tensor,
    generator: torch.Generator | None = None,
    chunk: int = 100_000,
    *,
    reverse_var="small",
) -> dict[str, torch.Tensor]:
    r"""Negative ELBO (nats, per example) of the T-step chain on the increasing grid
    $0<t_1<\dots<t_T$ (chapter 1):

    $-\log p(x_0)\le \underbrace{KL(q(x_{t_T}|x_0)\|N(0,I))}_{prior}
    +\sum_{i=2}^T \underbrace{E_q KL(q(x_{t_{i-1}}|x_{t_i},x_0)\|
    p(x_{t_{i-1}}|x_{t_i}))}_{diffusion}\underbrace{-E_q\log p(x_0|x_{t_1})}_{decoder}$.

    The model step $p(x_s|x_t)=N(a_{s|t}x_t+b_{s|t}\hat x_0,\ \sigma_p^2I)$ has the
    posterior's mean with $x_0\to\hat x_0$; ``reverse_var`` chooses $\sigma_p^2$:
    ``"small"`` the posterior variance $\tilde\sigma^2_{s|t}$ (DDPM's $\tilde\beta_i$),
    ``"large"`` the forward step's $\sigma^2_{t|s}$ (DDPM's $\beta_i$), or a tensor of
    $T-1$ variances, one per step (e.g. :func:`optimal_reverse_variance`). Each KL is
    $\tfrac D2\big(\log\frac{\sigma_p^2}{\tilde\sigma^2}
    +\frac{\tilde\sigma^2}{\sigma_p^2}-1\big)
    +\frac{b^2\|x_0-\hat x_0\|^2}{2\sigma_p^2}$. The decoder is
    $N(\hat x_0(x_{t_1}), \sigma_{t_1}^2I)$ for every choice. One Monte-Carlo draw of
    $x_{t_i}$ per step and example. Returns a dict of (B,) tensors: prior, diffusion,
    decoder, total."""
    C.denoiser(denoiser)
    x0 = denoiser._check_x(x0, "x0")
    ts = _increasing_grid(ts, 1)
    C.generator(generator)
    chunk = C.positive_int(chunk, "chunk")
    sch, B, D = denoiser.schedule, x0.shape[0], x0[0].numel()
    if ts.numel() > 1:
        b_all, post_all, var_all = _reverse_variance(
            sch, ts[:-1], ts[1:], reverse_var, ts.numel() - 1
        )
    elif not isinstance(reverse_var, str):
        raise ValueError("a grid with one time has no steps to give reverse_var for")
    x0 = x0.to(torch.float64)
    # prior: KL(N(alpha_T x0, sigma_T^2) || N(0, 1)) summed over dims
    aT, sT = sch.alpha(ts[-1]), sch.sigma(ts[-1])
    prior = _sum_dims(
        gaussian_kl(aT * x0, sT**2, torch.zeros(()), torch.ones(())).expand_as(x0)
    )
    # decoder at t_1
    t1 = ts[0].expand(B)
    xt, _ = sample_xt(x0, t1, sch, generator)
    x0_hat, _ = denoiser.x0_eps(xt, t1)
    var1 = sch.sigma(ts[0]) ** 2
    decoder = 0.5 * _sum_dims((x0 - x0_hat) ** 2) / var1 + 0.5 * D * torch.log(
        2 * math.pi * var1
    )
    # diffusion terms i = 2..T, evaluated in chunks of (step, example) pairs
    diffusion = torch.zeros(B, dtype=torch.float64, device=x0.device)
    if ts.numel() > 1:
        t_all = ts[1:]
        w_all = (b_all**2 / (2 * var_all)).to(x0.device)
        # the variance mismatch: 0 for "small" (Sigma = the posterior variance)
        ratio = post_all / var_all
        diffusion += (0.5 * D * (ratio - 1 - torch.log(ratio))).sum().to(x0.device)
        steps_per_chunk = max(1, chunk // B)
        for j in range(0, t_all.numel(), steps_per_chunk):
            tt, w = t_all[j : j + steps_per_chunk], w_all[j : j + steps_per_chunk]
            n = tt.numel()
            xb = x0.repeat(n, *([1] * (x0.dim() - 1)))
            tb = tt.repeat_interleave(B)
            xt, _ = sample_xt(xb, tb, sch, generator)
            x0_hat, _ = denoiser.x0_eps(xt, tb)
            err = _sum_dims((xb - x0_hat) ** 2).reshape(n, B)
            diffusion += (w[:, None] * err).sum(0)
    return {
        "prior": prior,
        "diffusion": diffusion,
        "decoder": decoder,
        "total": prior + diffusion + decoder,
    }


def continuous_nelbo(denoiser: Denoiser, x0: torch.Tensor,
                     t_range: tuple[float, float] = (1e-3, 1.0), *, n_t: int = 1,
                     sampling: str = "uniform",
                     generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Monte-Carlo estimate (per example, nats) of the continuous-time diffusion term
    $\int_{t_0}^{t_1}(-\dot\lambda_t)\,E\|\epsilon-\hat\epsilon(x_t,t)\|^2\,dt$ with
    ``n_t`` draws each.

    ``sampling="uniform"`` draws $t\sim U(t_0,t_1)$; ``"log_snr"`` draws $\lambda$
    uniformly between the end points and maps back with the schedule, which makes the
    estimator's distribution identical for every schedule with the same end-point
    log-SNRs (the VDM invariance)."""
    C.denoiser(denoiser)
    one_of(sampling, ("uniform", "log_snr"), "sampling")
    sch = denoiser.schedule
    t0, t1 = C.time_range(t_range)
    n_t = C.positive_int(n_t, "n_t")
    C.generator(generator)
    x0 = denoiser._check_x(x0, "x0").to(torch.float64)
    B = x0.shape[0]
    xb = x0.repeat(n_t, *([1] * (x0.dim() - 1)))
    u = torch.rand(B * n_t, dtype=torch.float64, generator=generator)
    if sampling == "uniform":
        t = t0 + (t1 - t0) * u
        w = (t1 - t0) * (-sch.d_log_snr(t))
    else:
        lam0 = sch.log_snr(torch.tensor(t0, dtype=torch.float64))
        lam1 = sch.log_snr(torch.tensor(t1, dtype=torch.float64))
        if not bool(torch.isfinite(lam0) & torch.isfinite(lam1)):
            raise ValueError(
                f"sampling='log_snr' needs a finite log-SNR at both ends of t_range; "
                f"got lambda = {float(lam0)} at t = {t0} and {float(lam1)} at "
                f"t = {t1} (use 0 < t_min, and t_max < 1 for the linear path)"
            )
        lam = lam1 + (lam0 - lam1) * u
        t = sch.t_from_log_snr(lam)
        w = (lam0 - lam1).expand_as(u)
    xt, eps = sample_xt(xb, t, sch, generator)
    _, eps_hat = denoiser.x0_eps(xt, t)
    vals = w * _sum_dims((eps - eps_hat) ** 2)
    return vals.reshape(n_t, B).mean(0)


def gaussian_discretization_excess(
    schedule: Schedule, ts, data_var: float, dim: int = 1
) -> torch.Tensor:
    r"""Per-step excess of the discrete ELBO's diffusion terms (fixed-small variance)
    over the continuous-time integral, for Gaussian data $N(\mu, \sigma_d^2I)$ in
    ``dim`` dimensions and the exact denoiser ($\sigma_d^2$ = ``data_var``; chapter 1).

    The exact step KL between grid times $s<t$ is
    $\tfrac D2(\mathrm{SNR}_s-\mathrm{SNR}_t)\,\sigma_d^2/(1+\sigma_d^2\mathrm{SNR}_t)
    =\tfrac D2(\rho-1)$ with $\rho=(1+\sigma_d^2\mathrm{SNR}_s)/(1+\sigma_d^2
    \mathrm{SNR}_t)$, while the integral over $[s,t]$ is $\tfrac D2\log\rho$, so each
    step adds $\tfrac D2(\rho-1-\log\rho)\ge0$. At high SNR
    $\rho\to\mathrm{SNR}_s/\mathrm{SNR}_t$. ``ts`` is the increasing grid
    $t_1<\dots<t_T$ of :func:`discrete_nelbo`; returns the $T-1$ excesses (nats per
    example, float64) in the order of the steps $(t_1,t_2),\dots,(t_{T-1},t_T)$."""
    if not isinstance(schedule, Schedule):
        raise ValueError(
            f"schedule must be a dlib.schedules.Schedule; got {type(schedule).__name__}"
        )
    ts = _increasing_grid(ts, 2)
    c, dim = _gaussian_data_args(data_var, dim)
    snr = torch.exp(2 * schedule.log_snr(ts))
    # log rho computed stably: log(1 + c SNR_s) - log(1 + c SNR_t)
    log_rho = torch.log1p(c * snr[:-1]) - torch.log1p(c * snr[1:])
    return 0.5 * dim * (torch.expm1(log_rho) - log_rho)


def _gaussian_data_args(data_var, dim):
    ok = isinstance(data_var, (int, float)) and not isinstance(data_var, bool)
    c = float(data_var) if ok else math.nan
    if not (math.isfinite(c) and c > 0):
        raise ValueError(f"data_var must be a positive finite number; got {data_var!r}")
    return c, C.positive_int(dim, "dim")


def _increasing_grid(ts, minimum: int) -> torch.Tensor:
    ts = as_time(C.real_tensor(ts, "ts"), name="ts")
    if ts.dim() != 1 or ts.numel() < minimum or (ts[1:] <= ts[:-1]).any():
        raise ValueError(
            "ts must be a strictly increasing 1-D grid t_1 < ... < t_T with at least "
            f"{minimum} time(s); got shape {tuple(ts.shape)}"
        )
    if not ts[0] > 0:
        raise ValueError(f"ts must start after t = 0; got t_1 = {ts[0].item()}")
    return ts


def optimal_reverse_variance(schedule: Schedule, ts, x0_mse) -> torch.Tensor:
    r"""Analytic-DPM's optimal variance of each reverse step (chapter 1).

    Among the model steps $N(a_{s|t}x_t+b_{s|t}\hat x_0,\ \sigma_p^2I)$, the expected KL
    from the posterior $q(x_s|x_t,x_0)$ is smallest at
    $\sigma_p^2=\tilde\sigma^2_{s|t}+b_{s|t}^2\,m_t$, where
    $m_t=E\|x_0-\hat x_0(x_t)\|^2/D$ is the denoiser's squared error per dimension at
    $t$. Bao et al. (2022) write $m_t=\frac{\sigma_t^2}{\alpha_t^2}
    \big(1-E\|\hat\epsilon(x_t)\|^2/D\big)$, which holds for the exact denoiser, and
    estimate it by Monte Carlo. ``ts`` is the increasing grid $t_1<\dots<t_T$ of
    :func:`discrete_nelbo`; ``x0_mse`` holds $m_{t_2},\dots,m_{t_T}$ ($T-1$ values, or
    one number for all). Returns the $T-1$ variances (float64), one per step
    $(t_{i-1},t_i)$, ready for ``discrete_nelbo(..., reverse_var=...)``."""
    if not isinstance(schedule, Schedule):
        raise ValueError(
            f"schedule must be a dlib.schedules.Schedule; got {type(schedule).__name__}"
        )
    ts = _increasing_grid(ts, 2)
    try:
        m = torch.as_tensor(x0_mse, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"x0_mse must be a number or a tensor of {ts.numel() - 1} values; got "
            f"{type(x0_mse).__name__}"
        ) from None
    if m.dim() > 1 or (m.dim() == 1 and m.numel() != ts.numel() - 1):
        raise ValueError(
            f"x0_mse must be a number or hold {ts.numel() - 1} values (one per step "
            f"t_(i-1) < t_i); got shape {tuple(m.shape)}"
        )
    if not bool((torch.isfinite(m) & (m >= 0)).all()):
        raise ValueError("x0_mse must be finite and non-negative")
    _, b, post = schedule.posterior(ts[:-1], ts[1:])
    return post + b**2 * m


def gaussian_nelbo(
    schedule: Schedule,
    ts,
    data_var: float,
    dim: int = 1,
    *,
    mean: float = 0.0,
    reverse_var="small",
) -> dict[str, torch.Tensor]:
    r"""The exact expected value of :func:`discrete_nelbo`'s terms for Gaussian data
    $N(\mu, \sigma_d^2I)$ in ``dim`` dimensions and the exact denoiser (chapter 1).

    The exact $\hat x_0$ has the same error $m_t=\sigma_d^2\sigma_t^2/(\alpha_t^2
    \sigma_d^2+\sigma_t^2)$ per dimension at every $x_t$, so the step $(s,t)$ costs
    $\tfrac D2\big(\log\frac{\sigma_p^2}{\tilde\sigma^2_{s|t}}
    +\frac{\tilde\sigma^2_{s|t}+b_{s|t}^2m_t}{\sigma_p^2}-1\big)$. ``reverse_var`` is
    ``"small"`` ($\sigma_p^2=\tilde\sigma^2_{s|t}$), ``"large"`` ($\sigma^2_{t|s}$),
    ``"optimal"``
    ($\tilde\sigma^2_{s|t}+b_{s|t}^2m_t$, with which every step is exact because the
    true reverse step $q(x_s|x_t)$ is that Gaussian) or a tensor of $T-1$ variances.
    Prior: $\tfrac D2(\alpha_T^2(\sigma_d^2+\mu^2)+\sigma_T^2-1-\log\sigma_T^2)$;
    decoder $N(\hat x_0,\sigma_{t_1}^2I)$: $\tfrac D2(m_{t_1}/\sigma_{t_1}^2
    +\log 2\pi\sigma_{t_1}^2)$. Returns float64 0-d tensors ``prior``, ``diffusion``,
    ``decoder``, ``total`` and ``nll`` (the exact $E[-\log p(x_0)]=\tfrac D2\log
    2\pi e\sigma_d^2$), and ``steps``, the $T-1$ step KLs."""
    if not isinstance(schedule, Schedule):
        raise ValueError(
            f"schedule must be a dlib.schedules.Schedule; got {type(schedule).__name__}"
        )
    c, D = _gaussian_data_args(data_var, dim)
    ts = _increasing_grid(ts, 1)
    mu2 = float(mean) ** 2 if isinstance(mean, (int, float)) else math.nan
    if isinstance(mean, bool) or not math.isfinite(mu2):
        raise ValueError(f"mean must be a finite number; got {mean!r}")
    a, s = schedule.alpha(ts), schedule.sigma(ts)
    m = c * s**2 / (a**2 * c + s**2)
    aT2, sT2 = a[-1] ** 2, s[-1] ** 2
    prior = 0.5 * D * (aT2 * (c + mu2) + sT2 - 1 - torch.log(sT2))
    decoder = 0.5 * D * (m[0] / s[0] ** 2 + torch.log(2 * math.pi * s[0] ** 2))
    steps = torch.zeros(0, dtype=torch.float64)
    if ts.numel() > 1:
        if isinstance(reverse_var, str) and reverse_var == "optimal":
            var = optimal_reverse_variance(schedule, ts, m[1:])
        else:
            if isinstance(reverse_var, str):
                one_of(reverse_var, ("small", "large", "optimal"), "reverse_var")
            var = reverse_var
        b, post, var = _reverse_variance(
            schedule, ts[:-1], ts[1:], var, ts.numel() - 1
        )
        steps = 0.5 * D * (torch.log(var / post) + (post + b**2 * m[1:]) / var - 1)
    elif not isinstance(reverse_var, str):
        raise ValueError("a grid with one time has no steps to give reverse_var for")
    diffusion = steps.sum()
    nll = 0.5 * D * math.log(2 * math.pi * math.e * c)
    nll = torch.tensor(nll, dtype=torch.float64)
    return {
        "prior": prior,
        "diffusion": diffusion,
        "decoder": decoder,
        "total": prior + diffusion + decoder,
        "nll": nll,
        "steps": steps,
    }


INTERPOLANT_TARGETS = ("velocity", "z", "score")


def interpolant_loss(net: Callable, x0: torch.Tensor, x1: torch.Tensor,
                     interpolant, target: str = "velocity", *, t=None,
                     t_range: tuple[float, float] = (1e-3, 1.0 - 1e-3),
                     antithetic: bool = False,
                     generator: torch.Generator | None = None,
                     reduce: bool = True) -> torch.Tensor:
    r"""The quadratic objectives of stochastic interpolants (chapter I.4) at
    $x_t=\alpha_tx_0+\sigma_tx_1+\gamma_tz$ (:class:`dlib.interpolants.Interpolant`),
    for pairs ``(x0, x1)`` of any coupling:

    * ``"velocity"``: $\tfrac12\|\hat v\|^2-u_t\cdot\hat v$,
      $u_t=\dot\alpha_tx_0+\dot\sigma_tx_1+\dot\gamma_tz$; minimiser $E[u_t\mid x_t]$;
    * ``"z"``: $\tfrac12\|\hat z\|^2-z\cdot\hat z$; minimiser $E[z\mid x_t]$;
    * ``"score"``: $\tfrac12\|\hat s\|^2+\gamma_t^{-1}z\cdot\hat s$; minimiser
      $\nabla\log\rho_t=-E[z\mid x_t]/\gamma_t$.

    Each equals $\tfrac12E\|\hat y-y^\star\|^2$ minus a constant, so the excess over
    the minimum is half the mean squared error. ``antithetic=True`` evaluates the net
    at both $x_t^\pm=\alpha_tx_0+\sigma_tx_1\pm\gamma_tz$ (with $\pm z$) and averages,
    which cancels the $1/\gamma_t$ term's leading variance. ``t`` fixes the time(s);
    otherwise $t\sim U(t_{min},t_{max})$. Returns the batch mean (or per-pair values
    with ``reduce=False``)."""
    from .interpolants import Interpolant

    C.function(net, "net", "net(x_t, t)")
    if not isinstance(interpolant, Interpolant):
        raise ValueError("interpolant must be a dlib.interpolants.Interpolant; got "
                         f"{type(interpolant).__name__}")
    one_of(target, INTERPOLANT_TARGETS, "target")
    x0, x1 = interpolant._check_pair(x0, x1)
    C.flag(antithetic, "antithetic")
    C.flag(reduce, "reduce")
    C.generator(generator)
    t = _draw_t(x0, t, t_range, generator)
    c = interpolant._coefficients(t.to(torch.float64))
    bad = ~torch.isfinite(c.d_gamma) | ~torch.isfinite(c.d_sigma)
    if target == "score":
        bad = bad | (c.gamma <= 0)
    if bool(bad.any()):
        raise ValueError(
            f"t holds times where the {target!r} objective is singular (gamma_t = 0 or "
            "an infinite derivative); use times inside (0, 1)"
        )
    z = randn(x0.shape, x0, generator)
    signs = (1.0, -1.0) if antithetic else (1.0,)
    total = 0.0
    for sgn in signs:
        xt, ut, zs = interpolant._sample(x0, x1, t, sgn * z)
        out = C.output(net(xt, t), xt, "net(x_t, t)")
        if target == "velocity":
            lin = ut
        elif target == "z":
            lin = zs
        else:
            lin = -zs / bcast(c.gamma.to(x0.dtype), x0)
        total = total + _sum_dims(0.5 * out**2 - lin * out)
    total = total / len(signs)
    return total.mean() if reduce else total
