"""Masked sum ``B_K^T V``: for each bit, the sum of the value rows whose key code has it set.

``out[g, t, c] = sum_j (bit_t(codes[g, j]) ? v[g, j, c] : 0)`` (or the rows whose bit is clear,
``(1 - B_K)^T V``), and ``code_counts``: how many rows have each bit set. Both are adds and
selects only: the census of the generated LLVM IR and PTX finds no floating-point multiply.
References: ``binary_codes.masked_sum`` and ``binary_codes.code_counts``.
"""

from __future__ import annotations

from tvm import s_tir, te, tirx

from saddc.schedules.binary_codes import WORD_BITS, check_bits, code_counts, masked_sum
from saddc.schedules.register_accumulator import accumulate_in_registers

__all__ = ["masked_sum_te", "code_counts_te", "code_bit", "schedule", "schedule_cpu", "schedule_cuda",
           "reference", "reference_counts"]

SUM_BLOCK = "masked_sum"
COUNT_BLOCK = "code_counts"

reference = masked_sum
reference_counts = code_counts


def code_bit(codes: te.Tensor, g, row, t) -> tirx.PrimExpr:
    """Bit ``t`` of the packed code of ``codes[g, row]``, as a boolean."""
    word = codes[g, row, t // WORD_BITS] if int(codes.shape[2]) > 1 else codes[g, row, 0]
    position = tirx.Cast("uint32", t % WORD_BITS if int(codes.shape[2]) > 1 else t)
    return ((word >> position) & tirx.const(1, "uint32")) == tirx.const(1, "uint32")


def masked_sum_te(codes: te.Tensor, v: te.Tensor, bits: int, complement: bool = False) -> te.Tensor:
    """(G, bits, d) float32 from codes (G, N, W) uint32 and values (G, N, d) float32."""
    check_bits(bits)
    groups, rows, _ = codes.shape
    dim = v.shape[2]
    j = te.reduce_axis((0, rows), name="j")
    zero = tirx.const(0.0, "float32")

    def body(g, t, c):
        selected = code_bit(codes, g, j, t)
        if complement:
            selected = tirx.Not(selected)
        return te.sum(tirx.Select(selected, v[g, j, c], zero), axis=j)

    return te.compute((groups, bits, dim), body, name=SUM_BLOCK)


def code_counts_te(codes: te.Tensor, bits: int) -> te.Tensor:
    """(G, bits) float32: the number of rows with each bit set (exact below 2^24 rows)."""
    check_bits(bits)
    groups, rows, _ = codes.shape
    j = te.reduce_axis((0, rows), name="j")
    one, zero = tirx.const(1.0, "float32"), tirx.const(0.0, "float32")
    return te.compute(
        (groups, bits), lambda g, t: te.sum(tirx.Select(code_bit(codes, g, j, t), one, zero), axis=j),
        name=COUNT_BLOCK,
    )


def _main_block(sch: s_tir.Schedule):
    try:
        return sch.get_sblock(SUM_BLOCK)
    except s_tir.ScheduleError:
        return sch.get_sblock(COUNT_BLOCK)


def schedule_cpu(sch: s_tir.Schedule, bit_tile: int = 4, lanes: int = 8) -> None:
    """Tiles of ``bit_tile`` bits x ``lanes`` value columns in parallel, each accumulated in
    registers while the rows stream past: per row, one code load, then selects and vector adds.
    """
    block = _main_block(sch)
    loops = sch.get_loops(block)
    if len(loops) == 3:  # code_counts: (g, t, j)
        g, t, j = loops
        sch.parallel(sch.fuse(g, t))
        sch.decompose_reduction(block, j)
        return
    g, t, c, j = loops
    bit_tile = min(bit_tile, int(sch.get(t).extent))
    lanes = min(lanes, int(sch.get(c).extent))
    t_outer, t_inner = sch.split(t, [None, bit_tile])
    c_outer, c_inner = sch.split(c, [None, lanes])
    sch.reorder(g, t_outer, c_outer, j, t_inner, c_inner)
    tile = sch.fuse(g, t_outer, c_outer)
    sch.parallel(tile)
    sch.unroll(t_inner)
    sch.vectorize(c_inner)
    accumulate_in_registers(sch, block, tile, j, vectorized=True)


def schedule_cuda(sch: s_tir.Schedule, rows_per_chunk: int = 64) -> None:
    """Two stages, since N runs to thousands of rows while ``b x d`` is small:

    1. the rows are cut into chunks of ``rows_per_chunk``; a thread block per (group, chunk)
       has a thread per value column that keeps all ``b`` partial sums in registers (one
       code word read per row serves them all; value reads are coalesced across threads).
       For ``code_counts``, a thread per bit;
    2. a thread per output element adds the chunks' partial sums.
    """
    block = _main_block(sch)
    chunk, _ = sch.split(sch.get_loops(block)[-1], [None, rows_per_chunk])
    partial = sch.rfactor(chunk, 0)
    loops = sch.get_loops(partial)  # g, t, [c,] chunk, row: the original order
    g, t, chunk, row = loops[0], loops[1], loops[-2], loops[-1]
    if len(loops) == 5:
        thread = loops[2]
        sch.reorder(g, chunk, thread, row, t)
    else:
        thread = t
        sch.reorder(g, chunk, thread, row)
    sch.bind(sch.fuse(g, chunk), "blockIdx.x")
    sch.bind(thread, "threadIdx.x")
    if thread != t:
        sch.unroll(t)
    accumulate_in_registers(sch, partial, thread, row)
    out_block, out_thread = sch.split(sch.fuse(*sch.get_loops(block)[:-1]), [None, 128])
    sch.bind(out_block, "blockIdx.x")
    sch.bind(out_thread, "threadIdx.x")


def schedule(func: tirx.PrimFunc, target) -> s_tir.Schedule:
    sch = s_tir.Schedule(func)
    (schedule_cuda if target.kind.name == "cuda" else schedule_cpu)(sch)
    return sch
