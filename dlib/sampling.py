r"""Samplers and solvers. Every sampler is one function with the same shape of signature::

    sample_xxx(denoiser, x, ts, *, <options>, generator=None, callback=None) -> x

``denoiser`` is a :class:`dlib.param.Denoiser` (a network or an analytic oracle, any parameterisation),
``x`` the starting batch at time ``ts[0]``, ``ts`` a decreasing 1-D grid of times. A grid that ends
at exactly 0 means "the last step returns the denoised estimate $\hat x_0$" (ODE/SDE drifts are
singular at $t=0$ for VP schedules). ``callback`` (if given) is called after every step with a dict
``{"i", "t", "t_next", "x", "x0"}``, which is how trajectories are recorded.
"""

from __future__ import annotations

from typing import Callable

import torch

from ._checks import as_time, one_of, positive, randn
from .param import Denoiser
from .schedules import Schedule

__all__ = ["time_grid", "sample_ancestral", "sample_euler_maruyama", "sample_euler", "sample_heun",
           "sample_ode", "sample_langevin", "sample_annealed_langevin", "sample_predictor_corrector"]


def time_grid(n_steps: int, t_max: float = 1.0, t_min: float = 1e-3, *, spacing: str = "uniform",
              schedule: Schedule | None = None, final_zero: bool = False) -> torch.Tensor:
    r"""A decreasing float64 grid of ``n_steps + 1`` times from ``t_max`` to ``t_min``.

    ``spacing``: ``"uniform"`` in t, ``"quadratic"`` (denser near the data), or ``"log_snr"`` (uniform in
    $\lambda$, needs ``schedule``). ``final_zero=True`` appends t=0 (one extra, denoising, step)."""
    one_of(spacing, ("uniform", "quadratic", "log_snr"), "spacing")
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer; got {n_steps!r}")
    as_time(torch.tensor([t_min, t_max]), name="t_min/t_max")
    if not t_min < t_max:
        raise ValueError(f"need t_min < t_max; got t_min={t_min}, t_max={t_max}")
    u = torch.linspace(0.0, 1.0, n_steps + 1, dtype=torch.float64)
    if spacing == "uniform":
        ts = t_max + (t_min - t_max) * u
    elif spacing == "quadratic":
        ts = t_min + (t_max - t_min) * (1 - u) ** 2
    else:
        if schedule is None:
            raise ValueError("spacing='log_snr' needs a schedule")
        lam = schedule.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64))
        ts = schedule.t_from_log_snr(lam[0] + (lam[1] - lam[0]) * u)
    ts[0], ts[-1] = t_max, t_min  # exact end points despite rounding
    if final_zero:
        ts = torch.cat([ts, ts.new_zeros(1)])
    return ts


def _check(denoiser, x, ts):
    if not isinstance(denoiser, Denoiser):
        raise ValueError(f"denoiser must be a dlib.param.Denoiser; got {type(denoiser).__name__}")
    if not torch.is_tensor(x) or x.dim() < 2:
        raise ValueError("x must be a batch tensor of shape (B, ...)")
    ts = torch.as_tensor(ts, dtype=torch.float64)
    as_time(ts, name="ts")
    if ts.dim() != 1 or ts.numel() < 2 or (ts[1:] >= ts[:-1]).any():
        raise ValueError("ts must be a strictly decreasing 1-D grid with at least 2 times")
    return ts


def _t(t, x):
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def _noise(x, generator):
    return randn(x.shape, x, generator)


@torch.no_grad()
def sample_ancestral(denoiser: Denoiser, x: torch.Tensor, ts, *, eta: float = 1.0, clip_x0: float | None = None,
                     generator: torch.Generator | None = None, callback: Callable | None = None) -> torch.Tensor:
    r"""The DDPM/DDIM family: $x_s=\alpha_s\hat x_0+\sqrt{\sigma_s^2-c^2}\,\hat\epsilon+c\,z$ with
    $c^2=\eta^2\sigma_{t|s}^2\sigma_s^2/\sigma_t^2$. ``eta=1``: ancestral DDPM (posterior variance);
    ``eta=0``: DDIM. ``clip_x0`` clips $\hat x_0$ to $[-c, c]$ (and recomputes $\hat\epsilon$)."""
    ts = _check(denoiser, x, ts)
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta must lie in [0, 1]; got {eta}")
    sch = denoiser.schedule
    for i in range(ts.numel() - 1):
        t, s = ts[i], ts[i + 1]
        tb = _t(t, x)
        x0, eps = denoiser.x0_eps(x, tb)
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
            eps = (x - sch.alpha(t).to(x.dtype) * x0) / sch.sigma(t).to(x.dtype)
        if s == 0:
            x = x0
        else:
            _, _, post_var = sch.posterior(s, t)
            c2 = eta**2 * post_var
            sig_s = sch.sigma(s)
            x = sch.alpha(s).to(x.dtype) * x0 + (sig_s**2 - c2).clamp_min(0).sqrt().to(x.dtype) * eps
            if eta > 0:
                x = x + c2.sqrt().to(x.dtype) * _noise(x, generator)
        if callback is not None:
            callback({"i": i, "t": float(t), "t_next": float(s), "x": x, "x0": x0})
    return x


def _reverse_sde_step(denoiser, x, t, s, eta, generator):
    """One Euler–Maruyama step from t to s < t of the reverse-time family with parameter eta."""
    f, g2 = denoiser.schedule.sde(t)
    f, g2 = f.to(x.dtype), g2.to(x.dtype)
    score = denoiser.score(x, _t(t, x))
    h = (s - t).to(x.dtype)  # negative
    x = x + (f * x - 0.5 * (1 + eta**2) * g2 * score) * h
    if eta > 0:
        x = x + eta * (g2 * (-h)).sqrt() * _noise(x, generator)
    return x


@torch.no_grad()
def sample_euler_maruyama(denoiser: Denoiser, x: torch.Tensor, ts, *, eta: float = 1.0,
                          generator: torch.Generator | None = None, callback: Callable | None = None) -> torch.Tensor:
    r"""Euler–Maruyama for the reverse-time family $dx=[f x-\frac{1+\eta^2}{2}g^2\nabla\log p_t]dt+\eta g\,d\bar W$
    (all members share the marginals $p_t$). ``eta=1``: Anderson's reverse SDE; ``eta=0``: the PF-ODE."""
    ts = _check(denoiser, x, ts)
    if eta < 0:
        raise ValueError(f"eta must be >= 0; got {eta}")
    for i in range(ts.numel() - 1):
        t, s = ts[i], ts[i + 1]
        tb = _t(t, x)
        if s == 0:
            x0 = denoiser.x0(x, tb)
            x = x0
        else:
            x, x0 = _reverse_sde_step(denoiser, x, t, s, eta, generator), None
        if callback is not None:
            callback({"i": i, "t": float(t), "t_next": float(s), "x": x, "x0": x0})
    return x


@torch.no_grad()
def sample_euler(denoiser: Denoiser, x: torch.Tensor, ts, *, callback: Callable | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Euler's method for the probability-flow ODE $dx/dt=v(x,t)=\dot\alpha_t\hat x_0+\dot\sigma_t\hat\epsilon$."""
    ts = _check(denoiser, x, ts)
    for i in range(ts.numel() - 1):
        t, s = ts[i], ts[i + 1]
        tb = _t(t, x)
        if s == 0:
            x = denoiser.x0(x, tb)
        else:
            x = x + (s - t).to(x.dtype) * denoiser.velocity(x, tb)
        if callback is not None:
            callback({"i": i, "t": float(t), "t_next": float(s), "x": x, "x0": None})
    return x


@torch.no_grad()
def sample_heun(denoiser: Denoiser, x: torch.Tensor, ts, *, callback: Callable | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Heun's method (explicit trapezoid, 2 evaluations per step) for the PF-ODE; the denoising step
    to t=0, if any, costs one evaluation."""
    ts = _check(denoiser, x, ts)
    for i in range(ts.numel() - 1):
        t, s = ts[i], ts[i + 1]
        tb = _t(t, x)
        if s == 0:
            x = denoiser.x0(x, tb)
        else:
            h = (s - t).to(x.dtype)
            d1 = denoiser.velocity(x, tb)
            x_e = x + h * d1
            d2 = denoiser.velocity(x_e, _t(s, x))
            x = x + 0.5 * h * (d1 + d2)
        if callback is not None:
            callback({"i": i, "t": float(t), "t_next": float(s), "x": x, "x0": None})
    return x


def sample_ode(denoiser: Denoiser, x: torch.Tensor, ts, *, rtol: float = 1e-8, atol: float = 1e-8,
               method: str = "DOP853", callback: Callable | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """High-accuracy reference: the PF-ODE solved by scipy's adaptive ``solve_ivp`` (float64), with
    the state reported at every time of ``ts``. The batch is one ODE system, so the step size adapts
    to the hardest example. A final t=0 in ``ts`` is a denoising step."""
    from scipy.integrate import solve_ivp

    ts = _check(denoiser, x, ts)
    one_of(method, ("RK45", "DOP853", "Radau", "LSODA"), "method")
    positive(rtol, "rtol")
    positive(atol, "atol")
    shape, dtype = x.shape, x.dtype
    ode_ts = ts[:-1] if ts[-1] == 0 else ts

    def rhs(t, y):
        xt = torch.from_numpy(y).reshape(shape).to(device=x.device, dtype=dtype)
        with torch.no_grad():
            v = denoiser.velocity(xt, _t(t, xt))
        return v.reshape(-1).to(torch.float64).cpu().numpy()

    y0 = x.detach().reshape(-1).to(torch.float64).cpu().numpy()
    if ode_ts.numel() >= 2:
        sol = solve_ivp(rhs, (float(ode_ts[0]), float(ode_ts[-1])), y0, method=method, rtol=rtol, atol=atol,
                        t_eval=ode_ts.numpy())
        if not sol.success:
            raise RuntimeError(f"ODE solver failed: {sol.message}")
        states = [torch.from_numpy(sol.y[:, j].copy()).reshape(shape).to(device=x.device, dtype=dtype) for j in range(1, sol.y.shape[1])]
    else:
        states = []
    for i, xi in enumerate(states):
        if callback is not None:
            callback({"i": i, "t": float(ode_ts[i]), "t_next": float(ode_ts[i + 1]), "x": xi, "x0": None})
    x = states[-1] if states else x
    if ts[-1] == 0:
        with torch.no_grad():
            x = denoiser.x0(x, _t(ts[-2], x))
        if callback is not None:
            callback({"i": ts.numel() - 2, "t": float(ts[-2]), "t_next": 0.0, "x": x, "x0": x})
    return x


@torch.no_grad()
def sample_langevin(score_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, step_size: float,
                    n_steps: int, *, generator: torch.Generator | None = None,
                    callback: Callable | None = None) -> torch.Tensor:
    r"""Unadjusted Langevin algorithm $x\leftarrow x+\eta\,s(x)+\sqrt{2\eta}\,z$ for a fixed score $s=\nabla\log p$."""
    positive(step_size, "step_size")
    if not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer; got {n_steps!r}")
    for i in range(n_steps):
        x = x + step_size * score_fn(x).to(x.dtype) + (2 * step_size) ** 0.5 * _noise(x, generator)
        if callback is not None:
            callback({"i": i, "t": None, "t_next": None, "x": x, "x0": None})
    return x


@torch.no_grad()
def sample_annealed_langevin(denoiser: Denoiser, x: torch.Tensor, ts, *, n_steps_each: int = 100,
                             step_scale: float = 2e-5, generator: torch.Generator | None = None,
                             callback: Callable | None = None) -> torch.Tensor:
    r"""Annealed Langevin dynamics (NCSN): at each level $t_i$ (decreasing noise), run ``n_steps_each``
    Langevin steps on $p_{t_i}$ with step $\eta_i=\varepsilon\,\sigma_{t_i}^2/\sigma_{t_L}^2$ (``step_scale`` = $\varepsilon$).
    Unlike the other samplers, every time in ``ts`` is a level (there is no "step to the next time")."""
    ts = torch.as_tensor(ts, dtype=torch.float64)
    if not isinstance(denoiser, Denoiser):
        raise ValueError(f"denoiser must be a dlib.param.Denoiser; got {type(denoiser).__name__}")
    as_time(ts, name="ts")
    if ts.dim() != 1 or ts.numel() < 1 or (ts[1:] >= ts[:-1]).any() or ts[-1] <= 0:
        raise ValueError("ts must be a strictly decreasing 1-D grid of positive times (noise levels)")
    positive(step_scale, "step_scale")
    sig = denoiser.schedule.sigma(ts)
    for i, t in enumerate(ts):
        eta = float(step_scale * sig[i] ** 2 / sig[-1] ** 2)
        tb = _t(t, x)
        x = sample_langevin(lambda y: denoiser.score(y, tb), x, eta, n_steps_each, generator=generator)
        if callback is not None:
            callback({"i": i, "t": float(t), "t_next": None, "x": x, "x0": None})
    return x


@torch.no_grad()
def sample_predictor_corrector(denoiser: Denoiser, x: torch.Tensor, ts, *, n_corrector: int = 1, snr: float = 0.16,
                               generator: torch.Generator | None = None, callback: Callable | None = None) -> torch.Tensor:
    r"""Predictor–corrector sampling (Score SDE): every step from $t$ to $s<t$ is one Euler–Maruyama step of
    the reverse SDE $dx=[fx-g^2\nabla\log p_t]dt+g\,d\bar W$ (the predictor, identical to
    :func:`sample_euler_maruyama` with ``eta=1``), followed by ``n_corrector`` Langevin steps
    $x\leftarrow x+\eta\,s(x,s)+\sqrt{2\eta}\,z$ that target $p_s$ itself (the corrector).

    The corrector's step is set by a target signal-to-noise ratio $r$ (``snr``):
    $\eta=2\,(r\,\overline{\|z\|}/\overline{\|s\|})^2$ with norms per example averaged over the batch, so
    that the drift $\eta s$ is about $r$ times as long as the noise $\sqrt{2\eta}z$. A step to exactly
    $t=0$ returns $\hat x_0$ (no corrector). ``n_corrector=0`` reproduces Euler–Maruyama draw for draw.
    NFE: ``1 + n_corrector`` per step."""
    ts = _check(denoiser, x, ts)
    if isinstance(n_corrector, bool) or not isinstance(n_corrector, int) or n_corrector < 0:
        raise ValueError(f"n_corrector must be a non-negative integer; got {n_corrector!r}")
    positive(snr, "snr")
    B = x.shape[0]
    for i in range(ts.numel() - 1):
        t, s = ts[i], ts[i + 1]
        tb = _t(t, x)
        if s == 0:
            x0 = denoiser.x0(x, tb)
            x = x0
        else:
            x = _reverse_sde_step(denoiser, x, t, s, 1.0, generator)  # the predictor
            sb = _t(s, x)
            for _ in range(n_corrector):
                score = denoiser.score(x, sb)
                z = _noise(x, generator)
                z_norm = z.reshape(B, -1).norm(dim=1).mean()
                s_norm = score.reshape(B, -1).norm(dim=1).mean().clamp_min(torch.finfo(x.dtype).tiny)
                step = 2.0 * (snr * z_norm / s_norm) ** 2
                x = x + step * score + (2.0 * step).sqrt() * z
            x0 = None
        if callback is not None:
            callback({"i": i, "t": float(t), "t_next": float(s), "x": x, "x0": x0})
    return x
