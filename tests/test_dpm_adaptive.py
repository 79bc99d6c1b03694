"""Tests for the adaptive DPM-Solver-12/-23 (dlib.solvers.sample_dpm_solver_adaptive):
the real NFE and the accepted grid, agreement with the fixed-grid singlestep solver on
that grid, the error shrinking with the tolerance against a converged reference, the
exact flow of Gaussian data, and bad input."""

import math

import pytest
import torch

from dlib import analytic, metrics, sampling, solvers
from dlib import schedules as S

F64 = torch.float64
SCH = S.DiscreteVP(S.ddpm_betas())
MIX = analytic.thin_mixture(2)
DEN = MIX.denoiser(SCH)
X1 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
T_END = 1e-3


@pytest.fixture(scope="module")
def reference():
    return sampling.sample_ode(DEN, X1, [1.0, T_END], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("order", [2, 3])
@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_nfe_and_accepted_grid(order, prediction):
    DEN.nfe = 0
    x, info = solvers.sample_dpm_solver_adaptive(
        DEN, X1, 1.0, T_END, order=order, prediction=prediction, return_info=True
    )
    assert DEN.nfe == info["nfe"] == order * (info["accepted"] + info["rejected"])
    ts = info["ts"]
    assert ts[0] == 1.0 and ts[-1] == T_END and len(ts) == info["accepted"] + 1
    assert all(b < a for a, b in zip(ts, ts[1:]))
    # the accepted steps are singlestep DPM-Solver-k steps on that grid
    data = prediction == "x0"
    fixed = solvers.sample_dpm_solver_pp if data else solvers.sample_dpm_solver
    y = fixed(DEN, X1, torch.tensor(ts, dtype=F64), order=order, method="singlestep",
              lower_order_final=False)
    assert float((x - y).abs().max()) < 1e-10
    # the final jump costs one NFE and returns x0_hat
    DEN.nfe = 0
    x0, info0 = solvers.sample_dpm_solver_adaptive(
        DEN, X1, 1.0, T_END, order=order, prediction=prediction, final_zero=True,
        return_info=True,
    )
    assert info0["ts"][-1] == 0.0 and DEN.nfe == info0["nfe"] == info["nfe"] + 1
    assert float((x0 - DEN.x0_eps(x, T_END)[0]).abs().max()) < 1e-12


@pytest.mark.parametrize("order", [2, 3])
def test_error_shrinks_with_the_tolerance(order, reference):
    errs, nfes = [], []
    for rtol in (1e-2, 1e-3, 1e-4):
        x, info = solvers.sample_dpm_solver_adaptive(
            DEN, X1, 1.0, T_END, order=order, rtol=rtol, atol=rtol / 6.4,
            return_info=True,
        )
        errs.append(metrics.rms_error(x, reference)[0])
        nfes.append(info["nfe"])
    # the local error per step is held below the tolerance, so the global error
    # follows it: each 10x tighter tolerance at least halves the error (it is ~10x in
    # theory), and costs more NFE
    assert errs[1] < errs[0] / 2 and errs[2] < errs[1] / 2, errs
    assert nfes[0] < nfes[1] < nfes[2], nfes


def test_exact_on_gaussian_data():
    """Gaussian data: the PF-ODE flow is known in closed form (GaussianPCA.flow)."""
    var = torch.tensor([0.04, 0.3, 0.01], dtype=F64)
    mean = torch.tensor([0.3, -0.5, 0.1], dtype=F64)
    den = analytic.Gaussian(mean, var).denoiser(SCH)
    exact = analytic.GaussianPCA(mean, var)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    want = exact.flow(x, 1.0, T_END, SCH)
    for order in (2, 3):
        for prediction in ("eps", "x0"):
            errs, tight = [], 1e-5 if order == 3 else 1e-4  # order 2: 3x the NFE
            for rtol in (1e-3, tight):
                out = solvers.sample_dpm_solver_adaptive(
                    den, x, 1.0, T_END, order=order, rtol=rtol, atol=rtol / 100,
                    prediction=prediction,
                )
                errs.append(float((out - want).abs().max()))
            # every accepted step's local error is below ~rtol |x|; over the O(100)
            # steps the global error stays within 10 rtol (|x| < 1 here)
            assert errs[1] < 10 * tight and errs[1] < errs[0], errs


def test_callback_sees_every_accepted_step():
    seen = []
    _, info = solvers.sample_dpm_solver_adaptive(
        DEN, X1, 1.0, T_END, order=3, return_info=True, callback=seen.append
    )
    assert [d["t"] for d in seen] == info["ts"][:-1]
    assert [d["t_next"] for d in seen] == info["ts"][1:]


def test_exact_model_makes_one_step():
    # a model whose prediction is constant along the flow (one data point) is solved
    # exactly by DDIM: E = 0, so the second trial jumps to the end
    den = analytic.Gaussian(torch.tensor([0.5, -0.2], dtype=F64), 1e-30).denoiser(SCH)
    _, info = solvers.sample_dpm_solver_adaptive(den, X1, 1.0, T_END, return_info=True)
    assert info["accepted"] <= 2 and info["rejected"] == 0


def test_a_step_size_that_collapses_raises():
    # the cosine schedule's alpha_1 ~ 1e-16: the noise form's first step from t = 1
    # cancels catastrophically and no step size meets the tolerance; the data form
    # is well conditioned there
    den = analytic.Gaussian(torch.zeros(2, dtype=F64), 0.1).denoiser(S.VPCosine())
    with pytest.raises(RuntimeError, match="step size fell"):
        solvers.sample_dpm_solver_adaptive(den, X1, 1.0, T_END)
    out = solvers.sample_dpm_solver_adaptive(den, X1, 1.0, T_END, prediction="x0")
    assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"order": 1}, "order"),
        ({"order": 4}, "order"),
        ({"rtol": 0.0}, "rtol"),
        ({"atol": -1.0}, "atol"),
        ({"h_init": 0.0}, "h_init"),
        ({"theta": 1.5}, "theta"),
        ({"theta": 0.0}, "theta"),
        ({"prediction": "v"}, "prediction"),
        ({"final_zero": 1}, "final_zero"),
        ({"return_info": "yes"}, "return_info"),
        ({"callback": 3}, "callback"),
        ({"t_end": 0.0}, "log-SNR"),
        ({"t_end": 1.0}, "t_end"),
        ({"t_start": 2.0}, "t_start"),
        ({"t_end": math.nan}, "t_end"),
    ],
)
def test_bad_input(kw, name):
    args = {"t_start": 1.0, "t_end": T_END}
    args.update(kw)
    with pytest.raises(ValueError, match=name):
        solvers.sample_dpm_solver_adaptive(DEN, X1, **args)


def test_bad_x_and_denoiser():
    with pytest.raises(ValueError, match="x"):
        solvers.sample_dpm_solver_adaptive(DEN, X1[:, :1], 1.0, T_END)
    with pytest.raises(ValueError, match="denoiser"):
        solvers.sample_dpm_solver_adaptive(lambda x, t: x, X1, 1.0, T_END)
