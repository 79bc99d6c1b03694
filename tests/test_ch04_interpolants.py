"""Chapter I.4 (stochastic interpolants): the chapter's exact claims on other seeds and
sizes, the paper-to-book conversion of time and velocity, and the full-scale cell's
function run at a toy size on the CPU (its source is taken from the notebook)."""

import json
import pathlib

import pytest
import torch

from dlib import analytic, losses, metrics, sampling
from dlib import interpolants as I

F64 = torch.float64
NB = pathlib.Path(__file__).parents[1] / "chapters/01_foundations/04_interpolants.ipynb"
RHO0 = analytic.ring(4, 3.0, 0.35)
RHO1 = analytic.GaussianMixture([[-2.0, -2.0], [2.0, 2.0]], [[0.6, 0.1], [0.1, 0.6]])


def test_paper_convention_is_the_time_reversed_flow():
    # the paper's b(t_si, x) = -v(x, 1 - t_si); Euler forward in t_si from the base
    # equals the book's sampler run down from t = 1 with the same grid reversed
    br = I.MixtureBridge(RHO0, RHO1, I.Interpolant("trig", "brownian", 0.5))
    x1 = RHO1.sample(300, torch.Generator().manual_seed(0))
    ts = torch.linspace(1.0, 0.0, 41, dtype=F64)
    ours = sampling.sample_interpolant(br.velocity, None, x1, ts)
    x = x1.clone()
    t_si = 1 - ts
    for a, b in zip(t_si[:-1], t_si[1:]):
        x = x + (b - a) * (-br.velocity(x, float(1 - a)))
    assert torch.allclose(ours, x, atol=1e-12)


@pytest.mark.parametrize("delta", [0.0, 0.25, 1.0])
def test_exact_samplers_land_on_the_target_other_seed(delta):
    # the chapter's claim (|ED| < 4 sigma_MC) for another seed and 1500 samples
    br = I.MixtureBridge(RHO0, RHO1, I.Interpolant("linear", "brownian"))
    g = torch.Generator().manual_seed(11)
    n = 1500
    floor = torch.tensor([metrics.energy_distance(RHO0.sample(n, g), RHO0.sample(n, g))
                          for _ in range(8)])
    x = sampling.sample_interpolant(br.velocity, br.score, RHO1.sample(n, g),
                                    sampling.time_grid(250, 1.0, 1e-3), delta=delta,
                                    generator=g)
    assert abs(metrics.energy_distance(x, RHO0.sample(n, g))) < 4 * floor.std()


def test_sde_with_the_exact_score_keeps_every_marginal():
    # run the backward SDE from t = 1 to t = 0.5 only: the law at 0.5 is rho_{0.5}
    br = I.MixtureBridge(RHO0, RHO1, I.Interpolant("linear", "brownian"))
    g = torch.Generator().manual_seed(12)
    n = 1500
    x = sampling.sample_interpolant(br.velocity, br.score, RHO1.sample(n, g),
                                    torch.linspace(1.0, 0.5, 201, dtype=F64),
                                    delta=1.0, generator=g)
    ref = br.sample(n, 0.5, g)
    # Monte-Carlo level: the spread of the statistic between exact draws of rho_{0.5}
    floor = torch.tensor([metrics.energy_distance(br.sample(n, 0.5, g), ref)
                          for _ in range(8)])
    assert abs(metrics.energy_distance(x, ref)) < 4 * floor.std()


def test_denoiser_objective_excess_is_half_the_mse():
    # the z objective's excess over its minimiser E[z | x_t] is half the mean squared
    # error: here for the zero predictor, whose squared error is E|E[z | x_t]|^2
    it = I.Interpolant("linear", "brownian")
    br = I.MixtureBridge(RHO0, RHO1, it)
    gd = torch.Generator().manual_seed(3)
    x0, x1 = RHO0.sample(40_000, gd), RHO1.sample(40_000, gd)

    def z_exact(x, t):
        return br.posterior_means(x, t)[2]

    def z_zero(x, t):
        return torch.zeros_like(x)

    def loss(fn):
        return float(losses.interpolant_loss(fn, x0, x1, it, "z", t=0.4,
                                             generator=torch.Generator().manual_seed(4)))

    xt = br.sample(40_000, 0.4, torch.Generator().manual_seed(5))
    half_mse = 0.5 * (z_exact(xt, 0.4) ** 2).sum(1).mean()
    assert loss(z_zero) - loss(z_exact) == pytest.approx(float(half_mse), rel=0.03)


def _cell(marker):
    cells = json.loads(NB.read_text())["cells"]
    return next("".join(c["source"]) for c in cells
                if c["cell_type"] == "code" and marker in "".join(c["source"]))


def test_full_scale_function_runs_at_toy_size(capsys):
    scope = {}
    exec(_cell("from dlib import ("), scope)
    exec(_cell("def interpolants_at_scale("), scope)
    fits = scope["interpolants_at_scale"](
        dim=3, k=2, minutes=0.01, hidden=16, batch=64, n_samples=100, steps=5,
        delta_list=(0.0, 0.5), device=torch.device("cpu"), progress=False)
    out = capsys.readouterr().out
    assert set(fits) == {"velocity", "z"}
    assert "relative L2 error" in out and "delta = 0.5: energy distance" in out
