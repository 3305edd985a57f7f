"""Shift GEMM: ``y = x @ W (+ b)`` with ``W`` in the packed power-of-two format (shift_codes).

Two kernels compute it:

``add-only`` (CUDA and CPU). Every product ``x * (+-2^s)`` is an integer add of ``s`` to the
exponent field of ``x`` and an XOR of the sign bit, then one float add into the accumulator;
no floating-point multiply anywhere in the kernel. ``s = e_n + level - top`` folds the channel
scale in, so no epilogue scaling is needed either. Edge cases, with selects (not multiplies):
a zero weight or a zero or subnormal activation contributes 0 (subnormals are flushed, as GPU
fast paths do); a product below fp32's normal range flushes to 0; one above it becomes +-inf;
an Inf or NaN activation passes through.

``decode-dense`` (CPU). The codes and channel scales are decoded to the exact fp32 weights
``+-2^s`` with bit operations, once per call into a K x N buffer, and a register-blocked FMA
matmul (``cpu_matmul.register_block``) runs on them. The packed codes stay the module's weights
(5/32 of the fp32 bytes); the products are exact, so the result matches add-only up to
summation order (a product below fp32's normal range is not flushed). On x86 an FMA is one
instruction where the shift product is about 15 integer and select ones, so this is the fast CPU
form.

``decode-mma`` (CUDA). The codes are decoded to fp16 with bit operations (sign, and the level
as the fp16 exponent field: 5-bit levels are exactly fp16's normal range 2^[-14, 0]), the
activations are cast to fp16, and DLight's tensor-core matmul rule runs the GEMM with fp32
accumulation; the channel scale ``2^e_n`` and the bias are applied in the epilogue. It trades
fp16 rounding of the activations for tensor-core throughput.

The CUDA and CPU schedules of the kernels are below, beside their compute definitions;
``reference`` (numpy) is ``shift_codes.reference_matmul``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from tvm import s_tir, te, tirx

from saddc.schedules.shift_codes import codes_per_word, reference_matmul, top_level
from saddc.schedules.cpu_matmul import column_panel, register_block
from saddc.schedules.simd import simd_lanes, target_lanes

__all__ = ["ADD_ONLY", "DECODE_DENSE", "DECODE_MMA", "VARIANTS", "shift_gemm_te", "schedule", "schedule_cpu",
           "schedule_cuda", "choose_variant", "reference"]

ADD_ONLY = "add-only"
DECODE_DENSE = "decode-dense"
DECODE_MMA = "decode-mma"
VARIANTS = (ADD_ONLY, DECODE_DENSE, DECODE_MMA)
# The variants each target kind runs, and the default where no latency was measured: the
# exact multiply-free kernel on GPUs; on CPUs the FMA form (see the module doc).
TARGET_VARIANTS = {"cuda": (ADD_ONLY, DECODE_MMA), "llvm": (DECODE_DENSE, ADD_ONLY)}

VARIANT_ATTR = "saddc.shift_variant"
ACCUMULATE_BLOCK = "shift_gemm"
STORE_BLOCK = "shift_gemm_store"
DECODE_BLOCK = "shift_decode"

reference = reference_matmul

_SIGN_BIT = 0x80000000
_FP32_INF = 0x7F800000


def _u32(value: int) -> tirx.PrimExpr:
    return tirx.const(value, "uint32")


def shifted_product(x_value, code, exponent, bits: int):
    """``x * (+-2^s)`` for one activation and one code, by exponent-field arithmetic only."""
    x_bits = tirx.reinterpret("uint32", x_value)
    level = tirx.Cast("int32", code & _u32(top_level(bits)))
    sign = (code >> _u32(bits - 1)) & _u32(1)
    shift = exponent + level - top_level(bits)
    x_exponent = tirx.Cast("int32", (x_bits >> _u32(23)) & _u32(0xFF))
    new_exponent = x_exponent + shift
    shifted = x_bits + (tirx.Cast("uint32", shift) << _u32(23))
    overflowed = (x_bits & _u32(_SIGN_BIT)) | _u32(_FP32_INF)
    product_bits = tirx.Select(
        x_exponent == 0xFF, x_bits, tirx.Select(new_exponent >= 0xFF, overflowed, shifted)
    ) ^ (sign << _u32(31))
    contributes = tirx.all(level != 0, x_exponent != 0, new_exponent >= 1)
    return tirx.Select(contributes, tirx.reinterpret("float32", product_bits), tirx.const(0.0, "float32"))


def decoded_weight(code, exponent, bits: int):
    """The fp32 weight ``+-2^(exponent + level - top)`` of one code, by bit operations; 0 for a
    zero code or a weight below fp32's normal range."""
    level = tirx.Cast("int32", code & _u32(top_level(bits)))
    sign = (code >> _u32(bits - 1)) & _u32(1)
    biased = exponent + level - top_level(bits) + 127
    weight_bits = (sign << _u32(31)) | (tirx.Cast("uint32", biased) << _u32(23))
    return tirx.Select(tirx.all(level != 0, biased >= 1), tirx.reinterpret("float32", weight_bits),
                       tirx.const(0.0, "float32"))


def packed_code(packed, word, lane, n, bits: int):
    """Code ``lane`` of packed word ``[word, n]``: the weight of in-feature ``word * per_word + lane``."""
    return (packed[word, n] >> tirx.Cast("uint32", lane * bits)) & _u32((1 << bits) - 1)


def _code(packed, k, n, bits: int):
    per_word = codes_per_word(bits)
    return packed_code(packed, k // per_word, k % per_word, n, bits)


def shift_gemm_te(x: te.Tensor, packed: te.Tensor, exponents: te.Tensor, bias: te.Tensor | None,
                  bits: int, in_features: int, variant: str = ADD_ONLY) -> te.Tensor:
    """TE compute of the shift GEMM: ``x`` (M, K) float32 -> (M, N) float32; ``decode-dense``
    takes ``x`` (..., K) with any leading dimensions."""
    if variant == DECODE_MMA:
        return _decode_mma_te(x, packed, exponents, bias, bits, in_features)
    if variant == DECODE_DENSE:
        return _decode_dense_te(x, packed, exponents, bias, bits, in_features)
    rows = x.shape[0]
    words, out_features = packed.shape
    per_word = codes_per_word(bits)
    word = te.reduce_axis((0, words), name="kw")
    lane = te.reduce_axis((0, per_word), name="j")

    def accumulate(m, n):
        k = word * per_word + lane
        if words * per_word != in_features:
            # Codes past K are zero weights, which contribute nothing; clamping the activation
            # index keeps the read in bounds without a predicate in the unrolled loop.
            k = tirx.min(k, in_features - 1)
        return te.sum(shifted_product(x[m, k], packed_code(packed, word, lane, n, bits), exponents[n], bits),
                      axis=[word, lane])

    acc = te.compute((rows, out_features), accumulate, name=ACCUMULATE_BLOCK)
    return _store(acc, bias)


def _store(acc: te.Tensor, bias: te.Tensor | None) -> te.Tensor:
    """The write-back of the accumulator, adding the bias (over the last dimension)."""
    if bias is None:
        return te.compute(acc.shape, lambda *i: acc[i], name=STORE_BLOCK)
    return te.compute(acc.shape, lambda *i: acc[i] + bias[i[-1]], name=STORE_BLOCK)


def _decode_mma_te(x, packed, exponents, bias, bits, in_features):
    rows = x.shape[0]
    out_features = packed.shape[1]
    top = top_level(bits)

    def decode(k, n):
        code = _code(packed, k, n, bits)
        level = code & _u32(top)
        sign = (code >> _u32(bits - 1)) & _u32(1)
        # fp16 exponent field of 2^(level - top) is level - top + 15.
        half_bits = (sign << _u32(15)) | ((level + _u32(15 - top)) << _u32(10))
        half = tirx.reinterpret("float16", tirx.Cast("uint16", half_bits))
        return tirx.Select(level != 0, half, tirx.const(0.0, "float16"))

    weight = te.compute((in_features, out_features), decode, name=DECODE_BLOCK)
    x_half = te.compute(x.shape, lambda m, k: x[m, k].astype("float16"), name="shift_cast")
    k = te.reduce_axis((0, in_features), name="k")
    acc = te.compute(
        (rows, out_features),
        lambda m, n: te.sum(x_half[m, k].astype("float32") * weight[k, n].astype("float32"), axis=k),
        name=ACCUMULATE_BLOCK,
    )

    def store(m, n):
        # 2^e as fp32 bits; the encoder keeps e within fp32's normal range.
        scale = tirx.reinterpret("float32", tirx.Cast("uint32", exponents[n] + 127) << _u32(23))
        value = acc[m, n] * scale
        return value + bias[n] if bias is not None else value

    return te.compute((rows, out_features), store, name=STORE_BLOCK)


def _decode_dense_te(x, packed, exponents, bias, bits, in_features):
    # Any leading dimensions, not only rows: with a symbolic batch the token dimension stays a
    # static loop, which the register-blocked schedule tiles without a predicate.
    leading = list(x.shape[:-1])
    out_features = packed.shape[1]

    def decode(k, n):
        return decoded_weight(_code(packed, k, n, bits), exponents[n], bits)

    weight = te.compute((in_features, out_features), decode, name=DECODE_BLOCK)
    k = te.reduce_axis((0, in_features), name="k")
    acc = te.compute((*leading, out_features), lambda *i: te.sum(x[(*i[:-1], k)] * weight[k, i[-1]], axis=k),
                     name=ACCUMULATE_BLOCK)
    return _store(acc, bias)


def schedule_cpu(sch: s_tir.Schedule, lanes: int = 16) -> None:
    """Add-only kernel on x86-64: rows in parallel, output channels in SIMD lanes.

    Packed words are laid out with n fastest, so the codes of ``lanes`` channels are one vector
    load; the code lane loop is unrolled so every bit shift is a constant. The accumulators
    stay in registers (a ``lanes``-wide local tile) and the store block writes them back.
    (A tile of several rows sharing each decoded code measured no faster on 2 x86 cores: the
    per-product integer work, not the decoding, bounds the kernel.)
    """
    accumulate, store = sch.get_sblock(ACCUMULATE_BLOCK), sch.get_sblock(STORE_BLOCK)
    m, n, word, lane = sch.get_loops(accumulate)
    # No wider than the layer: a unit-extent lane loop cannot be vectorized.
    lanes = min(lanes, int(sch.get(n).extent))
    n_outer, n_inner = sch.split(n, [None, lanes])
    sch.reorder(m, n_outer, word, lane, n_inner)
    sch.parallel(m)
    sch.unroll(lane)
    sch.set_scope(accumulate, 0, "local")
    sch.reverse_compute_at(store, n_outer)
    if lanes == 1:
        sch.decompose_reduction(accumulate, word)
        return
    # Vectorize while the block still has its init (a reduction block), then split the init out.
    sch.vectorize(n_inner)
    init = sch.decompose_reduction(accumulate, word)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.vectorize(sch.get_loops(store)[-1])


def schedule_cpu_decode_dense(sch: s_tir.Schedule, lanes: int) -> None:
    """Decode-dense kernel on x86-64: the decode in parallel over in-features, vectorized over
    output channels, into the column panels the matmul reads (as ``PackMatmulWeights`` packs
    a constant weight: (N / NR, K, NR)); then the register-blocked matmul of ``cpu_matmul``
    with the bias store as its epilogue."""
    decode = sch.get_sblock(DECODE_BLOCK)
    out_features = int(sch.get(sch.get_loops(decode)[-1]).extent)
    panel = column_panel(out_features, lanes)
    sch.transform_layout(decode, ("write", 0), lambda k, n: (n // panel, k, n % panel))
    k, n = sch.get_loops(decode)
    _, n_inner = sch.split(n, [None, simd_lanes(out_features, lanes)])
    sch.parallel(k)
    sch.vectorize(n_inner)
    register_block(sch, sch.get_sblock(ACCUMULATE_BLOCK), sch.get_sblock(STORE_BLOCK), lanes)


def schedule_cuda(sch: s_tir.Schedule, threads_n: int = 64, threads_m: int = 2, rows_per_thread: int = 4) -> None:
    """Add-only kernel on CUDA: a (threads_m * rows_per_thread) x threads_n output tile a block.

    Threads of a warp take consecutive output channels, so their code words are one coalesced
    load, and share each activation (a broadcast). Each thread keeps ``rows_per_thread``
    accumulators in registers and reuses each decoded code for all of them.
    """
    accumulate, store = sch.get_sblock(ACCUMULATE_BLOCK), sch.get_sblock(STORE_BLOCK)
    m, n, word, lane = sch.get_loops(accumulate)
    m_block, m_thread, m_inner = sch.split(m, [None, threads_m, rows_per_thread])
    n_block, n_thread = sch.split(n, [None, threads_n])
    sch.reorder(m_block, n_block, m_thread, n_thread, word, lane, m_inner)
    sch.bind(m_block, "blockIdx.y")
    sch.bind(n_block, "blockIdx.x")
    sch.bind(m_thread, "threadIdx.y")
    sch.bind(n_thread, "threadIdx.x")
    sch.unroll(lane)
    sch.unroll(m_inner)
    sch.set_scope(accumulate, 0, "local")
    sch.reverse_compute_at(store, n_thread)
    sch.decompose_reduction(accumulate, word)


def schedule(func: tirx.PrimFunc, target) -> s_tir.Schedule | None:
    """The schedule of a shift GEMM kernel made by ``shift_gemm_te`` for ``target``; for
    decode-mma DLight's tensor-core matmul rule's, or None where that rule does not take the
    kernel (a layer of one row: a matrix-vector product, which the rules after it schedule)."""
    variant = str(func.attrs[VARIANT_ATTR])
    is_cuda = target.kind.name == "cuda"
    if variant == DECODE_MMA:
        from tvm.s_tir import dlight as dl  # pylint: disable=import-outside-toplevel

        return dl.gpu.Matmul().apply(func, target, False)
    sch = s_tir.Schedule(func)
    if variant == DECODE_DENSE:
        schedule_cpu_decode_dense(sch, target_lanes(target))
    else:
        (schedule_cuda if is_cuda else schedule_cpu)(sch)
    return sch


LATENCY_TABLE = Path(__file__).with_name("shift_gemm_latency.json")
# DLight's Matmul rule tensorizes only when every static GEMM dimension exceeds this.
_MMA_MIN_DIM = 64


def choose_variant(target_key: str, rows: int | None, in_features: int, out_features: int,
                   bits: int, requested: str = "auto") -> tuple[str, str]:
    """The kernel variant for one layer on ``target_key`` (``llvm-<cpu>`` or ``cuda-<sm>``), and why.

    ``auto`` picks the faster of the target's variants in the latency table that
    ``benchmarks/bench_shift_gemm.py --record`` writes on the target's machine, for this weight
    shape and code width at the nearest measured row count. Without a measurement it takes the
    target kind's default (``TARGET_VARIANTS``), and the reason says so.
    """
    kind = target_key.split("-")[0]
    offered = TARGET_VARIANTS[kind]
    if requested != "auto":
        if requested not in offered:
            raise ValueError(_WRONG_TARGET[requested])
        if requested == DECODE_MMA and min(d for d in (rows, in_features, out_features) if d) <= _MMA_MIN_DIM:
            return requested, f"requested; a dimension <= {_MMA_MIN_DIM}: DLight runs it without tensor cores"
        return requested, "requested"
    entries = [
        e for e in _latency_table().get(target_key, [])
        if (e["in_features"], e["out_features"], e["bits"]) == (in_features, out_features, bits)
    ]
    if not entries:
        return offered[0], f"default on {kind}: no {target_key} latency measured for {in_features}x{out_features}"
    nearest = min(entries, key=lambda e: abs(e["rows"] - (rows or e["rows"])))
    timings = {variant: nearest["us"][variant] for variant in offered if variant in nearest["us"]}
    best = min(timings, key=timings.get)
    listed = ", ".join(f"{v} {t:.1f} us" for v, t in timings.items())
    return best, f"measured at {nearest['rows']} rows on {nearest['device']}: {listed}"


_WRONG_TARGET = {
    DECODE_MMA: "the decode-mma shift kernel needs tensor cores: use it with --target cuda",
    DECODE_DENSE: "the decode-dense shift kernel is the CPU form: use it with --target llvm (on cuda: decode-mma)",
}


@functools.lru_cache(maxsize=1)
def _latency_table() -> dict:
    if not LATENCY_TABLE.exists():
        return {}
    return json.loads(LATENCY_TABLE.read_text())
