"""Put the target's form of each hand-scheduled saddc kernel in place of its CPU form.

Pattern: a PrimFunc tagged ``saddc.kernel`` with a tag of ``schedules.rules.HAND_SCHEDULED``
(the MoE dispatch's token partition and segmented GEMMs), carrying its shape parameters in
``saddc.kernel_params``. The Relax passes emit these kernels in their form for this machine's
CPU (``kernel_call.call_hand_scheduled_kernel``) so that a rewritten module runs here, where
each lossy rewrite measures its error, whatever the target.

Emits: the kernel rebuilt by its builder for the target (same parameters, so the same
signature), with the emitted form's attributes kept: the CUDA form, or the CPU form whose
register tiles fit the target CPU's vector registers (AVX-512, AVX2, SSE). It runs first in the
schedule phase: these kernels are written with their schedules in place, so choosing a
kernel's form is choosing its schedule.
"""

from __future__ import annotations

import tvm
from tvm import tirx

from saddc.schedules.rules import HAND_SCHEDULED, KERNEL_ATTR, KERNEL_PARAMS_ATTR
from saddc.target import TargetSpec


@tvm.transform.module_pass(opt_level=0, name="saddc.DispatchHandScheduledKernels")
class DispatchHandScheduledKernels:  # pylint: disable=too-few-public-methods
    """Hand-scheduled kernels in their host CPU form -> their form for ``target`` (see module doc)."""

    def __init__(self, target: TargetSpec):
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        target = self.target.to_tvm()
        updates = {}
        for gvar, func in mod.functions_items():
            tag = func.attrs.get(KERNEL_ATTR) if isinstance(func, tirx.PrimFunc) and func.attrs else None
            if tag is not None and str(tag) in HAND_SCHEDULED:
                params = {str(name): int(value) for name, value in func.attrs[KERNEL_PARAMS_ATTR].items()}
                updates[gvar] = HAND_SCHEDULED[str(tag)](**params, target=target).with_attrs(dict(func.attrs))
        if not updates:
            return mod
        mod = mod.clone()
        for gvar, func in updates.items():
            mod[gvar] = func
        return mod
