"""Give every ``take`` in ``fast`` mode the ``clip`` mode.

Pattern: ``take(x, i, axis, mode="fast")``, any indices.

Emits: ``take(x, i, axis, mode="clip")``. The modes agree on indices in range; out of range,
``fast`` is undefined (it reads out of bounds) and ``clip`` is defined, so the rewrite refines
the program. TVM's ONNX importer gives every Gather ``fast`` mode, and TVM logs a warning each
time it legalizes a ``fast`` take, which FoldConstant does for every take it visits: DeiT-Tiny's
36 Gathers printed 74 warnings a compile. ``clip`` costs a clamp of each index read, folded
away for a constant index (``saddc.legalizations``); it runs before the cleanup phase's
FoldConstant.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, rewrite_call, wildcard


@relax.transform.function_pass(opt_level=0, name="saddc.ClipFastModeTakes")
class ClipFastModeTakes:  # pylint: disable=too-few-public-methods
    """``take(.., mode="fast")`` -> ``take(.., mode="clip")`` (see module doc)."""

    def transform_function(self, func: relax.Function, _mod: tvm.IRModule, _ctx) -> relax.Function:
        pattern = is_op("relax.take")(wildcard(), wildcard())

        def clip(expr: relax.Expr, matched: dict) -> relax.Expr:
            take = matched[pattern]  # ``expr`` may be the variable bound to it
            if str(take.attrs.mode) != "fast":
                return expr
            return relax.op.take(*take.args, axis=take.attrs.axis, mode="clip")

        return rewrite_call(pattern, clip, func)
