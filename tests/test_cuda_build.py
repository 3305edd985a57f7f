"""--target cuda on a GPU-less machine: a .so with precompiled kernels for the requested arch."""

import json
import logging

import pytest
import torch

import saddc
from conftest import ort_outputs, random_input, relative_error
from model_zoo import IMAGE, build
from saddc.cuda import read_fatbins
from saddc.frontends.torch_export import export_onnx


@pytest.fixture(scope="module")
def deit_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("cuda") / "deit.onnx"
    return export_onnx(build("deit-own-fused"), torch.from_numpy(random_input(IMAGE)), path, "dynamo", 18)


@pytest.mark.parametrize("arch", ["sm_90", "sm_80"])
def test_library_holds_fatbin_for_the_arch(deit_onnx, tmp_path, arch):
    result = saddc.compile(deit_onnx, target="cuda", arch=arch, output=tmp_path / "m.so")
    entries = read_fatbins(result.output)
    number = int(arch[3:])
    assert {(e.kind, e.arch) for e in entries} == {("sass", number), ("ptx", number)}
    assert all(e.size > 0 for e in entries)
    library = result.output.read_bytes()
    assert b"__global__" not in library, "CUDA source must not ship in the module"
    manifest = json.loads((tmp_path / "m.json").read_text())
    assert manifest["target"] == "cuda" and manifest["arch"] == arch
    assert {f["arch"] for f in manifest["fatbin"]} == {arch}
    assert manifest["versions"]["nvcc"]


def test_cuda_target_states_the_device_limits(deit_onnx):
    """Schedules are generated within the limits the target states (those of every SM since
    sm_70): DLight logged at each kernel of Taylor attention that the target lacked one."""
    logged = []

    class Collect(logging.Handler):
        def emit(self, record):
            logged.append(record.getMessage())

    dlight_log = logging.getLogger("tvm.s_tir.dlight")  # its modules' loggers hand records up to it
    handler = Collect(level=logging.WARNING)
    dlight_log.addHandler(handler)
    try:
        saddc.compile(deit_onnx, target="cuda", attention=saddc.AttentionOptions(mode="taylor"))
    finally:
        dlight_log.removeHandler(handler)
    assert not [message for message in logged if "max_shared_memory_per_block" in message], logged


def test_fatbin_reader_finds_nothing_in_a_cpu_module(deit_onnx, tmp_path):
    result = saddc.compile(deit_onnx, target="llvm", output=tmp_path / "cpu.so")
    assert read_fatbins(result.output) == []


def test_dump_ir_writes_each_phase(deit_onnx, tmp_path):
    saddc.compile(deit_onnx, target="cuda", output=tmp_path / "m.so", dump_ir=tmp_path / "ir")
    names = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert names == ["00-input.py", "01-cleanup.py", "02-reparameterize.py", "03-legalize.py",
                     "04-schedule.py", "05-vm-lowering.py"]
    scheduled = (tmp_path / "ir" / "04-schedule.py").read_text()
    assert "threadIdx.x" in scheduled, "the CUDA schedule phase binds threads"


@pytest.mark.gpu
def test_cuda_module_runs_and_matches_onnxruntime(deit_onnx, tmp_path):
    result = saddc.compile(deit_onnx, target="cuda", output=tmp_path / "m.so")
    x = random_input(IMAGE, seed=3)
    (expected,) = ort_outputs(deit_onnx, {"x": x})
    (actual,) = saddc.load(result.output)(x)
    assert relative_error(actual, expected) <= 1e-4
