"""Running compiled saddc modules: numpy in, numpy out.

Needs only TVM's runtime (it works with ``TVM_USE_RUNTIME_LIB=1`` and no compiler library),
so the same code runs a module on the deployment machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from saddc.artifacts import read_manifest
from saddc.errors import ArtifactError, DeviceMissingError, InputError
from saddc.specs import TensorSpec


class CompiledModule:
    """A loaded saddc module. Call it with arrays in input order, or ``run`` with a dict."""

    def __init__(self, library: str | os.PathLike):
        # pylint: disable=import-outside-toplevel
        import tvm
        import tvm.runtime.vm  # not imported by `import tvm` in runtime-only mode

        library = Path(library)
        if not library.exists():
            raise ArtifactError(f"module not found: {library}")
        self.path = library
        self.manifest = read_manifest(library)
        self.inputs = [TensorSpec.from_json(spec) for spec in self.manifest["inputs"]]
        self.outputs = [TensorSpec.from_json(spec) for spec in self.manifest["outputs"]]
        self.target = self.manifest["target"]
        if self.target == "cuda":
            self.device = tvm.cuda(0)
            if not self.device.exist:
                raise DeviceMissingError(f"{library} was compiled for cuda, but no CUDA GPU is visible")
        else:
            self.device = tvm.cpu(0)
        _check_cpu_features(library, self.manifest)
        use_every_core()
        try:
            executable = tvm.runtime.load_module(str(library))
        except Exception as err:  # TVM raises plain RuntimeError/TVMError for bad libraries
            raise ArtifactError(f"cannot load module {library}: {str(err).splitlines()[-1]}") from None
        self._library = executable
        self._vm = tvm.runtime.vm.VirtualMachine(executable, self.device)
        self._main = self._vm["main"]

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        if len(arrays) != len(self.inputs):
            raise InputError(f"expected {len(self.inputs)} inputs ({self._names()}), got {len(arrays)}")
        return self._run_checked(arrays)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run with inputs by name; returns outputs by name."""
        unknown = set(feeds) - {spec.name for spec in self.inputs}
        missing = [spec.name for spec in self.inputs if spec.name not in feeds]
        if unknown or missing:
            raise InputError(
                f"inputs do not match the module's ({self._names()}): "
                f"missing {missing or 'none'}, unknown {sorted(unknown) or 'none'}"
            )
        outputs = self._run_checked([feeds[spec.name] for spec in self.inputs])
        return {spec.name: value for spec, value in zip(self.outputs, outputs)}

    def time(self, *arrays: np.ndarray, repeat: int = 5, min_repeat_ms: int = 100) -> list[float]:
        """Seconds per call of ``main``, one figure per repeat (warm-up excluded); each repeat
        averages as many calls as fill ``min_repeat_ms``. Inputs stay on the device."""
        self._run_checked(arrays)  # warm-up, and the input checks
        timer = self._vm.time_evaluator("main", self.device, number=1, repeat=repeat,
                                        min_repeat_ms=min_repeat_ms)
        return list(timer(*self._tensors(arrays)).results)

    def time_kernels(self, *arrays: np.ndarray, repeat: int = 5, min_repeat_ms: int = 20) -> dict[str, dict]:
        """Each kernel (compiled TIR function) of ``main``, timed alone: ``{name: {"calls": how
        many times one call of main runs it, "seconds": seconds per kernel call, one figure per
        repeat, "bytes": the size of its tensor arguments (what it must at least read and
        write), "flops": its estimated operations (the manifest's ``kernel_flops``, scaled by
        the batch when the first input's is symbolic; None where the compile did not estimate
        them)}}``. Each kernel is timed on a copy of the arguments of its first call, with TVM's
        time evaluator (warm-up excluded, calls averaged over ``min_repeat_ms``)."""
        tensors = self._tensors(arrays)
        calls: dict[str, list] = {}

        def capture(_func, symbol, before_run, _ret, *args):
            symbol = str(symbol)
            if before_run and not symbol.startswith("vm.builtin."):
                if symbol not in calls:
                    calls[symbol] = [0, [_copy(arg, self.device) for arg in args]]
                calls[symbol][0] += 1
            return 0  # VMInstrumentReturnKind.NO_OP: run the call

        self._vm.set_instrument(capture)
        try:
            self._main(*tensors)
        finally:
            self._vm.set_instrument(None)
        flops = self.manifest.get("kernel_flops", {})
        batch = arrays[0].shape[0] if self.inputs and not isinstance(self.inputs[0].shape[0], int) else 1
        timings = {}
        for symbol, (count, args) in calls.items():
            owner = next(m for m in (self._library, *self._library.imports) if m.implements_function(symbol, False))
            timer = owner.time_evaluator(symbol, self.device, number=1, repeat=repeat, min_repeat_ms=min_repeat_ms)
            timings[symbol] = {"calls": count, "seconds": list(timer(*args).results),
                               "bytes": sum(_nbytes(arg) for arg in args),
                               "flops": flops[symbol] * batch if symbol in flops else None}
        return timings

    def _run_checked(self, arrays) -> list[np.ndarray]:
        result = self._main(*self._tensors(arrays))
        # A single output comes back as a tensor, several as an array of tensors.
        results = [result] if hasattr(result, "numpy") else list(result)
        return [tensor.numpy() for tensor in results]

    def _tensors(self, arrays) -> list:
        import tvm  # pylint: disable=import-outside-toplevel

        tensors = []
        for spec, array in zip(self.inputs, arrays):
            array = np.ascontiguousarray(array)
            if not spec.accepts(array.shape, array.dtype.name):
                raise InputError(
                    f"input '{spec.name}' expects {spec.dtype}{list(spec.shape)}, "
                    f"got {array.dtype.name}{list(array.shape)}"
                )
            tensors.append(tvm.runtime.tensor(array, self.device))
        return tensors

    def _names(self) -> str:
        return ", ".join(spec.describe() for spec in self.inputs)

    def __repr__(self) -> str:
        return (
            f"CompiledModule({self.path}, target={self.target}, "
            f"inputs=[{self._names()}], outputs=[{', '.join(s.describe() for s in self.outputs)}])"
        )


def _copy(value, device):
    """A kernel argument that outlives the call: tensors copied (the VM reuses their memory)."""
    import tvm  # pylint: disable=import-outside-toplevel

    return tvm.runtime.tensor(value.numpy(), device) if isinstance(value, tvm.runtime.Tensor) else value


def _nbytes(value) -> int:
    import tvm  # pylint: disable=import-outside-toplevel

    if not isinstance(value, tvm.runtime.Tensor):
        return 0
    return int(np.prod(value.shape, dtype=np.int64)) * np.dtype(str(value.dtype)).itemsize


def physical_cores() -> int:
    """Physical CPU cores available to this process (hyper-threads counted once)."""
    available = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in available:
        try:
            topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
            cores.add(((topology / "physical_package_id").read_text(), (topology / "core_id").read_text()))
        except OSError:
            cores.add(cpu)
    return max(len(cores), 1)


def use_every_core() -> None:
    """TVM's CPU thread pool starts with half the logical CPUs on x86 (to skip hyper-threads),
    which on a 2-vCPU machine is one thread: run saddc's parallel loops on every physical core,
    as ONNX Runtime does, unless ``TVM_NUM_THREADS`` says otherwise."""
    # The pool reads the variable when it starts, at the first parallel loop of the process.
    os.environ.setdefault("TVM_NUM_THREADS", str(physical_cores()))


def _check_cpu_features(library: Path, manifest: dict) -> None:
    """A module's CPU code uses its target CPU's vector instructions; on a CPU without them it
    would die of an illegal instruction, so refuse it with the fix instead (Linux; elsewhere the
    check is skipped)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return
    missing = sorted(set(manifest.get("cpu_features", [])) - set(flags.split(":", 1)[1].split()))
    if missing:
        raise ArtifactError(f"{library} was compiled for the CPU '{manifest.get('arch')}', and this CPU lacks "
                            f"{', '.join(missing)}: recompile with --arch host (or --arch x86-64 for any x86-64)")


def load(path: str | os.PathLike) -> CompiledModule:
    """Load a module compiled by ``saddc.compile`` (its manifest must lie beside it)."""
    return CompiledModule(path)
