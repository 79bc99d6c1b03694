r"""Anchored posterior sampling (APS) for masked discrete diffusion (chapter III.3).

A masked prior over image tokens $x\in\{0..K-1\}^L$ (a
:class:`~dlib.discrete.CategoricalDenoiser` on the absorbing chain), a codebook
$c_0,\dots,c_{K-1}\in\mathbb R^d$ and a decoder from a grid of embeddings to an image
are given, together with an energy $J(v)$ of an embedding grid $v$ (``e`` in the
code), typically the measurement loss $\lVert y-A(D(v))\rVert^2/2\sigma_y^2$ of
:func:`dlib.operators.residual_loss`. APS samples tokens that agree with the
measurement with two ingredients:

* **Quantized-expectation guidance** (:func:`guide_logits`): with the predicted
  probabilities $\pi^\ell=\mathrm{softmax}(z^\ell)$ of the masked positions, the
  expected embedding $\bar v^\ell=\sum_k\pi^\ell_k c_k$ is snapped to its nearest code
  (:func:`nearest_code`, the tokenizer's own distance), the gradient passes straight
  through the snap, and a few gradient steps on the logits $z$ lower
  $J+\mathrm{KL}(\pi\,\Vert\,p_\theta)/w$ ($w$ the guidance scale).
* **Anchored remasking** (:func:`sample_aps`): at a step $t\to s$ a candidate is drawn
  at every masked position from the guided $\pi$, the $n$ most confident candidates
  are kept (anchors) and the others are masked again; $n$ is the number the masking
  schedule reveals in expectation. Revealed tokens stay (are never remasked).

No official code exists; the details chosen here (Adam on the logits, the KL weight,
the confidence score $\pi(\text{candidate})$, anchors never remasked) are listed in
the chapter. :func:`sample_best_of_n` is the derivative-free baseline.
"""

from __future__ import annotations

from typing import Callable

import torch

from .. import _checks as C
from ..data import _nearest_code, _place_patches
from .._loop import _steps
from .process import F64, _denoiser, _gumbel_argmax, _grid, _tokens
from .samplers import _reveal_count, _reveal_top

__all__ = [
    "GUIDANCE",
    "REMASKING",
    "CANDIDATES",
    "decode_patches",
    "nearest_code",
    "expected_embedding",
    "guide_logits",
    "sample_aps",
    "sample_best_of_n",
]

GUIDANCE = ("quantized", "soft", "none")
REMASKING = ("anchored", "random")
CANDIDATES = ("sample", "snap")


def _codebook(codebook) -> torch.Tensor:
    if not torch.is_tensor(codebook) or codebook.dim() != 2 or codebook.shape[0] < 1:
        shape = tuple(codebook.shape) if torch.is_tensor(codebook) else None
        raise ValueError(
            f"codebook must be a (K, d) floating tensor with K >= 1; got {shape}"
        )
    return C.tensor(codebook, "codebook", floating=True)


def decode_patches(e: torch.Tensor) -> torch.Tensor:
    r"""The patch decoder $D$: a grid of patch embeddings (B, g*g, p*p), row-major, to
    images (B, 1, g*p, g*p), each patch placed where it belongs (linear, so exactly
    differentiable). ``decode_patches(codebook[tokens])`` equals
    :func:`dlib.data.patch_decode`. Chapter III.3."""
    if not torch.is_tensor(e) or e.dim() != 3:
        shape = tuple(e.shape) if torch.is_tensor(e) else type(e).__name__
        raise ValueError(f"e must be a tensor (B, g*g, p*p); got {shape}")
    g, p = round(e.shape[1] ** 0.5), round(e.shape[2] ** 0.5)
    if g * g != e.shape[1] or p * p != e.shape[2] or g == 0 or p == 0:
        raise ValueError(
            f"e must hold a square grid of square patches (B, g*g, p*p); got "
            f"{tuple(e.shape)}"
        )
    C.tensor(e, "e", floating=True, nonempty=False)
    return _place_patches(e)


def nearest_code(e: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    r"""$k^*=\arg\min_k\lVert e-c_k\rVert$ for every vector of ``e`` (..., d): the
    tokenizer's rule (:func:`dlib.data.patch_encode`, float64 distances). int64 of
    shape ``e.shape[:-1]``."""
    codebook = _codebook(codebook)
    e = C.tensor(e, "e", floating=True, min_dim=1)
    if e.shape[-1] != codebook.shape[1]:
        raise ValueError(
            f"e must have the codebook's last dimension {codebook.shape[1]}; got "
            f"{e.shape[-1]}"
        )
    return _nearest_code(e, codebook)




def expected_embedding(
    probs: torch.Tensor, codebook: torch.Tensor, *, quantize: bool = True
) -> torch.Tensor:
    r"""The expected embedding $\bar v=\pi C$ of probabilities ``probs`` (..., K)
    over the codebook (K, d); with ``quantize=True`` APS's quantized expectation
    $\tilde v=\bar v+\mathrm{sg}(c_{k^*}-\bar v)$: its value is the nearest code
    $c_{k^*}$ (:func:`nearest_code`), its gradient that of $\bar v$ (straight
    through). Differentiable in ``probs``; dtype of ``probs``."""
    codebook = _codebook(codebook)
    probs = C.tensor(probs, "probs", floating=True, min_dim=1)
    if probs.shape[-1] != codebook.shape[0]:
        raise ValueError(
            f"probs must have one column per code ({codebook.shape[0]}); got "
            f"{probs.shape[-1]}"
        )
    C.flag(quantize, "quantize")
    return _expected(probs, codebook, quantize)


def _expected(probs, codebook, quantize):
    cb = codebook.to(probs.dtype).to(probs.device)
    e = probs @ cb
    if not quantize:
        return e
    snapped = cb[_nearest_code(e, cb)]
    return e + (snapped - e).detach()


def _energy(energy):
    return C.function(energy, "energy", "energy(e) -> (B,) losses")


def guide_logits(
    logits: torch.Tensor,
    energy: Callable[[torch.Tensor], torch.Tensor],
    codebook: torch.Tensor,
    *,
    free: torch.Tensor | None = None,
    fixed: torch.Tensor | None = None,
    guidance: str = "quantized",
    steps: int = 20,
    lr: float = 0.5,
    kl_weight: float = 1.0,
) -> tuple[torch.Tensor, list[float]]:
    r"""Gradient guidance on clean-token logits ``logits`` (B, L, K) (the start and
    the prior $p_\theta$): ``steps`` Adam steps (learning rate ``lr``) on the
    logits $z$ of the ``free`` positions (bool (B, L), default all) lowering

    $$\sum_b J_b(v)+\frac1w\sum_{\ell\ {\rm free}}
    \mathrm{KL}(\pi^\ell\Vert p^\ell_\theta),\qquad \pi=\mathrm{softmax}(z),$$

    where the embedding grid is $v^\ell=$ ``codebook[fixed]`` at the other positions
    and the (quantized, ``guidance="quantized"``, or soft, ``"soft"``) expected
    embedding of $\pi^\ell$ at the free ones (:func:`expected_embedding`);
    $1/w$ = ``kl_weight`` ($w$ the guidance scale). ``energy(e)`` gets the grid
    (B, L, d) and returns (B,) losses. ``guidance="none"`` or ``steps=0`` returns
    the start unchanged. Returns the guided logits (float64, detached; not
    normalised: $\pi$ is their softmax) and the total loss before each step."""
    logits = C.tensor(logits, "logits", floating=True, min_dim=3)
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, L, K); got {tuple(logits.shape)}")
    _energy(energy)
    codebook = _codebook(codebook)
    if logits.shape[-1] != codebook.shape[0]:
        raise ValueError(
            f"logits must have one column per code ({codebook.shape[0]}); got "
            f"{logits.shape[-1]}"
        )
    B, L, K = logits.shape
    if free is None:
        free = torch.ones(B, L, dtype=torch.bool, device=logits.device)
    if not torch.is_tensor(free) or free.dtype != torch.bool or free.shape != (B, L):
        raise ValueError(f"free must be a bool tensor of shape {(B, L)}")
    if fixed is None:
        if not bool(free.all()):
            raise ValueError("fixed is needed when some positions are not free")
        fixed = torch.zeros(B, L, dtype=torch.int64, device=logits.device)
    fixed = _tokens(fixed, "fixed", K)
    if fixed.shape != (B, L):
        raise ValueError(f"fixed must have shape {(B, L)}; got {tuple(fixed.shape)}")
    C.one_of(guidance, GUIDANCE, "guidance")
    steps = C.positive_int(steps, "steps", minimum=0)
    lr = C.positive(lr, "lr")
    kl_weight = C.in_range(kl_weight, "kl_weight", 0.0, float("inf"))
    return _guide(logits.to(F64), energy, codebook, free, fixed, guidance, steps, lr,
                  kl_weight)


def _guide(logits, energy, codebook, free, fixed, guidance, steps, lr, kl_weight):
    if guidance == "none" or steps == 0:
        return logits.detach(), []
    prior = torch.log_softmax(logits.detach(), -1)
    cb = codebook.to(F64).to(logits.device)
    e_fixed = cb[fixed]
    z = prior.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=lr)
    quantize = guidance == "quantized"
    history = []
    for _ in range(steps):
        logp = torch.log_softmax(z, -1)
        pi = logp.exp()
        e = torch.where(free[..., None], _expected(pi, cb, quantize), e_fixed)
        kl = (pi * (logp - prior)).sum(-1)
        loss = energy(e).sum() + kl_weight * (kl * free).sum()
        history.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return z.detach(), history


def _options(denoiser, x, ts, energy, codebook, guidance, remask, candidate,
             inner_steps, lr, kl_weight, generator, callback):
    _denoiser(denoiser)
    p = denoiser.process
    if p.kind != "absorbing":
        raise ValueError(
            f"APS needs the absorbing process; denoiser.process is {p.kind!r}"
        )
    x = _tokens(x, "x", p.n_states)
    ts = _grid(ts)
    _energy(energy)
    codebook = _codebook(codebook)
    if codebook.shape[0] != p.K:
        raise ValueError(
            f"codebook must have one row per token ({p.K}); got {codebook.shape[0]}"
        )
    C.one_of(guidance, GUIDANCE, "guidance")
    C.one_of(remask, REMASKING, "remask")
    C.one_of(candidate, CANDIDATES, "candidate")
    C.positive_int(inner_steps, "inner_steps", minimum=0)
    C.positive(lr, "lr")
    C.in_range(kl_weight, "kl_weight", 0.0, float("inf"))
    C.generator(generator)
    C.optional_function(callback, "callback", "callback(dict)")
    return x.clone(), ts, codebook


def sample_aps(
    denoiser,
    x: torch.Tensor,
    ts,
    *,
    energy: Callable[[torch.Tensor], torch.Tensor],
    codebook: torch.Tensor,
    guidance: str = "quantized",
    remask: str = "anchored",
    candidate: str = "sample",
    inner_steps: int = 20,
    lr: float = 0.5,
    kl_weight: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""Posterior sampling on the absorbing chain with the sampler signature of
    :mod:`dlib.discrete.samplers`. At each step $t\to s$ of ``ts``: one NFE gives
    $p_\theta(x_0\mid x_t)$; :func:`guide_logits` (``guidance``, ``inner_steps``,
    ``lr``, ``kl_weight``; the unmasked tokens fixed) turns it into $\pi$; a candidate
    is drawn from $\pi$ at every masked position and
    $n=m-\mathrm{round}(m(1-\alpha_s)/(1-\alpha_t))$ of the $m$ masked positions are
    revealed (all at $s=0$): ``remask="anchored"`` the $n$ with the largest
    $\pi(\text{candidate})$, ``"random"`` $n$ chosen uniformly (same count, seeded).
    The candidate is a draw from $\pi$ (``candidate="sample"``, as the paper
    describes) or the snapped code $k^*$ of $\pi$'s expected embedding (``"snap"``,
    the token the guidance loss actually saw).
    Revealed tokens stay. ``guidance="quantized"`` with ``"anchored"`` is APS;
    ``"none"`` with ``"random"`` is unguided sampling. ``callback`` gets ``{"i", "t",
    "t_next", "x", "x0", "revealed"}`` (``x0``: the guided $\pi$ at every position).
    Returns tokens without masks when ``ts`` ends at 0."""
    x, ts, codebook = _options(denoiser, x, ts, energy, codebook, guidance, remask,
                               candidate, inner_steps, lr, kl_weight, generator,
                               callback)
    return _aps(denoiser, x, ts, energy, codebook, guidance, remask, candidate,
                inner_steps, lr, kl_weight, generator, callback, progress)


def _aps(denoiser, x, ts, energy, codebook, guidance, remask, candidate, inner_steps,
         lr, kl_weight, generator, callback, progress):
    p = denoiser.process
    for i, t, s in _steps(ts, progress, "APS"):
        masked = x == p.mask_index
        k = _reveal_count(p.schedule, t, s, masked)
        with torch.no_grad():
            prior = denoiser._x0_probs(x, t)
        logits = torch.log(prior.clamp(min=1e-30))
        fixed = torch.where(masked, torch.zeros_like(x), x)
        with torch.enable_grad():
            z, _ = _guide(logits, energy, codebook, masked, fixed, guidance,
                          inner_steps, lr, kl_weight)
        pi = torch.softmax(z, -1)
        pi = torch.where(masked[..., None], pi, prior)
        cand = _gumbel_argmax(torch.log(pi.clamp(min=1e-300)), generator)
        if candidate == "snap":
            snap = _nearest_code(pi @ codebook.to(F64), codebook)
            cand = torch.where(masked, snap, cand)
        if remask == "anchored":
            score = pi.gather(-1, cand[..., None]).squeeze(-1)
        else:
            dev = generator.device if generator is not None else x.device
            score = torch.rand(x.shape, generator=generator, dtype=F64, device=dev)
            score = score.to(x.device)
        x, reveal = _reveal_top(x, masked, cand, score, k)
        if callback is not None:
            callback({"i": i, "t": t, "t_next": s, "x": x, "x0": pi,
                      "revealed": reveal})
    return x


def sample_best_of_n(
    denoiser,
    x: torch.Tensor,
    ts,
    *,
    energy: Callable[[torch.Tensor], torch.Tensor],
    codebook: torch.Tensor,
    n: int = 8,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""Derivative-free baseline: ``n`` unguided samples per row
    (:func:`sample_aps` with ``guidance="none"``, ``remask="random"``), and per row the
    one of lowest energy $J(c_x)$ is returned (resampling with weights
    $\propto e^{-J/\tau}$ in the limit $\tau\to0$). ``n`` times the NFE of one
    sample; ``energy`` is called once per draw on the whole batch."""
    x, ts, codebook = _options(denoiser, x, ts, energy, codebook, "none", "random",
                               "sample", 0, 1.0, 0.0, generator, None)
    n = C.positive_int(n, "n")
    best, best_j = None, None
    for _ in range(n):
        xi = _aps(denoiser, x, ts, energy, codebook, "none", "random", "sample", 0,
                  1.0, 0.0, generator, None, progress)
        if bool((xi == denoiser.process.mask_index).any()):
            raise ValueError("ts must end at 0 for best-of-n (masks are left)")
        with torch.no_grad():
            j = energy(codebook.to(F64)[xi]).detach()
        if best is None:
            best, best_j = xi, j
        else:
            better = j < best_j
            best = torch.where(better[:, None], xi, best)
            best_j = torch.where(better, j, best_j)
    return best
