"""Export PyTorch modules to ONNX the way users do (torch is needed here, not in the compiler).

``exporter='dynamo'`` is ``torch.onnx.export(..., dynamo=True)`` (weights in a ``.onnx.data``
side file); ``'legacy'`` is the TorchScript exporter (one file).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings

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
    with contextlib.redirect_stdout(io.StringIO()), _torch_export_noise_hidden(), torch.no_grad():
        torch.onnx.export(
            module, (example,), str(path), input_names=["x"], output_names=["y"],
            opset_version=opset, dynamo=exporter == "dynamo", **kwargs,
        )
    return str(path)


@contextlib.contextmanager
def _torch_export_noise_hidden():
    """Hide two messages torch 2.13's dynamo exporter prints on every first export, about its
    own internals: a warning per torchvision op it cannot register (saddc installs no
    torchvision; no ViT uses those ops), and a FutureWarning from its pytree code. Anything
    else it reports still shows."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    hide_torchvision = _MessageFilter("torchvision is not installed")
    registration.addFilter(hide_torchvision)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning)
            yield
    finally:
        registration.removeFilter(hide_torchvision)


class _MessageFilter(logging.Filter):
    """Drops the log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)
