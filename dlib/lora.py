r"""Low-rank adapters (LoRA) and adapter arithmetic (chapter II.8).

LoRA (Hu et al. 2021) freezes a linear layer's weight $W_0$ (d_out x d_in) and learns a
low-rank update: $W=W_0+\frac{\gamma}{r}BA$ with $A$ (r x d_in), $B$ (d_out x r), rank
$r$ and scale $\gamma$ (peft's ``lora_alpha``; the book keeps $\alpha$ for the
schedule). $B$ starts at zero, so the adapted network equals the base network before
training, and only $A$ and $B$ receive gradients. The trained update
$\tau=\frac{\gamma}{r}BA$ is a weight difference that can be added to the base with a
weight, or combined with other adapters' differences (adapter arithmetic):
$\theta=\theta_{\rm pre}+c_1\tau_1+c_2\tau_2$.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from . import _checks as C

__all__ = ["LoRALinear", "add_lora", "lora_deltas", "merge_deltas"]


class LoRALinear(nn.Module):
    r"""A frozen ``nn.Linear`` plus a trainable low-rank update:
    $y=W_0x+b_0+\frac{\gamma}{r}B(Ax)$. ``rank`` $r$ is an integer in
    $1..\min(d_{\rm in},d_{\rm out})$, ``gamma`` $\gamma>0$ (default $\gamma=r$, a unit
    scale). $A$ is drawn like ``nn.Linear``'s weights (uniform in
    $\pm1/\sqrt{d_{\rm in}}$, from ``generator``), $B=0$. The base layer is deep-copied
    and frozen. Chapter II.8."""

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        gamma: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ValueError(
                f"base must be a torch.nn.Linear layer; got {type(base).__name__}"
            )
        d_out, d_in = base.weight.shape
        self.rank = C.positive_int(rank, "rank")
        if self.rank > min(d_in, d_out):
            raise ValueError(
                f"rank must be at most min(in_features, out_features) = "
                f"{min(d_in, d_out)} for this {d_in}->{d_out} layer; got {rank}"
            )
        self.gamma = float(self.rank) if gamma is None else C.positive(gamma, "gamma")
        if not math.isfinite(self.gamma):
            raise ValueError(f"gamma must be a finite positive number; got {gamma}")
        C.generator(generator)
        self.base = copy.deepcopy(base).requires_grad_(False)
        w = base.weight
        bound = 1.0 / math.sqrt(d_in)
        a = torch.rand(self.rank, d_in, generator=generator, dtype=w.dtype)
        self.A = nn.Parameter(((2 * a - 1) * bound).to(w.device))
        self.B = nn.Parameter(torch.zeros(d_out, self.rank, dtype=w.dtype,
                                          device=w.device))

    @property
    def scaling(self) -> float:
        r"""$\gamma/r$."""
        return self.gamma / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The base layer's output plus the scaled low-rank update."""
        return self.base(x) + self.scaling * (x @ self.A.T) @ self.B.T

    def delta(self) -> torch.Tensor:
        r"""The weight update $\tau=\frac{\gamma}{r}BA$ (d_out x d_in), detached."""
        return (self.scaling * self.B @ self.A).detach()

    def merged(self) -> nn.Linear:
        r"""A plain ``nn.Linear`` with weight $W_0+\frac{\gamma}{r}BA$ and the base
        bias: the same function as this layer, at the base layer's cost."""
        out = copy.deepcopy(self.base)
        with torch.no_grad():
            out.weight.add_(self.delta())
        return out.requires_grad_(True)

    def extra_repr(self) -> str:
        return f"rank={self.rank}, gamma={self.gamma:g}"


def _module(net, name: str) -> nn.Module:
    if not isinstance(net, nn.Module):
        raise ValueError(f"{name} must be a torch.nn.Module; got {type(net).__name__}")
    return net


def add_lora(
    net: nn.Module,
    rank: int,
    gamma: float | None = None,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """A deep copy of ``net`` with every ``nn.Linear`` replaced by a
    :class:`LoRALinear` of the given ``rank`` (capped at each layer's
    min(in, out)) and ``gamma`` (default: the rank), and every other parameter
    frozen: only the adapters' $A$ and $B$ train. ``net`` itself is not changed.
    Chapter II.8."""
    _module(net, "net")
    rank = C.positive_int(rank, "rank")
    if gamma is not None:
        gamma = C.positive(gamma, "gamma")
        if not math.isfinite(gamma):
            raise ValueError(f"gamma must be a finite positive number; got {gamma}")
    C.generator(generator)
    out = copy.deepcopy(net).requires_grad_(False)
    linears = [(n, m) for n, m in out.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("net has no torch.nn.Linear layer to adapt")
    for name, lin in linears:
        r = min(rank, *lin.weight.shape)
        parent, _, leaf = name.rpartition(".")
        owner = out.get_submodule(parent) if parent else out
        g = None if gamma is None else gamma * r / rank  # same gamma / r everywhere
        setattr(owner, leaf, LoRALinear(lin, r, g, generator))
    return out


def lora_deltas(net: nn.Module) -> dict[str, torch.Tensor]:
    r"""The weight updates $\tau$ of every :class:`LoRALinear` in ``net``, keyed by the
    adapted layer's name in the base network (``"layers.0"`` for the adapter at
    ``"layers.0"``): the "task vector" $\theta_{\rm tuned}-\theta_{\rm pre}$ of an
    adapter. Chapter II.8."""
    _module(net, "net")
    out = {n: m.delta() for n, m in net.named_modules() if isinstance(m, LoRALinear)}
    if not out:
        raise ValueError("net has no LoRALinear layer (build it with add_lora)")
    return out


def merge_deltas(
    base: nn.Module, deltas: list[dict[str, torch.Tensor]], weights: list[float]
) -> nn.Module:
    r"""Adapter arithmetic: a deep copy of ``base`` whose linear weights are
    $W_0+\sum_i c_i\tau_i$, for the weight updates ``deltas`` (each from
    :func:`lora_deltas` of an adapter trained on this base) and the weights ``weights``
    ($c_i$, any real numbers; one per delta). Every key must name an ``nn.Linear`` of
    ``base`` with a weight of the same shape. With one delta and weight 1 the result
    computes the same function as the adapted network. Chapter II.8."""
    _module(base, "base")
    if not isinstance(deltas, (list, tuple)) or not isinstance(weights, (list, tuple)):
        raise ValueError("deltas and weights must be lists (one weight per delta)")
    if len(deltas) != len(weights):
        raise ValueError(
            f"weights must have one entry per delta: {len(deltas)} deltas, "
            f"{len(weights)} weights"
        )
    weights = [C.number(c, "weights") for c in weights]
    out = copy.deepcopy(base)
    layers = dict(out.named_modules())
    for delta in deltas:
        if not isinstance(delta, dict) or not delta:
            raise ValueError("each entry of deltas must be a non-empty dict from "
                             "lora_deltas")
        for name, d in delta.items():
            lin = layers.get(name)
            if not isinstance(lin, nn.Linear):
                raise ValueError(f"deltas names {name!r}, which is not a Linear layer "
                                 "of base")
            if not torch.is_tensor(d) or d.shape != lin.weight.shape:
                got = tuple(d.shape) if torch.is_tensor(d) else type(d).__name__
                raise ValueError(
                    f"deltas[{name!r}] must have the weight's shape "
                    f"{tuple(lin.weight.shape)}; got {got}"
                )
            C.finite(d, f"deltas[{name!r}]")
    with torch.no_grad():
        for delta, c in zip(deltas, weights):
            for name, d in delta.items():
                layers[name].weight.add_(d.to(layers[name].weight), alpha=c)
    return out
