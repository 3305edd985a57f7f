"""Rewrite 2-D convolutions with one group into matmuls over their patches.

Pattern: ``conv2d(x, const W)`` (NCHW data, OIHW weight, one group, constant height and width).

Emits the patches of ``x``, (B, OH, OW, C*kh*kw) -> ``matmul(_, const W')`` with ``W'`` = W
reshaped (O, C*kh*kw) and transposed (the conv's ``out_dtype`` kept) -> ``permute_dims`` back to
(B, O, OH, OW). The patches are:
- disjoint ones (stride equal to the kernel, no padding or dilation, the kernel tiling the
  input): reshape (B, C, OH, kh, OW, kw) -> permute (B, OH, OW, C, kh, kw) -> reshape; data
  movement only, and what the linear-layer finder reads as a patch embedding (role
  ``patch-embed``) when ``x`` is the model input;
- otherwise an im2col kernel (``call_te``): each output pixel's receptive field, zeros where it
  overlaps the padding.

The result equals the conv up to float summation order. In the legalize phase this gives every
such conv (ViT and PVT patch embeddings, PVT's spatial-reduction convs) the matmul schedules;
TVM legalizes a conv to a direct loop nest that nothing schedules. With
``patch_embeddings_only`` (the reparameterize phase, for ``--shift patch-embed``) only
disjoint-patch convs on a model input are rewritten, so the shift rewrite sees a linear layer
there and nowhere else.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax, te, tirx
from tvm.relax.dpl import is_const, is_op, wildcard

from saddc.passes.kernel_call import rewrite_functions


def _is_plain_conv(call: relax.Call) -> bool:
    attrs = call.attrs
    return (
        attrs.data_layout == "NCHW" and attrs.kernel_layout == "OIHW" and attrs.out_layout == "NCHW"
        and int(attrs.groups) == 1
        and all(isinstance(d, tvm.tirx.IntImm) for d in call.args[0].ty.shape.values[2:])
    )


def _is_patchify(call: relax.Call) -> bool:
    attrs = call.attrs
    kernel = [int(d) for d in call.args[1].ty.shape.values[2:]]
    return (
        [int(s) for s in attrs.strides] == kernel
        and all(int(p) == 0 for p in attrs.padding)
        and all(int(d) == 1 for d in attrs.dilation)
        and all(int(d) % k == 0 for d, k in zip(call.args[0].ty.shape.values[2:], kernel))
    )


def im2col_te(x: te.Tensor, kernel: tuple[int, int], strides, padding, dilation) -> te.Tensor:
    """(B, OH, OW, C, kh, kw): the receptive field of each output pixel of a conv over ``x``
    (B, C, H, W), with ``padding`` (top, left, bottom, right) read as zeros."""
    batch, channels, height, width = x.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, strides, dilation
    top, left, bottom, right = padding
    rows = (height + top + bottom - dh * (kh - 1) - 1) // sh + 1
    cols = (width + left + right - dw * (kw - 1) - 1) // sw + 1

    def receptive_field(b, r, s, c, i, j):
        row, col = r * sh + i * dh - top, s * sw + j * dw - left
        inside = tirx.all(row >= 0, row < height, col >= 0, col < width)
        return tirx.if_then_else(inside, x[b, c, row, col], tirx.const(0, x.dtype))

    return te.compute((batch, rows, cols, channels, kh, kw), receptive_field, name="im2col")


@tvm.transform.module_pass(opt_level=0, name="saddc.RewriteConv2dToMatmul")
class RewriteConv2dToMatmul:  # pylint: disable=too-few-public-methods
    """One-group conv2d with a constant weight -> patches + matmul (see the module doc)."""

    def __init__(self, patch_embeddings_only: bool = False):
        self.patch_embeddings_only = patch_embeddings_only

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        conv = is_op("relax.nn.conv2d")(wildcard(), is_const())
        patch_embeddings_only = self.patch_embeddings_only

        @relax.expr_functor.mutator
        class Rewriter(relax.PyExprMutator):
            def __init__(self, module, inputs):
                super().__init__(module)
                self.inputs = inputs

            def visit_call_(self, call):  # pylint: disable=arguments-renamed
                call = super().visit_call_(call)
                if not (conv.match(call) and _is_plain_conv(call)):
                    return call
                disjoint = _is_patchify(call)
                if patch_embeddings_only and not (disjoint and call.args[0] in self.inputs):
                    return call
                x, weight = call.args
                out_channels, channels, kh, kw = (int(d) for d in weight.ty.shape.values)
                if disjoint:
                    batch, _, height, width = x.ty.shape.values
                    rows, cols = int(height) // kh, int(width) // kw
                    patches = relax.op.reshape(x, (batch, channels, rows, kh, cols, kw))
                    patches = self.builder_.emit(relax.op.permute_dims(patches, [0, 2, 4, 1, 3, 5]))
                else:
                    attrs = call.attrs
                    patches = self.builder_.emit_te(
                        im2col_te, x, (kh, kw), [int(s) for s in attrs.strides],
                        [int(p) for p in attrs.padding], [int(d) for d in attrs.dilation],
                        primfunc_name_hint="im2col")
                batch, rows, cols = patches.ty.shape.values[:3]
                patches = self.builder_.emit(
                    relax.op.reshape(patches, (batch, rows, cols, channels * kh * kw)))
                matrix = weight.value.numpy().reshape(out_channels, -1).T
                product = self.builder_.emit(relax.op.matmul(
                    patches, relax.const(np.ascontiguousarray(matrix)), out_dtype=call.attrs.out_dtype))
                return relax.op.permute_dims(product, [0, 3, 1, 2])

        inputs = {param for func in mod.functions.values() if isinstance(func, relax.Function)
                  for param in func.params}
        return relax.transform.Normalize()(rewrite_functions(Rewriter(mod, inputs), mod))
