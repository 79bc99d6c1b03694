"""dlib.ot (chapter II.7): the semi-discrete OT map against its definitions, autograd
and POT's exact discrete OT (ot.emd), and the DPM-OT sampler against the book's DDIM."""

import numpy as np
import ot as pot  # POT; dlib.ot is imported as sdot
import pytest
import torch

from dlib import analytic, sampling
from dlib import ot as sdot
from dlib import schedules as S

F64 = torch.float64


def rng(seed):
    return torch.Generator().manual_seed(seed)


def problem(n=600, m=6, d=2, seed=0):
    x = torch.randn(n, d, generator=rng(seed), dtype=F64)
    y = torch.randn(m, d, generator=rng(seed + 1), dtype=F64)
    return x, y


def with_psi(y, seed, scale=0.5, **kw):
    m = sdot.SemiDiscreteOT(y, **kw)
    m.psi = scale * torch.randn(len(y), generator=rng(seed), dtype=F64)
    return m


def test_assign_is_the_argmax_and_the_distance_form():
    x, y = problem(2000, 30, 5)
    m = with_psi(y, 3)
    idx = m.assign(x)
    assert torch.equal(idx, (x @ y.T + m.psi).argmax(1))
    dist = 0.5 * torch.cdist(x, y) ** 2 - m.psi - 0.5 * (y**2).sum(1)
    assert torch.equal(idx, dist.argmin(1))


def test_batching_over_targets_changes_nothing():
    x, y = problem(500, 37, 3)
    a = with_psi(y, 4, batch=4096)
    b = with_psi(y, 4, batch=5)
    assert torch.equal(a.assign(x), b.assign(x))
    assert torch.equal(a.potential(x), b.potential(x))


def test_transport_is_the_gradient_of_the_potential_and_a_stored_target():
    x, y = problem(300, 8, 4)
    m = with_psi(y, 5)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(m.potential(xg).sum(), xg)
    out = m.transport(x)
    assert torch.equal(grad, out)
    assert bool((out[:, None, :] == y[None]).all(-1).any(1).all())


def test_dual_energy_gradient_is_cell_mass_minus_weight_by_autograd():
    x, y = problem(4000, 12, 3)
    w = torch.rand(12, generator=rng(6), dtype=F64) + 0.1
    m = sdot.SemiDiscreteOT(y, w)
    m.psi = torch.randn(12, generator=rng(7), dtype=F64)
    psi = m.psi.clone().requires_grad_(True)
    energy = (x @ y.T + psi).max(1).values.mean() - (m.weights * psi).sum()
    (grad,) = torch.autograd.grad(energy, psi)
    assert (grad - (m.cell_masses(x) - m.weights)).abs().max() < 1e-12
    assert abs(energy.item() - m.dual_energy(x)) < 1e-12
    assert abs(float(m.cell_masses(x).sum()) - 1) < 1e-12


def emd_cost(x, y, b):
    cost = pot.dist(x.numpy(), y.numpy()) / 2
    plan = pot.emd(np.full(len(x), 1 / len(x)), np.asarray(b, dtype=float), cost)
    return float((plan * cost).sum())


def plan_cost(m, x):
    return float(((x - m.transport(x)) ** 2).sum(1).mean() / 2)


def dual_value(m, x):
    y = m.targets
    second = (x**2).sum(1).mean() / 2 + (m.weights * (y**2).sum(1)).sum() / 2
    return float(second) - m.dual_energy(x)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_power_assignment_is_optimal_for_its_own_marginals(seed):
    """c-cyclical monotonicity: any psi gives an optimal plan between the source and
    the cell masses it induces (POT's exact network simplex as reference)."""
    x, y = problem(400, 7, 3, seed=10 + seed)
    m = with_psi(y, seed, scale=1.0)
    own = m.cell_masses(x).numpy()
    keep = own > 0
    m_kept = sdot.SemiDiscreteOT(y[keep])
    m_kept.psi = m.psi[keep]
    ref = emd_cost(x, y[keep], own[keep])
    assert abs(plan_cost(m_kept, x) - ref) <= 1e-10 * ref
    assert plan_cost(m, x) == pytest.approx(ref, rel=1e-10)


def test_fit_on_a_fixed_source_solves_the_discrete_problem_exactly():
    x, y = problem(600, 6)
    m = sdot.SemiDiscreteOT(y).fit(x, steps=3000, lr=0.02, tol=1e-9)
    assert torch.bincount(m.assign(x), minlength=6).tolist() == [100] * 6
    ref = emd_cost(x, y, np.full(6, 1 / 6))
    assert plan_cost(m, x) == pytest.approx(ref, rel=1e-10)
    assert dual_value(m, x) == pytest.approx(ref, rel=1e-10)  # strong duality
    assert abs(float(m.psi.sum())) < 1e-12  # mean-zero heights
    assert m.history[-1]["grad_norm"] < 1e-9 and m.history[-1]["empty"] == 0


def test_fit_with_unequal_weights_matches_them_exactly():
    x, y = problem(1000, 3, seed=20)
    m = sdot.SemiDiscreteOT(y, [5.0, 3.0, 2.0]).fit(x, steps=5000, lr=0.02, tol=1e-9)
    assert torch.bincount(m.assign(x), minlength=3).tolist() == [500, 300, 200]
    assert plan_cost(m, x) == pytest.approx(emd_cost(x, y, [0.5, 0.3, 0.2]), rel=1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_weak_duality_for_any_heights(seed):
    x, y = problem(300, 5, seed=30 + seed)
    ref = emd_cost(x, y, np.full(5, 0.2))
    for scale in (0.0, 0.3, 3.0):
        m = with_psi(y, seed, scale=scale)
        assert dual_value(m, x) <= ref * (1 + 1e-12)


def test_fit_on_a_continuous_source_equalises_the_cell_masses():
    y = torch.rand(6, 2, generator=rng(40), dtype=F64) * 2 - 1

    def source(n, g):
        return torch.randn(n, 2, generator=g, dtype=F64)

    m = sdot.SemiDiscreteOT(y).fit(source, n_samples=20_000, steps=300, lr=0.05,
                                   tol=2e-3, generator=rng(41))
    masses = m.cell_masses(source(200_000, rng(42)))
    # tolerance: a tenth of a cell's weight (the chapter's), far above the 0.001
    # Monte-Carlo error of the measurement
    assert (masses - 1 / 6).abs().max() < 1 / 60


def test_the_stopping_rule_needs_no_empty_cell():
    # (0, 0) is inside the hull of the others: with psi = 0 its cell is empty, so a
    # huge tol must not stop the fit at the first iteration
    y = torch.tensor([[0.0, 0.0], [1.0, 0.0], [-1.0, 0.5], [0.0, -1.0]], dtype=F64)
    x = torch.randn(400, 2, generator=rng(50), dtype=F64)
    m = sdot.SemiDiscreteOT(y).fit(x, steps=500, lr=0.05, tol=10.0)
    assert m.history[0]["empty"] >= 1
    assert len(m.history) > 1 and m.history[-1]["empty"] == 0
    assert len(m.history) < 500  # it did stop, once no cell was empty


def test_the_gradient_norm_stalls_at_its_monte_carlo_floor():
    # with a sampler source the estimated gradient is a multinomial share minus the
    # weights: at the optimum E|g|^2 = (1 - sum nu_i^2) / n, so a smaller tol is never
    # met and the fit runs all its steps, ending near sqrt((1 - 1/M) / n)
    y = torch.randn(8, 2, generator=rng(65), dtype=F64)

    def source(n, g):
        return torch.randn(n, 2, generator=g, dtype=F64)

    n = 4000
    m = sdot.SemiDiscreteOT(y).fit(source, n_samples=n, steps=400, lr=0.01,
                                   tol=1e-4, max_doublings=0, generator=rng(66))
    assert len(m.history) == 400
    floor = ((1 - 1 / 8) / n) ** 0.5
    late = torch.tensor([h["grad_norm"] for h in m.history[-100:]])
    rms = (late**2).mean().sqrt().item()
    # a constant Adam step keeps psi jittering, which adds a little (about 10% here)
    assert 0.8 * floor < rms < 1.4 * floor, (rms, floor)


def test_patience_doubles_the_samples_and_lowers_the_step():
    y = torch.randn(20, 2, generator=rng(60), dtype=F64)

    def source(n, g):
        return torch.randn(n, 2, generator=g, dtype=F64)

    m = sdot.SemiDiscreteOT(y).fit(source, n_samples=100, steps=60, lr=0.1,
                                   tol=1e-12, patience=1, max_doublings=2,
                                   generator=rng(61))
    ns = sorted({h["n"] for h in m.history})
    assert ns == [100, 200, 400]
    assert min(h["lr"] for h in m.history) == pytest.approx(0.1 * 0.8**2)


def test_fit_is_reproducible_with_a_seeded_generator():
    y = torch.randn(10, 3, generator=rng(70), dtype=F64)

    def source(n, g):
        return torch.randn(n, 3, generator=g, dtype=F64)

    a = sdot.SemiDiscreteOT(y).fit(source, n_samples=500, steps=20, generator=rng(1))
    b = sdot.SemiDiscreteOT(y).fit(source, n_samples=500, steps=20, generator=rng(1))
    assert torch.equal(a.psi, b.psi)


def test_sample_dpm_ot_is_ddim_from_the_mapped_latents():
    sch = S.VPLinear()
    mix = analytic.grid_mixture()
    den = mix.denoiser(sch)
    ts = sampling.time_grid(4, 0.05, 1e-3, final_zero=True)
    lat = 0.9 * mix.sample(40, generator=rng(80))
    m = sdot.SemiDiscreteOT(lat, time=float(ts[0]))
    x = torch.randn(30, 2, generator=rng(81), dtype=F64)
    den.nfe = 0
    out = sdot.sample_dpm_ot(den, x, m, ts)
    assert den.nfe == len(ts) - 1
    ref = sampling.sample_ancestral(den, m.transport(x), ts, eta=0.0)
    assert torch.equal(out, ref)
    out_clip = sdot.sample_dpm_ot(den, x, m, ts, clip_x0=0.5)
    ref_clip = sampling.sample_ancestral(den, m.transport(x), ts, eta=0.0, clip_x0=0.5)
    assert torch.equal(out_clip, ref_clip)


def test_sample_dpm_ot_restarts_at_the_latent_level_only():
    sch = S.VPLinear()
    den = analytic.grid_mixture().denoiser(sch)
    m = sdot.SemiDiscreteOT(torch.randn(5, 2, dtype=F64), time=0.1)
    x = torch.randn(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="ts must start at the latents' time"):
        sdot.sample_dpm_ot(den, x, m, [0.08, 0.0])
    free = sdot.SemiDiscreteOT(torch.randn(5, 2, dtype=F64))  # no time: any grid
    assert sdot.sample_dpm_ot(den, x, free, [0.08, 0.0]).shape == x.shape


def test_grid_mixture():
    mix = analytic.grid_mixture()
    assert mix.n_components == 25 and mix.dim == 2 and mix.n_classes == 25
    assert torch.allclose(mix.means.unique(), torch.linspace(-1, 1, 5, dtype=F64))
    assert torch.allclose(mix.variances, torch.full((25, 2), 0.05**2, dtype=F64))
    one = analytic.grid_mixture(1, 2.0, 0.1)
    assert one.means.tolist() == [[0.0, 0.0]]
    three = analytic.grid_mixture(3, 2.0, 0.1)
    assert sorted(set(three.means[:, 0].tolist())) == [-2.0, 0.0, 2.0]


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: sdot.SemiDiscreteOT(torch.zeros(3)), "targets"),
        (lambda: sdot.SemiDiscreteOT(torch.tensor([[0.0, float("nan")]])), "targets"),
        (lambda: sdot.SemiDiscreteOT(torch.zeros(0, 2)), "targets"),
        (lambda: sdot.SemiDiscreteOT([[0.0, 1.0]]), "targets"),
        (lambda: sdot.SemiDiscreteOT(torch.zeros(3, 2), [1.0, -1.0, 1.0]), "weights"),
        (lambda: sdot.SemiDiscreteOT(torch.zeros(3, 2), [1.0, 1.0]), "weights"),
        (lambda: sdot.SemiDiscreteOT(torch.zeros(3, 2), [0.0, 0.0, 0.0]), "weights"),
        (lambda: sdot.SemiDiscreteOT(torch.zeros(3, 2), batch=0), "batch"),
        (lambda: sdot.SemiDiscreteOT(torch.zeros(3, 2), time=1.5), "time"),
        (lambda: sdot.SemiDiscreteOT(torch.zeros(3, 2)).assign(torch.zeros(4, 3)), "x"),
        (lambda: sdot.SemiDiscreteOT(torch.zeros(3, 2)).fit("noise"), "source"),
        (lambda: sdot.SemiDiscreteOT(torch.zeros(3, 2)).fit(torch.zeros(5, 3)),
         "source"),
        (lambda: sdot.SemiDiscreteOT(torch.zeros(3, 2)).fit(
            lambda n, g: torch.zeros(n, 3)), "source"),
        (lambda: sdot.SemiDiscreteOT(torch.zeros(3, 2)).fit(torch.zeros(5, 2), lr=0),
         "lr"),
        (lambda: sdot.SemiDiscreteOT(torch.zeros(3, 2)).fit(
            lambda n, g: torch.zeros(n, 2), n_samples=0), "n_samples"),
        (lambda: analytic.grid_mixture(0), "n"),
        (lambda: analytic.grid_mixture(5, -1.0), "spacing"),
        (lambda: analytic.grid_mixture(5, 0.5, 0.0), "std"),
    ],
)
def test_bad_input_gives_a_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call()


def test_sample_dpm_ot_bad_input():
    den = analytic.grid_mixture().denoiser(S.VPLinear())
    m = sdot.SemiDiscreteOT(torch.randn(5, 2, dtype=F64))
    x = torch.randn(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="ot_map"):
        sdot.sample_dpm_ot(den, x, "map", [0.1, 0.0])
    with pytest.raises(ValueError, match="denoiser"):
        sdot.sample_dpm_ot(None, x, m, [0.1, 0.0])
    with pytest.raises(ValueError, match=r"\bts\b"):
        sdot.sample_dpm_ot(den, x, m, [0.1])
    with pytest.raises(ValueError, match=r"\bx\b"):
        sdot.sample_dpm_ot(den, torch.randn(3, 3, dtype=F64), m, [0.1, 0.0])
