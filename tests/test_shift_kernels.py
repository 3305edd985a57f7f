"""The packed shift format and the shift GEMM kernels: numerics against the numpy reference,
and an instruction census of the generated LLVM IR and PTX."""

import numpy as np
import pytest
import tvm
from tvm import s_tir, te

from saddc.census import llvm_census, ptx_census
from saddc.schedules import shift_codes, shift_gemm


def powers_of_two(shape, low=-14, high=0, zero_fraction=0.1, seed=0):
    rng = np.random.default_rng(seed)
    values = np.ldexp(1.0, rng.integers(low, high + 1, size=shape)) * rng.choice([-1.0, 1.0], size=shape)
    values[rng.random(shape) < zero_fraction] = 0.0
    return values.astype("float32")


@pytest.mark.parametrize("bits,low", [(5, -14), (4, -6)])
def test_powers_of_two_within_range_encode_exactly(bits, low):
    weight = powers_of_two((37, 19), low=low)
    weight[:, 3] *= 2.0 ** 40  # a channel scale far from 1 keeps the codes exact
    weight[:, 4] *= 2.0 ** -60
    encoded = shift_codes.encode(weight, bits)
    np.testing.assert_array_equal(encoded.decode(), weight)
    error = shift_codes.weight_error(weight, encoded)
    assert error.exact and error.sqnr_db == float("inf") and error.max_abs_error == 0.0


def test_lossy_rounding_is_nearest_power_of_two_and_reports_error():
    weight = np.random.default_rng(1).standard_normal((64, 32)).astype("float32")
    encoded = shift_codes.encode(weight, 5)
    decoded = encoded.decode()
    nonzero = decoded != 0
    mantissa, _ = np.frexp(np.abs(decoded[nonzero]))
    assert np.all(mantissa == 0.5), "every decoded weight is a power of two"
    assert np.all(np.sign(decoded[nonzero]) == np.sign(weight[nonzero]))
    # Nearest in the linear domain: within a third of the magnitude (midpoint 1.5 * 2^p).
    assert np.all(np.abs(decoded - weight)[nonzero] <= np.abs(weight[nonzero]) / 3 + 1e-7)
    error = shift_codes.weight_error(weight, encoded)
    assert not error.exact and 10 < error.sqnr_db < 20
    assert error.max_abs_error == pytest.approx(np.abs(decoded - weight).max())


def test_all_zero_layer_and_extreme_magnitudes():
    zero = shift_codes.encode(np.zeros((8, 4), "float32"))
    assert not zero.packed.any() and not zero.decode().any()
    assert shift_codes.weight_error(np.zeros((8, 4)), zero).exact
    huge = np.full((8, 4), 3.0e38, "float32")
    assert np.all(shift_codes.encode(huge).decode() == np.float32(2.0 ** 127))
    tiny = np.full((8, 4), 1e-40, "float32")  # subnormal weights round to 2^-133
    assert np.isfinite(shift_codes.encode(tiny).decode()).all()
    mixed = np.array([[1e30, -1e-30], [0.0, 3e-45]], "float32")
    decoded = shift_codes.encode(mixed).decode()
    assert decoded[0, 0] == np.float32(2.0 ** 100) and decoded[0, 1] == -np.float32(2.0 ** -100)


def test_nan_and_inf_weights_are_rejected():
    weight = np.ones((4, 4), "float32")
    weight[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN or Inf \(first at \[2, 1\]\)"):
        shift_codes.encode(weight)


def build_kernel(rows, in_features, out_features, bits, with_bias, target, variant=shift_gemm.ADD_ONLY):
    words = -(-in_features // shift_codes.codes_per_word(bits))
    x = te.placeholder((rows, in_features), "float32", name="x")
    packed = te.placeholder((words, out_features), "uint32", name="packed")
    exponents = te.placeholder((out_features,), "int32", name="exponents")
    bias = te.placeholder((out_features,), "float32", name="bias") if with_bias else None
    out = shift_gemm.shift_gemm_te(x, packed, exponents, bias, bits, in_features, variant)
    func = te.create_prim_func([x, packed, exponents] + ([bias] if with_bias else []) + [out])
    func = func.with_attr(shift_gemm.VARIANT_ATTR, variant)
    tvm_target = tvm.target.Target(target)
    with tvm_target:
        scheduled = shift_gemm.schedule(func, tvm_target)
    return tvm.compile(scheduled.mod, target=tvm_target)


def run_cpu(kernel, x, encoded, bias):
    args = [x, encoded.packed, encoded.exponents] + ([bias] if bias is not None else [])
    out = tvm.runtime.tensor(np.zeros((x.shape[0], encoded.out_features), "float32"))
    kernel(*[tvm.runtime.tensor(a) for a in args], out)
    return out.numpy()


@pytest.mark.parametrize("rows,in_features,out_features,bits,with_bias", [
    (197, 192, 96, 5, True),   # DeiT-like; K a multiple of 6 codes a word
    (33, 70, 45, 5, False),    # K and N not multiples of the word or the vector width
    (17, 64, 40, 4, True),     # 4-bit codes, 8 a word
    (5, 13, 3, 4, False),
])
def test_cpu_kernel_is_bit_exact_against_the_reference(rows, in_features, out_features, bits, with_bias):
    rng = np.random.default_rng(rows)
    weight = rng.standard_normal((in_features, out_features)).astype("float32")
    weight[:, 0] = 0.0  # an all-zero output channel
    encoded = shift_codes.encode(weight, bits)
    x = rng.standard_normal((rows, in_features)).astype("float32")
    x[0, :5] = 0.0
    bias = rng.standard_normal(out_features).astype("float32") if with_bias else None
    kernel = build_kernel(rows, in_features, out_features, bits, with_bias, {"kind": "llvm"})
    np.testing.assert_array_equal(run_cpu(kernel, x, encoded, bias), shift_codes.reference_matmul(x, encoded, bias))


@pytest.mark.parametrize("rows,in_features,out_features,bits,with_bias", [
    (197, 192, 96, 5, True),
    (33, 70, 45, 5, False),    # N not a multiple of the vector width: a row/column tail
    (17, 64, 40, 4, True),
    (5, 13, 3, 4, False),
])
def test_cpu_decode_dense_kernel_matches_the_reference(rows, in_features, out_features, bits, with_bias):
    """Exact products, float32 sums: equal to the reference up to summation order."""
    rng = np.random.default_rng(rows)
    weight = rng.standard_normal((in_features, out_features)).astype("float32")
    weight[:, 0] = 0.0
    encoded = shift_codes.encode(weight, bits)
    x = rng.standard_normal((rows, in_features)).astype("float32")
    bias = rng.standard_normal(out_features).astype("float32") if with_bias else None
    kernel = build_kernel(rows, in_features, out_features, bits, with_bias, {"kind": "llvm"},
                          shift_gemm.DECODE_DENSE)
    out = run_cpu(kernel, x, encoded, bias)
    expected = shift_codes.reference_matmul(x, encoded, bias)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert not out[:, 0].any() if bias is None else np.array_equal(out[:, 0], np.full(rows, bias[0]))


@pytest.mark.parametrize("out_features", [96, 3072, 45])
def test_cpu_decode_dense_kernel_decodes_into_column_panels(out_features):
    """The decoded weights are laid out as the column panels the register block reads
    (N / NR, K, NR), as PackMatmulWeights packs a dense layer's; the result is unchanged."""
    from saddc.schedules.cpu_matmul import column_panel
    from saddc.schedules.simd import target_lanes

    rows, in_features = 9, 64
    words = -(-in_features // shift_codes.codes_per_word(5))
    x = te.placeholder((rows, in_features), "float32", name="x")
    packed = te.placeholder((words, out_features), "uint32", name="packed")
    exponents = te.placeholder((out_features,), "int32", name="exponents")
    out = shift_gemm.shift_gemm_te(x, packed, exponents, None, 5, in_features, shift_gemm.DECODE_DENSE)
    func = te.create_prim_func([x, packed, exponents, out]).with_attr(shift_gemm.VARIANT_ATTR, shift_gemm.DECODE_DENSE)
    target = tvm.target.Target({"kind": "llvm"})
    with target:
        sch = shift_gemm.schedule(func, target)
    decoded = sch.get(sch.get_sblock(shift_gemm.DECODE_BLOCK)).writes[0].source
    panel = column_panel(out_features, target_lanes(target))
    assert tuple(int(d) for d in decoded.ty.shape) == (out_features // panel, in_features, panel)
    encoded = shift_codes.encode(np.random.default_rng(4).standard_normal((in_features, out_features)).astype("float32"))
    inputs = np.random.default_rng(5).standard_normal((rows, in_features)).astype("float32")
    expected = shift_codes.reference_matmul(inputs, encoded, None)
    np.testing.assert_allclose(run_cpu(tvm.compile(sch.mod, target=target), inputs, encoded, None), expected,
                               rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_cpu_decode_dense_kernel_decodes_every_weight_exactly():
    """One-hot rows read the decoded weights back: every code, sign and channel scale."""
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((24, 16)).astype("float32") * np.float32(2.0) ** rng.integers(-20, 20, 16)
    encoded = shift_codes.encode(weight, 5)
    kernel = build_kernel(24, 24, 16, 5, False, {"kind": "llvm"}, shift_gemm.DECODE_DENSE)
    np.testing.assert_array_equal(run_cpu(kernel, np.eye(24, dtype="float32"), encoded, None), encoded.decode())


def test_cpu_kernel_edge_values():
    """Products that underflow flush to zero, that overflow become inf; inf and NaN inputs pass."""
    weight = np.array([[2.0 ** 100, 1.0], [2.0 ** -100, 1.0]], "float32")
    encoded = shift_codes.encode(weight[:, :1], 5)  # one channel: 2^100 and (out of range) 0
    x = np.array([[2.0 ** 60, 1.0], [2.0 ** -60, 5.0], [np.inf, 0.0], [np.nan, 0.0], [1e-40, 0.0]], "float32")
    kernel = build_kernel(5, 2, 1, 5, False, {"kind": "llvm"})
    out = run_cpu(kernel, x, encoded, None)[:, 0]
    assert out[0] == np.inf                      # 2^160 overflows, as x @ W does
    assert out[1] == np.float32(2.0 ** 40)       # exact
    assert out[2] == np.inf and np.isnan(out[3])
    assert out[4] == 0.0                         # subnormal activations are flushed


def test_cpu_kernel_has_no_float_multiply_in_llvm_ir():
    kernel = build_kernel(197, 192, 576, 5, True, {"kind": "llvm"})
    census = llvm_census(kernel.mod.inspect_source("ll"))
    counts = sum(census.values(), start=__import__("collections").Counter())
    assert counts["float_mul"] == 0 and counts["float_add"] > 0, census


@pytest.fixture(scope="module")
def cuda_codegen():
    from saddc.cuda import ensure_cuda_codegen

    ensure_cuda_codegen()


def cuda_ptx(variant):
    from saddc.cuda import nvcc_compile, nvcc_fatbin_compiler

    with nvcc_fatbin_compiler("sm_90") as stats:
        build_kernel(197, 192, 576, 5, True, {"kind": "cuda", "arch": "sm_90"}, variant)
    (source,) = stats.sources
    return ptx_census(nvcc_compile(source, "sm_90", "ptx").decode())


def test_cuda_add_only_kernel_ptx_has_no_float_multiply(cuda_codegen):
    census = cuda_ptx(shift_gemm.ADD_ONLY)
    (counts,) = census.values()
    assert counts["float_mul"] == 0 and counts["mma"] == 0 and counts["float_add"] > 0, census


@pytest.mark.slow
def test_cuda_decode_mma_kernel_runs_on_tensor_cores(cuda_codegen):
    census = cuda_ptx(shift_gemm.DECODE_MMA)
    (counts,) = census.values()
    assert counts["mma"] > 0, census


def test_variant_choice_is_explained():
    variant, reason = shift_gemm.choose_variant("llvm-x86-64", 197, 192, 576, 5)
    assert variant == shift_gemm.DECODE_DENSE
    assert reason == "default on llvm: no llvm-x86-64 latency measured for 192x576"
    assert shift_gemm.choose_variant("llvm-x86-64", 197, 192, 576, 5, "add-only") == ("add-only", "requested")
    variant, reason = shift_gemm.choose_variant("cuda-sm_99", 197, 192, 576, 5)
    assert variant == shift_gemm.ADD_ONLY and "no cuda-sm_99 latency measured" in reason
    assert shift_gemm.choose_variant("cuda-sm_90", 197, 192, 576, 5, "decode-mma") == ("decode-mma", "requested")
    assert "without tensor cores" in shift_gemm.choose_variant("cuda-sm_90", 3136, 32, 64, 5, "decode-mma")[1]
    with pytest.raises(ValueError, match="tensor cores"):
        shift_gemm.choose_variant("llvm-x86-64", 197, 192, 576, 5, "decode-mma")
    with pytest.raises(ValueError, match="the decode-dense shift kernel is the CPU form"):
        shift_gemm.choose_variant("cuda-sm_90", 197, 192, 576, 5, "decode-dense")


def test_ptx_census_counts_float_multiplies():
    ptx = """.visible .entry k1(
    mul.lo.s32 %r1, %r2, %r3;
    add.f32 %f1, %f2, %f3;
    @%p1 fma.rn.f32 %f4, %f1, %f2, %f3;
.visible .entry k2(
    mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%f1}, {%r1}, {%r2}, {%f2};
    mul.rn.f16x2 %r5, %r6, %r7;
"""
    census = ptx_census(ptx)
    assert census["k1"] == {"int_mul": 1, "float_add": 1, "float_mul": 1}
    assert census["k2"] == {"mma": 1, "float_mul": 1}


def test_variant_choice_follows_measured_latency(tmp_path, monkeypatch):
    table = {"cuda-sm_90": [
        {"rows": 197, "in_features": 192, "out_features": 576, "bits": 5, "device": "NVIDIA H100",
         "us": {"add-only": 30.0, "decode-mma": 12.5}},
        {"rows": 6304, "in_features": 192, "out_features": 576, "bits": 5, "device": "NVIDIA H100",
         "us": {"add-only": 20.0, "decode-mma": 40.0}},
    ]}
    path = tmp_path / "latency.json"
    path.write_text(__import__("json").dumps(table))
    monkeypatch.setattr(shift_gemm, "LATENCY_TABLE", path)
    shift_gemm._latency_table.cache_clear()
    try:
        variant, reason = shift_gemm.choose_variant("cuda-sm_90", 394, 192, 576, 5)
        assert variant == "decode-mma"
        assert reason == "measured at 197 rows on NVIDIA H100: add-only 30.0 us, decode-mma 12.5 us"
        assert shift_gemm.choose_variant("cuda-sm_90", 5000, 192, 576, 5)[0] == "add-only"
        assert shift_gemm.choose_variant("cuda-sm_90", 197, 192, 576, 4)[0] == "add-only"  # 4-bit: not measured
    finally:
        shift_gemm._latency_table.cache_clear()
