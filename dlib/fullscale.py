r"""Full-scale image experiments: the one function behind every chapter's GPU cell.

:func:`run_image_experiment` goes from a data set to a score in one call: load 32x32
images (or an offline stand-in), build a U-Net (DDPM's CIFAR-10 network by default),
train it with :func:`dlib.train.train` on the denoising loss of a schedule and a
prediction kind, draw samples with a :mod:`dlib.sampling` sampler, and score them
against held-out images. Its two last stages are public too, for a chapter that samples
one trained model several ways: :func:`generate` and :func:`score_images`.

The defaults are DDPM's CIFAR-10 recipe (Ho et al. 2020, appendix B): batch 128, Adam
with lr 2e-4 and 5,000 warm-up steps, gradient clipping at 1, EMA 0.9999, random
horizontal flips, the 35.7 M-parameter U-Net with dropout 0.1, 1,000 sampling steps.
What a run does differently (fewer steps, fewer samples, a smaller network, offline
data, no FID) is listed in the result's ``notes``.

Scores. FID comes from torchmetrics' ``FrechetInceptionDistance`` (backed by
torch-fidelity's port of the TensorFlow Inception-v3 that published FIDs use): a widely
used, maintained implementation that takes image tensors in memory and runs on the GPU.
It is an optional dependency (``pip install "diffbook-dlib[full]"``) and downloads the
Inception weights (about 100 MB) at first use; when it is missing or offline, the FID is
None and the reason is in the notes. Pixel-space distances between flattened images
(:func:`dlib.metrics.energy_distance` and :func:`dlib.metrics.sliced_wasserstein`) are
always computed, for the samples and, as the floor a perfect model would reach, for as
many real training images.

Reproducibility. Every random draw is seeded from ``seed``: the network's initial
weights, training (see :func:`dlib.train.train`) and the sampling noise, which comes
from a CPU generator, so a seeded run starts from the same noise on any device. The
results still differ between devices (GPU kernels round differently from CPU ones and
are not all deterministic), and between TF32 settings: during a run TF32 is off for
matmuls and for cuDNN convolutions (torch's default allows it for the latter) unless
``allow_tf32=True``, which is recorded in the notes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from . import _checks as C
from . import data, losses, metrics, nets, runtime, sampling, train
from .param import KINDS, Denoiser
from .schedules import Schedule

__all__ = [
    "DATASETS",
    "SAMPLERS",
    "ImageExperiment",
    "run_image_experiment",
    "generate",
    "score_images",
]

DATASETS = ("cifar10", "mnist", "digits")
# name -> (sampler, its options); every grid ends at t = 0 (a last denoising step)
SAMPLERS = {
    "ancestral": (sampling.sample_ancestral, {"eta": 1.0}),
    "ddim": (sampling.sample_ancestral, {"eta": 0.0}),
    "euler": (sampling.sample_euler, {}),
    "heun": (sampling.sample_heun, {}),
    "euler_maruyama": (sampling.sample_euler_maruyama, {}),
}
DDPM_PARAMS, DDPM_STEPS, DDPM_BATCH, FID_SAMPLES = 35.7e6, 800_000, 128, 50_000


@dataclass
class ImageExperiment:
    """What :func:`run_image_experiment` returns.

    ``dataset`` is the data set actually used (``"digits"`` after an offline fallback);
    ``model`` the trained network and ``ema`` its EMA copy (None without EMA);
    ``denoiser`` the :class:`~dlib.param.Denoiser` that was sampled (over the EMA
    weights when there are some); ``losses`` one value per training step; ``steps`` the
    training steps done; ``seconds`` the training wall time; ``samples`` the generated
    images (CPU, in [-1, 1]); ``held_out`` the held-out real images they are scored
    against (CPU); ``metrics`` a dict with ``fid`` (None when skipped),
    ``energy_distance`` and ``sliced_w2`` (samples vs held-out images) and
    ``energy_distance_real`` and ``sliced_w2_real`` (as many real training images vs
    the same held-out images: the floor); ``notes`` what was smaller than the paper or
    skipped; ``sample_seconds`` the time spent sampling.
    """

    dataset: str
    model: nn.Module
    ema: nn.Module | None
    denoiser: Denoiser
    losses: list[float]
    steps: int
    seconds: float
    samples: torch.Tensor | None
    held_out: torch.Tensor
    metrics: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    sample_seconds: float = 0.0

    def summary(self) -> str:
        """One line with the numbers, then one line per note."""
        m = self.metrics
        fid = "n/a" if m.get("fid") is None else f"{m['fid']:.2f}"
        line = (
            f"{self.dataset}: {self.steps:,} steps in {self.seconds / 60:.1f} min; "
            f"FID {fid}"
        )
        if "energy_distance" in m:
            line += (
                f"; energy distance {m['energy_distance']:.4f} (real images "
                f"{m['energy_distance_real']:.4f}), sliced W2 {m['sliced_w2']:.4f} "
                f"(real images {m['sliced_w2_real']:.4f})"
            )
        return "\n".join([line] + [f"  note: {n}" for n in self.notes])


def _images(dataset: str, root: str, rank: int, world: int):
    """(train, test, name used, note or None); falls back to the digits offline."""
    if dataset == "digits":
        return data.digits_images("train"), data.digits_images("test"), "digits", None
    if world > 1 and rank > 0:
        dist.barrier()  # rank 0 downloads first
    try:
        pair = (
            data.image_dataset(dataset, root),
            data.image_dataset(dataset, root, False),
        )
        name, note = dataset, None
    except RuntimeError as exc:
        pair = data.digits_images("train"), data.digits_images("test")
        name = "digits"
        note = (
            f"offline: {dataset} could not be loaded ({str(exc).splitlines()[0]}); "
            f"used the 8x8 digits upsampled to 32x32 instead ({len(pair[0]):,} "
            "training images, 1 channel), not comparable with the paper"
        )
    if world > 1 and rank == 0:
        dist.barrier()
    return pair[0], pair[1], name, note


def _network(net, channels: int) -> nn.Module:
    if net == "ddpm":
        return nets.UNet.ddpm_cifar10(in_channels=channels)
    if net == "small":
        return nets.UNet(
            channels, base_channels=64, channel_mults=(1, 2, 2), img_size=32
        )
    return net


def _sampler(sampler):
    if isinstance(sampler, str):
        C.one_of(sampler, SAMPLERS, "sampler")
        return SAMPLERS[sampler]
    C.function(sampler, "sampler", "sampler(denoiser, x, ts, generator=, progress=)")
    return sampler, {}


def _device(device) -> torch.device:
    if device is None:
        return runtime.device()
    try:
        if isinstance(device, bool):
            raise TypeError
        dev = torch.device(device)
    except (TypeError, RuntimeError):
        raise ValueError(
            f"device must be None, a string such as 'cuda' or a torch.device; got "
            f"{device!r}"
        ) from None
    if dev.type == "cuda" and (
        not torch.cuda.is_available()
        or (dev.index is not None and dev.index >= torch.cuda.device_count())
    ):
        raise ValueError(f"device {device!r} is not available on this machine")
    return dev


def generate(
    denoiser: Denoiser,
    sampler: str | Callable = "ancestral",
    sample_steps: int = 1000,
    n_samples: int = 1000,
    shape: tuple[int, ...] = (3, 32, 32),
    *,
    t_range: tuple[float, float] = (1e-3, 1.0),
    seed: int = 0,
    device=None,
    batch: int = 500,
    progress: bool = True,
) -> torch.Tensor:
    """Draw ``n_samples`` images of ``shape`` with ``sampler`` in batches of ``batch``;
    returns them on the CPU, clamped to [-1, 1].

    ``sampler`` is a name in :data:`SAMPLERS` (``"ancestral"``: DDPM; ``"ddim"``;
    ``"euler"``, ``"heun"``: the PF-ODE; ``"euler_maruyama"``: the reverse SDE) or a
    function with the signature of dlib's samplers, called as
    ``sampler(denoiser, x, ts, generator=..., progress=...)``. The grid has
    ``sample_steps`` steps: ``sample_steps - 1`` uniform ones from ``t_max`` down to
    ``t_min`` (``t_range``: use the training range, where the network was trained), then
    one to t = 0 that returns the denoised estimate. Network calls: one per step (Heun:
    two, except the last). The initial noise and the sampler's noise come from a CPU
    generator seeded with ``seed``, the same on every device.
    """
    C.denoiser(denoiser)
    fn, options = _sampler(sampler)
    sample_steps = C.positive_int(sample_steps, "sample_steps")
    n_samples = C.positive_int(n_samples, "n_samples")
    batch = C.positive_int(batch, "batch")
    if not isinstance(shape, (tuple, list)) or not shape:
        raise ValueError(f"shape must be a non-empty tuple of sizes; got {shape!r}")
    shape = tuple(C.positive_int(s, "shape") for s in shape)
    t_min, t_max = C.time_range(t_range)
    seed = C.seed(seed)
    dev = _device(device)
    C.flag(progress, "progress")
    if sample_steps == 1:
        ts = torch.tensor([t_max, 0.0], dtype=torch.float64)
    else:
        ts = sampling.time_grid(sample_steps - 1, t_max, t_min, final_zero=True)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n_samples, batch):
        m = min(batch, n_samples - start)
        x = torch.randn((m, *shape), generator=gen).to(dev)
        with torch.no_grad():
            x = fn(denoiser, x, ts, generator=gen, progress=progress, **options)
        out.append(x.clamp(-1.0, 1.0).float().cpu())
    return torch.cat(out)


def _rgb01(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as RGB in [0, 1] (grey images repeated on 3 channels), what
    torchmetrics' FID takes with ``normalize=True``."""
    x = (x.clamp(-1.0, 1.0) + 1.0) / 2.0
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _fid(samples, reference, device, batch: int = 250):
    """(FID, None) or (None, the reason it was skipped)."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance
    except Exception as exc:  # ImportError, or a build that does not fit this torch
        return None, (
            f"FID skipped: torchmetrics is not available ({type(exc).__name__}); "
            "install it with pip install 'diffbook-dlib[full]'"
        )
    try:  # loads torch-fidelity's Inception-v3, downloading its weights once
        fid = FrechetInceptionDistance(feature=2048, normalize=True).to(device)
        for images, real in ((reference, True), (samples, False)):
            for chunk in images.split(batch):
                fid.update(_rgb01(chunk).to(device), real=real)
        return float(fid.compute()), None
    except Exception as exc:  # offline, torch-fidelity missing, ...
        first = str(exc).splitlines()[0] if str(exc) else ""
        return None, (
            f"FID skipped: {type(exc).__name__}: {first[:200]} (torchmetrics' FID "
            "needs torch-fidelity and, once, a download of the Inception weights)"
        )


def score_images(
    samples: torch.Tensor,
    reference: torch.Tensor,
    *,
    real: torch.Tensor | None = None,
    fid: bool = True,
    device=None,
    n_pixel: int = 1000,
    seed: int = 0,
) -> tuple[dict, list[str]]:
    """Score generated images against held-out ``reference`` images (both (N, C, H, W)
    in [-1, 1]); returns ``(metrics, notes)``.

    ``metrics["fid"]``: FID of all samples against all reference images (torchmetrics,
    on ``device``), or None with the reason in ``notes``. ``energy_distance`` and
    ``sliced_w2`` (256 directions seeded by ``seed``): the first ``n_pixel`` samples
    against the first ``n_pixel`` reference images, flattened, on the CPU. With
    ``real`` (training images), ``energy_distance_real`` and ``sliced_w2_real`` give
    the same distances for as many real images: the floor that sample size allows.
    """
    images = [(samples, "samples"), (reference, "reference")]
    if real is not None:
        images.append((real, "real"))
    for x, name in images:
        C.tensor(x, name, floating=True, min_dim=4)
        if x.dim() != 4 or x.shape[0] < 2:
            raise ValueError(
                f"{name} must hold at least 2 images of shape (C, H, W); got shape "
                f"{tuple(x.shape)}"
            )
        if x.shape[1:] != samples.shape[1:]:
            raise ValueError(
                f"samples and {name} must have the same image shape; got "
                f"{tuple(samples.shape[1:])} and {tuple(x.shape[1:])}"
            )
    n_pixel = C.positive_int(n_pixel, "n_pixel", minimum=2)
    seed = C.seed(seed)
    C.flag(fid, "fid")
    dev = _device(device)
    notes = []
    result = {"fid": None}
    if fid:
        result["fid"], why = _fid(samples, reference, dev)
        if why:
            notes.append(why)
        elif len(samples) < FID_SAMPLES:
            notes.append(
                f"FID from {len(samples):,} samples against {len(reference):,} "
                f"held-out images; papers use {FID_SAMPLES:,} samples (FID is biased "
                "upward for fewer)"
            )
    else:
        notes.append("FID not computed (fid=False)")
    ref = reference[:n_pixel].flatten(1).cpu()
    pairs = [("", samples)] + ([("_real", real)] if real is not None else [])
    for suffix, images in pairs:
        flat = images[:n_pixel].flatten(1).cpu()
        g = torch.Generator().manual_seed(seed)
        result["energy_distance" + suffix] = metrics.energy_distance(flat, ref)
        result["sliced_w2" + suffix] = metrics.sliced_wasserstein(
            flat, ref, generator=g
        )
    return result, notes


def run_image_experiment(
    dataset: str = "cifar10",
    *,
    schedule: Schedule,
    kind: str = "eps",
    net: str | nn.Module = "ddpm",
    steps: int,
    batch_size: int = DDPM_BATCH,
    lr: float = 2e-4,
    warmup_steps: int = 5000,
    grad_clip: float | None = 1.0,
    ema_decay: float | None = 0.9999,
    hflip: bool | None = None,
    t_range: tuple[float, float] = (1e-3, 1.0),
    sampler: str | Callable = "ancestral",
    sample_steps: int = 1000,
    n_samples: int = 1000,
    n_pixel: int = 1000,
    max_minutes: float | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    resume: bool = False,
    fid: bool = True,
    allow_tf32: bool = False,
    seed: int = 0,
    device=None,
    data_root: str = "data_cache",
    progress: bool = True,
    verbose: bool = True,
) -> ImageExperiment:
    """Train a diffusion model on 32x32 images, sample it and score the samples; returns
    an :class:`ImageExperiment`. Used by the GPU cells of the chapters (the first is
    chapter 1, "The variational view").

    Data: ``dataset`` is ``"cifar10"`` or ``"mnist"`` (downloaded by
    :func:`dlib.data.image_dataset` into ``data_root``) or ``"digits"``; when the
    download fails (offline, no torchvision) the run says so in one printed line and
    uses the 8x8 digits upsampled to 32x32 (:func:`dlib.data.digits_images`). ``hflip``
    (random horizontal flips while training): default on for CIFAR-10 only, since
    digits are not mirror-symmetric.

    Model and training: ``net`` is ``"ddpm"`` (:meth:`dlib.nets.UNet.ddpm_cifar10`),
    ``"small"`` (a 2.6 M-parameter U-Net) or a module of your own taking (B, C, 32, 32)
    and t; its initial weights are drawn after ``torch.manual_seed(seed)``. The loss is
    :func:`dlib.losses.denoising_loss` of ``kind`` under ``schedule`` with t uniform in
    ``t_range``; :func:`dlib.train.train` runs ``steps`` Adam steps of ``batch_size``
    with ``lr``, ``warmup_steps``, ``grad_clip`` and ``ema_decay``. ``max_minutes``
    stops training earlier (the notes say after how many steps). With ``checkpoint``
    the state is saved every ``checkpoint_every`` steps and at the end; an existing
    file is continued only with ``resume=True`` (otherwise ``FileExistsError``), so a
    budgeted run can be continued by calling again with ``resume=True``.

    Sampling and scores: :func:`generate` with ``sampler``, ``sample_steps`` and
    ``n_samples`` over the EMA weights, then :func:`score_images` against the held-out
    split (``fid``, ``n_pixel``). Under ``torchrun`` training runs on every process and
    sampling and scoring on rank 0 only (the other ranks return ``samples=None``).

    ``device``: default :func:`dlib.runtime.device`. ``allow_tf32``: let CUDA matmuls
    and convolutions use TF32 (faster, less precise); False turns it off for both during
    the run; torch's own settings are restored afterwards. Printing:
    ``verbose`` prints what runs and the :meth:`ImageExperiment.summary`; ``progress``
    shows progress bars.
    """
    C.one_of(dataset, DATASETS, "dataset")
    C.schedule(schedule)
    C.one_of(kind, KINDS, "prediction kind")
    if not (isinstance(net, str) and net in ("ddpm", "small")) and not isinstance(
        net, nn.Module
    ):
        raise ValueError(
            f"net must be 'ddpm', 'small' or a torch.nn.Module; got {net!r}"
        )
    steps = C.positive_int(steps, "steps")
    t_range = C.time_range(t_range)
    _sampler(sampler)
    sample_steps = C.positive_int(sample_steps, "sample_steps")
    n_samples = C.positive_int(n_samples, "n_samples", minimum=2)
    n_pixel = C.positive_int(n_pixel, "n_pixel", minimum=2)
    if max_minutes is not None:
        max_minutes = C.positive(max_minutes, "max_minutes")
    if hflip is not None:
        C.flag(hflip, "hflip")
    for value, name in (
        (fid, "fid"),
        (allow_tf32, "allow_tf32"),
        (resume, "resume"),
        (progress, "progress"),
        (verbose, "verbose"),
    ):
        C.flag(value, name)
    if not isinstance(data_root, (str, os.PathLike)):
        raise ValueError(f"data_root must be a folder path; got {data_root!r}")
    seed = C.seed(seed)
    # what train() checks, checked here too: before any download or network is built
    C.positive_int(batch_size, "batch_size")
    C.positive(lr, "lr")
    C.positive_int(warmup_steps, "warmup_steps", minimum=0)
    if grad_clip is not None:
        C.positive(grad_clip, "grad_clip")
    if ema_decay is not None:
        C.in_range(ema_decay, "ema_decay", 0.0, 1.0, hi_open=True)
    if checkpoint is not None:
        C.path(checkpoint, "checkpoint")
    C.positive_int(checkpoint_every, "checkpoint_every")
    rank, world = train.init_distributed()  # under torchrun: this rank's GPU is "cuda"
    dev = _device(device)
    say = print if verbose and rank == 0 else (lambda *a, **k: None)

    x_train, x_test, used, note = _images(dataset, data_root, rank, world)
    notes = [note] if note else []
    if note:
        say(f"{dataset} unavailable: falling back to the 8x8 digits upsampled to 32x32")
    hflip = (used == "cifar10") if hflip is None else hflip
    if not hflip and used != "cifar10" and dataset == "cifar10":
        notes.append("no horizontal flips: digits are not mirror-symmetric")
    channels = x_train.shape[1]
    torch.manual_seed(seed)
    model = _network(net, channels).to(dev)
    n_params = nets.count_params(model)
    if abs(n_params - DDPM_PARAMS) > 0.01 * DDPM_PARAMS:
        notes.append(
            f"U-Net with {n_params:,} parameters (DDPM's CIFAR-10 U-Net: 35.7 M)"
        )
    say(
        f"{used}: {len(x_train):,} training images of shape {tuple(x_train.shape[1:])};"
        f" U-Net with {n_params:,} parameters on {dev}"
        + (f", {world} processes" if world > 1 else "")
    )

    def loss_fn(net_, batch, g):
        if hflip:
            flip = (torch.rand(len(batch), generator=g) < 0.5).to(batch.device)
            batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
        return losses.denoising_loss(
            net_, batch, schedule, kind, t_range=t_range, generator=g
        )

    # torch lets cuDNN convolutions use TF32 by default: set both flags explicitly
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow_tf32
    if allow_tf32 and dev.type == "cuda":
        notes.append("TF32 matmuls and convolutions allowed (allow_tf32=True)")
    try:
        run = train.train(
            model,
            loss_fn,
            x_train.to(dev),
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            ema_decay=ema_decay,
            grad_clip=grad_clip,
            warmup_steps=warmup_steps,
            max_seconds=None if max_minutes is None else 60.0 * max_minutes,
            progress=progress,
            desc=f"{kind} model on {used}",
            checkpoint=checkpoint,
            checkpoint_every=checkpoint_every if checkpoint is not None else None,
            resume=resume,
        )
        notes += _training_notes(run, steps, batch_size, max_minutes, world)
        if run.steps < warmup_steps:
            notes.append(
                f"the run ({run.steps:,} steps) ended inside the learning-rate warm-up "
                f"({warmup_steps:,} steps)"
            )
        denoiser = Denoiser(
            run.ema if run.ema is not None else run.model, schedule, kind
        )
        result = ImageExperiment(
            dataset=used,
            model=run.model,
            ema=run.ema,
            denoiser=denoiser,
            losses=run.losses,
            steps=run.steps,
            seconds=run.seconds,
            samples=None,
            held_out=x_test,
            notes=notes,
        )
        if rank != 0:
            notes.append(f"rank {rank}: sampling and scores run on rank 0 only")
            return result
        say(f"trained {run.steps:,} steps in {run.seconds / 60:.1f} min; sampling")
        t0 = time.perf_counter()
        result.samples = generate(
            denoiser,
            sampler,
            sample_steps,
            n_samples,
            tuple(x_train.shape[1:]),
            t_range=t_range,
            seed=seed,
            device=dev,
            progress=progress,
        )
        result.sample_seconds = time.perf_counter() - t0
        if isinstance(sampler, str) and sample_steps < 1000:
            notes.append(f"{sample_steps} {sampler} sampling steps (DDPM: 1,000)")
        result.metrics, more = score_images(
            result.samples,
            x_test,
            real=x_train[: min(n_pixel, len(x_train))],
            fid=fid,
            device=dev,
            n_pixel=n_pixel,
            seed=seed,
        )
        notes += more
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    say(result.summary())
    return result


def _training_notes(run, steps, batch_size, max_minutes, world) -> list[str]:
    notes = []
    if run.steps < steps:
        notes.append(
            f"training stopped by the time budget (max_minutes={max_minutes:g}) after "
            f"{run.steps:,} of {steps:,} steps"
        )
    if run.steps < DDPM_STEPS:
        notes.append(f"trained {run.steps:,} steps (DDPM: {DDPM_STEPS:,})")
    if batch_size * world != DDPM_BATCH:
        notes.append(
            f"batch {batch_size * world} ({world} x {batch_size}); DDPM: {DDPM_BATCH}"
            if world > 1
            else f"batch {batch_size} (DDPM: {DDPM_BATCH})"
        )
    return notes
