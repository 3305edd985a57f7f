"""Fold a constant's broadcast into the elementwise op that broadcasts anyway.

Pattern: ``op(x, broadcast_to(const c, shape))`` or ``op(broadcast_to(const c, shape), x)``, for
``op`` one of add, subtract, multiply, divide, where the result has ``x``'s shape and dtype
(the broadcast adds no dimension the op would not).

Emits: ``op(x, c)``, the constant broadcast by the op itself. A broadcast to a run-time shape
(a symbolic batch) is not a constant, so FoldConstant leaves it, and the patterns that look for
a constant operand miss it: scaled-dot-product attention's all-true mask becomes
``add(scores, broadcast_to(0, (batch, 1, n, n)))`` (``FoldConstantWhere``), which the attention
recognizer takes for a mask computed from activations. Folded, it is ``add(scores, 0)``, the
all-zero mask it recognizes, and the kernel reads no broadcast tensor.
"""

from __future__ import annotations

import functools

import tvm
import tvm_ffi
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

_OPS = {"relax.add": relax.op.add, "relax.subtract": relax.op.subtract,
        "relax.multiply": relax.op.multiply, "relax.divide": relax.op.divide}


@relax.transform.function_pass(opt_level=0, name="saddc.FoldConstantBroadcasts")
class FoldConstantBroadcasts:  # pylint: disable=too-few-public-methods
    """``op(x, broadcast_to(const c, s))`` -> ``op(x, c)`` (see module doc)."""

    def transform_function(self, func: relax.Function, _mod: tvm.IRModule, _ctx) -> relax.Function:
        constant = is_const()
        broadcast = is_op("relax.broadcast_to")(constant, wildcard())
        patterns = [is_op(name)(wildcard(), broadcast) | is_op(name)(broadcast, wildcard()) for name in _OPS]
        pattern = functools.reduce(lambda left, right: left | right, patterns)
        # The matcher takes add and multiply in either operand order: the broadcast operand is
        # found by what it is bound to, not by its position in the pattern.
        var2val = relax.analysis.get_var2val(func)

        def fold(expr: relax.Expr, matched: dict) -> relax.Expr:
            for position, arg in enumerate(expr.args):
                other = expr.args[1 - position]
                if var2val.get(arg, arg).same_as(matched[broadcast]) and tvm_ffi.structural_equal(other.ty, expr.ty):
                    args = list(expr.args)
                    args[position] = matched[constant]
                    return _OPS[expr.op.name](*args)
            return expr

        return rewrite_call(pattern, fold, func)
