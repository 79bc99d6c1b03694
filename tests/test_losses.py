import math

import pytest
import torch

from dlib import analytic, losses, param, sampling, schedules as S

F64 = torch.float64


def test_gaussian_kl_matches_torch_distributions(gen):
    m1, m2 = (
        torch.randn(10, generator=gen, dtype=F64),
        torch.randn(10, generator=gen, dtype=F64),
    )
    v1, v2 = (
        torch.rand(10, generator=gen, dtype=F64) + 0.1,
        torch.rand(10, generator=gen, dtype=F64) + 0.1,
    )
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, v1.sqrt()),
        torch.distributions.Normal(m2, v2.sqrt()),
    )
    torch.testing.assert_close(losses.gaussian_kl(m1, v1, m2, v2), ref)
    with pytest.raises(ValueError, match=r"var1 \(a variance\) must be positive"):
        losses.gaussian_kl(m1, -v1, m2, v2)


def test_oracle_eps_loss_equals_closed_form(gen):
    # data N(0, s I) in D dims:
    # E||eps - eps_hat||^2 = D alpha^2 s / (alpha^2 s + sigma^2)
    s, D, t = 0.7, 3, 0.3
    g = analytic.Gaussian(torch.zeros(D), torch.full((D,), s))
    sch = S.VPLinear()
    oracle = g.denoiser(sch)
    x0 = g.sample(200_000, gen)
    val = losses.denoising_loss(oracle.eps, x0, sch, "eps", t=t, generator=gen).item()
    a2, s2 = (
        sch.alpha(torch.tensor(t, dtype=F64)) ** 2,
        sch.sigma(torch.tensor(t, dtype=F64)) ** 2,
    )
    assert val == pytest.approx((D * a2 * s / (a2 * s + s2)).item(), rel=0.01)


@pytest.mark.parametrize(
    "sch",
    [S.VPLinear(), S.VPCosine(), S.VE(0.01, 10.0), S.LinearInterpolant()],
    ids=lambda s: s.name,
)
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
        torch.testing.assert_close(
            losses.elbo_weight(kind, t, sch) * err, ref, rtol=1e-8, atol=1e-10
        )


def test_continuous_nelbo_closed_form_and_invariance(gen):
    # data N(0, s I): integrand in lambda is D e^{2l} s / (1 + s e^{2l}), so the term
    # is D/2 log((1+s e^{2l0})/(1+s e^{2l1}))
    s, D = 0.5, 2
    g = analytic.Gaussian(torch.zeros(D), torch.full((D,), s))
    x0 = g.sample(20_000, gen)
    lin, cos = S.VPLinear(), S.VPCosine()

    def exact(t_range):
        l0, l1 = lin.log_snr(torch.tensor(t_range, dtype=F64))
        return D / 2 * math.log((1 + s * math.exp(2 * l0)) / (1 + s * math.exp(2 * l1)))

    est = losses.continuous_nelbo(
        g.denoiser(lin), x0, (0.05, 1.0), n_t=4, generator=gen
    )
    assert est.mean().item() == pytest.approx(exact((0.05, 1.0)), rel=0.03)
    t_range = (1e-3, 1.0)
    l0, l1 = lin.log_snr(torch.tensor(t_range, dtype=F64))
    # a cosine schedule with the same end-point log-SNRs gives the same value
    tc = cos.t_from_log_snr(torch.stack([l0, l1]))
    a = losses.continuous_nelbo(
        g.denoiser(lin),
        x0,
        t_range,
        sampling="log_snr",
        generator=torch.Generator().manual_seed(5),
    )
    b = losses.continuous_nelbo(
        g.denoiser(cos),
        x0,
        (tc[0].item(), tc[1].item()),
        sampling="log_snr",
        generator=torch.Generator().manual_seed(5),
    )
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert a.mean().item() == pytest.approx(exact(t_range), rel=0.03)


def test_discrete_nelbo_bounds_nll_and_tightens(gen):
    g = analytic.Gaussian(torch.zeros(2), torch.full((2,), 0.5))
    sch = S.VPLinear()
    x0 = g.sample(4000, gen)
    nll = -g.log_prob(x0).mean().item()
    gaps = []
    for T in (10, 100):  # a grid uniform in log-SNR between fixed end points
        ts = sampling.time_grid(T - 1, 1.0, 1e-3, spacing="log_snr", schedule=sch).flip(
            0
        )
        terms = losses.discrete_nelbo(
            g.denoiser(sch), x0, ts, generator=gen, chunk=50_000
        )
        assert set(terms) == {"prior", "diffusion", "decoder", "total"}
        torch.testing.assert_close(
            terms["total"], terms["prior"] + terms["diffusion"] + terms["decoder"]
        )
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
        dsm = losses.dsm_loss(
            model, x0, t, sch, generator=torch.Generator().manual_seed(3)
        ).item()
        esm = losses.esm_loss(model, true, xt, t).item()
        assert dsm - esm == pytest.approx(c_t, abs=0.02 * max(1.0, esm))


def test_flow_matching_and_reduce(gen):
    sch = S.LinearInterpolant()
    x0 = torch.randn(16, 2, generator=gen)
    net = lambda x, t: torch.zeros_like(x)  # noqa: E731
    per = losses.flow_matching_loss(
        net, x0, sch, generator=torch.Generator().manual_seed(0), reduce=False
    )
    assert per.shape == (16,)
    tot = losses.denoising_loss(
        net, x0, sch, "velocity", generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(per.mean(), tot)
    w = losses.denoising_loss(
        net,
        x0,
        sch,
        "velocity",
        weight=lambda t: 2 * torch.ones_like(t),
        generator=torch.Generator().manual_seed(0),
    )
    torch.testing.assert_close(w, 2 * tot)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: losses.denoising_loss(
                lambda x, t: x, torch.zeros(4, 2), S.VPLinear(), "noise"
            ),
            "unknown prediction kind",
        ),
        (
            lambda: losses.denoising_loss(
                lambda x, t: x, torch.zeros(4, 2), S.VPLinear(), t_range=(0.5, 0.1)
            ),
            "t_min < t_max",
        ),
        (
            lambda: losses.denoising_loss(
                lambda x, t: x, torch.zeros(4, 2), S.VPLinear(), t_range=(0.0, 2.0)
            ),
            "t_range must be a pair",
        ),
        (
            lambda: losses.continuous_nelbo(
                analytic.ring().denoiser(S.VPLinear()),
                torch.zeros(4, 2),
                sampling="sobol",
            ),
            "unknown sampling",
        ),
        (
            lambda: losses.continuous_nelbo(
                analytic.ring().denoiser(S.VPLinear()), torch.zeros(4, 2), n_t=0
            ),
            "n_t must be an integer >= 1",
        ),
        (
            lambda: losses.elbo_weight("x_0", 0.5, S.VPLinear()),
            "unknown prediction kind",
        ),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_cpu_generator_drives_other_devices_and_dtypes():
    # draws happen on the generator's device, then move: same numbers whatever x0's
    # dtype/device
    x64 = torch.zeros(5, 3, dtype=F64)
    a, _ = losses.sample_xt(x64, 0.5, S.VPLinear(), torch.Generator().manual_seed(0))
    b, _ = losses.sample_xt(
        x64.float(), 0.5, S.VPLinear(), torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(a.float(), b)
    if torch.cuda.is_available():  # pragma: no cover - only with a GPU
        c, _ = losses.sample_xt(
            x64.cuda(), 0.5, S.VPLinear(), torch.Generator().manual_seed(0)
        )
        torch.testing.assert_close(c.cpu(), a)


# --- the reverse variance (chapter 1): fixed small, fixed large, Analytic-DPM's optimum


def _grid(T):
    return torch.arange(1, T + 1, dtype=F64) / T


@pytest.mark.parametrize("choice", ["small", "large", "optimal"])
def test_gaussian_nelbo_is_the_mean_of_discrete_nelbo(choice, gen):
    # data N(mu, c I): the Monte-Carlo bound of the exact denoiser averages to the
    # closed form, term by term, for every reverse variance
    c, D, mu = 0.3, 2, 0.5
    g = analytic.Gaussian(torch.full((D,), mu), torch.full((D,), c))
    sch, ts = S.VPLinear(), _grid(20)
    exact = losses.gaussian_nelbo(sch, ts, c, D, mean=mu, reverse_var=choice)
    var = choice
    if choice == "optimal":  # the same variances, passed to discrete_nelbo as a tensor
        a, s = sch.alpha(ts[1:]), sch.sigma(ts[1:])
        var = losses.optimal_reverse_variance(sch, ts, c * s**2 / (a**2 * c + s**2))
    mc = losses.discrete_nelbo(g.denoiser(sch), g.sample(40_000, gen), ts,
                               generator=gen, reverse_var=var)
    for key in ("prior", "diffusion", "decoder", "total"):
        se = mc[key].std().item() / math.sqrt(len(mc[key])) + 1e-12
        assert abs(mc[key].mean().item() - exact[key].item()) < 4 * se, key
    assert exact["steps"].shape == (19,) and (exact["steps"] >= 0).all()
    torch.testing.assert_close(exact["diffusion"], exact["steps"].sum())


def test_gaussian_nelbo_against_sympy():
    # every term of one step, the prior and the decoder as sympy expectations over
    # x0 ~ N(mu, c) and eps ~ N(0, 1) (one coordinate), at the schedule's numbers
    import sympy as sp
    from sympy import stats

    c, mu = sp.Rational(3, 10), sp.Rational(1, 2)
    X0, E = stats.Normal("x0", mu, sp.sqrt(c)), stats.Normal("e", 0, 1)
    sch, ts = S.VPCosine(), torch.tensor([0.05, 0.2, 0.9], dtype=F64)
    val = lambda x: sp.Float(float(x), 30)  # noqa: E731
    a = [val(sch.alpha(t)) for t in ts]
    s = [val(sch.sigma(t)) for t in ts]

    def x0_hat(k):  # the exact denoiser of N(mu, c) at t_k, applied to x_t
        xt = a[k] * X0 + s[k] * E
        return mu + a[k] * c / (a[k] ** 2 * c + s[k] ** 2) * (xt - a[k] * mu)

    # decoder: E[-log N(x0; x0_hat, sigma_1^2)]
    dec = stats.E((X0 - x0_hat(0)) ** 2) / (2 * s[0] ** 2) + sp.log(
        2 * sp.pi * s[0] ** 2) / 2
    # prior: E KL(N(alpha_T x0, sigma_T^2) || N(0, 1))
    prior = stats.E(a[2] ** 2 * X0**2 + s[2] ** 2 - 1 - sp.log(s[2] ** 2)) / 2
    steps = []
    for k in (1, 2):  # step (t_{k-1}, t_k): posterior N(a x_t + b x0, post)
        a_ts = a[k] / a[k - 1]
        var_ts = s[k] ** 2 - a_ts**2 * s[k - 1] ** 2
        post = var_ts * s[k - 1] ** 2 / s[k] ** 2
        b = a[k - 1] * var_ts / s[k] ** 2
        m2 = stats.E((b * (X0 - x0_hat(k))) ** 2)  # squared error of the step's mean
        steps.append((post, var_ts, m2))
    for choice in ("small", "large", "optimal"):
        ex = losses.gaussian_nelbo(sch, ts, 0.3, 1, mean=0.5, reverse_var=choice)
        assert float(dec) == pytest.approx(ex["decoder"].item(), rel=1e-10)
        assert float(prior) == pytest.approx(ex["prior"].item(), rel=1e-10)
        for k, (post, var_ts, m2) in enumerate(steps):
            var = {"small": post, "large": var_ts, "optimal": post + m2}[choice]
            kl = (sp.log(var / post) + (post + m2) / var - 1) / 2
            assert float(kl) == pytest.approx(ex["steps"][k].item(), rel=1e-9)
    # the exact NLL is the entropy of N(mu, c)
    ent = stats.entropy(X0)
    assert float(ent) == pytest.approx(ex["nll"].item(), rel=1e-12)


def test_optimal_reverse_variance_minimises_the_kl_and_is_analytic_dpm():
    import sympy as sp

    # d/d(var) of E KL = 0 at var = post + b^2 m, a minimum
    var, post, b, m = sp.symbols("var post b m", positive=True)
    kl = (sp.log(var / post) + (post + b**2 * m) / var - 1) / 2
    assert sp.simplify(sp.diff(kl, var).subs(var, post + b**2 * m)) == 0
    assert sp.simplify(sp.diff(kl, var, 2).subs(var, post + b**2 * m)) > 0
    # Bao et al. (2022), Thm 1 with lambda^2 = beta tilde, in their symbols (abar_n,
    # abar_{n-1}; per-step alpha_n = abar_n / abar_{n-1}; Gamma = E||eps_hat||^2 / d):
    # lambda^2 + (sqrt(bbar_n / alpha_n) - sqrt(bbar_{n-1} - lambda^2))^2 (1 - Gamma)
    A1, A0, G = sp.symbols("abar_n abar_prev Gamma", positive=True)
    beta = 1 - A1 / A0
    lam2 = (1 - A0) / (1 - A1) * beta
    coef = sp.sqrt((1 - A1) / (A1 / A0)) - sp.sqrt(1 - A0 - lam2)
    theirs = lam2 + coef**2 * (1 - G)
    # ours: post + b^2 m with b = sqrt(abar_prev) beta / (1 - abar_n) and the exact
    # denoiser's m = sigma^2 / alpha^2 (1 - Gamma)
    ours = lam2 + (sp.sqrt(A0) * beta / (1 - A1)) ** 2 * (1 - A1) / A1 * (1 - G)
    vals = {A1: sp.Rational(3, 10), A0: sp.Rational(2, 5), G: sp.Rational(1, 7)}
    assert abs(float((theirs - ours).subs(vals))) < 1e-14
    vals = {A1: sp.Rational(9, 10), A0: sp.Rational(99, 100), G: sp.Rational(5, 7)}
    assert abs(float((theirs - ours).subs(vals))) < 1e-14
    # and the library on DDPM's chain
    betas = S.ddpm_betas("linear", 100)
    sch = S.DiscreteVP(betas)
    ts, gam = _grid(100), torch.linspace(0.1, 0.9, 99, dtype=F64)
    abar = torch.cumprod(1 - betas, 0)
    a1, a0, bt = abar[1:], abar[:-1], betas[1:]
    lam2_ = (1 - a0) / (1 - a1) * bt
    ref = lam2_ + ((((1 - a1) / (1 - bt)).sqrt() - (1 - a0 - lam2_).sqrt()) ** 2
                   * (1 - gam))
    m = (1 - a1) / a1 * (1 - gam)
    torch.testing.assert_close(losses.optimal_reverse_variance(sch, ts, m), ref,
                               rtol=1e-9, atol=0)


def test_reverse_variance_choices_on_ddpm_grid():
    # Gaussian data, grid t_i = i/T: fixed-small keeps a floor of (D/2) gamma_E,
    # fixed-large closes the gap like 1/T, the optimum leaves only the prior and the
    # decoder mismatch
    sch, c, D = S.VPLinear(), 0.25, 2
    gap = {}
    for choice in ("small", "large", "optimal"):
        for T in (1000, 10_000, 100_000):
            r = losses.gaussian_nelbo(sch, _grid(T), c, D, reverse_var=choice)
            gap[choice, T] = (r["total"] - r["nll"]).item()
            if choice == "small":  # the diffusion terms = integral + excess
                ex = losses.gaussian_discretization_excess(sch, _grid(T), c, D)
                snr = torch.exp(2 * sch.log_snr(_grid(T)))
                log_rho = torch.log1p(c * snr[:-1]) - torch.log1p(c * snr[1:])
                torch.testing.assert_close(r["steps"], ex + D / 2 * log_rho)
            if choice == "optimal":  # NELBO - NLL = KL(q(x_T) || p(x_T)) + decoder KL
                a, s = sch.alpha(_grid(T)), sch.sigma(_grid(T))
                vT = a[-1] ** 2 * c + s[-1] ** 2
                kl_T = D / 2 * (vT - 1 - torch.log(vT))
                m1 = c * s[0] ** 2 / (a[0] ** 2 * c + s[0] ** 2)
                kl_dec = D / 2 * (m1 / s[0] ** 2 - 1 - torch.log(m1 / s[0] ** 2))
                assert gap[choice, T] == pytest.approx((kl_T + kl_dec).item(), abs=1e-9)
    euler_gamma = 0.5772156649015329
    assert gap["small", 100_000] == pytest.approx(D / 2 * euler_gamma, abs=0.02)
    assert gap["large", 10_000] / gap["large", 1000] == pytest.approx(0.1, rel=0.2)
    assert all(gap["optimal", T] < gap["large", T] < gap["small", T]
               for T in (1000, 10_000, 100_000))
    # data N(0, I): the forward chain's own reverse step has variance beta, so
    # fixed-large is the optimum (DDPM, Sec. 3.2)
    lg = losses.gaussian_nelbo(sch, _grid(50), 1.0, D, reverse_var="large")
    op = losses.gaussian_nelbo(sch, _grid(50), 1.0, D, reverse_var="optimal")
    torch.testing.assert_close(lg["steps"], op["steps"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("call, match", [
    (lambda: losses.gaussian_nelbo(S.VPLinear(), _grid(5), 0.5, reverse_var="huge"),
     "unknown reverse_var"),
    (lambda: losses.gaussian_nelbo(S.VPLinear(), _grid(5), 0.5,
                                   reverse_var=torch.ones(3)), "4 positive finite"),
    (lambda: losses.gaussian_nelbo(S.VPLinear(), _grid(5), 0.5,
                                   reverse_var=-torch.ones(4)), "4 positive finite"),
    (lambda: losses.gaussian_nelbo(S.VPLinear(), _grid(5), 0.0), "data_var"),
    (lambda: losses.gaussian_nelbo(S.VPLinear(), _grid(5), 1.0, mean=math.nan), "mean"),
    (lambda: losses.gaussian_nelbo("vp", _grid(5), 1.0), "Schedule"),
    (lambda: losses.gaussian_nelbo(S.VPLinear(), torch.tensor([0.0, 0.5]), 1.0),
     "start after t = 0"),
    (lambda: losses.optimal_reverse_variance(S.VPLinear(), _grid(5), torch.ones(5)),
     "hold 4 values"),
    (lambda: losses.optimal_reverse_variance(S.VPLinear(), _grid(5), -1.0),
     "non-negative"),
    (lambda: losses.optimal_reverse_variance(S.VPLinear(), _grid(5), "x"), "x0_mse"),
    (lambda: losses.discrete_nelbo(analytic.ring().denoiser(S.VPLinear()),
                                   torch.zeros(4, 2), _grid(5), reverse_var="optimal"),
     "unknown reverse_var"),
    (lambda: losses.discrete_nelbo(analytic.ring().denoiser(S.VPLinear()),
                                   torch.zeros(4, 2), _grid(5), reverse_var=[1.0] * 4),
     "1-D tensor of variances"),
])
def test_reverse_variance_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- sample_xt with a given noise; ELBO weights at the end points (lead) -------------
def test_sample_xt_takes_a_given_noise_for_couplings():
    x0 = torch.randn(6, 2, dtype=torch.float64)
    eps = torch.randn(6, 2, dtype=torch.float64)
    sch = S.LinearInterpolant()
    xt, e = losses.sample_xt(x0, 0.25, sch, eps=eps)
    assert e is eps
    torch.testing.assert_close(xt, 0.75 * x0 + 0.25 * eps)
    with pytest.raises(ValueError, match="eps must have the shape of x0"):
        losses.sample_xt(x0, 0.25, sch, eps=eps[:3])
    with pytest.raises(ValueError, match="NaN or inf"):
        losses.sample_xt(x0, 0.25, sch, eps=eps * float("nan"))


@pytest.mark.parametrize("kind", ["eps", "x0", "v", "score", "velocity"])
def test_elbo_weights_are_never_nan_at_the_end_points(kind):
    for sch in (
        S.VPLinear(),
        S.VPCosine(),
        S.VE(),
        S.LinearInterpolant(),
        S.get_schedule("ddpm_linear"),
    ):
        w = losses.elbo_weight(kind, torch.tensor([0.0, 1.0], dtype=torch.float64), sch)
        assert not torch.isnan(w).any(), (kind, sch, w)
    # score weight g^2/2 and velocity weight 2/g^2 are finite at t = 0 for VP
    g2 = S.VPLinear().sde(0.0)[1]
    assert losses.elbo_weight("score", 0.0, S.VPLinear()) == pytest.approx(
        float(g2) / 2
    )
    assert losses.elbo_weight("velocity", 0.0, S.VPLinear()) == pytest.approx(
        2 / float(g2)
    )
