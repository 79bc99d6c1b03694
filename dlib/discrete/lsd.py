r"""Learnable sampler distillation (LSD, LSD+) for masked discrete diffusion
(chapter III.2).

A few-step Euler (tau-leaping) sampler of the absorbing chain gets one learnable
scalar per step, the factor $a_k$ multiplying the concrete score of step $k$ (the
paper's $\Phi(t_k)$), and, for LSD+, learnable step sizes $\Delta_k$ (the paper's
$\kappa_k$) with times $t_k=1-\sum_{j<k}\Delta_j$. For the absorbing chain the score
of a masked position is $s_{\ell,y}=\frac{\alpha_t}{1-\alpha_t}p_\theta(y\mid x_t)$,
so a factor only changes the probability of leaving the mask in that step,
$r_k=\min\{1,a_k\,\Delta_k\,(-\alpha'_{t_k})/(1-\alpha_{t_k})\}$, never which token
is drawn. The released code multiplies the network's log-score instead (a factor on
the exponent): :func:`sample_lsd` offers that variant with ``exponent=True``.

Common random numbers. :func:`sample_lsd` draws all its randomness at the start: one
uniform $u_\ell$ and one float64 Gumbel vector $g_\ell$ per position. Position
$\ell$, still masked with survival level $h_\ell$, is revealed in a step iff
$u_\ell\ge h_\ell(1-r)$ (then $h_\ell\leftarrow h_\ell(1-r)$), and takes the token
$\arg\max_y(\log p_\theta(y)+g_{\ell,y})$. Given the past, $u_\ell$ is uniform on
$[0,h_\ell)$, so the reveal has probability $r$ and the token the law $p_\theta$:
the sampler is exact in law, and two samplers given the same noise (a teacher with
many steps and a student with few) are coupled as tightly as possible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from .. import _checks as C
from .._loop import _report, _steps
from .process import F64, _denoiser, _grid, _gumbel, _tokens

__all__ = [
    "lsd_noise",
    "sample_lsd",
    "step_times",
    "least_squares_factor",
    "LSDResult",
    "distill_lsd",
]


# --- the student sampler --------------------------------------------------------------
def _absorbing(denoiser):
    _denoiser(denoiser)
    if denoiser.process.kind != "absorbing":
        raise ValueError(
            f"LSD here is written for the absorbing (masked) chain; denoiser.process "
            f"is {denoiser.process.kind!r}"
        )
    return denoiser


def lsd_noise(
    shape, K: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The randomness of one run of :func:`sample_lsd` for tokens of ``shape`` (B,
    L) over ``K`` clean tokens: uniforms $u$ (B, L) and Gumbel noise $g$ (B, L, K),
    both float64. Pass the same pair to several samplers for common random
    numbers."""
    if (not isinstance(shape, (tuple, list, torch.Size)) or len(shape) != 2 or
            any(isinstance(v, bool) or not isinstance(v, int) or v < 1
                for v in shape)):
        raise ValueError(f"shape must be a pair (B, L) of positive integers; got "
                         f"{shape!r}")
    K = C.positive_int(K, "K")
    C.generator(generator)
    dev = generator.device if generator is not None else "cpu"
    u = torch.rand(tuple(shape), generator=generator, dtype=F64, device=dev).cpu()
    return u, _gumbel(tuple(shape) + (K,), generator, "cpu")


def _check_noise(noise, x, K):
    if (not isinstance(noise, (tuple, list)) or len(noise) != 2
            or not all(torch.is_tensor(v) for v in noise)):
        raise ValueError("noise must be a pair (u, g) of tensors from lsd_noise")
    u, g = noise
    if u.shape != x.shape or g.shape != x.shape + (K,):
        raise ValueError(
            f"noise must have shapes {tuple(x.shape)} and {tuple(x.shape) + (K,)}; "
            f"got {tuple(u.shape)} and {tuple(g.shape)}"
        )
    if not (u.dtype == F64 and g.dtype == F64):
        raise ValueError("noise must be float64 (use lsd_noise)")
    if bool(((u < 0) | (u >= 1)).any()) or not bool(torch.isfinite(g).all()):
        raise ValueError("noise must hold uniforms in [0, 1) and finite Gumbel values")
    return u.to(x.device), g.to(x.device)


def _factors(factors, n, name="factors"):
    if factors is None:
        return [1.0] * n
    f = C.real_tensor(factors, name) if not isinstance(factors, (list, tuple)) \
        else C.real_tensor(torch.tensor(factors, dtype=F64), name)
    if f.dim() != 1 or f.numel() != n:
        raise ValueError(f"{name} must hold one value per step ({n}); got shape "
                         f"{tuple(f.shape)}")
    if bool((f < 0).any()):
        raise ValueError(f"{name} must be non-negative")
    return [float(v) for v in f.detach().to(F64)]


def _reveal_prob(process, t, s, a, x0, exponent):
    """Per-position probability of leaving the mask in the Euler step t -> s with
    factor a (trusted inputs), and the token log-probabilities to draw from."""
    sch = process.schedule
    tt = torch.tensor(t, dtype=F64)
    alpha, d_alpha = float(sch._alpha(tt)), float(sch._d_alpha(tt))
    logp = torch.log(x0.clamp(min=0.0))
    if not exponent:
        lam = float(sch._elbo_weight(tt))  # beta alpha / (1 - alpha), finite at t = 1
        pi = torch.full(x0.shape[:-1], min(1.0, a * (t - s) * lam), dtype=F64)
        return pi, logp
    # released-code variant: the log-score is multiplied, s^a = (rho p)^a
    if alpha <= 0:
        raise ValueError("exponent=True needs alpha_t > 0 (use LinearKeep(eps > 0))")
    beta, rho = -d_alpha / alpha, alpha / (1 - alpha)
    mass = torch.exp(torch.logsumexp(a * logp, -1))  # sum_y p_y^a
    pi = ((t - s) * beta * rho**a * mass).clamp(max=1.0)
    return pi, a * logp


@torch.no_grad()
def sample_lsd(
    denoiser,
    x: torch.Tensor,
    ts,
    factors=None,
    *,
    exponent: bool = False,
    noise: tuple[torch.Tensor, torch.Tensor] | None = None,
    final_argmax: bool = True,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""Euler (tau-leaping) sampling of the absorbing chain with one factor per step
    (chapter III.2): from $t$ to $s$ a masked position is revealed with probability
    $r=\min\{1,a_k(t-s)(-\alpha'_t)/(1-\alpha_t)\}$ and its token is drawn from
    $p_\theta(x_0^\ell\mid x_t)$; revealed tokens are kept. ``factors=None`` (all
    $a_k=1$) is :func:`dlib.discrete.sample_tau_leaping` in law.
    ``exponent=True`` is the variant of the released LSD code: the log-score is
    multiplied, $s\mapsto s^{a_k}$, which changes both the reveal probability
    ($r=(t-s)\beta\rho^{a}\sum_yp_y^{a}$, $\rho=\alpha/(1-\alpha)$) and the token
    law ($\propto p^{a}$). ``noise``, the output of :func:`lsd_noise` (drawn from
    ``generator`` if None), gives common random numbers (module docstring).
    A step that ends at $s=0$ reveals every position left (as the exact reverse
    process does). ``final_argmax`` fills positions still masked after the grid
    with the argmax of $p_\theta$ (one more NFE, only if some are left).
    ``callback`` gets ``{"i", "t", "t_next", "x", "x0"}``. One NFE per step."""
    denoiser = _absorbing(denoiser)
    p = denoiser.process
    x = _tokens(x, "x", p.n_states).clone()
    ts = _grid(ts)
    a = _factors(factors, len(ts) - 1)
    C.flag(exponent, "exponent")
    C.flag(final_argmax, "final_argmax")
    C.generator(generator)
    C.optional_function(callback, "callback", "callback(dict)")
    u, g = (lsd_noise(tuple(x.shape), p.K, generator) if noise is None
            else _check_noise(noise, x, p.K))
    level = torch.ones(x.shape, dtype=F64, device=x.device)
    for i, t, s in _steps(ts, progress, "LSD"):
        masked = x == p.mask_index
        if not bool(masked.any()):
            _report(callback, i, t, s, x, None)
            continue
        x0 = denoiser._x0_probs(x, t)
        pi, logits = _reveal_prob(p, t, s, a[i], x0, exponent)
        if s == 0.0:  # the exact reverse process has revealed everything at t = 0
            pi = torch.ones_like(pi)
        x, level = _reveal(x, level, u, g, logits, pi, p.mask_index)
        _report(callback, i, t, s, x, x0)
    masked = x == p.mask_index
    if final_argmax and bool(masked.any()):
        x = torch.where(masked, denoiser._x0_probs(x, ts[-1]).argmax(-1), x)
    return x


# --- learned time grid ----------------------------------------------------------------
def step_times(params, t_end: float = 0.0, t_start: float = 1.0) -> torch.Tensor:
    r"""LSD+'s time grid from unconstrained parameters $\theta_k$ (one per step,
    differentiable): step sizes $\Delta_k=(t_{\rm start}-t_{\rm end})\,
    \mathrm{softplus}(\theta_k)/\sum_j\mathrm{softplus}(\theta_j)$ and times
    $t_0=t_{\rm start}$, $t_{k+1}=t_k-\Delta_k$, so the grid is strictly decreasing
    and ends exactly at $t_{\rm end}$ (a floor of $10^{-6}/M$ of the interval
    is added to every normalised step, so that an extreme parameter cannot make a
    step vanish). Equal parameters give the uniform grid.
    Returns the M + 1 times (the dtype of ``params``)."""
    params = C.tensor(params, "params", floating=True, min_dim=1)
    if params.dim() != 1:
        raise ValueError(f"params must be 1-D; got shape {tuple(params.shape)}")
    t_end = C.scalar_time(t_end, "t_end")
    t_start = C.scalar_time(t_start, "t_start")
    if not t_end < t_start:
        raise ValueError(f"need t_end < t_start; got {t_end}, {t_start}")
    w = torch.nn.functional.softplus(params)
    w = w / w.sum().clamp(min=torch.finfo(w.dtype).tiny)
    floor = 1e-6 / len(w)  # no step below this fraction: the grid stays strict
    delta = (t_start - t_end) * (w + floor) / (1 + 1e-6)
    ts = t_start - torch.cat([delta.new_zeros(1), torch.cumsum(delta, 0)])
    return torch.cat([ts[:-1], ts.new_full((1,), t_end)])


# --- the distillation objective -------------------------------------------------------
def least_squares_factor(target: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    r"""The minimiser of the LSD loss $\sum\lVert s^*-a\,s\rVert^2$ over one scalar:
    $a=\langle s^*,s\rangle/\lVert s\rVert^2$ (float64 scalar; 1 when $s=0$, where
    every $a$ is a minimiser). ``target`` and ``student`` have the same shape."""
    target = C.tensor(target, "target", floating=True)
    student = C.tensor(student, "student", floating=True)
    if target.shape != student.shape:
        raise ValueError(f"target and student must have the same shape; got "
                         f"{tuple(target.shape)} and {tuple(student.shape)}")
    s, t = student.to(F64), target.to(F64)
    den = (s * s).sum()
    return torch.where(den > 0, (s * t).sum() / den.clamp(min=1e-300),
                       torch.ones((), dtype=F64))


@dataclass
class LSDResult:
    """What :func:`distill_lsd` returns: the learned ``factors`` (M,), the time grid
    ``ts`` (M + 1,) (uniform for LSD), the ``closed_form`` least-squares factors at
    the final student states (M,), the loss per iteration ``losses``, and the NFE
    spent on the teacher and on the student during training."""

    factors: torch.Tensor
    ts: torch.Tensor
    closed_form: torch.Tensor
    losses: list[float] = field(default_factory=list)
    teacher_nfe: int = 0
    student_nfe: int = 0


def _reveal(x, level, u, g, logp, pi, mask):
    """One coupled reveal step (trusted inputs, no gradient)."""
    masked = x == mask
    new_level = level * (1 - pi)
    reveal = masked & (u >= new_level)
    level = torch.where(masked, new_level, level)
    return torch.where(reveal, (logp + g).argmax(-1), x), level


def _perturb(x, relax, K, generator):
    """Reveal ceil(relax * L) random positions of each row with uniform tokens."""
    B, L = x.shape
    n = math.ceil(relax * L)
    if n == 0:
        return x
    dev = generator.device if generator is not None else "cpu"
    keys = torch.rand((B, L), generator=generator, dtype=F64, device=dev).cpu()
    tok = torch.randint(0, K, (B, L), generator=generator, device=dev).cpu()
    pick = keys.argsort(-1).argsort(-1) < n
    return torch.where(pick, tok.to(x.device), x)


def distill_lsd(
    denoiser,
    steps: int,
    length: int,
    *,
    learn_times: bool = False,
    teacher_substeps: int = 8,
    batch_size: int = 64,
    iters: int = 0,
    lr: float = 0.05,
    relax: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> LSDResult:
    r"""Fit LSD's per-step factors $a_k$ (and, with ``learn_times=True``, LSD+'s step
    sizes through :func:`step_times`) of a ``steps``-step :func:`sample_lsd` student
    from $t=1$ to $0$ for sequences of ``length`` tokens by distillation from a
    many-step teacher (chapter III.2).

    Each student step $k$ ($t_k\to t_{k+1}$, state $x_{t_k}$) is compared with a
    teacher run with the same sampler and the same random numbers from the same
    state over the same interval in ``teacher_substeps`` equal sub-steps. The
    effective transition terms are matched (squared L2 over the batch, positions and
    tokens): the student's $a_k\Delta_k\hat R(x_{t_k},t_k)$ with
    $\hat R_{\ell,y}=\frac{-\alpha'_t}{1-\alpha_t}p_\theta(y\mid x_t)$ on masked
    positions (the reverse rate, i.e. the rescaled concrete score) against the
    teacher's sum $\sum_j\delta_j\hat R(x^*_{s_j},s_j)$ over its sub-steps. (The
    paper's teacher runs on its own trajectory; started from the student's state, one
    sub-step would reproduce the student, so the signal is the context the teacher
    reveals inside the interval.)

    ``iters=0`` (LSD): one pass over a batch, each $a_k$ set to its closed-form
    least-squares value :func:`least_squares_factor` before the step is taken (the
    fixed point of the paper's iteration: step k's states depend only on the earlier
    factors). ``iters>0``: the paper's Algorithm 2, ``iters`` Adam steps (learning
    rate ``lr``) on all factors (and step-size parameters) at once, a fresh batch of
    random numbers per iteration, states sampled without gradient. ``relax`` > 0:
    the relaxed objective, each training start has ``ceil(relax * L)`` positions
    revealed with uniformly random tokens. The last factor is fixed at 1 (a step to
    $t=0$ reveals every position). ``closed_form`` of the result: the least-squares
    factors (for ``iters=0`` those of the single pass, equal to ``factors`` but for
    the last one; for ``iters>0`` at the learned parameters, on one more batch)."""
    denoiser = _absorbing(denoiser)
    steps = C.positive_int(steps, "steps")
    L = C.positive_int(length, "length")
    C.flag(learn_times, "learn_times")
    teacher_substeps = C.positive_int(teacher_substeps, "teacher_substeps")
    batch_size = C.positive_int(batch_size, "batch_size")
    iters = C.positive_int(iters, "iters", minimum=0)
    lr = C.positive(lr, "lr")
    relax = C.in_range(relax, "relax", 0.0, 1.0)
    C.generator(generator)
    if learn_times and iters == 0:
        raise ValueError("learn_times=True needs iters > 0 (Adam on the step sizes)")
    log_a = torch.zeros(steps, dtype=F64, requires_grad=iters > 0)
    theta = torch.zeros(steps, dtype=F64, requires_grad=learn_times)
    params = [log_a] + ([theta] if learn_times else [])
    opt = torch.optim.Adam(params, lr=lr) if iters > 0 else None
    losses: list[float] = []
    nfe0 = denoiser.nfe
    nfe = {"teacher": 0}
    if iters == 0:  # one pass: each factor set to its least-squares value in turn
        with torch.no_grad():
            loss, ls = _pass(denoiser, log_a, theta, steps, teacher_substeps,
                             batch_size, L, relax, generator, closed=True, nfe=nfe)
        losses.append(float(loss))
    for _ in _iterations(iters, progress) if iters > 0 else ():
        loss, _ = _pass(denoiser, log_a, theta, steps, teacher_substeps, batch_size,
                        L, relax, generator, closed=False, nfe=nfe)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    if iters > 0:
        with torch.no_grad():
            _, ls = _pass(denoiser, log_a, theta, steps, teacher_substeps, batch_size,
                          L, relax, generator, closed=False, nfe=nfe)
    factors = torch.exp(log_a.detach()) if iters > 0 else ls.clone()
    factors[-1] = 1.0
    ts = step_times(theta.detach())
    return LSDResult(factors, ts, ls, losses, nfe["teacher"],
                     denoiser.nfe - nfe0 - nfe["teacher"])


def _iterations(n, progress):
    return range(n) if not progress else _steps(list(range(n + 1)), True, "LSD")


def _pass(den, log_a, theta, M, n_sub, B, L, relax, gen, *, closed, nfe):
    """One training pass; returns (sum of the per-step losses, least-squares
    factors at this pass's states). With ``closed`` the student steps use the
    least-squares factors (written into log_a)."""
    p = den.process
    sch = p.schedule
    ts = step_times(theta)
    x = torch.full((B, L), p.mask_index, dtype=torch.int64)
    x = _perturb(x, relax, p.K, gen)
    u, g = lsd_noise((B, L), p.K, gen)
    level = torch.ones((B, L), dtype=F64)
    total = torch.zeros((), dtype=F64)
    ls = torch.ones(M, dtype=F64)
    for k in range(M):
        t, s = ts[k], ts[k + 1]
        masked = (x == p.mask_index)[..., None]
        with torch.no_grad():
            x0 = den._x0_probs(x, float(t))
        stud = torch.where(masked, (t - s) * sch._elbo_weight(t) * x0, 0.0)
        # the teacher: n_sub sub-steps from the same state with the same noise
        sub = t + (s - t) * torch.arange(n_sub + 1, dtype=F64) / n_sub
        xs, lev = x, level
        target = torch.zeros_like(stud)
        for j in range(n_sub):
            a_j, b_j = sub[j], sub[j + 1]
            mj = (xs == p.mask_index)
            if not bool(mj.any()):
                break
            with torch.no_grad():
                q = den._x0_probs(xs, float(a_j))
            nfe["teacher"] += 1
            rate = (a_j - b_j) * sch._elbo_weight(a_j)
            target = target + torch.where(mj[..., None], rate * q, 0.0)
            pi = rate.detach().clamp(max=1.0)
            if j == n_sub - 1 and float(b_j.detach()) == 0.0:
                pi = torch.ones((), dtype=F64)
            xs, lev = _reveal(xs, lev, u, g, torch.log(q.clamp(min=0.0)), pi,
                              p.mask_index)
        ls[k] = least_squares_factor(target.detach(), stud.detach())
        if closed and k < M - 1:
            with torch.no_grad():
                log_a[k] = torch.log(ls[k].clamp(min=1e-12))
        a = torch.exp(log_a[k]) if k < M - 1 else torch.ones((), dtype=F64)
        total = total + ((target - a * stud) ** 2).sum() / B
        with torch.no_grad():
            pi = (a * (t - s) * sch._elbo_weight(t)).clamp(max=1.0)
            if k == M - 1:
                pi = torch.ones((), dtype=F64)
            x, level = _reveal(x, level, u, g, torch.log(x0.clamp(min=0.0)), pi,
                               p.mask_index)
    return total, ls
