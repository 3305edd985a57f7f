"""Give the ONNX importer's ``Clip`` back as Relax's ``clip``.

Pattern: ``call_tir(minimum, (call_tir(maximum, (x, lo)), hi))`` with ``lo`` and ``hi``
constant scalars, where the two callees are the kernels ``emit_te`` makes of TOPI's
``maximum`` and ``minimum`` for those arguments. TVM's ONNX importer converts ``Clip`` (its
bounds inputs since opset 11) so, which leaves torch's ReLU6 and Hardtanh as two opaque
kernels: the layer-role walk (``find_vit_blocks``) did not see them as an activation, and a
ReLU6 MLP's layers were ``other`` to ``--shift mlp`` and ``--moe mlp``.

Emits: ``clip(x, lo, hi)``, for float tensors and ``lo <= hi`` (the importer's NaN bounds,
unbounded in ONNX, are infinite by then). It legalizes to one elementwise kernel, fused with
its neighbours like any other. A one-sided ``Clip`` and opset 6's (its bounds in the kernel)
stay as they are. Neither form keeps a NaN input NaN, as ONNX Runtime does: the importer's
kernels give the lower bound for it, ``clip`` the upper.
"""

from __future__ import annotations

import tvm
import tvm_ffi
from tvm import relax, topi
from tvm.relax.dpl import is_const, is_gv, is_op, is_tuple, rewrite_call, wildcard
from tvm.relax.utils import gen_call_tir_inputs


@relax.transform.function_pass(opt_level=0, name="saddc.RewriteTEClipToRelaxClip")
class RewriteTEClipToRelaxClip:  # pylint: disable=too-few-public-methods
    """The importer's ``Clip`` as two TOPI kernels -> ``clip`` (see module doc)."""

    def transform_function(self, func: relax.Function, mod: tvm.IRModule, _ctx) -> relax.Function:
        x, lower, upper = wildcard(), is_const(), is_const()
        at_least = is_op("relax.call_tir")(is_gv(), is_tuple([x, lower]))
        clipped = is_op("relax.call_tir")(is_gv(), is_tuple([at_least, upper]))

        def rewrite(expr: relax.Expr, matched: dict) -> relax.Expr:
            if not isinstance(expr, relax.Call):
                return expr  # a variable the matcher saw through: rewritten where it is bound
            lo, hi = (matched[bound].value.numpy() for bound in (lower, upper))
            # Relax's clip takes the lower bound last, ONNX's Clip the upper: they differ where
            # lo > hi (hi everywhere in ONNX).
            if lo.ndim or hi.ndim or lo > hi or not str(matched[x].ty.dtype).startswith("float"):
                return expr
            if not (_calls_te_kernel(mod, matched[at_least], topi.maximum)
                    and _calls_te_kernel(mod, matched[clipped], topi.minimum)):
                return expr
            return relax.op.clip(matched[x], float(lo), float(hi))

        return rewrite_call(clipped, rewrite, func)


def _calls_te_kernel(mod: tvm.IRModule, call: relax.Call, compute) -> bool:
    """Whether ``call`` is a ``call_tir`` of the kernel ``emit_te`` makes of ``compute`` for
    the call's arguments."""
    kernel = mod[call.args[0]]
    expected, _, _ = gen_call_tir_inputs(compute, *call.args[1].fields)
    return tvm_ffi.structural_equal(kernel.without_attr("global_symbol"),
                                    expected.without_attr("global_symbol"), map_free_vars=True)
