import math

import pytest
import torch

from dlib import analytic, metrics, schedules as S

F64 = torch.float64


def test_sliced_wasserstein_of_a_shift(gen):
    # for a shift m, SW2^2 = E_theta (theta . m)^2 = |m|^2 / D
    x = torch.randn(4000, 3, generator=gen, dtype=F64)
    m = torch.tensor([1.0, 2.0, -2.0], dtype=F64)
    sw = metrics.sliced_wasserstein(x, x + m, n_projections=1000, generator=gen)
    assert sw == pytest.approx(m.norm().item() / math.sqrt(3), rel=0.05)
    x = torch.randn(20000, 3, generator=gen, dtype=F64)
    y = torch.randn(15000, 3, generator=gen, dtype=F64)  # different sizes are fine
    assert metrics.sliced_wasserstein(x, y, generator=gen) < 0.03


def test_mmd_and_energy_distance(gen):
    x, y = torch.randn(2000, 2, generator=gen), torch.randn(2000, 2, generator=gen)
    z = torch.randn(2000, 2, generator=gen) + 1.0
    assert abs(metrics.mmd(x, y)) < 5e-3 < metrics.mmd(x, z)
    assert abs(metrics.energy_distance(x, y)) < 5e-3 < metrics.energy_distance(x, z)
    # energy distance of two 1-D Gaussians shifted by d: 2E|d+Z sqrt2| - 2E|Z sqrt2|
    # (closed form)
    a = torch.randn(6000, 1, generator=gen, dtype=F64)
    b = torch.randn(6000, 1, generator=gen, dtype=F64) + 1.0
    s = math.sqrt(2)

    def e_abs(mu):
        return s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * s * s)) + (
            mu * math.erf(mu / (s * math.sqrt(2)))
        )

    assert metrics.energy_distance(a, b) == pytest.approx(
        2 * e_abs(1.0) - 2 * e_abs(0.0), abs=0.02
    )


def test_log_likelihood(gen):
    gmm = analytic.ring()
    x = gmm.sample(1000, gen)
    assert metrics.log_likelihood(gmm, x) == pytest.approx(
        gmm.log_prob(x).mean().item()
    )
    with pytest.raises(ValueError, match="log_prob"):
        metrics.log_likelihood(object(), x)


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_pf_ode_log_likelihood_matches_exact(divergence, gen):
    gmm = analytic.ring(k=4, radius=2.0, std=0.6)
    sch = S.VPLinear()
    x = gmm.sample(64, gen)
    t_min = 1e-2
    exact = gmm.log_prob(x, t_min, sch)
    prior = lambda z: gmm.log_prob(z, 1.0, sch)  # noqa: E731
    est = metrics.pf_ode_log_likelihood(
        gmm.denoiser(sch),
        x,
        t_min=t_min,
        prior_log_prob=prior,
        divergence=divergence,
        n_probes=64,
        generator=gen,
        rtol=1e-8,
        atol=1e-8,
    )
    if divergence == "exact":
        assert (est - exact).abs().max().item() < 1e-4
    else:
        # unbiased but noisy: small on average, and its mean error within 4 standard
        # errors
        err = est - exact
        assert err.abs().mean().item() < 0.2
        assert err.mean().abs().item() < 4 * err.std().item() / 8
    # with the default standard-normal prior the error is only the tiny prior mismatch
    # at t=1 (VP)
    est2 = metrics.pf_ode_log_likelihood(gmm.denoiser(sch), x[:8], t_min=t_min)
    assert (est2 - exact[:8]).abs().max().item() < 0.05


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: metrics.sliced_wasserstein(torch.zeros(10, 2), torch.zeros(10, 3)),
            r"\(N, D\) and \(M, D\)",
        ),
        (
            lambda: metrics.sliced_wasserstein(
                torch.zeros(10, 2), torch.zeros(10, 2), n_projections=0
            ),
            "n_projections must be an integer >= 1",
        ),
        (
            lambda: metrics.mmd(
                torch.zeros(10, 2), torch.zeros(10, 2), bandwidths=(0.0,)
            ),
            "bandwidths must be",
        ),
        (
            lambda: metrics.energy_distance(torch.zeros(1, 2), torch.zeros(10, 2)),
            "N, M >= 2",
        ),
        (
            lambda: metrics.pf_ode_log_likelihood(
                analytic.ring().denoiser(S.VPLinear()),
                torch.zeros(2, 2),
                divergence="trace",
            ),
            "unknown divergence",
        ),
        (
            lambda: metrics.pf_ode_log_likelihood(
                analytic.ring().denoiser(S.VPLinear()), torch.zeros(2, 2), t_min=0.0
            ),
            "0 < t_min < t_max",
        ),
        (
            lambda: metrics.pf_ode_log_likelihood(lambda x, t: x, torch.zeros(2, 2)),
            "Denoiser",
        ),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_rms_error_closed_form_and_standard_error():
    from dlib import metrics as M

    g = torch.Generator().manual_seed(0)
    ref = torch.randn(4000, 3, generator=g, dtype=torch.float64)
    x = ref + 0.1 * torch.randn(4000, 3, generator=g, dtype=torch.float64)
    rms, se = M.rms_error(x, ref)
    assert abs(rms - 0.1) < 4 * se  # E e_i = 0.01 exactly
    # e_i = 0.01 chi2_3 / 3: sd(e) = 0.01 sqrt(2/3), se = sd / (2 sqrt(N) rms)
    assert abs(se - 0.01 * (2 / 3) ** 0.5 / (2 * 4000**0.5 * 0.1)) < 0.1 * se
    assert M.rms_error(ref, ref) == (0.0, 0.0)
    with pytest.raises(ValueError, match="reference"):
        M.rms_error(x, ref[:10])


def test_thin_mixture_is_thin_unequal_and_seeded():
    from dlib import analytic as A

    m = A.thin_mixture(64, seed=3)
    assert m.dim == 64 and m.n_components == 8
    assert abs(float(m.weights[0] / m.weights[-1]) - 8.0) < 1e-12
    assert float(m.variances.sqrt().max()) <= 0.075 + 1e-12
    assert not torch.equal(m.means, A.thin_mixture(64, seed=4).means)
    assert torch.equal(m.means, A.thin_mixture(64, seed=3).means)


def test_frechet_distance_against_closed_form_and_scipy():
    from scipy.linalg import sqrtm

    g = torch.Generator().manual_seed(0)
    # fitted Gaussians with diagonal covariances commute: the distance is
    # |m_x - m_y|^2 + sum_i (s_x,i - s_y,i)^2 with the fitted standard deviations
    x = torch.randn(3000, 4, generator=g, dtype=F64) * torch.tensor([1.0, 2, 0.5, 1])
    y = torch.randn(3000, 4, generator=g, dtype=F64) * 3 + 1
    fd = metrics.frechet_distance(x, y)
    cx, cy = torch.cov(x.T), torch.cov(y.T)
    # reference: the textbook formula with scipy's general matrix square root
    ref = float(
        (x.mean(0) - y.mean(0)).pow(2).sum()
        + cx.trace()
        + cy.trace()
        - 2 * float(sqrtm((cx @ cy).numpy()).real.trace())
    )
    assert abs(fd - ref) < 1e-9 * ref
    # the population value (4 + 1 + ... ): means differ by 1 in each coordinate,
    # standard deviations 1, 2, 0.5, 1 against 3
    exact = 4 * 1.0 + (3 - 1) ** 2 + (3 - 2) ** 2 + (3 - 0.5) ** 2 + (3 - 1) ** 2
    assert abs(fd - exact) < 0.05 * exact
    # symmetric, zero on identical samples, shift invariant jointly
    assert abs(metrics.frechet_distance(y, x) - fd) < 1e-9 * fd
    assert metrics.frechet_distance(x, x) < 1e-9
    assert abs(metrics.frechet_distance(x + 5, y + 5) - fd) < 1e-9 * fd
    with pytest.raises(ValueError, match="N, M >= 2"):
        metrics.frechet_distance(x[:1], y)
