"""saddc bench: one run times ONNX Runtime, TVM's default pipeline and saddc's variants side by
side, checks saddc's outputs against ONNX Runtime, and writes a table, JSON and PNG with the
slowest kernels' achieved FLOP and byte rates (from the compile's work estimates); bad input
is one line."""

import json

import onnx
import pytest
import torch
from onnx import TensorProto, helper

from conftest import random_input, run_saddc
from model_zoo import IMAGE, build
from saddc.benchmarking import machine, machine_slug
from saddc.config import CUDA_BENCH_VARIANTS
from saddc.cuda import gpu_visible
from saddc.frontends.torch_export import export_onnx
from saddc.target import parse_target


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "deit.onnx"
    return export_onnx(build("deit-own-fused"), torch.from_numpy(random_input(IMAGE)), path, "legacy", 17,
                       dynamic_batch=True)


def test_bench_times_every_runner_side_by_side(model, tmp_path):
    result = run_saddc("bench", model, "--variants", "plain,shift", "--batch", "1,2", "--repeat", "2", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    (record,) = tmp_path.glob("bench_deit_llvm_*.json")
    assert record.with_suffix(".png").stat().st_size > 0
    data = json.loads(record.read_text())
    runners = {(row["runner"], row["batch"]) for row in data["rows"]}
    for name in ("onnxruntime", "tvm default", "saddc plain", "saddc shift"):
        assert {(name, 1), (name, 2)} <= runners
    for row in data["rows"]:
        assert 0 < row["min_us"] <= row["median_us"] <= row["max_us"] and row["repeats"] == 2
    plain = [row for row in data["rows"] if row["runner"] == "saddc plain"]
    assert all(row["vs_reference"]["max_relative_error"] <= 1e-4 for row in plain)
    assert data["slowest_kernels"] and "saddc plain" in result.stdout
    slowest = data["slowest_kernels"]["saddc plain"]
    assert all(k["gbyte_per_s"] > 0 for k in slowest) and any((k["gflop_per_s"] or 0) > 0 for k in slowest)
    # Every kernel's time, which the listed slowest are part of, and the shares are of it.
    everything = data["kernels_alone_us"]["saddc plain"]
    assert sum(k["total_us"] for k in slowest) <= everything * (1 + 1e-9)
    assert sum(k["share"] for k in slowest) == pytest.approx(sum(k["total_us"] for k in slowest) / everything)
    assert f"all of them {everything / 1e3:.2f} ms of a" in result.stdout
    assert not list(tmp_path.glob("*build*")), "the compiled modules are temporary"


def test_bench_leaves_tvm_default_out_on_request(model, tmp_path):
    """--no-tvm-default: on the CPU TVM's default pipeline takes about 100x ONNX Runtime's time,
    minutes a round for a large model, and is neither built nor timed."""
    result = run_saddc("bench", model, "--variants", "plain", "--no-tvm-default", "--repeat", "1", "--out", tmp_path)
    assert result.returncode == 0, result.stderr
    (record,) = tmp_path.glob("bench_deit_llvm_*.json")
    assert {row["runner"] for row in json.loads(record.read_text())["rows"]} == {"onnxruntime", "saddc plain"}


def test_cuda_build_compiles_every_variant(model, tmp_path):
    """What a GPU session runs: every default CUDA variant compiles here (nvcc, no GPU), the
    combination and fp16 included."""
    result = run_saddc("bench", model, "--target", "cuda", "--build-only", tmp_path / "build")
    assert result.returncode == 0, result.stderr
    plan = json.loads((tmp_path / "build" / "plan.json").read_text())
    assert set(plan["modules"]) == {"tvm default"} | {f"saddc {variant}" for variant in CUDA_BENCH_VARIANTS}
    assert all((tmp_path / "build" / entry["module"]).stat().st_size > 0 for entry in plan["modules"].values())


@pytest.fixture(scope="module")
def unbenchable(tmp_path_factory):
    """Models a benchmark cannot feed: two inputs, a symbolic image size, a fixed batch of 1."""
    root = tmp_path_factory.mktemp("unbenchable")

    def save(name, input_names, shape):
        inputs = [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, shape) for input_name in input_names]
        graph = helper.make_graph([helper.make_node("Identity", [input_names[0]], ["y"])], name, inputs,
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), root / f"{name}.onnx")

    save("two_inputs", ["a", "b"], ["batch", 3, 8, 8])
    save("any_size", ["image"], ["batch", 3, "height", "width"])
    save("batch_one", ["image"], [1, 3, 8, 8])
    return root


@pytest.mark.parametrize("args,message", [
    (["{unbenchable}/two_inputs.onnx"], "single-input models (an image batch); this one has 2 inputs"),
    (["{unbenchable}/any_size.onnx"], "dims after the batch static, and the model has image: float32[batch, 3, height, width]"),
    (["{unbenchable}/batch_one.onnx", "--batch", "1,8"], "the model's batch is fixed at 1: time it with --batch 1 (--batch 8 needs a symbolic batch)"),
    (["{model}", "--variants", "plain,fast"], "unknown variant(s) fast"),
    (["{model}", "--batch", "1,x"], "--batch wants comma-separated integers"),
    (["--repeat", "1"], "needs a model"),
    (["--run", "{tmp}"], "holds no saddc bench build"),
    (["--run", "{tmp}", "--no-tvm-default"], "--no-tvm-default chooses what is built"),
    (["{model}", "--target", "cuda", "--no-tvm-default", "--build-only", "{tmp}/build"],
     "on cuda TVM's default pipeline is the baseline"),
    (["{tmp}/missing.onnx"], "missing.onnx"),
    pytest.param(["{model}", "--target", "cuda"], "timing for cuda needs a CUDA GPU",
                 marks=pytest.mark.skipif(gpu_visible(), reason="a GPU is visible: cuda timing runs")),
])
def test_bad_bench_input_is_one_line(model, unbenchable, tmp_path, args, message):
    """Each fails before the first build, and writes nothing."""
    args = [arg.format(model=model, unbenchable=unbenchable, tmp=tmp_path) for arg in args]
    result = run_saddc("bench", *args, "--out", tmp_path / "out")
    assert result.returncode == 2, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("saddc: error:")]
    assert message in line and "Traceback" not in result.stderr
    assert "compiling" not in result.stderr
    assert not list(tmp_path.glob("out/bench_*"))


def test_kernel_work_is_estimated_per_image_and_scaled_by_the_batch(tmp_path):
    """compile estimates each kernel's operations with the dynamic batch counted as one (a
    matmul with its bias: 2*M*N*K + M*N a row block), the manifest carries them, and timing a
    batch of 3 reports three times that, with the bytes of the kernel's arguments."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    import tvm  # pylint: disable=import-outside-toplevel
    from tvm import relax  # pylint: disable=import-outside-toplevel

    import saddc  # pylint: disable=import-outside-toplevel

    rows, inner, columns = 8, 16, 32
    weight = np.ones((inner, columns), "float32")
    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((tvm.tirx.Var("batch", "int64"), rows, inner), "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            product = builder.emit(relax.op.matmul(x, relax.const(weight)))
            output = builder.emit_output(relax.op.add(product, relax.const(np.ones(columns, "float32"))))
        builder.emit_func_output(output)
    result = saddc.compile(builder.get(), output=tmp_path / "linear.so")
    (name,) = [kernel for kernel in result.manifest["kernel_flops"] if "matmul" in kernel]
    assert result.manifest["kernel_flops"][name] == 2 * rows * inner * columns + rows * columns
    assert "kernel_flops" not in result.rewrites
    timings = saddc.load(tmp_path / "linear.so").time_kernels(np.ones((3, rows, inner), "float32"), repeat=1)
    assert timings[name]["flops"] == 3 * (2 * rows * inner * columns + rows * columns)
    assert timings[name]["bytes"] == 4 * (3 * rows * inner + inner * columns + columns + 3 * rows * columns)


def test_kernel_work_counts_every_call_of_a_kernel(tmp_path):
    """A kernel the model calls twice (two layers of one shape share it) counts twice in the
    model's total work."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    from tvm import relax  # pylint: disable=import-outside-toplevel

    import saddc  # pylint: disable=import-outside-toplevel
    from saddc.passes.estimate_kernel_work import KERNEL_WORK_REPORT  # pylint: disable=import-outside-toplevel

    builder = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 16), "float32"))
    with builder.function("main", [x]):
        with builder.dataflow():
            hidden = builder.emit(relax.op.matmul(x, relax.const(np.ones((16, 16), "float32"))))
            output = builder.emit_output(relax.op.matmul(hidden, relax.const(np.full((16, 16), 2, "float32"))))
        builder.emit_func_output(output)
    work = saddc.compile(builder.get(), output=tmp_path / "two.so").reports[KERNEL_WORK_REPORT]
    (name,) = work.flops
    assert work.calls[name] == 2
    assert f"{2 * work.flops[name] / 1e9:.3g} GFLOP a call" in work.summary_lines()[0]


def test_records_of_cpus_named_alike_are_named_apart():
    """Result files are named by machine: a CPU by its name, LLVM's name for it and its cores,
    as VMs name Xeons of two generations alike (one's records overwrote the other's before)."""
    xeon = {"cpu": "Intel(R) Xeon(R) Processor", "cores": 2}
    assert machine_slug({**xeon, "llvm_cpu": "emeraldrapids"}) == "intel-r-xeon-r-processor-emeraldrapids-2core"
    assert machine_slug({**xeon, "llvm_cpu": "rocketlake"}) != machine_slug({**xeon, "llvm_cpu": "emeraldrapids"})
    assert machine(is_cuda=False)["llvm_cpu"] == parse_target("llvm").arch


def test_gpu_session_jobs_call_this_trees_commands(tmp_path):
    """The GPU session kit's jobs (benchmarks/gpu_session.py, run on a GPU machine) name
    saddc command lines its parser accepts and scripts of this tree, so a renamed option
    fails here rather than in a scarce GPU session."""
    import sys  # pylint: disable=import-outside-toplevel
    from pathlib import Path  # pylint: disable=import-outside-toplevel

    from saddc.cli import build_parser  # pylint: disable=import-outside-toplevel

    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "benchmarks"))
    import gpu_session  # pylint: disable=import-outside-toplevel

    jobs = gpu_session.jobs(tmp_path, trials=8)
    assert [name for name, _, _ in jobs] == list(gpu_session.ESTIMATES)
    for name, argv, _ in jobs:
        if argv[1:3] == ["-m", "saddc"]:
            args = build_parser().parse_args(argv[3:])
            assert args.target == "cuda", name
        for word in " ".join(argv).split():
            if word.startswith(("benchmarks/", "examples/")):
                assert (root / word.split(":")[0]).is_file(), (name, word)
