"""``saddc bench``: one model run every way, side by side in one process.

Runners: ONNX Runtime on the original model (CPU), TVM's default Relax pipeline (which
``--no-tvm-default`` leaves out on the CPU, where it schedules nothing and a large model's
rounds take minutes), PyTorch eager
when a torch model is given (and ``torch.compile`` and fp16 eager on a GPU), saddc with no
rewrite, with each rewrite, with ShiftAddViT's combination, and in fp16 (cuda by default).
Every repeat round times each runner once (calls averaged over ``min_repeat_ms``, warm-up
excluded), so load on a noisy machine falls on all of them alike; figures are the median and the spread (max - min over median) of the rounds.

For ``cuda`` the work splits like the benchmark scripts': ``--build-only DIR`` compiles here
(nvcc, no GPU needed) and ``--run DIR`` times on the GPU machine with TVM's runtime alone.

Outputs: a table, a JSON record (machine, method, every figure), and a PNG: latency by runner
per batch, and the slowest kernels of saddc's plain module and of its combination.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from saddc import benchmarking
from saddc.errors import ConfigError, InputError
from saddc.specs import TensorSpec

# The compile flags each variant (config.BENCH_VARIANTS) stands for; ``variant_options`` builds them.
VARIANT_FLAGS = {
    "plain": "",
    "shift": "--shift all --shift-lossy",
    "additive": "--attention additive",
    "taylor": "--attention taylor",
    "moe": "--moe mlp",
    "shiftaddvit": "--shift attn --shift-lossy --attention additive --moe mlp",
    "fp16": "--dtype float16",
    "untuned": "--db none",
}
TOP_KERNELS = 8
# A pause after timing each runner. ONNX Runtime's worker threads keep spinning after its last
# call (its default, which makes back-to-back calls fast) and slowed the module timed next by
# up to 2x on two cores, fading over about 200 ms.
SETTLE_SECONDS = 0.2


@dataclass
class Runner:
    name: str
    call: Callable[[], object]  # one inference on the prepared inputs
    sync: Callable[[], None] = lambda: None


def variant_options(variant: str, calibration) -> dict:
    """``saddc.compile``'s rewrite options for a variant (the latency gate's cases use them too)."""
    # pylint: disable=import-outside-toplevel
    from saddc.config import AttentionOptions, MoEOptions, ShiftOptions

    shift = {"shift": ShiftOptions("all", lossy=True, calibration=calibration)}
    additive = {"attention": AttentionOptions("additive", calibration=calibration, measure_error=False)}
    moe = {"moe": MoEOptions("mlp", calibration=calibration, measure_error=False)}
    return {
        "plain": {},
        "shift": shift,
        "additive": additive,
        "taylor": {"attention": AttentionOptions("taylor", calibration=calibration, measure_error=False)},
        "moe": moe,
        "shiftaddvit": {"shift": ShiftOptions("attn", lossy=True, calibration=calibration), **additive, **moe},
        "fp16": {"dtype": "float16"},
        "untuned": {"tuning_db": None},
    }[variant]


def build(model: Path, target: str, arch: str | None, variants: list[str], out_dir: Path,
          calibration=None, tvm_default: bool = True) -> dict:
    """Compile TVM's default pipeline (unless ``tvm_default`` is false) and every saddc variant
    into ``out_dir``; writes and returns the plan (what was built, from what)."""
    # pylint: disable=import-outside-toplevel
    import onnx
    from tqdm import tqdm

    import saddc

    out_dir.mkdir(parents=True, exist_ok=True)
    # ORT runs the original beside the modules: one self-contained file (weights inlined).
    onnx.save(onnx.load(str(model)), str(out_dir / "model.onnx"))
    jobs = [("tvm default", {"pipeline": "tvm-default"})] if tvm_default else []
    jobs += [(f"saddc {variant}", variant_options(variant, calibration)) for variant in variants]
    plan = {"model": str(model), "target": target, "modules": {}}
    for name, options in tqdm(jobs, desc="compiling", file=sys.stderr):
        module = out_dir / (name.replace(" ", "_") + ".so")
        result = saddc.compile(model, target=target, arch=arch, output=module, **options)
        plan["modules"][name] = {"module": module.name, "flags": VARIANT_FLAGS.get(name.split()[-1], ""),
                                 "compile_seconds": result.seconds}
        plan["inputs"] = [spec.to_json() for spec in result.inputs]
        plan["target_description"] = result.target.describe()
    (out_dir / "plan.json").write_text(json.dumps(plan, indent=1))
    return plan


def run(build_dir: Path, batches: list[int], repeat: int, torch_model: str | None = None,
        min_repeat_ms: int = 200) -> dict:
    """Time every runner in ``build_dir`` at each batch size; the result record."""
    from saddc.runtime import load  # pylint: disable=import-outside-toplevel

    plan = json.loads((build_dir / "plan.json").read_text())
    is_cuda = plan["target"] == "cuda"
    modules = {name: load(build_dir / entry["module"]) for name, entry in plan["modules"].items()}
    (spec,) = check_benchable(next(iter(modules.values())).inputs, batches)
    rows, kernels, kernels_alone_us = [], {}, {}
    machine = benchmarking.machine(is_cuda)
    peak = benchmarking.gpu_peak(machine["gpu"]) if is_cuda else None
    for batch in batches:
        shape = [batch, *spec.shape[1:]]
        x = np.random.default_rng(batch).standard_normal(shape).astype(spec.dtype)
        runners, reference = _runners(build_dir, modules, x, torch_model, is_cuda)
        seconds = time_side_by_side(runners, repeat, min_repeat_ms, f"timing batch {batch}")
        for runner in runners:
            agreement = None
            if runner.name in modules:
                (ours,) = modules[runner.name](x)
                agreement = _agreement(ours, reference)
            rows.append({"runner": runner.name, "batch": batch, **benchmarking.summary(seconds[runner.name]),
                         "flags": plan["modules"].get(runner.name, {}).get("flags"), "vs_reference": agreement})
        for name in ("saddc plain", "saddc shiftaddvit"):
            if name in modules and batch == batches[0]:
                kernels[name], kernels_alone_us[name] = _slowest_kernels(modules[name], x, peak)
    base = {r["batch"]: r["median_us"] for r in rows if r["runner"] == "onnxruntime"} or \
        {r["batch"]: r["median_us"] for r in rows if r["runner"] == "tvm default"}
    for row in rows:
        row["x_vs_baseline"] = base[row["batch"]] / row["median_us"]
    return {
        "benchmark": "saddc bench", "model": plan["model"], "target": plan["target_description"],
        "machine": machine, "device_peak": peak, "date": benchmarking.now(),
        "baseline": "onnxruntime" if not is_cuda else "tvm default",
        "method": f"median and spread of {repeat} rounds; each round times every runner once (then pauses "
                  f"{SETTLE_SECONDS} s), averaging "
                  f"calls that fill >= {min_repeat_ms} ms after a warm-up; one process",
        "rows": rows, "slowest_kernels": kernels, "kernels_alone_us": kernels_alone_us,
    }


def check_benchable(inputs: list[TensorSpec], batches: list[int]) -> list[TensorSpec]:
    """``inputs`` when the model is one a benchmark can feed at each of ``batches``: a single
    input whose dims after the first (the batch) are static, and a batch that is symbolic or
    the one asked for. Checked before the builds, which take minutes."""
    if len(inputs) != 1:
        raise InputError(f"saddc bench times single-input models (an image batch); this one has {len(inputs)} inputs")
    (spec,) = inputs
    if not spec.shape or not all(isinstance(dim, int) for dim in spec.shape[1:]):
        raise InputError(f"saddc bench needs the input's dims after the batch static, and the model has {spec.describe()}")
    if isinstance(spec.shape[0], int) and any(batch != spec.shape[0] for batch in batches):
        others = ",".join(str(batch) for batch in batches if batch != spec.shape[0])
        raise ConfigError(f"the model's batch is fixed at {spec.shape[0]}: time it with --batch {spec.shape[0]} "
                          f"(--batch {others} needs a symbolic batch)")
    return inputs


def _runners(build_dir, modules, x, torch_model, is_cuda) -> tuple[list[Runner], np.ndarray]:
    """Every runner on input ``x``, and ONNX Runtime's output (the reference). On CUDA, ONNX
    Runtime (on the CPU) gives the reference only; the GPU runners are timed against TVM's
    default pipeline and torch."""
    import onnxruntime as ort  # pylint: disable=import-outside-toplevel

    session = ort.InferenceSession(str(build_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: x}
    reference = session.run(None, feeds)[0]
    runners = [] if is_cuda else [Runner("onnxruntime", lambda: session.run(None, feeds))]
    if torch_model:
        runners += _torch_runners(torch_model, x, is_cuda)
    for name, module in modules.items():
        runners.append(module_runner(name, module, x))
    return runners, reference


def module_runner(name: str, module, x: np.ndarray) -> Runner:
    """A runner calling a compiled module's ``main`` on ``x``, converted to device tensors once."""
    tensors = module._tensors([x])  # pylint: disable=protected-access
    return Runner(name, lambda: module._main(*tensors), module.device.sync)  # pylint: disable=protected-access


def _torch_runners(spec: str, x: np.ndarray, is_cuda: bool) -> list[Runner]:
    """``FILE.py:FACTORY``: a torch model (its weights do not matter for latency)."""
    import torch  # pylint: disable=import-outside-toplevel

    from saddc.torch_models import load_factory  # pylint: disable=import-outside-toplevel

    device = "cuda" if is_cuda else "cpu"
    model = load_factory(spec).to(device)
    tensor = torch.from_numpy(x).to(device)
    sync = torch.cuda.synchronize if is_cuda else (lambda: None)

    def runner(module):
        def call():
            with torch.inference_mode():
                return module(tensor)
        return call

    runners = [Runner("torch eager", runner(model), sync)]
    if is_cuda:  # torch.compile on the CPU needs a C++ toolchain per shape; on a GPU it is the baseline to beat
        runners.append(Runner("torch.compile", runner(torch.compile(model)), sync))
        # The fp16 baseline of saddc's --dtype float16: the model in half precision.
        half_model, half_tensor = copy.deepcopy(model).half(), tensor.half()

        def half_call():
            with torch.inference_mode():
                return half_model(half_tensor).float()

        runners.append(Runner("torch eager fp16", half_call, sync))
    return runners


def time_side_by_side(runners: list[Runner], repeat: int, min_repeat_ms: int, desc: str,
                      progress: bool = True) -> dict[str, list[float]]:
    """Seconds per call of each runner in each of ``repeat`` rounds; every round times every
    runner once, after one warm-up call each (and compilation, for torch.compile) that is not
    timed, and pauses ``SETTLE_SECONDS`` after each."""
    # pylint: disable=import-outside-toplevel
    from tqdm import tqdm

    seconds = {runner.name: [] for runner in runners}
    for runner in runners:
        runner.call()
        runner.sync()
    time.sleep(SETTLE_SECONDS)
    for _ in tqdm(range(repeat), desc=desc, file=sys.stderr, disable=not progress):
        for runner in runners:
            seconds[runner.name].append(_seconds_per_call(runner, min_repeat_ms))
            time.sleep(SETTLE_SECONDS)
    return seconds


def _seconds_per_call(runner: Runner, min_repeat_ms: int) -> float:
    calls, started = 0, time.perf_counter()
    while True:
        runner.call()
        calls += 1
        runner.sync()
        elapsed = time.perf_counter() - started
        if elapsed * 1e3 >= min_repeat_ms:
            return elapsed / calls


def _agreement(ours: np.ndarray, reference: np.ndarray) -> dict:
    flat, expected = ours.ravel().astype(np.float64), reference.ravel().astype(np.float64)
    cosine = float(flat @ expected / max(np.linalg.norm(flat) * np.linalg.norm(expected), 1e-30))
    result = {"max_relative_error": float(np.abs(flat - expected).max() / max(np.abs(expected).max(), 1e-30)),
              "cosine": cosine}
    if ours.ndim == 2:
        result["top1_agreement"] = float(np.mean(ours.argmax(-1) == reference.argmax(-1)))
    return result


def _slowest_kernels(module, x, peak: dict | None) -> tuple[list[dict], float]:
    """The slowest kernels of ``module`` on ``x``: time over all calls, share, and the rates
    achieved in one call (its estimated FLOPs and its arguments' bytes over its time), with
    their fractions of the device's ``peak`` where known; and the time of all its kernels in
    microseconds. Each kernel is timed alone, its arguments warm in the caches: in a call the
    weights stream from memory, and the sum falls short of the call's time."""
    timings = module.time_kernels(x, repeat=3)
    totals = []
    for name, timing in timings.items():
        seconds = statistics.median(timing["seconds"])
        kernel = {"kernel": name, "calls": timing["calls"], "total_us": timing["calls"] * seconds * 1e6,
                  "gflop_per_s": None if timing["flops"] is None else timing["flops"] / seconds / 1e9,
                  "gbyte_per_s": timing["bytes"] / seconds / 1e9}
        if peak is not None:
            kernel["peak_flops_fraction"] = (None if kernel["gflop_per_s"] is None
                                             else kernel["gflop_per_s"] * 1e9 / peak["flops"])
            kernel["peak_bandwidth_fraction"] = kernel["gbyte_per_s"] * 1e9 / peak["bytes_per_s"]
        totals.append(kernel)
    everything = sum(k["total_us"] for k in totals)
    for kernel in totals:
        kernel["share"] = kernel["total_us"] / everything
    return sorted(totals, key=lambda k: -k["total_us"])[:TOP_KERNELS], everything


def table(result: dict) -> list[str]:
    lines = [f"{result['model']} on {result['target']}, {result['machine'].get('gpu', result['machine']['cpu'])} "
             f"({result['machine']['cores']} cores); x = speed-up over {result['baseline']}"]
    lines.append(f"{'runner':<20}{'batch':>6}{'median ms':>12}{'spread %':>10}{'x':>8}   agreement with ORT")
    for row in result["rows"]:
        spread = 100 * (row["max_us"] - row["min_us"]) / row["median_us"]
        agreement = row["vs_reference"]
        text = "" if not agreement else f"cosine {agreement['cosine']:.5f}, max rel err {agreement['max_relative_error']:.2g}"
        if agreement and "top1_agreement" in agreement:
            text += f", top-1 {agreement['top1_agreement']:.0%}"
        lines.append(f"{row['runner']:<20}{row['batch']:>6}{row['median_us'] / 1e3:>12.2f}{spread:>10.1f}"
                     f"{row['x_vs_baseline']:>8.2f}   {text}")
    peak = result.get("device_peak")
    batch = result["rows"][0]["batch"]
    for name, kernels in result["slowest_kernels"].items():
        call_us = next(row["median_us"] for row in result["rows"] if row["runner"] == name and row["batch"] == batch)
        lines.append(f"slowest kernels of {name} (batch {batch}; each timed alone, all of them "
                     f"{result['kernels_alone_us'][name] / 1e3:.2f} ms of a {call_us / 1e3:.2f} ms call; a call's "
                     f"GFLOP/s and GB/s" + (", % of the device's fp32 and bandwidth peaks):" if peak else "):"))
        for k in kernels:
            flops = "-" if k["gflop_per_s"] is None else f"{k['gflop_per_s']:.1f}"
            rates = f"{flops:>8} {k['gbyte_per_s']:7.1f}"
            if peak:
                flops_share = "-" if k["peak_flops_fraction"] is None else f"{100 * k['peak_flops_fraction']:.0f}%"
                rates += f" {flops_share:>5} {100 * k['peak_bandwidth_fraction']:4.0f}%"
            lines.append(f"  {k['total_us'] / 1e3:8.2f} ms {100 * k['share']:5.1f}%  x{k['calls']:<3} {rates}  {k['kernel']}")
    return lines


def plot(result: dict, path: Path) -> None:
    """Latency by runner per batch (bars, min-max whiskers), and the slowest kernels."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    batches = sorted({row["batch"] for row in result["rows"]})
    panels = len(batches) + len(result["slowest_kernels"])
    fig, axes = plt.subplots(panels, 1, figsize=(10, 3.2 * panels), squeeze=False)
    for ax, batch in zip(axes[:, 0], batches):
        rows = [row for row in result["rows"] if row["batch"] == batch]
        medians = [row["median_us"] / 1e3 for row in rows]
        errors = [[(row["median_us"] - row["min_us"]) / 1e3 for row in rows],
                  [(row["max_us"] - row["median_us"]) / 1e3 for row in rows]]
        ax.barh([row["runner"] for row in rows], medians, xerr=errors, color="tab:blue")
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("ms per inference, log scale (median; whiskers: min-max)")
        ax.set_title(f"batch {batch}: {result['target']}, {result['machine'].get('gpu', result['machine']['cpu'])}")
    for ax, (name, kernels) in zip(axes[len(batches):, 0], result["slowest_kernels"].items()):
        ax.barh([k["kernel"][:60] for k in kernels], [k["total_us"] / 1e3 for k in kernels], color="tab:orange")
        ax.invert_yaxis()
        ax.set_xlabel("ms per inference, all calls")
        ax.set_title(f"slowest kernels: {name}")
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict, out_dir: Path) -> tuple[Path, Path]:
    """The JSON record and the PNG, named by model, target and machine, written atomically."""
    from saddc.artifacts import atomic_outputs  # pylint: disable=import-outside-toplevel

    stem = f"bench_{Path(result['model']).stem}_{result['target'].split()[0]}_{benchmarking.machine_slug(result['machine'])}"
    json_path, png_path = out_dir / f"{stem}.json", out_dir / f"{stem}.png"
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_outputs(json_path, png_path) as (json_tmp, png_tmp):
        json_tmp.write_text(json.dumps(result, indent=1) + "\n")
        plot(result, png_tmp)
    return json_path, png_path
