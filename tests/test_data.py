"""Tests for dlib.data: determinism, ranges, splits, validation."""

import pytest
import torch

from dlib import data


@pytest.mark.parametrize("name", ["moons", "checkerboard", "swiss_roll"])
def test_toy_deterministic_float32(name):
    a = data.toy_2d(name, 500, seed=3)
    b = data.toy_2d(name, 500, seed=3)
    c = data.toy_2d(name, 500, seed=4)
    assert a.shape == (500, 2) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.isfinite(a).all()


def test_moons_standardised():
    x = data.two_moons(4000, seed=0)
    assert x.mean(0).abs().max() < 0.2
    assert 0.5 < x.std(0).min() and x.std(0).max() < 2.0


def test_checkerboard_on_dark_squares():
    x = data.checkerboard(4000, seed=1)
    assert x.min() >= -4 and x.max() <= 4
    cell = torch.floor((x + 4) / 2).long()
    assert ((cell[:, 0] + cell[:, 1]) % 2 == 0).all()
    assert len(torch.unique(cell, dim=0)) == 8


def test_swiss_roll_scale():
    x = data.swiss_roll(2000, seed=0)
    assert x.abs().max() < 6


def test_toy_bad_inputs():
    with pytest.raises(ValueError, match="unknown toy data set 'spiral'"):
        data.toy_2d("spiral", 10)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        data.two_moons(0)
    with pytest.raises(ValueError, match="noise must be"):
        data.swiss_roll(10, noise=-1)
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        data.checkerboard(2.5)


def test_digits_split():
    xtr, ytr = data.digits("train", seed=0)
    xte, yte = data.digits("test", seed=0)
    xall, yall = data.digits("all")
    assert (
        xall.shape == (1797, 64)
        and xall.dtype == torch.float32
        and yall.dtype == torch.int64
    )
    assert len(xtr) + len(xte) == 1797 and len(xte) == round(0.2 * 1797)
    assert xall.min() == -1 and xall.max() == 1
    assert set(yall.tolist()) == set(range(10))

    # train and test partition the data set: together they are exactly "all" (as a
    # multiset)
    def rows(x, y):
        return sorted(tuple(r) + (lab,) for r, lab in zip(x.tolist(), y.tolist()))

    assert rows(torch.cat([xtr, xte]), torch.cat([ytr, yte])) == rows(xall, yall)
    assert torch.equal(data.digits("train", seed=0)[0], xtr)
    assert not torch.equal(data.digits("test", seed=1)[0], xte)


def test_digits_bad_inputs():
    with pytest.raises(ValueError, match="unknown split 'val'"):
        data.digits("val")
    with pytest.raises(ValueError, match="test_fraction"):
        data.digits(test_fraction=1.0)


def test_to_images():
    x, _ = data.digits("test")
    img = data.to_images(x)
    assert img.shape == (len(x), 1, 8, 8)
    assert torch.equal(img.reshape(len(x), 64), x)
    with pytest.raises(ValueError, match=r"shape \(N, 64\)"):
        data.to_images(torch.zeros(3, 63))
    with pytest.raises(ValueError, match="size must be"):
        data.to_images(x, size=0)


def test_batches():
    d = torch.arange(10.0)
    it1 = data.batches(d, 4, torch.Generator().manual_seed(0))
    it2 = data.batches(d, 4, torch.Generator().manual_seed(0))
    b1 = [next(it1) for _ in range(5)]
    assert all(b.shape == (4,) for b in b1)
    assert all(torch.equal(a, next(it2)) for a in b1)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        data.batches(d, 0, None)
    with pytest.raises(ValueError, match="non-empty tensor"):
        data.batches(torch.zeros(0, 2), 2, None)


def test_image_dataset_fails_clearly():
    import pytest as _pytest

    from dlib import data as _data

    with _pytest.raises(ValueError, match="unknown full-scale data set"):
        _data.image_dataset("imagenet")
    try:
        import torchvision  # noqa: F401
    except ImportError:
        with _pytest.raises(RuntimeError, match="needs a torchvision"):
            _data.image_dataset("mnist")


def test_gaussian_ring_matches_the_analytic_model():
    from dlib import analytic as _analytic
    from dlib import data as _data

    x = _data.toy_2d("ring", 20000, seed=3)
    assert x.dtype == torch.float32 and x.shape == (20000, 2)
    assert torch.equal(x, _data.gaussian_ring(20000, seed=3))
    assert (x.norm(dim=1).mean() - 4.0).abs() < 0.05
    # mean log-density under the exact model is the model's entropy (up to Monte-Carlo
    # error)
    ll = _analytic.ring().log_prob(x.double()).mean()
    ref = (
        _analytic.ring()
        .log_prob(_analytic.ring().sample(20000, torch.Generator().manual_seed(4)))
        .mean()
    )
    assert abs(ll - ref) < 0.05
