"""Unit tests for dlib.geometry and nets.EnergyMLP (chapter I.6): Jacobians and gauge
defects against closed forms, the grid decomposition against known fields, the flow
Jacobian against the closed form of Gaussian data on a subspace, the dimension rule on
exact linear subspaces, the sphere's closed form against autograd and Monte Carlo, and
the energy network's curl-free output."""

import math

import numpy as np
import pytest
import torch

from dlib import analytic, geometry, metrics, nets, sampling
from dlib import schedules as S

F64 = torch.float64
J2 = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=F64)
VP = S.VPLinear()
GMM = analytic.GaussianMixture(
    [[-2.0, 0.5], [1.5, 1.5], [0.5, -1.5]],
    [[0.5, 0.05], [0.05, 0.6], [0.4, 0.1]],
    [0.4, 0.3, 0.3],
)


def gen(seed):
    return torch.Generator().manual_seed(seed)


# --- jacobian and gauge defect --------------------------------------------------------
def test_jacobian_of_a_linear_and_a_quadratic_field():
    M = torch.randn(3, 3, dtype=F64, generator=gen(0))
    x = torch.randn(5, 3, dtype=F64, generator=gen(1))
    assert torch.allclose(geometry.jacobian(lambda z: z @ M.T, x), M.expand(5, 3, 3))
    # F = grad(0.5 |x|^2 * c.x) has Jacobian c x^T + x c^T + (c.x) I
    c = torch.tensor([0.3, -1.0, 2.0], dtype=F64)
    field = lambda z: 0.5 * (z**2).sum(1, keepdim=True) * c + (z @ c)[:, None] * z  # noqa
    expect = (c[None, :, None] * x[:, None, :] + x[:, :, None] * c[None, None, :]
              + (x @ c)[:, None, None] * torch.eye(3, dtype=F64))
    assert torch.allclose(geometry.jacobian(field, x), expect, atol=1e-12)


def test_gauge_defect_closed_forms():
    x = 2.0 * torch.randn(200, 2, dtype=F64, generator=gen(2))
    for t in (0.01, 0.3, 0.9):
        s = lambda z, t=t: GMM.score(z, t, VP)  # noqa: E731
        d = geometry.gauge_defect(lambda z: s(z) @ J2.T, s, x)
        assert d.abs().max() < 1e-10
    # J x for N(0, diag(va, vb)): x1 x2 (vb - va) / (va vb)
    va, vb = 0.5, 2.0
    g = analytic.Gaussian([0.0, 0.0], [va, vb])
    d = geometry.gauge_defect(lambda z: z @ J2.T, lambda z: g.score(z), x)
    expect = x[:, 0] * x[:, 1] * (vb - va) / (va * vb)
    assert torch.allclose(d, expect, atol=1e-12)


def test_rotation_gauge_is_i_plus_a_times_the_score():
    den = GMM.denoiser(VP)
    A = torch.tensor([[0.0, 1.5], [-1.5, 0.0]], dtype=F64)
    g = geometry.rotation_gauge(den, A)
    x = torch.randn(10, 2, dtype=F64, generator=gen(3))
    s = den.score(x, 0.4)
    assert g.kind == "score"
    assert torch.allclose(g.score(x, 0.4), s + s @ A.T, atol=1e-14)
    extra = geometry.perturb_score(den, lambda z, t: torch.ones_like(z))
    assert torch.allclose(extra.score(x, 0.4), s + 1.0, atol=1e-14)
    with pytest.raises(ValueError, match="antisymmetric"):
        geometry.rotation_gauge(den, torch.eye(2))
    with pytest.raises(ValueError, match="field"):
        geometry.perturb_score(den, lambda z, t: z[:, :1]).score(x, 0.4)


def test_gauge_keeps_the_pf_ode_likelihood():
    den = GMM.denoiser(VP)
    x = GMM.sample(20, gen(4))
    prior = lambda y: GMM.log_prob(y, 1.0, VP)  # noqa: E731
    ref = GMM.log_prob(x, 1e-3, VP)
    for field in (den, geometry.rotation_gauge(den, 2.0 * J2)):
        ll = metrics.pf_ode_log_likelihood(field, x, t_min=1e-3, prior_log_prob=prior)
        assert (ll - ref).abs().max() < 1e-3
    bad = geometry.perturb_score(den, lambda z, t: 2.0 * z @ J2.T)
    ll = metrics.pf_ode_log_likelihood(bad, x, t_min=1e-3, prior_log_prob=prior)
    assert (ll - ref).abs().mean() > 1e-2


# --- weighted Helmholtz ---------------------------------------------------------------
def _grid(n, L=4.0):
    g = torch.linspace(-L, L, n, dtype=F64)
    X1, X2 = torch.meshgrid(g, g, indexing="ij")
    return torch.stack([X1, X2], -1).reshape(-1, 2), float(g[1] - g[0])


def test_helmholtz_recovers_a_known_split_at_second_order():
    # F = grad(phi0) + r0 with r0 = J grad(log p): a gauge of p. The box is wide enough
    # (6 standard deviations) for the flux p r0 through its border to be negligible
    errs = []
    for n in (60, 120):
        pts, h = _grid(n, L=6.0)
        g = analytic.Gaussian([0.3, -0.2], [1.0, 0.5])
        lp, s = g.log_prob(pts), g.score(pts)
        grad_phi0 = torch.stack([torch.cos(pts[:, 0]), 0.5 * pts[:, 1]], 1)
        F = grad_phi0 + s @ J2.T  # phi0 = sin x1 + x2^2 / 4
        grad, r = geometry.weighted_helmholtz(F.reshape(n, n, 2), lp.reshape(n, n), h)
        w = torch.exp(lp - lp.max()).reshape(n, n, 1).numpy()
        G0 = grad_phi0.reshape(n, n, 2).numpy()
        errs.append(np.sqrt((w * (grad - G0) ** 2).sum() / (w * G0**2).sum()))
        assert np.allclose(grad + r, F.reshape(n, n, 2).numpy())
    assert errs[1] < 0.01
    assert errs[1] < errs[0] / 3  # second order: a quarter per halving of h


def test_helmholtz_of_a_gradient_has_no_gauge_part_and_converges():
    errs = []
    for n in (40, 80):
        pts, h = _grid(n)
        F = torch.stack([2 * pts[:, 0], torch.ones(len(pts), dtype=F64)], 1)
        lp = torch.zeros(len(pts), dtype=F64)  # uniform p: the ordinary Helmholtz
        grad, r = geometry.weighted_helmholtz(F.reshape(n, n, 2), lp.reshape(n, n), h)
        errs.append(np.abs(r).max())
    assert errs[1] < 1e-8 and errs[0] < 1e-8  # linear gradients are exact on the grid


def test_helmholtz_rejects_bad_shapes():
    with pytest.raises(ValueError, match="field"):
        geometry.weighted_helmholtz(np.zeros((5, 5, 3)), np.zeros((5, 5)), 0.1)
    with pytest.raises(ValueError, match="log_p"):
        geometry.weighted_helmholtz(np.zeros((2, 5, 2)), np.zeros((2, 5)), 0.1)
    with pytest.raises(ValueError, match="h"):
        geometry.weighted_helmholtz(np.zeros((5, 5, 2)), np.zeros((5, 5)), 0.0)


# --- flow Jacobian and intrinsic dimension --------------------------------------------
def test_flow_jacobian_of_gaussian_data_on_a_subspace():
    var = torch.tensor([1.0, 2.0, 0.3, 1e-8], dtype=F64)
    g = analytic.GaussianMixture(torch.zeros(1, 4, dtype=F64), var[None])
    x = torch.randn(8, 4, dtype=F64, generator=gen(5))
    steps = []
    ts = sampling.time_grid(200, 0.5, 0.01)
    x_end, Y = geometry.flow_jacobian(g.denoiser(VP), x, ts,
                                      callback=lambda d: steps.append(d["t_next"]))
    c0, c1 = VP.coefficients(0.5), VP.coefficients(0.01)
    v0, v1 = c0.alpha**2 * var + c0.sigma**2, c1.alpha**2 * var + c1.sigma**2
    diag = (v1 / v0).sqrt()
    assert torch.allclose(Y, torch.diag(diag).expand(8, 4, 4), atol=1e-4)
    assert torch.allclose(x_end, x * diag, atol=3e-4)  # Heun: about 5e-5 here
    assert len(steps) == 200 and steps[-1] == pytest.approx(0.01)
    est = geometry.intrinsic_dimension(torch.linalg.svdvals(Y))
    assert bool((est == 3).all())


@pytest.mark.parametrize("D, d", [(3, 1), (3, 2), (5, 2), (6, 4)])
def test_intrinsic_dimension_of_exact_linear_subspaces(D, d):
    # Y = U diag(s) V^T with d saturating and D - d collapsed singular values
    U = torch.linalg.qr(torch.randn(D, D, dtype=F64, generator=gen(D)))[0]
    V = torch.linalg.qr(torch.randn(D, D, dtype=F64, generator=gen(D + 1)))[0]
    s = torch.cat([torch.linspace(1.5, 0.8, d), torch.linspace(0.03, 0.01, D - d)])
    Y = (U * s.to(F64)) @ V.T
    est = geometry.intrinsic_dimension(torch.linalg.svdvals(Y)[None])
    assert est.tolist() == [d]


def test_intrinsic_dimension_without_a_gap_is_full():
    s = torch.tensor([[1.0, 0.9, 0.5], [1.0, 0.01, 0.005]])
    assert geometry.intrinsic_dimension(s).tolist() == [3, 1]
    assert geometry.intrinsic_dimension(s, min_ratio=1.5).tolist() == [2, 1]
    with pytest.raises(ValueError, match="singular_values"):
        geometry.intrinsic_dimension(-s)
    with pytest.raises(ValueError, match="min_ratio"):
        geometry.intrinsic_dimension(s, min_ratio=0.5)


def test_flow_jacobian_rejects_a_grid_ending_at_zero():
    den = GMM.denoiser(VP)
    with pytest.raises(ValueError, match="ts"):
        geometry.flow_jacobian(den, torch.zeros(2, 2, dtype=F64), [1.0, 0.0])


# --- the uniform sphere ---------------------------------------------------------------
def _sphere(D=5, seed=3):
    U = torch.linalg.qr(torch.randn(D, 3, dtype=F64, generator=gen(seed)))[0]
    return geometry.UniformSphere(U, radius=1.3)


def test_sphere_score_is_the_gradient_of_its_log_density():
    sph = _sphere()
    x = torch.randn(30, 5, dtype=F64, generator=gen(6))
    x[0] = 0.0  # the origin: the small-kappa branch
    x[1] = 1e-7
    for t in (0.002, 0.05, 0.5, 1.0):
        xg = x.clone().requires_grad_(True)
        auto = torch.autograd.grad(sph.log_prob(xg, t, VP).sum(), xg)[0]
        assert torch.allclose(auto, sph.score(x, t, VP), rtol=1e-8, atol=1e-8)
    assert torch.allclose(sph.score(x[:1], 0.3, VP), torch.zeros(1, 5, dtype=F64))
    tt = torch.full((30,), 0.05, dtype=F64)
    assert torch.allclose(sph.score(x, tt, VP), sph.score(x, 0.05, VP))


def test_sphere_log_density_matches_monte_carlo():
    sph = _sphere()
    y = sph.sample(100_000, gen(7))
    assert torch.allclose(y.norm(dim=1), torch.full((100_000,), 1.3, dtype=F64))
    x = 0.8 * torch.randn(4, 5, dtype=F64, generator=gen(8))
    c = VP.coefficients(0.3)
    a, s = float(c.alpha), float(c.sigma)
    d2 = torch.cdist(x, a * y) ** 2
    mc = (torch.logsumexp(-d2 / (2 * s * s), 1) - math.log(len(y))
          - 2.5 * math.log(2 * math.pi * s * s))
    assert torch.allclose(mc, sph.log_prob(x, 0.3, VP), atol=0.01)


def test_sphere_rejects_bad_input():
    with pytest.raises(ValueError, match="basis"):
        geometry.UniformSphere(torch.ones(5, 3))
    with pytest.raises(ValueError, match="radius"):
        geometry.UniformSphere(torch.eye(3), radius=-1.0)
    sph = _sphere()
    with pytest.raises(ValueError, match="t"):
        sph.score(torch.zeros(2, 5, dtype=F64), 0.0, VP)
    with pytest.raises(ValueError, match="x"):
        sph.log_prob(torch.zeros(2, 4, dtype=F64), 0.5, VP)


# --- the energy network ---------------------------------------------------------------
def test_energy_mlp_is_minus_the_gradient_of_its_energy_and_curl_free():
    torch.manual_seed(0)
    net = nets.EnergyMLP(3, hidden=32, depth=3, emb_dim=16)
    x = torch.randn(6, 3, generator=gen(9))
    xg = x.clone().requires_grad_(True)
    grad = torch.autograd.grad(net.energy(xg, 0.4).sum(), xg)[0]
    assert torch.allclose(net(x, 0.4), -grad, atol=1e-6)
    Jm = geometry.jacobian(lambda z: net(z, 0.4), x)
    assert (Jm - Jm.transpose(1, 2)).abs().max() < 1e-5 * Jm.abs().max()
    free = nets.MLP(3, hidden=32, depth=3, emb_dim=16)
    Jf = geometry.jacobian(lambda z: free(z, 0.4), x)
    assert (Jf - Jf.transpose(1, 2)).abs().max() > 1e-2 * Jf.abs().max()


def test_energy_mlp_trains_and_samples():
    torch.manual_seed(0)
    net = nets.EnergyMLP(2, hidden=16, depth=2, emb_dim=8)
    x = torch.randn(32, 2, generator=gen(10))
    loss = (net(x, torch.rand(32, generator=gen(11))) ** 2).sum()
    loss.backward()  # second-order gradients reach every parameter
    assert all(p.grad is not None and torch.isfinite(p.grad).all()
               for p in net.parameters())
    with torch.no_grad():
        out = net(x.double(), 0.5)
    assert out.dtype == F64 and not out.requires_grad
    assert "params=" in repr(net)


def test_flow_jacobian_is_the_derivative_of_the_heun_map_of_a_nonlinear_field():
    # Y is propagated by the chain rule through each Heun step, so it must equal the
    # Jacobian of the discrete flow map (central differences, h = 1e-5) to ~1e-8
    den, ts = GMM.denoiser(VP), sampling.time_grid(30, 0.6, 0.02)
    x = GMM.sample(3, gen(12))
    x_end, Y = geometry.flow_jacobian(den, x, ts)
    assert torch.allclose(x_end, sampling.sample_heun(den, x, ts), atol=1e-12)
    eps, cols = 1e-5, []
    for j in range(2):
        e = torch.zeros(2, dtype=F64)
        e[j] = eps
        hi = sampling.sample_heun(den, x + e, ts)
        lo = sampling.sample_heun(den, x - e, ts)
        cols.append((hi - lo) / (2 * eps))
    assert torch.allclose(Y, torch.stack(cols, 2), atol=1e-7)
    assert (Y - torch.eye(2, dtype=F64)).abs().max() > 0.1  # not trivially I
