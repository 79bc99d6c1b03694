r"""Guidance (chapter I.5): steering a diffusion model towards a condition $y$.

Bayes' rule for the noisy marginals splits a conditional score into the unconditional
score and the score of a *noisy* classifier,

$$\nabla\log p_t(x\mid y)=\nabla\log p_t(x)+\nabla\log p_t(y\mid x),\qquad
p_t(y\mid x_t)=\int p(y\mid x_0)\,p(x_0\mid x_t)\,dx_0 .$$

Both wrappers below return a :class:`dlib.param.Denoiser`, so every sampler of
:mod:`dlib.sampling` runs a guided model unchanged. The book's convention for the two
scales, stated once:

* **classifier guidance** with weight $w$:
  $\tilde s=s+w\nabla\log p_t(y\mid x)$, i.e.
  $\tilde\epsilon=\hat\epsilon-w\,\sigma_t\nabla\log p_t(y\mid x)$ (Dhariwal & Nichol's
  "classifier scale"); $w=1$ is the exact conditional model, $w=0$ the unconditional.
* **classifier-free guidance** with the same symbol $w$ for its scale:
  $\tilde\epsilon=\hat\epsilon_\varnothing
  +w(\hat\epsilon_y-\hat\epsilon_\varnothing)$
  ($w=1$ conditional, $w=0$ unconditional). This $w$ is diffusers' ``guidance_scale``
  (the $\gamma$ of the book's issue and of some papers); Ho & Salimans write
  $(1+w_{\rm HS})\hat\epsilon_y-w_{\rm HS}\hat\epsilon_\varnothing$, so their weight
  is $w_{\rm HS}=w-1$. Since $\hat\epsilon_y-\hat\epsilon_\varnothing
  =-\sigma_t\nabla\log p_t(y\mid x)$ for exact models (Tweedie and Bayes), CFG with
  scale $w$ is classifier guidance of the unconditional model with the implicit
  classifier and the same weight $w$, hence the one symbol.

Every prediction kind is, at fixed $(x_t,t)$, an affine function
$A_k(t)x_t+B_k(t)\hat\epsilon$ of the noise prediction, and the guided combination has
coefficients that sum to one, so forming it in any kind gives the same model (the
``kind`` argument of :func:`classifier_free_guidance` changes round-off only, except
where a conversion is ill-conditioned: recovering $\hat x_0$ from $\hat\epsilon$
divides by $\alpha_t$, which a cosine schedule drives to about 0 at $t=1$).
"""

from __future__ import annotations

from typing import Callable

import torch

from . import _checks as C
from .param import KINDS, Denoiser

__all__ = ["classifier_guidance", "classifier_free_guidance", "label_denoiser"]


class _Guided(Denoiser):
    """A Denoiser built from other denoisers: it validates inputs as its first part
    does (an analytic model checks the dimension) and names its parts."""

    def __init__(self, fn, schedule, kind, base: Denoiser, text: str):
        super().__init__(fn, schedule, kind)
        self.base, self._text = base, text

    def __repr__(self):
        return self._text

    def _check_x(self, x, name: str = "x") -> torch.Tensor:
        return self.base._check_x(x, name)


def _same_schedule(a: Denoiser, b: Denoiser) -> None:
    if a.schedule is not b.schedule and repr(a.schedule) != repr(b.schedule):
        raise ValueError(
            "cond and uncond must use the same schedule; got "
            f"{a.schedule!r} and {b.schedule!r}"
        )


def classifier_guidance(
    denoiser: Denoiser,
    log_prob: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    w: float,
) -> Denoiser:
    r"""Classifier guidance (chapter I.5): the model with score
    $\tilde s(x,t)=s(x,t)+w\,\nabla_x\log p_t(y\mid x)$, native kind ``"eps"``:
    $\tilde\epsilon=\hat\epsilon-w\,\sigma_t\nabla_x\log p_t(y\mid x)$.

    ``log_prob(x, t)`` gets a batch ``x`` (B, ...) and times ``t`` (B,) and returns the
    noisy classifier's $\log p_t(y\mid x)$ for the wanted labels, shape (B,); its
    gradient is taken with autograd (also inside the samplers' ``no_grad``). With the
    exact noisy classifier and $w=1$ the result is the exact conditional model. Each
    evaluation calls ``denoiser`` once and ``log_prob`` once (forward and backward).
    """
    C.denoiser(denoiser)
    C.function(log_prob, "log_prob", "log_prob(x, t)")
    w = C.number(w, "w")
    sch = denoiser.schedule

    def fn(x, t):
        eps = denoiser._predict(x, t, "eps")
        if w == 0.0:
            return eps
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            lp = log_prob(xg, t)
            if not torch.is_tensor(lp) or lp.shape != (x.shape[0],):
                got = tuple(lp.shape) if torch.is_tensor(lp) else type(lp).__name__
                raise ValueError(
                    f"log_prob(x, t) must return a tensor of shape ({x.shape[0]},) "
                    f"(one log-probability per example); got {got}"
                )
            (grad,) = torch.autograd.grad(lp.sum(), xg)
        sigma = C.bcast(sch._coefficients(t).sigma, x)
        return eps - (w * sigma) * grad.to(eps.dtype)

    text = f"classifier_guidance({denoiser!r}, w={w:g})"
    return _Guided(fn, sch, "eps", denoiser, text)


def classifier_free_guidance(
    cond: Denoiser, uncond: Denoiser, w: float, kind: str = "eps"
) -> Denoiser:
    r"""Classifier-free guidance (chapter I.5): the model whose prediction of ``kind``
    is $\hat y_\varnothing+w\,(\hat y_y-\hat y_\varnothing)$, with $\hat y_y$ from
    ``cond`` and $\hat y_\varnothing$ from ``uncond`` (the same schedule, any native
    kinds). In score form $\tilde s=s_\varnothing+w(s_y-s_\varnothing)$; $w$ is
    diffusers' ``guidance_scale`` and Ho & Salimans' weight plus one.

    ``kind`` (default ``"eps"``) is the parameterisation in which the combination is
    formed; it is the guided model's native kind. Because each kind is affine in
    $\hat\epsilon$ at fixed $(x_t,t)$, every ``kind`` gives the same model. Each
    evaluation calls ``cond`` and ``uncond`` once each (for one network with a null
    label, see :func:`label_denoiser`).
    """
    C.denoiser(cond, "cond")
    C.denoiser(uncond, "uncond")
    _same_schedule(cond, uncond)
    w = C.number(w, "w")
    C.one_of(kind, KINDS, "prediction kind")

    def fn(x, t):
        u = uncond._predict(x, t, kind)
        c = cond._predict(x, t, kind)
        return torch.add(u, c - u, alpha=w)

    text = (
        f"classifier_free_guidance({cond!r}, {uncond!r}, w={w:g}, "
        f"kind={kind!r})"
    )
    return _Guided(fn, cond.schedule, kind, cond, text)


def label_denoiser(net: Callable, y, schedule, kind: str = "eps") -> Denoiser:
    """A class-conditional network ``net(x, t, y)`` (e.g. ``nets.MLP(...,
    num_classes=C)``) with its labels fixed, as a :class:`dlib.param.Denoiser`
    (chapter I.5). ``y`` is None (the null label: the unconditional model), an int (one
    class for the whole batch) or a (B,) integer tensor (one label per example, for
    batches of exactly B)."""
    C.function(net, "net", "net(x, t, y)")
    C.schedule(schedule)
    C.one_of(kind, KINDS, "prediction kind")
    ok = (
        y is None
        or (isinstance(y, int) and not isinstance(y, bool) and y >= 0)
        or (
            torch.is_tensor(y)
            and y.dim() == 1
            and y.numel() > 0
            and not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool)
        )
    )
    if not ok:
        raise ValueError(
            "y must be None (the null label), a non-negative int or a 1-D integer "
            f"tensor of labels; got {y!r}"
        )
    return Denoiser(lambda x, t: net(x, t, y), schedule, kind)
