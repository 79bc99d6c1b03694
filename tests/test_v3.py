"""Tests for dlib.solvers.v3 (DPM-Solver-v3) against ground truth: its baselines equal
the Taylor-form multistep DPM-Solver++ / DPM-Solver written out here (float64
round-off), the statistics of Gaussian data equal their closed forms, the empirical
order on a smooth problem, the corrector's zero NFE, the half-corrector's regions,
the cache and bad input."""

import math

import pytest
import torch

from dlib import analytic, sampling, solvers
from dlib.solvers import EMS, estimate_statistics, sample_dpm_solver_v3
from dlib.solvers._core import _coefs

from solver_problem import DEN, F64, GM, SCH, T_MIN, X1, rel  # noqa: F401 (shared)


def grid(M, t_max=1.0, t_min=T_MIN, sch=SCH):
    lo, hi = sch.log_snr(torch.tensor([t_max, t_min], dtype=F64)).tolist()
    return torch.linspace(lo, hi, M + 1, dtype=F64)


def taylor_multistep(den, x, ts, order, data):
    """Multistep exponential integrator in its Taylor form, written out: at step i
    the model outputs m at the last min(order, i + 1) grid points, their
    interpolating polynomial p in lambda, and
    x_s = A x + c1 m0 + c2 h p'(lambda_0) + c3 h^2 p''(lambda_0) (dlib's _coefs)."""
    sch = den.schedule
    lam = sch.log_snr(ts).tolist()
    past = []
    for i in range(len(ts) - 1):
        t, s = float(ts[i]), float(ts[i + 1])
        x0, eps = den.x0_eps(x, t)
        past = (past + [(lam[i], x0 if data else eps)])[-order:]
        h = lam[i + 1] - lam[i]
        a, c1, c2, c3 = _coefs(sch._coefficients(t), sch._coefficients(s), h, data)
        (l0, m0) = past[-1]
        out = x * a + m0 * c1
        if len(past) >= 2:
            (l1, m1) = past[-2]
            d01 = (m0 - m1) / (l0 - l1)
            if len(past) == 2:
                out = out + d01 * (c2 * h)
            else:
                (l2, m2) = past[-3]
                d012 = (d01 - (m1 - m2) / (l1 - l2)) / (l0 - l2)
                out = out + (d01 + d012 * (l0 - l1)) * (c2 * h)
                out = out + 2 * d012 * (c3 * h * h)
        x = out
    return x


# --- baselines -----------------------------------------------------------------------
@pytest.mark.parametrize("prediction", ["x0", "eps"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_baseline_statistics_reduce_to_the_base_solver(prediction, order):
    """l=1, s=0, b=0 is DPM-Solver++ (data prediction) and l=0, s=-1, b=0 is
    DPM-Solver (noise prediction), both multistep in the Taylor form; the grid of 12
    steps is uniform in lambda on the statistics' nodes (snapping changes nothing)."""
    stats = EMS.baseline(grid(960), (2,), prediction)
    ts = sampling.time_grid(12, 1.0, T_MIN, spacing="log_snr", schedule=SCH)
    _, snapped = stats.snap(ts, SCH)
    assert float((snapped - ts).abs().max()) < 1e-12
    out = sample_dpm_solver_v3(DEN, X1, ts, stats, order=order, corrector=False,
                               lower_order_final=False)
    ref = taylor_multistep(DEN, X1, snapped, order, prediction == "x0")
    assert rel(out, ref) < 1e-10
    # and the other baseline is a different solver (the test can fail)
    other = EMS.baseline(grid(960), (2,), "eps" if prediction == "x0" else "x0")
    if order > 1:
        out2 = sample_dpm_solver_v3(DEN, X1, ts, other, order=order, corrector=False,
                                    lower_order_final=False)
        assert rel(out2, ref) > 1e-6


@pytest.mark.parametrize("final_zero", [False, True])
def test_first_order_baselines_are_ddim(final_zero):
    """Order 1 with either baseline is the DDIM step; a grid ending at 0 jumps to
    x0_hat as in dlib.sampling."""
    stats = EMS.baseline(grid(480), (2,), "x0")
    ts = sampling.time_grid(8, 1.0, T_MIN, spacing="log_snr", schedule=SCH,
                            final_zero=final_zero)
    _, snapped = stats.snap(ts, SCH)
    ddim = sampling.sample_ancestral(DEN, X1, snapped, eta=0.0)
    for pred in ("x0", "eps"):
        st = EMS.baseline(grid(480), (2,), pred)
        assert rel(sample_dpm_solver_v3(DEN, X1, ts, st, order=1), ddim) < 1e-12


# --- statistics: closed forms for Gaussian data --------------------------------------
def test_statistics_of_gaussian_data_match_their_closed_forms():
    """N(mu, diag v): eps is linear in x, so l = sigma^2/(alpha^2 v + sigma^2)
    = 1/(e^{2 lambda} v + 1) exactly, f = -mu/(e^{2 lambda} v + 1) does not depend on
    x (s = 0) and b = f' = 2 v mu e^{2 lambda}/(e^{2 lambda} v + 1)^2."""
    mu, v = torch.tensor([0.3, -0.5], dtype=F64), torch.tensor([0.04, 0.2], dtype=F64)
    g = analytic.Gaussian(mu, v)
    gen = torch.Generator().manual_seed(1)
    ems = estimate_statistics(g.denoiser(SCH), g.sample(2000, generator=gen),
                              n_lambda=400, n_samples=64, t_min=T_MIN, smooth=0,
                              generator=gen, progress=False)
    e2 = torch.exp(2 * ems.lambdas)[:, None]
    l_exact = 1 / (e2 * v + 1)
    b_exact = 2 * v * mu * e2 / (e2 * v + 1) ** 2
    # central differences of a linear function: exact up to round-off / fd_step
    assert float((ems.l - l_exact).abs().max()) < 1e-8
    # s is 0/0 here (f is constant up to finite-difference noise); the ridge makes
    # it ~0, far below the O(1) values it takes for a mixture
    assert float(ems.s.abs().max()) < 1e-4
    # b: the grid's central difference for l' is second order in the cell (0.024)
    assert float((ems.b - b_exact).abs().max()) < 1e-3 * float(b_exact.abs().max())
    assert float(ems.r2.max()) <= 1.0
    # with these statistics g is constant: the first-order step is exact up to the
    # quadrature on the grid, at 5 steps, where DDIM is far off
    ts = sampling.time_grid(5, 1.0, T_MIN, spacing="log_snr", schedule=SCH)
    x = torch.randn(50, 2, generator=gen, dtype=F64)
    _, snapped = ems.snap(ts, SCH)
    ref = sampling.sample_ode(g.denoiser(SCH), x, snapped[[0, -1]], rtol=1e-11,
                              atol=1e-11)
    out = sample_dpm_solver_v3(g.denoiser(SCH), x, ts, ems, order=1)
    ddim = solvers.sample_dpm_solver_pp(g.denoiser(SCH), x, snapped, order=1)
    assert rel(out, ref) < 1e-4 and rel(ddim, ref) > 1e-2


def test_hutchinson_l_is_unbiased_within_its_standard_error():
    """A Gaussian with a full covariance: sigma grad eps = sigma^2 (alpha^2 Sigma +
    sigma^2 I)^{-1} =: J is constant, the exact diagonal is found to round-off, and
    the Hutchinson mean over K Rademacher vectors has standard error
    sqrt(sum_{j != i} J_ij^2 / K): the two agree within 5 of them."""
    rot = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(3),
                                      dtype=F64))[0]
    kappa = torch.tensor([0.5, 0.2, 0.05, 0.01], dtype=F64)
    g = analytic.GaussianPCA(torch.zeros(4, dtype=F64), kappa, rot)
    den = g.denoiser(SCH)
    data = torch.randn(4000, 4, generator=torch.Generator().manual_seed(4),
                       dtype=F64) * kappa.sqrt() @ rot.T
    kw = dict(n_lambda=3, n_samples=4096, t_min=T_MIN, smooth=0, progress=False)
    exact = estimate_statistics(den, data, jacobian="exact",
                                generator=torch.Generator().manual_seed(5), **kw)
    hutch = estimate_statistics(den, data, jacobian="hutchinson",
                                generator=torch.Generator().manual_seed(6), **kw)
    cov = rot @ torch.diag(kappa) @ rot.T
    largest = 0.0
    for j, lam in enumerate(exact.lambdas.tolist()):
        a2 = 1 / (1 + math.exp(-2 * lam))
        s2 = 1 - a2
        J = s2 * torch.linalg.inv(a2 * cov + s2 * torch.eye(4, dtype=F64))
        assert float((exact.l[j] - torch.diagonal(J)).abs().max()) < 1e-8
        se = ((J**2).sum(1) - torch.diagonal(J) ** 2).div(4096).sqrt()
        assert bool(((hutch.l[j] - exact.l[j]).abs() <= 5 * se + 1e-12).all())
        largest = max(largest, float(se.max()))
    assert largest > 1e-3  # the off-diagonal part is not negligible: it can fail


# --- orders --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference():
    ts = torch.tensor([1.0, T_MIN], dtype=F64)
    return sampling.sample_ode(DEN, X1, ts, rtol=1e-12, atol=1e-12)


def smooth_stats(M):
    """Smooth, non-trivial statistics: l of a Gaussian of variance 0.4, s and b
    smooth in lambda (any statistics give a consistent solver)."""
    lam = grid(M)
    L = lam[:, None].expand(-1, 2)
    return EMS(lam, 1 / (1 + 0.4 * torch.exp(2 * L)), 0.5 * torch.tanh(L),
               0.1 * torch.cos(L))


@pytest.mark.parametrize("order, pseudo, expected", [
    (1, False, 1), (2, False, 2), (3, False, 3), (3, True, 2)])
def test_empirical_order(reference, order, pseudo, expected):
    """Max error at t_min, grids uniform in lambda with 80 and 160 steps on a
    1280-cell statistics grid; the log-log slope is the order (+-0.3, from the issue).
    The pseudo-order predictor's divided differences estimate g'' at the middle of
    the points, not at lambda_s: formally second order (the paper trades order for
    conditioning at large steps)."""
    stats = smooth_stats(1280)
    errs = []
    for n in (80, 160):
        ts = sampling.time_grid(n, 1.0, T_MIN, spacing="log_snr", schedule=SCH)
        out = sample_dpm_solver_v3(DEN, X1, ts, stats, order=order, pseudo=pseudo,
                                   corrector=False)
        errs.append(float((out - reference).abs().max()))
    slope = math.log2(errs[0] / errs[1])
    assert abs(slope - expected) <= 0.3, (errs, slope)


def test_pseudo_and_full_order_agree_at_order_two():
    stats = smooth_stats(480)
    ts = sampling.time_grid(10, 1.0, T_MIN, spacing="log_snr", schedule=SCH)
    a = sample_dpm_solver_v3(DEN, X1, ts, stats, order=2, pseudo=False)
    b = sample_dpm_solver_v3(DEN, X1, ts, stats, order=2, pseudo=True)
    assert rel(a, b) < 1e-14


# --- corrector -----------------------------------------------------------------------
def test_corrector_costs_no_nfe_and_changes_the_result(reference):
    stats = smooth_stats(480)
    ts = sampling.time_grid(10, 1.0, T_MIN, spacing="log_snr", schedule=SCH)
    outs = []
    for corrector in (False, True):
        DEN.nfe = 0
        outs.append(sample_dpm_solver_v3(DEN, X1, ts, stats, corrector=corrector))
        assert DEN.nfe == 10
    assert rel(outs[0], outs[1]) > 1e-4
    ts0 = sampling.time_grid(10, 1.0, T_MIN, spacing="log_snr", schedule=SCH,
                             final_zero=True)
    DEN.nfe = 0
    sample_dpm_solver_v3(DEN, X1, ts0, stats, corrector=True)
    assert DEN.nfe == 11  # one evaluation per step, the jump included


def test_half_corrector_regions():
    """On a grid with every time above 0.5 'noisy' (the official code's half=True)
    corrects everywhere and 'clean' (its README's wording) nowhere."""
    stats = smooth_stats(960)
    ts = torch.linspace(1.0, 0.6, 9, dtype=F64)
    run = lambda **kw: sample_dpm_solver_v3(DEN, X1, ts, stats, **kw)  # noqa: E731
    full, none = run(corrector=True), run(corrector=False)
    assert rel(full, none) > 1e-6
    assert rel(run(half_corrector=True), full) < 1e-15
    assert rel(run(half_corrector="noisy"), full) < 1e-15
    assert rel(run(half_corrector="clean"), none) < 1e-15


# --- cache, snapping, bad input ------------------------------------------------------
def test_save_and_load_round_trip(tmp_path):
    gen = torch.Generator().manual_seed(0)
    ems = estimate_statistics(DEN, GM.sample(500, generator=gen), n_lambda=8,
                              n_samples=32, t_min=T_MIN, generator=gen,
                              progress=False)
    ems.save(tmp_path / "ems.npz")
    back = EMS.load(tmp_path / "ems.npz")
    for name in ("lambdas", "l", "s", "b", "r2"):
        assert torch.equal(getattr(back, name), getattr(ems, name))
    assert back.n_samples == 32 and back.schedule == repr(SCH)


def test_bad_input_raises_value_error():
    stats = smooth_stats(40)
    ts = sampling.time_grid(5, 1.0, T_MIN, spacing="log_snr", schedule=SCH)
    v3 = sample_dpm_solver_v3
    cases = [
        ("stats", lambda: v3(DEN, X1, ts, "stats")),
        ("sample shape", lambda: v3(DEN, X1, ts, EMS.baseline(grid(40), (3,)))),
        ("order", lambda: v3(DEN, X1, ts, stats, order=4)),
        ("pseudo", lambda: v3(DEN, X1, ts, stats, pseudo=1)),
        ("half_corrector", lambda: v3(DEN, X1, ts, stats, half_corrector="half")),
        ("ts", lambda: v3(DEN, X1, torch.tensor([1.0, 1e-4], dtype=F64), stats)),
        ("more steps", lambda: v3(DEN, X1, sampling.time_grid(60, 1.0, T_MIN),
                                  stats)),
        ("estimated for", lambda: v3(DEN, X1, ts, EMS(stats.lambdas, stats.l,
                                                      stats.s, stats.b, 0,
                                                      "VE()"))),
        ("jacobian", lambda: estimate_statistics(DEN, X1, jacobian="jvp")),
        ("n_lambda", lambda: estimate_statistics(DEN, X1, n_lambda=1)),
        ("t_min", lambda: estimate_statistics(DEN, X1, t_min=0.0)),
        ("data", lambda: estimate_statistics(DEN, torch.ones(3, 5, dtype=F64))),
        ("lambdas", lambda: EMS(torch.tensor([0.0, 0.0]), stats.l[:2], stats.s[:2],
                                stats.b[:2])),
        ("same shape", lambda: EMS(stats.lambdas, stats.l, stats.s[:, :1],
                                   stats.b)),
        ("prediction", lambda: EMS.baseline(grid(4), (2,), "v")),
        ("path", lambda: EMS.load(3)),
    ]
    for words, call in cases:
        with pytest.raises(ValueError, match=words):
            call()


def test_corrector_order(reference):
    """The corrector has the predictor's order (3 points: the step start, the new point,
    one older point; as the official code). On the x0 baseline (exact quadrature,
    x0_hat nearly constant at the noisy end) order 3 + corrector converges at least at
    order 3 (measured ~4). With non-trivial statistics the measured slope drops to
    about 2, not from a defect: (i) the multistep warm-up starts with an order-1 step,
    whose local error O(h^2) is proportional to g' at the noisy end, tiny for s = 0
    but not for s_lambda != 0 (g' = e^{-S}(f' - s f - b) with f ~ -E[x0] there); it
    is hidden under the predictor's O(h^3) error and exposed once the corrector has
    removed most of that (starting from exact values cut the error at 640 steps
    by 4x); (ii) the trapezoid sums L, S, Q on the statistics' grid leave an O(cell^2)
    floor. Re-evaluating the model at the corrected point changes nothing (the fixed-N
    shortcut is not the cause). In the range that matters the corrector still
    lowers the error from 40 steps on (regression guard; at 20 steps it does not)."""
    def errs(stats, corrector, ns):
        out = []
        for n in ns:
            ts = sampling.time_grid(n, 1.0, T_MIN, spacing="log_snr", schedule=SCH)
            x = sample_dpm_solver_v3(DEN, X1, ts, stats, order=3, corrector=corrector)
            out.append(float((x - reference).abs().max()))
        return out
    base = EMS.baseline(grid(2560), (2,), "x0")
    e = errs(base, True, (40, 80))
    assert math.log2(e[0] / e[1]) >= 3 - 0.3, e
    stats = smooth_stats(1280)
    with_c, without = errs(stats, True, (40, 80)), errs(stats, False, (40, 80))
    assert all(a < b for a, b in zip(with_c, without)), (with_c, without)
