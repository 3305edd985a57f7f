"""Compile targets: parse and validate what users ask for, before any expensive work."""

from __future__ import annotations

import re
from dataclasses import dataclass

from saddc.errors import TargetError

TARGET_KINDS = ("llvm", "cuda")
DEFAULT_CUDA_ARCH = "sm_90"
_ARCH_PATTERN = re.compile(r"^sm_(\d{2,3})([af]?)$")


@dataclass(frozen=True)
class TargetSpec:
    """A validated target: ``llvm`` (x86-64 CPU) or ``cuda`` with an SM architecture."""

    kind: str
    arch: str | None = None

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def to_tvm(self):
        """The ``tvm.target.Target`` this spec names (TVM 0.27 takes dict targets)."""
        import tvm  # pylint: disable=import-outside-toplevel

        if self.is_cuda:
            return tvm.target.Target({"kind": "cuda", "arch": self.arch})
        return tvm.target.Target({"kind": "llvm"})

    def describe(self) -> str:
        return f"{self.kind} ({self.arch})" if self.arch else self.kind


def parse_target(kind: str, arch: str | None = None) -> TargetSpec:
    """Validate a target kind and arch; CUDA archs are checked against the installed nvcc."""
    if kind not in TARGET_KINDS:
        raise TargetError(f"unknown target '{kind}' (choose from: {', '.join(TARGET_KINDS)})")
    if kind == "llvm":
        if arch is not None:
            raise TargetError("--arch applies to --target cuda only")
        return TargetSpec("llvm")
    arch = arch or DEFAULT_CUDA_ARCH
    if not _ARCH_PATTERN.match(arch):
        raise TargetError(f"unknown CUDA arch '{arch}' (expected the form sm_90, sm_90a)")
    from saddc.cuda import nvcc_supported_archs  # pylint: disable=import-outside-toplevel

    supported = nvcc_supported_archs()
    if arch_number(arch) not in supported:
        listed = ", ".join(f"sm_{n}" for n in sorted(supported))
        raise TargetError(f"CUDA arch '{arch}' is not supported by this nvcc (supported: {listed})")
    return TargetSpec("cuda", arch)


def arch_number(arch: str) -> int:
    """90 for sm_90 and sm_90a."""
    return int(_ARCH_PATTERN.match(arch).group(1))
