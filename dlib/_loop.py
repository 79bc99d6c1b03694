"""The loop plumbing shared by every sampler of :mod:`dlib.sampling` and
:mod:`dlib.solvers`: input validation on entry, the step iterator with its optional
progress bar, and the per-step callback."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from . import _checks as C

PROGRESS_MIN_STEPS = 200


def _prepare(denoiser, x, ts) -> list[float]:
    """Validate a sampler's inputs once; return the grid as Python floats. The
    schedule's coefficients at every grid time are computed here too (they are cached),
    so that the steps themselves only do tensor arithmetic on ``x``."""
    C.denoiser(denoiser)
    denoiser._check_x(x, "x")
    if torch.is_tensor(ts):
        ts = ts.detach().cpu()
    ts = C.as_time(ts, name="ts", dtype=torch.float64).to(torch.float64)
    if ts.dim() != 1 or ts.numel() < 2 or bool((ts[1:] >= ts[:-1]).any()):
        raise ValueError(
            "ts must be a strictly decreasing 1-D grid with at least 2 times"
        )
    ts = ts.tolist()
    for t in ts:
        denoiser.schedule._coefficients(t)
    return ts


def _progress(progress, n: int) -> bool:
    """Whether to show a progress bar for ``n`` steps (see module)."""
    if progress is not None and not isinstance(progress, bool):
        raise ValueError(f"progress must be True, False or None; got {progress!r}")
    return n >= PROGRESS_MIN_STEPS if progress is None else progress


def _steps(ts: list[float], progress, desc: str):
    """(i, t, s) for every step of the grid, with a progress bar when asked (see
    module)."""
    n = len(ts) - 1
    show = _progress(progress, n)
    steps = zip(range(n), ts[:-1], ts[1:])
    return tqdm(steps, total=n, desc=desc, leave=False) if show else steps


def _report(callback, i, t, s, x, x0):
    if callback is not None:
        callback({"i": i, "t": t, "t_next": s, "x": x, "x0": x0})
