"""SIMD width for CPU kernels whose vectorized loop must divide evenly (a predicated tail loop
cannot be vectorized)."""

from __future__ import annotations


def simd_lanes(extent: int, widest: int = 16) -> int:
    """The widest power of two up to ``widest`` that divides ``extent``."""
    lanes = widest
    while extent % lanes:
        lanes //= 2
    return lanes


def target_lanes(target) -> int:
    """float32 lanes of ``target``'s vector registers (16 with AVX-512, 8 with AVX2, 4 with SSE)."""
    from tvm.target.codegen import llvm_get_vector_width  # pylint: disable=import-outside-toplevel

    return max(llvm_get_vector_width(target) // 32, 4)
