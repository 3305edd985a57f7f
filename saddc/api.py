"""saddc's Python API: ``lower``, ``build``, ``compile`` (import, lower, build, export)."""

from __future__ import annotations

import collections
import contextlib
import datetime
import hashlib
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tvm import relax

from saddc import artifacts
from saddc.config import AUTO_TUNING_DB, AttentionOptions, LowerConfig, MoEOptions, ShiftOptions
from saddc.cuda import FatbinEntry, NvccStats, ensure_cuda_codegen, nvcc_fatbin_compiler, nvcc_version, read_fatbins
from saddc.errors import InputError, SaddcError
from saddc.native_stderr import captured_native_stderr
from saddc.pipeline import phases, run_phases
from saddc.specs import TensorSpec
from saddc.target import TargetSpec, parse_target

PIPELINES = ("saddc", "tvm-default")


def lower(mod: tvm.IRModule, config: LowerConfig | None = None, on_phase=None) -> tvm.IRModule:
    """Run the saddc pipeline on a Relax module; returns the module ready for ``build``."""
    return run_phases(mod, config or LowerConfig(), on_phase=on_phase)


def build(lowered: tvm.IRModule, config: LowerConfig | None = None) -> tuple[relax.Executable, NvccStats | None]:
    """Generate code for a lowered module. For CUDA, kernels become an nvcc fatbin."""
    config = config or LowerConfig()
    target = config.target.to_tvm()
    if not config.target.is_cuda:
        with target:
            return relax.build(lowered, target=target, relax_pipeline=None), None
    ensure_cuda_codegen()
    with nvcc_fatbin_compiler(config.target.arch) as stats, target:
        executable = relax.build(lowered, target=target, relax_pipeline=None)
    return executable, stats


def lower_tvm_default(mod: tvm.IRModule, config: LowerConfig) -> tvm.IRModule:
    """TVM's own default Relax pipeline for the target: the baseline saddc is measured against."""
    target = config.target.to_tvm()
    with target, _native_log_collapsed():
        return relax.pipeline.get_default_pipeline(target)(mod)


@contextlib.contextmanager
def _native_log_collapsed():
    """Print what TVM's C++ side logs to the standard error meanwhile once a line, with its
    count: its legalization warns at every ``fast``-mode take (DeiT-Tiny: 37 identical lines)."""
    lines: list[str] = []
    try:
        with captured_native_stderr() as lines:
            yield
    finally:
        for line, count in collections.Counter(lines).items():
            print(line if count == 1 else f"{line} ({count} times)", file=sys.stderr)


@dataclass
class CompileResult:
    """What ``compile`` produced, and what the CLI's summary prints."""

    executable: relax.Executable
    target: TargetSpec
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    op_counts: collections.Counter
    rewrites: list[str]
    kernels: int
    seconds: float
    output: Path | None = None
    manifest: dict = field(default_factory=dict)
    fatbin: list[FatbinEntry] = field(default_factory=list)
    nvcc: NvccStats | None = None
    reports: dict = field(default_factory=dict)
    pipeline: str = "saddc"
    dtype: str = "float32"

    def summary_lines(self) -> list[str]:
        ops = ", ".join(f"{op} x{count}" for op, count in self.op_counts.most_common())
        lines = [
            f"target:            {self.target.describe()}"
            + (" (TVM's default pipeline, the baseline)" if self.pipeline == "tvm-default" else ""),
            f"inputs:            {'; '.join(spec.describe() for spec in self.inputs)}",
            f"outputs:           {'; '.join(spec.describe() for spec in self.outputs)}",
            f"ops found:         {sum(self.op_counts.values())} ({ops})",
            f"rewrites applied:  {', '.join(self.rewrites) if self.rewrites else 'none'}",
            f"precision:         {self.dtype}" + (" (fp32 accumulation; softmax and saddc kernels in fp32)"
                                                  if self.dtype == "float16" else ""),
            f"kernels emitted:   {self.kernels}",
        ]
        for report in self.reports.values():
            lines.extend(report.summary_lines())
        if self.fatbin:
            images = ", ".join(sorted({f"{e.kind} sm_{e.arch}" for e in self.fatbin}))
            lines.append(f"CUDA binary:       fatbin ({images}), nvcc {self.nvcc.seconds:.1f} s")
        lines.append(f"compile time:      {self.seconds:.1f} s")
        if self.output:
            lines.append(f"output:            {self.output} (+ {artifacts.manifest_path(self.output).name})")
        return lines


class _Progress:
    """One progress bar over the compile steps (tqdm, on stderr); silent when disabled."""

    def __init__(self, steps: int, enabled: bool):
        from tqdm import tqdm  # pylint: disable=import-outside-toplevel

        self._bar = tqdm(total=steps, disable=not enabled, file=sys.stderr, unit="step",
                         bar_format="{desc:<28}{bar:20} {n_fmt}/{total_fmt} [{elapsed}]")

    def start(self, step: str):
        self._bar.set_description_str(step)

    def done(self):
        self._bar.update(1)

    def close(self):
        self._bar.close()


def compile(  # pylint: disable=redefined-builtin
    model: str | os.PathLike | tvm.IRModule,
    target: str = "llvm",
    arch: str | None = None,
    output: str | os.PathLike | None = None,
    dump_ir: str | os.PathLike | None = None,
    progress: bool = False,
    shift: ShiftOptions | None = None,
    attention: AttentionOptions | None = None,
    pipeline: str = "saddc",
    moe: MoEOptions | None = None,
    tuning_db: str | os.PathLike | None = AUTO_TUNING_DB,
    dtype: str = "float32",
) -> CompileResult:
    """Import (an ONNX path) or take (a Relax module), lower, build and, with ``output``, export.

    ``shift`` rewrites the linear layers it selects into shift GEMMs (``ShiftOptions``);
    ``attention`` replaces softmax attention and lowers binary-coded attention
    (``AttentionOptions``); ``moe`` turns the linear layers it selects into Mult/Shift MoE layers
    with a sparse dispatch (``MoEOptions``; MoE layers the model computes are lowered to the
    dispatch in any case). ``dtype="float16"`` runs the model's dense ops in fp16 with fp32
    accumulation (``LowerConfig.dtype``). ``tuning_db`` is a database from ``saddc tune`` ("auto": the one
    shipped for the target, if any; None: none). ``pipeline="tvm-default"`` lowers with TVM's own default pipeline
    instead of saddc's (no rewrites): a baseline built, exported and loaded like saddc's modules.

    Every check on user input (target, arch, nvcc, output path, the model file) runs before the
    expensive work, and the ``.so`` and its manifest appear together or not at all.
    """
    started = time.perf_counter()
    if pipeline not in PIPELINES:
        raise SaddcError(f"unknown pipeline '{pipeline}' (choose from: {', '.join(PIPELINES)})")
    if pipeline == "tvm-default" and (shift or attention or moe or dump_ir or dtype != "float32"):
        raise SaddcError("pipeline='tvm-default' is TVM's own pipeline: it takes no rewrites or dtype and dumps no IR")
    config = LowerConfig(target=parse_target(target, arch), dump_ir=dump_ir, shift=shift, attention=attention,
                         moe=moe, dtype=dtype, tuning_db=tuning_db if pipeline == "saddc" else None)
    if config.tuning_db is not None:
        from saddc.tuning import open_database  # pylint: disable=import-outside-toplevel

        open_database(config.tuning_db)  # a bad database fails here, before the expensive work
    output = artifacts.check_output_path(output) if output is not None else None
    if isinstance(model, tvm.IRModule):
        source = onnx_model = None
    else:
        from saddc.frontends import import_onnx, load_onnx  # pylint: disable=import-outside-toplevel

        source, onnx_model = Path(model), load_onnx(model)
    phase_names = [phase.name for phase in phases(config)] if pipeline == "saddc" else ["tvm-default"]
    bar = _Progress(len(phase_names) + 2 + (output is not None), progress)
    try:
        bar.start("importing")
        if onnx_model is None:
            mod, (inputs, outputs), op_counts = model, relax_io_specs(model), relax_op_counts(model)
        else:
            imported = import_onnx(onnx_model)
            mod, inputs, outputs = imported.mod, imported.inputs, imported.outputs
            op_counts = imported.op_counts
            config.layer_names = imported.layer_names
        bar.done()

        def on_phase(name, _seconds):
            bar.done()
            following = phase_names[phase_names.index(name) + 1:]
            bar.start(f"lowering: {following[0]}" if following else "lowering")

        bar.start(f"lowering: {phase_names[0]}")
        if pipeline == "saddc":
            lowered = lower(mod, config, on_phase=on_phase)
        else:
            lowered = lower_tvm_default(mod, config)
            on_phase("tvm-default", 0.0)
        bar.start(f"building ({config.target.kind})")
        executable, nvcc_stats = build(lowered, config)
        bar.done()
        result = CompileResult(
            executable=executable, target=config.target, inputs=inputs, outputs=outputs,
            op_counts=op_counts, rewrites=list(config.rewrites), reports=dict(config.reports), pipeline=pipeline,
            dtype=config.dtype,
            kernels=sum(isinstance(f, tvm.tirx.PrimFunc) for f in lowered.functions.values()),
            seconds=0.0, nvcc=nvcc_stats,
        )
        if output is not None:
            bar.start("exporting")
            export(result, output, source)
            bar.done()
    finally:
        bar.close()
    result.seconds = time.perf_counter() - started
    return result


def export(result: CompileResult, output: Path, source: Path | None) -> None:
    """Write the library and its manifest atomically; check a CUDA library holds its fatbin."""
    manifest_file = artifacts.manifest_path(output)
    with artifacts.atomic_outputs(output, manifest_file) as (library_tmp, manifest_tmp):
        result.executable.export_library(str(library_tmp))
        if result.target.is_cuda:
            result.fatbin = read_fatbins(library_tmp)
            wanted = int(result.target.arch[3:].rstrip("af"))
            if not any(e.kind == "sass" and e.arch == wanted for e in result.fatbin):
                raise SaddcError(
                    f"the built module holds no {result.target.arch} machine code "
                    "(TVM fell back to CUDA source); nothing was written"
                )
        result.manifest = _manifest(result, output, source)
        artifacts.write_json(manifest_tmp, result.manifest)
    result.output = output


def _manifest(result: CompileResult, output: Path, source: Path | None) -> dict:
    import onnx  # pylint: disable=import-outside-toplevel
    import tvm_ffi  # pylint: disable=import-outside-toplevel

    from saddc import __version__  # pylint: disable=import-outside-toplevel

    versions = {"saddc": __version__, "tvm": tvm.__version__, "tvm_ffi": tvm_ffi.__version__,
                "onnx": onnx.__version__}
    if result.target.is_cuda:
        versions["nvcc"] = nvcc_version()
    return {
        "format": artifacts.MANIFEST_FORMAT,
        "library": output.name,
        "source": {"path": str(source), "sha256": _sha256(source)} if source else None,
        "target": result.target.kind,
        "arch": result.target.arch,
        "cpu_features": result.target.simd_features(),
        "pipeline": result.pipeline,
        "dtype": result.dtype,
        "inputs": [spec.to_json() for spec in result.inputs],
        "outputs": [spec.to_json() for spec in result.outputs],
        "rewrites": result.rewrites,
        **{name: report.to_json() for name, report in result.reports.items()},
        "kernels": result.kernels,
        "fatbin": [{"kind": e.kind, "arch": f"sm_{e.arch}", "bytes": e.size} for e in result.fatbin],
        "versions": versions,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def relax_io_specs(mod: tvm.IRModule) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs of a Relax module's ``main`` (tensor inputs and outputs only)."""
    from saddc.passes.find_vit_blocks import shape_dims  # pylint: disable=import-outside-toplevel

    func = mod["main"]

    def spec(name, ty):
        if ty.ndim < 0:  # TVM legalizes no op on such a tensor: VM codegen would fail on it
            raise InputError(f"'{name}' of the module's main has no known rank; saddc compiles tensors of known rank")
        # A shape TVM does not know (erased where no input binds its dims) reads as '?' dims,
        # as ONNX's unknown dims do.
        return TensorSpec(name, shape_dims(ty) if ty.shape is not None else ("?",) * ty.ndim, str(ty.dtype))

    inputs = [spec(param.name, param.ty) for param in func.params]
    ret = func.ret_ty
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    return inputs, [spec(f"output{i}", ty) for i, ty in enumerate(fields)]


def relax_op_counts(mod: tvm.IRModule) -> collections.Counter:
    """Relax operator names used by ``main`` (what a module given directly 'contains')."""
    counts = collections.Counter()

    def visit(expr):
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op):
            counts[expr.op.name.removeprefix("relax.")] += 1

    relax.analysis.post_order_visit(mod["main"], visit)
    return counts
