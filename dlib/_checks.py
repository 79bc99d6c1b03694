"""Input validators shared by every module: bad input fails early with a clear
ValueError.

The policy, in one place: a public function validates its arguments once, where they
enter (types, shapes, ranges, finiteness of data), and names the argument in the error.
Internal helpers and the inner loops of samplers trust what they are given: no checks
and no host-device synchronisation per step. Each kind of check lives here once.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Iterable

import numpy as np
import torch


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def number(value, name: str) -> float:
    """``value`` as a finite float (a Python or NumPy real, or a one-element tensor)."""
    if torch.is_tensor(value) and value.numel() == 1 and not value.dtype == torch.bool:
        value = value.item()
    if not _is_number(value) or not math.isfinite(float(value)):
        raise ValueError(f"{name} must be a finite number; got {value!r}")
    return float(value)


def positive(value, name: str) -> float:
    """A finite number > 0, as float."""
    try:
        v = number(value, name)
    except ValueError:
        raise ValueError(
            f"{name} must be a positive finite number; got {value!r}"
        ) from None
    if v <= 0:
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")
    return v


def in_range(
    value,
    name: str,
    lo: float,
    hi: float,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """A finite number in the interval [lo, hi] (or open at either end), as float."""
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    try:
        v = number(value, name)
    except ValueError:
        v = math.nan
    below = v <= lo if lo_open else v < lo
    above = v >= hi if hi_open else v > hi
    if math.isnan(v) or below or above:
        raise ValueError(
            f"{name} must be a number in {left}{lo}, {hi}{right}; got {value!r}"
        )
    return v


def positive_int(
    value, name: str, minimum: int = 1, maximum: int | None = None
) -> int:
    """An integer >= ``minimum`` (and <= ``maximum`` if given; bool is not an integer
    here)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value < minimum
        or (maximum is not None and value > maximum)
    ):
        upto = "" if maximum is None else f" and <= {maximum}"
        raise ValueError(
            f"{name} must be an integer >= {minimum}{upto}; got {value!r}"
        )
    return int(value)


SEED_MAX = 2**32 - 1  # what torch, NumPy and scikit-learn all accept


def seed(value, name: str = "seed") -> int:
    """A random seed: an integer in [0, 2**32 - 1]."""
    return positive_int(value, name, minimum=0, maximum=SEED_MAX)


def flag(value, name: str) -> bool:
    """True or False (not 0/1, not a string)."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}")
    return value


def path(value, name: str, *, folder_ok: bool = False) -> str:
    """A file path (str or os.PathLike) as str; unless ``folder_ok``, not an existing
    folder."""
    if not isinstance(value, (str, os.PathLike)):
        raise ValueError(
            f"{name} must be a file path (str or os.PathLike); got "
            f"{type(value).__name__}"
        )
    value = os.fspath(value)
    if not folder_ok and os.path.isdir(value):
        raise ValueError(f"{name} must be a file path; {value!r} is a folder")
    return value


def one_of(value, allowed: Iterable[str], name: str) -> str:
    """Check that ``value`` is one of ``allowed``."""
    allowed = tuple(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(
            f"unknown {name} {value!r}; allowed: {', '.join(map(repr, allowed))}"
        )
    return value


def function(fn, name: str, signature: str = ""):
    """A callable (``signature`` says how it is called, for the message)."""
    if not callable(fn):
        how = f" as {signature}" if signature else ""
        raise ValueError(f"{name} must be callable{how}; got {type(fn).__name__}")
    return fn


def optional_function(fn, name: str, signature: str = ""):
    """None or a callable."""
    return None if fn is None else function(fn, name, signature)


def generator(gen, name: str = "generator"):
    """None or a ``torch.Generator``."""
    if gen is not None and not isinstance(gen, torch.Generator):
        raise ValueError(
            f"{name} must be a torch.Generator or None; got {type(gen).__name__}"
        )
    return gen


def schedule(obj, name: str = "schedule"):
    """A :class:`dlib.schedules.Schedule`."""
    from .schedules import Schedule

    if not isinstance(obj, Schedule):
        raise ValueError(
            f"{name} must be a dlib.schedules.Schedule; got {type(obj).__name__}"
        )
    return obj


def denoiser(obj, name: str = "denoiser"):
    """A :class:`dlib.param.Denoiser`."""
    from .param import Denoiser

    if not isinstance(obj, Denoiser):
        raise ValueError(
            f"{name} must be a dlib.param.Denoiser; got {type(obj).__name__}"
        )
    return obj


def real_tensor(
    value, name: str, *, dtype=torch.float64, check_finite: bool = True
) -> torch.Tensor:
    """A number, nested list, array or tensor of real numbers as a floating tensor
    (``dtype``, or the tensor's own floating dtype when ``dtype`` is None); strings,
    None, booleans and complex numbers are refused, and so are NaN and inf unless
    ``check_finite=False``."""
    what = f"{name} must be a number, list, array or tensor of real numbers"
    if value is None or isinstance(value, (str, bytes, bool)):
        raise ValueError(f"{what}; got {value!r}")
    if not torch.is_tensor(value):
        # through NumPy, which keeps Python floats in float64 (torch.as_tensor of a list
        # would round them to float32 first: 0.3 would become 0.30000001192...)
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{what}; got {type(value).__name__}") from None
        if arr.dtype.kind not in "biufc":
            raise ValueError(f"{what}; got {type(value).__name__}")
        value = torch.as_tensor(arr)
    if value.dtype == torch.bool or value.is_complex():
        raise ValueError(f"{what}; got dtype {value.dtype}")
    if dtype is not None:
        value = value.to(dtype)
    elif not value.is_floating_point():
        value = value.to(torch.get_default_dtype())
    if check_finite:
        finite(value, name)
    return value


def time_range(value, name: str = "t_range") -> tuple[float, float]:
    """A pair (t_min, t_max) of times with 0 <= t_min < t_max <= 1, as floats."""
    ok = isinstance(value, (tuple, list)) and len(value) == 2
    if ok:
        try:
            lo, hi = (scalar_time(v, name) for v in value)
        except ValueError:
            ok = False
    if not ok or not lo < hi:
        raise ValueError(
            f"{name} must be a pair (t_min, t_max) with 0 <= t_min < t_max <= 1; "
            f"got {value!r}"
        )
    return lo, hi


def output(out, x: torch.Tensor, name: str) -> torch.Tensor:
    """A model's output ``out`` for the input ``x``: a tensor of x's shape (no silent
    broadcasting). ``name`` says how the model was called, e.g. ``"fn(x, t)"``; shapes
    only, so it costs no device synchronisation."""
    if not torch.is_tensor(out) or out.shape != x.shape:
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ValueError(
            f"{name} must return a tensor of x's shape {tuple(x.shape)}; got {got}"
        )
    return out


def finite(x: torch.Tensor, name: str) -> torch.Tensor:
    """Raise if ``x`` holds NaN or inf (one reduction: call it once per public call)."""
    if x.is_floating_point() and x.numel() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return x


def tensor(
    x,
    name: str,
    *,
    floating: bool = False,
    min_dim: int = 0,
    nonempty: bool = True,
    check_finite: bool = True,
) -> torch.Tensor:
    """A tensor with at least ``min_dim`` dimensions (floating point if asked, not
    empty, finite)."""
    if not torch.is_tensor(x):
        raise ValueError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if x.dim() < min_dim:
        raise ValueError(
            f"{name} must have at least {min_dim} dimension(s); got shape "
            f"{tuple(x.shape)}"
        )
    if floating and not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor; got dtype {x.dtype}")
    if nonempty and x.numel() == 0:
        raise ValueError(f"{name} must not be empty; got shape {tuple(x.shape)}")
    if check_finite:
        finite(x, name)
    return x


def batch(
    x, name: str = "x", *, floating: bool = True, min_dim: int = 2
) -> torch.Tensor:
    """A non-empty, finite batch tensor of shape (B, ...) with B >= 1 and at least
    ``min_dim`` dimensions (2 by default: a batch of vectors, images, ...)."""
    if torch.is_tensor(x) and x.dim() < min_dim:
        raise ValueError(
            f"{name} must be a batch tensor of shape (B, ...) with at least "
            f"{min_dim} dimensions; got shape {tuple(x.shape)}"
        )
    return tensor(x, name, floating=floating, min_dim=min_dim)


def time_dtype(x: torch.Tensor | None = None) -> torch.dtype:
    """Times are floating point whatever the data are: ``x``'s dtype if it is floating,
    otherwise torch's default float dtype (integer tokens get float times)."""
    if x is not None and x.is_floating_point():
        return x.dtype
    return torch.get_default_dtype()


def as_time(
    t, *, name: str = "t", lo: float = 0.0, hi: float = 1.0, dtype=None
) -> torch.Tensor:
    """``t`` as a floating tensor after checking that every entry is finite and lies in
    ``[lo, hi]``."""
    if isinstance(t, bool) or t is None or isinstance(t, str):
        raise ValueError(
            f"{name} must be a number or a tensor of times in [{lo}, {hi}]; got {t!r}"
        )
    if _is_number(t) and not lo <= t <= hi:  # before rounding to the tensor's dtype
        raise ValueError(f"{name} must lie in [{lo}, {hi}]; got {t!r}")
    if not torch.is_tensor(t):
        try:
            t = torch.as_tensor(t, dtype=dtype or torch.get_default_dtype())
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(
                f"{name} must be a number or a tensor of times in [{lo}, {hi}]; "
                f"got {type(t).__name__}"
            ) from None
    elif not t.is_floating_point():
        if t.dtype == torch.bool or t.is_complex():
            raise ValueError(f"{name} must hold real times; got dtype {t.dtype}")
        t = t.to(dtype or torch.get_default_dtype())
    if t.numel():
        bad = ~torch.isfinite(t) | (t < lo) | (t > hi)
        if bool(bad.any()):
            vals = t[bad].flatten()[:3].tolist()
            raise ValueError(
                f"{name} must lie in [{lo}, {hi}]; got values such as {vals}"
            )
    return t


def scalar_time(t, name: str = "t", lo: float = 0.0, hi: float = 1.0) -> float:
    """A single time in [lo, hi] as a Python float (no tensor, no synchronisation for
    floats)."""
    if torch.is_tensor(t):
        if t.numel() != 1:
            raise ValueError(
                f"{name} must be a single time; got shape {tuple(t.shape)}"
            )
        t = t.item()
    if not _is_number(t) or not lo <= float(t) <= hi:
        raise ValueError(f"{name} must be a number in [{lo}, {hi}]; got {t!r}")
    return float(t)


def check_time(t, x: torch.Tensor, name: str = "t"):
    """Validate a time for a batch ``x`` of shape (B, ...), keeping its form: a number
    (or a 0-d tensor) is returned as a Python float, one time for the whole batch (no
    tensor, no device synchronisation); a tensor of shape (B,) is returned as a floating
    tensor on ``x``'s device (see :func:`time_dtype`)."""
    if _is_number(t) or (torch.is_tensor(t) and t.dim() == 0):
        return scalar_time(t, name)
    t = as_time(t, name=name, dtype=time_dtype(x))
    if t.shape != (x.shape[0],):
        raise ValueError(
            f"{name} must be a scalar or have shape ({x.shape[0]},) to match x of "
            f"shape {tuple(x.shape)}; got shape {tuple(t.shape)}"
        )
    return t.to(device=x.device, dtype=time_dtype(x))


def time_tensor(t, x: torch.Tensor) -> torch.Tensor:
    """A time as returned by :func:`check_time` (a float or a (B,) tensor) as a (B,)
    floating tensor on ``x``'s device: what a network receives."""
    if isinstance(t, float):
        return torch.full((x.shape[0],), t, dtype=time_dtype(x), device=x.device)
    return t


def batch_time(t, x: torch.Tensor, name: str = "t") -> torch.Tensor:
    """Validate ``t`` (a scalar or one time per sample) and return it as a floating
    tensor of shape (B,) on ``x``'s device, for a batch ``x`` of shape (B, ...). Times
    are floating point whatever ``x``'s dtype (integer tokens get float times)."""
    return time_tensor(check_time(t, x, name), x)


def bcast(c, x: torch.Tensor):
    """Make a coefficient broadcast against x (B, ...): a float stays a float; a tensor
    of shape (B,) becomes (B, 1, ..., 1) in x's dtype; a 0-d tensor stays 0-d."""
    if isinstance(c, float):
        return c
    c = torch.as_tensor(c, dtype=x.dtype, device=x.device)
    if c.dim() == 0:
        return c
    return c.reshape(c.shape + (1,) * (x.dim() - c.dim()))


def randn(
    shape, like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Standard normal draws with the dtype and device of ``like``. They are drawn on
    the generator's device and then moved, so a seeded CPU generator also drives CUDA
    tensors (and gives the same numbers on every device)."""
    dev = generator.device if generator is not None else like.device
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    return torch.randn(shape, generator=generator, dtype=dtype, device=dev).to(
        like.device
    )


def rand(
    shape, like: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Uniform [0, 1) draws like :func:`randn`."""
    dev = generator.device if generator is not None else like.device
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    return torch.rand(shape, generator=generator, dtype=dtype, device=dev).to(
        like.device
    )
