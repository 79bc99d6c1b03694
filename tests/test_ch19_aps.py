"""The derivations and exact checks of the APS chapter (III.3) as unit tests, at a
smaller size than the chapter: the variance decomposition that makes the soft plug-in
biased (sympy and enumeration), the mean-field variational identity on an enumerated
posterior, the reveal count of anchored remasking, and the fully observed image (the
snapped candidate recovers every token; a draw from the guided probabilities need
not)."""

import sympy as sp
import torch

from dlib import data
from dlib import discrete as dd
from dlib import operators as ops
from dlib.discrete import aps

F64 = torch.float64
TOK, _, CB = data.digit_tokens("test")
K, L = CB.shape[0], TOK.shape[1]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_variance_decomposition_and_reveal_count_by_sympy():
    p1, p2, c1, c2, c3, a, y = sp.symbols("p1 p2 c1 c2 c3 a y", real=True)
    probs = [p1, p2, 1 - p1 - p2]
    codes = [c1, c2, c3]
    mean = sum(p * c for p, c in zip(probs, codes))
    var = sum(p * (c - mean) ** 2 for p, c in zip(probs, codes))
    expected = sum(p * (y - a * c) ** 2 for p, c in zip(probs, codes))
    assert sp.expand(expected - ((y - a * mean) ** 2 + a**2 * var)) == 0
    a_t, a_s = sp.symbols("alpha_t alpha_s", positive=True)
    assert sp.simplify(1 - (a_s - a_t) / (1 - a_t) - (1 - a_s) / (1 - a_t)) == 0


def small_problem():
    k6, l4, sig = 6, 4, 0.3
    cb6 = CB[:k6].double()
    grids = torch.cartesian_prod(*[torch.arange(k6)] * l4)
    A = ops.Downsample(2)
    y = A(aps.decode_patches(cb6[torch.tensor([[5, 2, 0, 3]])]))

    def energy(v):
        return ops.residual_loss(A, aps.decode_patches(v), y.expand(len(v), -1, -1, -1),
                                 sig)

    return cb6, grids, energy


def test_mean_field_free_energy_is_minus_log_z_plus_kl_to_the_posterior():
    cb6, grids, energy = small_problem()
    J = energy(cb6[grids])
    log_prior = torch.log_softmax(torch.randn(len(grids), generator=gen(2),
                                              dtype=F64), 0)
    log_z = torch.logsumexp(log_prior - J, 0)
    log_post = log_prior - J - log_z
    for seed in range(3):
        q_pos = torch.softmax(2 * torch.randn(4, 6, generator=gen(seed), dtype=F64), -1)
        log_q = torch.log(q_pos[torch.arange(4), grids]).sum(-1)
        q = log_q.exp()
        free = (q * J).sum() + (q * (log_q - log_prior)).sum()
        kl = (q * (log_q - log_post)).sum()
        assert abs(float(free + log_z - kl)) < 1e-9 * abs(float(free))
        assert float(kl) > 0
        # the soft plug-in underestimates E_q[J] (Jensen for a convex J)
        assert float((q * J).sum()) > float(energy((q_pos @ cb6)[None])[0])
    # at the posterior itself the bound is tight
    post = log_post.exp()
    free_post = (post * J).sum() + (post * (log_post - log_prior)).sum()
    assert abs(float(free_post + log_z)) < 1e-9 * abs(float(log_z)) + 1e-12


def test_soft_plug_in_is_exact_for_a_deterministic_table():
    cb6, grids, energy = small_problem()
    onehot = torch.nn.functional.one_hot(grids[123], 6).double()
    assert torch.allclose(energy((onehot @ cb6)[None]), energy(cb6[grids[123:124]]))


def test_fully_observed_image_snap_recovers_sample_need_not():
    prior = dd.CategoricalDenoiser(lambda x, t: torch.zeros(*x.shape, K),
                                   dd.DiscreteProcess.absorbing(K, dd.LinearKeep()))
    y = data.patch_decode(TOK[:16], CB).double()

    def energy(v):
        return ops.residual_loss(ops.Downsample(1), aps.decode_patches(v), y, 0.05)

    got = {}
    for cand in ("snap", "sample"):
        out = aps.sample_aps(prior, torch.full((16, L), K), [1.0, 0.5, 0.0],
                             energy=energy, codebook=CB, candidate=cand,
                             inner_steps=40, generator=gen(5))
        got[cand] = float((out == TOK[:16]).double().mean())
    assert got["snap"] == 1.0
    assert got["sample"] < 0.9
