"""The claims of chapter I.6 (gauge freedom, conservativity, intrinsic dimension) at a
unit-test size: a gauge keeps the samples while moving the paths, fields that break the
gauge condition do not; Euler pays for a gauge; the grid split recovers the score of
the chapter's mixture; the sphere's dimension is read off the flow's Jacobian, also
under an exact gauge."""

import math

import numpy as np
import torch

from dlib import analytic, geometry, metrics, sampling
from dlib import schedules as S

F64 = torch.float64
VP = S.VPLinear()
J2 = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=F64)
GMM = analytic.GaussianMixture(
    [[-2.0, 0.5], [1.5, 1.5], [0.5, -1.5]],
    [[0.5, 0.05], [0.05, 0.6], [0.4, 0.1]],
    [0.4, 0.3, 0.3],
)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_gauge_keeps_samples_and_broken_fields_do_not():
    n = 1500
    oracle = GMM.denoiser(VP)
    z = torch.randn(n, 2, dtype=F64, generator=gen(0))
    ts = sampling.time_grid(100, 1.0, 1e-3)
    exact = sampling.sample_heun(oracle, z, ts)
    gauge = sampling.sample_heun(geometry.rotation_gauge(oracle, 2.0 * J2), z, ts)
    broken = sampling.sample_heun(
        geometry.perturb_score(oracle, lambda x, t: 2.0 * x @ J2.T), z, ts
    )
    data = [GMM.sample(n, gen(1 + i)) for i in range(3)]
    floor = max(abs(metrics.energy_distance(data[0], d)) for d in data[1:])
    assert abs(metrics.energy_distance(gauge, data[0])) < 3 * floor
    assert metrics.energy_distance(broken, data[0]) > 10 * floor
    assert (gauge - exact).norm(dim=1).mean() > 0.5  # the paths moved


def test_euler_pays_for_the_gauge():
    oracle = GMM.denoiser(VP)
    z = torch.randn(300, 2, dtype=F64, generator=gen(4))
    errs = []
    for c in (0.0, 1.0, 3.0):
        den = geometry.rotation_gauge(oracle, c * J2)
        ref = sampling.sample_heun(den, z, sampling.time_grid(400, 1.0, 1e-3))
        euler = sampling.sample_euler(den, z, sampling.time_grid(50, 1.0, 1e-3))
        errs.append((euler - ref).norm(dim=1).mean().item())
    assert errs[0] < errs[1] < errs[2]


def test_grid_split_recovers_the_mixture_score():
    n, t = 100, 0.05
    g = torch.linspace(-5.0, 5.0, n, dtype=F64)
    X1, X2 = torch.meshgrid(g, g, indexing="ij")
    pts = torch.stack([X1, X2], -1).reshape(-1, 2)
    s, lp = GMM.score(pts, t, VP), GMM.log_prob(pts, t, VP)
    w = torch.exp(lp - lp.max()).reshape(n, n, 1).numpy()
    S_ = s.reshape(n, n, 2).numpy()
    errs = {}
    for name, F in (("gauge", s + 2.0 * s @ J2.T), ("Jx", s + 2.0 * pts @ J2.T)):
        grad, _ = geometry.weighted_helmholtz(
            F.reshape(n, n, 2), lp.reshape(n, n), float(g[1] - g[0])
        )
        errs[name] = math.sqrt((w * (grad - S_) ** 2).sum() / (w * S_**2).sum())
    assert errs["gauge"] < 0.02 and errs["Jx"] > 0.5


def test_sphere_dimension_from_the_flow_jacobian_also_under_a_gauge():
    U = torch.linalg.qr(torch.randn(5, 3, dtype=F64, generator=gen(5)))[0]
    sph = geometry.UniformSphere(U)
    x0 = sph.sample(40, gen(6))
    c = VP.coefficients(0.1)
    x = c.alpha * x0 + c.sigma * torch.randn(40, 5, dtype=F64, generator=gen(7))
    A = torch.randn(5, 5, dtype=F64, generator=gen(8))
    A = (A - A.T) / np.sqrt(5)
    ts = sampling.time_grid(40, 0.1, 0.002)
    for den in (sph.denoiser(VP), geometry.rotation_gauge(sph.denoiser(VP), A)):
        _, Y = geometry.flow_jacobian(den, x, ts)
        est = geometry.intrinsic_dimension(torch.linalg.svdvals(Y))
        assert (est == 2).double().mean() > 0.95
