"""Make the tuning database saddc ships for this machine's CPU: the example model's reductions,
tuned with MetaSchedule.

    python benchmarks/tune_examples.py [--trials 48] [--models deit_tiny,pvtv2_b0]

Exports DeiT-Tiny (about 3 minutes on two cores; PVTv2-b0, whose softmax and layer norms are a
few percent of its time, on request) from ``examples/`` with a fixed batch of 1 (MetaSchedule
tunes static shapes only), tunes their softmax and layer-norm kernels (``saddc tune --kernels``;
the matmuls, convs and injective kernels are left to saddc's rules, which MetaSchedule's short
runs did not beat) and merges the records that beat the default schedules (saddc's row-reduction
rule) into ``saddc/tuning_db/llvm-ARCH``, which ``saddc compile`` applies to llvm builds for that
CPU; where none did, no database is left for the CPU. Writes what each kernel took, default and tuned, to
``benchmarks/results/tuning_llvm_<machine>.json`` (the machine's CPU with LLVM's name for it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from deit_tiny import deit_tiny  # noqa: E402
from pvtv2_b0 import pvtv2_b0  # noqa: E402
from saddc import benchmarking, tuning  # noqa: E402
from saddc.frontends.torch_export import export_onnx  # noqa: E402
from saddc.target import parse_target  # noqa: E402

MODELS = {"deit_tiny": deit_tiny, "pvtv2_b0": pvtv2_b0}
KERNELS = ("softmax", "layer_norm")


def export_batch_one(name: str, path: Path) -> Path:
    """The example model ``name`` exported as the shipped records expect it (they match static
    shapes only): seeded with 0, batch fixed at 1, torch's legacy exporter, opset 17."""
    torch.manual_seed(0)
    return Path(export_onnx(MODELS[name]().eval(), torch.zeros(1, 3, 224, 224), path, "legacy", 17))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=48, help="measured candidates per kernel (default 48)")
    parser.add_argument("--models", default="deit_tiny", help=f"from {','.join(MODELS)} (default deit_tiny)")
    args = parser.parse_args()
    target = parse_target("llvm")
    database = tuning.SHIPPED / f"{target.kind}-{target.arch}"
    rows = []  # (model, TunedKernel)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            onnx_path = export_batch_one(name, Path(tmp) / f"{name}.onnx")
            for kernels in KERNELS:
                print(f"{name}: tuning its {kernels} kernels", file=sys.stderr)
                rows += [(name, row) for row in tuning.tune(onnx_path, database, trials=args.trials, kernels=kernels)]
    # Where no record beat saddc's schedules, none is shipped (compile would skip an empty
    # database, tuning.shipped_database, but it would stand in the tree as if it were one).
    if not (database / tuning.RECORD_FILE).stat().st_size:
        shutil.rmtree(database)
    shipped = database.relative_to(ROOT) if database.exists() else None
    machine = benchmarking.machine(False)
    result = {"benchmark": "tune_examples", "target": target.describe(), "machine": machine,
              "date": benchmarking.now(), "trials": args.trials, "database": shipped and str(shipped),
              "kernels": [{"model": name, **asdict(row)} for name, row in rows]}
    out = ROOT / "benchmarks" / "results" / f"tuning_{target.kind}_{benchmarking.machine_slug(machine)}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print("\n".join(tuning.table([row for _, row in rows])))
    print(f"wrote {shipped or f'no database (no record beat the default schedules on {target.arch})'} and {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
