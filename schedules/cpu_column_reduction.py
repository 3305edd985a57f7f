"""A DLight rule for the CPU: reductions down the columns of their input (a sum or mean over a
ViT's tokens of a (tokens, channels) matrix), alone or with the injective steps that read
their results at every token (Taylor attention's mean-centred keys, ``k - mean(k, tokens)``).

    for (outer..., group of column vectors) in parallel:   the reduced output, in vector lanes
        acc[group, lanes] = 0                               up to 4 registers
        for token:  acc += x[..., token, group]             contiguous vector loads
        out[..., group] = acc
    then each remaining injective block: one parallel, vectorized pass (``cpu_injective``)

Producers read only by a reduction are inlined into it; the steps after the reductions keep
their own passes, so a mean's division runs once a channel, not once an element.

DLight's CPU reduction rule, which these functions went to before, assumes the reductions of a
function share its output's leading loop, and computes them inside it: a mean over the tokens
read at every token was recomputed for every token, quadratic in their number (Taylor attention
at 3136 tokens, one head of 32 channels: 150 ms of a 164 ms call). Functions that do not fit
fall through to the next rule.
"""

from __future__ import annotations

from tvm import s_tir

from saddc.schedules.cpu_injective import one_pass
from saddc.schedules.cpu_reduction_rule import accumulate_in_lanes
from saddc.schedules.cpu_rule import CPUBlocksRule
from saddc.schedules.simd import target_lanes


class CPUColumnReduction(CPUBlocksRule):
    """Reductions over an outer axis, then injective passes (see the module doc)."""

    def schedule_blocks(self, sch, infos, target):
        reductions = [info for info in infos if not info.is_injective()]
        if not reductions or not all(_reduces_down_columns(sch, info) for info in reductions):
            return None
        lanes = target_lanes(target)
        reduction_blocks = [sch.get(info.block_rv) for info in reductions]
        try:
            prologue = [info for info in infos if info.is_injective() and _feeds_only(sch, info, reduction_blocks)]
            for info in prologue:
                sch.compute_inline(info.block_rv)
            for info in reductions:
                accumulate_in_lanes(sch, info.block_rv, [], lanes)
            for info in infos:
                if info.is_injective() and info not in prologue:
                    one_pass(sch, info, lanes)
        except s_tir.ScheduleError:
            return None
        return sch


def _reduces_down_columns(sch: s_tir.Schedule, info) -> bool:
    """Whether the block of ``info`` has spatial loops then one reduction loop and reads one
    buffer (a sum, not a sum of products: a matmul is the matmul rule's), whose last dimension
    its innermost spatial loop indexes and an outer one its reduction loop: the reduction walks
    down that buffer's columns, a row at a time."""
    kinds = info.dom_kind()
    reads = sch.get(info.block_rv).reads
    if (len(kinds) < 2 or kinds.count("R") != 1 or not kinds.endswith("R") or len(reads) != 1
            or not isinstance(info.iters[-2].dom, int)):
        return False
    column, reduction = info.iters[-2].var, info.iters[-1].var
    indices = [span.min for span in reads[0].region]
    return bool(indices) and indices[-1].same_as(column) and any(index.same_as(reduction) for index in indices[:-1])


def _feeds_only(sch: s_tir.Schedule, info, reduction_blocks: list) -> bool:
    consumers = [sch.get(block) for block in sch.get_consumers(info.block_rv)]
    return bool(consumers) and all(any(c.same_as(r) for r in reduction_blocks) for c in consumers)
