r"""Fast ODE solvers for the probability-flow ODE: exponential integrators in the
half log-SNR $\lambda=\log(\alpha_t/\sigma_t)$ (introduced in Part II, DPM-Solver
chapter).

In $\lambda$ the PF-ODE is semi-linear and its linear part integrates exactly. From
$x_t$ at time $t$ to time $s<t$, with $h=\lambda_s-\lambda_t>0$,

$$x_s=\frac{\alpha_s}{\alpha_t}x_t-\sigma_s\sum_{k\ge0}h^{k+1}\varphi_{k+1}(h)\,
\hat\epsilon^{(k)}_t \quad\text{(noise prediction)},$$

$$x_s=\frac{\sigma_s}{\sigma_t}x_t+\alpha_s\sum_{k\ge0}h^{k+1}\varphi_{k+1}(-h)\,
\hat x_0^{(k)}{}_t \quad\text{(data prediction)},$$

where $\hat\epsilon^{(k)}$ is the k-th derivative in $\lambda$ and
$\varphi_k(h)=\int_0^1 e^{(1-\theta)h}\theta^{k-1}/(k-1)!\,d\theta$ (:func:`phi`).
Keeping the first term is the DDIM step (:func:`first_order_step`, identical in both
forms); a solver of order k estimates the next k-1 derivatives by finite differences
of the model at intermediate points (singlestep, Runge-Kutta-like) or at past grid
points (multistep, Adams-like). :func:`step_orders` holds the rule for the order of
each step. The samplers have the signature shape of :mod:`dlib.sampling` and call the
denoiser's unchecked fast path; ``Denoiser.nfe`` counts their network calls.
"""

from . import _core, benchmark, deis, dpm, pndm, search, v3
from ._core import *  # noqa: F401,F403
from .benchmark import *  # noqa: F401,F403
from .deis import *  # noqa: F401,F403
from .dpm import *  # noqa: F401,F403
from .pndm import *  # noqa: F401,F403
from .search import *  # noqa: F401,F403
from .v3 import *  # noqa: F401,F403

__all__ = (
    _core.__all__ + dpm.__all__ + deis.__all__ + pndm.__all__ + v3.__all__
    + search.__all__ + benchmark.__all__
)
