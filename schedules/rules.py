"""The DLight rule that schedules saddc's own kernels (tagged ``saddc.kernel``) for a target.

It comes first in the schedule phase; kernels it does not own fall through to DLight's rules.
"""

from __future__ import annotations

from tvm.s_tir import dlight as dl

from saddc.schedules import binary_hash, code_matmul, masked_sum, permute_rows, row_normalize, shift_gemm

KERNEL_ATTR = "saddc.kernel"
# Kernel tag -> its module's ``schedule(func, target)``.
SCHEDULES = {
    "shift_gemm": shift_gemm.schedule,
    "binary_hash": binary_hash.schedule,
    "masked_sum": masked_sum.schedule,
    "code_matmul": code_matmul.schedule,
    "row_normalize": row_normalize.schedule,
    "permute_rows": permute_rows.schedule,
}
# token_partition and the segmented GEMMs are written with their schedules in place
# (``tirx.is_scheduled``): DLight passes them by.


class SaddcKernels(dl.ScheduleRule):
    """Apply the hand-written schedule of every saddc kernel."""

    def apply(self, func, target, tunable):  # pylint: disable=unused-argument
        kernel = func.attrs.get(KERNEL_ATTR) if func.attrs is not None else None
        if kernel is None:
            return None
        return SCHEDULES[str(kernel)](func, target)
