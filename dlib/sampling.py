r"""Samplers and solvers. Every sampler is one function with the same shape of
signature::

    sample_xxx(denoiser, x, ts, *, <options>, generator=None, callback=None,
               progress=None) -> x

``denoiser`` is a :class:`dlib.param.Denoiser` (a network or an analytic oracle, any
parameterisation), ``x`` the starting batch at time ``ts[0]``, ``ts`` a decreasing 1-D
grid of times (:func:`time_grid` makes the usual ones). A grid that ends at exactly 0
means "the last step returns the denoised estimate $\hat x_0$" (ODE/SDE drifts are
singular at $t=0$ for VP schedules). ``callback`` (if given) is called after every step
with a dict ``{"i", "t", "t_next", "x", "x0"}``: the step's index, its two times, the
new state and the estimate $\hat x_0$ made at the start of the step; this is how
trajectories are recorded. ``progress`` shows a ``tqdm.auto`` bar: ``None`` (default) on
runs of 200 steps or more, ``True`` always, ``False`` never.

Inputs are validated once, on entry; the loops call the denoiser's unchecked methods
with float times, so a step does no validation and, on a GPU, no host-device
synchronisation.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from tqdm.auto import tqdm

from . import _checks as C
from .param import Denoiser, _lin
from ._loop import (  # noqa: F401 (PROGRESS_MIN_STEPS: the public threshold)
    PROGRESS_MIN_STEPS,
    _prepare,
    _progress,
    _report,
    _steps,
)
from .schedules import Schedule

__all__ = [
    "SPACINGS",
    "TIMESTEP_SPACINGS",
    "time_grid",
    "discrete_time_grid",
    "sample_ancestral",
    "sample_euler_maruyama",
    "sample_euler",
    "sample_heun",
    "sample_ode",
    "sample_langevin",
    "sample_annealed_langevin",
    "sample_predictor_corrector",
    "sample_interpolant",
]

SPACINGS = ("uniform", "quadratic", "log_snr", "karras")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")


def time_grid(
    n_steps: int,
    t_max: float = 1.0,
    t_min: float = 1e-3,
    *,
    spacing: str = "uniform",
    schedule: Schedule | None = None,
    rho: float = 7.0,
    lambda_min: float = -5.1,
    final_zero: bool = False,
) -> torch.Tensor:
    r"""A strictly decreasing float64 grid of ``n_steps + 1`` times from ``t_max`` to
    ``t_min``.

    ``spacing``: ``"uniform"`` in t; ``"quadratic"`` (denser near the data);
    ``"log_snr"`` (uniform in $\lambda$); ``"karras"`` (uniform in
    $\tilde\sigma^{1/\rho}$ with $\tilde\sigma=\sigma_t/\alpha_t=e^{-\lambda}$, Karras
    et al. 2022, ``rho=7``). The last two need ``schedule``, and clip $\lambda$ at the
    noisy end from below at ``lambda_min`` as production samplers do (diffusers'
    ``lambda_min_clipped``; -5.1 is its value for the cosine schedule, whose
    $\lambda_1\approx-37$ would otherwise waste steps where nothing happens; the
    VP-linear schedule reaches only -5.03 and is untouched): the grid's first time is
    still ``t_max``, so the first step also covers the clipped part. ``final_zero=True``
    appends t=0 (one extra, denoising, step)."""
    n = C.positive_int(n_steps, "n_steps")
    C.flag(final_zero, "final_zero")
    t_max = C.scalar_time(t_max, "t_max")
    t_min = C.scalar_time(t_min, "t_min")
    if not t_min < t_max:
        raise ValueError(f"need t_min < t_max; got t_min={t_min}, t_max={t_max}")
    C.one_of(spacing, SPACINGS, "spacing")
    u = torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)
    if spacing == "uniform":
        ts = t_max + (t_min - t_max) * u
    elif spacing == "quadratic":
        ts = t_min + (t_max - t_min) * (1 - u) ** 2
    else:
        if schedule is None:
            raise ValueError(f"spacing={spacing!r} needs a schedule")
        C.schedule(schedule)
        lam_min = C.number(lambda_min, "lambda_min")
        lam_ends = schedule.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64))
        lo, hi = max(float(lam_ends[0]), lam_min), float(lam_ends[1])
        if not math.isfinite(hi):
            raise ValueError(
                f"spacing={spacing!r} needs a finite log-SNR at t_min; "
                f"t_min={t_min} has lambda={hi} (use t_min > 0 and "
                f"final_zero=True to end at 0)"
            )
        if not lo < hi:
            raise ValueError(
                f"lambda_min={lambda_min} is above the log-SNR at t_min "
                f"({hi:.4g}); lower it"
            )
        if spacing == "log_snr":
            lam = lo + (hi - lo) * u
        else:
            r = C.positive(rho, "rho")
            s_max, s_min = math.exp(-lo / r), math.exp(-hi / r)
            lam = -r * torch.log(s_max + (s_min - s_max) * u)
        ts = schedule.t_from_log_snr(lam)
    ts[0], ts[-1] = t_max, t_min  # exact end points despite rounding
    if bool((ts[1:] >= ts[:-1]).any()):
        raise ValueError(
            f"{n} steps of spacing {spacing!r} between {t_max} and {t_min} do "
            f"not give distinct float64 times; use fewer steps"
        )
    if final_zero:
        ts = torch.cat([ts, ts.new_zeros(1)])
    return ts


def discrete_time_grid(
    n_steps: int,
    n_train: int = 1000,
    *,
    spacing: str = "leading",
    steps_offset: int = 0,
    final_zero: bool = True,
) -> torch.Tensor:
    r"""The time grid of diffusers' discrete schedulers (DDIM, PNDM, DPM-Solver, ...)
    for ``n_steps`` of an ``n_train``-step chain, in this book's times: timestep
    $k\in\{0,\dots,T-1\}$ of a $T$-step chain is $t=(k+1)/T$ (DDPM's $\bar\alpha$
    at index $k$ is $\alpha_t^2$ at that $t$; using $k/T$ is off by one step and puts
    $k=0$ at $t=0$).

    ``spacing`` (diffusers' ``timestep_spacing``; Lin et al. 2024, table 2):

    - ``"leading"``: $k_i=i\lfloor T/n\rfloor+$ ``steps_offset``, $i=n-1,\dots,0$
      (the DDIM paper's choice; never reaches $k=T-1$, so the first step starts below
      $t=1$);
    - ``"trailing"``: $k_i=\mathrm{round}(T-iT/n)-1$, $i=0,\dots,n-1$ (starts at
      $k=T-1$, i.e. $t=1$);
    - ``"linspace"``: $k_i=\mathrm{round}$ of $n$ points evenly spaced from $T-1$ down
      to 0.

    Rounding is half to even, as numpy's. ``final_zero=True`` appends $t=0$: the last
    step then goes to clean data, as diffusers' DDIM does with ``set_alpha_to_one``.
    Returns a strictly decreasing float64 tensor of ``n_steps`` (+1) times. Introduced
    in Part II, DDIM and PNDM chapter."""
    n = C.positive_int(n_steps, "n_steps")
    T = C.positive_int(n_train, "n_train")
    C.one_of(spacing, TIMESTEP_SPACINGS, "spacing")
    offset = C.positive_int(steps_offset, "steps_offset", minimum=0)
    C.flag(final_zero, "final_zero")
    if n > T:
        raise ValueError(f"n_steps={n} exceeds the chain's n_train={T} steps")
    i = torch.arange(n, dtype=torch.float64)
    if spacing == "leading":
        k = (T // n) * i.flip(0) + offset
    elif spacing == "trailing":
        k = torch.round(T - i * (T / n)) - 1
    else:
        k = torch.round(torch.linspace(T - 1, 0, n, dtype=torch.float64))
        if n == 1:
            k = torch.zeros(1, dtype=torch.float64)
    if bool((k > T - 1).any()):
        raise ValueError(
            f"steps_offset={offset} puts a timestep above the chain's last index "
            f"{T - 1}; use a smaller offset"
        )
    ts = (k + 1) / T
    if bool((ts[1:] >= ts[:-1]).any()):
        raise ValueError(
            f"{n} steps of spacing {spacing!r} on a {T}-step chain repeat a timestep; "
            f"use fewer steps"
        )
    if final_zero:
        ts = torch.cat([ts, ts.new_zeros(1)])
    return ts


def _noise(x, generator):
    return C.randn(x.shape, x, generator)


@torch.no_grad()
def sample_ancestral(
    denoiser: Denoiser,
    x: torch.Tensor,
    ts,
    *,
    eta: float = 1.0,
    clip_x0: float | None = None,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""The DDPM/DDIM family:
    $x_s=\alpha_s\hat x_0+\sqrt{\sigma_s^2-\nu_{s|t}^2}\,\hat\epsilon+\nu_{s|t}\,z$ with
    $\nu_{s|t}=\eta\,\tilde\sigma_{s|t}$, where $\tilde\sigma^2_{s|t}$ is the backward
    posterior's variance. ``eta=1``: ancestral DDPM; ``eta=0``: DDIM (deterministic):
    $x_s=\alpha_s\hat x_0+\sigma_s\hat\epsilon$, the pair form of
    :func:`dlib.solvers.first_order_step` (equal to round-off; tested), which stays
    accurate from $\alpha_t\approx0$ (t = 1 of the cosine schedule).
    ``clip_x0`` clips $\hat x_0$ to [-clip_x0, clip_x0] (and recomputes
    $\hat\epsilon$). NFE: one per step."""
    ts = _prepare(denoiser, x, ts)
    eta = C.in_range(eta, "eta", 0.0, 1.0)
    if clip_x0 is not None:
        clip_x0 = C.positive(clip_x0, "clip_x0")
    C.generator(generator)
    C.optional_function(callback, "callback", "callback(dict)")
    sch = denoiser.schedule
    grid = torch.tensor(ts, dtype=torch.float64)
    s_next, t_now = grid[1:], grid[:-1]
    post_var = sch.posterior(s_next, t_now)[2].tolist()
    a_next, sig_next = sch.alpha(s_next).tolist(), sch.sigma(s_next).tolist()
    for i, t, s in _steps(ts, progress, "ancestral"):
        x0, eps = denoiser._x0_eps(x, t)
        if clip_x0 is not None:
            c = sch._coefficients(t)
            x0 = x0.clamp(-clip_x0, clip_x0)
            eps = (x - c.alpha * x0) / c.sigma
        if s == 0:
            x = x0
        else:
            nu2 = eta**2 * post_var[i]
            x = _lin(a_next[i], x0, math.sqrt(max(sig_next[i] ** 2 - nu2, 0.0)), eps)
            if eta > 0:
                x = x.add_(_noise(x, generator), alpha=math.sqrt(nu2))
        _report(callback, i, t, s, x, x0)
    return x


def _sde_coefficients(sch, ts):
    """f(t) and g^2(t) at every time of the grid where a step starts, as Python
    floats."""
    f, g2 = sch.sde(torch.tensor(ts, dtype=torch.float64))
    bad = ~(torch.isfinite(f) & torch.isfinite(g2))[:-1]
    if bool(bad.any()):
        t = ts[int(bad.nonzero()[0])]
        raise ValueError(f"the forward SDE of {sch!r} is singular at t = {t} (f = "
                         f"{float(f[ts.index(t)])}); start the grid below that time")
    return f.tolist(), g2.tolist()


def _reverse_sde_step(x, eps, sigma, f, g2, h, zeta, generator):
    """One Euler–Maruyama step of size h < 0 of the reverse-time family with parameter
    zeta, from eps_hat at (x, t); sigma, f, g2 are the schedule's values at t."""
    # x + (f x - (1 + zeta^2)/2 g^2 score) h with score = -eps / sigma
    x = _lin(1.0 + f * h, x, 0.5 * (1 + zeta**2) * g2 * h / sigma, eps)
    if zeta > 0:
        x = x.add_(_noise(x, generator), alpha=zeta * math.sqrt(g2 * -h))
    return x


@torch.no_grad()
def sample_euler_maruyama(
    denoiser: Denoiser,
    x: torch.Tensor,
    ts,
    *,
    zeta: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""Euler–Maruyama for the reverse-time family
    $dx=[f x-\frac{1+\zeta^2}{2}g^2\nabla\log p_t]dt+\zeta g\,d\bar W$ (all members
    share the marginals $p_t$). ``zeta=1``: Anderson's reverse SDE; ``zeta=0``: the
    PF-ODE. NFE: one per step."""
    ts = _prepare(denoiser, x, ts)
    zeta = C.in_range(zeta, "zeta", 0.0, math.inf)
    C.generator(generator)
    C.optional_function(callback, "callback", "callback(dict)")
    sch = denoiser.schedule
    f, g2 = _sde_coefficients(sch, ts)
    for i, t, s in _steps(ts, progress, "Euler-Maruyama"):
        x0, eps = denoiser._x0_eps(x, t)
        if s == 0:
            x = x0
        else:
            sig = sch._coefficients(t).sigma
            x = _reverse_sde_step(x, eps, sig, f[i], g2[i], s - t, zeta, generator)
        _report(callback, i, t, s, x, x0)
    return x


def _velocity(x0, eps, c):
    return _lin(c.d_alpha, x0, c.d_sigma, eps)


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    x: torch.Tensor,
    ts,
    *,
    callback: Callable | None = None,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""Euler's method for the probability-flow ODE
    $dx/dt=v(x,t)=\dot\alpha_t\hat x_0+\dot\sigma_t\hat\epsilon$. NFE: one per step."""
    ts = _prepare(denoiser, x, ts)
    C.optional_function(callback, "callback", "callback(dict)")
    sch = denoiser.schedule
    for i, t, s in _steps(ts, progress, "Euler"):
        x0, eps = denoiser._x0_eps(x, t)
        if s == 0:
            x = x0
        else:  # x + (s - t) v, with v = d alpha x0 + d sigma eps, in two fused steps
            c, h = sch._coefficients(t), s - t
            x = x.add(x0, alpha=h * c.d_alpha).add_(eps, alpha=h * c.d_sigma)
        _report(callback, i, t, s, x, x0)
    return x


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser,
    x: torch.Tensor,
    ts,
    *,
    callback: Callable | None = None,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Heun's method (explicit trapezoid) for the PF-ODE: two evaluations per step; the
    denoising step to t=0, if any, costs one."""
    ts = _prepare(denoiser, x, ts)
    C.optional_function(callback, "callback", "callback(dict)")
    sch = denoiser.schedule
    for i, t, s in _steps(ts, progress, "Heun"):
        x0, eps = denoiser._x0_eps(x, t)
        if s == 0:
            x = x0
        else:
            d1 = _velocity(x0, eps, sch._coefficients(t))
            x_e = x.add(d1, alpha=s - t)
            d2 = _velocity(*denoiser._x0_eps(x_e, s), sch._coefficients(s))
            x = x.add(d1, alpha=0.5 * (s - t)).add_(d2, alpha=0.5 * (s - t))
        _report(callback, i, t, s, x, x0)
    return x


def _solve_ivp(
    fn: Callable[[float, torch.Tensor], torch.Tensor],
    y0: torch.Tensor,
    span: tuple[float, float],
    t_eval,
    *,
    method: str,
    rtol: float,
    atol: float,
) -> torch.Tensor:
    """The one bridge to scipy's ``solve_ivp``: integrate dy/du = fn(u, y) for a flat
    float64 CPU state ``y0`` (a tensor); ``fn`` gets and returns flat float64 CPU
    tensors. Returns the states at ``t_eval``, shape (len(t_eval), len(y0))."""
    from scipy.integrate import solve_ivp

    def rhs(u, y):
        return fn(float(u), torch.from_numpy(y)).reshape(-1).to(torch.float64).numpy()

    sol = solve_ivp(
        rhs,
        span,
        y0.detach().to("cpu", torch.float64).reshape(-1).numpy(),
        method=method,
        rtol=rtol,
        atol=atol,
        t_eval=t_eval,
    )
    if not sol.success:
        raise RuntimeError(f"ODE solver failed: {sol.message}")
    return torch.from_numpy(sol.y.T.copy())


def sample_ode(
    denoiser: Denoiser,
    x: torch.Tensor,
    ts,
    *,
    rtol: float = 1e-8,
    atol: float = 1e-8,
    method: str = "DOP853",
    variable: str = "auto",
    callback: Callable | None = None,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""High-accuracy reference: the PF-ODE solved by scipy's adaptive ``solve_ivp``
    (float64 state, the model evaluated in x's dtype and device), reporting the state at
    every time of ``ts``. The batch is one ODE system, so the step size adapts to the
    hardest example. A final t=0 in ``ts`` is a denoising step.

    ``variable="log_snr"`` integrates in $\lambda$:
    $dx/d\lambda = v(x,t_\lambda)/\dot\lambda_{t_\lambda}$, which for an exact denoiser
    (one that depends on t only through $\lambda$, like :mod:`dlib.analytic`'s) is
    smooth even where the schedule's time derivatives jump
    (:class:`dlib.schedules.DiscreteVP` has a kink at every grid point, so an adaptive
    solver in $t$ converges there only to first order). For such a model the error of
    this solver shrinks with ``rtol`` (tested on ``DiscreteVP`` against the closed-form
    flow of Gaussian data). ``"t"`` integrates in time; ``"auto"`` uses $\lambda$ when
    it is finite on the whole grid (not at $t=1$ of the linear path, whose
    $\lambda_1=-\infty$). A trained network's dependence on t is its own, so for it the
    guarantee is only that of a smooth right-hand side. With a ``callback``, $\hat x_0$
    at each reported state costs one extra evaluation."""
    ts = _prepare(denoiser, x, ts)
    C.one_of(method, ("RK45", "DOP853", "Radau", "LSODA"), "method")
    C.one_of(variable, ("auto", "t", "log_snr"), "variable")
    rtol, atol = C.positive(rtol, "rtol"), C.positive(atol, "atol")
    C.optional_function(callback, "callback", "callback(dict)")
    C.generator(generator)
    _progress(progress, 0)  # scipy's solver shows no bar; the argument is checked
    sch = denoiser.schedule
    ode_ts = ts[:-1] if ts[-1] == 0 else ts
    grid = torch.tensor(ode_ts, dtype=torch.float64)
    lam = sch.log_snr(grid)
    if variable == "auto":
        variable = "log_snr" if bool(torch.isfinite(lam).all()) else "t"
    if variable == "log_snr" and not bool(torch.isfinite(lam).all()):
        raise ValueError(
            "variable='log_snr' needs a finite log-SNR at every time of ts; "
            "use variable='t'"
        )
    shape, dtype, device = x.shape, x.dtype, x.device

    def drift(u: float, y: torch.Tensor) -> torch.Tensor:
        t = (
            u
            if variable == "t"
            else float(
                sch._t_from_log_snr(torch.tensor(u, dtype=torch.float64)).clamp(
                    0.0, 1.0
                )
            )
        )
        xt = y.reshape(shape).to(device=device, dtype=dtype)
        with torch.no_grad():
            x0, eps = denoiser._x0_eps(xt, t)
        c = sch._coefficients(t)
        v = _velocity(x0, eps, c)
        if variable == "log_snr":
            v = v / (c.d_alpha / c.alpha - c.d_sigma / c.sigma)
        return v.to("cpu", torch.float64)

    points = grid if variable == "t" else lam
    states = [x]
    if len(ode_ts) >= 2:
        ys = _solve_ivp(
            drift,
            x,
            (float(points[0]), float(points[-1])),
            points.numpy(),
            method=method,
            rtol=rtol,
            atol=atol,
        )
        states = [y.reshape(shape).to(device=device, dtype=dtype) for y in ys]
    n_ode = len(ode_ts) - 1
    for i, xi in enumerate(states[1:]):
        if callback is not None:
            with torch.no_grad():
                x0 = denoiser._x0_eps(states[i], ode_ts[i])[0]
            _report(callback, i, ode_ts[i], ode_ts[i + 1], xi, x0)
    x = states[-1]
    if ts[-1] == 0:
        with torch.no_grad():
            x = denoiser._x0_eps(x, ts[-2])[0]
        _report(callback, n_ode, ts[-2], 0.0, x, x)
    return x


@torch.no_grad()
def sample_langevin(
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    step_size: float,
    n_steps: int,
    *,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""Unadjusted Langevin algorithm $x\leftarrow x+\tau\,s(x)+\sqrt{2\tau}\,z$ for a
    fixed score $s=\nabla\log p$ and step size $\tau$ (``step_size``). There is no
    denoiser here, so the callback's ``"x0"`` is None (and ``"t"``, ``"t_next"``
    too)."""
    C.function(score_fn, "score_fn", "score_fn(x)")
    C.batch(x, "x")
    tau = C.positive(step_size, "step_size")
    n = C.positive_int(n_steps, "n_steps")
    C.generator(generator)
    C.optional_function(callback, "callback", "callback(dict)")
    return _langevin(score_fn, x, tau, n, generator, callback, _progress(progress, n))


def _langevin(score_fn, x, tau, n, generator, callback, show=False):
    for i in tqdm(range(n), desc="Langevin", leave=False, disable=not show):
        x = (
            x
            + tau * score_fn(x).to(x.dtype)
            + math.sqrt(2 * tau) * _noise(x, generator)
        )
        _report(callback, i, None, None, x, None)
    return x


@torch.no_grad()
def sample_annealed_langevin(
    denoiser: Denoiser,
    x: torch.Tensor,
    ts,
    *,
    n_steps_each: int = 100,
    step_scale: float = 2e-5,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""Annealed Langevin dynamics (NCSN): at each level $t_i$ (decreasing noise), run
    ``n_steps_each`` Langevin steps on $p_{t_i}$ with step
    $\tau_i=\tau_0\,\sigma_{t_i}^2/\sigma_{t_L}^2$ (``step_scale`` = $\tau_0$). Unlike
    the other samplers, every time in ``ts`` is a level (there is no "step to the next
    time"), so ``ts`` must be positive. NFE: ``n_steps_each`` per level, plus one per
    level for the callback's ``"x0"`` when a callback is given."""
    C.denoiser(denoiser)
    denoiser._check_x(x, "x")
    ts = C.as_time(ts, name="ts", dtype=torch.float64)
    if (
        ts.dim() != 1
        or ts.numel() < 1
        or bool((ts[1:] >= ts[:-1]).any())
        or ts[-1] <= 0
    ):
        raise ValueError(
            "ts must be a strictly decreasing 1-D grid of positive times (noise levels)"
        )
    n_each = C.positive_int(n_steps_each, "n_steps_each")
    tau0 = C.positive(step_scale, "step_scale")
    C.generator(generator)
    C.optional_function(callback, "callback", "callback(dict)")
    sig = denoiser.schedule.sigma(ts).tolist()
    levels = ts.tolist()
    show = _progress(progress, len(levels) * n_each)
    for i, t in enumerate(
        tqdm(levels, desc="annealed Langevin", leave=False, disable=not show)
    ):
        tau = tau0 * sig[i] ** 2 / sig[-1] ** 2
        x = _langevin(
            lambda y: denoiser._predict(y, t, "score"), x, tau, n_each, generator, None
        )
        if callback is not None:
            x0 = denoiser._x0_eps(x, t)[0]
            _report(callback, i, t, None, x, x0)
    return x


@torch.no_grad()
def sample_predictor_corrector(
    denoiser: Denoiser,
    x: torch.Tensor,
    ts,
    *,
    n_corrector: int = 1,
    snr: float = 0.16,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""Predictor–corrector sampling (Score SDE): every step from $t$ to $s<t$ is one
    Euler–Maruyama step of the reverse SDE $dx=[fx-g^2\nabla\log p_t]dt+g\,d\bar W$ (the
    predictor, identical to :func:`sample_euler_maruyama` with ``zeta=1``), followed by
    ``n_corrector`` Langevin steps $x\leftarrow x+\tau\,s(x,s)+\sqrt{2\tau}\,z$ that
    target $p_s$ itself (the corrector).

    The corrector's step is set by a target signal-to-noise ratio $r$ (``snr``):
    $\tau=2\,(r\,\overline{\|z\|}/\overline{\|s\|})^2$ with norms per example averaged
    over the batch, so that the drift $\tau s$ is about $r$ times as long as the noise
    $\sqrt{2\tau}z$. A step to exactly $t=0$ returns $\hat x_0$ (no corrector).
    ``n_corrector=0`` reproduces Euler–Maruyama draw for draw. NFE: ``1 + n_corrector``
    per step."""
    ts = _prepare(denoiser, x, ts)
    if (
        isinstance(n_corrector, bool)
        or not isinstance(n_corrector, int)
        or n_corrector < 0
    ):
        raise ValueError(
            f"n_corrector must be a non-negative integer; got {n_corrector!r}"
        )
    snr = C.positive(snr, "snr")
    C.generator(generator)
    C.optional_function(callback, "callback", "callback(dict)")
    sch = denoiser.schedule
    f, g2 = _sde_coefficients(sch, ts)
    B = x.shape[0]
    for i, t, s in _steps(ts, progress, "predictor-corrector"):
        x0, eps = denoiser._x0_eps(x, t)
        if s == 0:
            x = x0
        else:  # the predictor, then the corrector
            sig = sch._coefficients(t).sigma
            x = _reverse_sde_step(x, eps, sig, f[i], g2[i], s - t, 1.0, generator)
            for _ in range(n_corrector):
                score = denoiser._predict(x, s, "score")
                z = _noise(x, generator)
                z_norm = z.reshape(B, -1).norm(dim=1).mean()
                s_norm = score.reshape(B, -1).norm(dim=1).mean()
                step = (
                    2.0
                    * (snr * z_norm / s_norm.clamp_min(torch.finfo(x.dtype).tiny)) ** 2
                )
                x = x + step * score + (2.0 * step).sqrt() * z
        _report(callback, i, t, s, x, x0)
    return x


@torch.no_grad()
def sample_interpolant(
    velocity: Callable,
    score: Callable | None,
    x: torch.Tensor,
    ts,
    *,
    delta: float | Callable[[float], float] = 0.0,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""Euler–Maruyama for the ODE and SDEs of a stochastic interpolant (chapter I.4):
    ``velocity(x, t)`` is $v\approx E[\dot x_t\mid x_t]$, ``score(x, t)`` is
    $s\approx\nabla\log\rho_t$ (``t`` a (B,) tensor), ``ts`` a strictly monotone grid.
    One step from $t$ to $t'$, $h=t'-t$, is

    $$x\leftarrow x+h\,v(x,t)+|h|\,\delta\,s(x,t)+\sqrt{2\delta|h|}\,\xi,$$

    so a decreasing grid integrates the backward SDE $dx=(v-\delta s)dt+
    \sqrt{2\delta}\,d\bar W$ (data at $t=0$: generation) and an increasing grid
    the forward SDE with drift $v+\delta s$. The diffusion coefficient $\delta$ =
    ``delta`` $\ge0$ (the paper's $\epsilon$; the book keeps $\epsilon$ for the
    Gaussian noise) does not change the interpolant's marginals $\rho_t$, and
    ``delta=0`` is the ODE $\dot x=v$ (Euler; ``score`` may then be None). ``delta``
    may also be a function of time, $\delta_t$ (e.g. switched off near an end where
    the learned score $-\hat z/\gamma_t$ is unreliable). NFE: one of each model per
    step.
    ``callback`` gets ``{"i", "t", "t_next", "x", "x0"}`` after every step, with "x0"
    None (these fields give no data prediction)."""
    C.function(velocity, "velocity", "velocity(x, t)")
    x = C.batch(x, "x")
    if torch.is_tensor(ts):
        ts = ts.detach().cpu()
    ts = C.as_time(ts, name="ts", dtype=torch.float64).to(torch.float64)
    steps_ = ts[1:] - ts[:-1] if ts.dim() == 1 else ts
    if ts.dim() != 1 or ts.numel() < 2 or not (
        bool((steps_ > 0).all()) or bool((steps_ < 0).all())
    ):
        raise ValueError("ts must be a strictly increasing or strictly decreasing "
                         "1-D grid with at least 2 times")
    C.generator(generator)
    C.optional_function(callback, "callback", "callback(dict)")
    ts = ts.tolist()
    if callable(delta):
        dts = [C.in_range(delta(t), "delta(t)", 0.0, math.inf) for t in ts[:-1]]
        desc = "interpolant SDE"
    else:
        dts = [C.in_range(delta, "delta", 0.0, math.inf)] * (len(ts) - 1)
        desc = f"interpolant SDE (delta={dts[0]:g})"
    if max(dts) > 0:
        C.function(score, "score", "score(x, t)")
    for i, t, s in _steps(ts, progress, desc):
        tb = C.time_tensor(t, x)
        h, delta_t = s - t, dts[i]
        v = velocity(x, tb)
        if i == 0:  # shapes checked once (no silent broadcasting)
            C.output(v, x, "velocity(x, t)")
        if delta_t > 0:
            sc = C.output(score(x, tb), x, "score(x, t)")
            x = x.add(v, alpha=h).add_(sc, alpha=abs(h) * delta_t)
            x = x.add_(_noise(x, generator), alpha=math.sqrt(2 * delta_t * abs(h)))
        else:
            x = x.add(v, alpha=h)
        _report(callback, i, t, s, x, None)  # no data prediction here
    return x

