"""The saddc demo: export the example ViTs, compile them for llvm and cuda, run the llvm
modules, and report their agreement with ONNX Runtime; then

- rewrite every linear layer into a shift GEMM (``--shift all --shift-lossy``) and check that
  module against ONNX Runtime on the same model with its weights rounded the same way;
- replace softmax attention with additive and with Taylor attention (``--attention``), check
  the llvm modules against the torch model whose attention cores were replaced the same way,
  and build them for cuda;
- make every MLP linear a Mult/Shift mixture of experts two ways, each compiled for llvm (run
  and checked) and cuda (built): ``--moe mlp`` on the plain model (routers fitted at compile
  time; checked against compute-both-and-select with the same routers), and a model trained
  with ``saddc.nn.MoELinear`` (a few distillation steps with the latency-aware loss, expert
  latencies measured from saddc's compiled kernels; checked against torch).

    python examples/demo.py --out out/demo

The models carry seeded random weights: no pretrained weights can be downloaded here, and
agreement with ONNX Runtime does not depend on them.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import saddc  # noqa: E402
from deit_tiny import deit_tiny  # noqa: E402
from pvtv2_b0 import pvtv2_b0  # noqa: E402
from saddc.benchmarking import expert_latency  # noqa: E402
from saddc.config import AttentionOptions, MoEOptions, ShiftOptions  # noqa: E402
from saddc.errors import SaddcError  # noqa: E402
from saddc.frontends.torch_export import export_onnx  # noqa: E402
from saddc.nn import (MoELinear, model_balance_loss, replace_attention,  # noqa: E402
                      replace_linear_with_moe, round_weights_to_shift)

MODELS = {"deit_tiny": deit_tiny, "pvtv2_b0": pvtv2_b0}
# Modules the compiler's --shift all leaves alone: PVT's spatial-reduction convs are
# patchifying convs, but not on the model input, so they are not a patch embedding.
NOT_SHIFTED = {"deit_tiny": None, "pvtv2_b0": "*.sr"}
IMAGE = (2, 3, 224, 224)
MOE_TRAINING_STEPS = 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out/demo", help="directory for the ONNX files and modules")
    parser.add_argument("--arch", default="sm_90", help="CUDA arch to build for")
    args = parser.parse_args()
    try:
        return demo(Path(args.out), args.arch)
    except SaddcError as err:
        print(f"FAIL: {err}")
        return 1


def demo(out: Path, arch: str) -> int:
    """Every step in the module doc; 1 when a module disagrees with its reference."""
    out.mkdir(parents=True, exist_ok=True)
    x = np.random.default_rng(0).standard_normal(IMAGE).astype("float32")
    rows, shift_rows, attention_rows, moe_rows = [], [], [], []
    for name, factory in MODELS.items():
        torch.manual_seed(0)
        model = factory()
        onnx_path = out / f"{name}.onnx"
        print(f"== {name}: exporting to {onnx_path} (torch dynamo exporter, opset 18, symbolic batch)")
        export_onnx(model, torch.from_numpy(x), onnx_path, "dynamo", 18, dynamic_batch=True)

        for target in ("llvm", "cuda"):
            _compile(f"{name}: saddc compile", onnx_path, target, arch, out / f"{name}_{target}.so")

        module = saddc.load(out / f"{name}_llvm.so")
        started = time.perf_counter()
        (ours,) = module(x)
        saddc_seconds = time.perf_counter() - started
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        started = time.perf_counter()
        (reference,) = session.run(None, {"x": x})
        ort_seconds = time.perf_counter() - started
        rel = _relative(ours, reference)
        top1 = float(np.mean(ours.argmax(-1) == reference.argmax(-1)))
        rows.append((name, rel, top1, saddc_seconds, ort_seconds))

        calibration = np.random.default_rng(1).standard_normal(IMAGE).astype("float32")
        shift = ShiftOptions("all", lossy=True, calibration=calibration)
        result = _compile(f"{name}: saddc compile --shift all --shift-lossy", onnx_path, "llvm", None,
                          out / f"{name}_shift_llvm.so", shift=shift)
        rounded_path = out / f"{name}_pow2.onnx"
        export_onnx(round_weights_to_shift(model, exclude=NOT_SHIFTED[name]), torch.from_numpy(x),
                    rounded_path, "dynamo", 18, dynamic_batch=True)
        (shifted,) = saddc.load(result.output)(x)
        (rounded,) = ort.InferenceSession(str(rounded_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
        shift_rows.append((name, _relative(shifted, rounded), _relative(shifted, reference),
                           float(np.mean(shifted.argmax(-1) == reference.argmax(-1)))))

        for mode in ("additive", "taylor"):
            attention = AttentionOptions(mode, calibration=calibration)
            for target in ("llvm", "cuda"):
                result = _compile(f"{name}: saddc compile --attention {mode}", onnx_path, target, arch,
                                  out / f"{name}_{mode}_{target}.so", attention=attention)
            report = result.reports["attention"]
            kept = {site.index for site in report.sites if site.exactness is None}
            with torch.no_grad():
                expected = replace_attention(model, mode, skip=kept)(torch.from_numpy(x)).numpy()
            (ours,) = saddc.load(out / f"{name}_{mode}_llvm.so")(x)
            attention_rows.append((name, mode, _relative(ours, expected), _relative(ours, reference),
                                   min(site.output_cosine for site in report.changed),
                                   float(np.mean(ours.argmax(-1) == reference.argmax(-1)))))

        moe_rows += moe_demo(name, model, onnx_path, x, calibration, out, arch, reference)

    print("\nAgreement of the saddc llvm modules with ONNX Runtime (batch of 2, 224x224):")
    print(f"{'model':<12} {'max rel err':>12} {'top-1 agree':>12} {'saddc s':>9} {'ORT s':>9}")
    for name, rel, top1, ours_s, ort_s in rows:
        print(f"{name:<12} {rel:>12.2e} {top1:>12.0%} {ours_s:>9.3f} {ort_s:>9.3f}")
    print("(one unwarmed run each: timings are indicative only; saddc bench measures them side by side)")
    print("\nShift rewrite (--shift all --shift-lossy, 5-bit codes) of the llvm modules:")
    print(f"{'model':<12} {'vs rounded ref':>15} {'vs original':>12} {'top-1 agree':>12}")
    for name, rel_rounded, rel_original, top1 in shift_rows:
        print(f"{name:<12} {rel_rounded:>15.2e} {rel_original:>12.2e} {top1:>12.0%}")
    print("(random weights: the rounding error says nothing about a trained model's accuracy)")
    print("\nAttention replaced (--attention; 16-bit SimHash codes for additive) in the llvm modules:")
    print(f"{'model':<12} {'mode':<10} {'vs torch ref':>13} {'vs original':>12} {'min block cos':>14} {'top-1 agree':>12}")
    for name, mode, rel_reference, rel_original, cosine, top1 in attention_rows:
        print(f"{name:<12} {mode:<10} {rel_reference:>13.2e} {rel_original:>12.2e} {cosine:>14.4f} {top1:>12.0%}")
    print("(the torch reference is the model with the same attention cores: saddc.nn.replace_attention)")
    print("\nMLP linears as Mult/Shift MoE layers (sparse dispatch) in the llvm modules:")
    print(f"{'model':<12} {'variant':<28} {'vs reference':>13} {'vs original':>12} {'to shift':>9} {'top-1 agree':>12}")
    for name, variant, rel_reference, rel_original, shifted, top1 in moe_rows:
        print(f"{name:<12} {variant:<28} {rel_reference:>13.2e} {rel_original:>12.2e} {shifted:>9.0%} {top1:>12.0%}")
    print("(references: --moe-dispatch select with the same routers; the trained torch model)")
    failing = [name for name, rel, *_ in rows if rel > 1e-4]
    failing += [f"{name} (shift)" for name, rel, *_ in shift_rows if rel > 1e-4]
    failing += [f"{name} ({mode})" for name, mode, rel, *_ in attention_rows if rel > 1e-4]
    failing += [f"{name} ({variant})" for name, variant, rel, *_ in moe_rows if rel > 1e-4]
    if failing:
        print(f"FAIL: relative error above 1e-4 for {', '.join(failing)}")
        return 1
    return 0


def moe_demo(name, model, onnx_path, x, calibration, out, arch, reference) -> list[tuple]:
    """The MoE rows for one model: ``--moe mlp`` on the plain model, and a trained MoELinear model."""
    results = {}
    for dispatch, target in (("sparse", "llvm"), ("select", "llvm"), ("sparse", "cuda")):
        options = MoEOptions("mlp", shift_ratio=0.5, calibration=calibration, dispatch=dispatch)
        results[dispatch, target] = _compile(
            f"{name}: saddc compile --moe mlp --moe-shift-ratio 0.5 --moe-dispatch {dispatch}",
            onnx_path, target, arch, out / f"{name}_moe_{dispatch}_{target}.so", moe=options)
    (built,) = saddc.load(results["sparse", "llvm"].output)(x)
    (select,) = saddc.load(results["select", "llvm"].output)(x)
    shifted = np.mean([layer.shift_ratio for layer in results["sparse", "llvm"].reports["moe"].layers])
    rows = [(name, "--moe mlp, R=0.5", _relative(built, select), _relative(built, reference), shifted,
             float(np.mean(built.argmax(-1) == reference.argmax(-1))))]

    trained = train_moe(model, torch.from_numpy(x))
    moe_path = out / f"{name}_moelinear.onnx"
    print(f"== {name}: exporting the MoELinear model to {moe_path}")
    export_onnx(trained, torch.from_numpy(x), moe_path, "dynamo", 18, dynamic_batch=True)
    for target in ("llvm", "cuda"):
        _compile(f"{name}: saddc compile {moe_path.name}", moe_path, target, arch,
                 out / f"{name}_moelinear_{target}.so")
    (ours,) = saddc.load(out / f"{name}_moelinear_llvm.so")(x)
    with torch.no_grad():
        trained.train()  # to record the routing
        expected = trained(torch.from_numpy(x)).detach().numpy()
        shifted = np.mean([m.shift_fraction() for m in trained.modules() if isinstance(m, MoELinear)])
    rows.append((name, f"MoELinear, {MOE_TRAINING_STEPS} training steps", _relative(ours, expected),
                 _relative(ours, reference), shifted, float(np.mean(ours.argmax(-1) == reference.argmax(-1)))))
    return rows


def train_moe(model, x):
    """``model`` with its MLP linears as MoELinear, distilled from ``model`` on ``x`` for a few
    steps with the latency-aware balance loss, the experts' latencies measured from saddc's
    llvm kernels for the first layer's shape."""
    student = replace_linear_with_moe(model).train()
    first = next(m for m in student.modules() if isinstance(m, MoELinear))
    with torch.no_grad():
        target = model.eval()(x)
        student(x[:1])
    tokens = first.routing.choices.numel()
    latency = expert_latency(first.mult.in_features, first.mult.out_features, tokens)
    print(f"   expert latency ({first.mult.in_features}->{first.mult.out_features}, {tokens} tokens, llvm): "
          f"mult {latency[0] * 1e3:.2f} ms, shift {latency[1] * 1e3:.2f} ms")
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-4)
    for step in range(MOE_TRAINING_STEPS):
        optimizer.zero_grad()
        distillation = torch.nn.functional.mse_loss(student(x), target)
        balance = model_balance_loss(student, latency)
        (distillation + 0.01 * balance).backward()
        optimizer.step()
        print(f"   step {step + 1}: distillation {distillation.item():.4g}, balance {balance.item():.4g}")
    return student.eval()


def _compile(label, source, target, arch, output, **options):
    """``saddc.compile`` with the command it stands for and its summary printed."""
    print(f"== {label} --target {target}" + (f" --arch {arch}" if target == "cuda" else ""))
    result = saddc.compile(source, target=target, arch=arch if target == "cuda" else None, output=output,
                           progress=sys.stderr.isatty(), **options)
    print("   " + "\n   ".join(result.summary_lines()))
    return result


def _relative(actual, expected) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


if __name__ == "__main__":
    raise SystemExit(main())
