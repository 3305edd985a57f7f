"""Building CUDA modules on a machine without a GPU, and checking what they hold.

Two things stand between TVM 0.27 and a deployable CUDA module on a GPU-less build machine:

1. **The CUDA runtime sidecar.** TVM turns generated kernels into a loadable CUDA module in
   ``libtvm_runtime_cuda.so``, which links against the driver library ``libcuda.so.1``. Without
   a driver that sidecar fails to load and TVM silently exports kernels as *source*. saddc then
   builds a driver stub: a tiny ``libcuda.so.1`` that defines the driver entry points the
   sidecar imports (read from its dynamic symbol table with ``nm``), each returning
   ``CUDA_ERROR_STUB_LIBRARY`` as NVIDIA's own link stubs do. The stub is only ever loaded in
   the compiling process, only when no real driver is loadable, and never ships with a module:
   on the GPU machine the real driver is used. It is cached under ``$XDG_CACHE_HOME/saddc``.
2. **Precompiled kernels.** ``nvcc_fatbin_compiler`` installs TVM's compile hook
   (``tvm_callback_cuda_compile``) for the duration of a build so that every kernel source is
   compiled by nvcc into a fatbin holding SASS for the requested arch (plus its PTX, for newer
   GPUs). Fast-math is off so that results match ONNX Runtime's IEEE arithmetic.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from saddc.errors import TargetError

CUDA_ERROR_STUB_LIBRARY = 34
FATBIN_MAGIC = 0xBA55ED50
FATBIN_KIND = {1: "ptx", 2: "sass"}


def gpu_visible() -> bool:
    """Whether TVM's CUDA runtime sees a GPU (device 0, where saddc's cuda modules run)."""
    import tvm  # pylint: disable=import-outside-toplevel

    return bool(tvm.cuda(0).exist)


def find_nvcc() -> str:
    """Path of nvcc: ``$CUDA_PATH/bin/nvcc``, else the one on PATH."""
    candidates = []
    if os.environ.get("CUDA_PATH"):
        candidates.append(os.path.join(os.environ["CUDA_PATH"], "bin", "nvcc"))
    candidates.append(shutil.which("nvcc"))
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise TargetError(
        "nvcc not found: --target cuda compiles kernels with the CUDA toolkit's nvcc "
        "(install the toolkit, or set CUDA_PATH or PATH to it)"
    )


@functools.lru_cache(maxsize=None)
def nvcc_supported_archs() -> frozenset[int]:
    """SM numbers the installed nvcc can generate code for (``nvcc --list-gpu-code``)."""
    listing = subprocess.run(
        [find_nvcc(), "--list-gpu-code"], capture_output=True, text=True, check=False
    )
    return frozenset(
        int(word[3:]) for word in listing.stdout.split() if word.startswith("sm_") and word[3:].isdigit()
    )


def nvcc_version() -> str:
    """``release 13.0, V13.0.88`` style version string of the installed nvcc."""
    out = subprocess.run([find_nvcc(), "--version"], capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if "release" in line]
    return lines[-1].split(",", 1)[-1].strip() if lines else "unknown"


def ensure_cuda_codegen() -> None:
    """Make TVM's CUDA runtime sidecar loadable and loaded, stubbing the driver if needed."""
    from tvm.base import _LOADED_LIBS  # pylint: disable=import-outside-toplevel

    if "tvm_runtime_cuda" in _LOADED_LIBS:
        return
    try:
        ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL)
    except OSError:
        # Loaded globally under its soname, the stub satisfies the sidecar's DT_NEEDED entry.
        ctypes.CDLL(str(_driver_stub()), mode=ctypes.RTLD_GLOBAL)
    from tvm_ffi.libinfo import load_lib_ctypes  # pylint: disable=import-outside-toplevel

    try:
        _LOADED_LIBS["tvm_runtime_cuda"] = load_lib_ctypes(
            package="tvm", target_name="tvm_runtime_cuda",
            extra_lib_paths=[_tvm_runtime_dir()], mode="RTLD_LOCAL",
        )
    except (OSError, RuntimeError) as err:
        raise TargetError(f"cannot load TVM's CUDA runtime library: {err}") from None


def _tvm_runtime_dir() -> Path:
    """The directory holding the loaded libtvm_runtime.so (and its sidecars)."""
    from tvm.base import _LOADED_LIBS  # pylint: disable=import-outside-toplevel

    return Path(_LOADED_LIBS["tvm_runtime"]._name).resolve().parent


def _cuda_runtime_sidecar() -> Path:
    sidecar = _tvm_runtime_dir() / "libtvm_runtime_cuda.so"
    if not sidecar.exists():
        raise TargetError(f"this TVM build has no CUDA runtime ({sidecar} is missing)")
    return sidecar


def _driver_stub() -> Path:
    """Build (once, cached) the ``libcuda.so.1`` stub for the sidecar's driver imports."""
    sidecar = _cuda_runtime_sidecar()
    nm, cc = shutil.which("nm"), shutil.which("cc") or shutil.which("gcc")
    if not nm or not cc:
        raise TargetError(
            "no CUDA driver on this machine, and no nm/cc to build saddc's driver stub "
            "(install binutils and a C compiler, or build on a machine with the NVIDIA driver)"
        )
    listing = subprocess.run(
        [nm, "-D", "--undefined-only", str(sidecar)], capture_output=True, text=True, check=True
    ).stdout
    symbols = sorted(
        {
            line.split()[-1].split("@")[0]
            for line in listing.splitlines()
            if line.split() and line.split()[-1].startswith("cu") and line.split()[-1][2:3].isupper()
        }
    )
    source = "".join(
        f"int {name}(void) {{ return {CUDA_ERROR_STUB_LIBRARY}; }}\n" for name in symbols
    )
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "saddc" / "cuda-driver-stub"
    stub = cache / digest / "libcuda.so.1"
    if stub.exists():
        return stub
    stub.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=stub.parent) as tmp:
        c_file, so_file = Path(tmp) / "stub.c", Path(tmp) / "libcuda.so.1"
        c_file.write_text(source)
        subprocess.run(
            [cc, "-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o", str(so_file), str(c_file)],
            check=True, capture_output=True,
        )
        os.replace(so_file, stub)
    return stub


@dataclass
class NvccStats:
    """What the nvcc hook did during one build; ``sources`` keeps the CUDA code it compiled."""

    invocations: int = 0
    seconds: float = 0.0
    fatbin_bytes: int = 0
    sources: list[str] = field(default_factory=list)


def nvcc_compile(code: str, arch: str, output: str = "fatbin") -> bytes:
    """Compile CUDA source with nvcc for ``arch`` to a ``fatbin`` (SASS + PTX) or ``ptx`` text."""
    sm = arch[3:]
    with tempfile.TemporaryDirectory(prefix="saddc-nvcc-") as tmp:
        source, result_path = os.path.join(tmp, "kernels.cu"), os.path.join(tmp, f"kernels.{output}")
        Path(source).write_text(code)
        if output == "fatbin":
            targets = ["-gencode", f"arch=compute_{sm},code=[sm_{sm},compute_{sm}]"]
        else:
            targets = [f"-arch=sm_{sm}"]
        command = [
            find_nvcc(), f"--{output}", "-O3", *targets,
            # TVM's generated fp16/bf16 code uses the operator overloads nvcc hides by default.
            "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
            "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
            "--expt-relaxed-constexpr",
            "-o", result_path, source,
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise TargetError(f"nvcc failed on the generated kernels: {result.stderr.strip()[:2000]}")
        return Path(result_path).read_bytes()


@contextlib.contextmanager
def nvcc_fatbin_compiler(arch: str):
    """Install TVM's CUDA compile hook so kernels become an nvcc fatbin for ``arch``."""
    import tvm_ffi  # pylint: disable=import-outside-toplevel

    find_nvcc()
    stats = NvccStats()

    def compile_to_fatbin(code: str) -> bytearray:
        started = time.perf_counter()
        binary = bytearray(nvcc_compile(code, arch, "fatbin"))
        stats.invocations += 1
        stats.seconds += time.perf_counter() - started
        stats.fatbin_bytes += len(binary)
        stats.sources.append(code)
        return binary

    previous = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)
    tvm_ffi.register_global_func("tvm_callback_cuda_compile", compile_to_fatbin, override=True)
    try:
        yield stats
    finally:
        if previous is not None:
            tvm_ffi.register_global_func("tvm_callback_cuda_compile", previous, override=True)
        else:
            tvm_ffi.remove_global_func("tvm_callback_cuda_compile")


@dataclass(frozen=True)
class FatbinEntry:
    """One image inside a fatbin: ``sass`` (machine code) or ``ptx``, and its SM number."""

    kind: str
    arch: int
    size: int


def read_fatbins(path: str | os.PathLike) -> list[FatbinEntry]:
    """The images of every fatbin container embedded in a file (an exported module ``.so``).

    Container layout: a 16-byte header (magic, version, header size, payload size) followed
    by entries, each with a header of its own giving its kind (1 PTX, 2 ELF/SASS), its size
    and, at byte 28, the SM number.
    """
    data = Path(path).read_bytes()
    entries = []
    magic = struct.pack("<I", FATBIN_MAGIC)
    start = data.find(magic)
    while start != -1 and start + 16 <= len(data):
        _, _, header_size, payload_size = struct.unpack_from("<IHHQ", data, start)
        offset, end = start + header_size, start + header_size + payload_size
        while offset + 32 <= min(end, len(data)):
            kind, _, entry_header, entry_size = struct.unpack_from("<HHIQ", data, offset)
            (arch,) = struct.unpack_from("<I", data, offset + 28)
            entries.append(FatbinEntry(FATBIN_KIND.get(kind, f"kind{kind}"), arch, entry_size))
            offset += entry_header + entry_size
        start = data.find(magic, max(end, start + 4))
    return entries
