"""Tests for the flow-view additions to dlib.metrics (chapter 3): straightness of PF-ODE
paths, the one-probe Hutchinson error of the PF-ODE likelihood in 2-D, and the chapter's
table of loss weightings on the linear path (losses.elbo_weight vs closed forms)."""

import pytest
import torch

from dlib import analytic, losses, metrics, param, sampling, schedules as S

F64 = torch.float64


def _velocity(fn, schedule=None):
    return param.Denoiser(fn, schedule or S.LinearInterpolant(), "velocity")


def test_constant_field_is_straight(gen):
    c = torch.tensor([1.5, -2.0], dtype=F64)
    den = _velocity(lambda x, t: c.expand_as(x))
    x = torch.randn(50, 2, generator=gen, dtype=F64)
    ts = sampling.time_grid(10, 1.0, 1e-3)
    assert metrics.straightness(den, x, ts) < 1e-24
    assert metrics.straightness(den, x, ts, relative=True) < 1e-24


def test_point_mass_rectified_flow_is_straight(gen):
    # data = a point m: the rectified-flow velocity (x - m)/t moves points on lines
    m = torch.tensor([0.7, -0.3], dtype=F64)
    den = _velocity(lambda x, t: (x - m) / t[:, None])
    x = torch.randn(40, 2, generator=gen, dtype=F64)
    assert metrics.straightness(den, x, sampling.time_grid(7, 1.0, 1e-2)) < 1e-20


def test_known_curved_field():
    # v = 2t in 1-D: x(t) = t^2 + C, chord speed 1 + a on [a, 1], S = (1 - a)^2 / 3
    a = 1e-3
    den = _velocity(lambda x, t: 2 * t[:, None].expand_as(x))
    x = torch.zeros(3, 1, dtype=F64)
    s = metrics.straightness(den, x, sampling.time_grid(2000, 1.0, a))
    assert s == pytest.approx((1 - a) ** 2 / 3, rel=1e-6)
    rel = metrics.straightness(den, x, sampling.time_grid(2000, 1.0, a), relative=True)
    assert rel == pytest.approx((1 - a) ** 2 / 3 / (1 + a) ** 2, rel=1e-6)


def test_rectified_flow_of_a_mixture_is_curved_and_converges(gen):
    gmm = analytic.ring(4, 2.0, 0.2)
    rf = S.LinearInterpolant()
    def fn(x, t):
        x0, eps = gmm.x0_eps(x, t, rf)
        return eps - x0

    den = param.Denoiser(fn, rf, "velocity")
    z = torch.randn(200, 2, generator=gen, dtype=F64)
    s1 = metrics.straightness(den, z, sampling.time_grid(200, 0.999, 1e-3))
    s2 = metrics.straightness(den, z, sampling.time_grid(400, 0.999, 1e-3))
    assert s1 > 0.05  # the marginal field of crossing straight paths is curved
    assert s1 == pytest.approx(s2, rel=1e-3)
    # the relative value is scale-free: the field of the process scaled by c has paths
    # scaled by c
    c = 3.0
    den_c = param.Denoiser(lambda x, t: c * den.fn(x / c, t), rf, "velocity")
    ts = sampling.time_grid(200, 0.999, 1e-3)
    assert metrics.straightness(den_c, c * z, ts) == pytest.approx(c**2 * s1, rel=1e-10)
    assert metrics.straightness(den_c, c * z, ts, relative=True) == pytest.approx(
        metrics.straightness(den, z, ts, relative=True), rel=1e-10)


def test_straightness_input_checks(gen):
    den = _velocity(lambda x, t: x)
    x = torch.randn(5, 2, generator=gen)
    with pytest.raises(ValueError, match="positive time"):
        metrics.straightness(den, x, sampling.time_grid(4, 1.0, 1e-3, final_zero=True))
    with pytest.raises(ValueError, match="decreasing"):
        metrics.straightness(den, x, torch.tensor([0.1, 0.5]))
    with pytest.raises(ValueError, match="Denoiser"):
        metrics.straightness(lambda x, t: x, x, sampling.time_grid(4))
    with pytest.raises(ValueError, match="batch"):
        metrics.straightness(den, torch.zeros(3), sampling.time_grid(4))


def test_hutchinson_error_in_2d_is_the_offdiagonal_term(gen):
    # v = M x has the Jacobian M everywhere: one Rademacher probe z kept along the path
    # gives z^T M z per unit time, whose error against tr M is z1 z2 (M12 + M21) exactly
    # (chapter 3)
    M = torch.tensor([[0.3, 1.1], [-0.4, -0.2]], dtype=F64)
    den = _velocity(lambda x, t: x @ M.T)
    x = torch.randn(64, 2, generator=gen, dtype=F64)
    kw = dict(t_min=0.1, t_max=0.9, rtol=1e-10, atol=1e-10,
              prior_log_prob=lambda xT: torch.zeros(len(xT), dtype=F64))
    exact = metrics.pf_ode_log_likelihood(den, x, divergence="exact", **kw)
    probe_gen = torch.Generator().manual_seed(3)
    hutch = metrics.pf_ode_log_likelihood(den, x, divergence="hutchinson", n_probes=1,
                                          generator=probe_gen, **kw)
    dt = 0.8
    tr = M.trace().item() * dt
    assert torch.allclose(exact, torch.full_like(exact, tr), atol=1e-8)
    err = hutch - exact
    off = abs(M[0, 1] + M[1, 0]).item() * dt
    assert torch.allclose(err.abs(), torch.full_like(err, off), atol=1e-8)
    assert (err > 0).any() and (err < 0).any()   # the sign is the probe's z1 z2


def test_linear_path_weightings_of_the_unweighted_losses():
    # the chapter's table: on the linear path (e^lambda = (1-t)/t) the unweighted loss
    # of kind k weights the log-SNR by omega = 1 / w_k, in closed form
    rf = S.LinearInterpolant()
    t = torch.linspace(0.01, 0.99, 99, dtype=F64)
    e = rf.log_snr(t).exp()
    assert torch.allclose(e, (1 - t) / t, rtol=1e-12)
    closed = {"eps": e / (1 + e) ** 2, "x0": 1 / (e * (1 + e) ** 2),
              "v": t * ((1 - t) ** 2 + t**2) ** 2 / (1 - t), "score": e,
              "velocity": 1 / e}
    for kind, omega in closed.items():
        w = losses.elbo_weight(kind, t, rf)
        assert torch.allclose(1 / w, omega, rtol=1e-10), kind
    # conditional flow matching = an eps-loss weighted by 1/(1-t)^2 (exercise 3)
    ratio = losses.elbo_weight("eps", t, rf) / losses.elbo_weight("velocity", t, rf)
    assert torch.allclose(ratio, 1 / (1 - t) ** 2, rtol=1e-10)
