"""dlib.discrete.aps: the patch decoder and the snap against dlib.data's tokenizer, the
straight-through quantized expectation against autograd, guidance, the anchored
sampler against confidence-ordered unmasking and the reveal counts of the schedule,
recovery of a fully observed image, and best-of-n."""

import pytest
import torch

from dlib import data
from dlib import operators as ops
from dlib.discrete import (
    CategoricalDenoiser,
    CosineKeep,
    DiscreteProcess,
    LinearKeep,
    sample_confidence,
)
from dlib.discrete import aps

F64 = torch.float64
TOK, _, CB = data.digit_tokens("test")
K, L = CB.shape[0], TOK.shape[1]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def toy_denoiser(schedule=None):
    """A fixed, input-dependent logit table: position ell and the number of masks
    shift the logits (an "exact model" of some joint law, enough for identities)."""
    proc = DiscreteProcess.absorbing(K, schedule or LinearKeep())
    table = torch.randn(L, K, generator=gen(7))

    def fn(x, t):
        m = (x == K).sum(-1, keepdim=True).float()
        return 2.0 * table[None] + 0.1 * m[..., None] * table.flip(-1)[None]

    return CategoricalDenoiser(fn, proc)


def uniform_denoiser():
    proc = DiscreteProcess.absorbing(K, LinearKeep())
    return CategoricalDenoiser(lambda x, t: torch.zeros(*x.shape, K), proc)


def test_decode_patches_and_nearest_code_are_the_tokenizer():
    img = aps.decode_patches(CB[TOK[:20]])
    assert torch.equal(img, data.patch_decode(TOK[:20], CB))
    assert torch.equal(aps.nearest_code(CB, CB), torch.arange(K))
    x, _ = data.digits("test")
    patches = x[:20].reshape(20, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(20, 16, 4)
    assert torch.equal(aps.decode_patches(patches), data.to_images(x[:20]))
    assert torch.equal(aps.nearest_code(patches, CB), data.patch_encode(x[:20], CB))
    # both share data._nearest_code: check it against brute-force squared distances
    d = ((patches.double()[:, :, None] - CB.double()[None, None]) ** 2).sum(-1)
    assert torch.equal(aps.nearest_code(patches, CB), d.argmin(-1))


def test_quantized_expectation_value_is_the_snap_and_gradient_is_straight_through():
    probs = torch.softmax(torch.randn(3, L, K, generator=gen(1), dtype=F64), -1)
    soft = aps.expected_embedding(probs, CB, quantize=False)
    assert torch.allclose(soft, probs @ CB.double(), atol=1e-14)
    q = aps.expected_embedding(probs, CB)
    assert torch.allclose(q, CB.double()[aps.nearest_code(soft, CB)], atol=1e-14)
    # gradient of any function of the embedding: evaluated at the snapped value,
    # propagated through the soft expectation (closed form: w C^T per position)
    w = torch.randn(3, L, CB.shape[1], generator=gen(2), dtype=F64)
    pq = probs.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((aps.expected_embedding(pq, CB) * w).sum(), pq)
    assert torch.allclose(g, w @ CB.double().T, atol=1e-13)
    pq = probs.clone().requires_grad_(True)
    (g2,) = torch.autograd.grad(
        (aps.expected_embedding(pq, CB) ** 2).sum(), pq)
    assert torch.allclose(g2, 2 * q.detach() @ CB.double().T, atol=1e-12)


def test_guidance_without_energy_keeps_the_prior_and_with_energy_lowers_it():
    logits = torch.randn(2, L, K, generator=gen(3), dtype=F64)
    # no energy, no KL: a zero gradient, so Adam leaves the logits exactly alone
    z, hist = aps.guide_logits(logits, lambda e: 0.0 * e.sum((1, 2)), CB, steps=5,
                               kl_weight=0.0)
    assert torch.equal(z, torch.log_softmax(logits, -1)) and hist == [0.0] * 5
    # the KL term alone is stationary at pi = p_theta: its gradient there is zero
    zz = logits.clone().requires_grad_(True)
    logp, prior = torch.log_softmax(zz, -1), torch.log_softmax(logits, -1)
    (g,) = torch.autograd.grad((logp.exp() * (logp - prior)).sum(), zz)
    assert g.abs().max() < 1e-14
    z0, h0 = aps.guide_logits(logits, lambda e: e.sum((1, 2)), CB, steps=0)
    assert torch.equal(z0, logits) and h0 == []
    target = CB.double()[TOK[:2]]
    for mode in ("soft", "quantized"):
        z, hist = aps.guide_logits(logits, lambda e: ((e - target) ** 2).sum((1, 2)),
                                   CB, guidance=mode, steps=60, lr=0.5,
                                   kl_weight=0.0)
        assert hist[-1] < 0.2 * hist[0], (mode, hist[0], hist[-1])


def test_fixed_positions_enter_as_codes_and_are_not_free():
    logits = torch.zeros(1, L, K, dtype=F64)
    free = torch.zeros(1, L, dtype=torch.bool)
    free[0, :4] = True
    seen = []

    def energy(e):
        seen.append(e.detach().clone())
        return e.sum((1, 2))

    aps.guide_logits(logits, energy, CB, free=free, fixed=TOK[:1], steps=2)
    assert torch.equal(seen[0][0, 4:], CB.double()[TOK[0, 4:]])


@pytest.mark.parametrize("schedule", [LinearKeep(), CosineKeep()], ids=repr)
def test_unguided_anchored_sampler_is_confidence_ordered_unmasking(schedule):
    den = toy_denoiser(schedule)
    x = torch.full((64, L), K)
    ts = torch.linspace(1, 0, 7).tolist()
    a = aps.sample_aps(den, x, ts, energy=lambda e: e.sum((1, 2)), codebook=CB,
                       guidance="none", remask="anchored", generator=gen(4))
    b = sample_confidence(den, x, ts, generator=gen(4))
    assert torch.equal(a, b)


def test_reveal_counts_follow_the_schedule_and_anchors_stay():
    den = toy_denoiser(CosineKeep())
    x = torch.full((16, L), K)
    ts = torch.linspace(1, 0, 9).tolist()
    steps = []
    aps.sample_aps(den, x, ts, energy=lambda e: (e**2).sum((1, 2)), codebook=CB,
                   inner_steps=3, generator=gen(5), callback=steps.append)
    prev = x
    sch = den.process.schedule
    for st in steps:
        a_t, a_s = (float(sch.alpha(torch.tensor(v, dtype=F64)))
                    for v in (st["t"], st["t_next"]))
        m = (prev == K).sum(-1).double()
        want = m if st["t_next"] == 0 else m - torch.round(m * (1 - a_s) / (1 - a_t))
        assert torch.equal(st["revealed"].sum(-1).double(), want)
        kept = prev != K
        assert torch.equal(st["x"][kept], prev[kept])  # anchors are never remasked
        assert torch.allclose(st["x0"].sum(-1), torch.ones(16, L, dtype=F64))
        prev = st["x"]
    assert not bool((prev == K).any())


def test_a_fully_observed_image_is_recovered_by_quantized_guidance():
    """A = identity (Downsample(1)), no noise, uniform prior: each patch is pinned.
    The guidance moves pi until its expected embedding snaps to the true code; there
    the straight-through gradient of the loss vanishes, so the snapped code (not a
    draw from pi, which may stay diffuse) is the tokenizer's own token."""
    A = ops.Downsample(1)
    y = data.patch_decode(TOK[:8], CB).double()

    def energy(e):
        return ops.residual_loss(A, aps.decode_patches(e), y, 0.05)

    for remask in ("anchored", "random"):
        out = aps.sample_aps(uniform_denoiser(), torch.full((8, L), K),
                             torch.linspace(1, 0, 5).tolist(), energy=energy,
                             codebook=CB, remask=remask, candidate="snap",
                             inner_steps=40, lr=0.5,
                             generator=gen(6))
        assert (out == TOK[:8]).double().mean() > 0.95, remask



def test_snapped_anchored_candidates_are_deterministic_sampled_ones_are_not():
    """With candidate="snap" and anchored remasking nothing random is left (the
    candidate is the snap of the guided pi, its confidence a function of pi): two
    generators give the same tokens. Drawn candidates differ (the chapter's diversity
    column, RMS difference 0 for the snapped variant, relies on this)."""
    den = toy_denoiser()
    x = torch.full((6, L), K)
    ts = torch.linspace(1, 0, 5).tolist()
    target = CB.double()[TOK[:6]]

    def energy(e):
        return ((e - target) ** 2).sum((1, 2))

    out = {}
    for cand in ("snap", "sample"):
        out[cand] = [aps.sample_aps(den, x, ts, energy=energy, codebook=CB,
                                    candidate=cand, inner_steps=3, generator=gen(s))
                     for s in (1, 2)]
    assert torch.equal(*out["snap"])
    assert not torch.equal(*out["sample"])

def test_best_of_n_picks_the_lowest_energy_and_n1_is_unguided():
    den = toy_denoiser()
    x = torch.full((10, L), K)
    ts = torch.linspace(1, 0, 5).tolist()
    target = CB.double()[TOK[:10]]

    def energy(e):
        return ((e - target) ** 2).sum((1, 2))

    one = aps.sample_best_of_n(den, x, ts, energy=energy, codebook=CB, n=1,
                               generator=gen(8))
    ref = aps.sample_aps(den, x, ts, energy=energy, codebook=CB, guidance="none",
                         remask="random", generator=gen(8))
    assert torch.equal(one, ref)
    g = gen(9)
    draws = [aps.sample_aps(den, x, ts, energy=energy, codebook=CB, guidance="none",
                            remask="random", generator=g) for _ in range(4)]
    best = aps.sample_best_of_n(den, x, ts, energy=energy, codebook=CB, n=4,
                                generator=gen(9))
    js = torch.stack([energy(CB.double()[d]) for d in draws])
    assert torch.allclose(energy(CB.double()[best]), js.min(0).values)
    nfe = den.nfe
    aps.sample_best_of_n(den, x, ts, energy=energy, codebook=CB, n=3)
    assert den.nfe - nfe == 3 * 4


def test_bad_input():
    den = toy_denoiser()
    x = torch.full((2, L), K)
    ts = [1.0, 0.5, 0.0]
    kw = dict(energy=lambda e: e.sum((1, 2)), codebook=CB)
    with pytest.raises(ValueError, match="guidance"):
        aps.sample_aps(den, x, ts, guidance="dps", **kw)
    with pytest.raises(ValueError, match="remask"):
        aps.sample_aps(den, x, ts, remask="confidence", **kw)
    with pytest.raises(ValueError, match="codebook"):
        aps.sample_aps(den, x, ts, energy=kw["energy"], codebook=CB[:5])
    with pytest.raises(ValueError, match="absorbing"):
        uni = CategoricalDenoiser(lambda x, t: torch.zeros(*x.shape, K),
                                  DiscreteProcess.uniform(K, LinearKeep()))
        aps.sample_aps(uni, torch.zeros(2, L, dtype=torch.int64), ts, **kw)
    with pytest.raises(ValueError, match="energy"):
        aps.sample_aps(den, x, ts, energy=None, codebook=CB)
    with pytest.raises(ValueError, match="probs"):
        aps.expected_embedding(torch.ones(2, 3), CB)
    with pytest.raises(ValueError, match="fixed"):
        aps.guide_logits(torch.zeros(1, L, K), kw["energy"], CB,
                         free=torch.zeros(1, L, dtype=torch.bool))
    with pytest.raises(ValueError, match="e"):
        aps.decode_patches(torch.zeros(2, 15, 4))
    with pytest.raises(ValueError, match="ts"):
        aps.sample_best_of_n(den, x, [1.0, 0.5], n=2, **kw)
