"""Rewrite a ViT's patch embedding convolution into a matmul over flattened patches.

Pattern: ``conv2d(x, const W)`` on a function input ``x`` (NCHW, OIHW), with stride equal to
the kernel size, no padding, no dilation and one group: each output pixel sees one disjoint
patch, so the conv is a linear layer applied to every patch.

Emits (B, C, H, W) -> reshape (B, C, H/p, p, W/q, q) -> permute (B, H/p, W/q, C, p, q) ->
reshape (B, H/p, W/q, C*p*q) -> ``matmul(_, const W')`` with ``W'`` = W reshaped (O, C*p*q)
and transposed -> permute back to (B, O, H/p, W/q). The result equals the conv up to float
summation order; the matmul is then an ordinary linear layer (role ``patch-embed``) that the
shift rewrite can select.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, wildcard


def _is_patchify(call: relax.Call) -> bool:
    attrs = call.attrs
    kernel = [int(d) for d in call.args[1].ty.shape.values[2:]]
    return (
        attrs.data_layout == "NCHW" and attrs.kernel_layout == "OIHW"
        and attrs.out_layout == "NCHW" and int(attrs.groups) == 1
        and [int(s) for s in attrs.strides] == kernel
        and all(int(p) == 0 for p in attrs.padding)
        and all(int(d) == 1 for d in attrs.dilation)
        and all(isinstance(d, tvm.tirx.IntImm) for d in call.args[0].ty.shape.values[2:])
        and all(int(d) % k == 0 for d, k in zip(call.args[0].ty.shape.values[2:], kernel))
    )


@tvm.transform.module_pass(opt_level=0, name="saddc.RewritePatchEmbeddingToMatmul")
class RewritePatchEmbeddingToMatmul:  # pylint: disable=too-few-public-methods
    """Patchifying conv2d on a model input -> rearrange + matmul with a constant weight."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        conv = is_op("relax.nn.conv2d")(wildcard(), is_const())

        @relax.expr_functor.mutator
        class Rewriter(relax.PyExprMutator):
            def __init__(self, module, inputs):
                super().__init__(module)
                self.inputs = inputs

            def visit_call_(self, call):  # pylint: disable=arguments-renamed
                call = super().visit_call_(call)
                if not (conv.match(call) and call.args[0] in self.inputs and _is_patchify(call)):
                    return call
                x, weight = call.args
                batch, channels, height, width = x.ty.shape.values
                out_channels, _, ph, pw = (int(d) for d in weight.ty.shape.values)
                rows, cols = int(height) // ph, int(width) // pw
                patches = relax.op.reshape(x, (batch, channels, rows, ph, cols, pw))
                patches = self.builder_.emit(relax.op.permute_dims(patches, [0, 2, 4, 1, 3, 5]))
                patches = self.builder_.emit(
                    relax.op.reshape(patches, (batch, rows, cols, channels * ph * pw))
                )
                matrix = weight.value.numpy().reshape(out_channels, -1).T
                product = self.builder_.emit(
                    relax.op.matmul(patches, relax.const(np.ascontiguousarray(matrix)))
                )
                return relax.op.permute_dims(product, [0, 3, 1, 2])

        for gvar, func in mod.functions_items():
            if isinstance(func, relax.Function):
                rewriter = Rewriter(mod, set(func.params))
                mod[gvar] = rewriter.visit_expr(func)
        return relax.transform.Normalize()(mod)
