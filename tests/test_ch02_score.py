"""Tests for what chapter 2 (the score view) adds to or relies on in dlib: the
predictor-corrector sampler, and likelihood-weighted DSM as the continuous-time ELBO."""

import math

import pytest
import torch

from dlib import analytic, losses, param, sampling
from dlib import schedules as S

F64 = torch.float64
MU, VAR = torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([0.5, 2.0], dtype=F64)


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def oracle():
    return analytic.Gaussian(MU, VAR).denoiser(S.VPLinear())


def test_pc_without_corrector_is_euler_maruyama(oracle):
    x = torch.randn(300, 2, generator=gen(0), dtype=F64)
    ts = sampling.time_grid(40, final_zero=True)
    em = sampling.sample_euler_maruyama(oracle, x, ts, zeta=1.0, generator=gen(1))
    pc = sampling.sample_predictor_corrector(oracle, x, ts, n_corrector=0,
                                             generator=gen(1))
    assert torch.equal(em, pc)


def test_pc_gives_the_data_law_and_counts_nfe(oracle):
    x = torch.randn(20000, 2, generator=gen(1), dtype=F64)
    ts = sampling.time_grid(200, final_zero=True)
    oracle.nfe = 0
    seen = []

    def record(d):
        seen.append(d["t_next"])

    out = sampling.sample_predictor_corrector(oracle, x, ts, n_corrector=1, snr=0.16,
                                              generator=gen(2), progress=False,
                                              callback=record)
    assert oracle.nfe == 200 * 2 + 1 and len(seen) == 201 and seen[-1] == 0.0
    torch.testing.assert_close(out.mean(0), MU, atol=0.05, rtol=0)
    torch.testing.assert_close(out.var(0), VAR, atol=0, rtol=0.06)


def test_corrector_reduces_the_error_of_a_coarse_predictor(oracle):
    # with few predictor steps Euler-Maruyama misses the variance; Langevin corrector
    # steps on p_s pull it back
    x = torch.randn(40000, 2, generator=gen(3), dtype=F64)
    ts = sampling.time_grid(10, t_min=0.02)
    t_end = torch.tensor(0.02, dtype=F64)
    sch = oracle.schedule
    target = VAR * sch.alpha(t_end) ** 2 + sch.sigma(t_end) ** 2
    errs = []
    for m in (0, 3):
        out = sampling.sample_predictor_corrector(oracle, x, ts, n_corrector=m, snr=0.2,
                                                  generator=gen(4))
        errs.append((out.var(0) / target - 1).abs().max().item())
    assert errs[1] < 0.5 * errs[0], errs


@pytest.mark.parametrize("kw, match", [
    ({"n_corrector": -1}, "n_corrector must be a non-negative integer"),
    ({"n_corrector": 1.5}, "n_corrector must be a non-negative integer"),
    ({"snr": 0.0}, "snr must be a positive"),
])
def test_pc_bad_inputs(oracle, kw, match):
    with pytest.raises(ValueError, match=match):
        sampling.sample_predictor_corrector(oracle, torch.zeros(4, 2, dtype=F64),
                                            torch.tensor([1.0, 0.5]), **kw)


def test_pc_bad_grid(oracle):
    with pytest.raises(ValueError, match="strictly decreasing"):
        sampling.sample_predictor_corrector(oracle, torch.zeros(4, 2, dtype=F64),
                                            torch.tensor([0.5, 1.0]))


@pytest.mark.parametrize("schedule", [S.VPLinear(), S.VPCosine(), S.VE(0.01, 20.0)],
                         ids=lambda s: type(s).__name__)
def test_elbo_integrand_is_the_g2_weighted_dsm_integrand(schedule):
    # w_eps |eps - eps_hat|^2 = (g^2 / 2) |s + eps / sigma|^2 for any score model, with
    # g^2 from the schedule's SDE: likelihood-weighted DSM is the continuous ELBO
    x0 = torch.randn(500, 2, generator=gen(5), dtype=F64)
    t = 0.02 + 0.96 * torch.rand(500, generator=gen(6), dtype=F64)
    xt, eps = losses.sample_xt(x0, t, schedule, gen(7))

    def score_model(x, tt):
        return torch.sin(x) - x * tt[:, None]

    den = param.Denoiser(score_model, schedule, "score")
    lhs = losses.elbo_weight("eps", t, schedule) * (eps - den.eps(xt, t)).pow(2).sum(1)
    g2 = schedule.sde(t)[1]
    sig = schedule.sigma(t)[:, None]
    rhs = g2 / 2 * (score_model(xt, t) + eps / sig).pow(2).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-10, atol=0)


def test_continuous_nelbo_of_the_exact_denoiser_matches_the_entropy_identity(oracle):
    # For the true score, E L_inf over [t0, t1] = D log(sigma_1 / sigma_0) + H(p_t0)
    # - H(p_t1); for Gaussian data, sum_d log((1 + v_d SNR_0) / (1 + v_d SNR_1)) / 2.
    sch, t0, t1 = oracle.schedule, 1e-3, 1.0
    x0 = MU + VAR.sqrt() * torch.randn(50_000, 2, generator=gen(8), dtype=F64)
    vals = losses.continuous_nelbo(oracle, x0, (t0, t1), n_t=2, sampling="log_snr",
                                   generator=gen(9))
    snr = torch.exp(2 * sch.log_snr(torch.tensor([t0, t1], dtype=F64)))
    exact = (0.5 * torch.log((1 + VAR * snr[0]) / (1 + VAR * snr[1]))).sum().item()
    a = sch.alpha(torch.tensor([t0, t1], dtype=F64))
    s = sch.sigma(torch.tensor([t0, t1], dtype=F64))
    var_t = a[:, None] ** 2 * VAR + s[:, None] ** 2
    entropy = (0.5 * torch.log(2 * math.pi * math.e * var_t)).sum(1)
    assert abs(exact - (2 * math.log(s[1] / s[0]) + entropy[0] - entropy[1])) < 1e-10
    se = vals.std().item() / math.sqrt(len(vals))
    assert abs(vals.mean().item() - exact) < 4 * se, (vals.mean().item(), exact, se)


def test_annealed_langevin_is_ula_with_the_ncsn_step_rule():
    # level i runs ULA with tau_i = tau_0 sigma_i^2 / sigma_L^2, starting where level
    # i - 1 stopped: reproduced draw for draw from the score of each noised level
    ve = S.VE(0.01, 10.0)
    den = analytic.Gaussian(MU, VAR).denoiser(ve)
    ts = torch.tensor([0.9, 0.6, 0.3], dtype=F64)
    x = torch.randn(200, 2, generator=gen(10), dtype=F64) * 5
    out = sampling.sample_annealed_langevin(den, x, ts, n_steps_each=7, step_scale=0.01,
                                            generator=gen(11))
    g, sig = gen(11), ve.sigma(ts)
    for t, s in zip(ts, sig):
        tau = 0.01 * (s / sig[-1]).item() ** 2
        score = analytic.Gaussian(MU, VAR + s**2).score
        for _ in range(7):
            z = torch.randn(x.shape, generator=g, dtype=F64)
            x = x + tau * score(x) + math.sqrt(2 * tau) * z
    torch.testing.assert_close(out, x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("tau", [0.2, 1.0, 1.6])
def test_ula_stationary_variance_is_inflated(tau):
    # ULA on N(0, V) is an AR(1) chain with stationary variance V / (1 - tau / (2 V))
    V = 1.0
    x = torch.zeros(40_000, 1, dtype=F64)
    out = sampling.sample_langevin(lambda y: -y / V, x, tau, 200, generator=gen(12))
    expected = V / (1 - tau / (2 * V))
    # 40,000 independent chains: the sample variance has a relative s.e. of 0.7 %
    assert abs(out.var().item() / expected - 1) < 0.03
