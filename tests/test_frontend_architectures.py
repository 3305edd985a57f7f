"""Every architecture, from both torch exporters at opsets 17 and 18, compiles for llvm and
matches ONNX Runtime (relative error <= 1e-4); so do the symbolic-batch exports, opset 23's
Attention op (expanded), and a model stamped with an IR version newer than ONNX Runtime reads."""

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
import tvm

import saddc
from conftest import ort_outputs, random_input, relative_error
from model_zoo import ARCHITECTURES, IMAGE, build
from saddc.frontends import fold_onnx, import_onnx
from saddc.frontends.torch_export import export_onnx
from saddc.passes import find_attention_blocks, find_skipped_softmax
from saddc.pipeline import recognition_passes

CASES = [
    pytest.param(arch, exporter, opset, id=f"{arch}-{exporter}-opset{opset}")
    for arch in ARCHITECTURES
    for exporter in ("legacy", "dynamo")
    for opset in (17, 18)
]


@pytest.mark.parametrize("arch,exporter,opset", CASES)
def test_compiles_and_matches_onnxruntime(arch, exporter, opset, export_dir, tmp_path):
    path = export_dir / f"{arch}-{exporter}-{opset}.onnx"
    export_onnx(build(arch), torch.from_numpy(random_input(IMAGE)), path, exporter, opset)
    x = random_input(IMAGE, seed=1)
    (expected,) = ort_outputs(path, {"x": x})

    result = saddc.compile(path, target="llvm", output=tmp_path / "model.so")
    (actual,) = saddc.load(result.output)(x)

    assert actual.shape == expected.shape
    assert relative_error(actual, expected) <= 1e-4


# Attention blocks the recognizer finds and softmaxes it leaves alone (Swin's, for its bias),
# after the import and cleanup.
ATTENTION_SITES = {"deit-own-fused": (2, 0), "pvtv2-own": (2, 0), "vit-hf": (2, 0), "segformer-hf": (2, 0),
                   "swin-hf": (0, 2)}

# With a symbolic batch, HF ViT's scaled-dot-product attention adds an all-true mask broadcast
# to the batch (dynamo, and at opset 23 a guard for fully masked rows too): no constant until
# the cleanup folds it, and its attention recognized only then. Swin pads by an amount computed
# from static dims (legacy) and gathers its pooled output at indices computed from the batch
# (dynamo); SegFormer resizes to sizes that keep the batch.
SYMBOLIC_BATCH = [(arch, exporter, 18) for arch in ("deit-own-fused", "pvtv2-own", "vit-hf", "swin-hf", "segformer-hf")
                  for exporter in ("legacy", "dynamo")] + [("vit-hf", "dynamo", 23)]


@pytest.mark.parametrize("arch,exporter,opset", SYMBOLIC_BATCH)
def test_symbolic_batch(arch, exporter, opset, export_dir, tmp_path):
    path = export_dir / f"{arch}-{exporter}-{opset}-batch.onnx"
    export_onnx(build(arch), torch.from_numpy(random_input((2,) + IMAGE[1:])), path, exporter, opset,
                dynamic_batch=True)
    mod = tvm.transform.Sequential(recognition_passes())(import_onnx(path).mod)
    assert (len(find_attention_blocks(mod)), len(find_skipped_softmax(mod))) == ATTENTION_SITES[arch]
    module = saddc.load(saddc.compile(path, target="llvm", output=tmp_path / "m.so").output)
    assert isinstance(module.inputs[0].shape[0], str), "batch should stay symbolic"
    for batch in (1, 3):
        x = random_input((batch,) + IMAGE[1:], seed=batch)
        (expected,) = ort_outputs(path, {"x": x})
        (actual,) = module(x)
        assert actual.shape == expected.shape and actual.shape[0] == batch
        assert relative_error(actual, expected) <= 1e-4


def test_dynamo_export_prints_only_what_concerns_the_model(tmp_path):
    """A fresh process's first dynamo export: torch's notes about its own internals (torchvision
    ops it skips, a pytree deprecation) are hidden; the exported model is whole."""
    import subprocess  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel

    from conftest import ROOT  # pylint: disable=import-outside-toplevel

    script = (f"import sys, torch; sys.path[:0] = [{str(ROOT / 'tests')!r}, {str(ROOT / 'examples')!r}]\n"
              "from model_zoo import IMAGE, build\n"
              "from saddc.frontends.torch_export import export_onnx\n"
              f"export_onnx(build('deit-own-fused'), torch.zeros(IMAGE), {str(tmp_path / 'm.onnx')!r}, 'dynamo', 18)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "torchvision" not in result.stderr and "LeafSpec" not in result.stderr, result.stderr
    assert saddc.compile(tmp_path / "m.onnx", target="llvm").kernels > 0


# From opset 23 torch's dynamo exporter writes scaled-dot-product attention as ONNX's Attention
# op (HF models use it; the own models compute attention themselves). Recognized attention
# blocks and softmaxes left alone (Swin's, for its bias) as at opset 18.
OPSET23 = ("segformer-hf", "swin-hf", "vit-hf")


@pytest.mark.parametrize("arch", OPSET23)
def test_opset23_attention_op(arch, export_dir, tmp_path):
    path = export_onnx(build(arch), torch.from_numpy(random_input(IMAGE)), export_dir / f"{arch}-23.onnx", "dynamo", 23)
    assert "Attention" in {node.op_type for node in onnx.load(path).graph.node}
    mod = tvm.transform.Sequential(recognition_passes())(import_onnx(path).mod)
    assert (len(find_attention_blocks(mod)), len(find_skipped_softmax(mod))) == ATTENTION_SITES[arch]
    x = random_input(IMAGE, seed=1)
    (expected,) = ort_outputs(path, {"x": x})
    (actual,) = saddc.load(saddc.compile(path, target="llvm", output=tmp_path / "model.so").output)(x)
    assert relative_error(actual, expected) <= 1e-4


def test_models_without_function_ops_are_imported_as_they_are(export_dir):
    """... and without importing onnxscript (over half a second), which only an expansion uses."""
    path = export_onnx(build("deit-own-fused"), torch.from_numpy(random_input(IMAGE)), export_dir / "deit-23.onnx",
                       "dynamo", 23)
    script = ("import sys, onnx\nfrom saddc.frontends.onnx_importer import expand_function_ops\n"
              f"model = onnx.load(r'{path}')\nassert expand_function_ops(model) is model\n"
              "assert 'onnxscript' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def test_ir_version_newer_than_onnxruntime_reads(tmp_path):
    """onnx's helpers stamp models with its newest IR version, which ONNX Runtime (the constant
    folder) may not read yet; the model compiles all the same, and folding leaves the caller's
    model whole (saving with external data moves a model's weights out of it)."""
    weight = random_input((32, 16))
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["h"]), onnx.helper.make_node("Relu", ["h"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 32])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [4, 16])],
        [onnx.numpy_helper.from_array(weight, "w")])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    assert model.ir_version == onnx.IR_VERSION
    fold_onnx(model)
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(model.graph.initializer[0]), weight)
    onnx.save(model, tmp_path / "newest-ir.onnx")
    x = random_input((4, 32), seed=1)
    (actual,) = saddc.load(saddc.compile(tmp_path / "newest-ir.onnx", target="llvm", output=tmp_path / "m.so").output)(x)
    assert relative_error(actual, np.maximum(x @ weight, 0)) <= 1e-5

