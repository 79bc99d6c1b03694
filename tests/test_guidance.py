"""Tests for dlib.guidance, the class-conditional GaussianMixture and the label input of
nets.MLP (chapter I.5): guided scores against autograd of the exact log-densities, the
parameterisation invariance of CFG, and bad input."""

import pytest
import torch

from dlib import analytic, guidance, nets, param, sampling, schedules as S

F64 = torch.float64
MEANS = [[-1.5, 0.5], [0.0, 2.0], [1.5, 0.5], [0.5, -1.5], [-1.0, -1.5], [1.0, 1.8]]
VARS = [0.3, 0.2, 0.4, 0.3, 0.25, 0.35]
WEIGHTS, LABELS = [1, 2, 1, 1, 2, 1], [0, 0, 1, 1, 2, 2]
GMM = analytic.GaussianMixture(MEANS, VARS, WEIGHTS, labels=LABELS)
VP = S.VPLinear()


def _points(gen, n=64):
    return 2.0 * torch.randn(n, 2, generator=gen, dtype=F64)


def _grad(fn, x):
    x = x.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    return g


def test_class_log_prob_is_bayes_rule(gen):
    x = _points(gen)
    prior = GMM.class_prior()
    assert torch.allclose(prior, torch.tensor([3 / 8, 2 / 8, 3 / 8], dtype=F64))
    for t in (None, 0.05, 0.5, 0.95):
        lp = GMM.class_log_prob(x, t, VP if t is not None else None)
        assert torch.allclose(lp.exp().sum(1), torch.ones(len(x), dtype=F64))
        for y in range(3):  # p_t(y | x) = p(y) p_t(x | y) / p_t(x)
            cond = GMM.conditional(y)
            sch = VP if t is not None else None
            bayes = prior[y].log() + cond.log_prob(x, t, sch) - GMM.log_prob(x, t, sch)
            torch.testing.assert_close(lp[:, y], bayes, rtol=0, atol=1e-12)


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5, -0.5])
def test_classifier_guidance_is_autograd_of_the_guided_log_density(gen, w):
    x = _points(gen)
    for y in range(3):
        den = guidance.classifier_guidance(
            GMM.denoiser(VP), lambda x, t: GMM.class_log_prob(x, t, VP)[:, y], w
        )
        for t in (0.02, 0.3, 0.7, 0.98):
            def guided(z):
                return GMM.log_prob(z, t, VP) + w * GMM.class_log_prob(z, t, VP)[:, y]

            want = _grad(guided, x)
            torch.testing.assert_close(den.score(x, t), want, rtol=0, atol=1e-10)
        if w == 1.0:  # the exact noisy classifier at w = 1: the conditional model
            cond = GMM.conditional(y).denoiser(VP)
            tt = torch.linspace(0.02, 0.98, len(x), dtype=F64)
            torch.testing.assert_close(den.eps(x, tt), cond.eps(x, tt), rtol=0,
                                       atol=1e-10)


def test_classifier_guidance_runs_inside_samplers_no_grad(gen):
    den = guidance.classifier_guidance(
        GMM.denoiser(VP), lambda x, t: GMM.class_log_prob(x, t, VP)[:, 2], 1.0
    )
    cond = GMM.conditional(2).denoiser(VP)
    z = torch.randn(50, 2, generator=gen, dtype=F64)
    ts = sampling.time_grid(10, 1.0, 1e-3)
    torch.testing.assert_close(
        sampling.sample_heun(den, z, ts), sampling.sample_heun(cond, z, ts), atol=1e-10,
        rtol=0,
    )


@pytest.mark.parametrize("w", [0.0, 1.0, 3.0, 7.5])
def test_cfg_is_the_same_model_in_every_kind(gen, w):
    x = _points(gen)
    cond, uncond = GMM.conditional(1).denoiser(VP), GMM.denoiser(VP)
    models = {k: guidance.classifier_free_guidance(cond, uncond, w, k)
              for k in param.KINDS}
    for t in (0.05, 0.5, 0.95):
        ref = models["eps"].predict(x, t, "eps")
        for k, den in models.items():
            assert den.kind == k
            torch.testing.assert_close(den.predict(x, t, "eps"), ref, rtol=0,
                                       atol=1e-10)
        # score form: s_uncond + w (s_cond - s_uncond)
        s_u, s_c = uncond.score(x, t), cond.score(x, t)
        torch.testing.assert_close(
            models["x0"].score(x, t), s_u + w * (s_c - s_u), rtol=0, atol=1e-9
        )
        # = classifier guidance with the exact noisy classifier and the same w
        cg = guidance.classifier_guidance(
            uncond, lambda z, tt: GMM.class_log_prob(z, tt, VP)[:, 1], w
        )
        torch.testing.assert_close(cg.eps(x, t), ref, rtol=0, atol=1e-10)
    # Ho & Salimans' (1 + w_hs) eps_c - w_hs eps_u is our w = 1 + w_hs
    w_hs = w - 1.0
    t = 0.4
    hs = (1 + w_hs) * cond.eps(x, t) - w_hs * uncond.eps(x, t)
    torch.testing.assert_close(models["eps"].eps(x, t), hs, rtol=0, atol=1e-12)
    # w = 1 is the conditional model, w = 0 the unconditional one
    if w in (0.0, 1.0):
        target = cond if w == 1.0 else uncond
        torch.testing.assert_close(models["v"].eps(x, t), target.eps(x, t), atol=1e-12,
                                   rtol=0)


def test_label_denoiser_and_mlp_labels(gen):
    torch.manual_seed(0)
    net = nets.MLP(3, hidden=16, depth=3, emb_dim=8, num_classes=4)
    assert net.null_label == 4 and "num_classes=4" in repr(net)
    x = torch.randn(5, 3, generator=gen)
    y = torch.tensor([0, 1, 2, 3, 4])
    out = net(x, 0.3, y)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(net(x, 0.3), net(x, 0.3, 4))      # None = null label
    torch.testing.assert_close(net(x, 0.3, 2), net(x, 0.3, torch.full((5,), 2)))
    assert not torch.allclose(net(x, 0.3, 0), net(x, 0.3, 1))     # labels matter
    # float64 input: float32 network, float64 output
    assert net(x.double(), 0.3, y).dtype == F64
    cond = guidance.label_denoiser(net, y, VP)
    unc = guidance.label_denoiser(net, None, VP, "x0")
    torch.testing.assert_close(cond.eps(x, 0.3), out)
    torch.testing.assert_close(unc.x0(x, 0.3), net(x, 0.3))
    cfg = guidance.classifier_free_guidance(cond, unc, 2.0)
    assert sampling.sample_euler(cfg, x, sampling.time_grid(3)).shape == x.shape
    # an unconditional MLP is unchanged (same parameters, no label embedding)
    torch.manual_seed(0)
    plain = nets.MLP(3, hidden=16, depth=3, emb_dim=8)
    assert not hasattr(plain, "label") and plain.null_label is None
    assert plain(x, 0.3).shape == x.shape


def test_bad_input():
    net = nets.MLP(2, hidden=8, depth=2, emb_dim=4, num_classes=3)
    x = torch.zeros(4, 2)
    for bad in (torch.tensor([0, 1, 2, 4]), torch.tensor([-1, 0, 0, 0]),
                torch.zeros(4), torch.tensor([0, 1]),
                torch.zeros(4, 1, dtype=torch.long), "a", 1.5, True):
        with pytest.raises(ValueError, match="^y must"):
            net(x, 0.5, bad)
    with pytest.raises(ValueError, match="no label input"):
        nets.MLP(2, hidden=8, depth=2, emb_dim=4)(x, 0.5, 1)
    for bad in (0, -2, 1.5, "3"):
        with pytest.raises(ValueError, match="num_classes"):
            nets.MLP(2, num_classes=bad)
    with pytest.raises(ValueError, match="labels must use every class"):
        analytic.GaussianMixture([[0.0], [1.0]], 1.0, labels=[0, 2])
    for bad in ([0], [0, -1], [0.0, 1.0], [True, False], "ab", 3, torch.zeros(2)):
        with pytest.raises(ValueError, match="^labels must"):
            analytic.GaussianMixture([[0.0], [1.0]], 1.0, labels=bad)
    plain = analytic.GaussianMixture([[0.0], [1.0]], 1.0)
    assert plain.n_classes == 0
    for call in (plain.class_prior, lambda: plain.conditional(0),
                 lambda: plain.class_log_prob(torch.zeros(2, 1))):
        with pytest.raises(ValueError, match="needs class labels"):
            call()
    for bad in (3, -1, 1.0, True):
        with pytest.raises(ValueError, match="^y must"):
            GMM.conditional(bad)
    with pytest.raises(ValueError, match="shape"):
        GMM.class_log_prob(torch.zeros(3, 3), 0.5, VP)
    den = GMM.denoiser(VP)
    with pytest.raises(ValueError, match="denoiser"):
        guidance.classifier_guidance(lambda x, t: x, lambda x, t: x[:, 0], 1.0)
    with pytest.raises(ValueError, match="log_prob"):
        guidance.classifier_guidance(den, 3, 1.0)
    for bad in (float("nan"), "1", None):
        with pytest.raises(ValueError, match="^w must"):
            guidance.classifier_guidance(den, lambda x, t: x[:, 0], bad)
        with pytest.raises(ValueError, match="^w must"):
            guidance.classifier_free_guidance(den, den, bad)
    wrong = guidance.classifier_guidance(den, lambda x, t: x, 1.0)
    with pytest.raises(ValueError, match=r"log_prob\(x, t\) must return"):
        wrong.eps(torch.zeros(3, 2, dtype=F64), 0.5)
    with pytest.raises(ValueError, match="same schedule"):
        guidance.classifier_free_guidance(den, GMM.denoiser(S.VPCosine()), 2.0)
    with pytest.raises(ValueError, match="uncond"):
        guidance.classifier_free_guidance(den, None, 2.0)
    with pytest.raises(ValueError, match="prediction kind"):
        guidance.classifier_free_guidance(den, den, 2.0, "noise")
    for bad in (-1, 1.0, True, torch.zeros(3), torch.zeros(2, 2, dtype=torch.long)):
        with pytest.raises(ValueError, match="^y must"):
            guidance.label_denoiser(net, bad, VP)
    with pytest.raises(ValueError, match="net"):
        guidance.label_denoiser(None, 0, VP)
    with pytest.raises(ValueError, match="schedule"):
        guidance.label_denoiser(net, 0, "vp")
    # the guided model checks its inputs like the model it wraps (dimension 2)
    cfg = guidance.classifier_free_guidance(den, den, 2.0)
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        cfg.eps(torch.zeros(3, 3, dtype=F64), 0.5)
