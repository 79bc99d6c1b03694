"""Property-based tests (hypothesis) over every public function and method of dlib.

Two properties, from issue 5 §8:

1. Valid inputs never give NaN. Hypothesis draws them, end points included: t = 0 and
   t = 1, every schedule, every prediction kind, float32 and float64. A value may be
   +-inf only where the mathematics says so (a schedule's own singular values, such as
   a VP ``d_sigma(0) = +inf``, and the ELBO weights built from them); a conversion that
   is singular at an end point must raise a ValueError saying so, never return NaN.
2. Bad input gives a ValueError whose message names the argument: for every class of
   bad input (wrong types, non-callables, NaN/inf numbers and data, times outside
   [0, 1], mismatched shapes, empty batches, zero/negative/bool counts, unknown
   options, values out of range), hypothesis draws the bad value.

``test_every_public_function_is_covered`` keeps the first list complete: it fails when
a public function or method has no property test here. The whole file runs in well
under a minute on two cores (few examples, derandomised so that CI is deterministic).
"""

from __future__ import annotations

import inspect
import math
import re
from functools import lru_cache

import matplotlib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlib import (
    analytic,
    consistency,
    data,
    discrete,
    fullscale,
    geometry,
    guidance,
    interpolants,
    lora,
    losses,
    mcmc,
    metrics,
    nets,
    operators,
    ot,
    param,
    plot,
    quant,
    runtime,
    sampling,
    solvers,
)
from dlib import schedules as S
from dlib import train

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

nan, inf = math.nan, math.inf
F32, F64 = torch.float32, torch.float64

SETTINGS = settings(
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
FEW = settings(SETTINGS, max_examples=8)

COVERED: set[str] = set()


def covers(*names):
    """Record which public names a test exercises with valid input."""
    COVERED.update(names)
    return lambda f: f


# --- strategies ---------------------------------------------------------------------
SCHEDULES = [
    S.VPLinear(),
    S.VPCosine(),
    S.VE(),
    S.LinearInterpolant(),
    S.DiscreteVP(S.ddpm_betas("linear", 50)),
    S.DiscreteVP(S.ddpm_betas("cosine", 50)),
]
schedules = st.sampled_from(SCHEDULES)
times = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))
dtypes = st.sampled_from([F32, F64])
kinds = st.sampled_from(param.KINDS)
seeds = st.integers(0, 2**16)


def randn(seed, *shape, dtype=F32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def has_nan(obj) -> bool:
    if torch.is_tensor(obj):
        return obj.is_floating_point() and bool(torch.isnan(obj).any())
    if isinstance(obj, float):
        return math.isnan(obj)
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        return any(has_nan(o) for o in obj)
    return False


def all_finite(obj) -> bool:
    if torch.is_tensor(obj):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        return all(all_finite(o) for o in obj)
    return True


def finite_or_singular(call):
    """Run ``call``: its result must be finite, or it must raise the documented
    ValueError of a singular end point. Returns the result (None if singular)."""
    try:
        out = call()
    except ValueError as exc:
        assert "singular" in str(exc), str(exc)
        return None
    assert all_finite(out), out
    return out


@lru_cache(maxsize=None)
def mlp(dim=2):
    torch.manual_seed(0)
    return nets.MLP(dim, hidden=16, depth=2, emb_dim=8)


GM = analytic.GaussianMixture([[1.0, 0.0], [-1.0, 0.5]], [0.3, 0.5], [0.3, 0.7])


# === 1. valid inputs never give NaN ===================================================
@covers(
    "schedules.Schedule.alpha",
    "schedules.Schedule.sigma",
    "schedules.Schedule.coefficients",
    "schedules.Schedule.log_snr",
    "schedules.Schedule.d_alpha",
    "schedules.Schedule.d_sigma",
    "schedules.Schedule.d_log_snr",
    "schedules.Schedule.sde",
    "schedules.VPLinear.beta",
    "schedules.VPLinear",
    "schedules.VPCosine",
    "schedules.VE",
    "schedules.LinearInterpolant",
    "schedules.DiscreteVP",
)
@SETTINGS
@given(sch=schedules, t=times, dtype=dtypes)
def test_schedule_values_are_never_nan(sch, t, dtype):
    tt = torch.tensor([t, 1.0 - t], dtype=dtype)
    for name in (
        "alpha",
        "sigma",
        "log_snr",
        "d_alpha",
        "d_sigma",
        "d_log_snr",
        "sde",
        "coefficients",
    ):
        for arg in (t, tt):
            out = getattr(sch, name)(arg)
            assert not has_nan(out), (name, arg, out)
    # signs the mathematics fixes (these caught VPCosine's float32 t = 1)
    assert bool((sch.d_log_snr(tt) <= 0).all())
    assert bool((sch.sde(tt)[1] >= 0).all())
    a, s = sch.alpha(tt), sch.sigma(tt)
    assert bool(((a >= 0) & (s >= 0)).all())
    if isinstance(sch, S.VPLinear):
        assert not has_nan(sch.beta(tt))


@covers("schedules.Schedule.transition", "schedules.Schedule.posterior")
@SETTINGS
@given(sch=schedules, s=times, t=times, dtype=dtypes)
def test_transition_and_posterior_are_never_nan(sch, s, t, dtype):
    s, t = min(s, t), max(s, t)
    ss, tt = torch.tensor([s, 0.0], dtype=dtype), torch.tensor([t, t], dtype=dtype)
    for args in ((s, t), (ss, tt)):
        a_ts, var = sch.transition(*args)
        a, b, pvar = sch.posterior(*args)
        assert not has_nan((a_ts, var, a, b, pvar))
        assert bool((var >= 0).all()) and bool((pvar >= 0).all())


@covers(
    "schedules.Schedule.t_from_log_snr",
    "schedules.Schedule.log_snr_range",
    "schedules.VPCosine.log_snr_range",
    "schedules.LinearInterpolant.log_snr_range",
)
@SETTINGS
@given(sch=schedules, t=times)
def test_log_snr_inverse_is_never_nan(sch, t):
    lo, hi = sch.log_snr_range()
    assert lo < hi
    lam = sch.log_snr(torch.tensor([t, 0.0, 1.0], dtype=F64))
    back = sch.t_from_log_snr(lam.clamp(lo, hi))
    assert not has_nan(back)
    assert bool(((back >= 0) & (back <= 1)).all())


@covers("schedules.ddpm_betas", "schedules.get_schedule", "schedules.DiscreteVP.times")
@SETTINGS
@given(
    kind=st.sampled_from(["linear", "cosine"]),
    T=st.integers(1, 2000),
    max_beta=st.floats(1e-3, 0.999),
    name=st.sampled_from(sorted(S.SCHEDULES)),
)
def test_betas_and_factory(kind, T, max_beta, name):
    betas = S.ddpm_betas(kind, T, max_beta=max_beta)
    assert betas.shape == (T,)
    assert bool(((betas > 0) & (betas < 1)).all())
    sch = S.DiscreteVP(betas)
    assert sch.times().shape == (T + 1,)
    assert not has_nan(sch.alphas_cumprod)
    assert isinstance(S.get_schedule(name), S.Schedule)


@covers("param.convert", "param.to_x0_eps", "param.from_x0_eps", "param.target")
@SETTINGS
@given(sch=schedules, src=kinds, dst=kinds, t=times, dtype=dtypes, seed=seeds)
def test_conversions_are_finite_or_say_singular(sch, src, dst, t, dtype, seed):
    x, pred = randn(seed, 3, 2, dtype=dtype), randn(seed + 1, 3, 2, dtype=dtype)
    out = finite_or_singular(lambda: param.convert(pred, src, dst, x, t, sch))
    assert out is None or out.dtype == dtype
    pair = finite_or_singular(lambda: param.to_x0_eps(pred, src, x, t, sch))
    finite_or_singular(lambda: param.from_x0_eps(pred, x, dst, x, t, sch))
    finite_or_singular(lambda: param.target(dst, x, pred, t, sch))
    if pair is not None and out is not None and src != dst:  # round trip
        back = finite_or_singular(lambda: param.convert(out, dst, src, x, t, sch))
        if back is not None and dtype == F64 and 0.05 < t < 0.95:
            torch.testing.assert_close(back, pred, rtol=1e-6, atol=1e-6)


@covers(
    "param.Denoiser",
    "param.Denoiser.predict",
    "param.Denoiser.x0_eps",
    "param.Denoiser.x0",
    "param.Denoiser.eps",
    "param.Denoiser.v",
    "param.Denoiser.score",
    "param.Denoiser.velocity",
    "param.change_schedule",
    "analytic.AnalyticDenoiser",
    "analytic.GaussianMixture.denoiser",
)
@SETTINGS
@given(
    sch=schedules,
    native=kinds,
    kind=kinds,
    t=times,
    dtype=dtypes,
    seed=seeds,
    new=schedules,
)
def test_denoisers_are_finite_or_say_singular(sch, native, kind, t, dtype, seed, new):
    x = randn(seed, 5, 2, dtype=dtype)
    models = [
        param.Denoiser(mlp(), sch, native),
        GM.denoiser(sch),
        param.change_schedule(GM.denoiser(sch), new),
    ]
    for den in models:
        out = finite_or_singular(lambda: den.predict(x, t, kind))
        assert out is None or (out.dtype == dtype and out.shape == x.shape)
        finite_or_singular(lambda: den.x0_eps(x, torch.full((5,), t, dtype=dtype)))
        for method in ("x0", "eps", "v", "score", "velocity"):
            finite_or_singular(lambda: getattr(den, method)(x, t))


@covers(
    "analytic.GaussianMixture",
    "analytic.GaussianMixture.log_prob",
    "analytic.GaussianMixture.responsibilities",
    "analytic.GaussianMixture.score",
    "analytic.GaussianMixture.x0_eps",
    "analytic.GaussianMixture.predict",
    "analytic.GaussianMixture.sample",
    "analytic.GaussianMixture.mean",
    "analytic.GaussianMixture.covariance",
    "analytic.Gaussian",
    "analytic.ring",
    "analytic.song_ermon",
)
@SETTINGS
@given(
    sch=schedules,
    t=times,
    kind=kinds,
    seed=seeds,
    K=st.integers(1, 4),
    D=st.integers(1, 3),
    var=st.floats(1e-3, 10.0),
    k=st.integers(1, 12),
)
def test_analytic_models_are_finite(sch, t, kind, seed, K, D, var, k):
    gm = analytic.GaussianMixture(
        randn(seed, K, D, dtype=F64), var, torch.rand(K, dtype=F64) + 0.1
    )
    x = gm.sample(6, torch.Generator().manual_seed(seed))
    assert all_finite((x, gm.mean(), gm.covariance()))
    for tt in (None, t):
        assert all_finite(gm.log_prob(x, tt, sch))
        assert all_finite(gm.score(x, tt, sch))
        r = gm.responsibilities(x, tt, sch)
        torch.testing.assert_close(r.sum(1), torch.ones(6, dtype=F64))
    assert all_finite(gm.x0_eps(x, t, sch))
    finite_or_singular(lambda: gm.predict(x, t, sch, kind))
    g = analytic.Gaussian(randn(seed, D, dtype=F64), var)
    assert all_finite(g.log_prob(g.sample(3)))
    assert all_finite(analytic.ring(k, std=math.sqrt(var)).sample(3))
    assert all_finite(analytic.song_ermon().log_prob(x[:, :1].repeat(1, 2)))


@covers(
    "data.two_moons",
    "data.checkerboard",
    "data.swiss_roll",
    "data.gaussian_ring",
    "data.toy_2d",
    "data.batches",
    "data.to_images",
)
@SETTINGS
@given(
    name=st.sampled_from(sorted(data.TOY_2D)),
    n=st.integers(1, 50),
    seed=st.sampled_from([0, 1, 2**32 - 1]),
    batch=st.integers(1, 8),
)
def test_data_sets_are_finite(name, n, seed, batch):
    x = data.toy_2d(name, n, seed=seed)
    assert x.shape == (n, 2) and x.dtype == F32 and all_finite(x)
    torch.testing.assert_close(x, data.toy_2d(name, n, seed=seed))  # deterministic
    b = next(data.batches(x, batch, torch.Generator().manual_seed(seed)))
    assert b.shape == (batch, 2)
    flat = x.reshape(-1)[: (x.numel() // 4) * 4].reshape(-1, 4)
    if len(flat):
        assert data.to_images(flat, 2).shape == (len(flat), 1, 2, 2)


@covers("data.digits", "data.digits_images")
@FEW
@given(
    split=st.sampled_from(["train", "test", "all"]),
    size=st.sampled_from([8, 12]),
    fraction=st.floats(0.05, 0.95),
)
def test_digits_are_finite(split, size, fraction):
    x, y = data.digits(split, test_fraction=fraction)
    assert all_finite(x) and bool(((x >= -1) & (x <= 1)).all())
    assert len(x) == len(y)
    img = data.digits_images(split, size)
    assert img.shape[1:] == (1, size, size) and all_finite(img)


@covers(
    "nets.SinusoidalEmbedding",
    "nets.SinusoidalEmbedding.forward",
    "nets.MLP",
    "nets.MLP.forward",
    "nets.UNet",
    "nets.UNet.forward",
    "nets.count_params",
)
@SETTINGS
@given(
    t=times,
    dtype=st.sampled_from([F32, F64, torch.int64]),
    seed=seeds,
    per_sample=st.booleans(),
)
def test_networks_are_finite_and_keep_the_dtype(t, dtype, seed, per_sample):
    x = (randn(seed, 3, 2, dtype=F64) * 3).to(dtype)
    tt = torch.full((3,), t, dtype=F64) if per_sample else t
    out = mlp()(x, tt)
    assert out.shape == x.shape and all_finite(out)
    assert out.dtype == (dtype if dtype.is_floating_point else F32)
    torch.manual_seed(0)
    unet = nets.UNet(1, base_channels=8, channel_mults=(1, 2), img_size=4, emb_dim=8)
    img = (randn(seed, 2, 1, 4, 4, dtype=F64) * 3).to(dtype)
    out = unet(img, tt if not per_sample else tt[:2])
    assert out.shape == img.shape and all_finite(out)
    emb = nets.SinusoidalEmbedding(6)(torch.tensor([t, 0.0, 1.0]))
    assert emb.shape == (3, 6) and all_finite(emb)
    assert nets.count_params(unet) > 0


@covers(
    "losses.denoising_loss",
    "losses.flow_matching_loss",
    "losses.elbo_weight",
    "losses.sample_xt",
    "losses.dsm_loss",
    "losses.esm_loss",
)
@SETTINGS
@given(
    sch=schedules, kind=kinds, t=times, dtype=dtypes, seed=seeds, fixed=st.booleans()
)
def test_losses_are_finite_or_say_singular(sch, kind, t, dtype, seed, fixed):
    x0 = randn(seed, 4, 2, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    kw = {"t": t} if fixed else {"t_range": (0.0, 1.0)}
    loss = finite_or_singular(
        lambda: losses.denoising_loss(mlp(), x0, sch, kind, generator=g, **kw)
    )
    assert loss is None or loss.dim() == 0
    finite_or_singular(
        lambda: losses.flow_matching_loss(mlp(), x0, sch, generator=g, **kw)
    )
    w = losses.elbo_weight(kind, torch.tensor([t, 0.5], dtype=dtype), sch)
    assert not has_nan(w) and bool((w >= 0).all()), w
    xt, eps = losses.sample_xt(x0, t, sch, g)
    assert all_finite((xt, eps))
    score = GM.denoiser(sch).score
    finite_or_singular(lambda: losses.dsm_loss(score, x0, t, sch, g))
    assert all_finite(losses.esm_loss(score, score, x0, max(t, 0.01)))


@covers("losses.gaussian_kl")
@SETTINGS
@given(
    m=st.lists(st.floats(-1e3, 1e3), min_size=3, max_size=3),
    v=st.lists(st.floats(1e-6, 1e3), min_size=3, max_size=3),
)
def test_gaussian_kl_is_finite_and_non_negative(m, v):
    kl = losses.gaussian_kl(m, v, list(reversed(m)), list(reversed(v)))
    assert all_finite(kl) and bool((kl >= -1e-9).all())
    assert float(losses.gaussian_kl(m, v, m, v).abs().max()) < 1e-9


@covers(
    "losses.continuous_nelbo",
    "losses.discrete_nelbo",
    "losses.gaussian_nelbo",
    "losses.gaussian_discretization_excess",
    "losses.optimal_reverse_variance",
)
@FEW
@given(
    sch=st.sampled_from(SCHEDULES[:2] + SCHEDULES[4:]),
    seed=seeds,
    sampling_=st.sampled_from(["uniform", "log_snr"]),
    lo=st.sampled_from([0.0, 1e-3]),
    T=st.integers(2, 6),
)
def test_likelihood_bounds_are_finite(sch, seed, sampling_, lo, T):
    g = torch.Generator().manual_seed(seed)
    den = GM.denoiser(sch)
    x0 = GM.sample(4, g)
    if sampling_ == "log_snr" and lo == 0.0:  # lambda_0 = +inf: no uniform draw
        with pytest.raises(ValueError, match="t_range"):
            losses.continuous_nelbo(den, x0, (lo, 1.0), sampling=sampling_)
        lo = 1e-3
    assert all_finite(
        losses.continuous_nelbo(
            den, x0, (lo, 1.0), n_t=2, sampling=sampling_, generator=g
        )
    )
    ts = torch.linspace(1.0 / T, 1.0, T, dtype=F64)
    assert all_finite(losses.discrete_nelbo(den, x0, ts, g))
    assert all_finite(losses.gaussian_nelbo(sch, ts, 0.5, 2))
    assert all_finite(losses.gaussian_discretization_excess(sch, ts, 0.5, 2))
    assert all_finite(losses.optimal_reverse_variance(sch, ts, 0.1))


@covers("sampling.time_grid")
@SETTINGS
@given(
    sch=schedules,
    spacing=st.sampled_from(sampling.SPACINGS),
    n=st.integers(1, 60),
    t_min=st.sampled_from([1e-3, 1e-2, 0.2]),
    final_zero=st.booleans(),
)
def test_time_grids_are_finite_and_decreasing(sch, spacing, n, t_min, final_zero):
    ts = sampling.time_grid(
        n, 1.0, t_min, spacing=spacing, schedule=sch, final_zero=final_zero
    )
    assert ts.shape == (n + 1 + final_zero,) and all_finite(ts)
    assert bool((ts[1:] < ts[:-1]).all()) and ts[0] == 1.0



@covers("sampling.discrete_time_grid")
@SETTINGS
@given(
    spacing=st.sampled_from(sampling.TIMESTEP_SPACINGS),
    n_train=st.integers(1, 2000),
    frac=st.floats(0.0, 1.0),
    final_zero=st.booleans(),
)
def test_discrete_time_grids_are_in_0_1_and_decreasing(spacing, n_train, frac,
                                                        final_zero):
    n = max(1, round(frac * n_train))
    ts = sampling.discrete_time_grid(n, n_train, spacing=spacing,
                                     final_zero=final_zero)
    assert ts.shape == (n + final_zero,) and all_finite(ts)
    assert bool((ts[1:] < ts[:-1]).all()) and 0 < ts[0] <= 1.0 and ts[-1] >= 0
    for bad in (0, -3, 2.5, True, nan):
        with pytest.raises(ValueError, match="n_steps"):
            sampling.discrete_time_grid(bad, n_train)
    with pytest.raises(ValueError, match="spacing"):
        sampling.discrete_time_grid(n, n_train, spacing="uniform")

GRID_SAMPLERS = [
    "sample_ancestral",
    "sample_euler",
    "sample_heun",
    "sample_euler_maruyama",
    "sample_predictor_corrector",
    "sample_ode",
]


@covers(*(f"sampling.{name}" for name in GRID_SAMPLERS))
@SETTINGS
@given(
    sch=schedules,
    name=st.sampled_from(GRID_SAMPLERS),
    dtype=dtypes,
    seed=seeds,
    n=st.integers(1, 4),
    oracle=st.booleans(),
    t_max=st.sampled_from([1.0, 0.8]),
)
def test_samplers_are_finite_or_say_singular(sch, name, dtype, seed, n, oracle, t_max):
    den = GM.denoiser(sch) if oracle else param.Denoiser(mlp(), sch, "eps")
    x = randn(seed, 4, 2, dtype=dtype)
    ts = sampling.time_grid(n, t_max, 0.05, final_zero=True)
    kw = (
        {"rtol": 1e-4, "atol": 1e-4}
        if name == "sample_ode"
        else {"generator": torch.Generator().manual_seed(seed)}
    )
    out = finite_or_singular(lambda: getattr(sampling, name)(den, x, ts, **kw))
    assert out is None or (out.dtype == dtype and out.shape == x.shape)


@covers("sampling.sample_langevin", "sampling.sample_annealed_langevin")
@SETTINGS
@given(
    sch=schedules,
    dtype=dtypes,
    seed=seeds,
    n=st.integers(1, 5),
    step=st.floats(1e-4, 0.1),
)
def test_langevin_samplers_are_finite(sch, dtype, seed, n, step):
    x = randn(seed, 4, 2, dtype=dtype)
    g = torch.Generator().manual_seed(seed)
    out = sampling.sample_langevin(
        lambda y: GM.score(y.double()), x, step, n, generator=g
    )
    assert out.dtype == dtype and all_finite(out)
    levels = torch.tensor([1.0, 0.5, 0.05], dtype=F64)
    out = sampling.sample_annealed_langevin(
        GM.denoiser(sch), x, levels, n_steps_each=n, generator=g
    )
    assert out.dtype == dtype and all_finite(out)


@covers(
    "metrics.sliced_wasserstein",
    "metrics.mmd",
    "metrics.energy_distance",
    "metrics.log_likelihood",
)
@SETTINGS
@given(
    seed=seeds,
    n=st.integers(2, 30),
    m=st.integers(2, 30),
    D=st.integers(1, 4),
    scale=st.floats(1e-3, 1e3),
    dtype=dtypes,
)
def test_sample_metrics_are_finite(seed, n, m, D, scale, dtype):
    x, y = randn(seed, n, D, dtype=dtype) * scale, randn(seed + 1, m, D, dtype=dtype)
    sw = metrics.sliced_wasserstein(x, y, 16, torch.Generator().manual_seed(seed))
    assert math.isfinite(sw) and sw >= 0
    assert math.isfinite(metrics.mmd(x, y)) and math.isfinite(
        metrics.energy_distance(x, y)
    )
    assert math.isfinite(metrics.log_likelihood(GM, randn(seed, n, 2, dtype=F64)))


@covers("metrics.pf_ode_log_likelihood", "metrics.straightness")
@FEW
@given(
    sch=st.sampled_from(SCHEDULES[:4]),
    seed=seeds,
    t_max=st.sampled_from([1.0, 0.9]),
    divergence=st.sampled_from(["exact", "hutchinson"]),
)
def test_ode_metrics_are_finite(sch, seed, t_max, divergence):
    den = GM.denoiser(sch)
    x = GM.sample(3, torch.Generator().manual_seed(seed)).float()
    ll = metrics.pf_ode_log_likelihood(
        den,
        x,
        t_max=t_max,
        rtol=1e-3,
        atol=1e-3,
        divergence=divergence,
        generator=torch.Generator().manual_seed(seed),
    )
    assert ll.shape == (3,) and all_finite(ll)
    s = metrics.straightness(den, x, torch.tensor([t_max, 0.5, 0.01]), relative=True)
    assert math.isfinite(s) and s >= 0


@covers(
    "train.EMA",
    "train.EMA.update",
    "train.EMA.current_decay",
    "train.EMA.state_dict",
    "train.EMA.load_state_dict",
    "train.train",
    "train.save_checkpoint",
    "train.load_checkpoint",
    "train.init_distributed",
)
@FEW
@given(
    decay=st.floats(0.0, 0.9999),
    warmup=st.booleans(),
    seed=st.sampled_from([0, 2**32 - 1]),
    dtype=dtypes,
)
def test_training_is_finite(tmp_path_factory, decay, warmup, seed, dtype):
    ema = train.EMA(mlp(), decay, warmup)
    ema.update(mlp())
    assert 0 <= ema.current_decay() <= decay
    other = train.EMA(mlp(), 0.5)
    other.load_state_dict(ema.state_dict())
    assert other.decay == decay and other.num_updates == 1
    torch.manual_seed(0)
    net = nets.MLP(2, hidden=8, depth=2, emb_dim=4)
    path = tmp_path_factory.mktemp("ckpt") / "run.pt"
    result = train.train(
        net,
        lambda m, b, g: losses.denoising_loss(m, b, S.VPLinear(), generator=g),
        randn(seed % 1000, 32, 2, dtype=dtype),
        steps=3,
        batch_size=8,
        seed=seed,
        ema_decay=decay,
        progress=False,
        checkpoint=path,
    )
    assert len(result.losses) == 3 and all_finite(result.losses)
    state = train.load_checkpoint(path)
    train.save_checkpoint(path, state)
    assert train.init_distributed() == (0, 1)


@covers(
    "runtime.device",
    "runtime.has_gpu",
    "runtime.in_colab",
    "runtime.full_scale",
    "runtime.gpu_cell",
    "runtime.seed_everything",
    "runtime.timer",
    "runtime.show_source",
)
@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), label=st.one_of(st.none(), st.text(max_size=5)))
def test_runtime_helpers(seed, label, capsys):
    g = runtime.seed_everything(seed)
    assert g.initial_seed() == seed
    assert isinstance(runtime.device(), torch.device)
    assert isinstance(runtime.has_gpu(), bool) and isinstance(runtime.in_colab(), bool)
    assert runtime.gpu_cell("a property test") == runtime.full_scale()
    out = {}
    with runtime.timer(label, out):
        pass
    assert out["seconds"] >= 0
    assert "def device" in runtime.show_source(runtime.device, display=False)
    capsys.readouterr()


@covers(
    "fullscale.generate",
    "fullscale.score_images",
    "fullscale.ImageExperiment.summary",
)
@FEW
@given(
    seed=seeds,
    sampler=st.sampled_from(sorted(fullscale.SAMPLERS)),
    steps=st.integers(1, 3),
)
def test_full_scale_helpers_are_finite(seed, sampler, steps):
    den = param.Denoiser(lambda x, t: torch.zeros_like(x), S.VPLinear())
    imgs = fullscale.generate(
        den,
        sampler,
        steps,
        3,
        (1, 4, 4),
        seed=seed,
        batch=2,
        progress=False,
        device="cpu",
    )
    assert imgs.shape == (3, 1, 4, 4) and all_finite(imgs)
    ref = randn(seed, 4, 1, 4, 4).clamp(-1, 1)
    scores, notes = fullscale.score_images(
        imgs, ref, real=ref.flip(0), fid=False, n_pixel=3, seed=seed
    )
    assert all_finite([v for v in scores.values() if v is not None])
    run = fullscale.ImageExperiment(
        "digits", nets.MLP(2), None, den, [1.0], 1, 1.0, imgs, ref, scores, notes
    )
    assert "FID" in run.summary()


@covers(
    "plot.style",
    "plot.column_width",
    "plot.check_legible",
    "plot.samples_2d",
    "plot.density_contours",
    "plot.trajectories",
    "plot.vector_field",
    "plot.image_grid",
    "plot.line",
)
@FEW
@given(seed=seeds, vmin=st.floats(-2.0, 0.0), width=st.floats(1e-3, 3.0))
def test_plots_accept_valid_input(seed, vmin, width):
    plot.style()
    try:
        pts = randn(seed, 20, 2)
        plot.samples_2d(pts, density=GM.log_prob)
        plot.density_contours(GM.log_prob, 3.0, n=10)
        plot.trajectories(randn(seed, 3, 5, 2))
        plot.vector_field(lambda z: -z, 3.0, n=5)
        plot.image_grid(torch.rand(5, 1, 4, 4), vmin=vmin, vmax=vmin + width)
        plot.image_grid(torch.zeros(2, 3, 4, 4))
        ax = plot.line([1, 2, 3], {"a": [1.0, 2.0, 3.0]})
        assert isinstance(plot.check_legible(ax.figure), list)
        assert plot.column_width() > 0
    finally:
        plt.close("all")


# === chapter I.4: interpolants (helper 1 owns this section) =========================
SI_PATHS = [interpolants.Interpolant(p, g, 0.7) for p in interpolants.PATHS
            for g in interpolants.GAMMAS]
SI_BASE = analytic.GaussianMixture([[0.0, 1.0], [0.5, -1.0]], [0.2, 0.6])


@covers("interpolants.PATHS", "interpolants.GAMMAS", "interpolants.Interpolant",
        "interpolants.Interpolant.coefficients", "interpolants.InterpolantCoefficients",
        "interpolants.Interpolant.sample", "interpolants.Interpolant.score_from_z")
@SETTINGS
@given(it=st.sampled_from(SI_PATHS), t=times, seed=seeds, dtype=dtypes,
       scale=st.sampled_from([0.0, 1.0, 1e3]))
def test_interpolant_is_finite_or_says_singular(it, t, seed, dtype, scale):
    c = it.coefficients(t)
    assert isinstance(c, interpolants.InterpolantCoefficients) and not has_nan(c)
    x0, x1 = scale * randn(seed, 4, 2, dtype=dtype), randn(seed + 1, 4, 2, dtype=dtype)
    out = finite_or_singular(
        lambda: it.sample(x0, x1, t, torch.Generator().manual_seed(seed)))
    assert out is None or (out[0].dtype == dtype and out[0].shape == x0.shape)
    z = finite_or_singular(lambda: it.score_from_z(x1, t))
    assert z is None or z.shape == x1.shape


@covers("interpolants.MixtureBridge", "interpolants.MixtureBridge.posterior_means",
        "interpolants.MixtureBridge.velocity", "interpolants.MixtureBridge.score",
        "interpolants.MixtureBridge.log_prob", "interpolants.MixtureBridge.sample")
@SETTINGS
@given(it=st.sampled_from(SI_PATHS), t=times, seed=seeds, dtype=dtypes,
       scale=st.sampled_from([0.0, 1.0, 1e3]))
def test_mixture_bridge_is_finite_or_says_singular(it, t, seed, dtype, scale):
    br = interpolants.MixtureBridge(GM, SI_BASE, it)
    x = scale * randn(seed, 5, 2, dtype=dtype)
    for method in (br.velocity, br.score, br.log_prob, br.posterior_means):
        out = finite_or_singular(lambda m=method: m(x, t))
        assert out is None or not has_nan(out)
    assert all_finite(br.sample(3, t, torch.Generator().manual_seed(seed)))


@covers("losses.INTERPOLANT_TARGETS", "losses.interpolant_loss",
        "sampling.sample_interpolant")
@FEW
@given(it=st.sampled_from(SI_PATHS), target=st.sampled_from(losses.INTERPOLANT_TARGETS),
       seed=seeds, antithetic=st.booleans(), t=times, delta=st.sampled_from([0.0, 0.5]))
def test_interpolant_loss_and_sampler_are_finite(it, target, seed, antithetic, t,
                                                 delta):
    x0, x1 = randn(seed, 6, 2), randn(seed + 1, 6, 2)
    g = torch.Generator().manual_seed(seed)
    for tt in (None, t):
        out = finite_or_singular(lambda tt=tt: losses.interpolant_loss(
            mlp(), x0, x1, it, target, t=tt, antithetic=antithetic, generator=g))
        assert out is None or out.dim() == 0
    br = interpolants.MixtureBridge(GM, SI_BASE, it)
    ts = torch.tensor([0.99, 0.6, 0.2], dtype=F64)
    for v, s in ((mlp(), lambda y, tt: -y), (br.velocity, br.score)):
        out = sampling.sample_interpolant(v, s, x1.double(), ts, delta=delta,
                                          generator=g)
        assert all_finite(out) and out.shape == x1.shape
    up = sampling.sample_interpolant(mlp(), None, x0, ts.flip(0))
    assert all_finite(up) and up.dtype == x0.dtype


SI_X = randn(0, 4, 2)
SI_IT = interpolants.Interpolant("linear", "brownian")
SI_BRIDGE = interpolants.MixtureBridge(GM, SI_BASE, SI_IT)
SI_BAD_X = st.sampled_from([None, "x", SI_X.tolist(), SI_X[0], SI_X[:0],
                            torch.full((4, 2), nan), SI_X > 0])
SI_BAD_T = st.sampled_from([-0.1, 1.5, nan, inf, "t", None, True])
SI_BAD_FN = st.sampled_from([None, 1, "f"])
SI_BAD = [
    ("Interpolant", "path", st.sampled_from(["cubic", None, 1]),
     lambda v: interpolants.Interpolant(v)),
    ("Interpolant", "gamma", st.sampled_from(["sqrt", None, 0.5]),
     lambda v: interpolants.Interpolant("linear", v)),
    ("Interpolant", "a", st.sampled_from([0.0, -1.0, nan, inf, "a", None]),
     lambda v: interpolants.Interpolant("linear", "brownian", v)),
    ("Interpolant.coefficients", "t", SI_BAD_T, lambda v: SI_IT.coefficients(v)),
    ("Interpolant.sample", "x0", SI_BAD_X, lambda v: SI_IT.sample(v, SI_X, 0.5)),
    ("Interpolant.sample", "x1",
     st.sampled_from([None, torch.zeros(4, 3), torch.full((4, 2), nan)]),
     lambda v: SI_IT.sample(SI_X, v, 0.5)),
    ("Interpolant.sample", "t", SI_BAD_T, lambda v: SI_IT.sample(SI_X, SI_X, v)),
    ("Interpolant.sample", "z", st.sampled_from([torch.zeros(4, 3), "z"]),
     lambda v: SI_IT.sample(SI_X, SI_X, 0.5, z=v)),
    ("Interpolant.sample", "generator", st.sampled_from([1, "g"]),
     lambda v: SI_IT.sample(SI_X, SI_X, 0.5, v)),
    ("Interpolant.score_from_z", "z_hat", SI_BAD_X,
     lambda v: SI_IT.score_from_z(v, 0.5)),
    ("Interpolant.score_from_z", "t", SI_BAD_T, lambda v: SI_IT.score_from_z(SI_X, v)),
    ("MixtureBridge", "data", st.sampled_from([None, "gm", S.VPLinear()]),
     lambda v: interpolants.MixtureBridge(v, SI_BASE, SI_IT)),
    ("MixtureBridge", "base",
     st.sampled_from([None, analytic.Gaussian(torch.zeros(3, dtype=F64))]),
     lambda v: interpolants.MixtureBridge(GM, v, SI_IT)),
    ("MixtureBridge", "interpolant", st.sampled_from([None, S.LinearInterpolant()]),
     lambda v: interpolants.MixtureBridge(GM, SI_BASE, v)),
    ("MixtureBridge.velocity", "x", SI_BAD_X, lambda v: SI_BRIDGE.velocity(v, 0.5)),
    ("MixtureBridge.score", "t", SI_BAD_T, lambda v: SI_BRIDGE.score(SI_X, v)),
    ("MixtureBridge.log_prob", "x", SI_BAD_X, lambda v: SI_BRIDGE.log_prob(v, 0.5)),
    ("MixtureBridge.posterior_means", "t", SI_BAD_T,
     lambda v: SI_BRIDGE.posterior_means(SI_X, v)),
    ("MixtureBridge.sample", "n", st.sampled_from([0, -1, 1.5, "n", None]),
     lambda v: SI_BRIDGE.sample(v, 0.5)),
    ("MixtureBridge.sample", "t", SI_BAD_T, lambda v: SI_BRIDGE.sample(3, v)),
    ("interpolant_loss", "net", SI_BAD_FN,
     lambda v: losses.interpolant_loss(v, SI_X, SI_X, SI_IT)),
    ("interpolant_loss", "interpolant", st.sampled_from([None, S.VPLinear()]),
     lambda v: losses.interpolant_loss(mlp(), SI_X, SI_X, v)),
    ("interpolant_loss", "target", st.sampled_from(["eps", None, 1]),
     lambda v: losses.interpolant_loss(mlp(), SI_X, SI_X, SI_IT, v)),
    ("interpolant_loss", "x0", SI_BAD_X,
     lambda v: losses.interpolant_loss(mlp(), v, SI_X, SI_IT)),
    ("interpolant_loss", "x1", st.sampled_from([None, torch.zeros(4, 3)]),
     lambda v: losses.interpolant_loss(mlp(), SI_X, v, SI_IT)),
    ("interpolant_loss", "t_range",
     st.sampled_from([(0.5, 0.1), (0.0, 1.5), None, "r", (nan, 0.5)]),
     lambda v: losses.interpolant_loss(mlp(), SI_X, SI_X, SI_IT, t_range=v)),
    ("interpolant_loss", "antithetic", st.sampled_from([1, "yes", None]),
     lambda v: losses.interpolant_loss(mlp(), SI_X, SI_X, SI_IT, antithetic=v)),
    ("sample_interpolant", "velocity", SI_BAD_FN,
     lambda v: sampling.sample_interpolant(v, None, SI_X, [1.0, 0.5])),
    ("sample_interpolant", "score", SI_BAD_FN,
     lambda v: sampling.sample_interpolant(mlp(), v, SI_X, [1.0, 0.5], delta=0.5)),
    ("sample_interpolant", "x", SI_BAD_X,
     lambda v: sampling.sample_interpolant(mlp(), None, v, [1.0, 0.5])),
    ("sample_interpolant", "ts",
     st.sampled_from([None, "ts", [1.0, 1.0, 0.0], [0.2, 0.5, 0.1], [1.5, 0.5],
                      [1.0, nan], [], [1.0], [[1.0, 0.5]]]),
     lambda v: sampling.sample_interpolant(mlp(), None, SI_X, v)),
    ("sample_interpolant", "delta",
     st.sampled_from([-0.5, nan, inf, "e", None, lambda t: -1.0]),
     lambda v: sampling.sample_interpolant(mlp(), None, SI_X, [1.0, 0.5], delta=v)),
    ("sample_interpolant", "callback", st.sampled_from([1, "cb"]),
     lambda v: sampling.sample_interpolant(mlp(), None, SI_X, [1.0, 0.5], callback=v)),
    ("sample_interpolant", "generator", st.sampled_from([1, "g"]),
     lambda v: sampling.sample_interpolant(mlp(), None, SI_X, [1.0, 0.5], generator=v)),
]


@pytest.mark.parametrize("label, arg, values, call", SI_BAD,
                         ids=[f"{b[0]}-{b[1]}" for b in SI_BAD])
@FEW
@given(data_=st.data())
def test_interpolants_bad_input_names_the_argument(label, arg, values, call, data_):
    value = data_.draw(values, label=arg)
    with pytest.raises(ValueError) as info:
        call(value)
    assert _names_argument(str(info.value), arg), (label, arg, value, str(info.value))



# === chapter I.5: guidance (helper 2 owns this section) =============================
GM_LABELLED = analytic.GaussianMixture(
    [[1.0, 0.0], [-1.0, 0.5], [0.0, -1.0]], [0.3, 0.5, 0.2], [0.3, 0.5, 0.2],
    labels=[0, 1, 1],
)


@covers(
    "analytic.GaussianMixture.class_prior",
    "analytic.GaussianMixture.class_log_prob",
    "analytic.GaussianMixture.conditional",
    "guidance.classifier_guidance",
    "guidance.classifier_free_guidance",
    "guidance.label_denoiser",
)
@SETTINGS
@given(sch=schedules, t=times, kind=kinds, scale=st.floats(-3.0, 10.0),
       y=st.integers(0, 1), seed=seeds)
def test_guidance_is_finite_or_says_singular(sch, t, kind, scale, y, seed):
    x = 3.0 * randn(seed, 4, 2, dtype=F64)
    prior = GM_LABELLED.class_prior()
    assert all_finite(prior) and abs(float(prior.sum()) - 1) < 1e-12
    lp = GM_LABELLED.class_log_prob(x, t, sch)
    assert not has_nan(lp) and bool((lp <= 1e-12).all())
    assert all_finite(GM_LABELLED.class_log_prob(x))
    cond, uncond = GM_LABELLED.conditional(y).denoiser(sch), GM_LABELLED.denoiser(sch)
    cfg = guidance.classifier_free_guidance(cond, uncond, scale, kind)
    cg = guidance.classifier_guidance(
        uncond, lambda z, tt: GM_LABELLED.class_log_prob(z, tt, sch)[:, y], scale
    )
    for den in (cfg, cg):
        out = finite_or_singular(lambda: den.predict(x, t, kind))
        assert out is None or out.shape == x.shape
    net = nets.MLP(2, hidden=8, depth=2, emb_dim=4, num_classes=2)
    for label in (None, y, torch.tensor([0, 1, 1, 0])):
        den = guidance.label_denoiser(net, label, sch, kind)
        out = finite_or_singular(lambda: den.predict(x.float(), t))
        assert out is None or (out.shape == x.shape and out.dtype == F32)


def test_guidance_bad_input_names_the_argument():
    den = GM_LABELLED.denoiser(S.VPLinear())
    cases = [
        (lambda: guidance.classifier_guidance(None, lambda x, t: x[:, 0], 1.0),
         "denoiser"),
        (lambda: guidance.classifier_guidance(den, None, 1.0), "log_prob"),
        (lambda: guidance.classifier_guidance(den, lambda x, t: x[:, 0], math.inf),
         "^w must"),
        (lambda: guidance.classifier_free_guidance(den, "u", 2.0), "uncond"),
        (lambda: guidance.classifier_free_guidance(1, den, 2.0), "cond"),
        (lambda: guidance.classifier_free_guidance(den, den, math.nan), "^w must"),
        (lambda: guidance.classifier_free_guidance(den, den, 2.0, "v0"), "kind"),
        (lambda: guidance.label_denoiser(mlp(), 1.5, S.VPLinear()), "^y must"),
        (lambda: guidance.label_denoiser(mlp(), 0, None), "schedule"),
        (lambda: GM_LABELLED.conditional(2), "^y must"),
        (lambda: GM_LABELLED.class_log_prob(torch.zeros(2, 2), 2.0, S.VPLinear()),
         "t"),
        (lambda: GM_LABELLED.class_log_prob(torch.zeros(2, 2), 0.5), "schedule"),
        (lambda: GM.class_prior(), "labels"),
        (lambda: analytic.GaussianMixture([[0.0]], 1.0, labels=[1]), "labels"),
        (lambda: nets.MLP(2, num_classes=0), "num_classes"),
        (lambda: nets.MLP(2, hidden=8, depth=2, emb_dim=4, num_classes=2)(
            torch.zeros(3, 2), 0.5, 2.5), "^y must"),
        (lambda: mlp()(torch.zeros(3, 2), 0.5, 0), "^y was given"),
    ]
    for call, name in cases:
        with pytest.raises(ValueError, match=name):
            call()



# === chapter I.6: geometry and nets.EnergyMLP (helper 3 owns this section) ==========
SPHERE5 = geometry.UniformSphere(torch.linalg.qr(randn(3, 5, 3, dtype=F64))[0], 1.5)
A2 = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=F64)


@covers(
    "geometry.jacobian",
    "geometry.gauge_defect",
    "geometry.perturb_score",
    "geometry.rotation_gauge",
    "geometry.intrinsic_dimension",
    "geometry.flow_jacobian",
)
@FEW
@given(sch=schedules, t=st.floats(0.01, 1.0), seed=seeds, c=st.floats(-5.0, 5.0),
       scale=st.sampled_from([1e-3, 1.0, 30.0]))
def test_geometry_fields_are_finite(sch, t, seed, c, scale):
    x = scale * randn(seed, 5, 2, dtype=F64)
    den = GM.denoiser(sch)
    s_fn = lambda z: GM.score(z, t, sch)  # noqa: E731
    assert all_finite(geometry.jacobian(s_fn, x))
    assert all_finite(geometry.gauge_defect(lambda z: s_fn(z) @ A2.T, s_fn, x))
    for g in (geometry.rotation_gauge(den, c * A2),
              geometry.perturb_score(den, lambda z, tt: c * z)):
        out = finite_or_singular(lambda: g.predict(x, t, "velocity"))
        assert out is None or out.shape == x.shape
    sv = torch.linalg.svdvals(randn(seed, 4, 3, 3, dtype=F64))
    d = geometry.intrinsic_dimension(sv)
    assert bool(((d >= 1) & (d <= 3)).all())
    x_end, Y = geometry.flow_jacobian(den, x, [min(t, 0.9), 0.005])
    assert all_finite((x_end, Y)) or sch.coefficients(0.005).sigma == 0


@covers("geometry.weighted_helmholtz")
@FEW
@given(seed=seeds, n=st.integers(3, 12), h=st.floats(1e-3, 10.0),
       spread=st.sampled_from([0.0, 1.0, 1e3]))
def test_weighted_helmholtz_is_finite(seed, n, h, spread):
    F = randn(seed, n, n, 2, dtype=F64)
    log_p = -spread * randn(seed + 1, n, n, dtype=F64) ** 2
    grad, r = geometry.weighted_helmholtz(F, log_p, h)
    assert np.isfinite(grad).all() and np.isfinite(r).all()


@covers(
    "geometry.UniformSphere",
    "geometry.UniformSphere.log_prob",
    "geometry.UniformSphere.score",
    "geometry.UniformSphere.denoiser",
    "geometry.UniformSphere.sample",
)
@SETTINGS
@given(sch=schedules, t=st.floats(1e-4, 1.0), seed=seeds,
       scale=st.sampled_from([0.0, 1e-8, 1.0, 1e3]), dtype=dtypes)
def test_sphere_is_finite(sch, t, seed, scale, dtype):
    x = (scale * randn(seed, 4, 5, dtype=F64)).to(dtype)
    if sch.coefficients(t).sigma == 0:
        return
    assert all_finite(SPHERE5.log_prob(x, t, sch))
    assert all_finite(SPHERE5.score(x, t, sch))
    out = SPHERE5.denoiser(sch).predict(x, t, "score")
    assert all_finite(out) and out.dtype == dtype
    y = SPHERE5.sample(3, torch.Generator().manual_seed(seed))
    assert all_finite(y) and y.shape == (3, 5)


@covers("nets.EnergyMLP", "nets.EnergyMLP.energy", "nets.EnergyMLP.forward",
        "nets.EnergyMLP.extra_repr")
@FEW
@given(seed=seeds, t=times, dtype=dtypes, scale=st.sampled_from([0.0, 1.0, 1e3]))
def test_energy_mlp_is_finite(seed, t, dtype, scale):
    torch.manual_seed(0)
    net = nets.EnergyMLP(3, hidden=8, depth=2, emb_dim=4)
    x = (scale * randn(seed, 4, 3)).to(dtype)
    assert all_finite(net.energy(x, t)) and net.energy(x, t).shape == (4,)
    with torch.no_grad():
        out = net(x, t)
    assert all_finite(out) and out.shape == x.shape and out.dtype == dtype
    assert "params=" in repr(net)


# (the shared strategies of section 2 are defined further down: local ones here)
X6 = randn(0, 4, 2)
DEN6 = GM.denoiser(S.VPLinear())
NOT_CALLABLE6 = st.sampled_from([1, "f", None, 2.5, torch.zeros(2)])
BAD_X6 = st.sampled_from([None, "x", X6.tolist(), X6[:0], X6[0], X6 > 0,
                          torch.full((4, 2), nan)])
BAD_POSITIVE6 = st.sampled_from([0.0, -1.0, nan, inf, "1", None, True])
GEOMETRY_BAD = [
    ("jacobian", "fn", NOT_CALLABLE6, lambda v: geometry.jacobian(v, X6)),
    ("jacobian", "x", BAD_X6, lambda v: geometry.jacobian(lambda z: z, v)),
    ("gauge_defect", "r", NOT_CALLABLE6,
     lambda v: geometry.gauge_defect(v, lambda z: z, X6)),
    ("gauge_defect", "score", NOT_CALLABLE6,
     lambda v: geometry.gauge_defect(lambda z: z, v, X6)),
    ("perturb_score", "denoiser", st.sampled_from([None, "d", GM, lambda x, t: x]),
     lambda v: geometry.perturb_score(v, lambda z, t: z)),
    ("perturb_score", "field", NOT_CALLABLE6,
     lambda v: geometry.perturb_score(DEN6, v)),
    ("rotation_gauge", "A",
     st.sampled_from([None, "A", [[1.0, 0.0], [0.0, 1.0]], [1.0, 2.0],
                      [[0.0, nan], [0.0, 0.0]]]),
     lambda v: geometry.rotation_gauge(DEN6, v)),
    ("weighted_helmholtz", "field",
     st.sampled_from([None, "f", np.zeros((4, 4, 3)), np.full((4, 4, 2), nan)]),
     lambda v: geometry.weighted_helmholtz(v, np.zeros((4, 4)), 0.1)),
    ("weighted_helmholtz", "log_p",
     st.sampled_from([None, np.zeros(4), np.zeros((2, 4)), np.full((4, 4), nan)]),
     lambda v: geometry.weighted_helmholtz(np.zeros((4, 4, 2)), v, 0.1)),
    ("weighted_helmholtz", "h", BAD_POSITIVE6,
     lambda v: geometry.weighted_helmholtz(np.zeros((4, 4, 2)), np.zeros((4, 4)), v)),
    ("flow_jacobian", "x", BAD_X6,
     lambda v: geometry.flow_jacobian(DEN6, v, [0.5, 0.1])),
    ("flow_jacobian", "ts",
     st.sampled_from([None, "ts", [0.1, 0.5], [0.5, 0.0], [1.5, 0.5], [0.5], []]),
     lambda v: geometry.flow_jacobian(DEN6, X6.double(), v)),
    ("flow_jacobian", "callback", st.sampled_from([1, "cb"]),
     lambda v: geometry.flow_jacobian(DEN6, X6.double(), [0.5, 0.1], callback=v)),
    ("intrinsic_dimension", "singular_values",
     st.sampled_from([None, "s", [1.0, 0.5], [[1.0]], [[1.0, -0.5]], [[nan, 1.0]]]),
     lambda v: geometry.intrinsic_dimension(v)),
    ("intrinsic_dimension", "min_ratio", st.sampled_from([0.5, nan, inf, "5", None]),
     lambda v: geometry.intrinsic_dimension([[1.0, 0.1]], min_ratio=v)),
    ("UniformSphere", "basis",
     st.sampled_from([None, "U", torch.ones(5, 3), torch.eye(2), torch.zeros(5, 2)]),
     lambda v: geometry.UniformSphere(v)),
    ("UniformSphere", "radius", BAD_POSITIVE6,
     lambda v: geometry.UniformSphere(torch.eye(3), v)),
    ("UniformSphere.score", "x",
     st.sampled_from([None, "x", torch.zeros(3, 4, dtype=F64), torch.zeros(0, 5),
                      torch.zeros(5), torch.full((2, 5), nan)]),
     lambda v: SPHERE5.score(v, 0.5, S.VPLinear())),
    ("UniformSphere.log_prob", "t", st.sampled_from([0.0, -0.1, 1.5, nan, "t", None]),
     lambda v: SPHERE5.log_prob(torch.zeros(2, 5, dtype=F64), v, S.VPLinear())),
    ("UniformSphere.denoiser", "schedule",
     st.sampled_from([None, "vp", S.VPLinear, GM]), lambda v: SPHERE5.denoiser(v)),
    ("UniformSphere.sample", "n", st.sampled_from([0, -1, 1.5, "n", None]),
     lambda v: SPHERE5.sample(v)),
    ("EnergyMLP", "dim", st.sampled_from([0, -1, 1.5, "d", None]),
     lambda v: nets.EnergyMLP(v)),
    ("EnergyMLP", "emb_dim", st.sampled_from([0, 3, "e"]),
     lambda v: nets.EnergyMLP(2, emb_dim=v)),
    ("EnergyMLP.forward", "x",  # an empty batch is fine for the networks
     st.sampled_from([None, "x", X6.tolist(), X6[0], X6 > 0, torch.full((4, 2), nan)]),
     lambda v: nets.EnergyMLP(2, hidden=4, depth=2, emb_dim=4)(v, 0.5)),
    ("EnergyMLP.energy", "t", st.sampled_from([-0.5, 1.5, nan, "t", None]),
     lambda v: nets.EnergyMLP(2, hidden=4, depth=2, emb_dim=4).energy(X6, v)),
]


@pytest.mark.parametrize(
    "label, arg, values, call",
    GEOMETRY_BAD,
    ids=[f"{b[0]}-{b[1]}" for b in GEOMETRY_BAD],
)
@FEW
@given(data_=st.data())
def test_geometry_bad_input_names_the_argument(label, arg, values, call, data_):
    value = data_.draw(values, label=arg)
    with pytest.raises(ValueError) as info:
        call(value)
    assert _names_argument(str(info.value), arg), (label, arg, value, str(info.value))


# === chapter I.7: Gaussian closed form (helper 4 owns this section) =================
@covers(
    "analytic.GaussianPCA",
    "analytic.GaussianPCA.from_data",
    "analytic.GaussianPCA.flow",
    "analytic.GaussianPCA.x0_hat",
    "analytic.GaussianPCA.commitment",
    "analytic.GaussianPCA.denoiser",
)
@SETTINGS
@given(
    sch=schedules,
    s=st.floats(0.05, 1.0),
    t=times,
    seed=seeds,
    D=st.integers(1, 5),
    rank=st.integers(1, 5),
    scale=st.sampled_from([0.0, 1e-6, 1.0, 1e3]),
    dtype=dtypes,
)
def test_gaussian_pca_is_finite(sch, s, t, seed, D, rank, scale, dtype):
    rank = min(rank, D)
    x = randn(seed, 7, D, dtype=F64) * scale
    g = analytic.GaussianPCA.from_data(x, rank=rank)
    xs = randn(seed + 1, 3, D, dtype=dtype)
    if sch.coefficients(s).sigma > 0:
        assert all_finite(g.flow(xs, s, t, sch))
        ts = torch.tensor([1.0, t, 0.0], dtype=F64)
        assert g.flow(xs, s, ts, sch).shape == (3, 3, D)
    assert all_finite((g.x0_hat(xs, t, sch), g.commitment(t, sch)))
    rho = g.commitment(torch.tensor([t, s], dtype=F64), sch)
    assert bool(((rho >= 0) & (rho <= 1 + 1e-12)).all())
    out = g.denoiser(sch).predict(xs, t)  # native kind "x0": the Wiener filter
    assert all_finite(out) and out.dtype == dtype


# === Part II: solvers ===============================================================
SOLVER_FNS = {
    "dpm": solvers.sample_dpm_solver,
    "dpm_pp": solvers.sample_dpm_solver_pp,
}


@covers("solvers.phi")
@SETTINGS
@given(
    k=st.integers(0, 6),
    h=st.one_of(
        st.sampled_from([0.0, 1.0, -1.0, 1e-300, 709.0, 710.0, -1e4]),
        st.floats(-1e6, 1e6),
    ),
)
def test_phi_is_never_nan(k, h):
    out = solvers.phi(k, h)
    assert not math.isnan(out) and out >= 0  # phi_k > 0 for every real h
    assert not has_nan(solvers.phi(k, torch.tensor([h, 0.5 * h], dtype=F64)))


@covers("solvers.first_order_step")
@SETTINGS
@given(
    sch=schedules,
    t=st.floats(1e-6, 1.0),
    frac=st.sampled_from([0.0, 0.5, 1 - 1e-9]),
    prediction=st.sampled_from(["eps", "x0"]),
    seed=seeds,
    dtype=dtypes,
)
def test_first_order_step_is_finite(sch, t, frac, prediction, seed, dtype):
    s = t * frac
    x0, eps = randn(seed, 4, 2, dtype=dtype), randn(seed + 1, 4, 2, dtype=dtype)
    c = sch.coefficients(torch.tensor(t, dtype=F64))
    x = (float(c.alpha) * x0 + float(c.sigma) * eps).to(dtype)
    out = solvers.first_order_step(x, x0, eps, t, s, sch, prediction=prediction)
    assert out.shape == x.shape and out.dtype == dtype and all_finite(out)


@covers("solvers.step_orders")
@SETTINGS
@given(
    sch=schedules,
    n=st.integers(1, 20),
    order=st.integers(1, 3),
    method=st.sampled_from(["multistep", "singlestep"]),
    final=st.booleans(),
    below=st.sampled_from([0, 10, 15, inf]),
    t_max=st.sampled_from([1.0, 0.8]),
)
def test_step_orders_are_valid(sch, n, order, method, final, below, t_max):
    ts = sampling.time_grid(n, t_max, 0.05, final_zero=True)
    orders = solvers.step_orders(
        ts, sch, order, method=method, lower_order_final=final, lower_order_below=below
    )
    assert len(orders) == n + 1 and orders[-1] == 1
    assert all(isinstance(k, int) and 1 <= k <= order for k in orders)


@covers("solvers.sample_dpm_solver", "solvers.sample_dpm_solver_pp")
@SETTINGS
@given(
    sch=schedules,
    name=st.sampled_from(sorted(SOLVER_FNS)),
    order=st.integers(1, 3),
    method=st.sampled_from(["multistep", "singlestep"]),
    dtype=dtypes,
    seed=seeds,
    n=st.integers(1, 5),
    oracle=st.booleans(),
    t_max=st.sampled_from([1.0, 0.8]),
    clip=st.sampled_from([None, 1.0]),
)
def test_dpm_solvers_are_finite_or_say_singular(
    sch, name, order, method, dtype, seed, n, oracle, t_max, clip
):
    den = GM.denoiser(sch) if oracle else param.Denoiser(mlp(), sch, "eps")
    x = randn(seed, 4, 2, dtype=dtype)
    ts = sampling.time_grid(n, t_max, 0.05, final_zero=True)
    kw = {"order": order, "method": method}
    if name == "dpm_pp" and clip is not None:
        kw.update(clip_x0=clip, threshold_quantile=0.9)
    out = finite_or_singular(lambda: SOLVER_FNS[name](den, x, ts, **kw))
    assert out is None or (out.dtype == dtype and out.shape == x.shape)


def _solver_bad_cases():
    """(label, argument, strategy of bad values, call): built when the test runs, so
    that it can use the shared strategies of section 2 below."""
    x, ts = randn(0, 4, 2), [1.0, 0.5, 0.0]
    den = GM.denoiser(S.VPLinear())
    dpm, pp = solvers.sample_dpm_solver, solvers.sample_dpm_solver_pp
    bad_orders = st.one_of(
        st.integers(max_value=0), st.integers(min_value=4), st.booleans(),
        st.floats(), st.text(max_size=3), st.none(),
    )
    return [
        ("sample_dpm_solver", "x", bad_batches(x), lambda v: dpm(den, v, ts)),
        ("sample_dpm_solver", "ts", bad_grids(), lambda v: dpm(den, x, v)),
        ("sample_dpm_solver", "denoiser", bad_denoisers, lambda v: dpm(v, x, ts)),
        ("sample_dpm_solver", "order", bad_orders, lambda v: dpm(den, x, ts, order=v)),
        (
            "sample_dpm_solver",
            "method",
            bad_options("multistep", "singlestep"),
            lambda v: dpm(den, x, ts, method=v),
        ),
        (
            "sample_dpm_solver",
            "r1",
            st.one_of(st.floats().filter(lambda v: not 0 < v <= 1), st.none()),
            lambda v: dpm(den, x, ts, r1=v),
        ),
        (
            "sample_dpm_solver",
            "lower_order_final",
            bad_flags,
            lambda v: dpm(den, x, ts, lower_order_final=v),
        ),
        (
            "sample_dpm_solver",
            "lower_order_below",
            st.one_of(bad_counts.filter(lambda v: v not in (0, inf)), st.just(-inf)),
            lambda v: dpm(den, x, ts, lower_order_below=v),
        ),
        (
            "sample_dpm_solver",
            "callback",
            not_callables.filter(lambda v: v is not None),
            lambda v: dpm(den, x, ts, callback=v),
        ),
        (
            "sample_dpm_solver_pp",
            "order",
            bad_orders,
            lambda v: pp(den, x, ts, order=v),
        ),
        (
            "sample_dpm_solver_pp",
            "clip_x0",
            bad_positive.filter(lambda v: v is not None),
            lambda v: pp(den, x, ts, clip_x0=v),
        ),
        (
            "sample_dpm_solver_pp",
            "threshold_quantile",
            st.one_of(
                st.floats().filter(lambda v: not 0 < v <= 1), st.text(max_size=3)
            ),
            lambda v: pp(den, x, ts, threshold_quantile=v),
        ),
        (
            "phi",
            "k",
            bad_counts.filter(lambda v: v != 0),
            lambda v: solvers.phi(v, 0.5),
        ),
        (
            "phi",
            "h",
            st.one_of(
                st.sampled_from([nan, inf, -inf]), st.text(max_size=3), st.none()
            ),
            lambda v: solvers.phi(1, v),
        ),
        (
            "step_orders",
            "schedule",
            bad_schedules,
            lambda v: solvers.step_orders(ts, v, 2),
        ),
        (
            "step_orders",
            "ts",
            bad_grids(),
            lambda v: solvers.step_orders(v, S.VPLinear(), 2),
        ),
        (
            "first_order_step",
            "eps",
            bad_batches(x),
            lambda v: solvers.first_order_step(x, x, v, 0.7, 0.5, S.VPLinear()),
        ),
        (
            "first_order_step",
            "t",
            bad_times,
            lambda v: solvers.first_order_step(x, x, x, v, 0.0, S.VPLinear()),
        ),
        (
            "first_order_step",
            "prediction",
            bad_options("eps", "x0"),
            lambda v: solvers.first_order_step(
                x, x, x, 0.7, 0.5, S.VPLinear(), prediction=v
            ),
        ),
    ]


SOLVER_BAD_LABELS = [
    "sample_dpm_solver-x", "sample_dpm_solver-ts", "sample_dpm_solver-denoiser",
    "sample_dpm_solver-order", "sample_dpm_solver-method", "sample_dpm_solver-r1",
    "sample_dpm_solver-lower_order_final", "sample_dpm_solver-lower_order_below",
    "sample_dpm_solver-callback", "sample_dpm_solver_pp-order",
    "sample_dpm_solver_pp-clip_x0", "sample_dpm_solver_pp-threshold_quantile",
    "phi-k", "phi-h", "step_orders-schedule", "step_orders-ts",
    "first_order_step-eps", "first_order_step-t", "first_order_step-prediction",
]


@pytest.mark.parametrize("index", range(len(SOLVER_BAD_LABELS)), ids=SOLVER_BAD_LABELS)
@FEW
@given(data_=st.data())
def test_solver_bad_input_gives_a_value_error_naming_the_argument(index, data_):
    _check_bad_case(_solver_bad_cases()[index], SOLVER_BAD_LABELS[index], data_)


@covers("solvers.sample_deis")
@SETTINGS
@given(
    sch=schedules,
    variant=st.sampled_from(["tab", "rhoab"]),
    order=st.integers(1, 4),
    dtype=dtypes,
    seed=seeds,
    n=st.integers(1, 6),
    oracle=st.booleans(),
    t_max=st.sampled_from([1.0, 0.8]),
    final=st.booleans(),
    final_zero=st.booleans(),
)
def test_deis_is_finite_or_says_singular(
    sch, variant, order, dtype, seed, n, oracle, t_max, final, final_zero
):
    den = GM.denoiser(sch) if oracle else param.Denoiser(mlp(), sch, "eps")
    x = randn(seed, 4, 2, dtype=dtype)
    ts = sampling.time_grid(n, t_max, 0.05, final_zero=final_zero)
    out = finite_or_singular(
        lambda: solvers.sample_deis(
            den, x, ts, order=order, variant=variant, lower_order_final=final
        )
    )
    assert out is None or (out.dtype == dtype and out.shape == x.shape)


def _deis_bad_cases():
    """(argument, strategy of bad values, call) for solvers.sample_deis."""
    x, ts = randn(0, 4, 2), [1.0, 0.5, 0.0]
    den = GM.denoiser(S.VPLinear())
    deis = solvers.sample_deis
    bad_orders = st.one_of(
        st.integers(max_value=0), st.integers(min_value=5), st.booleans(),
        st.floats(), st.text(max_size=3), st.none(),
    )
    return [
        ("x", bad_batches(x), lambda v: deis(den, v, ts)),
        ("ts", bad_grids(), lambda v: deis(den, x, v)),
        ("denoiser", bad_denoisers, lambda v: deis(v, x, ts)),
        ("order", bad_orders, lambda v: deis(den, x, ts, order=v)),
        ("variant", bad_options(*solvers.deis.DEIS_VARIANTS),
         lambda v: deis(den, x, ts, variant=v)),
        ("lower_order_final", bad_flags,
         lambda v: deis(den, x, ts, lower_order_final=v)),
        ("lower_order_below", st.one_of(bad_counts.filter(lambda v: v not in (0, inf)),
                                        st.just(-inf)),
         lambda v: deis(den, x, ts, lower_order_below=v)),
        ("callback", not_callables.filter(lambda v: v is not None),
         lambda v: deis(den, x, ts, callback=v)),
    ]


DEIS_BAD_LABELS = ["x", "ts", "denoiser", "order", "variant", "lower_order_final",
                   "lower_order_below", "callback"]


@pytest.mark.parametrize("index", range(len(DEIS_BAD_LABELS)), ids=DEIS_BAD_LABELS)
@FEW
@given(data_=st.data())
def test_deis_bad_input_gives_a_value_error_naming_the_argument(index, data_):
    _check_bad_case(_deis_bad_cases()[index], DEIS_BAD_LABELS[index], data_)


# === Part II, shared: the solvers' test problem and error (lead) =====================
@covers("analytic.thin_mixture")
@SETTINGS
@given(dim=st.integers(1, 70), k=st.integers(1, 12), width=st.floats(1e-3, 1.0),
       seed=seeds)
def test_thin_mixture_is_a_valid_mixture(dim, k, width, seed):
    m = analytic.thin_mixture(dim, k, width, seed)
    assert m.means.shape == (k, dim) and all_finite(m.variances)
    assert bool((m.variances > 0).all()) and abs(float(m.weights.sum()) - 1) < 1e-12


@covers("metrics.rms_error")
@SETTINGS
@given(n=st.integers(2, 50), d=st.integers(1, 5), seed=seeds, scale=st.floats(0, 1e3))
def test_rms_error_is_finite(n, d, seed, scale):
    ref = randn(seed, n, d)
    rms, se = metrics.rms_error(ref + scale * randn(seed + 1, n, d), ref)
    assert math.isfinite(rms) and math.isfinite(se) and rms >= 0 and se >= 0


@covers("metrics.frechet_distance")
@SETTINGS
@given(n=st.integers(2, 40), d=st.integers(1, 6), seed=seeds, scale=st.floats(0, 1e3))
def test_frechet_distance_is_finite_and_nonnegative(n, d, seed, scale):
    x, y = randn(seed, n, d), scale * randn(seed + 1, n + 3, d)
    fd = metrics.frechet_distance(x, y)
    assert math.isfinite(fd) and fd >= 0
    with pytest.raises(ValueError, match="x and y"):
        metrics.frechet_distance(x, y[:, :0] if d > 1 else randn(seed, n, d + 1))


def test_rms_error_and_thin_mixture_reject_bad_input():
    for bad in (randn(0, 5), randn(0, 1, 2), "x"):
        with pytest.raises(ValueError, match="x|reference"):
            metrics.rms_error(bad, randn(0, 5, 2))
    for kw in ({"dim": 0}, {"n_components": 0}, {"width": -1.0}, {"seed": -1}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            analytic.thin_mixture(**kw)


@covers("solvers.benchmark_rows", "solvers.print_benchmark")
@FEW
@given(data=st.data())
def test_benchmark_rows_match_their_filters(data):
    rows = solvers.benchmark_rows()
    m = data.draw(st.sampled_from(sorted({r["method"] for r in rows})))
    p = data.draw(st.sampled_from(sorted({r["problem"] for r in rows})))
    lib = data.draw(st.sampled_from([None, "dlib", "diffusers"]))
    mode = data.draw(st.sampled_from(["zero", "own"]))
    got = solvers.benchmark_rows(m, p, lib)
    assert all(r["method"] == m and r["problem"] == p for r in got)
    assert all(lib is None or r["library"] == lib for r in got)
    assert all(math.isfinite(r["rms"]) and math.isfinite(r["se"]) for r in got)
    import io

    text = solvers.print_benchmark(m, p, lib, mode=mode, file=io.StringIO())
    assert "nan" not in text.lower() and p in text


@FEW
@given(bad=st.one_of(st.integers(), st.floats(allow_nan=True), st.none().map(
    lambda _: ["x"]), st.text(min_size=1).filter(lambda s: not s.startswith(
        ("DDIM", "DPM", "DEIS", "PNDM", "Euler", "Heun", "UniPC", "USF", "2d", "64d",
         "dlib", "diffusers")))))
def test_benchmark_rejects_bad_filters(bad):
    import io

    for arg in ("method", "problem", "library"):
        with pytest.raises(ValueError) as info:
            solvers.benchmark_rows(**{arg: bad})
        assert _names_argument(str(info.value), arg), (arg, bad, str(info.value))
        with pytest.raises(ValueError) as info:
            solvers.print_benchmark(**{arg: bad}, file=io.StringIO())
        assert _names_argument(str(info.value), arg), (arg, bad, str(info.value))
    if str(bad) not in ("zero", "own"):
        with pytest.raises(ValueError, match="mode"):
            solvers.print_benchmark(mode=str(bad), file=io.StringIO())


# === chapter II.1: DDIM and PNDM (helper 1 owns this section) =========================
@covers("solvers.sample_pndm")
@SETTINGS
@given(
    sch=schedules,
    variant=st.sampled_from(["f", "s"]),
    dtype=dtypes,
    seed=seeds,
    n=st.integers(1, 7),
    oracle=st.booleans(),
    t_max=st.sampled_from([1.0, 0.8]),
    final_zero=st.booleans(),
)
def test_pndm_is_finite_or_says_singular(
    sch, variant, dtype, seed, n, oracle, t_max, final_zero
):
    den = GM.denoiser(sch) if oracle else param.Denoiser(mlp(), sch, "eps")
    x = randn(seed, 4, 2, dtype=dtype)
    ts = sampling.time_grid(n, t_max, 0.05, final_zero=final_zero)
    out = finite_or_singular(lambda: solvers.sample_pndm(den, x, ts, variant=variant))
    assert out is None or (out.dtype == dtype and out.shape == x.shape)


def _pndm_bad_cases():
    """(argument, strategy of bad values, call) for solvers.sample_pndm."""
    x, ts = randn(0, 4, 2), [1.0, 0.5, 0.0]
    den = GM.denoiser(S.VPLinear())
    pndm = solvers.sample_pndm
    return [
        ("x", bad_batches(x), lambda v: pndm(den, v, ts)),
        ("ts", bad_grids(), lambda v: pndm(den, x, v)),
        ("denoiser", bad_denoisers, lambda v: pndm(v, x, ts)),
        ("variant", bad_options("f", "s"), lambda v: pndm(den, x, ts, variant=v)),
        ("callback", not_callables.filter(lambda v: v is not None),
         lambda v: pndm(den, x, ts, callback=v)),
    ]


PNDM_BAD_LABELS = ["x", "ts", "denoiser", "variant", "callback"]


@pytest.mark.parametrize("index", range(len(PNDM_BAD_LABELS)), ids=PNDM_BAD_LABELS)
@FEW
@given(data_=st.data())
def test_pndm_bad_input_gives_a_value_error_naming_the_argument(index, data_):
    _check_bad_case(_pndm_bad_cases()[index], PNDM_BAD_LABELS[index], data_)



# === chapter II.2: DEIS (helper 2 owns this section) ==================================
@covers("solvers.sample_deis_rk")
@SETTINGS
@given(
    sch=schedules,
    tableau=st.sampled_from(["euler", "heun", "kutta", "ralston", "rk4"]),
    dtype=dtypes,
    seed=seeds,
    n=st.integers(1, 6),
    oracle=st.booleans(),
    t_max=st.sampled_from([1.0, 0.8]),
    final_zero=st.booleans(),
)
def test_deis_rk_is_finite_or_says_singular(
    sch, tableau, dtype, seed, n, oracle, t_max, final_zero
):
    den = GM.denoiser(sch) if oracle else param.Denoiser(mlp(), sch, "eps")
    x = randn(seed, 4, 2, dtype=dtype)
    ts = sampling.time_grid(n, t_max, 0.05, final_zero=final_zero)
    out = finite_or_singular(
        lambda: solvers.sample_deis_rk(den, x, ts, tableau=tableau)
    )
    assert out is None or (out.dtype == dtype and out.shape == x.shape)


@SETTINGS
@given(sch=schedules, order=st.integers(1, 4), dtype=dtypes, seed=seeds,
       n=st.integers(1, 6), final_zero=st.booleans())
def test_ipndm_is_finite_or_says_singular(sch, order, dtype, seed, n, final_zero):
    x = randn(seed, 4, 2, dtype=dtype)
    ts = sampling.time_grid(n, 1.0, 0.05, final_zero=final_zero)
    out = finite_or_singular(
        lambda: solvers.sample_deis(GM.denoiser(sch), x, ts, order=order,
                                    variant="ipndm")
    )
    assert out is None or (out.dtype == dtype and out.shape == x.shape)


def _deis_rk_bad_cases():
    """(argument, strategy of bad values, call) for solvers.sample_deis_rk."""
    x, ts = randn(0, 4, 2), [1.0, 0.5, 0.0]
    den = GM.denoiser(S.VPLinear())
    rk = solvers.sample_deis_rk
    return [
        ("x", bad_batches(x), lambda v: rk(den, v, ts)),
        ("ts", bad_grids(), lambda v: rk(den, x, v)),
        ("denoiser", bad_denoisers, lambda v: rk(v, x, ts)),
        ("tableau", bad_options("euler", "heun", "kutta", "ralston", "rk4"),
         lambda v: rk(den, x, ts, tableau=v)),
        ("callback", not_callables.filter(lambda v: v is not None),
         lambda v: rk(den, x, ts, callback=v)),
    ]


DEIS_RK_BAD_LABELS = ["x", "ts", "denoiser", "tableau", "callback"]


@pytest.mark.parametrize("index", range(len(DEIS_RK_BAD_LABELS)),
                         ids=DEIS_RK_BAD_LABELS)
@FEW
@given(data_=st.data())
def test_deis_rk_bad_input_gives_a_value_error_naming_the_argument(index, data_):
    _check_bad_case(_deis_rk_bad_cases()[index], DEIS_RK_BAD_LABELS[index], data_)



# === chapter II.3: DPM-Solver and DPM-Solver++ (helper 3 owns this section) ===========
@covers("solvers.sample_dpm_solver_adaptive")
@FEW
@given(
    sch=st.sampled_from(SCHEDULES[:2] + SCHEDULES[4:]),  # finite log-SNR at t = 1
    t_end=st.sampled_from([0.05, 0.1, 0.5]),
    order=st.integers(2, 3),
    prediction=st.sampled_from(["eps", "x0"]),
    final_zero=st.booleans(),
    seed=seeds,
    dtype=dtypes,
)
def test_dpm_solver_adaptive_is_finite(sch, t_end, order, prediction, final_zero,
                                       seed, dtype):
    den = GM.denoiser(sch)
    den.nfe = 0
    x = randn(seed, 4, 2, dtype=dtype)
    kw = dict(order=order, prediction=prediction, rtol=0.05, atol=0.01,
              final_zero=final_zero, return_info=True)
    if isinstance(sch, S.VPCosine) and prediction == "eps":  # alpha_1 ~ 1e-16
        with pytest.raises(RuntimeError, match="alpha is nearly 0"):
            solvers.sample_dpm_solver_adaptive(den, x, 1.0, t_end, **kw)
        return
    out, info = solvers.sample_dpm_solver_adaptive(den, x, 1.0, t_end, **kw)
    assert out.shape == x.shape and out.dtype == dtype and all_finite(out)
    assert den.nfe == info["nfe"] > 0 and info["ts"][0] == 1.0
    assert info["ts"][-1] == (0.0 if final_zero else t_end)


def test_dpm_solver_adaptive_rejects_bad_input():
    den = GM.denoiser(S.VPLinear())
    x = randn(0, 4, 2)
    for kw in ({"order": 1}, {"rtol": -1.0}, {"atol": 0.0}, {"theta": 2.0},
               {"h_init": -0.1}, {"prediction": "score"}, {"t_end": 1.5},
               {"lambda_min": 20.0}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            solvers.sample_dpm_solver_adaptive(den, x, **kw)
    with pytest.raises(ValueError, match="log-SNR"):
        solvers.sample_dpm_solver_adaptive(den, x, 1.0, 0.0)



# === chapter II.4: DPM-Solver-v3 (helper 4 owns this section) =========================
@lru_cache(maxsize=None)
def _v3_stats():
    """Smooth, non-trivial statistics for VPLinear on [0.01, 1], 120 cells."""
    ends = S.VPLinear().log_snr(torch.tensor([1.0, 0.01], dtype=F64)).tolist()
    lam = torch.linspace(*ends, 121, dtype=F64)
    L = lam[:, None].expand(-1, 2)
    return solvers.EMS(lam, 1 / (1 + 0.4 * torch.exp(2 * L)), 0.3 * torch.tanh(L),
                       0.1 * torch.cos(L))


@covers("solvers.sample_dpm_solver_v3", "solvers.EMS", "v3.EMS.snap",
        "v3.EMS.baseline")
@SETTINGS
@given(order=st.integers(1, 3), pseudo=st.booleans(), corrector=st.booleans(),
       c_pseudo=st.booleans(), half=st.sampled_from([False, True, "noisy", "clean"]),
       lof=st.booleans(), n=st.integers(1, 12), dtype=dtypes, seed=seeds,
       final_zero=st.booleans(), oracle=st.booleans(),
       base=st.sampled_from([None, "x0", "eps", "zero"]))
def test_v3_is_finite_and_spends_one_call_per_step(
    order, pseudo, corrector, c_pseudo, half, lof, n, dtype, seed, final_zero, oracle,
    base
):
    sch = S.VPLinear()
    den = GM.denoiser(sch) if oracle else param.Denoiser(mlp(), sch, "eps")
    stats = _v3_stats()
    if base is not None:
        stats = solvers.EMS.baseline(stats.lambdas, (2,), base)
    ts = sampling.time_grid(n, 1.0, 0.01, spacing="log_snr", schedule=sch,
                            final_zero=final_zero)
    idx, snapped = stats.snap(ts, sch)
    assert len(idx) == len(ts) and bool((snapped[1:] < snapped[:-1]).all())
    x = randn(seed, 4, 2, dtype=dtype)
    den.nfe = 0
    out = solvers.sample_dpm_solver_v3(
        den, x, ts, stats, order=order, pseudo=pseudo, corrector=corrector,
        corrector_pseudo=c_pseudo, half_corrector=half, lower_order_final=lof)
    assert all_finite(out) and out.dtype == dtype and out.shape == x.shape
    assert den.nfe == n + int(final_zero)


@covers("solvers.estimate_statistics", "v3.EMS.save", "v3.EMS.load")
@FEW
@given(jacobian=st.sampled_from(["auto", "exact", "hutchinson"]), n=st.integers(2, 5),
       k=st.integers(2, 12), smooth=st.integers(0, 3), seed=seeds,
       oracle=st.booleans(), dtype=dtypes)
def test_estimate_statistics_is_finite_and_round_trips(
    tmp_path, jacobian, n, k, smooth, seed, oracle, dtype
):
    sch = S.VPLinear()
    den = GM.denoiser(sch) if oracle else param.Denoiser(mlp(), sch, "eps")
    ems = solvers.estimate_statistics(
        den, randn(seed, 50, 2, dtype=dtype), n_lambda=n, n_samples=k, t_min=0.01,
        jacobian=jacobian, smooth=smooth, generator=torch.Generator().manual_seed(seed),
        progress=False)
    assert all_finite([ems.lambdas, ems.l, ems.s, ems.b, ems.r2])
    assert ems.l.shape == (n + 1, 2) and ems.n_samples == k
    ems.save(tmp_path / "e.npz")
    back = solvers.EMS.load(tmp_path / "e.npz")
    assert torch.equal(back.s, ems.s) and back.schedule == ems.schedule


def _v3_bad_cases():
    """(argument, strategy of bad values, call) for the v3 functions."""
    x, sch = randn(0, 4, 2), S.VPLinear()
    den, stats = GM.denoiser(sch), _v3_stats()
    ts = sampling.time_grid(4, 1.0, 0.01, spacing="log_snr", schedule=sch)
    v3 = solvers.sample_dpm_solver_v3
    est = solvers.estimate_statistics
    flags = ("pseudo", "corrector", "corrector_pseudo", "lower_order_final")
    cases = [
        ("x", bad_batches(x), lambda v: v3(den, v, ts, stats)),
        ("ts", bad_grids(), lambda v: v3(den, x, v, stats)),
        ("denoiser", bad_denoisers, lambda v: v3(v, x, ts, stats)),
        ("stats", st.one_of(st.none(), st.text(max_size=3), st.integers(), st.just(GM)),
         lambda v: v3(den, x, ts, v)),
        ("order", st.one_of(st.integers(min_value=4), st.integers(max_value=0),
                            st.booleans(), st.none()),
         lambda v: v3(den, x, ts, stats, order=v)),
        ("half_corrector", bad_options("noisy", "clean"),
         lambda v: v3(den, x, ts, stats, half_corrector=v)),
        ("callback", not_callables.filter(lambda v: v is not None),
         lambda v: v3(den, x, ts, stats, callback=v)),
        ("data", bad_batches(x), lambda v: est(den, v, n_lambda=2, n_samples=2)),
        ("n_lambda", bad_counts, lambda v: est(den, x, n_lambda=v)),
        ("n_samples", bad_counts, lambda v: est(den, x, n_lambda=2, n_samples=v)),
        ("jacobian", bad_options("auto", "exact", "hutchinson"),
         lambda v: est(den, x, n_lambda=2, n_samples=2, jacobian=v)),
        ("ridge", st.one_of(st.floats().filter(lambda v: not 0 <= v <= 1),
                            st.sampled_from([nan, None, "0"])),
         lambda v: est(den, x, n_lambda=2, n_samples=2, ridge=v)),
    ]
    for name in flags:
        cases.append((name, bad_flags,
                      lambda v, name=name: v3(den, x, ts, stats, **{name: v})))
    return cases


V3_BAD_LABELS = ["x", "ts", "denoiser", "stats", "order", "half_corrector", "callback",
                 "data", "n_lambda", "n_samples", "jacobian", "ridge", "pseudo",
                 "corrector", "corrector_pseudo", "lower_order_final"]


@pytest.mark.parametrize("index", range(len(V3_BAD_LABELS)), ids=V3_BAD_LABELS)
@FEW
@given(data_=st.data())
def test_v3_bad_input_gives_a_value_error_naming_the_argument(index, data_):
    _check_bad_case(_v3_bad_cases()[index], V3_BAD_LABELS[index], data_)



# === chapter II.5: solver-schedule search (helper 5 owns this section) ================
USF_SCHEDULES = ("ddim", "dpm_multi", "dpm_single", "unipc")


def _usf_schedule(kind, ts, sch, order, prediction):
    if kind == "ddim":
        return solvers.SolverSchedule.ddim(ts)
    if kind == "unipc":
        return solvers.SolverSchedule.unipc(ts, sch, order=order, prediction=prediction)
    method = "multistep" if kind == "dpm_multi" else "singlestep"
    return solvers.SolverSchedule.dpm_solver(ts, sch, order=order, method=method,
                                             prediction=prediction)


@covers("solvers.sample_usf", "solvers.SolverSchedule", "solvers.Update",
        "search.SolverSchedule.ddim", "search.SolverSchedule.dpm_solver",
        "search.SolverSchedule.unipc")
@SETTINGS
@given(
    sch=schedules,
    kind=st.sampled_from(USF_SCHEDULES),
    order=st.integers(1, 3),
    prediction=st.sampled_from(["eps", "x0"]),
    dtype=dtypes,
    seed=seeds,
    n=st.integers(1, 5),
    oracle=st.booleans(),
    t_max=st.sampled_from([1.0, 0.8]),
    afs=st.booleans(),
)
def test_usf_schedules_are_finite_or_say_singular(sch, kind, order, prediction, dtype,
                                                  seed, n, oracle, t_max, afs):
    den = GM.denoiser(sch) if oracle else param.Denoiser(mlp(), sch, "eps")
    x = randn(seed, 4, 2, dtype=dtype)
    ts = sampling.time_grid(n, t_max, 0.05, final_zero=True)
    sched = _usf_schedule(kind, ts, sch, order, prediction)
    sched = solvers.SolverSchedule(sched.timesteps, sched.steps, sched.correctors, afs)
    den.nfe = 0
    out = finite_or_singular(lambda: solvers.sample_usf(den, x, sched))
    if out is not None:
        assert out.dtype == dtype and out.shape == x.shape
        assert den.nfe == sched.nfe


@covers("solvers.difference_weights")
@SETTINGS
@given(
    d=st.lists(st.floats(-5.0, 5.0).filter(lambda v: abs(v) > 1e-2), min_size=1,
               max_size=4, unique=True),
    m=st.integers(1, 4),
)
def test_difference_weights_are_finite_and_exact_on_lines(d, m):
    d = sorted(d)
    if min(abs(a - b) for a, b in zip(d, d[1:] + [math.inf])) < 1e-2:
        return  # nearly equal points: the system is ill-conditioned (not a bug)
    m = min(m, len(d))
    a = solvers.difference_weights(d, m)
    assert len(a) == len(d) and all(math.isfinite(v) for v in a)
    # F = delta^m / m! has m-th derivative 1 and every other one 0
    est = sum(aj * dj**m / math.factorial(m) for aj, dj in zip(a, d))
    assert abs(est - 1) < 1e-6 * max(1.0, max(abs(v) for v in a))


@covers("solvers.search_solver_schedule", "solvers.SearchResult",
        "search.SolverSchedule.to_dict", "search.SolverSchedule.from_dict",
        "search.SolverSchedule.describe")
@FEW
@given(seed=seeds, nfe=st.integers(2, 6), budget=st.integers(1, 6))
def test_search_never_returns_worse_than_its_start(seed, nfe, budget):
    den = GM.denoiser(S.VPLinear())
    x = randn(seed, 6, 2, dtype=F64)
    ref = randn(seed + 1, 6, 2, dtype=F64)
    res = solvers.search_solver_schedule(den, x, ref, nfe, budget=budget, seed=seed,
                                         progress=False)
    assert math.isfinite(res.error) and res.error <= res.start_error
    assert res.schedule.nfe == nfe and 1 <= res.n_evaluated <= budget
    again = solvers.SolverSchedule.from_dict(res.schedule.to_dict())
    assert again == res.schedule and f"NFE = {nfe}" in again.describe()


def _usf_bad_cases():
    x, ts = randn(0, 4, 2), [1.0, 0.5, 0.0]
    den = GM.denoiser(S.VPLinear())
    ok = solvers.SolverSchedule.ddim(ts)
    U = solvers.Update
    usf, search = solvers.sample_usf, solvers.search_solver_schedule
    ints = st.one_of(st.integers(max_value=0), st.booleans(), st.floats(),
                     st.text(max_size=3), st.none())
    return [
        ("sample_usf", "x", bad_batches(x), lambda v: usf(den, v, ok)),
        ("sample_usf", "denoiser", bad_denoisers, lambda v: usf(v, x, ok)),
        ("sample_usf", "schedule", st.one_of(bad_grids(), st.none()),
         lambda v: usf(den, x, v)),
        ("Update", "order", st.one_of(ints, st.integers(min_value=5)),
         lambda v: U(order=v)),
        ("Update", "prediction", bad_options("eps", "x0"), lambda v: U(prediction=v)),
        ("Update", "start", ints, lambda v: U(start=v)),
        ("Update", "points", st.one_of(st.text(min_size=1, max_size=3), st.none(),
                                       st.just((-1,)), st.just((1.5,))),
         lambda v: U(order=2, start=3, points=v)),
        ("Update", "relaxation", bad_options(*solvers.search.RELAXATIONS),
         lambda v: U(order=2, start=2, points=(1,), relaxation=v)),
        ("SolverSchedule", "timesteps", bad_grids(),
         lambda v: solvers.SolverSchedule(v, (U(),))),
        ("SolverSchedule", "afs", bad_flags,
         lambda v: solvers.SolverSchedule(ts, (U(),) * 2, afs=v)),
        ("search_solver_schedule", "nfe", st.one_of(ints, st.integers(101, 10**4)),
         lambda v: search(den, x, x, v, budget=1)),
        ("search_solver_schedule", "budget", ints,
         lambda v: search(den, x, x, 3, budget=v)),
        ("search_solver_schedule", "seed", bad_seeds,
         lambda v: search(den, x, x, 3, budget=1, seed=v)),
        ("search_solver_schedule", "reference", bad_batches(x),
         lambda v: search(den, x, v, 3, budget=1)),
    ]


USF_BAD_LABELS = [
    "sample_usf-x", "sample_usf-denoiser", "sample_usf-schedule", "Update-order",
    "Update-prediction", "Update-start", "Update-points", "Update-relaxation",
    "SolverSchedule-timesteps", "SolverSchedule-afs", "search_solver_schedule-nfe",
    "search_solver_schedule-budget", "search_solver_schedule-seed",
    "search_solver_schedule-reference",
]


@pytest.mark.parametrize("index", range(len(USF_BAD_LABELS)), ids=USF_BAD_LABELS)
@FEW
@given(data_=st.data())
def test_usf_bad_input_gives_a_value_error_naming_the_argument(index, data_):
    _check_bad_case(_usf_bad_cases()[index], USF_BAD_LABELS[index], data_)


# === chapter II.6: denoising MCMC (helper 1 owns this section) ========================
MCMC_SIG = [5.0, 1.0, 0.2, 0.05]  # inside the levels that DEN (VP linear) covers


def mcmc_classifier(x):
    return GM.noise_level_log_posterior(x, MCMC_SIG).to(x.dtype)


@covers("analytic.GaussianMixture.noise_level_log_posterior", "mcmc.noise_level_grid")
@SETTINGS
@given(seed=seeds, dtype=dtypes, scale=st.sampled_from([0.0, 1.0, 1e3]),
       n=st.integers(2, 50), diag=st.booleans())
def test_noise_level_posterior_is_a_distribution(seed, dtype, scale, n, diag):
    sig = mcmc.noise_level_grid(n, 1e-3, 1e2)
    assert bool((sig[1:] < sig[:-1]).all()) and torch.isfinite(sig).all()
    mix = GM if not diag else analytic.GaussianMixture(
        GM.means, torch.tensor([[0.3, 0.1], [0.5, 2.0]]), GM.weights)
    logp = mix.noise_level_log_posterior(scale * randn(seed, 3, 2, dtype=dtype), sig)
    assert logp.shape == (3, n) and torch.isfinite(logp).all()
    assert (logp.exp().sum(1) - 1).abs().max() < 1e-9


@covers("mcmc.langevin_gibbs", "mcmc.karras_levels", "mcmc.sample_from_levels",
        "mcmc.sample_dlg", "mcmc.Chain", "mcmc.DLGResult")
@FEW
@given(sch=schedules, seed=seeds, dtype=dtypes, update=st.sampled_from(["argmax",
       "sample"]), method=st.sampled_from(["euler", "heun"]), oracle=st.booleans(),
       n_skip=st.integers(1, 3), n_steps=st.integers(1, 3))
def test_dlg_is_finite_and_counts_its_nfe(sch, seed, dtype, update, method, oracle,
                                          n_skip, n_steps):
    den = GM.denoiser(sch) if oracle else param.Denoiser(mlp(), sch, "eps")
    lam_1, lam_0 = sch.log_snr_range()  # the VE levels sigma = exp(-lambda) it covers
    sig = mcmc.noise_level_grid(4, max(math.exp(-lam_0), 1e-4) * 1.01,
                                min(math.exp(-lam_1), 50.0) * 0.99)

    def clf(x):
        return GM.noise_level_log_posterior(x, sig).to(x.dtype)

    x = randn(seed, 4, 2, dtype=dtype)
    level = torch.tensor([0, 1, 2, 3])
    g = torch.Generator().manual_seed(seed)
    ch = mcmc.langevin_gibbs(den, clf, x, level, sig, tau=0.01, n_steps=2,
                             update=update, generator=g)
    assert all_finite(ch) and ch.x.dtype == dtype
    grid = mcmc.karras_levels(sig, float(sig[-1]), n_steps)
    out = mcmc.sample_from_levels(den, x, grid, method=method)
    assert all_finite(out) and out.shape == x.shape and out.dtype == dtype
    den.nfe = 0
    res = mcmc.sample_dlg(den, clf, x, level, sig, tau=0.01, n_skip=n_skip,
                          n_steps=n_steps, method=method, update=update, n_rounds=2)
    assert all_finite(res.samples) and res.samples.shape == (2, 4, 2)
    per_step = 1 if method == "euler" else 2
    assert res.nfe_per_sample == n_skip + per_step * n_steps + 1


@SETTINGS
@given(which=st.sampled_from(["tau", "n_steps", "sigmas", "level", "x", "update"]),
       bad=st.one_of(st.sampled_from([None, True, "a", [], [[1.0]], math.nan]),
                     st.floats(max_value=0.0)))
def test_mcmc_bad_input_names_the_argument(which, bad):
    x = X.to(F64)
    kw = dict(tau=0.1, n_steps=1, sigmas=MCMC_SIG, x=x, update="argmax",
              level=torch.zeros(4, dtype=torch.int64))
    kw[which] = bad
    with pytest.raises(ValueError, match=which if which != "sigmas" else "sigma"):
        mcmc.langevin_gibbs(DEN, mcmc_classifier, **kw)
    with pytest.raises(ValueError, match="levels"):
        mcmc.sample_from_levels(DEN, x, bad)
    with pytest.raises(ValueError, match="sigmas"):
        GM.noise_level_log_posterior(x, bad)



# === chapter II.7: DPM-OT (helper 2 owns this section) ================================
@covers("ot.SemiDiscreteOT", "ot.SemiDiscreteOT.assign", "ot.SemiDiscreteOT.transport",
        "ot.SemiDiscreteOT.potential", "ot.SemiDiscreteOT.cell_masses",
        "ot.SemiDiscreteOT.dual_energy", "ot.SemiDiscreteOT.fit")
@FEW
@given(seed=seeds, dtype=dtypes, m=st.integers(1, 7), d=st.integers(1, 4),
       scale=st.sampled_from([0.0, 1.0, 1e3]), batch=st.integers(1, 8),
       fixed=st.booleans(), weighted=st.booleans())
def test_semi_discrete_ot_is_finite_and_consistent(seed, dtype, m, d, scale, batch,
                                                   fixed, weighted):
    y = scale * randn(seed, m, d, dtype=dtype)
    w = None
    if weighted:
        w = torch.rand(m, generator=torch.Generator().manual_seed(seed))
        w[0] += 0.1  # a positive sum
    sd = ot.SemiDiscreteOT(y, w, batch=batch)
    x = randn(seed + 1, 50, d, dtype=dtype)

    def source(n, g):
        return torch.randn(n, d, generator=g).to(dtype)

    sd.fit(x if fixed else source, n_samples=64, steps=5,
           generator=torch.Generator().manual_seed(seed))
    idx = sd.assign(x)
    assert idx.dtype == torch.int64 and bool(((idx >= 0) & (idx < m)).all())
    out = sd.transport(x)
    assert torch.equal(out, y[idx])  # always a stored target
    u = sd.potential(x)
    assert u.shape == (50,) and all_finite(u)
    masses = sd.cell_masses(x)
    assert masses.shape == (m,) and abs(float(masses.sum()) - 1) < 1e-9
    assert math.isfinite(sd.dual_energy(x)) and all_finite(sd.psi)
    assert abs(float(sd.psi.mean())) < 1e-9 * (1 + float(sd.psi.abs().max()))
    assert all(math.isfinite(h["grad_norm"]) for h in sd.history)


@covers("ot.sample_dpm_ot", "analytic.grid_mixture")
@FEW
@given(sch=schedules, seed=seeds, dtype=dtypes, n=st.integers(1, 4),
       oracle=st.booleans(), eta=st.sampled_from([0.0, 1.0]),
       clip=st.sampled_from([None, 1.0]), grid_n=st.integers(1, 3))
def test_sample_dpm_ot_is_finite_and_counts_its_nfe(sch, seed, dtype, n, oracle, eta,
                                                    clip, grid_n):
    mix = analytic.grid_mixture(grid_n)
    den = mix.denoiser(sch) if oracle else param.Denoiser(mlp(), sch, "eps")
    ts = sampling.time_grid(n, 0.5, 0.05, final_zero=True)
    lat = mix.sample(6, generator=torch.Generator().manual_seed(seed)).to(dtype)
    sd = ot.SemiDiscreteOT(lat, time=0.5)
    x = randn(seed, 4, 2, dtype=dtype)
    den.nfe = 0
    out = finite_or_singular(lambda: ot.sample_dpm_ot(
        den, x, sd, ts, eta=eta, clip_x0=clip,
        generator=torch.Generator().manual_seed(seed)))
    assert out is None or (out.dtype == dtype and out.shape == x.shape)
    assert out is None or den.nfe == n + 1


def _ot_bad_cases():
    """(argument, strategy of bad values, call) for dlib.ot."""
    y, x = randn(0, 5, 2), randn(1, 4, 2)
    sd = ot.SemiDiscreteOT(y)
    den = GM.denoiser(S.VPLinear())
    ts = [0.5, 0.0]
    return [
        ("targets", bad_batches(y), lambda v: ot.SemiDiscreteOT(v)),
        ("weights", st.one_of(st.none().map(lambda _: [1.0, -1.0, 1.0, 1.0, 1.0]),
                              st.just([1.0, 1.0]), st.just([nan] * 5),
                              st.just([0.0] * 5), st.text(max_size=3)),
         lambda v: ot.SemiDiscreteOT(y, v)),
        ("batch", bad_counts, lambda v: ot.SemiDiscreteOT(y, batch=v)),
        ("time", bad_times.filter(lambda v: v is not None),
         lambda v: ot.SemiDiscreteOT(y, time=v)),
        ("x", bad_batches(x), lambda v: sd.assign(v)),
        ("source", st.one_of(not_callables, bad_batches(x)), lambda v: sd.fit(v)),
        ("n_samples", bad_counts, lambda v: sd.fit(lambda n, g: x, n_samples=v)),
        ("steps", bad_counts, lambda v: sd.fit(x, steps=v)),
        ("lr", bad_positive, lambda v: sd.fit(x, lr=v)),
        ("tol", bad_positive, lambda v: sd.fit(x, tol=v)),
        ("patience", bad_counts, lambda v: sd.fit(x, patience=v)),
        ("ot_map", st.one_of(st.none(), st.text(max_size=3), st.just(y)),
         lambda v: ot.sample_dpm_ot(den, x, v, ts)),
        ("ts", bad_grids(), lambda v: ot.sample_dpm_ot(den, x, sd, v)),
        ("denoiser", bad_denoisers, lambda v: ot.sample_dpm_ot(v, x, sd, ts)),
        ("n", bad_counts, lambda v: analytic.grid_mixture(v)),
        ("spacing", bad_positive, lambda v: analytic.grid_mixture(5, v)),
        ("std", bad_positive, lambda v: analytic.grid_mixture(5, 0.5, v)),
    ]


OT_BAD_LABELS = ["targets", "weights", "batch", "time", "x", "source", "n_samples",
                 "steps", "lr", "tol", "patience", "ot_map", "ts", "denoiser", "n",
                 "spacing", "std"]


@pytest.mark.parametrize("index", range(len(OT_BAD_LABELS)), ids=OT_BAD_LABELS)
@FEW
@given(data_=st.data())
def test_ot_bad_input_gives_a_value_error_naming_the_argument(index, data_):
    _check_bad_case(_ot_bad_cases()[index], OT_BAD_LABELS[index], data_)


# === chapter II.8: consistency models and LoRA (helper 3 owns this section) ===========
@covers("consistency.boundary_scalings", "consistency.consistency_function",
        "consistency.sample_consistency", "consistency.lcm_time_grid")
@FEW
@given(sch=schedules, t=times, seed=seeds, dtype=dtypes, steps=st.integers(1, 6),
       scale=st.sampled_from([1.0, 10.0, 1e4]), sigma_data=st.sampled_from([0.1, 0.5]),
       clip=st.sampled_from([None, 1.0]))
def test_consistency_function_and_sampler_are_finite(sch, t, seed, dtype, steps, scale,
                                                     sigma_data, clip):
    c_skip, c_out = consistency.boundary_scalings(t, sigma_data=sigma_data, scale=scale)
    assert 0 < c_skip <= 1 and 0 <= c_out < 1 and all_finite([c_skip, c_out])
    den = GM.denoiser(sch)
    x = randn(seed, 6, 2, dtype=dtype)
    kw = {"sigma_data": sigma_data, "scale": scale}
    f = finite_or_singular(lambda: consistency.consistency_function(den, x, t, **kw))
    if t == 0:
        assert torch.equal(f, x)
    ts = consistency.lcm_time_grid(steps, original_steps=10)
    assert len(ts) == steps + 1 and ts[0] == 1 and ts[-1] == 0
    finite_or_singular(lambda: consistency.sample_consistency(
        den, x, ts[1:] if sch.name == "linear" else ts, clip_x0=clip,
        generator=torch.Generator().manual_seed(seed), **kw))


@covers("consistency.teacher_step", "consistency.consistency_distillation_loss")
@FEW
@given(sch=st.sampled_from(SCHEDULES[:3] + SCHEDULES[4:]), seed=seeds, dtype=dtypes,
       skip=st.integers(1, 10), groups=st.integers(1, 4),
       huber=st.sampled_from([None, 1e-3, 1.0]), t=st.floats(0.05, 0.95))
def test_consistency_loss_and_teacher_step_are_finite(sch, seed, dtype, skip, groups,
                                                      huber, t):
    den = GM.denoiser(sch)
    x = randn(seed, 8, 2, dtype=dtype)
    assert all_finite(consistency.teacher_step(den, x, t, t / 2))
    grid = torch.linspace(0, 0.95, 11)
    loss = consistency.consistency_distillation_loss(
        den, den, den, x, grid, skip=skip, groups=groups, huber_c=huber,
        generator=torch.Generator().manual_seed(seed))
    assert loss.dim() == 0 and math.isfinite(loss.item()) and loss.item() >= 0


@covers("lora.LoRALinear", "lora.LoRALinear.forward", "lora.LoRALinear.delta",
        "lora.LoRALinear.merged", "lora.LoRALinear.extra_repr", "lora.add_lora",
        "lora.lora_deltas", "lora.merge_deltas")
@FEW
@given(seed=seeds, rank=st.integers(1, 4), gamma=st.sampled_from([None, 0.5, 16.0]),
       c=st.floats(-3, 3), dtype=dtypes)
def test_lora_is_finite_and_merges_exactly(seed, rank, gamma, c, dtype):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(5, 4).to(dtype)
    ad = lora.LoRALinear(lin, rank, gamma, torch.Generator().manual_seed(seed))
    x = randn(seed, 3, 5, dtype=dtype)
    assert torch.equal(ad(x), lin(x)) and f"rank={rank}" in repr(ad)
    with torch.no_grad():
        ad.B.normal_(generator=torch.Generator().manual_seed(seed + 1))
    tol = 1e-4 if dtype == F32 else 1e-10
    torch.testing.assert_close(ad.merged()(x), ad(x), rtol=tol, atol=tol)
    assert all_finite(ad.delta())
    net = nets.MLP(2, hidden=8, depth=3).to(dtype)
    adapted = lora.add_lora(net, rank, gamma, torch.Generator().manual_seed(seed))
    deltas = lora.lora_deltas(adapted)
    merged = lora.merge_deltas(net, [deltas, deltas], [c, 0.0])
    assert all_finite(merged(randn(seed, 4, 2, dtype=dtype), 0.5))


def test_consistency_and_lora_bad_input():
    den = GM.denoiser(S.VPLinear())
    x = randn(0, 4, 2)
    for bad in (nan, inf, -0.1, 1.5):
        with pytest.raises(ValueError, match="t"):
            consistency.boundary_scalings(bad)
    for kw, word in [({"sigma_data": 0}, "sigma_data"), ({"scale": nan}, "scale")]:
        with pytest.raises(ValueError, match=word):
            consistency.consistency_function(den, x, 0.5, **kw)
    with pytest.raises(ValueError, match="x"):
        consistency.consistency_function(den, with_bad(x, 1, nan), 0.5)
    with pytest.raises(ValueError, match="steps"):
        consistency.lcm_time_grid(True)
    with pytest.raises(ValueError, match="generator"):
        consistency.sample_consistency(den, x, [1.0, 0.0], generator=3)
    with pytest.raises(ValueError, match="clip_x0"):
        consistency.sample_consistency(den, x, [1.0, 0.0], clip_x0=nan)
    with pytest.raises(ValueError, match="x0"):
        consistency.consistency_distillation_loss(den, den, den, with_bad(x, 0, inf),
                                                  [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="rank"):
        lora.add_lora(nets.MLP(2, hidden=8), rank=-1)




# === chapter II.9: PTQ4DM (helper 4 owns this section) ================================
@covers("quant.fake_quantize", "quant.search_step")
@SETTINGS
@given(seed=seeds, dtype=dtypes, bits=st.integers(2, 16),
       scale=st.sampled_from([0.0, 1e-6, 1.0, 1e4]), p=st.sampled_from([1.0, 2.0, 2.4]),
       n_grid=st.integers(1, 20), per_channel=st.booleans())
def test_quantiser_is_finite_idempotent_and_in_range(seed, dtype, bits, scale, p,
                                                    n_grid, per_channel):
    v = randn(seed, 3, 7, dtype=dtype) * scale
    delta = quant.search_step(v, bits, p=p, n_grid=n_grid,
                              channel_dim=0 if per_channel else None)
    assert all_finite(delta) and bool((delta > 0).all())
    assert delta.shape == ((3,) if per_channel else ())
    d = delta[:, None] if per_channel else float(delta)
    q = quant.fake_quantize(v, d, bits)
    assert all_finite(q) and q.dtype == dtype and q.shape == v.shape
    assert torch.equal(quant.fake_quantize(q, d, bits), q)
    k = q / (delta[:, None] if per_channel else delta).to(dtype)
    assert float(k.min()) >= -(2 ** (bits - 1)) - 1e-3
    assert float(k.max()) <= 2 ** (bits - 1) - 1 + 1e-3


@covers("quant.QuantLayer", "quant.QuantLayer.forward", "quant.QuantLayer.extra_repr",
        "quant.quantize_network", "quant.calibrate", "quant.calibration_raw",
        "quant.calibration_forward")
@FEW
@given(seed=seeds, w_bits=st.sampled_from([None, 4, 8]),
       a_bits=st.sampled_from([None, 4, 8]), n=st.integers(1, 9),
       batch=st.integers(1, 5), sch=schedules, forward=st.booleans())
def test_quantised_network_is_finite_after_calibration(seed, w_bits, a_bits, n, batch,
                                                       sch, forward):
    g = torch.Generator().manual_seed(seed)
    x0 = randn(seed, 6, 2)
    if forward:
        x, t = quant.calibration_forward(x0, sch, n, generator=g)
    else:
        x, t = quant.calibration_raw(x0, n, generator=g)
    assert x.shape == (n, 2) and t.shape == (n,) and all_finite([x, t])
    q = quant.calibrate(quant.quantize_network(mlp(), w_bits, a_bits), x, t,
                        batch_size=batch)
    with torch.no_grad():
        out = q(x, t)
    assert all_finite(out) and out.shape == x.shape
    layers = [m for m in q.modules() if isinstance(m, quant.QuantLayer)]
    assert layers and all(m.mode == "frozen" for m in layers)
    assert "w_bits" in layers[0].extra_repr()


@covers("quant.calibration_trajectory")
@FEW
@given(seed=seeds, mode=st.sampled_from(["uniform", "normal", "step"]),
       n=st.integers(1, 6), mu=st.floats(-1, 2), sigma=st.floats(1e-3, 2),
       oracle=st.booleans(), dtype=dtypes)
def test_calibration_trajectory_is_finite_and_on_the_grid(seed, mode, n, mu, sigma,
                                                         oracle, dtype):
    sch = S.VPLinear()
    den = GM.denoiser(sch) if oracle else param.Denoiser(mlp(), sch, "eps")
    ts = sampling.time_grid(n, 1.0, 0.01)
    noise = randn(seed, 5, 2, dtype=dtype)
    x, t, k = quant.calibration_trajectory(
        den, noise, ts, mode=mode, mu=mu, sigma=sigma, step=n - 1,
        generator=torch.Generator().manual_seed(seed))
    assert all_finite([x, t]) and x.shape == noise.shape and x.dtype == dtype
    assert bool(((k >= 0) & (k < n)).all())
    assert torch.allclose(t.double(), ts[k], atol=1e-6)


def _quant_bad_cases():
    """(argument, strategy of bad values, call) for dlib.quant."""
    x, t = randn(0, 8, 2), torch.rand(8, generator=torch.Generator().manual_seed(0))
    sch, den = S.VPLinear(), GM.denoiser(S.VPLinear())
    ts = sampling.time_grid(4, 1.0, 0.01)
    lin = torch.nn.Linear(2, 2)
    bad_bits = st.one_of(st.integers(max_value=1), st.integers(min_value=17),
                         st.booleans(), st.floats(), st.text(max_size=3))
    traj = quant.calibration_trajectory
    bad_v = st.one_of(  # any shape is a valid tensor to quantise
        st.none(), st.text(max_size=3), st.floats(), st.just(x.tolist()), nonfinite(x),
        st.just(x[:0]), st.just(x > 0), st.just(x.to(torch.complex64)))

    def qnet():
        return quant.quantize_network(mlp(), 8, 8)

    return [
        ("v", bad_v, lambda v: quant.fake_quantize(v, 0.1)),
        ("delta", bad_positive, lambda v: quant.fake_quantize(x, v)),
        ("delta", st.just(torch.zeros(3)), lambda v: quant.fake_quantize(x, v)),
        ("bits", bad_bits, lambda v: quant.fake_quantize(x, 0.1, v)),
        ("v", bad_v, lambda v: quant.search_step(v)),
        ("p", bad_positive, lambda v: quant.search_step(x, p=v)),
        ("n_grid", bad_counts, lambda v: quant.search_step(x, n_grid=v)),
        ("channel_dim", st.one_of(st.integers(max_value=-1), st.integers(2, 9),
                                  st.booleans(), st.text(max_size=2)),
         lambda v: quant.search_step(x, channel_dim=v)),
        ("layer", st.one_of(st.none(), st.just(torch.nn.SiLU()), st.integers()),
         lambda v: quant.QuantLayer(v)),
        ("w_bits", bad_bits, lambda v: quant.QuantLayer(lin, v)),
        ("a_bits", bad_bits, lambda v: quant.QuantLayer(lin, 8, v)),
        ("momentum", bad_fractions, lambda v: quant.QuantLayer(lin, momentum=v)),
        ("net", st.one_of(st.none(), st.integers(), st.just(torch.nn.SiLU())),
         lambda v: quant.quantize_network(v)),
        ("a_bits", bad_bits, lambda v: quant.quantize_network(mlp(), 8, v)),
        ("qnet", st.one_of(st.none(), st.just(mlp())),
         lambda v: quant.calibrate(v, x, t)),
        ("x", bad_batches(x), lambda v: quant.calibrate(qnet(), v, t)),
        ("t", st.one_of(st.just(t[:3]), st.just(t + 2), st.none(), st.just(t * nan)),
         lambda v: quant.calibrate(qnet(), x, v)),
        ("batch_size", bad_counts, lambda v: quant.calibrate(qnet(), x, t,
                                                               batch_size=v)),
        ("x0", bad_batches(x), lambda v: quant.calibration_raw(v, 4)),
        ("n", bad_counts, lambda v: quant.calibration_raw(x, v)),
        ("generator", bad_generators, lambda v: quant.calibration_raw(x, 4,
                                                                      generator=v)),
        ("schedule", bad_schedules, lambda v: quant.calibration_forward(x, v, 4)),
        ("t_range", st.sampled_from([(0.5, 0.2), (-1.0, 1.0), "0,1", None]),
         lambda v: quant.calibration_forward(x, sch, 4, t_range=v)),
        ("denoiser", bad_denoisers, lambda v: traj(v, x, ts)),
        ("noise", bad_batches(x), lambda v: traj(den, v, ts)),
        ("ts", bad_grids(), lambda v: traj(den, x, v)),
        ("mode", bad_options("uniform", "normal", "step"),
         lambda v: traj(den, x, ts, mode=v)),
        ("mu", st.sampled_from([nan, inf, None, "0.4"]),
         lambda v: traj(den, x, ts, mu=v)),
        ("sigma", bad_positive, lambda v: traj(den, x, ts, sigma=v)),
        ("step", st.one_of(st.none(), st.integers(max_value=-1), st.integers(4, 99),
                           st.booleans()),
         lambda v: traj(den, x, ts, mode="step", step=v)),
    ]


QUANT_BAD_LABELS = [
    "v", "delta", "delta", "bits", "v", "p", "n_grid", "channel_dim", "layer", "w_bits",
    "a_bits", "momentum", "net", "a_bits", "qnet", "x", "t", "batch_size", "x0", "n",
    "generator", "schedule", "t_range", "denoiser", "noise", "ts", "mode", "mu",
    "sigma", "step",
]


@pytest.mark.parametrize("index", range(len(QUANT_BAD_LABELS)),
                         ids=[f"{i}-{a}" for i, a in enumerate(QUANT_BAD_LABELS)])
@FEW
@given(data_=st.data())
def test_quant_bad_input_gives_a_value_error_naming_the_argument(index, data_):
    _check_bad_case(_quant_bad_cases()[index], QUANT_BAD_LABELS[index], data_)


# === Part III: dlib.discrete process, losses, samplers (helper 1 owns this section) ===


DZ = discrete  # dlib.discrete
D_SCHEDULES = [
    DZ.LinearKeep(), DZ.LinearKeep(1e-3), DZ.CosineKeep(), DZ.GeometricKeep()
]
d_schedules = st.sampled_from(D_SCHEDULES)
d_kinds = st.sampled_from(["uniform", "absorbing", "general"])
D_K = 3


def d_process(kind, sch):
    if kind == "general":
        Q = torch.tensor([[-1.0, 0.5, 0.5], [0.2, -0.3, 0.1], [1.0, 1.0, -2.0]])
        return DZ.DiscreteProcess(Q, sch)
    return getattr(DZ.DiscreteProcess, kind)(D_K, sch)


def d_net(seed, n_out):
    def fn(x_t, t):
        g = torch.Generator().manual_seed(seed + int(x_t.sum()))
        return 3 * torch.randn(x_t.shape + (n_out,), generator=g) + 0 * t[:, None, None]

    return fn


def d_denoiser(kind, sch, seed, den_kind="x0_logits"):
    p = d_process(kind, sch)
    n_out = p.n_states if den_kind == "concrete_score" else p.K
    return DZ.CategoricalDenoiser(d_net(seed, n_out), p, den_kind)


def d_tokens(seed, n_states, B=3, L=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_states, (B, L), generator=g)


def d_finite_or_singular(call):
    """Finite output, or a ValueError that says where it is singular (never NaN)."""
    try:
        out = call()
    except ValueError as err:
        assert re.search(r"\bt\b|alpha|infinite|sigma_bar|rate", str(err)), str(err)
        return None
    assert not has_nan(out), out
    return out


@covers(
    "discrete.KeepSchedule", "discrete.LinearKeep", "discrete.CosineKeep",
    "discrete.GeometricKeep", "process.KeepSchedule.alpha",
    "process.KeepSchedule.d_alpha", "process.KeepSchedule.sigma_bar",
    "process.KeepSchedule.rate", "process.KeepSchedule.log_snr",
    "process.KeepSchedule.elbo_weight",
)
@SETTINGS
@given(sch=d_schedules, t=times)
def test_discrete_schedules_are_never_nan(sch, t):
    for name in ["alpha", "d_alpha", "sigma_bar", "rate", "log_snr", "elbo_weight"]:
        v = getattr(sch, name)(t)
        assert v.dtype == F64 and not has_nan(v), (name, t, v)
    a = sch.alpha(torch.tensor([t, t], dtype=F64))
    assert bool(((a >= 0) & (a <= 1)).all())


@covers(
    "discrete.DiscreteProcess", "process.DiscreteProcess.uniform",
    "process.DiscreteProcess.absorbing", "process.DiscreteProcess.transition",
    "process.DiscreteProcess.marginal", "process.DiscreteProcess.sample_xt",
    "process.DiscreteProcess.prior", "process.DiscreteProcess.posterior",
    "process.DiscreteProcess.score_from_x0", "process.DiscreteProcess.reverse_rates",
    "discrete.sample_categorical",
)
@SETTINGS
@given(kind=d_kinds, sch=d_schedules, s=times, t=times, seed=seeds)
def test_discrete_process_is_never_nan(kind, sch, s, t, seed):
    s, t = min(s, t), max(s, t)
    p = d_process(kind, sch)
    g = torch.Generator().manual_seed(seed)
    x0 = d_tokens(seed, p.K)
    x_t = d_tokens(seed + 1, p.n_states)
    w = torch.softmax(torch.randn(3, 4, p.K, generator=g), -1)
    P = d_finite_or_singular(lambda: p.transition(s, t))
    if P is not None:
        assert torch.allclose(P.sum(-1), torch.ones(p.n_states, dtype=F64))
    d_finite_or_singular(lambda: p.marginal(x0, t))
    d_finite_or_singular(lambda: p.marginal(w, torch.full((3,), t)))
    d_finite_or_singular(lambda: p.sample_xt(x0, t, g))
    d_finite_or_singular(lambda: p.prior(4))
    if s < t:
        post = d_finite_or_singular(lambda: p.posterior(x_t, w, s, t))
        if post is not None:
            assert torch.allclose(post.sum(-1), torch.ones(3, 4, dtype=F64))
    d_finite_or_singular(lambda: p.score_from_x0(x_t, w, t))
    if t > 0:
        d_finite_or_singular(lambda: p.reverse_rates(x_t, t, w))
        score = torch.rand(3, 4, p.n_states, generator=g)
        d_finite_or_singular(lambda: p.reverse_rates(x_t, t, score=score))
    x = DZ.sample_categorical(w, g)
    assert x.shape == (3, 4) and bool(((x >= 0) & (x < p.K)).all())


@covers(
    "discrete.CategoricalDenoiser", "discrete.DENOISER_KINDS",
    "process.CategoricalDenoiser.x0_probs",
    "process.CategoricalDenoiser.concrete_score", "discrete.antithetic_times",
    "discrete.masked_elbo_loss",
    "discrete.score_entropy_loss", "discrete.d3pm_bound",
)
@SETTINGS
@given(kind=d_kinds, sch=d_schedules, den_kind=st.sampled_from(DZ.DENOISER_KINDS),
       t=times, seed=seeds)
def test_discrete_denoiser_and_losses_are_never_nan(kind, sch, den_kind, t, seed):
    den = d_denoiser(kind, sch, seed, den_kind)
    p = den.process
    x_t = d_tokens(seed, p.n_states)
    x0 = d_tokens(seed + 1, p.K)
    g = torch.Generator().manual_seed(seed)
    if den_kind == "x0_logits" or kind == "absorbing":
        probs = den.x0_probs(x_t, t)
        assert torch.allclose(probs.sum(-1), torch.ones(3, 4, dtype=F64))
    if t > 0:
        d_finite_or_singular(lambda: den.concrete_score(x_t, t))
    ts = DZ.antithetic_times(3, g, t_min=0.0)
    assert bool(((ts >= 0) & (ts < 1)).all())
    if kind == "absorbing":
        v = den_kind == "x0_logits" or t < 1
        out = d_finite_or_singular(lambda: DZ.masked_elbo_loss(den, x0, t, generator=g))
        assert out is not None and bool((out >= 0).all())
        out = d_finite_or_singular(lambda: DZ.score_entropy_loss(den, x0, ts,
                                                                 generator=g))
        assert out is not None or not v
    elif den_kind == "x0_logits" or t < 1:
        d_finite_or_singular(lambda: DZ.score_entropy_loss(den, x0, t, generator=g))
    if den_kind == "x0_logits":
        grid = sampling.time_grid(2, 1.0, 0.0)
        d_finite_or_singular(lambda: DZ.d3pm_bound(den, x0, grid, generator=g))


@covers("discrete.sample_ancestral", "discrete.sample_tau_leaping",
        "discrete.sample_tweedie", "discrete.sample_confidence")
@FEW
@given(kind=d_kinds, sch=d_schedules, den_kind=st.sampled_from(DZ.DENOISER_KINDS),
       n=st.integers(1, 4), t_end=st.sampled_from([0.0, 0.3]), seed=seeds,
       final=st.booleans())
def test_discrete_samplers_return_tokens(kind, sch, den_kind, n, t_end, seed, final):
    den = d_denoiser(kind, sch, seed, den_kind)
    p = den.process
    x = d_tokens(seed, p.n_states)
    ts = sampling.time_grid(n, 1.0, t_end) if t_end < 1 else None
    samplers = [DZ.sample_ancestral, DZ.sample_tau_leaping, DZ.sample_tweedie]
    if kind == "absorbing":
        samplers.append(DZ.sample_confidence)
    for sampler in samplers:
        if den_kind == "concrete_score" and kind != "absorbing" and (
            sampler is DZ.sample_ancestral
        ):
            continue  # needs clean-token probabilities
        den.nfe = 0
        out = d_finite_or_singular(lambda: sampler(
            den, x, ts, final_argmax=final, generator=torch.Generator().manual_seed(0)
        ))
        if out is None:
            continue
        assert out.shape == x.shape and out.dtype == torch.int64
        assert bool(((out >= 0) & (out < p.n_states)).all())
        assert n <= den.nfe <= n + 1
        if kind == "absorbing" and (t_end == 0.0 or final):
            assert not bool((out == p.mask_index).any()), sampler


def _discrete_bad_cases():
    sch = DZ.LinearKeep()
    p = DZ.DiscreteProcess.absorbing(D_K, sch)
    den = DZ.CategoricalDenoiser(d_net(0, D_K), p)
    x_t = d_tokens(0, p.n_states)
    x0 = d_tokens(1, D_K)
    w = torch.full((3, 4, D_K), 1 / D_K)
    grid = sampling.time_grid(2, 1.0, 0.0)
    bad_tok = st.one_of(
        st.just(x0.float()), st.just(x0[0]), st.just(x0 + 10), st.just(-x0 - 1),
        st.none(), st.text(max_size=3),
    )
    bad_t = st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).filter(
            lambda v: not 0 <= v <= 1
        ),
        st.none(), st.booleans(), st.text(max_size=3),
    )
    bad_gen = st.one_of(st.integers(), st.text(max_size=3), st.booleans())
    bad_flag = st.one_of(st.integers(), st.none(), st.text(max_size=3))
    not_fn = st.one_of(st.integers(), st.none(), st.text(max_size=3))
    return [
        ("probs", st.sampled_from([-w, w * nan, torch.zeros(3, 2), "p", None]),
         lambda v: DZ.sample_categorical(v)),
        ("log", bad_flag, lambda v: DZ.sample_categorical(w, log=v)),
        ("generator", bad_gen, lambda v: DZ.sample_categorical(w, v)),
        ("eps", st.sampled_from([-0.1, 1.0, nan, "a", None]),
         lambda v: DZ.LinearKeep(v)),
        ("sigma_min", st.sampled_from([0.0, -1.0, nan, None, 50.0]),
         lambda v: DZ.GeometricKeep(v, 20.0)),
        ("t", bad_t, lambda v: sch.alpha(v)),
        ("Q", st.sampled_from([torch.ones(2, 3), torch.ones(2, 2), -torch.eye(2),
                               torch.tensor([[-1.0, 1.0], [1.0, -2.0]]), "Q", None]),
         lambda v: DZ.DiscreteProcess(v, sch)),
        ("schedule", st.one_of(st.none(), st.just(S.VPLinear()), st.integers()),
         lambda v: DZ.DiscreteProcess.uniform(3, v)),
        ("K", bad_counts_d(), lambda v: DZ.DiscreteProcess.uniform(v, sch)),
        ("K", bad_counts_d(), lambda v: DZ.DiscreteProcess.absorbing(v, sch)),
        ("s", bad_t, lambda v: p.transition(v, 0.5)),
        ("t", bad_t, lambda v: p.transition(0.2, v)),
        ("x0", bad_tok, lambda v: p.marginal(v, 0.5)),
        ("t", bad_t, lambda v: p.marginal(x0, v)),
        ("generator", bad_gen, lambda v: p.sample_xt(x0, 0.5, v)),
        ("L", bad_counts_d(), lambda v: p.prior(v)),
        ("x_t", bad_tok, lambda v: p.posterior(v, w, 0.2, 0.5)),
        ("x0_probs", st.sampled_from([w * 2, w[:, :2], -w, "w", None,
                                      torch.full((3, 4, 4), 0.25)]),
         lambda v: p.posterior(x_t, v, 0.2, 0.5)),
        ("s", st.sampled_from([0.5, 0.9, nan, None]),
         lambda v: p.posterior(x_t, w, v, 0.5)),
        ("x_t", bad_tok, lambda v: p.score_from_x0(v, w, 0.5)),
        ("x0_probs", st.sampled_from([w * 2, -w, "w"]),
         lambda v: p.reverse_rates(x_t, 0.5, v)),
        ("score", st.sampled_from([-torch.ones(3, 4, 4), torch.ones(3, 4, 3), "s"]),
         lambda v: p.reverse_rates(x_t, 0.5, score=v)),
        ("fn", not_fn, lambda v: DZ.CategoricalDenoiser(v, p)),
        ("process", st.one_of(st.none(), st.just(sch), st.integers()),
         lambda v: DZ.CategoricalDenoiser(d_net(0, 3), v)),
        ("kind", st.sampled_from(["eps", "x0", "", None]),
         lambda v: DZ.CategoricalDenoiser(d_net(0, 3), p, v)),
        ("x_t", bad_tok, lambda v: den.x0_probs(v, 0.5)),
        ("t", bad_t, lambda v: den.concrete_score(x_t, v)),
        ("n", bad_counts_d(), lambda v: DZ.antithetic_times(v)),
        ("t_min", st.sampled_from([-0.1, 1.0, nan, None]),
         lambda v: DZ.antithetic_times(4, t_min=v)),
        ("denoiser", st.one_of(st.none(), st.just(p), st.just(DEN)),
         lambda v: DZ.masked_elbo_loss(v, x0, 0.5)),
        ("x0", bad_tok, lambda v: DZ.masked_elbo_loss(den, v, 0.5)),
        ("t", bad_t, lambda v: DZ.masked_elbo_loss(den, x0, v)),
        ("x_t", bad_tok.filter(lambda v: v is not None),  # None: drawn
         lambda v: DZ.score_entropy_loss(den, x0, 0.5, x_t=v)),
        ("generator", bad_gen, lambda v: DZ.score_entropy_loss(den, x0, 0.5,
                                                                generator=v)),
        ("ts", st.sampled_from([torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.5]),
                                [1.0], "ts", None]),
         lambda v: DZ.d3pm_bound(den, x0, v)),
        ("denoiser", st.one_of(st.none(), st.just(DEN)),
         lambda v: DZ.sample_ancestral(v, x_t, grid)),
        ("x", bad_tok, lambda v: DZ.sample_tau_leaping(den, v, grid)),
        ("ts", st.sampled_from([torch.tensor([0.0, 1.0]), [0.5], "ts", None]),
         lambda v: DZ.sample_tweedie(den, x_t, v)),
        ("final_argmax", bad_flag,
         lambda v: DZ.sample_confidence(den, x_t, grid, final_argmax=v)),
        ("temperature", st.sampled_from([-1.0, nan, inf, None]),
         lambda v: DZ.sample_confidence(den, x_t, grid, temperature=v)),
        ("generator", bad_gen, lambda v: DZ.sample_ancestral(den, x_t, grid,
                                                              generator=v)),
        ("callback", not_fn.filter(lambda v: v is not None),
         lambda v: DZ.sample_tau_leaping(den, x_t, grid, callback=v)),
    ]


def bad_counts_d():
    return st.one_of(st.integers(max_value=0), st.booleans(), st.floats(allow_nan=True),
                     st.text(max_size=3), st.none())


DISCRETE_BAD_LABELS = [
    "probs", "log", "generator", "eps", "sigma_min", "t", "Q", "schedule", "K", "K",
    "s", "t", "x0", "t", "generator", "L", "x_t", "x0_probs", "s", "x_t", "x0_probs",
    "score", "fn", "process", "kind", "x_t", "t", "n", "t_min", "denoiser", "x0", "t",
    "x_t", "generator", "ts", "denoiser", "x", "ts", "final_argmax", "temperature",
    "generator", "callback",
]


@pytest.mark.parametrize(
    "index", range(len(DISCRETE_BAD_LABELS)),
    ids=[f"{i}-{a}" for i, a in enumerate(DISCRETE_BAD_LABELS)],
)
@FEW
@given(data_=st.data())
def test_discrete_bad_input_gives_a_value_error_naming_the_argument(index, data_):
    _check_bad_case(_discrete_bad_cases()[index], DISCRETE_BAD_LABELS[index], data_)



# === Part III: discrete oracle and data generators (helper 2 owns this section) ======


def _tiny_hmm(seed: int, H: int = 2, K: int = 3, dtype=F64):
    """A random HMM with some zero transitions and emissions (from ``seed``)."""
    gen = torch.Generator().manual_seed(seed)
    init = torch.rand(H, generator=gen, dtype=F64) + 0.1
    T = torch.rand(H, H, generator=gen, dtype=F64) * (torch.rand(H, H, generator=gen)
                                                       > 0.3)
    T[:, 0] += 0.1  # every row keeps a positive entry
    E = torch.rand(H, K, generator=gen, dtype=F64) * (torch.rand(H, K, generator=gen)
                                                       > 0.3)
    E[torch.arange(H), torch.arange(H) % K] += 0.1
    norm = [init / init.sum(), T / T.sum(1, keepdim=True), E / E.sum(1, keepdim=True)]
    return discrete.HMM(*[p.to(dtype) for p in norm])


@covers(
    "discrete.HMM",
    "discrete.absorbing_likelihood",
    "discrete.uniform_likelihood",
    "oracle.HMM.sample",
    "oracle.HMM.log_prob",
    "oracle.HMM.is_valid",
    "oracle.HMM.hidden_posterior",
    "oracle.HMM.posterior",
    "oracle.HMM.posterior_from_evidence",
    "oracle.HMM.log_evidence",
    "oracle.HMM.stationary",
    "oracle.HMM.valid_bigrams",
    "oracle.HMM.invalid_bigrams",
    "oracle.HMM.invalid_bigram_rate",
)
@SETTINGS
@given(
    seed=seeds,
    shape=st.sampled_from([(1, 2, 1), (2, 3, 2), (3, 4, 5)]),
    alpha=times,
    kind=st.sampled_from(["absorbing", "uniform"]),
    dtype=st.sampled_from([F32, F64]),
)
def test_hmm_oracle_is_finite_and_normalised(seed, shape, alpha, kind, dtype):
    H, K, L = shape
    hmm = _tiny_hmm(seed, H, K, dtype)
    gen = torch.Generator().manual_seed(seed)
    x, h = hmm.sample(3, L, gen)
    assert x.dtype == h.dtype == torch.int64 and x.shape == h.shape == (3, L)
    lp = hmm.log_prob(x)
    assert all_finite(lp) and bool((lp <= 0).all()) and bool(hmm.is_valid(x).all())
    hp = hmm.hidden_posterior(x)
    assert all_finite(hp) and torch.allclose(hp.sum(-1), torch.ones(3, L, dtype=F64))
    make = (discrete.absorbing_likelihood if kind == "absorbing"
            else discrete.uniform_likelihood)
    lik = make(K, alpha)
    assert all_finite(lik) and torch.allclose(lik.sum(1), torch.ones(K, dtype=F64))
    per_seq = make(K, torch.full((3,), alpha, dtype=dtype))
    assert per_seq.shape == (3, *lik.shape) and all_finite(per_seq)
    x_t = torch.where(torch.rand(3, L, generator=gen) < alpha, x,
                      torch.full_like(x, K) if kind == "absorbing" else x.flip(-1))
    if kind == "uniform" and alpha == 1.0:
        x_t = x
    post = hmm.posterior(x_t, lik)
    assert all_finite(post) and post.shape == (3, L, K)
    assert torch.allclose(post.sum(-1), torch.ones(3, L, dtype=F64))
    assert all_finite(hmm.log_evidence(x_t, lik))
    assert all_finite(hmm.posterior(x_t, per_seq))
    ev = torch.rand(3, L, K, generator=gen, dtype=dtype) + 0.01
    assert all_finite(hmm.posterior_from_evidence(ev))
    mu = hmm.stationary()
    assert all_finite(mu) and abs(float(mu.sum()) - 1) < 1e-9
    valid = hmm.valid_bigrams()
    assert valid.shape == (K, K) and len(hmm.invalid_bigrams()) == int((~valid).sum())
    if L >= 2:
        assert hmm.invalid_bigram_rate(x) == 0.0


@covers(
    "oracle.HMM.language",
    "oracle.HMM.entropy",
    "oracle.HMM.entropy_rate",
    "oracle.HMM.enumerate_joint",
    "data.hmm_language",
)
@FEW
@given(
    n_hidden=st.integers(1, 4),
    vocab_size=st.integers(2, 8),
    stay=st.one_of(st.just(0.0), st.floats(0.0, 0.99)),
    seed=seeds,
)
def test_hmm_language_and_entropies_are_finite(n_hidden, vocab_size, stay, seed):
    hmm = discrete.HMM.language(n_hidden, vocab_size, stay, min(3, vocab_size),
                                min(1, n_hidden - 1), seed)
    gen = torch.Generator().manual_seed(seed)
    est, se = hmm.entropy(4, n=8, generator=gen)
    rate, se_rate = hmm.entropy_rate(n=4, length=16, burn_in=4, generator=gen)
    assert all_finite([est, se, rate, se_rate]) and min(est, se, rate, se_rate) >= 0
    xs, logp = hmm.enumerate_joint(2)
    assert xs.shape == (vocab_size**2, 2) and not bool(torch.isnan(logp).any())
    assert abs(float(logp.exp().sum()) - 1) < 1e-9
    x = data.hmm_language(4, 5, seed=seed, hmm=hmm)
    assert x.shape == (4, 5) and bool(((x >= 0) & (x < vocab_size)).all())


@covers(
    "data.WORD_PAD",
    "data.word_list",
    "data.words",
    "data.decode_words",
    "data.is_word",
)
@FEW
@given(
    split=st.sampled_from(["train", "test", "all"]),
    lengths=st.sampled_from([(1, 1), (3, 5), (2, 12)]),
    fraction=st.floats(0.05, 0.95),
    seed=seeds,
)
def test_words_are_tokens_of_dictionary_words(split, lengths, fraction, seed):
    lo, hi = lengths
    w = data.words(split, lo, hi, fraction, seed)
    assert w.dtype == torch.int64 and w.shape[1] == hi and len(w) > 0
    assert bool(((w >= 0) & (w <= data.WORD_PAD)).all())
    strings = data.decode_words(w[:50])
    assert bool(data.is_word(strings).all())
    assert all(lo <= len(s) <= hi for s in strings)
    assert set(strings) <= set(data.word_list(lo, hi))


@covers(
    "data.patch_codebook",
    "data.patch_encode",
    "data.patch_decode",
    "data.digit_tokens",
)
@FEW
@given(
    split=st.sampled_from(["train", "test", "all"]),
    config=st.sampled_from([(8, 2), (32, 2), (4, 1), (16, 4)]),
)
def test_digit_tokens_are_finite(split, config):
    n_codes, patch = config
    tok, y, cb = data.digit_tokens(split, n_codes, patch)
    assert tok.dtype == torch.int64 and tok.shape == (len(y), (8 // patch) ** 2)
    assert cb.shape == (n_codes, patch * patch) and all_finite(cb)
    assert torch.equal(data.patch_codebook(n_codes, patch), cb)
    img = data.patch_decode(tok, cb)
    assert img.shape == (len(y), 1, 8, 8) and all_finite(img)
    assert torch.equal(data.patch_encode(img, cb), tok)


def _oracle_bad_cases():
    """(function, argument, strategy of bad values, call) for the HMM oracle and the
    Part III data generators."""
    hmm = _tiny_hmm(0, 2, 3)
    x = torch.tensor([[0, 1, 2], [2, 1, 0]])
    lik = discrete.absorbing_likelihood(3, 0.5)
    init, T, E = hmm.initial, hmm.transition, hmm.emission
    tok, _, cb = data.digit_tokens("test", 8, 2)
    bad_tokens = st.one_of(
        st.none(), st.text(max_size=3), st.just(x.tolist()), st.just(x.double()),
        st.just(x > 0), st.just(x[0]), st.just(x[:0]), st.just(x + 3), st.just(-x - 1))
    bad_stochastic = st.one_of(
        st.none(), st.text(max_size=3), st.just(T * 2), st.just(-T), st.just(T[:1]),
        st.just(T * nan), st.just(torch.ones(3, 3) / 3))
    bad_prob = st.one_of(st.floats().filter(lambda v: not 0 <= v <= 1),
                         st.sampled_from([nan, None, "0.5", True]))
    return [
        ("HMM", "initial", st.one_of(st.just(init * 2), st.just(-init),
                                     st.just(init[:0]), st.just(init * inf), st.none()),
         lambda v: discrete.HMM(v, T, E)),
        ("HMM", "transition", bad_stochastic, lambda v: discrete.HMM(init, v, E)),
        ("HMM", "emission", st.one_of(st.just(E * 2), st.just(-E), st.just(E[:1]),
                                      st.just(E * nan), st.none()),
         lambda v: discrete.HMM(init, T, v)),
        ("language", "n_hidden", bad_counts, lambda v: discrete.HMM.language(v)),
        ("language", "vocab_size", bad_counts,
         lambda v: discrete.HMM.language(vocab_size=v)),
        ("language", "stay", bad_fractions, lambda v: discrete.HMM.language(stay=v)),
        ("language", "tokens_per_state", st.one_of(bad_counts, st.integers(25, 99)),
         lambda v: discrete.HMM.language(tokens_per_state=v)),
        ("language", "successors", st.one_of(
            st.integers(6, 99), st.integers(max_value=-1), st.booleans(), st.none()),
         lambda v: discrete.HMM.language(successors=v)),
        ("language", "seed", bad_seeds, lambda v: discrete.HMM.language(seed=v)),
        ("sample", "n", bad_counts, lambda v: hmm.sample(v, 3)),
        ("sample", "length", bad_counts, lambda v: hmm.sample(2, v)),
        ("sample", "generator", bad_generators, lambda v: hmm.sample(2, 3, v)),
        ("log_prob", "tokens", bad_tokens, lambda v: hmm.log_prob(v)),
        ("is_valid", "tokens", bad_tokens, lambda v: hmm.is_valid(v)),
        ("hidden_posterior", "tokens", bad_tokens, lambda v: hmm.hidden_posterior(v)),
        ("posterior", "x_t", st.one_of(bad_tokens, st.just(x + 4)),
         lambda v: hmm.posterior(v, lik)),
        ("posterior", "likelihood", st.one_of(
            st.none(), st.just(lik[:2]), st.just(-lik), st.just(lik * nan),
            st.just(lik[0])), lambda v: hmm.posterior(x, v)),
        ("log_evidence", "likelihood", st.one_of(st.just(lik.T), st.just(lik * inf)),
         lambda v: hmm.log_evidence(x, v)),
        ("posterior_from_evidence", "evidence", st.one_of(
            st.none(), st.just(lik), st.just(-torch.ones(1, 2, 3)),
            st.just(torch.ones(1, 2, 4)), st.just(torch.full((1, 2, 3), nan))),
         lambda v: hmm.posterior_from_evidence(v)),
        ("invalid_bigram_rate", "tokens", st.one_of(bad_tokens, st.just(x[:, :1])),
         lambda v: hmm.invalid_bigram_rate(v)),
        ("entropy", "length", bad_counts, lambda v: hmm.entropy(v)),
        ("entropy", "n", st.one_of(bad_counts, st.just(1)),
         lambda v: hmm.entropy(3, v)),
        ("entropy_rate", "burn_in", st.one_of(st.integers(max_value=-1),
                                              st.integers(16, 99), st.none()),
         lambda v: hmm.entropy_rate(4, 16, v)),
        ("entropy_rate", "generator", bad_generators,
         lambda v: hmm.entropy_rate(4, 16, 2, v)),
        ("enumerate_joint", "length", st.one_of(bad_counts, st.integers(9, 99)),
         lambda v: hmm.enumerate_joint(v)),
        ("absorbing_likelihood", "alpha", st.one_of(
            bad_prob, st.just(torch.tensor([0.5, 1.5])), st.just(torch.ones(2, 2)),
            st.just(torch.tensor([nan])), st.just(torch.tensor([1, 0]))),
         lambda v: discrete.absorbing_likelihood(3, v)),
        ("posterior", "likelihood", st.just(lik.expand(3, 3, 4)),
         lambda v: hmm.posterior(x, v)),
        ("uniform_likelihood", "vocab_size", bad_counts,
         lambda v: discrete.uniform_likelihood(v, 0.5)),
        ("hmm_language", "n", bad_counts, lambda v: data.hmm_language(v)),
        ("hmm_language", "seed", bad_seeds, lambda v: data.hmm_language(2, seed=v)),
        ("hmm_language", "hmm", st.one_of(st.integers(), st.text(max_size=3)),
         lambda v: data.hmm_language(2, hmm=v)),
        ("words", "split", bad_options("train", "test", "all"),
         lambda v: data.words(v)),
        ("words", "max_length", st.one_of(st.just(2), bad_counts),
         lambda v: data.words(min_length=3, max_length=v)),
        ("word_list", "min_length", bad_counts, lambda v: data.word_list(v)),
        ("decode_words", "tokens", st.one_of(
            st.none(), st.just(x[0]), st.just(x.double()), st.just(x + 30)),
         lambda v: data.decode_words(v)),
        ("is_word", "strings", st.one_of(st.just("word"), st.just([1, 2]),
                                         st.just(["a", None])),
         lambda v: data.is_word(v)),
        ("patch_codebook", "n_codes", st.one_of(bad_counts, st.integers(1025, 2000)),
         lambda v: data.patch_codebook(v)),
        ("patch_codebook", "patch", st.one_of(bad_counts, st.sampled_from([3, 5, 16])),
         lambda v: data.patch_codebook(8, v)),
        ("patch_encode", "images", st.one_of(
            st.none(), st.just(torch.zeros(2, 1, 4, 4)), st.just(torch.zeros(2, 63)),
            st.just(torch.full((2, 64), nan)),
            st.just(torch.zeros(2, 64, dtype=torch.long))),
         lambda v: data.patch_encode(v, cb)),
        ("patch_encode", "codebook", st.one_of(
            st.none(), st.just(cb[:, :3]), st.just(cb[0]), st.just(cb * nan)),
         lambda v: data.patch_encode(torch.zeros(2, 64), v)),
        ("patch_decode", "tokens", st.one_of(
            st.none(), st.just(tok[:, :15]), st.just(tok.double()), st.just(tok + 8)),
         lambda v: data.patch_decode(v, cb)),
        ("digit_tokens", "split", bad_options("train", "test", "all"),
         lambda v: data.digit_tokens(v)),
    ]


ORACLE_BAD_LABELS = [
    "HMM-initial", "HMM-transition", "HMM-emission", "language-n_hidden",
    "language-vocab_size", "language-stay", "language-tokens_per_state",
    "language-successors", "language-seed", "sample-n", "sample-length",
    "sample-generator", "log_prob-tokens", "is_valid-tokens",
    "hidden_posterior-tokens", "posterior-x_t", "posterior-likelihood",
    "log_evidence-likelihood", "posterior_from_evidence-evidence",
    "invalid_bigram_rate-tokens", "entropy-length", "entropy-n",
    "entropy_rate-burn_in", "entropy_rate-generator", "enumerate_joint-length",
    "absorbing_likelihood-alpha", "posterior-likelihood",
    "uniform_likelihood-vocab_size", "hmm_language-n",
    "hmm_language-seed", "hmm_language-hmm", "words-split", "words-max_length",
    "word_list-min_length", "decode_words-tokens", "is_word-strings",
    "patch_codebook-n_codes", "patch_codebook-patch", "patch_encode-images",
    "patch_encode-codebook", "patch_decode-tokens", "digit_tokens-split",
]


@pytest.mark.parametrize("index", range(len(ORACLE_BAD_LABELS)),
                         ids=[f"{i}-{a}" for i, a in enumerate(ORACLE_BAD_LABELS)])
@FEW
@given(data_=st.data())
def test_oracle_bad_input_gives_a_value_error_naming_the_argument(index, data_):
    _check_bad_case(_oracle_bad_cases()[index], ORACLE_BAD_LABELS[index], data_)



# === Part III: nets.TokenTransformer (helper 3 owns this section) ==========
@lru_cache(maxsize=None)
def token_net(positions, timed, causal, mask_token, out_dim=None):
    torch.manual_seed(0)
    return nets.TokenTransformer(
        5, 6, out_dim, mask_token=mask_token, d_model=8, depth=2, heads=2,
        mlp_ratio=2, positions=positions, time=timed, causal=causal,
    )


@covers("nets.TokenTransformer", "nets.TokenTransformer.forward",
        "nets.TokenTransformer.extra_repr")
@SETTINGS
@given(seed=seeds, t=times, batch=st.integers(0, 3), length=st.integers(1, 6),
       positions=st.sampled_from(["learned", "sinusoidal", None]),
       timed=st.booleans(), causal=st.booleans(), mask_token=st.booleans(),
       out_dim=st.sampled_from([None, 1, 6]),
       t_shape=st.sampled_from(["scalar", "batch", "token", "none"]),
       soft=st.sampled_from([None, F32, F64]),
       scale=st.sampled_from([0.0, 1.0, 1e3]))
def test_token_transformer_is_finite(seed, t, batch, length, positions, timed, causal,
                                     mask_token, out_dim, t_shape, soft, scale):
    net = token_net(positions, timed, causal, mask_token, out_dim)
    V = net.in_vocab
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (batch, length), generator=gen)
    if soft is not None:  # token weights: scaled probability vectors
        w = torch.rand(batch, length, V, generator=gen, dtype=soft) + 0.01
        x = scale * w / w.sum(-1, keepdim=True)
    tt = {"scalar": t, "batch": torch.full((batch,), t),
          "token": torch.rand(batch, length, generator=gen), "none": None}[t_shape]
    if timed and tt is None:
        tt = t
    with torch.no_grad():
        out = net(x, tt)
    assert out.shape == (batch, length, out_dim or 5)
    assert out.dtype == (soft or F32) and all_finite(out)
    assert net.mask_index == (5 if mask_token else None)
    assert "params=" in repr(net)


TOK = torch.zeros(2, 6, dtype=torch.int64)
TOKEN_BAD = [
    ("TokenTransformer", "vocab_size", st.sampled_from([0, -1, 1.5, "5", None, True]),
     lambda v: nets.TokenTransformer(v, 6)),
    ("TokenTransformer", "seq_len", st.sampled_from([0, -1, 1.5, "6", None]),
     lambda v: nets.TokenTransformer(5, v)),
    ("TokenTransformer", "out_dim", st.sampled_from([0, -2, 2.5, "5"]),
     lambda v: nets.TokenTransformer(5, 6, v)),
    ("TokenTransformer", "mask_token", st.sampled_from([1, 0, "yes", None]),
     lambda v: nets.TokenTransformer(5, 6, mask_token=v)),
    ("TokenTransformer", "d_model", st.sampled_from([0, 7, 2.0, "64", None]),
     lambda v: nets.TokenTransformer(5, 6, d_model=v)),
    ("TokenTransformer", "depth", st.sampled_from([0, -1, 1.5, None]),
     lambda v: nets.TokenTransformer(5, 6, depth=v)),
    ("TokenTransformer", "heads", st.sampled_from([0, 3, 5, 1.0, None]),
     lambda v: nets.TokenTransformer(5, 6, d_model=8, heads=v)),
    ("TokenTransformer", "mlp_ratio", st.sampled_from([0, 1.5, "4", None]),
     lambda v: nets.TokenTransformer(5, 6, mlp_ratio=v)),
    ("TokenTransformer", "positions", st.sampled_from(["rope", "", 1, True]),
     lambda v: nets.TokenTransformer(5, 6, positions=v)),
    ("TokenTransformer", "time", st.sampled_from([1, "t", None]),
     lambda v: nets.TokenTransformer(5, 6, time=v)),
    ("TokenTransformer", "causal", st.sampled_from([1, "t", None]),
     lambda v: nets.TokenTransformer(5, 6, causal=v)),
    ("TokenTransformer.forward", "tokens",
     st.sampled_from([None, "x", TOK.tolist(), TOK[0], TOK > 0, TOK + 5, TOK - 1,
                      torch.zeros(2, 7, dtype=torch.int64), TOK[:, :0],
                      torch.zeros(2, 6, 6), torch.full((2, 6, 5), nan),
                      torch.zeros(2, 6, dtype=torch.complex64)]),
     lambda v: token_net("learned", True, False, False)(v, 0.5)),
    ("TokenTransformer.forward", "t",
     st.sampled_from([None, -0.5, 1.5, nan, "t", True, torch.rand(3), torch.rand(2, 5),
                      torch.full((2, 6), nan), torch.ones(2, 6, 1)]),
     lambda v: token_net("learned", True, False, False)(TOK, v)),
]


@pytest.mark.parametrize(
    "label, arg, values, call", TOKEN_BAD, ids=[f"{b[0]}-{b[1]}" for b in TOKEN_BAD]
)
@FEW
@given(data_=st.data())
def test_token_transformer_bad_input_names_the_argument(label, arg, values, call,
                                                        data_):
    value = data_.draw(values, label=arg)
    with pytest.raises(ValueError) as info:
        call(value)
    assert _names_argument(str(info.value), arg), (label, arg, value, str(info.value))


# === chapter III.1: discrete foundations additions (III.1 helper owns this section) ===
@covers("discrete.score_entropy_loss")
@SETTINGS
@given(kind=st.sampled_from(["uniform", "general"]), sch=d_schedules,
       den_kind=st.sampled_from(DZ.DENOISER_KINDS), seed=seeds,
       t_min=st.sampled_from([0.0, 1e-3, 0.5]))
def test_score_entropy_with_a_batch_of_times_is_one_call_and_never_nan(
    kind, sch, den_kind, seed, t_min
):
    """Chapter III.1 trains the uniform chain with one time per sequence: one network
    call for the batch; the loss is finite and >= 0, or a ValueError that names the
    singular time (never NaN)."""
    den = d_denoiser(kind, sch, seed, den_kind)
    x0 = d_tokens(seed + 1, den.process.K)
    g = torch.Generator().manual_seed(seed)
    ts = DZ.antithetic_times(3, g, t_min=t_min)
    out = d_finite_or_singular(lambda: DZ.score_entropy_loss(den, x0, ts, generator=g))
    if out is not None:
        assert out.shape == (3,) and bool((out >= -1e-9).all())
        assert den.nfe == 1
    with pytest.raises(ValueError, match=r"\bt\b"):
        DZ.score_entropy_loss(den, x0, torch.full((2,), 0.5), generator=g)



# === chapter III.2: dlib.discrete.lsd and the countdown data (III.2 helper owns this) =

def lsd_denoiser(seed, K=3):
    """A small context-dependent absorbing model (logits from the left neighbour)."""
    emb = torch.randn(K + 1, K, generator=torch.Generator().manual_seed(seed))

    def fn(x, t):
        return emb[torch.nn.functional.pad(x[:, :-1], (1, 0), value=K)]

    return discrete.CategoricalDenoiser(
        fn, discrete.DiscreteProcess.absorbing(K, discrete.LinearKeep(1e-3)))


@covers("data.countdown", "data.countdown_error")
@FEW
@given(n=st.integers(1, 5), length=st.integers(2, 12), values=st.integers(2, 9),
       seed=seeds, reference=st.booleans())
def test_countdown_is_valid_and_its_error_is_a_rate(n, length, values, seed,
                                                     reference):
    x = data.countdown(n, length, values, seed=seed)
    assert x.shape == (n, length) and x.dtype == torch.int64
    assert bool(((x >= 0) & (x < values)).all())
    assert torch.equal(data.countdown_error(x, reference=reference),
                       torch.zeros(n, dtype=F64))
    noisy = (x + torch.randint(0, 2, x.shape,
                               generator=torch.Generator().manual_seed(seed))) % (
        values + 1)
    e = data.countdown_error(noisy, values=values, reference=reference)
    assert e.shape == (n,) and all_finite(e) and bool(((e >= 0) & (e <= 1)).all())


@covers("discrete.lsd_noise", "discrete.sample_lsd", "discrete.step_times",
        "discrete.least_squares_factor", "discrete.distill_lsd", "discrete.LSDResult")
@FEW
@given(seed=seeds, M=st.integers(1, 4), exponent=st.booleans(),
       final=st.booleans(), scale=st.sampled_from([0.0, 0.5, 1.0, 3.0]),
       theta_scale=st.sampled_from([0.0, 1.0, 30.0]),
       t_end=st.sampled_from([0.0, 1e-3, 0.5]))
def test_lsd_pieces_are_finite(seed, M, exponent, final, scale, theta_scale, t_end):
    den = lsd_denoiser(seed)
    g = torch.Generator().manual_seed(seed)
    u, gum = discrete.lsd_noise((2, 5), 3, g)
    assert all_finite(u) and all_finite(gum) and u.dtype == gum.dtype == F64
    theta = theta_scale * torch.randn(M, generator=g, dtype=F64)
    ts = discrete.step_times(theta, t_end=t_end)
    assert ts.shape == (M + 1,) and all_finite(ts) and ts[-1].item() == t_end
    assert bool((ts[1:] < ts[:-1]).all()) and ts[0].item() == 1.0
    x = torch.full((2, 5), 3)
    out = discrete.sample_lsd(den, x, ts, torch.full((M,), scale), noise=(u, gum),
                              exponent=exponent, final_argmax=final)
    assert out.shape == x.shape and bool(((out >= 0) & (out <= 3)).all())
    if final or t_end == 0.0:
        assert not bool((out == 3).any())
    a = discrete.least_squares_factor(torch.randn(4, generator=g),
                                      scale * torch.randn(4, generator=g))
    assert all_finite(a)
    res = discrete.distill_lsd(den, M, 5, batch_size=4, teacher_substeps=2,
                               iters=int(seed % 2), learn_times=bool(seed % 2),
                               relax=0.2 * (seed % 3 == 0), generator=g)
    assert isinstance(res, discrete.LSDResult)
    assert all_finite(res.factors) and all_finite(res.ts) and all_finite(
        res.closed_form)
    assert res.factors.shape == (M,) and res.ts.shape == (M + 1,)


def _lsd_bad_cases():
    den = lsd_denoiser(0)
    x = torch.full((2, 5), 3)
    grid = [1.0, 0.5, 0.0]
    noise = discrete.lsd_noise((2, 5), 3, torch.Generator().manual_seed(0))
    uniform_den = discrete.CategoricalDenoiser(
        lambda x_, t: torch.zeros(x_.shape + (3,)),
        discrete.DiscreteProcess.uniform(3, discrete.LinearKeep(1e-3)))
    counts = st.one_of(st.integers(max_value=0), st.booleans(), st.none(),
                       st.text(max_size=2), st.floats(allow_nan=True))
    return [
        ("countdown", "n", counts, lambda v: data.countdown(v)),
        ("countdown", "length", counts, lambda v: data.countdown(2, v)),
        ("countdown", "values", st.sampled_from([1, 0, -3, 2.5, None, True]),
         lambda v: data.countdown(2, 8, v)),
        ("countdown", "seed", st.sampled_from([-1, 2**40, 1.5, None, "s"]),
         lambda v: data.countdown(2, seed=v)),
        ("countdown_error", "tokens",
         st.sampled_from([None, "x", [[1, 0]], torch.zeros(3, 4),
                          torch.zeros(4, dtype=torch.int64), torch.zeros(
                              0, 4, dtype=torch.int64), torch.zeros(
                              3, 1, dtype=torch.int64), -torch.ones(
                              2, 3, dtype=torch.int64)]),
         lambda v: data.countdown_error(v)),
        ("countdown_error", "values", st.sampled_from([1, 0, 2.5, "8", True]),
         lambda v: data.countdown_error(x, values=v)),
        ("countdown_error", "reference", st.sampled_from([1, "yes", None]),
         lambda v: data.countdown_error(x, reference=v)),
        ("lsd_noise", "shape", st.sampled_from([(2,), (2, 0), "ab", None, (2, 2.5),
                                                (True, 3), (1, 2, 3)]),
         lambda v: discrete.lsd_noise(v, 3)),
        ("lsd_noise", "K", counts, lambda v: discrete.lsd_noise((2, 5), v)),
        ("sample_lsd", "denoiser", st.sampled_from([None, "den", uniform_den]),
         lambda v: discrete.sample_lsd(v, x, grid)),
        ("sample_lsd", "x", st.sampled_from([None, x.float(), x[0], x + 5, -x]),
         lambda v: discrete.sample_lsd(den, v, grid)),
        ("sample_lsd", "ts", st.sampled_from([None, [0.0, 1.0], [1.0], [1.5, 0.0],
                                              [1.0, nan], "ts"]),
         lambda v: discrete.sample_lsd(den, x, v)),
        ("sample_lsd", "factors", st.sampled_from([[1.0], [1.0, -1.0], [nan, 1.0],
                                                   "f", torch.ones(2, 2)]),
         lambda v: discrete.sample_lsd(den, x, grid, v)),
        ("sample_lsd", "noise", st.sampled_from([(noise[0],), (noise[0][:1], noise[1]),
                                                 (noise[0].float(), noise[1].float()),
                                                 (noise[0] + 2, noise[1]), "n"]),
         lambda v: discrete.sample_lsd(den, x, grid, noise=v)),
        ("sample_lsd", "exponent", st.sampled_from([1, "yes", None]),
         lambda v: discrete.sample_lsd(den, x, grid, exponent=v)),
        ("step_times", "params", st.sampled_from([None, torch.zeros(0), torch.zeros(
            2, 2), torch.tensor([nan, 0.0]), torch.zeros(3, dtype=torch.int64), "p"]),
         lambda v: discrete.step_times(v)),
        ("step_times", "t_end", st.sampled_from([1.0, 1.5, -0.1, nan, "t", None]),
         lambda v: discrete.step_times(torch.zeros(3), t_end=v)),
        ("least_squares_factor", "target", st.sampled_from([None, torch.zeros(3),
                                                            torch.full((4,), nan)]),
         lambda v: discrete.least_squares_factor(v, torch.ones(4))),
        ("least_squares_factor", "student", st.sampled_from([None, "s", torch.full(
            (4,), inf)]),
         lambda v: discrete.least_squares_factor(torch.ones(4), v)),
        ("distill_lsd", "denoiser", st.sampled_from([None, uniform_den]),
         lambda v: discrete.distill_lsd(v, 2, 5)),
        ("distill_lsd", "steps", counts, lambda v: discrete.distill_lsd(den, v, 5)),
        ("distill_lsd", "length", counts, lambda v: discrete.distill_lsd(den, 2, v)),
        ("distill_lsd", "teacher_substeps", counts,
         lambda v: discrete.distill_lsd(den, 2, 5, teacher_substeps=v)),
        ("distill_lsd", "batch_size", counts,
         lambda v: discrete.distill_lsd(den, 2, 5, batch_size=v)),
        ("distill_lsd", "iters", st.sampled_from([-1, 1.5, None, "3"]),
         lambda v: discrete.distill_lsd(den, 2, 5, iters=v)),
        ("distill_lsd", "lr", st.sampled_from([0.0, -1.0, nan, None, "lr"]),
         lambda v: discrete.distill_lsd(den, 2, 5, iters=1, lr=v)),
        ("distill_lsd", "relax", st.sampled_from([-0.1, 1.5, nan, None, "r"]),
         lambda v: discrete.distill_lsd(den, 2, 5, relax=v)),
        ("distill_lsd", "learn_times", st.sampled_from([1, "yes", None, True]),
         lambda v: discrete.distill_lsd(den, 2, 5, learn_times=v)),
    ]


LSD_BAD = _lsd_bad_cases()


@pytest.mark.parametrize("case", LSD_BAD, ids=[f"{c[0]}-{c[1]}" for c in LSD_BAD])
@FEW
@given(data_=st.data())
def test_lsd_bad_input_names_the_argument(case, data_):
    _check_bad_case(case, f"{case[0]}-{case[1]}", data_)



# === chapter III.3: dlib.discrete.aps (III.3 helper owns this section) ================
APS_OPERATORS = [operators.Downsample(2), operators.Downsample(4),
                 operators.BoxInpaint(1, 2, 3), operators.GaussianBlur(0.8),
                 operators.GaussianBlur(1.3, radius=1), operators.TanhBlur(2.0, 0.7)]


@covers("operators.Operator", "operators.Operator.adjoint", "operators.Downsample",
        "operators.BoxInpaint", "operators.BoxInpaint.mask", "operators.GaussianBlur",
        "operators.GaussianBlur.kernel", "operators.TanhBlur", "operators.measure",
        "operators.residual_loss")
@SETTINGS
@given(seed=seeds, op=st.sampled_from(APS_OPERATORS), batch=st.integers(0, 3),
       channels=st.integers(1, 3), dtype=dtypes,
       scale=st.sampled_from([0.0, 1.0, 1e3]),
       sigma_y=st.sampled_from([0.0, 1e-3, 0.1, 10.0]))
def test_operators_are_finite(seed, op, batch, channels, dtype, scale, sigma_y):
    x = scale * randn(seed, batch, channels, 8, 8, dtype=dtype)
    y = op(x)
    assert y.dtype == dtype and all_finite(y) and y.shape[:2] == x.shape[:2]
    g = torch.Generator().manual_seed(seed)
    noisy = operators.measure(op, x, sigma_y, g)
    assert noisy.shape == y.shape and all_finite(noisy)
    loss = operators.residual_loss(op, x, noisy, max(sigma_y, 1e-3))
    assert loss.shape == (batch,) and all_finite(loss) and bool((loss >= 0).all())
    if op.linear:
        back = op.adjoint(y)
        assert back.shape == x.shape and all_finite(back)
    if isinstance(op, operators.BoxInpaint):
        assert set(op.mask(x).unique().tolist()) <= {0.0, 1.0}
    if isinstance(op, operators.GaussianBlur):
        assert abs(float(op.kernel(dtype).sum()) - 1) < 1e-5
    assert isinstance(repr(op), str)


@lru_cache(maxsize=None)
def _aps_setup():
    _, _, cb = data.digit_tokens("test")
    table = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    proc = discrete.DiscreteProcess.absorbing(32, discrete.LinearKeep())
    den = discrete.CategoricalDenoiser(lambda x, t: 3.0 * table.expand(len(x), -1, -1),
                                       proc)
    return cb, den


@covers("discrete.GUIDANCE", "discrete.REMASKING", "discrete.CANDIDATES",
        "discrete.decode_patches", "discrete.nearest_code",
        "discrete.expected_embedding", "discrete.guide_logits",
        "discrete.sample_aps", "discrete.sample_best_of_n")
@FEW
@given(seed=seeds, batch=st.integers(1, 3), scale=st.sampled_from([0.0, 1.0, 1e3]),
       guidance=st.sampled_from(discrete.GUIDANCE),
       remask=st.sampled_from(discrete.REMASKING),
       candidate=st.sampled_from(discrete.CANDIDATES),
       steps=st.integers(0, 3), kl_weight=st.sampled_from([0.0, 1.0, 1e3]))
def test_aps_is_finite(seed, batch, scale, guidance, remask, candidate, steps,
                       kl_weight):
    cb, den = _aps_setup()
    logits = scale * randn(seed, batch, 16, 32, dtype=F64)
    probs = torch.softmax(logits, -1)
    for quantize in (True, False):
        v = discrete.expected_embedding(probs, cb, quantize=quantize)
        assert v.shape == (batch, 16, 4) and all_finite(v)
    img = discrete.decode_patches(v)
    assert img.shape == (batch, 1, 8, 8) and all_finite(img)
    k = discrete.nearest_code(v, cb)
    assert k.shape == (batch, 16) and bool(((k >= 0) & (k < 32)).all())
    y = operators.Downsample(2)(img).detach() + 0.1

    def energy(e):
        return operators.residual_loss(operators.Downsample(2),
                                       discrete.decode_patches(e), y, 0.1)

    z, hist = discrete.guide_logits(logits, energy, cb, guidance=guidance,
                                    steps=steps, kl_weight=kl_weight)
    assert z.shape == logits.shape and all_finite(z) and all(map(math.isfinite, hist))
    g = torch.Generator().manual_seed(seed)
    x = torch.full((batch, 16), 32)
    out = discrete.sample_aps(den, x, [1.0, 0.6, 0.0], energy=energy, codebook=cb,
                              guidance=guidance, remask=remask, candidate=candidate,
                              inner_steps=steps, kl_weight=kl_weight, generator=g)
    assert out.shape == x.shape and bool(((out >= 0) & (out < 32)).all())
    best = discrete.sample_best_of_n(den, x, [1.0, 0.0], energy=energy, codebook=cb,
                                     n=2, generator=g)
    assert best.shape == x.shape and bool(((best >= 0) & (best < 32)).all())


def _aps_bad_cases():
    cb, den = _aps_setup()
    x = torch.full((2, 16), 32)
    img = torch.zeros(2, 1, 8, 8)

    def energy(e):
        return e.sum((1, 2))

    def run(**kw):
        args = dict(energy=energy, codebook=cb)
        args.update(kw)
        return discrete.sample_aps(den, x, [1.0, 0.0], **args)

    return [
        ("Downsample", "factor", bad_counts, lambda v: operators.Downsample(v)),
        ("BoxInpaint", "size", bad_counts, lambda v: operators.BoxInpaint(0, 0, v)),
        ("GaussianBlur", "sigma", bad_positive, lambda v: operators.GaussianBlur(v)),
        ("TanhBlur", "gain", bad_positive, lambda v: operators.TanhBlur(v)),
        ("Operator", "x", st.sampled_from([None, torch.zeros(2, 8, 8),
                                           torch.zeros(1, 1, 8, 4),
                                           torch.zeros(1, 1, 8, 8, dtype=torch.long),
                                           torch.full((1, 1, 8, 8), nan)]),
         lambda v: operators.GaussianBlur(1.0)(v)),
        ("measure", "sigma_y", st.sampled_from([-1.0, nan, inf, "0.1", None]),
         lambda v: operators.measure(operators.Downsample(2), img, v)),
        ("measure", "operator", st.sampled_from([None, "blur", lambda z: z]),
         lambda v: operators.measure(v, img, 0.1)),
        ("residual_loss", "y", st.sampled_from([None, torch.zeros(2, 1, 8, 8)]),
         lambda v: operators.residual_loss(operators.Downsample(2), img, v, 0.1)),
        ("decode_patches", "e", st.sampled_from([None, torch.zeros(2, 15, 4),
                                                 torch.zeros(2, 16, 3),
                                                 torch.zeros(16, 4)]),
         lambda v: discrete.decode_patches(v)),
        ("expected_embedding", "probs", st.sampled_from([None, torch.ones(2, 5),
                                                         torch.full((2, 32), nan)]),
         lambda v: discrete.expected_embedding(v, cb)),
        ("nearest_code", "codebook", st.sampled_from([None, torch.zeros(4),
                                                      torch.full((3, 4), nan)]),
         lambda v: discrete.nearest_code(torch.zeros(2, 4), v)),
        ("guide_logits", "lr", bad_positive,
         lambda v: discrete.guide_logits(torch.zeros(1, 16, 32), energy, cb, lr=v)),
        ("guide_logits", "steps", st.sampled_from([-1, 1.5, None, "3"]),
         lambda v: discrete.guide_logits(torch.zeros(1, 16, 32), energy, cb, steps=v)),
        ("sample_aps", "guidance", bad_options(*discrete.GUIDANCE),
         lambda v: run(guidance=v)),
        ("sample_aps", "remask", bad_options(*discrete.REMASKING),
         lambda v: run(remask=v)),
        ("sample_aps", "candidate", bad_options(*discrete.CANDIDATES),
         lambda v: run(candidate=v)),
        ("sample_aps", "energy", not_callables, lambda v: run(energy=v)),
        ("sample_aps", "kl_weight", st.sampled_from([-1.0, nan, inf, None]),
         lambda v: run(kl_weight=v)),
        ("sample_aps", "generator", bad_generators, lambda v: run(generator=v)),
        ("sample_best_of_n", "n", bad_counts,
         lambda v: discrete.sample_best_of_n(den, x, [1.0, 0.0], energy=energy,
                                             codebook=cb, n=v)),
    ]


APS_BAD_LABELS = [
    "Downsample-factor", "BoxInpaint-size", "GaussianBlur-sigma", "TanhBlur-gain",
    "Operator-x", "measure-sigma_y", "measure-operator", "residual_loss-y",
    "decode_patches-e", "expected_embedding-probs", "nearest_code-codebook",
    "guide_logits-lr", "guide_logits-steps", "sample_aps-guidance",
    "sample_aps-remask", "sample_aps-candidate", "sample_aps-energy",
    "sample_aps-kl_weight", "sample_aps-generator", "sample_best_of_n-n",
]


@pytest.mark.parametrize("index", range(len(APS_BAD_LABELS)),
                         ids=[f"{i}-{a}" for i, a in enumerate(APS_BAD_LABELS)])
@FEW
@given(data_=st.data())
def test_aps_bad_input_gives_a_value_error_naming_the_argument(index, data_):
    _check_bad_case(_aps_bad_cases()[index], APS_BAD_LABELS[index], data_)



# === coverage of the public API =======================================================
MODULES = {
    "schedules": S,
    "param": param,
    "analytic": analytic,
    "data": data,
    "nets": nets,
    "losses": losses,
    "sampling": sampling,
    "solvers": solvers,
    "metrics": metrics,
    "train": train,
    "fullscale": fullscale,
    "interpolants": interpolants,
    "guidance": guidance,
    "geometry": geometry,
    "plot": plot,
    "runtime": runtime,
    "mcmc": mcmc,
    "ot": ot,
    "consistency": consistency,
    "lora": lora,
    "quant": quant,
    "discrete": discrete,
    "operators": operators,
}
# not functions: constants, containers and exceptions; and what cannot run on a CPU in
# a unit test or needs the network (each is tested in its module's own tests)
NOT_FUNCTIONS = {
    "schedules.Schedule",
    "schedules.Coefficients",
    "schedules.SCHEDULES",
    "param.KINDS",
    "data.TOY_2D",
    "data.FULL_SCALE_DATASETS",
    "sampling.SPACINGS",
    "sampling.TIMESTEP_SPACINGS",
    "train.TrainResult",
    "fullscale.DATASETS",
    "fullscale.SAMPLERS",
    "fullscale.ImageExperiment",
    "plot.COLORS",
    "plot.COLUMN_PX",
    "plot.MIN_TEXT_PT",
    "plot.IllegibleFigureWarning",
    "nets.SinusoidalEmbedding.extra_repr",
    "nets.MLP.extra_repr",
    "nets.UNet.extra_repr",
}
NEEDS_MORE_THAN_A_UNIT_TEST = {
    "data.image_dataset",  # downloads (bad input is tested below)
    "fullscale.run_image_experiment",  # trains a U-Net (tests/test_fullscale.py)
    "nets.UNet.ddpm_cifar10",  # 36 M parameters (bad input is tested below)
}


def public_api() -> set[str]:
    names = set()
    for short, mod in MODULES.items():
        for name in mod.__all__:
            obj = getattr(mod, name)
            names.add(f"{short}.{name}")
            if not inspect.isclass(obj):
                continue
            for klass in obj.__mro__:
                if not klass.__module__.startswith("dlib."):
                    continue
                for attr, value in vars(klass).items():
                    if attr.startswith("_") or not (
                        inspect.isfunction(value)
                        or isinstance(value, (classmethod, staticmethod))
                    ):
                        continue
                    owner = klass.__module__.split(".")[-1]
                    names.add(f"{owner}.{klass.__qualname__}.{attr}")
    return names


def test_every_public_function_is_covered():
    missing = public_api() - COVERED - NOT_FUNCTIONS - NEEDS_MORE_THAN_A_UNIT_TEST
    assert not missing, f"public names without a property test: {sorted(missing)}"
    stale = COVERED - public_api()
    assert not stale, f"covered names that are not public: {sorted(stale)}"


# === 2. bad input gives a ValueError naming the argument ==============================
X = randn(0, 4, 2)
DEN = GM.denoiser(S.VPLinear())
TS = torch.tensor([1.0, 0.5, 0.0], dtype=F64)


def with_bad(x, index, value):
    y = x.clone()
    y.view(-1)[index % y.numel()] = value
    return y


bad_times = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not 0 <= v <= 1),
    st.text(max_size=3),
    st.none(),
    st.booleans(),
)
bad_counts = st.one_of(
    st.integers(max_value=0),
    st.booleans(),
    st.floats(allow_nan=True),
    st.text(max_size=3),
    st.none(),
)
bad_positive = st.one_of(
    st.floats(max_value=0.0),
    st.sampled_from([nan, inf]),
    st.text(max_size=3),
    st.none(),
    st.booleans(),
)
bad_fractions = st.one_of(
    st.floats().filter(lambda v: not 0 <= v < 1),
    st.sampled_from([nan, "0.5", None, True]),
)
bad_generators = st.one_of(
    st.integers(), st.text(max_size=3), st.booleans(), st.just(np.random.default_rng(0))
)
not_callables = st.one_of(
    st.integers(), st.text(max_size=3), st.none(), st.floats(), st.just(torch.zeros(2))
)
bad_schedules = st.one_of(
    st.text(max_size=8), st.none(), st.integers(), st.just(S.VPLinear), st.just(GM)
)
bad_denoisers = st.one_of(
    st.none(), st.text(max_size=3), st.just(mlp()), st.just(lambda x, t: x), st.just(GM)
)
bad_flags = st.one_of(st.text(max_size=3), st.integers(), st.none())
bad_seeds = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=2**32),
    st.booleans(),
    st.floats(),
    st.text(max_size=3),
)


def bad_options(*allowed):
    return st.one_of(
        st.text(max_size=8).filter(lambda s: s not in allowed), st.integers(), st.none()
    )


def nonfinite(x):
    """``x`` with one entry replaced by NaN or +-inf."""
    return st.builds(
        with_bad, st.just(x), st.integers(0, 10**6), st.sampled_from([nan, inf, -inf])
    )


def bad_batches(x):
    """Wrong types, NaN/inf entries, an empty batch, no batch dimension, wrong
    dtypes."""
    return st.one_of(
        st.none(),
        st.text(max_size=3),
        st.floats(),
        st.just(x.tolist()),
        nonfinite(x),
        st.just(x[:0]),
        st.just(x[0]),
        st.just(x > 0),
        st.just(x.to(torch.complex64)),
    )


def bad_grids():
    return st.one_of(
        st.none(),
        st.text(max_size=3),
        st.just([0.1, 0.5, 1.0]),
        st.just([1.0, 1.0, 0.0]),
        st.just([1.5, 0.5]),
        st.just([1.0, nan, 0.0]),
        st.just([]),
        st.just([1.0]),
        st.just([[1.0, 0.5]]),
    )


# (label, argument, strategy of bad values, call with the bad value)
BAD = [
    # times outside [0, 1], NaN, wrong types
    ("Schedule.alpha", "t", bad_times, lambda v: S.VPCosine().alpha(v)),
    ("Schedule.coefficients", "t", bad_times, lambda v: S.VE().coefficients(v)),
    ("Schedule.posterior", "s", bad_times, lambda v: S.VPLinear().posterior(v, 1.0)),
    (
        "Schedule.transition",
        "t",
        bad_times,
        lambda v: S.LinearInterpolant().transition(0.0, v),
    ),
    (
        "Schedule.t_from_log_snr",
        "lam",
        st.one_of(st.none(), st.text(max_size=3), st.just(nan), st.booleans()),
        lambda v: S.VPLinear().t_from_log_snr(v),
    ),
    ("Denoiser.predict", "t", bad_times, lambda v: DEN.predict(X, v)),
    ("target", "t", bad_times, lambda v: param.target("eps", X, X, v, S.VE())),
    ("elbo_weight", "t", bad_times, lambda v: losses.elbo_weight("v", v, S.VE())),
    ("time_grid", "t_min", bad_times, lambda v: sampling.time_grid(3, 1.0, v)),
    (
        "pf_ode_log_likelihood",
        "t_max",
        bad_times,
        lambda v: metrics.pf_ode_log_likelihood(DEN, X, t_max=v),
    ),
    (
        "denoising_loss",
        "t_range",
        st.one_of(
            st.tuples(bad_times, st.just(1.0)),
            st.tuples(st.just(0.5), st.just(0.1)),
            st.none(),
            st.text(max_size=3),
            st.just((0.1, 0.5, 0.9)),
        ),
        lambda v: losses.denoising_loss(mlp(), X, S.VPLinear(), t_range=v),
    ),
    # mismatched shapes
    (
        "from_x0_eps",
        "x0",
        st.sampled_from([X[:3], X[:, :1], randn(1, 4, 3)]),
        lambda v: param.from_x0_eps(v, X, "v", X, 0.5, S.VPLinear()),
    ),
    (
        "convert",
        "pred",
        st.sampled_from([X[:3], randn(1, 4, 3)]),
        lambda v: param.convert(v, "eps", "x0", X, 0.5, S.VPLinear()),
    ),
    (
        "Schedule.transition",
        "s",
        st.sampled_from([torch.full((3,), 0.1), torch.full((2, 2), 0.1)]),
        lambda v: S.VPLinear().transition(v, torch.full((4,), 0.5)),
    ),
    (
        "Denoiser.predict",
        "t",
        st.sampled_from([torch.full((5,), 0.5), torch.full((4, 1), 0.5)]),
        lambda v: DEN.predict(X, v),
    ),
    (
        "gaussian_kl",
        "var2",
        st.sampled_from([torch.ones(2), torch.ones(4, 2)]),
        lambda v: losses.gaussian_kl(torch.zeros(3), torch.ones(3), torch.zeros(3), v),
    ),
    (
        "sample_xt",
        "eps",
        st.sampled_from([X[:3], X[:, :1]]),
        lambda v: losses.sample_xt(X, 0.5, S.VPLinear(), eps=v),
    ),
    (
        "sample_euler",
        "x",
        st.sampled_from([randn(0, 4, 3), randn(0, 4, 2, 1)]),
        lambda v: sampling.sample_euler(DEN, v, TS),
    ),
    (
        "MLP.forward",
        "x",
        st.sampled_from([randn(0, 4, 3), randn(0, 4)]),
        lambda v: mlp()(v, 0.5),
    ),
    # bad data: wrong types, NaN/inf, empty batches, wrong dtypes
    (
        "convert",
        "x",
        bad_batches(X),
        lambda v: param.convert(X, "eps", "x0", v, 0.5, S.VPLinear()),
    ),
    ("Denoiser.velocity", "x", bad_batches(X), lambda v: DEN.velocity(v, 0.5)),
    (
        "denoising_loss",
        "x0",
        bad_batches(X),
        lambda v: losses.denoising_loss(mlp(), v, S.VPLinear()),
    ),
    (
        "dsm_loss",
        "x0",
        bad_batches(X),
        lambda v: losses.dsm_loss(DEN.score, v, 0.5, S.VPLinear()),
    ),
    (
        "esm_loss",
        "x",
        bad_batches(X),
        lambda v: losses.esm_loss(DEN.score, DEN.score, v, 0.5),
    ),
    (
        "continuous_nelbo",
        "x0",
        bad_batches(X),
        lambda v: losses.continuous_nelbo(DEN, v),
    ),
    (
        "sample_ancestral",
        "x",
        bad_batches(X),
        lambda v: sampling.sample_ancestral(DEN, v, TS),
    ),
    (
        "sample_langevin",
        "x",
        bad_batches(X),
        lambda v: sampling.sample_langevin(lambda y: -y, v, 0.1, 2),
    ),
    (
        "sliced_wasserstein",
        "x",
        st.one_of(
            nonfinite(X), st.none(), st.text(max_size=3), st.just(X > 0), st.just(X[:1])
        ),
        lambda v: metrics.sliced_wasserstein(v, X),
    ),
    ("mmd", "y", nonfinite(X), lambda v: metrics.mmd(X, v)),
    ("energy_distance", "x", nonfinite(X), lambda v: metrics.energy_distance(v, X)),
    (
        "log_likelihood",
        "x",
        bad_batches(X.double()),
        lambda v: metrics.log_likelihood(GM, v),
    ),
    (
        "gaussian_kl",
        "mean1",
        st.one_of(nonfinite(torch.zeros(3)), st.none(), st.text(max_size=3)),
        lambda v: losses.gaussian_kl(v, torch.ones(3), torch.zeros(3), torch.ones(3)),
    ),
    (
        "GaussianMixture",
        "means",
        st.one_of(nonfinite(torch.zeros(2, 2)), st.none(), st.text(max_size=3)),
        lambda v: analytic.GaussianMixture(v),
    ),
    (
        "train",
        "data",
        st.one_of(nonfinite(X), st.just(X[:0]), st.integers()),
        lambda v: train.train(
            mlp(), lambda m, b, g: m(b, 0.5).sum(), v, steps=1, progress=False
        ),
    ),
    (
        "to_images",
        "x",
        st.one_of(nonfinite(torch.zeros(2, 4)), st.none()),
        lambda v: data.to_images(v, 2),
    ),
    (
        "score_images",
        "samples",
        st.one_of(nonfinite(torch.zeros(2, 1, 2, 2)), st.none()),
        lambda v: fullscale.score_images(v, torch.zeros(2, 1, 2, 2), fid=False),
    ),
    (
        "image_grid",
        "images",
        st.one_of(
            nonfinite(torch.zeros(2, 1, 2, 2)),
            st.none(),
            st.just(torch.zeros(2, 1, 2, 2) > 0),
        ),
        lambda v: plot.image_grid(v),
    ),
    # wrong types for a schedule, a denoiser, a generator
    ("sample_xt", "schedule", bad_schedules, lambda v: losses.sample_xt(X, 0.5, v)),
    ("Denoiser", "schedule", bad_schedules, lambda v: param.Denoiser(mlp(), v)),
    (
        "time_grid",
        "schedule",
        bad_schedules,
        lambda v: sampling.time_grid(3, spacing="log_snr", schedule=v),
    ),
    (
        "AnalyticDenoiser",
        "schedule",
        bad_schedules,
        lambda v: analytic.AnalyticDenoiser(GM, v),
    ),
    (
        "sample_heun",
        "denoiser",
        bad_denoisers,
        lambda v: sampling.sample_heun(v, X, TS),
    ),
    (
        "straightness",
        "denoiser",
        bad_denoisers,
        lambda v: metrics.straightness(v, X, TS[:2]),
    ),
    (
        "change_schedule",
        "denoiser",
        bad_denoisers,
        lambda v: param.change_schedule(v, S.VE()),
    ),
    (
        "continuous_nelbo",
        "denoiser",
        bad_denoisers,
        lambda v: losses.continuous_nelbo(v, X),
    ),
    (
        "AnalyticDenoiser",
        "model",
        st.one_of(st.none(), st.text(max_size=3), st.just(mlp())),
        lambda v: analytic.AnalyticDenoiser(v, S.VE()),
    ),
    (
        "sample_ancestral",
        "generator",
        bad_generators,
        lambda v: sampling.sample_ancestral(DEN, X, TS, generator=v),
    ),
    (
        "denoising_loss",
        "generator",
        bad_generators,
        lambda v: losses.denoising_loss(mlp(), X, S.VE(), generator=v),
    ),
    ("batches", "generator", bad_generators, lambda v: data.batches(X, 2, v)),
    ("GaussianMixture.sample", "generator", bad_generators, lambda v: GM.sample(2, v)),
    (
        "sliced_wasserstein",
        "generator",
        bad_generators,
        lambda v: metrics.sliced_wasserstein(X, X, generator=v),
    ),
    (
        "continuous_nelbo",
        "generator",
        bad_generators,
        lambda v: losses.continuous_nelbo(DEN, X, generator=v),
    ),
    # non-callables
    (
        "sample_euler",
        "callback",
        not_callables.filter(lambda v: v is not None),
        lambda v: sampling.sample_euler(DEN, X, TS, callback=v),
    ),
    (
        "denoising_loss",
        "net",
        not_callables,
        lambda v: losses.denoising_loss(v, X, S.VE()),
    ),
    (
        "denoising_loss",
        "weight",
        not_callables.filter(lambda v: v is not None),
        lambda v: losses.denoising_loss(mlp(), X, S.VE(), weight=v),
    ),
    (
        "dsm_loss",
        "score_fn",
        not_callables,
        lambda v: losses.dsm_loss(v, X, 0.5, S.VE()),
    ),
    (
        "esm_loss",
        "true_score",
        not_callables,
        lambda v: losses.esm_loss(DEN.score, v, X, 0.5),
    ),
    (
        "sample_langevin",
        "score_fn",
        not_callables,
        lambda v: sampling.sample_langevin(v, X, 0.1, 2),
    ),
    ("Denoiser", "fn", not_callables, lambda v: param.Denoiser(v, S.VE())),
    (
        "train",
        "loss_fn",
        not_callables,
        lambda v: train.train(mlp(), v, X, steps=1, progress=False),
    ),
    (
        "pf_ode_log_likelihood",
        "prior_log_prob",
        not_callables.filter(lambda v: v is not None),
        lambda v: metrics.pf_ode_log_likelihood(DEN, X, prior_log_prob=v),
    ),
    # NaN where a check reads "x < 0"; zero, negative and out-of-range numbers
    (
        "sample_ancestral",
        "eta",
        st.one_of(
            st.just(nan),
            st.floats().filter(lambda v: not 0 <= v <= 1),
            st.text(max_size=3),
        ),
        lambda v: sampling.sample_ancestral(DEN, X, TS, eta=v),
    ),
    (
        "sample_ancestral",
        "clip_x0",
        bad_positive.filter(lambda v: v is not None),
        lambda v: sampling.sample_ancestral(DEN, X, TS, clip_x0=v),
    ),
    ("ddpm_betas", "s", bad_positive, lambda v: S.ddpm_betas("cosine", 10, s=v)),
    (
        "ddpm_betas",
        "max_beta",
        st.one_of(st.floats().filter(lambda v: not 0 < v < 1), st.just(nan)),
        lambda v: S.ddpm_betas("cosine", 10, max_beta=v),
    ),
    ("ring", "std", bad_positive, lambda v: analytic.ring(std=v)),
    ("ring", "radius", bad_positive, lambda v: analytic.ring(radius=v)),
    ("VPLinear", "beta_max", bad_positive, lambda v: S.VPLinear(beta_max=v)),
    ("VE", "sigma_min", bad_positive, lambda v: S.VE(sigma_min=v)),
    ("EMA", "decay", bad_fractions, lambda v: train.EMA(mlp(), v)),
    (
        "EMA.load_state_dict",
        "state['decay']",
        bad_fractions,
        lambda v: train.EMA(mlp()).load_state_dict(
            {**train.EMA(mlp()).state_dict(), "decay": v}
        ),
    ),
    (
        "pf_ode_log_likelihood",
        "rtol",
        bad_positive,
        lambda v: metrics.pf_ode_log_likelihood(DEN, X, rtol=v),
    ),
    (
        "sample_ode",
        "atol",
        bad_positive,
        lambda v: sampling.sample_ode(DEN, X, TS, atol=v),
    ),
    (
        "sample_langevin",
        "step_size",
        bad_positive,
        lambda v: sampling.sample_langevin(lambda y: -y, X, v, 2),
    ),
    (
        "train",
        "lr",
        bad_positive,
        lambda v: train.train(
            mlp(), lambda m, b, g: m(b, 0.5).sum(), X, steps=1, lr=v, progress=False
        ),
    ),
    (
        "two_moons",
        "noise",
        st.one_of(st.floats(max_value=-1e-9), st.just(nan), st.text(max_size=3)),
        lambda v: data.two_moons(5, noise=v),
    ),
    (
        "mmd",
        "bandwidths",
        st.one_of(st.just(()), st.tuples(bad_positive), st.floats(), st.none()),
        lambda v: metrics.mmd(X, X, v),
    ),
    (
        "image_grid",
        "vmax",
        st.one_of(st.floats(max_value=-1.0), st.just(nan), st.just(inf), st.none()),
        lambda v: plot.image_grid(torch.zeros(2, 1, 2, 2), vmin=-1.0, vmax=v),
    ),
    # zero, negative, bool and non-integer counts
    ("time_grid", "n_steps", bad_counts, lambda v: sampling.time_grid(v)),
    ("ddpm_betas", "T", bad_counts, lambda v: S.ddpm_betas("linear", v)),
    ("GaussianMixture.sample", "n", bad_counts, lambda v: GM.sample(v)),
    ("ring", "k", bad_counts, lambda v: analytic.ring(v)),
    ("toy_2d", "n", bad_counts, lambda v: data.toy_2d("moons", v)),
    ("batches", "batch_size", bad_counts, lambda v: data.batches(X, v, None)),
    ("MLP", "hidden", bad_counts, lambda v: nets.MLP(2, v)),
    (
        "UNet",
        "emb_dim",
        st.one_of(bad_counts, st.sampled_from([3, 5, 63])),
        lambda v: nets.UNet(emb_dim=v),
    ),
    (
        "UNet.ddpm_cifar10",
        "dropout",
        bad_fractions,
        lambda v: nets.UNet.ddpm_cifar10(dropout=v),
    ),
    (
        "sample_langevin",
        "n_steps",
        bad_counts,
        lambda v: sampling.sample_langevin(lambda y: -y, X, 0.1, v),
    ),
    (
        "sample_predictor_corrector",
        "n_corrector",
        st.one_of(st.integers(max_value=-1), st.booleans(), st.floats()),
        lambda v: sampling.sample_predictor_corrector(DEN, X, TS, n_corrector=v),
    ),
    (
        "continuous_nelbo",
        "n_t",
        bad_counts,
        lambda v: losses.continuous_nelbo(DEN, X, n_t=v),
    ),
    (
        "sliced_wasserstein",
        "n_projections",
        bad_counts,
        lambda v: metrics.sliced_wasserstein(X, X, v),
    ),
    (
        "train",
        "steps",
        bad_counts,
        lambda v: train.train(
            mlp(), lambda m, b, g: m(b, 0.5).sum(), X, steps=v, progress=False
        ),
    ),
    (
        "generate",
        "n_samples",
        bad_counts,
        lambda v: fullscale.generate(DEN, n_samples=v),
    ),
    ("seed_everything", "seed", bad_seeds, lambda v: runtime.seed_everything(v)),
    ("digits", "seed", bad_seeds, lambda v: data.digits(seed=v)),
    (
        "train",
        "seed",
        bad_seeds,
        lambda v: train.train(
            mlp(), lambda m, b, g: m(b, 0.5).sum(), X, steps=1, seed=v, progress=False
        ),
    ),
    # unknown options and flags
    (
        "convert",
        "prediction kind",
        bad_options(*param.KINDS),
        lambda v: param.convert(X, v, "eps", X, 0.5, S.VE()),
    ),
    (
        "Denoiser.predict",
        "prediction kind",
        bad_options(*param.KINDS).filter(lambda v: v is not None),
        lambda v: DEN.predict(X, 0.5, v),
    ),
    (
        "get_schedule",
        "schedule",
        bad_options(*S.SCHEDULES),
        lambda v: S.get_schedule(v),
    ),
    (
        "time_grid",
        "spacing",
        bad_options(*sampling.SPACINGS),
        lambda v: sampling.time_grid(3, spacing=v),
    ),
    (
        "sample_ode",
        "method",
        bad_options("RK45", "DOP853", "Radau", "LSODA"),
        lambda v: sampling.sample_ode(DEN, X, TS, method=v),
    ),
    ("toy_2d", "toy data set", bad_options(*data.TOY_2D), lambda v: data.toy_2d(v, 5)),
    ("digits", "split", bad_options("train", "test", "all"), lambda v: data.digits(v)),
    (
        "image_dataset",
        "full-scale data set",
        bad_options(*data.FULL_SCALE_DATASETS),
        lambda v: data.image_dataset(v),
    ),
    (
        "image_dataset",
        "train",
        bad_flags,
        lambda v: data.image_dataset("mnist", train=v),
    ),
    (
        "continuous_nelbo",
        "sampling",
        bad_options("uniform", "log_snr"),
        lambda v: losses.continuous_nelbo(DEN, X, sampling=v),
    ),
    (
        "pf_ode_log_likelihood",
        "divergence",
        bad_options("exact", "hutchinson"),
        lambda v: metrics.pf_ode_log_likelihood(DEN, X, divergence=v),
    ),
    (
        "sample_heun",
        "progress",
        bad_flags.filter(lambda v: v is not None),
        lambda v: sampling.sample_heun(DEN, X, TS, progress=v),
    ),
    (
        "sample_ode",
        "progress",
        bad_flags.filter(lambda v: v is not None),
        lambda v: sampling.sample_ode(DEN, X, TS, progress=v),
    ),
    (
        "time_grid",
        "final_zero",
        bad_flags,
        lambda v: sampling.time_grid(3, final_zero=v),
    ),
    (
        "denoising_loss",
        "reduce",
        bad_flags,
        lambda v: losses.denoising_loss(mlp(), X, S.VE(), reduce=v),
    ),
    (
        "straightness",
        "relative",
        bad_flags,
        lambda v: metrics.straightness(DEN, X, TS[:2], relative=v),
    ),
    ("EMA", "warmup", bad_flags, lambda v: train.EMA(mlp(), warmup=v)),
    (
        "show_source",
        "display",
        bad_flags,
        lambda v: runtime.show_source(runtime.device, display=v),
    ),
    (
        "timer",
        "out",
        st.one_of(st.lists(st.integers()), st.text(max_size=3)),
        lambda v: runtime.timer(out=v).__enter__(),
    ),
    ("UNet", "mid_attention", bad_flags, lambda v: nets.UNet(mid_attention=v)),
    (
        "generate",
        "device",
        st.sampled_from(["gpu0", "nope", True]),
        lambda v: fullscale.generate(DEN, device=v),
    ),
]


def _names_argument(message: str, name: str) -> bool:
    message, name = message.lower(), name.lower()
    if re.fullmatch(r"\w+", name):
        return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", message) is not None
    return name in message


def _check_bad_case(case, label: str, data_) -> None:
    """One bad-input case ``(..., arg, values, call)``: ``label`` is its test id (the
    names before ``values`` joined by "-", kept in a list so that ids stay stable);
    draw a bad value for ``arg`` and check that ``call`` raises a ValueError naming
    it."""
    *names, values, call = case
    assert "-".join(names) == label
    arg = names[-1]
    value = data_.draw(values, label=arg)
    with pytest.raises(ValueError) as info:
        call(value)
    assert _names_argument(str(info.value), arg), (*names, value, str(info.value))


@pytest.mark.parametrize(
    "label, arg, values, call", BAD, ids=[f"{b[0]}-{b[1]}" for b in BAD]
)
@FEW
@given(data_=st.data())
def test_bad_input_gives_a_value_error_naming_the_argument(
    label, arg, values, call, data_
):
    value = data_.draw(values, label=arg)
    with pytest.raises(ValueError) as info:
        call(value)
    assert _names_argument(str(info.value), arg), (label, arg, value, str(info.value))


@pytest.mark.parametrize("path_kind", ["folder", "text", "list"])
def test_a_file_that_is_not_a_checkpoint_names_the_path(tmp_path, path_kind):
    path = tmp_path / "x.pt"
    if path_kind == "folder":
        path = tmp_path
    elif path_kind == "text":
        path.write_text("not a checkpoint")
    else:
        torch.save([1, 2], path)
    with pytest.raises(ValueError, match="path"):
        train.load_checkpoint(path)
    if path_kind != "folder":
        with pytest.raises(ValueError, match="checkpoint"):
            train.train(
                mlp(),
                lambda m, b, g: m(b, 0.5).sum(),
                X,
                steps=1,
                progress=False,
                checkpoint=path,
                resume=True,
            )


# === the boundary bugs and accepted-though-wrong inputs of issue 5 §8, one by one =====
@pytest.mark.parametrize("sch", [S.VPLinear(), S.DiscreteVP(S.ddpm_betas("linear"))])
def test_vp_d_sigma_at_zero_is_plus_infinity_and_velocity_says_singular(sch):
    assert sch.d_sigma(0.0).item() == inf
    assert sch.d_sigma(torch.tensor([0.0], dtype=F32)).item() == inf
    den = param.Denoiser(mlp(), sch, "eps")
    with pytest.raises(ValueError, match="singular"):
        den.velocity(X, 0.0)
    with pytest.raises(ValueError, match="singular"):
        losses.denoising_loss(mlp(), X, sch, "velocity", t=0.0)


def test_linear_path_sde_and_posterior_at_the_ends():
    # alpha = 1 - t, sigma = t: f = -1/(1 - t), g^2 = 2t/(1 - t)
    f, g2 = S.LinearInterpolant().sde(torch.tensor([0.0, 0.5], dtype=F64))
    torch.testing.assert_close(f, torch.tensor([-1.0, -2.0], dtype=F64))
    torch.testing.assert_close(g2, torch.tensor([0.0, 2.0], dtype=F64))
    for sch in SCHEDULES:
        a, b, var = sch.posterior(0.0, 0.0)
        assert (a.item(), b.item(), var.item()) == (1.0, 0.0, 0.0)


@pytest.mark.parametrize("sch", SCHEDULES)
def test_elbo_weights_at_zero_are_not_nan(sch):
    for kind in ("score", "velocity"):
        w = losses.elbo_weight(kind, torch.tensor([0.0, 1.0]), sch)
        assert not has_nan(w)


def test_vp_cosine_is_consistent_in_float32_at_one():
    sch = S.VPCosine()
    t32, t64 = torch.tensor([1.0], dtype=F32), torch.tensor([1.0], dtype=F64)
    assert sch.log_snr(t32).item() == pytest.approx(sch.log_snr(t64).item(), rel=1e-6)
    assert sch.d_log_snr(t32).item() < 0 and sch.sde(t32)[1].item() > 0


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: S.ddpm_betas("cosine", 10, max_beta=2.0), "max_beta"),
        (lambda: S.ddpm_betas("cosine", 10, max_beta=0.0), "max_beta"),
        (lambda: S.ddpm_betas("cosine", 10, s=nan), "s"),
        (lambda: sampling.sample_ancestral(DEN, X, TS, clip_x0=-1.0), "clip_x0"),
        (lambda: sampling.sample_ancestral(DEN, X, TS, clip_x0=nan), "clip_x0"),
        (lambda: sampling.sample_ancestral(DEN, X, TS, eta=nan), "eta"),
        (lambda: analytic.ring(std=-0.5), "std"),
        (
            lambda: train.EMA(mlp()).load_state_dict(
                {**train.EMA(mlp()).state_dict(), "decay": 1.5}
            ),
            "decay",
        ),
        (lambda: analytic.AnalyticDenoiser(None, S.VPLinear()), "model"),
        (lambda: metrics.pf_ode_log_likelihood(DEN, X, rtol=-1.0), "rtol"),
        (lambda: plot.image_grid(torch.zeros(2, 1, 2, 2), vmin=0.5, vmax=0.5), "vmax"),
        (lambda: losses.denoising_loss(mlp(), X[:0], S.VPLinear()), "x0"),
        (
            lambda: losses.gaussian_kl(
                torch.zeros(3), torch.ones(3), torch.zeros(4), torch.ones(4)
            ),
            "var2",
        ),
    ],
)
def test_accepted_though_wrong_is_now_refused(call, name):
    with pytest.raises(ValueError) as info:
        call()
    assert _names_argument(str(info.value), name), str(info.value)


def test_float64_data_go_through_float32_networks():
    x64 = randn(0, 4, 2, dtype=F64)
    out = mlp()(x64, 0.5)
    assert out.dtype == F64
    torch.testing.assert_close(out.float(), mlp()(x64.float(), 0.5))
    den = param.Denoiser(mlp(), S.VPLinear(), "eps")
    assert den.velocity(x64, 0.5).dtype == F64


def test_train_on_nan_data_blames_the_data():
    with pytest.raises(ValueError, match="data contains 1 NaN or inf"):
        train.train(
            mlp(),
            lambda m, b, g: m(b, 0.5).sum(),
            with_bad(X, 0, nan),
            steps=1,
            progress=False,
        )
