"""PNDM: pseudo numerical methods for diffusion models, S-PNDM and F-PNDM
(Part II, DDIM and PNDM chapter)."""

from __future__ import annotations

__all__: list[str] = []
