"""saddc's legalizations of Relax ops, in place of TVM's for the calls they improve on; every
other call of the op keeps TVM's legalization."""

from __future__ import annotations

from typing import Callable

import tvm
from tvm import relax, tirx, topi

# A legalization that returns None leaves the call to TVM's.
Legalization = Callable[[relax.BlockBuilder, relax.Call], "relax.Expr | None"]


def legalizations(is_cuda: bool) -> dict:
    """The ``LegalizeOps`` overrides for a target: constant-index takes everywhere, fast float32
    math on the CPU."""
    overrides = {"relax.take": _take_at_constant_index}
    if not is_cuda:
        overrides.update({"relax.erf": _fast_erf, "relax.nn.softmax": _fast_softmax})
    return {op: _or_tvm_default(op, legalize) for op, legalize in overrides.items()}


def _or_tvm_default(op: str, legalize: Legalization) -> Callable:
    default = tvm.ir.Op.get(op).get_attr("FLegalize")

    def legalize_or_default(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        legalized = legalize(bb, call)
        return default(bb, call) if legalized is None else legalized

    return legalize_or_default


def _take_at_constant_index(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """``take(x, const i, axis)`` with a scalar ``i`` and a static extent ``n`` on ``axis``:
    ``x[..., i', ...]``, a static slice, ``i'`` what the op's mode makes of ``i`` (``wrap``:
    ``i mod n``; ``clip``: clamped; ``fast``/``nan``: ``i`` when in range, else TVM's
    legalization). A ViT's Gathers (q/k/v from the fused projection, the class token) are such
    takes after the cleanup phase; TVM's legalization reads the index from a buffer at run
    time. ``topi.take`` of the index as a compile-time constant in range is the slice."""
    data, indices = call.args
    shape = data.ty.shape
    if not isinstance(indices, tvm.ir.GenericConst) or indices.value.numpy().ndim or call.attrs.axis is None \
            or shape is None:
        return None
    axis = int(call.attrs.axis) % len(shape.values)
    extent = shape.values[axis]
    if not isinstance(extent, tirx.IntImm):
        return None
    index, extent, mode = int(indices.value.numpy()), int(extent), str(call.attrs.mode)
    if mode == "wrap":
        index %= extent
    elif mode == "clip":
        index = min(max(index, 0), extent - 1)
    elif not 0 <= index < extent:  # fast (out of range: undefined) or nan
        return None
    return bb.call_te(topi.take, data, tirx.const(index, indices.ty.dtype), axis=axis, mode="clip")


def _fast_erf(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """float32 ``erf`` (GELU) as TVM's polynomial approximation, which vectorizes, where the
    default legalization calls libm's ``erff`` one element at a time on the CPU. It agrees with
    libm to float32 rounding (the tests compare with ONNX Runtime)."""
    return bb.call_te(topi.fast_erf, call.args[0]) if call.args[0].ty.dtype == "float32" else None


def _fast_softmax(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    """float32 softmax with ``exp`` as TVM's vectorizing approximation (libm's ``expf`` one
    element at a time was, with ``erff``, a third of a ViT's CPU time once the matmuls were
    scheduled)."""
    if call.args[0].ty.dtype != "float32":
        return None
    return bb.call_te(topi.nn.fast_softmax, call.args[0], call.attrs.axis)
