r"""Simulated (fake) post-training quantization of denoisers and time-aware calibration
(PTQ4DM, chapter II.9).

Fake quantization rounds and clamps in floating point: a $b$-bit tensor is stored as
$\Delta\cdot k$ with integers $k\in\{-2^{b-1},\dots,2^{b-1}-1\}$ and one step $\Delta$
per tensor (activations) or per output channel (weights). The network keeps its float
kernels, so the numbers are those an integer kernel with the same steps would give, up
to float round-off, without needing one.

- :func:`fake_quantize` the quantiser $Q$; :func:`search_step` the step that minimises
  an $L_p$ error over a grid of clipping ranges (QDrop: $p=2.4$, 100 candidates).
- :class:`QuantLayer` wraps an ``nn.Linear`` or ``nn.Conv2d``: weights quantised per
  output channel once, the input activation per tensor with a step that is *observed*
  on calibration batches (a running blend 0.9 old + 0.1 new, as the official code) and
  then *frozen*. :func:`quantize_network` wraps every such layer of a copy of a network,
  :func:`calibrate` feeds a calibration set through it.
- Calibration sets, each a pair ``(x, t)`` of network inputs and their true times:
  :func:`calibration_raw` (clean data at t = 0), :func:`calibration_forward`
  (forward-noised data at uniform t), :func:`calibration_trajectory` (states of the
  full-precision DDIM sampler at a drawn step: uniform, normal (NDTC) or one step).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from . import _checks as C
from . import sampling
from ._loop import _prepare
from .param import Denoiser

__all__ = [
    "fake_quantize",
    "search_step",
    "QuantLayer",
    "quantize_network",
    "calibrate",
    "calibration_raw",
    "calibration_forward",
    "calibration_trajectory",
]

MODES = ("observe", "frozen", "off")


def _bits(bits, name: str = "bits") -> int:
    return C.positive_int(bits, name, minimum=2, maximum=16)


def _qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def _quantize(v: torch.Tensor, delta: torch.Tensor, bits: int) -> torch.Tensor:
    """:func:`fake_quantize` for trusted inputs (``delta`` broadcastable to ``v``)."""
    lo, hi = -(2 ** (bits - 1)), _qmax(bits)
    return torch.round(v / delta).clamp_(lo, hi).mul_(delta)


def fake_quantize(v: torch.Tensor, delta, bits: int = 8) -> torch.Tensor:
    r"""The uniform symmetric quantiser of chapter II.9,
    $Q(v)=\Delta\,\mathrm{clip}(\mathrm{round}(v/\Delta),-2^{b-1},2^{b-1}-1)$,
    in the dtype of ``v``. ``delta`` is a positive number or a tensor of positive steps
    that broadcasts against ``v`` (one per output channel: shape (C, 1, ...)). Values
    inside the range are rounded (error at most $\Delta/2$), values beyond
    $(2^{b-1}-1)\Delta$ are clipped. ``bits`` in 2..16."""
    v = C.tensor(v, "v", floating=True)
    bits = _bits(bits)
    if torch.is_tensor(delta):
        delta = C.tensor(delta, "delta", floating=True)
        if not bool((delta > 0).all()):
            raise ValueError("delta must hold positive steps; got a value <= 0")
        try:
            torch.broadcast_shapes(delta.shape, v.shape)
        except RuntimeError:
            raise ValueError(
                f"delta of shape {tuple(delta.shape)} does not broadcast against v of "
                f"shape {tuple(v.shape)}"
            ) from None
        delta = delta.to(v.dtype)
    else:
        delta = torch.tensor(C.positive(delta, "delta"), dtype=v.dtype)
    return _quantize(v, delta, bits)


def _lp(err: torch.Tensor, p: float, dims) -> torch.Tensor:
    return err.abs().pow(p).mean(dim=dims)


def _search(v: torch.Tensor, bits: int, p: float, n_grid: int, channel_dim):
    """The searched step for trusted inputs: a scalar, or one per channel."""
    qmax = _qmax(bits)
    if channel_dim is None:
        top = v.abs().amax().reshape(1)
        flat = v.reshape(1, -1)
    else:
        flat = v.movedim(channel_dim, 0).reshape(v.shape[channel_dim], -1)
        top = flat.abs().amax(dim=1)
    zero = top == 0
    top = torch.where(zero, torch.ones_like(top), top)  # an all-zero slice: any step
    best_err = torch.full_like(top, math.inf)
    best = top / qmax
    for i in range(1, n_grid + 1):  # clipping ranges c_i = top * i / n
        delta = top * (i / n_grid) / qmax
        err = _lp(_quantize(flat, delta[:, None], bits) - flat, p, 1)
        better = err < best_err
        best = torch.where(better, delta, best)
        best_err = torch.where(better, err, best_err)
    best = torch.where(zero, top / qmax, best)
    return best[0] if channel_dim is None else best


def search_step(
    v: torch.Tensor,
    bits: int = 8,
    *,
    p: float = 2.4,
    n_grid: int = 100,
    channel_dim: int | None = None,
) -> torch.Tensor:
    r"""The step $\Delta=c/(2^{b-1}-1)$ whose clipping range $c$ minimises the $L_p$
    error $\mathrm{mean}|Q(v)-v|^p$ over the grid $c_i=\max|v|\cdot i/n$,
    $i=1..n$ (chapter II.9; the QDrop code behind PTQ4DM uses $p=2.4$ and $n=100$).
    With ``channel_dim`` one step per slice along that dimension (weights: the output
    channel, dimension 0), returned with shape (C,); otherwise a 0-d tensor. The first
    minimiser wins a tie; an all-zero tensor (or slice) gets $\Delta=1/(2^{b-1}-1)$."""
    v = C.tensor(v, "v", floating=True)
    bits = _bits(bits)
    p = C.positive(p, "p")
    n_grid = C.positive_int(n_grid, "n_grid")
    if channel_dim is not None:
        channel_dim = C.positive_int(channel_dim, "channel_dim", minimum=0)
        if channel_dim >= v.dim():
            raise ValueError(
                f"channel_dim must be a dimension of v (0..{v.dim() - 1}); got "
                f"{channel_dim}"
            )
    with torch.no_grad():
        return _search(v.detach(), bits, p, n_grid, channel_dim)


class QuantLayer(nn.Module):
    r"""A fake-quantised ``nn.Linear`` or ``nn.Conv2d`` (chapter II.9).

    Weights: quantised once, per output channel, with the step of :func:`search_step`
    (``w_bits``; ``None`` keeps them in float). Input activation: one step per tensor
    (``a_bits``; ``None`` keeps it in float), set by :attr:`mode`:

    - ``"observe"``: each call searches the step of its batch and blends it into the
      running step, $\Delta\leftarrow0.9\,\Delta+0.1\,\Delta_{\rm batch}$ (the first
      batch sets it; ``momentum`` = 0.9 as the official code), then quantises with the
      running step;
    - ``"frozen"``: quantises with the stored step (an error if none was observed);
    - ``"off"``: the input is not quantised (weights still are).

    The bias stays in float (as in integer kernels, where it is added at 32 bits). The
    wrapped layer's parameters are used as they are, not copied.
    """

    def __init__(
        self,
        layer: nn.Module,
        w_bits: int | None = 8,
        a_bits: int | None = 8,
        *,
        p: float = 2.4,
        n_grid: int = 100,
        momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise ValueError(
                f"layer must be a torch.nn.Linear or torch.nn.Conv2d; got "
                f"{type(layer).__name__}"
            )
        self.w_bits = None if w_bits is None else _bits(w_bits, "w_bits")
        self.a_bits = None if a_bits is None else _bits(a_bits, "a_bits")
        self.p = C.positive(p, "p")
        self.n_grid = C.positive_int(n_grid, "n_grid")
        self.momentum = C.in_range(momentum, "momentum", 0.0, 1.0, hi_open=True)
        self.layer = layer
        self.mode = "off"
        self.register_buffer("a_delta", torch.tensor(math.nan))
        self.batches = 0  # calibration batches observed
        w = layer.weight.detach()
        if self.w_bits is None:
            self.register_buffer("w_delta", None)
            self.register_buffer("weight_q", None)
        else:
            delta = _search(w, self.w_bits, self.p, self.n_grid, 0)
            shape = (-1,) + (1,) * (w.dim() - 1)
            self.register_buffer("w_delta", delta.reshape(shape))
            self.register_buffer("weight_q", _quantize(w, self.w_delta, self.w_bits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The wrapped layer on the (fake-)quantised input with quantised weights."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {self.mode!r}")
        if self.a_bits is not None and self.mode != "off":
            if self.mode == "observe":
                new = _search(x.detach(), self.a_bits, self.p, self.n_grid, None)
                if self.batches == 0:
                    self.a_delta = new.to(self.a_delta.dtype)
                else:
                    m = self.momentum
                    self.a_delta = m * self.a_delta + (1 - m) * new
                self.batches += 1
            elif self.batches == 0:
                raise ValueError(
                    "this QuantLayer was frozen before any calibration batch; call "
                    "dlib.quant.calibrate first (or set mode to 'off')"
                )
            x = _quantize(x, self.a_delta.to(x.dtype), self.a_bits)
        w = self.layer.weight if self.weight_q is None else self.weight_q
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w.to(x.dtype), self.layer.bias)
        return self.layer._conv_forward(x, w.to(x.dtype), self.layer.bias)

    def extra_repr(self) -> str:
        step = "not calibrated" if self.batches == 0 else f"{float(self.a_delta):.3g}"
        return (
            f"w_bits={self.w_bits}, a_bits={self.a_bits}, mode={self.mode!r}, "
            f"activation step={step}"
        )


def quantize_network(
    net: nn.Module,
    w_bits: int | None = 8,
    a_bits: int | None = 8,
    *,
    p: float = 2.4,
    n_grid: int = 100,
    momentum: float = 0.9,
) -> nn.Module:
    """A deep copy of ``net`` in which every ``nn.Linear`` and ``nn.Conv2d`` is a
    :class:`QuantLayer` (chapter II.9); the original is left untouched. The copy is in
    eval mode with its activation quantisers off: call :func:`calibrate` next. Other
    operations (normalisation, attention's matrix products, the nonlinearities) stay in
    float, as in the official code."""
    if not isinstance(net, nn.Module):
        raise ValueError(f"net must be a torch.nn.Module; got {type(net).__name__}")
    opts = dict(p=p, n_grid=n_grid, momentum=momentum)
    if w_bits is not None:
        _bits(w_bits, "w_bits")
    if a_bits is not None:
        _bits(a_bits, "a_bits")
    C.positive(p, "p")
    C.positive_int(n_grid, "n_grid")
    C.in_range(momentum, "momentum", 0.0, 1.0, hi_open=True)
    if isinstance(net, (nn.Linear, nn.Conv2d)):
        return QuantLayer(copy.deepcopy(net), w_bits, a_bits, **opts).eval()
    if not any(isinstance(m, (nn.Linear, nn.Conv2d)) for m in net.modules()):
        raise ValueError("net has no nn.Linear or nn.Conv2d layer to quantise")
    out = copy.deepcopy(net).eval()

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, QuantLayer):
                continue
            if isinstance(child, (nn.Linear, nn.Conv2d)):
                setattr(module, name, QuantLayer(child, w_bits, a_bits, **opts))
            else:
                swap(child)

    with torch.no_grad():
        swap(out)
    return out


def _quant_layers(net: nn.Module) -> list[QuantLayer]:
    return [m for m in net.modules() if isinstance(m, QuantLayer)]


def calibrate(
    qnet: nn.Module,
    x: torch.Tensor,
    t: torch.Tensor,
    *,
    batch_size: int = 256,
) -> nn.Module:
    """Feed the calibration set ``(x, t)`` through ``qnet`` (a network from
    :func:`quantize_network`, called as ``qnet(x, t)``) in batches of ``batch_size``
    with every :class:`QuantLayer` observing, then freeze the steps (chapter II.9).
    Earlier calibration is forgotten. Returns ``qnet``."""
    layers = _quant_layers(qnet) if isinstance(qnet, nn.Module) else []
    if not layers:
        raise ValueError(
            "qnet must be a network with QuantLayer modules (from quantize_network)"
        )
    x = C.batch(x, "x")
    t = C.real_tensor(t, "t", dtype=None)
    if t.shape != (x.shape[0],):
        raise ValueError(
            f"t must have shape ({x.shape[0]},), one time per example; got "
            f"{tuple(t.shape)}"
        )
    if bool(((t < 0) | (t > 1)).any()):
        raise ValueError("t must hold times in [0, 1]")
    batch_size = C.positive_int(batch_size, "batch_size")
    for layer in layers:
        layer.mode, layer.batches = "observe", 0
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            qnet(x[start : start + batch_size], t[start : start + batch_size])
    for layer in layers:
        layer.mode = "frozen"
    return qnet


def _rows(data: torch.Tensor, n: int, generator) -> torch.Tensor:
    idx = torch.randint(0, data.shape[0], (n,), generator=generator)
    return data[idx]


def calibration_raw(
    x0: torch.Tensor, n: int, *, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain calibration (chapter II.9): ``n`` clean examples drawn with replacement
    from ``x0``, all at time t = 0. Returns ``(x, t)``."""
    x0 = C.batch(x0, "x0")
    n = C.positive_int(n, "n")
    C.generator(generator)
    x = _rows(x0, n, generator)
    return x, torch.zeros(n, dtype=C.time_dtype(x))


def calibration_forward(
    x0: torch.Tensor,
    schedule,
    n: int,
    *,
    t_range: tuple[float, float] = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Forward-noised calibration (chapter II.9): ``n`` examples of ``x0`` (with
    replacement), times $t\sim U(t_{\min},t_{\max})$ (``t_range``) and
    $x_t=\alpha_tx_0+\sigma_t\epsilon$. Returns ``(x_t, t)``."""
    x0 = C.batch(x0, "x0")
    C.schedule(schedule)
    n = C.positive_int(n, "n")
    lo, hi = C.time_range(t_range)
    C.generator(generator)
    x = _rows(x0, n, generator)
    t = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
    c = schedule._coefficients(t)
    shape = (n,) + (1,) * (x.dim() - 1)
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    a, s = c.alpha.to(x.dtype).reshape(shape), c.sigma.to(x.dtype).reshape(shape)
    return a * x + s * eps, t.to(C.time_dtype(x))


def calibration_trajectory(
    denoiser: Denoiser,
    noise: torch.Tensor,
    ts,
    *,
    mode: str = "normal",
    mu: float = 0.4,
    sigma: float = 0.4,
    step: int | None = None,
    clip_x0: float | None = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Calibration on the full-precision sampler's own states (chapter II.9).

    Runs DDIM (:func:`dlib.sampling.sample_ancestral` with ``eta=0`` and ``clip_x0``)
    from ``noise`` over the grid ``ts`` ($N$ steps) and keeps, for each sample, the
    state at one loop index $k\in\{0..N-1\}$: the input of step $k$, at its true time
    ``ts[k]`` ($k=0$ is the noise). ``mode``: ``"uniform"`` draws $k$ uniformly;
    ``"normal"`` (NDTC) draws $k=\lfloor N z\rfloor$ with $z\sim\mathcal N(\mu,
    \sigma^2)$ clipped to $0..N-1$ ($\mu=0.4$: 40 % of the way from noise to data, the
    released setting, with $\sigma=0.4$); ``"step"`` keeps index ``step`` for all.
    Returns ``(x, t, k)``: states, their times, the indices. NFE: $N$ per sample."""
    C.denoiser(denoiser)
    noise = C.batch(noise, "noise")
    mode = C.one_of(mode, ("uniform", "normal", "step"), "mode")
    mu = C.number(mu, "mu")
    sigma = C.positive(sigma, "sigma")
    C.generator(generator)
    grid = _prepare(denoiser, noise, ts)
    n_steps = len(grid) - 1
    if mode == "step":
        if step is None:
            raise ValueError("step must be given (an index 0..N-1) when mode='step'")
        step = C.positive_int(step, "step", minimum=0, maximum=n_steps - 1)
    n = noise.shape[0]
    if mode == "uniform":
        k = torch.randint(0, n_steps, (n,), generator=generator)
    elif mode == "normal":
        z = mu + sigma * torch.randn(n, generator=generator, dtype=torch.float64)
        k = torch.floor(n_steps * z).clamp(0, n_steps - 1).long()
    else:
        k = torch.full((n,), step, dtype=torch.long)
    k = k.to(noise.device)
    out = noise.clone()

    def keep(info: dict) -> None:
        hit = k == info["i"] + 1  # the state after step i is the input of step i + 1
        if bool(hit.any()):
            out[hit] = info["x"][hit]

    with torch.no_grad():
        sampling.sample_ancestral(
            denoiser, noise, grid, eta=0.0, clip_x0=clip_x0, callback=keep
        )
    t = torch.as_tensor(grid, dtype=torch.float64)[k.cpu()]
    return out, t.to(device=out.device, dtype=C.time_dtype(out)), k
