"""The base of saddc's CPU rules for functions built around one reduction (a matmul, a
depthwise conv): the rest of the function is injective, a prologue to inline or place and an
epilogue to run once per output tile; and the accumulator steps both rules end with."""

from __future__ import annotations

from tvm import s_tir

from saddc.schedules.cpu_rule import CPUBlocksRule


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
