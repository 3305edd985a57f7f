"""A DLight rule for the CPU: injective functions (elementwise ops, broadcasts, transposes,
reshapes, concatenations, gathers), which a legalized module runs on one thread, one scalar at
a time.

Every block but the last is inlined into its consumers, so the function makes one pass over
its output; that pass runs its leading loops fused and parallel (as few as give ``TASKS``
iterations: each fused loop costs an integer division per iteration to recover its indices,
which dominates when the inner loops are short, as in an im2col's) and its innermost loop in
vector lanes: the widest that divide it, or, where none of at least four does (a ViT's 197
tokens), whole vectors and a partial last one in a loop of its own. A transpose (the
innermost dimension of an input indexed by an outer loop) runs in LANES x LANES tiles, that
loop split to LANES rows just outside the vector loop: the LANES input rows a tile reads stay
in cache while it writes LANES output rows, where a plain loop order would touch a new cache
line for every element it reads. Functions whose blocks cannot all be inlined fall through to
the next rule.
"""

from __future__ import annotations

from tvm import s_tir, tirx

from saddc.schedules.cpu_rule import CPUBlocksRule
from saddc.schedules.simd import simd_lanes, target_lanes, vector_lanes

# Parallel iterations to aim for: enough to balance the cores of a server CPU.
TASKS = 256


class CPUInjective(CPUBlocksRule):
    """One parallel, vectorized pass over an injective function's output (see the module doc)."""

    def schedule_blocks(self, sch, infos, target):
        if not all(info.is_injective() for info in infos):
            return None
        try:
            for info in infos[:-1]:
                sch.compute_inline(info.block_rv)
        except s_tir.ScheduleError:
            return None
        return sch if one_pass(sch, infos[-1], target_lanes(target)) else None


def one_pass(sch: s_tir.Schedule, info, widest: int) -> bool:
    """Schedule the injective block of ``info`` (its loops untouched so far) as the parallel,
    vectorized pass of the module doc, in vectors of up to ``widest`` lanes; False, the block
    untouched, where it has no loops."""
    loops = sch.get_loops(info.block_rv)
    if not loops:
        return False
    *outer, inner = loops
    extent = sch.get(inner).extent
    lanes, tail = vector_lanes(extent, widest)
    if tail and not outer:  # the loop over vectors, split below, cannot be the parallel one
        lanes, tail = simd_lanes(int(extent), widest), False
    serial = []
    if lanes > 1:
        transposed = _transposed_loop(sch, info, outer, lanes)
        rest, vector = sch.split(inner, [None, lanes])
        if transposed is not None:
            tiles, rows = sch.split(transposed, [None, lanes])
            outer[outer.index(transposed)] = tiles
            serial = [rows]
        sch.reorder(*outer, rest, *serial, vector)
        sch.vectorize(vector)
        if not tail:  # with a tail, the loop over vectors is split below, not fused
            outer.append(rest)
    else:
        outer.append(inner)
    sch.parallel(sch.fuse(*_parallel_prefix(sch, outer)))
    if tail:
        # The last, partial vector in a loop of its own, so that the whole ones need no
        # lane check (see simd.vectorize_with_tail).
        sch.loop_partition(rest, [int(extent) // lanes, None])
    return True


def _transposed_loop(sch: s_tir.Schedule, info, outer: list, lanes: int):
    """The loop of ``outer`` that indexes the innermost dimension of a buffer the block reads
    (a transpose), when its extent is a whole number of ``lanes``; else None."""
    for region in sch.get(info.block_rv).reads:
        index = region.region[-1].min if region.region else None
        loop = next((sch.get(iteration.loop_rv) for iteration in info.iters if iteration.var.same_as(index)), None)
        candidate = next((rv for rv in outer if loop is not None and sch.get(rv).same_as(loop)), None)
        if candidate is not None and isinstance(loop.extent, tirx.IntImm) and int(loop.extent) % lanes == 0:
            return candidate
    return None


def _parallel_prefix(sch: s_tir.Schedule, loops: list) -> list:
    """The fewest leading ``loops`` with at least ``TASKS`` iterations together (a symbolic
    extent, the batch, counts as one), or all of them."""
    iterations = 1
    for count, loop in enumerate(loops, start=1):
        extent = sch.get(loop).extent
        iterations *= int(extent) if isinstance(extent, tirx.IntImm) else 1
        if iterations >= TASKS:
            return loops[:count]
    return loops
