"""Tests for what chapter 2 (the score view) added to dlib: the predictor-corrector sampler."""

import pytest
import torch

from dlib import analytic, sampling, schedules as S

F64 = torch.float64
MU, VAR = torch.tensor([1.0, -2.0], dtype=F64), torch.tensor([0.5, 2.0], dtype=F64)


@pytest.fixture
def oracle():
    return analytic.Gaussian(MU, VAR).denoiser(S.VPLinear())


def test_pc_without_corrector_is_euler_maruyama(oracle):
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    ts = sampling.time_grid(40, final_zero=True)
    em = sampling.sample_euler_maruyama(oracle, x, ts, zeta=1.0, generator=torch.Generator().manual_seed(1))
    pc = sampling.sample_predictor_corrector(oracle, x, ts, n_corrector=0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(em, pc)


def test_pc_gives_the_data_law_and_counts_nfe(oracle):
    x = torch.randn(20000, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    ts = sampling.time_grid(200, final_zero=True)
    oracle.nfe = 0
    seen = []
    out = sampling.sample_predictor_corrector(oracle, x, ts, n_corrector=1, snr=0.16,
                                              generator=torch.Generator().manual_seed(2),
                                              callback=lambda d: seen.append(d["t_next"]))
    assert oracle.nfe == 200 * 2 + 1 and len(seen) == 201 and seen[-1] == 0.0
    torch.testing.assert_close(out.mean(0), MU, atol=0.05, rtol=0)
    torch.testing.assert_close(out.var(0), VAR, atol=0, rtol=0.06)


def test_corrector_reduces_the_error_of_a_coarse_predictor(oracle):
    # with few predictor steps Euler-Maruyama misses the variance; Langevin corrector steps on p_s pull it back
    x = torch.randn(40000, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    ts = sampling.time_grid(10, t_min=0.02)
    target = VAR * oracle.schedule.alpha(torch.tensor(0.02, dtype=F64)) ** 2 + oracle.schedule.sigma(torch.tensor(0.02, dtype=F64)) ** 2
    errs = []
    for m in (0, 3):
        out = sampling.sample_predictor_corrector(oracle, x, ts, n_corrector=m, snr=0.2, generator=torch.Generator().manual_seed(4))
        errs.append((out.var(0) / target - 1).abs().max().item())
    assert errs[1] < 0.5 * errs[0], errs


@pytest.mark.parametrize("kw, match", [
    ({"n_corrector": -1}, "n_corrector must be a non-negative integer"),
    ({"n_corrector": 1.5}, "n_corrector must be a non-negative integer"),
    ({"snr": 0.0}, "snr must be a positive"),
])
def test_pc_bad_inputs(oracle, kw, match):
    with pytest.raises(ValueError, match=match):
        sampling.sample_predictor_corrector(oracle, torch.zeros(4, 2, dtype=F64), torch.tensor([1.0, 0.5]), **kw)


def test_pc_bad_grid(oracle):
    with pytest.raises(ValueError, match="strictly decreasing"):
        sampling.sample_predictor_corrector(oracle, torch.zeros(4, 2, dtype=F64), torch.tensor([0.5, 1.0]))
