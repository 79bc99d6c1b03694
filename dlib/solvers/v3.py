"""DPM-Solver-v3: empirical model statistics, the pseudo-order predictor and the
UniPC-style corrector (Part II, DPM-Solver-v3 chapter)."""

from __future__ import annotations

__all__: list[str] = []
