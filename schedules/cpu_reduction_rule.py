"""The base of saddc's CPU rules for functions built around one reduction (a matmul, a
depthwise conv): the rest of the function is injective, a prologue to inline or place and an
epilogue to run once per output tile; and the accumulator steps the CPU rules share."""

from __future__ import annotations

from tvm import s_tir, tirx

from saddc.schedules.cpu_rule import CPUBlocksRule
from saddc.schedules.simd import simd_lanes

# Vectors a task of accumulate_in_lanes: four independent chains of vector additions cover
# the add latency.
GROUPED_VECTORS = 4


class CPUReductionRule(CPUBlocksRule):
    """Calls ``schedule(sch, infos, position, target)`` on functions with exactly one reduction
    block (``infos[position]``) and only injective blocks besides; ``schedule`` returns the
    schedule, or None to fall through."""

    def schedule_blocks(self, sch, infos, target):
        position = only_reduction(infos)
        return None if position is None else self.schedule(sch, infos, position, target)

    def schedule(self, sch: s_tir.Schedule, infos: list, position: int, target):
        raise NotImplementedError


def only_reduction(infos: list) -> int | None:
    """The position of the one reduction block among ``infos`` (``normalize_prim_func``'s), where
    every other block is injective; None otherwise."""
    reductions = [index for index, info in enumerate(infos) if not info.is_injective()]
    if len(reductions) != 1 or not all(info.is_injective() for info in infos if info is not infos[reductions[0]]):
        return None
    return reductions[0]


def accumulator_reader(sch: s_tir.Schedule, main, epilogue: list):
    """The block that reads the reduction block ``main``'s accumulator: the last epilogue block,
    or, without an epilogue, a write-back made for it (a ``cache_write``, which leaves ``main``
    accumulating in a local buffer)."""
    return epilogue[-1] if epilogue else sch.cache_write(main, 0, "local")


def finish_accumulator(sch: s_tir.Schedule, main, reader, reduction_loop, has_epilogue: bool,
                       vectorized: bool = True) -> None:
    """Keep ``main``'s accumulator in registers (where ``accumulator_reader`` did not already),
    split its initialization off at ``reduction_loop``, and vectorize the innermost loops of
    the initialization and of ``reader`` (when the rule vectorized ``main``). Call after the
    rule's parallel and vectorize steps: afterwards two blocks write the accumulator, which
    those primitives reject."""
    if has_epilogue:
        sch.set_scope(main, 0, "local")
    init = sch.decompose_reduction(main, reduction_loop)
    if vectorized:
        sch.vectorize(sch.get_loops(init)[-1])
        sch.vectorize(sch.get_loops(reader)[-1])


def accumulate_in_lanes(sch: s_tir.Schedule, main, epilogue: list, widest: int) -> None:
    """The innermost spatial loop of the reduction block ``main`` (spatial loops, then one
    reduction) split into vectors of up to ``widest`` lanes that divide it, each accumulated in
    a register over the whole reduction, then written by the last ``epilogue`` block (or a
    write-back). Up to ``GROUPED_VECTORS`` vectors a task, unrolled inside the reduction loop,
    so that their additions form independent chains (one vector's is bound by the add latency),
    as long as the tasks, the groups and the outer spatial loops in parallel, number at least
    two. For a reduction whose input is contiguous along that loop (a sum down columns), each
    step is one vector load."""
    *outer, spatial, reduction = sch.get_loops(main)
    extent = int(sch.get(spatial).extent)
    lanes = simd_lanes(extent, widest)
    vectors = extent // lanes
    outer_tasks = 1
    for loop in outer:
        outer_extent = sch.get(loop).extent
        outer_tasks *= int(outer_extent) if isinstance(outer_extent, tirx.IntImm) else 2
    group = next(g for g in (GROUPED_VECTORS, 2, 1) if g == 1 or (vectors % g == 0 and outer_tasks * vectors // g >= 2))
    tasks, grouped, lane = sch.split(spatial, [None, group, lanes])
    sch.reorder(tasks, reduction, grouped, lane)
    task = sch.fuse(*outer, tasks)
    reader = accumulator_reader(sch, main, epilogue)
    sch.reverse_compute_at(reader, task)
    if group > 1:  # (a group of one needs no split, and with one lane the reader has no loop)
        sch.unroll(sch.split(sch.get_loops(reader)[-1], [group, None])[0])
    sch.parallel(task)
    sch.unroll(grouped)
    if lanes > 1:
        sch.vectorize(lane)
    finish_accumulator(sch, main, reader, reduction, has_epilogue=bool(epilogue), vectorized=lanes > 1)
