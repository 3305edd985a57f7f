"""ONNX frontend: load and validate a model file, clean it up the way real exports need, and
import it into a Relax IRModule.

Steps, in order:
1. ``load_onnx``: read the file (external-data side files too) and reject what is not a
   usable ONNX model with a one-line ``ModelLoadError``.
2. ``expand_function_ops``: a standard op TVM's importer cannot convert but ONNX defines as a
   function of other ops (opset 23's ``Attention``, which torch's exporter emits for
   scaled-dot-product attention from opset 23 on) is replaced by ONNX's own expansion of it,
   so that its attention is the matmul-softmax-matmul graph saddc's passes recognize; the
   expansion's shape arithmetic is folded with onnxscript's constant folder, which, unlike
   ONNX Runtime's, evaluates the static dims of a symbolic-batch shape (what is left, shape
   ops on the batch, TVM's importer takes).
3. ``shape_values.fold_static_dims`` (symbolic-batch graphs): the shape arithmetic that
   reads only static dims, as constants, for the next step to fold what is computed from it.
4. ``fold_onnx``: ONNX Runtime's basic-level graph optimizer (constant folding of shape
   subgraphs, identity/dropout removal) with its fusion rewrites disabled, so MatMuls stay
   MatMuls for saddc's passes. TVM's importer cannot import Swin-style graphs without this:
   a ``Pad`` whose pads come from ``Shape`` ops leaves every later tensor shapeless and the
   importer's ``Reshape`` rejects it.
5. ``shape_values.convertible_shape_ops`` (symbolic-batch graphs): a ``Resize`` to sizes
   that keep the batch takes the equivalent constant scales, which TVM's converter reads, and
   a ``Reshape`` of a scalar from shapes to one element is the ``Unsqueeze`` TVM converts.
6. ``check_supported_ops``: name every op (and a node using it) that TVM's importer lacks.
7. ``import_onnx``: ``tvm.relax.frontend.onnx.from_onnx`` with the weights as constants.
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import re
import tempfile
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnx.inliner

from saddc.errors import ModelLoadError, UnsupportedModelError
from saddc.frontends.shape_values import convertible_shape_ops, fold_static_dims
from saddc.frontends.weight_data import inferred_types, restore_weight_data, set_aside_weight_data
from saddc.native_stderr import captured_native_stderr
from saddc.specs import TensorSpec

# Graph rewrites of ONNX Runtime's basic level that fuse ops or move transposes; saddc's own
# passes match the unfused MatMul/Add/Conv/BatchNormalization forms, and TVM's importer rejects
# the Gather-on-Shape form that the transpose optimizer leaves in symbolic-batch graphs.
_ORT_REWRITES_KEPT_OFF = (
    "TransposeOptimizer",
    "MatMulAddFusion",
    "GemmTransposeFusion",
    "ConvAddFusion",
    "ConvMulFusion",
    "ConvBNFusion",
    "ConvActivationFusion",
)
_DEFAULT_DOMAINS = ("", "ai.onnx")
# Standard ops whose name TVM's importer gives to another op: its "Attention" converts
# com.microsoft's (packed q/k/v weights, a num_heads attribute), not ONNX's (opset 23).
_SHADOWED_OPS = frozenset({"Attention"})
# The domain the expanded ops' function bodies are inlined from.
_EXPANSION_DOMAIN = "saddc.expanded"


@dataclass
class ImportedModel:
    """A Relax module imported from ONNX, with what the compile summary and manifest report."""

    mod: object  # tvm.IRModule; kept untyped so this module imports without TVM loaded
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    op_counts: collections.Counter = field(default_factory=collections.Counter)
    opset: int = 0
    producer: str = ""
    layer_names: dict[str, str] = field(default_factory=dict)


def load_onnx(path: str | os.PathLike) -> onnx.ModelProto:
    """Read and validate an ONNX file, loading external data that lies beside it."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelLoadError(f"model path is a directory, not an ONNX file: {path}")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"model file is empty: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # protobuf raises DecodeError and friends
        raise ModelLoadError(
            f"cannot parse {path} as ONNX (truncated, corrupt, or not an ONNX file): "
            f"{_first_line(err)}"
        ) from None
    if not model.HasField("graph") or model.ir_version == 0 or not model.opset_import:
        raise ModelLoadError(f"not an ONNX model (no graph, IR version or opset): {path}")
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
    except Exception as err:
        raise ModelLoadError(
            f"cannot load the external weight data of {path}: {_first_line(err)}"
        ) from None
    try:
        # By path: the checker serializes a model it is given, which fails over 2 GiB.
        onnx.checker.check_model(str(path))
    except Exception as err:
        raise ModelLoadError(f"invalid ONNX model {path}: {_first_line(err)}") from None
    return model


def expand_function_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """Each standard-domain node that TVM's importer cannot convert, where ONNX defines its op
    as a function (``OpSchema`` function bodies, context-dependent ones built for the node's
    input types), inlined as that function's nodes. Other nodes are left for
    ``check_supported_ops`` to report."""
    from tvm.relax.frontend.onnx.onnx_frontend import (  # pylint: disable=import-outside-toplevel
        _get_convert_map,
    )

    convert_map = _get_convert_map()
    opset = _default_opset(model)
    targets = [(position, schema) for position, node in enumerate(model.graph.node)
               if node.domain in _DEFAULT_DOMAINS and (node.op_type not in convert_map or node.op_type in _SHADOWED_OPS)
               and (schema := _function_schema(node.op_type, opset))]
    if not targets:
        return model
    # Imported only here: over half a second, and most models have no op to expand.
    import onnxscript.optimizer  # pylint: disable=import-outside-toplevel

    types = inferred_types(model)
    expanded = onnx.ModelProto()
    expanded.CopyFrom(model)
    for index, (position, schema) in enumerate(targets):
        node = expanded.graph.node[position]
        function = onnx.FunctionProto()
        if schema.has_context_dependent_function:
            input_types = [(types[name] if name else onnx.TypeProto()).SerializeToString() for name in node.input]
            function.ParseFromString(schema.get_context_dependent_function_with_opset_version(
                opset, node.SerializeToString(), input_types))
        else:
            function.CopyFrom(schema.get_function_with_opset_version(opset))
        function.domain, function.name = _EXPANSION_DOMAIN, f"{node.op_type}_{index}"
        node.domain, node.op_type = function.domain, function.name
        expanded.functions.append(function)
    expanded.opset_import.append(onnx.helper.make_opsetid(_EXPANSION_DOMAIN, 1))
    set_aside = set_aside_weight_data(expanded)
    inlined = onnx.inliner.inline_local_functions(expanded)
    restore_weight_data(inlined, set_aside)
    inlined.opset_import.remove(onnx.helper.make_opsetid(_EXPANSION_DOMAIN, 1))
    onnxscript.optimizer.fold_constants(inlined)
    return inlined


def _function_schema(op_type: str, opset: int):
    """The standard op's schema at ``opset`` when ONNX defines it as a function, else None."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, "")
    except onnx.defs.SchemaError:
        return None
    return schema if schema.has_function or schema.has_context_dependent_function else None


def _default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), 0)


def fold_onnx(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run ONNX shape inference and constant folding; returns a new, standard-ONNX model."""
    ir_version = model.ir_version
    for attempt in range(2):
        try:
            folded = _basic_optimized(model, ir_version)
            break
        except Exception as err:  # ONNX Runtime raises its own Fail, InvalidGraph, ...
            newest = re.search(r"max supported IR version: (\d+)", str(err))
            if attempt or newest is None:
                raise UnsupportedModelError(
                    f"ONNX Runtime could not load the model for constant folding: {_onnxruntime_message(err)}"
                ) from None
            # onnx's own helpers write IR versions newer than ONNX Runtime reads. A version adds
            # types and fields, not meanings: a graph that uses what it adds fails on its own.
            ir_version = int(newest[1])
    return folded


def _basic_optimized(model: onnx.ModelProto, ir_version: int) -> onnx.ModelProto:
    """``model``, stamped with ``ir_version``, after ONNX Runtime's basic-level graph
    optimizer with ``_ORT_REWRITES_KEPT_OFF`` kept off, and ONNX shape inference."""
    import onnxruntime as ort  # pylint: disable=import-outside-toplevel

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.log_severity_level = 3
    source_model = onnx.ModelProto()
    source_model.CopyFrom(model)  # saved with external data, a model's weights move out of it
    source_model.ir_version = ir_version
    with tempfile.TemporaryDirectory(prefix="saddc-fold-") as tmp:
        source, folded = os.path.join(tmp, "source.onnx"), os.path.join(tmp, "folded.onnx")
        # Weights go to side files so models over protobuf's 2 GiB limit fold too.
        onnx.save(source_model, source, save_as_external_data=True, location="source.onnx.data")
        options.optimized_model_filepath = folded
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", "folded.onnx.data"
        )
        ort.InferenceSession(
            source, options, providers=["CPUExecutionProvider"], disabled_optimizers=list(_ORT_REWRITES_KEPT_OFF),
        )
        # Shape inference serializes the model: it runs before the weights, which it does not
        # read, are loaded from the side file (a model over 2 GiB would not serialize).
        result = onnx.shape_inference.infer_shapes(onnx.load(folded, load_external_data=False), data_prop=True)
        onnx.load_external_data_for_model(result, tmp)
        return result


def check_supported_ops(model: onnx.ModelProto) -> None:
    """Raise ``UnsupportedModelError`` naming each op TVM's ONNX importer cannot convert."""
    from tvm.relax.frontend.onnx.onnx_frontend import (  # pylint: disable=import-outside-toplevel
        _get_convert_map,
    )

    convert_map = _get_convert_map()
    unsupported: dict[str, str] = {}
    for position, node in enumerate(model.graph.node):
        known = node.domain in _DEFAULT_DOMAINS and (
            node.op_type in convert_map or node.op_type in ("Constant", "If")
        )
        if not known:
            op = node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"
            unsupported.setdefault(op, node.name or f"#{position}")
    if unsupported:
        listed = ", ".join(f"'{op}' (node '{name}')" for op, name in unsupported.items())
        raise UnsupportedModelError(f"unsupported ONNX op{'s' * (len(unsupported) > 1)}: {listed}")


def tensor_specs(values) -> list[TensorSpec]:
    """TensorSpecs of ONNX ValueInfos; unknown dims become their symbol or '?'."""
    specs = []
    for value in values:
        tensor_type = value.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in tensor_type.shape.dim
        )
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        specs.append(TensorSpec(value.name, dims, dtype))
    return specs


def graph_inputs(model: onnx.ModelProto) -> list:
    """The graph inputs that are real inputs, not initializers listed as inputs."""
    initializers = {init.name for init in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in initializers]


def layer_names(model: onnx.ModelProto) -> dict[str, str]:
    """``weight_key`` of each MatMul/Gemm/patchifying-Conv weight, as the Relax (in, out)
    matrix saddc's passes see, -> the ONNX node's name. TVM's importer drops node names; the
    weights themselves identify the layers."""
    from onnx import numpy_helper  # pylint: disable=import-outside-toplevel

    from saddc.passes.find_vit_blocks import weight_key  # pylint: disable=import-outside-toplevel

    initializers = {init.name: init for init in model.graph.initializer}
    names = {}
    for position, node in enumerate(model.graph.node):
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
            continue
        if node.input[1] not in initializers:
            continue
        weight = numpy_helper.to_array(initializers[node.input[1]])
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm" and attrs.get("transB", 0):
            weight = weight.T
        elif node.op_type == "Conv":
            weight = weight.reshape(weight.shape[0], -1).T
        if weight.ndim == 2 and weight.dtype == "float32":
            names.setdefault(weight_key(weight), node.name or f"{node.op_type}#{position}")
    return names


def import_onnx(model: str | os.PathLike | onnx.ModelProto) -> ImportedModel:
    """Load (if given a path), fold, check and import an ONNX model into Relax."""
    from tvm.relax.frontend.onnx import from_onnx  # pylint: disable=import-outside-toplevel

    if not isinstance(model, onnx.ModelProto):
        model = load_onnx(model)
    op_counts = collections.Counter(node.op_type for node in model.graph.node)
    expanded = expand_function_ops(model)
    check_supported_ops(expanded)
    folded = convertible_shape_ops(fold_onnx(fold_static_dims(expanded)))
    check_supported_ops(folded)
    opset = _default_opset(folded)
    # The importer prints the failing op's inputs to stdout before it re-raises; keep that
    # out of the user's terminal and report one line instead.
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), warnings.catch_warnings():
            # from_onnx runs the ONNX checker on the model it is given, which serializes it, and
            # warns with the checker's error: over 2 GiB, "Failed to serialize proto". A model
            # file saddc checks by path (load_onnx).
            warnings.filterwarnings("ignore", "Failed to serialize proto", UserWarning)
            mod = from_onnx(folded, opset=opset, keep_params_in_input=False)
    except Exception as err:
        failing = captured.getvalue().strip().splitlines()
        where = failing[0].split(",")[0] if failing else "TVM's ONNX importer failed"
        # The importer's BlockBuilder, its block open at the failing op, lives on in the
        # exception's frames; freed, it logs "BlockBuilder destroyed with remaining blocks!"
        # under the one-line error. Free it here, where that log is discarded.
        with captured_native_stderr():
            for chained in _exception_chain(err):
                traceback.clear_frames(chained.__traceback__)
        raise UnsupportedModelError(f"{where}: {_first_line(err)}") from None
    return ImportedModel(
        mod=mod,
        inputs=tensor_specs(graph_inputs(folded)),
        outputs=tensor_specs(folded.graph.output),
        op_counts=op_counts,
        opset=opset,
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        layer_names=layer_names(folded),
    )


def _exception_chain(err: BaseException):
    """``err`` and the exceptions it was raised from or while handling."""
    while err is not None:
        yield err
        err = err.__cause__ or err.__context__


def _onnxruntime_message(err: BaseException) -> str:
    """ONNX Runtime's error message without its error code, the path of saddc's temporary
    copy of the model, and the source location and C++ signature it was raised at."""
    message = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", str(err).strip())
    message = re.sub(r"Load model from \S+ failed:", "", message)
    return _first_line(re.sub(r"/onnxruntime_src/\S+ [^(]*\((?:[^()]|\([^()]*\))*\)(?: const)? ", "", message))


def _first_line(err: BaseException | str) -> str:
    """The most specific one-line description of an exception (or its message) from TVM, ONNX or
    protobuf."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    # TVM errors put the message last, after a C++ backtrace.
    message = lines[-1] if lines else type(err).__name__ if isinstance(err, BaseException) else "no message"
    return message if len(message) <= 300 else message[:297] + "..."
