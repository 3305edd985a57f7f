"""Bad input: a one-line error, a non-zero exit, no traceback, and nothing written."""

import os
import shutil
import sys
from pathlib import Path

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from conftest import random_input, run_saddc
from model_zoo import IMAGE, build
from saddc.frontends.torch_export import export_onnx


@pytest.fixture(scope="module")
def good_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "deit.onnx"
    export_onnx(build("deit-own-fused"), torch.from_numpy(random_input(IMAGE)), path, "legacy", 17)
    return path


def assert_clean_failure(result, *fragments):
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{result.stderr}"
    assert lines[0].startswith("saddc: error: ")
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_nothing_written(directory: Path, *keep: str):
    assert sorted(p.name for p in directory.iterdir()) == sorted(keep)


def test_missing_file(tmp_path):
    result = run_saddc("compile", tmp_path / "absent.onnx", "-o", tmp_path / "m.so")
    assert_clean_failure(result, "not found", "absent.onnx")
    assert_nothing_written(tmp_path)


def test_empty_file(tmp_path):
    (tmp_path / "empty.onnx").write_bytes(b"")
    result = run_saddc("compile", tmp_path / "empty.onnx", "-o", tmp_path / "m.so")
    assert_clean_failure(result, "empty")
    assert_nothing_written(tmp_path, "empty.onnx")


def test_truncated_file(tmp_path, good_model):
    data = good_model.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    result = run_saddc("compile", tmp_path / "cut.onnx", "-o", tmp_path / "m.so")
    assert_clean_failure(result, "cut.onnx")
    assert_nothing_written(tmp_path, "cut.onnx")


@pytest.mark.parametrize("content", [b"this is a text file, not a model\n", bytes(range(256)) * 8,
                                     b"\x89PNG\r\n\x1a\n" + b"\0" * 64])
def test_not_onnx(tmp_path, content):
    (tmp_path / "model.onnx").write_bytes(content)
    result = run_saddc("compile", tmp_path / "model.onnx", "-o", tmp_path / "m.so")
    assert_clean_failure(result, "model.onnx")
    assert_nothing_written(tmp_path, "model.onnx")


BAD_ARRAYS = {"empty": b"", "truncated": b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False",
              "text": b"not an array\n", "corrupt-npz": b"PK\x03\x04" + b"\0" * 40}


@pytest.mark.parametrize("content", BAD_ARRAYS.values(), ids=BAD_ARRAYS)
def test_bad_calibration_array(tmp_path, good_model, content):
    (tmp_path / "images.npy").write_bytes(content)
    result = run_saddc("compile", good_model, "--shift", "mlp", "--shift-lossy", "--calibration",
                       tmp_path / "images.npy", "-o", tmp_path / "m.so")
    assert_clean_failure(result, "calibration file", "images.npy")
    assert_nothing_written(tmp_path, "images.npy")


def test_bad_bench_calibration_array(tmp_path, good_model):
    (tmp_path / "images.npy").write_bytes(b"")
    result = run_saddc("bench", good_model, "--calibration", tmp_path / "images.npy", "--out", tmp_path / "out")
    assert_clean_failure(result, "cannot read input file", "images.npy: it is empty")
    assert_nothing_written(tmp_path, "images.npy")


def test_missing_external_data(tmp_path):
    model_dir = tmp_path / "ext"
    export_onnx(build("deit-own-fused"), torch.from_numpy(random_input(IMAGE)), tmp_path / "d.onnx", "dynamo", 18)
    model_dir.mkdir()
    shutil.copy(tmp_path / "d.onnx", model_dir / "d.onnx")  # without its .onnx.data
    result = run_saddc("compile", model_dir / "d.onnx", "-o", model_dir / "m.so")
    assert_clean_failure(result, "cannot load the external weight data")
    assert_nothing_written(model_dir, "d.onnx")


def test_unsupported_op_is_named_with_its_node(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"], name="relu0"),
         helper.make_node("DeformConv", ["r", "w", "offset"], ["y"], name="offending_deform_conv")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4]),
         helper.make_tensor_value_info("w", TensorProto.FLOAT, [1, 1, 1, 1]),
         helper.make_tensor_value_info("offset", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    onnx.save(model, tmp_path / "custom.onnx")
    result = run_saddc("compile", tmp_path / "custom.onnx", "-o", tmp_path / "m.so")
    assert_clean_failure(result, "DeformConv", "offending_deform_conv")
    assert_nothing_written(tmp_path, "custom.onnx")


def test_custom_domain_op_is_named(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("FusedAttention", ["x"], ["y"], name="vendor_attn", domain="com.vendor")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.vendor", 1)])
    onnx.save(model, tmp_path / "vendor.onnx")
    result = run_saddc("compile", tmp_path / "vendor.onnx", "-o", tmp_path / "m.so")
    assert_clean_failure(result, "com.vendor::FusedAttention", "vendor_attn")


def test_op_tvm_fails_to_convert_is_named_in_one_line(tmp_path):
    """TVM's Resize converter takes no sizes computed at run time (here, the batch's, with a
    spatial size no scale gives back: 3 -> 10); the failure is one line, without the warning of
    the importer's abandoned BlockBuilder."""
    graph = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["leading"], start=0, end=2),
         helper.make_node("Concat", ["leading", "spatial"], ["sizes"], axis=0),
         helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 10, 10])],
        [helper.make_tensor("spatial", TensorProto.INT64, [2], [10, 10])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), tmp_path / "resize.onnx")
    result = run_saddc("compile", tmp_path / "resize.onnx", "-o", tmp_path / "m.so")
    assert_clean_failure(result, "Resize")
    assert_nothing_written(tmp_path, "resize.onnx")


def test_model_onnxruntime_rejects_gets_its_reason_without_onnxruntime_internals(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="r")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    newest = onnx.defs.onnx_opset_version()  # under development: ONNX Runtime refuses it
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", newest)], ir_version=10), tmp_path / "m.onnx")
    result = run_saddc("compile", tmp_path / "m.onnx", "-o", tmp_path / "m.so")
    assert_clean_failure(result, "ONNX Runtime", f"Opset {newest}")
    assert "onnxruntime_src" not in result.stderr and "saddc-fold" not in result.stderr


@pytest.mark.parametrize("args,fragment", [
    (["--target", "rocm"], "unknown target 'rocm'"),
    (["--target", "cuda", "--arch", "sm_42"], "sm_42"),
    (["--target", "cuda", "--arch", "ampere"], "unknown CUDA arch"),
    (["--target", "llvm", "--arch", "sm_90"], "unknown CPU 'sm_90' for --target llvm"),
])
def test_unknown_target_or_arch(tmp_path, good_model, args, fragment):
    result = run_saddc("compile", good_model, "-o", tmp_path / "m.so", *args)
    assert_clean_failure(result, fragment)
    assert_nothing_written(tmp_path)


def test_no_nvcc_for_cuda(tmp_path, good_model):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_PATH"}
    python_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([python_dir, "/usr/bin", "/bin"])  # no CUDA toolkit on it
    assert shutil.which("nvcc", path=env["PATH"]) is None
    result = run_saddc("compile", good_model, "--target", "cuda", "-o", tmp_path / "m.so", env=env)
    assert_clean_failure(result, "nvcc not found")
    assert_nothing_written(tmp_path)


@pytest.mark.parametrize("output", ["/proc/saddc-model.so", "{tmp}/no/such/dir/m.so", "{tmp}", "{tmp}/m.txt"])
def test_unwritable_output(tmp_path, good_model, output):
    output = output.format(tmp=tmp_path)
    result = run_saddc("compile", good_model, "-o", output)
    assert_clean_failure(result)
    assert not Path("/proc/saddc-model.so").exists()
    assert_nothing_written(tmp_path)


def test_failed_export_leaves_previous_output_untouched(tmp_path, good_model, monkeypatch):
    """A compile that fails while writing keeps the old module and removes its temp files."""
    import saddc
    from saddc import artifacts
    from saddc.errors import OutputPathError

    output = tmp_path / "m.so"
    saddc.compile(good_model, target="llvm", output=output)
    before = output.read_bytes(), artifacts.manifest_path(output).read_text()

    def broken_write(path, obj):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifacts, "write_json", broken_write)
    with pytest.raises(OutputPathError, match="No space left"):
        saddc.compile(good_model, target="llvm", output=output)
    assert (output.read_bytes(), artifacts.manifest_path(output).read_text()) == before
    assert_nothing_written(tmp_path, "m.so", "m.json")
