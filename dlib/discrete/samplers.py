r"""Samplers for discrete diffusion: ancestral, tau-leaping, Tweedie tau-leaping and
confidence-ordered unmasking (Part III).

Every sampler has the signature of :mod:`dlib.sampling`::

    sample_xxx(denoiser, x, ts, *, <options>, generator=None, callback=None,
               progress=None) -> x

``denoiser`` is a :class:`dlib.discrete.CategoricalDenoiser`, ``x`` the int64 tokens
(B, L) at time ``ts[0]`` (all mask for the absorbing chain, a draw of the prior
otherwise), ``ts`` a strictly decreasing grid of float times (e.g.
``dlib.sampling.time_grid(n, 1.0, 0.0)``). Every step draws each token independently
(the factorisation error of few-step sampling), with :func:`sample_categorical`'s
float64 Gumbel noise. ``final_argmax=True`` adds a "noise removal" step after the grid
for the absorbing chain: remaining masks are replaced by the argmax of
$p_\theta(x_0\mid x_{t_{\rm end}})$ (one more NFE, skipped when no mask is left).
``callback`` gets ``{"i", "t", "t_next", "x", "x0"}`` after every step (``x0``: the
clean-token probabilities used, or None). NFE: one per step (plus the optional final
one).
"""

from __future__ import annotations

from typing import Callable

import torch

from .. import _checks as C
from .._loop import _report, _steps
from .process import F64, _denoiser, _gumbel_argmax, _grid, _tokens

__all__ = [
    "sample_ancestral",
    "sample_tau_leaping",
    "sample_tweedie",
    "sample_confidence",
]


def _prepare(denoiser, x, ts, generator, callback, final_argmax):
    _denoiser(denoiser)
    x = _tokens(x, "x", denoiser.process.n_states)
    ts = _grid(ts)
    C.generator(generator)
    C.optional_function(callback, "callback", "callback(dict)")
    C.flag(final_argmax, "final_argmax")
    return x.clone(), ts


def _log(p):
    return torch.log(p.clamp(min=0.0))


def _finish(denoiser, x, t_end, final_argmax):
    p = denoiser.process
    if not final_argmax or p.kind != "absorbing" or t_end == 0.0:
        return x
    masked = x == p.mask_index
    if not bool(masked.any()):
        return x
    best = denoiser._x0_probs(x, t_end).argmax(-1)
    return torch.where(masked, best, x)


@torch.no_grad()
def sample_ancestral(
    denoiser,
    x: torch.Tensor,
    ts,
    *,
    final_argmax: bool = False,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""D3PM / MDLM ancestral sampling: $x_s\sim\sum_{x_0}p_\theta(x_0\mid x_t)\,
    q(x_s\mid x_t,x_0)$ per token (:meth:`DiscreteProcess.posterior`); absorbing
    chain: a masked token is revealed with probability
    $(\alpha_s-\alpha_t)/(1-\alpha_t)$, unmasked tokens are kept. A last step to
    s = 0 draws from $p_\theta(x_0\mid x_t)$. Any process; one NFE per step."""
    x, ts = _prepare(denoiser, x, ts, generator, callback, final_argmax)
    p = denoiser.process
    for i, t, s in _steps(ts, progress, "ancestral"):
        x0 = denoiser._x0_probs(x, t)
        x = _gumbel_argmax(_log(p._posterior(x, denoiser._pad(x0), s, t)), generator)
        _report(callback, i, t, s, x, x0)
    return _finish(denoiser, x, ts[-1], final_argmax)


@torch.no_grad()
def sample_tau_leaping(
    denoiser,
    x: torch.Tensor,
    ts,
    *,
    final_argmax: bool = False,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""First-order (Euler) steps of the reverse CTMC, token by token:
    $x_s^\ell\sim e_{x_t^\ell}+(t-s)\hat R_\theta(x_t)_{\ell,\cdot}$, the rates of
    :meth:`DiscreteProcess.reverse_rates` at the step's start (from the model's clean
    probabilities or its concrete score); negative stay-probabilities (steps too long
    for the rates) are clipped to 0 and the row renormalised. This is SEDD's "Euler"
    sampler; with one state per token at most one jump per token and step is taken.
    Needs finite rates at every step's start (uniform chains: start below t = 1 or use
    a schedule with $\alpha_1>0$). One NFE per step."""
    x, ts = _prepare(denoiser, x, ts, generator, callback, final_argmax)
    p = denoiser.process
    for i, t, s in _steps(ts, progress, "tau-leaping"):
        if p.kind == "absorbing" and denoiser.kind == "x0_logits":
            x0 = denoiser._x0_probs(x, t)
            r = p._rates(x, t, w=denoiser._pad(x0))
        else:
            x0 = None
            r = p._rates(x, t, score=denoiser._score(x, t))
        probs = (t - s) * r
        stay = (1 + probs.gather(-1, x[..., None])).clamp(min=0.0)
        probs = probs.scatter(-1, x[..., None], stay).clamp(min=0.0)
        x = _gumbel_argmax(_log(probs), generator)
        _report(callback, i, t, s, x, x0)
    return _finish(denoiser, x, ts[-1], final_argmax)


@torch.no_grad()
def sample_tweedie(
    denoiser,
    x: torch.Tensor,
    ts,
    *,
    final_argmax: bool = False,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""Tweedie tau-leaping (SEDD's "analytic" sampler): per token
    $p(x_s^\ell=y)\propto\big[s_\theta(x_t)_\ell\exp(-\Delta Q)\big]_y\,
    \exp(\Delta Q)[y,x_t^\ell]$ with $\Delta=\bar\sigma(t)-\bar\sigma(s)$, exact for
    one token when the score is. For the absorbing chain with a clean-probability
    model this equals the ancestral step (the identity is tested), which is used there
    because it stays finite at $\alpha_t=0$. One NFE per step."""
    x, ts = _prepare(denoiser, x, ts, generator, callback, final_argmax)
    p = denoiser.process
    if p.kind == "absorbing" and denoiser.kind == "x0_logits":
        for i, t, s in _steps(ts, progress, "tweedie"):
            x0 = denoiser._x0_probs(x, t)
            probs = p._posterior(x, denoiser._pad(x0), s, t)
            x = _gumbel_argmax(_log(probs), generator)
            _report(callback, i, t, s, x, x0)
        return _finish(denoiser, x, ts[-1], final_argmax)
    sch = p.schedule
    for i, t, s in _steps(ts, progress, "tweedie"):
        tt, ss = torch.tensor(t, dtype=F64), torch.tensor(s, dtype=F64)
        delta = float(sch._alpha(ss).log() - sch._alpha(tt).log())
        if not delta < float("inf"):
            raise ValueError(
                f"the Tweedie step from t = {t} to s = {s} is singular (alpha_t = 0 "
                f"with a concrete score); start the grid below that time"
            )
        fwd = torch.linalg.matrix_exp(delta * p.Q)
        back = torch.linalg.matrix_exp(-delta * p.Q)
        score = denoiser._score(x, t)
        probs = (score @ back).clamp(min=0.0) * fwd.T[x]
        bad = probs.sum(-1, keepdim=True) <= 0
        keep = torch.nn.functional.one_hot(x, p.n_states).to(F64)
        probs = torch.where(bad, keep, probs)
        x = _gumbel_argmax(_log(probs), generator)
        _report(callback, i, t, s, x, None)
    return _finish(denoiser, x, ts[-1], final_argmax)


@torch.no_grad()
def sample_confidence(
    denoiser,
    x: torch.Tensor,
    ts,
    *,
    temperature: float = 1.0,
    final_argmax: bool = False,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""Confidence-ordered unmasking (MaskGIT style), absorbing chain only. At a step
    $t\to s$ a row with $m$ masked positions reveals
    $k=m-\mathrm{round}\big(m\,(1-\alpha_s)/(1-\alpha_t)\big)$ of them (the expected
    number under the forward process; all of them when $s=0$): a candidate token is
    drawn at every masked position from $p_\theta(x_0\mid x_t)$ (``temperature`` 0:
    argmax), and the $k$ candidates with the highest model probability are kept.
    Deterministic in the order (ties broken by position), seeded in the draws. One
    NFE per step."""
    x, ts = _prepare(denoiser, x, ts, generator, callback, final_argmax)
    p = denoiser.process
    if p.kind != "absorbing":
        raise ValueError(
            f"sample_confidence needs the absorbing process; denoiser.process is "
            f"{p.kind!r}"
        )
    temperature = C.in_range(temperature, "temperature", 0.0, float("inf"),
                             hi_open=True)
    for i, t, s in _steps(ts, progress, "confidence"):
        masked = x == p.mask_index
        k = _reveal_count(p.schedule, t, s, masked)
        x0 = denoiser._x0_probs(x, t)
        if temperature == 0:
            cand = x0.argmax(-1)
        else:
            cand = _gumbel_argmax(_log(x0) / temperature, generator)
        conf = x0.gather(-1, cand[..., None]).squeeze(-1)
        x, _ = _reveal_top(x, masked, cand, conf, k)
        _report(callback, i, t, s, x, x0)
    return _finish(denoiser, x, ts[-1], final_argmax)


def _reveal_count(schedule, t: float, s: float, masked: torch.Tensor) -> torch.Tensor:
    """How many of the masked positions of each row a step from t to s reveals: the
    expected number m (alpha_s - alpha_t) / (1 - alpha_t), rounded; all of them when
    s = 0. Float64 (B,)."""
    a_t = float(schedule._alpha(torch.tensor(t, dtype=F64)))
    a_s = float(schedule._alpha(torch.tensor(s, dtype=F64)))
    m = masked.sum(-1).to(F64)
    stay = (1 - a_s) / (1 - a_t) if a_t < 1 else 0.0
    return m - torch.round(m * stay) if s > 0 else m


def _reveal_top(x, masked, cand, score, k):
    """Reveal, in each row, the ``k`` masked positions of highest ``score`` with their
    candidate tokens (ties broken by position, so the order is deterministic).
    Returns the new tokens and the revealed positions."""
    pos = torch.arange(x.shape[1], dtype=F64, device=x.device)
    score = score.to(F64)
    key = torch.where(masked, score, torch.full_like(score, -1.0)) - 1e-12 * pos
    rank = key.argsort(-1, descending=True).argsort(-1)
    reveal = masked & (rank < k[:, None])
    return torch.where(reveal, cand, x), reveal
