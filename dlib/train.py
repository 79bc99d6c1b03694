"""A small, reproducible training loop with EMA weights and resumable checkpoints.

:func:`train` runs Adam on ``loss_fn(model, batch, generator)`` for a fixed number of steps. With
one CPU thread a run is bitwise reproducible from its ``seed``: the global torch RNG is seeded and a
dedicated :class:`torch.Generator` (also seeded) drives minibatch sampling and is handed to the loss.
If ``checkpoint`` is given, both RNG states are saved with the weights, so an interrupted run that
is resumed ends with exactly the same weights as an uninterrupted one.
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
import torch.nn as nn
from tqdm.auto import tqdm

from ._checks import positive
from .data import batches

__all__ = ["EMA", "TrainResult", "train", "save_checkpoint", "load_checkpoint"]


class EMA:
    r"""Exponential moving average of a module's parameters: $\bar\theta \leftarrow d\,\bar\theta + (1-d)\,\theta$.

    ``self.model`` is a deep copy of ``model`` (eval mode, no gradients) holding the averaged
    weights; buffers are copied from ``model`` at each update. With ``warmup=True`` (default) the
    $k$-th update (k = 0, 1, ...) uses the decay $\min(d, (1+k)/(10+k))$, so that short runs are not
    dominated by the initial weights; with ``warmup=False`` every update uses $d$.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
        if not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be a number in [0, 1); got {decay!r}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the averaged parameters towards those of ``model``; copy its buffers."""
        d = self.current_decay()
        for avg, p in zip(self.model.parameters(), model.parameters()):
            avg.mul_(d).add_(p.detach(), alpha=1.0 - d)
        for avg, b in zip(self.model.buffers(), model.buffers()):
            avg.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict:
        """Decay, update count and averaged weights, for :meth:`load_state_dict`."""
        return {"decay": self.decay, "warmup": self.warmup, "num_updates": self.num_updates,
                "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""
        if not isinstance(state, dict) or "model" not in state:
            raise ValueError("state must be a dict produced by EMA.state_dict() (with a 'model' entry)")
        self.decay = float(state.get("decay", self.decay))
        self.warmup = bool(state.get("warmup", self.warmup))
        self.num_updates = int(state.get("num_updates", 0))
        self.model.load_state_dict(state["model"])


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained model, its EMA copy (or None), per-step losses, wall time."""

    model: nn.Module
    ema: nn.Module | None
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Save ``state`` with ``torch.save`` atomically: write a temporary file next to ``path``, then rename."""
    if not isinstance(state, dict):
        raise ValueError(f"state must be a dict; got {type(state).__name__}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors only, onto the CPU)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint file at {path!r}")
    return torch.load(path, weights_only=True, map_location="cpu")


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return value


def train(model: nn.Module, loss_fn: Callable[[nn.Module, torch.Tensor, torch.Generator], torch.Tensor],
          data: torch.Tensor | Callable[[int, torch.Generator], torch.Tensor], *, steps: int,
          batch_size: int = 256, lr: float = 1e-3, seed: int = 0, ema_decay: float | None = 0.999,
          grad_clip: float | None = 1.0, progress: bool = True, desc: str = "training",
          checkpoint: str | os.PathLike | None = None, checkpoint_every: int | None = None) -> TrainResult:
    """Train ``model`` with Adam for ``steps`` steps and return a :class:`TrainResult`.

    ``data`` is either a tensor of examples (minibatches drawn with replacement by
    :func:`dlib.data.batches`) or a sampler ``data(batch_size, generator) -> batch``.
    ``loss_fn(model, batch, generator)`` must return a scalar tensor. ``ema_decay=None`` disables
    the EMA; ``grad_clip=None`` disables gradient-norm clipping. If ``checkpoint`` is a path, the
    full state (model, EMA, optimiser, RNG states, step, losses) is saved there every
    ``checkpoint_every`` steps and at the end, and a run finds and resumes from it. The model is
    left in eval mode. ``seconds`` counts the wall time of all sessions of a resumed run.
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module; got {type(model).__name__}")
    if not callable(loss_fn):
        raise ValueError("loss_fn must be callable as loss_fn(model, batch, generator)")
    steps = _positive_int(steps, "steps")
    batch_size = _positive_int(batch_size, "batch_size")
    lr = positive(lr, "lr")
    if grad_clip is not None:
        grad_clip = positive(grad_clip, "grad_clip")
    if checkpoint_every is not None:
        checkpoint_every = _positive_int(checkpoint_every, "checkpoint_every")
    if torch.is_tensor(data):
        if data.dim() < 1 or len(data) == 0:
            raise ValueError("data must be a non-empty tensor with examples along its first dimension")
    elif not callable(data):
        raise ValueError("data must be a tensor of examples or a callable sampler(batch_size, generator)")

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    draw = batches(data, batch_size, gen) if torch.is_tensor(data) else None
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ema = EMA(model, ema_decay) if ema_decay is not None else None
    start, losses, past_seconds = 0, [], 0.0

    if checkpoint is not None and os.path.exists(checkpoint):
        state = load_checkpoint(checkpoint)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start, losses = int(state["step"]), [float(v) for v in state["losses"]]
        past_seconds = float(state.get("seconds", 0.0))

    def snapshot(step: int, seconds: float) -> None:
        save_checkpoint(checkpoint, {
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "generator": gen.get_state(), "torch_rng": torch.get_rng_state(),
            "step": step, "losses": list(losses), "seconds": seconds})

    t0 = time.perf_counter()
    bar = tqdm(total=steps, initial=min(start, steps), desc=desc, disable=not progress)
    try:
        for step in range(start, steps):
            batch = next(draw) if draw is not None else data(batch_size, gen)
            loss = loss_fn(model, batch, gen)
            if not torch.is_tensor(loss) or loss.numel() != 1:
                raise ValueError(f"loss_fn must return a scalar tensor; got {type(loss).__name__}"
                                 + (f" of shape {tuple(loss.shape)}" if torch.is_tensor(loss) else ""))
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(f"the loss became {value} at step {step}; try a smaller lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
            if ema is not None:
                ema.update(model)
            losses.append(value)
            bar.update(1)
            done = step + 1
            if done % 50 == 0 or done == steps:
                recent = losses[-50:]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}")
            if checkpoint is not None and checkpoint_every is not None and done % checkpoint_every == 0 and done < steps:
                snapshot(done, past_seconds + time.perf_counter() - t0)
    finally:
        bar.close()
    seconds = past_seconds + time.perf_counter() - t0
    if checkpoint is not None:
        snapshot(max(start, steps), seconds)
    model.eval()
    return TrainResult(model=model, ema=ema.model if ema is not None else None, losses=losses, seconds=seconds)
