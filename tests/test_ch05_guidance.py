"""Chapter I.5 (guidance): the formulas the chapter derives, checked numerically with
dlib's conversions, autograd and the reference ODE solver on a labelled mixture."""

import pytest
import torch

from dlib import analytic, guidance, sampling, schedules as S

F64 = torch.float64
GMM = analytic.GaussianMixture(
    [[-1.5, 0.5], [0.0, 2.0], [1.5, 0.5], [0.5, -1.5], [-1.0, -1.5], [1.0, 1.8]],
    0.3,
    labels=[0, 0, 1, 1, 2, 2],
)


def _grad(fn, x):
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    return g


@pytest.mark.parametrize(
    "schedule", [S.VPLinear(), S.VPCosine(), S.LinearInterpolant()]
)
def test_classifier_guidance_shifts_in_every_parameterisation(gen, schedule):
    # eps~ = eps - w sigma g,  x0~ = x0 + w sigma^2 / alpha g,
    # v~ = v + w sigma^2 lambda' g = v - g(t)^2 w g / 2
    x = 2 * torch.randn(40, 2, generator=gen, dtype=F64)
    w, y = 2.5, 1
    base = GMM.denoiser(schedule)
    guided = guidance.classifier_guidance(
        base, lambda z, t: GMM.class_log_prob(z, t, schedule)[:, y], w
    )
    for t in (0.1, 0.5, 0.9):
        g = _grad(lambda z: GMM.class_log_prob(z, t, schedule)[:, y], x)
        c = schedule.coefficients(torch.tensor(t, dtype=F64))
        a, s, da, ds = (float(v) for v in c)
        lam_dot = da / a - ds / s
        torch.testing.assert_close(guided.eps(x, t), base.eps(x, t) - w * s * g)
        torch.testing.assert_close(guided.x0(x, t), base.x0(x, t) + w * s**2 / a * g)
        v_shift = base.velocity(x, t) + w * s**2 * lam_dot * g
        torch.testing.assert_close(guided.velocity(x, t), v_shift)
        _, g2 = schedule.sde(torch.tensor([t], dtype=F64))
        torch.testing.assert_close(v_shift, base.velocity(x, t) - 0.5 * g2 * w * g)


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0])
def test_cfg_field_is_the_gradient_of_p_t_times_classifier_power(gen, w):
    # the CFG score (scale w) is grad log [p_t(x) p_t(y|x)^w]; at t -> 0 that is the
    # score of the tilted law q^w = p(x) p(y|x)^w
    vp = S.VPLinear()
    x = 2 * torch.randn(40, 2, generator=gen, dtype=F64)
    cfg = guidance.classifier_free_guidance(
        GMM.conditional(0).denoiser(vp), GMM.denoiser(vp), w
    )
    for t in (1e-4, 0.3, 0.8):
        want = _grad(
            lambda z: GMM.log_prob(z, t, vp)
            + w * GMM.class_log_prob(z, t, vp)[:, 0],
            x,
        )
        torch.testing.assert_close(cfg.score(x, t), want, rtol=1e-9, atol=1e-9)


def test_flow_map_properties(gen):
    # identity, composition and self-consistency of the exact PF-ODE flow map
    vp = S.VPLinear()
    oracle = GMM.denoiser(vp)
    x = torch.randn(30, 2, generator=gen, dtype=F64)

    def flow(z, t, s):
        return sampling.sample_ode(
            oracle, z, torch.tensor([t, s], dtype=F64), rtol=1e-10, atol=1e-10
        )

    x_mid = flow(x, 1.0, 0.5)
    end = flow(x_mid, 0.5, 1e-3)
    torch.testing.assert_close(end, flow(x, 1.0, 1e-3), rtol=0, atol=1e-6)
    torch.testing.assert_close(flow(x_mid, 0.5, 0.5 - 1e-12), x_mid, rtol=0, atol=1e-9)
    h = 1e-5
    fd = (flow(x_mid, 0.5, 0.5 - h) - x_mid) / (-h)
    torch.testing.assert_close(fd, oracle.velocity(x_mid, 0.5), rtol=1e-3, atol=1e-3)
