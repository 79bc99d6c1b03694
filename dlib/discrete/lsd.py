"""Learnable sampler distillation (LSD, LSD+) for discrete diffusion (chapter III.2).

Stub: filled in by the chapter."""

__all__: list[str] = []
