"""The DLight rule that schedules saddc's own kernels (tagged ``saddc.kernel``) for a target.

It comes first in the schedule phase; kernels it does not own fall through to DLight's rules.
The kernels of ``HAND_SCHEDULED`` are written with their schedules in place instead, one form
per target; ``passes/dispatch_hand_scheduled_kernels.py`` picks the target's.
``FallThroughOnError`` wraps each DLight rule that has a next one, since any can fail inside
its schedule on functions it claims, so that they go on to that rule instead of failing the
compile.
"""

from __future__ import annotations

import warnings

from tvm import s_tir, tirx
from tvm.s_tir import dlight as dl

from saddc.errors import SaddcWarning

from saddc.schedules import (
    binary_hash, code_matmul, masked_sum, permute_rows, row_normalize, segmented_gemm, shift_gemm, token_partition,
)
from saddc.schedules.cpu_rule import move_local_buffers_to_stack

KERNEL_ATTR = "saddc.kernel"
# A hand-scheduled kernel's shape parameters (the keyword arguments of its builder).
KERNEL_PARAMS_ATTR = "saddc.kernel_params"
# Kernel tag -> its module's ``schedule(func, target)``.
SCHEDULES = {
    "shift_gemm": shift_gemm.schedule,
    "binary_hash": binary_hash.schedule,
    "masked_sum": masked_sum.schedule,
    "code_matmul": code_matmul.schedule,
    "row_normalize": row_normalize.schedule,
    "permute_rows": permute_rows.schedule,
}
# Kernel tag -> the builder of a kernel written with its schedule in place (``tirx.is_scheduled``,
# so DLight passes it by): ``builder(**params, target=...)``. Their writes go to data-dependent
# addresses, which TensorIR's schedule primitives cannot express.
HAND_SCHEDULED = {
    "token_partition": token_partition.token_partition,
    "dense_segment": segmented_gemm.dense_segment,
    "shift_segment": segmented_gemm.shift_segment,
}


class SaddcKernels(dl.ScheduleRule):
    """Apply the hand-written schedule of every saddc kernel. A kernel its schedule declines
    (the tensor-core decode-mma shift GEMM of a one-row layer) goes on to DLight's rules, with
    a warning naming it."""

    def apply(self, func, target, tunable):  # pylint: disable=unused-argument
        kernel = func.attrs.get(KERNEL_ATTR) if func.attrs is not None else None
        if kernel is None:
            return None
        scheduled = SCHEDULES[str(kernel)](func, target)
        if scheduled is None:
            variant = func.attrs.get(shift_gemm.VARIANT_ATTR)
            warnings.warn(f"saddc's {kernel}{f' {variant}' if variant else ''} schedule does not take the kernel "
                          f"of {_signature(func)}; DLight's rules schedule it", SaddcWarning)
            return None
        return scheduled if target.kind.name == "cuda" else move_local_buffers_to_stack(scheduled)


class FallThroughOnError(dl.ScheduleRule):
    """``rule``, except that a function it fails to schedule goes on to the next rule, with a
    warning naming the function. DLight 0.27's rules fail two ways on shapes they do not
    expect: a schedule primitive's ``ScheduleError`` (the tensor-core matmul path on the fp16
    patch-embedding matmul of a model with a symbolic batch), or the rule's own assertion about
    the loops it made (the GEMV rule on Taylor attention's batched matrix-vector product with a
    head dim of 16: ``extent.value`` of a loop whose extent is an expression)."""

    def __init__(self, rule: dl.ScheduleRule):
        self.rule = rule

    def apply(self, func, target, tunable):
        try:
            return self.rule.apply(func, target, tunable)
        except (s_tir.ScheduleError, AssertionError, AttributeError) as err:
            reason = next((line.split(":", 1)[1].strip() for line in str(err).splitlines()
                           if line.startswith("Error message:")), f"{type(err).__name__}: {err}")
            warnings.warn(f"DLight's {type(self.rule).__name__} rule failed on the kernel of {_signature(func)} "
                          f"({reason}); the next rule schedules it", SaddcWarning)
            return None


def _signature(func: tirx.PrimFunc) -> str:
    """``float16[batch, 14, 14, 768], float16[768, 192] -> float16[...]``: a kernel's buffers."""

    def dim(extent) -> str:
        return str(int(extent)) if isinstance(extent, tirx.IntImm) else str(extent)

    buffers = [f"{param.ty.dtype}[{', '.join(dim(extent) for extent in param.ty.shape)}]"
               for param in func.params if isinstance(param.ty, tirx.BufferType)]
    return ", ".join(buffers[:-1]) + " -> " + buffers[-1] if buffers else "a kernel"
