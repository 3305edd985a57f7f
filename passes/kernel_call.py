"""Emitting calls to saddc's kernels from Relax passes.

A kernel is a TE compute (``schedules/``) turned into a PrimFunc tagged ``saddc.kernel`` (so the
schedule phase gives it its own schedule) and marked opaque (so fusion leaves it whole).
BlockBuilder shares structurally equal PrimFuncs, so layers of one shape call one kernel.
"""

from __future__ import annotations

from tvm import relax

from saddc.schedules.rules import KERNEL_ATTR

# TVM's OpPatternKind::kOpaque: FuseOps leaves the kernel alone.
_OPAQUE = 8


def emit_kernel(builder: relax.BlockBuilder, compute, *args, kernel: str, name: str | None = None,
                attrs: dict | None = None, **kwargs) -> relax.Var:
    """``builder.emit_te(compute, *args, **kwargs)`` as the saddc kernel ``kernel`` (a key of
    ``schedules.rules.SCHEDULES``), its PrimFunc named ``name`` (default: the compute's name
    without ``_te``)."""
    return builder.emit_te(
        compute, *args, primfunc_name_hint=name or compute.__name__.removesuffix("_te"),
        primfunc_attrs={KERNEL_ATTR: kernel, "op_pattern": _OPAQUE, **(attrs or {})}, **kwargs,
    )
