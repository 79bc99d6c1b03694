"""Discrete-state diffusion (Part III): corruption processes built on a rate matrix
and a scalar keep-probability, categorical denoisers, losses, samplers, exact
oracles, learned sampler distillation (LSD) and anchored posterior sampling (APS)."""

from . import aps, lsd, oracle, process, samplers
from .aps import *  # noqa: F401,F403
from .lsd import *  # noqa: F401,F403
from .oracle import *  # noqa: F401,F403
from .process import *  # noqa: F401,F403
from .samplers import *  # noqa: F401,F403

__all__ = (
    process.__all__ + samplers.__all__ + oracle.__all__ + lsd.__all__ + aps.__all__
)
