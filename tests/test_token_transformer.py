"""Tests for dlib.nets.TokenTransformer: shapes, soft tokens, permutation
equivariance without positions, causality, time conditioning, a tiny overfit, bad
input."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from dlib.nets import TokenTransformer, count_params

K, L = 5, 6


def small(**kw) -> TokenTransformer:
    torch.manual_seed(0)
    kw = {"d_model": 16, "depth": 2, "heads": 4, **kw}
    return TokenTransformer(kw.pop("vocab_size", K), kw.pop("seq_len", L), **kw)


def tokens(batch=3, length=L, high=K, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, (batch, length), generator=gen)


@pytest.mark.parametrize(
    "positions, time, causal, mask_token, out_dim",
    list(
        itertools.product(
            ["learned", "sinusoidal", None],
            [True, False],
            [False, True],
            [False, True],
            [None, K + 1],
        )
    ),
)
def test_shapes_and_dtypes(positions, time, causal, mask_token, out_dim):
    net = small(
        positions=positions,
        time=time,
        causal=causal,
        mask_token=mask_token,
        out_dim=out_dim,
    )
    V = K + int(mask_token)
    assert net.in_vocab == V
    assert net.mask_index == (K if mask_token else None)
    x = tokens(high=V)
    want = (3, L, out_dim or K)
    for t in (0.3, torch.rand(3), torch.rand(3, L), None if not time else 1.0):
        out = net(x, t)
        assert out.shape == want and out.dtype == torch.float32
        assert torch.isfinite(out).all()
    assert net(x[:, :2], 0.5).shape == (3, 2, out_dim or K)  # shorter sequences
    assert net(x[:0], 0.5).shape == (0, L, out_dim or K)  # an empty batch
    assert net(x[:0], torch.rand(0, L)).shape == (0, L, out_dim or K)
    soft = torch.softmax(torch.randn(3, L, V, dtype=torch.float64), -1)
    assert net(soft, 0.5).dtype == torch.float64  # the input's floating dtype
    assert net.double()(x, 0.5).dtype == torch.float64  # the parameters' dtype


def test_default_size_is_cpu_sized_and_every_parameter_gets_a_gradient():
    net = TokenTransformer(K, L, mask_token=True)
    assert 1e5 < count_params(net) < 2e5  # the docstring's "about 150k"
    assert "params=" in repr(net) and "mask_index=5" in repr(net)
    net(tokens(), torch.rand(3)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_one_hot_soft_tokens_equal_integer_tokens():
    net = small(mask_token=True)
    x = tokens(high=K + 1)
    one_hot = F.one_hot(x, K + 1).to(torch.float32)
    torch.testing.assert_close(net(one_hot, 0.4), net(x, 0.4))
    # a mixture of two one-hot rows embeds as the mixture of their embeddings
    y = tokens(high=K + 1, seed=1)
    mix = 0.3 * one_hot + 0.7 * F.one_hot(y, K + 1).float()
    emb = 0.3 * net.embed(x) + 0.7 * net.embed(y)
    torch.testing.assert_close(net._tokens(mix), emb)


@pytest.mark.parametrize("time", [True, False])
def test_without_positions_the_network_is_permutation_equivariant(time):
    net = small(positions=None, time=time)
    x, t = tokens(), torch.rand(3, L)
    perm = torch.randperm(L, generator=torch.Generator().manual_seed(1))
    out, out_perm = net(x, t), net(x[:, perm], t[:, perm])
    torch.testing.assert_close(out_perm, out[:, perm], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("positions", ["learned", "sinusoidal"])
def test_positions_break_the_equivariance(positions):
    """The same check fails with positions (so the test above can fail)."""
    net = small(positions=positions)
    x = torch.tensor([[0, 1, 2, 3, 4, 0]])
    perm = torch.tensor([5, 4, 3, 2, 1, 0])
    assert (net(x[:, perm], 0.5) - net(x, 0.5)[:, perm]).abs().max() > 1e-3


def test_sinusoidal_positions_are_the_transformer_table():
    net = small(positions="sinusoidal", d_model=8)
    pos, i = net.pos_table, torch.arange(4, dtype=torch.float32)
    assert pos.shape == (L, 8)
    for p in range(L):
        torch.testing.assert_close(pos[p, :4], torch.sin(p / 10000.0 ** (i / 4)))
        torch.testing.assert_close(pos[p, 4:], torch.cos(p / 10000.0 ** (i / 4)))


def _input_jacobian(net, x):
    """|d out[0, l, :] / d one_hot[0, l', :]| summed, as an (L, L) matrix."""
    one_hot = F.one_hot(x, net.in_vocab).double().requires_grad_(True)
    net = net.double()
    rows = []
    for pos in range(x.shape[1]):
        (g,) = torch.autograd.grad(net(one_hot, 0.5)[0, pos].sum(), one_hot)
        rows.append(g[0].abs().sum(-1))
    return torch.stack(rows)


def test_causal_flag_blocks_the_future():
    x = tokens(batch=1)
    J = _input_jacobian(small(causal=True), x)
    future = torch.triu(torch.ones(L, L, dtype=torch.bool), diagonal=1)
    assert J[future].max() == 0  # exactly: masked attention weights are 0
    assert J[~future].min() > 1e-6  # and the past and present do matter
    J_bi = _input_jacobian(small(causal=False), x)
    assert J_bi.min() > 1e-6  # a bidirectional network sees every position
    # changing the last token leaves the outputs before it unchanged
    net, y = small(causal=True), x.clone()
    y[0, -1] = (y[0, -1] + 1) % K
    torch.testing.assert_close(net(y, 0.5)[:, :-1], net(x, 0.5)[:, :-1])


def test_time_conditioning_changes_the_output_and_untimed_ignores_it():
    x = tokens()
    net = small()
    assert (net(x, 0.1) - net(x, 0.9)).abs().max() > 1e-3
    # one time per sequence equals the same time repeated per token
    t = torch.rand(3)
    torch.testing.assert_close(net(x, t), net(x, t[:, None].expand(3, L)))
    # per-token times act per token: changing the time of token 0 changes the output
    tt = t[:, None].repeat(1, L)
    tt[:, 0] = 1.0 - tt[:, 0]
    assert (net(x, tt) - net(x, t)).abs().max() > 1e-3
    untimed = small(time=False)
    assert untimed.time is None
    torch.testing.assert_close(untimed(x, 0.1), untimed(x))
    torch.testing.assert_close(untimed(x, torch.rand(3, L)), untimed(x, None))


def _fit(net, inputs_and_times, steps=250, lr=3e-3):
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        inputs, t, targets = inputs_and_times(gen)
        logits = net(inputs, t)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return loss.item()


def test_an_autoregressive_network_memorises_a_handful_of_sequences():
    """Four sequences with distinct first tokens: after a few hundred steps of
    next-token training, greedy decoding from the first token reproduces each one."""
    x = torch.tensor(
        [[0, 3, 1, 4, 1, 2], [1, 1, 2, 0, 4, 4], [2, 4, 0, 3, 3, 1], [3, 0, 0, 2, 1, 3]]
    )
    net = small(time=False, causal=True, d_model=32)
    _fit(net, lambda gen: (x[:, :-1], None, x[:, 1:]))
    with torch.no_grad():
        out = x[:, :1]
        for _ in range(L - 1):
            out = torch.cat([out, net(out)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, x)


def _exact_posterior(seqs, x_t, mask):
    """p(x0^l = y | x_t) when x0 is uniform over the rows of ``seqs``: the average of
    the one-hot rows of the sequences that agree with x_t where it is not masked."""
    agree = ((seqs[None] == x_t[:, None]) | (x_t[:, None] == mask)).all(-1)
    weights = agree.double() / agree.sum(-1, keepdim=True)  # (N, n_seqs)
    return torch.einsum("ns,sly->nly", weights, F.one_hot(seqs, K).double())


def test_a_masked_denoiser_learns_the_exact_posterior_of_a_few_sequences():
    """Four sequences, each masked at random (mask fraction t ~ U(0, 1)), trained with
    the cross-entropy of the clean tokens: its minimiser is the exact posterior over
    the four sequences given the visible tokens. After a few hundred steps the mean
    total variation to that posterior on masked positions is < 0.1 (untrained: about
    0.6); the tolerance is a regression guard for "the network has learned the
    posterior", not a theoretical bound."""
    x = torch.tensor(
        [[0, 3, 1, 4, 1, 2], [1, 1, 2, 0, 4, 4], [2, 4, 0, 3, 3, 1], [3, 0, 0, 2, 1, 3]]
    )
    net = small(mask_token=True, d_model=32)
    M = net.mask_index

    def batch(gen, n=32):
        x0 = x[torch.randint(0, 4, (n,), generator=gen)]
        t = torch.rand(n, generator=gen)
        masked = torch.rand(n, L, generator=gen) < t[:, None]
        return torch.where(masked, M, x0), t, x0

    def tv(gen):
        x_t, t, _ = batch(gen, n=512)
        with torch.no_grad():
            probs = net(x_t, t).double().softmax(-1)
        dist = 0.5 * (probs - _exact_posterior(x, x_t, M)).abs().sum(-1)
        return dist[x_t == M].mean().item()

    before = tv(torch.Generator().manual_seed(1))
    _fit(net, batch, steps=300)
    after = tv(torch.Generator().manual_seed(1))
    assert before > 0.3 and after < 0.1, (before, after)


BAD = [
    ("vocab_size", lambda: TokenTransformer(0, L)),
    ("seq_len", lambda: TokenTransformer(K, 1.5)),
    ("out_dim", lambda: TokenTransformer(K, L, 0)),
    ("mask_token", lambda: TokenTransformer(K, L, mask_token=1)),
    ("d_model", lambda: TokenTransformer(K, L, d_model=15)),
    ("heads", lambda: TokenTransformer(K, L, d_model=16, heads=3)),
    ("depth", lambda: TokenTransformer(K, L, depth=0)),
    ("mlp_ratio", lambda: TokenTransformer(K, L, mlp_ratio=None)),
    ("positions", lambda: TokenTransformer(K, L, positions="rotary")),
    ("time", lambda: TokenTransformer(K, L, time="yes")),
    ("causal", lambda: TokenTransformer(K, L, causal=None)),
    ("tokens", lambda: small()(tokens(high=K) + K, 0.5)),  # out of range
    ("tokens", lambda: small()(tokens() - 1 - tokens(), 0.5)),  # negative
    ("tokens", lambda: small()(torch.full((2, L), K), 0.5)),  # the mask, absent
    ("tokens", lambda: small()(tokens(length=L + 1), 0.5)),  # longer than seq_len
    ("tokens", lambda: small()(tokens()[0], 0.5)),  # no batch dimension
    ("tokens", lambda: small()(tokens().tolist(), 0.5)),
    ("tokens", lambda: small()(tokens() > 2, 0.5)),
    ("tokens", lambda: small()(torch.rand(3, L, K + 1), 0.5)),  # soft, wrong V
    ("tokens", lambda: small()(torch.full((3, L, K), float("nan")), 0.5)),
    ("t", lambda: small()(tokens())),  # a timed network needs t
    ("t", lambda: small()(tokens(), 1.5)),
    ("t", lambda: small()(tokens(), "0.5")),
    ("t", lambda: small()(tokens(), torch.rand(2))),
    ("t", lambda: small()(tokens(), torch.rand(3, L + 1))),
    ("t", lambda: small()(tokens(), torch.full((3, L), float("nan")))),
    ("t", lambda: small(time=False)(tokens(), -0.5)),  # checked even if ignored
]


@pytest.mark.parametrize(
    "arg, call", BAD, ids=[f"{i}-{b[0]}" for i, b in enumerate(BAD)]
)
def test_bad_input_gives_a_value_error_naming_the_argument(arg, call):
    with pytest.raises(ValueError, match=rf"\b{arg}\b"):
        call()
