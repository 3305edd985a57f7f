"""Mark the PrimFuncs that have at most one buffer parameter ``tirx.noalias``.

Pattern: a PrimFunc without ``tirx.noalias`` whose parameters hold at most one buffer or
pointer: the VM's shape function, ``shape_func(H)``, which reads and writes the shape heap.

Emits: the same function with ``tirx.noalias = True``, which is true of it whatever it does:
only parameters could alias one another, and it has one.

Why: TVM 0.27's LLVM code generator declares every function of a module before it generates
any, and each function's body then takes "may its buffers alias" from the last function
declared (by name), not from its own attribute. A module whose last function lacked the
attribute, ``shape_func`` after every ``fused_*`` kernel of a small module with a symbolic
batch, had every kernel compiled as if its buffers could alias: LLVM then stores a matmul's
register accumulators back to memory after every FMA (a 197x192x576 matmul ran 2.3x slower
than the same kernel in DeiT-Tiny's module, whose last function, ``transpose*``, has the
attribute). With every function marked, the answer no longer depends on the names. Runs last,
after the VM lowering that creates ``shape_func``.
"""

from __future__ import annotations

import tvm
from tvm import tirx

NOALIAS = "tirx.noalias"


@tirx.transform.prim_func_pass(opt_level=0, name="saddc.MarkSingleBufferFunctionsNoAlias")
class MarkSingleBufferFunctionsNoAlias:  # pylint: disable=too-few-public-methods
    """Add ``tirx.noalias`` to PrimFuncs with at most one buffer parameter (see module doc)."""

    def transform_function(self, func: tirx.PrimFunc, _mod: tvm.IRModule, _ctx) -> tirx.PrimFunc:
        if func.attrs is not None and NOALIAS in func.attrs:
            return func
        buffers = [param for param in func.params if isinstance(param.ty, (tirx.BufferType, tvm.ir.PointerType))]
        return func.with_attr(NOALIAS, True) if len(buffers) <= 1 else func
