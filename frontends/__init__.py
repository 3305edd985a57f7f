"""Model importers: ONNX files into TVM Relax."""

from .onnx_importer import (
    ImportedModel,
    TensorSpec,
    check_supported_ops,
    fold_onnx,
    import_onnx,
    load_onnx,
)

__all__ = [
    "ImportedModel",
    "TensorSpec",
    "check_supported_ops",
    "fold_onnx",
    "import_onnx",
    "load_onnx",
]
