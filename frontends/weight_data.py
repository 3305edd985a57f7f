"""ONNX tools that serialize the model they are given, on models over protobuf's 2 GiB limit.

ONNX's shape inference and function inliner pass the model to C++ serialized, and protobuf
refuses to serialize a message over 2 GiB: a ViT-Huge (632M float32 weights, 2.5 GB) fails
with "Failed to serialize proto". Neither reads the weights, so for such a model the weights'
data is set aside while they run, and put back by name (in the model they return, too).
"""

from __future__ import annotations

import onnx

# Protobuf's limit on a serialized message.
PROTOBUF_LIMIT = 2**31 - 1
# Initializers up to this size keep their data: shapes and axes that data propagation reads.
SMALL_TENSOR_BYTES = 1024


def set_aside_weight_data(model: onnx.ModelProto) -> dict[str, bytes]:
    """Where ``model`` is over protobuf's limit, take the data of its initializers over
    ``SMALL_TENSOR_BYTES`` out of it; returns it by initializer name (nothing for a smaller
    model, which is left as it is)."""
    if model.ByteSize() <= PROTOBUF_LIMIT:
        return {}
    set_aside = {}
    for tensor in model.graph.initializer:
        if tensor.HasField("raw_data") and tensor.ByteSize() > SMALL_TENSOR_BYTES:
            set_aside[tensor.name] = tensor.raw_data
            tensor.ClearField("raw_data")
    return set_aside


def restore_weight_data(model: onnx.ModelProto, set_aside: dict[str, bytes]) -> None:
    """Put the data ``set_aside_weight_data`` took back into ``model``'s initializers."""
    for tensor in model.graph.initializer:
        if tensor.name in set_aside:
            tensor.raw_data = set_aside[tensor.name]


def inferred_types(model: onnx.ModelProto, data_prop: bool = False) -> dict[str, onnx.TypeProto]:
    """The type ONNX shape inference gives every value of ``model``'s graph, whatever the
    model's size (``model`` is unchanged)."""
    set_aside = set_aside_weight_data(model)
    try:
        graph = onnx.shape_inference.infer_shapes(model, data_prop=data_prop).graph
    finally:
        restore_weight_data(model, set_aside)
    return {value.name: value.type for value in [*graph.input, *graph.value_info, *graph.output]}
