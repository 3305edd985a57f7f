"""The additive-attention kernels (hash, masked sum, code matmul, row normalizations): numerics
against the numpy references on the CPU, CUDA builds, and an instruction census showing that
the masked sums hold no floating-point multiply."""

import collections

import numpy as np
import pytest
from tvm import te

from conftest import build_te_kernel, run_te_kernel
from saddc.census import llvm_census, ptx_census
from saddc.schedules import binary_codes, binary_hash, code_matmul, masked_sum, row_normalize

LLVM = {"kind": "llvm"}
CUDA = {"kind": "cuda", "arch": "sm_90"}


def placeholder(shape, dtype="float32", name="t"):
    return te.placeholder(shape, dtype, name)


def rows(shape, seed):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def random_codes(groups, tokens, bits, seed):
    return binary_codes.pack(np.random.default_rng(seed).random((groups, tokens, bits)) < 0.5)


@pytest.mark.parametrize("groups,periods,tokens,dim,bits,with_offset", [
    (6, 3, 37, 20, 16, False),   # three heads with their own hyperplanes
    (2, 1, 50, 16, 40, True),    # two words a row, the second partly used
    (3, 1, 9, 8, 64, False),     # two full words
])
def test_hash_matches_reference(groups, periods, tokens, dim, bits, with_offset):
    x, projection = rows((groups, tokens, dim), 1), rows((periods, dim, bits), 2)
    offset = rows((periods, bits), 3) if with_offset else None
    kernel = build_te_kernel(
        binary_hash.binary_hash_te,
        [placeholder(x.shape, name="x"), placeholder(projection.shape, name="A"),
         placeholder(offset.shape, name="c") if with_offset else None], binary_hash, LLVM, bits=bits)
    codes = run_te_kernel(kernel, [x, projection, offset], (groups, tokens, binary_codes.words_per_row(bits)), "uint32")
    expected = binary_hash.reference(x, projection, offset)
    differ = binary_codes.unpack(codes, bits) != binary_codes.unpack(expected, bits)
    # float32 and float64 projections may disagree only where the projection is next to zero.
    near_zero = np.abs(binary_codes.project(x, projection, offset)) < 1e-4
    assert not np.any(differ & ~near_zero)
    assert differ.sum() <= 1


def test_hash_without_projection_compares_the_row():
    x = rows((2, 11, 24), 4)
    kernel = build_te_kernel(binary_hash.binary_hash_te, [placeholder(x.shape), None, None], binary_hash, LLVM, bits=24)
    codes = run_te_kernel(kernel, [x], (2, 11, 1), "uint32")
    np.testing.assert_array_equal(codes, binary_codes.pack(x > 0))
    with pytest.raises(ValueError, match="one bit per feature"):
        binary_hash.binary_hash_te(placeholder(x.shape), None, None, 16)


@pytest.mark.parametrize("groups,tokens,dim,bits,complement", [
    (3, 197, 64, 16, False),  # DeiT-like; tokens not a multiple of the CUDA chunk
    (2, 70, 20, 13, True),    # bits and columns not multiples of the CPU tile
    (1, 5, 32, 40, False),    # two code words
])
def test_masked_sum_and_counts_match_reference(groups, tokens, dim, bits, complement):
    codes, v = random_codes(groups, tokens, bits, 5), rows((groups, tokens, dim), 6)
    c_in, v_in = placeholder(codes.shape, "uint32", "codes"), placeholder(v.shape, name="v")
    kernel = build_te_kernel(masked_sum.masked_sum_te, [c_in, v_in], masked_sum, LLVM, bits=bits,
                             complement=complement)
    out = run_te_kernel(kernel, [codes, v], (groups, bits, dim))
    np.testing.assert_allclose(out, masked_sum.reference(codes, v, bits, complement), rtol=1e-5, atol=1e-5)
    kernel = build_te_kernel(masked_sum.code_counts_te, [c_in], masked_sum, LLVM, bits=bits)
    np.testing.assert_array_equal(run_te_kernel(kernel, [codes], (groups, bits)),
                                  masked_sum.reference_counts(codes, bits))


@pytest.mark.parametrize("sides", ["set", "clear", "both"])
@pytest.mark.parametrize("groups,tokens,dim,bits", [(3, 197, 64, 16), (2, 9, 20, 40)])
def test_code_matmul_matches_reference(sides, groups, tokens, dim, bits):
    codes = random_codes(groups, tokens, bits, 7)
    on_set = rows((groups, bits, dim), 8) if sides in ("set", "both") else None
    on_clear = rows((groups, bits, dim), 9) if sides in ("clear", "both") else None
    inputs = [placeholder(codes.shape, "uint32", "codes")] + [
        placeholder(a.shape, name=n) if a is not None else None for a, n in ((on_set, "s"), (on_clear, "c"))]
    kernel = build_te_kernel(code_matmul.code_matmul_te, inputs, code_matmul, LLVM, bits=bits)
    out = run_te_kernel(kernel, [codes, on_set, on_clear], (groups, tokens, dim))
    np.testing.assert_allclose(out, code_matmul.reference(codes, on_set, on_clear, bits), rtol=1e-5, atol=1e-5)


def test_match_normalize_divides_by_the_match_count():
    groups, tokens, keys, dim, bits = 2, 33, 50, 24, 16
    codes, numerator = random_codes(groups, tokens, bits, 10), rows((groups, tokens, dim), 11)
    counts = np.random.default_rng(12).integers(0, keys + 1, (groups, bits)).astype("float32")
    counts[0, :] = 0  # group 0: some rows match no key at all (denominator 0)
    inputs = [placeholder(numerator.shape), placeholder(codes.shape, "uint32"), placeholder(counts.shape)]
    kernel = build_te_kernel(row_normalize.match_normalize_te, inputs, row_normalize, LLVM, keys=keys, bits=bits)
    out = run_te_kernel(kernel, [numerator, codes, counts], numerator.shape)
    denominator = binary_codes.code_matmul(codes, counts[:, :, None], keys - counts[:, :, None], bits)
    np.testing.assert_allclose(out, numerator / np.maximum(denominator, 1.0), rtol=1e-6)


def test_angular_normalize_and_divide_rows():
    y, v = rows((3, 17, 40), 13), rows((3, 17, 40), 14)
    y[0, 0] = v[0, 0] = 0.0  # a zero row stays zero instead of 0/0
    kernel = build_te_kernel(row_normalize.angular_normalize_te, [placeholder(y.shape), placeholder(v.shape)],
                             row_normalize, LLVM)
    out = run_te_kernel(kernel, [y, v], y.shape)
    np.testing.assert_allclose(out, row_normalize.reference_angular(y, v), rtol=1e-5, atol=1e-6)
    assert not out[0, 0].any() and np.isfinite(out).all()
    denominator = rows((3, 17), 15) + 5
    kernel = build_te_kernel(row_normalize.divide_rows_te, [placeholder(y.shape), placeholder(denominator.shape)],
                             row_normalize, LLVM)
    np.testing.assert_allclose(run_te_kernel(kernel, [y, denominator], y.shape), y / denominator[:, :, None], rtol=1e-6)


def test_match_form_expansion_equals_its_definition():
    q, k, v = rows((4, 29, 16), 16), rows((4, 41, 16), 17), rows((4, 41, 8), 18)
    projection = binary_codes.simhash_projection(0, 0, 2, 16, 16)
    np.testing.assert_allclose(binary_codes.match_attention(q, k, v, projection),
                               binary_codes.match_attention_direct(q, k, v, projection), rtol=1e-5, atol=1e-6)


def test_simhash_is_seeded_per_block():
    first = binary_codes.simhash_projection(0, 3, 2, 16, 16)
    np.testing.assert_array_equal(first, binary_codes.simhash_projection(0, 3, 2, 16, 16))
    assert not np.array_equal(first, binary_codes.simhash_projection(0, 4, 2, 16, 16))
    assert not np.array_equal(first, binary_codes.simhash_projection(1, 3, 2, 16, 16))


ADD_ONLY_KERNELS = {
    "masked_sum": (masked_sum.masked_sum_te, masked_sum, [((2, 197, 1), "uint32"), ((2, 197, 64), "float32")]),
    "code_counts": (masked_sum.code_counts_te, masked_sum, [((2, 197, 1), "uint32")]),
    "code_matmul": (code_matmul.code_matmul_te, code_matmul,
                    [((2, 197, 1), "uint32"), ((2, 16, 64), "float32"), ((2, 16, 64), "float32")]),
}


def add_only_inputs(name):
    compute, module, shapes = ADD_ONLY_KERNELS[name]
    return compute, module, [placeholder(shape, dtype, f"in{i}") for i, (shape, dtype) in enumerate(shapes)]


@pytest.mark.parametrize("name", sorted(ADD_ONLY_KERNELS))
def test_masked_sums_have_no_float_multiply_in_llvm_ir(name):
    compute, module, inputs = add_only_inputs(name)
    kernel = build_te_kernel(compute, inputs, module, LLVM, bits=16)
    counts = sum(llvm_census(kernel.mod.inspect_source("ll")).values(), start=collections.Counter())
    assert counts["float_mul"] == 0 and counts["float_add"] > 0, counts


@pytest.fixture(scope="module")
def cuda_codegen():
    from saddc.cuda import ensure_cuda_codegen

    ensure_cuda_codegen()


def cuda_ptx(compute, module, inputs, **kwargs) -> dict:
    from saddc.cuda import nvcc_compile, nvcc_fatbin_compiler

    with nvcc_fatbin_compiler("sm_90") as stats:
        build_te_kernel(compute, inputs, module, CUDA, **kwargs)
    (source,) = stats.sources
    return ptx_census(nvcc_compile(source, "sm_90", "ptx").decode())


@pytest.mark.parametrize("name", sorted(ADD_ONLY_KERNELS))
def test_cuda_masked_sums_have_no_float_multiply_in_ptx(cuda_codegen, name):
    census = cuda_ptx(*add_only_inputs(name), bits=16)
    assert census and all(c["float_mul"] == 0 and c["mma"] == 0 and c["float_add"] > 0 for c in census.values()), census


def test_cuda_hash_and_normalize_kernels_build(cuda_codegen):
    census = cuda_ptx(binary_hash.binary_hash_te, binary_hash, [placeholder((6, 197, 64)), placeholder((3, 64, 16)), None],
                      bits=16)
    assert any(c["float_mul"] > 0 for c in census.values()), "the projection multiplies"
    assert cuda_ptx(row_normalize.match_normalize_te, row_normalize,
                    [placeholder((6, 197, 64)), placeholder((6, 197, 1), "uint32"), placeholder((6, 16))],
                    keys=197, bits=16)
    assert cuda_ptx(row_normalize.angular_normalize_te, row_normalize,
                    [placeholder((6, 197, 64)), placeholder((6, 197, 64))])
    assert cuda_ptx(row_normalize.divide_rows_te, row_normalize, [placeholder((6, 197, 64)), placeholder((6, 197))])
