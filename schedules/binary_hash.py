"""Binary hash of query or key rows: projection, compare, and packing into uint32 words.

``codes[g, i, w]`` holds bits ``32 w .. 32 w + 31`` of row ``x[g, i]``, bit ``t`` set when
``x[g, i] . A[g % P, :, t] + c[g % P, t] > 0`` (format: binary_codes.py). Without a projection
the row itself is compared (``b = d``), for codes a model computes as ``x > threshold``.

The projection is the one floating-point multiply-add stage of additive attention (``N d b``
per head, the same order as the masked sums it feeds); everything after it is adds and selects.
Reference: ``binary_codes.hash_codes``.
"""

from __future__ import annotations

from tvm import s_tir, te, tirx

from saddc.schedules.binary_codes import WORD_BITS, check_bits, hash_codes, words_per_row

__all__ = ["binary_hash_te", "schedule", "schedule_cpu", "schedule_cuda", "reference"]

PROJECT_BLOCK = "hash_project"
PACK_BLOCK = "hash_pack"

reference = hash_codes


def _period_index(g, periods: int):
    return 0 if periods == 1 else tirx.floormod(g, periods)


def binary_hash_te(x: te.Tensor, projection: te.Tensor | None, offset: te.Tensor | None, bits: int) -> te.Tensor:
    """Packed codes (G, N, ceil(bits / 32)) uint32 of rows ``x`` (G, N, d) float32."""
    check_bits(bits)
    groups, rows, dim = x.shape
    if projection is None:
        if int(dim) != bits:
            raise ValueError(f"a hash without projection has one bit per feature ({dim}), not {bits}")
        projected = x
    else:
        periods = int(projection.shape[0])
        k = te.reduce_axis((0, dim), name="k")
        projected = te.compute(
            (groups, rows, bits),
            lambda g, i, t: te.sum(x[g, i, k] * projection[_period_index(g, periods), k, t], axis=k),
            name=PROJECT_BLOCK,
        )
    words = words_per_row(bits)
    lane = te.reduce_axis((0, min(bits, WORD_BITS)), name="lane")

    def pack(g, i, w):
        t = w * WORD_BITS + lane
        # Lanes past the last bit read a valid index and contribute nothing.
        index = tirx.min(t, bits - 1) if words * WORD_BITS != bits and bits > WORD_BITS else t
        value = projected[g, i, index]
        if offset is not None:
            value = value + offset[_period_index(g, int(offset.shape[0])), index]
        is_set = tirx.all(t < bits, value > tirx.const(0.0, "float32")) if bits > WORD_BITS else value > 0.0
        bit = tirx.const(1, "uint32") << tirx.Cast("uint32", lane)
        return te.sum(tirx.Select(is_set, bit, tirx.const(0, "uint32")), axis=lane)

    return te.compute((groups, rows, words), pack, name=PACK_BLOCK)


def _blocks(sch: s_tir.Schedule):
    pack = sch.get_sblock(PACK_BLOCK)
    try:
        project = sch.get_sblock(PROJECT_BLOCK)
    except s_tir.ScheduleError:
        project = None
    return pack, project


def schedule_cpu(sch: s_tir.Schedule) -> None:
    """Rows in parallel; each row's projection is computed into a local vector of ``b`` values
    (the bit loop vectorized, the feature loop outside it), then compared and packed."""
    pack, project = _blocks(sch)
    g, i, _, _ = sch.get_loops(pack)
    row = sch.fuse(g, i)
    sch.parallel(row)
    if project is not None:
        sch.compute_at(project, row)
        sch.set_scope(project, 0, "local")
        t, k = sch.get_loops(project)[-2:]
        sch.reorder(k, t)
        # Vectorize while the block still has its init (a reduction block), then split it out.
        sch.vectorize(t)
        init = sch.decompose_reduction(project, k)
        sch.vectorize(sch.get_loops(init)[-1])
    sch.unroll(sch.get_loops(pack)[-1])


def schedule_cuda(sch: s_tir.Schedule, threads: int = 128) -> None:
    """One thread a row: its ``b`` projections in registers (the projection matrix is the same
    for every thread of a warp, a broadcast read), then compare and pack."""
    pack, project = _blocks(sch)
    g, i, _, _ = sch.get_loops(pack)
    block, thread = sch.split(sch.fuse(g, i), [None, threads])
    sch.bind(block, "blockIdx.x")
    sch.bind(thread, "threadIdx.x")
    if project is not None:
        sch.compute_at(project, thread)
        sch.set_scope(project, 0, "local")
        sch.unroll(sch.get_loops(project)[-2])
    sch.unroll(sch.get_loops(pack)[-1])


def schedule(func: tirx.PrimFunc, target) -> s_tir.Schedule:
    sch = s_tir.Schedule(func)
    (schedule_cuda if target.kind.name == "cuda" else schedule_cpu)(sch)
    return sch
