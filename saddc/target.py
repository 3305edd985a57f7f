"""Compile targets: parse and validate what users ask for, before any expensive work."""

from __future__ import annotations

import re
from dataclasses import dataclass

from saddc.errors import TargetError

TARGET_KINDS = ("llvm", "cuda")
DEFAULT_CUDA_ARCH = "sm_90"
# What CUDA guarantees a kernel on every SM since sm_70, without opting in to more shared memory
# (TVM's own tags give each GPU these): schedules and tuning are generated within them, and
# DLight warns at each kernel of a target that lacks the shared-memory figure.
CUDA_LIMITS = {"max_threads_per_block": 1024, "max_num_threads": 1024, "max_shared_memory_per_block": 49152,
               "thread_warp_size": 32, "registers_per_block": 65536}
# --target llvm's default --arch: the CPU of the machine that compiles (what `-mcpu=native`
# means to clang). A module built so runs only on CPUs with the same instruction set.
HOST_CPU = "host"
# LLVM feature -> /proc/cpuinfo flag, for the vector extensions whose absence makes a module crash.
SIMD_FEATURES = {"sse4.2": "sse4_2", "avx": "avx", "avx2": "avx2", "fma": "fma", "avx512f": "avx512f",
                 "avx512bw": "avx512bw", "avx512dq": "avx512dq", "avx512vl": "avx512vl",
                 "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16"}
_ARCH_PATTERN = re.compile(r"^sm_(\d{2,3})([af]?)$")


@dataclass(frozen=True)
class TargetSpec:
    """A validated target: ``llvm`` with the LLVM CPU its code is generated for (its vector
    width and instruction set: ``znver4``, ``skylake-avx512``, ``x86-64`` for any x86-64), or
    ``cuda`` with an SM architecture."""

    kind: str
    arch: str | None = None

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    def to_tvm(self):
        """The ``tvm.target.Target`` this spec names (TVM 0.27 takes dict targets)."""
        import tvm  # pylint: disable=import-outside-toplevel

        if self.is_cuda:
            return tvm.target.Target({"kind": "cuda", "arch": self.arch, **CUDA_LIMITS})
        return tvm_llvm_target(self.arch)

    def simd_features(self) -> list[str]:
        """The vector instruction sets the generated CPU code may use, as Linux's
        ``/proc/cpuinfo`` names them (what a module built for this target needs to run)."""
        from tvm.target import codegen  # pylint: disable=import-outside-toplevel

        if self.is_cuda:
            return []  # the host code of a CUDA module is generic x86-64
        enabled = codegen.llvm_get_cpu_features(tvm_llvm_target(self.arch))
        return sorted(flag for feature, flag in SIMD_FEATURES.items() if feature in enabled)

    def describe(self) -> str:
        return f"{self.kind} ({self.arch})" if self.arch else self.kind


def parse_target(kind: str, arch: str | None = None) -> TargetSpec:
    """Validate a target kind and arch; CUDA archs are checked against the installed nvcc."""
    if kind not in TARGET_KINDS:
        raise TargetError(f"unknown target '{kind}' (choose from: {', '.join(TARGET_KINDS)})")
    if kind == "llvm":
        return TargetSpec("llvm", _llvm_cpu(arch or HOST_CPU))
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


def _llvm_cpu(arch: str) -> str:
    """The LLVM CPU name for ``arch`` (``host``: this machine's), checked against LLVM."""
    from tvm.target import codegen  # pylint: disable=import-outside-toplevel

    cpu = codegen.llvm_get_system_cpu() if arch == HOST_CPU else arch
    if not codegen.llvm_is_valid_cpu(cpu, codegen.llvm_get_system_triple()):
        raise TargetError(f"unknown CPU '{arch}' for --target llvm (an LLVM CPU name: x86-64, x86-64-v3, "
                          "skylake-avx512, znver4, ...; or host)")
    return cpu


def tvm_llvm_target(cpu: str, num_cores: int | None = None):
    """The TVM target for LLVM CPU ``cpu``; ``num_cores`` is what MetaSchedule plans for."""
    import tvm  # pylint: disable=import-outside-toplevel

    return tvm.target.Target({"kind": "llvm", "mcpu": cpu, **({"num-cores": num_cores} if num_cores else {})})
