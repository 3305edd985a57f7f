"""The MoE dispatch kernels (partition, permutation, segmented GEMMs) against their numpy
references, including the edge cases: every token to one expert, none to an expert, token
counts that do not fill a row tile; and their CUDA builds (shift rows without float multiply)."""

import numpy as np
import pytest
import tvm
from tvm import te

from conftest import build_te_kernel, run_te_kernel
from saddc.census import ptx_census
from saddc.schedules import permute_rows, segmented_gemm, shift_codes, token_partition
from saddc.schedules.segmented_gemm import DENSE, SHIFT
from saddc.target import parse_target

CUDA = {"kind": "cuda", "arch": "sm_90"}


HOST = parse_target("llvm").to_tvm()
# CPU targets this machine runs, whose segment tiles differ (8 x 32 on AVX-512 hosts, 6 x 8 on SSE).
CPU_TARGETS = {"host": HOST, "x86-64": parse_target("llvm", "x86-64").to_tvm()}


def compile_cpu(func, name, target=HOST):
    return tvm.compile(func.with_attr("global_symbol", name), target=target)


def choices(tokens, experts, split, seed=0):
    rng = np.random.default_rng(seed)
    if split == "random":
        return rng.integers(0, experts, tokens).astype("int64")
    return np.full(tokens, {"all-first": 0, "all-last": experts - 1}[split], "int64")


@pytest.mark.parametrize("experts", [2, 3])
@pytest.mark.parametrize("tokens", [1, 63, 64, 65, 394, 4099])
@pytest.mark.parametrize("split", ["random", "all-first", "all-last"])
def test_partition_is_the_stable_partition(experts, tokens, split):
    kernel = compile_cpu(token_partition.token_partition(experts, HOST), "partition")
    choice = choices(tokens, experts, split, seed=tokens)
    outputs = [tvm.runtime.empty((tokens,), "int32"), tvm.runtime.empty((tokens,), "int32"),
               tvm.runtime.empty((experts + 1,), "int32")]
    kernel(tvm.runtime.tensor(choice), *outputs)
    order, slot, offsets = token_partition.partition_reference(choice, experts)
    np.testing.assert_array_equal(outputs[0].numpy(), order)
    np.testing.assert_array_equal(outputs[1].numpy(), slot)
    np.testing.assert_array_equal(outputs[2].numpy(), offsets)
    assert np.all(np.diff(choice[order]) >= 0) and np.all(np.diff(order[choice[order] == 0]) > 0)


def test_permute_rows_gathers_and_its_inverse_scatters_back():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((37, 24)).astype("float32")
    order, slot, _ = token_partition.partition_reference(rng.integers(0, 2, 37), 2)
    inputs = [te.placeholder((37, 24), "float32", "x"), te.placeholder((37,), "int32", "index")]
    kernel = build_te_kernel(permute_rows.permute_rows_te, inputs, permute_rows, {"kind": "llvm"})
    sorted_rows = run_te_kernel(kernel, [x, order], (37, 24))
    np.testing.assert_array_equal(sorted_rows, x[order])
    np.testing.assert_array_equal(run_te_kernel(kernel, [sorted_rows, slot], (37, 24)), x)


def experts_for(in_features, out_features, kinds, seed=2):
    rng = np.random.default_rng(seed)
    experts = []
    for kind in kinds:
        weight = rng.standard_normal((in_features, out_features)).astype("float32")
        bias = rng.standard_normal(out_features).astype("float32")
        experts.append((kind, shift_codes.encode(weight, 5) if kind == SHIFT else weight, bias))
    return experts


def segment_kernel(index, expert, in_features, out_features, target=HOST):
    kind, weights, _ = expert
    if kind == SHIFT:
        return segmented_gemm.shift_segment(index, in_features, out_features, weights.bits, target)
    return segmented_gemm.dense_segment(index, in_features, out_features, target)


def weight_args(expert):
    kind, weights, bias = expert
    arrays = [weights.packed, weights.exponents] if kind == SHIFT else [weights]
    return [tvm.runtime.tensor(a) for a in arrays + [bias]]


# The CPU kernel runs a segment longer than CHANNEL_MAJOR_ROWS by row tiles, a shorter one by
# channel blocks: the last case has one of each.
LONG_SEGMENT = segmented_gemm.CHANNEL_MAJOR_ROWS + 200


@pytest.mark.parametrize("kinds", [(DENSE, SHIFT), (SHIFT, DENSE), (DENSE, DENSE)])
@pytest.mark.parametrize("tokens,first", [(13, 5), (13, 0), (13, 13), (13, 1), (13, 12), (1, 1), (5, 2), (16, 8),
                                          (16, 7), (197, 120), (700 + LONG_SEGMENT, 700)])
@pytest.mark.parametrize("cpu", CPU_TARGETS)
def test_segmented_gemm_computes_each_expert_on_its_rows_only(kinds, tokens, first, cpu):
    in_features, out_features = 20, 48
    experts = experts_for(in_features, out_features, kinds)
    rng = np.random.default_rng(tokens)
    xs = rng.standard_normal((tokens, in_features)).astype("float32")
    offsets = np.array([0, first, tokens], "int32")
    ys = tvm.runtime.tensor(np.full((tokens, out_features), np.nan, "float32"))
    for index, expert in enumerate(experts):
        kernel = compile_cpu(segment_kernel(index, expert, in_features, out_features, CPU_TARGETS[cpu]),
                             f"segment{index}", CPU_TARGETS[cpu])
        kernel(tvm.runtime.tensor(xs), tvm.runtime.tensor(offsets), *weight_args(expert), ys)
        # Rows of the other expert are left alone (still NaN until their kernel runs).
        untouched = ys.numpy()[first:] if index == 0 else None
        if untouched is not None:
            assert np.isnan(untouched).all()
    expected = segmented_gemm.segmented_reference(xs, offsets, experts)
    np.testing.assert_allclose(ys.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tokens,first", [(13, 5), (197, 120), (700 + LONG_SEGMENT, 700)])
@pytest.mark.parametrize("cpu", CPU_TARGETS)
@pytest.mark.parametrize("out_features", [48, 768])
def test_dense_segment_reads_a_weight_packed_in_column_panels(tokens, first, cpu, out_features):
    """The CPU form PackMatmulWeights puts in place of a dense expert's: its weight packed into
    the channel blocks' column panels (``pack_panels``), the same rows computed."""
    in_features, target = 20, CPU_TARGETS[cpu]
    experts = experts_for(in_features, out_features, (DENSE, DENSE))
    xs = np.random.default_rng(tokens).standard_normal((tokens, in_features)).astype("float32")
    offsets = np.array([0, first, tokens], "int32")
    ys = tvm.runtime.tensor(np.full((tokens, out_features), np.nan, "float32"))
    panel = segmented_gemm.cpu_panel(out_features, target)
    for index, (_, weight, bias) in enumerate(experts):
        kernel = compile_cpu(segmented_gemm.dense_segment(index, in_features, out_features, target, panels=panel),
                             f"segment{index}", target)
        packed = segmented_gemm.pack_panels(weight, panel)
        assert packed.shape == (out_features // panel, in_features, panel)
        kernel(*map(tvm.runtime.tensor, (xs, offsets, packed, bias)), ys)
    expected = segmented_gemm.segmented_reference(xs, offsets, experts)
    np.testing.assert_allclose(ys.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_cpu_tiles_fit_the_target_vector_registers():
    """Two vectors of channels; 16 accumulators in AVX-512's 32 registers, 12 in AVX2's or SSE's 16."""
    tiles = {cpu: segmented_gemm.cpu_tile(parse_target("llvm", cpu).to_tvm())
             for cpu in ("skylake-avx512", "haswell", "x86-64")}
    assert tiles == {"skylake-avx512": (8, 32), "haswell": (6, 16), "x86-64": (6, 8)}


def test_shift_rows_are_bit_exact_with_the_shift_reference():
    in_features, out_features = 30, 16
    (expert,) = experts_for(in_features, out_features, [SHIFT])
    xs = np.random.default_rng(3).standard_normal((9, in_features)).astype("float32")
    ys = tvm.runtime.tensor(np.zeros((9, out_features), "float32"))
    kernel = compile_cpu(segment_kernel(0, expert, in_features, out_features), "shift0")
    kernel(tvm.runtime.tensor(xs), tvm.runtime.tensor(np.array([0, 9, 9], "int32")), *weight_args(expert), ys)
    np.testing.assert_array_equal(ys.numpy(), shift_codes.reference_matmul(xs, expert[1], expert[2]))


@pytest.fixture(scope="module")
def cuda_codegen():
    from saddc.cuda import ensure_cuda_codegen

    ensure_cuda_codegen()


def cuda_census(func, name):
    from saddc.cuda import nvcc_compile, nvcc_fatbin_compiler

    target = tvm.target.Target(CUDA)
    with nvcc_fatbin_compiler("sm_90") as stats, target:
        tvm.compile(func.with_attr("global_symbol", name), target=target)
    (source,) = stats.sources
    return ptx_census(nvcc_compile(source, "sm_90", "ptx").decode())[f"{name}_kernel"]


def test_cuda_kernels_build_and_shift_rows_have_no_float_multiply(cuda_codegen):
    cuda = tvm.target.Target(CUDA)
    assert cuda_census(token_partition.token_partition(2, cuda), "partition")
    dense = cuda_census(segmented_gemm.dense_segment(0, 192, 768, cuda), "dense")
    shift = cuda_census(segmented_gemm.shift_segment(1, 192, 768, 5, cuda), "shift")
    assert dense["float_mul"] + dense.get("float_fma", 0) > 0
    assert shift["float_add"] > 0 and shift["float_mul"] == 0 and shift.get("float_fma", 0) == 0
    from saddc.cuda import nvcc_fatbin_compiler

    with nvcc_fatbin_compiler("sm_90") as stats:
        build_te_kernel(permute_rows.permute_rows_te, [te.placeholder((197, 192), "float32", "x"),
                                                       te.placeholder((197,), "int32", "i")], permute_rows, CUDA)
    assert len(stats.sources) == 1
