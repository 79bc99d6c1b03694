r"""DPM-Solver-v3: empirical model statistics (EMS), the multistep predictor with the
pseudo-order option and the UniC-style corrector (Part II, DPM-Solver-v3 chapter).

The book's convention: a step goes from $t$ to $s<t$, $h=\lambda_s-\lambda_t>0$ (the
paper steps from $\lambda_s$ to $\lambda_t$); the statistic $s_\lambda$ always carries
its subscript, a bare $s$ is the step's end time. In the half log-SNR $\lambda$ the
PF-ODE is $dx/d\lambda=(\log\alpha)'x-\sigma\hat\epsilon$. With per-dimension functions
$l_\lambda, s_\lambda, b_\lambda$ (the EMS) it is rewritten as
$dx/d\lambda=((\log\alpha)'-l_\lambda)x-\alpha f$ with
$f=(\sigma\hat\epsilon-l_\lambda x)/\alpha$, and, anchored at the step start
$\lambda_t$, $g(\lambda)=e^{-S_\lambda}f-\int_{\lambda_t}^{\lambda}e^{-S_r}b_r\,dr$ with
$S_\lambda=\int_{\lambda_t}^{\lambda}s_r\,dr$. Writing $L=\int l_\lambda$, $E=L+S$ and
$Q(\lambda)=\int_{\lambda_t}^{\lambda}e^{-S_r}b_r\,dr$, the exact solution is

$$x_s=\frac{\alpha_s}{\alpha_t}e^{L_t-L_s}x_t-\alpha_se^{L_t-L_s}
\int_{\lambda_t}^{\lambda_s}e^{E_\lambda-E_t}\big(g(\lambda)+Q(\lambda)\big)d\lambda ,$$

and a solver of order k replaces g by its Taylor polynomial of degree k-1 at
$\lambda_t$, with derivatives from g at past grid points. ``l = 1, s = 0, b = 0`` gives
$f=-\hat x_0$: DPM-Solver++ (data prediction); ``l = 0, s = -1, b = 0`` gives
$g\propto\hat\epsilon$: DPM-Solver (noise prediction) (:meth:`EMS.baseline`), both in
the Taylor form of the multistep method (at order 1: DDIM). Zero statistics are
neither (an Euler step for $x/\alpha$).

Integrals: the statistics live on a uniform $\lambda$ grid; $L$, $S$ and $Q$ are
cumulative trapezoid sums on it, and each cell's $\int e^{E}\,(\text{polynomial})$ is
integrated exactly for $E$ linear on the cell (an exponentially fitted rule, exact
when $l_\lambda+s_\lambda$ is constant, hence the baselines equal their base solvers
to round-off).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .. import _checks as C
from .._loop import _prepare, _report, _steps
from ..param import Denoiser
from ..schedules import DiscreteVP, Schedule
from ._core import _check_below, _orders

__all__ = ["EMS", "estimate_statistics", "sample_dpm_solver_v3"]

_F64 = torch.float64
_SERIES = 20
HALF_CORRECTOR = (False, True, "noisy", "clean")


# --- the statistics ---------------------------------------------------------------
def _trapz_cum(y: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Cumulative trapezoid integral of y (N, P) over lam (N,), starting at 0."""
    d = (lam[1:] - lam[:-1])[:, None]
    inc = 0.5 * d * (y[1:] + y[:-1])
    return torch.cat([torch.zeros_like(y[:1]), torch.cumsum(inc, 0)])


@dataclass(eq=False)
class EMS:
    r"""Empirical model statistics of a denoiser on a uniform log-SNR grid (Part II,
    DPM-Solver-v3 chapter).

    ``lambdas`` (M+1,) strictly increasing float64 (from the noisy end to the clean
    end); ``l``, ``s``, ``b`` of shape (M+1, *shape) with ``shape`` the shape of one
    sample: $l_\lambda=\mathbb E[\mathrm{diag}(\sigma\nabla_x\hat\epsilon)]$,
    $s_\lambda=\mathrm{Cov}(f,f')/\mathrm{Var}(f)$, $b_\lambda=\mathbb Ef'-s\,
    \mathbb Ef$ per dimension (:func:`estimate_statistics`). ``n_samples`` and
    ``schedule`` (the repr of the schedule they were estimated for; '' = any) are
    records, and so is ``r2`` (optional, the shape of ``l``): the fraction of the
    variance of $f'$ that the fit $sf+b$ explains, $\mathrm{Cov}^2/(\mathrm{Var}f\,
    \mathrm{Var}f')$. :meth:`save` / :meth:`load` cache them as ``.npz``."""

    lambdas: torch.Tensor
    l: torch.Tensor  # noqa: E741
    s: torch.Tensor
    b: torch.Tensor
    n_samples: int = 0
    schedule: str = ""
    r2: torch.Tensor | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        lam = C.real_tensor(self.lambdas, "lambdas", dtype=_F64)
        if lam.dim() != 1 or lam.numel() < 2 or bool((lam[1:] <= lam[:-1]).any()):
            raise ValueError("lambdas must be a strictly increasing 1-D grid of at "
                             "least 2 log-SNR values")
        self.lambdas = lam.cpu()
        for name in ("l", "s", "b"):
            v = C.real_tensor(getattr(self, name), name, dtype=_F64).cpu()
            if v.dim() < 2 or v.shape[0] != lam.numel():
                raise ValueError(
                    f"{name} must have shape ({lam.numel()}, *shape) (one row per "
                    f"lambda); got {tuple(v.shape)}")
            setattr(self, name, v)
        if not self.l.shape == self.s.shape == self.b.shape:
            raise ValueError(f"l, s, b must have the same shape; got "
                             f"{tuple(self.l.shape)}, {tuple(self.s.shape)}, "
                             f"{tuple(self.b.shape)}")
        self.n_samples = C.positive_int(self.n_samples, "n_samples", minimum=0)
        if not isinstance(self.schedule, str):
            raise ValueError(f"schedule must be a str (a schedule's repr); got "
                             f"{type(self.schedule).__name__}")
        if self.r2 is not None:
            self.r2 = C.real_tensor(self.r2, "r2", dtype=_F64).cpu()
            if self.r2.shape != self.l.shape:
                raise ValueError(f"r2 must have the shape of l {tuple(self.l.shape)}; "
                                 f"got {tuple(self.r2.shape)}")
        self._cache = {}

    @property
    def shape(self) -> tuple:
        """The shape of one sample."""
        return tuple(self.l.shape[1:])

    @classmethod
    def baseline(cls, lambdas, shape, prediction: str = "x0") -> "EMS":
        """Constant statistics that turn DPM-Solver-v3 into its base solvers:
        ``prediction="x0"``: l = 1, s = 0, b = 0 ($f=-\\hat x_0$, DPM-Solver++);
        ``"eps"``: l = 0, s = -1, b = 0 ($g=e^{-\\lambda_s}\\hat\\epsilon$,
        DPM-Solver); ``"zero"``: l = s = b = 0 ($f=e^{-\\lambda}\\hat\\epsilon$, an
        exponential integrator that is neither)."""
        C.one_of(prediction, ("x0", "eps", "zero"), "prediction")
        lam = C.real_tensor(lambdas, "lambdas", dtype=_F64)
        shape = tuple(C.positive_int(d, "shape") for d in tuple(shape))
        z = torch.zeros((lam.numel(),) + shape, dtype=_F64)
        lv, sv = {"x0": (1.0, 0.0), "eps": (0.0, -1.0), "zero": (0.0, 0.0)}[prediction]
        return cls(lam, z + lv, z + sv, z.clone(), 0, "")

    def save(self, path) -> None:
        """Write the statistics to ``path`` (a NumPy ``.npz`` file)."""
        path = C.path(path, "path")
        np.savez(path, lambdas=self.lambdas.numpy(), l=self.l.numpy(),
                 s=self.s.numpy(), b=self.b.numpy(),
                 n_samples=np.array(self.n_samples), schedule=np.array(self.schedule),
                 **({} if self.r2 is None else {"r2": self.r2.numpy()}))

    @classmethod
    def load(cls, path) -> "EMS":
        """Read statistics written by :meth:`save`."""
        path = C.path(path, "path")
        if not os.path.isfile(path):
            raise ValueError(f"path {path!r} is not a file")
        with np.load(path) as z:
            return cls(torch.from_numpy(z["lambdas"]), torch.from_numpy(z["l"]),
                       torch.from_numpy(z["s"]), torch.from_numpy(z["b"]),
                       int(z["n_samples"]), str(z["schedule"]),
                       torch.from_numpy(z["r2"]) if "r2" in z.files else None)

    def snap(self, ts, schedule: Schedule) -> tuple[list[int], torch.Tensor]:
        """The grid indices nearest to the times ``ts`` (in log-SNR) and the snapped
        times (float64), as the sampler uses them. A final t = 0 is kept (the jump
        to sigma = 0) and gets index -1. ValueError if a time is more than half a
        cell outside the grid or two times fall on one index."""
        C.schedule(schedule)
        ts = C.as_time(ts, name="ts", dtype=_F64).to(_F64).cpu().reshape(-1)
        return self._snap(ts.tolist(), schedule)

    def _snap(self, ts: list[float], schedule) -> tuple[list[int], torch.Tensor]:
        zero = ts[-1] == 0.0
        inner = ts[:-1] if zero else ts
        lam = schedule.log_snr(torch.tensor(inner, dtype=_F64))
        grid = self.lambdas
        pos = torch.searchsorted(grid, lam.contiguous()).clamp(1, grid.numel() - 1)
        left, right = grid[pos - 1], grid[pos]
        idx = torch.where((lam - left) <= (right - lam), pos - 1, pos)
        cell = (grid[1:] - grid[:-1]).max()
        far = (lam - grid[idx]).abs() > 0.5 * cell + 1e-9
        if bool(far.any()) or not bool(torch.isfinite(lam).all()):
            raise ValueError(
                f"ts must lie inside the statistics' log-SNR range [{grid[0]:.4g}, "
                f"{grid[-1]:.4g}] (a final 0 is allowed); got log-SNR values from "
                f"{lam.min():.4g} to {lam.max():.4g}")
        idx = idx.tolist()
        if any(b <= a for a, b in zip(idx, idx[1:])):
            raise ValueError(
                f"ts has more steps than the statistics' grid resolves ({len(idx)} "
                f"times on {grid.numel()} grid points fall on repeated indices); use "
                f"fewer steps or finer statistics")
        times = schedule.t_from_log_snr(grid[idx]).clamp(0.0, 1.0)
        if zero:
            idx.append(-1)
            times = torch.cat([times, times.new_zeros(1)])
        return idx, times

    # cumulative integrals (float64, flattened to (M+1, P))
    def _flat(self, name):
        key = ("flat", name)
        if key not in self._cache:
            v = getattr(self, name)
            self._cache[key] = v.reshape(v.shape[0], -1)
        return self._cache[key]

    def _cum(self):
        if "cum" not in self._cache:
            L = _trapz_cum(self._flat("l"), self.lambdas)
            S = _trapz_cum(self._flat("s"), self.lambdas)
            self._cache["cum"] = (L, S, L + S)
        return self._cache["cum"]


# --- phi functions, vectorised -------------------------------------------------------
def _phis(z: torch.Tensor, n: int) -> list[torch.Tensor]:
    """[phi_1(z), ..., phi_n(z)] elementwise (float64): Taylor series for |z| <= 1,
    the recursion from expm1 elsewhere."""
    small = z.abs() <= 1.0
    zs = torch.where(small, z, torch.zeros_like(z))
    zl = torch.where(small, torch.ones_like(z), z)
    out, p = [], torch.expm1(zl) / zl
    for k in range(1, n + 1):
        if k > 1:
            p = (p - 1.0 / math.factorial(k - 1)) / zl
        ser = torch.full_like(z, 1.0 / math.factorial(k + _SERIES))
        for j in range(_SERIES - 1, -1, -1):
            ser = ser * zs + 1.0 / math.factorial(k + j)
        out.append(torch.where(small, ser, p))
    return out


def _q_integral(stats: EMS, a: int, j: int) -> torch.Tensor:
    """Q_a(lambda_j) = int_{lambda_a}^{lambda_j} e^{S_a - S_r} b_r dr (trapezoid),
    shape (P,)."""
    if j == a:
        return torch.zeros(stats._flat("b").shape[1], dtype=_F64)
    lo, hi = min(a, j), max(a, j)
    _, S, _ = stats._cum()
    y = torch.exp(S[a] - S[lo:hi + 1]) * stats._flat("b")[lo:hi + 1]
    val = _trapz_cum(y, stats.lambdas[lo:hi + 1])[-1]
    return val if j > a else -val


def _step_weights(stats: EMS, a: int, b: int, m_max: int, ca, cb):
    """Coefficients of the step from grid index a to b > a (the grid runs from the
    noisy end, so index a is the book's start time t and b its end time s), cached:
    (A, [W_0..W_m_max], Wb) with x_b = A x_a - sum_m W_m g^{(m)}_a - Wb, where
    W_m = alpha_b e^{L_a-L_b} int e^{E-E_a} (lambda-lambda_a)^m/m! and
    Wb = alpha_b e^{L_a-L_b} int e^{E-E_a} Q_a. Each cell is integrated exactly for E
    linear on it: int_cell e^{E-E_a}(lambda-lambda_k)^j/j! =
    Delta^{j+1} e^{E_{k+1}-E_a} phi_{j+1}(-(E_{k+1}-E_k))."""
    key = ("w", a, b, m_max)
    if key in stats._cache:
        return stats._cache[key]
    L, S, E = stats._cum()
    lam = stats.lambdas
    d = (lam[a + 1:b + 1] - lam[a:b])[:, None]  # (n, 1)
    z = E[a + 1:b + 1] - E[a:b]  # (n, P)
    grow = torch.exp(E[a + 1:b + 1] - E[a])
    ph = _phis(-z, max(m_max, 1) + 1)
    K = [d ** (j + 1) * grow * ph[j] for j in range(max(m_max, 1) + 1)]
    c = (lam[a:b] - lam[a])[:, None]
    W = []
    for m in range(m_max + 1):
        w = sum(c ** (m - j) / math.factorial(m - j) * K[j] for j in range(m + 1))
        W.append(w.sum(0))
    y = torch.exp(S[a] - S[a:b + 1]) * stats._flat("b")[a:b + 1]
    Q = _trapz_cum(y, lam[a:b + 1])
    Wb = (Q[:-1] * K[0] + (Q[1:] - Q[:-1]) / d * K[1]).sum(0)
    scale = cb.alpha * torch.exp(L[a] - L[b])
    out = (scale / ca.alpha, [scale * w for w in W], scale * Wb)
    stats._cache[key] = out
    return out


def _derivatives(lams, gs, pseudo):
    """g^{(1)}..g^{(n)} at lams[0] from values gs at lams (n + 1 points): the exact
    solve of the Taylor system, or (pseudo) m! times Newton divided differences."""
    n = len(gs) - 1
    if pseudo:
        table, out = list(gs), []
        for m in range(1, n + 1):
            table = [(table[i] - table[i + 1]) / (lams[i] - lams[i + m])
                     for i in range(n + 1 - m)]
            out.append(table[0] * math.factorial(m))
        return out
    V = torch.tensor([[(lams[j] - lams[0]) ** m / math.factorial(m)
                       for m in range(1, n + 1)] for j in range(1, n + 1)],
                     dtype=_F64)
    Vinv = torch.linalg.inv(V)  # (m, j)
    diffs = [gs[j] - gs[0] for j in range(1, n + 1)]
    return [sum(Vinv[m, j].item() * diffs[j] for j in range(n)) for m in range(n)]


def _update(stats, anchor, others, b, coef, pseudo, dtype):
    """x at grid index b from the anchor entry (x, f, index, coefficients) and other
    entries (their f re-anchored as g); order = 1 + len(others)."""
    xa, fa, a, ca = anchor
    _, S, _ = stats._cum()
    m_max = len(others)
    A, W, Wb = _step_weights(stats, a, b, m_max, ca, coef)
    def cast(v):  # the statistics live on the CPU in float64
        return v.to(device=xa.device, dtype=dtype)

    x = xa * cast(A) - fa * cast(W[0]) - cast(Wb)
    if m_max:
        lams = [stats.lambdas[a].item()] + [stats.lambdas[e[2]].item() for e in others]
        gs = [fa] + [e[1] * cast(torch.exp(S[a] - S[e[2]]))
                     - cast(_q_integral(stats, a, e[2])) for e in others]
        for m, dg in enumerate(_derivatives(lams, gs, pseudo), start=1):
            x = x - dg * cast(W[m])
    return x


# --- estimation ----------------------------------------------------------------------
def _dlogalpha_dlambda(schedule, lam: float, step: float = 1e-4) -> float:
    """d log(alpha) / d lambda at log-SNR ``lam`` by a central difference of
    log alpha(t(lambda)) (sigma^2 for VP schedules; any schedule, including
    DiscreteVP, whose time derivatives jump at its grid points)."""
    lo, hi = schedule.log_snr_range()
    up, dn = min(lam + step, hi), max(lam - step, lo)
    t = schedule.t_from_log_snr(torch.tensor([up, dn], dtype=_F64))
    la = schedule._log_alpha(t)
    return float(la[0] - la[1]) / (up - dn)


def _moving_average(y: torch.Tensor, k: int) -> torch.Tensor:
    """Mean over the window of +-k grid points (truncated at the ends), (N, P)."""
    if k == 0:
        return y
    c = torch.cat([torch.zeros_like(y[:1]), torch.cumsum(y, 0)])
    n = y.shape[0]
    i = torch.arange(n)
    lo, hi = (i - k).clamp(min=0), (i + k + 1).clamp(max=n)
    return (c[hi] - c[lo]) / (hi - lo).to(y.dtype)[:, None]


@torch.no_grad()
def estimate_statistics(
    denoiser: Denoiser,
    data: torch.Tensor,
    *,
    n_lambda: int = 1200,
    t_max: float = 1.0,
    t_min: float | None = None,
    n_samples: int = 1024,
    jacobian: str = "auto",
    fd_step: float | None = None,
    smooth: int = 5,
    ridge: float = 1e-8,
    chunk: int = 65536,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> EMS:
    r"""The empirical model statistics of ``denoiser`` (Part II, DPM-Solver-v3
    chapter), on the uniform log-SNR grid of ``n_lambda`` cells from
    $\lambda(t_{max})$ to $\lambda(t_{min})$ (default ``t_min``: 1/T for a
    :class:`~dlib.schedules.DiscreteVP`, else 1e-3). At every grid point,
    ``n_samples`` noised training points $x=\alpha x_0+\sigma\epsilon$ ($x_0$ drawn from
    ``data`` with replacement) give, per dimension,

    - $l=\mathbb E[\mathrm{diag}(\sigma\nabla_x\hat\epsilon)]$, the minimiser of
      $\mathbb E\|\nabla_x(\sigma\hat\epsilon-lx)\|_F^2$. ``jacobian="exact"``: the
      diagonal by central differences along every coordinate (2 D calls per sample);
      ``"hutchinson"``: $v\odot(J v)$ with a Rademacher $v$, $Jv$ by one central
      difference (2 calls); ``"auto"``: exact when D <= 8;
    - $l'$ by central differences on the grid, averaged over +-``smooth`` points;
    - $f=(\sigma\hat\epsilon-lx)/\alpha$ and its total derivative along the ODE
      $f'=e^{-\lambda}((l-1)\hat\epsilon+d\hat\epsilon/d\lambda)-l'x/\alpha$, with
      $d\hat\epsilon/d\lambda$ by a central difference along
      $(dx/d\lambda, 1)$, $dx/d\lambda=(\log\alpha)'x-\sigma\hat\epsilon$ (3 calls);
    - $s=\mathrm{Cov}(f,f')/(\mathrm{Var}f+\text{ridge}\,\mathbb E f^2)$ and
      $b=\mathbb Ef'-s\,\mathbb Ef$: the least-squares fit $f'\approx sf+b$
      (``ridge`` keeps s finite where f hardly varies, e.g. Gaussian data).

    Finite differences (step ``fd_step``: 1e-5 in float64, 1e-3 in float32, relative
    to 1) replace the paper's forward-mode JVPs so any ``Denoiser`` works; compute in
    float64 where you can (``data`` sets the dtype). Fresh samples for l and for
    (s, b). Cost: n_lambda + 1 times n_samples times (2 or 2 D, plus 3) calls, counted
    by ``denoiser.nfe``; ``chunk`` caps the rows of one call. Any device: the statistics
    are returned on the CPU. Returns an :class:`EMS`."""
    C.denoiser(denoiser)
    data = C.batch(data, "data")
    denoiser._check_x(data[:1], "data")
    M = C.positive_int(n_lambda, "n_lambda", minimum=2)
    K = C.positive_int(n_samples, "n_samples", minimum=2)
    C.one_of(jacobian, ("auto", "exact", "hutchinson"), "jacobian")
    smooth = C.positive_int(smooth, "smooth", minimum=0)
    ridge = C.in_range(ridge, "ridge", 0.0, 1.0)
    chunk = C.positive_int(chunk, "chunk")
    C.generator(generator)
    sch = denoiser.schedule
    t_max = C.scalar_time(t_max, "t_max")
    if t_min is None:
        t_min = 1.0 / sch.T if isinstance(sch, DiscreteVP) else 1e-3
    t_min = C.scalar_time(t_min, "t_min")
    if not 0 < t_min < t_max:
        raise ValueError(f"need 0 < t_min < t_max; got t_min={t_min}, t_max={t_max}")
    dtype = data.dtype
    h = fd_step if fd_step is not None else (1e-5 if dtype == _F64 else 1e-3)
    h = C.in_range(h, "fd_step", 0.0, 0.1, lo_open=True)
    ends = sch.log_snr(torch.tensor([t_max, t_min], dtype=_F64))
    if not bool(torch.isfinite(ends).all()):
        raise ValueError("the log-SNR must be finite at t_max and t_min")
    lam = torch.linspace(float(ends[0]), float(ends[1]), M + 1, dtype=_F64)
    lo_range, hi_range = sch.log_snr_range()
    shape = tuple(data.shape[1:])
    P = int(np.prod(shape))
    exact = jacobian == "exact" or (jacobian == "auto" and P <= 8)
    gen = generator
    flat = data.reshape(data.shape[0], -1).to(dtype)
    dev = data.device

    def draw(j):
        t = float(sch.t_from_log_snr(lam[j]))
        c = sch._coefficients(t)
        k = torch.randint(0, flat.shape[0], (K,), generator=gen)
        z = torch.randn(K, P, generator=gen, dtype=dtype).to(dev)
        return t, c, flat[k] * c.alpha + z * c.sigma

    def eps(x, t):  # x (B, P), t float or (B,) tensor
        e = denoiser._x0_eps(x.reshape((-1,) + shape), t)[1]
        return e.reshape(x.shape[0], -1)

    def eps_chunked(x, t):
        return torch.cat([eps(x[i:i + chunk], t if isinstance(t, float)
                              else t[i:i + chunk])
                          for i in range(0, x.shape[0], chunk)])

    bar = _steps([0.0] * (2 * (M + 1) + 1), progress, "EMS")
    it = iter(bar)
    l_est = torch.empty(M + 1, P, dtype=_F64)
    for j in range(M + 1):
        next(it, None)
        t, c, x = draw(j)
        if exact:
            eye = torch.eye(P, dtype=dtype, device=dev) * h
            xs = torch.cat([(x[:, None, :] + eye).reshape(-1, P),
                            (x[:, None, :] - eye).reshape(-1, P)])
            e = eps_chunked(xs, t).reshape(2, K, P, P)
            diag = torch.diagonal(e[0] - e[1], dim1=1, dim2=2) / (2 * h)
        else:
            v = torch.randint(0, 2, (K, P), generator=gen).to(dev, dtype) * 2 - 1
            e = eps_chunked(torch.cat([x + h * v, x - h * v]), t)
            diag = v * (e[:K] - e[K:]) / (2 * h)
        l_est[j] = (c.sigma * diag.to(_F64)).mean(0).cpu()
    dl = torch.gradient(l_est, spacing=(lam,), dim=0, edge_order=2)[0]
    dl = _moving_average(dl, smooth)

    s_est = torch.empty(M + 1, P, dtype=_F64)
    b_est = torch.empty(M + 1, P, dtype=_F64)
    r2 = torch.empty(M + 1, P, dtype=_F64)
    for j in range(M + 1):
        next(it, None)
        t, c, x = draw(j)
        lj = float(lam[j])
        e0 = eps_chunked(x, t)
        dla = _dlogalpha_dlambda(sch, lj)
        xdot = dla * x - c.sigma * e0
        up, dn = min(lj + h, hi_range), max(lj - h, lo_range)
        tu, td = sch.t_from_log_snr(torch.tensor([up, dn], dtype=_F64)).tolist()
        xs = torch.cat([x + (up - lj) * xdot, x + (dn - lj) * xdot])
        tt = torch.tensor([tu] * K + [td] * K, dtype=_F64, device=dev)
        e2 = eps_chunked(xs, tt).to(_F64)
        de = (e2[:K] - e2[K:]) / (up - dn)
        x64, e64 = x.to(_F64), e0.to(_F64)
        lv, dlv = l_est[j].to(dev), dl[j].to(dev)
        f = (c.sigma * e64 - lv * x64) / c.alpha
        f1 = math.exp(-lj) * ((lv - 1) * e64 + de) - dlv * x64 / c.alpha
        mf, mf1 = f.mean(0), f1.mean(0)
        var = (f * f).mean(0) - mf**2
        cov = (f * f1).mean(0) - mf * mf1
        sj = cov / (var.clamp(min=0) + ridge * (f * f).mean(0) + 1e-300)
        var1 = (f1 * f1).mean(0) - mf1**2
        s_est[j], b_est[j] = sj.cpu(), (mf1 - sj * mf).cpu()
        r2[j] = (cov**2 / (var * var1).clamp(min=1e-300)).clamp(0.0, 1.0).cpu()
    next(it, None)
    return EMS(lam, l_est.reshape((M + 1,) + shape), s_est.reshape((M + 1,) + shape),
               b_est.reshape((M + 1,) + shape), K, repr(sch),
               r2.reshape((M + 1,) + shape))


# --- the sampler ---------------------------------------------------------------------
@torch.no_grad()
def sample_dpm_solver_v3(
    denoiser: Denoiser,
    x: torch.Tensor,
    ts,
    stats: EMS,
    *,
    order: int = 3,
    pseudo: bool = False,
    corrector: bool = True,
    corrector_pseudo: bool = False,
    half_corrector: bool | str = False,
    lower_order_final: bool = True,
    lower_order_below: int | float = 10,
    callback: Callable | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    r"""DPM-Solver-v3 (multistep), from $x$ at ``ts[0]`` along ``ts`` snapped to the
    grid of ``stats`` (:meth:`EMS.snap`; the model is evaluated at the snapped times).
    For a step from grid point $t$ to $s<t$ (the book's direction; the paper's is
    reversed), with $g_j=e^{S_t-S_j}f_j-Q(\lambda_j)$ the values re-anchored at the
    step start $t$ and $W_m$, $W_b$ the integrals of :mod:`dlib.solvers.v3`:

    $$x_s=\frac{\alpha_s}{\alpha_t}e^{L_t-L_s}x_t-\sum_{m=0}^{k-1}W_m\,g^{(m)}_t-W_b.$$

    The order k of each step follows :func:`~dlib.solvers.step_orders` (multistep
    warm-up, ``lower_order_final`` below ``lower_order_below`` steps). Derivatives
    $g^{(m)}_t$ from the k-1 previous grid points: the exact Taylor solve, or with
    ``pseudo=True`` m! times Newton divided differences (the paper's pseudo-order
    predictor for very few steps; equal at order 2).

    ``corrector=True`` (UniC-style, no extra NFE): once $\hat\epsilon$ at the new
    point $s$ is known, $x_s$ is recomputed from $x_t$ by the same formula using $s$
    and the older points (order = the previous predictor's order,
    +1 with ``corrector_pseudo``, which also uses divided differences); then
    $N=\sigma_s\hat\epsilon-l_{\lambda_s}x$ is kept, so $\hat\epsilon\leftarrow
    (N+l_{\lambda_s}x_{new})/\sigma_s$ and $f$ at $s$ is unchanged.
    ``half_corrector``: ``True`` or
    ``"noisy"`` corrects only where t > 0.5 (what the official code does with
    ``half=True``), ``"clean"`` only where t <= 0.5 (its README's wording).

    NFE = number of steps (one evaluation at the start of each step). A grid ending
    at t = 0 makes the last step the jump to $\hat x_0$ (from the corrected
    evaluation, no extra NFE); otherwise the last predicted x is returned. ``stats``
    from :func:`estimate_statistics` or :meth:`EMS.baseline`. Introduced in Part II,
    DPM-Solver-v3 chapter."""
    ts = _prepare(denoiser, x, ts)
    if not isinstance(stats, EMS):
        raise ValueError(f"stats must be a dlib.solvers.EMS; got "
                         f"{type(stats).__name__}")
    if stats.shape != tuple(x.shape[1:]):
        raise ValueError(f"stats has sample shape {stats.shape} but x has "
                         f"{tuple(x.shape[1:])}")
    if stats.schedule and stats.schedule != repr(denoiser.schedule):
        raise ValueError(f"stats were estimated for {stats.schedule}, not for the "
                         f"denoiser's {denoiser.schedule!r}")
    order = C.positive_int(order, "order", maximum=3)
    for v, name in ((pseudo, "pseudo"), (corrector, "corrector"),
                    (corrector_pseudo, "corrector_pseudo"),
                    (lower_order_final, "lower_order_final")):
        C.flag(v, name)
    if not any(half_corrector is v or (isinstance(v, str) and half_corrector == v)
               for v in HALF_CORRECTOR):
        raise ValueError(f"half_corrector must be False, True, 'noisy' or 'clean'; "
                         f"got {half_corrector!r}")
    region = {False: "all", True: "noisy"}.get(half_corrector, half_corrector)
    below = _check_below(lower_order_below)
    C.optional_function(callback, "callback", "callback(dict)")
    idx, times = stats._snap(ts, denoiser.schedule)
    sch = denoiser.schedule
    ts = times.tolist()
    lam = sch.log_snr(times).tolist()
    orders = _orders(ts, lam, order, True, lower_order_final, below)
    l_flat = stats._flat("l")
    shape, B = x.shape, x.shape[0]
    dt = x.dtype
    y = x.reshape(B, -1)
    hist: list = []  # entries [x, f, grid index, coefficients]
    p_prev = 0
    for i, t, s in _steps(ts, progress, "DPM-Solver-v3"):
        a, c = idx[i], sch._coefficients(t)
        eps = denoiser._x0_eps(y.reshape(shape), t)[1].reshape(B, -1)
        la = l_flat[a].to(device=y.device, dtype=dt)
        f = (eps * c.sigma - la * y) / c.alpha
        hist = (hist + [[y, f, a, c]])[-4:]
        use = region == "all" or (t > 0.5) == (region == "noisy")
        k_c = p_prev + int(corrector_pseudo)
        if corrector and use and k_c > 1 and len(hist) >= k_c:
            others = [hist[-1]] + hist[-3:-k_c - 1:-1] if k_c > 2 else [hist[-1]]
            y = _update(stats, hist[-2], others, a, c, corrector_pseudo, dt)
            hist[-1][0] = y  # f (= N / alpha) is kept: the corrector's shortcut
        x0 = y * ((1 - la) / c.alpha) - f
        k = orders[i]
        if s == 0:
            y_new = x0
        else:
            olds = hist[-2:-k - 1:-1] if k > 1 else []
            y_new = _update(stats, hist[-1], olds, idx[i + 1], sch._coefficients(s),
                            pseudo, dt)
        p_prev = k
        _report(callback, i, t, s, y_new.reshape(shape), x0.reshape(shape))
        y = y_new
    return y.reshape(shape)
