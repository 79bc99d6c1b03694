"""dlib.discrete process, losses and samplers against closed forms: the matrix
exponential (scipy), Bayes rule by enumeration, an enumerated joint distribution over
L = 3 tokens with K = 3 (exact likelihood, exact clean-token posterior, exact concrete
score)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from dlib import discrete as D
from dlib.sampling import time_grid

F64 = torch.float64
K, L = 3, 3
SCHEDULES = [D.LinearKeep(), D.LinearKeep(1e-3), D.CosineKeep(), D.GeometricKeep()]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def random_Q(n, seed=0):
    rng = np.random.default_rng(seed)
    Q = rng.uniform(0.1, 1.0, (n, n))
    np.fill_diagonal(Q, 0.0)
    np.fill_diagonal(Q, -Q.sum(1))
    return Q


def processes():
    return [
        D.DiscreteProcess.uniform(K, D.LinearKeep(1e-3)),
        D.DiscreteProcess.absorbing(K, D.CosineKeep()),
        D.DiscreteProcess(random_Q(K), D.GeometricKeep(1e-2, 3.0)),
    ]


def expm(process, s, t):
    sch = process.schedule
    tau = float(sch.sigma_bar(t) - sch.sigma_bar(s))
    return scipy.linalg.expm(tau * process.Q.numpy())


# --- an enumerated joint distribution and its exact oracle ----------------------------
SEQS = torch.tensor(list(itertools.product(range(K), repeat=L)))  # (27, L)


def joint(seed=0):
    """A strongly correlated law over the K^L sequences (a few heavy ones)."""
    g = torch.Generator().manual_seed(seed)
    logits = 3.0 * torch.randn(len(SEQS), generator=g, dtype=F64)
    return torch.softmax(logits, 0)


P = joint()


def posterior_weights(process, x_t, t):
    """p(x0 = seq | x_t) for every sequence, (B, 27): Bayes rule with the factorised
    likelihood prod_l q_t(x_t^l | seq^l)."""
    Dm = process._matrix(torch.tensor(0.0, dtype=F64), torch.tensor(t, dtype=F64))
    lik = Dm[SEQS[None, :, :], x_t[:, None, :]].prod(-1)  # (B, 27)
    w = P[None] * lik
    return w / w.sum(-1, keepdim=True)


def exact_denoiser(process):
    def fn(x_t, t):
        w = posterior_weights(process, x_t, float(t[0]))
        onehot = torch.nn.functional.one_hot(SEQS, K).to(F64)  # (27, L, K)
        probs = torch.einsum("bs,slk->blk", w, onehot)
        return torch.log(probs.clamp(min=1e-300))

    return D.CategoricalDenoiser(fn, process)


def nll(seq_index):
    return -math.log(float(P[seq_index]))


# --- schedules ------------------------------------------------------------------------
@pytest.mark.parametrize("sch", SCHEDULES, ids=repr)
def test_schedule_derivative_and_identities(sch):
    t = torch.linspace(0.05, 0.95, 19, dtype=F64)
    h = 1e-6
    fd = (sch.alpha(t + h) - sch.alpha(t - h)) / (2 * h)
    assert torch.allclose(sch.d_alpha(t), fd, rtol=1e-6, atol=1e-9)
    assert torch.allclose(sch.sigma_bar(t), -torch.log(sch.alpha(t)))
    assert torch.allclose(sch.rate(t), -sch.d_alpha(t) / sch.alpha(t))
    # the book's identity: ELBO weight = alpha_t (-d lambda/dt)
    dlam = (sch.log_snr(t + h) - sch.log_snr(t - h)) / (2 * h)
    assert torch.allclose(sch.elbo_weight(t), sch.alpha(t) * -dlam, rtol=1e-5)
    assert bool((sch.d_alpha(t) < 0).all())


def test_linear_schedule_ends_and_weight():
    sch = D.LinearKeep()
    assert float(sch.alpha(0.0)) == 1.0 and float(sch.alpha(1.0)) == 0.0
    t = torch.tensor([0.1, 0.5], dtype=F64)
    assert torch.allclose(sch.elbo_weight(t), 1 / t)
    assert float(D.CosineKeep().alpha(1.0)) == 0.0


# --- marginals and transitions = matrix exponential -----------------------------------
@pytest.mark.parametrize("index", range(3), ids=["uniform", "absorbing", "general"])
def test_transition_and_marginal_are_the_matrix_exponential(index):
    process = processes()[index]
    for s, t in [(0.0, 0.3), (0.2, 0.7), (0.5, 0.95), (0.0, 0.0)]:
        ref = expm(process, s, t)
        got = process.transition(s, t).numpy()
        assert np.abs(got - ref).max() < 1e-12
    x0 = torch.tensor([[0, 1, 2], [2, 2, 0]])
    t = torch.tensor([0.4, 0.8], dtype=F64)
    m = process.marginal(x0, t)
    for b in range(2):
        ref = expm(process, 0.0, float(t[b]))[x0[b].numpy()]
        assert np.abs(m[b].numpy() - ref).max() < 1e-12
    assert torch.allclose(m.sum(-1), torch.ones(2, 3, dtype=F64))


def test_uniform_and_absorbing_closed_forms():
    sch = D.LinearKeep()
    a = float(sch.alpha(0.6))
    u = D.DiscreteProcess.uniform(4, sch).marginal(torch.tensor([[1]]), 0.6)[0, 0]
    assert torch.allclose(u, a * torch.eye(4, dtype=F64)[1] + (1 - a) / 4)
    ab = D.DiscreteProcess.absorbing(4, sch)
    assert ab.mask_index == 4 and ab.n_states == 5
    m = ab.marginal(torch.tensor([[1]]), 0.6)[0, 0]
    assert torch.allclose(m, torch.tensor([0, a, 0, 0, 1 - a], dtype=F64))
    # fully masked at t = 1 and the prior is the mask
    assert torch.equal(ab.prior(2), torch.tensor([[0, 0, 0, 0, 1.0]] * 2, dtype=F64))


def test_sample_xt_frequencies_match_the_marginal():
    process = processes()[2]
    x0 = torch.zeros(40000, 1, dtype=torch.int64)
    xt = process.sample_xt(x0, 0.5, gen(1))
    freq = torch.bincount(xt.flatten(), minlength=K).to(F64) / x0.numel()
    p = process.marginal(x0[:1], 0.5)[0, 0]
    se = torch.sqrt(p * (1 - p) / x0.numel())
    assert bool(((freq - p).abs() < 5 * se).all()), (freq, p)


def test_sample_categorical_is_seeded_and_unbiased():
    probs = torch.tensor([0.1, 0.6, 0.3], dtype=F64).expand(30000, 3)
    a = D.sample_categorical(probs, gen(3))
    b = D.sample_categorical(torch.log(probs), gen(3), log=True)
    assert torch.equal(a, b)
    freq = torch.bincount(a, minlength=3).to(F64) / len(a)
    se = torch.sqrt(probs[0] * (1 - probs[0]) / len(a))
    assert bool(((freq - probs[0]).abs() < 5 * se).all())
    with pytest.raises(ValueError, match="probs"):
        D.sample_categorical(-probs)


# --- posterior = Bayes rule by enumeration --------------------------------------------
@pytest.mark.parametrize("index", range(3), ids=["uniform", "absorbing", "general"])
def test_posterior_is_bayes_rule(index):
    process = processes()[index]
    n = process.n_states
    s, t = 0.3, 0.7
    A, Bm, Dm = expm(process, 0, s), expm(process, s, t), expm(process, 0, t)
    g = gen(index)
    x_t = torch.arange(n)[None].expand(2, n).contiguous()
    w = torch.softmax(torch.randn(2, n, K, generator=g, dtype=F64), -1)
    got = process.posterior(x_t, w, s, t).numpy()
    for b, j in itertools.product(range(2), range(n)):
        wk = w[b, j].numpy()
        # q(x_s = i | x_t = j, x0 = k) = A[k, i] B[i, j] / D[k, j], mixed over the x0
        # that can produce x_t = j, with the weights renormalised over those
        ok = Dm[:K, j] > 0
        wk = np.where(ok, wk, 0.0)
        wk = wk / wk.sum()
        ref = sum(
            wk[k] * A[k, :] * Bm[:, j] / Dm[k, j] for k in range(K) if ok[k]
        )
        assert np.abs(got[b, j] - ref).max() < 1e-10, (b, j)
        assert abs(got[b, j].sum() - 1) < 1e-10


def test_absorbing_posterior_closed_form_and_carry_over():
    sch = D.LinearKeep()
    p = D.DiscreteProcess.absorbing(K, sch)
    s, t = 0.25, 0.75
    a_s, a_t = float(sch.alpha(s)), float(sch.alpha(t))
    w = torch.tensor([[[0.2, 0.5, 0.3], [0.2, 0.5, 0.3]]], dtype=F64)
    post = p.posterior(torch.tensor([[K, 1]]), w, s, t)[0]
    ref = torch.tensor([0.2, 0.5, 0.3, 0.0], dtype=F64) * (a_s - a_t) / (1 - a_t)
    ref[K] = (1 - a_s) / (1 - a_t)
    assert torch.allclose(post[0], ref)
    assert torch.equal(post[1], torch.tensor([0, 1.0, 0, 0], dtype=F64))


# --- concrete score = ratio of exact marginals ----------------------------------------
@pytest.mark.parametrize("index", range(3), ids=["uniform", "absorbing", "general"])
def test_concrete_score_is_the_ratio_of_exact_marginals(index):
    process = processes()[index]
    n, t = process.n_states, 0.625  # exact in float32 (the time fn receives)
    Dm = torch.as_tensor(expm(process, 0, t))
    states = torch.tensor(list(itertools.product(range(n), repeat=L)))
    p_t = (P[None] * Dm[SEQS[None], states[:, None]].prod(-1)).sum(-1)  # (n^L,)
    index_of = {tuple(s.tolist()): i for i, s in enumerate(states)}
    den = exact_denoiser(process)
    x_t = states[p_t > 1e-12][:40]
    got = den.concrete_score(x_t, t)
    for b, x in enumerate(x_t.tolist()):
        for pos, y in itertools.product(range(L), range(n)):
            if process.Q[y, x[pos]] == 0 and y != x[pos]:
                continue  # no reverse jump uses this entry (see score_from_x0)
            z = list(x)
            z[pos] = y
            ref = p_t[index_of[tuple(z)]] / p_t[index_of[tuple(x)]]
            assert abs(float(got[b, pos, y]) - float(ref)) < 1e-9 * (1 + float(ref))


def test_absorbing_score_and_x0_kinds_convert_into_each_other():
    sch = D.LinearKeep()
    p = D.DiscreteProcess.absorbing(K, sch)
    x0den = exact_denoiser(p)
    t = 0.375
    rho = float(sch.alpha(t) / (1 - sch.alpha(t)))

    def score_fn(x_t, tt):
        probs = x0den._x0_probs(x_t, float(tt[0]))
        s = torch.nn.functional.pad(rho * probs, (0, 1), value=1.0)
        return torch.log(s.clamp(min=1e-300))

    sden = D.CategoricalDenoiser(score_fn, p, "concrete_score")
    x_t = torch.tensor([[K, 0, K], [K, K, K], [1, K, 2]])
    masked = (x_t == K)[..., None]
    got = x0den.concrete_score(x_t, t)
    ref = sden.concrete_score(x_t, t)
    assert torch.allclose(torch.where(masked, got, 0.0), torch.where(masked, ref, 0.0))
    assert torch.allclose(sden.x0_probs(x_t, t), x0den.x0_probs(x_t, t))
    # SUBS: unmasked positions are copied
    assert torch.equal(x0den.x0_probs(x_t, t)[2, 0], torch.tensor([0, 1.0, 0],
                                                                  dtype=F64))


# --- the masked ELBO ------------------------------------------------------------------
def exact_masked_elbo(den, seq_index, n_nodes=12):
    """The continuous-time masked ELBO of one sequence: all 2^L mask patterns
    enumerated, Gauss-Legendre in t (the integrand is a polynomial in t for the linear
    schedule; smooth otherwise)."""
    p = den.process
    x0 = SEQS[seq_index][None]
    nodes, weights = np.polynomial.legendre.leggauss(n_nodes)
    total = 0.0
    for u, wq in zip(nodes, weights):
        t = 0.5 * (u + 1)
        a = float(p.schedule.alpha(t))
        for pattern in itertools.product([0, 1], repeat=L):
            m = torch.tensor(pattern, dtype=torch.bool)[None]
            prob = math.prod(1 - a if b else a for b in pattern)
            x_t = torch.where(m, K, x0)
            total += 0.5 * wq * prob * float(D.masked_elbo_loss(den, x0, t, x_t=x_t))
    return total


def test_masked_elbo_of_the_exact_posterior_is_the_nll():
    """With the exact p(x0^l | x_t) the reverse CTMC is the true one, so the
    continuous-time bound is tight: ELBO = -log p(x0) for every sequence."""
    den = exact_denoiser(D.DiscreteProcess.absorbing(K, D.LinearKeep()))
    for i in [int(P.argmax()), int(P.argmin()), 5]:
        assert abs(exact_masked_elbo(den, i) - nll(i)) < 1e-9 * (1 + nll(i)), i


def test_masked_elbo_is_schedule_invariant_for_a_time_free_model():
    def fn(x_t, t):  # a fixed (wrong) model that ignores t
        g = torch.Generator().manual_seed(int(x_t.sum()) + 7 * int(x_t[:, 0].sum()))
        return torch.randn(x_t.shape + (K,), generator=g, dtype=F64)

    lin = D.CategoricalDenoiser(fn, D.DiscreteProcess.absorbing(K, D.LinearKeep()))
    cos = D.CategoricalDenoiser(fn, D.DiscreteProcess.absorbing(K, D.CosineKeep()))
    i = int(P.argmax())
    a, b = exact_masked_elbo(lin, i), exact_masked_elbo(cos, i, n_nodes=40)
    assert a > nll(i)  # a wrong model: the bound is strict
    assert abs(a - b) < 1e-6 * a, (a, b)


def test_monte_carlo_masked_elbo_with_antithetic_times():
    den = exact_denoiser(D.DiscreteProcess.absorbing(K, D.LinearKeep()))
    i = int(P.argmax())
    n = 4000
    x0 = SEQS[i][None].expand(n, L).contiguous()
    t = D.antithetic_times(n, gen(5), t_min=0.0)
    est = D.masked_elbo_loss(den, x0, t, generator=gen(6))
    se = float(est.std()) / math.sqrt(n)  # conservative for stratified times
    assert abs(float(est.mean()) - nll(i)) < 4 * se + 1e-9
    assert den.nfe == 1  # one evaluation with the (B,) times


def test_score_entropy_equals_the_masked_elbo_for_the_absorbing_chain():
    den = exact_denoiser(D.DiscreteProcess.absorbing(K, D.LinearKeep()))
    x0 = SEQS[torch.multinomial(P, 64, True, generator=gen(2))]
    t = D.antithetic_times(64, gen(3))
    a = D.masked_elbo_loss(den, x0, t, generator=gen(4))
    b = D.score_entropy_loss(den, x0, t, generator=gen(4))
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_score_entropy_is_nonnegative_and_zero_at_the_truth_for_one_token():
    """With one token the exact concrete score equals the denoising ratio in
    expectation; for a point mass x0 the exact score is the denoising ratio itself, so
    the score entropy is 0."""
    p = D.DiscreteProcess.uniform(K, D.LinearKeep(1e-3))

    def fn(x_t, t):  # p(x0 = 1) = 1
        out = torch.full(x_t.shape + (K,), -1e9, dtype=F64)
        out[..., 1] = 0.0
        return out

    den = D.CategoricalDenoiser(fn, p)
    x0 = torch.ones(50, 1, dtype=torch.int64)
    v = D.score_entropy_loss(den, x0, 0.5, generator=gen(0))
    assert float(v.abs().max()) < 1e-12
    wrong = D.CategoricalDenoiser(lambda x, t: torch.zeros(x.shape + (K,)), p)
    assert bool((D.score_entropy_loss(wrong, x0, 0.5, generator=gen(0)) > 0).all())


# --- the D3PM bound -------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_d3pm_bound_is_above_the_nll_and_tightens_with_steps(kind):
    sch = D.LinearKeep()
    p = getattr(D.DiscreteProcess, kind)(K, sch)
    den = exact_denoiser(p)
    i = int(P.argmax())
    n = 3000
    x0 = SEQS[i][None].expand(n, L).contiguous()
    gaps = []
    for steps in [2, 32]:
        est = D.d3pm_bound(den, x0, time_grid(steps, 1.0, 0.0), generator=gen(steps))
        se = float(est.std()) / math.sqrt(n)
        gaps.append(float(est.mean()) - nll(i))
        assert gaps[-1] > -4 * se, (steps, gaps, se)
    assert gaps[1] < 0.5 * gaps[0], gaps


# --- samplers -------------------------------------------------------------------------
def tv_to_joint(x):
    idx = (x * torch.tensor([K * K, K, 1])).sum(-1)
    freq = torch.bincount(idx, minlength=len(SEQS)).to(F64) / len(x)
    return 0.5 * float((freq - P).abs().sum())


N_SAMPLES = 10000
N_STEPS = 64
# the empirical TV of 10000 exact draws over 27 cells is about 0.01; the time
# discretisation of 64 steps adds O(1/64) at most; one step samples the product of the
# marginals, far off (about 0.38 for this joint)
TV_TOL = 0.03


@pytest.mark.parametrize(
    "kind, sch, sampler",
    [
        ("absorbing", D.LinearKeep(), D.sample_ancestral),
        ("absorbing", D.CosineKeep(), D.sample_tau_leaping),
        ("absorbing", D.LinearKeep(), D.sample_tweedie),
        ("uniform", D.LinearKeep(1e-3), D.sample_ancestral),
        ("uniform", D.LinearKeep(1e-3), D.sample_tweedie),
    ],
    ids=lambda v: v.__name__ if callable(v) else repr(v),
)
def test_samplers_reproduce_the_joint_with_many_steps(kind, sch, sampler):
    p = getattr(D.DiscreteProcess, kind)(K, sch)
    den = exact_denoiser(p)
    if kind == "absorbing":
        x1 = torch.full((N_SAMPLES, L), K)
    else:
        x1 = torch.randint(0, K, (N_SAMPLES, L), generator=gen(9))
    mid = {}

    def record(d):
        if d["i"] == N_STEPS // 2 - 1:
            mid.update(t=d["t_next"], x=d["x"])

    x = sampler(den, x1, time_grid(N_STEPS, 1.0, 0.0), generator=gen(10),
                callback=record)
    assert den.nfe == N_STEPS
    assert tv_to_joint(x) < TV_TOL
    if kind == "absorbing":  # halfway, the masks have the forward law's frequency
        frac = float((mid["x"] == K).to(F64).mean())
        # 5 standard errors of 30000 positions (0.015) plus O(1/64) from the grid
        assert abs(frac - (1 - float(sch.alpha(mid["t"])))) < 0.03, frac
    one = sampler(den, x1, time_grid(1, 1.0, 0.0), generator=gen(11))
    assert tv_to_joint(one) > 4 * TV_TOL  # the check can fail


def test_confidence_sampler_unmasks_everything_and_counts_nfe():
    p = D.DiscreteProcess.absorbing(K, D.LinearKeep())
    den = exact_denoiser(p)
    x1 = torch.full((500, L), K)
    seen = []
    x = D.sample_confidence(den, x1, time_grid(3, 1.0, 0.0), generator=gen(0),
                            callback=lambda d: seen.append(int((d["x"] == K).sum())))
    assert den.nfe == 3 and not bool((x == K).any())
    assert seen == sorted(seen, reverse=True) and seen[-1] == 0
    # one position per step for L = 3 and three steps of the linear schedule
    assert seen == [1000, 500, 0]
    # grid ending above 0: the final argmax removes the remaining masks (one more NFE)
    den.nfe = 0
    x = D.sample_confidence(den, x1, time_grid(2, 1.0, 0.5), generator=gen(0),
                            final_argmax=True)
    assert den.nfe == 3 and not bool((x == K).any())


def test_samplers_are_seeded():
    p = D.DiscreteProcess.absorbing(K, D.CosineKeep())
    den = exact_denoiser(p)
    x1 = torch.full((64, L), K)
    for sampler in [D.sample_ancestral, D.sample_tau_leaping, D.sample_confidence]:
        a = sampler(den, x1, time_grid(4, 1.0, 0.0), generator=gen(1))
        b = sampler(den, x1, time_grid(4, 1.0, 0.0), generator=gen(1))
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["absorbing", "uniform"])
def test_tweedie_with_the_exact_score_equals_the_ancestral_step(kind):
    """With a score made from clean-token probabilities, Tweedie's
    [s exp(-dQ)]_y exp(dQ)[y, x] equals the posterior mixed over those probabilities
    (exp(sigma_bar(t) Q) = exp(sigma_bar(s) Q) exp(dQ)): the same tokens from the
    same seed."""
    p = getattr(D.DiscreteProcess, kind)(K, D.LinearKeep(1e-3))
    x0den = exact_denoiser(p)

    def score_fn(x_t, tt):
        return torch.log(x0den._score(x_t, float(tt[0])).clamp(min=1e-300))

    sden = D.CategoricalDenoiser(score_fn, p, "concrete_score")
    x1 = torch.full((2000, L), K) if kind == "absorbing" else SEQS[:1].repeat(2000, 1)
    ts = time_grid(6, 0.9, 0.0)
    a = D.sample_tweedie(sden, x1, ts, generator=gen(4))
    b = D.sample_ancestral(x0den, x1, ts, generator=gen(4))
    assert torch.equal(a, b)


@pytest.mark.parametrize("sampler", [D.sample_tau_leaping, D.sample_tweedie])
def test_score_samplers_on_the_uniform_chain_from_the_exact_noisy_law(sampler):
    """A concrete-score model (the exact score, through kind="concrete_score") on a
    uniform chain whose alpha_1 = 0.2 > 0: start from exact draws of q(x_1) (x0 from
    the joint, then the forward process), where the reverse rates are finite."""
    p = D.DiscreteProcess.uniform(K, D.LinearKeep(0.2))
    x0den = exact_denoiser(p)

    def score_fn(x_t, tt):
        return torch.log(x0den._score(x_t, float(tt[0])).clamp(min=1e-300))

    den = D.CategoricalDenoiser(score_fn, p, "concrete_score")
    x0 = SEQS[torch.multinomial(P, N_SAMPLES, True, generator=gen(12))]
    x1 = p.sample_xt(x0, 1.0, gen(13))
    assert tv_to_joint(x1) > 4 * TV_TOL  # the noisy law is far from the joint
    x = sampler(den, x1, time_grid(N_STEPS, 1.0, 0.0), generator=gen(14))
    assert den.nfe == N_STEPS
    assert tv_to_joint(x) < TV_TOL


def test_score_entropy_of_a_concrete_score_model_matches_its_x0_twin():
    sch = D.CosineKeep()
    p = D.DiscreteProcess.absorbing(K, sch)
    x0den = exact_denoiser(p)

    def score_fn(x_t, tt):
        return torch.log(x0den.process._score_from_x0(
            x_t, x0den._pad(x0den._x0_probs(x_t, tt)), float(tt[0])
        ).clamp(min=1e-300))

    sden = D.CategoricalDenoiser(score_fn, p, "concrete_score")
    x0 = SEQS[torch.multinomial(P, 32, True, generator=gen(2))]
    a = D.score_entropy_loss(x0den, x0, 0.375, generator=gen(4))
    b = D.score_entropy_loss(sden, x0, 0.375, generator=gen(4))
    assert torch.allclose(a, b, rtol=1e-9)
    assert bool((a > 0).any())


@pytest.mark.parametrize("index", range(3), ids=["uniform", "absorbing", "general"])
def test_reverse_rates_are_the_time_reversal_by_enumeration(index):
    """R_t(x -> z) = beta(t) Q[z_l, x_l] p_t(z) / p_t(x) for z a Hamming neighbour of
    x (token l changed), from the exact marginal p_t enumerated over all n^L states;
    rows sum to 0."""
    process = processes()[index]
    n, t = process.n_states, 0.625
    beta = float(process.schedule.rate(t))
    Dm = torch.as_tensor(expm(process, 0, t))
    states = torch.tensor(list(itertools.product(range(n), repeat=L)))
    p_t = (P[None] * Dm[SEQS[None], states[:, None]].prod(-1)).sum(-1)
    index_of = {tuple(s.tolist()): i for i, s in enumerate(states)}
    x_t = states[p_t > 1e-12]
    w = torch.as_tensor(exact_denoiser(process).x0_probs(x_t, t))
    rates = process.reverse_rates(x_t, t, w)
    assert torch.allclose(rates.sum(-1), torch.zeros(len(x_t), L, dtype=F64),
                          atol=1e-9)
    for b, x in enumerate(x_t.tolist()):
        for pos, y in itertools.product(range(L), range(n)):
            if y == x[pos]:
                continue
            z = list(x)
            z[pos] = y
            ref = beta * float(process.Q[y, x[pos]]) * float(
                p_t[index_of[tuple(z)]] / p_t[index_of[tuple(x)]]
            )
            assert abs(float(rates[b, pos, y]) - ref) < 1e-9 * (1 + ref), (x, pos, y)


# --- additions of chapter III.1: one network call for a batch of times ----------------
@pytest.mark.parametrize("index", [0, 2])  # uniform, general Q
def test_score_entropy_with_many_times_is_one_call_and_matches_row_by_row(index):
    """score_entropy_loss with a (B,) tensor of different times makes ONE call of the
    network and equals the loss evaluated row by row at each row's own time."""
    process = processes()[index]
    calls = []

    def fn(x_t, t):  # a fixed (wrong) time-dependent model
        calls.append(t.clone())
        ks, ls = torch.arange(K, dtype=F64), torch.arange(x_t.shape[1], dtype=F64)
        base = torch.sin(1.3 * x_t[..., None].to(F64) + 0.7 * ks + 0.4 * ls[:, None])
        return base * (1 + t.to(F64)[:, None, None])

    den = D.CategoricalDenoiser(fn, process)
    x0 = SEQS[[0, 5, 13, 26, 7, 19]]
    t = torch.tensor([0.1, 0.25, 0.4, 0.55, 0.7, 0.85], dtype=F64)
    x_t = process.sample_xt(x0, t, gen(3))
    batched = D.score_entropy_loss(den, x0, t, x_t=x_t)
    assert len(calls) == 1 and den.nfe == 1 and calls[0].shape == (6,)
    rows = torch.cat([D.score_entropy_loss(den, x0[i:i + 1], float(t[i]),
                                           x_t=x_t[i:i + 1]) for i in range(6)])
    assert torch.allclose(batched, rows, rtol=1e-6, atol=1e-9)  # float32 times
    assert bool((batched >= 0).all())


def test_score_from_x0_with_a_batch_of_times_matches_scalar_times():
    process = processes()[0]
    x_t = SEQS[[1, 8, 20]]
    w = torch.softmax(torch.randn(3, L, K, generator=gen(4), dtype=F64), -1)
    t = torch.tensor([0.2, 0.5, 0.9], dtype=F64)
    batched = process._score_from_x0(x_t, w, t)
    for i in range(3):
        one = process.score_from_x0(x_t[i:i + 1], w[i:i + 1], float(t[i]))
        assert torch.allclose(batched[i:i + 1], one, rtol=1e-12, atol=0)


def test_uniform_score_entropy_bound_of_the_exact_posterior_is_the_nll():
    """The uniform chain's bound (DWDSE + prior term) with the exact posterior equals
    -log p(x0): Monte Carlo over antithetic times, within 4 standard errors."""
    process = D.DiscreteProcess.uniform(K, D.LinearKeep(1e-3))
    onehot = torch.nn.functional.one_hot(SEQS, K).to(F64)  # (27, L, K)

    def fn(x_t, t):  # the exact posterior, row by row at each row's own time
        w = torch.cat([posterior_weights(process, x_t[b:b + 1], float(t[b]))
                       for b in range(len(t))])
        return torch.log(torch.einsum("bs,slk->blk", w, onehot).clamp(min=1e-300))

    den = D.CategoricalDenoiser(fn, process)
    i = int(P.argmax())
    n = 3000
    x0 = SEQS[i][None].expand(n, L).contiguous()
    # times exact in float32, the dtype in which the model receives them
    t = D.antithetic_times(n, gen(7), t_min=0.0).float().double()
    est = D.score_entropy_loss(den, x0, t, generator=gen(8))
    assert den.nfe == 1
    q1 = process.transition(0.0, 1.0)[0]
    prior = L * float((q1 * (q1 * K).log()).sum())
    se = float(est.std()) / math.sqrt(n)
    assert abs(float(est.mean()) + prior - nll(i)) < 4 * se + 1e-9
