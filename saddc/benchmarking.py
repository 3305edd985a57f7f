"""What benchmark scripts share: their build-here, run-there command line, the machine they ran
on, and summaries of repeated timings.

Timings are taken side by side in one process (these machines are noisy); results name the
machine (CPU model and cores, or the GPU) and the method. torch is imported only for GPU facts.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
from pathlib import Path
from typing import Callable


def machine(is_cuda: bool) -> dict:
    """Host, CPU model, core count, and on a GPU run the GPU's name; on a CPU run, LLVM's name
    for the CPU too where TVM's compiler is loaded to ask (virtual machines' CPUs are often
    named alike: Xeons of two generations both "Intel(R) Xeon(R) Processor")."""
    info = {"host": platform.node(), "cpu": cpu_name(), "cores": os.cpu_count()}
    if is_cuda:
        import torch  # pylint: disable=import-outside-toplevel

        info["gpu"] = torch.cuda.get_device_name(0)
    else:
        import tvm  # pylint: disable=import-outside-toplevel

        # Absent in runtime-only mode (TVM_USE_RUNTIME_LIB), where no llvm module is built.
        system_cpu = tvm.get_global_func("target.llvm_get_system_cpu", allow_missing=True)
        if system_cpu is not None:
            info["llvm_cpu"] = system_cpu()
    return info


def machine_slug(info: dict) -> str:
    """A file-name tag for the machine: its GPU, or its CPU (with LLVM's name for it where
    recorded) and core count."""
    cpu = " ".join(filter(None, (info["cpu"], info.get("llvm_cpu"))))
    name = info.get("gpu") or f"{cpu} {info['cores']}core"
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-").replace("--", "-")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# Peak float32 (CUDA-core) arithmetic and memory bandwidth of the GPUs lent to this project, by
# a substring of torch's device name (the first that matches): NVIDIA's data sheets.
GPU_PEAKS = (
    ("H200", {"flops": 67e12, "bytes_per_s": 4.8e12}),
    ("H100 PCIe", {"flops": 51e12, "bytes_per_s": 2.0e12}),
    ("H100", {"flops": 67e12, "bytes_per_s": 3.35e12}),
)


def gpu_peak(name: str) -> dict | None:
    """``{"flops": per second, "bytes_per_s": ...}`` for a GPU named ``name``, or None."""
    return next((peak for key, peak in GPU_PEAKS if key in name), None)


def gpu_arch() -> str:
    """The first GPU's ``sm_XY``."""
    import torch  # pylint: disable=import-outside-toplevel

    major, minor = torch.cuda.get_device_capability(0)
    return f"sm_{major}{minor}"


def summary(seconds: list[float]) -> dict:
    """Median, min and max in microseconds, and how many repeats they summarize."""
    return {"median_us": statistics.median(seconds) * 1e6, "min_us": min(seconds) * 1e6,
            "max_us": max(seconds) * 1e6, "repeats": len(seconds)}


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def linear_module(batch: int, tokens: int, weight, bias=None, dtype: str = "float32"):
    """A Relax module of one linear layer, ``main(x) = x @ weight (+ bias)`` with x of shape
    (batch, tokens, in_features): the unit the kernel benchmarks compile."""
    from tvm import relax  # pylint: disable=import-outside-toplevel

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((batch, tokens, weight.shape[0]), dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            product = relax.op.matmul(x, relax.const(weight.astype(dtype)))
            if bias is not None:
                product = relax.op.add(product, relax.const(bias.astype(dtype)))
            out = bb.emit_output(product)
        bb.emit_func_output(out)
    return bb.get()


def expert_latency(in_features: int, out_features: int, tokens: int, target: str = "llvm", bits: int = 5,
                   repeat: int = 5, build_dir: str | os.PathLike | None = None) -> tuple[float, float]:
    """Seconds per call of the Mult and the Shift expert of an MoE layer of this shape, measured
    from saddc's compiled kernels on this machine: the sparse dispatch of a layer with every one
    of ``tokens`` rows routed to Mult (shift ratio 0), and then to Shift (ratio 1). Both carry the
    same partition and scatter, so their ratio is the experts' cost ratio that
    ``saddc.nn.balance_loss`` weighs (it only uses the ratio). ``target`` ``cuda`` needs a GPU."""
    import tempfile  # pylint: disable=import-outside-toplevel

    import numpy as np  # pylint: disable=import-outside-toplevel

    import saddc  # pylint: disable=import-outside-toplevel
    from saddc.config import MoEOptions  # pylint: disable=import-outside-toplevel
    from saddc.runtime import load  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((in_features, out_features)) / np.sqrt(in_features)).astype("float32")
    x = rng.standard_normal((1, tokens, in_features)).astype("float32")
    latencies = []
    with tempfile.TemporaryDirectory(dir=build_dir) as tmp:
        for ratio in (0.0, 1.0):
            moe = MoEOptions("all", shift_ratio=ratio, bits=bits, calibration=x, measure_error=False)
            result = saddc.compile(linear_module(1, tokens, weight), target=target,
                                   output=Path(tmp) / f"expert-{ratio}.so", moe=moe)
            latencies.append(statistics.median(load(result.output).time(x, repeat=repeat)))
    return latencies[0], latencies[1]


def script_parser(description: str, name: str) -> argparse.ArgumentParser:
    """The options every benchmark script takes: the target, the split between compiling (here,
    with TVM's compiler) and timing (there, with the runtime only), and the result file."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--target", choices=("llvm", "cuda"), default="llvm")
    parser.add_argument("--build-only", metavar="DIR", help="compile the modules into DIR and stop")
    parser.add_argument("--run", metavar="DIR", help="time the modules compiled into DIR")
    parser.add_argument("--out", help=f"result JSON (default benchmarks/results/{name}_<target>_<machine>.json)")
    return parser


def build_then_run(args: argparse.Namespace, name: str, results: Path, build: Callable[[Path], None],
                   run: Callable[[Path, Path], object]) -> int:
    """Builds into ``--build-only`` and stops; or times ``--run``'s modules; or builds into
    ``out/bench-<name>/<target>`` and times them. ``build`` writes a ``plan.json`` naming the
    target; the result goes to ``--out`` or to ``results/<name>_<target>_<machine>.json``."""
    if args.build_only:
        build(Path(args.build_only))
        return 0
    build_dir = Path(args.run) if args.run else Path("out") / f"bench-{name.replace('_', '-')}" / args.target
    if not args.run:
        build(build_dir)
    target = json.loads((build_dir / "plan.json").read_text())["target"]
    default = results / f"{name}_{target}_{machine_slug(machine(target == 'cuda'))}.json"
    run(build_dir, Path(args.out) if args.out else default)
    return 0
