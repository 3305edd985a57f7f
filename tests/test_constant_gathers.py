"""Gathers: fast-mode takes given the clip mode (ClipFastModeTakes), the importer's run-time
index arithmetic for constant indices folded away (FoldConstantWhere), and ``take`` at a
constant index legalized as a static slice. Constants broadcast to a run-time shape folded
into the ops that use them (FoldConstantWhere, FoldConstantBroadcasts)."""

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from conftest import random_input, run_saddc
from model_zoo import IMAGE, build
from saddc.frontends.torch_export import export_onnx
from saddc.legalizations import legalizations
from saddc.passes import ClipFastModeTakes, FoldConstantBroadcasts, FoldConstantWhere


def bindings(func: relax.Function) -> dict:
    return {binding.var.name: binding.value for block in func.body.blocks for binding in block.bindings}


def test_where_on_a_constant_condition_selects_its_branch():
    builder = relax.BlockBuilder()
    x, y = relax.Var("x", relax.TensorType((4,), "float32")), relax.Var("y", relax.TensorType((4,), "float32"))
    row = relax.Var("row", relax.TensorType((1,), "float32"))
    with builder.function("main", [x, y, row]):
        with builder.dataflow():
            taken = builder.emit(relax.op.where(relax.const(True), x, y), "taken")
            other = builder.emit(relax.op.where(relax.const(np.zeros(4, bool)), x, y), "other")
            mixed = builder.emit(relax.op.where(relax.const(np.array([True, False] * 2)), x, y), "mixed")
            # The where broadcasts its true branch to (4,): the folded one does too.
            broadcast = builder.emit(relax.op.where(relax.const(True), row, y), "broadcast")
            out = builder.emit_output(relax.Tuple([taken, other, mixed, broadcast]))
        builder.emit_func_output(out)
    folded = bindings(FoldConstantWhere()(builder.get())["main"])
    taken, other, mixed, broadcast = folded[out.name].fields
    assert taken.same_as(x) and other.same_as(y)
    assert folded[mixed.name].op.name == "relax.where"
    assert folded[broadcast.name].op.name == "relax.broadcast_to" and folded[broadcast.name].args[0].same_as(row)


def symbolic_batch_mask_module() -> tvm.IRModule:
    """Scaled-dot-product attention's all-true mask in a symbolic-batch export, as ONNX's
    opset-23 Attention computes with it: broadcast to the batch, selected into 0 / -inf, added
    to the scores, and a guard for rows it masks whole; and a broadcast that adds the batch
    dimension to what it is added to (not foldable)."""
    batch = tvm.tirx.Var("batch", "int64")
    builder = relax.BlockBuilder()
    scores = relax.Var("scores", relax.TensorType((batch, 2, 3, 3), "float32"))
    row = relax.Var("row", relax.TensorType((1, 2, 3, 3), "float32"))
    with builder.function("main", [scores, row]):
        with builder.dataflow():
            mask = builder.emit(relax.op.broadcast_to(relax.const(np.ones((1, 1, 3, 3), bool)), (batch, 1, 3, 3)), "mask")
            bias = builder.emit(relax.op.where(mask, relax.const(0.0), relax.const(-np.inf, "float32")), "bias")
            masked = builder.emit(relax.op.add(scores, bias), "masked")
            whole_row = builder.emit(relax.op.equal(relax.op.max(bias, axis=-1, keepdims=True),
                                                    relax.const(-np.inf, "float32")), "whole_row")
            guarded = builder.emit(relax.op.where(whole_row, relax.const(0.0), masked), "guarded")
            scaled = builder.emit(relax.op.multiply(
                relax.op.broadcast_to(relax.const(2.0), (batch, 2, 3, 3)), scores), "scaled")
            widened = builder.emit(relax.op.add(row, relax.op.broadcast_to(relax.const(1.0), (batch, 2, 3, 3))), "widened")
            out = builder.emit_output(relax.Tuple([guarded, scaled, widened]))
        builder.emit_func_output(out)
    return builder.get()


def test_constants_broadcast_to_the_batch_fold_away():
    mod = symbolic_batch_mask_module()
    cleanup = [FoldConstantBroadcasts(), FoldConstantWhere(), relax.transform.DeadCodeElimination(),
               relax.transform.CanonicalizeBindings()]
    folded = tvm.transform.Sequential(cleanup)(mod)
    values = bindings(folded["main"])
    assert {value.op.name for value in values.values() if isinstance(value, relax.Call)} == {
        "relax.add", "relax.multiply", "relax.broadcast_to"}, "no mask, no guard"
    assert not values["masked"].args[1].value.numpy().any(), "the all-zero mask attention recognizes"
    assert float(values["scaled"].args[0].value.numpy()) == 2.0
    assert values[values["widened"].args[1].name].op.name == "relax.broadcast_to", "it adds the batch to row: kept"
    scores = random_input((3, 2, 3, 3))
    row = random_input((1, 2, 3, 3), seed=1)
    outputs = []
    for module in (mod, folded):
        vm = relax.VirtualMachine(tvm.compile(module, target="llvm"), tvm.cpu())
        outputs.append([t.numpy() for t in vm["main"](tvm.runtime.tensor(scores), tvm.runtime.tensor(row))])
    for before, after in zip(*outputs):
        np.testing.assert_array_equal(before, after)


def test_fast_mode_takes_become_clip_mode_takes():
    builder = relax.BlockBuilder()
    x, index = relax.Var("x", relax.TensorType((5, 3), "float32")), relax.Var("i", relax.TensorType((2,), "int64"))
    with builder.function("main", [x, index]):
        with builder.dataflow():
            fast = builder.emit(relax.op.take(x, index, axis=0, mode="fast"), "fast")
            wrap = builder.emit(relax.op.take(x, index, axis=1, mode="wrap"), "wrap")
            out = builder.emit_output(relax.Tuple([fast, wrap]))
        builder.emit_func_output(out)
    clipped = bindings(ClipFastModeTakes()(builder.get())["main"])
    assert (str(clipped["fast"].attrs.mode), int(clipped["fast"].attrs.axis)) == ("clip", 0)
    assert str(clipped["wrap"].attrs.mode) == "wrap"


def take_module(index: int, mode: str) -> tvm.IRModule:
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((5, 3), "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            out = builder.emit_output(relax.op.take(x, relax.const(index, "int64"), axis=0, mode=mode))
        builder.emit_func_output(out)
    return builder.get()


def legalized_take(index: int, mode: str) -> tvm.IRModule:
    return relax.transform.LegalizeOps(legalizations(is_cuda=False))(take_module(index, mode))


@pytest.mark.parametrize("index,mode,expected_row", [(2, "fast", 2), (-1, "wrap", 4), (7, "clip", 4), (-3, "clip", 0)])
def test_take_at_a_constant_index_is_a_static_slice(index, mode, expected_row):
    legalized = legalized_take(index, mode)
    (kernel,) = [func for func in legalized.functions.values() if isinstance(func, tvm.tirx.PrimFunc)]
    assert len(kernel.params) == 2, "no index buffer: the row is fixed in the kernel"
    x = random_input((5, 3))
    vm = relax.VirtualMachine(tvm.compile(legalized, target="llvm"), tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(x)).numpy(), x[expected_row])


def test_out_of_range_fast_take_keeps_tvm_legalization():
    legalized = legalized_take(9, "fast")
    (kernel,) = [func for func in legalized.functions.values() if isinstance(func, tvm.tirx.PrimFunc)]
    assert len(kernel.params) == 3


def test_vit_gathers_leave_no_index_arithmetic_and_no_warnings(tmp_path):
    """The dynamo exporter's q/k/v Gathers with a symbolic batch: TVM's importer reads each
    index's bound off the run-time shape; after cleanup nothing of that is left, and no take
    logs TVM's fast-mode warning."""
    path = tmp_path / "deit.onnx"
    export_onnx(build("deit-own-fused"), torch.from_numpy(random_input((2,) + IMAGE[1:])), path, "dynamo", 18, dynamic_batch=True)
    result = run_saddc("compile", path, "-o", tmp_path / "deit.so", "--dump-ir", tmp_path / "ir")
    assert result.returncode == 0, result.stderr
    assert "Fast mode" not in result.stderr
    imported = (tmp_path / "ir" / "00-input.py").read_text()
    scheduled = (tmp_path / "ir" / "04-schedule.py").read_text()
    assert "R.shape_to_tensor" in imported and 'mode="fast"' in imported
    assert "shape_to_tensor" not in scheduled
