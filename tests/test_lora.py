"""LoRA (dlib.lora, chapter II.8): zero-initialised B, merged weights equal to the
forward pass, gradients only in A and B, rank/scale validation, adapter arithmetic."""

import pytest
import torch
from torch import nn

from dlib import lora, nets

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def base_linear(d_in=6, d_out=5):
    torch.manual_seed(0)
    return nn.Linear(d_in, d_out).double()


def test_zero_init_equals_base_and_merged_equals_forward():
    lin = base_linear()
    ad = lora.LoRALinear(lin, rank=3, gamma=6.0, generator=gen())
    x = torch.randn(7, 6, dtype=F64, generator=gen(1))
    assert torch.equal(ad(x), lin(x))  # B = 0 exactly
    with torch.no_grad():
        ad.B.normal_(generator=gen(2))
    assert ad.scaling == 2.0
    want = x @ (lin.weight + 2.0 * ad.B @ ad.A).T + lin.bias
    torch.testing.assert_close(ad(x), want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ad.merged()(x), ad(x), rtol=1e-12, atol=1e-12)
    assert torch.linalg.matrix_rank(ad.delta()).item() == 3


def test_gradients_only_in_adapters():
    net = nets.MLP(4, hidden=16, depth=3).double()
    ad = lora.add_lora(net, rank=2, generator=gen())
    x = torch.randn(8, 4, dtype=F64, generator=gen(1))
    torch.testing.assert_close(ad(x, 0.3), net(x, 0.3), rtol=0, atol=0)
    with torch.no_grad():  # a non-zero B, so that A gets a gradient too
        for m in ad.modules():
            if isinstance(m, lora.LoRALinear):
                m.B.normal_(generator=gen(3))
    ad(x, 0.3).pow(2).sum().backward()
    for name, p in ad.named_parameters():
        is_adapter = name.endswith(".A") or name.endswith(".B")
        assert p.requires_grad == is_adapter, name
        assert (p.grad is not None) == is_adapter, name
    # the original network is untouched and still trainable
    assert all(p.requires_grad for p in net.parameters())
    n_lin = sum(isinstance(m, nn.Linear) for m in net.modules())
    assert sum(isinstance(m, lora.LoRALinear) for m in ad.modules()) == n_lin


def test_adapter_arithmetic_is_linear_in_the_weights():
    net = nets.MLP(4, hidden=16, depth=3).double()
    ads = [lora.add_lora(net, rank=2, generator=gen(s)) for s in (0, 1)]
    for k, ad in enumerate(ads):
        with torch.no_grad():
            for m in ad.modules():
                if isinstance(m, lora.LoRALinear):
                    m.B.normal_(generator=gen(10 + k))
    d1, d2 = (lora.lora_deltas(a) for a in ads)
    x = torch.randn(8, 4, dtype=F64, generator=gen(1))
    one = lora.merge_deltas(net, [d1], [1.0])
    torch.testing.assert_close(one(x, 0.4), ads[0](x, 0.4), rtol=1e-10, atol=1e-10)
    both = lora.merge_deltas(net, [d1, d2], [0.8, -1.5])
    for name, m in both.named_modules():
        if isinstance(m, nn.Linear):
            w0 = net.get_submodule(name).weight
            torch.testing.assert_close(m.weight, w0 + 0.8 * d1[name] - 1.5 * d2[name])
    zero = lora.merge_deltas(net, [d1, d2], [0.0, 0.0])
    torch.testing.assert_close(zero(x, 0.4), net(x, 0.4), rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, word",
    [({"rank": 0}, "rank"), ({"rank": 6}, "rank"), ({"rank": 2.5}, "rank"),
     ({"rank": 2, "gamma": 0.0}, "gamma"),
     ({"rank": 2, "gamma": float("nan")}, "gamma"),
     ({"rank": 2, "gamma": float("inf")}, "gamma")],
)
def test_rank_and_scale_validation(kwargs, word):
    with pytest.raises(ValueError, match=word):
        lora.LoRALinear(base_linear(), **kwargs)


def test_bad_input_names_the_argument():
    net = nets.MLP(4, hidden=8, depth=2)
    with pytest.raises(ValueError, match="base"):
        lora.LoRALinear(nn.Conv1d(1, 1, 1), rank=1)
    with pytest.raises(ValueError, match="net"):
        lora.add_lora("net", rank=1)
    with pytest.raises(ValueError, match="net"):
        lora.add_lora(nn.ReLU(), rank=1)
    with pytest.raises(ValueError, match="gamma"):
        lora.add_lora(net, rank=1, gamma=-1.0)
    with pytest.raises(ValueError, match="LoRALinear"):
        lora.lora_deltas(net)
    d = lora.lora_deltas(lora.add_lora(net, rank=1))
    with pytest.raises(ValueError, match="weights"):
        lora.merge_deltas(net, [d], [1.0, 2.0])
    with pytest.raises(ValueError, match="weights"):
        lora.merge_deltas(net, [d], [float("nan")])
    with pytest.raises(ValueError, match="Linear layer"):
        lora.merge_deltas(net, [{"nope": torch.zeros(1)}], [1.0])
    name = next(iter(d))
    with pytest.raises(ValueError, match="shape"):
        lora.merge_deltas(net, [{name: torch.zeros(1, 1)}], [1.0])
    bad = {k: v.clone() for k, v in d.items()}
    bad[name].view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="deltas"):
        lora.merge_deltas(net, [bad], [1.0])
