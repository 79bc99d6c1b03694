"""dlib's DDIM and DPM-Solver++(2M) against diffusers' DDIMScheduler and
DPMSolverMultistepScheduler, configured identically (issue 7, section 3): same discrete
DDPM schedule, same timesteps (diffusers' timestep k is the book's t = (k+1)/T), same
analytic model, same starting noise. They agree to ~1e-6; the rest is diffusers'
float32 arithmetic, quantified here by rerunning diffusers with float64 schedule
tables. diffusers is a test dependency only: without it these tests skip."""

from __future__ import annotations

import pytest
import torch

from dlib import analytic, sampling, schedules, solvers

diffusers = pytest.importorskip("diffusers", reason="diffusers is not installed "
                                "(a test and benchmark dependency only)")

T = 1000
F32_EPS = 2.0**-24  # unit round-off of float32


@pytest.fixture(scope="module")
def setup():
    sch = schedules.DiscreteVP(schedules.ddpm_betas())
    g = torch.Generator().manual_seed(0)
    out = {}
    for dim in (2, 64):
        den = analytic.thin_mixture(dim).denoiser(sch)
        x = torch.randn(64, dim, dtype=torch.float64, generator=g)
        out[dim] = (den, x)
    return sch, out


def _eps_model(den):
    """The analytic model as diffusers calls it: (sample, timestep k) -> eps_hat at
    the book's time t = (k+1)/T (float64)."""
    return lambda x, k: den._x0_eps(x, (float(k) + 1) / T)[1]


def _run(sched, model, x):
    y = x.clone()
    for k in sched.timesteps:
        y = sched.step(model(y, k), k, y).prev_sample
    return y


def _ddim(float64_schedule, sch):
    s = diffusers.DDIMScheduler(num_train_timesteps=T, clip_sample=False,
                                set_alpha_to_one=True, timestep_spacing="leading")
    if float64_schedule:
        s.alphas_cumprod = sch.alphas_cumprod.clone()
    return s


def _dpm_grid(n):
    """diffusers DPMSolverMultistep's "linspace" timesteps: n + 1 points from T - 1 to
    0, rounded, the last (k = 0) dropped; the last step goes to sigma = 0 (t = 0)."""
    ts = sampling.discrete_time_grid(n + 1, spacing="linspace", final_zero=False)
    return torch.cat([ts[:-1], ts.new_zeros(1)])


def _dpm(float64_schedule, sch, n):
    s = diffusers.DPMSolverMultistepScheduler(
        num_train_timesteps=T, solver_order=2, algorithm_type="dpmsolver++",
        solver_type="midpoint", lower_order_final=True, final_sigmas_type="zero")
    if float64_schedule:
        ac = sch.alphas_cumprod.clone()
        s.alphas_cumprod, s.alpha_t, s.sigma_t = ac, ac.sqrt(), (1 - ac).sqrt()
        s.lambda_t = s.alpha_t.log() - s.sigma_t.log()
    s.set_timesteps(n)
    if float64_schedule:  # set_timesteps stores its sigma table in float32
        a = ac[s.timesteps]
        s.sigmas = torch.cat([((1 - a) / a).sqrt(), a.new_zeros(1)])
    return s


def test_float32_schedule_differences_are_what_the_issue_measured(setup):
    """diffusers' alpha_bar (float32) vs the float64 chain: up to ~4e-7 relative;
    sigma/alpha at k = 0 by ~8e-5 relative (1 - alpha_bar there is 1e-4, so the
    float32 rounding of alpha_bar ~ 6e-8 becomes ~6e-4 relative in 1 - alpha_bar)."""
    sch, _ = setup
    a32 = diffusers.DDIMScheduler(num_train_timesteps=T).alphas_cumprod.double()
    a64 = sch.alphas_cumprod
    rel = ((a32 - a64) / a64).abs()
    assert rel.max() < 1e-6  # a few float32 round-offs per factor, accumulated
    assert rel.max() > F32_EPS  # it is float32, not float64
    s32, s64 = ((1 - a32) / a32).sqrt(), ((1 - a64) / a64).sqrt()
    rel_s = ((s32 - s64) / s64).abs()
    assert 1e-5 < rel_s[0] < 1e-3
    # the book's t = (k+1)/T is diffusers' index k: alpha_bar agrees to float32 there
    t = (torch.arange(T, dtype=torch.float64) + 1) / T
    assert torch.allclose(sch.alpha(t) ** 2, a32, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dim", [2, 64])
@pytest.mark.parametrize("n", [5, 10, 20])
def test_ddim_agrees_with_diffusers(setup, dim, n):
    sch, probs = setup
    den, x = probs[dim]
    ts = sampling.discrete_time_grid(n, spacing="leading", final_zero=True)
    ref = sampling.sample_ancestral(den, x, ts, eta=0.0)
    for f64, tol in ((False, 1e-5), (True, 1e-12)):
        s = _ddim(f64, sch)
        s.set_timesteps(n)
        assert torch.allclose(ts[:-1], (s.timesteps.double() + 1) / T)
        out = _run(s, _eps_model(den), x)
        err = float((out - ref).abs().max())
        # diffusers keeps a float64 sample in float64 here: with float64 tables the
        # two are the same arithmetic up to float64 round-off; with its float32 table
        # (relative error <= 4e-7 in alpha_bar) the outputs move by ~1e-6
        assert err < tol, (f64, err)
    # and the same loop through the shared step directly
    x1 = x.clone()
    for t, s in zip(ts[:-2].tolist(), ts[1:-1].tolist()):
        x0, eps = den.x0_eps(x1, t)
        x1 = solvers.first_order_step(x1, x0, eps, t, s, sch)
    x1 = den.x0(x1, float(ts[-2]))
    assert torch.allclose(x1, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dim", [2, 64])
@pytest.mark.parametrize("n", [5, 10, 14, 15, 20])
def test_dpm_solver_pp_2m_agrees_with_diffusers(setup, dim, n):
    """lower_order_below=15 is diffusers' rule (n = 14 lowers the last steps, 15 does
    not); the last step to sigma = 0 is first order in both."""
    sch, probs = setup
    den, x = probs[dim]
    ts = _dpm_grid(n)
    ref = solvers.sample_dpm_solver_pp(den, x, ts, order=2, method="multistep",
                                       lower_order_final=True, lower_order_below=15)
    scale = float(x.abs().max())
    errs = {}
    for f64 in (False, True):
        s = _dpm(f64, sch, n)
        assert torch.allclose(ts[:-1], (s.timesteps.double() + 1) / T)
        errs[f64] = float((_run(s, _eps_model(den), x) - ref).abs().max())
    assert errs[False] < 1e-5, errs  # the issue's "~1e-6"
    # with float64 tables what is left is diffusers' cast of the sample to float32 at
    # every step: at most ~ a few float32 round-offs of |x| per step
    assert errs[True] < 4 * n * F32_EPS * scale, errs
    # and the sigma table in float32 is most of the native difference
    assert errs[True] < errs[False] or errs[False] < 4 * n * F32_EPS * scale


def test_agreement_fails_with_the_off_by_one_time(setup):
    """The comparison can fail: reading diffusers' timestep k as t = k/T (instead of
    (k+1)/T) moves DDIM's output far above the float32 level."""
    sch, probs = setup
    den, x = probs[2]
    s = _ddim(True, sch)
    s.set_timesteps(10)
    out = _run(s, lambda y, k: den._x0_eps(y, max(float(k), 0.5) / T)[1], x)
    ts = sampling.discrete_time_grid(10, spacing="leading", final_zero=True)
    ref = sampling.sample_ancestral(den, x, ts, eta=0.0)
    assert float((out - ref).abs().max()) > 1e-3


@pytest.mark.parametrize("n", [5, 10])
def test_diffusers_euler_is_ddim(setup, n):
    """diffusers' EulerDiscreteScheduler steps in x/alpha against sigma/alpha, where
    Euler's step with the noise prediction frozen is exactly DDIM's: on the same
    (trailing) timesteps it agrees with dlib's DDIM to float32 precision (it computes
    in float32), while dlib's sample_euler, Euler in t along the velocity, is a
    different method that differs by far more (the benchmark's namesake caveat)."""
    sch, probs = setup
    den, x = probs[2]
    s = diffusers.EulerDiscreteScheduler(num_train_timesteps=T,
                                         timestep_spacing="trailing")
    s.set_timesteps(n)
    ts = sampling.discrete_time_grid(n, spacing="trailing", final_zero=True)
    assert torch.allclose(ts[:-1], (s.timesteps.double() + 1) / T)
    y = x * float(s.init_noise_sigma)
    for k in s.timesteps:
        inp = s.scale_model_input(y, k)
        y = s.step(den._x0_eps(inp, (float(k) + 1) / T)[1], k, y).prev_sample
    ddim = sampling.sample_ancestral(den, x, ts, eta=0.0)
    scale = float(x.abs().max()) / float(sch.alpha(torch.tensor(1.0)))
    assert float((y.double() - ddim).abs().max()) < 10 * n * F32_EPS * scale
    euler_t = sampling.sample_euler(den, x, ts)
    assert float((euler_t - ddim).abs().max()) > 1e-2
