"""The claims of the denoising-MCMC chapter (II.6) as unit tests, at a smaller size than
the chapter: the cross-entropy-optimal noise classifier is the posterior and the
unadjusted Langevin variance (sympy); DLG + Euler beats Euler from sigma_max at 6 NFE
on the 16-D mixture (the issue's ratio < 0.6); persistent chains give correlated mode
weights; the chain's levels stay far below the target's."""

import math

import sympy as sp
import torch

from dlib import analytic, mcmc
from dlib import schedules as S

F64 = torch.float64
D, K, S_MODE = 16, 8, 0.15
_g = torch.Generator().manual_seed(1)
MEANS = torch.randn(K, D, generator=_g, dtype=F64)
MEANS = 3.0 * MEANS / MEANS.norm(dim=1, keepdim=True)
MIX = analytic.GaussianMixture(MEANS, S_MODE**2)
VE = S.VE(0.01, 20.0)
DEN = MIX.denoiser(VE)
SIG = mcmc.noise_level_grid(100, 0.01, 20.0)


def classifier(x):
    return MIX.noise_level_log_posterior(x, SIG)


def within_mode_fd(x):
    k = torch.cdist(x, MEANS).argmin(1)
    r = (x - MEANS[k]) / S_MODE
    ev = torch.linalg.eigvalsh(torch.cov(r.T)).clamp(min=0)
    return ((r.mean(0) ** 2).sum() + ev.sum() + D - 2 * ev.sqrt().sum()).item() / D


def mode_tv(x):
    k = torch.cdist(x, MEANS).argmin(1)
    return 0.5 * (torch.bincount(k, minlength=K) / len(k) - 1 / K).abs().sum().item()


def warm_chains(n, g):
    x = 20.0 * torch.randn(n, D, generator=g, dtype=F64)
    grid = mcmc.karras_levels(20.0, 0.01, 20).expand(n, -1)
    x = mcmc.sample_from_levels(DEN, x, grid)
    x = x + 0.5 * torch.randn(n, D, generator=g, dtype=F64)
    return mcmc.langevin_gibbs(DEN, classifier, x, classifier(x).argmax(1), SIG,
                               tau=0.025, n_steps=30, generator=g)


def test_cross_entropy_optimum_and_ula_variance():
    a = sp.symbols("a1:4", positive=True)
    q = sp.symbols("q1:4", positive=True)
    m = sp.symbols("m")
    lag = -sum(ai * sp.log(qi) for ai, qi in zip(a, q)) + m * (sum(q) - 1)
    sol = sp.solve([sp.diff(lag, v) for v in (*q, m)], [*q, m], dict=True)
    assert all(sp.simplify(sol[0][qi] - ai / sum(a)) == 0 for ai, qi in zip(a, q))
    tau, v, V = sp.symbols("tau v V", positive=True)
    fixed = sp.solve(sp.Eq(V, (1 - tau / v) ** 2 * V + 2 * tau), V)
    assert sp.simplify(fixed[0] - v / (1 - tau / (2 * v))) == 0


def test_dlg_beats_euler_at_6_nfe():
    g = torch.Generator().manual_seed(0)
    n = 1000
    chains = warm_chains(n, g)
    DEN.nfe = 0
    x = 20.0 * torch.randn(n, D, generator=g, dtype=F64)
    grid = mcmc.karras_levels(20.0, 0.01, 5).expand(n, -1)
    van = mcmc.sample_from_levels(DEN, x, grid)
    assert DEN.nfe == 6
    res = mcmc.sample_dlg(DEN, classifier, chains.x, chains.level, SIG, tau=0.025,
                          n_skip=2, n_steps=3, generator=g)
    assert res.nfe_per_sample == 6
    ratio = within_mode_fd(res.samples[0]) / within_mode_fd(van)
    assert ratio < 0.6, ratio  # the prediction
    assert mode_tv(res.samples[0]) < 0.1
    # a stronger baseline: the nearly idle Tweedie call at 0.01 as a sixth Euler step
    DEN.nfe = 0
    grid = mcmc.karras_levels(20.0, 0.01, 6, rho=10.0).expand(n, -1)
    strong = mcmc.sample_from_levels(DEN, x, grid, tweedie=False)
    assert DEN.nfe == 6
    assert within_mode_fd(strong) < within_mode_fd(van)
    assert within_mode_fd(res.samples[0]) / within_mode_fd(strong) < 0.6


def test_euler_from_a_low_level_over_shrinks_a_gaussian_mode():
    """On one Gaussian mode an Euler (DDIM) step sigma -> sigma' scales the residual by
    (s^2 + sigma sigma') / (s^2 + sigma^2) <= the exact flow's factor: from exact
    N(mu, (s^2 + 0.5^2) I) states of one mode, 3 Euler steps + Tweedie give the
    closed form."""
    g = torch.Generator().manual_seed(4)
    n, s2 = 4000, S_MODE**2
    one = analytic.GaussianMixture(MEANS[:1], s2).denoiser(VE)  # no other modes
    x = MEANS[0] + math.sqrt(s2 + 0.25) * torch.randn(n, D, generator=g, dtype=F64)
    grid = mcmc.karras_levels(0.5, 0.01, 3)
    out = mcmc.sample_from_levels(one, x, grid.expand(n, -1))
    lv = grid[0].tolist()
    f = math.prod((s2 + a * b) / (s2 + a * a) for a, b in zip(lv[:-1], lv[1:]))
    predicted = (f * math.sqrt(s2 + 0.25) * s2 / (s2 + 1e-4)) ** 2 / s2
    measured = ((out - MEANS[0]) / S_MODE).var(0).mean().item()
    assert predicted < 0.7  # well below the true spread 1
    assert abs(measured / predicted - 1) < 0.05  # 64,000 draws: error about 0.006


def test_chain_levels_creep_up_as_the_ula_drift_law_predicts():
    """One ULA step at a correct level adds tau^2 / v to the residual variance v;
    the argmax level reads it back: v_n^2 = v_0^2 + 2 tau^2 n (mean field)."""
    g = torch.Generator().manual_seed(5)
    x = MEANS[0] + math.sqrt(S_MODE**2 + 0.25) * torch.randn(400, D, generator=g,
                                                             dtype=F64)
    lev = classifier(x).argmax(1)
    tau, n = 0.05, 100
    v0 = S_MODE**2 + SIG[lev] ** 2
    ch = mcmc.langevin_gibbs(DEN, classifier, x, lev, SIG, tau=tau, n_steps=n,
                             generator=g)
    pred = ((v0**2 + 2 * tau**2 * n).sqrt() - S_MODE**2).sqrt().median().item()
    got = SIG[ch.level].median().item()
    assert got > 1.3 * SIG[lev].median().item()  # it climbs
    assert abs(got / pred - 1) < 0.15, (got, pred)


def test_persistent_chains_have_correlated_mode_weights():
    g = torch.Generator().manual_seed(2)
    chains = warm_chains(8, g)
    res = mcmc.sample_dlg(DEN, classifier, chains.x, chains.level, SIG, tau=0.025,
                          n_skip=2, n_steps=3, n_rounds=60, generator=g)
    # 480 outputs of 8 chains: the mode weights of about 8 draws (E[TV] about 0.3)
    assert mode_tv(res.samples.reshape(-1, D)) > 0.1


def test_chain_levels_stay_below_the_targets():
    """The target's level marginal is the prior (uniform over the grid, 90 % quantile
    near 9.4); 60 steps of size sqrt(2 tau) cannot reach beyond about 2."""
    g = torch.Generator().manual_seed(3)
    chains = warm_chains(300, g)
    ch = mcmc.langevin_gibbs(DEN, classifier, chains.x, chains.level, SIG, tau=0.025,
                             n_steps=30, update="sample", generator=g)
    q90 = SIG[ch.level].quantile(0.9).item()
    assert q90 < math.sqrt(2 * 0.025 * 60) < SIG.quantile(0.9).item()
