r"""Corruption processes on tokens: the scalar keep-probability schedule, the rate
matrix (uniform, absorbing, general), marginals, transitions, posteriors, reverse
rates, the categorical denoiser and the losses (Part III).

Conventions. Tokens are int64 tensors of shape (B, L) with values in ``0..K-1``; the
absorbing (masked) chain adds the mask state ``K`` (``process.mask_index``), so its
state space has ``K + 1`` states. Rate matrices use the row convention: ``Q[i, j]`` is
the rate of a jump from state i to state j (rows sum to 0) and probabilities are row
vectors, $p_t = p_0 \exp(\bar\sigma(t) Q)$. Time is a float in [0, 1] (t = 0 clean,
t = 1 fully noised). The keep-probability is $\alpha_t=e^{-\bar\sigma(t)}$ and the
discrete log-SNR is $\lambda_t=\log(\alpha_t/(1-\alpha_t))$. Exact quantities are
computed in float64; every categorical draw goes through :func:`sample_categorical`
(Gumbel-max with float64 Gumbel noise from a ``torch.Generator``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from .. import _checks as C

__all__ = [
    "sample_categorical",
    "KeepSchedule",
    "LinearKeep",
    "CosineKeep",
    "GeometricKeep",
    "DiscreteProcess",
    "CategoricalDenoiser",
    "DENOISER_KINDS",
    "antithetic_times",
    "masked_elbo_loss",
    "score_entropy_loss",
    "d3pm_bound",
]

F64 = torch.float64


# --- seeded categorical draws ---------------------------------------------------------
def sample_categorical(
    probs: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    log: bool = False,
) -> torch.Tensor:
    r"""One draw per row of a categorical distribution over the last dimension, by the
    Gumbel-max trick: $\arg\max_k(\log p_k+G_k)$ with $G_k=-\log(-\log U_k)$ and
    float64 uniforms $U_k$ from ``generator`` (drawn on the generator's device, so a
    seeded CPU generator gives the same tokens on every device). ``probs`` need not
    be normalised (non-negative, each row with a positive entry); ``log=True`` takes
    log-probabilities or logits instead (``-inf`` allowed). Returns int64 of shape
    ``probs.shape[:-1]``. Low-precision Gumbel noise is known to reduce diversity, so
    the noise is float64 whatever the dtype of ``probs``."""
    probs = C.tensor(probs, "probs", floating=True, min_dim=1, check_finite=False)
    C.flag(log, "log")
    C.generator(generator)
    lp = probs.to(F64)
    if log:
        if bool(torch.isnan(lp).any()) or bool((lp == math.inf).any()):
            raise ValueError("probs (log=True) must not contain NaN or +inf")
        if bool((lp.amax(-1) == -math.inf).any()):
            raise ValueError("probs (log=True) has a row that is -inf everywhere")
    else:
        C.finite(lp, "probs")
        if bool((lp < 0).any()):
            raise ValueError("probs must be non-negative")
        if bool((lp.sum(-1) <= 0).any()):
            raise ValueError("probs has a row without a positive entry")
        lp = torch.log(lp)
    return _gumbel_argmax(lp, generator)


def _gumbel(shape, generator, device) -> torch.Tensor:
    r"""Standard Gumbel noise of ``shape`` in float64 on ``device``, drawn from
    ``generator`` (on its own device): $-\log(-\log u)$, $u\sim U(0,1)$."""
    dev = generator.device if generator is not None else device
    u = torch.rand(shape, generator=generator, dtype=F64, device=dev)
    u = u.to(device).clamp_(min=torch.finfo(F64).tiny)
    return -torch.log(-torch.log(u))


def _gumbel_argmax(logp: torch.Tensor, generator) -> torch.Tensor:
    """Trusted float64 log-probabilities; argmax of logp + Gumbel noise."""
    return (logp.to(F64) + _gumbel(logp.shape, generator, logp.device)).argmax(-1)


# --- scalar schedules -----------------------------------------------------------------
def _times(t, name="t") -> torch.Tensor:
    return C.as_time(t, name=name, dtype=F64).to(F64)


class KeepSchedule:
    r"""A keep-probability $\alpha_t$, decreasing from $\alpha_0\approx1$ to
    $\alpha_1\approx0$. Every method takes a time (a float, or a tensor of times in
    [0, 1]) and returns a float64 tensor of its shape. Subclasses define ``_alpha`` and
    ``_d_alpha`` on float64 tensors."""

    def _alpha(self, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def _d_alpha(self, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def alpha(self, t) -> torch.Tensor:
        r"""The keep-probability $\alpha_t=e^{-\bar\sigma(t)}$."""
        return self._alpha(_times(t))

    def d_alpha(self, t) -> torch.Tensor:
        r"""$d\alpha_t/dt\le0$."""
        return self._d_alpha(_times(t))

    def sigma_bar(self, t) -> torch.Tensor:
        r"""The integrated rate $\bar\sigma(t)=-\log\alpha_t$ (``inf`` where
        $\alpha_t=0$)."""
        return -torch.log(self.alpha(t))

    def rate(self, t) -> torch.Tensor:
        r"""The rate $\beta(t)=d\bar\sigma/dt=-\alpha'_t/\alpha_t$ (``inf`` where
        $\alpha_t=0$)."""
        t = _times(t)
        return -self._d_alpha(t) / self._alpha(t)

    def log_snr(self, t) -> torch.Tensor:
        r"""$\lambda_t=\log(\alpha_t/(1-\alpha_t))$ ($+\infty$ where $\alpha_t=1$)."""
        a = self.alpha(t)
        return torch.log(a) - torch.log1p(-a)

    def elbo_weight(self, t) -> torch.Tensor:
        r"""The masked-ELBO weight $-\alpha'_t/(1-\alpha_t)$ (``inf`` where
        $\alpha_t=1$)."""
        return self._elbo_weight(_times(t))

    def _elbo_weight(self, t):
        one_minus = 1 - self._alpha(t)
        w = -self._d_alpha(t) / one_minus.clamp(min=1e-300)
        return torch.where(one_minus > 0, w, torch.full_like(w, math.inf))

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class LinearKeep(KeepSchedule):
    r"""$\alpha_t=1-(1-\epsilon)t$: MDLM's linear masking schedule (weight $1/t$ for
    $\epsilon=0$). With $\epsilon=10^{-3}$ it is SEDD's and MDLM's "log-linear" noise
    $\bar\sigma(t)=-\log(1-(1-\epsilon)t)$."""

    def __init__(self, eps: float = 0.0):
        self.eps = C.in_range(eps, "eps", 0.0, 1.0, hi_open=True)

    def _alpha(self, t):
        return 1 - (1 - self.eps) * t

    def _d_alpha(self, t):
        return torch.full_like(t, -(1 - self.eps))


class CosineKeep(KeepSchedule):
    r"""$\alpha_t=\cos(\pi t/2)$ (slow masking at first, fast near t = 1)."""

    def _alpha(self, t):
        # exactly 0 at t = 1 (cos(pi/2) rounds to 6e-17)
        return torch.where(t >= 1, torch.zeros_like(t), torch.cos(0.5 * math.pi * t))

    def _d_alpha(self, t):
        return -0.5 * math.pi * torch.sin(0.5 * math.pi * t)


class GeometricKeep(KeepSchedule):
    r"""SEDD's geometric noise $\bar\sigma(t)=\sigma_{\min}^{1-t}\sigma_{\max}^t$,
    $\alpha_t=e^{-\bar\sigma(t)}$ (so $\alpha_0=e^{-\sigma_{\min}}$ is slightly below
    1)."""

    def __init__(self, sigma_min: float = 1e-4, sigma_max: float = 20.0):
        self.sigma_min = C.positive(sigma_min, "sigma_min")
        self.sigma_max = C.positive(sigma_max, "sigma_max")
        if not self.sigma_min < self.sigma_max:
            raise ValueError(
                f"sigma_min must be below sigma_max; got {sigma_min}, {sigma_max}"
            )

    def _sb(self, t):
        return self.sigma_min ** (1 - t) * self.sigma_max**t

    def _alpha(self, t):
        return torch.exp(-self._sb(t))

    def _d_alpha(self, t):
        sb = self._sb(t)
        return -torch.exp(-sb) * sb * math.log(self.sigma_max / self.sigma_min)


def _keep_schedule(obj, name="schedule"):
    if not isinstance(obj, KeepSchedule):
        raise ValueError(
            f"{name} must be a dlib.discrete.KeepSchedule (LinearKeep, CosineKeep, "
            f"GeometricKeep); got {type(obj).__name__}"
        )
    return obj


# --- the process ----------------------------------------------------------------------
def _tokens(x, name: str, n_states: int) -> torch.Tensor:
    if not torch.is_tensor(x) or x.dtype != torch.int64 or x.dim() != 2:
        got = (
            f"dtype {x.dtype}, shape {tuple(x.shape)}"
            if torch.is_tensor(x)
            else type(x).__name__
        )
        raise ValueError(
            f"{name} must be an int64 tensor of tokens of shape (B, L); got {got}"
        )
    if x.numel() == 0:
        raise ValueError(f"{name} must not be empty; got shape {tuple(x.shape)}")
    if bool(((x < 0) | (x >= n_states)).any()):
        raise ValueError(
            f"{name} must hold tokens in 0..{n_states - 1}; got values in "
            f"{int(x.min())}..{int(x.max())}"
        )
    return x


def _keep_or_jump(kind: str, a: torch.Tensor, n: int) -> torch.Tensor:
    r"""The closed-form transition of the uniform and absorbing chains over n states
    with keep-probability ``a`` (broadcast against (n, n)): $aI+(1-a)J$ with
    $J=\tfrac1n\mathbf 1\mathbf 1^\top$ (uniform) or $J=\mathbf 1e_{n-1}^\top$ (every
    state jumps to the mask, the last state). The one home of this formula:
    :meth:`DiscreteProcess.transition` and the oracle's per-token likelihoods use it."""
    eye = torch.eye(n, dtype=F64)
    if kind == "uniform":
        return a * eye + (1 - a) / n
    jump = torch.zeros(n, n, dtype=F64)
    jump[:, n - 1] = 1.0
    return a * eye + (1 - a) * jump


class DiscreteProcess:
    r"""A per-token continuous-time Markov chain $q(x_t\mid x_0)=
    e_{x_0}^\top\exp(\bar\sigma(t)Q)$ with rate matrix ``Q`` (row convention, rows sum
    to 0) and a :class:`KeepSchedule`.

    Build one with :meth:`uniform` ($Q=\frac1K\mathbf 1\mathbf 1^\top-I$: the token
    is resampled uniformly), :meth:`absorbing` (every token jumps to the mask state
    ``K`` at rate 1) or ``DiscreteProcess(Q, schedule)`` for a general generator (all
    states clean). ``K`` is the number of clean tokens, ``n_states`` the size of the
    state space (``K + 1`` for the absorbing chain), ``mask_index`` the mask state
    (``None`` unless absorbing), ``kind`` one of ``"uniform"``, ``"absorbing"``,
    ``"general"``. Uniform and absorbing transitions use their closed forms; a general
    Q uses ``torch.linalg.matrix_exp`` (and needs a finite $\bar\sigma$)."""

    def __init__(self, Q, schedule: KeepSchedule, *, _kind: str = "general",
                 _K: int | None = None):
        Q = C.real_tensor(Q, "Q")
        if Q.dim() != 2 or Q.shape[0] != Q.shape[1] or Q.shape[0] < 2:
            raise ValueError(
                f"Q must be a square matrix with at least 2 states; got shape "
                f"{tuple(Q.shape)}"
            )
        off = Q - torch.diag(torch.diagonal(Q))
        if bool((off < 0).any()):
            raise ValueError("Q must have non-negative off-diagonal rates")
        if bool((Q.sum(1).abs() > 1e-6 * (1 + Q.abs().sum(1))).any()):  # float32 Q
            raise ValueError("Q must have rows that sum to 0")
        self.Q = Q
        self.schedule = _keep_schedule(schedule)
        self.kind = _kind
        self.n_states = Q.shape[0]
        self.K = self.n_states if _K is None else _K
        self.mask_index = self.K if _kind == "absorbing" else None

    @classmethod
    def uniform(cls, K: int, schedule: KeepSchedule) -> "DiscreteProcess":
        """Uniform noise over ``K`` tokens."""
        K = C.positive_int(K, "K", minimum=2)
        Q = torch.full((K, K), 1.0 / K, dtype=F64) - torch.eye(K, dtype=F64)
        return cls(Q, schedule, _kind="uniform", _K=K)

    @classmethod
    def absorbing(cls, K: int, schedule: KeepSchedule) -> "DiscreteProcess":
        """Masked diffusion over ``K`` tokens plus the mask state ``K``."""
        K = C.positive_int(K, "K", minimum=1)
        Q = torch.zeros(K + 1, K + 1, dtype=F64)
        Q[:K, K] = 1.0
        Q[torch.arange(K), torch.arange(K)] = -1.0
        return cls(Q, schedule, _kind="absorbing", _K=K)

    def __repr__(self):
        return (
            f"DiscreteProcess(kind={self.kind!r}, K={self.K}, "
            f"schedule={self.schedule!r})"
        )

    # --- matrices: trusted float64 time tensors of shape () or (B,)
    def _matrix(self, s, t) -> torch.Tensor:
        r"""$\exp((\bar\sigma(t)-\bar\sigma(s))Q)$, shape (..., n, n)."""
        a_s, a_t = self.schedule._alpha(s), self.schedule._alpha(t)
        n = self.n_states
        if self.kind in ("uniform", "absorbing"):
            a = torch.where(a_s > 0, a_t / a_s.clamp(min=1e-300), torch.zeros_like(a_t))
            return _keep_or_jump(self.kind, a[..., None, None], n)
        tau = -torch.log(a_t) + torch.log(a_s)
        if not bool(torch.isfinite(tau).all()):
            raise ValueError(
                f"the schedule {self.schedule!r} has alpha = 0 at some of the times: a "
                f"general Q needs a finite sigma_bar (use LinearKeep(eps > 0) or "
                f"GeometricKeep)"
            )
        return torch.linalg.matrix_exp(tau[..., None, None] * self.Q)

    def _probs(self, x0, name="x0"):
        """Tokens or probabilities over clean tokens/states -> float64 (B, L, n)."""
        n = self.n_states
        if torch.is_tensor(x0) and not x0.is_floating_point():
            x0 = _tokens(x0, name, self.K)
            return torch.nn.functional.one_hot(x0, n).to(F64)
        p = C.tensor(x0, name, floating=True, min_dim=3)
        if p.dim() != 3 or p.shape[-1] not in (self.K, n):
            raise ValueError(
                f"{name} must be int64 tokens (B, L) or probabilities (B, L, K) with "
                f"K = {self.K} (or {n}); got shape {tuple(p.shape)}"
            )
        if bool((p < 0).any()) or bool(((p.sum(-1) - 1).abs() > 1e-4).any()):
            raise ValueError(f"{name} must hold probabilities (>= 0, summing to 1)")
        p = p.to(F64)
        if p.shape[-1] > self.K and bool((p[..., self.K:] > 0).any()):
            raise ValueError(
                f"{name} puts probability on the mask state {self.K}; clean tokens "
                f"are 0..{self.K - 1}"
            )
        if p.shape[-1] < n:
            p = torch.nn.functional.pad(p, (0, n - p.shape[-1]))
        return p

    def _time_for(self, t, B: int, name: str = "t") -> torch.Tensor:
        if isinstance(t, (float, int)) and not isinstance(t, bool):
            return _times(t, name)
        t = _times(t, name)
        if t.dim() == 0:
            return t
        if t.shape != (B,):
            raise ValueError(
                f"{name} must be a scalar or have shape ({B},); got {tuple(t.shape)}"
            )
        return t

    # --- public
    def transition(self, s, t) -> torch.Tensor:
        r"""The transition matrix $P_{s\to t}=\exp((\bar\sigma(t)-\bar\sigma(s))Q)$
        (float64, (n, n)) for times $s\le t$ (floats)."""
        s, t = C.scalar_time(s, "s"), C.scalar_time(t, "t")
        if s > t:
            raise ValueError(f"need s <= t; got s={s}, t={t}")
        return self._matrix(torch.tensor(s, dtype=F64), torch.tensor(t, dtype=F64))

    def marginal(self, x0, t) -> torch.Tensor:
        r"""$q(x_t\mid x_0)$ per token: float64 (B, L, n_states) from tokens ``x0``
        (B, L) or probabilities over them (B, L, K); ``t`` a float or (B,)."""
        p = self._probs(x0)
        t = self._time_for(t, p.shape[0])
        P = self._matrix(torch.zeros_like(t), t)
        return p @ P if P.dim() == 2 else torch.einsum("bln,bnm->blm", p, P)

    def sample_xt(self, x0, t, generator: torch.Generator | None = None):
        """A draw of x_t ~ q(x_t | x0) (int64 (B, L))."""
        C.generator(generator)
        return _gumbel_argmax(torch.log(self.marginal(x0, t)), generator)

    def prior(self, L: int) -> torch.Tensor:
        r"""The law of $x_1$ from a uniformly random clean token, float64 (L, n): all
        mask for the absorbing chain, uniform for the uniform one (when
        $\alpha_1=0$)."""
        L = C.positive_int(L, "L")
        p = torch.zeros(self.n_states, dtype=F64)
        p[: self.K] = 1.0 / self.K
        P = self._matrix(torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64))
        return (p @ P).expand(L, -1).clone()

    def posterior(self, x_t, x0_probs, s, t) -> torch.Tensor:
        r"""$\sum_{x_0}\tilde p(x_0)\,q(x_s\mid x_t,x_0)$ per token for $s<t$ (floats):
        float64 (B, L, n_states). ``x0_probs``: tokens (B, L) or probabilities (B, L,
        K). Clean tokens $x_0$ that cannot have produced $x_t$ get weight 0 (the mix is
        renormalised over the consistent ones), so unmasked tokens of the absorbing
        chain are carried over; where no consistent $x_0$ has weight, $x_s=x_t$."""
        s, t = C.scalar_time(s, "s"), C.scalar_time(t, "t")
        if not s < t:
            raise ValueError(f"need s < t; got s={s}, t={t}")
        x_t = _tokens(x_t, "x_t", self.n_states)
        w = self._probs(x0_probs, "x0_probs")
        if w.shape[:2] != x_t.shape:
            raise ValueError(
                f"x0_probs must match x_t's shape {tuple(x_t.shape)} in (B, L); got "
                f"{tuple(w.shape)}"
            )
        return self._posterior(x_t, w, s, t)

    def _posterior(self, x_t, w, s, t):
        z = torch.tensor(0.0, dtype=F64)
        ts, tt = torch.tensor(s, dtype=F64), torch.tensor(t, dtype=F64)
        A, Bm, D = self._matrix(z, ts), self._matrix(ts, tt), self._matrix(z, tt)
        Dx = D.T[x_t]  # D[k, x_t]: (B, L, n) over k
        w = torch.where(Dx > 0, w, torch.zeros_like(w))
        tot = w.sum(-1, keepdim=True)
        v = torch.where(Dx > 0, w / Dx.clamp(min=1e-300), torch.zeros_like(w))
        v = v / tot.clamp(min=1e-300)
        r = (v @ A) * Bm.T[x_t]
        stay = torch.nn.functional.one_hot(x_t, self.n_states).to(F64)
        return torch.where(tot > 0, r, stay)

    def score_from_x0(self, x_t, x0_probs, t) -> torch.Tensor:
        r"""The concrete score $s(x_t)_{\ell,y}=p_t(y)/p_t(x_t)$ (token $\ell$ set to
        $y$, the others kept) implied by clean-token probabilities:
        $\sum_{x_0}\tilde p(x_0\mid x_t)\,q_t(y\mid x_0)/q_t(x_t^\ell\mid x_0)$, float64
        (B, L, n_states), 1 at $y=x_t^\ell$. Absorbing chain, masked position:
        $\frac{\alpha_t}{1-\alpha_t}\tilde p(y)$ and 1 at the mask. The identity
        with the ratio of marginals holds for the entries that the reverse rates and
        score entropy use, those with $Q[y,x_t^\ell]>0$ (from such a $y$ the chain can
        reach $x_t^\ell$); the absorbing chain's unmasked positions give 0 elsewhere."""
        x_t = _tokens(x_t, "x_t", self.n_states)
        w = self._probs(x0_probs, "x0_probs")
        t = C.scalar_time(t, "t", lo=0.0)
        return self._score_from_x0(x_t, w, t)

    def _score_from_x0(self, x_t, w, t):
        """``t``: a float, or a (B,) float64 tensor (one matrix per row)."""
        tt = t if torch.is_tensor(t) else torch.tensor(t, dtype=F64)
        D = self._matrix(torch.zeros_like(tt), tt)
        if D.dim() == 2:
            Dx = D.T[x_t]
        else:  # Dx[b, l, k] = D[b, k, x_t[b, l]]
            Dx = D.transpose(1, 2).gather(
                1, x_t[..., None].expand(-1, -1, D.shape[-1])
            )
        w = torch.where(Dx > 0, w, torch.zeros_like(w))
        w = w / w.sum(-1, keepdim=True).clamp(min=1e-300)
        v = torch.where(Dx > 0, w / Dx.clamp(min=1e-300), torch.zeros_like(w))
        out = v @ D
        return out.scatter(-1, x_t[..., None], 1.0)

    def reverse_rates(self, x_t, t, x0_probs=None, *, score=None) -> torch.Tensor:
        r"""The reverse-time rates $\hat R_t(x_t^\ell\to y)=\beta(t)\,Q[y,x_t^\ell]\,
        s(x_t)_{\ell,y}$ per unit of decreasing time, float64 (B, L, n_states), the
        entry at $y=x_t^\ell$ minus the sum of the others (rows sum to 0). Give either
        ``x0_probs`` (tokens or (B, L, K) probabilities) or ``score`` (concrete score
        ratios, (B, L, n_states)). For the absorbing chain from ``x0_probs`` the
        product is formed as $-\alpha'_t/(1-\alpha_t)\,\tilde p(y)$, finite at t = 1."""
        x_t = _tokens(x_t, "x_t", self.n_states)
        t = C.scalar_time(t, "t")
        if (x0_probs is None) == (score is None):
            raise ValueError("give exactly one of x0_probs and score")
        if score is not None:
            score = C.tensor(score, "score", floating=True, min_dim=3)
            if score.shape != x_t.shape + (self.n_states,) or bool((score < 0).any()):
                raise ValueError(
                    f"score must hold non-negative ratios of shape "
                    f"{tuple(x_t.shape) + (self.n_states,)}; got {tuple(score.shape)}"
                )
            return self._rates(x_t, t, score=score.to(F64))
        if t == 0.0:
            raise ValueError("t must be > 0 for reverse rates (alpha_0 = 1)")
        return self._rates(x_t, t, w=self._probs(x0_probs, "x0_probs"))

    def _rates(self, x_t, t, w=None, score=None):
        tt = torch.tensor(t, dtype=F64)
        if self.kind == "absorbing" and score is None:
            lam = float(self.schedule._d_alpha(tt)) * -1 / (
                1 - float(self.schedule._alpha(tt))
            )
            masked = (x_t == self.mask_index)[..., None]
            r = torch.where(masked, lam * w, torch.zeros_like(w))
        else:
            if score is None:
                score = self._score_from_x0(x_t, w, t)
            beta = float(self.schedule.rate(tt))
            r = beta * self.Q.T[x_t] * score
        r = r.scatter(-1, x_t[..., None], 0.0)
        if not bool(torch.isfinite(r).all()):
            raise ValueError(
                f"the reverse rates are infinite at t = {t} (the rate beta(t) is "
                f"infinite there); start below that time"
            )
        return r.scatter(-1, x_t[..., None], -r.sum(-1, keepdim=True))


def _process(obj, name="process"):
    if not isinstance(obj, DiscreteProcess):
        raise ValueError(
            f"{name} must be a dlib.discrete.DiscreteProcess; got {type(obj).__name__}"
        )
    return obj


# --- the categorical denoiser ---------------------------------------------------------
DENOISER_KINDS = ("x0_logits", "concrete_score")


class CategoricalDenoiser:
    r"""A network ``fn(x_t, t)`` on tokens (B, L) and float times (B,) together with
    its kind and :class:`DiscreteProcess`, viewable as clean-token probabilities or as
    a concrete score (the discrete :class:`dlib.param.Denoiser`).

    ``kind="x0_logits"``: logits of $p_\theta(x_0^\ell\mid x_t)$, shape (B, L, K) (or
    (B, L, K + 1), the mask column being ignored). For the absorbing chain the SUBS
    rule is applied: the mask gets probability 0 and unmasked positions are copied.
    ``kind="concrete_score"``: $\log s_\theta(x_t)_{\ell,y}$, shape (B, L,
    n_states); the entry at the current token is ignored (it is $\log 1$). The two
    are converted into each other (absorbing chain: $s_{\ell,y}=
    \frac{\alpha_t}{1-\alpha_t}p(x_0^\ell=y\mid x_t)$ on masked positions; from a
    score, the probabilities are renormalised; uniform or general chains convert
    x0 -> score only). ``nfe`` counts the evaluations of ``fn``. As for
    :class:`dlib.param.Denoiser` with integer data, ``fn`` receives the times in
    torch's default float dtype (float32 unless changed): an exact oracle that must
    agree to round-off should be evaluated at times exact in float32."""

    def __init__(self, fn: Callable, process: DiscreteProcess, kind: str = "x0_logits"):
        C.function(fn, "fn", "fn(x_t, t)")
        self.process = _process(process)
        self.kind = C.one_of(kind, DENOISER_KINDS, "denoiser kind")
        self.fn = fn
        self.nfe = 0

    def __repr__(self):
        return f"CategoricalDenoiser(kind={self.kind!r}, process={self.process!r})"

    def _evaluate(self, x_t, t):
        """``t``: a float, or a (B,) tensor of times (the losses)."""
        self.nfe += 1
        if torch.is_tensor(t):
            tt = t.to(torch.get_default_dtype())
        else:
            tt = torch.full((x_t.shape[0],), t, dtype=torch.get_default_dtype())
        out = self.fn(x_t, tt.to(x_t.device))
        p = self.process
        want = (p.n_states,) if self.kind == "concrete_score" else (p.K, p.n_states)
        if not torch.is_tensor(out) or out.shape[:2] != x_t.shape or (
            out.dim() != 3 or out.shape[-1] not in want
        ):
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(
                f"fn(x_t, t) must return a tensor of shape {tuple(x_t.shape)} + one "
                f"of {want}; got {got}"
            )
        return out

    def _x0_probs(self, x_t, t: float) -> torch.Tensor:
        p = self.process
        out = self._evaluate(x_t, t)
        if self.kind == "x0_logits":
            probs = torch.softmax(out[..., : p.K].to(F64), -1)
        else:
            if p.kind != "absorbing":
                raise ValueError(
                    "converting a concrete score to clean-token probabilities is "
                    f"implemented for the absorbing chain only; this process is "
                    f"{p.kind!r}"
                )
            probs = torch.exp(out[..., : p.K].to(F64) - out[..., : p.K].amax(-1,
                                                                             True))
            probs = probs / probs.sum(-1, keepdim=True)
        if p.kind == "absorbing":
            clean = x_t != p.mask_index
            onehot = torch.nn.functional.one_hot(x_t.clamp(max=p.K - 1), p.K).to(F64)
            probs = torch.where(clean[..., None], onehot, probs)
        return probs

    def _score(self, x_t, t: float) -> torch.Tensor:
        if self.kind == "concrete_score":
            s = torch.exp(self._evaluate(x_t, t).to(F64))
            return s.scatter(-1, x_t[..., None], 1.0)
        return self.process._score_from_x0(x_t, self._pad(self._x0_probs(x_t, t)), t)

    def _pad(self, probs):
        n = self.process.n_states
        return torch.nn.functional.pad(probs, (0, n - probs.shape[-1]))

    def _inputs(self, x_t, t):
        x_t = _tokens(x_t, "x_t", self.process.n_states)
        return x_t, C.scalar_time(t, "t")

    def x0_probs(self, x_t, t) -> torch.Tensor:
        r"""$p_\theta(x_0^\ell=y\mid x_t)$, float64 (B, L, K) (``t`` a float)."""
        x_t, t = self._inputs(x_t, t)
        return self._x0_probs(x_t, t)

    def concrete_score(self, x_t, t) -> torch.Tensor:
        r"""$s_\theta(x_t)_{\ell,y}$ (ratios, not logs), float64 (B, L, n_states)."""
        x_t, t = self._inputs(x_t, t)
        if t == 0.0:
            raise ValueError("t must be > 0 for a concrete score")
        return self._score(x_t, t)


def _denoiser(obj, name="denoiser"):
    if not isinstance(obj, CategoricalDenoiser):
        raise ValueError(
            f"{name} must be a dlib.discrete.CategoricalDenoiser; got "
            f"{type(obj).__name__}"
        )
    return obj


# --- losses ---------------------------------------------------------------------------
def antithetic_times(
    n: int, generator: torch.Generator | None = None, *, t_min: float = 1e-3
) -> torch.Tensor:
    r"""``n`` low-discrepancy (antithetic) times in $[t_{\min},1)$, float64:
    $t_i=t_{\min}+(1-t_{\min})(u+i)/n$ with one shared uniform $u$: one time per
    stratum, so the Monte Carlo ELBO has far less variance than with i.i.d. times.
    (MDLM's ``_sample_t`` draws one uniform per stratum instead; both are unbiased
    for the mean over i.i.d. examples. Example $i$ always lands in stratum $i$, so the
    estimate of one fixed example is not unbiased on its own.)"""
    n = C.positive_int(n, "n")
    t_min = C.in_range(t_min, "t_min", 0.0, 1.0, hi_open=True)
    C.generator(generator)
    dev = generator.device if generator is not None else "cpu"
    u = torch.rand((), generator=generator, dtype=F64, device=dev).cpu()
    u = u.clamp(min=1e-12)
    return t_min + (1 - t_min) * (u + torch.arange(n, dtype=F64)) / n


def _loss_inputs(denoiser, x0, t, x_t, generator):
    _denoiser(denoiser)
    p = denoiser.process
    x0 = _tokens(x0, "x0", p.K)
    B = x0.shape[0]
    t = p._time_for(t, B)
    t = t.expand(B) if t.dim() == 0 else t
    C.generator(generator)
    if x_t is None:
        x_t = _gumbel_argmax(torch.log(p.marginal(x0, t)), generator)
    else:
        x_t = _tokens(x_t, "x_t", p.n_states)
        if x_t.shape != x0.shape:
            raise ValueError(
                f"x_t must have x0's shape {tuple(x0.shape)}; got {tuple(x_t.shape)}"
            )
    return p, x0, t, x_t


def masked_elbo_loss(
    denoiser: CategoricalDenoiser,
    x0: torch.Tensor,
    t,
    *,
    x_t: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""The integrand of the continuous-time masked ELBO (MDLM = MD4), per sample:
    $\frac{-\alpha'_t}{1-\alpha_t}\sum_{\ell:x_t^\ell=m}-\log p_\theta(x_0^\ell\mid
    x_t)$, float64 (B,). Its mean over $t\sim U[0,1]$ and $x_t\sim q(x_t\mid x_0)$ is
    the bound on $-\log p_\theta(x_0)$ in nats (use :func:`antithetic_times`).
    ``x_t`` is drawn from the process unless given. Absorbing chain only. NFE: one
    (the network gets the (B,) times)."""
    p, x0, t, x_t = _loss_inputs(denoiser, x0, t, x_t, generator)
    if p.kind != "absorbing":
        raise ValueError(
            f"masked_elbo_loss needs the absorbing process; denoiser.process is "
            f"{p.kind!r} (use d3pm_bound or score_entropy_loss)"
        )
    probs = denoiser._x0_probs(x_t, t)
    lp = torch.log(probs.gather(-1, x0[..., None]).squeeze(-1))
    ce = torch.where(x_t == p.mask_index, -lp, torch.zeros_like(lp)).sum(-1)
    # no position is masked where the weight is infinite (alpha_t = 1)
    w = p.schedule._elbo_weight(t)
    return torch.where(ce > 0, w * ce, torch.zeros_like(ce))


def score_entropy_loss(
    denoiser: CategoricalDenoiser,
    x0: torch.Tensor,
    t,
    *,
    x_t: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""SEDD's denoising score entropy, per sample, float64 (B,):
    $\beta(t)\sum_\ell\sum_{y\ne x_t^\ell}Q[y,x_t^\ell]\big(s_{\ell,y}
    -r_y\log s_{\ell,y}+r_y(\log r_y-1)\big)$ with
    $r_y=q_t(y\mid x_0^\ell)/q_t(x_t^\ell\mid x_0^\ell)$.
    Its mean over $t\sim U[0,1]$ and $x_t$ is SEDD's ELBO (DWDSE) on
    $-\log p_\theta(x_0)$; for the absorbing chain with a score made from clean-token
    probabilities it equals :func:`masked_elbo_loss` term by term. NFE: one for the
    batch (the network gets the (B,) times)."""
    p, x0, t, x_t = _loss_inputs(denoiser, x0, t, x_t, generator)
    onehot = torch.nn.functional.one_hot(x0, p.n_states).to(F64)
    if p.kind == "absorbing":
        # beta Q[y, m] s_y with s = rho s', rho = alpha/(1 - alpha): the factor rho
        # goes into the weight beta rho = -alpha'/(1 - alpha), finite at t = 1; one NFE
        a = p.schedule._alpha(t)[:, None, None]
        c = p.schedule._elbo_weight(t)
        if denoiser.kind == "x0_logits":
            ss = denoiser._pad(denoiser._x0_probs(x_t, t))
        elif bool((a == 0).any()):
            raise ValueError("score_entropy_loss of a concrete score needs t < 1")
        else:
            ss = denoiser._score(x_t, t) * ((1 - a) / a)
        w = (x_t == p.mask_index)[..., None] * p.Q.T[x_t]
        return _score_entropy(ss, onehot, w, c, x_t)
    c = p.schedule.rate(t)
    if not bool(torch.isfinite(c).all()):
        bad = float(t[~torch.isfinite(c)][0])
        raise ValueError(
            f"score_entropy_loss: the rate beta(t) is infinite at t = {bad}; "
            f"use t < 1 or a schedule with alpha_1 > 0"
        )
    # one NFE for the batch: the network gets the (B,) times
    ss = denoiser._score(x_t, t)
    rr = p._score_from_x0(x_t, onehot, t)
    return _score_entropy(ss, rr, p.Q.T[x_t], c, x_t)


def _score_entropy(ss, rr, w, c, x_t):
    """c (B,) times sum over positions and y != x_t of w (s - r log s + K(r))."""
    kr = torch.where(rr > 0, rr * (torch.log(rr.clamp(min=1e-300)) - 1), 0.0)
    rlog = torch.where(rr > 0, rr * torch.log(ss), torch.zeros_like(ss))
    term = torch.where(w > 0, ss - rlog + kr, torch.zeros_like(ss))
    term = term.scatter(-1, x_t[..., None], 0.0)
    tot = (w * term).sum((-1, -2))
    return torch.where(tot != 0, c * tot, torch.zeros_like(tot))


def d3pm_bound(
    denoiser: CategoricalDenoiser,
    x0: torch.Tensor,
    ts,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""The discrete-time variational bound of D3PM on $-\log p_\theta(x_0)$ over the
    grid ``ts`` (decreasing from 1 to 0), per sample, float64 (B,), with one draw of
    $x_t$ per step: $\mathrm{KL}(q(x_1\mid x_0)\,\|\,\text{prior})+\sum_i
    \mathrm{KL}(q(x_{s}\mid x_{t},x_0)\,\|\,p_\theta(x_{s}\mid x_{t}))$, the model's
    step being the posterior mixed over its clean-token probabilities; the last step
    (s = 0) is the reconstruction term $-\log p_\theta(x_0\mid x_{t})$. Any process.
    NFE: one per step."""
    _denoiser(denoiser)
    p = denoiser.process
    x0 = _tokens(x0, "x0", p.K)
    C.generator(generator)
    ts = _grid(ts)
    if ts[0] != 1.0 or ts[-1] != 0.0:
        raise ValueError(f"ts must run from 1 to 0; got {ts[0]} ... {ts[-1]}")
    q1 = p.marginal(x0, 1.0)
    prior = p.prior(x0.shape[1])
    kl = torch.where(q1 > 0, q1 * (torch.log(q1) - torch.log(prior)), 0.0)
    out = kl.sum((-1, -2))
    onehot = torch.nn.functional.one_hot(x0, p.n_states).to(F64)
    for t, s in zip(ts[:-1], ts[1:]):
        xt = _gumbel_argmax(torch.log(p.marginal(x0, t)), generator)
        q = p._posterior(xt, onehot, s, t)
        model = p._posterior(xt, denoiser._pad(denoiser._x0_probs(xt, t)), s, t)
        kl = torch.where(q > 0, q * (torch.log(q) - torch.log(model)), 0.0)
        out = out + kl.sum((-1, -2))
    return out


def _grid(ts) -> list[float]:
    if torch.is_tensor(ts):
        ts = ts.detach().cpu()
    ts = C.as_time(ts, name="ts", dtype=F64).to(F64)
    if ts.dim() != 1 or ts.numel() < 2 or bool((ts[1:] >= ts[:-1]).any()):
        raise ValueError(
            "ts must be a strictly decreasing 1-D grid with at least 2 times"
        )
    return ts.tolist()
