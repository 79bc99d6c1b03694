r"""Small denoiser networks: an MLP for low-dimensional data and a UNet for tiny images.

Both networks take a batch ``x`` and a time ``t`` in $[0,1]$ (a scalar, broadcast to the batch,
or one time per sample) and return a tensor of the same shape as ``x``. What that output *means*
(noise, data, score or velocity) is decided by the parameterisation, not by the network.

* :class:`SinusoidalEmbedding`  the time features shared by both networks.
* :class:`MLP`   time embedding added to every hidden layer; SiLU activations.
* :class:`UNet`  residual blocks with GroupNorm, time injection and skip connections.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._checks import as_time, batch_time

__all__ = ["SinusoidalEmbedding", "MLP", "UNet", "count_params"]


def count_params(module: nn.Module) -> int:
    """Number of trainable parameters (those with ``requires_grad``) of ``module``."""
    if not isinstance(module, nn.Module):
        raise ValueError(f"count_params expects a torch.nn.Module; got {type(module).__name__}")
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


class SinusoidalEmbedding(nn.Module):
    r"""Fixed sin/cos features of a time $t\in[0,1]$, as in the Transformer and DDPM.

    The time is first multiplied by 1000, so that the frequencies
    $\omega_k = \text{max\_period}^{-k/(\text{dim}/2)}$ (from 1 down to ``1/max_period``) separate
    times that differ by about $10^{-3}$: without the factor, the features of nearby times in
    $[0,1]$ would be almost identical. Output: ``cat(sin(1000 t w), cos(1000 t w))`` of shape (B, dim).
    """

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        _positive_int(dim, "dim")
        if dim % 2:
            raise ValueError(f"dim must be even (half sin, half cos features); got {dim}")
        if not (isinstance(max_period, (int, float)) and math.isfinite(max_period) and max_period > 1):
            raise ValueError(f"max_period must be a finite number > 1; got {max_period!r}")
        self.dim = dim
        self.max_period = float(max_period)
        half = dim // 2
        freqs = torch.exp(-math.log(self.max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed times ``t`` of shape (B,) with values in [0, 1]; returns (B, dim)."""
        t = as_time(t, name="t")
        if t.dim() != 1:
            raise ValueError(f"t must have shape (B,); got shape {tuple(t.shape)}")
        args = 1000.0 * t[:, None].to(self.freqs.dtype) * self.freqs[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period:g}"


def _time_mlp(emb_dim: int) -> nn.Sequential:
    """Sinusoidal features followed by a small learned MLP (the usual time embedding)."""
    return nn.Sequential(SinusoidalEmbedding(emb_dim), nn.Linear(emb_dim, emb_dim), nn.SiLU(),
                         nn.Linear(emb_dim, emb_dim), nn.SiLU())


class MLP(nn.Module):
    """Time-conditioned MLP denoiser for vectors of shape (B, dim).

    ``depth`` counts the linear layers that act on ``x``: an input layer ``dim -> hidden``,
    ``depth - 2`` layers ``hidden -> hidden`` and an output layer ``hidden -> dim``. Before the
    SiLU of each of the ``depth - 1`` hidden layers, a learned linear projection of the time
    embedding is added (one projection per layer). With ``dim=64, hidden=256, depth=3`` this is
    about 140k parameters, with ``dim=2, hidden=128, depth=3`` about 42k.
    """

    def __init__(self, dim: int, hidden: int = 256, depth: int = 3, emb_dim: int = 64) -> None:
        super().__init__()
        self.dim = _positive_int(dim, "dim")
        self.hidden = _positive_int(hidden, "hidden")
        self.depth = _positive_int(depth, "depth", minimum=2)
        self.emb_dim = _positive_int(emb_dim, "emb_dim", minimum=2)
        self.time = _time_mlp(emb_dim)
        widths = [dim] + [hidden] * (depth - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.time_proj = nn.ModuleList(nn.Linear(emb_dim, hidden) for _ in range(depth - 1))
        self.out = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """Map ``x`` (B, dim) and ``t`` (scalar or (B,), in [0, 1]) to a tensor of shape (B, dim)."""
        if not torch.is_tensor(x) or x.dim() != 2 or x.shape[1] != self.dim:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"x must be a tensor of shape (B, {self.dim}); got {shape}")
        emb = self.time(batch_time(t, x))
        h = x
        for layer, proj in zip(self.layers, self.time_proj):
            h = F.silu(layer(h) + proj(emb))
        return self.out(h)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, hidden={self.hidden}, depth={self.depth}, emb_dim={self.emb_dim}, "
                f"params={count_params(self):,}")


def _groups(channels: int) -> int:
    """Largest of 8, 4, 2, 1 that divides ``channels`` (the number of GroupNorm groups)."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class _ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, add time embedding, GroupNorm -> SiLU -> conv, plus a skip path."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """A small UNet for square images (sizes 8 to 32) of shape (B, in_channels, img_size, img_size).

    One residual block per resolution on the way down and on the way up (the up blocks receive the
    down block's output through a skip connection), one block in the middle. Level ``i`` has
    ``base_channels * channel_mults[i]`` channels; the resolution halves between levels (strided
    convolution) and doubles on the way back (nearest upsampling + convolution), so ``img_size``
    must be divisible by ``2 ** (len(channel_mults) - 1)``.
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 32, channel_mults: Sequence[int] = (1, 2),
                 img_size: int = 8, emb_dim: int = 64) -> None:
        super().__init__()
        self.in_channels = _positive_int(in_channels, "in_channels")
        _positive_int(base_channels, "base_channels")
        self.img_size = _positive_int(img_size, "img_size")
        self.emb_dim = _positive_int(emb_dim, "emb_dim", minimum=2)
        mults = tuple(channel_mults) if isinstance(channel_mults, (list, tuple)) else ()
        if not mults or any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in mults):
            raise ValueError(f"channel_mults must be a non-empty sequence of positive integers; got {channel_mults!r}")
        factor = 2 ** (len(mults) - 1)
        if img_size % factor:
            raise ValueError(f"img_size must be divisible by 2**(len(channel_mults)-1) = {factor}; got {img_size}")
        self.channel_mults = mults
        chs = [base_channels * m for m in mults]
        self.time = _time_mlp(emb_dim)
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        ch = base_channels
        for i, c in enumerate(chs):
            self.down.append(_ResBlock(ch, c, emb_dim))
            ch = c
            if i < len(chs) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid = _ResBlock(ch, ch, emb_dim)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(chs))):
            self.up.append(_ResBlock(ch + chs[i], chs[i], emb_dim))
            ch = chs[i]
            if i > 0:
                self.upsample.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                                                   nn.Conv2d(ch, ch, 3, padding=1)))
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """Map images ``x`` (B, C, H, W) and ``t`` (scalar or (B,), in [0, 1]) to the shape of ``x``."""
        want = (self.in_channels, self.img_size, self.img_size)
        if not torch.is_tensor(x) or x.dim() != 4 or tuple(x.shape[1:]) != want:
            shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"x must be a tensor of shape (B, {want[0]}, {want[1]}, {want[2]}); got {shape}")
        emb = self.time(batch_time(t, x))
        h = self.conv_in(x)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, emb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid(h, emb)
        for j, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if j < len(self.upsample):
                h = self.upsample[j](h)
        return self.conv_out(F.silu(self.norm_out(h)))

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, channel_mults={self.channel_mults}, "
                f"img_size={self.img_size}, params={count_params(self):,}")
