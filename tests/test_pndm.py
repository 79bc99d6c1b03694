"""Tests for dlib.solvers.sample_pndm (S-PNDM and F-PNDM): the official algorithm
written out independently (the paper's transfer in its increment form), exactness
where the pseudo methods are classical methods in rho = sigma / alpha, empirical orders
against a converged float64 reference, NFE counts and bad input."""

import math

import pytest
import torch

from dlib import metrics, param, sampling, solvers
from dlib import schedules as S
from solver_problem import GM, rel

F64 = torch.float64
VP = S.VPLinear()
X1 = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=F64)


class SigmaIsT(S.Schedule):
    """alpha_t = 1, sigma_t = c t (EDM's sigma(t) = t, scaled): rho = sigma / alpha is
    affine in t, so time midpoints are rho midpoints."""

    name = "sigma_is_t"

    def __init__(self, c=10.0):
        self.c = c

    def _log_alpha(self, t):
        return torch.zeros_like(t)

    def _d_log_alpha(self, t):
        return torch.zeros_like(t)

    def _log_sigma(self, t):
        return torch.log(self.c * t)

    def _d_log_sigma(self, t):
        return 1.0 / t

    def _t_from_log_snr(self, lam):
        return torch.exp(-lam) / self.c


def slope(ns, errs):
    """Least-squares slope of log(err) against log(1 / n)."""
    u = torch.tensor([math.log(1 / n) for n in ns], dtype=F64)
    v = torch.tensor([math.log(e) for e in errs], dtype=F64)
    u, v = u - u.mean(), v - v.mean()
    return float((u * v).sum() / (u * u).sum())


# --- the official algorithm, written out from the paper -----------------------------
def abar(sch, t):
    return float(sch.alpha(torch.tensor(t, dtype=F64))) ** 2


def transfer(x, e, sch, t, s):
    """The paper's transfer phi in its increment form (eq. 9 of the paper, with
    abar = alpha^2): x + (a' - a)[x / (sqrt a (sqrt a + sqrt a')) - e / (sqrt a
    (sqrt((1 - a') a) + sqrt((1 - a) a')))]."""
    a, b = abar(sch, t), abar(sch, s)
    ra, rb = math.sqrt(a), math.sqrt(b)
    c_x = 1 / (ra * (ra + rb))
    c_e = 1 / (ra * (math.sqrt((1 - b) * a) + math.sqrt((1 - a) * b)))
    return x + (b - a) * (c_x * x - c_e * e)


def pndm_by_hand(den, x, ts, variant):
    eps = lambda y, t: den.x0_eps(y, torch.tensor(t, dtype=F64))[1]  # noqa: E731
    sch, ets = den.schedule, []
    for t, s in zip(ts[:-1], ts[1:]):
        if variant == "f" and len(ets) > 2:
            ets.append(eps(x, t))
            e = (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4]) / 24
        elif variant == "f":
            u = (t + s) / 2
            e1 = eps(x, t)
            ets.append(e1)
            e2 = eps(transfer(x, e1, sch, t, u), u)
            e3 = eps(transfer(x, e2, sch, t, u), u)
            e4 = eps(transfer(x, e3, sch, t, s), s)
            e = (e1 + 2 * e2 + 2 * e3 + e4) / 6
        elif len(ets) > 0:
            ets.append(eps(x, t))
            e = (3 * ets[-1] - ets[-2]) / 2
        else:
            e1 = eps(x, t)
            ets.append(e1)
            e = (e1 + eps(transfer(x, e1, sch, t, s), s)) / 2
        x = transfer(x, e, sch, t, s)
    return x


@pytest.mark.parametrize("variant", ["f", "s"])
def test_pndm_is_the_official_algorithm(variant):
    ts = sampling.time_grid(9, 1.0, 1e-2, spacing="quadratic").tolist()
    den = GM.denoiser(VP)
    out = solvers.sample_pndm(den, X1[:20], ts, variant=variant)
    assert rel(out, pndm_by_hand(den, X1[:20], ts, variant)) < 1e-12


def test_final_jump_returns_x0_hat():
    den = GM.denoiser(VP)
    ts = sampling.time_grid(6, 1.0, 1e-2, final_zero=True)
    out = solvers.sample_pndm(den, X1, ts)
    x_end = solvers.sample_pndm(den, X1, ts[:-1])
    assert rel(out, den.x0_eps(x_end, ts[-2])[0]) < 1e-13


# --- exactness: a noise prediction constant in time; polynomial in rho --------------
def rho_poly_denoiser(sch, coefs):
    """A model whose noise prediction is sum_j c_j rho^j (rho = sigma / alpha),
    whatever x."""
    c = torch.tensor(coefs, dtype=F64)

    def fn(x, t):
        rho = (sch.sigma(t) / sch.alpha(t)).to(F64)[:, None]
        powers = torch.stack([rho**j for j in range(len(c))], 1)  # (B, J, 1)
        return (powers * c[None]).sum(1).to(x.dtype).expand_as(x)

    return param.Denoiser(fn, sch, "eps")


def exact_rho_flow(x, sch, t, s, coefs):
    """x_s from x_t for :func:`rho_poly_denoiser`: x/alpha moves by the integral of
    the noise prediction over rho."""
    t, s = torch.tensor(t, dtype=F64), torch.tensor(s, dtype=F64)
    at, a_s = float(sch.alpha(t)), float(sch.alpha(s))
    rt, rs = float(sch.sigma(t)) / at, float(sch.sigma(s)) / a_s
    c = torch.tensor(coefs, dtype=F64)
    integral = sum(c[j] * (rs ** (j + 1) - rt ** (j + 1)) / (j + 1)
                   for j in range(len(c)))
    return a_s * (x / at + integral)


def test_constant_noise_prediction_gives_ddim_and_the_exact_flow():
    # every gradient part has weights summing to 1, so with e constant in time (and
    # x) PNDM is DDIM, and DDIM is the exact solution
    ts = sampling.time_grid(7, 1.0, 1e-2, spacing="quadratic")
    coefs = [[0.4, -0.3]]
    den = rho_poly_denoiser(VP, coefs)
    ddim = sampling.sample_ancestral(den, X1, ts, eta=0.0)
    exact = exact_rho_flow(X1, VP, 1.0, 1e-2, coefs)
    assert rel(ddim, exact) < 1e-12
    for variant in ("f", "s"):
        assert rel(solvers.sample_pndm(den, X1, ts, variant=variant), ddim) < 1e-12


@pytest.mark.parametrize("variant,degree", [("f", 3), ("s", 1)])
def test_pndm_is_exact_where_it_is_a_classical_method_in_rho(variant, degree):
    # On sigma_t = c t (alpha = 1) a uniform t grid is uniform in rho and the time
    # midpoints are rho midpoints: F-PNDM is classical RK4 + AB4 in rho, exact for a
    # noise prediction cubic in rho; S-PNDM (Heun + AB2) exact for a linear one
    sch = SigmaIsT()
    ts = sampling.time_grid(9, 1.0, 0.1)
    coefs = [[0.3, -0.2], [0.1, 0.05], [-0.02, 0.01], [0.003, -0.002]][: degree + 1]
    out = solvers.sample_pndm(rho_poly_denoiser(sch, coefs), X1, ts, variant=variant)
    assert rel(out, exact_rho_flow(X1, sch, 1.0, 0.1, coefs)) < 1e-12
    # one degree more and it is not exact (the test can fail)
    coefs = coefs + [[0.001, 0.001]]
    out = solvers.sample_pndm(rho_poly_denoiser(sch, coefs), X1, ts, variant=variant)
    assert rel(out, exact_rho_flow(X1, sch, 1.0, 0.1, coefs)) > 1e-8


# --- empirical orders against a converged float64 reference -------------------------
def orders(sch, t_min, spacing, ns, x):
    den = GM.denoiser(sch)
    ref = sampling.sample_ode(den, x, [1.0, t_min], rtol=1e-12, atol=1e-12)
    out = {}
    for variant in ("s", "f"):
        errs = []
        for n in ns:
            ts = sampling.time_grid(n, 1.0, t_min, spacing=spacing)
            errs.append(metrics.rms_error(solvers.sample_pndm(den, x, ts,
                                                              variant=variant), ref)[0])
        out[variant] = slope(ns, errs)
    return out


def test_orders_where_pndm_is_classical_in_rho():
    # the paper's fourth order holds where the transfer plus AB4 weights integrate
    # eps over rho exactly: a grid uniform in rho with rho affine in t
    got = orders(SigmaIsT(), 0.1, "uniform", [64, 128, 256], 10 * X1)
    assert abs(got["f"] - 4) < 0.3, got
    assert abs(got["s"] - 2) < 0.3, got


@pytest.mark.parametrize("spacing", ["uniform", "quadratic"])
def test_orders_on_a_vp_schedule_are_two(spacing):
    # on VP the fixed weights average eps uniformly in t, the transfer needs the
    # average over rho: the two differ at O(h^2), so both variants are second order
    got = orders(VP, 1e-2, spacing, [40, 80, 160], X1)
    assert abs(got["f"] - 2) < 0.3, got
    assert abs(got["s"] - 2) < 0.3, got


# --- NFE, callback, bad input -------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 4, 10, 50])
@pytest.mark.parametrize("final_zero", [False, True])
def test_nfe_counts(n, final_zero):
    den = GM.denoiser(VP)
    ts = sampling.time_grid(n, 1.0, 1e-2, final_zero=final_zero)
    seen = []
    for variant, expect in (("f", 4 * min(n, 3) + max(n - 3, 0)), ("s", n + 1)):
        den.nfe = 0
        solvers.sample_pndm(den, X1[:4], ts, variant=variant, callback=seen.append)
        assert den.nfe == expect + final_zero, (variant, den.nfe)
    assert len(seen) == 2 * (n + final_zero)
    if n >= 3:
        assert 4 * min(n, 3) + max(n - 3, 0) == n + 9


def test_step_from_alpha_zero_is_ddim_then_warm_up():
    sch = S.VPCosine()  # alpha_1 = 0
    den = GM.denoiser(sch)
    ts = sampling.time_grid(6, 1.0, 1e-2)
    den.nfe = 0
    out = solvers.sample_pndm(den, X1[:4], ts, variant="s")
    assert bool(torch.isfinite(out).all()) and den.nfe == 1 + 5 + 1


def test_bad_input_raises_value_error():
    den = GM.denoiser(VP)
    ts = [1.0, 0.5, 0.1]
    with pytest.raises(ValueError, match="variant"):
        solvers.sample_pndm(den, X1, ts, variant="plms")
    with pytest.raises(ValueError, match="callback"):
        solvers.sample_pndm(den, X1, ts, callback=3)
    with pytest.raises(ValueError, match="ts"):
        solvers.sample_pndm(den, X1, [0.1, 0.5])
    with pytest.raises(ValueError, match="x"):
        solvers.sample_pndm(den, X1[:, :1], ts)
    with pytest.raises(ValueError, match="progress"):
        solvers.sample_pndm(den, X1, ts, progress="yes")
