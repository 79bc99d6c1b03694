r"""Exact oracles for discrete diffusion: a hidden Markov model language with exact
likelihood, entropy rate and the exact clean-token posterior under corruption
(Part III).

A hidden Markov model (HMM) has hidden states $h_\ell\in\{0..H-1\}$ and tokens
$x_\ell\in\{0..K-1\}$,

$$p(x_{1:L}, h_{1:L}) = \pi_{h_1} E_{h_1 x_1}\prod_{\ell\ge2} T_{h_{\ell-1}h_\ell}
E_{h_\ell x_\ell}.$$

Every exact quantity here is one pass of the scaled forward-backward algorithm over
per-position *evidence* $e_\ell(y)\ge0$ on the clean token: a one-hot $e_\ell$ gives the
likelihood $p(x_{1:L})$; for a sequence corrupted independently per token,
$q(x_t\mid x_0)=\prod_\ell \mathrm{lik}[x_0^\ell, x_t^\ell]$, the evidence
$e_\ell(y)=\mathrm{lik}[y, x_t^\ell]$ gives $p(x_t)$ and the exact clean-token posterior

$$p(x_0^\ell=y\mid x_t)\propto\sum_h p(h_\ell=h\mid x_t^{<\ell})\,E_{hy}\,e_\ell(y)\,
\frac{p(x_t^{>\ell}\mid h_\ell=h)}{p(x_t^{>\ell}\mid x_t^{\le\ell})}.$$

The corruption is passed as its likelihood matrix (:func:`absorbing_likelihood`,
:func:`uniform_likelihood`, or any (K, M) matrix), so this module depends on no
corruption-process class. Everything is float64; categorical draws use the Gumbel-max
trick with float64 Gumbel noise from a ``torch.Generator``
(:func:`dlib.discrete.sample_categorical`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .. import _checks as C
from .process import _keep_or_jump, sample_categorical

__all__ = ["HMM", "absorbing_likelihood", "uniform_likelihood"]

_F64 = torch.float64
_ENUMERATE_MAX = 2**22  # largest K**L * H**L that enumerate_joint sums over


def _stochastic(x, name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """A float64 tensor of ``shape``, non-negative, finite, each row summing to 1
    (within 1e-6; renormalised exactly)."""
    x = C.real_tensor(x, name).to(_F64)
    if tuple(x.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}; got {tuple(x.shape)}")
    C.finite(x, name)
    if bool((x < 0).any()):
        raise ValueError(f"{name} must be non-negative; got a minimum of {x.min():.3g}")
    sums = x.sum(-1)
    if bool(((sums - 1).abs() > 1e-6).any()):
        raise ValueError(
            f"{name} must sum to 1 over its last dimension; got sums from "
            f"{sums.min():.6g} to {sums.max():.6g}"
        )
    return x / sums[..., None]


def _tokens(x, name: str, n_states: int) -> torch.Tensor:
    """A non-empty (B, L) integer tensor with values in 0..n_states-1, as int64."""
    if not torch.is_tensor(x):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if x.dtype == torch.bool or x.is_floating_point() or x.is_complex():
        raise ValueError(f"{name} must be an integer (int64) tensor; got {x.dtype}")
    if x.dim() != 2 or x.numel() == 0:
        raise ValueError(
            f"{name} must have shape (B, L) with B, L >= 1; got {tuple(x.shape)}"
        )
    if bool(((x < 0) | (x >= n_states)).any()):
        raise ValueError(
            f"{name} must hold values in 0..{n_states - 1}; got values from "
            f"{int(x.min())} to {int(x.max())}"
        )
    return x.long()


def _alpha(alpha) -> torch.Tensor:
    """A keep-probability in [0, 1]: a number -> 0-dim float64 tensor; a (B,) tensor
    -> (B, 1, 1) float64 tensor (one likelihood matrix per batch element)."""
    if torch.is_tensor(alpha) and alpha.dim() > 0:
        a = C.tensor(alpha, "alpha", floating=True)
        if a.dim() != 1 or bool(((a < 0) | (a > 1)).any()):
            raise ValueError(
                "alpha must be a number or a (B,) tensor with values in [0, 1]; got "
                f"shape {tuple(a.shape)}"
            )
        return a.to(_F64)[:, None, None]
    if torch.is_tensor(alpha):
        alpha = float(alpha)
    return torch.tensor(C.in_range(alpha, "alpha", 0.0, 1.0), dtype=_F64)


def absorbing_likelihood(vocab_size: int, alpha) -> torch.Tensor:
    r"""The per-token likelihood lik[x0, x_t] (K, K + 1) of the absorbing (masked)
    corruption at keep-probability ``alpha``: $\alpha$ on the diagonal (kept),
    $1-\alpha$ in the last column (the mask, index K), zero elsewhere. Float64.
    A (B,) tensor ``alpha`` gives one matrix per batch element, (B, K, K + 1)."""
    K = C.positive_int(vocab_size, "vocab_size")
    return _keep_or_jump("absorbing", _alpha(alpha), K + 1)[..., :K, :]


def uniform_likelihood(vocab_size: int, alpha) -> torch.Tensor:
    r"""The per-token likelihood lik[x0, x_t] (K, K) of the uniform corruption at
    keep-probability ``alpha``: $\alpha\,\delta_{x_0x_t} + (1-\alpha)/K$. Float64.
    A (B,) tensor ``alpha`` gives one matrix per batch element, (B, K, K)."""
    K = C.positive_int(vocab_size, "vocab_size")
    return _keep_or_jump("uniform", _alpha(alpha), K)


class HMM:
    r"""A hidden Markov model over tokens 0..K-1 with H hidden states (float64).

    Args:
        initial: (H,) law of the first hidden state.
        transition: (H, H) row-stochastic matrix $T_{hh'} = p(h_{\ell+1}=h'\mid
            h_\ell=h)$.
        emission: (H, K) row-stochastic matrix $E_{hy} = p(x_\ell=y\mid h_\ell=h)$.

    Rows must sum to 1 within 1e-6 (they are renormalised exactly).
    :meth:`language` builds the book's default seeded "language".
    """

    def __init__(self, initial, transition, emission):
        init = C.real_tensor(initial, "initial")
        if init.dim() != 1 or init.numel() < 1:
            raise ValueError(
                f"initial must have shape (H,) with H >= 1; got {tuple(init.shape)}"
            )
        H = init.numel()
        self.initial = _stochastic(init, "initial", (H,))
        self.transition = _stochastic(transition, "transition", (H, H))
        emis = C.real_tensor(emission, "emission")
        if emis.dim() != 2 or emis.shape[0] != H or emis.shape[1] < 1:
            raise ValueError(
                f"emission must have shape ({H}, K) with K >= 1; got "
                f"{tuple(emis.shape)}"
            )
        self.emission = _stochastic(emis, "emission", (H, emis.shape[1]))

    @property
    def n_hidden(self) -> int:
        """Number of hidden states H."""
        return self.initial.numel()

    @property
    def vocab_size(self) -> int:
        """Number of tokens K."""
        return self.emission.shape[1]

    def __repr__(self) -> str:
        return f"HMM(n_hidden={self.n_hidden}, vocab_size={self.vocab_size})"

    # --- construction -----------------------------------------------------------
    @classmethod
    def language(
        cls,
        n_hidden: int = 6,
        vocab_size: int = 24,
        stay: float = 0.85,
        tokens_per_state: int = 6,
        successors: int = 2,
        seed: int = 0,
    ) -> HMM:
        r"""The book's default toy "language": a seeded, sticky HMM with sparse
        structure, so that many bigrams are impossible.

        Hidden state h stays with probability ``stay`` and otherwise moves to one of
        ``successors`` other states (chosen and weighted from ``seed``); it emits
        from a window of ``tokens_per_state`` consecutive tokens starting at
        $\lfloor hK/H\rfloor$ (cyclically), so neighbouring windows partly overlap
        when ``tokens_per_state`` > K/H; emission weights are Dirichlet(2) draws.
        The first hidden state is drawn from the stationary law of the chain, so the
        token process is stationary. Defaults: H = 6, K = 24, stay 0.85, windows of 6
        (overlap 2), 2 successors, as in the discrete-foundations card.
        """
        H = C.positive_int(n_hidden, "n_hidden")
        K = C.positive_int(vocab_size, "vocab_size")
        stay = C.in_range(stay, "stay", 0.0, 1.0, hi_open=True)
        w = C.positive_int(tokens_per_state, "tokens_per_state", maximum=K)
        n_succ = C.positive_int(successors, "successors", minimum=0, maximum=H - 1)
        seed = C.seed(seed)
        if n_succ == 0 and stay < 1.0 and H > 1:
            raise ValueError(
                "successors must be >= 1 when stay < 1 and n_hidden > 1; got 0"
            )
        rng = np.random.default_rng(seed)
        T = np.zeros((H, H))
        for h in range(H):
            if n_succ == 0 or H == 1:
                T[h, h] = 1.0
                continue
            others = [g for g in range(H) if g != h]
            succ = rng.choice(others, size=n_succ, replace=False)
            T[h, succ] = (1.0 - stay) * rng.dirichlet(np.full(n_succ, 2.0))
            T[h, h] = stay
        E = np.zeros((H, K))
        for h in range(H):
            start = (h * K) // H
            window = [(start + j) % K for j in range(w)]
            E[h, window] = rng.dirichlet(np.full(w, 2.0))
        T_t = torch.as_tensor(T, dtype=_F64)
        init = _stationary(T_t)
        return cls(init, T_t, torch.as_tensor(E, dtype=_F64))

    def stationary(self) -> torch.Tensor:
        r"""A stationary law $\mu$ of the hidden chain ($\mu T = \mu$), (H,) float64:
        unique for an irreducible chain; for a reducible one, one of several."""
        return _stationary(self.transition)

    # --- sampling ---------------------------------------------------------------
    def sample(
        self, n: int, length: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` sequences of ``length`` tokens: (tokens, hidden), both (n, length)
        int64. Seeded draws by the Gumbel-max trick with float64 noise from
        ``generator`` (:func:`dlib.discrete.sample_categorical`)."""
        n = C.positive_int(n, "n")
        L = C.positive_int(length, "length")
        C.generator(generator)
        logT, logE = self.transition.log(), self.emission.log()
        hidden = torch.empty(n, L, dtype=torch.long)
        tokens = torch.empty(n, L, dtype=torch.long)
        h = sample_categorical(self.initial.log().expand(n, -1), generator, log=True)
        for ell in range(L):
            if ell:
                h = sample_categorical(logT[h], generator, log=True)
            hidden[:, ell] = h
            tokens[:, ell] = sample_categorical(logE[h], generator, log=True)
        return tokens, hidden

    # --- exact inference ---------------------------------------------------------
    def _forward_backward(self, evidence: torch.Tensor, name: str = "evidence"):
        """Scaled forward-backward over per-position evidence (B, L, K) >= 0.

        Returns (pred, beta, log_c): pred[b, l] = p(h_l | evidence before l),
        beta[b, l] = p(evidence after l | h_l) / p(evidence after l | evidence up to
        l), log_c[b, l] = log p(evidence at l | evidence before l)."""
        B, L, _ = evidence.shape
        H = self.n_hidden
        lik_h = evidence @ self.emission.T  # (B, L, H): p(e_l | h_l = h)
        pred = torch.empty(B, L, H, dtype=_F64)
        log_c = torch.empty(B, L, dtype=_F64)
        prior = self.initial.expand(B, H)
        for ell in range(L):
            pred[:, ell] = prior
            joint = prior * lik_h[:, ell]
            c = joint.sum(-1)
            if bool((c <= 0).any()):
                b = int(torch.nonzero(c <= 0)[0, 0])
                raise ValueError(
                    f"{name} has probability zero under this HMM (sequence {b}: an "
                    "impossible sequence, or a likelihood that rules out every clean "
                    "sequence)"
                )
            log_c[:, ell] = c.log()
            filt = joint / c[:, None]
            prior = filt @ self.transition
        beta = torch.empty(B, L, H, dtype=_F64)
        beta[:, L - 1] = 1.0
        for ell in range(L - 2, -1, -1):
            nxt = lik_h[:, ell + 1] * beta[:, ell + 1]
            beta[:, ell] = (nxt @ self.transition.T) / log_c[:, ell + 1].exp()[:, None]
        return pred, beta, log_c

    def _evidence(self, evidence) -> torch.Tensor:
        ev = C.real_tensor(evidence, "evidence")
        if ev.dim() != 3 or ev.shape[0] < 1 or ev.shape[1] < 1:
            raise ValueError(
                "evidence must have shape (B, L, K) with B, L >= 1; got "
                f"{tuple(ev.shape)}"
            )
        if ev.shape[2] != self.vocab_size:
            raise ValueError(
                f"evidence must have K = {self.vocab_size} entries in its last "
                f"dimension; got {ev.shape[2]}"
            )
        C.finite(ev, "evidence")
        if bool((ev < 0).any()):
            raise ValueError("evidence must be non-negative")
        return ev.to(_F64)

    def _corrupted(self, x_t, likelihood) -> torch.Tensor:
        lik = C.real_tensor(likelihood, "likelihood")
        K = self.vocab_size
        if lik.dim() not in (2, 3) or lik.shape[-2] != K or lik.shape[-1] < 1:
            raise ValueError(
                f"likelihood must have shape ({K}, M) or (B, {K}, M): lik[x0, x_t] "
                f"for x_t in 0..M-1; got {tuple(lik.shape)}"
            )
        C.finite(lik, "likelihood")
        if bool((lik < 0).any()):
            raise ValueError("likelihood must be non-negative")
        x_t = _tokens(x_t, "x_t", lik.shape[-1])
        lik = lik.to(_F64)
        if lik.dim() == 2:
            return lik.T[x_t]  # (B, L, K): evidence[b, l, y] = lik[y, x_t[b, l]]
        if lik.shape[0] != x_t.shape[0]:
            raise ValueError(
                f"likelihood has {lik.shape[0]} matrices but x_t has "
                f"{x_t.shape[0]} sequences; they must match"
            )
        idx = x_t[:, :, None].expand(-1, -1, K)  # evidence[b, l, y] = lik[b, y, x_t]
        return torch.gather(lik.transpose(1, 2), 1, idx)

    def _one_hot(self, tokens) -> torch.Tensor:
        tokens = _tokens(tokens, "tokens", self.vocab_size)
        return torch.nn.functional.one_hot(tokens, self.vocab_size).to(_F64)

    def log_prob(self, tokens) -> torch.Tensor:
        """Exact log-likelihood log p(x_{1:L}) of (B, L) tokens by the forward
        algorithm, (B,) float64; -inf for an impossible sequence."""
        ev = self._one_hot(tokens)
        return self._log_evidence(ev)

    def _log_evidence(self, ev: torch.Tensor) -> torch.Tensor:
        B, L, _ = ev.shape
        lik_h = ev @ self.emission.T
        log_alpha = self.initial.log() + lik_h[:, 0].log()
        logT = self.transition.log()
        for ell in range(1, L):
            log_alpha = (
                torch.logsumexp(log_alpha[:, :, None] + logT, dim=1)
                + lik_h[:, ell].log()
            )
        return torch.logsumexp(log_alpha, dim=-1)

    def is_valid(self, tokens) -> torch.Tensor:
        """(B,) bool: whether each sequence has positive probability."""
        return torch.isfinite(self.log_prob(tokens))

    def hidden_posterior(self, tokens) -> torch.Tensor:
        r"""Forward-backward smoothing $p(h_\ell\mid x_{1:L})$, (B, L, H) float64.
        Raises ValueError for a sequence of probability zero."""
        ev = self._one_hot(tokens)
        pred, beta, _ = self._forward_backward(ev, "tokens")
        g = pred * (ev @ self.emission.T) * beta
        return g / g.sum(-1, keepdim=True)

    def log_evidence(self, x_t, likelihood) -> torch.Tensor:
        r"""$\log p(x_t) = \log\sum_{x_0}p(x_0)\prod_\ell\mathrm{lik}[x_0^\ell,
        x_t^\ell]$ for (B, L) corrupted tokens ``x_t`` with values in 0..M-1 and a
        per-token likelihood (K, M); (B,) float64 (-inf where impossible)."""
        return self._log_evidence(self._corrupted(x_t, likelihood))

    def posterior(self, x_t, likelihood) -> torch.Tensor:
        r"""The exact clean-token posterior $p(x_0^\ell=y\mid x_t)$, (B, L, K)
        float64, for (B, L) tokens ``x_t`` (values 0..M-1) corrupted independently
        per token with likelihood ``likelihood[x0, x_t]`` of shape (K, M) (or
        (B, K, M), one per sequence, e.g. for a different time per sequence), e.g.
        :func:`absorbing_likelihood` (M = K + 1, mask = K) or
        :func:`uniform_likelihood`. Raises ValueError when p(x_t) = 0."""
        return self._token_posterior(self._corrupted(x_t, likelihood), "x_t")

    def posterior_from_evidence(self, evidence) -> torch.Tensor:
        r"""The clean-token posterior under arbitrary per-position evidence
        $e_\ell(y)\ge0$ (B, L, K): $p(x_0\mid e)\propto p(x_0)\prod_\ell
        e_\ell(x_0^\ell)$, marginal per position, (B, L, K) float64 (for example a
        measurement likelihood that differs between positions)."""
        return self._token_posterior(self._evidence(evidence))

    def _token_posterior(self, ev: torch.Tensor, name="evidence") -> torch.Tensor:
        pred, beta, _ = self._forward_backward(ev, name)
        # p(h_l = h, x0_l = y | e) up to a constant: pred * E[h, y] * e_l(y) * beta
        w = pred * beta  # (B, L, H)
        post = (w @ self.emission) * ev
        return post / post.sum(-1, keepdim=True)

    # --- bigrams ------------------------------------------------------------------
    def valid_bigrams(self) -> torch.Tensor:
        r"""(K, K) bool: bigram (a, b) can occur, i.e. some reachable hidden state
        h emits a and a successor h' (T_{hh'} > 0) emits b. "Reachable" means
        positive probability at some position from ``initial``."""
        H = self.n_hidden
        reach = self.initial > 0
        step = self.transition > 0
        for _ in range(H):
            reach = reach | ((reach.double() @ step.double()) > 0)
        emit = (self.emission > 0) & reach[:, None]
        pair = emit.double().T @ step.double() @ (self.emission > 0).double()
        return pair > 0

    def invalid_bigrams(self) -> torch.Tensor:
        """(n, 2) int64 list of the bigrams (a, b) that can never occur."""
        return torch.nonzero(~self.valid_bigrams())

    def invalid_bigram_rate(self, tokens) -> float:
        """Fraction of adjacent token pairs in (B, L) tokens (L >= 2) that are
        impossible bigrams of this HMM."""
        tokens = _tokens(tokens, "tokens", self.vocab_size)
        if tokens.shape[1] < 2:
            raise ValueError(
                f"tokens must have length L >= 2 to hold bigrams; got shape "
                f"{tuple(tokens.shape)}"
            )
        ok = self.valid_bigrams()[tokens[:, :-1], tokens[:, 1:]]
        return float((~ok).double().mean())

    # --- entropy --------------------------------------------------------------------
    def entropy(
        self, length: int, n: int = 4096, generator: torch.Generator | None = None
    ) -> tuple[float, float]:
        r"""Monte Carlo estimate of the per-token entropy $H(X_{1:L})/L$ of this HMM's
        length-``length`` sequences (nats/token), with its standard error:
        the mean of $-\log p(x)/L$ over ``n`` exact samples (exact likelihoods, so
        the only error is Monte Carlo). This is the floor of any model's NLL per
        token on such sequences. Returns (estimate, standard error)."""
        L = C.positive_int(length, "length")
        n = C.positive_int(n, "n", minimum=2)
        x, _ = self.sample(n, L, generator)
        nll = -self.log_prob(x) / L
        return float(nll.mean()), float(nll.std() / math.sqrt(n))

    def entropy_rate(
        self,
        n: int = 256,
        length: int = 512,
        burn_in: int = 64,
        generator: torch.Generator | None = None,
    ) -> tuple[float, float]:
        r"""The entropy rate $\bar H = \lim_L H(X_{1:L})/L$ in nats/token, with a
        standard error. Returns (value, standard error).

        *Exact* (standard error 0.0) when every token is emitted by one hidden state
        only (disjoint emission supports: the hidden path is a function of the
        tokens), where $\bar H = \sum_h\mu_h[H(T_{h\cdot}) + \sum_{h'}T_{hh'}
        H(E_{h'\cdot})]$ with $\mu$ the stationary law. Otherwise *estimated* by the
        Shannon-McMillan-Breiman limit: ``n`` sequences of ``length`` tokens started
        from the stationary law, the conditional log-losses
        $-\log p(x_\ell\mid x_{<\ell})$ averaged over positions after ``burn_in``;
        the error bar is the standard error across the independent sequences (it
        ignores the bias of a finite ``burn_in``, which decays geometrically with the
        chain's forgetting rate)."""
        n = C.positive_int(n, "n", minimum=2)
        L = C.positive_int(length, "length")
        burn = C.positive_int(burn_in, "burn_in", minimum=0, maximum=L - 1)
        C.generator(generator)
        mu = self.stationary()
        if bool(((self.emission > 0).sum(0) <= 1).all()):
            hT = _row_entropy(self.transition)
            hE = _row_entropy(self.emission)
            return float((mu * (hT + self.transition @ hE)).sum()), 0.0
        stat = HMM(mu, self.transition, self.emission)
        x, _ = stat.sample(n, L, generator)
        _, _, log_c = stat._forward_backward(self._one_hot(x))
        per_seq = -log_c[:, burn:].mean(-1)
        return float(per_seq.mean()), float(per_seq.std() / math.sqrt(n))

    # --- enumeration ------------------------------------------------------------------
    def enumerate_joint(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every sequence of ``length`` tokens and its exact log-probability by
        brute-force summation over all hidden paths: (tokens (K**L, L) int64 in
        lexicographic order, log_probs (K**L,) float64). For tests and tiny cases:
        K**L * H**L must be at most 2**22."""
        L = C.positive_int(length, "length")
        K, H = self.vocab_size, self.n_hidden
        if (K * H) ** L > _ENUMERATE_MAX:
            raise ValueError(
                f"length is too large to enumerate: (K*H)**L = ({K}*{H})**{L} must "
                f"be <= {_ENUMERATE_MAX}"
            )
        tokens = torch.cartesian_prod(*[torch.arange(K)] * L).reshape(-1, L)
        paths = torch.cartesian_prod(*[torch.arange(H)] * L).reshape(-1, L)
        # p(path) (P,) and p(x | path) (N, P) as a product over positions
        p_path = self.initial[paths[:, 0]]
        for ell in range(1, L):
            p_path = p_path * self.transition[paths[:, ell - 1], paths[:, ell]]
        p_x = torch.zeros(len(tokens), dtype=_F64)
        for chunk in torch.split(torch.arange(len(paths)), max(1, 2**18 // K**L)):
            pr = p_path[chunk][None, :].expand(len(tokens), -1)
            for ell in range(L):
                pr = pr * self.emission[paths[chunk, ell]][:, tokens[:, ell]].T
            p_x = p_x + pr.sum(-1)
        return tokens, p_x.log()


def _row_entropy(P: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of a stochastic matrix, 0 log 0 = 0."""
    logs = torch.where(P > 0, P.log(), torch.zeros_like(P))
    return -(P * logs).sum(-1)


def _stationary(T: torch.Tensor) -> torch.Tensor:
    """A stationary law of the row-stochastic T: the left eigenvector for the
    eigenvalue closest to 1 when it is one-signed and stationary to 1e-10 (always, for
    an irreducible chain); otherwise the Cesaro average of u T^k, k < 4096, from the
    uniform law u (a stationary law of every chain, to O(1/4096))."""
    vals, vecs = torch.linalg.eig(T.T)
    k = int(torch.argmin((vals - 1).abs()))
    v = vecs[:, k].real
    v = v * torch.sign(v.sum())
    if bool((v >= -1e-12).all()) and float(v.sum()) > 0:
        mu = v.clamp_min(0) / v.clamp_min(0).sum()
        if float((mu @ T - mu).abs().max()) < 1e-10:
            return mu
    p = torch.full((len(T),), 1.0 / len(T), dtype=_F64)
    total = torch.zeros_like(p)
    for _ in range(4096):
        total += p
        p = p @ T
    return total / total.sum()
