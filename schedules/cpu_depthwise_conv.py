"""A DLight rule for the CPU: depthwise convolutions (PVT's MixFFN), and any reduction over a
small sliding window with the same loop shape (pooling).

TVM legalizes a depthwise conv to a padding block and a direct loop nest, which nothing
schedules: one thread, one scalar at a time. The schedule, after ``normalize_prim_func`` has
dropped the conv's one-channel reduction loop:

    parallel for (batch, channel):                       one task per image plane
        padded = pad(x[batch, channel])                  the plane and its border, once
        for row, for column tile of LANES:
            acc[LANES] = 0                               in registers
            for ky, kx (unrolled):  acc += padded[row + ky, tile + kx : + LANES] * w[ky, kx]
            out[row, tile] = epilogue(acc)               bias and the like: vectorized

LANES is the widest power of two up to the SIMD width that divides the output width, so the
vector loop needs no tail.

The rule applies to functions with exactly one reduction block, whose loops are at least three
spatial ones (the last two of constant extent: the output plane) and then at most two
reduction loops over at most ``MAX_WINDOW`` elements, and whose other blocks are injective;
anything else falls through to the next rule.
"""

from __future__ import annotations

import math

from tvm import s_tir, tirx

from saddc.schedules.cpu_reduction_rule import CPUReductionRule, accumulator_reader, finish_accumulator
from saddc.schedules.simd import simd_lanes, target_lanes

# 7x7, the largest depthwise kernel in common ViT hybrids (ConvNeXt-style blocks).
MAX_WINDOW = 49


class CPUDepthwiseConv(CPUReductionRule):
    """Per-plane parallel, vectorized sliding-window reduction for ``llvm`` targets (see the
    module doc)."""

    def schedule(self, sch, infos, position, target):
        main = infos[position].block_rv
        kinds = infos[position].dom_kind()
        spatial = kinds.count("S")
        loops = sch.get_loops(main)
        extents = [sch.get(loop).extent for loop in loops]
        if (spatial < 3 or kinds != "S" * spatial + "R" * (len(kinds) - spatial) or len(kinds) - spatial > 2
                or len(loops) != len(kinds)
                or not all(isinstance(extent, tirx.IntImm) for extent in extents[spatial - 2:])):
            return None
        if math.prod(int(extent) for extent in extents[spatial:]) > MAX_WINDOW:
            return None
        *outer, row, column = loops[:spatial]
        prologue = [info.block_rv for info in infos[:position]]
        epilogue = [info.block_rv for info in infos[position + 1:]]
        try:
            for block in epilogue[:-1]:
                sch.compute_inline(block)
        except s_tir.ScheduleError:
            return None
        lanes = simd_lanes(int(extents[spatial - 1]), target_lanes(target))
        tile, lane = sch.split(column, [None, lanes])
        sch.reorder(*outer, row, tile, *loops[spatial:], lane)
        plane = sch.fuse(*outer)
        output = accumulator_reader(sch, main, epilogue)
        sch.reverse_compute_at(output, tile)
        for block in reversed(prologue):
            sch.compute_at(block, plane)
        sch.parallel(plane)
        # A one-lane split leaves no loop of its own in the init and the output.
        if lanes > 1:
            sch.vectorize(lane)
        for loop in loops[spatial:]:
            sch.unroll(loop)
        finish_accumulator(sch, main, output, loops[spatial], bool(epilogue), vectorized=lanes > 1)
        return sch
