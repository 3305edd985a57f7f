"""The shape arithmetic of symbolic-batch ONNX graphs: what reads static dims only folded
(fold_static_dims); a Resize to sizes that keep the batch given equivalent scales, and a
Reshape of a scalar to one element made an Unsqueeze (convertible_shape_ops). Each rewritten
graph computes what the original did (ONNX Runtime)."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import saddc
from conftest import ort_outputs, random_input, relative_error, run_saddc
from saddc.frontends import fold_onnx
from saddc.frontends.shape_values import Dim, fold_static_dims, convertible_shape_ops, shape_values


def model(nodes, x_shape, y_shape, initializers=()) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        [numpy_helper.from_array(np.array(value, np.int64), name) for name, value in initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def window_padding(height: int) -> onnx.ModelProto:
    """Swin's (legacy export): pad the height to a multiple of 4 by ``(4 - H mod 4) mod 4``,
    with H a scalar Gather of the input's shape."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "two"], ["height"], axis=0),
        helper.make_node("Mod", ["height", "four"], ["rest"]),
        helper.make_node("Sub", ["four", "rest"], ["missing"]),
        helper.make_node("Mod", ["missing", "four"], ["pad"]),
        helper.make_node("Unsqueeze", ["pad", "zero_axis"], ["pad_1d"]),
        helper.make_node("Concat", ["six_zeros", "pad_1d", "one_zero"], ["pads"], axis=0),
        helper.make_node("Pad", ["x", "pads"], ["y"]),
    ]
    constants = [("two", 2), ("four", 4), ("zero_axis", [0]), ("six_zeros", [0] * 6), ("one_zero", [0])]
    return model(nodes, ["batch", 2, height, 3], ["batch", 2, None, 3], constants)


def upsampling(size: int, legacy: bool) -> onnx.ModelProto:
    """SegFormer's decode head: resize to the input's batch and channels and a static size,
    the first two read off the input's shape as each exporter writes it."""
    if legacy:
        leading = [helper.make_node("Shape", ["x"], ["shape"]),
                   helper.make_node("Slice", ["shape", "start", "end"], ["leading"])]
    else:
        leading = [helper.make_node("Shape", ["x"], ["leading"], start=0, end=2)]
    nodes = [*leading, helper.make_node("Concat", ["leading", "spatial"], ["sizes"], axis=0),
             helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear")]
    constants = [("start", [0]), ("end", [2]), ("spatial", [size, size])]
    return model(nodes, ["batch", 2, 3, 3], ["batch", 2, size, size], constants)


def same_outputs(original: onnx.ModelProto, rewritten: onnx.ModelProto, x_shape, tmp_path) -> None:
    """The rewritten graph computes what the original does (ONNX Runtime), and saddc's module
    of the original (which TVM's importer failed on without the rewrite) does too."""
    onnx.save(original, tmp_path / "original.onnx")
    onnx.save(rewritten, tmp_path / "rewritten.onnx")
    module = saddc.load(saddc.compile(tmp_path / "original.onnx", target="llvm", output=tmp_path / "m.so").output)
    for batch in (1, 3):
        x = random_input((batch, *x_shape), seed=batch)
        (expected,) = ort_outputs(tmp_path / "original.onnx", {"x": x})
        (actual,) = ort_outputs(tmp_path / "rewritten.onnx", {"x": x})
        np.testing.assert_array_equal(actual, expected)
        assert relative_error(module(x)[0], expected) <= 1e-6


def test_padding_computed_from_a_static_dim_folds_to_constant_pads(tmp_path):
    original = window_padding(height=5)
    assert shape_values(original)["shape"].entries == (Dim("x", 0), 2, 5, 3)
    folded = fold_static_dims(original)
    (height,) = [node for node in folded.graph.node if node.output[0] == "height"]
    assert height.op_type == "Constant" and numpy_helper.to_array(height.attribute[0].t) == 5
    pads = {init.name: numpy_helper.to_array(init) for init in fold_onnx(folded).graph.initializer}["pads"]
    assert pads.tolist() == [0, 0, 0, 0, 0, 0, 3, 0]
    same_outputs(original, folded, (2, 5, 3), tmp_path)


def test_shape_of_the_batch_stays_computed():
    folded = fold_static_dims(model([helper.make_node("Shape", ["x"], ["shape"]),
                                     helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
                                     helper.make_node("Identity", ["x"], ["y"])],
                                    ["batch", 2], ["batch", 2], [("zero", 0)]))
    assert [node.op_type for node in folded.graph.node] == ["Shape", "Gather", "Identity"]


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "dynamo"])
def test_resize_to_sizes_that_keep_the_batch_takes_scales(legacy, tmp_path):
    original = upsampling(size=6, legacy=legacy)
    rewritten = convertible_shape_ops(original)
    (resize,) = [node for node in rewritten.graph.node if node.op_type == "Resize"]
    assert len(resize.input) == 3
    scales = {init.name: numpy_helper.to_array(init) for init in rewritten.graph.initializer}[resize.input[2]]
    assert scales.tolist() == [1, 1, 2, 2]
    same_outputs(original, rewritten, (2, 3, 3), tmp_path)


def test_resize_whose_scale_does_not_give_its_size_back_keeps_its_sizes():
    # 10 / 3 in float32 times 3 is 9.99999976 in float64 (TVM's arithmetic): size 9, not 10.
    original = upsampling(size=10, legacy=False)
    (resize,) = [node for node in convertible_shape_ops(original).graph.node if node.op_type == "Resize"]
    assert list(resize.input) == ["x", "", "", "sizes"]


def test_reshape_of_a_scalar_from_shapes_is_an_unsqueeze(tmp_path):
    """Swin V2's (dynamo export): ``4 * batch`` reshaped to one element, concatenated into the
    shape of a reshape."""
    nodes = [helper.make_node("Shape", ["x"], ["leading"], start=0, end=1),
             helper.make_node("Squeeze", ["leading"], ["batch"]),
             helper.make_node("Mul", ["batch", "two"], ["rows"]),
             helper.make_node("Reshape", ["rows", "one"], ["rows_1d"]),
             helper.make_node("Concat", ["rows_1d", "minus_one"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["y"])]
    original = model(nodes, ["batch", 4, 3], ["rows", 6], [("two", 2), ("one", [1]), ("minus_one", [-1])])
    rewritten = convertible_shape_ops(original)
    assert [node.op_type for node in rewritten.graph.node] == ["Shape", "Squeeze", "Mul", "Unsqueeze", "Concat", "Reshape"]
    same_outputs(original, rewritten, (4, 3), tmp_path)


def test_gather_of_a_shape_out_of_range_is_refused_in_one_line(tmp_path):
    """An invalid model's arithmetic is not evaluated: the dim at index 7 of a 3-D shape is
    left for the importer to refuse (a traceback from the evaluation before)."""
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "index"], ["dim"], axis=0),
             helper.make_node("Unsqueeze", ["dim", "zero"], ["dim_1d"]),
             helper.make_node("Concat", ["dim_1d", "minus_one"], ["new_shape"], axis=0),
             helper.make_node("Reshape", ["x", "new_shape"], ["y"])]
    invalid = model(nodes, ["batch", 2, 3], ["a", "b"], [("index", 7), ("zero", [0]), ("minus_one", [-1])])
    assert "dim" not in shape_values(invalid)
    onnx.save(invalid, tmp_path / "invalid.onnx")
    result = run_saddc("compile", tmp_path / "invalid.onnx", "-o", tmp_path / "m.so")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == ["saddc: error: Error converting operator Gather: ShapeExpr index out of range"]


def test_graphs_without_symbolic_inputs_are_returned_as_they_are():
    static = model([helper.make_node("Identity", ["x"], ["y"])], [1, 2], [1, 2])
    assert fold_static_dims(static) is static and convertible_shape_ops(static) is static
