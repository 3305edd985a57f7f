"""Accumulating a reduction in registers: the pattern every saddc add kernel shares.

The reduction block writes into a local (register) buffer that lives at loop ``at``; the buffer
is zeroed before the reduction loop and written back once, after it. On the CPU the innermost
loops of the zeroing and the write-back are vectorized like the reduction's own.
"""

from __future__ import annotations

from tvm import s_tir


def accumulate_in_registers(sch: s_tir.Schedule, block: s_tir.SBlockRV, at: s_tir.LoopRV,
                            reduction: s_tir.LoopRV, vectorized: bool = False) -> None:
    """Caches ``block``'s output in registers at ``at`` and splits its init off before
    ``reduction``. Loop annotations (vectorize, unroll) must be made before this call: a
    vectorized reduction loop cannot be vectorized after ``decompose_reduction``."""
    accumulator = sch.cache_write(block, 0, "local")
    sch.reverse_compute_at(accumulator, at)
    init = sch.decompose_reduction(block, reduction)
    if vectorized:
        sch.vectorize(sch.get_loops(init)[-1])
        sch.vectorize(sch.get_loops(accumulator)[-1])
