"""The fidelity table: what each rewrite costs in top-1 on real data, what fine-tuning recovers,
and what the compiled module computes and how fast.

For each dataset (``examples/datasets.py``), each pretrained model (``examples/pretrain.py``:
the committed DeiT- and PVT-style checkpoints) and each rewrite of ``saddc.finetune.REWRITES``:

- ``post-training``  top-1 of the reparameterized model before any fine-tuning (torch): weights
                     rounded to powers of two, SimHash codes, Taylor attention, MoE routers
                     set to send the target fraction of calibration tokens to Shift
- ``fine-tuned``     top-1 after ``--epochs`` epochs on the first ``--finetune-images``
                     training images (``saddc.finetune.finetune``)
- ``compiled``       top-1 of the fine-tuned model exported to ONNX and compiled by saddc for
                     llvm through the exact lowering paths (``Reparameterization.compile_options``),
                     with its agreement with the torch predictions; the script fails when the
                     two top-1 figures differ by more than 0.1 points
- ``latency``        the compiled module at batch 1, timed with ``saddc bench``'s side-by-side
                     rounds together with every other module of that model and dataset and
                     with ONNX Runtime on the pretrained model

Every top-1 is on the whole fixed test split. Writes ``accuracy.md``, ``accuracy.json`` and
``accuracy.png`` (compiled top-1 against latency over ONNX Runtime's) to ``--out``. The whole table:

    python benchmarks/accuracy.py          (about 15 minutes on two cores)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import datasets  # noqa: E402
import pretrain  # noqa: E402
import saddc  # noqa: E402
from saddc import bench, benchmarking, finetune  # noqa: E402
from saddc.errors import SaddcError  # noqa: E402
from saddc.frontends.torch_export import export_onnx  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
EPOCHS = 2
FINETUNE_IMAGES = 2000
REPEAT = 5
MIN_REPEAT_MS = 100
# The compiled module and the fine-tuned torch model must agree this closely (top-1 points).
AGREEMENT_POINTS = 0.1


def measure_group(split: datasets.Split, model_name: str, rewrites: list[str], args, scratch: Path,
                  progress: tqdm) -> list[dict]:
    """Every rewrite of one pretrained model on one dataset, then their modules' latencies."""
    pretrained = pretrain.load_pretrained(model_name, split)
    x_train, y_train = torch.from_numpy(split.x_train[:args.finetune_images]), torch.from_numpy(split.y_train[:args.finetune_images])
    x_test, y_test = split.x_test[:args.test_images], split.y_test[:args.test_images]
    example = torch.from_numpy(x_test[:1])
    rows, modules = [], {}
    for rewrite in rewrites:
        progress.set_postfix_str(f"{split.name} {model_name} {rewrite}")
        reparameterized = finetune.reparameterize(pretrained, rewrite, calibration=x_train[:finetune.CALIBRATION_IMAGES])
        post_training = finetune.top1(finetune.predict(reparameterized.model, torch.from_numpy(x_test)), y_test)
        started = time.perf_counter()
        history = finetune.finetune(reparameterized, x_train, y_train, args.epochs, progress=False)
        finetune_seconds = time.perf_counter() - started
        torch_predictions = finetune.predict(reparameterized.model, torch.from_numpy(x_test)).numpy()

        path = reparameterized.export(example, scratch / f"{split.name}-{model_name}-{rewrite}.onnx")
        result = saddc.compile(path, target="llvm", output=path.with_suffix(".so"), progress=False,
                               **reparameterized.compile_options)
        module = saddc.load(result.output)
        compiled_predictions = np.array([module(x_test[i:i + 1])[0].argmax(-1)[0] for i in range(len(x_test))])
        modules[rewrite] = module
        rows.append({
            "dataset": split.name, "model": model_name, "rewrite": rewrite,
            "compile_flags": reparameterized.compile_flags, "kernels_rewritten": sorted(result.rewrites),
            "post_training_top1": post_training,
            "finetuned_top1": finetune.top1(torch_predictions, y_test),
            "compiled_top1": finetune.top1(compiled_predictions, y_test),
            "prediction_agreement": float(np.mean(compiled_predictions == torch_predictions)),
            "final_loss": history.losses[-1],
            "shift_token_fraction": history.shift_fractions[-1] if history.shift_fractions else None,
            "finetune_seconds": finetune_seconds, "compile_seconds": result.seconds,
        })
        progress.update()
    progress.set_postfix_str(f"{split.name} {model_name} timing")
    latencies = _latencies(pretrained, example, modules, scratch / f"{split.name}-{model_name}-original.onnx")
    for row in rows:
        row["latency"] = latencies[row["rewrite"]]
        row["onnxruntime_latency"] = latencies["onnxruntime"]
        row["latency_vs_onnxruntime"] = row["latency"]["median_us"] / latencies["onnxruntime"]["median_us"]
    return rows


def _latencies(pretrained: torch.nn.Module, example: torch.Tensor, modules: dict, original: Path) -> dict:
    """Batch-1 latency of each module, and of ONNX Runtime on the pretrained model, side by side."""
    import onnxruntime as ort  # pylint: disable=import-outside-toplevel

    session = ort.InferenceSession(export_onnx(pretrained, example, original), providers=["CPUExecutionProvider"])
    feeds = {session.get_inputs()[0].name: example.numpy()}
    runners = [bench.Runner("onnxruntime", lambda: session.run(None, feeds))]
    runners += [bench.module_runner(rewrite, module, example.numpy()) for rewrite, module in modules.items()]
    seconds = bench.time_side_by_side(runners, REPEAT, MIN_REPEAT_MS, "timing", progress=False)
    return {name: benchmarking.summary(values) for name, values in seconds.items()}


def table(record: dict) -> list[str]:
    """The Markdown table: one per model, a row per rewrite, four columns per dataset."""
    lines = [
        "# Fidelity table", "",
        f"Measured {record['date']} on {record['machine']['cpu']} ({record['machine']['cores']} cores) by "
        f"`python benchmarks/accuracy.py`; {record['method']}", "",
        "Top-1 (%) on each dataset's fixed test split: **PT** the post-training rewrite (no fine-tuning), "
        "**FT** after fine-tuning (torch), **C** the compiled module (saddc, llvm, exact lowering); "
        "**us (x)** its batch-1 latency (median) and that over ONNX Runtime's on the pretrained model, "
        "timed in the same rounds: "
        + ", ".join(f"{key}: {value:.0f} us" for key, value in record["onnxruntime_us"].items()) + ".", "",
    ]
    rows = record["rows"]
    names = list(dict.fromkeys(r["dataset"] for r in rows))
    for model in dict.fromkeys(r["model"] for r in rows):
        pretrained = {name: record["pretrained"][f"{model}-{name}"]["test_top1"] for name in names}
        lines += [f"## {model} (pretrained top-1: " + ", ".join(f"{k} {v:.2f}" for k, v in pretrained.items()) + ")", ""]
        lines.append("| rewrite | " + " | ".join(f"{name} PT | FT | C | us (x)" for name in names) + " |")
        lines.append("|---|" + "---:|---:|---:|---:|" * len(names))
        for rewrite in dict.fromkeys(r["rewrite"] for r in rows if r["model"] == model):
            cells = []
            for name in names:
                row = next(r for r in rows if (r["model"], r["rewrite"], r["dataset"]) == (model, rewrite, name))
                cells.append(f"{row['post_training_top1']:.2f} | {row['finetuned_top1']:.2f} | "
                             f"{row['compiled_top1']:.2f} | {row['latency']['median_us']:.0f} "
                             f"({row['latency_vs_onnxruntime']:.2f})")
            lines.append(f"| {rewrite} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["Compile flags of each rewrite's export: " + "; ".join(
        f"{rewrite}: `{flags or '(none)'}`" for rewrite, flags in record["compile_flags"].items()) + ".", ""]
    return lines


def plot(record: dict, path: Path) -> None:
    """Compiled top-1 against batch-1 latency (over ONNX Runtime's, the noise-robust figure), a
    panel per dataset, a marker per model."""
    import matplotlib  # pylint: disable=import-outside-toplevel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

    rows = record["rows"]
    names = list(dict.fromkeys(r["dataset"] for r in rows))
    figure, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.5), squeeze=False)
    for axis, name in zip(axes[0], names):
        for model, marker in zip(dict.fromkeys(r["model"] for r in rows), "os^D"):
            points = [r for r in rows if r["dataset"] == name and r["model"] == model]
            axis.scatter([r["latency_vs_onnxruntime"] for r in points], [r["compiled_top1"] for r in points],
                         marker=marker, label=model)
            for r in points:
                axis.annotate(r["rewrite"], (r["latency_vs_onnxruntime"], r["compiled_top1"]), fontsize=7,
                              xytext=(3, 3), textcoords="offset points")
        axis.set(title=name, xlabel="batch-1 latency of the compiled module / ONNX Runtime's (same rounds)",
                 ylabel="top-1 of the compiled module (%)")
        axis.grid(alpha=0.3)
        axis.legend()
    figure.suptitle(f"saddc: accuracy against latency after fine-tuning ({record['machine']['cpu']})", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(datasets.DATASETS))
    parser.add_argument("--models", default=",".join(pretrain.MODELS))
    parser.add_argument("--rewrites", default=",".join(finetune.REWRITES))
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"fine-tuning epochs (default {EPOCHS})")
    parser.add_argument("--finetune-images", type=int, default=FINETUNE_IMAGES,
                        help=f"training images to fine-tune on (default {FINETUNE_IMAGES})")
    parser.add_argument("--test-images", type=int, help="evaluate on the first N test images (default: all)")
    parser.add_argument("--out", default=str(RESULTS), help="where accuracy.md, .json and .png go")
    args = parser.parse_args(argv)
    names, models, rewrites = (value.split(",") for value in (args.datasets, args.models, args.rewrites))
    unknown = [r for r in rewrites if r not in finetune.REWRITES]
    if unknown:
        parser.error(f"unknown rewrites {unknown} (choose from: {', '.join(finetune.REWRITES)})")
    pretrained = json.loads(pretrain.RECORD.read_text())
    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as scratch, \
            tqdm(total=len(names) * len(models) * len(rewrites), desc="fidelity table", unit="model") as progress:
        for name in names:
            split = datasets.load(name)
            for model in models:
                rows += measure_group(split, model, rewrites, args, Path(scratch), progress)
    record = {
        "benchmark": "fidelity table", "date": benchmarking.now(), "machine": benchmarking.machine(False),
        "method": f"fine-tuning: {args.epochs} epoch(s) of AdamW (cosine schedule) on the first "
                  f"{args.finetune_images} training images; latency: median of {REPEAT} rounds, each timing "
                  f"every module of a model and dataset once (calls filling >= {MIN_REPEAT_MS} ms after a "
                  f"warm-up, then a {bench.SETTLE_SECONDS} s pause), one process, llvm for this machine's CPU.",
        "seconds": time.perf_counter() - started,
        "pretrained": {key: pretrained[key] for key in (f"{m}-{n}" for m in models for n in names)},
        "compile_flags": {r["rewrite"]: r["compile_flags"] for r in rows},
        "onnxruntime_us": {f"{r['model']} {r['dataset']}": r["onnxruntime_latency"]["median_us"] for r in rows},
        "rows": rows,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "accuracy.json").write_text(json.dumps(record, indent=1) + "\n")
    (out / "accuracy.md").write_text("\n".join(table(record)))
    plot(record, out / "accuracy.png")
    print("\n".join(table(record)))
    print(f"{len(rows)} rows in {record['seconds'] / 60:.1f} minutes; written to {out}/accuracy.{{md,json,png}}")
    disagreeing = [r for r in rows if abs(r["compiled_top1"] - r["finetuned_top1"]) > AGREEMENT_POINTS]
    for r in disagreeing:
        print(f"FAIL: {r['model']} {r['rewrite']} on {r['dataset']}: compiled {r['compiled_top1']:.2f}% vs "
              f"torch {r['finetuned_top1']:.2f}%", file=sys.stderr)
    return 1 if disagreeing else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SaddcError as err:
        sys.exit(f"accuracy: error: {err}")
