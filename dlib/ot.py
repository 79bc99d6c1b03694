r"""Semi-discrete optimal transport and the DPM-OT sampler (chapter II.7).

A source law $\mu$ with a density (here: samples of it) is carried onto M weighted
points $y_1,\dots,y_M$ (weights $\nu_i$, summing to 1) by the gradient of the convex
piecewise-linear Brenier potential

$$u_\psi(x)=\max_i\,(\langle x,y_i\rangle+\psi_i),\qquad
T_\psi(x)=\nabla u_\psi(x)=y_{i^*(x)},\quad i^*(x)=\arg\max_i\,(\langle x,y_i\rangle
+\psi_i).$$

The power cell $W_i(\psi)=\{x: i^*(x)=i\}$ is the set of sources sent to $y_i$. The
heights $\psi$ minimise the convex dual energy
$E(\psi)=\int u_\psi\,d\mu-\sum_i\nu_i\psi_i$, whose gradient is
$\partial E/\partial\psi_i=\mu(W_i(\psi))-\nu_i$ (cell mass minus target weight);
:meth:`SemiDiscreteOT.fit` estimates the cell masses by Monte Carlo and takes Adam
steps on $\psi$, keeping $\sum_i\psi_i=0$ ($\psi$ is defined up to a constant).
:func:`sample_dpm_ot` maps source samples to stored noised latents and finishes with
a few DDIM steps (Li et al. 2023, DPM-OT).

The inner-product form is the quadratic-cost form in disguise:
$\arg\max_i\langle x,y_i\rangle+\psi_i=\arg\min_i\tfrac12\lVert x-y_i\rVert^2-\psi_i
-\tfrac12\lVert y_i\rVert^2$, so $g_i=\psi_i+\tfrac12\lVert y_i\rVert^2$ is the
dual variable of the cost $\tfrac12\lVert x-y\rVert^2$.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from . import _checks as C
from .param import Denoiser
from .sampling import sample_ancestral

__all__ = ["SemiDiscreteOT", "sample_dpm_ot"]


def _matrix(x, name: str, dim: int | None = None) -> torch.Tensor:
    """A finite floating (N, D) tensor (D = ``dim`` when given)."""
    if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() != 2:
        what = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(
            f"{name} must be a floating tensor of shape (N, D); got {what}"
        )
    if x.shape[0] < 1 or (dim is not None and x.shape[1] != dim):
        want = "D" if dim is None else str(dim)
        raise ValueError(
            f"{name} must have shape (N, {want}) with N >= 1; got {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite (no NaN or inf)")
    return x


class SemiDiscreteOT:
    r"""The semi-discrete OT map from a source law onto weighted target points
    (chapter II.7).

    Args:
        targets: (M, D) floating tensor, the points $y_i$ (DPM-OT: noised latents).
        weights: optional (M,) non-negative weights $\nu_i$ with a positive sum
            (normalised here); default uniform $1/M$.
        batch: how many targets are scored at once (memory: N x batch).
        time: optional time $t_K$ of the targets (the latent level of DPM-OT);
            :func:`sample_dpm_ot` then insists that its grid starts there.

    The heights $\psi$ (attribute ``psi``, float64, mean zero) start at 0, where the
    map is the nearest-target-by-inner-product rule; :meth:`fit` solves for them.
    ``history`` holds one dict per fitting iteration.
    """

    def __init__(self, targets, weights=None, *, batch: int = 4096, time=None):
        self.targets = _matrix(targets, "targets")
        self.time = None if time is None else C.scalar_time(time, "time")
        m = self.targets.shape[0]
        if weights is None:
            weights = torch.full((m,), 1.0 / m, dtype=torch.float64)
        weights = C.real_tensor(weights, "weights")
        if weights.shape != (m,) or bool((weights < 0).any()) or weights.sum() <= 0:
            raise ValueError(
                f"weights must be {m} non-negative numbers with a positive sum; got "
                f"shape {tuple(weights.shape)}"
            )
        self.weights = (weights / weights.sum()).to(torch.float64)
        self.batch = C.positive_int(batch, "batch")
        self.psi = torch.zeros(m, dtype=torch.float64)
        self.history: list[dict] = []

    def __repr__(self):
        m, d = self.targets.shape
        return f"SemiDiscreteOT(M={m}, D={d}, fitted_steps={len(self.history)})"

    @property
    def dim(self) -> int:
        return self.targets.shape[1]

    @property
    def n_targets(self) -> int:
        return self.targets.shape[0]

    # --- the map -------------------------------------------------------------------
    def _best(self, x: torch.Tensor):
        """(max, argmax) over i of <x, y_i> + psi_i, in target batches (on x's
        device; the targets and heights are moved there)."""
        y = self.targets.to(device=x.device, dtype=x.dtype)
        psi = self.psi.to(device=x.device, dtype=x.dtype)
        best = torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
        idx = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
        for lo in range(0, y.shape[0], self.batch):
            s = torch.addmm(psi[lo : lo + self.batch], x, y[lo : lo + self.batch].T)
            v, j = s.max(1)
            better = v > best
            best = torch.where(better, v, best)
            idx = torch.where(better, j + lo, idx)
        return best, idx

    def _x(self, x, name: str = "x") -> torch.Tensor:
        return _matrix(x, name, self.dim)

    def assign(self, x: torch.Tensor) -> torch.Tensor:
        r"""The cell index $i^*(x)=\arg\max_i\langle x,y_i\rangle+\psi_i$ of each row
        of ``x`` (N, D), as int64 (N,)."""
        return self._best(self._x(x))[1]

    def transport(self, x: torch.Tensor) -> torch.Tensor:
        r"""The map $T_\psi(x)=y_{i^*(x)}$: every row of ``x`` becomes one stored
        target (an exact copy, in the targets' dtype)."""
        return self.targets[self.assign(x).to(self.targets.device)]

    def potential(self, x: torch.Tensor) -> torch.Tensor:
        r"""The Brenier potential $u_\psi(x)=\max_i\langle x,y_i\rangle+\psi_i$ (N,)
        (convex and piecewise linear; its gradient is :meth:`transport`)."""
        return self._best(self._x(x))[0]

    def cell_masses(self, x: torch.Tensor) -> torch.Tensor:
        r"""Monte-Carlo cell masses $\hat\mu(W_i)$: the share of the source samples
        ``x`` (N, D) that fall in each cell, float64 (M,)."""
        idx = self.assign(x)
        counts = torch.bincount(idx, minlength=self.n_targets).cpu()
        return counts.to(torch.float64) / len(idx)

    def dual_energy(self, x: torch.Tensor) -> float:
        r"""The dual energy $E(\psi)=\frac1N\sum_n u_\psi(x_n)-\sum_i\nu_i\psi_i$ with
        $\mu$ replaced by the samples ``x``; convex in $\psi$, with gradient
        :meth:`cell_masses` minus ``weights``. For the quadratic cost,
        $\frac12(\overline{\lVert x\rVert^2}+\sum_i\nu_i\lVert y_i\rVert^2)-E(\psi)$ is
        a lower bound on the optimal cost $\frac12W_2^2$, equal at the optimum."""
        u = self.potential(x).to(torch.float64).cpu()
        return float(u.mean() - (self.weights * self.psi).sum())

    # --- the solver ----------------------------------------------------------------
    def fit(
        self,
        source,
        *,
        n_samples: int = 20_000,
        steps: int = 300,
        lr: float = 0.1,
        tol: float = 1e-3,
        patience: int = 50,
        max_doublings: int = 3,
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> "SemiDiscreteOT":
        r"""Solve for the heights $\psi$ by stochastic gradient descent on $E$.

        ``source`` is either a sampler ``source(n, generator) -> (n, D) tensor`` (a
        fresh Monte-Carlo batch of ``n_samples`` every iteration) or a fixed (N, D)
        tensor of source samples (then the problem is discrete: ``n_samples`` is
        ignored). Each iteration estimates the cell masses, forms the gradient
        $g=\hat\mu(W(\psi))-\nu$, takes one Adam step (``lr``, betas 0.9/0.999) and
        re-centres $\psi$ to mean zero. It stops when $\lVert g\rVert_2<$ ``tol`` AND
        no cell is empty, or after ``steps`` iterations. When $\lVert g\rVert$ has not
        improved for ``patience`` iterations, the number of Monte-Carlo samples is
        doubled (at most ``max_doublings`` times) and the learning rate multiplied by
        0.8 (the official code's rule: more samples, not a larger step, against
        empty cells). With a sampler source, $\lVert g\rVert$ never falls below its
        Monte-Carlo floor: at the optimum $E\lVert g\rVert^2=(1-\sum_i\nu_i^2)/n$, so a
        ``tol`` below about $1/\sqrt n$ is not reached and the fit runs all ``steps``.
        Fit and sample with the same source law. Returns ``self``."""
        fixed = torch.is_tensor(source)
        if fixed:
            source = self._x(source, "source")
        else:
            C.function(source, "source", "source(n, generator)")
            n_samples = C.positive_int(n_samples, "n_samples")
        steps = C.positive_int(steps, "steps")
        lr = C.positive(lr, "lr")
        tol = C.positive(tol, "tol")
        patience = C.positive_int(patience, "patience")
        max_doublings = C.positive_int(max_doublings, "max_doublings", minimum=0)
        C.generator(generator)
        C.flag(progress, "progress")
        from tqdm.auto import tqdm

        m1 = torch.zeros_like(self.psi)
        m2 = torch.zeros_like(self.psi)
        b1, b2, tiny = 0.9, 0.999, 1e-8
        best, since, doublings = math.inf, 0, 0
        it = tqdm(range(steps), desc="OT heights", leave=False, disable=not progress)
        for k in it:
            if fixed:
                x = source
            else:
                x = source(n_samples, generator)
                if k == 0:
                    self._x(x, "source(n, generator)")
            g = self.cell_masses(x) - self.weights
            norm = float(g.norm())
            empty = int((g == -self.weights).sum())
            self.history.append(
                {"step": k, "grad_norm": norm, "empty": empty, "n": len(x), "lr": lr}
            )
            if norm < tol and empty == 0:
                break
            m1.mul_(b1).add_(g, alpha=1 - b1)
            m2.mul_(b2).addcmul_(g, g, value=1 - b2)
            t = k + 1
            step = lr * (m1 / (1 - b1**t)) / ((m2 / (1 - b2**t)).sqrt() + tiny)
            self.psi -= step
            self.psi -= self.psi.mean()
            if norm < best:
                best, since = norm, 0
            else:
                since += 1
            if since >= patience and doublings < max_doublings and not fixed:
                n_samples, lr, since = 2 * n_samples, 0.8 * lr, 0
                doublings += 1
        return self


@torch.no_grad()
def sample_dpm_ot(
    denoiser: Denoiser,
    x: torch.Tensor,
    ot_map: SemiDiscreteOT,
    ts,
    *,
    eta: float = 0.0,
    clip_x0: float | None = None,
    generator: torch.Generator | None = None,
    callback: Callable | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""DPM-OT (chapter II.7): map source samples ``x`` to stored latents with
    ``ot_map`` (no network call), then finish with the DDIM/DDPM family
    (:func:`dlib.sampling.sample_ancestral`, ``eta=0``: DDIM; ``clip_x0`` as
    there) on the grid ``ts``, which must START at the latents' time $t_K$ (checked
    against ``ot_map.time`` when set: the restart level equals the latent level)
    and usually ends at 0. NFE = ``len(ts) - 1``; the map costs none."""
    C.denoiser(denoiser)
    if not isinstance(ot_map, SemiDiscreteOT):
        raise ValueError(
            f"ot_map must be a SemiDiscreteOT; got {type(ot_map).__name__}"
        )
    denoiser._check_x(x, "x")
    if x.dim() != 2 or x.shape[1] != ot_map.dim:
        raise ValueError(
            f"x must have shape (N, {ot_map.dim}) to match ot_map; got "
            f"{tuple(x.shape)}"
        )
    if torch.is_tensor(ts):
        ts = ts.detach().cpu()
    grid = C.as_time(ts, name="ts", dtype=torch.float64).reshape(-1)
    if grid.numel() < 2:
        raise ValueError("ts must hold at least 2 times (t_K, ..., 0)")
    first = float(grid[0])
    if ot_map.time is not None and not math.isclose(first, ot_map.time, abs_tol=1e-12):
        raise ValueError(
            f"ts must start at the latents' time ot_map.time={ot_map.time}; got "
            f"ts[0]={first} (restart at the level the latents were made at)"
        )
    y = ot_map.transport(x).to(x.dtype)
    return sample_ancestral(
        denoiser, y, ts, eta=eta, clip_x0=clip_x0, generator=generator,
        callback=callback, progress=progress,
    )
