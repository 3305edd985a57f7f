"""The Python API: lower / build / compile / load, and the registered Relax pipeline."""

import os

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import relax as R, tirx as T

import saddc
from saddc.errors import InputError
from conftest import llvm_source


def small_mlp() -> tvm.IRModule:
    """x @ W1 + b1 -> gelu -> @ W2, built directly in Relax."""
    rng = np.random.default_rng(0)
    w1, b1 = rng.standard_normal((16, 32)).astype("float32"), rng.standard_normal(32).astype("float32")
    w2 = rng.standard_normal((32, 8)).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 16), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            h = bb.emit(relax.op.add(relax.op.matmul(x, relax.const(w1)), relax.const(b1)))
            h = bb.emit(relax.op.nn.gelu(h))
            out = bb.emit_output(relax.op.matmul(h, relax.const(w2)))
        bb.emit_func_output(out)
    return bb.get(), (w1, b1, w2)


def reference(x, w1, b1, w2):
    from math import erf

    h = x @ w1 + b1
    h = 0.5 * h * (1 + np.vectorize(erf)(h / np.sqrt(2)))
    return h @ w2


def test_lower_returns_a_lowered_module():
    mod, _ = small_mlp()
    lowered = saddc.lower(mod, saddc.LowerConfig(target="llvm"))
    assert isinstance(lowered, tvm.IRModule)
    prim_funcs = [f for f in lowered.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    assert prim_funcs, "legalization produced no kernels"
    main = lowered["main"].script()
    assert "R.call_tir" not in main and "R.vm.alloc_storage" in main, "main is not VM-lowered"


def test_kernels_compile_with_unaliased_buffers_whatever_function_comes_last():
    """A symbolic batch gives the module a ``shape_func``, last by name after its one kernel.
    TVM's LLVM codegen applies the last function's aliasing flag to every function; without
    ``tirx.noalias`` on ``shape_func`` every buffer access got TVM's may-alias tag
    (``tvm-alias``) and the matmul kept its accumulators in memory."""
    from saddc.passes import MarkSingleBufferFunctionsNoAlias

    batch = tvm.tirx.Var("batch", "int64")
    weight = np.random.default_rng(0).standard_normal((64, 48)).astype("float32")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((batch, 64), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.matmul(x, relax.const(weight)))
        bb.emit_func_output(out)
    lowered = saddc.lower(bb.get())
    names = sorted(gv.name_hint for gv, func in lowered.functions.items() if isinstance(func, tvm.tirx.PrimFunc))
    assert names[-1] == "shape_func"
    assert all(lowered[name].attrs["tirx.noalias"] for name in names)
    executable, _ = saddc.build(lowered)
    assert "tvm-alias" not in llvm_source(executable)
    x_value = np.random.default_rng(1).standard_normal((3, 64)).astype("float32")
    vm = relax.VirtualMachine(executable, tvm.cpu())
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x_value)).numpy(), x_value @ weight, rtol=1e-5, atol=1e-5)
    # The same module with shape_func as TVM makes it: every access may-alias.
    functions = dict(lowered.functions)
    functions[lowered.get_global_var("shape_func")] = lowered["shape_func"].without_attr("tirx.noalias")
    unmarked = tvm.IRModule(functions, attrs=lowered.attrs, global_infos=lowered.global_infos)
    assert MarkSingleBufferFunctionsNoAlias()(unmarked)["shape_func"].attrs["tirx.noalias"]
    assert "tvm-alias" in llvm_source(saddc.build(unmarked)[0])


def test_registered_pipeline_runs_through_tvm_compile():
    mod, weights = small_mlp()
    pipeline = relax.get_pipeline("saddc", config=saddc.LowerConfig(target="llvm"))
    executable = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm"}), relax_pipeline=pipeline)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    x = np.random.default_rng(1).standard_normal((4, 16)).astype("float32")
    np.testing.assert_allclose(vm["main"](tvm.runtime.tensor(x)).numpy(), reference(x, *weights), rtol=1e-4, atol=1e-4)


def test_pipeline_is_registered_after_import_saddc_alone():
    """In a fresh process, as a user's script starts: ``import saddc`` and the config are all
    ``relax.get_pipeline("saddc")`` needs (no earlier saddc.lower or compile)."""
    import subprocess  # pylint: disable=import-outside-toplevel
    import sys  # pylint: disable=import-outside-toplevel

    script = ("import saddc\nfrom tvm import relax\n"
              "print(relax.get_pipeline('saddc', config=saddc.LowerConfig(target='llvm')).info.name)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "saddc", result.stderr


def test_compile_load_roundtrip_from_an_irmodule(tmp_path):
    mod, weights = small_mlp()
    result = saddc.compile(mod, target="llvm", output=tmp_path / "mlp.so")
    assert result.op_counts["matmul"] == 2 and result.rewrites == []
    module = saddc.load(tmp_path / "mlp.so")
    assert [(s.name, s.shape, s.dtype) for s in module.inputs] == [("x", (4, 16), "float32")]
    assert [s.shape for s in module.outputs] == [(4, 8)]
    x = np.random.default_rng(2).standard_normal((4, 16)).astype("float32")
    (out,) = module(x)
    np.testing.assert_allclose(out, reference(x, *weights), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(module.run({"x": x})["output0"], out)
    times = module.time(x, repeat=3, min_repeat_ms=1)
    assert len(times) == 3 and all(0 < t < 1 for t in times)
    with pytest.raises(InputError):
        module.time(x[:2])
    # Written through temporary files and renamed, but with the mode a plain open() gives.
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "mlp.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_load_rejects_mismatched_inputs(tmp_path):
    mod, _ = small_mlp()
    saddc.compile(mod, target="llvm", output=tmp_path / "mlp.so")
    module = saddc.load(tmp_path / "mlp.so")
    with pytest.raises(InputError, match="expects float32"):
        module(np.zeros((4, 15), "float32"))
    with pytest.raises(InputError, match="expects float32"):
        module(np.zeros((4, 16), "float64"))
    with pytest.raises(InputError, match="missing"):
        module.run({"y": np.zeros((4, 16), "float32")})


def test_shapes_tvm_does_not_know_read_as_unknown_dims(tmp_path):
    """A Relax module given directly may leave a shape unknown: TVM erases an output's shape
    where no input binds its dims (``m`` below). Its spec reads '?' per dim, and the module
    runs. A tensor without even a rank, on which TVM legalizes nothing, is refused by name."""

    @tvm.script.ir_module
    class Unbound:  # pylint: disable=too-few-public-methods
        @R.function
        def main(x: R.Tensor(("n",), "float32")):
            m = T.int64()
            y = R.match_cast(x, R.Tensor((m,), "float32"))
            return R.add(y, y)

    saddc.compile(Unbound, target="llvm", output=tmp_path / "unbound.so")
    module = saddc.load(tmp_path / "unbound.so")
    assert [spec.describe() for spec in module.inputs + module.outputs] == ["x: float32[n]", "output0: float32[?]"]
    x = np.arange(5, dtype="float32")
    (doubled,) = module(x)
    np.testing.assert_array_equal(doubled, 2 * x)

    @tvm.script.ir_module
    class Rankless:  # pylint: disable=too-few-public-methods
        @R.function
        def main(z: R.Tensor(dtype="float32")):
            return R.multiply(z, z)

    with pytest.raises(InputError, match="'z' of the module's main has no known rank"):
        saddc.compile(Rankless, target="llvm")


def test_compile_without_output_builds_but_writes_nothing(tmp_path):
    mod, _ = small_mlp()
    result = saddc.compile(mod, target="llvm")
    assert result.output is None and result.executable is not None
    assert list(tmp_path.iterdir()) == []


def test_tvm_default_pipeline_builds_a_baseline_module(tmp_path):
    """pipeline='tvm-default': TVM's own pipeline, exported and loaded like a saddc module."""
    import json

    mod, weights = small_mlp()
    result = saddc.compile(mod, output=tmp_path / "baseline.so", pipeline="tvm-default")
    assert "(TVM's default pipeline, the baseline)" in result.summary_lines()[0]
    assert json.loads((tmp_path / "baseline.json").read_text())["pipeline"] == "tvm-default"
    x = np.random.default_rng(1).standard_normal((4, 16)).astype("float32")
    (out,) = saddc.load(tmp_path / "baseline.so")(x)
    np.testing.assert_allclose(out, reference(x, *weights), rtol=1e-4, atol=1e-4)
    with pytest.raises(saddc.SaddcError, match="takes no rewrites"):
        saddc.compile(mod, pipeline="tvm-default", attention=saddc.AttentionOptions())
    with pytest.raises(saddc.SaddcError, match="unknown pipeline 'fast'"):
        saddc.compile(mod, pipeline="fast")


def test_tvm_default_pipeline_logs_a_repeated_warning_once(capfd):
    """TVM warns at each ``fast``-mode take it legalizes (its ONNX importer's Gathers); the
    baseline's compile prints the line once, with the count, and the module still computes."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((3, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            rows = [bb.emit(relax.op.take(x, relax.const(i, "int64"), axis=0, mode="fast")) for i in range(3)]
            out = bb.emit_output(relax.op.add(relax.op.add(rows[0], rows[1]), rows[2]))
        bb.emit_func_output(out)
    result = saddc.compile(bb.get(), pipeline="tvm-default")
    warnings = [line for line in capfd.readouterr().err.splitlines() if "Fast mode segfaults" in line]
    assert len(warnings) == 1 and warnings[0].endswith("(3 times)"), warnings
    value = np.arange(12, dtype="float32").reshape(3, 4)
    vm = relax.VirtualMachine(result.executable, tvm.cpu())
    np.testing.assert_array_equal(vm["main"](tvm.runtime.tensor(value)).numpy(), value.sum(axis=0))
