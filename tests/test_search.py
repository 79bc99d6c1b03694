"""Tests for dlib.solvers.search (USF/S3): every special-case schedule reproduces its
dedicated solver, UniPC against its own linear-system form written out here, the
derivative estimates against polynomials, NFE against the network calls, the search's
reproducibility and elitism, and bad input."""

import math

import numpy as np
import pytest
import torch

from dlib import analytic, param, sampling, solvers
from dlib import schedules as S
from dlib.solvers import SolverSchedule, Update
from solver_problem import rel

F64 = torch.float64
SCH = S.DiscreteVP(S.ddpm_betas())
DEN = analytic.thin_mixture(2, seed=0).denoiser(SCH)
X = torch.randn(40, 2, generator=torch.Generator().manual_seed(0), dtype=F64)


def grid(n=7, final_zero=True, spacing="log_snr"):
    return sampling.time_grid(n, 1.0, 1e-3, spacing=spacing, schedule=SCH,
                              final_zero=final_zero)


def counted(den):
    calls = []
    net = param.Denoiser(lambda x, t: calls.append(1) or den.predict(x, t, "eps"),
                         den.schedule, "eps")
    return net, calls


# --- the special cases --------------------------------------------------------------
@pytest.mark.parametrize("final_zero", [False, True])
def test_ddim_schedule_is_ddim(final_zero):
    ts = grid(final_zero=final_zero)
    out = solvers.sample_usf(DEN, X, SolverSchedule.ddim(ts))
    assert rel(out, sampling.sample_ancestral(DEN, X, ts, eta=0.0)) < 1e-10


CASES = [(k, m, p) for k in (1, 2, 3) for m in ("multistep", "singlestep")
         for p in ("eps", "x0")]


@pytest.mark.parametrize("final_zero", [False, True])
@pytest.mark.parametrize("order, method, prediction", CASES)
def test_dpm_solver_schedules_reproduce_the_dedicated_solvers(order, method,
                                                              prediction, final_zero):
    """DPM-Solver(++) single- and multistep, orders 1-3, as USF schedules: equal to
    sample_dpm_solver(_pp) to round-off, with the same NFE (both measured)."""
    ts = grid(final_zero=final_zero, spacing="karras")
    fn = solvers.sample_dpm_solver_pp if prediction == "x0" else \
        solvers.sample_dpm_solver
    sched = SolverSchedule.dpm_solver(ts, SCH, order=order, method=method,
                                      prediction=prediction)
    net, calls = counted(DEN)
    out = solvers.sample_usf(net, X, sched)
    nfe_usf = net.nfe
    assert nfe_usf == len(calls) == sched.nfe
    net.nfe = 0
    ref = fn(net, X, ts, order=order, method=method)
    assert rel(out, ref) < 1e-10
    assert net.nfe == nfe_usf


def test_dpm_solver_schedule_options_follow_the_solver():
    ts = grid(8, final_zero=False)
    for kw in ({"lower_order_final": False}, {"lower_order_below": 15},
               {"r1": 0.3, "method": "singlestep"}):
        a = solvers.sample_usf(DEN, X, SolverSchedule.dpm_solver(ts, SCH, **kw))
        b = solvers.sample_dpm_solver_pp(DEN, X, ts, **kw)
        assert rel(a, b) < 1e-10, kw


def unipc_written_out(den, x, ts, variant):
    """UniPC-2 (data prediction, B(h) variant) in the paper's own form: predictor
    UniP with rho_p = 1/2, corrector UniC solving R rho = b with R rows rk^(q-1) and
    b_q = q! h phi_{q+1}(-h) (-h) / B(h); lower order on the first step only."""
    sch = den.schedule
    lam = sch.log_snr(ts).tolist()
    c = [sch.coefficients(t) for t in ts]
    al, sg = [float(v.alpha) for v in c], [float(v.sigma) for v in c]
    m = [den.x0_eps(x, ts[0])[0]]
    n = len(lam) - 1
    rk = None
    for i in range(n):
        h = lam[i + 1] - lam[i]
        hh = -h
        B = hh if variant == "bh1" else math.expm1(hh)
        base = sg[i + 1] / sg[i] * x - al[i + 1] * math.expm1(hh) * m[i]
        if i == 0:
            xt = base
        else:
            rk = (lam[i - 1] - lam[i]) / h
            d1 = (m[i - 1] - m[i]) / rk
            xt = base - al[i + 1] * B * 0.5 * d1
        if i < n - 1:
            new = den.x0_eps(xt, ts[i + 1])[0]
            d1t = new - m[i]
            if i == 0:
                corr = 0.5 * d1t
            else:
                hphi = math.expm1(hh) / hh - 1
                b = [hphi / B, (hphi / hh - 0.5) * 2 / B]
                rho = np.linalg.solve(np.array([[1.0, 1.0], [rk, 1.0]]), b)
                corr = rho[0] * d1 + rho[1] * d1t
            xt = base - al[i + 1] * B * corr
            m.append(new)
        x = xt
    return x


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
def test_unipc_schedule_is_unipc(variant):
    ts = grid(6, final_zero=False)
    sched = SolverSchedule.unipc(ts, SCH, variant=variant, lower_order_final=False)
    out = solvers.sample_usf(DEN, X, sched)
    assert rel(out, unipc_written_out(DEN, X, ts, variant)) < 1e-10
    assert sched.nfe == 6  # the corrector is free
    # and the corrector really acts: without it this is DPM-Solver++(2M) (bh2)
    plain = SolverSchedule(sched.timesteps, sched.steps)
    assert rel(solvers.sample_usf(DEN, X, plain), out) > 1e-4


# --- derivative estimation ----------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_difference_weights_are_exact_for_polynomials_of_degree_n(n):
    rng = np.random.default_rng(n)
    d = [-0.7, 0.4, -1.3, 0.9][:n]
    coef = rng.normal(size=n + 2)  # F(delta) = sum_q coef_q delta^q / q!
    for degree, exact in ((n, True), (n + 1, False)):
        def F(u, deg=degree):
            return sum(coef[q] * u**q / math.factorial(q) for q in range(deg + 1))
        for m in range(1, n + 1):
            a = solvers.difference_weights(d, m)
            est = sum(aj * (F(dj) - F(0.0)) for aj, dj in zip(a, d))
            err = abs(est - coef[m])
            if exact:
                assert err < 1e-10 * (1 + abs(coef[m])), (n, m, err)
            elif m == n:  # the top derivative sees the next Taylor term
                assert err > 1e-6, (n, m, err)


def test_taylor_step_is_exact_where_its_expansion_is():
    """A data prediction quadratic in lambda: an order-3 step from the latest point
    with its two predecessors integrates it exactly (against DPM-Solver++(3M), whose
    Taylor form test_solvers.py checks against the closed form)."""
    ts = sampling.time_grid(6, 0.9, 0.02, spacing="quadratic")
    coefs = torch.tensor([[0.3, -0.2], [0.5, 0.1], [-0.07, 0.04]], dtype=F64)
    vp = S.VPLinear()

    def fn(x, t):
        lam = vp.log_snr(t.to(F64))[:, None]
        return sum(coefs[j] * lam**j for j in range(3)).expand_as(x)

    den = param.Denoiser(fn, vp, "x0")
    sched = SolverSchedule.dpm_solver(ts, vp, order=3, lower_order_final=False)
    assert [u.order for u in sched.steps] == [1, 2, 3, 3, 3, 3]
    out = solvers.sample_usf(den, X, sched)
    assert rel(out, solvers.sample_dpm_solver_pp(den, X, ts, order=3,
                                                 lower_order_final=False)) < 1e-10


# --- NFE ------------------------------------------------------------------------------
def test_nfe_is_the_number_of_model_calls():
    ts = grid(5)
    base = SolverSchedule.unipc(ts, SCH)
    for sched in (base, SolverSchedule(base.timesteps, base.steps, base.correctors,
                                       afs=True)):
        net, calls = counted(DEN)
        solvers.sample_usf(net, X, sched)
        assert net.nfe == len(calls) == sched.nfe == 6 - sched.afs


def test_analytic_first_step_is_exact_for_zero_x0():
    """AFS sets x0_hat(x_T, T) = 0: for data of mean 0 and alpha_T ~ 0.006 its first
    step is close to the evaluated one."""
    den = analytic.GaussianMixture([[0.5, 0.0], [-0.5, 0.0]], 0.01).denoiser(SCH)
    ts = grid(6)
    a = SolverSchedule.ddim(ts)
    b = SolverSchedule(a.timesteps, a.steps, afs=True)
    err = rel(solvers.sample_usf(den, X, a), solvers.sample_usf(den, X, b))
    assert err < 0.05, err


# --- the search -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def ref():
    ts = torch.tensor([1.0, 1e-6, 0.0], dtype=F64)
    return sampling.sample_ode(DEN, X, ts, rtol=1e-10, atol=1e-10)


def test_search_is_reproducible_and_never_worse_than_its_start(ref):
    kw = {"budget": 40, "seed": 3, "progress": False}
    a = solvers.search_solver_schedule(DEN, X, ref, 5, **kw)
    b = solvers.search_solver_schedule(DEN, X, ref, 5, **kw)
    assert a == b  # same seed: the same schedule, errors and history
    assert a.n_evaluated == 40 and len(a.history) == 40
    assert a.error <= a.start_error and a.schedule.nfe == 5
    assert all(u >= v for u, v in zip(a.history[:-1], a.history[1:]))
    net, calls = counted(DEN)
    out = solvers.sample_usf(net, X, a.schedule)
    assert net.nfe == len(calls) == 5
    assert abs(float(((out - ref) ** 2).mean().sqrt()) - a.error) < 1e-12
    start = SolverSchedule.dpm_solver(grid(4), SCH)
    assert abs(float(((solvers.sample_usf(DEN, X, start) - ref) ** 2).mean().sqrt())
               - a.start_error) < 1e-12
    c = solvers.search_solver_schedule(DEN, X, ref, 5, **{**kw, "seed": 4})
    assert c.history != a.history


def test_search_finds_better_schedules_and_respects_frozen_decisions(ref):
    res = solvers.search_solver_schedule(DEN, X, ref, 4, budget=60, seed=0,
                                         decisions=("times",), progress=False)
    start = SolverSchedule.dpm_solver(grid(3), SCH)
    assert res.error < res.start_error  # 60 tries of the times alone do improve
    assert res.schedule.steps == start.steps
    assert res.schedule.timesteps != start.timesteps
    assert res.schedule.timesteps[-1] == 0.0
    assert 1e-4 <= res.schedule.timesteps[-2] <= 1e-2


def test_schedule_round_trips_and_describes():
    sched = SolverSchedule.unipc(grid(5), SCH, order=3)
    assert SolverSchedule.from_dict(sched.to_dict()) == sched
    text = sched.describe()
    assert "NFE = 6" in text and "corrector" in text


# --- bad input ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: Update(order=5), "order"),
        (lambda: Update(order=2), "points"),
        (lambda: Update(order=2, points=(1,)), "start"),
        (lambda: Update(order=1, points=(2,)), "points"),
        (lambda: Update(prediction="v"), "prediction"),
        (lambda: Update(order=2, points=(2,), relaxation="x"), "relaxation"),
        (lambda: Update(relaxation="linear"), "relaxation"),
        (lambda: Update(coef=math.nan), "coef"),
        (lambda: Update(start=0), "start"),
        (lambda: SolverSchedule((1.0, 0.5), (Update(2, "x0", 1, (2,)),)), "steps"),
        (lambda: SolverSchedule((1.0, 0.0), (Update(2, "x0", 1, (2,)),)), "steps"),
        (lambda: SolverSchedule((0.5, 1.0), (Update(),)), "timesteps"),
        (lambda: SolverSchedule((1.0, 0.5), ()), "steps"),
        (lambda: SolverSchedule((1.0, 0.5, 0.2), (Update(),) * 2,
                                (None, Update(2, "x0", 1, (0,)))), "correctors"),
        (lambda: SolverSchedule((1.0, 0.5, 0.2), (Update(),) * 2,
                                (Update(2, "x0", 2, (1,)), None)), "correctors"),
        (lambda: SolverSchedule((1.0, 0.5), (Update(),), afs=1), "afs"),
        (lambda: SolverSchedule((1.0, 0.5), ("ddim",)), "steps"),
        (lambda: SolverSchedule.dpm_solver([1.0, 0.5], SCH, order=4), "order"),
        (lambda: SolverSchedule.dpm_solver([1.0, 0.5], "vp"), "schedule"),
        (lambda: SolverSchedule.unipc([1.0, 0.5], SCH, variant="bh3"), "variant"),
        (lambda: SolverSchedule.from_dict({"steps": []}), "data"),
        (lambda: solvers.difference_weights([0.1, 0.1], 1), "offsets"),
        (lambda: solvers.difference_weights([0.1, 0.2], 3), "m"),
        (lambda: solvers.sample_usf(DEN, X, [1.0, 0.5]), "schedule"),
        (lambda: solvers.sample_usf(DEN, X[0], SolverSchedule.ddim([1.0, 0.5])), "x"),
        (lambda: solvers.sample_usf(DEN, X, SolverSchedule.ddim([1.0, 0.5]),
                                    callback=3), "callback"),
        (lambda: solvers.sample_usf(S.LinearInterpolant() and analytic.thin_mixture(
            2).denoiser(S.LinearInterpolant()), X,
            SolverSchedule.ddim([1.0, 0.5])), "singular"),
    ],
)
def test_bad_input_is_a_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"nfe": 1}, "nfe"),
        ({"budget": 0}, "budget"),
        ({"seed": -1}, "seed"),
        ({"t_min_range": (0.0, 0.1)}, "t_min_range"),
        ({"t_min_range": (0.1, 0.01)}, "t_min_range"),
        ({"mutation_rate": 0.0}, "mutation_rate"),
        ({"top_k": 0}, "top_k"),
        ({"decisions": ("speed",)}, "decisions"),
        ({"decisions": "times"}, "decisions"),
        ({"start": "ddim"}, "start"),
        ({"start": SolverSchedule.ddim([1.0, 0.5, 0.0])}, "start"),
        ({"reference": X[:3]}, "reference"),
        ({"x_T": X[:, :1]}, "x_T"),
    ],
)
def test_search_bad_input(kw, name):
    args = {"denoiser": DEN, "x_T": X, "reference": X, "nfe": 5, "budget": 2,
            "progress": False, **kw}
    with pytest.raises(ValueError, match=name):
        solvers.search_solver_schedule(**args)
