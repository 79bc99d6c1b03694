"""Small input validators shared by every module: bad input fails early with a clear ValueError."""

from __future__ import annotations

import math
from typing import Iterable

import torch


def as_time(t, *, name: str = "t", lo: float = 0.0, hi: float = 1.0, dtype=None) -> torch.Tensor:
    """Return ``t`` as a tensor after checking that every entry lies in ``[lo, hi]`` (and is finite)."""
    if not torch.is_tensor(t):
        t = torch.as_tensor(t, dtype=dtype or torch.get_default_dtype())
    elif not t.is_floating_point():
        t = t.to(dtype or torch.get_default_dtype())
    if t.numel() and (not torch.isfinite(t).all() or (t < lo).any() or (t > hi).any()):
        bad = t[~torch.isfinite(t) | (t < lo) | (t > hi)].flatten()[:3].tolist()
        raise ValueError(f"{name} must lie in [{lo}, {hi}]; got values such as {bad}")
    return t


def positive(value: float, name: str) -> float:
    """Check that a scalar is a finite positive number and return it as float."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number; got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")
    return v


def one_of(value: str, allowed: Iterable[str], name: str) -> str:
    """Check that ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}")
    return value


def batch_time(t, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a scalar or per-sample time to shape (B,) for a batch ``x`` of shape (B, ...)."""
    t = as_time(t, dtype=x.dtype).to(device=x.device, dtype=x.dtype)
    if t.dim() == 0:
        return t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},) to match x of shape "
                         f"{tuple(x.shape)}; got shape {tuple(t.shape)}")
    return t


def bcast(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample coefficient of shape (B,) (or scalar) so it broadcasts against x (B, ...)."""
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device)
    if c.dim() == 0:
        return c
    return c.reshape(c.shape + (1,) * (x.dim() - c.dim()))


def randn(shape, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal draws with the dtype and device of ``like``. They are drawn on the generator's
    device and then moved, so a seeded CPU generator also drives CUDA tensors (and gives the same
    numbers on every device)."""
    dev = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=dev).to(like.device)


def rand(shape, like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform [0, 1) draws like :func:`randn`."""
    dev = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, dtype=like.dtype, device=dev).to(like.device)
