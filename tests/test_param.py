import pytest
import torch

from dlib import analytic, param, schedules as S

F64 = torch.float64
SCHEDS = [
    S.VPLinear(),
    S.VPCosine(),
    S.VE(0.01, 20.0),
    S.LinearInterpolant(),
    S.get_schedule("ddpm_linear"),
]


@pytest.mark.parametrize("sch", SCHEDS, ids=lambda s: s.name)
@pytest.mark.parametrize("src", param.KINDS)
def test_round_trips_between_all_kinds(sch, src, gen):
    x = torch.randn(64, 3, generator=gen, dtype=F64)
    t = torch.rand(64, generator=gen, dtype=F64) * 0.9 + 0.05
    pred = torch.randn(64, 3, generator=gen, dtype=F64)
    x0, eps = param.to_x0_eps(pred, src, x, t, sch)
    # the pair is consistent with x = alpha x0 + sigma eps
    torch.testing.assert_close(
        sch.alpha(t)[:, None] * x0 + sch.sigma(t)[:, None] * eps, x
    )
    for dst in param.KINDS:
        back = param.convert(
            param.convert(pred, src, dst, x, t, sch), dst, src, x, t, sch
        )
        torch.testing.assert_close(back, pred, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sch", SCHEDS, ids=lambda s: s.name)
def test_targets_are_the_conversions_of_the_true_pair(sch, gen):
    x0 = torch.randn(32, 2, generator=gen, dtype=F64)
    eps = torch.randn(32, 2, generator=gen, dtype=F64)
    t = torch.rand(32, generator=gen, dtype=F64) * 0.9 + 0.05
    a, s = sch.alpha(t)[:, None], sch.sigma(t)[:, None]
    xt = a * x0 + s * eps
    torch.testing.assert_close(param.target("v", x0, eps, t, sch), a * eps - s * x0)
    torch.testing.assert_close(param.target("score", x0, eps, t, sch), -eps / s)
    torch.testing.assert_close(
        param.target("velocity", x0, eps, t, sch),
        sch.d_alpha(t)[:, None] * x0 + sch.d_sigma(t)[:, None] * eps,
    )
    for k in param.KINDS:
        y = param.target(k, x0, eps, t, sch)
        torch.testing.assert_close(param.to_x0_eps(y, k, xt, t, sch)[0], x0)


def test_velocity_is_time_derivative_of_path(gen):
    sch = S.VPCosine()
    x0 = torch.randn(8, 2, generator=gen, dtype=F64)
    eps = torch.randn(8, 2, generator=gen, dtype=F64)
    t = torch.full((8,), 0.4, dtype=F64, requires_grad=True)
    xt = sch.alpha(t)[:, None] * x0 + sch.sigma(t)[:, None] * eps
    d = torch.stack(
        [
            torch.autograd.grad(xt[:, j].sum(), t, retain_graph=True)[0]
            for j in range(2)
        ],
        1,
    )
    torch.testing.assert_close(d, param.target("velocity", x0, eps, t.detach(), sch))


def test_denoiser_views_and_nfe(gen):
    sch = S.VPLinear()
    gmm = analytic.ring()
    oracle = gmm.denoiser(sch)
    net = param.Denoiser(lambda x, t: gmm.predict(x, t, sch, "x0"), sch, "x0")
    x = torch.randn(16, 2, generator=gen, dtype=F64) * 3
    for kind in param.KINDS:
        torch.testing.assert_close(
            net.predict(x, 0.5, kind), oracle.predict(x, 0.5, kind)
        )
    torch.testing.assert_close(net.score(x, 0.5), gmm.score(x, 0.5, sch))
    torch.testing.assert_close(net.velocity(x, 0.5), oracle.velocity(x, 0.5))
    torch.testing.assert_close(net.v(x, 0.5), oracle.v(x, 0.5))
    torch.testing.assert_close(net.eps(x, 0.5), oracle.eps(x, 0.5))
    net.nfe = 0
    net.x0_eps(x, 0.5)
    net.x0(x, 0.5)
    assert net.nfe == 2
    assert "x0" in repr(net) and "AnalyticDenoiser" in repr(oracle)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: param.convert(
                torch.zeros(2, 2), "eps", "noise", torch.zeros(2, 2), 0.5, S.VPLinear()
            ),
            "unknown prediction kind 'noise'",
        ),
        (
            lambda: param.to_x0_eps(
                torch.zeros(2, 3), "eps", torch.zeros(2, 2), 0.5, S.VPLinear()
            ),
            "pred must have the shape of x",
        ),
        (
            lambda: param.to_x0_eps(
                torch.zeros(2, 2),
                "eps",
                torch.zeros(2, 2),
                torch.ones(3) / 2,
                S.VPLinear(),
            ),
            r"shape \(2,\)",
        ),
        (
            lambda: param.target(
                "eps", torch.zeros(2, 2), torch.zeros(2, 3), 0.5, S.VPLinear()
            ),
            "eps must have the shape of x0",
        ),
        (
            lambda: param.Denoiser(lambda x, t: x, "vp", "eps"),
            "must be a dlib.schedules.Schedule",
        ),
        (lambda: param.Denoiser(3, S.VPLinear(), "eps"), "callable"),
        (
            lambda: param.Denoiser(lambda x, t: x, S.VPLinear(), "epsilon"),
            "unknown prediction kind",
        ),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "old, new",
    [
        (S.VPLinear(), S.LinearInterpolant()),
        (S.LinearInterpolant(), S.VPCosine()),
        (S.VE(0.01, 50.0), S.VPLinear()),
    ],
    ids=["vp->linear", "linear->cosine", "ve->vp"],
)
def test_change_schedule_matches_the_new_schedules_oracle(old, new, gen):
    gmm = analytic.ring()
    moved = param.change_schedule(gmm.denoiser(old), new)
    x = torch.randn(64, 2, generator=gen, dtype=F64) * 3
    for tau in (0.2, 0.5, 0.8):  # times whose log-SNR both schedules reach
        for kind in param.KINDS:
            torch.testing.assert_close(
                moved.predict(x, tau, kind),
                gmm.predict(x, tau, new, kind),
                rtol=1e-7,
                atol=1e-7,
            )
    assert moved.nfe == 15 and "change_schedule" in repr(moved)
    with pytest.raises(ValueError, match="Denoiser"):
        param.change_schedule(lambda x, t: x, new)
    with pytest.raises(ValueError, match="Schedule"):
        param.change_schedule(moved, "linear")


def test_linear_path_velocity_is_finite_at_the_ends():
    lin = S.LinearInterpolant()
    t = torch.tensor([0.0, 1.0], dtype=F64)
    assert lin.d_alpha(t).tolist() == [-1.0, -1.0] and lin.d_sigma(t).tolist() == [
        1.0,
        1.0,
    ]
    oracle = analytic.ring().denoiser(lin)
    assert torch.isfinite(
        param.target(
            "velocity", torch.ones(2, 2, dtype=F64), torch.ones(2, 2, dtype=F64), t, lin
        )
    ).all()
    assert torch.isfinite(oracle.velocity(torch.zeros(2, 2, dtype=F64), 0.999)).all()


# --- singular conversions at the end points: a clear error, never NaN -----------------
def test_velocity_of_a_vp_schedule_at_t0_is_a_clear_error():
    x = torch.randn(4, 2, dtype=torch.float64)
    oracle = analytic.Gaussian(torch.zeros(2), 1.0).denoiser(S.VPLinear())
    with pytest.raises(ValueError, match="infinite"):
        oracle.velocity(x, 0.0)
    with pytest.raises(ValueError, match="infinite"):
        param.target("velocity", x, x, 0.0, S.VPLinear())
    # at t > 0 it is finite, and on the linear path it is finite at t = 0 as well
    assert torch.isfinite(oracle.velocity(x, 1e-6)).all()
    lin = analytic.Gaussian(torch.zeros(2), 1.0).denoiser(S.LinearInterpolant())
    assert torch.isfinite(lin.velocity(x, 0.0)).all()
    assert torch.isfinite(
        param.target("velocity", x, x, 0.0, S.LinearInterpolant())
    ).all()


def test_singular_conversions_say_why():
    x = torch.randn(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="sigma_t = 0"):
        param.convert(x, "x0", "eps", x, 0.0, S.VPLinear())
    with pytest.raises(ValueError, match="alpha_t = 0"):
        param.convert(x, "eps", "x0", x, 1.0, S.LinearInterpolant())
    with pytest.raises(ValueError, match="some of the times"):
        param.convert(x, "x0", "score", x, torch.tensor([0.0, 0.5, 0.5]), S.VPLinear())
    # the same conversions away from the end points are finite
    assert torch.isfinite(param.convert(x, "x0", "eps", x, 1e-4, S.VPLinear())).all()


def test_times_are_float_whatever_the_data():
    from dlib._checks import batch_time

    tokens = torch.tensor([[1, 2], [3, 4]])
    t = batch_time(0.7, tokens)
    assert t.is_floating_point() and torch.allclose(t, torch.full((2,), 0.7))
    t = batch_time(torch.tensor([0, 1]), tokens)  # integer times become float times
    assert t.dtype == torch.get_default_dtype() and t.tolist() == [0.0, 1.0]


def test_denoiser_accepts_a_float_time_and_a_tensor_of_times_alike():
    x = torch.randn(5, 2, dtype=torch.float64)
    oracle = analytic.Gaussian(torch.ones(2), 0.5).denoiser(S.VPCosine())
    torch.testing.assert_close(oracle.eps(x, 0.3), oracle.eps(x, torch.full((5,), 0.3)))
    net = param.Denoiser(lambda y, t: oracle.eps(y, t), S.VPCosine(), "eps")
    torch.testing.assert_close(net.velocity(x, 0.3), oracle.velocity(x, 0.3))
    with pytest.raises(ValueError, match="must return a tensor of x's shape"):
        param.Denoiser(lambda y, t: y[:, :1], S.VPCosine()).eps(x, 0.3)
    with pytest.raises(ValueError, match="NaN or inf"):
        oracle.eps(torch.full((2, 2), float("nan")), 0.3)


def test_conversion_whose_coefficients_overflow_the_dtype_is_a_value_error():
    # at t = 1e-116 on VPLinear, sigma ~ 3e-59: 1/sigma overflows float32
    den = param.Denoiser(lambda x, t: torch.zeros_like(x), S.VPLinear(), "x0")
    with pytest.raises(ValueError, match="overflow"):
        den.eps(torch.ones(2, 3), 1e-116)
    # float64 still represents it
    assert torch.isfinite(den.eps(torch.ones(2, 3, dtype=torch.float64), 1e-116)).all()
