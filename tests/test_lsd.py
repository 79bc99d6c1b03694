"""dlib.discrete.lsd (chapter III.2) and the countdown data against closed forms: the
exact law of a two-token, two-step sampler by enumeration, the reveal probability of
the linear schedule, common random numbers, the least-squares factor, the softplus
time grid (autograd), and the distillation identity a_k = 1 for a context-free model
(the teacher's aggregated transition equals Euler's in expectation)."""

from __future__ import annotations

import itertools

import pytest
import torch

from dlib import data
from dlib import discrete as D

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- countdown ------------------------------------------------------------------------
def test_countdown_is_deterministic_valid_and_starts_runs_uniformly():
    x = data.countdown(4000, 40, 8, seed=3)
    assert x.dtype == torch.int64 and x.shape == (4000, 40)
    assert torch.equal(x, data.countdown(4000, 40, 8, seed=3))
    assert not torch.equal(x, data.countdown(4000, 40, 8, seed=4))
    assert int(x.min()) == 0 and int(x.max()) == 7
    assert float(data.countdown_error(x).max()) == 0.0
    assert float(data.countdown_error(x, reference=True).max()) == 0.0
    # the first token starts a run: uniform over 0..7 (4 binomial sigmas)
    freq = torch.bincount(x[:, 0], minlength=8).to(F64) / 4000
    assert float((freq - 1 / 8).abs().max()) < 4 * (1 / 8 * 7 / 8 / 4000) ** 0.5


def test_countdown_error_by_hand():
    x = torch.tensor([[3, 2, 1, 0, 5, 4], [3, 1, 0, 2, 1, 0], [0, 0, 9, 8, 7, 6]])
    err = data.countdown_error(x)
    assert err.tolist() == [0.0, 1 / 5, 0.0]
    # a left-over mask (value >= values) always counts
    assert data.countdown_error(x, values=8).tolist() == [0.0, 1 / 5, 2 / 5]
    # the reference checker: [3,1,0,2,1,0] checks (3,1) bad, then (0,2), (2,1) ok,
    # then restarts at 0: 3 checks, 1 error
    ref = data.countdown_error(x, reference=True)
    assert ref.tolist() == [0.0, 1 / 3, 0.0]


def test_reference_checker_skips_every_other_pair_inside_a_run():
    x = torch.tensor([[5, 4, 9, 2, 1, 0]])  # 4 -> 9 breaks the rule
    assert data.countdown_error(x).item() == pytest.approx(2 / 5)
    # the reference checks (5,4), restarts at 9 and checks (9,2), restarts at 1 and
    # checks (1,0): the bad pair (4,9) is never looked at
    assert data.countdown_error(x, reference=True).item() == pytest.approx(1 / 3)


# --- an exact model on L = 2 tokens, K = 2 --------------------------------------------
P0 = torch.tensor([[0.5, 0.1], [0.15, 0.25]], dtype=F64)  # joint p(x1, x2)


def exact_fn(x, t):
    """Clean-token logits of the exact posterior of P0 given the unmasked tokens."""
    B = x.shape[0]
    out = torch.zeros(B, 2, 2, dtype=F64)
    for b in range(B):
        for pos in range(2):
            other = x[b, 1 - pos].item()
            joint = P0 if pos == 0 else P0.T  # rows: this token
            col = joint.sum(1) if other == 2 else joint[:, other]
            out[b, pos] = torch.log(col / col.sum())
    return out


def exact_law(pi):
    """The law of the output of the two-step sampler [1, 1/2, 0] with first-step
    reveal probability pi, by enumeration (the last step reveals everything)."""
    law = torch.zeros(2, 2, dtype=F64)
    marg = [P0.sum(1), P0.sum(0)]
    for r1, r2 in itertools.product([0, 1], repeat=2):
        pr = (pi if r1 else 1 - pi) * (pi if r2 else 1 - pi)
        for a, b in itertools.product([0, 1], repeat=2):
            if r1 and r2:  # both from the marginals, independently
                law[a, b] += pr * marg[0][a] * marg[1][b]
            elif r1:
                law[a, b] += pr * marg[0][a] * P0[a, b] / P0[a].sum()
            elif r2:
                law[a, b] += pr * marg[1][b] * P0[a, b] / P0[:, b].sum()
            else:  # the last step: both from their marginals given nothing
                law[a, b] += pr * marg[0][a] * marg[1][b]
    return law


@pytest.mark.parametrize("factor", [1.0, 0.4, 1.6, 3.0])
def test_sample_lsd_has_the_enumerated_law(factor):
    den = D.CategoricalDenoiser(exact_fn, D.DiscreteProcess.absorbing(
        2, D.LinearKeep()))
    n = 6000
    x = torch.full((n, 2), 2)
    out = D.sample_lsd(den, x, [1.0, 0.5, 0.0], [factor, 1.0], generator=gen(1))
    assert den.nfe == (1 if factor * 0.5 >= 1 else 2)  # nothing left: no NFE
    emp = torch.zeros(2, 2, dtype=F64)
    for a, b in itertools.product([0, 1], repeat=2):
        emp[a, b] = ((out[:, 0] == a) & (out[:, 1] == b)).to(F64).mean()
    law = exact_law(min(1.0, factor * 0.5))
    sd = (law * (1 - law) / n).sqrt()
    assert bool(((emp - law).abs() <= 4.5 * sd + 1e-12).all()), (emp, law)
    if factor == 1.0:  # the same law as dlib's tau-leaping (Euler) sampler
        ref = D.sample_tau_leaping(den, x, [1.0, 0.5, 0.0], generator=gen(2))
        for a, b in itertools.product([0, 1], repeat=2):
            e2 = ((ref[:, 0] == a) & (ref[:, 1] == b)).to(F64).mean()
            assert abs(float(e2) - float(law[a, b])) <= 4.5 * float(sd[a, b])


def iid_fn(K, seed=0):
    """A context-free model: the same clean-token law at every position."""
    logits = torch.randn(K, generator=gen(seed), dtype=F64)

    def fn(x, t):
        return logits.expand(x.shape[0], x.shape[1], K).clone()

    return fn


def test_linear_schedule_reveals_at_the_exact_rate_and_noise_is_common():
    K, L, B = 5, 16, 400
    den = D.CategoricalDenoiser(iid_fn(K), D.DiscreteProcess.absorbing(
        K, D.LinearKeep(1e-3)))
    ts = torch.linspace(1, 0, 9)
    noise = D.lsd_noise((B, L), K, gen(3))
    seen = []
    out = D.sample_lsd(den, torch.full((B, L), K), ts, noise=noise,
                       callback=lambda d: seen.append((d["t_next"], d["x"].clone())))
    for s, xs in seen[:-1]:  # P(masked at s | masked at 1) = (1 - a_s) / (1 - a_1) = s
        frac = (xs == K).to(F64).mean().item()
        assert abs(frac - s) < 4 * (s * (1 - s) / (B * L)) ** 0.5 + 1e-12
    assert not bool((out == K).any())
    again = D.sample_lsd(den, torch.full((B, L), K), ts, noise=noise)
    assert torch.equal(out, again)  # common random numbers: same noise, same output
    # exponent variant with a = 1 is the factor variant
    same = D.sample_lsd(den, torch.full((B, L), K), ts, torch.ones(8),
                        exponent=True, noise=noise)
    assert torch.equal(out, same)


def test_a_factor_changes_when_tokens_leave_the_mask_not_which_token():
    K, L, B = 6, 12, 200
    den = D.CategoricalDenoiser(exact_like(K), D.DiscreteProcess.absorbing(
        K, D.LinearKeep(1e-3)))
    noise = D.lsd_noise((B, L), K, gen(4))
    x = torch.full((B, L), K)
    one = D.sample_lsd(den, x, [1.0, 0.6], noise=noise, final_argmax=False)
    half = D.sample_lsd(den, x, [1.0, 0.6], [0.5], noise=noise, final_argmax=False)
    r1, r2 = one != K, half != K
    assert bool((r2 <= r1).all())  # fewer reveals, nested (same uniforms)
    assert r1.sum() > r2.sum() > 0
    assert torch.equal(one[r2], half[r2])  # the same tokens where both reveal
    # the released code's exponent variant is another sampler: with the same a and
    # noise it reveals other positions and tempers the tokens
    hot = D.sample_lsd(den, x, [1.0, 0.6], [0.5], exponent=True, noise=noise,
                       final_argmax=False)
    assert not torch.equal(hot, half)


def exact_like(K):
    """A context-dependent model: position l's logits depend on its neighbours."""
    emb = torch.randn(K + 1, K, generator=gen(7), dtype=F64)

    def fn(x, t):
        left = torch.nn.functional.pad(x[:, :-1], (1, 0), value=K)
        return 2.0 * emb[left]

    return fn


# --- the learned quantities -----------------------------------------------------------
def test_least_squares_factor_is_the_minimiser():
    g = gen(5)
    s = torch.randn(3, 4, 5, generator=g, dtype=F64)
    t = 0.7 * s + 0.1 * torch.randn(3, 4, 5, generator=g, dtype=F64)
    a = D.least_squares_factor(t, s)
    a_ = torch.tensor(float(a), dtype=F64, requires_grad=True)
    ((t - a_ * s) ** 2).sum().backward()
    assert abs(a_.grad.item()) < 1e-10
    assert abs(float(a) - 0.7) < 0.1
    assert float(D.least_squares_factor(t, torch.zeros_like(s))) == 1.0


def test_step_times_are_monotone_end_exactly_and_have_autograd_gradients():
    th = torch.tensor([0.3, -1.0, 2.0, 0.0], dtype=F64, requires_grad=True)
    ts = D.step_times(th, t_end=0.0)
    assert ts[0].item() == 1.0 and ts[-1].item() == 0.0
    assert bool((ts[1:] < ts[:-1]).all())
    assert torch.allclose(D.step_times(torch.zeros(4, dtype=F64)),
                          torch.linspace(1, 0, 5, dtype=F64), atol=1e-15)
    assert torch.autograd.gradcheck(lambda p: D.step_times(p, 1e-3), (th,))


def test_distillation_gives_factor_one_for_a_context_free_model():
    """With p independent of the context, the teacher's aggregated transition
    sum_j delta_j lambda(s_j) p (over sub-steps still masked) has expectation
    Delta lambda(t) p, Euler's: the least-squares factor is 1 up to sampling noise."""
    K, L = 4, 16
    den = D.CategoricalDenoiser(iid_fn(K, 1), D.DiscreteProcess.absorbing(
        K, D.LinearKeep(1e-3)))
    res = D.distill_lsd(den, 4, L, teacher_substeps=6, batch_size=200,
                        generator=gen(6))
    assert res.factors.shape == (4,) and res.factors[-1].item() == 1.0
    assert float((res.closed_form[:-1] - 1).abs().max()) < 0.08
    assert res.teacher_nfe > 0 and res.student_nfe > 0
    plus = D.distill_lsd(den, 4, L, learn_times=True, iters=3, batch_size=32,
                         teacher_substeps=2, generator=gen(7))
    ts = plus.ts
    assert ts[0].item() == 1.0 and ts[-1].item() == 0.0
    assert bool((ts[1:] < ts[:-1]).all()) and len(plus.losses) == 3
