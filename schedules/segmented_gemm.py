"""Segmented GEMM: one expert's linear layer on its own rows of the token-sorted buffer.

After ``token_partition``, expert ``e`` owns rows ``[offsets[e], offsets[e + 1])`` of the
sorted activations ``xs`` (M, K). Its kernel computes ``ys[m] = xs[m] @ W_e + b_e`` for those
rows only and leaves the other rows alone, so the experts' kernels run one after another on
one output buffer (the first allocates it, the next update it in place) and together cover
every row once. The total shape M is static; only the split is decided at run time.

Two expert kinds:

- ``dense`` (the Mult expert): float32 weights (K, N), multiply-add;
- ``shift`` (the Shift expert): weights in the packed power-of-two format (shift_codes). On
  CUDA each product is an exponent-field add (``shift_gemm.shifted_product``): no float
  multiply. On the CPU, where that product costs about 15 integer and select instructions to
  an FMA's one, the kernel decodes the codes to the exact fp32 weights once per call (as the shift
  GEMM's ``decode-dense`` variant does) and runs the dense body on them.

Both kernels work on tiles of ``rows`` rows that share each weight load. On the CPU the tiles
start at the segment's first row, and the last one, which the segment's end may cut, runs the
same unrolled body on a window of ``rows`` rows of the buffer that covers its part, storing only
that part (a row at a time when the buffer holds fewer rows than a tile). On CUDA the tiles are
the buffer's, and the (at most two) that straddle a segment boundary run a row at a time. The
row range is data-dependent, which TensorIR's schedule primitives cannot express (they need
affine block bindings), so each target's kernel is written with its schedule in place: on the
CPU, output channels in SIMD lanes, and in parallel either channel blocks (a short segment, the
expert's share of a small batch) or row tiles (a long one); on CUDA, a thread per (row tile,
output channel), warps along the channels so weight loads coalesce.

``reference`` (numpy) is ``segmented_reference``.
"""

from __future__ import annotations

import numpy as np
from tvm import tirx
from tvm.script import tirx as T

from saddc.schedules.cpu_rule import CPU_SCRATCH_SCOPE
from saddc.schedules.shift_codes import ShiftWeights, codes_per_word, reference_matmul
from saddc.schedules.shift_gemm import decoded_weight, packed_code, shifted_product
from saddc.schedules.simd import simd_lanes, target_lanes

__all__ = ["DENSE", "SHIFT", "KINDS", "cpu_tile", "dense_segment", "shift_segment", "segmented_reference"]

DENSE = "dense"
SHIFT = "shift"
KINDS = (DENSE, SHIFT)

# The CPU kernel runs a segment of up to CHANNEL_MAJOR_ROWS rows as tasks of one channel block by
# CHUNK_TILES row tiles (tiles shaped by ``cpu_tile``), a longer one as tasks of one row tile by
# every channel block (see the kernel).
CHANNEL_MAJOR_ROWS = 1024
CHUNK_TILES = 8
# Rows of a CUDA tile (sharing each weight load); output channels a CUDA thread block spans.
ROWS_CUDA = 4
THREADS_N = 64
THREADS_M = 4


def cpu_tile(target) -> tuple[int, int]:
    """(rows, output channels) of the CPU kernel's register tile on ``target``: two vectors of
    channels by as many rows as keep the accumulators within the vector registers beside the
    weight and activation loads: 8 rows with AVX-512's 32 registers (16 accumulators), 6 with
    the 16 of AVX2 or SSE (12). Measured on the dense 192 -> 768 segment of 1576 rows (Zen 5,
    two cores): AVX-512 8 x 32 1.98 ms (4 x 32 2.34); AVX2 6 x 16 3.9 ms (8 x 32, which spills,
    6.5); SSE 6 x 8 10.6 ms (8 x 32 14.7)."""
    vector = target_lanes(target)
    return (8 if vector == 16 else 6), 2 * vector


def cpu_panel(out_features: int, target) -> int:
    """Output channels of a CPU channel block (``cpu_tile``'s, or fewer where they do not divide
    ``out_features``): the width of the column panels the CPU kernel reads its weights from."""
    return simd_lanes(out_features, cpu_tile(target)[1])


def pack_panels(weight: np.ndarray, panel: int) -> np.ndarray:
    """A K x N weight as (N / panel, K, panel) column panels, each contiguous."""
    rows, columns = weight.shape
    return np.ascontiguousarray(weight.reshape(rows, columns // panel, panel).transpose(1, 0, 2))


def segmented_reference(xs: np.ndarray, offsets: np.ndarray, experts: list) -> np.ndarray:
    """``ys`` with each expert's rows computed by it (numpy). ``experts``: per expert, a tuple
    ``(DENSE, weight (K, N), bias)`` or ``(SHIFT, ShiftWeights, bias)``."""
    out_features = _out_features(experts[0])
    ys = np.zeros((xs.shape[0], out_features), np.float32)
    for e, (kind, weights, bias) in enumerate(experts):
        rows = xs[offsets[e]:offsets[e + 1]].astype(np.float32)
        ys[offsets[e]:offsets[e + 1]] = (reference_matmul(rows, weights, bias) if kind == SHIFT
                                        else rows @ weights + bias)
    return ys


def _out_features(expert) -> int:
    kind, weights, _ = expert
    return weights.out_features if isinstance(weights, ShiftWeights) else weights.shape[1]


def dense_segment(expert: int, in_features: int, out_features: int, target, panels: int = 0) -> tirx.PrimFunc:
    """``ys[m] = xs[m] @ weight + bias`` for expert ``expert``'s rows; with ``panels`` (the CPU
    form only: ``cpu_panel``'s width) the weight comes as ``pack_panels`` lays it out."""
    def product(xs, weight, m, k, n):
        return xs[m, k] * (weight[n // panels, k, n % panels] if panels else weight[k, n])

    weight_shape = (out_features // panels, in_features, panels) if panels else (in_features, out_features)
    return _segment_kernel(expert, in_features, out_features, target, product, ("float32",), (weight_shape,),
                           reduce_extent=(in_features, 1))


def shift_segment(expert: int, in_features: int, out_features: int, bits: int, target) -> tirx.PrimFunc:
    """``ys[m] = xs[m] @ W + bias`` for expert ``expert``'s rows, ``W`` in the packed shift format."""
    per_word = codes_per_word(bits)
    words = -(-in_features // per_word)
    weight_dtypes, weight_shapes = ("uint32", "int32"), ((words, out_features), (out_features,))
    if target.kind.name != "cuda":
        def decode(packed, exponents, k, n):
            return decoded_weight(packed_code(packed, k // per_word, k % per_word, n, bits), exponents[n], bits)

        panel = cpu_panel(out_features, target)

        def dense_product(xs, decoded, _exponents, m, k, _, n):
            return xs[m, k] * decoded[n // panel, k, n % panel]

        return _segment_kernel(expert, in_features, out_features, target, dense_product, weight_dtypes,
                               weight_shapes, reduce_extent=(in_features, 1), decode=decode)

    def product(xs, packed, exponents, m, word, lane, n):
        # Codes past K are zero weights; clamping keeps the activation read in bounds.
        k = tirx.min(word * per_word + lane, in_features - 1)
        return shifted_product(xs[m, k], packed_code(packed, word, lane, n, bits), exponents[n], bits)

    return _segment_kernel(expert, in_features, out_features, target, product, weight_dtypes, weight_shapes,
                           reduce_extent=(words, per_word))


def _segment_kernel(expert, in_features, out_features, target, product, weight_dtypes, weight_shapes,
                    reduce_extent, decode=None):
    """The CPU or CUDA kernel around ``product``: a dense expert has one weight buffer and a
    plain k loop; a shift expert has two (packed codes, exponents) and a (word, lane) loop, or
    on the CPU a ``decode`` of them to a K x N weight that ``product`` reads in a plain k loop."""
    two_buffers = len(weight_shapes) == 2

    def term(xs, first, second, m, k_outer, k_inner, n):
        if two_buffers:
            return product(xs, first, second, m, k_outer, k_inner, n)
        return product(xs, first, m, k_outer, n)

    # A dense expert's kernel is written with a second weight buffer like a shift expert's and
    # loses it afterwards, so one kernel text serves both kinds.
    weights = (weight_shapes[0], weight_dtypes[0], weight_shapes[-1], weight_dtypes[-1])
    if target.kind.name == "cuda":
        kernel = _cuda_kernel(expert, in_features, out_features, term, weights, reduce_extent)
    else:
        kernel = _cpu_kernel(expert, in_features, out_features, term, weights, reduce_extent, decode,
                             cpu_tile(target))
    return _drop_unused_second(kernel, two_buffers)


def _cpu_kernel(expert, in_features, out_features, term, weights, reduce_extent, decode, tile_shape):
    decodes = decode is not None
    rows, widest = tile_shape
    lanes = simd_lanes(out_features, widest)  # cpu_panel(out_features, target)
    outer, inner = reduce_extent
    first_shape, first_dtype, second_shape, second_dtype = weights
    channel_blocks = out_features // lanes
    chunk_rows = rows * CHUNK_TILES

    @T.macro
    def tile(xs, weight, second, bias, ys, m0, tile_rows, channel_block, low, high):
        # Rows m0 .. m0 + tile_rows are computed, those in [low, high) stored.
        acc = T.alloc_buffer((tile_rows, lanes), "float32", scope=CPU_SCRATCH_SCOPE)
        for r in T.unroll(tile_rows):
            for i in T.vectorized(lanes):
                acc[r, i] = T.float32(0)
        for k_outer in range(outer):
            for k_inner in T.unroll(inner):
                for r in T.unroll(tile_rows):
                    for i in T.vectorized(lanes):
                        acc[r, i] = acc[r, i] + term(xs, weight, second, m0 + r, k_outer, k_inner,
                                                     channel_block * lanes + i)
        for r in T.unroll(tile_rows):
            if low <= m0 + r and m0 + r < high:
                for i in T.vectorized(lanes):
                    ys[m0 + r, channel_block * lanes + i] = acc[r, i] + bias[channel_block * lanes + i]

    @T.macro
    def tiles(xs, weight, second, bias, ys, tokens, first_row, end, channel_block, count):
        # Up to ``count`` tiles from row first_row, of the segment's rows before ``end``.
        for t in range(count):
            low = T.Bind(first_row + t * rows)
            high = T.Bind(T.min(low + rows, end))
            if high > low:
                if tokens >= rows:
                    # A tile that the segment's end cuts runs the whole-tile body on a window
                    # of `rows` rows of the buffer that covers its part (from its first row, or
                    # ending at the buffer's last; rows outside the segment are computed, not
                    # stored). Its rows one at a time would each load every weight, as a whole
                    # tile does (DeiT-Tiny's fc1 segment of rows 98-196, both cores: dense
                    # 124 -> 75 us, shift 206 -> 86 us).
                    tile(xs, weight, second, bias, ys, T.min(low, tokens - rows), rows, channel_block, low, high)
                else:
                    for m in range(high - low):
                        tile(xs, weight, second, bias, ys, low + m, 1, channel_block, low + m, low + m + 1)

    @T.prim_func(private=True, s_tir=True)
    def segment(xs_handle: T.handle, offsets: T.Buffer((3,), "int32"), first: T.Buffer(first_shape, first_dtype),
                second: T.Buffer(second_shape, second_dtype), bias: T.Buffer((out_features,), "float32"),
                ys_handle: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        tokens = T.int64()
        xs = T.match_buffer(xs_handle, (tokens, in_features), "float32")
        ys = T.match_buffer(ys_handle, (tokens, out_features), "float32")
        with T.sblock("root"):
            # Scalars are bound (T.Bind), not assigned: TVMScript makes an assigned scalar a
            # one-element local buffer, which the CPU allocates on the heap at each assignment.
            start = T.Bind(T.Cast("int64", offsets[expert]))
            end = T.Bind(T.Cast("int64", offsets[expert + 1]))
            if decodes:
                # Once a call, and only for an expert with rows: the weights in fp32, each
                # channel block by one thread, in the order the channel-major loop below
                # gives the threads their channel blocks, into column panels (a channel
                # block's K x lanes weights contiguous, as a dense expert's are packed).
                decoded = T.alloc_buffer((channel_blocks, in_features, lanes), "float32")
                if end > start:
                    for channel_block in T.parallel(channel_blocks):
                        for k in range(in_features):
                            for i in T.vectorized(lanes):
                                decoded[channel_block, k, i] = decode(first, second, k, channel_block * lanes + i)
            weight = decoded if decodes else first
            # A parallel loop's tasks go to the threads in equal runs, in order.
            if end - start <= CHANNEL_MAJOR_ROWS:
                # Channel blocks outermost: each thread gets its share of the channel blocks
                # for all the segment's rows and, when the thread count divides the channel
                # blocks, reads only the decoded weights it wrote. (Decoded weights that every
                # thread reads move between the cores' caches each call: DeiT-Tiny's fc1 Shift
                # segment of 99 rows, both cores, took 170 us tiled by rows, 99 us now.)
                chunks = T.Bind(T.ceildiv(end - start, T.int64(chunk_rows)))
                for task in T.parallel(channel_blocks * chunks):
                    tiles(xs, weight, second, bias, ys, tokens, start + task % chunks * chunk_rows, end,
                          task // chunks, CHUNK_TILES)
            else:
                # Row tiles outermost: a tile's activations stay in the core's L1 cache while
                # every channel block reads them (faster from about 1000 rows: 3152 rows of
                # DeiT-Tiny's fc1, both cores, dense 2.7 ms against 2.9 channel-major).
                for tile_index in T.parallel(T.ceildiv(end - start, T.int64(rows))):
                    for channel_block in range(channel_blocks):
                        tiles(xs, weight, second, bias, ys, tokens, start + tile_index * rows, end, channel_block, 1)

    return segment


def _cuda_kernel(expert, in_features, out_features, term, weights, reduce_extent):
    rows = ROWS_CUDA
    outer, inner = reduce_extent
    first_shape, first_dtype, second_shape, second_dtype = weights
    channel_blocks = -(-out_features // THREADS_N)

    @T.macro
    def tile(xs, first, second, bias, ys, m0, tile_rows, n):
        acc = T.alloc_buffer((tile_rows,), "float32", scope="local")
        for r in T.unroll(tile_rows):
            acc[r] = T.float32(0)
        for k_outer in range(outer):
            for k_inner in T.unroll(inner):
                for r in T.unroll(tile_rows):
                    acc[r] = acc[r] + term(xs, first, second, m0 + r, k_outer, k_inner, n)
        for r in T.unroll(tile_rows):
            ys[m0 + r, n] = acc[r] + bias[n]

    @T.prim_func(private=True, s_tir=True)
    def segment(xs_handle: T.handle, offsets: T.Buffer((3,), "int32"), first: T.Buffer(first_shape, first_dtype),
                second: T.Buffer(second_shape, second_dtype), bias: T.Buffer((out_features,), "float32"),
                ys_handle: T.handle):
        T.func_attr({"tirx.noalias": True, "tirx.is_scheduled": True})
        tokens = T.int64()
        xs = T.match_buffer(xs_handle, (tokens, in_features), "float32")
        ys = T.match_buffer(ys_handle, (tokens, out_features), "float32")
        with T.sblock("root"):
            for row_block in T.thread_binding(T.ceildiv(tokens, T.int64(rows * THREADS_M)), thread="blockIdx.y"):
                for channel_block in T.thread_binding(channel_blocks, thread="blockIdx.x"):
                    for row_thread in T.thread_binding(THREADS_M, thread="threadIdx.y"):
                        for channel_thread in T.thread_binding(THREADS_N, thread="threadIdx.x"):
                            start = T.Cast("int64", offsets[expert])
                            end = T.Cast("int64", offsets[expert + 1])
                            n = channel_block * THREADS_N + channel_thread
                            low = T.max((row_block * THREADS_M + row_thread) * rows, start)
                            high = T.min((row_block * THREADS_M + row_thread) * rows + rows, end)
                            if n < out_features:
                                if high - low == rows:
                                    tile(xs, first, second, bias, ys, low, rows, n)
                                else:
                                    for m in range(T.max(high - low, T.int64(0))):
                                        tile(xs, first, second, bias, ys, low + m, 1, n)

    return segment


def _drop_unused_second(func: tirx.PrimFunc, two_buffers: bool) -> tirx.PrimFunc:
    """A dense expert's kernel has one weight buffer: its unused second parameter is removed."""
    if two_buffers:
        return func
    params = list(func.params)
    del params[3]
    return tirx.PrimFunc(params, func.body, func.ret_type, func.attrs)
