r"""Vector-field geometry: gauge freedom, an $L^2(p)$ Helmholtz-type decomposition and
intrinsic dimension from the flow's Jacobian (chapter I.6, after Horvat and Pfister,
2024).

* :func:`jacobian`            $\partial_x F(x)$ of a row-wise field, by autograd.
* :func:`gauge_defect`        $\nabla\cdot r+r\cdot\nabla\log p=\nabla\cdot(p\,r)/p$;
  zero exactly when adding $r$ to the score changes no marginal.
* :func:`perturb_score`, :func:`rotation_gauge`  a denoiser whose score is
  $s+r$; the rotation $r=A\,s$ ($A$ constant antisymmetric) is a gauge for every
  density.
* :func:`weighted_helmholtz`  on a 2-D grid, $F=\nabla\phi+r$ with
  $\nabla\cdot(p\,r)=0$ (weighted least squares).
* :func:`flow_jacobian`, :func:`intrinsic_dimension`  the PF-ODE and its Jacobian
  $\dot Y=\partial_xv\,Y$ together, and the largest-log-gap count of its singular
  values.
* :class:`UniformSphere`     a uniform 2-sphere embedded in $\mathbb R^D$ with its
  exact noised density and score (closed form).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from . import _checks as C
from .param import Denoiser
from .schedules import Schedule

__all__ = [
    "jacobian",
    "gauge_defect",
    "perturb_score",
    "rotation_gauge",
    "weighted_helmholtz",
    "flow_jacobian",
    "intrinsic_dimension",
    "UniformSphere",
]


def _field_and_jacobian(fn, x):
    """(fn(x), d fn / dx) for a row-wise field fn: (B, D) -> (B, D), by D backward
    passes; the graph is kept (create_graph) so that the result can be differentiated
    again."""
    with torch.enable_grad():
        xg = x if x.requires_grad else x.detach().requires_grad_(True)
        out = fn(xg)
        rows = [
            torch.autograd.grad(
                out[:, i].sum(), xg, retain_graph=True, create_graph=x.requires_grad
            )[0]
            for i in range(out.shape[1])
        ]
    return out, torch.stack(rows, 1)


def jacobian(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> torch.Tensor:
    r"""The Jacobian $J_{bij}=\partial F_i/\partial x_j$ at every row of ``x`` (B, D) of
    a field ``fn`` that maps each row on its own (no mixing across the batch), shape
    (B, D, D), by autograd (chapter I.6). The divergence is its trace."""
    C.function(fn, "fn", "fn(x)")
    x = C.batch(x, "x")
    if x.dim() != 2:
        raise ValueError(f"x must have shape (B, D); got {tuple(x.shape)}")
    out, J = _field_and_jacobian(fn, x)
    C.output(out, x, "fn(x)")
    return J


def gauge_defect(
    r: Callable[[torch.Tensor], torch.Tensor],
    score: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
) -> torch.Tensor:
    r"""$\nabla\cdot r(x)+r(x)\cdot\nabla\log p(x)=\nabla\cdot(p\,r)/p$ at the rows of
    ``x`` (B, D), shape (B,), with ``score`` $=\nabla\log p$ (chapter I.6). It vanishes
    everywhere exactly when $r$ is a gauge of $p$: the field $\nabla\log p+r$ moves
    probability like the score does (the continuity equation sees only
    $\nabla\cdot(p\,\cdot)$)."""
    C.function(r, "r", "r(x)")
    C.function(score, "score", "score(x)")
    x = C.batch(x, "x")
    if x.dim() != 2:
        raise ValueError(f"x must have shape (B, D); got {tuple(x.shape)}")
    rx, J = _field_and_jacobian(r, x)
    C.output(rx, x, "r(x)")
    s = C.output(score(x), x, "score(x)")
    return (J.diagonal(dim1=1, dim2=2).sum(1) + (rx * s).sum(1)).detach()


def perturb_score(
    denoiser: Denoiser, field: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
) -> Denoiser:
    r"""A denoiser of kind ``"score"`` whose score is $s(x,t)+r(x,t)$, with $s$ the
    score of ``denoiser`` and $r$ = ``field(x, t)`` (``t`` of shape (B,)); it can be
    sampled and its PF-ODE likelihood computed like any denoiser (chapter I.6). Its
    marginals are those of ``denoiser`` iff $\nabla\cdot(p_t\,r)=0$ for every $t$."""
    C.denoiser(denoiser)
    C.function(field, "field", "field(x, t)")

    def fn(x, t):
        s = denoiser._predict(x, t, "score")
        return s + C.output(field(x, t), x, "field(x, t)").to(s.dtype)

    return Denoiser(fn, denoiser.schedule, "score")


def rotation_gauge(denoiser: Denoiser, A) -> Denoiser:
    r"""The gauge-transformed denoiser with score $(I+A)\,s(x,t)$, ``A`` a constant
    antisymmetric (D, D) matrix (chapter I.6). For every density,
    $\nabla\cdot(p\,A\nabla\log p)=\nabla\cdot(A\nabla p)=\sum_{ij}A_{ij}\partial_i
    \partial_jp=0$ and $(As)\cdot s=0$: the samples and the exact likelihood are those
    of ``denoiser``, the trajectories are not."""
    C.denoiser(denoiser)
    A = C.real_tensor(A, "A")
    if A.dim() != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must be a square (D, D) matrix; got {tuple(A.shape)}")
    scale = max(float(A.abs().max()), 1.0)
    if float((A + A.T).abs().max()) > 1e-12 * scale:
        raise ValueError("A must be antisymmetric (A == -A.T); got A + A.T != 0")

    def field(x, t):
        s = denoiser._predict(x, t, "score")
        return s @ A.to(device=s.device, dtype=s.dtype).T

    return perturb_score(denoiser, field)


def weighted_helmholtz(field, log_p, h: float) -> tuple[np.ndarray, np.ndarray]:
    r"""Split a 2-D field $F$ sampled on a regular grid into $F=\nabla\phi+r$ with
    $\nabla\cdot(p\,r)=0$ (Neumann: no flux $p\,r$ leaves the box), chapter I.6.

    ``field`` (n, m, 2) and ``log_p`` (n, m) hold $F$ and $\log p$ at the nodes
    $(x_1, x_2)=(a+ih, b+jh)$ ('ij' indexing: axis 0 is $x_1$), ``h`` the spacing.
    $\phi$ minimises the weighted least squares
    $\sum_{\rm edges}p_e\big((\phi_k-\phi_l)/h-F_e\big)^2$ over the grid's edges,
    $p_e$ the geometric mean of $p$ at the two nodes and $F_e$ the mean component of
    $F$ along the edge: the discrete $L^2(p)$ projection onto gradients, whose
    normal equations are the finite-volume form of
    $\nabla\cdot(p\nabla\phi)=\nabla\cdot(p\,F)$. $p$ is rescaled by its maximum and
    floored at $10^{-12}$ (it underflows far out); $\phi$ is fixed to 0 at the mode.
    Returns ($\nabla\phi$, $r$) at the nodes, each (n, m, 2), float64 NumPy arrays;
    $\nabla\phi$ by central differences (one-sided at the border)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    F = np.asarray(C.real_tensor(field, "field"))
    L = np.asarray(C.real_tensor(log_p, "log_p"))
    h = C.positive(h, "h")
    if L.ndim != 2 or min(L.shape) < 3:
        raise ValueError(f"log_p must have shape (n, m) with n, m >= 3; got {L.shape}")
    if F.shape != L.shape + (2,):
        raise ValueError(
            f"field must have shape {L.shape + (2,)} to match log_p; got {F.shape}"
        )
    n, m = L.shape
    p = np.maximum(np.exp(L - L.max()), 1e-12)
    idx = np.arange(n * m).reshape(n, m)
    tails, heads, weights, targets = [], [], [], []
    for axis in (0, 1):
        lo = [slice(None), slice(None)]
        hi = [slice(None), slice(None)]
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        lo, hi = tuple(lo), tuple(hi)
        tails.append(idx[lo].ravel())
        heads.append(idx[hi].ravel())
        weights.append(np.sqrt(p[lo] * p[hi]).ravel())
        targets.append((0.5 * (F[lo][..., axis] + F[hi][..., axis])).ravel())
    tail, head = np.concatenate(tails), np.concatenate(heads)
    w, target = np.concatenate(weights), np.concatenate(targets)
    E = len(w)
    rows = np.concatenate([np.arange(E), np.arange(E)])
    G = coo_matrix(
        (np.concatenate([np.full(E, 1 / h), np.full(E, -1 / h)]),
         (rows, np.concatenate([head, tail]))),
        shape=(E, n * m),
    ).tocsr()
    Lap = (G.T.multiply(w) @ G).tocsc()
    rhs = G.T @ (w * target)
    keep = np.ones(n * m, dtype=bool)
    keep[int(np.argmax(p))] = False  # fix the additive constant of phi
    phi = np.zeros(n * m)
    phi[keep] = spsolve(Lap[keep][:, keep], rhs[keep])
    phi = phi.reshape(n, m)
    grad = np.stack(np.gradient(phi, h, edge_order=2), -1)
    return grad, F - grad


def flow_jacobian(
    denoiser: Denoiser,
    x: torch.Tensor,
    ts,
    *,
    callback: Callable | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Integrate the PF-ODE $\dot x=v(x,t)$ from ``ts[0]`` down the grid ``ts``
    together with its Jacobian $Y=\partial x(t)/\partial x(t_0)$,
    $\dot Y=\partial_xv\,Y$, $Y(t_0)=I$ (Heun's method for the pair; $\partial_xv$ by
    autograd), chapter I.6.

    ``x`` (B, D); returns the end points (B, D) and $Y$ (B, D, D). ``callback``, if
    given, is called after every step with ``{"i", "t", "t_next", "x", "Y"}``. Normal
    directions of a data manifold contract like $\sigma_{t}/\sigma_{t_0}$, tangent
    ones do not (:func:`intrinsic_dimension` counts them)."""
    from .sampling import _prepare

    ts = _prepare(denoiser, x, ts)
    if x.dim() != 2:
        raise ValueError(f"x must have shape (B, D); got {tuple(x.shape)}")
    if ts[-1] == 0:
        raise ValueError("ts must end at a positive time (the PF-ODE is singular at 0)")
    C.optional_function(callback, "callback", "callback(dict)")
    B, D = x.shape
    Y = torch.eye(D, dtype=x.dtype, device=x.device).expand(B, D, D).clone()
    x = x.detach()
    for i, (t, s) in enumerate(zip(ts[:-1], ts[1:])):
        h = s - t
        k1, J1 = _field_and_jacobian(lambda z: denoiser._predict(z, t, "velocity"), x)
        k1, J1 = k1.detach(), J1.detach()
        x_pred, Y_pred = x + h * k1, Y + h * (J1 @ Y)
        k2, J2 = _field_and_jacobian(
            lambda z: denoiser._predict(z, s, "velocity"), x_pred
        )
        x = x + 0.5 * h * (k1 + k2.detach())
        Y = Y + 0.5 * h * (J1 @ Y + J2.detach() @ Y_pred)
        if callback is not None:
            callback({"i": i, "t": t, "t_next": s, "x": x, "Y": Y})
    return x, Y


def intrinsic_dimension(singular_values, min_ratio: float = 5.0) -> torch.Tensor:
    r"""The intrinsic dimension read off singular values (B, D) of a flow's Jacobian
    (chapter I.6): sorted in decreasing order $s_1\ge\dots\ge s_D$, the estimate is the
    $k$ with the largest ratio $s_k/s_{k+1}$ (the largest gap in $\log s$); if no ratio
    reaches ``min_ratio`` there is no collapsed direction and the estimate is $D$.
    Returns (B,) integers. The rule is the book's: Horvat and Pfister read the count off
    the singular-value trajectories; Stanczuk et al. take the largest absolute drop of
    the spectrum of a matrix of score vectors, with no threshold."""
    s = C.real_tensor(singular_values, "singular_values")
    if s.dim() != 2 or s.shape[1] < 2:
        raise ValueError(
            f"singular_values must have shape (B, D) with D >= 2; got {tuple(s.shape)}"
        )
    if bool((s < 0).any()):
        raise ValueError("singular_values must be non-negative")
    min_ratio = C.in_range(min_ratio, "min_ratio", 1.0, math.inf, hi_open=True)
    logs = s.sort(1, descending=True).values.clamp_min(1e-300).log()
    gaps = logs[:, :-1] - logs[:, 1:]
    best, k = gaps.max(1)
    full = torch.full_like(k, s.shape[1])
    return torch.where(best >= math.log(min_ratio), k + 1, full)


class UniformSphere:
    r"""The uniform distribution on the 2-sphere $\{Uy:\ y\in\mathbb R^3,|y|=R\}$ in
    $\mathbb R^D$ ($U$ a (D, 3) matrix with orthonormal columns), chapter I.6.

    Noised by $x_t=\alpha_tx_0+\sigma_t\epsilon$ its density is exact: with
    $u=U^\top x$ (the part in the sphere's 3-space) and
    $\kappa=\alpha_tR|u|/\sigma_t^2$,

    $$p_t(x)=N(x;0,\sigma_t^2I)\,e^{-\alpha_t^2R^2/(2\sigma_t^2)}\,
    \frac{\sinh\kappa}{\kappa},$$

    because $\int e^{\kappa\,\hat u\cdot y/R}\,dU(y)=\sinh\kappa/\kappa$ on the sphere,
    and the score is $-x/\sigma_t^2+\frac{\alpha_tR}{\sigma_t^2}
    \big(\coth\kappa-\tfrac1\kappa\big)\,U\hat u$. Float64 throughout.

    Args:
        basis: (D, 3) matrix with orthonormal columns, D >= 3.
        radius: R > 0.
    """

    def __init__(self, basis, radius: float = 1.0):
        U = C.real_tensor(basis, "basis")
        if U.dim() != 2 or U.shape[1] != 3 or U.shape[0] < 3:
            raise ValueError(
                f"basis must be a (D, 3) matrix with D >= 3; got {tuple(U.shape)}"
            )
        if float((U.T @ U - torch.eye(3, dtype=U.dtype)).abs().max()) > 1e-8:
            raise ValueError("basis must have orthonormal columns (U^T U = I)")
        self.basis, self.radius = U, C.positive(radius, "radius")

    def __repr__(self):
        return f"UniformSphere(D={self.dim}, radius={self.radius:g})"

    @property
    def dim(self) -> int:
        return self.basis.shape[0]

    def _check(self, x, t, schedule):
        C.schedule(schedule)
        if not torch.is_tensor(x) or x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be a tensor of shape (B, {self.dim})")
        C.batch(x, "x")
        t = C.check_time(t, x)
        if isinstance(t, float) and t == 0.0 or torch.is_tensor(t) and (t == 0).any():
            raise ValueError("t must be > 0: the data distribution has no density")
        return x, t

    def _terms(self, x, t, schedule):
        x = x.to(torch.float64)
        if isinstance(t, float):
            c = schedule._coefficients(t)
            a, s = c.alpha, c.sigma
        else:
            t = t.to(torch.float64)
            a = schedule._log_alpha(t).exp()[:, None]
            s = schedule._log_sigma(t).exp()[:, None]
        u = x @ self.basis
        nu = u.norm(dim=1, keepdim=True)
        kappa = a * self.radius * nu / s**2
        return x, a, s, u, nu, kappa

    def log_prob(self, x: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
        r"""$\log p_t(x)$, shape (B,), float64 (t > 0)."""
        x, t = self._check(x, t, schedule)
        x, a, s, u, nu, k = self._terms(x, t, schedule)
        D = self.dim
        k = k.clamp_min(1e-12)
        log_sinhc = k + torch.log1p(-torch.exp(-2 * k)) - math.log(2) - torch.log(k)
        log_sinhc = torch.where(k < 1e-4, k**2 / 6, log_sinhc)
        out = (
            -(x**2).sum(1, keepdim=True) / (2 * s**2)
            - 0.5 * D * torch.log(2 * math.pi * s**2 * torch.ones_like(k))
            - (a * self.radius) ** 2 / (2 * s**2)
            + log_sinhc
        )
        return out[:, 0]

    def score(self, x: torch.Tensor, t, schedule: Schedule) -> torch.Tensor:
        r"""$\nabla_x\log p_t(x)$, shape (B, D), float64 (t > 0)."""
        x, t = self._check(x, t, schedule)
        return self._score(x, t, schedule)

    def _score(self, x, t, schedule):
        x, a, s, u, nu, k = self._terms(x, t, schedule)
        small = k < 1e-3
        ks = torch.where(small, torch.ones_like(k), k)
        langevin = torch.where(small, k / 3, 1 / torch.tanh(ks) - 1 / ks)
        # coth(k) - 1/k = k/3 + O(k^3): (L/|u|) u stays smooth at u = 0
        nus = torch.where(small, torch.ones_like(nu), nu)
        coef = torch.where(small, a * self.radius / s**2 / 3, langevin / nus)
        return -x / s**2 + (a * self.radius / s**2) * coef * (u @ self.basis.T)

    def denoiser(self, schedule: Schedule) -> Denoiser:
        """The exact score wrapped as a :class:`dlib.param.Denoiser` (kind "score"),
        evaluated in float64 and returned in x's dtype."""
        C.schedule(schedule)
        return Denoiser(
            lambda x, t: self._score(x, t, schedule).to(x.dtype), schedule, "score"
        )

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n uniform points on the sphere, shape (n, D), float64."""
        n = C.positive_int(n, "n")
        C.generator(generator)
        y = torch.randn(n, 3, dtype=torch.float64, generator=generator)
        return self.radius * (y / y.norm(dim=1, keepdim=True)) @ self.basis.T
