"""``B_Q G``: each query row adds up the rows of G its code selects.

``out[g, i, c] = sum_t (bit_t(codes[g, i]) ? on_set[g, t, c] : on_clear[g, t, c])``, where either
side may be absent (zero): ``B_Q G1`` alone, or ``B_Q G1 + (1 - B_Q) G0`` for the match form.
Adds and selects only, no floating-point multiply. Reference: ``binary_codes.code_matmul``.
"""

from __future__ import annotations

from tvm import s_tir, te, tirx

from saddc.schedules.binary_codes import check_bits, code_matmul
from saddc.schedules.register_accumulator import accumulate_in_registers
from saddc.schedules.masked_sum import code_bit

__all__ = ["code_matmul_te", "schedule", "schedule_cpu", "schedule_cuda", "reference"]

BLOCK = "code_matmul"

reference = code_matmul


def code_matmul_te(codes: te.Tensor, on_set: te.Tensor | None, on_clear: te.Tensor | None, bits: int) -> te.Tensor:
    """(G, N, d) float32 from codes (G, N, W) uint32 and on_set/on_clear (G, bits, d) float32."""
    check_bits(bits)
    if on_set is None and on_clear is None:
        raise ValueError("code_matmul needs on_set, on_clear or both")
    groups, rows, _ = codes.shape
    dim = (on_set if on_set is not None else on_clear).shape[2]
    t = te.reduce_axis((0, bits), name="t")
    zero = tirx.const(0.0, "float32")

    def body(g, i, c):
        when_set = on_set[g, t, c] if on_set is not None else zero
        when_clear = on_clear[g, t, c] if on_clear is not None else zero
        return te.sum(tirx.Select(code_bit(codes, g, i, t), when_set, when_clear), axis=t)

    return te.compute((groups, rows, dim), body, name=BLOCK)


def schedule_cpu(sch: s_tir.Schedule, lanes: int = 16) -> None:
    """Query rows in parallel; per row the code word is read once, the bit loop is unrolled
    (constant shifts) and each bit selects a vector of G's row, added into registers."""
    block = sch.get_sblock(BLOCK)
    g, i, c, t = sch.get_loops(block)
    lanes = min(lanes, int(sch.get(c).extent))
    c_outer, c_inner = sch.split(c, [None, lanes])
    row = sch.fuse(g, i)
    sch.reorder(row, c_outer, t, c_inner)
    sch.parallel(row)
    sch.unroll(t)
    sch.vectorize(c_inner)
    accumulate_in_registers(sch, block, c_outer, t, vectorized=True)


def schedule_cuda(sch: s_tir.Schedule, rows_per_block: int = 4, max_threads_x: int = 128) -> None:
    """A thread per (row, value column); ``rows_per_block`` rows a thread block. The bit loop
    runs unrolled in each thread; G's rows are read coalesced across the column threads and
    shared by every row of the block through the cache."""
    block = sch.get_sblock(BLOCK)
    g, i, c, t = sch.get_loops(block)
    row_block, row_thread = sch.split(sch.fuse(g, i), [None, rows_per_block])
    column_outer, column_thread = sch.split(c, [None, min(max_threads_x, int(sch.get(c).extent))])
    sch.reorder(row_block, column_outer, row_thread, column_thread, t)
    sch.bind(sch.fuse(row_block, column_outer), "blockIdx.x")
    sch.bind(row_thread, "threadIdx.y")
    sch.bind(column_thread, "threadIdx.x")
    sch.unroll(t)
    accumulate_in_registers(sch, block, column_thread, t)


def schedule(func: tirx.PrimFunc, target) -> s_tir.Schedule:
    sch = s_tir.Schedule(func)
    (schedule_cuda if target.kind.name == "cuda" else schedule_cpu)(sch)
    return sch
