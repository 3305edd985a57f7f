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


def gpu_available() -> bool:
    import tvm

    return bool(tvm.cuda(0).exist)


def pytest_collection_modifyitems(config, items):
    if gpu_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("onnx")


def random_input(shape, seed=RNG_SEED) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype("float32")


def ort_outputs(path, feeds: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |a - e| / max |e|: the issue's 'relative error' for whole output tensors."""
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12))


def run_saddc(*args, env=None) -> subprocess.CompletedProcess:
    """The saddc CLI in a subprocess, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "saddc", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600)
