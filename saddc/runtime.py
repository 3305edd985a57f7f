"""Running compiled saddc modules: numpy in, numpy out.

Needs only TVM's runtime (it works with ``TVM_USE_RUNTIME_LIB=1`` and no compiler library),
so the same code runs a module on the deployment machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from saddc.artifacts import read_manifest
from saddc.errors import ArtifactError, InputError
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
                raise ArtifactError(f"{library} was compiled for cuda, but no CUDA GPU is visible")
        else:
            self.device = tvm.cpu(0)
        try:
            executable = tvm.runtime.load_module(str(library))
        except Exception as err:  # TVM raises plain RuntimeError/TVMError for bad libraries
            raise ArtifactError(f"cannot load module {library}: {str(err).splitlines()[-1]}") from None
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


def load(path: str | os.PathLike) -> CompiledModule:
    """Load a module compiled by ``saddc.compile`` (its manifest must lie beside it)."""
    return CompiledModule(path)
