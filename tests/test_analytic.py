import math

import pytest
import torch

from dlib import analytic, schedules as S

F64 = torch.float64


def mixtures():
    return [
        analytic.ring(),
        analytic.song_ermon(),
        analytic.GaussianMixture(
            torch.randn(3, 4, generator=torch.Generator().manual_seed(1), dtype=F64),
            torch.tensor(
                [[0.5, 1.0, 2.0, 0.3], [1.0, 1.0, 1.0, 1.0], [0.2, 0.4, 0.1, 3.0]]
            ),
            [0.5, 0.3, 0.2],
        ),
    ]


@pytest.mark.parametrize("gmm", mixtures(), ids=["ring", "song_ermon", "diag4d"])
@pytest.mark.parametrize(
    "sch", [S.VPLinear(), S.VE(0.01, 10.0), S.LinearInterpolant()], ids=lambda s: s.name
)
def test_score_is_gradient_of_log_prob(gmm, sch, gen):
    x = (torch.randn(20, gmm.dim, generator=gen, dtype=F64) * 4).requires_grad_(True)
    for t in (None, 0.05, 0.5, 0.95):
        lp = gmm.log_prob(x, t, None if t is None else sch)
        (g,) = torch.autograd.grad(lp.sum(), x)
        torch.testing.assert_close(
            gmm.score(x.detach(), t, None if t is None else sch), g
        )


def test_log_prob_is_normalised_in_1d():
    gmm = analytic.GaussianMixture(
        [[-2.0], [1.0], [3.0]], [0.3, 1.0, 0.05], [0.2, 0.5, 0.3]
    )
    x = torch.linspace(-15, 15, 200001, dtype=F64)[:, None]
    for t in (None, 0.3):
        p = gmm.log_prob(x, t, S.VPLinear()).exp()
        assert torch.trapezoid(p, x[:, 0]).item() == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize(
    "sch", [S.VPLinear(), S.VPCosine(), S.LinearInterpolant()], ids=lambda s: s.name
)
def test_tweedie_and_identity(sch, gen):
    gmm = analytic.ring()
    x = torch.randn(50, 2, generator=gen, dtype=F64) * 3
    for t in (0.01, 0.3, 0.9):
        x0, eps = gmm.x0_eps(x, t, sch)
        a, s = (
            sch.alpha(torch.tensor(t, dtype=F64)),
            sch.sigma(torch.tensor(t, dtype=F64)),
        )
        torch.testing.assert_close(a * x0 + s * eps, x)
        torch.testing.assert_close(x0, (x + s**2 * gmm.score(x, t, sch)) / a)
        torch.testing.assert_close(eps, -s * gmm.score(x, t, sch))


def test_x0_prediction_is_a_conditional_mean(gen):
    # regress x0 on x_t by binning a 1-D mixture: bin means of x0 match E[x0 | x_t]
    gmm = analytic.GaussianMixture([[-2.0], [2.0]], 0.25, [0.3, 0.7])
    sch = S.VPLinear()
    x0 = gmm.sample(400_000, gen)
    t = 0.4
    xt = sch.alpha(torch.tensor(t)).double() * x0 + sch.sigma(
        torch.tensor(t)
    ).double() * torch.randn(x0.shape, generator=gen, dtype=F64)
    edges = torch.linspace(-1.0, 1.0, 11, dtype=F64)
    idx = torch.bucketize(xt[:, 0], edges)
    for b in range(1, 11):
        m = idx == b
        centre = torch.tensor([[(edges[b - 1] + edges[b]) / 2]], dtype=F64)
        assert x0[m].mean().item() == pytest.approx(
            gmm.x0_eps(centre, t, sch)[0].item(), abs=0.03
        )


def test_samples_and_moments(gen):
    gmm = mixtures()[2]
    x = gmm.sample(200_000, gen)
    torch.testing.assert_close(x.mean(0), gmm.mean(), atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), gmm.covariance(), atol=0.05, rtol=0.02)
    assert gmm.dim == 4 and gmm.n_components == 3 and "K=3" in repr(gmm)


def test_single_gaussian_closed_forms(gen):
    g = analytic.Gaussian(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0]))
    sch = S.VPLinear()
    x = torch.randn(10, 2, generator=gen, dtype=F64)
    t = torch.tensor(0.3, dtype=F64)
    a, s = sch.alpha(t), sch.sigma(t)
    var = a**2 * torch.tensor([0.5, 2.0], dtype=F64) + s**2
    expected = -0.5 * (
        torch.log(2 * math.pi * var)
        + (x - a * torch.tensor([1.0, -2.0], dtype=F64)) ** 2 / var
    ).sum(1)
    torch.testing.assert_close(g.log_prob(x, t, sch), expected)
    r = g.responsibilities(x, t, sch)
    torch.testing.assert_close(r, torch.ones(10, 1, dtype=F64))


def test_denoiser_returns_input_dtype(gen):
    oracle = analytic.ring().denoiser(S.VPLinear())
    x = torch.randn(4, 2, generator=gen)
    assert oracle.velocity(x, 0.5).dtype == torch.float32
    x0, eps = oracle.x0_eps(x, 0.5)
    assert x0.dtype == eps.dtype == torch.float32


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: analytic.GaussianMixture(torch.zeros(3)),
            r"means must have shape \(K, D\)",
        ),
        (
            lambda: analytic.GaussianMixture(torch.zeros(2, 2), torch.ones(3)),
            "variances must be a scalar",
        ),
        (
            lambda: analytic.GaussianMixture(torch.zeros(2, 2), -1.0),
            "variances must be positive",
        ),
        (
            lambda: analytic.GaussianMixture(torch.zeros(2, 2), 1.0, [1.0, -1.0]),
            "non-negative",
        ),
        (lambda: analytic.ring().log_prob(torch.zeros(3, 3)), r"shape \(B, 2\)"),
        (
            lambda: analytic.ring().log_prob(torch.zeros(3, 2), 0.5),
            "schedule is required",
        ),
        (
            lambda: analytic.ring().x0_eps(torch.zeros(3, 2), None, S.VPLinear()),
            "needs a time",
        ),
        (
            lambda: analytic.ring().predict(
                torch.zeros(3, 2), 0.5, S.VPLinear(), "noise"
            ),
            "unknown prediction kind",
        ),
        (lambda: analytic.ring().sample(0), "n must be an integer >= 1"),
        (lambda: analytic.ring(k=0), "k must be an integer >= 1"),
        (lambda: analytic.Gaussian(torch.zeros(2, 2)), "1-D vector"),
    ],
)
def test_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_lists_of_python_floats_stay_float64():
    # torch.as_tensor of a list goes through float32 (0.3 -> 0.30000001192...)
    g = analytic.GaussianMixture([[0.0, 0.1], [1.0, 1.3]], [0.3, 0.7], [0.3, 0.7])
    assert g.weights.tolist() == [0.3, 0.7]
    assert g.means[1, 1].item() == 1.3 and g.variances[0, 0].item() == 0.3
