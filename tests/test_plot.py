"""Tests for dlib.plot: every helper runs on tiny inputs, returns an Axes and rejects
bad shapes; the legibility check measures text at the size the page shows it."""

import matplotlib

matplotlib.use("Agg")

import warnings  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from dlib import plot  # noqa: E402


def gauss(p):
    return -0.5 * (p ** 2).sum(1)


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def test_style_sets_rcparams():
    with matplotlib.rc_context():
        plot.style()
        rc = matplotlib.rcParams
        assert rc["figure.dpi"] == 90 and rc["font.size"] == 10
        assert "dlib.plot:_watch_legibility" in rc["figure.hooks"]


def test_samples_2d_and_density():
    x = torch.randn(30, 2)
    assert isinstance(plot.samples_2d(x), Axes)
    ax = plot.samples_2d(x.numpy(), density=gauss, lim=3, title="t", label="samples")
    assert ax.get_xlim() == (-3, 3) and ax.get_title() == "t"
    _, ax2 = plt.subplots()
    assert plot.samples_2d(x, ax=ax2) is ax2
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        plot.samples_2d(torch.randn(5, 3))
    with pytest.raises(ValueError, match="lim must"):
        plot.samples_2d(x, lim=(1, -1))


def test_density_contours():
    assert isinstance(plot.density_contours(gauss, (-2, 2), n=20, filled=True), Axes)
    with pytest.raises(ValueError, match="must return shape"):
        plot.density_contours(lambda p: p, 2, n=10)
    with pytest.raises(ValueError, match="n \\(grid points"):
        plot.density_contours(gauss, 2, n=1)


def test_trajectories():
    traj = torch.randn(6, 10, 2).cumsum(0)
    assert isinstance(plot.trajectories(traj, n=5), Axes)
    assert isinstance(plot.trajectories(list(traj)), Axes)
    with pytest.raises(ValueError, match=r"\(steps\+1, N, 2\)"):
        plot.trajectories(torch.randn(6, 10, 3))
    with pytest.raises(ValueError, match="empty"):
        plot.trajectories([])


def test_vector_field():
    assert isinstance(plot.vector_field(lambda p: -p, 2, n=5, normalize=True), Axes)
    with pytest.raises(ValueError, match=r"must return shape \(25, 2\)"):
        plot.vector_field(lambda p: p[:, 0], 2, n=5)


def test_image_grid():
    ax = plot.image_grid(torch.rand(10, 1, 8, 8) * 2 - 1, nrow=4, title="digits")
    assert isinstance(ax, Axes)
    img = ax.get_images()[0].get_array()
    assert img.shape == (3 * 9 + 1, 4 * 9 + 1)
    assert isinstance(plot.image_grid(np.zeros((3, 64))), Axes)
    with pytest.raises(ValueError, match="square number of pixels"):
        plot.image_grid(torch.zeros(3, 60))
    colour = plot.image_grid(torch.zeros(5, 3, 8, 8), nrow=5).get_images()[0]
    colour = colour.get_array()
    assert colour.shape == (9 + 1, 5 * 9 + 1, 3)
    with pytest.raises(ValueError, match=r"\(N, 1 or 3, H, H\)"):
        plot.image_grid(torch.zeros(3, 2, 8, 8))


def test_line():
    ax = plot.line([1, 10, 100], {"a": [3, 2, 1], "b": torch.tensor([1.0, 2.0, 3.0])},
                   xlabel="steps", ylabel="loss", logx=True, logy=True, title="x")
    assert isinstance(ax, Axes) and len(ax.get_lines()) == 2
    assert ax.get_xscale() == "log"
    with pytest.raises(ValueError, match="must have the shape of x"):
        plot.line([1, 2], {"a": [1, 2, 3]})
    with pytest.raises(ValueError, match="non-empty dict"):
        plot.line([1, 2], {})


def test_image_grid_rejects_booleans_and_nan():
    for bad in (torch.zeros(2, 1, 4, 4) > 0, np.zeros((2, 16), dtype=bool)):
        with pytest.raises(ValueError, match="images must hold"):
            plot.image_grid(bad)
    for value in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="images contain NaN or inf"):
            plot.image_grid(torch.zeros(2, 1, 4, 4).index_fill(0, torch.tensor([1]),
                                                               value))


def test_image_grid_rejects_equal_limits():
    with pytest.raises(ValueError, match="vmin < vmax"):
        plot.image_grid(torch.zeros(2, 1, 4, 4), vmin=1, vmax=1)


# --- legibility: text size at the size the page shows the figure ---------------------

def _spanning_figure(width_in, dpi, size_pt):
    """A figure whose tight bounding box is its full width: two texts at the edges."""
    fig = Figure(figsize=(width_in, 1.0), dpi=dpi)
    fig.text(0.0, 0.5, "L", ha="left", fontsize=size_pt)
    fig.text(1.0, 0.5, "R", ha="right", fontsize=size_pt)
    return fig


def test_check_legible_closed_form_at_natural_size():
    # narrower than the column: shown at natural size, 1 image px per CSS px (96/inch)
    fig = _spanning_figure(3.0, dpi=72, size_pt=10)
    small = plot.check_legible(fig, min_pt=8)
    assert [s for _, s in small] == pytest.approx([7.5, 7.5])  # 10 pt * 72/96
    assert plot.check_legible(fig, min_pt=7.4) == []


def test_check_legible_closed_form_when_shrunk_to_the_column():
    # image width (tight box + 2 * 0.1 in padding) * 96 dpi = 2 * column: shrunk by half
    pad = plt.rcParams["savefig.pad_inches"]
    fig = _spanning_figure(2 * plot.COLUMN_PX / 96 - 2 * pad, dpi=96, size_pt=14)
    width_in = fig.get_tightbbox().width + 2 * pad
    assert width_in * 96 == pytest.approx(2 * plot.COLUMN_PX, rel=0.01)
    sizes = [s for _, s in plot.check_legible(fig, min_pt=8)]
    assert sizes == pytest.approx([7.0, 7.0], rel=0.01)  # 14 pt * 1 * 1/2


def test_check_legible_ignores_hidden_and_empty_text():
    fig = Figure(figsize=(3, 2), dpi=96)
    ax = fig.add_subplot()
    ax.tick_params(labelsize=12)
    ax.set_title("")
    fig.text(0.5, 0.5, "hidden", fontsize=4).set_visible(False)
    assert plot.check_legible(fig) == []
    ax.set_xlabel("tiny", fontsize=5)
    assert [t for t, _ in plot.check_legible(fig)] == ["tiny"]
    ax.axis("off")  # axis labels and tick labels are no longer drawn
    assert plot.check_legible(fig) == []


def test_check_legible_rejects_bad_input():
    with pytest.raises(ValueError, match="fig must be a matplotlib Figure"):
        plot.check_legible("figure")
    fig = Figure()
    for kw in ({"min_pt": 0}, {"min_pt": float("nan")}, {"column_px": -1},
               {"column_px": True}):
        with pytest.raises(ValueError, match=next(iter(kw))):
            plot.check_legible(fig, **kw)
    with pytest.raises(ValueError, match="dpi"):
        plot.column_width(0)


def test_style_warns_when_a_pyplot_figure_is_illegible():
    with matplotlib.rc_context():
        plot.style()
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.plot([0, 1], label="tiny legend")
        ax.legend(fontsize=6)
        with pytest.warns(plot.IllegibleFigureWarning, match="'tiny legend' 5.6 pt"):
            fig.canvas.draw()
        with warnings.catch_warnings():  # once per figure state, not on every draw
            warnings.simplefilter("error")
            fig.canvas.draw()
            ok, ax2 = plt.subplots()
            ax2.plot([0, 1], label="fine")
            ax2.legend()
            ax2.set_title("fine")
            ok.canvas.draw()


def test_helpers_make_legible_figures_that_fit_the_column():
    with matplotlib.rc_context():
        plot.style()
        x = torch.randn(50, 2)
        axes = [
            plot.samples_2d(x, density=gauss, title="samples", label="data"),
            plot.trajectories(torch.randn(5, 8, 2).cumsum(0)),
            plot.vector_field(lambda p: -p, 2, n=5),
            plot.line([1, 2], {"a": [1, 2]}, xlabel="x", ylabel="y", title="t"),
            plot.image_grid(torch.zeros(64, 1, 8, 8), nrow=32, title="many"),
        ]
        for ax in axes:
            fig = ax.figure
            width_px = (fig.get_tightbbox().width + 0.2) * fig.dpi
            assert width_px <= plot.COLUMN_PX + 1
            assert plot.check_legible(fig) == []


@pytest.mark.parametrize("call, match", [
    (lambda: plot.samples_2d(torch.zeros(3, 2), ax="ax"), "ax must be a matplotlib"),
    (lambda: plot.samples_2d(torch.full((3, 2), float("nan"))), "x contains NaN"),
    (lambda: plot.samples_2d(torch.zeros(0, 2)), "N >= 1"),
    (lambda: plot.samples_2d(torch.zeros(3, 2), density=3), "density must be callable"),
    (lambda: plot.samples_2d(torch.zeros(3, 2), s=-1.0), "s must be a positive"),
    (lambda: plot.density_contours(lambda p: -p.pow(2).sum(1), 2, levels=0), "levels"),
    (lambda: plot.density_contours(lambda p: -p.pow(2).sum(1), 2, filled="yes"),
     "filled must be True or False"),
    (lambda: plot.trajectories(torch.full((4, 6, 2), float("inf"))), "traj contains"),
    (lambda: plot.vector_field(lambda p: p, 2, normalize="yes"), "normalize must be"),
    (lambda: plot.line([1, float("nan"), 3], {"a": [1, 2, 3]}), "x contains NaN"),
    (lambda: plot.line([1, 2, 3], {"a": [1, 2, 3]}, logy="yes"), "logy must be"),
])
def test_more_bad_inputs_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
    plt.close("all")
