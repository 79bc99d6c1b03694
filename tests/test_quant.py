"""dlib.quant (chapter II.9): the fake quantiser against its formula, its rounding
error Delta^2/12 and idempotence; the clipping-range search against a brute-force
NumPy search and the Gaussian rounding-vs-clipping optimum; the quantised layers
against float layers; the calibration running step; the calibration-set builders
against the forward process and the DDIM sampler."""

import math

import numpy as np
import pytest
import torch
from scipy import optimize, stats
from torch import nn

from dlib import nets, param, quant, sampling
from dlib import schedules as S

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_fake_quantize_matches_the_formula_on_hand_values():
    # b = 3: integers -4..3, Delta = 0.5: levels -2.0 .. 1.5
    v = torch.tensor([0.3, 0.2, -0.3, 0.74, 5.0, -5.0, 1.5, -2.0, -2.2], dtype=F64)
    want = torch.tensor([0.5, 0.0, -0.5, 0.5, 1.5, -2.0, 1.5, -2.0, -2.0], dtype=F64)
    assert torch.equal(quant.fake_quantize(v, 0.5, 3), want)


def test_quantiser_is_idempotent_and_per_channel():
    """Q(Q(v)) = Q(v) exactly: Q(v)/Delta is an integer times Delta over Delta,
    which rounds back to the same integer; each row uses its own step."""
    v = torch.randn(6, 50, generator=gen(0)) * torch.arange(1, 7)[:, None]
    delta = quant.search_step(v, 4, channel_dim=0)[:, None]
    q = quant.fake_quantize(v, delta, 4)
    assert torch.equal(quant.fake_quantize(q, delta, 4), q)
    for i in range(6):
        row = quant.fake_quantize(v[i], float(delta[i]), 4)
        assert torch.equal(row, q[i])
        # every value is an integer multiple of its row's step, within the b-bit range
        k = q[i] / delta[i]
        assert torch.allclose(k, k.round(), atol=1e-5)
        assert float(k.min()) >= -8 and float(k.max()) <= 7


def test_rounding_error_is_delta_squared_over_twelve():
    """Inside the range the error is uniform on [-Delta/2, Delta/2]: mean square
    Delta^2/12 (Monte Carlo, 5 standard errors), never more than Delta/2."""
    delta, n = 0.01, 200_000
    v = (torch.rand(n, generator=gen(1), dtype=F64) - 0.5) * 100 * delta
    err = quant.fake_quantize(v, delta, 16) - v
    assert float(err.abs().max()) <= delta / 2 + 1e-15
    sq = err.pow(2)
    se = float(sq.std()) / math.sqrt(n)
    assert abs(float(sq.mean()) - delta**2 / 12) < 5 * se


def _numpy_search(v, bits, p, n_grid):
    """An independent brute-force search: the first clipping range with the least
    mean |Q(v) - v|^p over c_i = max|v| i / n."""
    v = np.asarray(v, dtype=np.float64)
    qmax = 2 ** (bits - 1) - 1
    best, best_err = None, np.inf
    for i in range(1, n_grid + 1):
        d = np.abs(v).max() * i / n_grid / qmax
        q = np.clip(np.round(v / d), -qmax - 1, qmax) * d
        e = np.mean(np.abs(q - v) ** p)
        if e < best_err:
            best, best_err = d, e
    return best


@pytest.mark.parametrize("bits,p", [(4, 2.4), (8, 2.4), (3, 2.0)])
def test_search_step_agrees_with_a_brute_force_search(bits, p):
    v = torch.randn(4, 300, generator=gen(bits), dtype=F64) * torch.tensor(
        [[0.5], [1.0], [3.0], [0.1]], dtype=F64
    )
    per_channel = quant.search_step(v, bits, p=p, channel_dim=0)
    for i in range(4):
        assert float(per_channel[i]) == pytest.approx(
            _numpy_search(v[i].numpy(), bits, p, 100), rel=1e-12
        )
    whole = quant.search_step(v, bits, p=p)
    assert whole.dim() == 0
    assert float(whole) == pytest.approx(_numpy_search(v.numpy(), bits, p, 100),
                                         rel=1e-12)
    # channels along another dimension
    along1 = quant.search_step(v.T.contiguous(), bits, p=p, channel_dim=1)
    assert torch.allclose(along1, per_channel)


def _gaussian_mse(c, bits):
    """The exact mean square error of Q on v ~ N(0, 1) with Delta = c / (2^(b-1) - 1):
    a sum over the levels k Delta of the integral of (v - k Delta)^2 phi(v) over the
    cell that rounds to k (the end levels take the tails), from the truncated
    moments int_a^b phi = Phi(b) - Phi(a), int_a^b v phi = phi(a) - phi(b) and
    int_a^b v^2 phi = Phi(b) - Phi(a) - b phi(b) + a phi(a)."""
    qmax = 2 ** (bits - 1) - 1
    delta = c / qmax
    k = np.arange(-qmax - 1, qmax + 1, dtype=float)
    a = np.where(k == -qmax - 1, -np.inf, (k - 0.5) * delta)
    b = np.where(k == qmax, np.inf, (k + 0.5) * delta)
    cdf, pdf = stats.norm.cdf, stats.norm.pdf
    m0 = cdf(b) - cdf(a)
    m1 = pdf(a) - pdf(b)
    bp = np.where(np.isinf(b), 0.0, np.nan_to_num(b) * pdf(b))
    ap = np.where(np.isinf(a), 0.0, np.nan_to_num(a) * pdf(a))
    m2 = m0 - bp + ap
    m = k * delta
    return float(np.sum(m2 - 2 * m * m1 + m**2 * m0))


def test_exact_gaussian_error_agrees_with_monte_carlo():
    v = torch.randn(400_000, generator=gen(20), dtype=F64)
    for bits, c in ((3, 1.5), (4, 2.5), (4, 4.0)):
        delta = c / (2 ** (bits - 1) - 1)
        sq = (quant.fake_quantize(v, delta, bits) - v).pow(2)
        se = float(sq.std()) / math.sqrt(len(v))
        assert abs(float(sq.mean()) - _gaussian_mse(c, bits)) < 5 * se


def test_searched_range_of_a_gaussian_matches_the_exact_optimum():
    """p = 2 on a large Gaussian sample: the searched clipping range c is the minimiser
    of the exact error (within 5 %: the grid step max|v|/200, about 1 %, and the
    sampling noise of a flat minimum)."""
    for bits in (3, 4, 6):
        v = torch.randn(200_000, generator=gen(bits), dtype=F64)
        qmax = 2 ** (bits - 1) - 1
        c = float(quant.search_step(v, bits, p=2.0, n_grid=200)) * qmax
        best = optimize.minimize_scalar(lambda c: _gaussian_mse(c, bits),
                                        bounds=(0.5, 6.0), method="bounded").x
        assert c == pytest.approx(best, rel=0.05), (bits, c, best)


def test_search_step_of_zeros_and_the_tie_rule():
    assert float(quant.search_step(torch.zeros(10), 8)) == pytest.approx(1 / 127)
    # a tensor whose values are all +-1: every clipping range c_i >= 1 ... the first
    # range that keeps 1 exactly is c = 1 (i = n), any smaller one clips it
    v = torch.tensor([1.0, -1.0, 1.0])
    assert float(quant.search_step(v, 8)) == pytest.approx(1 / 127)


def test_quant_layer_float_paths_and_weights():
    torch.manual_seed(0)
    lin = nn.Linear(5, 3)
    x = torch.randn(8, 5, generator=gen(2))
    off = quant.QuantLayer(lin, None, None)
    assert torch.equal(off(x), lin(x))
    q = quant.QuantLayer(lin, 8, None)
    delta = quant.search_step(lin.weight.detach(), 8, channel_dim=0)
    assert torch.equal(q.w_delta.flatten(), delta)
    wq = quant.fake_quantize(lin.weight.detach(), delta[:, None], 8)
    assert torch.allclose(q(x), x @ wq.T + lin.bias, atol=1e-6)
    # 16 bits: within float round-off of the float layer
    q16 = quant.QuantLayer(lin, 16, 16)
    q16.mode = "observe"
    assert torch.allclose(q16(x), lin(x), atol=1e-3)


def test_activation_step_runs_an_ema_over_batches_then_freezes():
    torch.manual_seed(0)
    q = quant.QuantLayer(nn.Linear(4, 2), 8, 4)
    with pytest.raises(ValueError, match="calibrate"):
        q.mode = "frozen"
        q(torch.zeros(1, 4))
    a = torch.randn(16, 4, generator=gen(3))
    b = 5 * torch.randn(16, 4, generator=gen(4))
    q.mode = "observe"
    q(a)
    d1 = quant.search_step(a, 4)
    assert float(q.a_delta) == pytest.approx(float(d1))
    q(b)
    want = 0.9 * d1 + 0.1 * quant.search_step(b, 4)
    assert float(q.a_delta) == pytest.approx(float(want), rel=1e-6)
    q.mode = "frozen"
    y = q(b)
    xq = quant.fake_quantize(b, float(q.a_delta), 4)
    assert torch.allclose(y, quant.QuantLayer(q.layer, 8, None)(xq), atol=1e-6)
    assert float(q.a_delta) == pytest.approx(float(want), rel=1e-6)  # frozen
    assert "a_bits=4" in repr(q)


def test_quant_conv_matches_a_float_conv_on_quantised_tensors():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 6, 6, generator=gen(5))
    q = quant.QuantLayer(conv, 6, 6)
    q.mode = "observe"
    y = q(x)
    assert q.w_delta.shape == (4, 1, 1, 1)
    wq = quant.fake_quantize(conv.weight.detach(), q.w_delta, 6)
    xq = quant.fake_quantize(x, float(q.a_delta), 6)
    assert torch.allclose(y, nn.functional.conv2d(xq, wq, conv.bias, padding=1),
                          atol=1e-5)


def test_quantize_network_wraps_every_layer_of_a_copy():
    torch.manual_seed(0)
    net = nets.MLP(4, hidden=16, depth=3, emb_dim=8)
    before = [p.clone() for p in net.parameters()]
    q = quant.quantize_network(net, 8, 8)
    n_linear = sum(isinstance(m, nn.Linear) for m in net.modules())
    layers = [m for m in q.modules() if isinstance(m, quant.QuantLayer)]
    assert len(layers) == n_linear == 7  # 2 time MLP, 2 x, 2 time proj, out
    wrapped = {id(m.layer) for m in layers}
    assert all(id(m) in wrapped for m in q.modules() if isinstance(m, nn.Linear))
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    x, t = torch.randn(64, 4, generator=gen(6)), torch.rand(64, generator=gen(7))
    quant.calibrate(q, x, t, batch_size=16)
    assert all(m.mode == "frozen" and m.batches == 4 for m in layers)
    # one batch: the steps fit these very inputs; 8 bits is a small, non-zero change
    # (several batches blend their ranges, and a later batch's outliers get clipped)
    quant.calibrate(q, x, t, batch_size=64)
    assert all(m.mode == "frozen" and m.batches == 1 for m in layers)
    with torch.no_grad():
        err = (q(x, t) - net(x, t)).abs().max() / net(x, t).abs().max()
    assert 0 < float(err) < 0.05
    with pytest.raises(ValueError, match="no nn.Linear"):
        quant.quantize_network(nn.SiLU())


def test_calibration_raw_and_forward():
    x0 = torch.randn(30, 3, generator=gen(8))
    x, t = quant.calibration_raw(x0, 50, generator=gen(9))
    assert x.shape == (50, 3) and torch.equal(t, torch.zeros(50))
    assert all(any(torch.equal(r, s) for s in x0) for r in x)
    sch = S.VPCosine()
    z = torch.zeros(20_000, 2, dtype=F64)  # x0 = 0: x_t / sigma_t ~ N(0, 1)
    xt, t = quant.calibration_forward(z, sch, 20_000, t_range=(0.2, 0.9),
                                      generator=gen(10))
    assert float(t.min()) >= 0.2 and float(t.max()) <= 0.9
    u = xt / sch.sigma(t)[:, None]
    assert abs(float(u.mean())) < 0.03 and abs(float(u.var()) - 1) < 0.03
    ones = torch.ones(10, 2, dtype=F64)  # x0 = 1: (x_t - sigma eps) = alpha_t
    xt, t = quant.calibration_forward(ones, sch, 10, generator=gen(11))
    assert xt.shape == (10, 2) and xt.dtype == F64


def test_calibration_trajectory_keeps_ddim_states_at_their_true_time():
    sch = S.VPCosine()
    torch.manual_seed(0)
    den = param.Denoiser(nets.MLP(2, hidden=16, depth=2, emb_dim=8), sch, "eps")
    noise = torch.randn(40, 2, generator=gen(12))
    ts = sampling.time_grid(10, 1.0, 1e-3, final_zero=True)
    x, t, k = quant.calibration_trajectory(den, noise, ts, mode="step", step=0)
    assert torch.equal(x, noise) and torch.all(t == 1.0) and torch.all(k == 0)
    for j in (3, 9):
        x, t, k = quant.calibration_trajectory(den, noise, ts, mode="step", step=j)
        with torch.no_grad():
            ref = sampling.sample_ancestral(den, noise, ts[: j + 1], eta=0.0,
                                            clip_x0=1.0)
        assert torch.allclose(x, ref, atol=1e-6)
        assert torch.allclose(t.double(), ts[j].expand(40))
    den.nfe = 0
    x, t, k = quant.calibration_trajectory(den, noise, ts, mode="uniform",
                                           generator=gen(13))
    n_steps = len(ts) - 1  # 10 steps to 1e-3, then the jump to 0
    assert den.nfe == n_steps and set(k.tolist()) <= set(range(n_steps))
    assert torch.allclose(t.double(), ts[k])


def test_ndtc_indices_follow_the_clipped_normal():
    """k = floor(N z), z ~ N(mu, sigma^2), clipped to 0..N-1: the frequencies match the
    normal's probabilities of [k/N, (k+1)/N) (tails folded into the end cells)."""
    sch = S.VPCosine()
    den = param.Denoiser(lambda x, t: torch.zeros_like(x), sch, "eps")
    n, N, mu, sigma = 20_000, 10, 0.4, 0.4
    noise = torch.zeros(n, 1)
    ts = sampling.time_grid(N, 1.0, 1e-3)
    _, _, k = quant.calibration_trajectory(den, noise, ts, mode="normal", mu=mu,
                                           sigma=sigma, generator=gen(14))
    edges = np.arange(N + 1) / N
    prob = np.diff(stats.norm.cdf(edges, mu, sigma))
    prob[0] += stats.norm.cdf(0, mu, sigma)
    prob[-1] += stats.norm.sf(1, mu, sigma)
    freq = np.bincount(k.numpy(), minlength=N) / n
    assert np.abs(freq - prob).max() < 5 * math.sqrt(0.25 / n)
