"""Estimate each kernel's arithmetic, for the achieved FLOP rates ``saddc bench`` reports.

An analysis at the end of the legalize phase, where kernels are still plain loop nests (the
schedules fuse a dynamic batch into other loops, which TVM's estimate then counts once). It
records TVM's ``estimate_tir_flops`` of every PrimFunc, per call, with symbolic dimensions (a
dynamic batch) set to one: per image for a ViT's kernels, whose work grows with the batch; and
how many times the model calls each (a block's kernels, once a block), for the model's total.
Kernels written with their schedule in place (the MoE dispatch's, whose loop bounds are the
routing's token counts) are left out: their loop nests do not state their work.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import tvm
from tvm import relax

from saddc.passes.kernel_call import is_kernel_call

# The key of the report in LowerConfig.reports (beside the rewrites' reports).
KERNEL_WORK_REPORT = "kernel_flops"


@dataclass
class KernelWork:
    """Estimated operations of one call of each kernel, symbolic extents taken as one."""

    flops: dict[str, float] = field(default_factory=dict)
    calls: collections.Counter = field(default_factory=collections.Counter)  # kernel -> calls a model call
    symbolic: bool = False  # whether any kernel had a symbolic dimension (taken as one)

    def summary_lines(self) -> list[str]:
        total = sum(flops * self.calls[name] for name, flops in self.flops.items())
        return [f"kernel work:       {total / 1e9:.3g} GFLOP a call"
                f"{', symbolic dims as 1' if self.symbolic else ''} (estimated for {len(self.flops)} kernels)"]

    def to_json(self) -> dict:
        return self.flops


@tvm.transform.module_pass(opt_level=0, name="saddc.EstimateKernelWork")
class EstimateKernelWork:  # pylint: disable=too-few-public-methods
    """Record each unscheduled kernel's estimated operations in ``reports`` (see the module doc)."""

    def __init__(self, reports: dict):
        self.reports = reports

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        from tvm.s_tir.analysis import estimate_tir_flops  # pylint: disable=import-outside-toplevel

        work = KernelWork()
        for gvar, func in mod.functions_items():
            if isinstance(func, tvm.tirx.PrimFunc) and not (func.attrs or {}).get("tirx.is_scheduled", False):
                specialized = _symbolic_dims_as_one(func)
                work.symbolic |= not specialized.same_as(func)
                work.flops[gvar.name_hint] = float(estimate_tir_flops(tvm.IRModule({"main": specialized})))
        for func in mod.functions.values():
            if isinstance(func, relax.Function):
                relax.analysis.post_order_visit(func, lambda expr: _count_kernel_call(expr, work.calls))
        self.reports[KERNEL_WORK_REPORT] = work
        return mod


def _count_kernel_call(expr: relax.Expr, calls: collections.Counter) -> None:
    if is_kernel_call(expr):
        calls[expr.args[0].name_hint] += 1


def _symbolic_dims_as_one(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """``func`` specialized with its symbolic dimensions set to one (its integer scalar
    parameters, and the dimensions of its buffers that are a bare variable): a loop over
    ``batch * 197`` rows then counts 197, where the estimate counts a loop of symbolic extent
    once."""
    from tvm.tirx.analysis import undefined_vars  # pylint: disable=import-outside-toplevel

    def bare(extent) -> bool:
        variables = undefined_vars(extent, [])
        return len(variables) == 1 and variables[0].same_as(extent)

    bindings = {}
    for param in func.params:
        if not isinstance(param.ty, tvm.tirx.BufferType):
            if str(param.ty.dtype).startswith("int"):
                bindings[param] = tvm.tirx.IntImm(param.ty.dtype, 1)
        elif any(bare(extent) for extent in param.ty.shape):
            shape = [tvm.tirx.IntImm(extent.ty.dtype, 1) if bare(extent) else extent for extent in param.ty.shape]
            bindings[param] = tvm.tirx.decl_buffer(shape, param.ty.dtype, "buffer")
    return func.specialize(bindings) if bindings else func
