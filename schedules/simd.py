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
    """float32 lanes of ``target``'s vector registers: 16 with AVX-512, 8 with AVX, else 4 (SSE,
    NEON). Read off the target CPU's features: TVM 0.27's ``llvm_get_vector_width`` answers 512
    for every x86-64 CPU, haswell and plain x86-64 included (seen on a Zen 5 host)."""
    from tvm.target.codegen import llvm_get_cpu_features  # pylint: disable=import-outside-toplevel

    features = llvm_get_cpu_features(target)
    if "avx512f" in features:
        return 16
    return 8 if "avx" in features else 4
