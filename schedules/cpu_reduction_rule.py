"""The base of saddc's CPU rules for functions built around one reduction (a matmul, a
depthwise conv): the rest of the function is injective, a prologue to inline or place and an
epilogue to run once per output tile."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule


class CPUReductionRule(CPUScheduleRule):
    """Calls ``schedule(sch, infos, position, target)`` on functions for an ``llvm`` target with
    exactly one reduction block (``infos[position]``, after ``normalize_prim_func``) and only
    injective blocks besides; ``schedule`` returns the schedule, or None to fall through."""

    def apply(self, func, target, tunable):  # pylint: disable=unused-argument
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if infos is None:
            return None
        reductions = [index for index, info in enumerate(infos) if not info.is_injective()]
        if len(reductions) != 1 or not all(info.is_injective() for info in infos if info is not infos[reductions[0]]):
            return None
        return self.schedule(sch, infos, reductions[0], target)

    def schedule(self, sch: s_tir.Schedule, infos: list, position: int, target):
        raise NotImplementedError
