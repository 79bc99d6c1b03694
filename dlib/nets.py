r"""Denoiser networks: an MLP for low-dimensional data, a U-Net for images, an
energy-based MLP and a token transformer.

The MLP and the U-Net take a batch ``x`` and a time ``t`` in $[0,1]$ (a scalar,
broadcast to the batch, or one time per sample) and return a tensor of the same shape as
``x``. What that output *means* (noise, data, score or velocity) is decided by the
parameterisation, not by the network.

* :class:`SinusoidalEmbedding`  the time features shared by the networks.
* :class:`MLP`   time embedding added to every hidden layer; SiLU activations.
* :class:`UNet`  residual blocks with GroupNorm, time injection and skip connections;
  small by default, DDPM's CIFAR-10 network with :meth:`UNet.ddpm_cifar10`.
* :class:`EnergyMLP`  a scalar energy whose negative gradient is the output (a
  conservative field, chapter I.6).
* :class:`TokenTransformer`  token sequences (B, L) to logits (B, L, out_dim), for
  discrete diffusion (Part III); its inputs are tokens, not vectors shaped like its
  output.

Dtypes. Times are floating point whatever the data's dtype (integer times or integer
data give float times). The input is cast to the dtype of the network's parameters, and
the output is returned in the input's floating dtype: float64 data (as the
:mod:`dlib.analytic` ground truth returns) go through a float32 network and come back as
float64, equal to the float32 result. Integer input comes back in the parameters' dtype.

Checks. Shapes, dtypes and Python-number times are checked at every call; the
*values* of a tensor of times (in [0, 1]) and of the input (finite) are checked only on
the CPU, so that a sampler's step on a GPU never waits for the device (see
:mod:`dlib._checks`).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._checks import flag as _flag
from ._checks import in_range, positive_int

__all__ = [
    "SinusoidalEmbedding",
    "MLP",
    "UNet",
    "count_params",
    "EnergyMLP",
    "TokenTransformer",
]


def count_params(module: nn.Module) -> int:
    """Number of trainable parameters (those with ``requires_grad``) of ``module``."""
    if not isinstance(module, nn.Module):
        raise ValueError(
            f"count_params expects a torch.nn.Module; got {type(module).__name__}"
        )
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _times(t, batch: int, like: torch.Tensor, name: str = "t") -> torch.Tensor:
    """``t`` (a number, a 0-d tensor or a (batch,) tensor, any real dtype) as a (batch,)
    tensor with ``like``'s floating dtype and device. Values must lie in [0, 1]; for a
    tensor on an accelerator they are not checked (that would make the host wait)."""
    if isinstance(t, (bool, str)) or t is None:
        raise ValueError(f"{name} must be a number or a tensor of times; got {t!r}")
    if not torch.is_tensor(t):
        try:
            t = torch.as_tensor(t, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"{name} must be a number or a tensor of times; got {type(t).__name__}"
            ) from None
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name} must hold real times; got dtype {t.dtype}")
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(
            f"{name} must be a scalar or have shape ({batch},) to match a batch of "
            f"{batch}; got shape {tuple(t.shape)}"
        )
    if t.device.type == "cpu" and t.numel():
        lo, hi = torch.aminmax(t)
        if not (lo.item() >= 0 and hi.item() <= 1):  # False for NaN too
            bad = ~torch.isfinite(t) | (t < 0) | (t > 1)
            vals = t[bad][:3].tolist()
            raise ValueError(f"{name} must lie in [0, 1]; got values such as {vals}")
    return t.to(device=like.device, dtype=like.dtype)


def _input(x, want: tuple, params: nn.Module, name: str = "x") -> torch.Tensor:
    """Check that ``x`` is a real tensor of shape (B, *want) and cast it to the dtype of
    the parameters of ``params``."""
    if not torch.is_tensor(x) or x.dim() != len(want) + 1 or tuple(x.shape[1:]) != want:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        dims = ", ".join(str(d) for d in want)
        raise ValueError(f"{name} must be a tensor of shape (B, {dims}); got {shape}")
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"{name} must hold real numbers; got dtype {x.dtype}")
    if x.device.type == "cpu" and x.is_floating_point() and x.numel():
        lo, hi = torch.aminmax(x)  # NaN propagates; one cheap reduction
        if not (math.isfinite(lo.item()) and math.isfinite(hi.item())):
            raise ValueError(f"{name} contains NaN or inf values")
    return x.to(next(params.parameters()).dtype)


def _output(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The network's output in the input's floating dtype (see the module docstring)."""
    return h.to(x.dtype) if x.is_floating_point() else h


class SinusoidalEmbedding(nn.Module):
    r"""Fixed sin/cos features of a time $t\in[0,1]$, as in the Transformer and DDPM.

    The time is first multiplied by 1000, so that the frequencies
    $\omega_k = \text{max\_period}^{-k/(\text{dim}/2)}$ (from 1 down to
    ``1/max_period``) separate times that differ by about $10^{-3}$: without the factor,
    the features of nearby times in $[0,1]$ would be almost identical. Output:
    ``cat(sin(1000 t w), cos(1000 t w))`` of shape (B, dim), in the dtype of the
    module's buffer (float32 unless the module was converted).
    """

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        _even(dim, "dim")
        if (
            isinstance(max_period, bool)
            or not isinstance(max_period, (int, float))
            or not math.isfinite(max_period)
            or max_period <= 1
        ):
            raise ValueError(
                f"max_period must be a finite number > 1; got {max_period!r}"
            )
        self.dim = dim
        self.max_period = float(max_period)
        half = dim // 2
        k = torch.arange(half, dtype=torch.float32)
        freqs = torch.exp(-math.log(self.max_period) * k / half)
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t) -> torch.Tensor:
        """Embed times ``t`` of shape (B,) with values in [0, 1]; returns (B, dim)."""
        if not torch.is_tensor(t):
            raise ValueError(f"t must be a tensor of shape (B,); got {t!r}")
        if t.dim() != 1:
            raise ValueError(f"t must have shape (B,); got shape {tuple(t.shape)}")
        return self._embed(_times(t, t.shape[0], self.freqs))

    def _embed(self, t: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` for checked times of shape (B,) in the buffer's dtype."""
        args = 1000.0 * t[:, None] * self.freqs[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period:g}"


class _TimeMLP(nn.Sequential):
    """Sinusoidal features, then a small learned MLP (the usual time embedding). The
    networks check their times once, so the features are computed unchecked here."""

    def __init__(self, emb_dim: int) -> None:
        super().__init__(
            SinusoidalEmbedding(emb_dim),
            nn.Linear(emb_dim, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
            nn.SiLU(),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        embedding, *layers = self
        h = embedding._embed(t)
        for layer in layers:
            h = layer(h)
        return h


class MLP(nn.Module):
    """Time-conditioned MLP denoiser for vectors of shape (B, dim).

    ``depth`` counts the linear layers that act on ``x``: an input layer
    ``dim -> hidden``, ``depth - 2`` layers ``hidden -> hidden`` and an output layer
    ``hidden -> dim``. Before the SiLU of each of the ``depth - 1`` hidden layers, a
    learned linear projection of the time embedding is added (one projection per
    layer). With ``dim=64, hidden=256, depth=3`` this is about 140k parameters, with
    ``dim=2, hidden=128, depth=3`` about 42k. Dtypes: see the module docstring.

    Class labels (chapter I.5). With ``num_classes=C`` the network also takes labels
    ``y``: a learned embedding of ``y`` (C classes plus the *null label* ``C``, which
    means "no condition") is added to the time embedding. ``forward(x, t)`` and
    ``forward(x, t, None)`` use the null label, so one network is both the conditional
    and the unconditional model of classifier-free guidance (train it with label
    dropout: replace ``y`` by :attr:`null_label` at random). Without ``num_classes``
    (default) the network is unconditional and rejects labels.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 3,
        emb_dim: int = 64,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        self.dim = positive_int(dim, "dim")
        self.hidden = positive_int(hidden, "hidden")
        self.depth = positive_int(depth, "depth", minimum=2)
        self.emb_dim = _even(emb_dim, "emb_dim")
        self.num_classes = (
            None if num_classes is None else positive_int(num_classes, "num_classes")
        )
        self.time = _TimeMLP(emb_dim)
        if self.num_classes is not None:  # C classes + the null label C
            self.label = nn.Embedding(self.num_classes + 1, emb_dim)
        widths = [dim] + [hidden] * (depth - 1)
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])
        )
        self.time_proj = nn.ModuleList(
            nn.Linear(emb_dim, hidden) for _ in range(depth - 1)
        )
        self.out = nn.Linear(hidden, dim)

    @property
    def null_label(self) -> int | None:
        """The label that means "no condition" (``num_classes``), or None."""
        return self.num_classes

    def _labels(self, y, batch: int, device) -> torch.Tensor:
        """``y`` (None, an int or a (batch,) integer tensor in 0..num_classes) as a
        (batch,) int64 tensor; None is the null label."""
        if self.num_classes is None:
            raise ValueError(
                "y was given but this MLP has no label input; build it with "
                "MLP(..., num_classes=C) to condition on labels"
            )
        C = self.num_classes
        if y is None:
            y = C
        if isinstance(y, int) and not isinstance(y, bool):
            y = torch.full((batch,), y, dtype=torch.int64)
        if (
            not torch.is_tensor(y)
            or y.dtype == torch.bool
            or y.is_floating_point()
            or y.is_complex()
            or y.shape != (batch,)
        ):
            what = (
                f"shape {tuple(y.shape)}, dtype {y.dtype}"
                if torch.is_tensor(y)
                else repr(y)
            )
            raise ValueError(
                f"y must be None, an int or an integer tensor of shape ({batch},) with "
                f"labels in 0..{C} ({C} = null label); got {what}"
            )
        if y.device.type == "cpu" and y.numel():
            lo, hi = torch.aminmax(y)
            if lo.item() < 0 or hi.item() > C:
                raise ValueError(
                    f"y must hold labels in 0..{C} ({C} = null label); got values from "
                    f"{lo.item()} to {hi.item()}"
                )
        return y.to(device=device, dtype=torch.int64)

    def forward(self, x: torch.Tensor, t, y=None) -> torch.Tensor:
        """Map ``x`` (B, dim), ``t`` (scalar or (B,), in [0, 1]) and, for a network
        with ``num_classes``, labels ``y`` (None = null label, an int, or (B,) integers
        in 0..num_classes) to (B, dim)."""
        h = _input(x, (self.dim,), self)
        emb = self.time(_times(t, h.shape[0], h))
        if self.num_classes is not None or y is not None:
            labels = self._labels(y, h.shape[0], h.device)  # raises if no label input
            emb = emb + self.label(labels)
        for layer, proj in zip(self.layers, self.time_proj):
            h = F.silu(layer(h) + proj(emb))
        return _output(self.out(h), x)

    def extra_repr(self) -> str:
        labels = (
            f", num_classes={self.num_classes}" if self.num_classes is not None else ""
        )
        return (
            f"dim={self.dim}, hidden={self.hidden}, depth={self.depth}, "
            f"emb_dim={self.emb_dim}{labels}, params={count_params(self):,}"
        )


class _SelfAttention(nn.Module):
    r"""DDPM's attention block: GroupNorm, then single-head self-attention over the
    H*W positions, $\mathrm{softmax}(QK^\top/\sqrt{C})V$ with 1x1-convolution
    projections, added back to the input."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, C, H * W).transpose(2, 3)
        q, k, v = qkv.unbind(1)  # each (B, H*W, C)
        h = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(C)
        return x + self.proj(h.transpose(1, 2).reshape(B, C, H, W))


class _ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, add the time embedding, GroupNorm -> SiLU ->
    (dropout) -> conv, plus a skip path; optionally followed by self-attention."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        emb_dim: int,
        groups: int,
        dropout: float = 0.0,
        attention: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(math.gcd(c_in, groups), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(math.gcd(c_out, groups), c_out)
        self.dropout = dropout
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        if attention:
            self.attn = _SelfAttention(c_out, math.gcd(c_out, groups))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = F.silu(self.norm2(h))
        if self.dropout:
            h = F.dropout(h, self.dropout, self.training)
        h = self.conv2(h) + self.skip(x)
        return self.attn(h) if hasattr(self, "attn") else h


class UNet(nn.Module):
    """A U-Net for square images of shape (B, in_channels, img_size, img_size).

    Level ``i`` works at resolution ``img_size / 2**i`` with
    ``base_channels * channel_mults[i]`` channels: ``num_res_blocks`` residual blocks,
    then a strided convolution that halves the resolution (not after the last level).
    The middle has one block. The way up mirrors the way down (nearest upsampling and a
    convolution between levels); every down block's output is kept and handed to one up
    block of its level through a skip connection (concatenated channels). So
    ``img_size`` must be divisible by ``2 ** (len(channel_mults) - 1)``.

    The defaults give the book's small CPU network (one block per level, no attention,
    no dropout, GroupNorm with gcd(channels, 8) groups). The options add DDPM's pieces:

    * ``attn_resolutions``: a self-attention block after each residual block at these
      resolutions (DDPM: 16 for 32x32 images);
    * ``dropout``: dropout before the second convolution of each residual block;
    * ``norm_groups``: each GroupNorm uses gcd(channels, norm_groups) groups (DDPM: 32);
    * ``mid_attention``: the middle becomes block -> attention -> block;
    * ``resample_skips``: the input convolution's output and every downsampled map are
      kept as skips too, so each level of the way up has ``num_res_blocks + 1`` blocks
      (DDPM's layout).

    :meth:`ddpm_cifar10` sets them all as in DDPM's CIFAR-10 model. The time embedding
    has ``emb_dim`` features (sinusoidal, then two linear layers with SiLU) and is added
    in every residual block. Dtypes: see the module docstring.
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2),
        img_size: int = 8,
        emb_dim: int = 64,
        *,
        num_res_blocks: int = 1,
        attn_resolutions: Sequence[int] = (),
        dropout: float = 0.0,
        norm_groups: int = 8,
        mid_attention: bool = False,
        resample_skips: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels")
        positive_int(base_channels, "base_channels")
        self.img_size = positive_int(img_size, "img_size")
        self.emb_dim = _even(emb_dim, "emb_dim")
        self.num_res_blocks = positive_int(num_res_blocks, "num_res_blocks")
        self.dropout = in_range(dropout, "dropout", 0.0, 1.0, hi_open=True)
        positive_int(norm_groups, "norm_groups")
        mults = _int_tuple(channel_mults, "channel_mults", nonempty=True)
        factor = 2 ** (len(mults) - 1)
        if img_size % factor:
            raise ValueError(
                f"img_size must be divisible by 2**(len(channel_mults)-1) = {factor}; "
                f"got {img_size}"
            )
        sizes = [img_size // 2**i for i in range(len(mults))]
        attn = _int_tuple(attn_resolutions, "attn_resolutions", nonempty=False)
        if any(r not in sizes for r in attn):
            raise ValueError(
                f"attn_resolutions must be among the levels' resolutions {sizes}; "
                f"got {attn_resolutions!r}"
            )
        for flag, name in (
            (mid_attention, "mid_attention"),
            (resample_skips, "resample_skips"),
        ):
            if not isinstance(flag, bool):
                raise ValueError(f"{name} must be True or False; got {flag!r}")
        self.channel_mults, self.attn_resolutions = mults, attn
        self.mid_attention, self.resample_skips = mid_attention, resample_skips

        def block(c_in, c_out, size):
            return _ResBlock(
                c_in, c_out, emb_dim, norm_groups, self.dropout, attention=size in attn
            )

        chs = [base_channels * m for m in mults]
        self.time = _TimeMLP(emb_dim)
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        skip_chs = [base_channels] if resample_skips else []
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        ch = base_channels
        for i, c in enumerate(chs):
            for _ in range(num_res_blocks):
                self.down.append(block(ch, c, sizes[i]))
                ch = c
                skip_chs.append(ch)
            if i < len(chs) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                if resample_skips:
                    skip_chs.append(c)
        self.mid = _ResBlock(
            ch, ch, emb_dim, norm_groups, self.dropout, attention=mid_attention
        )
        self.mid2 = block(ch, ch, None) if mid_attention else None
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i in reversed(range(len(chs))):
            for _ in range(self._up_blocks):
                self.up.append(block(ch + skip_chs.pop(), chs[i], sizes[i]))
                ch = chs[i]
            if i > 0:
                self.upsample.append(
                    nn.Sequential(
                        nn.Upsample(scale_factor=2, mode="nearest"),
                        nn.Conv2d(ch, ch, 3, padding=1),
                    )
                )
        self.norm_out = nn.GroupNorm(math.gcd(ch, norm_groups), ch)
        self.conv_out = nn.Conv2d(ch, in_channels, 3, padding=1)

    @property
    def _up_blocks(self) -> int:
        return self.num_res_blocks + (1 if self.resample_skips else 0)

    @classmethod
    def ddpm_cifar10(cls, in_channels: int = 3, dropout: float = 0.1) -> "UNet":
        """DDPM's CIFAR-10 network (Ho et al. 2020, appendix B): 32x32 images, 128
        base channels, channel multipliers (1, 2, 2, 2), two residual blocks per level,
        self-attention at 16x16 and in the middle, dropout 0.1, GroupNorm with 32
        groups, skips from every stage of the way down.

        35,942,915 parameters for 3 channels; the paper reports 35.7 M. The layers are
        DDPM's, layer for layer, except the time embedding: its first linear layer here
        maps 512 sinusoidal features to 512 (DDPM: 128 features to 512), 196,608
        weights more (``tests/test_nets.py`` counts DDPM's layers to check this).
        Initialisation is torch's default (DDPM used a fan-average uniform one, and
        zero for the last layer of each block). ``in_channels=1`` gives the same
        network for grey images."""
        return cls(
            in_channels,
            base_channels=128,
            channel_mults=(1, 2, 2, 2),
            img_size=32,
            emb_dim=512,
            num_res_blocks=2,
            attn_resolutions=(16,),
            dropout=dropout,
            norm_groups=32,
            mid_attention=True,
            resample_skips=True,
        )

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        """Map images ``x`` (B, C, H, W) and ``t`` (scalar or (B,), in [0, 1]) to a
        tensor of the shape of ``x``."""
        size = (self.in_channels, self.img_size, self.img_size)
        h = _input(x, size, self)
        emb = self.time(_times(t, h.shape[0], h))
        h = self.conv_in(h)
        skips = [h] if self.resample_skips else []
        down = iter(self.down)
        for i in range(len(self.channel_mults)):
            for _ in range(self.num_res_blocks):
                h = next(down)(h, emb)
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                if self.resample_skips:
                    skips.append(h)
        h = self.mid(h, emb)
        if self.mid2 is not None:
            h = self.mid2(h, emb)
        up = iter(self.up)
        for j in range(len(self.channel_mults)):
            for _ in range(self._up_blocks):
                h = next(up)(torch.cat([h, skips.pop()], dim=1), emb)
            if j < len(self.upsample):
                h = self.upsample[j](h)
        return _output(self.conv_out(F.silu(self.norm_out(h))), x)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, channel_mults={self.channel_mults}, "
            f"img_size={self.img_size}, params={count_params(self):,}"
        )


def _even(value, name: str) -> int:
    """A positive even integer (the sinusoidal features are half sin, half cos)."""
    value = positive_int(value, name, minimum=2)
    if value % 2:
        raise ValueError(
            f"{name} must be even (half sin, half cos features); got {value}"
        )
    return value


def _int_tuple(values, name: str, nonempty: bool) -> tuple[int, ...]:
    """A list or tuple of positive integers, as a tuple."""
    ok = isinstance(values, (list, tuple)) and (values or not nonempty)
    try:
        if ok:
            return tuple(positive_int(v, name) for v in values)
    except ValueError:
        pass
    what = "a non-empty" if nonempty else "a"
    raise ValueError(
        f"{name} must be {what} list or tuple of positive integers; got {values!r}"
    )


class EnergyMLP(nn.Module):
    r"""A conservative network (chapter I.6): a scalar energy $E_\theta(x,t)$ and, as
    output, its negative gradient $-\nabla_xE_\theta(x,t)$, shape (B, dim).

    The energy is an MLP on ``x`` with the time embedding added before every SiLU (as
    in :class:`MLP`; smooth activations, so that the Hessian is not piecewise zero),
    ending in one linear unit. The output is a gradient field in ``x`` at every ``t``,
    so its Jacobian is symmetric. Use it as any prediction kind: the conversions of
    :mod:`dlib.param` are affine in $(x,\text{output})$ with coefficients that depend
    on $t$ only, and $x=\nabla\tfrac12|x|^2$, so every kind it implies is conservative
    too. As kind ``"score"`` it is $\nabla\log p\propto-\nabla E$; the chapter trains it
    as kind ``"eps"`` ($\hat\epsilon=-\nabla E$, hence $s=\nabla E/\sigma_t$) with
    :func:`dlib.losses.denoising_loss`. The gradient is taken with ``create_graph``
    whenever autograd is recording (training, Jacobians), which makes a training step
    dearer than :class:`MLP`'s (double back-propagation: 1.3 to 1.5 times the wall time
    in chapter I.6's Swiss-roll runs); under ``torch.no_grad`` (the samplers) it costs
    one backward pass and keeps no graph.
    """

    def __init__(
        self, dim: int, hidden: int = 128, depth: int = 3, emb_dim: int = 64
    ) -> None:
        super().__init__()
        self.dim = positive_int(dim, "dim")
        self.hidden = positive_int(hidden, "hidden")
        self.depth = positive_int(depth, "depth", minimum=2)
        self.emb_dim = _even(emb_dim, "emb_dim")
        self.time = _TimeMLP(emb_dim)
        widths = [dim] + [hidden] * (depth - 1)
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:])
        )
        self.time_proj = nn.ModuleList(
            nn.Linear(emb_dim, hidden) for _ in range(depth - 1)
        )
        self.out = nn.Linear(hidden, 1, bias=False)  # a constant has no gradient

    def _energy(self, h: torch.Tensor, t) -> torch.Tensor:
        emb = self.time(_times(t, h.shape[0], h))
        for layer, proj in zip(self.layers, self.time_proj):
            h = F.silu(layer(h) + proj(emb))
        return self.out(h)[:, 0]

    def energy(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""The energy $E_\theta(x,t)$, shape (B,), in the parameters' dtype."""
        return self._energy(_input(x, (self.dim,), self), t)

    def forward(self, x: torch.Tensor, t) -> torch.Tensor:
        r"""$-\nabla_xE_\theta(x,t)$ for ``x`` (B, dim) and ``t`` (scalar or (B,), in
        [0, 1]), shape (B, dim)."""
        h = _input(x, (self.dim,), self)
        record = torch.is_grad_enabled()
        with torch.enable_grad():
            if not h.requires_grad:
                h = h.detach().requires_grad_(True)
            e = self._energy(h, t).sum()
            (grad,) = torch.autograd.grad(e, h, create_graph=record)
        return _output(-grad, x)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, hidden={self.hidden}, depth={self.depth}, "
            f"emb_dim={self.emb_dim}, params={count_params(self):,}"
        )


class _TokenBlock(nn.Module):
    r"""One pre-norm transformer block:
    $h \leftarrow h + \mathrm{Attn}(\mathrm{N}_1(h))$, then
    $h \leftarrow h + \mathrm{MLP}(\mathrm{N}_2(h))$, where each norm is a LayerNorm,
    adaptive to the time when ``emb`` is given: $\mathrm{N}(h) =
    \mathrm{LN}(h)(1 + a(e)) + b(e)$ with $(a, b)$ a linear map of the time embedding
    $e$ (DiT's adaptive LayerNorm, without its gates)."""

    def __init__(self, d_model: int, heads: int, mlp_ratio: int, timed: bool) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d_model, elementwise_affine=not timed)
        self.norm2 = nn.LayerNorm(d_model, elementwise_affine=not timed)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, mlp_ratio * d_model),
            nn.GELU(),
            nn.Linear(mlp_ratio * d_model, d_model),
        )
        self.modulation = nn.Linear(d_model, 4 * d_model) if timed else None

    def forward(self, h: torch.Tensor, emb, causal: bool) -> torch.Tensor:
        a1 = self.norm1(h)
        a2_mod = None
        if self.modulation is not None:  # emb: (B, 1 or L, d_model)
            s1, b1, s2, b2 = self.modulation(emb).chunk(4, dim=-1)
            a1 = a1 * (1 + s1) + b1
            a2_mod = (s2, b2)
        B, L, D = h.shape
        q, k, v = self.qkv(a1).view(B, L, 3, self.heads, D // self.heads).unbind(2)
        att = F.scaled_dot_product_attention(  # (B, heads, L, D/heads)
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal
        )
        h = h + self.proj(att.transpose(1, 2).reshape(B, L, D))
        a2 = self.norm2(h)
        if a2_mod is not None:
            a2 = a2 * (1 + a2_mod[0]) + a2_mod[1]
        return h + self.mlp(a2)


class TokenTransformer(nn.Module):
    r"""A small transformer over token sequences (Part III): tokens (B, L) and a time
    $t\in[0,1]$ in, logits (B, L, ``out_dim``) out, one vector per position.

    * Vocabulary. Input tokens take values ``0..vocab_size-1``; with
      ``mask_token=True`` also :attr:`mask_index` ``= vocab_size``, the absorbing
      (masked) state, so the input vocabulary has ``vocab_size + 1`` entries. The
      output has ``out_dim`` entries per position, ``vocab_size`` by default (logits of
      the clean token); ask for ``vocab_size + 1`` for a concrete score over a state
      space that includes the mask, or for anything else a head needs.
    * Soft tokens. ``tokens`` may also be a float tensor (B, L, V) with V the input
      vocabulary: each row is a weighting of the token embeddings (a one-hot row is the
      integer token; a probability vector, a Gumbel-softmax relaxation or a
      straight-through sample give a network that is differentiable in its input).
      Only finiteness is checked, not that rows sum to one.
    * Positions. ``positions="learned"`` (an embedding per position, so at most
      ``seq_len`` positions), ``"sinusoidal"`` (fixed sin/cos features of the position,
      as in the original Transformer) or ``None``: no positions, and then a
      bidirectional network is permutation equivariant (permuting the tokens permutes
      the outputs). Sequences may be shorter than ``seq_len``.
    * Time. With ``time=True`` (default) every LayerNorm is adaptive: its scale and
      shift are linear maps of the time embedding (sinusoidal features and a small MLP,
      as in :class:`MLP`; DiT's adaptive LayerNorm, as in SEDD's and MDLM's networks,
      without DiT's gates). ``t`` is a number, one time per sequence (B,), or one time
      per token (B, L) (per-token noise levels). With ``time=False`` the network has no
      time input and ignores ``t`` (still checked if given); masked diffusion needs
      none, as the number of masks tells the time, and an autoregressive model has none.
    * Causal. With ``causal=True`` position ``l`` attends only to positions ``<= l``,
      so output ``l`` depends on tokens ``0..l`` only: shift the targets by one for a
      next-token (autoregressive) model. Default: bidirectional.

    Written plainly (pre-norm blocks over :func:`torch.nn.functional.
    scaled_dot_product_attention`) rather than with :class:`torch.nn.
    TransformerEncoderLayer`, because the adaptive LayerNorm needs the time inside the
    block. No dropout. The defaults (``d_model=64``, 2 blocks, 4 heads, MLP width
    ``4 * d_model``) have about 150k parameters with time conditioning, 100k without
    (vocabularies and lengths of tens add a few thousand). Output dtype: the
    parameters' dtype for integer tokens, the input's for soft tokens (see the module
    docstring). Token values are checked on the CPU only.
    """

    POSITIONS = ("learned", "sinusoidal", None)

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        out_dim: int | None = None,
        *,
        mask_token: bool = False,
        d_model: int = 64,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: int = 4,
        positions: str | None = "learned",
        time: bool = True,
        causal: bool = False,
    ) -> None:
        super().__init__()
        self.vocab_size = positive_int(vocab_size, "vocab_size")
        self.seq_len = positive_int(seq_len, "seq_len")
        self.mask_token = _flag(mask_token, "mask_token")
        self.in_vocab = self.vocab_size + int(self.mask_token)
        self.out_dim = (
            self.vocab_size if out_dim is None else positive_int(out_dim, "out_dim")
        )
        self.d_model = _even(d_model, "d_model")
        self.depth = positive_int(depth, "depth")
        self.heads = positive_int(heads, "heads")
        if d_model % heads:
            raise ValueError(
                f"heads must divide d_model = {d_model}; got heads = {heads}"
            )
        self.mlp_ratio = positive_int(mlp_ratio, "mlp_ratio")
        if positions not in self.POSITIONS:
            raise ValueError(
                f"positions must be one of {self.POSITIONS}; got {positions!r}"
            )
        self.positions = positions
        self.timed = _flag(time, "time")
        self.causal = _flag(causal, "causal")

        self.embed = nn.Embedding(self.in_vocab, d_model)
        if positions == "learned":
            self.pos = nn.Embedding(seq_len, d_model)
        elif positions == "sinusoidal":  # the Transformer's sin/cos of the position
            k = torch.arange(d_model // 2, dtype=torch.float32)
            freqs = torch.exp(-math.log(10000.0) * k / (d_model // 2))
            args = torch.arange(seq_len, dtype=torch.float32)[:, None] * freqs
            pos = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
            self.register_buffer("pos_table", pos, persistent=False)
        self.time = _TimeMLP(d_model) if self.timed else None
        self.blocks = nn.ModuleList(
            _TokenBlock(d_model, heads, mlp_ratio, self.timed) for _ in range(depth)
        )
        self.norm_out = nn.LayerNorm(d_model, elementwise_affine=not self.timed)
        self.modulation_out = nn.Linear(d_model, 2 * d_model) if self.timed else None
        self.head = nn.Linear(d_model, self.out_dim)

    @property
    def mask_index(self) -> int | None:
        """The index of the mask token (``vocab_size``), or None without one."""
        return self.vocab_size if self.mask_token else None

    def _tokens(self, tokens) -> torch.Tensor:
        """Integer tokens (B, L) or soft tokens (B, L, in_vocab) as embeddings
        (B, L, d_model) in the parameters' dtype."""
        V, Lmax = self.in_vocab, self.seq_len
        allowed = (
            f"an int64 tensor (B, L) with values in 0..{V - 1}, or a float tensor "
            f"(B, L, {V}) of token weights, with 1 <= L <= {Lmax}"
        )
        what = (
            f"shape {tuple(tokens.shape)}, dtype {tokens.dtype}"
            if torch.is_tensor(tokens)
            else type(tokens).__name__
        )
        if not torch.is_tensor(tokens) or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be {allowed}; got {what}")
        soft = tokens.is_floating_point()
        want_dim = 3 if soft else 2
        if (
            tokens.is_complex()
            or tokens.dim() != want_dim
            or not 1 <= tokens.shape[1] <= Lmax
            or (soft and tokens.shape[2] != V)
        ):
            raise ValueError(f"tokens must be {allowed}; got {what}")
        weight = self.embed.weight
        if soft:
            if tokens.device.type == "cpu" and tokens.numel():
                lo, hi = torch.aminmax(tokens)
                if not (math.isfinite(lo.item()) and math.isfinite(hi.item())):
                    raise ValueError("tokens contains NaN or inf values")
            return tokens.to(weight.dtype) @ weight
        if tokens.device.type == "cpu" and tokens.numel():
            lo, hi = torch.aminmax(tokens)
            if lo.item() < 0 or hi.item() >= V:
                mask = " (mask token included)" if self.mask_token else ""
                raise ValueError(
                    f"tokens must hold values in 0..{V - 1}{mask}; got values from "
                    f"{lo.item()} to {hi.item()}"
                )
        return self.embed(tokens.long())

    def _time_embedding(self, t, h: torch.Tensor) -> torch.Tensor | None:
        """The time embedding (B, 1 or L, d_model), or None for an untimed network."""
        B, L = h.shape[:2]
        if t is None:
            if self.timed:
                raise ValueError(
                    "t is required: this TokenTransformer is time-conditioned "
                    "(build it with time=False for a network without a time input)"
                )
            return None
        per_token = torch.is_tensor(t) and t.dim() == 2
        if per_token and t.shape != (B, L):
            raise ValueError(
                f"t must be a scalar, or have shape ({B},) or ({B}, {L}) to match "
                f"tokens of batch {B} and length {L}; got shape {tuple(t.shape)}"
            )
        flat = _times(t.reshape(-1), B * L, h) if per_token else _times(t, B, h)
        if not self.timed:
            return None
        emb = self.time(flat)  # (B or B*L, d_model)
        return emb.view(B, L, self.d_model) if per_token else emb[:, None, :]

    def forward(self, tokens: torch.Tensor, t=None) -> torch.Tensor:
        """Logits (B, L, out_dim) for ``tokens`` (B, L) integers, or (B, L, V) token
        weights, and ``t`` (a number, (B,) or (B, L), in [0, 1]; required when the
        network is time-conditioned, ignored otherwise)."""
        h = self._tokens(tokens)
        L = h.shape[1]
        if self.positions == "learned":
            h = h + self.pos.weight[:L]
        elif self.positions == "sinusoidal":
            h = h + self.pos_table[:L].to(h.dtype)
        emb = self._time_embedding(t, h)
        for block in self.blocks:
            h = block(h, emb, self.causal)
        h = self.norm_out(h)
        if emb is not None:
            scale, shift = self.modulation_out(emb).chunk(2, dim=-1)
            h = h * (1 + scale) + shift
        out = self.head(h)
        return out.to(tokens.dtype) if tokens.is_floating_point() else out

    def extra_repr(self) -> str:
        mask = f", mask_index={self.mask_index}" if self.mask_token else ""
        return (
            f"vocab_size={self.vocab_size}{mask}, seq_len={self.seq_len}, "
            f"out_dim={self.out_dim}, d_model={self.d_model}, depth={self.depth}, "
            f"heads={self.heads}, positions={self.positions}, time={self.timed}, "
            f"causal={self.causal}, params={count_params(self):,}"
        )
