"""Unit tests of dlib.discrete.oracle (the HMM oracle) and the Part III data
generators of dlib.data, against brute-force enumeration and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dlib import data
from dlib.discrete.oracle import HMM, absorbing_likelihood, uniform_likelihood

F64 = torch.float64


def random_hmm(H: int, K: int, seed: int, zeros: bool = False) -> HMM:
    rng = np.random.default_rng(seed)
    init = rng.dirichlet(np.ones(H))
    T = rng.dirichlet(np.ones(H), size=H)
    E = rng.dirichlet(np.ones(K), size=H)
    if zeros:  # some impossible transitions and emissions
        T[0, : H - 1] = 0.0  # state 0 always moves to state H - 1: "0 0" impossible
        E[:, 0] = 0.0
        E[0, 0] = 1.0
        T /= T.sum(1, keepdims=True)
        E /= E.sum(1, keepdims=True)
    return HMM(torch.tensor(init), torch.tensor(T), torch.tensor(E))


def brute_paths(hmm: HMM, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All hidden paths of one sequence and their joint probabilities p(h, x)."""
    L, H = len(tokens), hmm.n_hidden
    paths = torch.cartesian_prod(*[torch.arange(H)] * L).reshape(-1, L)
    p = hmm.initial[paths[:, 0]] * hmm.emission[paths[:, 0], tokens[0]]
    for ell in range(1, L):
        p = p * hmm.transition[paths[:, ell - 1], paths[:, ell]]
        p = p * hmm.emission[paths[:, ell], tokens[ell]]
    return paths, p


def enumerated_posterior(hmm, L, evidence):
    """p(x0^l = y | e) for one evidence (L, K) by summing over all K**L sequences."""
    xs, logp = hmm.enumerate_joint(L)
    w = logp.exp()
    for ell in range(L):
        w = w * evidence[ell, xs[:, ell]]
    post = torch.zeros(L, hmm.vocab_size, dtype=F64)
    for ell in range(L):
        post[ell].index_add_(0, xs[:, ell], w)
    return post / w.sum(), w.sum().log()


@pytest.mark.parametrize("seed,zeros", [(0, False), (1, True), (2, False)])
def test_forward_algorithm_matches_enumeration(seed, zeros):
    hmm = random_hmm(3, 3, seed, zeros)
    xs, logp = hmm.enumerate_joint(5)
    assert xs.shape == (3**5, 5)
    torch.testing.assert_close(logp.exp().sum(), torch.tensor(1.0, dtype=F64))
    lp = hmm.log_prob(xs)
    finite = torch.isfinite(logp)
    assert torch.equal(finite, torch.isfinite(lp))
    torch.testing.assert_close(lp[finite], logp[finite], rtol=0, atol=1e-12)
    assert torch.equal(hmm.is_valid(xs), finite)
    if zeros:
        assert not bool(finite.all())


@pytest.mark.parametrize("seed", [0, 3])
def test_hidden_posterior_matches_brute_force(seed):
    hmm = random_hmm(3, 4, seed)
    x, _ = hmm.sample(4, 5, torch.Generator().manual_seed(seed))
    post = hmm.hidden_posterior(x)
    for b in range(len(x)):
        paths, p = brute_paths(hmm, x[b])
        for ell in range(5):
            exact = torch.zeros(3, dtype=F64).index_add_(0, paths[:, ell], p) / p.sum()
            torch.testing.assert_close(post[b, ell], exact, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["absorbing", "uniform", "random"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9])
def test_clean_token_posterior_matches_enumeration(kind, alpha):
    K, L = 3, 4
    hmm = random_hmm(2, K, 7, zeros=True)
    gen = torch.Generator().manual_seed(11)
    if kind == "absorbing":
        lik = absorbing_likelihood(K, alpha)
    elif kind == "uniform":
        lik = uniform_likelihood(K, alpha)
    else:
        lik = torch.rand(K, 5, generator=gen, dtype=F64)
    # corrupted sequences drawn from the model itself, so p(x_t) > 0
    x0, _ = hmm.sample(6, L, gen)
    u = torch.rand(6, L, lik.shape[1], generator=gen, dtype=F64)
    x_t = torch.argmax(lik[x0].log() - torch.log(-torch.log(u)), dim=-1)
    post = hmm.posterior(x_t, lik)
    logz = hmm.log_evidence(x_t, lik)
    for b in range(6):
        exact, log_ev = enumerated_posterior(hmm, L, lik.T[x_t[b]])
        torch.testing.assert_close(post[b], exact, rtol=0, atol=1e-12)
        torch.testing.assert_close(logz[b], log_ev, rtol=0, atol=1e-12)
    if kind == "absorbing":  # unmasked positions are copied exactly
        kept = x_t < K
        assert torch.equal(post[kept].argmax(-1), x_t[kept])
        torch.testing.assert_close(
            post[kept].max(-1).values, torch.ones(int(kept.sum()), dtype=F64)
        )


@pytest.mark.parametrize("make", [absorbing_likelihood, uniform_likelihood])
def test_per_sequence_likelihoods_match_one_at_a_time(make):
    hmm = HMM.language()
    gen = torch.Generator().manual_seed(0)
    x0, _ = hmm.sample(4, 10, gen)
    alpha = torch.tensor([0.0, 0.2, 0.7, 1.0], dtype=F64)
    lik = make(24, alpha)
    assert lik.shape[0] == 4
    M = lik.shape[-1]
    keep = torch.rand(4, 10, generator=gen) < alpha[:, None]
    x_t = torch.where(keep, x0, torch.full_like(x0, M - 1))
    post, logz = hmm.posterior(x_t, lik), hmm.log_evidence(x_t, lik)
    for b in range(4):
        one = make(24, float(alpha[b]))
        torch.testing.assert_close(one, lik[b], rtol=0, atol=0)
        torch.testing.assert_close(post[b], hmm.posterior(x_t[b : b + 1], one)[0])
        torch.testing.assert_close(logz[b], hmm.log_evidence(x_t[b : b + 1], one)[0])


def test_posterior_from_evidence_matches_enumeration():
    hmm = random_hmm(3, 3, 5)
    ev = torch.rand(2, 4, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    post = hmm.posterior_from_evidence(ev)
    for b in range(2):
        torch.testing.assert_close(
            post[b], enumerated_posterior(hmm, 4, ev[b])[0], rtol=0, atol=1e-12
        )
    # one-hot evidence gives a point mass, and the all-ones evidence the prior marginal
    ones = hmm.posterior_from_evidence(torch.ones(1, 4, 3, dtype=F64))[0]
    xs, logp = hmm.enumerate_joint(4)
    for ell in range(4):
        marg = torch.zeros(3, dtype=F64).index_add_(0, xs[:, ell], logp.exp())
        torch.testing.assert_close(ones[ell], marg, rtol=0, atol=1e-12)


def test_fully_masked_posterior_is_the_prior_marginal():
    hmm = HMM.language()
    x_t = torch.full((1, 8), 24)
    post = hmm.posterior(x_t, absorbing_likelihood(24, 0.0))[0]
    marg = hmm.stationary() @ hmm.emission  # the language starts stationary
    torch.testing.assert_close(post, marg.expand(8, -1), rtol=0, atol=1e-12)


def test_impossible_evidence_raises():
    hmm = random_hmm(2, 3, 1, zeros=True)
    with pytest.raises(ValueError, match="probability zero"):
        hmm.posterior_from_evidence(torch.zeros(1, 3, 3, dtype=F64))
    assert (
        hmm.log_evidence(torch.zeros(1, 3, dtype=torch.long), torch.zeros(3, 2)).item()
        == -math.inf
    )


def test_samples_follow_the_enumerated_law():
    hmm = random_hmm(2, 2, 4)
    n = 40_000
    x, h = hmm.sample(n, 3, torch.Generator().manual_seed(0))
    x2, h2 = hmm.sample(n, 3, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(h, h2)  # seeded
    xs, logp = hmm.enumerate_joint(3)
    codes = x[:, 0] * 4 + x[:, 1] * 2 + x[:, 2]  # lexicographic index of xs
    counts = torch.bincount(codes, minlength=8).double()
    expected = n * logp.exp()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 29.9  # chi-square with 7 degrees of freedom: P(> 29.9) ~ 1e-4
    # hidden states emitted the tokens: every (h, x) pair has positive emission
    assert bool((hmm.emission[h, x] > 0).all())


def test_entropy_rate_exact_cases():
    # i.i.d. tokens (one hidden state): the entropy of the emission law
    p = torch.tensor([[0.5, 0.25, 0.25]], dtype=F64)
    iid = HMM(torch.ones(1, dtype=F64), torch.ones(1, 1, dtype=F64), p)
    assert iid.entropy_rate() == (pytest.approx(1.5 * math.log(2), abs=1e-12), 0.0)
    # a deterministic cycle with one-to-one emissions: entropy rate 0
    cyc = HMM(
        torch.tensor([1.0, 0, 0], dtype=F64),
        torch.roll(torch.eye(3, dtype=F64), 1, dims=1),
        torch.eye(3, dtype=F64),
    )
    assert cyc.entropy_rate() == (0.0, 0.0)
    assert cyc.entropy(6, n=16) == (0.0, 0.0)


def test_entropy_rate_monte_carlo_matches_exact_value():
    # overlapping emissions (Monte Carlo branch) but i.i.d. hidden states: the tokens
    # are i.i.d. with law mu @ E, so the entropy rate is H(mu @ E) exactly
    mu = torch.tensor([0.3, 0.7], dtype=F64)
    E = torch.tensor([[0.6, 0.4, 0.0], [0.1, 0.3, 0.6]], dtype=F64)
    hmm = HMM(mu, mu.expand(2, 2), E)
    q = mu @ E
    exact = float(-(q * q.log()).sum())
    est, se = hmm.entropy_rate(
        n=64, length=256, generator=torch.Generator().manual_seed(0)
    )
    assert se > 0 and abs(est - exact) < 5 * se


def test_entropy_rate_lies_between_the_exact_cover_thomas_bounds():
    # for a stationary HMM, H(X_n | X_<n, H_1) <= entropy rate <= H(X_n | X_<n)
    # (Cover & Thomas, Thm 4.5.1); both sides by enumeration, n = 8
    hmm = random_hmm(2, 2, 6)
    mu = hmm.stationary()

    def block(init, n):
        _, logp = HMM(init, hmm.transition, hmm.emission).enumerate_joint(n)
        p = logp.exp()
        return float(-(p * torch.where(p > 0, logp, 0.0)).sum())

    upper = block(mu, 8) - block(mu, 7)
    lower = sum(
        float(mu[h])
        * (block(torch.eye(2, dtype=F64)[h], 8) - block(torch.eye(2, dtype=F64)[h], 7))
        for h in range(2)
    )
    assert lower <= upper
    est, se = hmm.entropy_rate(generator=torch.Generator().manual_seed(0))
    assert se > 0 and lower - 5 * se < est < upper + 5 * se


def test_block_entropy_estimate_matches_enumeration():
    hmm = random_hmm(3, 3, 9)
    xs, logp = hmm.enumerate_joint(5)
    p = logp.exp()
    exact = float(-(p * logp).sum()) / 5
    est, se = hmm.entropy(5, n=4000, generator=torch.Generator().manual_seed(1))
    assert abs(est - exact) < 5 * se


def test_language_is_seeded_and_has_invalid_bigrams():
    a, b, c = HMM.language(), HMM.language(), HMM.language(seed=1)
    assert torch.equal(a.transition, b.transition) and torch.equal(
        a.emission, b.emission
    )
    assert not torch.equal(a.transition, c.transition)
    assert (a.n_hidden, a.vocab_size) == (6, 24)
    torch.testing.assert_close(a.initial @ a.transition, a.initial)  # stationary start
    valid = a.valid_bigrams()
    assert 0 < len(a.invalid_bigrams()) == int((~valid).sum()) < 24 * 24
    x, _ = a.sample(256, 32, torch.Generator().manual_seed(0))
    assert a.invalid_bigram_rate(x) == 0.0 and bool(a.is_valid(x).all())
    # uniform random tokens hit invalid bigrams at about the invalid fraction
    r = torch.randint(24, (256, 32), generator=torch.Generator().manual_seed(0))
    assert a.invalid_bigram_rate(r) > 0.5 * float((~valid).double().mean())


def test_valid_bigrams_match_enumeration():
    hmm = random_hmm(3, 4, 2, zeros=True)
    xs, logp = hmm.enumerate_joint(2)
    stat = HMM(hmm.stationary(), hmm.transition, hmm.emission)  # full-support start
    possible = torch.isfinite(stat.log_prob(xs)).reshape(4, 4)
    assert torch.equal(stat.valid_bigrams(), possible)


@pytest.mark.parametrize(
    "T",
    [
        [[0.9, 0.1, 0.0], [0.2, 0.0, 0.8], [0.5, 0.5, 0.0]],  # irreducible
        [[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]],  # periodic
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]],  # reducible
    ],
)
def test_stationary_law(T):
    T = torch.tensor(T, dtype=F64)
    mu = HMM(torch.ones(3, dtype=F64) / 3, T, torch.eye(3, dtype=F64)).stationary()
    assert bool((mu >= 0).all()) and abs(float(mu.sum()) - 1) < 1e-12
    torch.testing.assert_close(mu @ T, mu, rtol=0, atol=1e-12)


def test_likelihood_matrices():
    lik = absorbing_likelihood(3, 0.25)
    assert lik.shape == (3, 4)
    torch.testing.assert_close(lik.sum(1), torch.ones(3, dtype=F64))
    assert lik[1, 1] == 0.25 and lik[1, 3] == 0.75 and lik[1, 0] == 0
    u = uniform_likelihood(4, 0.2)
    torch.testing.assert_close(u.sum(1), torch.ones(4, dtype=F64))
    assert u[0, 0] == pytest.approx(0.2 + 0.8 / 4) and u[0, 1] == pytest.approx(0.2)


def test_bad_hmm_input():
    with pytest.raises(ValueError, match="transition"):
        HMM(torch.ones(2) / 2, torch.ones(2, 2), torch.ones(2, 3) / 3)
    with pytest.raises(ValueError, match="emission"):
        HMM(torch.ones(2) / 2, torch.eye(2), torch.ones(3, 3) / 3)
    hmm = HMM.language()
    with pytest.raises(ValueError, match="tokens"):
        hmm.log_prob(torch.full((2, 3), 24))
    with pytest.raises(ValueError, match="x_t"):
        hmm.posterior(torch.full((2, 3), 26), absorbing_likelihood(24, 0.5))
    with pytest.raises(ValueError, match="likelihood"):
        hmm.posterior(torch.zeros(2, 3, dtype=torch.long), torch.ones(23, 25))
    with pytest.raises(ValueError, match="length"):
        hmm.enumerate_joint(8)


# --- data generators ------------------------------------------------------------------


def test_hmm_language_is_deterministic():
    a, b = data.hmm_language(64, 16, seed=3), data.hmm_language(64, 16, seed=3)
    assert torch.equal(a, b) and a.shape == (64, 16) and a.dtype == torch.int64
    assert not torch.equal(a, data.hmm_language(64, 16, seed=4))
    assert HMM.language().invalid_bigram_rate(a) == 0.0


def test_words_are_dictionary_words():
    train, test = data.words("train"), data.words("test")
    assert torch.equal(train, data.words("train"))  # deterministic
    assert train.shape[1] == 12 and train.dtype == torch.int64
    tr, te = data.decode_words(train), data.decode_words(test)
    assert set(tr).isdisjoint(te)
    assert sorted(tr + te) == data.word_list()
    assert bool(data.is_word(tr[:500] + te[:500]).all())
    assert all(3 <= len(w) <= 12 for w in tr)
    assert len(te) == round(0.1 * len(data.word_list()))
    assert not bool(data.is_word(["qzxv", "ab_c", ""]).any())
    assert data.decode_words(torch.tensor([[7, 4, 11, 11, 14, 26, 26]])) == ["hello"]
    assert data.decode_words(torch.tensor([[0, 26, 1]])) == ["a_b"]


def test_digit_tokens_round_trip():
    tok, y, cb = data.digit_tokens("train")
    tok2, _, cb2 = data.digit_tokens("train")
    assert torch.equal(tok, tok2) and torch.equal(cb, cb2)  # deterministic
    assert tok.shape == (len(y), 16) and cb.shape == (32, 4) and int(tok.max()) < 32
    x, _ = data.digits("train", test_fraction=0.2)
    img = data.to_images(x)
    rec = data.patch_decode(tok, cb)
    # nearest-code encoding: no other code is closer to any patch
    patches = img.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)
    d = ((patches[:, :, None, :] - cb[None, None]) ** 2).sum(-1)
    chosen = d.gather(-1, tok[..., None])[..., 0]
    assert bool((chosen <= d.min(-1).values + 1e-6).all())
    # decoding the codes and re-encoding them gives the same tokens
    assert torch.equal(data.patch_encode(rec, cb), tok)
    # a one-code codebook (the mean patch) has error = the patch variance; 32 k-means
    # codes must do better; the 0.1 factor is a regression guard (measured 0.06)
    mse = float(((rec - img) ** 2).mean())
    var = float(patches.reshape(-1, 4).var(0, unbiased=False).mean())
    assert mse < var and mse < 0.1 * var
    # the test split is encoded with the train codebook
    tok_te, y_te, cb_te = data.digit_tokens("test")
    assert torch.equal(cb_te, cb) and len(tok_te) + len(tok) == 1797
