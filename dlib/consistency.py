r"""Consistency models, consistency distillation with a guided teacher step (LCM), and
their multistep sampler (chapter II.8).

A consistency function maps every point of one probability-flow trajectory to its end
point, $f_\theta(x_t,t)=x_0$ for all $t$. It is parameterised as

$$f_\theta(x,t)=c_{\rm skip}(t)\,x+c_{\rm out}(t)\,\hat x_0^\theta(x,t)$$

with $c_{\rm skip}(0)=1$, $c_{\rm out}(0)=0$, so that $f_\theta(x,0)=x$ holds by
construction (the boundary condition). Times are the book's: data at $t=0$, noise at
$t=1$; the training grid is $t_j=j/N$, $j=0..N$ (LCM's 50-step DDIM grid is $N=50$),
and the consistency pair is taken ``skip`` (LCM's $k$) grid steps apart.
"""

from __future__ import annotations

from typing import Callable

import torch

from . import _checks as C
from ._loop import _prepare, _report, _steps
from .param import Denoiser
from .solvers import first_order_step

__all__ = [
    "boundary_scalings",
    "consistency_function",
    "teacher_step",
    "consistency_distillation_loss",
    "lcm_time_grid",
    "sample_consistency",
]

SIGMA_DATA = 0.5
SCALE = 1e4  # LCM's timestep / 0.1 on a 1000-step clock: 10 * 1000 per unit of t


def _scaling_args(sigma_data, scale) -> tuple[float, float]:
    return C.positive(sigma_data, "sigma_data"), C.positive(scale, "scale")


def _scalings(t, sigma_data: float, scale: float):
    """Unchecked :func:`boundary_scalings` (t a float or a tensor)."""
    u = t * scale
    den = u * u + sigma_data**2
    return sigma_data**2 / den, u / den**0.5


def boundary_scalings(t, *, sigma_data: float = SIGMA_DATA, scale: float = SCALE):
    r"""LCM's boundary scalings at time ``t`` (a number or a tensor in [0, 1]):
    $c_{\rm skip}(t)=\sigma_d^2/((st)^2+\sigma_d^2)$ and
    $c_{\rm out}(t)=st/\sqrt{(st)^2+\sigma_d^2}$, with $\sigma_d$ = ``sigma_data`` and
    $s$ = ``scale``; $c_{\rm skip}(0)=1$ and $c_{\rm out}(0)=0$. The default
    $s=10^4$ is the official code's ``timestep / 0.1`` on diffusers' 1000-step clock
    (its timestep $k$ is $t=k/1000$ here): beyond the first few grid steps
    $c_{\rm skip}\approx0$ and $f$ is the $\hat x_0$ prediction.
    Returns ``(c_skip, c_out)`` as floats for a number, tensors (float64 unless ``t``
    is a floating tensor) otherwise. Chapter II.8."""
    sigma_data, scale = _scaling_args(sigma_data, scale)
    if C._is_number(t) or (torch.is_tensor(t) and t.dim() == 0):
        t = C.scalar_time(t)
    else:
        dtype = t.dtype if torch.is_tensor(t) and t.is_floating_point() else None
        t = C.as_time(t, dtype=dtype or torch.float64)
    return _scalings(t, sigma_data, scale)


def _f(denoiser: Denoiser, x, t, sigma_data: float, scale: float, clip=None):
    """Unchecked consistency function; ``t`` a float or a (B,) tensor. Where t = 0 it
    is x itself (c_skip = 1, c_out = 0), whatever the model returns there. ``clip``
    clamps the x0 prediction to [-clip, clip] first (diffusers' ``clip_sample``)."""
    if isinstance(t, float) and t == 0.0:
        return x
    x0 = denoiser._predict(x, t, "x0")
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    c_skip, c_out = _scalings(t, sigma_data, scale)
    f = C.bcast(c_skip, x) * x + C.bcast(c_out, x) * x0
    if isinstance(t, float):
        return f
    return torch.where((t == 0).view(-1, *[1] * (x.dim() - 1)), x, f)


def consistency_function(
    denoiser: Denoiser,
    x: torch.Tensor,
    t,
    *,
    sigma_data: float = SIGMA_DATA,
    scale: float = SCALE,
) -> torch.Tensor:
    r"""$f(x,t)=c_{\rm skip}(t)\,x+c_{\rm out}(t)\,\hat x_0(x,t)$ with the
    :func:`boundary_scalings` and $\hat x_0$ from ``denoiser`` (any prediction kind; one
    evaluation). ``t`` is one time or a (B,) tensor of times. $f(x,0)=x$ exactly.
    Differentiable (training uses it). Chapter II.8."""
    C.denoiser(denoiser)
    sigma_data, scale = _scaling_args(sigma_data, scale)
    x, t = denoiser._inputs(x, t)
    return _f(denoiser, x, t, sigma_data, scale)


def teacher_step(teacher: Denoiser, x: torch.Tensor, t, s) -> torch.Tensor:
    r"""One step of the teacher's ODE solver from $t$ to $s<t$: the DDIM step
    (:func:`dlib.solvers.first_order_step`) on ``teacher``'s $(\hat x_0,\hat\epsilon)$.
    With a classifier-free-guided teacher
    (:func:`dlib.guidance.classifier_free_guidance`) this is LCM's guided step of the
    augmented PF-ODE, $\hat x_s=\alpha_s\tilde x_0+\sigma_s\tilde\epsilon$. One
    evaluation of ``teacher`` (two network calls when it is guided). Chapter II.8."""
    C.denoiser(teacher, "teacher")
    x, t = teacher._inputs(x, t)
    if not isinstance(t, float):
        raise ValueError("t must be one time for the whole batch (a number)")
    x0, eps = teacher._x0_eps(x, t)
    return first_order_step(x, x0, eps, t, s, teacher.schedule)


def _grid(grid) -> torch.Tensor:
    g = C.as_time(grid, name="grid", dtype=torch.float64).to(torch.float64)
    if (
        g.dim() != 1
        or g.numel() < 2
        or float(g[0]) != 0.0
        or bool((g[1:] <= g[:-1]).any())
    ):
        raise ValueError(
            "grid must be a strictly increasing 1-D tensor of times that starts at 0 "
            "(e.g. torch.linspace(0, 1, 51))"
        )
    return g


def consistency_distillation_loss(
    student: Denoiser,
    target: Denoiser,
    teacher: Denoiser,
    x0: torch.Tensor,
    grid,
    *,
    skip: int = 1,
    groups: int = 4,
    huber_c: float | None = None,
    sigma_data: float = SIGMA_DATA,
    scale: float = SCALE,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""The consistency-distillation loss with a skipping step (Song et al. 2023; LCM):
    draw grid indices $n$ uniformly in $0..N-k$ ($k$ = ``skip``), noise $x_0$ to
    $x_{t_{n+k}}=\alpha x_0+\sigma\epsilon$, take one :func:`teacher_step` from
    $t_{n+k}$ to $t_n$ (exactly on the grid), and return the mean over entries of
    $d\big(f_\theta(x_{t_{n+k}},t_{n+k}),\ \mathrm{sg}\,f_{\theta^-}(\hat x_{t_n},t_n)
    \big)$ with $d$ the squared error, or pseudo-Huber $\sqrt{\delta^2+c^2}-c$ per entry
    when ``huber_c`` $=c$ is given.

    ``student`` ($\theta$, gradients flow), ``target`` ($\theta^-$: an EMA copy, or the
    student itself as in the LoRA script; evaluated without gradients) and ``teacher``
    (frozen, e.g. a guided model) are :class:`dlib.param.Denoiser` s whose labels, if
    any, are bound to the rows of ``x0``. ``grid`` is increasing from $t_0=0$. The batch
    is split into ``groups`` contiguous parts with one grid index each, so that the
    teacher's DDIM step is a scalar-time :func:`dlib.solvers.first_order_step`. At
    $t_n=0$ the target is $\hat x_0$ itself (boundary condition). Chapter II.8."""
    C.denoiser(student, "student")
    C.denoiser(target, "target")
    C.denoiser(teacher, "teacher")
    x0 = student._check_x(x0, "x0")
    g = _grid(grid)
    n_grid = g.numel() - 1
    skip = C.positive_int(skip, "skip")
    if skip > n_grid:
        raise ValueError(f"skip must be at most the grid's {n_grid} steps; got {skip}")
    groups = C.positive_int(groups, "groups")
    if groups > x0.shape[0]:
        raise ValueError(
            f"groups must be at most the batch size {x0.shape[0]}; got {groups}"
        )
    if huber_c is not None:
        huber_c = C.positive(huber_c, "huber_c")
    sigma_data, scale = _scaling_args(sigma_data, scale)
    C.generator(generator)
    dev = generator.device if generator is not None else torch.device("cpu")
    idx = torch.randint(0, n_grid - skip + 1, (groups,), generator=generator,
                        device=dev).tolist()
    eps = C.randn(x0.shape, x0, generator)
    parts = torch.arange(x0.shape[0]).tensor_split(groups)
    sch = student.schedule
    t_hi = torch.empty(x0.shape[0], dtype=torch.float64)
    t_lo = torch.empty_like(t_hi)
    for n, rows in zip(idx, parts):
        t_hi[rows], t_lo[rows] = g[n + skip], g[n]
    a, s = sch.alpha(t_hi), sch.sigma(t_hi)
    x_t = C.bcast(a, x0) * x0 + C.bcast(s, x0) * eps
    t_hi_x = t_hi.to(device=x0.device, dtype=C.time_dtype(x0))
    t_lo_x = t_lo.to(device=x0.device, dtype=C.time_dtype(x0))
    pred = _f(student, x_t, t_hi_x, sigma_data, scale)
    with torch.no_grad():  # the teacher once on the whole batch, then DDIM by group
        x0_t, eps_t = teacher._x0_eps(x_t, t_hi_x)
        x_hat = torch.cat([
            first_order_step(x_t[r], x0_t[r], eps_t[r], float(g[n + skip]),
                             float(g[n]), sch)
            for n, r in zip(idx, parts)
        ])
        tgt = _f(target, x_hat, t_lo_x, sigma_data, scale)
    d = pred - tgt
    if huber_c is None:
        return d.pow(2).mean()
    return ((d.pow(2) + huber_c**2).sqrt() - huber_c).mean()


def lcm_time_grid(steps: int, original_steps: int = 50) -> torch.Tensor:
    r"""The times at which LCM's multistep sampler evaluates its model, followed by 0:
    ``steps`` times picked evenly (floor of ``linspace(0, N, steps, endpoint=False)``)
    from the reversed training grid $t_j=j/N$, $j=N..1$, $N$ = ``original_steps``, as
    diffusers' ``LCMScheduler.set_timesteps`` does (its timestep $k$ is the book's
    $t=(k+1)/1000$). E.g. 2 steps of 50: ``[1.0, 0.5, 0.0]``. Chapter II.8."""
    original_steps = C.positive_int(original_steps, "original_steps")
    steps = C.positive_int(steps, "steps")
    if steps > original_steps:
        raise ValueError(
            f"steps must be at most original_steps = {original_steps}; got {steps}"
        )
    picks = [(i * original_steps) // steps for i in range(steps)]
    times = [(original_steps - p) / original_steps for p in picks]
    return torch.tensor(times + [0.0], dtype=torch.float64)


@torch.no_grad()
def sample_consistency(
    denoiser: Denoiser,
    x: torch.Tensor,
    ts,
    *,
    sigma_data: float = SIGMA_DATA,
    scale: float = SCALE,
    clip_x0: float | None = None,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""Multistep consistency sampling: at each step from $t$ to $s<t$ of ``ts``,
    $\hat x_0=f(x,t)$ (:func:`consistency_function`), then re-noise with fresh noise,
    $x\leftarrow\alpha_s\hat x_0+\sigma_s z$; a step to $s=0$ returns $\hat x_0$
    ($\alpha_0=1$, $\sigma_0=0$). One step (``ts = [1, 0]``) is the one-call sampler;
    :func:`lcm_time_grid` gives LCM's grid. Not deterministic (fresh $z$ at every
    non-final step, drawn from ``generator``). ``clip_x0`` clamps the network's
    $\hat x_0$ to [-clip_x0, clip_x0] before the boundary scalings, as diffusers'
    ``LCMScheduler(clip_sample=True)`` does (off by default, as there). NFE: one per
    step. Chapter II.8."""
    ts = _prepare(denoiser, x, ts)
    sigma_data, scale = _scaling_args(sigma_data, scale)
    if clip_x0 is not None:
        clip_x0 = C.positive(clip_x0, "clip_x0")
    C.generator(generator)
    C.optional_function(callback, "callback", "callback(dict)")
    sch = denoiser.schedule
    for i, t, s in _steps(ts, progress, "consistency"):
        x0 = _f(denoiser, x, t, sigma_data, scale, clip_x0)
        c = sch._coefficients(s)
        x = x0 if c.sigma == 0 else c.alpha * x0 + c.sigma * C.randn(
            x.shape, x, generator
        )
        _report(callback, i, t, s, x, x0)
    return x
