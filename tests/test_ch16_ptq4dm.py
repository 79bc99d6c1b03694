"""The claims of the PTQ4DM chapter (Part II) as unit tests, at a smaller size than the
chapter: the DDIM gain of an error in the predicted noise, plain calibration on clean
data failing at W8A8 where trajectory (NDTC) calibration does not, and the DDIM
clipping pitfall."""

import pytest
import sympy as sp
import torch

from dlib import data, losses, metrics, nets, param, quant, sampling, solvers, train
from dlib import schedules as S

F64 = torch.float64
SCH = S.VPCosine()
TS = sampling.time_grid(25, 1.0, 1e-3, final_zero=True)


def test_ddim_gain_of_a_noise_error():
    """x_s = alpha_s x0_hat + sigma_s eps_hat with x0_hat = (x_t - sigma_t eps_hat) /
    alpha_t moves by (sigma_s - alpha_s sigma_t / alpha_t) delta: sympy, and the
    book's DDIM step in float64."""
    at, st, as_, ss = sp.symbols("a_t s_t a_s s_s", positive=True)
    x, e, d = sp.symbols("x e d")

    def step(eps):
        return as_ * (x - st * eps) / at + ss * eps

    assert sp.simplify(step(e + d) - step(e) - (ss - as_ * st / at) * d) == 0
    g = torch.Generator().manual_seed(0)
    xt, eps, delta = (torch.randn(5, 3, generator=g, dtype=F64) for _ in range(3))
    for t, s in ((0.95, 0.9), (0.3, 0.2), (0.01, 0.001)):
        ct, cs = SCH.coefficients(torch.tensor(t, dtype=F64)), SCH.coefficients(
            torch.tensor(s, dtype=F64))
        x0 = (xt - ct.sigma * eps) / ct.alpha
        moved = (solvers.first_order_step(xt, x0, eps + delta, t, s, SCH)
                 - solvers.first_order_step(xt, x0, eps, t, s, SCH))
        gain = cs.sigma - cs.alpha * ct.sigma / ct.alpha
        assert torch.allclose(moved, gain * delta, atol=1e-12)


@pytest.fixture(scope="module")
def model():
    x, _ = data.digits("train")
    torch.manual_seed(0)
    net = nets.MLP(64, hidden=64, depth=3, emb_dim=32)
    res = train.train(
        net, lambda m, b, g: losses.denoising_loss(m, b, SCH, "eps", generator=g), x,
        steps=400, batch_size=128, lr=3e-3, progress=False)
    return res.ema.eval(), x


def _sample(net, z):
    with torch.no_grad():
        return sampling.sample_ancestral(param.Denoiser(net, SCH, "eps"), z, TS,
                                         eta=0.0, clip_x0=1.0)


def test_plain_calibration_fails_where_ndtc_does_not(model):
    """The issue's prediction: at W8A8, the distance of the plain-calibrated model's
    samples to the full-precision samples is more than 10 times NDTC's."""
    net, x = model
    g = torch.Generator().manual_seed(1)
    z = torch.randn(400, 64, generator=g)
    fp = _sample(net, z)
    raw = quant.calibration_raw(x, 256, generator=g)
    ndtc = quant.calibration_trajectory(
        param.Denoiser(net, SCH, "eps"), torch.randn(256, 64, generator=g), TS,
        mode="normal", generator=g)[:2]
    dist = {}
    for name, cal in (("raw", raw), ("ndtc", ndtc)):
        q = quant.calibrate(quant.quantize_network(net, 8, 8), *cal)
        dist[name] = metrics.frechet_distance(_sample(q, z), fp)
    assert dist["raw"] > 10 * dist["ndtc"], dist


def test_clipping_without_recomputing_the_noise_breaks_the_pair(model):
    """The chapter's pitfall: the clipped x0_hat with the network's eps_hat no longer
    reconstructs x_t (where the clip acts), the recomputed eps_hat does, and the two
    consistent DDIM forms (recomputed eps; the data-form step) give the same samples
    while the mixed pair gives others."""
    net, x = model
    z = torch.randn(400, 64, generator=torch.Generator().manual_seed(2))
    good = _sample(net, z)
    den = param.Denoiser(net, SCH, "eps")
    bad, data_form = z, z
    with torch.no_grad():
        for t, s in zip(TS[:-1].tolist(), TS[1:].tolist()):
            x0, eps = den.x0_eps(bad, t)
            ct = SCH.coefficients(torch.tensor(t, dtype=F64))
            cs = SCH.coefficients(torch.tensor(s, dtype=F64))
            x0c = x0.clamp(-1, 1)
            if 0.2 < t < 0.9:
                mixed = float(ct.alpha) * x0c + float(ct.sigma) * eps
                fixed = (bad - float(ct.alpha) * x0c) / float(ct.sigma)
                rebuilt = float(ct.alpha) * x0c + float(ct.sigma) * fixed
                assert float((rebuilt - bad).abs().max()) < 1e-5
                assert float((mixed - bad).abs().max()) > 1e-2
            bad = float(cs.alpha) * x0c + float(cs.sigma) * eps
            x0, eps = den.x0_eps(data_form, t)
            data_form = solvers.first_order_step(data_form, x0.clamp(-1, 1), eps, t, s,
                                                 SCH, prediction="x0")
    assert float((data_form - good).abs().max()) < 1e-4
    assert metrics.frechet_distance(bad, good) > 0.1
