r"""Forward operators of inverse problems (measurement models $y=A(x)+\sigma_y\,
\varepsilon$) on batches of square images, first used by chapter III.3 (anchored
posterior sampling) and reused by Part IV.

Every operator is a callable object ``A(x)`` on images (N, C, H, W) with H = W,
differentiable by autograd, keeping the dtype and device of ``x``:

* :class:`Downsample` (``factor`` x ``factor`` average pooling: super-resolution),
* :class:`BoxInpaint` (pixels inside a box set to zero: inpainting),
* :class:`GaussianBlur` (convolution with a normalised Gaussian kernel, zero padding),
* :class:`TanhBlur` (a nonlinear operator: $\tanh(g\cdot\mathrm{blur}(x))$).

The linear ones (``A.linear`` is True) also have ``A.adjoint(y)``, the transpose
$A^\top y$ (checked in the tests by $\langle Ax,y\rangle=\langle x,A^\top y\rangle$).
:func:`measure` draws a noisy measurement and :func:`residual_loss` is the Gaussian
negative log-likelihood $\lVert y-A(x)\rVert^2/2\sigma_y^2$ per image. The letter $y$
is a measurement here, not a class label.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import _checks as C

__all__ = [
    "Operator",
    "Downsample",
    "BoxInpaint",
    "GaussianBlur",
    "TanhBlur",
    "measure",
    "residual_loss",
]


def _images(x, name: str = "x") -> torch.Tensor:
    if not torch.is_tensor(x) or x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(
            f"{name} must be a batch of square images (N, C, H, H); got {shape}"
        )
    return C.tensor(x, name, floating=True, nonempty=False)


class Operator:
    """Base class: ``A(x)`` checks that ``x`` is a floating batch of square images
    (N, C, H, H) the operator accepts and applies :meth:`_apply`. ``linear`` says
    whether :meth:`adjoint` exists."""

    linear = False

    def _check_size(self, size: int) -> None:  # pragma: no cover - overridden
        pass

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = _images(x)
        self._check_size(x.shape[-1])
        return self._apply(x)

    def _apply(self, x):  # pragma: no cover - abstract
        raise NotImplementedError

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        r"""$A^\top y$ for a linear operator (measurements ``y`` of the shape ``A``
        returns); nonlinear operators raise ValueError."""
        if not self.linear:
            raise ValueError(
                f"adjoint needs a linear operator; {type(self).__name__} is not"
            )
        y = _images(y, "y")
        return self._adjoint(y)

    def _adjoint(self, y):  # pragma: no cover - abstract
        raise NotImplementedError


class Downsample(Operator):
    r"""``factor`` x ``factor`` average pooling (super-resolution by ``factor``):
    $A(x)_{ij}=\frac1{f^2}\sum_{a,b<f}x_{fi+a,fj+b}$, shape (N, C, H/f, H/f). Its
    adjoint spreads each value over its block divided by $f^2$. Chapter III.3."""

    linear = True

    def __init__(self, factor: int = 2):
        self.factor = C.positive_int(factor, "factor")

    def __repr__(self):
        return f"Downsample(factor={self.factor})"

    def _check_size(self, size):
        if size % self.factor:
            raise ValueError(
                f"x must have a side divisible by factor={self.factor}; got {size}"
            )

    def _apply(self, x):
        return F.avg_pool2d(x, self.factor)

    def _adjoint(self, y):
        f = self.factor
        return y.repeat_interleave(f, -1).repeat_interleave(f, -2) / f**2


class BoxInpaint(Operator):
    r"""Box inpainting: the pixels of rows ``top..top+size-1`` and columns
    ``left..left+size-1`` are set to 0 (unobserved), the others are kept:
    $A(x)=M\odot x$ with a 0/1 mask $M$; self-adjoint. Output of x's shape. The
    measurement inside the box carries no information; use :meth:`mask` to restrict a
    loss to the observed pixels (the default :func:`residual_loss` sees zeros on both
    sides there). Chapter III.3."""

    linear = True

    def __init__(self, top: int, left: int, size: int):
        self.top = C.positive_int(top, "top", minimum=0)
        self.left = C.positive_int(left, "left", minimum=0)
        self.size = C.positive_int(size, "size")

    def __repr__(self):
        return f"BoxInpaint(top={self.top}, left={self.left}, size={self.size})"

    def _check_size(self, size):
        if max(self.top, self.left) + self.size > size:
            raise ValueError(
                f"x must be large enough for the box (top={self.top}, "
                f"left={self.left}, size={self.size}); got side {size}"
            )

    def mask(self, x: torch.Tensor) -> torch.Tensor:
        """The 0/1 mask M (1, 1, H, H) of observed pixels for images like ``x``."""
        x = _images(x)
        self._check_size(x.shape[-1])
        return self._mask(x)

    def _mask(self, x):
        m = torch.ones(1, 1, x.shape[-1], x.shape[-1], dtype=x.dtype, device=x.device)
        m[..., self.top:self.top + self.size, self.left:self.left + self.size] = 0
        return m

    def _apply(self, x):
        return x * self._mask(x)

    def _adjoint(self, y):
        self._check_size(y.shape[-1])
        return self._apply(y)


def _gauss_kernel(sigma: float, radius: int, like: torch.Tensor) -> torch.Tensor:
    u = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(u**2) / (2 * sigma**2))
    k = k / k.sum()
    return torch.outer(k, k).to(like.dtype).to(like.device)


class GaussianBlur(Operator):
    r"""Convolution with the normalised, separable Gaussian kernel
    $k_{ab}\propto e^{-(a^2+b^2)/2s^2}$, $|a|,|b|\le r$ (``sigma`` = s, ``radius``
    = r, default $\lceil 2s\rceil$), each channel separately, zero padding: output of
    x's shape. The kernel is symmetric, so the operator is self-adjoint.
    Chapter III.3."""

    linear = True

    def __init__(self, sigma: float = 1.0, radius: int | None = None):
        self.sigma = C.positive(sigma, "sigma")
        if radius is None:
            radius = max(1, math.ceil(2 * self.sigma))
        self.radius = C.positive_int(radius, "radius")

    def __repr__(self):
        return f"GaussianBlur(sigma={self.sigma}, radius={self.radius})"

    def kernel(self, dtype=torch.float64) -> torch.Tensor:
        """The (2r+1, 2r+1) kernel (sums to 1)."""
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype; got {dtype!r}")
        return _gauss_kernel(self.sigma, self.radius, torch.zeros((), dtype=dtype))

    def _apply(self, x):
        c = x.shape[1]
        k = _gauss_kernel(self.sigma, self.radius, x)[None, None].expand(c, 1, -1, -1)
        return F.conv2d(x, k, padding=self.radius, groups=c)

    def _adjoint(self, y):
        return self._apply(y)


class TanhBlur(Operator):
    r"""A nonlinear operator: $A(x)=\tanh(g\cdot k*x)$, a :class:`GaussianBlur` (width
    ``sigma``) followed by a saturating pixel response of gain ``gain`` (g). Not
    linear: no adjoint. Chapter III.3 (the nonlinear task)."""

    def __init__(self, gain: float = 1.5, sigma: float = 1.0):
        self.gain = C.positive(gain, "gain")
        self.blur = GaussianBlur(sigma)

    def __repr__(self):
        return f"TanhBlur(gain={self.gain}, sigma={self.blur.sigma})"

    def _apply(self, x):
        return torch.tanh(self.gain * self.blur._apply(x))


def _operator(obj, name="operator") -> Operator:
    if not isinstance(obj, Operator):
        raise ValueError(
            f"{name} must be a dlib.operators.Operator; got {type(obj).__name__}"
        )
    return obj


def measure(
    operator: Operator,
    x: torch.Tensor,
    sigma_y: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""A noisy measurement $y=A(x)+\sigma_y\varepsilon$, $\varepsilon\sim N(0,I)$
    drawn with ``generator`` (float64 noise, cast to x's dtype; ``sigma_y`` = 0: no
    noise)."""
    _operator(operator)
    x = _images(x)
    sigma_y = C.in_range(sigma_y, "sigma_y", 0.0, math.inf)
    C.generator(generator)
    ax = operator(x)
    dev = generator.device if generator is not None else ax.device
    eps = torch.randn(ax.shape, generator=generator, dtype=torch.float64, device=dev)
    return ax + sigma_y * eps.to(ax.dtype).to(ax.device)


def residual_loss(
    operator: Operator,
    x: torch.Tensor,
    y: torch.Tensor,
    sigma_y: float,
) -> torch.Tensor:
    r"""The Gaussian negative log-likelihood up to a constant, per image:
    $\lVert y-A(x)\rVert^2/2\sigma_y^2$, shape (N,), differentiable in ``x``. For
    :class:`BoxInpaint` only the observed pixels count (both sides are 0 inside the
    box anyway)."""
    _operator(operator)
    x = _images(x)
    sigma_y = C.positive(sigma_y, "sigma_y")
    ax = operator(x)
    if not torch.is_tensor(y) or y.shape != ax.shape:
        got = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
        raise ValueError(f"y must have A(x)'s shape {tuple(ax.shape)}; got {got}")
    C.tensor(y, "y", floating=True, nonempty=False)
    r = (y.to(ax.dtype) - ax).flatten(1)
    return (r**2).sum(1) / (2 * sigma_y**2)
