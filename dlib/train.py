"""A small, reproducible training loop with EMA weights and resumable checkpoints; it
runs unchanged on several GPUs under ``torchrun``.

:func:`train` runs Adam on ``loss_fn(model, batch, generator)`` for a fixed number of
steps. With one CPU thread a run is bitwise reproducible from its ``seed``: the global
torch RNG is seeded and a dedicated :class:`torch.Generator` (also seeded) drives
minibatch sampling and is handed to the loss. If ``checkpoint`` is given, both RNG
states are saved with the weights, so an interrupted run that is resumed
(``resume=True``) ends with exactly the same weights as an uninterrupted one.

Several processes. Launched by ``torchrun --nproc_per_node=N script.py`` (environment
variable ``WORLD_SIZE`` = N > 1), :func:`train` joins torch's process group (NCCL for
CUDA tensors, gloo for CPU ones, see :func:`init_distributed`) and wraps the model in
:class:`~torch.nn.parallel.DistributedDataParallel`. Process ``rank`` r then

* draws its minibatches from its own shard of a data tensor, ``data[r::N]`` (a sampler
  function is called as it is, with this process's generator);
* seeds torch and its generator with ``seed + r`` (so rank 0 has the single-process
  stream, and the other ranks draw different examples and noise);
* averages its gradients with the other ranks (DDP), so every rank takes the same step:
  the effective batch is N x ``batch_size``.

The EMA, the progress bar and the checkpoints live on rank 0 (the other ranks wait at a
barrier while it writes); every rank records the loss averaged over the ranks. Without
``torchrun`` (or with N = 1) nothing of this happens and results are unchanged.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from ._checks import flag as _flag
from ._checks import function, in_range, positive, positive_int
from ._checks import path as _path
from ._checks import seed as _seed
from .data import batches

__all__ = [
    "EMA",
    "TrainResult",
    "train",
    "init_distributed",
    "save_checkpoint",
    "load_checkpoint",
]


def _module(model, name: str = "model") -> nn.Module:
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"{name} must be a torch.nn.Module; got {type(model).__name__}"
        )
    return model


class EMA:
    r"""Exponential moving average of a module's parameters:
    $\bar\theta \leftarrow d\,\bar\theta + (1-d)\,\theta$.

    ``self.model`` is a deep copy of ``model`` (eval mode, no gradients) holding the
    averaged weights; buffers are copied from ``model`` at each update. With
    ``warmup=True`` (default) the $k$-th update (k = 0, 1, ...) uses the decay
    $\min(d, (1+k)/(10+k))$, so that short runs are not dominated by the initial
    weights; with ``warmup=False`` every update uses $d$.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        _module(model)
        self.decay = in_range(decay, "decay", 0.0, 1.0, hi_open=True)
        self.warmup = _flag(warmup, "warmup")
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the averaged parameters towards those of ``model``; copy its buffers.
        ``model`` must have the averaged model's parameters (same shapes and order)."""
        _module(model)
        mine, theirs = list(self.model.parameters()), list(model.parameters())
        if len(mine) != len(theirs) or any(
            a.shape != p.shape for a, p in zip(mine, theirs)
        ):
            raise ValueError(
                "model must have the parameters of the model this EMA averages (same "
                f"shapes, same order); got {len(theirs)} tensors for {len(mine)}"
            )
        d = self.current_decay()
        for avg, p in zip(mine, theirs):
            avg.mul_(d).add_(p.detach(), alpha=1.0 - d)
        for avg, b in zip(self.model.buffers(), model.buffers()):
            avg.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict:
        """Decay, update count and averaged weights, for :meth:`load_state_dict`."""
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "model": self.model.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (each entry is checked first)."""
        if not isinstance(state, dict) or "model" not in state:
            raise ValueError(
                "state must be a dict produced by EMA.state_dict() (with a 'model' "
                "entry)"
            )
        decay = in_range(
            state.get("decay", self.decay), "state['decay']", 0.0, 1.0, hi_open=True
        )
        warmup = _flag(state.get("warmup", self.warmup), "state['warmup']")
        num_updates = positive_int(
            state.get("num_updates", 0), "state['num_updates']", minimum=0
        )
        try:
            self.model.load_state_dict(state["model"])
        except (RuntimeError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(
                "state['model'] does not fit the averaged model: "
                f"{(str(exc).splitlines() or [''])[0]}"
            ) from None
        self.decay, self.warmup, self.num_updates = decay, warmup, num_updates


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model, its EMA copy (None without EMA,
    and on ranks other than 0), the loss of every step (averaged over the ranks), the
    wall time of all sessions of a resumed run, the number of steps done in total
    (fewer than asked when ``max_seconds`` stopped the run) and the number of
    processes that trained together."""

    model: nn.Module
    ema: nn.Module | None
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    world_size: int = 1


_CHECKPOINT_KEYS = ("model", "optimizer", "generator", "torch_rng", "step", "losses")


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Save ``state`` with ``torch.save`` atomically: write a temporary file next to
    ``path``, then rename it."""
    if not isinstance(state, dict):
        raise ValueError(f"state must be a dict; got {type(state).__name__}")
    path = _path(path, "path")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp"
    )
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a file written by :func:`save_checkpoint` (tensors only, onto the CPU).
    A missing file raises ``FileNotFoundError``; a file that torch cannot read as a
    dict (truncated, another format) raises ``ValueError``."""
    path = _path(path, "path")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # unpickling fails in many ways on a foreign file
        raise ValueError(
            f"path {path!r} is not a checkpoint saved by dlib.train "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    if not isinstance(state, dict):
        raise ValueError(
            f"path {path!r} is not a checkpoint saved by dlib.train (it holds a "
            f"{type(state).__name__}, not a dict)"
        )
    return state


def init_distributed() -> tuple[int, int]:
    """``(rank, world_size)`` of this process. Under ``torchrun`` with
    ``WORLD_SIZE`` > 1 it first joins torch's default process group (once): with CUDA
    the process's GPU becomes ``cuda:LOCAL_RANK`` (so ``"cuda"`` means that GPU from
    then on) and the backend is NCCL for CUDA tensors and gloo for CPU tensors;
    without CUDA it is gloo. An already initialised process group is used as it is.
    Otherwise returns ``(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ValueError(
            f"environment variable WORLD_SIZE must be an integer; got "
            f"{os.environ['WORLD_SIZE']!r}"
        ) from None
    if world <= 1:
        return 0, 1
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but torch.distributed is unavailable")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def _has_nonfinite(batch) -> bool:
    """Whether a batch (a tensor, or a tuple/list/dict of them) holds NaN or inf."""
    if torch.is_tensor(batch):
        return batch.is_floating_point() and not bool(torch.isfinite(batch).all())
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        return any(_has_nonfinite(b) for b in batch)
    return False


def _restore(state: dict, path, model, opt, ema, gen, rank: int, world: int):
    """Load a checkpoint's state into the model, optimiser, EMA and RNGs of this rank;
    returns (step, losses, seconds)."""
    missing = [k for k in _CHECKPOINT_KEYS if k not in state]
    if missing:
        raise ValueError(
            f"{path!r} is not a checkpoint written by dlib.train.train (missing "
            f"{', '.join(missing)})"
        )
    saved_world = int(state.get("world_size", 1))
    if saved_world != world:
        raise ValueError(
            f"checkpoint {path!r} was written by {saved_world} process(es); resume it "
            f"with the same number (this run has {world})"
        )
    try:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
    except (RuntimeError, KeyError) as exc:
        raise ValueError(
            f"checkpoint {path!r} does not fit this model or optimiser: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    if world > 1:
        gen.set_state(state["rank_generators"][rank])
        torch.set_rng_state(state["rank_torch_rngs"][rank])
    else:
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
    losses = [float(v) for v in state["losses"]]
    return int(state["step"]), losses, float(state.get("seconds", 0.0))


def train(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Generator], torch.Tensor],
    data: torch.Tensor | Callable[[int, torch.Generator], torch.Tensor],
    *,
    steps: int,
    batch_size: int = 256,
    lr: float = 1e-3,
    seed: int = 0,
    ema_decay: float | None = 0.999,
    grad_clip: float | None = 1.0,
    warmup_steps: int = 0,
    max_seconds: float | None = None,
    progress: bool = True,
    desc: str = "training",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train ``model`` with Adam for ``steps`` steps and return a :class:`TrainResult`.

    ``data`` is either a tensor of examples (minibatches drawn with replacement by
    :func:`dlib.data.batches`; checked once for NaN/inf) or a sampler
    ``data(batch_size, generator) -> batch``. ``loss_fn(model, batch, generator)`` must
    return a scalar tensor (under ``torchrun`` it receives the DistributedDataParallel
    wrapper: call it, its module is ``.module``). ``ema_decay=None`` disables the EMA;
    ``grad_clip=None`` disables gradient-norm clipping; ``warmup_steps`` > 0 raises the
    learning rate linearly from ``lr / warmup_steps`` to ``lr`` over the first steps
    (as DDPM). ``max_seconds`` stops the run early once this much wall time has passed
    in this session (checked after each step; ``result.steps`` says how many ran).

    Checkpoints. If ``checkpoint`` is a path, the full state (model, EMA, optimiser,
    RNG states, step, losses) is saved there every ``checkpoint_every`` steps and at
    the end. A run continues from that file only when asked: with ``resume=True`` an
    existing checkpoint is loaded and training goes on to ``steps`` (no file: start
    from scratch); with ``resume=False`` (default) an existing file raises
    ``FileExistsError`` and is left untouched, so that a leftover checkpoint of another
    run is never continued or overwritten by accident. On the CPU a resumed run is
    bitwise identical to an uninterrupted one.

    Several processes under ``torchrun``: see the module docstring. The model is left
    in eval mode. ``seconds`` counts the wall time of all sessions of a resumed run.
    """
    _module(model)
    function(loss_fn, "loss_fn", "loss_fn(model, batch, generator)")
    steps = positive_int(steps, "steps")
    batch_size = positive_int(batch_size, "batch_size")
    lr = positive(lr, "lr")
    seed = _seed(seed)
    if grad_clip is not None:
        grad_clip = positive(grad_clip, "grad_clip")
    warmup_steps = positive_int(warmup_steps, "warmup_steps", minimum=0)
    if max_seconds is not None:
        max_seconds = positive(max_seconds, "max_seconds")
    _flag(progress, "progress")
    _flag(resume, "resume")
    if not isinstance(desc, str):
        raise ValueError(f"desc must be a string; got {type(desc).__name__}")
    if checkpoint is not None:
        checkpoint = _path(checkpoint, "checkpoint")
    elif resume:
        raise ValueError("resume=True needs a checkpoint path to resume from")
    if checkpoint_every is not None:
        checkpoint_every = positive_int(checkpoint_every, "checkpoint_every")
    if torch.is_tensor(data):
        if data.dim() < 1 or len(data) == 0:
            raise ValueError(
                "data must be a non-empty tensor with examples along its first "
                "dimension"
            )
        if data.is_floating_point() and not bool(torch.isfinite(data).all()):
            bad = int((~torch.isfinite(data)).sum())
            raise ValueError(f"data contains {bad} NaN or inf values; clean it first")
    elif not callable(data):
        raise ValueError(
            "data must be a tensor of examples or a callable sampler(batch_size, "
            "generator)"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")

    rank, world = init_distributed()
    if world > 1:
        device = params[0].device
        if device.type == "cuda" and device.index != torch.cuda.current_device():
            device = torch.device("cuda", torch.cuda.current_device())
            model.to(device)
        if torch.is_tensor(data):
            if len(data) < world:
                raise ValueError(
                    f"data has {len(data)} examples, fewer than the {world} processes"
                )
            data = data[rank::world]
            if data.device.type == "cuda" and device.type == "cuda":
                data = data.to(device)
    torch.manual_seed(seed + rank)
    gen = torch.Generator().manual_seed(seed + rank)
    draw = batches(data, batch_size, gen) if torch.is_tensor(data) else None
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ema = EMA(model, ema_decay) if ema_decay is not None and rank == 0 else None
    if ema_decay is not None and rank != 0:
        in_range(ema_decay, "decay", 0.0, 1.0, hi_open=True)  # same check as rank 0
    start, losses, past_seconds = 0, [], 0.0

    if checkpoint is not None and os.path.exists(checkpoint):
        if not resume:
            raise FileExistsError(
                f"a checkpoint already exists at {checkpoint!r}; pass resume=True to "
                "continue it, or delete it (or choose another path) to start afresh"
            )
        state = load_checkpoint(checkpoint)
        start, losses, past_seconds = _restore(
            state, checkpoint, model, opt, ema, gen, rank, world
        )
        for group in opt.param_groups:  # this call's lr, not the saved one
            group["lr"] = lr
    net = model
    if world > 1:
        dev = params[0].device
        ids = [dev.index] if dev.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def snapshot(step: int, seconds: float) -> None:
        states = (gen.get_state(), torch.get_rng_state())
        if world > 1:
            everyone = [None] * world
            dist.all_gather_object(everyone, states)
        if rank == 0:
            state = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "ema": ema.state_dict() if ema is not None else None,
                "generator": states[0],
                "torch_rng": states[1],
                "step": step,
                "losses": list(losses),
                "seconds": seconds,
                "world_size": world,
            }
            if world > 1:
                state["rank_generators"] = [s[0] for s in everyone]
                state["rank_torch_rngs"] = [s[1] for s in everyone]
            save_checkpoint(checkpoint, state)
        if world > 1:
            dist.barrier()

    t0 = time.perf_counter()
    done = start
    bar = tqdm(
        total=steps,
        initial=min(start, steps),
        desc=desc,
        disable=not progress or rank != 0,
    )
    try:
        for step in range(start, steps):
            batch = next(draw) if draw is not None else data(batch_size, gen)
            loss = loss_fn(net, batch, gen)
            if not torch.is_tensor(loss) or loss.numel() != 1:
                shape = (
                    f" of shape {tuple(loss.shape)}" if torch.is_tensor(loss) else ""
                )
                raise ValueError(
                    f"loss_fn must return a scalar tensor; got "
                    f"{type(loss).__name__}{shape}"
                )
            if world > 1:
                mean = loss.detach().reshape(1).float().clone()
                dist.all_reduce(mean)
                value = float(mean) / world
            else:
                value = float(loss.detach())
            if not math.isfinite(value):
                if _has_nonfinite(batch):
                    raise ValueError(
                        f"the data gave a batch with NaN or inf values at step {step}"
                    )
                raise FloatingPointError(
                    f"the loss became {value} at step {step} on finite data; try a "
                    "smaller lr (or check the loss function)"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            if warmup_steps:
                for group in opt.param_groups:
                    group["lr"] = lr * min(1.0, (step + 1) / warmup_steps)
            opt.step()
            if ema is not None:
                ema.update(model)
            losses.append(value)
            bar.update(1)
            done = step + 1
            if done % 50 == 0 or done == steps:
                recent = losses[-50:]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
            if (
                checkpoint is not None
                and checkpoint_every is not None
                and done % checkpoint_every == 0
                and done < steps
            ):
                snapshot(done, past_seconds + time.perf_counter() - t0)
            if max_seconds is not None and _out_of_time(t0, max_seconds, world, loss):
                break
    finally:
        bar.close()
    seconds = past_seconds + time.perf_counter() - t0
    if checkpoint is not None:
        snapshot(max(start, done), seconds)
    model.eval()
    return TrainResult(
        model=model,
        ema=ema.model if ema is not None else None,
        losses=losses,
        seconds=seconds,
        steps=max(start, done),
        world_size=world,
    )


def _out_of_time(t0: float, max_seconds: float, world: int, like: torch.Tensor) -> bool:
    """Whether the time budget is spent; with several processes rank 0's clock decides
    for everyone (one broadcast), so that all stop at the same step."""
    spent = time.perf_counter() - t0 >= max_seconds
    if world == 1:
        return spent
    flag = torch.tensor([1.0 if spent else 0.0], device=like.device)
    dist.broadcast(flag, 0)
    return bool(flag.item())
