"""Anchored posterior sampling (APS) for masked discrete diffusion (chapter III.3).

Stub: filled in by the chapter."""

__all__: list[str] = []
