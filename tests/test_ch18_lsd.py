"""The claims of the LSD chapter (III.2) as unit tests, at a smaller size than the
chapter: the derivation (sympy), Euler = Tweedie in law for an x0-model under the
linear schedule (by enumeration), the one-pass closed-form factors = the fixed point
that Adam reaches, and the learned grid staying monotone inside [0, 1]."""

from __future__ import annotations


import sympy as sp
import torch

from dlib import data
from dlib import discrete as D

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_derivation_euler_is_exact_and_the_teacher_term_matches_in_expectation():
    t, s, eps, d = sp.symbols("t s epsilon Delta", positive=True)
    alpha = 1 - (1 - eps) * t
    lam = -sp.diff(alpha, t) / (1 - alpha)
    assert sp.simplify((t - s) * lam - (alpha.subs(t, s) - alpha) / (1 - alpha)) == 0
    for n in (1, 2, 5):
        sub = [t - j * d / n for j in range(n + 1)]
        agg = sum((sub[j] - sub[j + 1]) * lam.subs(t, sub[j])
                  * (1 - alpha.subs(t, sub[j])) / (1 - alpha) for j in range(n))
        assert sp.simplify(agg - d * lam) == 0
    # under the cosine schedule Euler is NOT exact: the ideal factor differs from 1
    a_cos = sp.cos(sp.pi * t / 2)
    lam_c = -sp.diff(a_cos, t) / (1 - a_cos)
    ideal = ((a_cos.subs(t, s) - a_cos) / (1 - a_cos)) / ((t - s) * lam_c)
    assert abs(float(ideal.subs({t: 0.5, s: 0.25})) - 1) > 0.05


P0 = torch.tensor([[0.4, 0.05], [0.1, 0.45]], dtype=F64)


def exact_fn(x, t):
    out = torch.zeros(x.shape[0], 2, 2, dtype=F64)
    for pos in range(2):
        other = x[:, 1 - pos]
        joint = P0 if pos == 0 else P0.T
        col = torch.where((other == 2)[:, None], joint.sum(1)[None],
                          joint.T[other.clamp(max=1)])
        out[:, pos] = torch.log(col / col.sum(-1, keepdim=True))
    return out


def law_of(out):
    return torch.tensor([[((out[:, 0] == a) & (out[:, 1] == b)).double().mean()
                          for b in (0, 1)] for a in (0, 1)],
                        dtype=F64)


def test_euler_tweedie_and_lsd_sampler_agree_in_law_under_the_linear_schedule():
    den = D.CategoricalDenoiser(exact_fn, D.DiscreteProcess.absorbing(
        2, D.LinearKeep(1e-3)))
    n, grid = 8000, [1.0, 0.7, 0.3, 0.0]
    x = torch.full((n, 2), 2)
    laws = [law_of(f(den, x, grid, generator=gen(i)))
            for i, f in enumerate((D.sample_tau_leaping, D.sample_tweedie,
                                   D.sample_lsd))]
    for la in laws[1:]:
        sd = (laws[0] * (1 - laws[0]) * 2 / n).sqrt()
        assert bool(((la - laws[0]).abs() <= 4.5 * sd + 1e-12).all()), (la, laws[0])


def neighbour_fn(K):
    emb = torch.randn(K + 1, K, generator=gen(3), dtype=F64)

    def fn(x, t):
        left = torch.nn.functional.pad(x[:, :-1], (1, 0), value=K)
        right = torch.nn.functional.pad(x[:, 1:], (0, 1), value=K)
        return 2.0 * emb[left] + emb[right]

    return fn


def test_one_pass_closed_form_is_the_fixed_point_adam_reaches():
    # under the cosine schedule Euler is not exact in the rate, so the factors must
    # move away from 1 (ideal factors 0.97, 0.89, 0.78 at M = 4): agreement of Adam
    # (started at a = 1) with the closed form then means something
    K, L, M = 6, 12, 4
    den = D.CategoricalDenoiser(neighbour_fn(K), D.DiscreteProcess.absorbing(
        K, D.CosineKeep()))
    closed = D.distill_lsd(den, M, L, teacher_substeps=4, batch_size=512,
                           generator=gen(10)).factors
    adam = D.distill_lsd(den, M, L, iters=60, lr=0.02, teacher_substeps=4,
                         batch_size=128, generator=gen(20)).factors
    reach = float((closed - 1).abs().max())
    assert reach > 0.1, closed  # the correction the schedule demands is found
    gap = float((adam - closed).abs().max())
    assert gap < reach / 2, (adam, closed)  # the start a = 1 would fail this


def test_lsd_plus_grid_stays_monotone_and_inside_and_sampling_spends_m_nfe():
    K, L, M = 6, 12, 5
    den = D.CategoricalDenoiser(neighbour_fn(K), D.DiscreteProcess.absorbing(
        K, D.LinearKeep(1e-3)))
    res = D.distill_lsd(den, M, L, learn_times=True, iters=15, lr=0.2,
                        teacher_substeps=2, batch_size=32, generator=gen(5))
    ts = res.ts
    assert ts[0] == 1.0 and ts[-1] == 0.0 and bool((ts[1:] < ts[:-1]).all())
    assert not torch.allclose(ts, torch.linspace(1, 0, M + 1, dtype=F64))
    den.nfe = 0
    out = D.sample_lsd(den, torch.full((64, L), K), ts, res.factors, generator=gen(6))
    assert den.nfe <= M and not bool((out == K).any())
    assert data.countdown_error(out).shape == (64,)
