"""The base of saddc's CPU rules for functions built around one reduction (a matmul, a
depthwise conv): the rest of the function is injective, a prologue to inline or place and an
epilogue to run once per output tile; and the accumulator steps both rules end with."""

from __future__ import annotations

from tvm import s_tir

from saddc.schedules.cpu_rule import CPUBlocksRule
from saddc.schedules.simd import simd_lanes


class CPUReductionRule(CPUBlocksRule):
    """Calls ``schedule(sch, infos, position, target)`` on functions with exactly one reduction
    block (``infos[position]``) and only injective blocks besides; ``schedule`` returns the
    schedule, or None to fall through."""

    def schedule_blocks(self, sch, infos, target):
        reductions = [index for index, info in enumerate(infos) if not info.is_injective()]
        if len(reductions) != 1 or not all(info.is_injective() for info in infos if info is not infos[reductions[0]]):
            return None
        return self.schedule(sch, infos, reductions[0], target)

    def schedule(self, sch: s_tir.Schedule, infos: list, position: int, target):
        raise NotImplementedError


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
    reduction) split into vectors of up to ``widest`` lanes that divide it, each vector
    accumulated in a register over the whole reduction, then written by the last ``epilogue``
    block (or a write-back); the vectors and the outer spatial loops in parallel, one task per
    vector of the output. For a reduction whose input is contiguous along that loop (a sum down
    columns), each step is one vector load."""
    *outer, spatial, reduction = sch.get_loops(main)
    lanes = simd_lanes(int(sch.get(spatial).extent), widest)
    vectors, lane = sch.split(spatial, [None, lanes])
    sch.reorder(vectors, reduction, lane)
    task = sch.fuse(*outer, vectors)
    reader = accumulator_reader(sch, main, epilogue)
    sch.reverse_compute_at(reader, task)
    sch.parallel(task)
    if lanes > 1:
        sch.vectorize(lane)
    finish_accumulator(sch, main, reader, reduction, has_epilogue=bool(epilogue), vectorized=lanes > 1)
