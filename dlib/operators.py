"""Forward operators of inverse problems (measurement models y = A(x) + noise) on
batches of square images, first used by chapter III.3 (anchored posterior sampling).

Stub: filled in by the chapter."""

__all__: list[str] = []
