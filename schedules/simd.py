"""SIMD width for CPU kernels, and loops split into vector lanes. TVM vectorizes no loop whose
body carries a lane-dependent condition (it runs such a loop one scalar at a time), so a loop
whose extent the vector width does not divide is vectorized in whole vectors and a tail."""

from __future__ import annotations

from tvm import tirx


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


def vector_lanes(extent, widest: int) -> tuple[int, bool]:
    """``(lanes, tail)`` to split a loop of ``extent`` into vectors: the widest lanes up to
    ``widest`` that divide it; where those are fewer than four and the loop spans a whole vector
    of ``widest``, ``widest`` lanes and a partial last vector (``tail``: the 197 tokens of a
    ViT's attention, 12 vectors and 5 scalars, where a divisor split ran all 197 scalar);
    ``(1, False)`` for a symbolic extent."""
    if not isinstance(extent, tirx.IntImm):
        return 1, False
    lanes = simd_lanes(int(extent), widest)
    if lanes < 4 and int(extent) > widest:
        return widest, True
    return lanes, False


def vectorize_with_tail(sch, loop, widest: int) -> None:
    """Vectorize ``loop`` (an innermost loop) in the lanes of ``vector_lanes``; a partial last
    vector goes to a loop of its own (``loop_partition``), which runs scalar, so that no whole
    vector carries a lane check."""
    extent = sch.get(loop).extent
    lanes, tail = vector_lanes(extent, widest)
    if lanes == 1:
        return
    vectors, lane = sch.split(loop, [None, lanes])
    sch.vectorize(lane)
    if tail:
        sch.loop_partition(vectors, [int(extent) // lanes, None])
