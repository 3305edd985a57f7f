"""Models over protobuf's 2 GiB limit: ONNX's shape inference and inliner run with the weights'
data set aside and put back (frontends/weight_data.py). The limit is lowered here so that a
small model takes that path; a real 2.4 GB model is too slow for the suite (README)."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from conftest import random_input
from model_zoo import IMAGE, build
from saddc.frontends import weight_data
from saddc.frontends.onnx_importer import expand_function_ops
from saddc.frontends.torch_export import export_onnx


def weights(model: onnx.ModelProto) -> dict:
    return {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}


@pytest.fixture(scope="module")
def attention_op_model(tmp_path_factory) -> onnx.ModelProto:
    """HF ViT at opset 23: its attention is ONNX's Attention op, which the frontend inlines."""
    path = tmp_path_factory.mktemp("opset23") / "vit.onnx"
    return onnx.load(export_onnx(build("vit-hf"), torch.from_numpy(random_input(IMAGE)), path, "dynamo", 23))


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setattr(weight_data, "PROTOBUF_LIMIT", 4096)


def test_models_under_the_limit_keep_their_weights_in_place(attention_op_model):
    assert weight_data.set_aside_weight_data(attention_op_model) == {}


def test_shape_inference_over_the_limit_sees_the_same_types(attention_op_model, small_limit):
    copy = onnx.ModelProto()
    copy.CopyFrom(attention_op_model)
    set_aside = weight_data.set_aside_weight_data(copy)
    assert set_aside and not any(tensor.HasField("raw_data") for tensor in copy.graph.initializer
                                 if tensor.name in set_aside)
    before = weights(attention_op_model)
    with_data = {name: value_type.SerializeToString() for name, value_type in
                 weight_data.inferred_types(attention_op_model, data_prop=True).items()}
    for name, value in weights(attention_op_model).items():
        np.testing.assert_array_equal(value, before[name])
    with_data_in_place = onnx.shape_inference.infer_shapes(attention_op_model, data_prop=True).graph
    assert with_data == {value.name: value.type.SerializeToString() for value in
                         [*with_data_in_place.input, *with_data_in_place.value_info, *with_data_in_place.output]}


def test_inlined_model_over_the_limit_has_its_weights(attention_op_model, monkeypatch):
    expected = expand_function_ops(attention_op_model)
    monkeypatch.setattr(weight_data, "PROTOBUF_LIMIT", 4096)
    expanded = expand_function_ops(attention_op_model)
    assert expanded.graph.node == expected.graph.node
    assert weights(expanded).keys() == weights(expected).keys()
    for name, value in weights(expected).items():
        np.testing.assert_array_equal(weights(expanded)[name], value)
