r"""Offline data sets: 2-D toy distributions and the 8x8 digits bundled with
scikit-learn.

Every function is deterministic given ``seed`` and returns float32 torch tensors
(labels: int64).

* :func:`two_moons`, :func:`checkerboard`, :func:`swiss_roll`, :func:`gaussian_ring`,
  dispatched by :func:`toy_2d`.
* :func:`digits`  1797 grey-scale 8x8 digits, pixels mapped to $[-1, 1]$, with a seeded
  split.
* :func:`to_images` reshapes flat digits (N, 64) to (N, 1, 8, 8); :func:`batches` draws
  minibatches.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch
from sklearn.datasets import load_digits, make_moons, make_swiss_roll

from . import _checks as C
from ._checks import one_of

__all__ = [
    "two_moons",
    "checkerboard",
    "swiss_roll",
    "gaussian_ring",
    "toy_2d",
    "TOY_2D",
    "digits",
    "to_images",
    "batches",
    "image_dataset",
    "digits_images",
    "FULL_SCALE_DATASETS",
]


def two_moons(n: int, noise: float = 0.05, seed: int = 0) -> torch.Tensor:
    r"""``n`` points of the two-moons data set, shape (n, 2).

    scikit-learn's moons span $x\in[-1,2]$, $y\in[-0.5,1]$; they are mapped by the fixed
    affine map $z = 1.5\,(p - (0.5, 0.25))$, which centres them and gives a
    per-coordinate scale of order one (the same map for every seed and ``n``, so that
    densities stay comparable).
    """
    n, seed = C.positive_int(n, "n"), C.seed(seed)
    noise = C.in_range(noise, "noise", 0.0, math.inf)
    x, _ = make_moons(n_samples=n, noise=noise, random_state=seed)
    x = 1.5 * (x - np.array([0.5, 0.25]))
    return torch.as_tensor(x, dtype=torch.float32)


def checkerboard(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` points uniform on the 8 dark squares of a 4x4 checkerboard covering
    [-4, 4]^2, shape (n, 2).

    Squares have side 2; square ``(i, j)`` (column, row from the bottom left) is dark
    when ``i + j`` is even. A square is chosen uniformly, then a point uniformly inside
    it.
    """
    n = C.positive_int(n, "n")
    g = torch.Generator().manual_seed(C.seed(seed))
    dark = torch.tensor(
        [[i, j] for i in range(4) for j in range(4) if (i + j) % 2 == 0],
        dtype=torch.float32,
    )
    corner = dark[torch.randint(len(dark), (n,), generator=g)]
    return -4.0 + 2.0 * (corner + torch.rand(n, 2, generator=g))


def swiss_roll(n: int, noise: float = 0.5, seed: int = 0) -> torch.Tensor:
    """``n`` points of a 2-D swiss roll, shape (n, 2): columns 0 and 2 of scikit-learn's
    3-D roll, divided by 3."""
    n, seed = C.positive_int(n, "n"), C.seed(seed)
    noise = C.in_range(noise, "noise", 0.0, math.inf)
    x, _ = make_swiss_roll(n_samples=n, noise=noise, random_state=seed)
    return torch.as_tensor(x[:, [0, 2]] / 3.0, dtype=torch.float32)


def gaussian_ring(n: int, seed: int = 0) -> torch.Tensor:
    """``n`` points of the ring of 8 Gaussians (radius 4, std 0.5), shape (n, 2). The
    same law, with its exact density and score, is :func:`dlib.analytic.ring`; this is
    its sampler for data pipelines."""
    from .analytic import ring

    n = C.positive_int(n, "n")
    return ring().sample(n, torch.Generator().manual_seed(C.seed(seed))).float()


TOY_2D = {
    "moons": two_moons,
    "checkerboard": checkerboard,
    "swiss_roll": swiss_roll,
    "ring": gaussian_ring,
}


def toy_2d(name: str, n: int, seed: int = 0) -> torch.Tensor:
    """Draw ``n`` points of the toy data set ``name`` (one of ``TOY_2D``) with its
    default settings."""
    one_of(name, TOY_2D, "toy data set")
    return TOY_2D[name](C.positive_int(n, "n"), seed=C.seed(seed))


def digits(
    split: str = "train", seed: int = 0, test_fraction: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor]:
    """The 8x8 digits of scikit-learn (offline), as ``(images, labels)``.

    ``images`` is float32 of shape (N, 64): pixel values 0..16 are mapped to
    ``v / 8 - 1`` in [-1, 1]. ``labels`` is int64 of shape (N,). A random permutation
    seeded by ``seed`` puts the first ``round(test_fraction * 1797)`` examples in "test"
    and the rest in "train" (each returned in the original order); "all" returns the
    1797 examples.
    """
    one_of(split, ("train", "test", "all"), "split")
    seed = C.seed(seed)
    C.in_range(test_fraction, "test_fraction", 0.0, 1.0, lo_open=True, hi_open=True)
    bunch = load_digits()
    images = torch.as_tensor(bunch.data / 8.0 - 1.0, dtype=torch.float32)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    if split == "all":
        return images, labels
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(images)))
    idx = perm[:n_test] if split == "test" else perm[n_test:]
    idx = idx.sort().values
    return images[idx], labels[idx]


def to_images(x: torch.Tensor, size: int = 8) -> torch.Tensor:
    """Reshape flat images (N, size*size) to (N, 1, size, size)."""
    size = C.positive_int(size, "size")
    if not torch.is_tensor(x) or x.dim() != 2 or x.shape[1] != size * size:
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(
            f"x must be a tensor of shape (N, {size * size}) for size={size}; got "
            f"{shape}"
        )
    C.tensor(x, "x", floating=True, nonempty=False)
    return x.reshape(x.shape[0], 1, size, size)


def batches(
    data: torch.Tensor, batch_size: int, generator: torch.Generator | None
) -> Iterator[torch.Tensor]:
    """Endless iterator of minibatches of ``data`` (examples along dim 0), drawn with
    replacement.

    Indices come from ``torch.randint(..., generator=generator)``, so the sequence of
    batches is fixed by the generator's seed.
    """
    if not torch.is_tensor(data) or data.dim() < 1 or len(data) == 0:
        raise ValueError(
            "data must be a non-empty tensor with examples along its first dimension"
        )
    C.finite(data, "data")
    batch_size = C.positive_int(batch_size, "batch_size")
    C.generator(generator)

    def _gen() -> Iterator[torch.Tensor]:
        while True:
            yield data[torch.randint(len(data), (batch_size,), generator=generator)]

    return _gen()


FULL_SCALE_DATASETS = ("mnist", "cifar10")


def image_dataset(
    name: str, root: str = "data_cache", train: bool = True
) -> torch.Tensor:
    """A full-scale image data set for the GPU cells, downloaded with torchvision on
    first use and returned as a float32 tensor (N, C, 32, 32) in [-1, 1] (MNIST is
    padded from 28 to 32).

    This is the only function of ``dlib`` that touches the network. Offline, or without
    torchvision, it raises ``RuntimeError`` with a message saying what is missing; CPU
    chapters never call it."""
    one_of(name, FULL_SCALE_DATASETS, "full-scale data set")
    root = C.path(root, "root", folder_ok=True)
    C.flag(train, "train")
    try:
        import torchvision
    except (
        Exception
    ) as exc:  # missing, or built for another torch ("operator ... does not exist")
        raise RuntimeError(
            f"loading {name} needs a torchvision that matches this torch "
            f"(pip install torchvision); importing it failed: {exc}"
        ) from None
    cls = {
        "mnist": torchvision.datasets.MNIST,
        "cifar10": torchvision.datasets.CIFAR10,
    }[name]
    try:
        ds = cls(root=root, train=train, download=True)
    except Exception as exc:  # network errors come in many types
        raise RuntimeError(
            f"could not download {name} into {root!r} (no network?): {exc}"
        ) from exc
    x = torch.as_tensor(np.asarray(ds.data), dtype=torch.float32) / 127.5 - 1.0
    if (
        x.dim() == 3
    ):  # MNIST: (N, 28, 28) -> (N, 1, 32, 32), padded with the background value -1
        x = torch.nn.functional.pad(x[:, None], (2, 2, 2, 2), value=-1.0)
    else:  # CIFAR-10: (N, 32, 32, 3) -> (N, 3, 32, 32)
        x = x.permute(0, 3, 1, 2).contiguous()
    return x


def digits_images(split: str = "train", size: int = 32, seed: int = 0) -> torch.Tensor:
    """The 8x8 digits of :func:`digits` as images (N, 1, size, size) in [-1, 1],
    upsampled bilinearly when ``size`` > 8: the offline stand-in for a full-scale image
    data set (:func:`dlib.fullscale.run_image_experiment` falls back to it when CIFAR-10
    or MNIST cannot be loaded). ``split`` and ``seed`` as in :func:`digits`."""
    size = C.positive_int(size, "size", minimum=8)
    one_of(split, ("train", "test", "all"), "split")
    seed = C.seed(seed)
    x = to_images(digits(split, seed=seed)[0])
    if size == 8:
        return x
    up = torch.nn.functional.interpolate(
        x, size=size, mode="bilinear", align_corners=False
    )
    return up.clamp(-1.0, 1.0)
