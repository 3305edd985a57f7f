"""``FuseOps``, with a kernel called with a scalar argument kept out of a group whose symbolic
dims come in as shape variables.

Pattern: a group ``FuseOps`` makes that takes both a scalar parameter (a ``call_tir`` inside it
passes a symbolic dim as a ``PrimValue``: ``shape_to_tensor(n)``) and a shape parameter (the
``tir_vars`` of dims no tensor argument carries: ``arange`` to a length computed at run time).

Emits: the grouping ``FuseOps`` makes with each kernel called with a scalar in such a group
marked opaque, so that it is a kernel of its own; every other group as ``FuseOps`` makes it.

Why: TVM 0.27's ``FuseTIR`` fails on such a group with an internal error (``RenewDefs``:
"VarRemapGet(source) == nullptr", a variable defined twice). Swin's dynamo export with a
symbolic batch has one: its pooled output is gathered at indices ``arange(n)`` normalized by
``shape_to_tensor`` of the batch. Groups of either kind alone fuse as they should.
"""

from __future__ import annotations

import tvm
from tvm import relax

# TVM's OpPatternKind.kOpaque: FuseOps fuses nothing into or around such a kernel.
OPAQUE = 8


@tvm.transform.module_pass(opt_level=0, name="saddc.FuseOpsSeparatingScalarCalls")
class FuseOpsSeparatingScalarCalls:  # pylint: disable=too-few-public-methods
    """``relax.transform.FuseOps`` without groups that take a scalar and a shape (see module doc)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        while True:
            fused = relax.transform.FuseOps()(mod)
            separated = _scalar_calls_in_shape_groups(fused)
            if not separated:
                return fused
            mod = mod.clone()
            for name in separated:
                gvar = mod.get_global_var(name)
                mod.update_func(gvar, mod[gvar].with_attr("op_pattern", OPAQUE))


def _scalar_calls_in_shape_groups(mod: tvm.IRModule) -> set[str]:
    """Names of the kernels called with a scalar argument in the groups of ``mod`` that take
    both a scalar and a shape parameter."""
    names = set()
    for func in mod.functions.values():
        if not isinstance(func, relax.Function) or func.attrs is None or not func.attrs.get("Primitive"):
            continue
        kinds = {type(param.ty) for param in func.params}
        if not {tvm.ir.PrimType, relax.ShapeType} <= kinds:
            continue
        for block in func.body.blocks:
            for binding in block.bindings:
                call = binding.value
                is_kernel_call = isinstance(call, relax.Call) and len(call.args) > 1 and isinstance(call.args[1], relax.Tuple)
                arguments = call.args[1].fields if is_kernel_call else []
                if any(isinstance(argument.ty, tvm.ir.PrimType) for argument in arguments):
                    names.add(call.args[0].name_hint)
    return names
