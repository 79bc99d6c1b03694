"""Tests for chapter I.7 ("The Gaussian closed form"): dlib.analytic.GaussianPCA, the
closed-form probability-flow map of Gaussian data with a full covariance, its Wiener
filter and the commitment fractions rho_k(t), against scipy's adaptive ODE solver
(sampling.sample_ode), a direct linear solve, sympy and the diagonal
analytic.Gaussian."""

import math

import pytest
import sympy as sp
import torch

from dlib import analytic, data, sampling, schedules as S

F64 = torch.float64
SCHEDULES = [S.VPLinear(), S.VPCosine(), S.VE(), S.LinearInterpolant()]


def _random_gaussian(D=6, r=4, seed=0):
    """N(mu, U diag(kappa) U^T) with rank r < D (zero-variance directions too)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=F64))
    kappa = torch.tensor([4.0, 1.0, 0.25, 0.01, 0.5, 2.0][:r], dtype=F64)
    mu = torch.randn(D, generator=g, dtype=F64)
    return analytic.GaussianPCA(mu, kappa, Q[:, :r])


def _start(g, sch, t_max, n=8, seed=1):
    z = torch.randn(n, g.dim, generator=torch.Generator().manual_seed(seed), dtype=F64)
    a, s = sch.coefficients(t_max)[:2]
    return a * g.mean + s * z


@pytest.mark.parametrize("sch", SCHEDULES, ids=lambda s: s.name)
def test_closed_form_matches_the_adaptive_ode_solver(sch):
    g = _random_gaussian()
    t_max = 0.999 if isinstance(sch, S.VPCosine) else 1.0
    ts = sampling.time_grid(12, t_max, 1e-3)
    x1 = _start(g, sch, t_max)
    traj = [x1]
    sampling.sample_ode(g.denoiser(sch), x1, ts, rtol=1e-10, atol=1e-10,
                        callback=lambda d: traj.append(d["x"]))
    err = (torch.stack(traj) - g.flow(x1, t_max, ts, sch)).abs().max().item()
    assert err < 1e-6


def test_closed_form_on_the_digits_spectrum_with_a_truncated_basis():
    x, _ = data.digits("train")
    g = analytic.GaussianPCA.from_data(x.double(), rank=40)  # 24 directions in P_perp
    sch = S.VPLinear()
    ts = sampling.time_grid(10, 1.0, 1e-3)
    x1 = _start(g, sch, 1.0, n=4)
    traj = [x1]
    sampling.sample_ode(g.denoiser(sch), x1, ts, rtol=1e-10, atol=1e-10,
                        callback=lambda d: traj.append(d["x"]))
    assert (torch.stack(traj) - g.flow(x1, 1.0, ts, sch)).abs().max().item() < 1e-6


def test_fine_heun_run_converges_to_the_closed_form():
    g, sch = _random_gaussian(seed=3), S.VPLinear()
    x1 = _start(g, sch, 1.0)
    exact = g.flow(x1, 1.0, 0.01, sch)
    errs = [
        (sampling.sample_heun(g.denoiser(sch), x1, sampling.time_grid(n, 1.0, 0.01),
                              progress=False) - exact).abs().max().item()
        for n in (200, 400)
    ]
    assert errs[1] < 1e-4
    assert 3.0 < errs[0] / errs[1] < 5.0  # second order


@pytest.mark.parametrize("sch", SCHEDULES, ids=lambda s: s.name)
def test_flow_map_composes_and_inverts(sch):
    g = _random_gaussian(seed=2)
    x = _start(g, sch, 0.9)
    direct = g.flow(x, 0.9, 0.05, sch)
    via = g.flow(g.flow(x, 0.9, 0.4, sch), 0.4, 0.05, sch)
    torch.testing.assert_close(via, direct, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g.flow(direct, 0.05, 0.9, sch), x, rtol=1e-10,
                               atol=1e-10)
    torch.testing.assert_close(g.flow(x, 0.9, 0.9, sch), x, rtol=1e-13, atol=1e-13)


def test_flow_pushes_the_marginals_forward():
    # exact samples of p_t flowed to u are distributed as p_u: compare covariances
    g, sch = _random_gaussian(D=3, r=3, seed=4), S.VPCosine()
    n = 200_000
    gen = torch.Generator().manual_seed(5)
    Sigma = g.eigvecs @ torch.diag(g.eigvals) @ g.eigvecs.T
    x0 = g.mean + torch.randn(n, 3, generator=gen, dtype=F64) @ torch.linalg.cholesky(
        Sigma).T
    t, u = 0.8, 0.2
    (a_t, s_t), (a_u, s_u) = sch.coefficients(t)[:2], sch.coefficients(u)[:2]
    xt = a_t * x0 + s_t * torch.randn(n, 3, generator=gen, dtype=F64)
    xu = g.flow(xt, t, u, sch)
    cov_u = a_u**2 * Sigma + s_u**2 * torch.eye(3, dtype=F64)
    torch.testing.assert_close(torch.cov(xu.T), cov_u, rtol=0, atol=0.02)
    torch.testing.assert_close(xu.mean(0), a_u * g.mean, rtol=0, atol=0.01)


@pytest.mark.parametrize("sch", SCHEDULES, ids=lambda s: s.name)
def test_wiener_filter_is_the_linear_solve(sch):
    g = _random_gaussian(seed=6)
    Sigma = g.eigvecs @ torch.diag(g.eigvals) @ g.eigvecs.T
    x = _start(g, sch, 0.6)
    for t in (0.0, 0.3, 0.6, 1.0):
        a, s = sch.coefficients(t)[:2]
        cov = a**2 * Sigma + s**2 * torch.eye(g.dim, dtype=F64)
        if s == 0:  # x_0 = x on the data; zero-variance directions: mu
            P = g.eigvecs @ g.eigvecs.T
            ref = g.mean + (x - g.mean) @ P
        else:
            ref = g.mean + a * torch.linalg.solve(cov, (x - a * g.mean).T).T @ Sigma
        torch.testing.assert_close(g.x0_hat(x, t, sch), ref, rtol=1e-10, atol=1e-10)


def test_diagonal_case_agrees_with_analytic_gaussian():
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    var = torch.tensor([2.0, 0.3, 1.0], dtype=F64)
    g, ref = analytic.GaussianPCA(mu, var), analytic.Gaussian(mu, var)
    sch = S.VPLinear()
    x = _start(g, sch, 0.7)
    torch.testing.assert_close(g.x0_hat(x, 0.7, sch), ref.x0_eps(x, 0.7, sch)[0])
    den = g.denoiser(sch)
    torch.testing.assert_close(den.eps(x, 0.7), ref.predict(x, 0.7, sch, "eps"))


def test_running_estimate_and_commitment():
    g, sch = _random_gaussian(seed=7), S.VPLinear()
    x1 = _start(g, sch, 1.0, n=5)
    ts = torch.tensor([0.9, 0.5, 0.2, 0.0], dtype=F64)
    xt = g.flow(x1, 1.0, ts, sch)
    x0 = xt[-1]
    rho = g.commitment(ts, sch)
    assert rho.shape == (4, g.rank)
    for i, t in enumerate(ts.tolist()):
        run = g.x0_hat(xt[i], t, sch)
        # u_k^T (x0_hat(t) - mu) = rho_k(t) u_k^T (x_0 - mu)
        torch.testing.assert_close((run - g.mean) @ g.eigvecs,
                                   rho[i] * ((x0 - g.mean) @ g.eigvecs))
        torch.testing.assert_close(g.commitment(t, sch), rho[i])
    torch.testing.assert_close(rho[-1], torch.ones(g.rank, dtype=F64))


def test_commitment_is_a_logistic_in_log_snr():
    lam, kap = sp.symbols("lambda kappa", positive=True)
    a, s = sp.symbols("alpha sigma", positive=True)
    rho2 = a**2 * kap / (a**2 * kap + s**2)
    logistic = 1 / (1 + sp.exp(-(2 * lam + sp.log(kap))))
    assert sp.simplify(rho2.subs(a, s * sp.exp(lam)) - logistic) == 0
    # numerically on a schedule: half-committed where lambda = -log(kappa) / 2
    g, sch = _random_gaussian(seed=8), S.VPCosine()
    t_half = sch.t_from_log_snr(-0.5 * torch.log(g.eigvals))
    rho = torch.stack([g.commitment(t, sch)[k] for k, t in enumerate(t_half)])
    torch.testing.assert_close(rho**2, torch.full_like(rho, 0.5))


def test_from_data_recovers_mean_and_covariance():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(500, 5, generator=gen, dtype=F64) @ torch.randn(5, 5, generator=gen,
                                                                   dtype=F64)
    g = analytic.GaussianPCA.from_data(x)
    cov = g.eigvecs @ torch.diag(g.eigvals) @ g.eigvecs.T
    torch.testing.assert_close(cov, torch.cov(x.T, correction=0))
    torch.testing.assert_close(g.mean, x.mean(0))
    assert bool((g.eigvals[:-1] >= g.eigvals[1:]).all())
    g2 = analytic.GaussianPCA.from_data(x, rank=2)
    assert g2.rank == 2 and g2.dim == 5
    torch.testing.assert_close(g2.eigvals, g.eigvals[:2])


def test_zero_variance_directions_scale_with_sigma():
    mu = torch.zeros(2, dtype=F64)
    g = analytic.GaussianPCA(mu, [0.0, 1.0])
    sch = S.VE()
    x = torch.tensor([[3.0, 3.0]], dtype=F64)
    y = g.flow(x, 1.0, 0.5, sch)
    s_half = sch.coefficients(0.5).sigma
    assert y[0, 0].item() == pytest.approx(3.0 * s_half / 50.0, rel=1e-12)
    w = lambda t: 1.0 + sch.coefficients(t).sigma ** 2  # noqa: E731
    assert y[0, 1].item() == pytest.approx(3.0 * math.sqrt(w(0.5) / w(1.0)), rel=1e-12)
    assert g.commitment(0.0, sch)[0].item() == 0.0  # kappa = 0: never committed


BAD = [
    ("mean", lambda: analytic.GaussianPCA([[0.0]], [1.0])),
    ("mean", lambda: analytic.GaussianPCA([math.nan, 0.0], [1.0, 1.0])),
    ("eigvals", lambda: analytic.GaussianPCA([0.0, 0.0], [1.0, -1.0])),
    ("eigvals", lambda: analytic.GaussianPCA([0.0, 0.0], [1.0, 1.0, 1.0])),
    ("eigvals", lambda: analytic.GaussianPCA([0.0, 0.0], [1.0])),
    ("eigvecs", lambda: analytic.GaussianPCA([0.0, 0.0], [1.0], [[1.0], [1.0]])),
    ("eigvecs", lambda: analytic.GaussianPCA([0.0, 0.0], [1.0], [[1.0, 0.0]])),
    ("x", lambda: analytic.GaussianPCA.from_data(torch.zeros(1, 3))),
    ("rank", lambda: analytic.GaussianPCA.from_data(torch.randn(5, 3), rank=4)),
    ("rank", lambda: analytic.GaussianPCA.from_data(torch.randn(5, 3), rank=0)),
]
G2 = analytic.GaussianPCA([0.0, 0.0], [1.0, 0.5])
X2 = torch.zeros(3, 2)
BAD += [
    ("x", lambda: G2.flow(torch.zeros(3, 3), 1.0, 0.5, S.VPLinear())),
    ("x", lambda: G2.flow(X2 + math.inf, 1.0, 0.5, S.VPLinear())),
    ("schedule", lambda: G2.flow(X2, 1.0, 0.5, "vp")),
    ("s", lambda: G2.flow(X2, 1.5, 0.5, S.VPLinear())),
    ("singular", lambda: G2.flow(X2, 0.0, 0.5, S.VPLinear())),
    ("t", lambda: G2.flow(X2, 1.0, torch.tensor([0.5, 2.0]), S.VPLinear())),
    ("t", lambda: G2.flow(X2, 1.0, torch.zeros(2, 2), S.VPLinear())),
    ("t", lambda: G2.x0_hat(X2, -0.1, S.VE())),
    ("x", lambda: G2.x0_hat(X2.long(), 0.1, S.VE())),
    ("t", lambda: G2.commitment(math.nan, S.VE())),
    ("schedule", lambda: G2.commitment(0.5, None)),
    ("schedule", lambda: G2.denoiser(G2)),
]


@pytest.mark.parametrize("name, call", BAD)
def test_bad_input_names_the_argument(name, call):
    with pytest.raises(ValueError, match=name):
        call()
