"""Row permutation ``out[i] = x[index[i]]``: the MoE dispatch's gather and its scatter back.

The dispatch moves every token twice: into the expert-sorted buffer (``index = order``, sorted
slot -> token) before the segmented GEMM, and back to token order after it. The way back is a
scatter ``y[order[s]] = ys[s]``, computed here as the gather ``y[t] = ys[slot[t]]`` through the
inverse permutation that ``token_partition`` also writes: every output row is written exactly
once by one thread, with no write conflicts, and the kernel is an ordinary TE compute that
TensorIR schedules.

``reference`` (numpy) is ``permute_rows_reference``.
"""

from __future__ import annotations

import numpy as np
from tvm import s_tir, te, tirx

from saddc.schedules.simd import simd_lanes

__all__ = ["permute_rows_te", "permute_rows_reference", "schedule", "schedule_cpu", "schedule_cuda"]

BLOCK = "permute_rows"


def permute_rows_reference(x: np.ndarray, index: np.ndarray) -> np.ndarray:
    return np.asarray(x)[np.asarray(index)]


def permute_rows_te(x: te.Tensor, index: te.Tensor) -> te.Tensor:
    """(M, K) rows of ``x`` in the order ``index`` (int32, M) names."""
    return te.compute(x.shape, lambda i, k: x[index[i], k], name=BLOCK)


def schedule_cpu(sch: s_tir.Schedule, lanes: int = 16) -> None:
    """Rows in parallel; each row is a contiguous copy, in SIMD vectors."""
    block = sch.get_sblock(BLOCK)
    row, column = sch.get_loops(block)
    sch.parallel(row)
    _, inner = sch.split(column, [None, simd_lanes(int(sch.get(column).extent), lanes)])
    sch.vectorize(inner)


def schedule_cuda(sch: s_tir.Schedule, threads: int = 128) -> None:
    """A thread per element, consecutive threads along a row, so reads and writes coalesce."""
    block = sch.get_sblock(BLOCK)
    blocks, thread = sch.split(sch.fuse(*sch.get_loops(block)), [None, threads])
    sch.bind(blocks, "blockIdx.x")
    sch.bind(thread, "threadIdx.x")


def schedule(func: tirx.PrimFunc, target) -> s_tir.Schedule:
    sch = s_tir.Schedule(func)
    (schedule_cuda if target.kind.name == "cuda" else schedule_cpu)(sch)
    return sch
