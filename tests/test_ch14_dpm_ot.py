"""The claims of the DPM-OT chapter (II.7) as unit tests, at a smaller size than the
chapter: the dual energy's gradient in closed form (sympy), mode mixture of DPM-OT
against DDIM at equal NFE on the 25-Gaussian grid with the exact denoiser, and the
memorisation property (with topk = 1 every pre-finish state is a stored latent, and a
short finish keeps each sample next to the point its latent came from)."""

import numpy as np
import sympy as sp
import torch
from scipy.integrate import quad

from dlib import analytic, sampling
from dlib import ot as sdot
from dlib import schedules as S

F64 = torch.float64
SCH = S.VPLinear()
T_MIN = 1e-3
REF = sampling.time_grid(100, 1.0, T_MIN, spacing="log_snr", schedule=SCH,
                         final_zero=True)
K = 11


def rng(seed):
    return torch.Generator().manual_seed(seed)


def gauss2(n, g):
    return torch.randn(n, 2, generator=g, dtype=F64)


def test_dual_energy_gradient_and_convexity_in_one_dimension():
    """Source N(0, 1), targets y1 < y2 = y1 + d: E(psi) in closed form, dE/dpsi_1 =
    Phi(b) - nu_1 with the cell boundary b = (psi1 - psi2) / d, and E convex."""
    x, y1, p1, p2, n1 = sp.symbols("x y1 psi1 psi2 nu1", real=True)
    d = sp.symbols("d", positive=True)
    phi = sp.exp(-(x**2) / 2) / sp.sqrt(2 * sp.pi)
    Phi = (1 + sp.erf(x / sp.sqrt(2))) / 2
    assert sp.simplify(sp.diff(Phi, x) - phi) == 0
    b = (p1 - p2) / d
    at = {x: b}
    energy = (
        -y1 * phi.subs(at) + p1 * Phi.subs(at)
        + (y1 + d) * phi.subs(at) + p2 * (1 - Phi.subs(at))
        - n1 * p1 - (1 - n1) * p2
    )
    # the closed form is the integral (numerically, at one point, split at b)
    vals = {y1: -0.3, d: 1.1, p1: 0.2, p2: -0.4, n1: 0.3}
    u = sp.lambdify(x, (sp.Max(x * y1 + p1, x * (y1 + d) + p2) * phi).subs(vals))
    cut = float(b.subs(vals))
    integral = quad(u, -np.inf, cut)[0] + quad(u, cut, np.inf)[0]
    closed = float((energy + n1 * p1 + (1 - n1) * p2).subs(vals))
    assert abs(integral - closed) < 1e-10
    assert sp.simplify(sp.diff(energy, p1) - (Phi.subs(at) - n1)) == 0
    assert sp.simplify(sp.diff(energy, p1, 2) - phi.subs(at) / d) == 0


def ddim_grid(nfe):
    return sampling.time_grid(nfe - 1, 1.0, T_MIN, spacing="log_snr", schedule=SCH,
                              final_zero=True)


def test_dpm_ot_mixes_fewer_modes_than_ddim_at_equal_nfe():
    """Card's prediction for the 25-Gaussian grid: mixture rate ratio < 0.5 at 11 NFE
    (samples farther than 3 std from every mode count as mixed)."""
    mix = analytic.grid_mixture()
    den = mix.denoiser(SCH)
    t_k = float(REF[-(K + 1)])
    x0 = mix.sample(125, generator=rng(1))
    a, s = SCH.alpha(torch.tensor(t_k)).item(), SCH.sigma(torch.tensor(t_k)).item()
    lat = a * x0 + s * torch.randn(x0.shape, generator=rng(2), dtype=F64)
    m = sdot.SemiDiscreteOT(lat, time=t_k).fit(gauss2, n_samples=5000, steps=150,
                                               lr=0.01, generator=rng(3))
    z = gauss2(2000, rng(4))
    den.nfe = 0
    out_ot = sdot.sample_dpm_ot(den, z, m, REF[-(K + 1):])
    nfe_ot, den.nfe = den.nfe, 0
    out_dd = sampling.sample_ancestral(den, z, ddim_grid(K), eta=0.0)
    assert nfe_ot == den.nfe == K

    def mixed(x):
        dist = torch.cdist(x, mix.means).min(1).values
        return (dist > 0.15).double().mean().item()

    assert mixed(out_ot) < 0.5 * mixed(out_dd), (mixed(out_ot), mixed(out_dd))
    # the claim rests on the map being piecewise constant, not on its equal masses:
    # the unfitted map (psi = 0, most cells empty) still lands on stored points only
    flat = sdot.SemiDiscreteOT(lat, time=t_k)
    out_flat = sdot.sample_dpm_ot(den, z, flat, REF[-(K + 1):])
    assert mixed(out_flat) < 0.5 * mixed(out_dd), (mixed(out_flat), mixed(out_dd))


def test_the_map_returns_stored_latents_and_the_finish_keeps_them_close():
    mix = analytic.grid_mixture()
    den = mix.denoiser(SCH)
    t_k = float(REF[-(K + 1)])
    x0 = mix.sample(100, generator=rng(5))
    a, s = SCH.alpha(torch.tensor(t_k)).item(), SCH.sigma(torch.tensor(t_k)).item()
    lat = a * x0 + s * torch.randn(x0.shape, generator=rng(6), dtype=F64)
    m = sdot.SemiDiscreteOT(lat, time=t_k)
    z = gauss2(500, rng(7))
    pre = m.transport(z)
    assert bool((pre[:, None] == lat[None]).all(-1).any(1).all())
    out = sdot.sample_dpm_ot(den, z, m, REF[-(K + 1):])
    # the finish moves a sample by about sigma_K (0.03) towards its mode's centre;
    # the nearest stored clean point is the one its latent came from unless two
    # stored points of one mode are closer than that
    dist_own = (out - x0[m.assign(z)]).norm(dim=1)
    assert dist_own.median() < 0.1 and dist_own.max() < 0.25
