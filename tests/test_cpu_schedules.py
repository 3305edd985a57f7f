"""saddc's CPU schedule rules (register-blocked matmul, injective) on the shapes a ViT gives
them: numerics against numpy, and proof that the rule scheduled the kernel (parallel and
vector loops) rather than leaving it to run one scalar at a time."""

import numpy as np
import pytest
import tvm
from tvm import relax

import saddc
from conftest import relative_error


def lowered_and_run(build_body, inputs):
    """Lower a one-function Relax module through the saddc pipeline for llvm and run it."""
    builder = relax.BlockBuilder()
    params = [relax.Var(f"x{i}", relax.TensorType(value.shape, "float32")) for i, value in enumerate(inputs)]
    with builder.function("main", params):
        with builder.dataflow():
            output = builder.emit_output(build_body(*params))
        builder.emit_func_output(output)
    lowered = saddc.lower(builder.get())
    executable, _ = saddc.build(lowered)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    result = vm["main"](*[tvm.runtime.tensor(value) for value in inputs]).numpy()
    kernels = {gv.name_hint: func.script() for gv, func in lowered.functions.items() if isinstance(func, tvm.tirx.PrimFunc)}
    return result, kernels


def scheduled(script: str) -> bool:
    return "T.parallel" in script and "T.vectorized" in script


def random(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


@pytest.mark.parametrize("rows,inner,columns", [(197, 192, 576), (5, 7, 48), (1, 64, 16)])
def test_matmul_with_bias_and_activation_epilogue(rows, inner, columns):
    a, b, bias = random(rows, inner), random(inner, columns, seed=1), random(columns, seed=2)
    result, kernels = lowered_and_run(
        lambda x, w, c: relax.op.nn.relu(relax.op.add(relax.op.matmul(x, w), c)), [a, b, bias])
    np.testing.assert_allclose(result, np.maximum(a @ b + bias, 0), rtol=1e-5, atol=1e-4)
    (kernel,) = kernels.values()
    # One row is a GEMV (the classifier head), which DLight's GEMV rule parallelizes.
    assert scheduled(kernel) if rows > 1 else "T.parallel" in kernel, kernel


def test_batched_scores_with_padded_columns():
    """Attention scores: 197 columns do not fill whole vectors and are padded to them."""
    q, k = random(3, 197, 64), random(3, 64, 197, seed=1)
    result, kernels = lowered_and_run(lambda x, y: relax.op.matmul(x, y), [q, k])
    assert relative_error(result, q @ k) <= 1e-5
    assert any(scheduled(script) for script in kernels.values())


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
