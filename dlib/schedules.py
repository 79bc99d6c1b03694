r"""Noise schedules: the pair $(\alpha_t, \sigma_t)$ of $x_t = \alpha_t x_0 + \sigma_t
\epsilon$, $t\in[0,1]$.

Every schedule is defined by $\log\alpha_t$ and $\log\sigma_t$ and their time
derivatives; all the rest (log-SNR $\lambda_t=\log(\alpha_t/\sigma_t)$, its inverse, the
SDE coefficients) follows here once. Data sit at $t=0$, noise at $t=1$.

* :class:`VPLinear`   variance preserving,
$\beta(t)=\beta_{min}+t(\beta_{max}-\beta_{min})$ (Score SDE's VP).
* :class:`VPCosine`   variance preserving, the cosine schedule of improved DDPM.
* :class:`VE`         variance exploding, $\alpha=1$, $\sigma$ geometric between
$\sigma_{min}$ and $\sigma_{max}$.
* :class:`LinearInterpolant`  $\alpha=1-t$, $\sigma=t$ (rectified flow / conditional OT
path).
* :class:`DiscreteVP` the DDPM chain $\bar\alpha_i=\prod_{j\le i}(1-\beta_j)$ as a
continuous schedule
  (log-alpha linear between the grid points $t_i=i/T$), so that a discrete model and a
  continuous solver see exactly the same $\alpha_t,\sigma_t$ on the grid.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._checks import (
    as_time,
    in_range,
    one_of,
    positive,
    positive_int,
    real_tensor,
    scalar_time,
)

__all__ = [
    "Schedule",
    "Coefficients",
    "VPLinear",
    "VPCosine",
    "VE",
    "LinearInterpolant",
    "DiscreteVP",
    "ddpm_betas",
    "get_schedule",
    "SCHEDULES",
]


class Coefficients(NamedTuple):
    r"""$(\alpha_t, \sigma_t, \dot\alpha_t, \dot\sigma_t)$: every coefficient a sampler
    step needs, from one call of :meth:`Schedule.coefficients`. Python floats for a
    single time, tensors for a tensor of times."""

    alpha: float | torch.Tensor
    sigma: float | torch.Tensor
    d_alpha: float | torch.Tensor
    d_sigma: float | torch.Tensor


class Schedule:
    """Interface shared by all schedules. Subclasses implement ``_log_alpha``,
    ``_log_sigma``, their time derivatives and the inverse of the log-SNR.

    Public methods validate their time argument; the underscored ones trust it (the
    samplers' inner loops call those, see :mod:`dlib._checks`)."""

    name = "schedule"
    variance_preserving = False

    # --- to implement
    # -------------------------------------------------------------------
    def _log_alpha(
        self, t: torch.Tensor
    ) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _log_sigma(
        self, t: torch.Tensor
    ) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _d_log_alpha(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _d_log_sigma(self, t: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _t_from_log_snr(self, lam: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    # --- derived, unchecked
    # ---------------------------------------------------------------
    def _d_alpha(self, t):
        return self._log_alpha(t).exp() * self._d_log_alpha(t)

    def _d_sigma(self, t):
        return self._log_sigma(t).exp() * self._d_log_sigma(t)

    def _sde(self, t):
        # g^2 = d(sigma^2)/dt - 2 f sigma^2, written with sigma * d sigma/dt so that it
        # stays finite where sigma_t = 0 (the form -2 sigma^2 d lambda/dt is 0 * inf
        # there)
        f = self._d_log_alpha(t)
        sig = self._log_sigma(t).exp()
        return f, 2.0 * sig * self._d_sigma(t) - 2.0 * sig**2 * f

    def _coefficients(self, t) -> Coefficients:
        """Unchecked :meth:`coefficients`; a float time is served from a small cache."""
        if isinstance(t, float):
            cache = self.__dict__.setdefault("_coefficient_cache", {})
            c = cache.get(t)
            if c is None:
                tt = torch.tensor(t, dtype=torch.float64)
                c = Coefficients(
                    float(self._log_alpha(tt).exp()),
                    float(self._log_sigma(tt).exp()),
                    float(self._d_alpha(tt)),
                    float(self._d_sigma(tt)),
                )
                if len(cache) >= 100_000:
                    cache.clear()
                cache[t] = c
            return c
        return Coefficients(
            self._log_alpha(t).exp(),
            self._log_sigma(t).exp(),
            self._d_alpha(t),
            self._d_sigma(t),
        )

    # --- public interface
    # -----------------------------------------------------------------
    def alpha(self, t) -> torch.Tensor:
        r"""Signal scale $\alpha_t$."""
        return self._log_alpha(as_time(t)).exp()

    def sigma(self, t) -> torch.Tensor:
        r"""Noise scale $\sigma_t$."""
        return self._log_sigma(as_time(t)).exp()

    def coefficients(self, t) -> Coefficients:
        r"""$(\alpha_t,\sigma_t,\dot\alpha_t,\dot\sigma_t)$ in one call: Python floats
        for a single time (a number or a 0-d tensor), tensors for a tensor of times.
        Introduced in chapter 1; the samplers use it once per step."""
        if torch.is_tensor(t) and t.dim() > 0:
            return self._coefficients(as_time(t))
        return self._coefficients(scalar_time(t))

    def log_snr(self, t) -> torch.Tensor:
        r"""Half log signal-to-noise ratio $\lambda_t=\log\alpha_t-\log\sigma_t$
        (decreasing in t; $+\infty$ where $\sigma_t=0$, $-\infty$ where
        $\alpha_t=0$)."""
        t = as_time(t)
        return self._log_alpha(t) - self._log_sigma(t)

    def t_from_log_snr(self, lam) -> torch.Tensor:
        r"""Inverse of :meth:`log_snr`: the time $t$ with $\lambda_t = $ ``lam``."""
        lam = real_tensor(lam, "lam", dtype=None, check_finite=False)
        if bool(torch.isnan(lam).any()):
            raise ValueError("lam (log-SNR values) must not be NaN")
        lo, hi = self.log_snr_range()
        tol_lo, tol_hi = 1e-9 * max(1.0, abs(lo)), 1e-9 * max(1.0, abs(hi))
        if bool(((lam < lo - tol_lo) | (lam > hi + tol_hi)).any()):
            raise ValueError(
                f"log-SNR must lie in [{lo:.6g}, {hi:.6g}] for {self!r}; got "
                f"values from {lam.min().item():.6g} to {lam.max().item():.6g}"
            )
        return self._t_from_log_snr(lam).clamp(0.0, 1.0)

    def log_snr_range(self) -> tuple[float, float]:
        """(lambda at t=1, lambda at t=0): the values :meth:`t_from_log_snr` accepts."""
        ends = self.log_snr(torch.tensor([1.0, 0.0], dtype=torch.float64))
        return float(ends[0]), float(ends[1])

    def d_alpha(self, t) -> torch.Tensor:
        r"""$\dot\alpha_t = d\alpha_t/dt$."""
        return self._d_alpha(as_time(t))

    def d_sigma(self, t) -> torch.Tensor:
        r"""$\dot\sigma_t = d\sigma_t/dt$ ($+\infty$ at $t=0$ for VP schedules, where
        $\sigma_t\approx\sqrt{\beta(0)\,t}$)."""
        return self._d_sigma(as_time(t))

    def d_log_snr(self, t) -> torch.Tensor:
        r"""$\dot\lambda_t$ (negative)."""
        t = as_time(t)
        return self._d_log_alpha(t) - self._d_log_sigma(t)

    def sde(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        r"""Drift coefficient $f(t)=\dot\alpha_t/\alpha_t$ and squared diffusion
        $g^2(t)=\frac{d\sigma_t^2}{dt}-2f(t)\sigma_t^2=-2\sigma_t^2\dot\lambda_t$ of the
        forward SDE $dx = f(t)\,x\,dt + g(t)\,dW$ whose marginals are those of this
        schedule."""
        return self._sde(as_time(t))

    def _pair(self, s, t):
        s, t = as_time(s, name="s"), as_time(t)
        try:
            torch.broadcast_shapes(s.shape, t.shape)
        except RuntimeError:
            raise ValueError(
                f"s and t must have broadcastable shapes; got {tuple(s.shape)} "
                f"and {tuple(t.shape)}"
            ) from None
        if bool((s > t).any()):
            raise ValueError("need s <= t (s is the less noisy time)")
        return s, t

    def transition(self, s, t) -> tuple[torch.Tensor, torch.Tensor]:
        r"""$(\alpha_{t|s}, \sigma^2_{t|s})$ of the forward kernel
        $q(x_t\mid x_s)=N(\alpha_{t|s}x_s,\sigma_{t|s}^2I)$, $s\le t$:
        $\alpha_{t|s}=\alpha_t/\alpha_s$,
        $\sigma_{t|s}^2=\sigma_t^2-\alpha_{t|s}^2\sigma_s^2$ (the identity kernel when
        $s=t$)."""
        s, t = self._pair(s, t)
        return self._transition(s, t)

    def _transition(self, s, t):
        same = s == t
        a_ts = torch.where(same, 1.0, (self._log_alpha(t) - self._log_alpha(s)).exp())
        var = (2 * self._log_sigma(t)).exp() - a_ts**2 * (2 * self._log_sigma(s)).exp()
        return a_ts, torch.where(same, 0.0, var.clamp_min(0.0))

    def posterior(self, s, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""The backward posterior
        $q(x_s\mid x_t,x_0)=N(a_{s|t}x_t+b_{s|t}x_0,\ \tilde\sigma^2_{s|t}I)$, $s\le t$:
        $a_{s|t}=\alpha_{t|s}\sigma_s^2/\sigma_t^2$,
        $b_{s|t}=\alpha_s\sigma_{t|s}^2/\sigma_t^2$,
        $\tilde\sigma^2_{s|t}=\sigma_{t|s}^2\sigma_s^2/\sigma_t^2$ (and $(1, 0, 0)$ when
        $s=t$). Returns ``(a, b, var)``."""
        s, t = self._pair(s, t)
        a_ts, var_ts = self._transition(s, t)
        sig2_s, sig2_t = (2 * self._log_sigma(s)).exp(), (2 * self._log_sigma(t)).exp()
        same = s == t
        a = torch.where(same, 1.0, a_ts * sig2_s / sig2_t)
        b = torch.where(same, 0.0, self._log_alpha(s).exp() * var_ts / sig2_t)
        var = torch.where(same, 0.0, var_ts * sig2_s / sig2_t)
        return a, b, var

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}({args})"

    def _params(self) -> dict:
        return {}


class _VP(Schedule):
    r"""Variance preserving: $\sigma_t^2 = 1-\alpha_t^2$; subclasses give $\log\alpha_t$
    and its inverse."""

    variance_preserving = True

    def _log_sigma(self, t):
        return 0.5 * torch.log(torch.expm1(2.0 * self._log_alpha(t)).abs())

    def _d_log_sigma(self, t):
        a = self._log_alpha(t)
        # sigma^2 = 1 - alpha^2 = |expm1(2 log alpha)|; abs() keeps the zero at t = 0
        # positive (-expm1(0) is -0.0, which would flip the sign of the infinity)
        return -torch.exp(2.0 * a) * self._d_log_alpha(t) / torch.expm1(2.0 * a).abs()

    def _d_sigma(self, t):
        # d sigma/dt = -alpha^2 (d log alpha/dt) / sigma: +inf at t = 0 (sigma ~
        # sqrt(beta t)), where sigma * d log sigma/dt would be 0 * inf
        a = self._log_alpha(t)
        return -torch.exp(2.0 * a) * self._d_log_alpha(t) / self._log_sigma(t).exp()

    def _sde(self, t):
        # for VP, g^2 = d sigma^2/dt - 2 f sigma^2 = -2 (d log alpha/dt)(alpha^2 +
        # sigma^2) = -2 d log alpha/dt, finite at t = 0 too
        f = self._d_log_alpha(t)
        return f, -2.0 * f

    def _t_from_log_snr(self, lam):
        # for VP, alpha^2 = sigmoid(2 lambda), so log alpha = -softplus(-2 lambda) / 2
        return self._t_from_log_alpha(-0.5 * F.softplus(-2.0 * lam))

    def _t_from_log_alpha(self, a):  # pragma: no cover - abstract
        raise NotImplementedError


class VPLinear(_VP):
    r"""VP schedule with linear $\beta(t)$:
    $\log\alpha_t=-\tfrac14 t^2(\beta_{max}-\beta_{min})-\tfrac12 t\beta_{min}$.

    The defaults (0.1, 20) are the continuous twin of DDPM's linear betas
    $10^{-4}\to0.02$ over 1000 steps."""

    name = "vp_linear"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        self.beta_min = positive(beta_min, "beta_min")
        self.beta_max = positive(beta_max, "beta_max")
        if self.beta_max < self.beta_min:
            raise ValueError(
                f"beta_max must be >= beta_min; got beta_min={beta_min}, "
                f"beta_max={beta_max}"
            )

    def _params(self):
        return {"beta_min": self.beta_min, "beta_max": self.beta_max}

    def beta(self, t) -> torch.Tensor:
        r"""$\beta(t)=\beta_{min}+t(\beta_{max}-\beta_{min})$."""
        t = as_time(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _log_alpha(self, t):
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def _d_log_alpha(self, t):
        return -0.5 * (self.beta_min + t * (self.beta_max - self.beta_min))

    def _t_from_log_alpha(self, a):
        d = self.beta_max - self.beta_min
        if d == 0:
            return -2.0 * a / self.beta_min
        return (-self.beta_min + torch.sqrt(self.beta_min**2 - 4.0 * d * a)) / d


class VPCosine(_VP):
    r"""Cosine schedule (Nichol & Dhariwal 2021):
    $\alpha_t=\cos(\phi_t)/\cos(\phi_0)$, $\phi_t=\frac{t+s}{1+s}\frac\pi2$.

    $\alpha_1$ is 0 up to round-off ($\lambda_1\approx-37$): the log-SNR grids of
    :func:`dlib.sampling.time_grid` clip $\lambda$ from below, as production samplers
    do."""

    name = "vp_cosine"

    def __init__(self, s: float = 0.008):
        self.s = positive(s, "s")

    def _params(self):
        return {"s": self.s}

    def _phi(self, t):
        return (t + self.s) / (1.0 + self.s) * (math.pi / 2)

    # Computed in float64 whatever t's dtype: in float32, phi(1) rounds to just above
    # pi/2, where cos and tan change sign (log alpha_1 = -inf, d log alpha/dt > 0).
    def _log_alpha(self, t):
        if t.dtype != torch.float64:
            return self._log_alpha(t.double()).to(t.dtype)
        cos = torch.cos(self._phi(t)).clamp_min(1e-300)
        la = torch.log(cos) - math.log(math.cos(self._phi(0.0)))
        return la.clamp_max(0.0)  # exactly 0 at t=0 despite rounding

    def _d_log_alpha(self, t):
        if t.dtype != torch.float64:
            return self._d_log_alpha(t.double()).to(t.dtype)
        return -torch.tan(self._phi(t)) * (math.pi / 2) / (1.0 + self.s)

    def _t_from_log_alpha(self, a):
        phi = torch.arccos((a.exp() * math.cos(self._phi(0.0))).clamp(-1.0, 1.0))
        return phi * 2.0 * (1.0 + self.s) / math.pi - self.s

    def log_snr_range(self):
        lam0 = float(self.log_snr(torch.tensor(0.0, dtype=torch.float64)))
        return -math.inf, lam0


class VE(Schedule):
    r"""Variance exploding: $\alpha_t=1$,
    $\sigma_t=\sigma_{min}(\sigma_{max}/\sigma_{min})^t$ (note
    $\sigma_0=\sigma_{min}>0$)."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        self.sigma_min = positive(sigma_min, "sigma_min")
        self.sigma_max = positive(sigma_max, "sigma_max")
        if self.sigma_max <= self.sigma_min:
            raise ValueError(
                f"sigma_max must exceed sigma_min; got {sigma_min}, {sigma_max}"
            )
        self._rate = math.log(self.sigma_max / self.sigma_min)

    def _params(self):
        return {"sigma_min": self.sigma_min, "sigma_max": self.sigma_max}

    def _log_alpha(self, t):
        return torch.zeros_like(t)

    def _d_log_alpha(self, t):
        return torch.zeros_like(t)

    def _log_sigma(self, t):
        return math.log(self.sigma_min) + t * self._rate

    def _d_log_sigma(self, t):
        return torch.full_like(t, self._rate)

    def _t_from_log_snr(self, lam):
        return (-lam - math.log(self.sigma_min)) / self._rate


class LinearInterpolant(Schedule):
    r"""The straight path $x_t=(1-t)x_0+t\epsilon$ of rectified flow;
    $\lambda_t=\log\frac{1-t}{t}$."""

    name = "linear"

    def _log_alpha(self, t):
        return torch.log1p(-t)

    def _d_log_alpha(self, t):
        return -1.0 / (1.0 - t)

    def _log_sigma(self, t):
        return torch.log(t)

    def _d_log_sigma(self, t):
        return 1.0 / t

    def _t_from_log_snr(self, lam):
        return torch.sigmoid(-lam)

    def _d_alpha(
        self, t
    ):  # exactly -1, also at t = 1 (where alpha d log alpha is 0 * inf)
        return -torch.ones_like(t)

    def _d_sigma(self, t):  # exactly 1, also at t = 0
        return torch.ones_like(t)

    def log_snr_range(self):
        return -math.inf, math.inf


def ddpm_betas(
    kind: str = "linear",
    T: int = 1000,
    *,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    s: float = 0.008,
    max_beta: float = 0.999,
) -> torch.Tensor:
    r"""The per-step variances $\beta_1..\beta_T$ of a discrete DDPM chain (float64).

    ``"linear"``: Ho et al. (2020), ``linspace(beta_start, beta_end, T)`` (their values
    are for T=1000). ``"cosine"``: Nichol & Dhariwal (2021),
    $\beta_i=\min(1-\bar\alpha(i/T)/\bar\alpha((i-1)/T),\ \text{max\_beta})$."""
    one_of(kind, ("linear", "cosine"), "beta schedule")
    T = positive_int(T, "T")
    if kind == "linear":
        in_range(beta_start, "beta_start", 0.0, 1.0, lo_open=True, hi_open=True)
        in_range(beta_end, "beta_end", 0.0, 1.0, lo_open=True, hi_open=True)
        return torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
    s = positive(s, "s")
    max_beta = in_range(max_beta, "max_beta", 0.0, 1.0, lo_open=True, hi_open=True)
    t = torch.arange(T + 1, dtype=torch.float64) / T
    abar = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


class DiscreteVP(_VP):
    r"""The DDPM chain with betas $\beta_1..\beta_T$, as a continuous VP schedule.

    On the grid $t_i=i/T$: $\alpha_{t_i}^2=\bar\alpha_i=\prod_{j\le i}(1-\beta_j)$ (and
    $\alpha_0=1$). Between grid points $\log\alpha_t$ is linear (as in DPM-Solver's
    treatment of discrete models), so $\dot\alpha_t$ jumps at every grid point:
    integrate ODEs in $\lambda$, where the same curve is smooth
    (:func:`dlib.sampling.sample_ode` does). Beware the notation clash: DDPM's per-step
    $\alpha_i=1-\beta_i$ is *not* our $\alpha_t$."""

    name = "discrete_vp"

    def __init__(self, betas: torch.Tensor):
        betas = real_tensor(betas, "betas", check_finite=False)
        if betas.dim() != 1 or betas.numel() < 1:
            raise ValueError(
                f"betas must be a non-empty 1-D tensor; got shape {tuple(betas.shape)}"
            )
        if not bool(((betas > 0) & (betas < 1)).all()):
            bad = betas[~((betas > 0) & (betas < 1))][:3].tolist()
            raise ValueError(
                f"betas must lie strictly between 0 and 1; got values such as {bad}"
            )
        self.betas = betas
        self.T = betas.numel()
        steps = 0.5 * torch.cumsum(torch.log1p(-betas), 0)
        self.log_alphas = torch.cat([torch.zeros(1, dtype=torch.float64), steps])

    def _params(self):
        return {"T": self.T}

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        r"""$\bar\alpha_1..\bar\alpha_T$ (DDPM's notation)."""
        return torch.exp(2 * self.log_alphas[1:])

    def times(self) -> torch.Tensor:
        """The grid t_i = i/T for i = 0..T (float64)."""
        return torch.arange(self.T + 1, dtype=torch.float64) / self.T

    def _segment(self, t):
        return (t * self.T).floor().long().clamp(0, self.T - 1)

    def _log_alpha(self, t):
        la = self.log_alphas.to(device=t.device, dtype=t.dtype)
        i = self._segment(t)
        w = t * self.T - i.to(t.dtype)
        return la[i] + w * (la[i + 1] - la[i])

    def _d_log_alpha(self, t):
        la = self.log_alphas.to(device=t.device, dtype=t.dtype)
        i = self._segment(t)
        return (la[i + 1] - la[i]) * self.T

    def _t_from_log_alpha(self, a):
        neg = -self.log_alphas.to(device=a.device, dtype=a.dtype)  # increasing in i
        i = (torch.searchsorted(neg, (-a).contiguous()) - 1).clamp(0, self.T - 1)
        w = (-a - neg[i]) / (neg[i + 1] - neg[i])
        return (i.to(a.dtype) + w) / self.T


SCHEDULES = {
    "vp_linear": VPLinear,
    "vp_cosine": VPCosine,
    "ve": VE,
    "linear": LinearInterpolant,
    "rectified_flow": LinearInterpolant,
    "ddpm_linear": lambda T=1000, **kw: DiscreteVP(ddpm_betas("linear", T, **kw)),
    "ddpm_cosine": lambda T=1000, **kw: DiscreteVP(ddpm_betas("cosine", T, **kw)),
}


def get_schedule(name: str, **kwargs) -> Schedule:
    """Build a schedule by name (see ``SCHEDULES``), e.g.
    ``get_schedule("vp_linear", beta_max=20)``."""
    one_of(name, SCHEDULES, "schedule")
    try:
        return SCHEDULES[name](**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad options for schedule {name!r}: {exc}") from None
