import pytest
import torch

from dlib import analytic, sampling, schedules as S

F64 = torch.float64
MU, VAR = torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([0.5, 2.0], dtype=F64)


def gaussian_flow(x, t, s, sch):
    """Exact PF-ODE map of N(MU, diag VAR) data from time t to time s (linear for Gaussians)."""
    t, s = torch.tensor(t, dtype=F64), torch.tensor(s, dtype=F64)
    vt = sch.alpha(t) ** 2 * VAR + sch.sigma(t) ** 2
    vs = sch.alpha(s) ** 2 * VAR + sch.sigma(s) ** 2
    return sch.alpha(s) * MU + (vs / vt).sqrt() * (x - sch.alpha(t) * MU)


@pytest.fixture
def setup():
    sch = S.VPLinear()
    g = analytic.Gaussian(MU, VAR)
    x1 = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    return sch, g, x1


def test_time_grid():
    ts = sampling.time_grid(10)
    assert ts.shape == (11,) and ts[0] == 1.0 and ts[-1] == 1e-3 and (ts[1:] < ts[:-1]).all()
    q = sampling.time_grid(10, spacing="quadratic")
    assert q[-2] - q[-1] < ts[-2] - ts[-1]
    lam_ts = sampling.time_grid(8, spacing="log_snr", schedule=S.VPLinear())
    lam = S.VPLinear().log_snr(lam_ts)
    torch.testing.assert_close(lam.diff(), lam.diff()[0].expand(8), rtol=1e-8, atol=1e-8)
    z = sampling.time_grid(5, final_zero=True)
    assert z.shape == (7,) and z[-1] == 0


def test_reference_ode_matches_closed_form(setup):
    sch, g, x1 = setup
    ts = torch.tensor([1.0, 0.5, 1e-3], dtype=F64)
    traj = []
    out = sampling.sample_ode(g.denoiser(sch), x1[:200], ts, callback=lambda d: traj.append(d["x"]))
    torch.testing.assert_close(out, gaussian_flow(x1[:200], 1.0, 1e-3, sch), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(traj[0], gaussian_flow(x1[:200], 1.0, 0.5, sch), rtol=1e-6, atol=1e-6)


def test_euler_and_heun_converge_with_their_orders(setup):
    sch, g, x1 = setup
    oracle = g.denoiser(sch)
    exact = gaussian_flow(x1[:200], 1.0, 0.05, sch)
    errs = {}
    for name, fn in [("euler", sampling.sample_euler), ("heun", sampling.sample_heun)]:
        errs[name] = [(fn(oracle, x1[:200], sampling.time_grid(n, 1.0, 0.05)) - exact).abs().max().item() for n in (20, 40, 80)]
    r_euler = errs["euler"][1] / errs["euler"][2]
    r_heun = errs["heun"][1] / errs["heun"][2]
    assert 1.7 < r_euler < 2.3, errs
    assert 3.4 < r_heun < 4.6, errs
    assert errs["heun"][2] < errs["euler"][2] / 10


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ancestral_family_gives_the_data_law(setup, eta):
    sch, g, x1 = setup
    x = torch.randn(20000, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    # (with few steps, eta=1 loses a little variance: each step uses the mean x0_hat, not a sample)
    out = sampling.sample_ancestral(g.denoiser(sch), x, sampling.time_grid(1000, final_zero=True), eta=eta,
                                    generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out.mean(0), MU, atol=0.05, rtol=0)
    torch.testing.assert_close(out.var(0), VAR, atol=0, rtol=0.05)


def test_ddim_is_first_order_exponential_integrator(setup):
    # DDIM (eta=0) converges to the exact PF-ODE solution as the grid is refined
    sch, g, x1 = setup
    exact = gaussian_flow(x1[:100], 1.0, 0.05, sch)
    e = [(sampling.sample_ancestral(g.denoiser(sch), x1[:100], sampling.time_grid(n, 1.0, 0.05), eta=0.0) - exact).abs().max().item()
         for n in (10, 20, 40)]
    assert e[0] > e[1] > e[2] and e[1] / e[2] > 1.6


def test_euler_maruyama_family(setup):
    sch, g, _ = setup
    x = torch.randn(20000, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    ts = sampling.time_grid(500, final_zero=True)
    for eta in (1.0, 0.5):
        out = sampling.sample_euler_maruyama(g.denoiser(sch), x, ts, eta=eta, generator=torch.Generator().manual_seed(3))
        torch.testing.assert_close(out.mean(0), MU, atol=0.05, rtol=0)
        torch.testing.assert_close(out.var(0), VAR, atol=0, rtol=0.06)
    # eta = 0 is Euler on the PF-ODE
    ts = sampling.time_grid(30, 1.0, 0.05)
    torch.testing.assert_close(sampling.sample_euler_maruyama(g.denoiser(sch), x[:50], ts, eta=0.0),
                               sampling.sample_euler(g.denoiser(sch), x[:50], ts))


def test_langevin_samplers(setup):
    _, g, _ = setup
    x = torch.zeros(5000, 2, dtype=F64)
    out = sampling.sample_langevin(lambda y: g.score(y), x, 0.01, 1500, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.mean(0), MU, atol=0.08, rtol=0)
    torch.testing.assert_close(out.var(0), VAR, atol=0, rtol=0.1)
    ve = S.VE(0.01, 10.0)
    ts = torch.linspace(0.9, 1 / 3, 8, dtype=F64)  # sigma from 5 down to 0.1
    levels = []
    out = sampling.sample_annealed_langevin(g.denoiser(ve), torch.randn(5000, 2, dtype=F64) * 10, ts, n_steps_each=200,
                                            step_scale=0.005, generator=torch.Generator().manual_seed(0),
                                            callback=lambda d: levels.append(d["t"]))
    assert len(levels) == 8
    sig2 = ve.sigma(ts[-1]) ** 2
    torch.testing.assert_close(out.mean(0), MU, atol=0.1, rtol=0)
    torch.testing.assert_close(out.var(0), VAR + sig2, atol=0, rtol=0.1)


def test_callbacks_nfe_and_final_denoise(setup):
    sch, g, x1 = setup
    oracle = g.denoiser(sch)
    ts = sampling.time_grid(4, final_zero=True)
    seen = []
    oracle.nfe = 0
    out = sampling.sample_heun(oracle, x1[:10], ts, callback=lambda d: seen.append((d["i"], d["t_next"])))
    assert [s[1] for s in seen][-1] == 0.0 and len(seen) == 5
    assert oracle.nfe == 4 * 2 + 1
    # last step returns the denoised estimate: for a Gaussian x0_hat is affine in x
    assert torch.isfinite(out).all()
    out_ode = sampling.sample_ode(oracle, x1[:10], ts)
    assert out_ode.shape == (10, 2)


@pytest.mark.parametrize("call, match", [
    (lambda d, x: sampling.sample_euler(d, x, torch.tensor([0.1, 0.5])), "strictly decreasing"),
    (lambda d, x: sampling.sample_euler(d, x, torch.tensor([1.5, 0.5])), "must lie in"),
    (lambda d, x: sampling.sample_euler(lambda y, t: y, x, torch.tensor([1.0, 0.5])), "must be a dlib.param.Denoiser"),
    (lambda d, x: sampling.sample_euler(d, x[0], torch.tensor([1.0, 0.5])), r"shape \(B, ...\)"),
    (lambda d, x: sampling.sample_ancestral(d, x, torch.tensor([1.0, 0.5]), eta=2.0), r"eta must lie in \[0, 1\]"),
    (lambda d, x: sampling.sample_euler_maruyama(d, x, torch.tensor([1.0, 0.5]), eta=-1.0), "eta must be >= 0"),
    (lambda d, x: sampling.sample_ode(d, x, torch.tensor([1.0, 0.5]), method="euler"), "unknown method"),
    (lambda d, x: sampling.sample_langevin(lambda y: y, x, -0.1, 10), "step_size must be a positive"),
    (lambda d, x: sampling.sample_langevin(lambda y: y, x, 0.1, 0), "n_steps must be a positive integer"),
    (lambda d, x: sampling.sample_annealed_langevin(d, x, torch.tensor([0.5, 0.0])), "positive times"),
    (lambda d, x: sampling.time_grid(0), "n_steps must be a positive integer"),
    (lambda d, x: sampling.time_grid(5, 0.1, 0.5), "t_min < t_max"),
    (lambda d, x: sampling.time_grid(5, spacing="log_snr"), "needs a schedule"),
    (lambda d, x: sampling.time_grid(5, spacing="cubic"), "unknown spacing"),
])
def test_bad_inputs(setup, call, match):
    sch, g, x1 = setup
    with pytest.raises(ValueError, match=match):
        call(g.denoiser(sch), x1[:4])
