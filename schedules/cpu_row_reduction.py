"""A DLight rule for the CPU: row-wise reductions (softmax, layer norm), functions whose
reduction blocks each reduce the innermost axis of the rows that the last block then writes.

    for row in parallel(rows):                  the output's leading loops, fused
        m = reduce(x[row, :])                   each reduction at its row: the row stays in L1
        s = reduce(f(x[row, :], m))             (in vector lanes, partial results then a
        out[row, :] = g(x[row, :], m, s)         horizontal step), each row step in vectors

A row that the vector width does not divide (the 197 tokens of a ViT's attention) runs in
whole vectors and a scalar tail; its reductions keep one accumulator a lane, bound-checked.
That made DeiT-Tiny's softmax about 3x faster (one thread: 132 -> 38-43 us) than running its
197-wide rows one scalar at a time, as this rule did while it vectorized only rows the width
divides.

Injective steps read by one block are inlined into it; those read by several (a softmax's
exp, read by the sum and the normalization) are computed once a row into a row buffer (2.7x
faster than computing the exp again, on DeiT-Tiny's softmax). DLight's generic CPU reduction
rule, which ran these before, took twice as long on that softmax and six times on the layer
norm. Functions that do not fit fall through to the next rule.
"""

from __future__ import annotations

from tvm import s_tir, tirx

from saddc.schedules.cpu_rule import CPUBlocksRule
from saddc.schedules.simd import target_lanes, vector_lanes, vectorize_with_tail


class CPURowReduction(CPUBlocksRule):
    """Softmax- and layer-norm-like functions, one parallel pass over rows (see the module doc)."""

    def schedule_blocks(self, sch, infos, target):
        if not infos[-1].is_injective():
            return None
        rows = len(infos[-1].dom_kind()) - 1
        reductions = [info for info in infos if not info.is_injective()]
        if rows < 1 or not reductions or any(info.dom_kind() != "S" * rows + "R" for info in reductions):
            return None
        lanes = target_lanes(target)
        try:
            for info in infos[:-1]:
                if info.is_injective() and len(sch.get_consumers(info.block_rv)) == 1:
                    sch.compute_inline(info.block_rv)
            if not _row_aligned(sch, rows):
                return None
            partials = [_partial_sums(sch, info.block_rv, lanes) for info in reductions]
            # One row loop for every block: their row loops merged (compute_at would rebuild
            # the loops of an rfactor block with a tail and drop its bound check).
            blocks = sch.get_child_blocks(sch.get_sblock("root"))
            sch.parallel(sch.merge(*[sch.fuse(*sch.get_loops(block)[:rows]) for block in blocks]))
            for block in blocks:
                loops = sch.get_loops(block)
                if len(loops) > 1 and _is_injective(sch, block):  # not the per-row steps
                    vectorize_with_tail(sch, loops[-1], lanes)
            for partial, whole_vectors in partials:
                if whole_vectors:
                    _vectorize_partial_sums(sch, partial)
                elif partial is not None:
                    # Bound-checked lanes, which the vectorize primitive rejects: unrolled, the
                    # lanes' independent steps are left to LLVM to combine (1.6x faster than a
                    # loop over them on DeiT-Tiny's softmax).
                    sch.unroll(sch.get_loops(partial)[-1])
        except s_tir.ScheduleError:
            return None
        return sch


def _row_aligned(sch: s_tir.Schedule, rows: int) -> bool:
    """Whether each row of the output needs only what the other blocks compute at that row,
    which merging their row loops assumes: every buffer the function computes is written and
    read, in its leading dimensions (unit ones aside), at its blocks' own leading ``rows``
    iteration variables (the row's index). (A sum over tokens read at every token is not.)"""
    computed = list(sch.get(sch.get_sblock("root")).alloc_buffers)
    for block in map(sch.get, sch.get_child_blocks(sch.get_sblock("root"))):
        row_vars = [var.var for var in block.iter_vars[:rows]]
        for region in [*block.reads, *block.writes]:
            if not any(region.source.same_as(buffer) for buffer in computed):
                continue
            spans = [span for span, size in zip(region.region, region.source.ty.shape) if not _is_one(size)]
            if not all(span.min.same_as(var) and _is_one(span.extent) for span, var in zip(spans[:rows], row_vars)):
                return False
    return True


def _is_one(value) -> bool:
    return isinstance(value, tirx.IntImm) and int(value) == 1


def _is_injective(sch: s_tir.Schedule, block) -> bool:
    return all(var.iter_type == tirx.IterVar.DataPar for var in sch.get(block).iter_vars)


def _partial_sums(sch: s_tir.Schedule, block, lanes: int):
    """The reduction of ``block`` into partial results, one a vector lane (an rfactor; ``block``
    then reduces the lanes): ``(partial block, whether the lanes divide the row)``. A row the
    lanes do not divide keeps a bound check in the partial block, which TVM's schedule takes for
    a non-affine block and will not vectorize; its lanes are still independent accumulators,
    where the plain loop was one chain of dependent steps. ``(None, False)``, the loop left
    scalar, where fewer than four lanes fit (``simd.vector_lanes``)."""
    loop = sch.get_loops(block)[-1]
    lanes, tail = vector_lanes(sch.get(loop).extent, lanes)
    if lanes < 4:
        return None, False
    return sch.rfactor(sch.split(loop, [None, lanes])[1], factor_axis=0), not tail


def _vectorize_partial_sums(sch: s_tir.Schedule, partial) -> None:
    """The lanes of an rfactor block (its innermost loop) vectorized, its initialization too
    (split off after: then two blocks write the partial results, which vectorize rejects)."""
    vectors, lane = sch.get_loops(partial)[-2:]
    sch.vectorize(lane)
    init = sch.decompose_reduction(partial, vectors)
    sch.vectorize(sch.get_loops(init)[-1])
