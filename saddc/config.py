"""Configuration of ``saddc.lower`` and ``saddc.compile``."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from saddc.errors import ConfigError
from saddc.target import TargetSpec, parse_target

# Layer groups users select by (``--shift mlp,attn-proj``); roles are found by
# passes/find_vit_blocks.py from the dataflow, not from layer names.
SHIFT_GROUPS = {
    "all": ("patch-embed", "qkv", "attn-proj", "mlp-fc1", "mlp-fc2", "head", "other"),
    "attn": ("qkv", "attn-proj"),
    "mlp": ("mlp-fc1", "mlp-fc2"),
    **{role: (role,) for role in ("patch-embed", "qkv", "attn-proj", "mlp-fc1", "mlp-fc2", "head", "other")},
}
SHIFT_KERNELS = ("auto", "add-only", "decode-mma")


@dataclass
class ShiftOptions:
    """Which linear layers become shift primitives, and how.

    layers:      comma-separated groups: all, attn (= qkv, attn-proj), mlp (= mlp-fc1, mlp-fc2),
                 qkv, attn-proj, mlp-fc1, mlp-fc2, patch-embed, head, other
    skip:        layers to leave dense: ``first``, ``last``, a layer index, or a name glob
    bits:        code width, 5 (exponents 2^[-14, 0] of a channel scale) or 4 (2^[-6, 0])
    lossy:       allow rounding weights that are not already powers of two (reports the error)
    kernel:      ``auto`` (by measured latency), ``add-only``, or ``decode-mma`` (CUDA only)
    calibration: a .npy of model inputs (or an array) for the error report; synthetic N(0, 1)
                 inputs, with a warning, when absent
    """

    layers: str = "all"
    skip: list[str] = field(default_factory=list)
    bits: int = 5
    lossy: bool = False
    kernel: str = "auto"
    calibration: str | os.PathLike | object | None = None

    def __post_init__(self):
        self.groups = [g.strip() for g in self.layers.split(",") if g.strip()]
        unknown = [g for g in self.groups if g not in SHIFT_GROUPS]
        if unknown or not self.groups:
            raise ConfigError(
                f"unknown shift layer group '{','.join(unknown) or self.layers}' "
                f"(choose from: {', '.join(SHIFT_GROUPS)})"
            )
        if isinstance(self.skip, str):
            self.skip = [s.strip() for s in self.skip.split(",") if s.strip()]
        if self.bits not in (4, 5):
            raise ConfigError(f"--shift-bits must be 4 or 5, not {self.bits}")
        if isinstance(self.calibration, (str, os.PathLike)) and not Path(self.calibration).is_file():
            raise ConfigError(f"calibration file not found: {self.calibration}")
        if self.kernel not in SHIFT_KERNELS:
            raise ConfigError(f"unknown shift kernel '{self.kernel}' (choose from: {', '.join(SHIFT_KERNELS)})")

    @property
    def roles(self) -> set[str]:
        return {role for group in self.groups for role in SHIFT_GROUPS[group]}


@dataclass
class LowerConfig:
    """What the saddc pipeline does to a Relax module.

    target:      where the module runs (``parse_target('cuda', 'sm_90')``, or a kind string).
    dump_ir:     a directory; the IR after each pipeline phase is written there as TVMScript.
    shift:       turn linear layers into shift primitives (``ShiftOptions``), or None.
    layer_names: weight identity -> layer name (filled from the ONNX model by ``compile``).
    reports:     per-rewrite reports, by rewrite name (filled in by the rewrite passes).
    """

    target: TargetSpec | str = "llvm"
    dump_ir: str | Path | None = None
    shift: ShiftOptions | None = None
    layer_names: dict[str, str] = field(default_factory=dict)
    reports: dict[str, object] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.target, str):
            self.target = parse_target(self.target)

    @property
    def rewrites(self) -> list[str]:
        """Names of the reparameterizing rewrites that ran."""
        return list(self.reports)
