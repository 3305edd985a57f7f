"""One attention block, softmax against the linear forms, as the token count grows.

The block is the attention core of one layer: ``out = attention(Q, K, V)`` for Q, K, V of
shape (1, heads, N, head_dim), at N = 197, 784, 3136, 12544 (DeiT at 224, and PVT's stage
sizes at 224 and 448) and head dims 32 and 64. One run times side by side:

- ``softmax tvm-default``  ``softmax(Q K^T / sqrt(d)) V`` through TVM's default Relax pipeline
- ``softmax torch-sdpa``   torch's ``scaled_dot_product_attention`` (CPU here; flash on a GPU)
- ``additive match``       saddc ``--attention additive`` (16-bit SimHash codes, masked sums)
- ``additive shiftaddvit`` saddc ``--attention additive --attention-form shiftaddvit``
- ``taylor``               saddc ``--attention taylor``

and reports the median and spread over repeats, each form's ratio against both softmax
baselines, how each form's time scales with N (the log-log slope between consecutive N: 2 is
quadratic, 1 linear) and the N at which each linear form overtakes each softmax baseline
(measured, and estimated by log-log interpolation between the two N that bracket it).

Modules are compiled here (TVM's compiler) and timed with the TVM runtime alone, so the timing
half also runs on the GPU machine:

    python benchmarks/bench_attention.py --target llvm                     # both halves, here
    python benchmarks/bench_attention.py --target cuda --build-only DIR    # compile for the GPU
    TVM_USE_RUNTIME_LIB=1 python benchmarks/bench_attention.py --run DIR   # time on the GPU
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from saddc import benchmarking

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TOKENS = (197, 784, 3136, 12544)
HEAD_DIMS = (32, 64)
BITS = 16
SOFTMAX_TVM, SOFTMAX_TORCH = "softmax tvm-default", "softmax torch-sdpa"
WARMUP_CALLS = 3
# saddc variants: name -> AttentionOptions arguments
SADDC_FORMS = {
    "additive match": {"mode": "additive", "form": "match"},
    "additive shiftaddvit": {"mode": "additive", "form": "shiftaddvit"},
    "taylor": {"mode": "taylor"},
}


def attention_module(heads: int, tokens: int, head_dim: int):
    """``softmax(Q K^T / sqrt(d)) V`` as a Relax module with inputs q, k, v."""
    from tvm import relax  # pylint: disable=import-outside-toplevel

    bb = relax.BlockBuilder()
    shape = (1, heads, tokens, head_dim)
    q, k, v = (relax.Var(name, relax.TensorType(shape, "float32")) for name in "qkv")
    with bb.function("main", [q, k, v]):
        with bb.dataflow():
            scores = bb.emit(relax.op.matmul(q, relax.op.permute_dims(k, [0, 1, 3, 2])))
            scaled = bb.emit(relax.op.multiply(scores, relax.const(head_dim ** -0.5, "float32")))
            out = bb.emit_output(relax.op.matmul(relax.op.nn.softmax(scaled, axis=-1), v))
        bb.emit_func_output(out)
    return bb.get()


def build(target: str, out_dir: Path, heads: int, tokens: list[int], head_dims: list[int]) -> None:
    """Compile every (N, head dim, variant) module into ``out_dir`` with a plan.json."""
    # pylint: disable=import-outside-toplevel
    from tqdm import tqdm

    import saddc
    from saddc.config import AttentionOptions

    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(n, d, variant) for d in head_dims for n in tokens for variant in [SOFTMAX_TVM, *SADDC_FORMS]]
    plan = []
    for n, d, variant in tqdm(jobs, desc="compiling", file=sys.stderr):
        name = f"n{n}-d{d}-{variant.replace(' ', '-')}.so"
        mod = attention_module(heads, n, d)
        if variant == SOFTMAX_TVM:
            saddc.compile(mod, target=target, output=out_dir / name, pipeline="tvm-default")
        else:
            options = AttentionOptions(**SADDC_FORMS[variant], bits=BITS, measure_error=False)
            saddc.compile(mod, target=target, output=out_dir / name, attention=options)
        plan.append({"module": name, "tokens": n, "head_dim": d, "variant": variant})
    plan += [{"module": None, "tokens": n, "head_dim": d, "variant": SOFTMAX_TORCH} for d in head_dims for n in tokens]
    (out_dir / "plan.json").write_text(json.dumps({"target": target, "heads": heads, "bits": BITS,
                                                   "modules": plan}, indent=1))


def _torch_seconds(q, k, v, repeat: int, is_cuda: bool) -> list[float]:
    """torch's scaled_dot_product_attention; CUDA events on a GPU, wall clock on the CPU."""
    import torch  # pylint: disable=import-outside-toplevel

    device = "cuda" if is_cuda else "cpu"
    q, k, v = (torch.from_numpy(a).to(device) for a in (q, k, v))
    attend = torch.nn.functional.scaled_dot_product_attention
    with torch.no_grad():
        for _ in range(WARMUP_CALLS):  # the first calls of a shape set up torch's kernels and threads
            attend(q, k, v)
        calls = _calls_per_repeat(lambda: attend(q, k, v), is_cuda)
        times = []
        for _ in range(repeat):
            if is_cuda:
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(calls):
                    attend(q, k, v)
                stop.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(stop) / 1e3 / calls)
            else:
                started = time.perf_counter()
                for _ in range(calls):
                    attend(q, k, v)
                times.append((time.perf_counter() - started) / calls)
    return times


def _calls_per_repeat(call, is_cuda: bool, fill_seconds: float = 0.1) -> int:
    """How many calls fill ``fill_seconds``, from one timed call."""
    if is_cuda:
        import torch  # pylint: disable=import-outside-toplevel

        torch.cuda.synchronize()
    started = time.perf_counter()
    call()
    if is_cuda:
        torch.cuda.synchronize()
    return max(1, int(fill_seconds / max(time.perf_counter() - started, 1e-6)))


def run(build_dir: Path, repeat: int, out: Path | None) -> dict:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    from saddc.runtime import load  # pylint: disable=import-outside-toplevel

    plan = json.loads((build_dir / "plan.json").read_text())
    is_cuda = plan["target"] == "cuda"
    heads = plan["heads"]
    rows = []
    for entry in tqdm(plan["modules"], desc="timing", file=sys.stderr):
        n, d = entry["tokens"], entry["head_dim"]
        rng = np.random.default_rng(n + d)
        q, k, v = (rng.standard_normal((1, heads, n, d)).astype("float32") for _ in range(3))
        if entry["module"] is None:
            seconds = _torch_seconds(q, k, v, repeat, is_cuda)
        else:
            seconds = load(build_dir / entry["module"]).time(q, k, v, repeat=repeat)
        rows.append({"tokens": n, "head_dim": d, "variant": entry["variant"], **benchmarking.summary(seconds)})
    _add_ratios(rows)
    result = {
        "benchmark": "attention", "target": plan["target"], "heads": heads, "bits": plan["bits"],
        "machine": benchmarking.machine(is_cuda), "date": benchmarking.now(),
        "method": f"median of {repeat} repeats after a warm-up; each repeat averages the calls that fill "
                  ">= 100 ms (one call when a call takes longer); all variants in one process; inputs "
                  "(1, heads, N, head_dim) float32",
        "rows": rows, "scaling": _scaling(rows), "crossover": _crossovers(rows),
    }
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    _print(result)
    return result


def _median(rows, n, d, variant):
    return next((r["median_us"] for r in rows if (r["tokens"], r["head_dim"], r["variant"]) == (n, d, variant)), None)


def _add_ratios(rows) -> None:
    """Each row's speed-up over the two softmax baselines at the same N and head dim."""
    for row in rows:
        for baseline, key in ((SOFTMAX_TVM, "x_vs_softmax_tvm"), (SOFTMAX_TORCH, "x_vs_softmax_torch")):
            reference = _median(rows, row["tokens"], row["head_dim"], baseline)
            row[key] = reference / row["median_us"] if reference else None


def _scaling(rows) -> list[dict]:
    """Log-log slope of time against N between consecutive N, per variant and head dim."""
    slopes = []
    for d in sorted({r["head_dim"] for r in rows}):
        for variant in dict.fromkeys(r["variant"] for r in rows):
            points = sorted((r["tokens"], r["median_us"]) for r in rows if (r["head_dim"], r["variant"]) == (d, variant))
            slopes.append({"head_dim": d, "variant": variant, "slopes": [
                {"from": n0, "to": n1, "slope": round(math.log(t1 / t0) / math.log(n1 / n0), 2)}
                for (n0, t0), (n1, t1) in zip(points, points[1:])]})
    return slopes


def _crossovers(rows) -> list[dict]:
    """For each linear form and softmax baseline: the first measured N where the form is faster,
    and the N where the two times cross, interpolated in log-log between the bracketing N."""
    found = []
    for d in sorted({r["head_dim"] for r in rows}):
        for variant in SADDC_FORMS:
            for baseline in (SOFTMAX_TVM, SOFTMAX_TORCH):
                points = sorted({r["tokens"] for r in rows if r["head_dim"] == d})
                ratio = [(n, _median(rows, n, d, baseline) / _median(rows, n, d, variant)) for n in points
                         if _median(rows, n, d, baseline) and _median(rows, n, d, variant)]
                faster = [n for n, x in ratio if x > 1.0]
                estimate = None
                if ratio and ratio[0][1] > 1.0:
                    estimate = f"<= {ratio[0][0]}"
                for (n0, x0), (n1, x1) in zip(ratio, ratio[1:]):
                    if x0 <= 1.0 < x1:
                        estimate = round(math.exp(math.log(n0) + (math.log(n1) - math.log(n0))
                                                  * -math.log(x0) / (math.log(x1) - math.log(x0))))
                found.append({"head_dim": d, "variant": variant, "baseline": baseline,
                              "first_faster_at": faster[0] if faster else None,
                              "crossover_estimate": estimate if faster else f"> {points[-1]}"})
    return found


def _print(result) -> None:
    where = result["machine"].get("gpu", result["machine"]["cpu"])
    print(f"attention block, {result['heads']} head(s), {result['target']} on {where}")
    print(f"{'N':>6} {'d':>3}  {'variant':<22}{'median us':>13}{'spread %':>10}{'x softmax tvm':>15}{'x torch sdpa':>14}")
    for row in sorted(result["rows"], key=lambda r: (r["head_dim"], r["tokens"])):
        spread = 100 * (row["max_us"] - row["min_us"]) / row["median_us"]
        ratios = [f"{row[k]:.2f}" if row[k] else "-" for k in ("x_vs_softmax_tvm", "x_vs_softmax_torch")]
        print(f"{row['tokens']:>6} {row['head_dim']:>3}  {row['variant']:<22}{row['median_us']:>13.1f}"
              f"{spread:>10.1f}{ratios[0]:>15}{ratios[1]:>14}")
    print("\nscaling with N (log-log slope; 2 = quadratic, 1 = linear):")
    for entry in result["scaling"]:
        slopes = ", ".join(f"{s['from']}->{s['to']}: {s['slope']}" for s in entry["slopes"])
        print(f"  d={entry['head_dim']:<3} {entry['variant']:<22} {slopes}")
    print("\nwhere each linear form overtakes softmax:")
    for entry in result["crossover"]:
        print(f"  d={entry['head_dim']:<3} {entry['variant']:<22} vs {entry['baseline']:<20} "
              f"first faster at N={entry['first_faster_at']}, crossover ~ {entry['crossover_estimate']}")


def main() -> int:
    parser = benchmarking.script_parser(__doc__.split("\n\n")[0], "attention")
    parser.add_argument("--heads", type=int, default=1, help="attention heads (default 1)")
    parser.add_argument("--tokens", default=",".join(map(str, TOKENS)), help="token counts N, comma-separated")
    parser.add_argument("--head-dims", default=",".join(map(str, HEAD_DIMS)), help="head dims, comma-separated")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    tokens = [int(n) for n in args.tokens.split(",")]
    head_dims = [int(d) for d in args.head_dims.split(",")]
    return benchmarking.build_then_run(
        args, "attention", RESULTS,
        lambda out_dir: build(args.target, out_dir, args.heads, tokens, head_dims),
        lambda build_dir, out: run(build_dir, args.repeat, out),
    )


if __name__ == "__main__":
    raise SystemExit(main())
