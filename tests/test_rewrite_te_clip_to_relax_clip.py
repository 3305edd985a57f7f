"""RewriteTEClipToRelaxClip: the ONNX importer's Clip (TOPI's maximum and minimum kernels)
given back as Relax's clip, which the layer-role walk reads as an activation (ReLU6 MLPs:
tests/test_layer_roles.py), and which computes what ONNX Runtime does; kernels that only look
like it are left alone."""

import collections

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax, te

import saddc
from conftest import ort_outputs, relative_error
from saddc.config import LowerConfig
from saddc.frontends import import_onnx
from saddc.passes import RewriteTEClipToRelaxClip
from saddc.pipeline import cleanup_passes


def clipped_mlp(path, clip_inputs, bounds=(0, 6)) -> str:
    """``x @ W1 + b1 -> Clip(...) -> @ W2`` with a symbolic batch; ``clip_inputs`` after the
    tensor: the bounds' names (initializers ``lo`` and ``hi``, ``bounds``, or a model input)."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(shape).astype("float32"), name)
               for name, shape in (("w1", (16, 32)), ("b1", (32,)), ("w2", (32, 8)))]
    bounds = [numpy_helper.from_array(np.array(value, np.float32), name) for name, value in zip(("lo", "hi"), bounds)]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"]), helper.make_node("Add", ["h0", "b1"], ["h1"]),
             helper.make_node("Clip", ["h1", *clip_inputs], ["h2"], name="relu6"),
             helper.make_node("MatMul", ["h2", "w2"], ["y"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 16])]
    if "floor" in clip_inputs:
        inputs.append(helper.make_tensor_value_info("floor", TensorProto.FLOAT, []))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 8])],
                              weights + bounds)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10), path)
    return str(path)


def calls(mod: tvm.IRModule) -> collections.Counter:
    """The ops ``main`` calls, a ``call_tir`` counted by its kernel's name."""
    counted = collections.Counter()

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            counted[expr.args[0].name_hint if expr.op.name == "relax.call_tir" else expr.op.name] += 1

    relax.analysis.post_order_visit(mod["main"], visit)
    return counted


def cleaned_up(mod: tvm.IRModule) -> tvm.IRModule:
    return tvm.transform.Sequential(cleanup_passes(LowerConfig()))(mod)


@pytest.mark.parametrize("bounds", [(0, 6), (6, 0)], ids=["relu6", "crossed"])
def test_importers_clip_becomes_clip_and_computes_it(bounds, tmp_path):
    """Crossed bounds give the upper everywhere in ONNX and the lower in Relax's clip: kept."""
    path = clipped_mlp(tmp_path / "relu6.onnx", ["lo", "hi"], bounds)
    imported = import_onnx(path).mod
    assert calls(imported)["maximum"] == calls(imported)["minimum"] == 1
    after = calls(cleaned_up(imported))
    rewritten = bounds[0] <= bounds[1]
    assert after["relax.clip"] == rewritten and after["maximum"] == after["minimum"] == (not rewritten)
    module = saddc.load(saddc.compile(path, target="llvm", output=tmp_path / "m.so").output)
    for batch in (1, 3):
        # Spread wide enough that both bounds clip.
        x = np.random.default_rng(batch).standard_normal((batch, 4, 16)).astype("float32") * 4
        (expected,) = ort_outputs(path, {"x": x})
        assert relative_error(module(x)[0], expected) <= 1e-6


def test_clip_with_a_bound_computed_at_run_time_stays(tmp_path):
    after = calls(cleaned_up(import_onnx(clipped_mlp(tmp_path / "floor.onnx", ["floor", "hi"])).mod))
    assert not after["relax.clip"] and after["maximum"] == after["minimum"] == 1


def test_kernels_named_alike_that_compute_something_else_stay():
    """The pattern's shape, two call_tirs with constant scalars, with a kernel that adds where
    TOPI's maximum takes the larger: only TOPI's kernels make a clip."""
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 3), "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            added = builder.emit_te(lambda a, b: te.compute(a.shape, lambda i, j: a[i, j] + b()), x,
                                    relax.const(0.0, "float32"), primfunc_name_hint="maximum")
            out = builder.emit_output(builder.emit_te(tvm.topi.minimum, added, relax.const(6.0, "float32")))
        builder.emit_func_output(out)
    mod = builder.get()
    assert not calls(RewriteTEClipToRelaxClip()(mod))["relax.clip"]
