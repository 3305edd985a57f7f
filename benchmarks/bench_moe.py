"""MoE layer latency against the Mult-only layer and compute-both-and-select, by shift ratio.

For DeiT-Tiny's MLP shapes (fc1 192x768, fc2 768x192 at 197 tokens; batch 1 and 32), one run
times side by side:

- ``mult only``         the dense layer through saddc's pipeline with no rewrite
- ``moe sparse R``      ``--moe`` with the sparse dispatch (partition, segmented GEMMs, scatter)
- ``moe select R``      ``--moe-dispatch select``: both experts on every token, then a select

at shift ratios R = 0, 0.25, 0.5, 0.75, 1 (the routers are fitted on calibration tokens drawn
like the timing input, so each realizes about R). Modules are compiled here and timed with the
TVM runtime alone (``--build-only`` / ``--run`` split the halves across machines).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from saddc import benchmarking

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHAPES = [("deit-tiny", "fc1", 192, 768, 197), ("deit-tiny", "fc2", 768, 192, 197)]
RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _layer(in_features, out_features):
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((in_features, out_features)) / np.sqrt(in_features)).astype("float32")
    return weight, rng.standard_normal(out_features).astype("float32")


def _inputs(batch, tokens, in_features, seed):
    return np.random.default_rng(seed).standard_normal((batch, tokens, in_features)).astype("float32")


def build(target: str, out_dir: Path, batches: list[int]) -> None:
    """Compile every (shape, batch, variant) module into ``out_dir`` with a plan.json."""
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    import saddc  # pylint: disable=import-outside-toplevel
    from saddc.config import MoEOptions  # pylint: disable=import-outside-toplevel

    out_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(shape, batch, variant, ratio) for shape in SHAPES for batch in batches
            for variant, ratio in [("mult only", None)] + [(f"moe {d}", r) for r in RATIOS for d in ("sparse", "select")]]
    plan = []
    for (model, layer, k, n, tokens), batch, variant, ratio in tqdm(jobs, desc="compiling", file=sys.stderr):
        moe = None
        if ratio is not None:
            moe = MoEOptions("all", shift_ratio=ratio, calibration=_inputs(batch, tokens, k, seed=1),
                             measure_error=False, dispatch=variant.split()[1])
        name = f"{model}-{layer}-b{batch}-{variant.replace(' ', '-')}" + ("" if ratio is None else f"-{ratio}")
        module = benchmarking.linear_module(batch, tokens, *_layer(k, n))
        result = saddc.compile(module, target=target, output=out_dir / f"{name}.so", moe=moe)
        realized = None if moe is None else result.reports["moe"].layers[0].shift_ratio
        plan.append({"module": f"{name}.so", "model": model, "layer": layer, "in_features": k, "out_features": n,
                     "tokens": tokens, "batch": batch, "variant": variant, "shift_ratio": ratio,
                     "calibration_shift_ratio": realized})
    (out_dir / "plan.json").write_text(json.dumps({"target": target, "modules": plan}, indent=1))


def run(build_dir: Path, repeat: int, out: Path | None) -> dict:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    from saddc.runtime import load  # pylint: disable=import-outside-toplevel

    plan = json.loads((build_dir / "plan.json").read_text())
    rows = []
    for entry in tqdm(plan["modules"], desc="timing", file=sys.stderr):
        x = _inputs(entry["batch"], entry["tokens"], entry["in_features"], seed=2)
        row = dict(entry)
        row.pop("module")
        row.update(benchmarking.summary(load(build_dir / entry["module"]).time(x, repeat=repeat)))
        rows.append(row)
    base = {(r["layer"], r["batch"]): r["median_us"] for r in rows if r["variant"] == "mult only"}
    select = {(r["layer"], r["batch"], r["shift_ratio"]): r["median_us"] for r in rows if r["variant"] == "moe select"}
    for row in rows:
        row["x_vs_mult_only"] = base[(row["layer"], row["batch"])] / row["median_us"]
        other = select.get((row["layer"], row["batch"], row["shift_ratio"]))
        row["x_vs_select"] = other / row["median_us"] if other and row["variant"] == "moe sparse" else None
    result = {"benchmark": "moe", "target": plan["target"], "machine": benchmarking.machine(plan["target"] == "cuda"),
              "date": benchmarking.now(),
              "method": f"median of {repeat} repeats after a warm-up, each averaging calls filling >= 100 ms; "
                        "all variants in one process",
              "rows": rows}
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"MoE layer, {result['target']} on {result['machine'].get('gpu', result['machine']['cpu'])}")
    print(f"{'layer':<6}{'batch':>6}  {'variant':<12}{'R':>6}{'median us':>12}{'spread %':>10}{'x mult':>8}{'x select':>10}")
    for row in rows:
        spread = 100 * (row["max_us"] - row["min_us"]) / row["median_us"]
        ratio = "-" if row["shift_ratio"] is None else f"{row['shift_ratio']:.2f}"
        versus = "-" if row["x_vs_select"] is None else f"{row['x_vs_select']:.2f}"
        print(f"{row['layer']:<6}{row['batch']:>6}  {row['variant']:<12}{ratio:>6}{row['median_us']:>12.1f}"
              f"{spread:>10.1f}{row['x_vs_mult_only']:>8.2f}{versus:>10}")
    return result


def main() -> int:
    parser = benchmarking.script_parser(__doc__.split("\n\n")[0], "moe")
    parser.add_argument("--batch", default="1,32", help="batch sizes, comma-separated (default 1,32)")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    return benchmarking.build_then_run(
        args, "moe", RESULTS,
        lambda out_dir: build(args.target, out_dir, batches),
        lambda build_dir, out: run(build_dir, args.repeat, out),
    )


if __name__ == "__main__":
    raise SystemExit(main())
