"""Run a model's dense ops in fp16 with fp32 accumulation (``--dtype float16``).

Pattern: every Relax function of a module that calls no saddc kernel. Emits TVM's
``ToMixedPrecision(out_dtype="float32")`` of it: matmuls and convs take fp16 inputs and
accumulate in fp32, elementwise ops follow their inputs, softmax and other reductions stay
fp32; the function's inputs and outputs keep their dtypes.

TVM 0.27's ToMixedPrecision fails on a ``call_tir`` whose arguments it re-types (it reads the
callee as a tensor), and saddc's kernels are ``call_tir`` calls, so a module that calls one is
refused with a clear error instead of converted in part.
"""

from __future__ import annotations

import tvm
from tvm import relax

from saddc.errors import ConfigError


@tvm.transform.module_pass(opt_level=0, name="saddc.ConvertToFloat16")
class ConvertToFloat16:  # pylint: disable=too-few-public-methods
    """Whole-module fp16 with fp32 accumulation, for modules without saddc kernels (see above)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        call_tir = tvm.ir.Op.get("relax.call_tir")
        kernels = {
            str(call.args[0].name_hint)
            for func in mod.functions.values() if isinstance(func, relax.Function)
            for call in _calls(func) if call.op.same_as(call_tir)
        }
        if kernels:
            raise ConfigError(
                "--dtype float16 does not combine with saddc's kernels yet (here: "
                f"{', '.join(sorted(kernels)[:3])}{' ...' if len(kernels) > 3 else ''}): TVM's mixed-precision "
                "pass cannot convert around them; compile the rewrites in float32"
            )
        return relax.transform.ToMixedPrecision(out_dtype="float32")(mod)


def _calls(func: relax.Function) -> list[relax.Call]:
    calls = []
    relax.analysis.post_order_visit(func, lambda node: calls.append(node) if isinstance(node, relax.Call) else None)
    return calls
