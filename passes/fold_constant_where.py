"""Fold ``where`` on a constant condition into the branch it selects.

Pattern: ``where(c, a, b)`` with ``c`` a constant, or a constant broadcast to a run-time shape
(``broadcast_to(const, shape)``), all true or all false.

Emits: the selected branch, broadcast to the ``where``'s shape when it is smaller. TVM's ONNX
importer normalizes each Gather index as ``where(i < 0, i + n, i)``, with ``n`` read off the
data's run-time shape (``shape_of -> shape_to_tensor -> take -> add``) even where ``i`` is a
constant. FoldConstant folds the condition but not the ``where``, whose other branch is not a
constant: in DeiT-Tiny with a symbolic batch, 108 of the plain module's 325 kernel calls
computed three gather indices per block at run time. With the ``where`` folded, that
arithmetic is dead (the cleanup phase's ``DeadCodeElimination`` drops it) and each Gather is a
``take`` at a constant index, which ``saddc.legalizations`` turns into a static slice. The
broadcast condition is the all-masked-row guard of ONNX's opset-23 ``Attention`` in a
symbolic-batch export, ``where(broadcast_to(false), 0, p)`` once ``FoldConstantBroadcasts`` has
evaluated it.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard


@relax.transform.function_pass(opt_level=0, name="saddc.FoldConstantWhere")
class FoldConstantWhere:  # pylint: disable=too-few-public-methods
    """``where(const c, a, b)`` -> ``a`` or ``b``, broadcast as the ``where`` did (see module doc)."""

    def transform_function(self, func: relax.Function, _mod: tvm.IRModule, _ctx) -> relax.Function:
        constant, true_branch, false_branch = is_const(), wildcard(), wildcard()
        condition = constant | is_op("relax.broadcast_to")(constant, wildcard())
        pattern = is_op("relax.where")(condition, true_branch, false_branch)

        def select(expr: relax.Expr, matched: dict) -> relax.Expr:
            if not isinstance(expr, relax.Call):
                return expr  # a variable the matcher saw through: folded where it is bound
            values = matched[constant].value.numpy()
            chosen = matched[true_branch] if values.all() else matched[false_branch] if not values.any() else None
            if chosen is None or tvm_ffi.structural_equal(chosen.ty, expr.ty):
                return expr if chosen is None else chosen
            return relax.op.broadcast_to(chosen, expr.ty.shape)

        return rewrite_call(pattern, select, func)
