"""The base of saddc's CPU DLight rules: the part every rule starts with, turning a function
into its normalized blocks."""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule


class CPUBlocksRule(CPUScheduleRule):
    """Calls ``schedule_blocks(sch, infos, target)`` on PrimFuncs for an ``llvm`` target whose
    blocks ``normalize_prim_func`` can describe (``infos``, one per block, in order);
    ``schedule_blocks`` returns the schedule, or None to fall through to the next rule."""

    def apply(self, func, target, tunable):  # pylint: disable=unused-argument
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        return self.schedule_blocks(sch, infos, target) if infos else None

    def schedule_blocks(self, sch: s_tir.Schedule, infos: list, target):
        raise NotImplementedError
