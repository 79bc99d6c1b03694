"""dlib: the small, tested library behind the executable textbook on diffusion models.

Not to be confused with PyPI's ``dlib`` (a C++ toolkit): this package is distributed
as ``diffbook-dlib`` and carries the marker attribute ``__book__`` so that notebooks can
check which ``dlib`` they imported.
"""

__version__ = "0.1.0"
# marker: notebooks assert this to be sure they imported this project
__book__ = "diffusion-book"

from . import (  # noqa: E402,F401
    analytic,
    consistency,
    data,
    discrete,
    fullscale,
    geometry,
    guidance,
    interpolants,
    lora,
    losses,
    mcmc,
    metrics,
    nets,
    operators,
    ot,
    param,
    plot,
    quant,
    runtime,
    sampling,
    schedules,
    solvers,
    train,
)
