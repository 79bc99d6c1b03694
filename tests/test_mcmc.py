"""dlib.mcmc (chapter II.6) and GaussianMixture.noise_level_log_posterior against
closed forms and references: the exact posterior vs the noised log-density, Euler in
sigma = DDIM for VE, Heun's order vs an adaptive reference, the Langevin chain's
stationary variance (with its step-size bias) on a Gaussian, the sampled Gibbs update,
the min-level selection and the NFE accounting of DLG."""

import math

import pytest
import torch

from dlib import analytic, mcmc, sampling
from dlib import schedules as S

F64 = torch.float64
VE = S.VE(0.01, 20.0)
SIG = mcmc.noise_level_grid(30, 0.01, 20.0)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def mixture(d=4, k=3, diagonal=False):
    g = gen(1)
    means = 2 * torch.randn(k, d, generator=g, dtype=F64)
    if diagonal:
        var = 0.05 + torch.rand(k, d, generator=g, dtype=F64)
    else:
        var = 0.05 + torch.rand(k, generator=g, dtype=F64)
    return analytic.GaussianMixture(means, var, torch.tensor([0.5, 0.3, 0.2][:k]))


def t_of(sigma):
    return float(VE.t_from_log_snr(torch.tensor(-math.log(sigma), dtype=F64)))


def test_noise_level_grid_is_geometric_and_decreasing():
    s = mcmc.noise_level_grid(5, 0.01, 100.0)
    assert torch.allclose(s, torch.tensor([100.0, 10.0, 1.0, 0.1, 0.01], dtype=F64))
    for bad in [dict(n_levels=1), dict(sigma_min=2.0), dict(sigma_max=-1.0)]:
        kw = dict(n_levels=5, sigma_min=0.01, sigma_max=1.0) | bad
        with pytest.raises(ValueError, match=next(iter(bad))):
            mcmc.noise_level_grid(**kw)


@pytest.mark.parametrize("diagonal", [False, True])
def test_posterior_is_softmax_of_noised_log_densities(diagonal):
    mix = mixture(diagonal=diagonal)
    x = 3 * torch.randn(7, 4, generator=gen(2), dtype=F64)
    prior = torch.linspace(-1, 1, len(SIG), dtype=F64)
    got = mix.noise_level_log_posterior(x, SIG, log_prior=prior)
    loglik = torch.stack([mix.log_prob(x, t_of(s), VE) for s in SIG.tolist()], 1)
    want = torch.log_softmax(prior[None] + loglik, 1)
    assert (got - want).abs().max() < 1e-9
    uniform = mix.noise_level_log_posterior(x, SIG)
    assert (uniform - torch.log_softmax(loglik, 1)).abs().max() < 1e-9


def test_posterior_isotropic_and_diagonal_paths_agree():
    mix = mixture()
    diag = analytic.GaussianMixture(
        mix.means, mix.variances.clone() * torch.ones(1, 4, dtype=F64), mix.weights
    )
    diag.variances[0, 0] += 1e-300  # identical values, but not detected as isotropic
    x = torch.randn(5, 4, generator=gen(3), dtype=F64)
    a = mix.noise_level_log_posterior(x, SIG)
    b = diag.noise_level_log_posterior(x, SIG)
    assert (a - b).abs().max() < 1e-10


def test_posterior_rejects_bad_input():
    mix = mixture()
    x = torch.zeros(2, 4, dtype=F64)
    with pytest.raises(ValueError, match="sigmas"):
        mix.noise_level_log_posterior(x, [1.0, -1.0])
    with pytest.raises(ValueError, match="log_prior"):
        mix.noise_level_log_posterior(x, SIG, log_prior=torch.zeros(3))
    with pytest.raises(ValueError, match="x"):
        mix.noise_level_log_posterior(torch.zeros(2, 3), SIG)


def test_euler_in_sigma_is_ddim_on_every_row():
    """For VE, x + (s' - s)(x - x0)/s = x0 + s' eps: Euler in sigma is the DDIM step,
    so each row of a per-sample grid equals DDIM on that row's grid."""
    mix = mixture()
    den = mix.denoiser(VE)
    x = 5 * torch.randn(3, 4, generator=gen(4), dtype=F64)
    lev = mcmc.karras_levels(torch.tensor([20.0, 3.0, 0.5]), 0.02, 6)  # t > 0
    out = mcmc.sample_from_levels(den, x, lev, tweedie=False)
    for b in range(3):
        ts = [t_of(s) for s in lev[b].tolist()]
        ref = sampling.sample_ancestral(den, x[b:b + 1], ts, eta=0.0)
        assert (out[b] - ref[0]).abs().max() < 1e-9


def test_vp_model_in_ve_coordinates_matches_the_ve_model():
    """x_VE = x_t / alpha_t, sigma = sigma_t / alpha_t: a VP oracle gives the same
    per-sample solve as the VE oracle."""
    mix = mixture()
    vp = S.VPCosine()
    lo, hi = mcmc._level_range(mix.denoiser(vp))
    x = torch.randn(4, 4, generator=gen(5), dtype=F64)
    lev = mcmc.karras_levels(torch.tensor([5.0, 1.0, 0.3, 0.05]), 0.02, 5)
    assert lo < 0.02 and hi > 5.0
    for method in ("euler", "heun"):
        a = mcmc.sample_from_levels(mix.denoiser(VE), x, lev, method=method)
        b = mcmc.sample_from_levels(mix.denoiser(vp), x, lev, method=method)
        assert (a - b).abs().max() < 1e-8


def test_heun_is_second_order():
    mix = mixture()
    den = mix.denoiser(VE)
    x = 4 * torch.randn(6, 4, generator=gen(6), dtype=F64)
    ref = sampling.sample_ode(den, x, [t_of(4.0), t_of(0.05)], rtol=1e-11, atol=1e-11)
    errs = []
    for n in (32, 64):
        lev = mcmc.karras_levels(torch.full((6,), 4.0), 0.05, n)
        out = mcmc.sample_from_levels(den, x, lev, method="heun", tweedie=False)
        errs.append(float((out - ref).abs().max()))
    assert errs[1] < 2e-3 and errs[0] / errs[1] > 3.0  # order 2: about 4


def test_tweedie_step_is_the_denoiser():
    mix = mixture()
    den = mix.denoiser(VE)
    x = torch.randn(3, 4, generator=gen(7), dtype=F64)
    lev = torch.full((3, 2), 0.3, dtype=F64)  # a zero-length step
    out = mcmc.sample_from_levels(den, x, lev)
    x0, _ = mix.x0_eps(x, t_of(0.3), VE)
    assert (out - x0).abs().max() < 1e-10
    score = mix.score(x, t_of(0.3), VE)
    assert (out - (x + 0.3**2 * score)).abs().max() < 1e-10


def test_karras_levels_per_sample():
    lev = mcmc.karras_levels(torch.tensor([10.0, 1.0]), 0.01, 4, rho=7.0)
    assert lev.shape == (2, 5)
    assert torch.allclose(lev[:, 0], torch.tensor([10.0, 1.0], dtype=F64))
    assert torch.allclose(lev[:, -1], torch.full((2,), 0.01, dtype=F64))
    u = torch.linspace(0, 1, 5, dtype=F64)
    want = (10 ** (1 / 7) + u * (0.01 ** (1 / 7) - 10 ** (1 / 7))) ** 7
    assert torch.allclose(lev[0], want)
    with pytest.raises(ValueError, match="sigma_start"):
        mcmc.karras_levels(torch.tensor([-1.0]), 0.01, 3)


def fixed_level_classifier(level, n_levels):
    def clf(x):
        out = torch.full((x.shape[0], n_levels), -30.0, dtype=F64)
        out[:, level] = 0.0
        return out
    return clf


def test_langevin_stationary_variance_has_the_ula_bias():
    """On N(0, v) at a fixed level, x <- (1 - tau/v') x + sqrt(2 tau) z with
    v' = v + sigma^2 has the stationary variance v' / (1 - tau / (2 v')), not v'."""
    v, level = 0.25, 10
    mix = analytic.GaussianMixture(torch.zeros(1, 2, dtype=F64), v)
    den = mix.denoiser(VE)
    s2 = float(SIG[level]) ** 2
    tau = 0.4 * (v + s2)
    n = 4000
    x = math.sqrt(v + s2) * torch.randn(n, 2, generator=gen(8), dtype=F64)
    ch = mcmc.langevin_gibbs(den, fixed_level_classifier(level, len(SIG)), x,
                             torch.full((n,), level), SIG, tau=tau, n_steps=30,
                             generator=gen(9))
    want = (v + s2) / (1 - tau / (2 * (v + s2)))
    got = float(ch.x.var())
    assert abs(got / want - 1) < 0.06  # MC error of 8000 draws: about 0.016
    assert abs(got / (v + s2) - 1) > 0.15  # and the bias (25 %) is visible
    assert ch.n_score == 30 and ch.n_classifier == 30 and den.nfe == 30


def test_sampled_update_draws_from_the_classifier():
    probs = torch.tensor([0.5, 0.3, 0.2], dtype=F64)
    sig = torch.tensor([2.0, 1.0, 0.5], dtype=F64)
    mix = analytic.GaussianMixture(torch.zeros(1, 2, dtype=F64), 1.0)

    def clf(x):
        return probs.log()[None].expand(x.shape[0], 3)

    n = 6000
    ch = mcmc.langevin_gibbs(mix.denoiser(VE), clf, torch.zeros(n, 2, dtype=F64),
                             torch.zeros(n, dtype=torch.int64), sig, tau=0.01,
                             n_steps=1, update="sample", generator=gen(10))
    freq = torch.bincount(ch.level, minlength=3) / n
    assert (freq - probs).abs().max() < 0.03  # 4.5 standard errors
    arg = mcmc.langevin_gibbs(mix.denoiser(VE), clf, torch.zeros(4, 2, dtype=F64),
                              torch.zeros(4, dtype=torch.int64), sig, tau=0.01,
                              n_steps=1)
    assert bool((arg.level == 0).all())


def test_lowest_level_state_is_kept():
    sig = mcmc.noise_level_grid(6, 0.01, 20.0)
    seq = iter([2, 5, 3, 1])

    def clf(x):  # visits levels 2, 5, 3, 1: the lowest sigma is index 5, step 2
        out = torch.zeros(x.shape[0], 6, dtype=F64)
        out[:, next(seq)] = 10.0
        return out

    mix = analytic.GaussianMixture(torch.zeros(1, 2, dtype=F64), 1.0)
    states = []
    ch = mcmc.langevin_gibbs(mix.denoiser(VE), clf, torch.zeros(3, 2, dtype=F64),
                             torch.zeros(3, dtype=torch.int64), sig, tau=0.1,
                             n_steps=4, generator=gen(11))
    g = gen(11)  # replay the chain step by step
    x = torch.zeros(3, 2, dtype=F64)
    seq = iter([2, 5, 3, 1])
    level = torch.zeros(3, dtype=torch.int64)
    for _ in range(4):
        step = mcmc.langevin_gibbs(mix.denoiser(VE), clf, x, level, sig, tau=0.1,
                                   n_steps=1, generator=g)
        x, level = step.x, step.level
        states.append(x)
    assert bool((ch.level_low == 5).all()) and bool((ch.level == 1).all())
    assert torch.equal(ch.x, states[3]) and torch.equal(ch.x_low, states[1])


@pytest.mark.parametrize("method,solver_nfe", [("euler", 3), ("heun", 6)])
def test_dlg_nfe_accounting_and_shapes(method, solver_nfe):
    mix = mixture()
    den = mix.denoiser(VE)
    clf = lambda x: mix.noise_level_log_posterior(x, SIG)  # noqa: E731
    x = mix.sample(50, generator=gen(12)) + 0.3 * torch.randn(50, 4, generator=gen(13),
                                                              dtype=F64)
    level = clf(x).argmax(1)
    den.nfe = 0
    res = mcmc.sample_dlg(den, clf, x, level, SIG, tau=0.01, n_skip=2, n_steps=3,
                          n_rounds=4, method=method, generator=gen(14))
    assert res.samples.shape == (4, 50, 4) and res.start_sigma.shape == (4, 50)
    assert res.nfe_per_sample == 2 + solver_nfe + 1 and den.nfe == 4 * (3 + solver_nfe)
    assert res.classifier_per_sample == 2
    assert bool(torch.isin(res.start_sigma, SIG).all())
    assert torch.isfinite(res.samples).all()


def test_dlg_samples_a_mixture_well():
    """With the exact score and posterior, DLG's outputs have the mixture's mode
    weights and within-mode spread (an end-to-end sanity check)."""
    means = torch.tensor([[-3.0, 0.0], [3.0, 0.0]], dtype=F64)
    mix = analytic.GaussianMixture(means, 0.04)
    den = mix.denoiser(VE)
    clf = lambda x: mix.noise_level_log_posterior(x, SIG)  # noqa: E731
    x = mix.sample(2000, generator=gen(15)) + 0.5 * torch.randn(
        2000, 2, generator=gen(16), dtype=F64)
    res = mcmc.sample_dlg(den, clf, x, clf(x).argmax(1), SIG, tau=0.02, n_skip=3,
                          n_steps=8, method="heun", generator=gen(17))
    out = res.samples[0]
    right = (out[:, 0] > 0).to(F64).mean()
    assert abs(float(right) - 0.5) < 0.05
    resid = out - means[(out[:, 0] > 0).long()]
    assert abs(float(resid.std()) / 0.2 - 1) < 0.1


def test_mcmc_rejects_bad_input():
    mix = mixture()
    den = mix.denoiser(VE)
    x = torch.zeros(2, 4, dtype=F64)
    lev = torch.zeros(2, dtype=torch.int64)
    clf = lambda x: mix.noise_level_log_posterior(x, SIG)  # noqa: E731
    ok = dict(tau=0.1, n_steps=1)
    cases = [
        ("classifier", dict(classifier=3)),
        ("sigmas", dict(sigmas=SIG.flip(0))),
        ("sigmas", dict(sigmas=torch.tensor([50.0, 1.0]))),
        ("level", dict(level=torch.zeros(2))),
        ("level", dict(level=torch.full((2,), 99))),
        ("tau", dict(tau=0.0)),
        ("n_steps", dict(n_steps=0)),
        ("update", dict(update="mode")),
        ("generator", dict(generator=1)),
    ]
    for name, bad in cases:
        kw = dict(denoiser=den, classifier=clf, x=x, level=lev, sigmas=SIG, **ok)
        kw.update(bad)
        with pytest.raises(ValueError, match=name):
            mcmc.langevin_gibbs(**kw)
    with pytest.raises(ValueError, match="classifier"):
        mcmc.langevin_gibbs(den, lambda x: torch.zeros(2, 3), x, lev, SIG, **ok)
    with pytest.raises(ValueError, match="levels"):
        mcmc.sample_from_levels(den, x, torch.ones(3, 4))
    with pytest.raises(ValueError, match="levels"):
        mcmc.sample_from_levels(den, x, torch.tensor([[1.0, 2.0], [1.0, 1.0]]))
    with pytest.raises(ValueError, match="method"):
        mcmc.sample_from_levels(den, x, torch.ones(2, 3), method="rk4")
    with pytest.raises(ValueError, match="n_skip"):
        mcmc.sample_dlg(den, clf, x, lev, SIG, tau=0.1, n_skip=0, n_steps=2)
    with pytest.raises(ValueError, match="sigma_end"):
        mcmc.sample_dlg(den, clf, x, lev, SIG, tau=0.1, n_skip=1, n_steps=2,
                        sigma_end=1e-4)
