"""A DLight rule for the CPU: injective functions (elementwise ops, broadcasts, transposes,
reshapes, concatenations, gathers), which a legalized module runs on one thread, one scalar at
a time.

Every block but the last is inlined into its consumers, so the function makes one pass over
its output; that pass runs its outer loops fused and parallel and, when the innermost extent is
a multiple of the SIMD width, its innermost loop in vector lanes. Functions whose blocks
cannot all be inlined fall through to the next rule.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

from saddc.schedules.simd import simd_lanes, target_lanes


class CPUInjective(CPUScheduleRule):
    """One parallel, vectorized pass over an injective function's output (see the module doc)."""

    def apply(self, func, target, tunable):  # pylint: disable=unused-argument
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        if not infos or not all(info.is_injective() for info in infos):
            return None
        try:
            for info in infos[:-1]:
                sch.compute_inline(info.block_rv)
        except s_tir.ScheduleError:
            return None
        loops = sch.get_loops(infos[-1].block_rv)
        if not loops:
            return None
        *outer, inner = loops
        extent = sch.get(inner).extent
        lanes = simd_lanes(int(extent), target_lanes(target)) if isinstance(extent, tirx.IntImm) else 1
        if lanes > 1:
            rest, vector = sch.split(inner, [None, lanes])
            outer.append(rest)
            sch.vectorize(vector)
        else:
            outer.append(inner)
        sch.parallel(sch.fuse(*outer))
        return sch
