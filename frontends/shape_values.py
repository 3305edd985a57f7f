"""The shape arithmetic of a symbolic-batch ONNX graph, evaluated where it reads only static
dims, and the rewrites of such a graph that TVM's importer needs it for.

A symbolic-batch export computes sizes from ``Shape`` ops. ONNX Runtime's constant folder does
not fold a ``Shape`` of a tensor with a symbolic dim, and onnxscript's does not fold a scalar
``Gather`` of a shape, so arithmetic on the static dims of such a shape stays in the graph, and
TVM's importer rejects uses of it:

- a ``Pad`` with computed pads ("Dynamic pads are not supported yet"): Swin pads its feature
  map to a multiple of the window size by ``(w - H mod w) mod w``, H read off the patch
  embedding's output (legacy exporter). ``fold_static_dims`` turns every value of the shape
  arithmetic that depends on static dims only into a constant; ONNX Runtime's folder then folds
  what is computed from it.
- a ``Resize`` to computed sizes (TVM's converter reads every entry of the sizes as an integer
  constant, batch included): SegFormer's decode head resizes to the input's batch and channels
  and a static height and width. ``convertible_shape_ops`` gives such a Resize the scales that
  are equivalent to its sizes (and turns a ``Reshape`` of an integer scalar, which TVM's
  converter does not take either, into the ``Unsqueeze`` it is).

A value of the shape arithmetic is known here as a ``ShapeValue``: a scalar or 1-D integer
tensor whose entries are integers or ``Dim``s, a dim of a tensor that is symbolic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from saddc.frontends.weight_data import inferred_types


@dataclass(frozen=True)
class Dim:
    """Dim ``axis`` of the tensor named ``tensor``, not known until run time."""

    tensor: str
    axis: int


@dataclass(frozen=True)
class ShapeValue:
    """An integer scalar (``scalar``, one entry) or 1-D tensor, entry by entry."""

    entries: tuple[int | Dim, ...]
    dtype: int  # onnx.TensorProto element type
    scalar: bool = False

    @property
    def is_constant(self) -> bool:
        return all(isinstance(entry, int) for entry in self.entries)

    def as_tensor(self) -> onnx.TensorProto:
        array = np.array(self.entries, dtype=helper.tensor_dtype_to_np_dtype(self.dtype))
        return numpy_helper.from_array(array.reshape(()) if self.scalar else array)


def fold_static_dims(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with each node of its shape arithmetic whose value reads static dims only
    replaced by a ``Constant`` of that value; a model without symbolic input dims is returned
    as it is, the same object."""
    if not _has_symbolic_inputs(model):
        return model
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    values = shape_values(folded)
    for position, node in enumerate(folded.graph.node):
        value = values.get(node.output[0]) if len(node.output) == 1 else None
        if node.op_type != "Constant" and value is not None and value.is_constant:
            folded.graph.node[position].CopyFrom(
                helper.make_node("Constant", [], [node.output[0]], name=node.name, value=value.as_tensor()))
    return folded


def convertible_shape_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (folded) with the two uses of shape arithmetic TVM's importer cannot convert
    made convertible; a model without symbolic input dims is returned as it is, the same object.

    - A ``Resize`` to sizes that are, axis by axis, the input's own dim or a constant where the
      input's dim is static, given the equivalent scales instead (1 for the input's own dim,
      ``size / dim`` for a constant). The scales ONNX derives from sizes are those float32
      ratios; the rewrite is made only where ``floor(dim * scale)`` gives the size back, in
      float32 as ONNX Runtime computes it and in float64 as TVM does.
    - A ``Reshape`` of a scalar to ``[1]`` or ``[-1]``, an ``Unsqueeze`` at axis 0, the same
      tensor: TVM's importer holds an integer computed from shapes as an expression, which its
      ``Reshape`` converter does not take and its ``Unsqueeze`` converter does (Swin V2's dynamo
      export reshapes ``4 * batch`` into the shape of a later reshape).
    """
    if not _has_symbolic_inputs(model):
        return model
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    dims = _static_dims(rewritten)
    values = shape_values(rewritten, dims)
    for node in rewritten.graph.node:
        if node.op_type == "Resize" and len(node.input) == 4 and node.input[3] and _stretches_all_axes(node):
            scales = _equivalent_scales(node.input[0], values.get(node.input[3]), dims.get(node.input[0]))
            if scales is not None:
                node.input[2] = f"{node.output[0]}_scales"
                rewritten.graph.initializer.append(numpy_helper.from_array(scales, node.input[2]))
                del node.input[3]
        elif node.op_type == "Reshape" and dims.get(node.input[0]) == [] and values.get(node.input[1]) in (
                ShapeValue((1,), onnx.TensorProto.INT64), ShapeValue((-1,), onnx.TensorProto.INT64)):
            node.op_type = "Unsqueeze"
            node.input[1] = f"{node.output[0]}_axes"
            rewritten.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.int64), node.input[1]))
            del node.attribute[:]  # allowzero, which Unsqueeze has not
    return rewritten


def _stretches_all_axes(resize: onnx.NodeProto) -> bool:
    """Whether ``resize``'s sizes are taken as they are, for every axis (no ``axes`` subset,
    no aspect-ratio policy but ``stretch``)."""
    attrs = {attr.name: helper.get_attribute_value(attr) for attr in resize.attribute}
    return "axes" not in attrs and attrs.get("keep_aspect_ratio_policy", b"stretch") == b"stretch"


def _equivalent_scales(tensor: str, sizes: ShapeValue | None, tensor_dims: list | None) -> np.ndarray | None:
    if sizes is None or tensor_dims is None or len(sizes.entries) != len(tensor_dims):
        return None
    scales = []
    for axis, (size, dim) in enumerate(zip(sizes.entries, tensor_dims)):
        if size == Dim(tensor, axis) or (isinstance(size, int) and size == dim):
            scales.append(np.float32(1))
        elif isinstance(size, int) and isinstance(dim, int) and dim > 0:
            scale = np.float32(size) / np.float32(dim)
            if int(np.floor(np.float32(dim) * scale)) != size or int(np.floor(float(dim) * float(scale))) != size:
                return None
            scales.append(scale)
        else:
            return None
    return np.array(scales, dtype=np.float32)


def shape_values(model: onnx.ModelProto, dims: dict[str, list] | None = None) -> dict[str, ShapeValue]:
    """The ``ShapeValue`` of every value of ``model``'s graph that has one: integer constants
    (scalars and 1-D), shapes of tensors of known rank, and what ``Gather``, ``Slice``,
    ``Concat``, ``Squeeze``, ``Unsqueeze``, ``Cast`` and ``Identity`` make of them. ``dims``:
    the graph's ``_static_dims``, inferred when not given."""
    dims = _static_dims(model) if dims is None else dims
    values: dict[str, ShapeValue] = {}
    for initializer in model.graph.initializer:
        _set_constant(values, initializer.name, initializer)
    for node in model.graph.node:
        if len(node.output) != 1:
            continue
        attrs = {attr.name: helper.get_attribute_value(attr) for attr in node.attribute}
        inputs = [values.get(name) for name in node.input]
        if node.op_type == "Constant":
            if "value" in attrs:
                _set_constant(values, node.output[0], attrs["value"])
        elif node.op_type == "Shape":
            if node.input[0] in dims:
                entries = tuple(dim if isinstance(dim, int) else Dim(node.input[0], axis)
                                for axis, dim in enumerate(dims[node.input[0]]))
                values[node.output[0]] = ShapeValue(entries[attrs.get("start", 0):attrs.get("end")], onnx.TensorProto.INT64)
        elif inputs and inputs[0] is not None:
            value = _evaluate(node.op_type, attrs, inputs)
            if value is not None:
                values[node.output[0]] = value
    return values


def _evaluate(op_type: str, attrs: dict, inputs: list) -> ShapeValue | None:
    """The ShapeValue of one node of shape arithmetic from its inputs', or None."""
    data = inputs[0]
    constant = [value.entries if value is not None and value.is_constant else None for value in inputs[1:]]
    if op_type in ("Identity", "Cast"):
        return ShapeValue(data.entries, attrs.get("to", data.dtype), data.scalar)
    if op_type == "Gather" and not data.scalar and attrs.get("axis", 0) == 0 and constant and constant[0] is not None:
        indices = inputs[1]
        # An index out of range is the model's error, left for TVM's importer to refuse.
        if all(-len(data.entries) <= index < len(data.entries) for index in indices.entries):
            return ShapeValue(tuple(data.entries[index] for index in indices.entries), data.dtype, indices.scalar)
    if op_type == "Slice" and not data.scalar and len(constant) >= 2 and None not in constant:
        starts, ends = constant[0], constant[1]
        axes, steps = (constant[2] if len(constant) > 2 else (0,)), (constant[3] if len(constant) > 3 else (1,))
        if len(starts) == len(ends) == len(axes) == len(steps) == 1 and axes[0] in (0, -1):
            return ShapeValue(data.entries[slice(starts[0], ends[0], steps[0])], data.dtype)
    if op_type == "Concat" and None not in inputs and not any(value.scalar for value in inputs):
        return ShapeValue(tuple(entry for value in inputs for entry in value.entries), data.dtype)
    if op_type == "Unsqueeze" and data.scalar:
        return ShapeValue(data.entries, data.dtype)
    if op_type == "Squeeze" and not data.scalar and len(data.entries) == 1:
        return ShapeValue(data.entries, data.dtype, scalar=True)
    return None


def _set_constant(values: dict, name: str, tensor: onnx.TensorProto) -> None:
    if tensor.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32) and len(tensor.dims) <= 1:
        array = numpy_helper.to_array(tensor)
        values[name] = ShapeValue(tuple(int(entry) for entry in array.reshape(-1)), tensor.data_type, array.ndim == 0)


def _static_dims(model: onnx.ModelProto) -> dict[str, list]:
    """Each value of known rank -> its dims, as ints where static and None where not
    (ONNX shape inference, with data propagation)."""
    return {name: [dim.dim_value if dim.HasField("dim_value") else None for dim in value_type.tensor_type.shape.dim]
            for name, value_type in inferred_types(model, data_prop=True).items()
            if value_type.tensor_type.HasField("shape")}


def _has_symbolic_inputs(model: onnx.ModelProto) -> bool:
    return any(not dim.HasField("dim_value") for value in model.graph.input
               for dim in value.type.tensor_type.shape.dim)
