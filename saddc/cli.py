"""The ``saddc`` command line: compile, inspect, bench, tune, run."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

from saddc.config import (ATTENTION_FORMS, ATTENTION_MODES, AUTO_TUNING_DB, BENCH_VARIANTS, CPU_BENCH_VARIANTS,
                          CUDA_BENCH_VARIANTS, DTYPES, FINETUNE_REWRITES, MOE_DISPATCHES, SHIFT_KERNELS)
from saddc.errors import SaddcError, SaddcWarning

DESCRIPTION = """\
Compile ONNX Vision Transformers into multiplication-reduced TVM modules.

  saddc compile model.onnx --target cuda --arch sm_90 -o model.so
  saddc compile model.onnx --shift mlp --shift-lossy --calibration images.npy
  saddc compile model.onnx --attention additive --attention-skip last-stage
  saddc compile model.onnx --moe mlp --moe-shift-ratio 0.6 --calibration images.npy
  saddc inspect model.onnx
  saddc bench model.onnx --batch 1,32 --out results/
  saddc tune model.onnx --target llvm --trials 64 --db tuning/
  saddc finetune model.py:vit --weights vit.pt --data data.npz --rewrite shift-mlp -o vit_shift.onnx
  saddc run model.so --input x.npy
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saddc", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    from saddc import __version__  # pylint: disable=import-outside-toplevel

    parser.add_argument("--version", action="version", version=f"saddc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    compile_ = commands.add_parser(
        "compile", help="compile an ONNX model to a deployable module (.so + .json manifest)",
        description="Import an ONNX model, run the saddc pipeline, build for the target and "
        "write the module (.so) with its JSON manifest beside it.",
    )
    compile_.add_argument("model", help="ONNX model file (external-data side files are read too)")
    compile_.add_argument("--target", default="llvm", help="llvm (x86-64 CPU) or cuda (default: llvm)")
    compile_.add_argument("--arch", help="cuda: the SM architecture (default sm_90); llvm: the LLVM CPU to generate "
                                         "code for (default host, this machine's; x86-64 runs on any x86-64)")
    compile_.add_argument("-o", "--output", help="output module path (default: MODEL with .so)")
    compile_.add_argument("--dump-ir", metavar="DIR", help="write the IR after each pipeline phase to DIR")
    compile_.add_argument("-q", "--quiet", action="store_true",
                          help="no progress bar (it shows only when stderr is a terminal)")
    _add_rewrite_arguments(compile_)
    compile_.add_argument("--db", metavar="DIR|none",
                          help="a tuning database from saddc tune to schedule the kernels it has records for "
                          "(default: the one saddc ships for the target, if any; none: no database)")
    compile_.add_argument("--dtype", choices=DTYPES, default="float32",
                          help="float16: the model's matmuls, convs and elementwise ops in fp16 with fp32 "
                          "accumulation; softmax and saddc's kernels stay fp32 (for cuda; default float32)")

    inspect_ = commands.add_parser(
        "inspect", help="show the inputs, linear layers and attention blocks saddc recognizes",
    )
    inspect_.add_argument("model", help="ONNX model file")

    bench = commands.add_parser(
        "bench", help="time a model every way (ONNX Runtime, TVM default, torch, saddc variants) side by side",
        description="Compile TVM's default pipeline and saddc's variants of a model, then time them with "
        "ONNX Runtime (and torch, given --torch) in one process: a table, a JSON record and a PNG plot. "
        "For cuda: --build-only DIR here, --run DIR on the GPU machine.",
    )
    bench.add_argument("model", nargs="?", help="ONNX model file (not needed with --run)")
    bench.add_argument("--target", default="llvm", help="llvm or cuda (default: llvm)")
    bench.add_argument("--arch", help="as for compile")
    bench.add_argument("--batch", default="1", help="batch sizes, comma-separated (default 1)")
    bench.add_argument("--variants", help=f"saddc variants to time, from {','.join(BENCH_VARIANTS)} "
                       "(default: all but untuned, the plain model without the shipped tuning database; "
                       "on llvm all but that and fp16, which CPUs emulate)")
    bench.add_argument("--no-tvm-default", action="store_true",
                       help="leave TVM's default pipeline out: on llvm it schedules nothing and takes 100-400x "
                       "ONNX Runtime's time (a ViT-Base: 55 s a call at batch 1); on cuda it is the baseline")
    bench.add_argument("--repeat", type=int, default=5, help="timing rounds (default 5)")
    bench.add_argument("--torch", metavar="FILE.py:FACTORY", help="a torch model to time too (eager; "
                       "torch.compile and fp16 eager on a GPU)")
    bench.add_argument("--calibration", metavar="FILE.npy", help="inputs for the lossy variants' routers and errors")
    bench.add_argument("--out", default=".", metavar="DIR", help="where the JSON and PNG go (default: .)")
    split = bench.add_mutually_exclusive_group()
    split.add_argument("--build-only", metavar="DIR", help="compile into DIR and stop")
    split.add_argument("--run", metavar="DIR", help="time the modules compiled into DIR")

    tune = commands.add_parser(
        "tune", help="tune the model's kernels with MetaSchedule into a database compile applies",
        description="Lower a model (with the rewrites given) to its kernels, tune those without a schedule "
        "of saddc's own with MetaSchedule on this machine, time their default schedules the same way, and "
        "merge into DIR the tuned records that beat them. compile --db DIR applies them.",
    )
    tune.add_argument("model", help="ONNX model file")
    tune.add_argument("--db", required=True, metavar="DIR", help="the database directory (created or merged into)")
    tune.add_argument("--target", default="llvm", help="llvm or cuda (default: llvm; cuda needs a GPU here)")
    tune.add_argument("--arch", help="as for compile")
    tune.add_argument("--trials", type=int, default=64, help="measured candidates per kernel (default 64)")
    tune.add_argument("--kernels", metavar="TEXT", help="tune only the kernels whose name holds TEXT (e.g. matmul)")
    tune.add_argument("--keep-slower", action="store_true",
                      help="keep tuned records that lost to the default schedule too")
    tune.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_rewrite_arguments(tune)

    finetune = commands.add_parser(
        "finetune", help="reparameterize a trained torch ViT with saddc's modules, fine-tune it, export ONNX",
        description="Rewrite a trained torch ViT with saddc's trainable modules (shift linears, binary-coded "
        "attention with straight-through codes, Taylor attention, MoE with the latency-aware loss), fine-tune "
        "it on the data given, report test top-1 before and after, and export it to ONNX, which saddc "
        "compile lowers exactly with the flags printed. Needs torch.",
    )
    finetune.add_argument("model", metavar="FILE.py:FACTORY", help="a function returning the torch model "
                          "(its attention cores saddc.nn.SoftmaxAttention, as in examples/)")
    finetune.add_argument("--weights", metavar="FILE.pt", help="the trained state dict to start from")
    finetune.add_argument("--data", required=True, metavar="FILE.npz",
                          help="arrays x_train, y_train, x_test, y_test (images NCHW float32, int labels)")
    finetune.add_argument("--rewrite", required=True, choices=FINETUNE_REWRITES, help="what to reparameterize")
    finetune.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs (default 5)")
    finetune.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate (default 5e-4)")
    finetune.add_argument("--batch-size", type=int, default=64, help="default 64")
    finetune.add_argument("-o", "--output", required=True, metavar="FILE.onnx", help="the exported model")
    finetune.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    run_ = commands.add_parser("run", help="run a compiled module on .npy inputs")
    run_.add_argument("module", help="compiled module (.so, with its .json manifest beside it)")
    run_.add_argument(
        "--input", action="append", default=[], metavar="[NAME=]FILE.npy",
        help="an input array; repeat in input order, or name each input",
    )
    run_.add_argument("--save", metavar="DIR", help="write each output to DIR/<name>.npy")
    return parser


def _add_rewrite_arguments(parser: argparse.ArgumentParser) -> None:
    """The rewrite options, shared by compile and tune (tuning sees the kernels they emit)."""
    shift = parser.add_argument_group(
        "shift primitives", "turn linear layers into power-of-two shift GEMMs (see saddc inspect for roles)"
    )
    shift.add_argument("--shift", metavar="GROUPS",
                       help="layers to rewrite, comma-separated: all, attn (qkv + attn-proj), mlp "
                       "(mlp-fc1 + mlp-fc2), qkv, attn-proj, mlp-fc1, mlp-fc2, patch-embed, head, other")
    shift.add_argument("--shift-skip", metavar="LIST", default="",
                       help="layers to leave dense: first, last, layer indices, or name globs")
    shift.add_argument("--shift-bits", type=int, choices=(4, 5), default=5,
                       help="code width: 5 (2^[-14,0] of a channel scale, default) or 4 (2^[-6,0])")
    shift.add_argument("--shift-lossy", action="store_true",
                       help="allow rounding weights that are not powers of two (reports the error)")
    shift.add_argument("--shift-kernel", choices=SHIFT_KERNELS, default="auto",
                       help="auto (by measured latency), add-only, or decode-mma (CUDA tensor cores)")
    attention = parser.add_argument_group(
        "attention", "replace softmax attention with linear attention (lossy, with an error report); "
        "attention the model computes with binary codes is lowered to the add kernels exactly",
    )
    attention.add_argument("--attention", choices=ATTENTION_MODES,
                           help="additive (binary-coded Q/K, masked sums) or taylor (first-order Taylor)")
    attention.add_argument("--attention-form", choices=ATTENTION_FORMS, default="match",
                           help="additive form: match (normalized match kernel, default) or shiftaddvit "
                           "(normalize(0.5 v + B_Q (B_K^T V) / pi); needs as many keys as queries)")
    attention.add_argument("--attention-bits", type=int, default=16, metavar="B",
                           help="code bits a row, 1 to 64 (default 16)")
    attention.add_argument("--attention-hash", default="simhash", metavar="simhash|FILE",
                           help="simhash (seeded random hyperplanes, default), or a projection: .npy of "
                           "(d, bits) or (heads, d, bits), or .npz with one per block index")
    attention.add_argument("--attention-seed", type=int, default=0, help="SimHash seed (default 0)")
    attention.add_argument("--attention-skip", metavar="LIST", default="",
                           help="softmax blocks to keep: first, last, last-stage, block indices")
    moe = parser.add_argument_group(
        "mixture of experts", "turn linear layers into a Mult/Shift MoE with a router fitted on calibration "
        "tokens, run as a sparse dispatch (lossy, with an error report); MoE layers the model computes "
        "(saddc.nn.MoELinear) are always lowered to the dispatch exactly",
    )
    moe.add_argument("--moe", metavar="GROUPS", help="layers to turn into MoE layers, as for --shift (e.g. mlp)")
    moe.add_argument("--moe-shift-ratio", type=float, default=0.5, metavar="R",
                     help="fraction of calibration tokens to route to the Shift expert, 0 to 1 (default 0.5)")
    moe.add_argument("--moe-bits", type=int, choices=(4, 5), default=5, help="Shift expert code width (default 5)")
    moe.add_argument("--moe-dispatch", choices=MOE_DISPATCHES, default="sparse",
                     help="sparse (partition, segmented GEMMs, scatter; default) or select (both experts "
                     "on every token, then a select: the baseline)")
    parser.add_argument("--calibration", metavar="FILE.npy",
                          help="model inputs for lossy rewrites' error reports and the MoE routers (--shift-lossy, "
                          "--attention, --moe); default: synthetic N(0,1), with a warning")


def _rewrite_options(args):
    """(ShiftOptions, AttentionOptions, MoEOptions), each None when not asked for."""
    from saddc.config import AttentionOptions, MoEOptions, ShiftOptions  # pylint: disable=import-outside-toplevel

    shift_flags = args.shift_skip or args.shift_lossy or args.shift_bits != 5 or args.shift_kernel != "auto"
    if args.shift is None and shift_flags:
        raise SaddcError("--shift-skip, --shift-bits, --shift-lossy and --shift-kernel need --shift GROUPS")
    attention_flags = args.attention_skip or args.attention_form != "match" or args.attention_bits != 16 \
        or args.attention_hash != "simhash" or args.attention_seed != 0
    if args.attention is None and attention_flags:
        raise SaddcError("--attention-form, --attention-bits, --attention-hash, --attention-seed and "
                         "--attention-skip need --attention additive|taylor")
    moe_flags = args.moe_shift_ratio != 0.5 or args.moe_bits != 5 or args.moe_dispatch != "sparse"
    if args.moe is None and moe_flags:
        raise SaddcError("--moe-shift-ratio, --moe-bits and --moe-dispatch need --moe GROUPS")
    if args.calibration and args.shift is None and args.attention is None and args.moe is None:
        raise SaddcError("--calibration needs a rewrite to report on: --shift GROUPS, --attention MODE or --moe GROUPS")
    shift = None if args.shift is None else ShiftOptions(
        layers=args.shift, skip=args.shift_skip, bits=args.shift_bits, lossy=args.shift_lossy,
        kernel=args.shift_kernel, calibration=args.calibration,
    )
    attention = None if args.attention is None else AttentionOptions(
        mode=args.attention, form=args.attention_form, bits=args.attention_bits, hash=args.attention_hash,
        seed=args.attention_seed, skip=args.attention_skip, calibration=args.calibration,
    )
    moe = None if args.moe is None else MoEOptions(
        layers=args.moe, shift_ratio=args.moe_shift_ratio, bits=args.moe_bits, calibration=args.calibration,
        dispatch=args.moe_dispatch,
    )
    return shift, attention, moe


def cmd_compile(args) -> int:
    from saddc.api import compile as compile_model  # pylint: disable=import-outside-toplevel

    output = args.output or str(Path(args.model).with_suffix(".so"))
    shift, attention, moe = _rewrite_options(args)
    result = compile_model(
        args.model, target=args.target, arch=args.arch, output=output, dump_ir=args.dump_ir,
        progress=not args.quiet and sys.stderr.isatty(), shift=shift, attention=attention, moe=moe,
        tuning_db=None if args.db == "none" else args.db or AUTO_TUNING_DB, dtype=args.dtype,
    )
    print("\n".join(result.summary_lines()))
    return 0


def _label(kind: str, index: int, count: int) -> str:
    """``kind[index]`` padded to the widest of ``count`` such labels, so that columns align."""
    return f"{kind}[{index}]".ljust(len(f"{kind}[{count - 1}]"))


def cmd_inspect(args) -> int:
    # pylint: disable=import-outside-toplevel
    from saddc.frontends import import_onnx
    from saddc.passes import find_attention_blocks, find_binary_codes, find_linear_layers, find_skipped_softmax
    from saddc.passes.find_binary_codes import group_blocks
    from saddc.pipeline import recognition_passes
    import tvm

    imported = import_onnx(args.model)
    mod = tvm.transform.Sequential(recognition_passes())(imported.mod)
    print(f"model: {args.model} (opset {imported.opset}, {imported.producer or 'unknown producer'})")
    for spec in imported.inputs:
        print(f"input   {spec.describe()}")
    for spec in imported.outputs:
        print(f"output  {spec.describe()}")
    ops = ", ".join(f"{op} x{n}" for op, n in imported.op_counts.most_common())
    print(f"ops: {sum(imported.op_counts.values())} ({ops})")
    linears = find_linear_layers(mod, names=imported.layer_names)
    print(f"\nlinear layers: {len(linears)}")
    features = [f"{layer.in_features} -> {layer.out_features}" for layer in linears]
    inputs = [str(list(layer.input_shape)) for layer in linears]
    feature_width, input_width = max(map(len, features), default=0), max(map(len, inputs), default=0)
    for layer, feature, shape in zip(linears, features, inputs):
        bias = "+bias" if layer.has_bias else ""
        print(f"  {_label('linear', layer.index, len(linears))}  {layer.role:<11} {feature:<{feature_width}} "
              f"{bias:<6} input {shape:<{input_width}}  {layer.name}")
    blocks = find_attention_blocks(mod)
    print(f"\nsoftmax attention blocks: {len(blocks)}")
    for block in blocks:
        print(f"  {_label('attention', block.index, len(blocks))}  stage {block.stage}  heads {block.heads}  query tokens "
              f"{block.query_tokens}  key tokens {block.key_tokens}  head dim {block.head_dim}  "
              f"scale on {block.scale} ({block.score_scale:g} on the scores)")
    coded = group_blocks(mod, find_binary_codes(mod))
    if coded:
        print(f"\nbinary-coded attention blocks (lowered exactly by --attention): {len(coded)}")
        for index, group in enumerate(coded):
            codes = group[0]
            hashed = "projection" if codes.projection is not None else "compare, no projection"
            print(f"  {_label('binary-coded', index, len(coded))}  {len(group)} code tensor(s)  {codes.bits} bits  {hashed}  "
                  f"{sum(len(c.uses) for c in group)} matmul(s) over codes")
    skipped = find_skipped_softmax(mod)
    if skipped:
        print(f"\nsoftmax not recognized as attention: {len(skipped)}")
        for site in skipped:
            print(f"  {_label('softmax', site.index, len(skipped))}  {list(site.shape)}: {site.reason}")
    return 0


def cmd_run(args) -> int:
    import numpy as np  # pylint: disable=import-outside-toplevel

    from saddc.runtime import load  # pylint: disable=import-outside-toplevel

    module = load(args.module)
    named, positional = {}, []
    for item in args.input:
        name, sep, path = item.partition("=")
        array = _read_npy(path if sep else item)
        if sep:
            named[name] = array
        else:
            positional.append(array)
    if named and positional:
        raise SaddcError("give all --input values by name or all in order, not both")
    if positional:
        feeds = dict(zip((spec.name for spec in module.inputs), positional))
        if len(positional) != len(module.inputs):
            raise SaddcError(f"module takes {len(module.inputs)} input(s), got {len(positional)}")
    else:
        feeds = named
    outputs = module.run(feeds)
    for name, value in outputs.items():
        flat = value.reshape(-1)
        print(f"{name}: {value.dtype}{list(value.shape)}  "
              f"min {flat.min():.6g}  max {flat.max():.6g}  mean {flat.mean():.6g}")
        if value.ndim == 2 and value.shape[0] <= 8:
            print(f"  argmax per row: {np.argmax(value, axis=-1).tolist()}")
    if args.save:
        os.makedirs(args.save, exist_ok=True)
        for name, value in outputs.items():
            safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)
            np.save(os.path.join(args.save, f"{safe}.npy"), value)
    return 0


def cmd_bench(args) -> int:
    # pylint: disable=import-outside-toplevel
    from saddc import bench
    from saddc.artifacts import prepare_directory

    default = CUDA_BENCH_VARIANTS if args.target == "cuda" else CPU_BENCH_VARIANTS
    variants = [v for v in args.variants.split(",") if v] if args.variants else list(default)
    unknown = sorted(set(variants) - set(BENCH_VARIANTS))
    if unknown:
        raise SaddcError(f"unknown variant(s) {', '.join(unknown)} (choose from: {', '.join(BENCH_VARIANTS)})")
    try:
        batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        raise SaddcError(f"--batch wants comma-separated integers, got '{args.batch}'") from None
    if args.run is None and args.model is None:
        raise SaddcError("saddc bench needs a model (or --run DIR)")
    if args.no_tvm_default and args.target == "cuda":
        raise SaddcError("--no-tvm-default is for llvm: on cuda TVM's default pipeline is the baseline the table "
                         "is relative to")
    if args.run is not None:
        if args.no_tvm_default:
            raise SaddcError("--no-tvm-default chooses what is built: --run DIR times what DIR holds")
        if not (Path(args.run) / "plan.json").exists():
            raise SaddcError(f"{args.run} holds no saddc bench build (plan.json): build with --build-only")
        prepare_directory(args.out)
        return _bench_report(bench.run(Path(args.run), batches, args.repeat, args.torch), args.out)
    from saddc.frontends.onnx_importer import graph_inputs, load_onnx, tensor_specs  # pylint: disable=import-outside-toplevel

    # A missing or broken model, one a benchmark cannot feed, or a bad calibration file fails
    # here, before anything is written.
    bench.check_benchable(tensor_specs(graph_inputs(load_onnx(args.model))), batches)
    calibration = None if args.calibration is None else _read_npy(args.calibration)
    prepare_directory(args.out)
    if args.build_only:
        bench.build(Path(args.model), args.target, args.arch, variants, Path(args.build_only), calibration,
                    tvm_default=not args.no_tvm_default)
        print(f"built into {args.build_only}; time with: saddc bench --run {args.build_only}")
        return 0
    _require_gpu_to_time(args.target)
    with tempfile.TemporaryDirectory(prefix="saddc-bench-") as build_dir:
        bench.build(Path(args.model), args.target, args.arch, variants, Path(build_dir), calibration,
                    tvm_default=not args.no_tvm_default)
        return _bench_report(bench.run(Path(build_dir), batches, args.repeat, args.torch), args.out)


def _require_gpu_to_time(target: str) -> None:
    """Fail before the builds (a minute or more) when a cuda benchmark would then find no GPU."""
    from saddc.cuda import gpu_visible  # pylint: disable=import-outside-toplevel

    if target == "cuda" and not gpu_visible():
        raise SaddcError("timing for cuda needs a CUDA GPU, and this machine has none: build here with "
                         "--build-only DIR, then time on the GPU machine with saddc bench --run DIR")


def _bench_report(result: dict, out_dir: str) -> int:
    from saddc import bench  # pylint: disable=import-outside-toplevel

    print("\n".join(bench.table(result)))
    json_path, png_path = bench.write(result, Path(out_dir))
    print(f"wrote {json_path} and {png_path}")
    return 0


def cmd_tune(args) -> int:
    from saddc import tuning  # pylint: disable=import-outside-toplevel

    if args.trials < 1:
        raise SaddcError(f"--trials must be at least 1, got {args.trials}")
    shift, attention, moe = _rewrite_options(args)
    rows = tuning.tune(args.model, args.db, target=args.target, arch=args.arch, trials=args.trials,
                       kernels=args.kernels, keep_slower=args.keep_slower,
                       progress=not args.quiet and sys.stderr.isatty(), shift=shift, attention=attention, moe=moe)
    print("\n".join(tuning.table(rows)))
    print(f"{sum(row.kept for row in rows)} of {len(rows)} records kept in {args.db}")
    return 0


def _read_npy(path: str):
    from saddc.array_files import load_array_file  # pylint: disable=import-outside-toplevel

    return load_array_file(path, "input file")


def cmd_finetune(args) -> int:
    # pylint: disable=import-outside-toplevel
    from saddc.artifacts import prepare_directory

    if args.epochs < 1:
        raise SaddcError(f"--epochs must be at least 1, not {args.epochs}")
    output = Path(args.output)
    if output.suffix != ".onnx":
        raise SaddcError(f"output must be an .onnx file: {output}")
    prepare_directory(output.parent)
    data = _read_npz(args.data, ("x_train", "y_train", "x_test", "y_test"))
    try:
        import torch
    except ImportError:
        raise SaddcError("saddc finetune needs torch (pip install torch==2.13.0)") from None
    from saddc import finetune
    from saddc.torch_models import load_factory

    model = load_factory(args.model, args.weights)
    x_train, x_test = (torch.from_numpy(data[k].astype("float32")) for k in ("x_train", "x_test"))
    y_train, y_test = (torch.from_numpy(data[k].astype("int64")) for k in ("y_train", "y_test"))
    try:
        reparameterized = finetune.reparameterize(model, args.rewrite, calibration=x_train[:finetune.CALIBRATION_IMAGES])
    except ValueError as err:
        raise SaddcError(str(err)) from None
    before = finetune.top1(finetune.predict(reparameterized.model, x_test), y_test)
    history = finetune.finetune(reparameterized, x_train, y_train, args.epochs, lr=args.lr,
                                batch_size=args.batch_size, progress=not args.quiet and sys.stderr.isatty())
    after = finetune.top1(finetune.predict(reparameterized.model, x_test), y_test)
    reparameterized.export(x_test[:1], output)
    print(f"rewrite:      {args.rewrite}")
    print(f"test top-1:   {before:.2f}% reparameterized, {after:.2f}% after {args.epochs} epochs "
          f"(loss {history.losses[0]:.3f} -> {history.losses[-1]:.3f})")
    if history.shift_fractions:
        print(f"shift tokens: {100 * history.shift_fractions[-1]:.1f}% in the last epoch "
              f"(target {100 * reparameterized.shift_ratio:.0f}%)")
    print(f"exported:     {output}")
    print(f"compile with: saddc compile {output} {reparameterized.compile_flags}".rstrip())
    return 0


def _read_npz(path: str, keys: tuple[str, ...]) -> dict:
    import numpy as np  # pylint: disable=import-outside-toplevel

    archive = _read_npy(path)
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise SaddcError(f"{path} holds one array, not a .npz archive of {', '.join(keys)}")
    with archive:
        missing = [k for k in keys if k not in archive.files]
        if missing:
            raise SaddcError(f"{path} lacks the arrays {', '.join(missing)}")
        return {k: archive[k] for k in keys}


COMMANDS = {"compile": cmd_compile, "inspect": cmd_inspect, "bench": cmd_bench, "tune": cmd_tune,
            "finetune": cmd_finetune, "run": cmd_run}


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """saddc's own warnings as one line; others as Python prints them."""
    if issubclass(category, SaddcWarning):
        print(f"saddc: warning: {message}", file=file or sys.stderr)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, where a closed pipe is caught below, rather than at exit
        return code
    except SaddcError as err:
        print(f"saddc: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("saddc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader of the output left (`saddc inspect model.onnx | head`): stop quietly, and
        # keep Python's flush of stdout at exit from failing again on the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
