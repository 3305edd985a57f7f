"""Shared helpers: exporting models to ONNX, compiling them, and comparing with ONNX Runtime."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Fixed-size inputs keep every test deterministic.
RNG_SEED = 0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Tests marked ``gpu`` run on every machine up to the first load of a CUDA module: without
    a GPU they still compile for cuda (nvcc needs none), and skip where the module must run."""
    from saddc.errors import DeviceMissingError

    try:
        return (yield)
    except DeviceMissingError:
        if "gpu" not in item.keywords:
            raise
        pytest.skip("compiled for cuda; running the module needs a CUDA GPU")


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx")


def random_input(shape, seed=RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def ort_outputs(path, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def run_module(path, x: np.ndarray) -> np.ndarray:
    """The first output of the compiled module at ``path`` on the input ``x``."""
    import saddc  # pylint: disable=import-outside-toplevel

    return next(iter(saddc.load(path).run({"x": x}).values()))


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |a - e| / max |e|: the issue's 'relative error' for whole output tensors."""
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12))


def run_saddc(*args, env=None) -> subprocess.CompletedProcess:
    """The saddc CLI in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "saddc", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)


def write_finetune_inputs(root: Path, images: np.ndarray, labels: np.ndarray, test_images: int) -> Path:
    """What ``saddc finetune`` takes, in ``root``: ``vit.py`` (FACTORY ``vit``, the test zoo's
    small fused-qkv DeiT), its weights ``vit.pt``, and ``data.npz`` (the first ``test_images``
    images double as the test split)."""
    import torch
    from model_zoo import build

    (root / "vit.py").write_text(
        f"import sys\nsys.path.insert(0, {str(ROOT / 'examples')!r})\nfrom deit_tiny import deit_tiny\n\n\n"
        "def vit():\n    return deit_tiny(img_size=32, patch_size=8, dim=32, depth=2, heads=2, num_classes=10)\n")
    torch.save(build("deit-own-fused").state_dict(), root / "vit.pt")
    np.savez(root / "data.npz", x_train=images, y_train=labels, x_test=images[:test_images],
             y_test=labels[:test_images])
    return root


def build_te_kernel(compute, inputs, schedule_module, target, **kwargs):
    """Compile ``compute(*inputs, **kwargs)`` (TE placeholders in, tensors out) with the schedule
    that ``schedule_module.schedule`` gives it for ``target`` (a dict)."""
    import tvm
    from tvm import te

    outputs = compute(*inputs, **kwargs)
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    func = te.create_prim_func([tensor for tensor in inputs if tensor is not None] + outputs)
    tvm_target = tvm.target.Target(target)
    with tvm_target:
        scheduled = schedule_module.schedule(func, tvm_target)
    return tvm.compile(scheduled.mod, target=tvm_target)


def run_te_kernel(kernel, arrays, output_shape, output_dtype="float32"):
    """Run a CPU kernel on numpy ``arrays`` (None skipped) and return its one output."""
    import tvm

    out = tvm.runtime.tensor(np.zeros(output_shape, output_dtype))
    kernel(*[tvm.runtime.tensor(a) for a in arrays if a is not None], out)
    return out.numpy()


def llvm_source(executable) -> str:
    """The LLVM IR of a built Relax executable's host code."""
    modules = [executable.mod]
    while modules:
        module = modules.pop()
        if module.kind == "llvm":
            return module.inspect_source("ll")
        modules += list(module.imports)
    raise AssertionError("no LLVM module")
