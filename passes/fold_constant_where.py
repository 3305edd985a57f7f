"""Fold ``where`` on a constant condition into the branch it selects.

Pattern: ``where(const c, a, b)`` with ``c`` all true or all false, the selected branch of the
same shape and dtype as the ``where`` (no broadcast to undo).

Emits: the selected branch. TVM's ONNX importer normalizes each Gather index as
``where(i < 0, i + n, i)``, with ``n`` read off the data's run-time shape
(``shape_of -> shape_to_tensor -> take -> add``) even where ``i`` is a constant. FoldConstant
folds the condition but not the ``where``, whose other branch is not a constant: in DeiT-Tiny
with a symbolic batch, 108 of the plain module's 325 kernel calls computed three gather indices
per block at run time. With the ``where`` folded, that arithmetic is dead (the cleanup phase's
``DeadCodeElimination`` drops it) and each Gather is a ``take`` at a constant index, which
``saddc.legalizations`` turns into a static slice.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard


@relax.transform.function_pass(opt_level=0, name="saddc.FoldConstantWhere")
class FoldConstantWhere:  # pylint: disable=too-few-public-methods
    """``where(const c, a, b)`` -> ``a`` or ``b`` (see module doc)."""

    def transform_function(self, func: relax.Function, _mod: tvm.IRModule, _ctx) -> relax.Function:
        condition, true_branch, false_branch = is_const(), wildcard(), wildcard()
        pattern = is_op("relax.where")(condition, true_branch, false_branch)

        def select(expr: relax.Expr, matched: dict) -> relax.Expr:
            values = matched[condition].value.numpy()
            chosen = matched[true_branch] if values.all() else matched[false_branch] if not values.any() else None
            return chosen if chosen is not None and tvm_ffi.structural_equal(chosen.ty, expr.ty) else expr

        return rewrite_call(pattern, select, func)
