"""Fold constants broadcast to a run-time shape.

A broadcast to a run-time shape (a symbolic batch) is not a constant, so FoldConstant leaves
it and everything computed from it, and the patterns that look for a constant operand miss it.
Two rewrites:

- Evaluate: ``max``/``min`` of ``broadcast_to(const c, shape)``, and a comparison or a
  ``where`` of such broadcasts and constants, are computed on the constants and broadcast:
  ``broadcast_to(const f(c), result shape)`` (a maximum or minimum over copies of values is
  that over the values).
- Fold into the use: ``op(x, broadcast_to(const c, shape))`` (either operand order), ``op`` one
  of add, subtract, multiply, divide, where the result has ``x``'s shape and dtype (the
  broadcast adds no dimension the op would not), becomes ``op(x, c)``, the constant broadcast by
  the op itself.

Scaled-dot-product attention in a symbolic-batch export adds an all-true mask broadcast to the
batch, ``add(scores, where(broadcast_to(true), 0, -inf))``: evaluated and folded into the add,
it is the all-zero mask the attention recognizer takes (before, it took it for a mask computed
from activations), and the kernel reads no broadcast tensor. ONNX's opset-23 ``Attention``
also guards fully masked rows with ``where(max(mask) == -inf, 0, p)``: evaluated, the guard's
condition is a broadcast ``false``, which ``FoldConstantWhere`` (run next) folds to ``p``.
"""

from __future__ import annotations

import functools

import numpy as np
import tvm
import tvm_ffi
from tvm import relax
from tvm.relax.dpl import is_op, rewrite_call, wildcard

_FOLDED_INTO_USE = {"relax.add": relax.op.add, "relax.subtract": relax.op.subtract,
                    "relax.multiply": relax.op.multiply, "relax.divide": relax.op.divide}
_COMPARISONS = {"relax.equal": np.equal, "relax.not_equal": np.not_equal, "relax.less": np.less,
                "relax.less_equal": np.less_equal, "relax.greater": np.greater,
                "relax.greater_equal": np.greater_equal}
_REDUCTIONS = {"relax.max": np.max, "relax.min": np.min}
_EVALUATED = {**_COMPARISONS, "relax.where": np.where}


def _any_of(patterns):
    return functools.reduce(lambda left, right: left | right, patterns)


@relax.transform.function_pass(opt_level=0, name="saddc.FoldConstantBroadcasts")
class FoldConstantBroadcasts:  # pylint: disable=too-few-public-methods
    """Evaluate ops on constants broadcast to a run-time shape; fold such a broadcast into the
    elementwise op that uses it (see module doc)."""

    def transform_function(self, func: relax.Function, _mod: tvm.IRModule, _ctx) -> relax.Function:
        evaluated = _any_of([is_op(name)(wildcard(), wildcard()) for name in _COMPARISONS]
                            + [is_op("relax.where")(wildcard(), wildcard(), wildcard())]
                            + [is_op(name)(wildcard()) for name in _REDUCTIONS])
        while True:  # until no evaluation is left: each reads the bindings the last one made
            evaluations = []
            func = rewrite_call(evaluated, functools.partial(_evaluate, relax.analysis.get_var2val(func), evaluations), func)
            if not evaluations:
                break
        folded = _any_of([is_op(name)(wildcard(), wildcard()) for name in _FOLDED_INTO_USE])
        return rewrite_call(folded, functools.partial(_fold_into_use, relax.analysis.get_var2val(func)), func)


def _broadcast_constant(var2val: dict, expr: relax.Expr) -> relax.Expr | None:
    """The constant ``c`` when ``expr`` is (bound to) ``broadcast_to(const c, shape)``."""
    value = var2val.get(expr, expr)
    if (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == "relax.broadcast_to"
            and isinstance(value.args[0], tvm.ir.GenericConst)):
        return value.args[0]
    return None


def _evaluate(var2val: dict, evaluations: list, expr: relax.Expr, _matched: dict) -> relax.Expr:
    if not isinstance(expr, relax.Call):
        return expr  # a variable the matcher saw through: its binding is rewritten where it is bound
    broadcast = [_broadcast_constant(var2val, arg) for arg in expr.args]
    if not any(broadcast):
        return expr
    constants = [b if b is not None else var2val.get(arg, arg) for b, arg in zip(broadcast, expr.args)]
    if not all(isinstance(c, tvm.ir.GenericConst) for c in constants):
        return expr
    values = [c.value.numpy() for c in constants]
    if expr.op.name in _REDUCTIONS:
        # Reduce over the broadcast's axes: the constant at the broadcast's rank.
        rank = len(expr.args[0].ty.shape.values)
        value = values[0].reshape((1,) * (rank - values[0].ndim) + values[0].shape)
        axes = tuple(int(a) for a in expr.attrs.axis) if expr.attrs.axis is not None else None
        result = _REDUCTIONS[expr.op.name](value, axis=axes, keepdims=bool(expr.attrs.keepdims))
    else:
        result = _EVALUATED[expr.op.name](*values)
    evaluations.append(expr)
    return relax.op.broadcast_to(relax.const(np.asarray(result)), expr.ty.shape)


def _fold_into_use(var2val: dict, expr: relax.Expr, _matched: dict) -> relax.Expr:
    # The matcher takes add and multiply in either operand order: the broadcast operand is
    # found by what it is bound to, not by its position in the pattern.
    if not isinstance(expr, relax.Call):
        return expr  # as in _evaluate
    for position, arg in enumerate(expr.args):
        constant = _broadcast_constant(var2val, arg)
        if constant is not None and tvm_ffi.structural_equal(expr.args[1 - position].ty, expr.ty):
            args = list(expr.args)
            args[position] = constant
            return _FOLDED_INTO_USE[expr.op.name](*args)
    return expr
