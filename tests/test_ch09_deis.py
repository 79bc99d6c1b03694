"""Tests for the DEIS chapter (Part II): iPNDM and rhoRK written out independently of
the library, the frozen-score integrator's closed form, and the chapter's first claim
(tAB3 at 10 NFE has at most half DDIM's ODE error) on a smaller sample."""

import math

import torch
from scipy.integrate import quad

from dlib import analytic, metrics, sampling, solvers
from dlib import schedules as S

F64 = torch.float64
DDPM = S.DiscreteVP(S.ddpm_betas())
MIX = analytic.thin_mixture(2)
DEN = MIX.denoiser(DDPM)
X = torch.randn(50, 2, generator=torch.Generator().manual_seed(3), dtype=F64)


def coef(t, sch=DDPM):
    c = sch.coefficients(torch.tensor(float(t), dtype=F64))
    return float(c.alpha), float(c.sigma)


def test_ipndm_is_the_official_recipe_written_out():
    """The official iPNDM: eps' = (1), (3, -1)/2, (23, -16, 5)/12, then
    (55, -59, 37, -9)/24 of the newest eps first, fed to the DDIM transfer
    x_s = (alpha_s / alpha_t) x + (sigma_s - alpha_s sigma_t / alpha_t) eps'."""
    ab = [[1.0], [1.5, -0.5], [23 / 12, -16 / 12, 5 / 12],
          [55 / 24, -59 / 24, 37 / 24, -9 / 24]]
    ts = sampling.time_grid(9, 1.0, 1e-3, spacing="quadratic")
    x, past = X.clone(), []
    for i in range(len(ts) - 1):
        past.insert(0, DEN.x0_eps(x, ts[i])[1])
        b = ab[min(i, 3)]
        mix = sum(bj * e for bj, e in zip(b, past))
        (at, st), (a_s, s_s) = coef(ts[i]), coef(ts[i + 1])
        x = a_s / at * x + (s_s - a_s * st / at) * mix
    out = solvers.sample_deis(DEN, X, ts, order=4, variant="ipndm")
    assert float((out - x).norm() / x.norm()) < 1e-12


def test_kutta_step_written_out_in_rho():
    """One step of Kutta's third-order method on d xbar / d rho = eps, the stage times
    found here by bisection on rho (independent of the schedule's inverse)."""
    t, s = 0.6, 0.3
    (at, st), (a_s, s_s) = coef(t), coef(s)
    rt, rs = st / at, s_s / a_s
    H = rs - rt

    def t_of_rho(r):
        lo, hi = s, t
        for _ in range(200):
            mid = (lo + hi) / 2
            a, sg = coef(mid)
            lo, hi = (lo, mid) if sg / a > r else (mid, hi)
        return (lo + hi) / 2

    def f(v, r):
        tm = t_of_rho(r)
        return DEN.x0_eps(v * coef(tm)[0], tm)[1]

    v = X / at
    k1 = f(v, rt)
    k2 = f(v + H * 0.5 * k1, rt + 0.5 * H)
    k3 = DEN.x0_eps((v + H * (-k1 + 2 * k2)) * a_s, s)[1]
    x = a_s * (v + H * (k1 + 4 * k2 + k3) / 6)
    out = solvers.sample_deis_rk(DEN, X, [t, s], tableau="kutta")
    assert float((out - x).norm() / x.norm()) < 1e-10


def test_frozen_score_closed_form():
    """alpha_s * integral of (-sigma) d rho over [rho_t, rho_s] = alpha_s / alpha_t - 1
    on the VP-linear schedule (the chapter's sympy derivation, by quadrature)."""
    vp = S.VPLinear()
    for t, s in ((0.9, 0.5), (0.3, 0.01), (1.0, 1e-3)):
        (at, st), (a_s, s_s) = coef(t, vp), coef(s, vp)
        integral = quad(lambda r: -r / math.sqrt(1 + r * r), st / at, s_s / a_s,
                        epsabs=0, epsrel=1e-13)[0]
        assert abs(a_s * integral - (a_s / at - 1)) < 1e-12


def test_tab3_halves_ddims_error_at_10_nfe():
    """The chapter's claim C1 (threshold fixed in advance from the paper and the
    card's calibration) on 200 samples of the 2-D thin mixture."""
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    ref = sampling.sample_ode(DEN, x, torch.tensor([1.0, 1e-3], dtype=F64),
                              rtol=1e-9, atol=1e-9)
    ts = sampling.time_grid(10, 1.0, 1e-3, spacing="quadratic")
    ddim = metrics.rms_error(sampling.sample_ancestral(DEN, x, ts, eta=0.0), ref)[0]
    tab3 = metrics.rms_error(solvers.sample_deis(DEN, x, ts, order=4), ref)[0]
    assert tab3 <= 0.5 * ddim, (tab3, ddim)
