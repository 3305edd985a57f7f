"""The kernel-latency regression gate: each kernel of saddc's compiled example modules, timed
against a fixed reference kernel in the same process, compared with a committed baseline.

    python benchmarks/latency_gate.py                 # check (exit 1 on a regression)
    python benchmarks/latency_gate.py --update        # measure and write the baseline

Modules: a two-block DeiT-Tiny (the example model, batch 1) compiled plain, with ``--shift all
--shift-lossy``, ``--attention additive`` and ``--moe mlp``, and a PVTv2-b0 with one block a
stage compiled plain, which between them run every kind of kernel saddc emits (its CPU matmul,
depthwise-conv and injective rules, im2col, DLight's reductions, the shift GEMM, the add
kernels, the MoE dispatch). Kernels are named without TVM's numbering
(``fused_matmul5_add8`` -> ``fused_matmul_add``), the time of the kernels sharing a name summed.

Method: each repeat times the reference (a 256x256x256 matmul whose schedule is fixed here,
never tuned) and then every kernel alone on the arguments of its first call (TVM's time
evaluator); a kernel's figure is its fastest time over the reference's fastest, the best over
repeats (load only ever adds time, and a real slowdown shows in every repeat). Ratios cancel the
machine's speed, so a baseline measured on one machine of a kind checks another. Load that
remains moves all kernels together: each ratio is divided by the run's drift, the median shift
of all kernels against the baseline, so what fails is a kernel that slowed down against the
rest. Everything runs on one thread: a thread pool sharing two cores with other work (a CI
neighbour) is far noisier than one thread. The check fails when a kernel's corrected ratio
exceeds its baseline by more than ``--tolerance`` (see the README for the noise it is set from).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "benchmarks" / "results" / "latency_gate_llvm_baseline.json"
# Measured (README, "Kernel-latency gate"): idle, corrected ratios stay within 0.94-1.16 of the
# baseline; with both cores busy with other work, single kernels reach 1.8x. Twice the baseline
# is a failure; the slowdowns the gate is for (a schedule lost) are 10x and more.
TOLERANCE = 1.0
# Kernels shorter than this fraction of the reference (about 20 us here) are listed, not gated:
# at that length the timer's own noise is tens of percent.
MIN_RATIO = 0.02
# Each case: the example model it compiles, and the saddc bench variant it compiles it as.
CASES = {"plain": ("deit", "plain"), "shift": ("deit", "shift"), "additive": ("deit", "additive"),
         "moe": ("deit", "moe"), "pvt": ("pvt", "plain")}
REFERENCE_SIZE = 256


def reference_kernel(target):
    """The fixed yardstick: a 256^3 float32 matmul, rows in parallel, 16-lane vectors over
    columns, k outside them. Its schedule must never change (the baseline is relative to it)."""
    import tvm  # pylint: disable=import-outside-toplevel
    from tvm import s_tir, te  # pylint: disable=import-outside-toplevel

    n = REFERENCE_SIZE
    a = te.placeholder((n, n), name="a")
    b = te.placeholder((n, n), name="b")
    k = te.reduce_axis((0, n), name="k")
    c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="c")
    sch = s_tir.Schedule(te.create_prim_func([a, b, c]).with_attr("global_symbol", "reference"))
    block = sch.get_sblock("c")
    i, j, kk = sch.get_loops(block)
    jo, ji = sch.split(j, [None, 16])
    sch.reorder(i, jo, kk, ji)
    sch.parallel(i)
    sch.vectorize(ji)
    sch.decompose_reduction(block, kk)
    library = tvm.compile(sch.mod, target=target)
    device = tvm.cpu(0)
    rng = np.random.default_rng(0)
    args = [tvm.runtime.tensor(rng.standard_normal((n, n)).astype("float32"), device) for _ in range(2)]
    args.append(tvm.runtime.tensor(np.zeros((n, n), "float32"), device))
    return lambda repeat: list(library.mod.time_evaluator("reference", device, number=1, repeat=repeat,
                                                      min_repeat_ms=20)(*args).results)


def kernel_family(symbol: str) -> str:
    """``fused_matmul5_add8_divide`` -> ``fused_matmul_add_divide``: TVM numbers functions by
    the order it met them, which any change to a model or a pass shifts."""
    return re.sub(r"(?<=[a-z])\d+(?=_|$)", "", symbol)


def compile_cases(out_dir: Path, target: str, names=tuple(CASES)) -> dict[str, Path]:
    """The example models, exported once each and compiled once per case: {case: module path}."""
    # pylint: disable=import-outside-toplevel
    import torch

    sys.path.insert(0, str(ROOT / "examples"))
    from deit_tiny import deit_tiny
    from pvtv2_b0 import pvtv2_b0

    import saddc
    from saddc.bench import variant_options
    from saddc.frontends.torch_export import export_onnx

    factories = {"deit": lambda: deit_tiny(depth=2), "pvt": lambda: pvtv2_b0(depths=(1, 1, 1, 1))}
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype("float32"))
    calibration = np.random.default_rng(1).standard_normal((2, 3, 224, 224)).astype("float32")
    models, modules = {}, {}
    for case in names:
        model, variant = CASES[case]
        if model not in models:
            torch.manual_seed(0)
            models[model] = export_onnx(factories[model]().eval(), x, out_dir / f"{model}.onnx", "legacy", 17)
        print(f"compiling {case}", file=sys.stderr)
        modules[case] = saddc.compile(models[model], target=target, output=out_dir / f"{case}.so",
                                      **variant_options(variant, calibration)).output
    return modules


def measure(target: str = "llvm", repeat: int = 7, cases=tuple(CASES)) -> dict:
    """``{case: {kernel family: ratio to the reference}}``, and the reference's time."""
    # pylint: disable=import-outside-toplevel
    from tqdm import tqdm

    from saddc.runtime import load
    from saddc.target import parse_target

    spec = parse_target(target)
    reference = reference_kernel(spec.to_tvm())
    x = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype("float32")
    ratios: dict[str, dict[str, list[float]]] = {}
    reference_seconds = []
    with tempfile.TemporaryDirectory() as tmp:
        modules = {case: load(path) for case, path in compile_cases(Path(tmp), target, cases).items()}
        for _ in tqdm(range(repeat), desc="timing", file=sys.stderr):
            yardstick = min(reference(3))
            reference_seconds.append(yardstick)
            for case, module in modules.items():
                families: dict[str, float] = {}
                for symbol, timing in module.time_kernels(x, repeat=3).items():
                    family = kernel_family(symbol)
                    families[family] = families.get(family, 0.0) + timing["calls"] * min(timing["seconds"])
                for family, seconds in families.items():
                    ratios.setdefault(case, {}).setdefault(family, []).append(seconds / yardstick)
    return {
        "target": spec.describe(),
        "reference_us": min(reference_seconds) * 1e6,
        "ratios": {case: {family: min(values) for family, values in sorted(kernels.items())}
                   for case, kernels in ratios.items()},
        "spread": {case: {family: (max(values) - min(values)) / statistics.median(values)
                          for family, values in sorted(kernels.items())}
                   for case, kernels in ratios.items()},
    }


def drift(measured: dict, baseline: dict) -> float:
    """The run's overall shift against the baseline: the median over gated kernels of their
    ratio over the baseline's. Load on the machine moves every kernel's ratio together; a
    regression moves a few."""
    shifts = [ratio / baseline["ratios"][case][family]
              for case, kernels in measured["ratios"].items() for family, ratio in kernels.items()
              if family in baseline["ratios"].get(case, {}) and max(ratio, baseline["ratios"][case][family]) >= MIN_RATIO]
    return statistics.median(shifts) if shifts else 1.0


def regressions(measured: dict, baseline: dict, tolerance: float) -> list[str]:
    """One line per kernel whose ratio, corrected for the run's drift, grew beyond the tolerance
    (kernels too short to time reliably excepted), or that the baseline lacks."""
    found = []
    shift = drift(measured, baseline)
    for case, kernels in measured["ratios"].items():
        expected = baseline["ratios"].get(case, {})
        for family, ratio in kernels.items():
            if family not in expected:
                found.append(f"{case}/{family}: not in the baseline (ratio {ratio:.3g}); update it with --update")
            elif ratio / shift > expected[family] * (1 + tolerance) and max(ratio, expected[family]) >= MIN_RATIO:
                found.append(f"{case}/{family}: {ratio / expected[family] / shift:.2f}x its baseline after the "
                             f"run's drift {shift:.2f} (ratio {ratio:.3g} vs {expected[family]:.3g}, "
                             f"tolerance {tolerance:.0%})")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, default=BASELINE, help=f"baseline JSON (default {BASELINE.relative_to(ROOT)})")
    parser.add_argument("--update", action="store_true", help="measure and write the baseline instead of checking")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"allowed growth of a kernel's ratio over its baseline (default {TOLERANCE})")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--cases", default=",".join(CASES), help=f"modules to time (default {','.join(CASES)})")
    args = parser.parse_args()
    unknown = set(args.cases.split(",")) - set(CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)} (choose from {', '.join(CASES)})")
    os.environ["TVM_NUM_THREADS"] = "1"  # before the first parallel loop starts TVM's thread pool
    if not args.update and not args.baseline.exists():
        print(f"error: no baseline at {args.baseline}: run with --update first", file=sys.stderr)
        return 2
    measured = measure(repeat=args.repeat, cases=args.cases.split(","))
    if args.update:
        from saddc import benchmarking  # pylint: disable=import-outside-toplevel

        measured["machine"] = benchmarking.machine(False)
        measured["date"] = benchmarking.now()
        args.baseline.parent.mkdir(parents=True, exist_ok=True)
        args.baseline.write_text(json.dumps(measured, indent=1) + "\n")
        print(f"wrote {args.baseline}")
        return 0
    baseline = json.loads(args.baseline.read_text())
    shift = drift(measured, baseline)
    print(f"kernel latency gate ({measured['target']}; reference {measured['reference_us']:.0f} us; "
          f"drift {shift:.2f}; tolerance {args.tolerance:.0%}); ratio to the reference, and to the baseline "
          f"after the drift:")
    for case, kernels in measured["ratios"].items():
        for family, ratio in kernels.items():
            expected = baseline["ratios"].get(case, {}).get(family)
            versus = "new" if expected is None else f"{ratio / expected / shift:.2f}x baseline"
            versus += "" if max(ratio, expected or 0) >= MIN_RATIO else " (too short to gate)"
            print(f"  {case:<9} {family:<60} {ratio:9.4f}  {versus}")
    found = regressions(measured, baseline, args.tolerance)
    for line in found:
        print(f"REGRESSION {line}")
    print("gate: FAIL" if found else "gate: pass")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
