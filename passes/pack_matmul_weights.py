"""Pack the constant weights of CPU matmuls into the column panels their schedule reads.

Pattern: a ``call_tir`` of a kernel the schedule phase's rules have yet to schedule, which the
CPU matmul rule (``schedules/cpu_matmul.py``) tiles into register blocks without padding its
columns, or of a dense MoE expert's segment kernel (``segmented_gemm.dense_segment``, whose
CPU form is in place by then), whose weight ``W[k, j]`` (K x N) every call site passes as a
constant.

Emits: the kernel reading ``Wp[j // NR, k, j % NR]`` (``read_weight_in_panels``; NR, the
rule's panel width, 64 columns with AVX-512; for a segment, its channel block's width) and, at
each call site, the constant packed so at compile time (``segmented_gemm.pack_panels``).

Why: the register block's inner loop reads NR columns of ``W`` for each ``k``. In ``W``'s own
layout those are ``N`` floats apart from one ``k`` to the next, a new page every ``k`` for a
wide weight and rows that fall in the same few cache sets, so the panel does not stay in cache
while the block walks down the rows. Packed, a panel is one contiguous run of K x NR floats.
ViT-Base's MLP at batch 1 (both cores of a two-core AVX-512 Xeon): fc2 (197 x 3072 x 768)
9.3 -> 2.9 ms a call, fc1 (197 x 768 x 3072) 7.7 -> 3.1 ms, its dense MoE segments 2.3-2.8x;
DeiT-Tiny's layers 1.06-1.12x. The sums are the same, in the same order. The CPU only: CUDA's
schedules read weights their own way. A tuning database's records match the kernels as
legalized, so they are applied before this pass, and the kernels they schedule keep their
layout.
"""

from __future__ import annotations

import tvm
from tvm import relax

from saddc.passes.apply_tuning_database import needs_schedule
from saddc.passes.kernel_call import is_kernel_call, rewrite_functions
from saddc.schedules import segmented_gemm
from saddc.schedules.cpu_matmul import read_weight_in_panels
from saddc.schedules.rules import KERNEL_ATTR, KERNEL_PARAMS_ATTR
from saddc.schedules.segmented_gemm import cpu_panel, pack_panels
from saddc.schedules.simd import target_lanes
from saddc.target import TargetSpec

DENSE_SEGMENT = "dense_segment"
# The weight's position among a dense segment's parameters (xs, offsets, weight, bias, ys).
DENSE_SEGMENT_WEIGHT = 2


@tvm.transform.module_pass(opt_level=0, name="saddc.PackMatmulWeights")
class PackMatmulWeights:  # pylint: disable=too-few-public-methods
    """CPU matmul kernels with a constant weight read it from packed column panels (see the
    module doc)."""

    def __init__(self, target: TargetSpec):
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        target = self.target.to_tvm()
        calls = _kernel_calls(mod)
        packed = {}
        for gvar, func in mod.functions_items():
            if isinstance(func, tvm.tirx.PrimFunc) and gvar in calls:
                found = _reading_panels(func, target)
                if found and all(isinstance(args[found[1]], tvm.ir.GenericConst) for args in calls[gvar]):
                    packed[gvar] = found
        if not packed:
            return mod
        # A kernel's GlobalVar carries its signature, which packing changes: each packed kernel
        # gets a new one, under the same name (a BlockBuilder of its own types it).
        renamed = {gvar: relax.BlockBuilder().add_func(func, gvar.name_hint) for gvar, (func, _, _) in packed.items()}
        rewritten = rewrite_functions(_PanelArguments(mod, packed, renamed), mod)
        functions = {gvar: func for gvar, func in rewritten.functions_items() if gvar not in packed}
        functions.update({renamed[gvar]: func for gvar, (func, _, _) in packed.items()})
        return tvm.IRModule(functions, attrs=rewritten.attrs)


def _reading_panels(func: tvm.tirx.PrimFunc, target) -> tuple[tvm.tirx.PrimFunc, int, int] | None:
    """``func`` reading its weight from column panels, the weight's parameter index and the
    panels' width; None where ``func`` takes no weight so."""
    attrs = func.attrs or {}
    if attrs.get(KERNEL_ATTR) == DENSE_SEGMENT:
        params = {str(name): int(value) for name, value in attrs[KERNEL_PARAMS_ATTR].items()}
        panel = cpu_panel(params["out_features"], target)
        kernel = segmented_gemm.dense_segment(**params, target=target, panels=panel)
        return kernel.with_attrs(dict(attrs)), DENSE_SEGMENT_WEIGHT, panel
    return read_weight_in_panels(func, target_lanes(target)) if needs_schedule(func) else None


def _kernel_calls(mod: tvm.IRModule) -> dict:
    """Each kernel the Relax functions call -> its calls' argument lists."""
    calls: dict = {}

    def visit(expr):
        if is_kernel_call(expr):
            calls.setdefault(expr.args[0], []).append(list(expr.args[1].fields))

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return calls


@relax.expr_functor.mutator
class _PanelArguments(relax.PyExprMutator):
    """Calls of the packed kernels with their weight constants packed (once per constant)."""

    def __init__(self, mod: tvm.IRModule, packed: dict, renamed: dict):
        super().__init__(mod)
        self.packed = packed
        self.renamed = renamed
        self.panels: dict = {}

    def visit_call_(self, call):  # pylint: disable=arguments-renamed
        call = super().visit_call_(call)
        if not (is_kernel_call(call) and call.args[0] in self.packed):
            return call
        _, index, panel = self.packed[call.args[0]]
        args = list(call.args[1].fields)
        weight = args[index]
        if (weight, panel) not in self.panels:
            self.panels[weight, panel] = relax.const(pack_panels(weight.value.numpy(), panel))
        args[index] = self.panels[weight, panel]
        return relax.Call(call.op, [self.renamed[call.args[0]], relax.Tuple(args)], call.attrs, call.ty_args)
