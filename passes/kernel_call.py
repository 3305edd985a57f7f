"""Emitting calls to saddc's kernels from Relax passes, and running the mutators that emit them.

A kernel is a TE compute (``schedules/``) turned into a PrimFunc tagged ``saddc.kernel`` (so the
schedule phase gives it its own schedule) and marked opaque (so fusion leaves it whole).
BlockBuilder shares structurally equal PrimFuncs, so layers of one shape call one kernel.
"""

from __future__ import annotations

import tvm
from tvm import relax

from saddc.schedules.rules import HAND_SCHEDULED, KERNEL_ATTR, KERNEL_PARAMS_ATTR
from saddc.target import parse_target

# TVM's OpPatternKind::kOpaque: FuseOps leaves the kernel alone.
_OPAQUE = 8


def emit_kernel(builder: relax.BlockBuilder, compute, *args, kernel: str, name: str | None = None,
                attrs: dict | None = None, **kwargs) -> relax.Var:
    """``builder.emit_te(compute, *args, **kwargs)`` as the saddc kernel ``kernel`` (a key of
    ``schedules.rules.SCHEDULES``), its PrimFunc named ``name`` (default: the compute's name
    without ``_te``)."""
    return builder.emit_te(
        compute, *args, primfunc_name_hint=name or compute.__name__.removesuffix("_te"),
        primfunc_attrs={KERNEL_ATTR: kernel, "op_pattern": _OPAQUE, **(attrs or {})}, **kwargs,
    )


def call_hand_scheduled_kernel(builder: relax.BlockBuilder, kernel: str, params: dict, args: list, out_ty,
                               inplace_index: int | None = None) -> relax.Var:
    """A call of the hand-scheduled kernel ``kernel`` (a key of ``schedules.rules.HAND_SCHEDULED``)
    of shape ``params``, in its form for this machine's CPU: a rewritten module runs here, where
    each lossy pass measures its error, whatever the target; the schedule phase puts the
    target's form in its place (the parameters ride along in ``saddc.kernel_params``). With
    ``inplace_index`` the kernel updates that argument in place (``call_tir_inplace``) instead
    of allocating its output."""
    func = HAND_SCHEDULED[kernel](**params, target=parse_target("llvm").to_tvm())
    func = func.with_attrs({KERNEL_ATTR: kernel, KERNEL_PARAMS_ATTR: params, "op_pattern": _OPAQUE})
    gvar = builder.add_func(func, kernel)
    if inplace_index is None:
        return builder.emit(relax.call_tir(gvar, args, out_ty))
    return builder.emit(relax.call_tir_inplace(gvar, args, inplace_index, out_ty))


def is_kernel_call(expr: relax.Expr) -> bool:
    """Whether ``expr`` calls a kernel: a ``call_tir``, or a ``call_tir_inplace`` (a kernel that
    updates an argument in place)."""
    return isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.name in (
        "relax.call_tir", "relax.call_tir_inplace")


def rewrite_functions(mutator: relax.PyExprMutator, mod: tvm.IRModule) -> tvm.IRModule:
    """Every Relax function of ``mod`` visited by ``mutator`` (built on ``mod``), and the module
    its builder holds then: the PrimFuncs of ``mod`` and the kernels the mutator emitted."""
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gvar, mutator.visit_expr(func))
    return mutator.builder_.get()


def rebind(mutator: relax.PyExprMutator, binding: relax.VarBinding, value: relax.Expr) -> relax.Var:
    """Emit ``value`` in place of ``binding`` and send the binding's uses to it. A binding that
    is the function's output (not a dataflow variable) stays an output."""
    builder = mutator.builder_
    emit = builder.emit if isinstance(binding.var, relax.DataflowVar) else builder.emit_output
    new_var = emit(value, name_hint=binding.var.name)
    mutator.set_var_remap(binding.var, new_var)
    return new_var


def leading_rows(x: relax.Expr) -> tvm.ir.PrimExpr:
    """The product of ``x``'s dimensions but the last: its rows as a 2-D matrix."""
    leading = list(x.ty.shape.values[:-1])
    rows = leading[0]
    for dim in leading[1:]:
        rows = rows * dim
    return rows
