"""Token partition: a stable partition of tokens by the expert a router chose for them.

Given ``choice`` int64[M] (an expert index per token, as Relax's ``argmax`` gives it), the
kernel writes

- ``order`` int32[M]: sorted slot -> token. Tokens of expert 0 first, then expert 1, ...;
  within an expert, in token order (stable);
- ``slot`` int32[M]: token -> sorted slot (the inverse permutation, used to bring the
  experts' results back to token order);
- ``offsets`` int32[E + 1]: expert ``e`` owns sorted slots ``[offsets[e], offsets[e + 1])``.

Algorithm (both targets): the tokens are cut into ``chunks`` contiguous chunks; each chunk
counts its tokens per expert; an exclusive scan over (expert, chunk) in that order gives every
chunk its first slot per expert; each chunk then writes its tokens' slots in order. Stability
follows from the scan order. The writes go to data-dependent addresses, which TensorIR's
schedule primitives cannot express (they need affine block bindings), so each target's kernel
is written with its schedule in place: on the CPU the chunk loops are parallel, on CUDA one
thread block runs a chunk per thread, the counts in shared memory, and every thread scans
them for its own first slots (no thread waits on another's scan).

``reference`` (numpy) is ``partition_reference``.
"""

from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from saddc.schedules.cpu_rule import CPU_SCRATCH_SCOPE

__all__ = ["partition_reference", "token_partition", "CPU_CHUNKS", "CUDA_THREADS"]

# Chunks a CPU partition uses (more than the cores, so uneven chunks balance) and threads of
# the single CUDA thread block (one chunk each).
CPU_CHUNKS = 64
CUDA_THREADS = 256


def partition_reference(choice: np.ndarray, experts: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``order``, ``slot`` and ``offsets`` of the stable partition of ``choice`` (numpy)."""
    choice = np.asarray(choice).reshape(-1)
    order = np.argsort(choice, kind="stable").astype(np.int32)
    slot = np.empty_like(order)
    slot[order] = np.arange(order.size, dtype=np.int32)
    counts = np.bincount(choice, minlength=experts)[:experts]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return order, slot, offsets


def _cpu_kernel(experts: int) -> tirx.PrimFunc:
    chunks = CPU_CHUNKS

    @T.prim_func(private=True, s_tir=True)
    def token_partition(choice_handle: T.handle, order_handle: T.handle, slot_handle: T.handle,
                        offsets: T.Buffer((experts + 1,), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        tokens = T.int64()
        choice = T.match_buffer(choice_handle, (tokens,), "int64")
        order = T.match_buffer(order_handle, (tokens,), "int32")
        slot = T.match_buffer(slot_handle, (tokens,), "int32")
        with T.sblock("root"):
            first = T.alloc_buffer((experts, chunks), "int32")
            # Scalars are bound, not assigned (see segmented_gemm): no heap cell per token.
            per_chunk = T.Bind(T.ceildiv(tokens, T.int64(chunks)))
            for chunk in T.parallel(chunks):
                for e in range(experts):
                    first[e, chunk] = 0
                for j in range(per_chunk):
                    if chunk * per_chunk + j < tokens:
                        first[T.Cast("int32", choice[chunk * per_chunk + j]), chunk] += 1
            # Exclusive scan over (expert, chunk): first[e, c] becomes chunk c's first slot for e.
            running = T.alloc_buffer((1,), "int32", scope=CPU_SCRATCH_SCOPE)
            running[0] = 0
            for e in range(experts):
                offsets[e] = running[0]
                for chunk in range(chunks):
                    # Kept assigned (a one-element buffer, a few a call): it holds the count read
                    # before the store below overwrites the cell.
                    count = first[e, chunk]
                    first[e, chunk] = running[0]
                    running[0] += count
            offsets[experts] = running[0]
            for chunk in T.parallel(chunks):
                next_slot = T.alloc_buffer((experts,), "int32", scope=CPU_SCRATCH_SCOPE)
                for e in range(experts):
                    next_slot[e] = first[e, chunk]
                for j in range(per_chunk):
                    if chunk * per_chunk + j < tokens:
                        token = T.Bind(chunk * per_chunk + j)
                        expert = T.Bind(T.Cast("int32", choice[token]))
                        slot[token] = next_slot[expert]
                        order[next_slot[expert]] = T.Cast("int32", token)
                        next_slot[expert] += 1

    return token_partition


def _cuda_kernel(experts: int) -> tirx.PrimFunc:
    threads = CUDA_THREADS

    @T.prim_func(private=True, s_tir=True)
    def token_partition(choice_handle: T.handle, order_handle: T.handle, slot_handle: T.handle,
                        offsets: T.Buffer((experts + 1,), "int32")):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        tokens = T.int64()
        choice = T.match_buffer(choice_handle, (tokens,), "int64")
        order = T.match_buffer(order_handle, (tokens,), "int32")
        slot = T.match_buffer(slot_handle, (tokens,), "int32")
        with T.sblock("root"):
            for block in T.thread_binding(1, thread="blockIdx.x"):
                for thread in T.thread_binding(threads, thread="threadIdx.x"):
                    first = T.alloc_buffer((experts, threads), "int32", scope="shared")
                    next_slot = T.alloc_buffer((experts,), "int32", scope="local")
                    per_thread = T.ceildiv(tokens, T.int64(threads))
                    for e in range(experts):
                        next_slot[e] = 0
                    for j in range(per_thread):
                        if thread * per_thread + j < tokens:
                            next_slot[T.Cast("int32", choice[thread * per_thread + j])] += 1
                    for e in range(experts):
                        first[e, thread] = next_slot[e]
                    T.tvm_storage_sync("shared")
                    # Each thread scans the counts itself (E * threads shared reads): its first slot
                    # per expert is the tokens of earlier experts plus those of earlier threads.
                    sums = T.alloc_buffer((3,), "int32", scope="local")  # before e, this e: earlier threads, all
                    sums[0] = 0
                    for e in range(experts):
                        sums[1] = 0
                        sums[2] = 0
                        for t in range(threads):
                            sums[1] += T.if_then_else(t < thread, first[e, t], 0)
                            sums[2] += first[e, t]
                        next_slot[e] = sums[0] + sums[1]
                        if thread == 0:
                            offsets[e] = sums[0]
                        sums[0] += sums[2]
                    if thread == 0:
                        offsets[experts] = sums[0]
                    for j in range(per_thread):
                        if thread * per_thread + j < tokens:
                            token = thread * per_thread + j
                            expert = T.Cast("int32", choice[token])
                            slot[token] = next_slot[expert]
                            order[next_slot[expert]] = T.Cast("int32", token)
                            next_slot[expert] += 1

    return token_partition


def token_partition(experts: int, target) -> tirx.PrimFunc:
    """The partition kernel for ``experts`` experts, scheduled for ``target`` (CUDA or a CPU)."""
    return (_cuda_kernel if target.kind.name == "cuda" else _cpu_kernel)(experts)
