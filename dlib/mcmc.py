r"""Denoising MCMC (chapter II.6): Langevin-Gibbs on the pair (x, noise level), then a
solver from the chain's state.

Everything here works in the VE picture of a model, $x=x_0+\sigma\epsilon$, whatever
schedule the denoiser was trained with: the book's $x_t=\alpha_tx_0+\sigma_t\epsilon$
is the VE state $x=x_t/\alpha_t$ at the level $\sigma=\sigma_t/\alpha_t=e^{-\lambda_t}$
(for ``schedules.VE``, $\alpha_t=1$ and $\sigma=\sigma_t$). A call of the denoiser at
level $\sigma$ is a call at the time $t$ with $\lambda_t=-\log\sigma$ on the input
$\alpha_tx$; every such call counts in ``denoiser.nfe``.

* :func:`noise_level_grid` the grid $\sigma_1>\dots>\sigma_L$ of the noise classifier;
* :func:`langevin_gibbs` the chain: a Langevin step on $x$ at the chain's level, then
  a new level from the classifier $p(i\mid x)$ (MAP or sampled);
* :func:`karras_levels` and :func:`sample_from_levels` an Euler or Heun solver of the
  PF-ODE $dx/d\sigma=-\sigma\nabla\log p_\sigma(x)$ on one grid per sample;
* :func:`sample_dlg` rounds of chain steps, each round's lowest-level state handed to
  the solver and finished by one Tweedie step.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
from tqdm.auto import tqdm

from . import _checks as C

__all__ = [
    "noise_level_grid",
    "Chain",
    "langevin_gibbs",
    "karras_levels",
    "sample_from_levels",
    "DLGResult",
    "sample_dlg",
]

_F64 = torch.float64
UPDATES = ("argmax", "sample")
METHODS = ("euler", "heun")


def noise_level_grid(n_levels: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    r"""$L$ noise levels, geometric and decreasing: $\sigma_1=\sigma_{max}>\dots>
    \sigma_L=\sigma_{min}$ (float64, shape (L,)); the classes of the noise classifier
    (chapter II.6; the official code uses $L=1000$)."""
    n = C.positive_int(n_levels, "n_levels", minimum=2)
    lo, hi = C.positive(sigma_min, "sigma_min"), C.positive(sigma_max, "sigma_max")
    if not lo < hi:
        raise ValueError(
            f"sigma_min must be below sigma_max; got sigma_min={sigma_min}, "
            f"sigma_max={sigma_max}"
        )
    u = torch.linspace(0.0, 1.0, n, dtype=_F64)
    return torch.exp(math.log(hi) + (math.log(lo) - math.log(hi)) * u)


# --- the denoiser at a VE noise level ------------------------------------------------
def _level_range(denoiser) -> tuple[float, float]:
    """The VE levels sigma = exp(-lambda_t) that the denoiser's schedule covers."""
    lo, hi = denoiser.schedule.log_snr_range()
    return math.exp(-hi), math.exp(-lo)


def _check_levels(denoiser, sig: torch.Tensor, name: str) -> None:
    if not bool(torch.isfinite(sig).all()) or not bool((sig > 0).all()):
        raise ValueError(f"{name} must be finite positive noise levels")
    a, b = _level_range(denoiser)
    lo, hi = float(sig.min()), float(sig.max())
    if lo < a * (1 - 1e-9) or hi > b * (1 + 1e-9):
        raise ValueError(
            f"{name} must lie in the denoiser's range of levels [{a:.4g}, {b:.4g}] "
            f"(sigma = exp(-lambda_t)); got values in [{lo:.4g}, {hi:.4g}]"
        )


def _x0(denoiser, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    r"""$\hat x_0$ at the VE state ``x`` and per-sample levels ``sigma`` (B,): one
    denoiser call at $t(\sigma)$ on the input $\alpha_tx$."""
    sch = denoiser.schedule
    a, b = _level_range(denoiser)
    lam = -torch.log(sigma.to(_F64).clamp(a, b))
    t = sch._t_from_log_snr(lam).clamp(0.0, 1.0)
    alpha = sch._log_alpha(t).exp().to(x.dtype)
    shape = (-1,) + (1,) * (x.dim() - 1)
    x0, _ = denoiser._x0_eps(alpha.view(shape) * x, t)
    return x0


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x.dtype).view((-1,) + (1,) * (x.dim() - 1))


# --- the chain -----------------------------------------------------------------------
class Chain(NamedTuple):
    """The state of B Langevin-Gibbs chains after :func:`langevin_gibbs`.

    ``x``, ``level``: the current pair (VE state, index into ``sigmas``);
    ``x_low``, ``level_low``: per chain, the pair with the smallest level among the
    states visited in this call (what DLG hands to the solver); ``n_score``: score
    (denoiser) calls per chain; ``n_classifier``: classifier calls per chain."""

    x: torch.Tensor
    level: torch.Tensor
    x_low: torch.Tensor
    level_low: torch.Tensor
    n_score: int
    n_classifier: int


def _new_level(classifier, x, n_levels, update, generator):
    logits = classifier(x)
    if not torch.is_tensor(logits) or tuple(logits.shape) != (x.shape[0], n_levels):
        got = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
        raise ValueError(
            f"classifier(x) must return (B, L) = ({x.shape[0]}, {n_levels}) logits "
            f"over the levels; got {got}"
        )
    if update == "argmax":
        return logits.argmax(1)
    probs = torch.softmax(logits.to(_F64), 1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def langevin_gibbs(
    denoiser,
    classifier: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    level: torch.Tensor,
    sigmas,
    *,
    tau: float,
    n_steps: int,
    update: str = "argmax",
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Chain:
    r"""``n_steps`` Langevin-Gibbs steps on the pair (x, i) (chapter II.6; Kim & Ye's
    DLG). Each step:

    1. Langevin on $x\mid\sigma_i$: $x\leftarrow x+\tau\nabla\log p_{\sigma_i}(x)
       +\sqrt{2\tau}\,z$ with the model's score $(\hat x_0-x)/\sigma_i^2$ (one
       denoiser call; the paper's step size $\eta$ is $2\tau$);
    2. the level from the classifier, ``classifier(x)`` = (B, L) logits of
       $p(i\mid x)$: ``update="argmax"`` (the paper's MAP update) or ``"sample"`` (an
       exact Gibbs step when the classifier is exact).

    ``x`` is the VE state (B, ...), ``level`` (B,) integer indices into the decreasing
    grid ``sigmas`` (L,). Unadjusted Langevin with a fixed $\tau$ (and the MAP update)
    make this a biased sampler of $\pi_i\,p_{\sigma_i}(x)$."""
    C.denoiser(denoiser)
    x = denoiser._check_x(x, "x")
    C.function(classifier, "classifier", "classifier(x) -> (B, L) logits")
    sig = _grid(sigmas, denoiser)
    level = _levels(level, x, len(sig))
    tau = C.positive(tau, "tau")
    n = C.positive_int(n_steps, "n_steps")
    C.one_of(update, UPDATES, "update")
    C.generator(generator)
    C.flag(progress, "progress")
    return _run_chain(denoiser, classifier, x, level, sig, tau, n, update, generator,
                      progress)


def _grid(sigmas, denoiser) -> torch.Tensor:
    sig = C.real_tensor(sigmas, "sigmas")
    if sig.dim() != 1 or sig.numel() < 2 or bool((sig[1:] >= sig[:-1]).any()):
        raise ValueError(
            "sigmas must be a strictly decreasing 1-D grid of at least 2 noise levels"
        )
    _check_levels(denoiser, sig, "sigmas")
    return sig


def _levels(level, x, n_levels) -> torch.Tensor:
    ok = torch.is_tensor(level) and not level.is_floating_point() and (
        level.dtype != torch.bool and not level.is_complex()
    )
    if not ok or tuple(level.shape) != (x.shape[0],):
        got = (f"{level.dtype} {tuple(level.shape)}" if torch.is_tensor(level)
               else type(level).__name__)
        raise ValueError(
            f"level must be an integer tensor of shape ({x.shape[0]},); got {got}"
        )
    if bool(((level < 0) | (level >= n_levels)).any()):
        raise ValueError(f"level must hold indices in 0..{n_levels - 1}")
    return level.to(torch.int64)


def _run_chain(den, classifier, x, level, sig, tau, n, update, generator, progress):
    sig_x = sig.to(x.device)
    level = level.to(x.device)
    x_low, level_low = x.clone(), level.clone()
    best = torch.full((x.shape[0],), math.inf, dtype=_F64, device=x.device)
    steps = tqdm(range(n), desc="Langevin-Gibbs", leave=False) if progress else range(n)
    for _ in steps:
        s = sig_x[level]
        score = (_x0(den, x, s) - x) / _col(s, x) ** 2
        z = C.randn(x.shape, x, generator)
        x = x + tau * score + math.sqrt(2 * tau) * z
        level = _new_level(classifier, x, len(sig), update, generator).to(x.device)
        s_new = sig_x[level]
        lower = s_new < best
        best = torch.where(lower, s_new, best)
        level_low = torch.where(lower, level, level_low)
        x_low = torch.where(_col(lower, x).bool(), x, x_low)
    return Chain(x, level, x_low, level_low, n, n)


# --- the solver on per-sample grids ---------------------------------------------------
def karras_levels(sigma_start, sigma_end: float, n_steps: int, rho: float = 7.0):
    r"""Karras et al.'s grid from each sample's own start level down to
    ``sigma_end``: $\sigma_j=(s^{1/\rho}+\tfrac jn(\sigma_{end}^{1/\rho}
    -s^{1/\rho}))^\rho$, $j=0..n$, for every start level $s$ in ``sigma_start`` (B,);
    shape (B, n+1), float64 (chapter II.6). A start at or below ``sigma_end`` gives a
    constant row (a solver then leaves that sample unchanged)."""
    s = C.real_tensor(sigma_start, "sigma_start")
    s = s.reshape(1) if s.dim() == 0 else s
    if s.dim() != 1 or s.numel() < 1 or not bool((s > 0).all()):
        raise ValueError(
            "sigma_start must be a positive number or a 1-D tensor of them"
        )
    end = C.positive(sigma_end, "sigma_end")
    n = C.positive_int(n_steps, "n_steps")
    r = C.positive(rho, "rho")
    u = torch.linspace(0.0, 1.0, n + 1, dtype=_F64)[None]
    a = s.clamp(min=end)[:, None] ** (1 / r)
    return (a + u * (end ** (1 / r) - a)) ** r


@torch.no_grad()
def sample_from_levels(
    denoiser,
    x: torch.Tensor,
    levels,
    *,
    method: str = "euler",
    tweedie: bool = True,
    callback: Callable | None = None,
    progress: bool = False,
) -> torch.Tensor:
    r"""Integrate the VE PF-ODE $dx/d\sigma=-\sigma\nabla\log p_\sigma(x)
    =(x-\hat x_0)/\sigma$ along one grid of levels per sample (``levels`` (B, n+1),
    each row non-increasing; e.g. :func:`karras_levels`), chapter II.6.

    ``method="euler"``: $x\leftarrow x+(\sigma'-\sigma)(x-\hat x_0)/\sigma$ (NFE n);
    ``"heun"``: Karras et al.'s second-order correction on every step (NFE 2n).
    ``tweedie=True`` ends with $\hat x_0$ at the last level (Tweedie's formula
    $x+\sigma^2\nabla\log p_\sigma$; one more call). ``x`` and the output are VE
    states; for a VP model pass $x_t/\alpha_t$. ``callback`` receives
    ``{"i", "sigma", "sigma_next", "x", "x0"}`` after each step."""
    C.denoiser(denoiser)
    x = denoiser._check_x(x, "x")
    lev = C.real_tensor(levels, "levels")
    if lev.dim() != 2 or lev.shape[0] != x.shape[0] or lev.shape[1] < 2:
        raise ValueError(
            f"levels must have shape (B, n+1) = ({x.shape[0]}, >= 2); got "
            f"{tuple(lev.shape)}"
        )
    if bool((lev[:, 1:] > lev[:, :-1]).any()):
        raise ValueError("levels must be non-increasing along each row")
    _check_levels(denoiser, lev, "levels")
    C.one_of(method, METHODS, "method")
    C.flag(tweedie, "tweedie")
    C.optional_function(callback, "callback", "callback(dict)")
    C.flag(progress, "progress")
    lev = lev.to(x.device)
    n = lev.shape[1] - 1
    steps = tqdm(range(n), desc="per-sample ODE", leave=False) if progress else range(n)
    for i in steps:
        s, s_next = lev[:, i], lev[:, i + 1]
        x0 = _x0(denoiser, x, s)
        d = (x - x0) / _col(s, x)
        x_new = x + _col(s_next - s, x) * d
        if method == "heun":
            d2 = (x_new - _x0(denoiser, x_new, s_next)) / _col(s_next, x)
            x_new = x + _col(s_next - s, x) * (d + d2) / 2
        x = x_new
        if callback is not None:
            callback({"i": i, "sigma": s, "sigma_next": s_next, "x": x, "x0": x0})
    return _x0(denoiser, x, lev[:, -1]) if tweedie else x


# --- DLG: chains -> samples ----------------------------------------------------------
class DLGResult(NamedTuple):
    """What :func:`sample_dlg` returns.

    ``samples`` (R, B, ...): round r's output of every chain; ``start_sigma`` (R, B):
    the level the solver started from; ``chain``: the chains' final :class:`Chain`
    (pass its ``x``, ``level`` to continue them); ``nfe_per_sample``: denoiser calls
    per output (n_skip + solver + Tweedie, measured); ``classifier_per_sample``:
    classifier calls per output (reported separately)."""

    samples: torch.Tensor
    start_sigma: torch.Tensor
    chain: Chain
    nfe_per_sample: float
    classifier_per_sample: float


def sample_dlg(
    denoiser,
    classifier: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    level: torch.Tensor,
    sigmas,
    *,
    tau: float,
    n_skip: int,
    n_steps: int,
    n_rounds: int = 1,
    method: str = "euler",
    sigma_end: float | None = None,
    rho: float = 7.0,
    update: str = "argmax",
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> DLGResult:
    r"""Denoising Langevin Gibbs with a solver (chapter II.6). For each of
    ``n_rounds`` rounds: ``n_skip`` :func:`langevin_gibbs` steps; the visited state
    with the smallest level $\sigma_{start}$ goes to :func:`sample_from_levels` on a
    Karras grid of ``n_steps`` steps from its own $\sigma_{start}$ to ``sigma_end``
    (default: the grid's smallest level) and a final Tweedie step; the chains continue
    from where they are (persistent, so outputs of one chain are correlated).

    NFE per output = n_skip + solver NFE (n_steps for Euler, 2 n_steps for Heun) + 1,
    measured with ``denoiser.nfe``; the chains' initialisation and warm-up are not in
    it (amortise them over the rounds)."""
    C.denoiser(denoiser)
    x = denoiser._check_x(x, "x")
    C.function(classifier, "classifier", "classifier(x) -> (B, L) logits")
    sig = _grid(sigmas, denoiser)
    level = _levels(level, x, len(sig))
    tau = C.positive(tau, "tau")
    n_skip = C.positive_int(n_skip, "n_skip")
    n_steps = C.positive_int(n_steps, "n_steps")
    n_rounds = C.positive_int(n_rounds, "n_rounds")
    C.one_of(method, METHODS, "method")
    end = float(sig[-1]) if sigma_end is None else C.positive(sigma_end, "sigma_end")
    _check_levels(denoiser, torch.tensor([end], dtype=_F64), "sigma_end")
    rho = C.positive(rho, "rho")
    C.one_of(update, UPDATES, "update")
    C.generator(generator)
    C.flag(progress, "progress")
    nfe0 = denoiser.nfe
    outs, starts, n_cls = [], [], 0
    rounds = tqdm(range(n_rounds), desc="DLG rounds", leave=False) if progress else (
        range(n_rounds))
    chain = None
    for _ in rounds:
        chain = _run_chain(denoiser, classifier, x, level, sig, tau, n_skip,
                           update, generator, False)
        n_cls += chain.n_classifier
        x, level = chain.x, chain.level
        start = sig.to(x.device)[chain.level_low]
        grid = karras_levels(start.cpu(), end, n_steps, rho)
        outs.append(sample_from_levels(denoiser, chain.x_low, grid, method=method))
        starts.append(start)
    per = (denoiser.nfe - nfe0) / n_rounds
    return DLGResult(torch.stack(outs), torch.stack(starts), chain, per,
                     n_cls / n_rounds)

