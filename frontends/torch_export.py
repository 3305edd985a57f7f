"""Export PyTorch modules to ONNX the way users do (torch is needed here, not in the compiler).

``exporter='dynamo'`` is ``torch.onnx.export(..., dynamo=True)`` (weights in a ``.onnx.data``
side file); ``'legacy'`` is the TorchScript exporter (one file).
"""

from __future__ import annotations

import contextlib
import io
import os

import torch

EXPORTERS = ("dynamo", "legacy")


def export_onnx(module: torch.nn.Module, example: torch.Tensor, path: str | os.PathLike,
                exporter: str = "dynamo", opset: int = 18, dynamic_batch: bool = False) -> str:
    """Export ``module`` with input ``x`` and output ``y``; returns the path written."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    module = module.eval()
    kwargs = {}
    if dynamic_batch and exporter == "dynamo":
        kwargs["dynamic_shapes"] = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}}
    elif dynamic_batch:
        kwargs["dynamic_axes"] = {"x": {0: "batch"}, "y": {0: "batch"}}
    # The dynamo exporter narrates each step on stdout; keep callers' output readable.
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        torch.onnx.export(
            module, (example,), str(path), input_names=["x"], output_names=["y"],
            opset_version=opset, dynamo=exporter == "dynamo", **kwargs,
        )
    return str(path)
