"""--dtype float16: the model's dense ops in fp16 with fp32 accumulation, checked against the
fp32 original on the CPU (which emulates fp16), and built for CUDA."""

import json

import numpy as np
import pytest
import torch
from tvm import relax, topi

import saddc
from conftest import ort_outputs, random_input, relative_error, run_saddc
from model_zoo import IMAGE, build
from saddc.cuda import read_fatbins
from saddc.errors import ConfigError, SaddcWarning
from saddc.frontends.torch_export import export_onnx
from saddc.passes import ConvertToFloat16


@pytest.fixture(scope="module")
def deit_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("fp16") / "deit.onnx"
    return export_onnx(build("deit-own-fused"), torch.from_numpy(random_input(IMAGE)), path, dynamic_batch=True)


def test_float16_module_is_close_to_the_fp32_original_and_says_so(deit_onnx, tmp_path):
    with pytest.warns(SaddcWarning, match="CPUs without fp16 arithmetic emulate it"):
        half = saddc.compile(deit_onnx, dtype="float16", output=tmp_path / "half.so")
    x = random_input((2,) + IMAGE[1:], seed=7)
    (expected,) = ort_outputs(deit_onnx, {"x": x})
    (actual,) = saddc.load(half.output)(x)
    (full,) = saddc.load(saddc.compile(deit_onnx, output=tmp_path / "full.so").output)(x)
    error = relative_error(actual, expected)
    # fp16 rounds every activation and weight (2^-11 relative); fp32 matches to float tolerance.
    assert 1e-5 < error <= 1e-2, error
    assert relative_error(full, expected) <= 1e-5
    assert actual.dtype == expected.dtype, "the module keeps the model's float32 interface"
    assert json.loads((tmp_path / "half.json").read_text())["dtype"] == "float16"
    assert "precision:         float16 (fp32 accumulation" in "\n".join(half.summary_lines())


def test_float16_refuses_saddc_kernels_clearly(deit_onnx):
    with pytest.raises(ConfigError, match="--dtype float16 does not combine with --shift"):
        saddc.compile(deit_onnx, dtype="float16", shift=saddc.ShiftOptions("mlp", lossy=True))
    # A model that computes a primitive itself (lowered to a kernel without any option) is
    # refused by the pass, naming the kernel.
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 8), "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            y = builder.emit(relax.op.matmul(x, relax.const(np.ones((8, 8), "float32"))))
            z = builder.emit_output(builder.call_te(topi.nn.relu, y, primfunc_name_hint="a_kernel"))
        builder.emit_func_output(z)
    with pytest.raises(ConfigError, match=r"saddc's kernels yet \(here: a_kernel\)"):
        ConvertToFloat16()(builder.get())


def test_float16_cuda_build_falls_through_a_failing_dlight_rule_with_a_warning(tmp_path):
    """DeiT's 224x224 patch embedding in fp16 with a symbolic batch: DLight's tensor-core matmul
    fails inside its schedule; the next rule takes the kernel and the compile says so."""
    from deit_tiny import deit_tiny

    torch.manual_seed(0)
    model = deit_tiny(dim=128, depth=1, heads=2, num_classes=10).eval()
    onnx_path = export_onnx(model, torch.zeros(1, 3, 224, 224), tmp_path / "deit224.onnx", dynamic_batch=True)
    with pytest.warns(SaddcWarning, match=r"DLight's Matmul rule failed on the kernel of float16\[batch, 14, 14, 768\]"):
        result = saddc.compile(onnx_path, target="cuda", dtype="float16", output=tmp_path / "m.so")
    assert {(e.kind, e.arch) for e in read_fatbins(result.output)} == {("sass", 90), ("ptx", 90)}


def test_dtype_errors_are_one_line(deit_onnx, tmp_path):
    with pytest.raises(ConfigError, match="unknown dtype 'bfloat16'"):
        saddc.compile(deit_onnx, dtype="bfloat16")
    with pytest.raises(saddc.SaddcError, match="takes no rewrites or dtype"):
        saddc.compile(deit_onnx, dtype="float16", pipeline="tvm-default")
    result = run_saddc("compile", deit_onnx, "--dtype", "half", "-o", tmp_path / "x.so")
    assert result.returncode == 2 and "invalid choice: 'half'" in result.stderr
    assert not (tmp_path / "x.so").exists()


@pytest.mark.gpu
def test_float16_cuda_module_is_close_to_the_fp32_original(deit_onnx, tmp_path):
    result = saddc.compile(deit_onnx, target="cuda", dtype="float16", output=tmp_path / "m.so")
    x = random_input((4,) + IMAGE[1:], seed=9)
    (expected,) = ort_outputs(deit_onnx, {"x": x})
    (actual,) = saddc.load(result.output)(x)
    assert relative_error(actual, expected) <= 1e-2
