import math

import pytest
import sympy as sp
import torch

from dlib import schedules as S

F64 = torch.float64
ALL = [
    S.VPLinear(),
    S.VPLinear(0.5, 5.0),
    S.VPCosine(),
    S.VE(),
    S.LinearInterpolant(),
    S.get_schedule("ddpm_linear"),
    S.get_schedule("ddpm_cosine", T=200),
]
IDS = [
    "vp_linear",
    "vp_linear_b",
    "vp_cosine",
    "ve",
    "linear",
    "ddpm_linear",
    "ddpm_cosine",
]


def grid(lo=0.02, hi=0.97, n=37):
    return torch.linspace(lo, hi, n, dtype=F64)


def autograd_d(fn, t):
    t = t.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(t).sum() + 0 * t.sum(), t)
    return g


@pytest.mark.parametrize("sch", ALL, ids=IDS)
def test_derivatives_match_autograd(sch):
    t = grid() + 0.3 / 1000  # stay off the grid points of the discrete schedules
    for fn, dfn in [
        (sch.alpha, sch.d_alpha),
        (sch.sigma, sch.d_sigma),
        (sch.log_snr, sch.d_log_snr),
    ]:
        torch.testing.assert_close(dfn(t), autograd_d(fn, t), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("sch", ALL, ids=IDS)
def test_log_snr_and_its_inverse(sch):
    t = grid()
    lam = sch.log_snr(t)
    torch.testing.assert_close(lam, torch.log(sch.alpha(t) / sch.sigma(t)))
    assert (lam[1:] < lam[:-1]).all(), "log-SNR must decrease in t"
    torch.testing.assert_close(sch.t_from_log_snr(lam), t, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("sch", ALL, ids=IDS)
def test_sde_coefficients_reproduce_marginal_variance(sch):
    # forward SDE dx = f x dt + g dW  =>  d(sigma^2)/dt = 2 f sigma^2 + g^2 and
    # f = d log alpha / dt
    t = grid() + 0.3 / 1000
    f, g2 = sch.sde(t)
    torch.testing.assert_close(f, sch.d_alpha(t) / sch.alpha(t))
    dvar = autograd_d(lambda u: sch.sigma(u) ** 2, t)
    torch.testing.assert_close(
        g2, dvar - 2 * f * sch.sigma(t) ** 2, rtol=1e-8, atol=1e-10
    )
    assert (g2 > 0).all()


@pytest.mark.parametrize(
    "sch",
    [s for s in ALL if s.variance_preserving],
    ids=[i for s, i in zip(ALL, IDS) if s.variance_preserving],
)
def test_variance_preserving(sch):
    t = grid(0.0, 1.0 - 1e-3)
    torch.testing.assert_close(
        sch.alpha(t) ** 2 + sch.sigma(t) ** 2, torch.ones_like(t)
    )


@pytest.mark.parametrize(
    "sch",
    [S.VPLinear(), S.VPCosine(), S.get_schedule("ddpm_linear")],
    ids=lambda s: s.name,
)
def test_vp_sde_is_finite_at_zero(sch):
    f, g2 = sch.sde(torch.tensor([0.0, 0.5], dtype=F64))
    assert torch.isfinite(f).all() and torch.isfinite(g2).all()
    torch.testing.assert_close(g2, -2 * f)


def test_vp_linear_closed_form():
    sch = S.VPLinear(0.1, 20.0)
    t = grid()
    expected = torch.exp(-0.25 * t**2 * 19.9 - 0.5 * t * 0.1)
    torch.testing.assert_close(sch.alpha(t), expected)
    torch.testing.assert_close(sch.beta(t), 0.1 + 19.9 * t)
    f, g2 = sch.sde(t)
    torch.testing.assert_close(f, -0.5 * sch.beta(t))
    torch.testing.assert_close(g2, sch.beta(t))


def test_ve_and_linear_closed_forms():
    ve = S.VE(0.01, 50.0)
    t = grid()
    torch.testing.assert_close(ve.sigma(t), 0.01 * (5000.0) ** t)
    torch.testing.assert_close(ve.alpha(t), torch.ones_like(t))
    lin = S.LinearInterpolant()
    torch.testing.assert_close(lin.alpha(t), 1 - t)
    torch.testing.assert_close(lin.sigma(t), t)
    torch.testing.assert_close(lin.d_alpha(t), -torch.ones_like(t))


def test_discrete_matches_ddpm_chain():
    betas = S.ddpm_betas("linear", 1000)
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(
        0.02
    )
    sch = S.DiscreteVP(betas)
    abar = torch.cumprod(1 - betas, 0)
    ti = torch.arange(1, 1001, dtype=F64) / 1000
    torch.testing.assert_close(sch.alpha(ti) ** 2, abar, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(sch.alphas_cumprod, abar)
    assert sch.times()[0] == 0 and sch.times()[-1] == 1
    # the continuous twin VPLinear(0.1, 20) agrees closely with the discrete chain
    twin = S.VPLinear(0.1, 20.0)
    err = (sch.alpha(ti) - twin.alpha(ti)).abs().max().item()
    assert err < 2e-3, err
    # each step is the DDPM transition: alpha_{t_i | t_{i-1}}^2 = 1 - beta_i
    a, var = sch.transition(ti[:-1], ti[1:])
    torch.testing.assert_close(a**2, 1 - betas[1:])
    torch.testing.assert_close(var, betas[1:])


def test_cosine_discrete_matches_continuous():
    sch, cont = S.get_schedule("ddpm_cosine"), S.VPCosine()
    ti = torch.arange(1, 990, dtype=F64) / 1000  # away from the clipped last betas
    torch.testing.assert_close(sch.alpha(ti), cont.alpha(ti), rtol=1e-9, atol=1e-12)


def test_posterior_matches_ddpm_beta_tilde_and_sympy():
    betas = S.ddpm_betas("linear", 100)
    sch = S.DiscreteVP(betas)
    abar = torch.cumprod(1 - betas, 0)
    i = torch.arange(1, 100)  # steps 2..100 in 1-based notation
    s, t = i.to(F64) / 100, (i + 1).to(F64) / 100
    c_t, c_0, var = sch.posterior(s, t)
    b, ab, ab_prev = betas[i], abar[i], abar[i - 1]
    torch.testing.assert_close(var, (1 - ab_prev) / (1 - ab) * b)
    torch.testing.assert_close(c_0, ab_prev.sqrt() * b / (1 - ab))
    torch.testing.assert_close(c_t, (1 - b).sqrt() * (1 - ab_prev) / (1 - ab))
    # sympy: completing the square in x_s of q(x_t|x_s) q(x_s|x_0) gives the same
    # coefficients
    xs, xt, x0, a_ts, v_ts, a_s, v_s = sp.symbols(
        "x_s x_t x_0 a_ts v_ts a_s v_s", positive=True
    )
    logq = -((xt - a_ts * xs) ** 2) / (2 * v_ts) - (xs - a_s * x0) ** 2 / (2 * v_s)
    prec = -sp.diff(logq, xs, 2)
    mean = sp.solve(sp.diff(logq, xs), xs)[0]
    v_t = a_ts**2 * v_s + v_ts
    assert sp.simplify(1 / prec - v_ts * v_s / v_t) == 0
    assert sp.simplify(mean - (a_ts * v_s / v_t * xt + a_s * v_ts / v_t * x0)) == 0


@pytest.mark.parametrize("sch", ALL, ids=IDS)
def test_posterior_is_consistent_with_marginals(sch):
    # integrating the posterior against q(x_t|x_0) must give back q(x_s|x_0): mean and
    # variance
    s, t = torch.tensor(0.3, dtype=F64), torch.tensor(0.6, dtype=F64)
    c_t, c_0, v = sch.posterior(s, t)
    torch.testing.assert_close(c_t * sch.alpha(t) + c_0, sch.alpha(s))
    torch.testing.assert_close(c_t**2 * sch.sigma(t) ** 2 + v, sch.sigma(s) ** 2)


def test_cosine_endpoint_and_ranges():
    sch = S.VPCosine()
    assert sch.alpha(torch.tensor(1.0, dtype=F64)).item() < 1e-12
    lo, hi = sch.log_snr_range()
    assert lo == -math.inf and hi > 5
    lo, hi = S.VPLinear().log_snr_range()
    assert -6 < lo < -4


def test_repr_and_factory():
    assert "beta_max=20.0" in repr(S.get_schedule("vp_linear"))
    assert isinstance(S.get_schedule("rectified_flow"), S.LinearInterpolant)
    assert "T=1000" in repr(S.get_schedule("ddpm_linear"))


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: S.VPLinear().alpha(1.5), r"t must lie in \[0.0, 1.0\]"),
        (lambda: S.VPLinear().alpha(torch.tensor([0.5, -0.1])), "t must lie in"),
        (lambda: S.VPLinear().sigma(float("nan")), "t must lie in"),
        (lambda: S.VPLinear(beta_min=-1), "beta_min must be a positive"),
        (lambda: S.VPLinear(beta_min=5, beta_max=1), "beta_max must be >= beta_min"),
        (lambda: S.VE(sigma_min=2, sigma_max=1), "sigma_max must exceed"),
        (lambda: S.VE(sigma_min="a"), "sigma_min must be a positive finite number"),
        (lambda: S.get_schedule("nope"), "unknown schedule 'nope'"),
        (lambda: S.ddpm_betas("quadratic"), "unknown beta schedule"),
        (lambda: S.ddpm_betas("linear", 0), "T must be an integer >= 1"),
        (
            lambda: S.ddpm_betas("linear", 10, beta_end=1.5),
            "beta_end must be a number in",
        ),
        (lambda: S.DiscreteVP(torch.tensor([0.1, 1.2])), "strictly between 0 and 1"),
        (lambda: S.DiscreteVP(torch.zeros(2, 2)), "1-D tensor"),
        (
            lambda: S.VPLinear().t_from_log_snr(torch.tensor([-100.0])),
            "log-SNR must lie in",
        ),
        (
            lambda: S.VPLinear().t_from_log_snr(torch.tensor([float("nan")])),
            "must not be NaN",
        ),
        (lambda: S.VPLinear().transition(0.6, 0.3), "s <= t"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- the end points t = 0 and t = 1: values, never NaN --------------------------------
ENDS = torch.tensor([0.0, 1.0], dtype=F64)


@pytest.mark.parametrize("sch", ALL, ids=IDS)
def test_no_nan_at_the_end_points(sch):
    for fn in (
        sch.alpha,
        sch.sigma,
        sch.log_snr,
        sch.d_alpha,
        sch.d_sigma,
        sch.d_log_snr,
    ):
        assert not torch.isnan(fn(ENDS)).any(), fn.__name__
    for v in (
        *sch.sde(ENDS),
        *sch.transition(ENDS, ENDS),
        *sch.posterior(ENDS, ENDS),
        *sch.posterior(torch.zeros(2, dtype=F64), ENDS),
    ):
        assert not torch.isnan(v).any()
    c = sch.coefficients(0.0)
    assert not any(math.isnan(v) for v in c)


@pytest.mark.parametrize(
    "sch",
    [s for s in ALL if s.variance_preserving],
    ids=[i for s, i in zip(ALL, IDS) if s.variance_preserving],
)
def test_vp_d_sigma_is_infinite_at_zero_and_g2_finite(sch):
    # sigma_t ~ sqrt(beta(0) t) near 0, so d sigma/dt -> +inf, while g^2 = beta(0) is
    # finite (the cosine schedule's sigma_0 is round-off above 0, so its value there is
    # only large)
    assert sch.d_sigma(0.0) == math.inf or sch.name == "vp_cosine"
    assert sch.d_sigma(0.0) > 50
    f, g2 = sch.sde(0.0)
    assert math.isfinite(float(g2)) and float(g2) > 0


def test_linear_path_sde_at_the_ends():
    f, g2 = S.LinearInterpolant().sde(ENDS)
    # g^2 = 2 t / (1 - t): 0 at t = 0 and +inf at t = 1 (alpha_1 = 0: the SDE is
    # singular)
    assert g2[0] == 0 and g2[1] == math.inf and f[1] == -math.inf
    t = grid()
    torch.testing.assert_close(S.LinearInterpolant().sde(t)[1], 2 * t / (1 - t))


@pytest.mark.parametrize("sch", ALL, ids=IDS)
def test_posterior_and_transition_are_the_identity_when_s_equals_t(sch):
    t = torch.tensor([0.0, 0.3, 1.0], dtype=F64)
    a, b, var = sch.posterior(t, t)
    assert (a == 1).all() and (b == 0).all() and (var == 0).all()
    a_ts, var_ts = sch.transition(t, t)
    assert (a_ts == 1).all() and (var_ts == 0).all()


def test_coefficients_in_one_call_agree_with_the_separate_methods():
    for sch in ALL:
        t = grid() + 0.3 / 1000
        c = sch.coefficients(t)
        for got, want in zip(
            c, (sch.alpha(t), sch.sigma(t), sch.d_alpha(t), sch.d_sigma(t))
        ):
            torch.testing.assert_close(got, want)
        one = sch.coefficients(0.4567)
        assert all(isinstance(v, float) for v in one)
        t64 = torch.tensor(0.4567, dtype=F64)
        assert one.alpha == pytest.approx(float(sch.alpha(t64)), rel=1e-12)
        assert one.d_sigma == pytest.approx(float(sch.d_sigma(t64)), rel=1e-12)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: S.VPLinear().posterior(torch.zeros(3), torch.ones(2)),
            "broadcastable",
        ),
        (lambda: S.VPLinear().coefficients(1.5), "must be a number in"),
        (lambda: S.VPLinear().alpha("a"), "must be a number or a tensor"),
        (lambda: S.VPLinear().alpha(None), "must be a number or a tensor"),
        (lambda: S.VPLinear().t_from_log_snr("a"), "lam must be a number"),
        (lambda: S.ddpm_betas("cosine", 10, s=float("nan")), "s must be a positive"),
        (lambda: S.ddpm_betas("cosine", 10, max_beta=2.0), "max_beta"),
        (lambda: S.ddpm_betas("cosine", 10, max_beta=0.0), "max_beta"),
        (lambda: S.DiscreteVP(torch.tensor([0.1, float("nan")])), "between 0 and 1"),
        (lambda: S.get_schedule("vp_linear", beta=3), "bad options"),
    ],
)
def test_more_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()
