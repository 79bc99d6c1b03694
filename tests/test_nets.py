"""Tests for dlib.nets: shapes, time broadcasting, parameter counts, bad input."""

import pytest
import torch

from dlib.nets import MLP, SinusoidalEmbedding, UNet, count_params


def test_embedding_shape_range_and_resolution():
    emb = SinusoidalEmbedding(16)
    t = torch.tensor([0.0, 0.5, 0.501, 1.0])
    e = emb(t)
    assert e.shape == (4, 16)
    assert e.abs().max() <= 1.0
    assert torch.allclose(e[0], torch.cat([torch.zeros(8), torch.ones(8)]))
    # times 1e-3 apart get clearly different features (the factor 1000)
    assert (e[1] - e[2]).abs().max() > 0.5


@pytest.mark.parametrize("dim", [0, 7, -2])
def test_embedding_bad_dim(dim):
    with pytest.raises(ValueError, match="dim must be"):
        SinusoidalEmbedding(dim)


def test_embedding_bad_inputs():
    with pytest.raises(ValueError, match="max_period"):
        SinusoidalEmbedding(8, max_period=0.5)
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        SinusoidalEmbedding(8)(torch.rand(2, 2))
    with pytest.raises(ValueError, match=r"must lie in \[0"):
        SinusoidalEmbedding(8)(torch.tensor([1.5]))


def test_mlp_shapes_and_scalar_time():
    torch.manual_seed(0)
    net = MLP(2, hidden=32, depth=3)
    x = torch.randn(5, 2)
    out = net(x, 0.3)
    assert out.shape == (5, 2)
    assert torch.equal(out, net(x, torch.full((5,), 0.3)))
    assert torch.equal(out, net(x, torch.tensor(0.3)))
    assert not torch.allclose(out, net(x, 0.7))


def test_mlp_param_counts():
    assert 120_000 <= count_params(MLP(64, hidden=256, depth=3)) <= 180_000
    assert 35_000 <= count_params(MLP(2, hidden=128, depth=3)) <= 50_000
    assert "params=" in repr(MLP(2, hidden=8))


def test_mlp_bad_inputs():
    net = MLP(2, hidden=8)
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        net(torch.randn(4, 3), 0.5)
    with pytest.raises(ValueError, match=r"shape \(B, 2\)"):
        net(torch.randn(4), 0.5)
    with pytest.raises(ValueError, match=r"t must be a scalar or have shape \(4,\)"):
        net(torch.randn(4, 2), torch.rand(3))
    with pytest.raises(ValueError, match="must lie in"):
        net(torch.randn(4, 2), -0.1)
    with pytest.raises(ValueError, match="depth must be an integer >= 2"):
        MLP(2, depth=1)
    with pytest.raises(ValueError, match="hidden must be"):
        MLP(2, hidden=0)


@pytest.mark.parametrize("mults,size", [((1, 2), 8), ((1, 2, 2), 16)])
def test_unet_shapes(mults, size):
    torch.manual_seed(0)
    net = UNet(
        in_channels=1, base_channels=8, channel_mults=mults, img_size=size, emb_dim=16
    )
    x = torch.randn(3, 1, size, size)
    out = net(x, 0.5)
    assert out.shape == x.shape
    assert torch.equal(out, net(x, torch.full((3,), 0.5)))
    assert not torch.allclose(out, net(x, torch.rand(3)))


def test_unet_default_size_and_repr():
    net = UNet()
    assert 100_000 <= count_params(net) <= 1_000_000
    assert "params=" in repr(net)
    assert net(torch.randn(2, 1, 8, 8), torch.tensor(0.1)).shape == (2, 1, 8, 8)


def test_unet_bad_inputs():
    net = UNet(base_channels=8, emb_dim=16)
    with pytest.raises(ValueError, match=r"shape \(B, 1, 8, 8\)"):
        net(torch.randn(2, 1, 16, 16), 0.5)
    with pytest.raises(ValueError, match=r"shape \(B, 1, 8, 8\)"):
        net(torch.randn(2, 64), 0.5)
    with pytest.raises(ValueError, match="divisible"):
        UNet(channel_mults=(1, 2, 2), img_size=10)
    with pytest.raises(ValueError, match="channel_mults"):
        UNet(channel_mults=())
    with pytest.raises(ValueError, match="channel_mults"):
        UNet(channel_mults=(1, 0))


def test_count_params_trainable_only():
    lin = torch.nn.Linear(3, 2)
    assert count_params(lin) == 8
    lin.bias.requires_grad_(False)
    assert count_params(lin) == 6
    with pytest.raises(ValueError, match="nn.Module"):
        count_params(3)


# --- time is float whatever the dtypes; float64 data through float32 networks ---


def test_integer_times_are_float_times():
    torch.manual_seed(0)
    net = MLP(2, hidden=16, depth=3)
    x = torch.randn(3, 2)
    ints = torch.tensor([0, 1, 1])
    assert torch.equal(net(x, ints), net(x, ints.float()))
    assert torch.equal(net(x, 1), net(x, 1.0))
    assert torch.equal(net(x, torch.tensor(0)), net(x, 0.0))
    emb = SinusoidalEmbedding(8)
    assert torch.equal(emb(ints), emb(ints.float()))
    assert not torch.equal(net(x, 0), net(x, 1))  # not all zero times
    unet = UNet(base_channels=8, emb_dim=16)
    xi = torch.randn(3, 1, 8, 8)
    assert torch.equal(unet(xi, ints), unet(xi, ints.to(torch.float64)))


def test_integer_data_gives_float_output():
    torch.manual_seed(0)
    net = MLP(2, hidden=16, depth=3)
    tokens = torch.tensor([[0, 1], [2, 3]])
    out = net(tokens, 0.5)
    assert out.dtype == torch.float32
    assert torch.equal(out, net(tokens.float(), 0.5))


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda: MLP(2, hidden=16, depth=3), (5, 2)),
        (lambda: UNet(base_channels=8, emb_dim=16), (2, 1, 8, 8)),
    ],
)
def test_float64_in_float64_out(make, shape):
    torch.manual_seed(0)
    net = make()
    g = torch.Generator().manual_seed(1)
    x64 = torch.randn(*shape, generator=g, dtype=torch.float64)
    t64 = torch.rand(shape[0], generator=g, dtype=torch.float64)
    out = net(x64, t64)
    assert out.dtype == torch.float64
    # the network runs in float32: the result is the float32 one, exactly
    assert torch.equal(out, net(x64.float(), t64.float()).double())
    # a float64 network keeps float32 data in float32, within float32 round-off
    net64 = make().double()
    net64.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
    out32 = net64(x64.float(), t64)
    assert out32.dtype == torch.float32
    assert torch.allclose(out32.double(), net64(x64, t64), rtol=1e-5, atol=1e-6)
    assert torch.allclose(out, net64(x64, t64), rtol=1e-4, atol=1e-5)


def test_float64_data_through_a_denoiser():
    from dlib import param, schedules

    torch.manual_seed(0)
    den = param.Denoiser(MLP(2, hidden=16, depth=3), schedules.VPLinear(), "eps")
    x = torch.randn(4, 2, dtype=torch.float64)
    x0 = den.x0(x, 0.5)
    assert x0.dtype == torch.float64 and torch.isfinite(x0).all()


def test_time_and_input_bad_types():
    net = MLP(2, hidden=8)
    x = torch.randn(3, 2)
    for t, msg in [
        ("a", "t must be a number"),
        (None, "t must be a number"),
        (True, "t must be a number"),
        (torch.tensor([True, False, True]), "real times"),
        (torch.zeros(3, dtype=torch.complex64), "real times"),
        (torch.tensor([0.1, float("nan"), 0.2]), r"lie in \[0, 1\]"),
        (2, r"lie in \[0, 1\]"),
        (torch.rand(3, 1), r"shape \(3,\)"),
    ]:
        with pytest.raises(ValueError, match=msg):
            net(x, t)
    for bad, msg in [
        ([[0.0, 1.0]], r"x must be a tensor of shape \(B, 2\)"),
        (torch.zeros(3, 2, dtype=torch.bool), "real numbers"),
        (torch.zeros(3, 2, dtype=torch.complex64), "real numbers"),
    ]:
        with pytest.raises(ValueError, match=msg):
            net(bad, 0.5)
    with pytest.raises(ValueError, match="t must be a tensor"):
        SinusoidalEmbedding(8)(0.5)
    with pytest.raises(ValueError, match="x must be a tensor"):
        UNet()(None, 0.5)


# --- the U-Net's options and DDPM's configuration ---


def ddpm_reference_count(ch=128, mults=(1, 2, 2, 2), blocks=2, attn_level=1, c_img=3):
    """Parameters of DDPM's CIFAR-10 model counted layer by layer from its description
    (diffusion_tf/models/unet.py: dense time MLP ch -> 4ch -> 4ch, residual blocks with
    two GroupNorms, two 3x3 convs, a time projection and a 1x1 shortcut when the width
    changes, attention with GroupNorm + four 1x1 projections, 3x3 resampling convs,
    skips from conv_in, every block and every downsampling)."""
    temb = 4 * ch

    def conv(i, o, k=3):
        return k * k * i * o + o

    def res(i, o):
        return (
            2 * i
            + conv(i, o)
            + temb * o
            + o
            + 2 * o
            + conv(o, o)
            + (conv(i, o, 1) if i != o else 0)
        )

    def attn(c):
        return 2 * c + 4 * conv(c, c, 1)

    n = ch * temb + temb + temb * temb + temb + conv(c_img, ch)
    skips, c = [ch], ch
    for lvl, m in enumerate(mults):
        for _ in range(blocks):
            n += res(c, ch * m) + (attn(ch * m) if lvl == attn_level else 0)
            c = ch * m
            skips.append(c)
        if lvl < len(mults) - 1:
            n += conv(c, c)
            skips.append(c)
    n += 2 * res(c, c) + attn(c)
    for lvl in reversed(range(len(mults))):
        for _ in range(blocks + 1):
            n += res(c + skips.pop(), ch * mults[lvl])
            n += attn(ch * mults[lvl]) if lvl == attn_level else 0
            c = ch * mults[lvl]
        if lvl > 0:
            n += conv(c, c)
    return n + 2 * c + conv(c, c_img)


def test_ddpm_preset_matches_the_paper():
    net = UNet.ddpm_cifar10()
    ref = ddpm_reference_count()
    assert abs(ref - 35.7e6) < 0.05e6  # the paper's "35.7 million", rounded
    # the one documented difference: the first time-embedding layer is 512 -> 512
    # here instead of 128 -> 512
    assert count_params(net) == ref + 512 * 512 - 128 * 512 == 35_942_915
    assert net.dropout == 0.1 and net.attn_resolutions == (16,)
    assert sum(hasattr(b, "attn") for b in net.down) == 2
    assert sum(hasattr(b, "attn") for b in net.up) == 3
    assert len(net.up) == 4 * 3 and hasattr(net.mid, "attn")
    grey = UNet.ddpm_cifar10(in_channels=1)
    assert count_params(grey) == ddpm_reference_count(c_img=1) + 512 * 384


def test_self_attention_matches_the_formula():
    from dlib.nets import _SelfAttention

    torch.manual_seed(0)
    att = _SelfAttention(8, 4)
    x = torch.randn(2, 8, 3, 3)
    h = att.norm(x).flatten(2)  # (B, C, HW)
    w, b = att.qkv.weight[:, :, 0, 0], att.qkv.bias
    q, k, v = (torch.einsum("oc,bcn->bon", w, h) + b[None, :, None]).chunk(3, dim=1)
    a = torch.softmax(torch.einsum("bcn,bcm->bnm", q, k) / 8**0.5, dim=-1)
    o = torch.einsum("bnm,bcm->bcn", a, v).reshape(2, 8, 3, 3)
    want = x + att.proj(o)
    assert torch.allclose(att(x), want, atol=1e-5)


def test_unet_options_small_ddpm_layout():
    torch.manual_seed(0)
    net = UNet(
        3,
        base_channels=8,
        channel_mults=(1, 2),
        img_size=8,
        emb_dim=16,
        num_res_blocks=2,
        attn_resolutions=(4,),
        dropout=0.5,
        norm_groups=4,
        mid_attention=True,
        resample_skips=True,
    )
    assert len(net.down) == 4 and len(net.up) == 6
    assert [hasattr(b, "attn") for b in net.down] == [False, False, True, True]
    x = torch.randn(2, 3, 8, 8)
    net.eval()
    out = net(x, 0.3)
    assert out.shape == x.shape and torch.equal(out, net(x, 0.3))
    net.train()  # dropout is active in training mode only
    assert not torch.equal(net(x, 0.3), net(x, 0.3))
    loss = net(x, 0.3).pow(2).mean()
    loss.backward()
    assert all(p.grad is not None for p in net.parameters())


def test_default_unet_is_unchanged():
    # regression guard: the chapters' U-Nets keep their layers (hence their numbers)
    assert count_params(UNet()) == 381_921
    assert (
        count_params(UNet(3, base_channels=64, channel_mults=(1, 2, 2), img_size=32))
        == 2_550_211
    )
    assert not any(hasattr(b, "attn") for b in UNet().down)


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(num_res_blocks=0), "num_res_blocks must be an integer >= 1"),
        (dict(attn_resolutions=(5,)), r"attn_resolutions must be among .*\[8, 4\]"),
        (dict(attn_resolutions=4), "attn_resolutions must be a list or tuple"),
        (dict(dropout=1.0), r"dropout must be a number in \[0.0, 1.0\)"),
        (dict(dropout=float("nan")), "dropout must be a number"),
        (dict(dropout="0.1"), "dropout must be a number"),
        (dict(norm_groups=0), "norm_groups must be an integer"),
        (dict(mid_attention="yes"), "mid_attention must be True or False"),
        (dict(resample_skips=1), "resample_skips must be True or False"),
        (dict(channel_mults=(1, 2.0)), "channel_mults must be a non-empty"),
        (dict(in_channels=None), "in_channels must be an integer"),
    ],
)
def test_unet_bad_options(kw, msg):
    with pytest.raises(ValueError, match=msg):
        UNet(**kw)
