"""Tests for dlib.nets: shapes, time broadcasting, parameter counts, input validation."""

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
    net = UNet(in_channels=1, base_channels=8, channel_mults=mults, img_size=size, emb_dim=16)
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
