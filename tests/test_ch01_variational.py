"""Tests for the chapter-1 addition to dlib.losses: gaussian_discretization_excess.

(The reverse-variance functions of chapter 1, gaussian_nelbo and
optimal_reverse_variance, are tested in tests/test_losses.py.)"""
import math

import pytest
import torch

from dlib import analytic, losses, sampling, schedules as S

F64 = torch.float64


def test_excess_matches_discrete_nelbo_on_gaussian_data(gen):
    # the diffusion term of the discrete NELBO (exact denoiser, fixed-small variance) =
    # continuous integral + sum of the excesses
    sd2, D = 0.3, 2  # the data variance sigma_d^2 and the dimension
    g = analytic.Gaussian(torch.zeros(D), torch.full((D,), sd2))
    sch = S.VPLinear()
    x0 = g.sample(20_000, gen)
    ts = torch.arange(1, 21, dtype=F64) / 20
    diff = losses.discrete_nelbo(g.denoiser(sch), x0, ts, generator=gen)["diffusion"]
    snr = torch.exp(2 * sch.log_snr(ts))
    integral = D / 2 * math.log((1 + sd2 * snr[0]) / (1 + sd2 * snr[-1]))
    excess = losses.gaussian_discretization_excess(sch, ts, sd2, D)
    assert excess.shape == (19,) and (excess >= 0).all()
    assert diff.mean().item() == pytest.approx(integral + excess.sum().item(), rel=0.02)


def test_excess_tends_to_euler_gamma_on_a_shrinking_grid():
    # sigma^2 ~ b t near t=0 and t_k = k/T: SNR ratios (k+1)/k, so the sum tends to
    # (D/2) * gamma_E (Euler-Mascheroni)
    sch = S.VPLinear(1.0, 1.0)
    T, D = 20_000, 3
    ts = torch.arange(1, T + 1, dtype=F64) / T
    total = losses.gaussian_discretization_excess(sch, ts, 1e8, D).sum().item()
    assert total == pytest.approx(D / 2 * 0.5772156649015329, abs=0.01)


def test_excess_vanishes_with_fixed_end_points():
    sch = S.VPLinear()

    def total(T):
        ts = sampling.time_grid(T - 1, 1.0, 1e-3, spacing="log_snr", schedule=sch)
        excess = losses.gaussian_discretization_excess(sch, ts.flip(0), 0.25, 2)
        return excess.sum().item()

    tot = [total(T) for T in (100, 1000, 10_000)]
    # each step adds about (D/2) (Delta log SNR)^2 / 2 with Delta ~ 1/T: the total
    # falls like 1/T
    assert tot[1] / tot[0] == pytest.approx(0.1, rel=0.1)
    assert tot[2] / tot[1] == pytest.approx(0.1, rel=0.1)


@pytest.mark.parametrize("kwargs, match", [
    (dict(ts=torch.tensor([0.5, 0.2]), data_var=1.0), "strictly increasing"),
    (dict(ts=torch.tensor([0.5]), data_var=1.0), "at least 2"),
    (dict(ts=torch.tensor([0.1, 0.5]), data_var=-1.0), "data_var"),
    (dict(ts=torch.tensor([0.1, 0.5]), data_var=1.0, dim=0), "dim"),
    (dict(ts=torch.tensor([0.1, 1.5]), data_var=1.0), "must lie in"),
    (dict(ts=torch.tensor([0.0, 0.5]), data_var=1.0), "start after t = 0"),
])
def test_bad_inputs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        losses.gaussian_discretization_excess(S.VPLinear(), **kwargs)
    with pytest.raises(ValueError, match="Schedule"):
        losses.gaussian_discretization_excess("vp", torch.tensor([0.1, 0.5]), 1.0)


@pytest.mark.parametrize("sch", [S.VPLinear(), S.VPCosine()])
def test_optimal_variance_diffusion_term_is_a_mutual_information_difference(sch):
    # with the optimal variance every reverse step is exact; the expected step KL is
    # I(x0; x_s | x_t) = I(x0; x_s) - I(x0; x_t) (Markov chain), so the diffusion term
    # telescopes to I(x0; x_t1) - I(x0; x_tT) = (D/2) log((1 + sd2 SNR_1) / (1 + sd2
    # SNR_T)) for Gaussian data
    sd2, D = 0.25, 3
    ts = torch.tensor([0.01, 0.05, 0.2, 0.6, 0.9], dtype=F64)
    r = losses.gaussian_nelbo(sch, ts, sd2, D, reverse_var="optimal")
    snr = torch.exp(2 * sch.log_snr(ts))
    info = D / 2 * math.log((1 + sd2 * snr[0]) / (1 + sd2 * snr[-1]))
    assert r["diffusion"].item() == pytest.approx(info, rel=1e-10)
    # and fixed small exceeds it by exactly the discretisation excess
    small = losses.gaussian_nelbo(sch, ts, sd2, D, reverse_var="small")["diffusion"]
    excess = losses.gaussian_discretization_excess(sch, ts, sd2, D).sum()
    assert small.item() == pytest.approx(info + excess.item(), rel=1e-10)
