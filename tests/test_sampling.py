import pytest
import torch

from dlib import analytic, sampling, schedules as S

F64 = torch.float64
MU, VAR = torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([0.5, 2.0], dtype=F64)


def gaussian_flow(x, t, s, sch):
    """Exact PF-ODE map of N(MU, diag VAR) data from time t to time s (linear for
    Gaussians)."""
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
    assert (
        ts.shape == (11,)
        and ts[0] == 1.0
        and ts[-1] == 1e-3
        and (ts[1:] < ts[:-1]).all()
    )
    q = sampling.time_grid(10, spacing="quadratic")
    assert q[-2] - q[-1] < ts[-2] - ts[-1]
    lam_ts = sampling.time_grid(8, spacing="log_snr", schedule=S.VPLinear())
    lam = S.VPLinear().log_snr(lam_ts)
    torch.testing.assert_close(
        lam.diff(), lam.diff()[0].expand(8), rtol=1e-8, atol=1e-8
    )
    z = sampling.time_grid(5, final_zero=True)
    assert z.shape == (7,) and z[-1] == 0


def test_reference_ode_matches_closed_form(setup):
    sch, g, x1 = setup
    ts = torch.tensor([1.0, 0.5, 1e-3], dtype=F64)
    traj = []
    out = sampling.sample_ode(
        g.denoiser(sch), x1[:200], ts, callback=lambda d: traj.append(d["x"])
    )
    torch.testing.assert_close(
        out, gaussian_flow(x1[:200], 1.0, 1e-3, sch), rtol=1e-6, atol=1e-6
    )
    torch.testing.assert_close(
        traj[0], gaussian_flow(x1[:200], 1.0, 0.5, sch), rtol=1e-6, atol=1e-6
    )


def test_euler_and_heun_converge_with_their_orders(setup):
    sch, g, x1 = setup
    oracle = g.denoiser(sch)
    exact = gaussian_flow(x1[:200], 1.0, 0.05, sch)
    errs = {}
    for name, fn in [("euler", sampling.sample_euler), ("heun", sampling.sample_heun)]:
        errs[name] = [
            (fn(oracle, x1[:200], sampling.time_grid(n, 1.0, 0.05)) - exact)
            .abs()
            .max()
            .item()
            for n in (20, 40, 80)
        ]
    r_euler = errs["euler"][1] / errs["euler"][2]
    r_heun = errs["heun"][1] / errs["heun"][2]
    assert 1.7 < r_euler < 2.3, errs
    assert 3.4 < r_heun < 4.6, errs
    assert errs["heun"][2] < errs["euler"][2] / 10


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ancestral_family_gives_the_data_law(setup, eta):
    sch, g, x1 = setup
    x = torch.randn(20000, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    # (with few steps, eta=1 loses a little variance: each step uses the mean x0_hat,
    # not a sample)
    out = sampling.sample_ancestral(
        g.denoiser(sch),
        x,
        sampling.time_grid(1000, final_zero=True),
        eta=eta,
        generator=torch.Generator().manual_seed(2),
    )
    torch.testing.assert_close(out.mean(0), MU, atol=0.05, rtol=0)
    torch.testing.assert_close(out.var(0), VAR, atol=0, rtol=0.05)


def test_ddim_is_first_order_exponential_integrator(setup):
    # DDIM (eta=0) converges to the exact PF-ODE solution as the grid is refined
    sch, g, x1 = setup
    exact = gaussian_flow(x1[:100], 1.0, 0.05, sch)
    e = [
        (
            sampling.sample_ancestral(
                g.denoiser(sch), x1[:100], sampling.time_grid(n, 1.0, 0.05), eta=0.0
            )
            - exact
        )
        .abs()
        .max()
        .item()
        for n in (10, 20, 40)
    ]
    assert e[0] > e[1] > e[2] and e[1] / e[2] > 1.6


def test_euler_maruyama_family(setup):
    sch, g, _ = setup
    x = torch.randn(20000, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    ts = sampling.time_grid(500, final_zero=True)
    for zeta in (1.0, 0.5):
        out = sampling.sample_euler_maruyama(
            g.denoiser(sch),
            x,
            ts,
            zeta=zeta,
            generator=torch.Generator().manual_seed(3),
        )
        torch.testing.assert_close(out.mean(0), MU, atol=0.05, rtol=0)
        torch.testing.assert_close(out.var(0), VAR, atol=0, rtol=0.06)
    # eta = 0 is Euler on the PF-ODE
    ts = sampling.time_grid(30, 1.0, 0.05)
    torch.testing.assert_close(
        sampling.sample_euler_maruyama(g.denoiser(sch), x[:50], ts, zeta=0.0),
        sampling.sample_euler(g.denoiser(sch), x[:50], ts),
    )


def test_langevin_samplers(setup):
    _, g, _ = setup
    x = torch.zeros(5000, 2, dtype=F64)
    out = sampling.sample_langevin(
        lambda y: g.score(y), x, 0.01, 1500, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(out.mean(0), MU, atol=0.08, rtol=0)
    torch.testing.assert_close(out.var(0), VAR, atol=0, rtol=0.1)
    ve = S.VE(0.01, 10.0)
    ts = torch.linspace(0.9, 1 / 3, 8, dtype=F64)  # sigma from 5 down to 0.1
    levels = []
    out = sampling.sample_annealed_langevin(
        g.denoiser(ve),
        torch.randn(5000, 2, dtype=F64) * 10,
        ts,
        n_steps_each=200,
        step_scale=0.005,
        generator=torch.Generator().manual_seed(0),
        callback=lambda d: levels.append(d["t"]),
    )
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
    out = sampling.sample_heun(
        oracle, x1[:10], ts, callback=lambda d: seen.append((d["i"], d["t_next"]))
    )
    assert [s[1] for s in seen][-1] == 0.0 and len(seen) == 5
    assert oracle.nfe == 4 * 2 + 1
    # last step returns the denoised estimate: for a Gaussian x0_hat is affine in x
    assert torch.isfinite(out).all()
    out_ode = sampling.sample_ode(oracle, x1[:10], ts)
    assert out_ode.shape == (10, 2)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda d, x: sampling.sample_euler(d, x, torch.tensor([0.1, 0.5])),
            "strictly decreasing",
        ),
        (
            lambda d, x: sampling.sample_euler(d, x, torch.tensor([1.5, 0.5])),
            "must lie in",
        ),
        (
            lambda d, x: sampling.sample_euler(
                lambda y, t: y, x, torch.tensor([1.0, 0.5])
            ),
            "must be a dlib.param.Denoiser",
        ),
        (
            lambda d, x: sampling.sample_euler(d, x[0], torch.tensor([1.0, 0.5])),
            r"x must be a tensor of shape \(B, 2\)",
        ),
        (
            lambda d, x: sampling.sample_ancestral(
                d, x, torch.tensor([1.0, 0.5]), eta=2.0
            ),
            r"eta must be a number in \[0.0, 1.0\]",
        ),
        (
            lambda d, x: sampling.sample_euler_maruyama(
                d, x, torch.tensor([1.0, 0.5]), zeta=-1.0
            ),
            "zeta must be a number in",
        ),
        (
            lambda d, x: sampling.sample_ode(
                d, x, torch.tensor([1.0, 0.5]), method="euler"
            ),
            "unknown method",
        ),
        (
            lambda d, x: sampling.sample_langevin(lambda y: y, x, -0.1, 10),
            "step_size must be a positive",
        ),
        (
            lambda d, x: sampling.sample_langevin(lambda y: y, x, 0.1, 0),
            "n_steps must be an integer >= 1",
        ),
        (
            lambda d, x: sampling.sample_annealed_langevin(
                d, x, torch.tensor([0.5, 0.0])
            ),
            "positive times",
        ),
        (lambda d, x: sampling.time_grid(0), "n_steps must be an integer >= 1"),
        (lambda d, x: sampling.time_grid(5, 0.1, 0.5), "t_min < t_max"),
        (lambda d, x: sampling.time_grid(5, spacing="log_snr"), "needs a schedule"),
        (lambda d, x: sampling.time_grid(5, spacing="cubic"), "unknown spacing"),
    ],
)
def test_bad_inputs(setup, call, match):
    sch, g, x1 = setup
    with pytest.raises(ValueError, match=match):
        call(g.denoiser(sch), x1[:4])


# --- time grids: every spacing, every schedule ----------------------------------------
GRID_SCHEDULES = [
    S.VPLinear(),
    S.VPCosine(),
    S.VE(),
    S.LinearInterpolant(),
    S.get_schedule("ddpm_linear"),
    S.get_schedule("ddpm_cosine", T=100),
]


@pytest.mark.parametrize("sch", GRID_SCHEDULES, ids=lambda s: repr(s))
@pytest.mark.parametrize("spacing", sampling.SPACINGS)
def test_every_spacing_gives_a_strictly_decreasing_grid_without_near_duplicates(
    sch, spacing
):
    for t_max, t_min in [(1.0, 1e-3), (0.8, 0.05)]:
        for n in (1, 2, 3, 10, 50, 200):
            ts = sampling.time_grid(n, t_max, t_min, spacing=spacing, schedule=sch)
            assert ts.shape == (n + 1,) and ts[0] == t_max and ts[-1] == t_min
            steps = ts[:-1] - ts[1:]
            assert torch.isfinite(ts).all() and (steps > 0).all()
            # no wasted steps: none shorter than 1/1000 of the mean step (the cosine
            # schedule's log-SNR grid had six steps of length 0 before lambda was
            # clipped)
            assert steps.min() > 1e-3 * (t_max - t_min) / n, (n, ts)


def test_log_snr_grid_of_the_cosine_schedule_is_clipped_and_uniform_in_lambda():
    sch = S.VPCosine()
    ts = sampling.time_grid(10, 1.0, 1e-3, spacing="log_snr", schedule=sch)
    lam = sch.log_snr(ts)
    assert lam[1] > -5.1  # the first interior time is inside the clipped range
    d = lam[1:].diff()  # uniform in lambda after the first (clipped) step
    torch.testing.assert_close(d, d[0].expand_as(d), rtol=1e-9, atol=1e-9)
    assert len(set(ts.tolist())) == 11


def test_karras_grid_is_uniform_in_sigma_to_the_one_over_rho():
    sch = S.VE(0.01, 50.0)  # alpha = 1, so sigma/alpha = sigma
    ts = sampling.time_grid(12, spacing="karras", schedule=sch, rho=7.0)
    r = sch.sigma(ts) ** (1 / 7)
    torch.testing.assert_close(r.diff(), r.diff()[0].expand(12), rtol=1e-9, atol=1e-12)
    # rho = 1 is uniform in sigma; larger rho puts more steps at small noise
    lin = sampling.time_grid(12, spacing="karras", schedule=sch, rho=1.0)
    s1 = sch.sigma(lin)
    torch.testing.assert_close(s1.diff(), s1.diff()[0].expand(12), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: sampling.time_grid(
                5, 1.0, 0.0, spacing="log_snr", schedule=S.VPLinear()
            ),
            "finite log-SNR at t_min",
        ),
        (
            lambda: sampling.time_grid(
                5, spacing="karras", schedule=S.VPLinear(), rho=0
            ),
            "rho must be",
        ),
        (
            lambda: sampling.time_grid(
                5, spacing="log_snr", schedule=S.VPLinear(), lambda_min=9.0
            ),
            "lambda_min",
        ),
        (lambda: sampling.time_grid(5, spacing="log_snr", schedule="vp"), "Schedule"),
        (lambda: sampling.time_grid(5, float("nan")), "t_max"),
        (lambda: sampling.time_grid(True), "n_steps"),
    ],
)
def test_time_grid_bad_inputs(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- callbacks, progress bars, the hot path -------------------------------------------
ALL_GRID_SAMPLERS = {
    "ancestral": lambda d, x, ts, **k: sampling.sample_ancestral(d, x, ts, **k),
    "ddim": lambda d, x, ts, **k: sampling.sample_ancestral(d, x, ts, eta=0.0, **k),
    "euler_maruyama": lambda d, x, ts, **k: sampling.sample_euler_maruyama(
        d, x, ts, **k
    ),
    "euler": lambda d, x, ts, **k: sampling.sample_euler(d, x, ts, **k),
    "heun": lambda d, x, ts, **k: sampling.sample_heun(d, x, ts, **k),
    "predictor_corrector": lambda d, x, ts, **k: sampling.sample_predictor_corrector(
        d, x, ts, **k
    ),
    "ode": lambda d, x, ts, **k: sampling.sample_ode(d, x, ts, **k),
}


@pytest.mark.parametrize("name", ALL_GRID_SAMPLERS)
def test_callback_always_receives_x0_at_the_start_of_the_step(setup, name):
    sch, g, x1 = setup
    oracle = g.denoiser(sch)
    x = x1[:16]
    ts = sampling.time_grid(4, final_zero=True)
    seen = []
    gen = torch.Generator().manual_seed(0)
    out = ALL_GRID_SAMPLERS[name](oracle, x, ts, callback=seen.append, generator=gen)
    assert [d["i"] for d in seen] == list(range(5))
    prev = x
    for d in seen:
        assert set(d) == {"i", "t", "t_next", "x", "x0"}
        torch.testing.assert_close(d["x0"], oracle.x0(prev, d["t"]))
        prev = d["x"]
    torch.testing.assert_close(seen[-1]["x"], out)


def test_progress_bar_on_long_runs_only(setup, capsys):
    sch, g, x1 = setup
    oracle = g.denoiser(sch)
    short, long = (
        sampling.time_grid(10),
        sampling.time_grid(sampling.PROGRESS_MIN_STEPS),
    )
    sampling.sample_euler(oracle, x1[:4], short)
    assert "Euler" not in capsys.readouterr().err
    sampling.sample_euler(oracle, x1[:4], long)
    assert "Euler" in capsys.readouterr().err
    sampling.sample_euler(oracle, x1[:4], long, progress=False)
    assert "Euler" not in capsys.readouterr().err
    sampling.sample_euler(oracle, x1[:4], short, progress=True)
    assert "Euler" in capsys.readouterr().err
    with pytest.raises(ValueError, match="progress"):
        sampling.sample_euler(oracle, x1[:4], short, progress="yes")


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x, t):
        return self.lin(torch.cat([x, t[:, None]], 1))


@pytest.mark.parametrize("name", [n for n in ALL_GRID_SAMPLERS if n != "ode"])
def test_sampler_steps_never_read_a_tensor_back_to_the_host(name, monkeypatch):
    """The work per step is tensor arithmetic only: validation happens once, on entry.
    On a GPU a read-back of a value computed from the data (item, bool, float, tolist)
    makes the host wait for the device, so count them: the number must not grow with the
    number of steps. The data are float32 here; the schedule's own float64 scalars
    (computed on the CPU from the time grid, never from the data) are not counted."""
    from dlib import param

    den = param.Denoiser(_Net(), S.VPLinear(), "eps")
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    counts = []
    for n in (5, 20):
        ts = sampling.time_grid(n)
        calls = {"n": 0}
        real = {
            k: getattr(torch.Tensor, k)
            for k in ("item", "__bool__", "__float__", "tolist")
        }

        def counting(k):
            def f(self, *a, **kw):
                calls["n"] += self.dtype != torch.float64
                return real[k](self, *a, **kw)

            return f

        for k in real:
            monkeypatch.setattr(torch.Tensor, k, counting(k))
        ALL_GRID_SAMPLERS[name](den, x, ts, generator=torch.Generator().manual_seed(1))
        monkeypatch.undo()
        counts.append(calls["n"])
    assert counts[0] == counts[1], counts


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", [n for n in ALL_GRID_SAMPLERS if n != "ode"])
def test_no_cuda_synchronisation_inside_a_step(name):  # pragma: no cover - GPU only
    """torch's sync debug mode raises on any host-device synchronisation. Validation on
    entry may synchronise, so the mode is switched on by the callback after the first
    step: every later step then runs under it."""
    from dlib import param

    den = param.Denoiser(_Net().cuda(), S.VPLinear(), "eps")
    x = torch.randn(8, 2, device="cuda")

    def arm(info):
        if info["i"] == 0:
            torch.cuda.set_sync_debug_mode("error")

    try:
        # noise drawn on the device (a CPU generator would add a host-to-device copy)
        ALL_GRID_SAMPLERS[name](den, x, sampling.time_grid(6), callback=arm)
    finally:
        torch.cuda.set_sync_debug_mode("default")


# --- the reference solver -------------------------------------------------------------
def test_reference_ode_converges_with_rtol_on_a_discrete_schedule():
    """DiscreteVP's d alpha/dt jumps at every grid point; in lambda the exact flow is
    smooth, so the adaptive solver's error must shrink with its tolerance (the
    closed-form flow of Gaussian data is the reference). In t it stalls near first
    order."""
    sch = S.get_schedule("ddpm_linear")
    oracle = analytic.Gaussian(MU, VAR).denoiser(sch)
    x = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    ts = torch.tensor([1.0, 0.5, 0.05], dtype=F64)
    exact = gaussian_flow(x, 1.0, 0.05, sch)
    errs = []
    for rtol in (1e-5, 1e-7, 1e-9):
        out = sampling.sample_ode(oracle, x, ts, rtol=rtol, atol=rtol)
        errs.append((out - exact).abs().max().item())
        assert errs[-1] < 50 * rtol, (rtol, errs)
    assert errs[0] > errs[1] > errs[2]
    linear = analytic.Gaussian(MU, VAR).denoiser(S.LinearInterpolant())
    with pytest.raises(ValueError, match="finite log-SNR"):  # lambda(1) = -inf there
        sampling.sample_ode(linear, x, ts, variable="log_snr")


def test_reference_ode_in_t_and_in_lambda_agree_on_a_smooth_schedule(setup):
    sch, g, x1 = setup
    ts = torch.tensor([1.0, 0.3, 1e-3], dtype=F64)
    a = sampling.sample_ode(
        g.denoiser(sch), x1[:50], ts, variable="t", rtol=1e-10, atol=1e-10
    )
    b = sampling.sample_ode(
        g.denoiser(sch), x1[:50], ts, variable="log_snr", rtol=1e-10, atol=1e-10
    )
    torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(
        b, gaussian_flow(x1[:50], 1.0, 1e-3, sch), rtol=1e-7, atol=1e-7
    )


# --- diffusers' discrete timestep spacings ------------------------------------------
def _numpy_timesteps(n, T, spacing, offset=0):
    """diffusers' formulas (DDIMScheduler.set_timesteps), written out with numpy."""
    import numpy as np

    if spacing == "linspace":
        return np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    if spacing == "leading":
        return (np.arange(0, n) * (T // n)).round()[::-1].astype(np.int64) + offset
    return np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1


@pytest.mark.parametrize("spacing", sampling.TIMESTEP_SPACINGS)
@pytest.mark.parametrize("n", [1, 3, 7, 10, 20, 50, 333, 1000])
def test_discrete_time_grid_is_diffusers_timesteps_at_t_k_plus_1_over_T(spacing, n):
    T = 1000
    ts = sampling.discrete_time_grid(n, T, spacing=spacing, final_zero=False)
    k = (ts * T - 1).round().long().numpy()
    assert (k == _numpy_timesteps(n, T, spacing)).all()
    assert torch.allclose(ts, (torch.as_tensor(k, dtype=torch.float64) + 1) / T,
                          rtol=0, atol=1e-15)


def test_discrete_time_grid_known_values():
    ten = lambda sp: (  # noqa: E731
        sampling.discrete_time_grid(10, spacing=sp, final_zero=False) * 1000 - 1
    ).round().long().tolist()
    assert ten("leading") == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    assert ten("trailing") == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert ten("linspace") == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    lead = sampling.discrete_time_grid(10, spacing="leading", steps_offset=1)
    assert lead[0] == 0.902 and lead[-2] == 0.002 and lead[-1] == 0.0


def test_discrete_time_grid_bad_input():
    with pytest.raises(ValueError, match="n_train"):
        sampling.discrete_time_grid(20, 10)
    with pytest.raises(ValueError, match="spacing"):
        sampling.discrete_time_grid(10, spacing="karras")
    with pytest.raises(ValueError, match="steps_offset"):
        sampling.discrete_time_grid(10, 1000, spacing="leading", steps_offset=200)
    with pytest.raises(ValueError, match="steps_offset"):
        sampling.discrete_time_grid(10, steps_offset=-1)
