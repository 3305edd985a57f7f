"""Shift GEMM against dense matmuls on the linear shapes of DeiT-Tiny and PVTv2-b0.

For each shape (DeiT-Tiny's qkv/proj/fc1/fc2 at 197 tokens, PVTv2-b0's stage-1 q/kv/proj/
fc1/fc2 at 3136 tokens; batch 1 and 32), one run times side by side:

- ``shift add-only``   saddc's shift GEMM (5-bit codes), built by ``saddc.compile --shift all``
- ``shift decode-dense`` the decode-then-FMA variant (CPU only)
- ``shift decode-mma`` the tensor-core variant (CUDA only)
- ``tvm dense fp32`` / ``tvm dense fp16``  Relax's matmul of the same shape through the
  same pipeline without rewrites (saddc's CPU matmul rule on llvm; DLight on CUDA)
- ``torch fp32`` / ``torch fp16``  torch's matmul (cuBLAS), on a GPU only

and reports the median and spread over repeats, the weight bytes each variant reads, and on a
GPU the achieved bandwidth as a fraction of the device's peak. Results go to JSON.

Modules are compiled here (this needs TVM's compiler) and timed with the TVM runtime alone, so
the timing half also runs on a machine with only the runtime (the GPU machine):

    python benchmarks/bench_shift_gemm.py --target llvm                  # both halves, here
    python benchmarks/bench_shift_gemm.py --target cuda --build-only DIR # compile for the GPU
    TVM_USE_RUNTIME_LIB=1 python benchmarks/bench_shift_gemm.py --run DIR --record
                                                                         # time on the GPU

``--record`` also writes the measured shift kernels' latencies into the table that
``--shift-kernel auto`` chooses from (schedules/shift_gemm_latency.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from saddc import benchmarking

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BITS = 5
# (model, layer, in_features, out_features, tokens)
SHAPES = [
    ("deit-tiny", "qkv", 192, 576, 197),
    ("deit-tiny", "proj", 192, 192, 197),
    ("deit-tiny", "fc1", 192, 768, 197),
    ("deit-tiny", "fc2", 768, 192, 197),
    ("pvtv2-b0", "q", 32, 32, 3136),
    ("pvtv2-b0", "kv", 32, 64, 3136),
    ("pvtv2-b0", "proj", 32, 32, 3136),
    ("pvtv2-b0", "fc1", 32, 256, 3136),
    ("pvtv2-b0", "fc2", 256, 32, 3136),
]
BATCHES = (1, 32)
# HBM bandwidth of the GPUs these benchmarks run on (vendor figures, bytes/s).
PEAK_BANDWIDTH = {"H100": 3.35e12, "H200": 4.8e12}


def _variants(is_cuda: bool) -> list[str]:
    shift = "shift decode-mma" if is_cuda else "shift decode-dense"
    return ["shift add-only", shift, "tvm dense fp32", "tvm dense fp16"]


def _weight(in_features, out_features, seed=0) -> np.ndarray:
    """Random signed powers of two with some zeros: the shift rewrite of it is lossless."""
    from saddc.schedules.shift_codes import encode  # pylint: disable=import-outside-toplevel

    rng = np.random.default_rng(seed)
    return encode(rng.standard_normal((in_features, out_features)).astype("float32"), BITS).decode()


def build(target: str, out_dir: Path, batches) -> None:
    """Compile every (shape, batch, variant) module into ``out_dir`` with a plan.json."""
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    import saddc  # pylint: disable=import-outside-toplevel
    from saddc.config import ShiftOptions  # pylint: disable=import-outside-toplevel

    out_dir.mkdir(parents=True, exist_ok=True)
    is_cuda = target == "cuda"
    plan, skipped = [], []
    jobs = [(shape, batch, variant) for shape in SHAPES for batch in batches for variant in _variants(is_cuda)]
    if not is_cuda and max(batches) > 1:
        # x86 CPUs without native fp16 emulate it: about 1 s a call at batch 1 already.
        jobs = [job for job in jobs if not (job[2] == "tvm dense fp16" and job[1] > 1)]
        skipped.append("tvm dense fp16 at batch > 1 on llvm: TVM emulates fp16 on this CPU "
                       "(about 1 s a call at batch 1), so batch 32 would take minutes a call")
    for (model, layer, k, n, tokens), batch, variant in tqdm(jobs, desc="compiling", file=sys.stderr):
        weight = _weight(k, n)
        dtype = "float16" if variant.endswith("fp16") else "float32"
        shift = None
        if variant.startswith("shift"):
            shift = ShiftOptions("all", bits=BITS, kernel=variant.split()[1])
        name = f"{model}-{layer}-b{batch}-{variant.replace(' ', '-')}"
        result = saddc.compile(benchmarking.linear_module(batch, tokens, weight, dtype=dtype), target=target,
                               output=out_dir / f"{name}.so", shift=shift)
        bytes_read = weight.size * (2 if dtype == "float16" else 4)
        if shift is not None:
            bytes_read = result.reports["shift"].weight_bytes[1]
        plan.append({"module": f"{name}.so", "model": model, "layer": layer, "in_features": k,
                     "out_features": n, "tokens": tokens, "batch": batch, "variant": variant,
                     "dtype": dtype, "weight_bytes": bytes_read})
    (out_dir / "plan.json").write_text(
        json.dumps({"target": target, "bits": BITS, "modules": plan, "skipped": skipped}, indent=1))


def _torch_times(batch, tokens, weight, dtype, repeat) -> list[float]:
    """cuBLAS through torch.matmul, timed with CUDA events (seconds per call)."""
    import torch  # pylint: disable=import-outside-toplevel

    torch_dtype = torch.float16 if dtype == "float16" else torch.float32
    x = torch.randn(batch, tokens, weight.shape[0], device="cuda", dtype=torch_dtype)
    w = torch.from_numpy(weight).to("cuda", torch_dtype)
    for _ in range(3):
        torch.matmul(x, w)
    times = []
    for _ in range(repeat):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        calls = 20
        start.record()
        for _ in range(calls):
            torch.matmul(x, w)
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop) / 1e3 / calls)
    return times


def run(build_dir: Path, repeat: int, record: bool, out: Path | None) -> dict:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    from saddc.runtime import load  # pylint: disable=import-outside-toplevel

    plan = json.loads((build_dir / "plan.json").read_text())
    is_cuda = plan["target"] == "cuda"
    machine = benchmarking.machine(is_cuda)
    rows = []
    entries = list(plan["modules"])
    if is_cuda:
        entries += [dict(e, variant="torch fp16" if e["dtype"] == "float16" else "torch fp32", module=None)
                    for e in plan["modules"] if e["variant"].startswith("tvm dense")]
    for entry in tqdm(entries, desc="timing", file=sys.stderr):
        k, n, tokens, batch = entry["in_features"], entry["out_features"], entry["tokens"], entry["batch"]
        x = np.random.default_rng(1).standard_normal((batch, tokens, k)).astype(entry["dtype"])
        if entry["module"] is None:
            times = _torch_times(batch, tokens, _weight(k, n), entry["dtype"], repeat)
        else:
            module = load(build_dir / entry["module"])
            times = module.time(x, repeat=repeat)
        row = {key: entry[key] for key in ("model", "layer", "in_features", "out_features", "tokens",
                                           "batch", "variant", "weight_bytes")}
        row.update(benchmarking.summary(times))
        if is_cuda:
            element = 2 if entry["dtype"] == "float16" else 4
            moved = row["weight_bytes"] + batch * tokens * (k + n) * element
            peak = next((bw for name, bw in PEAK_BANDWIDTH.items() if name in machine["gpu"]), None)
            row["bandwidth_fraction"] = moved / (row["median_us"] / 1e6) / peak if peak else None
        rows.append(row)
    _add_ratios(rows)
    result = {
        "benchmark": "shift_gemm", "target": plan["target"], "bits": plan["bits"], "machine": machine,
        "date": benchmarking.now(),
        "method": f"median of {repeat} repeats after a warm-up; each repeat averages calls "
                  "filling >= 100 ms (torch: 20 calls, CUDA events); all variants in one process",
        "skipped": plan.get("skipped", []),
        "rows": rows,
    }
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    if record:
        _record_latency(result)
    _print_table(result)
    return result


def _add_ratios(rows) -> None:
    """Each row's median against ``tvm dense fp32`` of the same shape and batch."""
    base = {(r["model"], r["layer"], r["batch"]): r["median_us"] for r in rows if r["variant"] == "tvm dense fp32"}
    for row in rows:
        reference = base.get((row["model"], row["layer"], row["batch"]))
        row["vs_tvm_dense_fp32"] = reference / row["median_us"] if reference else None


def _record_latency(result) -> None:
    from saddc.schedules import shift_gemm  # pylint: disable=import-outside-toplevel
    from saddc.target import parse_target  # pylint: disable=import-outside-toplevel

    machine = result["machine"]
    key = f"llvm-{parse_target('llvm').arch}" if result["target"] == "llvm" else f"cuda-{benchmarking.gpu_arch()}"
    table = json.loads(shift_gemm.LATENCY_TABLE.read_text()) if shift_gemm.LATENCY_TABLE.exists() else {}
    entries = {}
    for row in result["rows"]:
        if not row["variant"].startswith("shift"):
            continue
        rows = row["batch"] * row["tokens"]
        entry = entries.setdefault((rows, row["in_features"], row["out_features"]), {
            "rows": rows, "in_features": row["in_features"], "out_features": row["out_features"],
            "bits": result["bits"], "device": machine.get("gpu", machine["cpu"]), "us": {}})
        entry["us"][row["variant"].split()[1]] = round(row["median_us"], 2)
    table[key] = list(entries.values())
    shift_gemm.LATENCY_TABLE.write_text(json.dumps(table, indent=1) + "\n")
    print(f"recorded {len(entries)} shapes for {key} in {shift_gemm.LATENCY_TABLE}", file=sys.stderr)


def _print_table(result) -> None:
    print(f"shift GEMM, {result['target']} on {result['machine'].get('gpu', result['machine']['cpu'])}")
    print(f"{'shape':<28}{'batch':>6}  {'variant':<18}{'median us':>12}{'spread %':>10}"
          f"{'x dense fp32':>14}{'weight bytes':>14}")
    for row in result["rows"]:
        shape = f"{row['model']} {row['layer']} {row['in_features']}x{row['out_features']}"
        spread = 100 * (row["max_us"] - row["min_us"]) / row["median_us"]
        ratio = f"{row['vs_tvm_dense_fp32']:.2f}" if row["vs_tvm_dense_fp32"] else "-"
        print(f"{shape:<28}{row['batch']:>6}  {row['variant']:<18}{row['median_us']:>12.1f}"
              f"{spread:>10.1f}{ratio:>14}{row['weight_bytes']:>14,}")


def main() -> int:
    parser = benchmarking.script_parser(__doc__.split("\n\n")[0], "shift_gemm")
    parser.add_argument("--batch", default="1,32", help="batch sizes, comma-separated (default 1,32)")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--record", action="store_true",
                        help="write the shift kernels' latencies into the --shift-kernel auto table")
    args = parser.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    return benchmarking.build_then_run(
        args, "shift_gemm", RESULTS,
        lambda out_dir: build(args.target, out_dir, batches),
        lambda build_dir, out: run(build_dir, args.repeat, args.record, out),
    )


if __name__ == "__main__":
    raise SystemExit(main())
