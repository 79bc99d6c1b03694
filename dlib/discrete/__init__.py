"""Discrete-state diffusion (Part III): corruption processes built on a rate matrix
and a scalar keep-probability, categorical denoisers, losses, samplers and exact
oracles."""

from . import oracle, process, samplers
from .oracle import *  # noqa: F401,F403
from .process import *  # noqa: F401,F403
from .samplers import *  # noqa: F401,F403

__all__ = process.__all__ + samplers.__all__ + oracle.__all__
