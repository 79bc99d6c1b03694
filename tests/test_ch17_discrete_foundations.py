"""The claims of the discrete-foundations chapter (III.1) as unit tests, at a smaller
size than the chapter: the closed form of exp(sigma_bar Q) and the weight of the masked
bound (sympy); the bound of the exact HMM posterior is -log p(x0) and the same under
every schedule (enumerated mask patterns); the concrete score is the ratio of exact
HMM marginals; Tweedie tau-leaping is the ancestral step for a clean-token model; the
factorisation error of few-step sampling with the exact posterior; mode collapse of
confidence-ordered unmasking."""

import math

import numpy as np
import sympy as sp
import torch

from dlib import data
from dlib import discrete as dd

F64 = torch.float64
HMM = dd.HMM.language()
K = HMM.vocab_size


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def posterior_fn(model):
    """Clean-token log-probabilities of an HMM's exact posterior under the absorbing
    corruption: time-free (the posterior does not depend on alpha_t)."""

    def fn(x_t, t):
        lik = dd.absorbing_likelihood(K, 0.5)
        return model.posterior(x_t, lik).clamp(min=1e-300).log()

    return fn


def test_closed_form_of_the_matrix_exponential_and_the_weight():
    tau = sp.symbols("tau", positive=True)
    for J in (sp.ones(3, 3) / 3, sp.Matrix([[0, 0, 1]] * 3)):
        Q = J - sp.eye(3)
        assert sp.simplify(Q * Q + Q) == sp.zeros(3, 3)
        closed = sp.exp(-tau) * sp.eye(3) + (1 - sp.exp(-tau)) * J
        assert sp.simplify((tau * Q).exp() - closed) == sp.zeros(3, 3)
    t = sp.symbols("t", positive=True)
    a = sp.Function("alpha")(t)
    w = -sp.diff(a, t) / (1 - a)
    assert sp.simplify(w - a * (-sp.diff(sp.log(a / (1 - a)), t))) == 0
    # score entropy of s = rho p at a masked position = -rho log p(x0)
    rho, p0, p1 = sp.symbols("rho p0 p1", positive=True)
    se = rho * p0 + rho * p1 + rho * (1 - p0 - p1) - rho * sp.log(rho * p0) + rho * (
        sp.log(rho) - 1)
    assert sp.simplify(sp.expand_log(se, force=True) + rho * sp.log(p0)) == 0


def exact_bound(fn, sch, n_nodes, x0):
    L = x0.shape[1]
    patterns = torch.tensor(list(np.ndindex(*(2,) * L)), dtype=torch.bool)
    k = patterns.sum(1).double()
    xs = x0.expand(len(patterns), L)
    xt = torch.where(patterns, K, xs)
    den = dd.CategoricalDenoiser(fn, dd.DiscreteProcess.absorbing(K, sch))
    nodes, weights = np.polynomial.legendre.leggauss(n_nodes)
    total = 0.0
    for u, wq in zip(nodes, weights):
        t = 0.5 * (u + 1)
        a = float(sch.alpha(t))
        prob = a ** (L - k) * (1 - a) ** k
        loss = dd.masked_elbo_loss(den, xs, t, x_t=xt)
        total += 0.5 * wq * float((prob * loss).sum())
    return total


def test_exact_posterior_bound_is_the_nll_and_schedule_invariant():
    x0 = HMM.sample(1, 5, seeded(1))[0]
    nll = -float(HMM.log_prob(x0))
    exact = posterior_fn(HMM)
    other = dd.HMM.language(seed=1)  # smoothed: every sequence is possible under it
    wrong = posterior_fn(dd.HMM(other.initial, other.transition,
                                0.9 * other.emission + 0.1 / K))
    for fn, tight in [(exact, True), (wrong, False)]:
        lin = exact_bound(fn, dd.LinearKeep(), 6, x0)
        cos = exact_bound(fn, dd.CosineKeep(), 40, x0)
        assert abs(lin - cos) < 1e-9 * lin
        if tight:
            assert abs(lin - nll) < 1e-9 * nll
        else:
            assert lin > nll + 1e-3


def test_concrete_score_is_the_ratio_of_exact_hmm_marginals():
    x = data.hmm_language(4, 12, seed=2)
    lin = dd.LinearKeep()
    for proc, lik in [
        (dd.DiscreteProcess.absorbing(K, lin), dd.absorbing_likelihood(K, 0.5)),
        (dd.DiscreteProcess.uniform(K, lin), dd.uniform_likelihood(K, 0.5)),
    ]:
        den = dd.CategoricalDenoiser(
            lambda x_t, t, lik=lik: HMM.posterior(x_t, lik).log(), proc
        )
        xt = proc.sample_xt(x, 0.5, seeded(3))
        score = den.concrete_score(xt, 0.5)
        base = HMM.log_evidence(xt, lik)
        for ell in (0, 5, 11):
            for y in range(K):
                xy = xt.clone()
                xy[:, ell] = y
                ok = xt[:, ell] != y
                if proc.kind == "absorbing":
                    ok &= xt[:, ell] == K
                ratio = (HMM.log_evidence(xy, lik) - base).exp()
                assert torch.allclose(ratio[ok], score[ok, ell, y], rtol=1e-9,
                                      atol=1e-300)


def test_tweedie_is_the_ancestral_step_for_a_clean_token_model():
    proc = dd.DiscreteProcess.uniform(K, dd.LinearKeep(1e-3))

    def fn(x_t, t):  # a fixed, time-dependent clean-token model
        ks = torch.arange(K, dtype=F64)
        return torch.cos(0.3 * x_t[..., None].to(F64) * ks + t.to(F64)[:, None, None])

    den = dd.CategoricalDenoiser(fn, proc)
    x = torch.randint(0, K, (64, 10), generator=seeded(4))
    ts = torch.linspace(1.0, 0.0, 6, dtype=F64)
    a = dd.sample_tweedie(den, x, ts, generator=seeded(5))
    b = dd.sample_ancestral(den, x, ts, generator=seeded(5))
    assert torch.equal(a, b)


def sample_stats(sampler, steps, n=128, L=16):
    smooth = dd.HMM(HMM.initial, HMM.transition, (1 - 1e-9) * HMM.emission + 1e-9 / K)
    proc = dd.DiscreteProcess.absorbing(K, dd.CosineKeep())

    def fn(x_t, t):
        a = proc.schedule.alpha(t.double())
        return smooth.posterior(x_t, dd.absorbing_likelihood(K, a)).clamp(
            min=1e-300).log()

    den = dd.CategoricalDenoiser(fn, proc)
    ts = torch.linspace(1.0, 0.0, steps + 1, dtype=F64)
    x = sampler(den, torch.full((n, L), K), ts, generator=seeded(6))
    assert den.nfe == steps
    lp = HMM.log_prob(x) / L
    ok = torch.isfinite(lp)
    return HMM.invalid_bigram_rate(x), float(-lp[ok].mean())


def test_factorisation_error_falls_with_the_steps_and_confidence_collapses():
    few, _ = sample_stats(dd.sample_ancestral, 2)
    many, nll_many = sample_stats(dd.sample_ancestral, 16)
    assert few > 0.01 and many < few / 3
    data_nll = float(-(HMM.log_prob(data.hmm_language(512, 16, seed=7)) / 16).mean())
    assert abs(nll_many - data_nll) < 0.3
    conf_inv, conf_nll = sample_stats(dd.sample_confidence, 16)
    assert conf_inv <= many
    assert conf_nll < data_nll - 0.3  # mode collapse: far more likely than the data
    assert math.isfinite(conf_nll)
