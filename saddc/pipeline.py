"""The saddc Relax pipeline, as phases.

    cleanup          fold constants (and the run-time index arithmetic of constant Gathers)
                     and decompose inference-only ops, so patterns see plain matmuls with
                     constant weights, and the importer's Clip kernels as Relax's clip
    reparameterize   saddc's rewrites: lossless lowerings of what the model already computes
                     (MoE layers, always; binary-coded attention), then the lossy ones as
                     configured (MoE from plain layers, shift, attention replacement)
    legalize         Relax ops to TIR (one-group convs as matmuls over their patches,
                     constant-index takes as static slices, fast float32 math on the CPU), fused;
                     each kernel's arithmetic estimated (for the benchmarks' FLOP rates)
    schedule         kernel schedules for the target: the target's form of the hand-scheduled
                     kernels (the MoE dispatch's, emitted in their CPU form), a tuning
                     database's records, on the CPU the constant weights of matmuls and dense
                     MoE experts packed into the column panels their kernels read, then
                     saddc's kernels, DLight's rules and saddc's CPU matmul, depthwise-conv,
                     injective and row-reduction rules for the rest
    vm-lowering      TVM's dataflow lowering and VM finalization for the target

Registered with Relax as ``relax.get_pipeline("saddc", config=...)``; ``saddc.lower`` runs it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import tvm
import tvm_ffi
from tvm import relax

from saddc import errors
from saddc.config import LowerConfig
from saddc.legalizations import legalizations
from saddc.tvmscript_parsing import cache_fileless_frames

PhaseCallback = Callable[[str, float], None]

# saddc's passes raise SaddcErrors for bad user input; registered with TVM's FFI, they cross it
# with their type and message intact, so the CLI reports them as one line.
for _error in (errors.SaddcError, *errors.SaddcError.__subclasses__()):
    tvm_ffi.register_error(_error)


@dataclass(frozen=True)
class Phase:
    name: str
    passes: list


def cleanup_passes(config: LowerConfig) -> list:
    from saddc.passes import (  # pylint: disable=import-outside-toplevel
        ClipFastModeTakes, FoldConstantBroadcasts, FoldConstantWhere, RewriteTEClipToRelaxClip,
    )

    del config
    return [
        relax.transform.DecomposeOpsForInference(),
        ClipFastModeTakes(),
        relax.transform.FoldConstant(),
        FoldConstantBroadcasts(),
        FoldConstantWhere(),
        RewriteTEClipToRelaxClip(),  # its bounds folded to constants first
        relax.transform.DeadCodeElimination(),
        relax.transform.CanonicalizeBindings(),
    ]


def recognition_passes() -> list:
    """The module as ``saddc inspect`` lists its layers: cleaned up, and a patch embedding conv
    as the matmul ``--shift patch-embed`` turns it into."""
    from saddc.passes import RewriteConv2dToMatmul  # pylint: disable=import-outside-toplevel

    return cleanup_passes(LowerConfig()) + [RewriteConv2dToMatmul(patch_embeddings_only=True)]


def reparameterize_passes(config: LowerConfig) -> list:
    """saddc's rewrites, each gated by ``config``; each records its report in ``config.reports``.

    MoE layers the model computes are lowered first (lossless, always), so no later rewrite
    takes their experts for plain layers; binary codes a model already computes are lowered
    next, so their hash projections are not taken for linear layers either. Softmax attention
    is replaced last, since the shift rewrite finds the q/k/v and projection layers through
    the attention blocks.
    """
    # pylint: disable=import-outside-toplevel
    from saddc.passes import (
        BuildMoEFromLinear, LowerBinaryCodedAttention, LowerMoEDispatch, ReplaceSoftmaxAttention,
        RewriteConv2dToMatmul, RewriteLinearToShift,
    )

    attention = config.attention
    passes = [LowerMoEDispatch(config.layer_names, config.reports)]
    if attention is not None:
        form = attention.form if attention.mode == "additive" else None
        passes.append(LowerBinaryCodedAttention(config.reports, attention.mode, form))
    if config.moe is not None:
        passes.append(BuildMoEFromLinear(config.moe, config.layer_names, config.reports))
    if config.shift is not None:
        if "patch-embed" in config.shift.roles:
            passes.append(RewriteConv2dToMatmul(patch_embeddings_only=True))
        passes.append(RewriteLinearToShift(config.shift, config.target, config.layer_names, config.reports))
    if attention is not None:
        passes.append(ReplaceSoftmaxAttention(attention, config.reports))
    return passes


def legalize_passes(config: LowerConfig) -> list:
    from saddc.passes import (  # pylint: disable=import-outside-toplevel
        ConvertToFloat16, EstimateKernelWork, FuseOpsSeparatingScalarCalls, RewriteConv2dToMatmul,
    )

    # TVM's backends bundle legalization with their DLight schedule; saddc keeps them apart so
    # that its own kernels (already scheduled) and tuned records slot in before DLight runs.
    # Mixed precision converts the graph's own ops, so it runs before they are legalized, and
    # before convs become im2col kernels, which it cannot convert around (the constant fold
    # turns its casts of the weights into fp16 constants). A one-group conv is a matmul over
    # patches: so it gets the matmul schedules.
    precision = [ConvertToFloat16(), relax.transform.FoldConstant()] if config.dtype == "float16" else []
    return [
        *precision,
        RewriteConv2dToMatmul(),
        relax.transform.LegalizeOps(legalizations(config.target.is_cuda)),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        FuseOpsSeparatingScalarCalls(),
        relax.transform.FuseTIR(),
        EstimateKernelWork(config.reports),
    ]


def schedule_rules(config: LowerConfig) -> list:
    """The DLight rules of the schedule phase, in order: saddc's kernels first."""
    # pylint: disable=import-outside-toplevel
    from tvm.s_tir import dlight as dl

    from saddc.schedules.cpu_column_reduction import CPUColumnReduction
    from saddc.schedules.cpu_depthwise_conv import CPUDepthwiseConv
    from saddc.schedules.cpu_injective import CPUInjective
    from saddc.schedules.cpu_matmul import CPUMatmul
    from saddc.schedules.cpu_row_reduction import CPURowReduction
    from saddc.schedules.rules import FallThroughOnError, SaddcKernels

    # saddc's kernels carry their own schedules; the rest of the model goes to DLight's rules,
    # on the CPU with saddc's matmul, depthwise-conv, injective, row-reduction (softmax, layer
    # norm) and column-reduction (means over tokens) rules ahead of DLight's. The injective
    # rule goes before DLight's GEMV, which asserts on a reduction over one element (LeViT's
    # K=1 matmuls) that normalizes to an injective block. Every DLight rule but the last falls
    # through to the next one where it fails inside its schedule (``FallThroughOnError``); the
    # last has none to fall to, and its failure stays the compile's.
    if config.target.is_cuda:
        dlight = [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()]
        return [SaddcKernels(), *map(FallThroughOnError, dlight[:-1]), dlight[-1]]
    return [SaddcKernels(), CPUMatmul(), CPUDepthwiseConv(), CPUInjective(), CPURowReduction(), CPUColumnReduction(),
            FallThroughOnError(dl.cpu.GEMV()), dl.cpu.Reduction()]


def schedule_passes(config: LowerConfig) -> list:
    # pylint: disable=import-outside-toplevel
    from tvm.s_tir import dlight as dl

    from saddc.passes import ApplyTuningDatabase, DispatchHandScheduledKernels, PackMatmulWeights

    # Tuned records first: the kernels they schedule are marked scheduled, and DLight skips them
    # (and a record matches its kernel before the CPU's weights are packed into panels).
    tuned = [ApplyTuningDatabase(config.tuning_db, config.reports)] if config.tuning_db else []
    packing = [] if config.target.is_cuda else [PackMatmulWeights(config.target)]
    return [DispatchHandScheduledKernels(config.target), *tuned, *packing, dl.ApplyDefaultSchedule(*schedule_rules(config))]


def vm_lowering_passes(config: LowerConfig) -> list:
    # pylint: disable=import-outside-toplevel
    # TVM 0.27's backend packages do not re-export dataflow_lower_passes, which breaks
    # relax.pipeline.dataflow_lower_passes for every target; use the backend modules.
    from tvm.relax.backend.cpu_generic import pipeline as cpu_backend
    from tvm.relax.backend.cuda import pipeline as cuda_backend

    from saddc.passes import MarkSingleBufferFunctionsNoAlias

    backend = cuda_backend if config.target.is_cuda else cpu_backend
    target = config.target.to_tvm()
    # The shape function the finalize passes create gets tirx.noalias, as every kernel has:
    # TVM's LLVM codegen applies the last function's flag to all (see the pass).
    return [*backend.dataflow_lower_passes(target), *backend.finalize_passes(target),
            MarkSingleBufferFunctionsNoAlias()]


def phases(config: LowerConfig) -> list[Phase]:
    return [
        Phase("cleanup", cleanup_passes(config)),
        Phase("reparameterize", reparameterize_passes(config)),
        Phase("legalize", legalize_passes(config)),
        Phase("schedule", schedule_passes(config)),
        Phase("vm-lowering", vm_lowering_passes(config)),
    ]


def run_phases(
    mod: tvm.IRModule, config: LowerConfig, on_phase: PhaseCallback | None = None, until: str | None = None
) -> tvm.IRModule:
    """Run every phase in order under the target, dumping IR after each when asked; with
    ``until``, stop after the phase of that name."""
    # The passes write saddc's kernels in TVMScript; DLight and MetaSchedule import TVM's.
    cache_fileless_frames()
    dump_dir = Path(config.dump_ir) if config.dump_ir else None
    if dump_dir:
        dump_dir.mkdir(parents=True, exist_ok=True)
        (dump_dir / "00-input.py").write_text(mod.script())
    with config.target.to_tvm():
        for index, phase in enumerate(phases(config), start=1):
            started = time.perf_counter()
            mod = tvm.transform.Sequential(phase.passes, name=f"saddc.{phase.name}")(mod)
            if dump_dir:
                (dump_dir / f"{index:02d}-{phase.name}.py").write_text(mod.script())
            if on_phase:
                on_phase(phase.name, time.perf_counter() - started)
            if phase.name == until:
                break
    return mod


@relax.register_pipeline("saddc")
def saddc_pipeline(config: LowerConfig | None = None) -> tvm.transform.Pass:
    """The saddc pipeline as a Relax module pass (for ``tvm.compile(relax_pipeline=...)``)."""
    config = config or LowerConfig()

    @tvm.transform.module_pass(opt_level=0, name="saddc")
    def _pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return run_phases(mod, config)

    return _pipeline
