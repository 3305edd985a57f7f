"""saddc's CPU schedule rules (register-blocked matmul and matrix-vector products, depthwise
conv, injective with tiled transposes, row and column reductions) and the conv-to-matmul rewrite on the shapes a ViT gives them: numerics against
numpy and torch, and proof that the rule scheduled the kernel (parallel and vector loops, a
transpose's tiles) rather than leaving it to run one scalar at a time."""

import re

import numpy as np
import pytest
import tvm
from tvm import relax

import saddc
from saddc.api import relax_op_counts
from conftest import llvm_source, relative_error


def lowered_and_built(build_body, inputs):
    """A one-function Relax module lowered through the saddc pipeline for llvm and built:
    ``(lowered module, executable)``."""
    builder = relax.BlockBuilder()
    params = [relax.Var(f"x{i}", relax.TensorType(value.shape, "float32")) for i, value in enumerate(inputs)]
    with builder.function("main", params):
        with builder.dataflow():
            output = builder.emit_output(build_body(*params))
        builder.emit_func_output(output)
    lowered = saddc.lower(builder.get())
    return lowered, saddc.build(lowered)[0]


def lowered_and_run(build_body, inputs):
    """Lower a one-function Relax module through the saddc pipeline for llvm and run it."""
    lowered, executable = lowered_and_built(build_body, inputs)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    result = vm["main"](*[tvm.runtime.tensor(value) for value in inputs]).numpy()
    kernels = {gv.name_hint: func.script() for gv, func in lowered.functions.items() if isinstance(func, tvm.tirx.PrimFunc)}
    return result, kernels


def scheduled(script: str) -> bool:
    return "T.parallel" in script and "T.vectorized" in script


def one_parallel_loop(script: str) -> bool:
    """The function body is a single loop nest, its outer loop parallel."""
    outer = re.findall(r"^    for .*$", script, flags=re.M)
    return len(outer) == 1 and "T.parallel" in outer[0]


def random(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


@pytest.mark.parametrize("rows,inner,columns", [(197, 192, 576), (5, 7, 48), (1, 64, 16)])
def test_matmul_with_bias_and_activation_epilogue(rows, inner, columns):
    a, b, bias = random(rows, inner), random(inner, columns, seed=1), random(columns, seed=2)
    result, kernels = lowered_and_run(
        lambda x, w, c: relax.op.nn.relu(relax.op.add(relax.op.matmul(x, w), c)), [a, b, bias])
    np.testing.assert_allclose(result, np.maximum(a @ b + bias, 0), rtol=1e-5, atol=1e-4)
    (kernel,) = kernels.values()
    # One row is a vector times a matrix: its columns in vector lanes, accumulated over K.
    assert scheduled(kernel), kernel


@pytest.mark.parametrize("rows,inner,columns", [(197, 768, 3072), (2, 197, 3072), (5, 40, 96), (197, 192, 1000)])
def test_constant_weights_are_packed_into_column_panels(rows, inner, columns):
    """A matmul's constant weight (K x N) is packed at compile time into the K x NR column
    panels the register block reads (N // NR, K, NR), NR the rule's panel width for N; a weight
    whose columns the rule pads (1000) stays as it is. The values are the same."""
    from saddc.schedules.cpu_matmul import column_panel, pads_columns
    from saddc.schedules.simd import target_lanes
    from saddc.target import parse_target

    x, w, bias = random(rows, inner), random(inner, columns, seed=1), random(columns, seed=2)
    lowered, executable = lowered_and_built(
        lambda a: relax.op.add(relax.op.matmul(a, relax.const(w)), relax.const(bias)), [x])
    result = relax.VirtualMachine(executable, tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(result, x @ w + bias, rtol=1e-5, atol=1e-4)
    (kernel,) = [func for func in lowered.functions.values() if isinstance(func, tvm.tirx.PrimFunc)]
    weight = [tuple(int(d) for d in param.ty.shape) for param in kernel.params][1]
    lanes = target_lanes(parse_target("llvm").to_tvm())
    if pads_columns(columns, lanes):
        assert weight == (inner, columns)
    else:
        panel = column_panel(columns, lanes)
        assert weight == (columns // panel, inner, panel), kernel.script()


def test_weight_packing_needs_a_constant_at_every_call():
    """One kernel called with a constant weight and with a run-time one keeps the weight's
    layout (the run-time one is not packed)."""
    x, w = random(197, 192), random(192, 768, seed=1)
    lowered, executable = lowered_and_built(
        lambda a, b: relax.Tuple([relax.op.matmul(a, relax.const(w)), relax.op.matmul(a, b)]), [x, w])
    results = relax.VirtualMachine(executable, tvm.cpu())["main"](*map(tvm.runtime.tensor, (x, w)))
    for result in results:
        np.testing.assert_allclose(result.numpy(), x @ w, rtol=1e-5, atol=1e-4)
    (matmul,) = [func for func in lowered.functions.values() if isinstance(func, tvm.tirx.PrimFunc)]
    assert len(matmul.params[1].ty.shape) == 2, matmul.script()


@pytest.mark.parametrize("shape,columns", [((197, 768), 2), ((2, 197, 192), 3), ((9, 6), 2)])
def test_narrow_matmul_runs_as_dot_products_along_k(shape, columns):
    """Fewer columns than a vector (an MoE router's expert logits): B is copied transposed and
    each row's dot products run in vector lanes along K (an rfactor block, vectorized, inside
    the one parallel loop over rows). A K that splits into fewer than four lanes keeps the
    register-blocked form."""
    x, w, bias = random(*shape), random(shape[-1], columns, seed=1), random(columns, seed=2)
    result, kernels = lowered_and_run(lambda a, b, c: relax.op.add(relax.op.matmul(a, b), c), [x, w, bias])
    np.testing.assert_allclose(result, x @ w + bias, rtol=1e-5, atol=1e-4)
    (kernel,) = kernels.values()
    dot_products = re.search(r"T\.vectorized\(T\.int64\(\d+\)\):\n\s+with T\.sblock\(\"matmul_rf_update\"\)", kernel)
    if shape[-1] % 4:
        assert dot_products is None and scheduled(kernel), kernel
    else:
        assert dot_products and re.search(r"x1_global\[(v\w+), (v\w+)\] = x1\[\2, \1\]", kernel), kernel
        assert len(re.findall(r"^    for .* in T\.parallel", kernel, flags=re.M)) == 1, kernel


@pytest.mark.parametrize("rescope", [True, False])
def test_scratch_buffers_are_on_the_stack(monkeypatch, rescope):
    """The per-row accumulators of the dot products (Taylor attention's ``Q . sum_j k_j`` at 197
    rows) are scheduled ``local``, which TVM 0.27 allocates from the heap on every row; the CPU
    rules rescope them ``global``, a stack slot. Without that (``rescope`` off) the LLVM IR
    calls the workspace allocator, which is how this test shows it can fail."""
    if not rescope:
        monkeypatch.setattr("saddc.schedules.cpu_rule.move_local_buffers_to_stack", lambda sch: sch)
    q, k_sum = random(3, 197, 64), random(3, 64, 1, seed=1)
    lowered, executable = lowered_and_built(lambda a, b: relax.op.matmul(a, b), [q, k_sum])
    (kernel,) = [func.script() for func in lowered.functions.values() if isinstance(func, tvm.tirx.PrimFunc)]
    assert ('scope="local"' in kernel) == (not rescope), kernel
    assert ("TVMBackendAllocWorkspace" in llvm_source(executable)) == (not rescope)


@pytest.mark.parametrize("scale", [None, 0.125])
def test_batched_scores_with_padded_columns(scale):
    """Attention scores: 197 columns fill no whole panel of vectors. B is copied, padded, to
    whole panels, and the epilogue (the scale, if any, and the crop back to 197) runs after the
    matmul as a pass of its own: three parallel loop nests, each in vector lanes."""
    q, k = random(3, 197, 64), random(3, 64, 197, seed=1)

    def scores(x, y):
        product = relax.op.matmul(x, y)
        return product if scale is None else relax.op.multiply(product, relax.const(scale, "float32"))

    result, kernels = lowered_and_run(scores, [q, k])
    assert relative_error(result, q @ k * (scale or 1.0)) <= 1e-5
    (kernel,) = kernels.values()
    nests = re.findall(r"^    for .*$", kernel, flags=re.M)
    assert len(nests) == 3 and all("T.parallel" in nest for nest in nests), kernel
    assert kernel.count("T.vectorized") >= 3, kernel


def test_single_element_reduction_is_scheduled_as_injective():
    """LeViT's K=1 matmuls normalize to an injective block with an init (DLight's GEMV rule
    asserts on them)."""
    a, b = random(2, 1, 1), random(2, 1, 16, seed=1)
    result, kernels = lowered_and_run(lambda x, y: relax.op.matmul(x, y), [a, b])
    np.testing.assert_allclose(result, a @ b, rtol=1e-6)
    (kernel,) = kernels.values()
    assert "T.parallel" in kernel


def test_injective_chain_is_one_parallel_vectorized_pass():
    a, b = random(4, 32, 48), random(48, seed=1)
    result, kernels = lowered_and_run(
        lambda x, y: relax.op.permute_dims(relax.op.multiply(relax.op.add(x, y), y), [0, 2, 1]), [a, b])
    np.testing.assert_allclose(result, ((a + b) * b).transpose(0, 2, 1), rtol=1e-6)
    assert all(scheduled(script) for script in kernels.values())


@pytest.mark.parametrize("shape", [(2, 64, 48), (3, 197, 64)])
def test_transpose_is_tiled(shape):
    """A transpose reads its input across rows: it runs in LANES x LANES tiles (a serial loop
    of LANES rows around the vector loop), so the rows a tile reads stay in cache. Attention's
    key transpose writes rows of 197, which no vector width divides: whole vectors, and the
    last, partial one in a loop of its own."""
    a = random(*shape)
    result, kernels = lowered_and_run(lambda x: relax.op.permute_dims(x, [0, 2, 1]), [a])
    np.testing.assert_array_equal(result, a.transpose(0, 2, 1))
    (kernel,) = kernels.values()
    tile = re.search(r"for \w+ in range\(T\.int64\((\d+)\)\):\n"
                     r"\s+for \w+ in T\.vectorized\(T\.int64\((\d+)\)\)", kernel)
    assert "T.parallel" in kernel and tile and tile.group(1) == tile.group(2), kernel
    assert ("_partition" in kernel) == (shape[1] == 197), kernel


@pytest.mark.parametrize("shape", [(3, 197, 197), (2, 5, 64), (2, 3, 49), (2, 3, 7)])
def test_softmax_is_one_parallel_pass_over_rows(shape):
    """Each row's max, exp sum and normalization in one parallel loop over rows, reducing in
    vector lanes (partial results, then a horizontal step). A row the vector width does not
    divide (DeiT's 197, PVT's 49) runs in whole vectors and a tail; only a row too short for a
    vector of four (7) stays scalar. The rows are all below zero, so a tail padded with zeros
    instead of bound-checked would change every maximum."""
    x = random(*shape) * 4 - 30
    result, kernels = lowered_and_run(lambda v: relax.op.nn.softmax(v, axis=-1), [x])
    exp = np.exp(x - x.max(axis=-1, keepdims=True))
    np.testing.assert_allclose(result, exp / exp.sum(axis=-1, keepdims=True), rtol=1e-5, atol=1e-7)
    (kernel,) = kernels.values()
    assert one_parallel_loop(kernel), kernel
    in_lanes = shape[-1] > 7
    assert ("_rf" in kernel, "T.vectorized" in kernel) == (in_lanes, in_lanes), kernel


def down_columns(script: str, tokens: int):
    """A serial loop over the tokens around the vector lanes of the channels (in groups of
    vectors, unrolled: independent accumulators)."""
    return re.search(r"for \w+ in range\(T\.int64\(%d\)\):\n(\s+for \w+ in T\.unroll\(T\.int64\(\d+\)\):\n)?"
                     r"\s+for \w+ in T\.vectorized" % tokens, script)


@pytest.mark.parametrize("shape", [(1, 16, 16), (1, 3136, 32), (3, 197, 64), (2, 7, 12)])
def test_mean_over_tokens_runs_down_columns_before_the_rows_read_it(shape):
    """Additive and Taylor attention centre the keys on their mean over tokens: each token's row
    reads the mean of every channel, not a value of its own row, so the rows cannot each
    compute it (with as many tokens as channels the loop extents match; only the data flow
    tells). The sum runs first, down the columns, vectors of channels a parallel task, then
    the division, then the subtraction over every token: three parallel loop nests. (DLight's
    reduction rule recomputed the mean inside the loop over tokens: one nest, quadratic.)"""
    x = random(*shape)
    result, kernels = lowered_and_run(lambda v: relax.op.subtract(v, relax.op.mean(v, axis=1, keepdims=True)), [x])
    np.testing.assert_allclose(result, x - x.mean(axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    (kernel,) = kernels.values()
    nests = re.findall(r"^    for .*$", kernel, flags=re.M)
    assert len(nests) == 3 and all("T.parallel" in nest for nest in nests), kernel
    assert down_columns(kernel, shape[1]), kernel


@pytest.mark.parametrize("shape,axis", [((2, 197, 48), 1), ((1, 2, 17, 17), 2)])
def test_sum_over_tokens_alone_runs_down_columns(shape, axis):
    """Binary-coded attention's key sums: vectors of channels down the tokens; 17 channels
    (a tiny PVT's) fill no vector of four and run one a task."""
    x = random(*shape)
    result, kernels = lowered_and_run(lambda v: relax.op.sum(v, axis=axis), [x])
    np.testing.assert_allclose(result, x.sum(axis=axis), rtol=1e-5, atol=1e-4)
    (kernel,) = kernels.values()
    if shape[-1] % 4:
        assert "T.parallel" in kernel, kernel
    else:
        assert scheduled(kernel) and down_columns(kernel, shape[axis]), kernel


@pytest.mark.parametrize("shape,outputs_in_lanes", [((1, 3136, 32), True), ((12544, 32), True),
                                                    ((3, 197, 64), False), ((2, 64, 768), False)])
def test_matrix_times_vector(shape, outputs_in_lanes):
    """Taylor attention's ``Q . sum_j k_j`` (K = head dim): with rows that fill vectors and a
    short K, the rows run in vector lanes, each accumulated over K in a register; otherwise
    (197 rows, or a long K) as dot products along K. Never wider than one vector register:
    DLight's GEMV rule, which had these before, vectorized 128 rows with K unrolled, and LLVM
    took minutes to compile that at 12544 rows."""
    x = random(*shape)
    vector = random(*shape[:-2], shape[-1], 1, seed=1)
    result, kernels = lowered_and_run(lambda a, b: relax.op.add(relax.op.matmul(a, b), relax.const(2.0)), [x, vector])
    np.testing.assert_allclose(result, x @ vector + 2.0, rtol=1e-5, atol=1e-4)
    (kernel,) = kernels.values()
    widths = [int(width) for width in re.findall(r"T\.vectorized\(T\.int64\((\d+)\)\)", kernel)]
    assert scheduled(kernel) and max(widths) <= 16, kernel
    assert ("_rf" not in kernel) == outputs_in_lanes, kernel


@pytest.mark.parametrize("width", [192, 99])
def test_layer_norm_reduces_each_row_in_vector_lanes(width):
    """Both reductions (mean and variance) in per-lane partial results: vectorized where the
    lanes divide the row (192), bound-checked lanes with a tail where nothing of four lanes does
    (99)."""
    x, gamma, beta = random(2, 197, width), random(width, seed=1), random(width, seed=2)
    result, kernels = lowered_and_run(
        lambda v, g, b: relax.op.nn.layer_norm(v, g, b, axes=[-1], epsilon=1e-6), [x, gamma, beta])
    mean, var = x.mean(axis=-1, keepdims=True), x.var(axis=-1, keepdims=True)
    np.testing.assert_allclose(result, (x - mean) / np.sqrt(var + 1e-6) * gamma + beta, rtol=1e-4, atol=1e-4)
    (kernel,) = kernels.values()
    partials = re.findall(r'sblock\("\w+_rf(_update)?"\)', kernel)
    assert one_parallel_loop(kernel) and len(partials) == 2 and scheduled(kernel), kernel
    assert partials.count("_update") == (2 if width % 4 == 0 else 0), kernel


def conv2d_reference(x, weight, bias, stride, padding, dilation=1, groups=1):
    import torch  # pylint: disable=import-outside-toplevel

    out = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias),
                                     stride, padding, dilation, groups)
    return out.numpy()


def conv2d_with_bias(weight, bias, stride, padding, dilation=1, groups=1, activation_first=False):
    def body(x):
        if activation_first:  # the conv's input is then no model input
            x = relax.op.nn.relu(x)
        conv = relax.op.nn.conv2d(x, relax.const(weight), stride, padding, dilation, groups)
        return relax.op.add(conv, relax.const(bias.reshape(1, -1, 1, 1)))
    return body


@pytest.mark.parametrize("channels,size,out_channels,kernel,stride,padding,dilation", [
    (3, 32, 16, 7, 4, 3, 1),     # PVT's overlapping patch embedding
    (16, 14, 32, 3, 2, 1, 1),    # PVT's stage-to-stage patch embedding
    (8, 12, 8, 3, 1, 2, 2),      # dilated
    (16, 16, 16, 4, 4, 0, 1),    # PVT's spatial reduction: disjoint patches, not on the model input
])
def test_conv2d_runs_as_im2col_and_matmul(channels, size, out_channels, kernel, stride, padding, dilation):
    x = random(2, channels, size, size)
    weight, bias = random(out_channels, channels, kernel, kernel, seed=1), random(out_channels, seed=2)
    result, kernels = lowered_and_run(
        conv2d_with_bias(weight, bias, stride, padding, dilation, activation_first=True), [x])
    expected = conv2d_reference(np.maximum(x, 0), weight, bias, stride, padding, dilation)
    assert relative_error(result, expected) <= 1e-5
    assert not any("conv2d" in name for name in kernels), list(kernels)
    assert any("im2col" in name for name in kernels) == (stride != kernel or padding > 0), list(kernels)
    assert any("matmul" in name and scheduled(script) for name, script in kernels.items()), list(kernels)


def test_only_patch_embeddings_become_linear_layers_before_the_rewrites():
    """The reparameterize phase turns a disjoint-patch conv on the model input into the linear
    layer ``--shift patch-embed`` selects, and leaves every other conv to legalization."""
    from saddc.passes import RewriteConv2dToMatmul  # pylint: disable=import-outside-toplevel

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 3, 16, 16), "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            embed = builder.emit(relax.op.nn.conv2d(x, relax.const(random(8, 3, 4, 4)), 4))
            reduce = builder.emit(relax.op.nn.conv2d(embed, relax.const(random(8, 8, 2, 2)), 2))
            output = builder.emit_output(relax.op.nn.conv2d(reduce, relax.const(random(8, 8, 3, 3)), 1, 1))
        builder.emit_func_output(output)
    mod = builder.get()

    def convs(module):
        return relax_op_counts(module)["nn.conv2d"]

    assert convs(RewriteConv2dToMatmul(patch_embeddings_only=True)(mod)) == 2
    assert convs(RewriteConv2dToMatmul()(mod)) == 0


@pytest.mark.parametrize("channels,size", [(32, 56), (16, 28), (8, 7)])
def test_depthwise_conv_is_scheduled_per_plane(channels, size):
    """PVT's MixFFN depthwise 3x3 conv with its bias: per-plane parallel, vectorized along rows
    (7 columns take no vector lanes)."""
    x = random(2, channels, size, size)
    weight, bias = random(channels, 1, 3, 3, seed=1), random(channels, seed=2)
    result, kernels = lowered_and_run(conv2d_with_bias(weight, bias, 1, 1, groups=channels), [x])
    assert relative_error(result, conv2d_reference(x, weight, bias, 1, 1, groups=channels)) <= 1e-6
    (kernel,) = kernels.values()
    assert "T.parallel" in kernel and ("T.vectorized" in kernel) == (size % 2 == 0), kernel
