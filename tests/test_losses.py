import math

import pytest
import torch

from dlib import analytic, losses, param, sampling, schedules as S

F64 = torch.float64


def test_gaussian_kl_matches_torch_distributions(gen):
    m1, m2 = torch.randn(10, generator=gen, dtype=F64), torch.randn(10, generator=gen, dtype=F64)
    v1, v2 = torch.rand(10, generator=gen, dtype=F64) + 0.1, torch.rand(10, generator=gen, dtype=F64) + 0.1
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(m1, v1.sqrt()), torch.distributions.Normal(m2, v2.sqrt()))
    torch.testing.assert_close(losses.gaussian_kl(m1, v1, m2, v2), ref)
    with pytest.raises(ValueError, match="variances of a Gaussian KL must be positive"):
        losses.gaussian_kl(m1, -v1, m2, v2)


def test_oracle_eps_loss_equals_closed_form(gen):
    # data N(0, s I) in D dims: E||eps - eps_hat||^2 = D alpha^2 s / (alpha^2 s + sigma^2)
    s, D, t = 0.7, 3, 0.3
    g = analytic.Gaussian(torch.zeros(D), torch.full((D,), s))
    sch = S.VPLinear()
    oracle = g.denoiser(sch)
    x0 = g.sample(200_000, gen)
    val = losses.denoising_loss(oracle.eps, x0, sch, "eps", t=t, generator=gen).item()
    a2, s2 = sch.alpha(torch.tensor(t, dtype=F64)) ** 2, sch.sigma(torch.tensor(t, dtype=F64)) ** 2
    assert val == pytest.approx((D * a2 * s / (a2 * s + s2)).item(), rel=0.01)


@pytest.mark.parametrize("sch", [S.VPLinear(), S.VPCosine(), S.VE(0.01, 10.0), S.LinearInterpolant()], ids=lambda s: s.name)
def test_elbo_weights_make_every_kind_the_same_loss(sch, gen):
    x0 = torch.randn(64, 2, generator=gen, dtype=F64)
    eps = torch.randn(64, 2, generator=gen, dtype=F64)
    t = torch.rand(64, generator=gen, dtype=F64) * 0.9 + 0.05
    xt = sch.alpha(t)[:, None] * x0 + sch.sigma(t)[:, None] * eps
    eps_hat = torch.randn(64, 2, generator=gen, dtype=F64)
    ref = losses.elbo_weight("eps", t, sch) * ((eps - eps_hat) ** 2).sum(1)
    for kind in param.KINDS:
        pred = param.convert(eps_hat, "eps", kind, xt, t, sch)
        err = ((pred - param.target(kind, x0, eps, t, sch)) ** 2).sum(1)
        torch.testing.assert_close(losses.elbo_weight(kind, t, sch) * err, ref, rtol=1e-8, atol=1e-10)


def test_continuous_nelbo_closed_form_and_invariance(gen):
    # data N(0, s I): integrand in lambda is D e^{2l} s / (1 + s e^{2l}), so the term is D/2 log((1+s e^{2l0})/(1+s e^{2l1}))
    s, D = 0.5, 2
    g = analytic.Gaussian(torch.zeros(D), torch.full((D,), s))
    x0 = g.sample(20_000, gen)
    lin, cos = S.VPLinear(), S.VPCosine()
    def exact(t_range):
        l0, l1 = lin.log_snr(torch.tensor(t_range, dtype=F64))
        return D / 2 * math.log((1 + s * math.exp(2 * l0)) / (1 + s * math.exp(2 * l1)))

    est = losses.continuous_nelbo(g.denoiser(lin), x0, (0.05, 1.0), n_t=4, generator=gen)
    assert est.mean().item() == pytest.approx(exact((0.05, 1.0)), rel=0.03)
    t_range = (1e-3, 1.0)
    l0, l1 = lin.log_snr(torch.tensor(t_range, dtype=F64))
    # a cosine schedule with the same end-point log-SNRs gives the same value
    tc = cos.t_from_log_snr(torch.stack([l0, l1]))
    a = losses.continuous_nelbo(g.denoiser(lin), x0, t_range, sampling="log_snr", generator=torch.Generator().manual_seed(5))
    b = losses.continuous_nelbo(g.denoiser(cos), x0, (tc[0].item(), tc[1].item()), sampling="log_snr",
                                generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert a.mean().item() == pytest.approx(exact(t_range), rel=0.03)


def test_discrete_nelbo_bounds_nll_and_tightens(gen):
    g = analytic.Gaussian(torch.zeros(2), torch.full((2,), 0.5))
    sch = S.VPLinear()
    x0 = g.sample(4000, gen)
    nll = -g.log_prob(x0).mean().item()
    gaps = []
    for T in (10, 100):  # a grid uniform in log-SNR between fixed end points
        ts = sampling.time_grid(T - 1, 1.0, 1e-3, spacing="log_snr", schedule=sch).flip(0)
        terms = losses.discrete_nelbo(g.denoiser(sch), x0, ts, generator=gen, chunk=50_000)
        assert set(terms) == {"prior", "diffusion", "decoder", "total"}
        torch.testing.assert_close(terms["total"], terms["prior"] + terms["diffusion"] + terms["decoder"])
        gaps.append(terms["total"].mean().item() - nll)
    assert gaps[0] > gaps[1] > 0
    with pytest.raises(ValueError, match="strictly increasing"):
        losses.discrete_nelbo(g.denoiser(sch), x0, torch.tensor([0.5, 0.2]))


def test_dsm_equals_esm_plus_constant(gen):
    # C_t = 1/2 (D / sigma^2 - E||grad log p_t||^2), independent of the score model
    gmm = analytic.song_ermon()
    sch = S.VE(0.01, 20.0)
    t = 0.5
    x0 = gmm.sample(200_000, gen)
    xt, _ = losses.sample_xt(x0, t, sch, gen)
    true = lambda x, tt: gmm.score(x, tt, sch)  # noqa: E731
    sig2 = sch.sigma(torch.tensor(t, dtype=F64)).item() ** 2
    c_t = 0.5 * (2 / sig2 - (true(xt, t) ** 2).sum(1).mean().item())
    for scale in (0.0, 0.5, 1.0, 1.5):
        model = lambda x, tt, c=scale: c * true(x, tt)  # noqa: E731
        dsm = losses.dsm_loss(model, x0, t, sch, generator=torch.Generator().manual_seed(3)).item()
        esm = losses.esm_loss(model, true, xt, t).item()
        assert dsm - esm == pytest.approx(c_t, abs=0.02 * max(1.0, esm))


def test_flow_matching_and_reduce(gen):
    sch = S.LinearInterpolant()
    x0 = torch.randn(16, 2, generator=gen)
    net = lambda x, t: torch.zeros_like(x)  # noqa: E731
    per = losses.flow_matching_loss(net, x0, sch, generator=torch.Generator().manual_seed(0), reduce=False)
    assert per.shape == (16,)
    tot = losses.denoising_loss(net, x0, sch, "velocity", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(per.mean(), tot)
    w = losses.denoising_loss(net, x0, sch, "velocity", weight=lambda t: 2 * torch.ones_like(t), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(w, 2 * tot)


@pytest.mark.parametrize("call, match", [
    (lambda: losses.denoising_loss(lambda x, t: x, torch.zeros(4, 2), S.VPLinear(), "noise"), "unknown prediction kind"),
    (lambda: losses.denoising_loss(lambda x, t: x, torch.zeros(4, 2), S.VPLinear(), t_range=(0.5, 0.1)), "t_min < t_max"),
    (lambda: losses.denoising_loss(lambda x, t: x, torch.zeros(4, 2), S.VPLinear(), t_range=(0.0, 2.0)), "must lie in"),
    (lambda: losses.continuous_nelbo(analytic.ring().denoiser(S.VPLinear()), torch.zeros(4, 2), sampling="sobol"), "unknown sampling"),
    (lambda: losses.continuous_nelbo(analytic.ring().denoiser(S.VPLinear()), torch.zeros(4, 2), n_t=0), "positive integer n_t"),
    (lambda: losses.elbo_weight("x_0", 0.5, S.VPLinear()), "unknown prediction kind"),
])
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_cpu_generator_drives_other_devices_and_dtypes():
    # draws happen on the generator's device, then move: same numbers whatever x0's dtype/device
    x64 = torch.zeros(5, 3, dtype=F64)
    a, _ = losses.sample_xt(x64, 0.5, S.VPLinear(), torch.Generator().manual_seed(0))
    b, _ = losses.sample_xt(x64.float(), 0.5, S.VPLinear(), torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.float(), b)
    if torch.cuda.is_available():  # pragma: no cover - only with a GPU
        c, _ = losses.sample_xt(x64.cuda(), 0.5, S.VPLinear(), torch.Generator().manual_seed(0))
        torch.testing.assert_close(c.cpu(), a)
