"""Plotting helpers for the book (matplotlib only).

Every function draws on ``ax`` if given, otherwise on a new figure that fits the book's
text column, and returns the Axes. Call :func:`style` once per chapter for the book's
look; it also makes every new pyplot figure check, whenever it is drawn, that its text
stays legible on the page (:func:`check_legible`; an :class:`IllegibleFigureWarning`
otherwise). Inputs may be torch tensors or numpy arrays; callables (densities, vector
fields) receive (M, 2) float64 torch tensors.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from cycler import cycler
from matplotlib.axes import Axes
from matplotlib.axis import Axis
from matplotlib.figure import Figure, SubFigure
from matplotlib.text import Text

from . import _checks as C

__all__ = ["style", "samples_2d", "density_contours", "trajectories", "vector_field",
           "image_grid", "line", "check_legible", "column_width", "COLORS", "COLUMN_PX",
           "MIN_TEXT_PT", "IllegibleFigureWarning"]

#: The book's colour cycle (colour-blind friendly, after Okabe and Ito).
COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442",
          "#000000"]

#: Width of the book's text column in CSS pixels, measured in Chromium by
#: ``scripts/render_pages.py`` in a window 1280 px wide (790 px from about 1440 px up).
#: A figure wider than this is shrunk to fit, and its text with it.
COLUMN_PX = 688

#: The smallest legible text on the page, in points (1 pt = 1/72 inch = 4/3 CSS px).
MIN_TEXT_PT = 8.0

_CSS_PX_PER_INCH = 96.0
_HOOK = "dlib.plot:_watch_legibility"


class IllegibleFigureWarning(UserWarning):
    """A figure has text smaller than :data:`MIN_TEXT_PT` at the size the page shows it.

    Issued by the draw hook that :func:`style` installs; the book's tests fail when a
    chapter's stored outputs contain it (the name is the string they look for)."""


def style() -> None:
    """Set the book's matplotlib rcParams (dpi 90, font size 10, light grid, the
    :data:`COLORS` cycle) and make every new pyplot figure check its text's size on the
    page whenever it is drawn (:func:`check_legible`); see chapter 1."""
    hooks = [h for h in plt.rcParams["figure.hooks"] if h != _HOOK]
    plt.rcParams.update({
        "figure.dpi": 90, "savefig.dpi": 90, "figure.figsize": (5.0, 3.5),
        "font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10,
        "legend.fontsize": 9,
        "axes.grid": True, "grid.color": "0.9", "grid.linewidth": 0.6,
        "axes.axisbelow": True, "axes.prop_cycle": cycler(color=COLORS),
        "axes.spines.top": False, "axes.spines.right": False,
        "figure.hooks": hooks + [_HOOK],
    })


def column_width(dpi: float | None = None) -> float:
    """The widest figure, in inches, that the page shows at full size: the text column
    (:data:`COLUMN_PX`) at ``dpi`` (default: ``figure.dpi``), less the padding that
    Jupyter adds around a saved figure (``savefig.pad_inches`` on each side)."""
    dpi = plt.rcParams["figure.dpi"] if dpi is None else dpi
    dpi = C.positive(dpi, "dpi")
    return COLUMN_PX / dpi - 2 * _pad_inches()


def _pad_inches() -> float:
    pad = plt.rcParams["savefig.pad_inches"]
    return float(pad) if isinstance(pad, (int, float)) else 0.1


def _texts(artist):
    """The Text artists that a draw of ``artist`` shows: visible, non-empty, and not on
    an axis that is switched off (``ax.axis("off")``)."""
    if not artist.get_visible():
        return
    if isinstance(artist, Text):
        if artist.get_text().strip():
            yield artist
        return
    for child in artist.get_children():
        if isinstance(child, Axis) and isinstance(artist, Axes) and not artist.axison:
            continue
        yield from _texts(child)


def check_legible(fig, min_pt: float = MIN_TEXT_PT,
                  column_px: float = COLUMN_PX) -> list[tuple[str, float]]:
    """The texts of ``fig`` smaller than ``min_pt`` points at the size the page shows.

    The book shows a figure as a PNG at ``fig.dpi`` with one image pixel per CSS pixel
    (96 per inch), shrunk to the text column when wider. The image is the figure's
    tight bounding box plus ``savefig.pad_inches`` on each side (as Jupyter saves it),
    so a text of ``s`` points appears at ``s * dpi / 96 * min(1, column_px / image_px)``
    points.

    Returns ``(text, size on the page in points)`` pairs, smallest first (empty when all
    is legible). Used by the draw hook that :func:`style` installs; see chapter 1.
    """
    if not isinstance(fig, (Figure, SubFigure)):
        raise ValueError(f"fig must be a matplotlib Figure; got {type(fig).__name__}")
    min_pt, column_px = C.positive(min_pt, "min_pt"), C.positive(column_px, "column_px")
    fig = fig.figure if isinstance(fig, SubFigure) else fig
    width_px = (fig.get_tightbbox().width + 2 * _pad_inches()) * fig.dpi
    scale = fig.dpi / _CSS_PX_PER_INCH * min(1.0, column_px / width_px)
    small = []
    for t in _texts(fig):
        size = t.get_fontsize() * scale
        if size < min_pt:
            small.append((" ".join(t.get_text().split())[:40], round(size, 2)))
    return sorted(small, key=lambda item: item[1])


def _watch_legibility(fig) -> None:
    """``figure.hooks`` entry (set by :func:`style`): check the figure on every draw."""
    fig.canvas.mpl_connect("draw_event", _on_draw)


def _on_draw(event) -> None:
    fig = event.canvas.figure
    small = check_legible(fig)
    if not small:
        fig._dlib_legibility = None
        return
    width = fig.get_tightbbox().width + 2 * _pad_inches()
    sizes = sorted({s for _, s in small})
    examples = "; ".join(f"{t!r} {s:.1f} pt" for t, s in list(dict.fromkeys(small))[:4])
    msg = (f"{len(small)} text(s) of this figure are smaller than {MIN_TEXT_PT:g} pt "
           f"on the page (smallest {sizes[0]:.1f} pt): {examples}. "
           f"The figure is {width:.2f} in wide at {fig.dpi:g} dpi; the column shows "
           f"{column_width(fig.dpi):.2f} in at full size. Use a narrower figure "
           f"(dlib.plot.column_width()) or larger fonts.")
    if msg == getattr(fig, "_dlib_legibility", None):
        return  # one warning per figure state, not one per draw
    fig._dlib_legibility = msg
    warnings.warn_explicit(msg, IllegibleFigureWarning, filename="dlib.plot", lineno=0,
                           module="dlib.plot")


def _np(x, name: str, finite: bool = True) -> np.ndarray:
    """``x`` as a float64 array; booleans and strings are refused, and so are NaN and
    inf unless ``finite=False``."""
    if torch.is_tensor(x):
        if x.dtype == torch.bool or x.is_complex():
            raise ValueError(f"{name} must hold real numbers; got dtype {x.dtype}")
        a = x.detach().cpu().double().numpy()
    else:
        try:
            a = np.asarray(x)
        except (TypeError, ValueError):  # e.g. ragged nested lists
            a = np.asarray(None)
        if a.dtype.kind == "b":
            raise ValueError(f"{name} must hold real numbers; got booleans")
        if a.dtype.kind not in "iuf":
            raise ValueError(f"{name} must be a tensor or array of numbers; "
                             f"got {type(x).__name__}")
        a = a.astype(float)
    if finite and not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return a


def _points(x, name: str = "x") -> np.ndarray:
    a = _np(x, name)
    if a.ndim != 2 or a.shape[1] != 2 or len(a) < 1:
        raise ValueError(f"{name} must have shape (N, 2) with N >= 1; got {a.shape}")
    return a


def _axes(ax, figsize=(4.0, 4.0)):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    elif not isinstance(ax, Axes):
        raise ValueError(f"ax must be a matplotlib Axes or None; got "
                         f"{type(ax).__name__}")
    return ax


def _limits(lim) -> tuple[float, float]:
    """``lim`` as a float L (meaning [-L, L]) or a pair (lo, hi), for both axes."""
    if isinstance(lim, (int, float)) and not isinstance(lim, bool):
        lo, hi = -float(lim), float(lim)
    elif isinstance(lim, (tuple, list)) and len(lim) == 2:
        lo, hi = float(lim[0]), float(lim[1])
    else:
        raise ValueError("lim must be a positive number L (for [-L, L]) or a pair "
                         f"(lo, hi); got {lim!r}")
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"lim must give finite limits lo < hi; got {lim!r}")
    return lo, hi


def _grid(lim, n: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    n = C.positive_int(n, "n (grid points per axis)", minimum=2)
    lo, hi = _limits(lim)
    g = np.linspace(lo, hi, n)
    X, Y = np.meshgrid(g, g)
    pts = torch.as_tensor(np.stack([X.ravel(), Y.ravel()], axis=1), dtype=torch.float64)
    return X, Y, pts


def density_contours(log_prob: Callable[[torch.Tensor], torch.Tensor], lim, ax=None,
                     n: int = 200, levels: int = 8, filled: bool = False,
                     cmap: str = "Greys"):
    """Contours of ``exp(log_prob)`` (scaled to peak 1) on an n x n grid over ``lim`` in
    both axes.

    ``log_prob`` maps an (M, 2) float64 tensor to log-densities of shape (M,)
    (unnormalised is fine).
    """
    C.function(log_prob, "log_prob", "log_prob(points) -> (M,) log-densities")
    if not isinstance(levels, (list, tuple)):
        levels = C.positive_int(levels, "levels")
    elif len(levels) < 1 or not np.all(np.diff(_np(levels, "levels")) > 0):
        raise ValueError(f"levels must be a count or increasing numbers; got "
                         f"{levels!r}")
    C.flag(filled, "filled")
    ax = _axes(ax)
    X, Y, pts = _grid(lim, n)
    with torch.no_grad():
        lp = _np(log_prob(pts), "log_prob(points)", finite=False)
    if lp.shape != (len(pts),):
        raise ValueError(f"log_prob must return shape ({len(pts)},) for "
                         f"({len(pts)}, 2) points; got {lp.shape}")
    finite = np.isfinite(lp)
    if not finite.any():
        raise ValueError("log_prob returned no finite value on the grid; check lim")
    p = np.where(finite, np.exp(lp - lp[finite].max()), 0.0).reshape(X.shape)
    draw = ax.contourf if filled else ax.contour
    draw(X, Y, p, levels=levels, cmap=cmap)
    ax.set_xlim(*_limits(lim))
    ax.set_ylim(*_limits(lim))
    ax.set_aspect("equal")
    return ax


def samples_2d(x, ax=None, density: Callable | None = None, lim=None, s: float = 2,
               alpha: float = 0.5, color=None, title: str | None = None,
               label: str | None = None):
    """Scatter plot of points (N, 2) on equal, square axes; optionally over contours of
    ``density``.

    ``density`` maps an (M, 2) float64 tensor to log-densities (M,). ``lim`` is L (for
    [-L, L]) or (lo, hi); by default it covers the data with a 5% margin.
    """
    pts = _points(x)
    C.optional_function(density, "density", "density(points) -> (M,) log-densities")
    s = C.positive(s, "s")
    alpha = C.in_range(alpha, "alpha", 0.0, 1.0)
    if lim is None:
        if len(pts):
            lo, hi = float(pts.min()), float(pts.max())
            pad = 0.05 * (hi - lo) or 1.0
            lim = (lo - pad, hi + pad)
        else:
            lim = (-1.0, 1.0)
    lim = _limits(lim)
    ax = _axes(ax)
    if density is not None:
        density_contours(density, lim, ax=ax)
    ax.scatter(pts[:, 0], pts[:, 1], s=s, alpha=alpha, color=color, label=label,
               linewidths=0)
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    if label:
        ax.legend(loc="upper right", markerscale=4)
    return ax


def trajectories(traj, ax=None, n: int = 50, color="C0", alpha: float = 0.4):
    """Paths of the first ``n`` particles of ``traj`` ((steps+1, N, 2) or a list of
    (N, 2)).

    Start points are drawn as grey dots, end points as black crosses.
    """
    if isinstance(traj, (list, tuple)):
        if not traj:
            raise ValueError("traj must not be an empty list")
        arr = np.stack([_points(p, "each trajectory frame") for p in traj])
    else:
        arr = _np(traj, "traj")
    if arr.ndim != 3 or arr.shape[2] != 2 or arr.shape[0] < 1:
        raise ValueError(f"traj must have shape (steps+1, N, 2); got {arr.shape}")
    n = C.positive_int(n, "n")
    arr = arr[:, :n]
    alpha = C.in_range(alpha, "alpha", 0.0, 1.0)
    ax = _axes(ax)
    ax.plot(arr[:, :, 0], arr[:, :, 1], color=color, alpha=alpha, linewidth=0.8)
    ax.scatter(arr[0, :, 0], arr[0, :, 1], s=8, color="0.5", label="start", zorder=3)
    ax.scatter(arr[-1, :, 0], arr[-1, :, 1], s=14, color="k", marker="x", label="end",
               zorder=3)
    ax.set_aspect("equal")
    ax.legend(loc="upper right")
    return ax


def vector_field(fn: Callable[[torch.Tensor], torch.Tensor], lim, ax=None, n: int = 20,
                 normalize: bool = False, color="C1"):
    """Quiver plot of ``fn`` ((M, 2) float64 tensor -> (M, 2)) on an n x n grid;
    optionally unit arrows."""
    C.function(fn, "fn", "fn(points) -> (M, 2) vectors")
    C.flag(normalize, "normalize")
    ax = _axes(ax)
    X, Y, pts = _grid(lim, n)
    with torch.no_grad():
        v = _np(fn(pts), "fn(points)")
    if v.shape != (len(pts), 2):
        raise ValueError(f"fn must return shape ({len(pts)}, 2); got {v.shape}")
    if normalize:
        v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    ax.quiver(X, Y, v[:, 0].reshape(X.shape), v[:, 1].reshape(X.shape), color=color,
              angles="xy")
    ax.set_aspect("equal")
    return ax


def image_grid(images, ax=None, nrow: int = 8, vmin: float = -1, vmax: float = 1,
               title: str | None = None):
    """Show images (N, C, H, W) with C = 1 (grey) or 3 (colour), or flat grey (N, H*W)
    with H = W, as a grid with ``nrow`` images per row. Pixel values from [vmin, vmax]
    are shown as black..white. A new figure is at most as wide as the text column."""
    a = _np(images, "images", finite=False)
    if a.ndim == 2:
        side = int(round(np.sqrt(a.shape[1])))
        if side * side != a.shape[1]:
            raise ValueError("flat images must have a square number of pixels; "
                             f"got {a.shape[1]}")
        a = a.reshape(len(a), 1, side, side)
    if not (a.ndim == 4 and a.shape[1] in (1, 3) and a.shape[2] == a.shape[3]):
        raise ValueError("images must have shape (N, 1 or 3, H, H) or (N, H*H); "
                         f"got {a.shape}")
    if len(a) == 0:
        raise ValueError("images must contain at least one image")
    if getattr(images, "dtype", None) in (torch.bool, np.dtype(bool)):
        raise ValueError("images must hold pixel values, not booleans")
    if not np.isfinite(a).all():
        raise ValueError("images contain NaN or inf values")
    nrow = C.positive_int(nrow, "nrow (images per row)")
    try:
        ok = math.isfinite(vmin) and math.isfinite(vmax) and vmin < vmax
        ok = ok and not isinstance(vmin, bool) and not isinstance(vmax, bool)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError("vmin and vmax must be finite numbers with vmin < vmax; "
                         f"got {vmin!r}, {vmax!r}")
    # (N, H, W, C) in [0, 1]
    a = np.clip((a.transpose(0, 2, 3, 1) - vmin) / (vmax - vmin), 0.0, 1.0)
    side, ch, cols = a.shape[1], a.shape[3], min(nrow, len(a))
    rows = -(-len(a) // cols)
    pad = 1
    canvas = np.full((rows * (side + pad) + pad, cols * (side + pad) + pad, ch), 0.5)
    for k, img in enumerate(a):
        r, c = divmod(k, cols)
        canvas[pad + r * (side + pad):pad + r * (side + pad) + side,
               pad + c * (side + pad):pad + c * (side + pad) + side] = img
    width = min(0.55 * cols + 0.3, column_width())
    ax = _axes(ax, figsize=(width, min(width * canvas.shape[0] / canvas.shape[1] + 0.3,
                                       8.0)))
    if ch == 1:
        ax.imshow(canvas[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(canvas, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if title:
        ax.set_title(title)
    return ax


def line(x: Sequence[float], ys: Mapping[str, Sequence[float]], ax=None,
         xlabel: str | None = None, ylabel: str | None = None, logx: bool = False,
         logy: bool = False, title: str | None = None, marker: str | None = "o"):
    """One line per entry of ``ys`` (label -> values, each as long as ``x``) with a
    legend."""
    xs = _np(x, "x")
    if xs.ndim != 1:
        raise ValueError(f"x must be one-dimensional; got shape {xs.shape}")
    if not isinstance(ys, Mapping) or not ys:
        raise ValueError("ys must be a non-empty dict mapping a label to a sequence of "
                         "values")
    C.flag(logx, "logx")
    C.flag(logy, "logy")
    ax = _axes(ax, figsize=(5.0, 3.5))
    for name, y in ys.items():
        yv = _np(y, f"ys[{name!r}]", finite=False)  # NaN leaves a gap in a line
        if yv.shape != xs.shape:
            raise ValueError(f"ys[{name!r}] must have the shape of x {xs.shape}; "
                             f"got {yv.shape}")
        ax.plot(xs, yv, marker=marker, label=str(name), markersize=4)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend()
    return ax
