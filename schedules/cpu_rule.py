"""The base of saddc's CPU DLight rules: the part every rule starts with, turning a function
into its normalized blocks, and the part every CPU schedule ends with, putting its scratch
buffers on the stack.

TVM 0.27's ``LowerTVMBuiltin`` puts a CPU allocation on the stack only when its scope is
``global`` (and its size constant and under 1 KiB); any other, a ``local`` one included,
becomes a ``TVMBackendAllocWorkspace`` / ``TVMBackendFreeWorkspace`` pair around the loop body
that holds it: a heap allocation per row or per tile, where a stack slot costs nothing and
LLVM keeps it in registers. saddc's CPU schedules write their register accumulators and
per-row values ``local``, as GPU schedules do; ``move_local_buffers_to_stack`` rescopes them
once a schedule is done (on a CPU the two scopes name the same memory). On one thread: Taylor
attention's per-row dot products (3 heads x 197 rows of 64) 11.4 -> 3.1 us, DeiT-Tiny's MoE
router (197 x 768 x 2) 10.0 -> 8.5 us. (A 4 x 4-vector matmul tile is exactly 1 KiB: over the
limit either way.) Kernels written in TVMScript for the CPU allocate in ``CPU_SCRATCH_SCOPE``.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule


# The scope of a CPU kernel's scratch buffers: the one TVM allocates on the stack (module doc).
CPU_SCRATCH_SCOPE = "global"


def move_local_buffers_to_stack(sch: s_tir.Schedule) -> s_tir.Schedule:
    """Rescope every ``local`` buffer that a block of ``sch`` writes to ``CPU_SCRATCH_SCOPE``
    (see the module doc); returns ``sch``."""
    pending = list(sch.get_child_blocks(sch.get_sblock("root")))
    while pending:
        block = pending.pop()
        pending += sch.get_child_blocks(block)
        for index, region in enumerate(sch.get(block).writes):
            if region.source.scope() == "local":
                sch.set_scope(block, index, CPU_SCRATCH_SCOPE)
    return sch


class CPUBlocksRule(CPUScheduleRule):
    """Calls ``schedule_blocks(sch, infos, target)`` on PrimFuncs for an ``llvm`` target whose
    blocks ``normalize_prim_func`` can describe (``infos``, one per block, in order);
    ``schedule_blocks`` returns the schedule, or None to fall through to the next rule."""

    def apply(self, func, target, tunable):  # pylint: disable=unused-argument
        if not isinstance(func, tirx.PrimFunc) or not self.is_target_available(target):
            return None
        sch = s_tir.Schedule(func)
        infos = normalize_prim_func(sch)
        scheduled = self.schedule_blocks(sch, infos, target) if infos else None
        return move_local_buffers_to_stack(scheduled) if scheduled is not None else None

    def schedule_blocks(self, sch: s_tir.Schedule, infos: list, target):
        raise NotImplementedError
