"""SIMD width for CPU kernels whose vectorized loop must divide evenly (a predicated tail loop
cannot be vectorized)."""

from __future__ import annotations


def simd_lanes(extent: int, widest: int = 16) -> int:
    """The widest power of two up to ``widest`` that divides ``extent``."""
    lanes = widest
    while extent % lanes:
        lanes //= 2
    return lanes
