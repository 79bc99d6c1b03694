"""Tests for dlib.plot: every helper runs on tiny inputs, returns an Axes and rejects bad shapes."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402

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
        assert matplotlib.rcParams["figure.dpi"] == 90 and matplotlib.rcParams["font.size"] == 10


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
    colour = plot.image_grid(torch.zeros(5, 3, 8, 8), nrow=5).get_images()[0].get_array()
    assert colour.shape == (9 + 1, 5 * 9 + 1, 3)
    with pytest.raises(ValueError, match=r"\(N, 1 or 3, H, H\)"):
        plot.image_grid(torch.zeros(3, 2, 8, 8))


def test_line():
    ax = plot.line([1, 10, 100], {"a": [3, 2, 1], "b": torch.tensor([1.0, 2.0, 3.0])},
                   xlabel="steps", ylabel="loss", logx=True, logy=True, title="x")
    assert isinstance(ax, Axes) and len(ax.get_lines()) == 2 and ax.get_xscale() == "log"
    with pytest.raises(ValueError, match="must have the shape of x"):
        plot.line([1, 2], {"a": [1, 2, 3]})
    with pytest.raises(ValueError, match="non-empty dict"):
        plot.line([1, 2], {})
