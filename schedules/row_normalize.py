"""Row normalizations that end the linear attention forms, each one division a row.

- ``match_normalize_te``: the match form's denominator from the query code and the key bit
  counts, ``den_i = sum_t (bit_t ? c1_t : N - c1_t)`` (selects and adds), then
  ``out_i = num_i * (1 / max(den_i, 1))``.
- ``angular_normalize_te``: ShiftAddViT's ``z_i = 0.5 v_i + y_i / pi``, then
  ``out_i = z_i * (1 / max(||z_i||, 1e-12))``.
- ``divide_rows_te``: ``out_i = num_i * (1 / den_i)`` (the Taylor form's denominator).

Every form computes one reciprocal a row (``row_reciprocal``) and scales the row by it
(``row_scale``). References: ``binary_codes.match_attention``, ``binary_codes.angular_normalize``.
"""

from __future__ import annotations

import math

from tvm import s_tir, te, tirx

from saddc.schedules.binary_codes import ANGULAR_NORM_EPS, angular_normalize, check_bits
from saddc.schedules.masked_sum import code_bit

__all__ = ["match_normalize_te", "angular_normalize_te", "divide_rows_te", "schedule", "schedule_cpu",
           "schedule_cuda", "reference_angular"]

MIX_BLOCK = "angular_mix"
ROW_REDUCE_BLOCKS = ("match_denominator", "row_sumsq")
RECIPROCAL_BLOCK = "row_reciprocal"
SCALE_BLOCK = "row_scale"

reference_angular = angular_normalize


def _scale_rows(values: te.Tensor, reciprocal: te.Tensor) -> te.Tensor:
    return te.compute(values.shape, lambda g, i, c: values[g, i, c] * reciprocal[g, i], name=SCALE_BLOCK)


def match_normalize_te(numerator: te.Tensor, codes: te.Tensor, counts: te.Tensor, keys: int, bits: int) -> te.Tensor:
    """numerator (G, N, d), query codes (G, N, W), key bit counts (G, bits) -> (G, N, d)."""
    check_bits(bits)
    groups, rows, _ = numerator.shape
    t = te.reduce_axis((0, bits), name="t")
    total = tirx.const(float(keys), "float32")
    denominator = te.compute(
        (groups, rows),
        lambda g, i: te.sum(tirx.Select(code_bit(codes, g, i, t), counts[g, t], total - counts[g, t]), axis=t),
        name=ROW_REDUCE_BLOCKS[0],
    )
    one = tirx.const(1.0, "float32")
    reciprocal = te.compute((groups, rows), lambda g, i: one / tirx.max(denominator[g, i], one), name=RECIPROCAL_BLOCK)
    return _scale_rows(numerator, reciprocal)


def angular_normalize_te(y: te.Tensor, v: te.Tensor) -> te.Tensor:
    """``normalize(0.5 v + y / pi)`` row by row: y, v (G, N, d) -> (G, N, d)."""
    groups, rows, dim = y.shape
    half, inverse_pi = tirx.const(0.5, "float32"), tirx.const(1.0 / math.pi, "float32")
    mixed = te.compute(y.shape, lambda g, i, c: half * v[g, i, c] + y[g, i, c] * inverse_pi, name=MIX_BLOCK)
    c = te.reduce_axis((0, dim), name="c")
    sum_sq = te.compute((groups, rows), lambda g, i: te.sum(mixed[g, i, c] * mixed[g, i, c], axis=c),
                        name=ROW_REDUCE_BLOCKS[1])
    eps, one = tirx.const(ANGULAR_NORM_EPS, "float32"), tirx.const(1.0, "float32")
    reciprocal = te.compute((groups, rows), lambda g, i: one / tirx.max(tirx.sqrt(sum_sq[g, i]), eps),
                            name=RECIPROCAL_BLOCK)
    return _scale_rows(mixed, reciprocal)


def divide_rows_te(numerator: te.Tensor, denominator: te.Tensor) -> te.Tensor:
    """numerator (G, N, d) over denominator (G, N) -> (G, N, d)."""
    one = tirx.const(1.0, "float32")
    reciprocal = te.compute(denominator.shape, lambda g, i: one / denominator[g, i], name=RECIPROCAL_BLOCK)
    return _scale_rows(numerator, reciprocal)


def _row_blocks(sch: s_tir.Schedule) -> list:
    """The per-row blocks, consumers first (the order compute_at needs)."""
    blocks = [sch.get_sblock(RECIPROCAL_BLOCK)]
    for name in ROW_REDUCE_BLOCKS:
        try:
            blocks.append(sch.get_sblock(name))
        except s_tir.ScheduleError:
            pass
    return blocks


def _inline_mix(sch: s_tir.Schedule) -> None:
    # Recomputing 0.5 v + y / pi in both its readers costs less than a round trip to memory.
    try:
        sch.compute_inline(sch.get_sblock(MIX_BLOCK))
    except s_tir.ScheduleError:
        pass


def schedule_cpu(sch: s_tir.Schedule) -> None:
    """Rows in parallel; the row's reduction and reciprocal are scalars, the scale a vector."""
    _inline_mix(sch)
    scale = sch.get_sblock(SCALE_BLOCK)
    g, i, c = sch.get_loops(scale)
    row = sch.fuse(g, i)
    sch.parallel(row)
    for block in _row_blocks(sch):
        sch.compute_at(block, row)
        sch.set_scope(block, 0, "local")
    sch.vectorize(c)


def schedule_cuda(sch: s_tir.Schedule, threads: int = 256) -> None:
    """A thread per (row, column), ``threads // d`` rows a block. The row's sum of squares is a
    cross-thread reduction over the column threads; the match denominator (``b`` selects) and
    the reciprocal are computed by each thread of the row in registers."""
    _inline_mix(sch)
    scale = sch.get_sblock(SCALE_BLOCK)
    g, i, c = sch.get_loops(scale)
    dim = int(sch.get(c).extent)
    if dim > 1024:
        raise ValueError(f"row_normalize on CUDA takes rows of at most 1024 values, not {dim}")
    row_block, row_thread = sch.split(sch.fuse(g, i), [None, max(1, threads // dim)])
    sch.bind(row_block, "blockIdx.x")
    sch.bind(row_thread, "threadIdx.y")
    sch.bind(c, "threadIdx.x")
    for block in _row_blocks(sch):
        sch.compute_at(block, row_thread)
        sch.set_scope(block, 0, "local")
        if str(sch.get(block).name_hint) == ROW_REDUCE_BLOCKS[1]:
            sch.bind(sch.get_loops(block)[-1], "threadIdx.x")


def schedule(func: tirx.PrimFunc, target) -> s_tir.Schedule:
    sch = s_tir.Schedule(func)
    (schedule_cuda if target.kind.name == "cuda" else schedule_cpu)(sch)
    return sch
