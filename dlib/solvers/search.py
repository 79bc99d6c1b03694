"""Solver-schedule search (USF/S3): the unified per-step decisions of a fast solver
and a search over them (Part II, solver-schedule search chapter)."""

from __future__ import annotations

__all__: list[str] = []
