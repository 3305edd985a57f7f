"""Recognize the ViT building blocks saddc rewrites: linear layers and softmax attention.

An analysis, not a transform: it reports what the rewrite passes match, and is what
``saddc inspect`` prints. It expects a module after the pipeline's ``cleanup`` phase, where
weights are plain constants (a Gemm's transposed weight is folded into a plain one there).

Patterns (TVM's ``relax.dpl``):
- linear:     ``matmul(x, const W)``, optionally followed by ``add(_, const b)``
- attention:  ``matmul(softmax(s), V)`` where ``s`` is ``matmul(Q, K^T)``, optionally scaled by a
              constant (``multiply``/``divide``) before the softmax; Q, K, V are activations.
              The scale may also sit before the matmul, on Q or K (exported scaled-dot-product
              attention scales each by the square root); the block reports where. Fused or
              separate q/k/v projections, a class token and keys from a shorter sequence (PVT's
              spatial-reduction attention) all match: only the dataflow at the core is read.
              Consecutive blocks with the same heads, token counts and head dim form a stage.

Each linear layer gets a role from the dataflow around it, so users can select layers by what
they do whatever the exporter named them. Roles around attention count every softmax attention,
``matmul(softmax(s), V)`` with ``s`` reached from a ``Q K^T`` matmul of activations through
scales, added biases or masks and reshapes: also attention the rewrite leaves alone (Swin's
and LeViT's, with a relative-position bias), whose layers are still shift and MoE candidates.
- ``router``       its output is an ``argmax`` (an MoE router: never rewritten itself)
- ``qkv``          its output reaches an attention matmul through reshapes/transposes/splits,
                   scaling (also Swin V2's normalization of Q and K) or constant shifts (the
                   batch norm that ends LeViT's projections)
- ``attn-proj``    its input comes from an attention output through such ops or an
                   elementwise activation (LeViT applies HardSwish before the projection)
- ``head``         its output is the model output, rearranged or through arithmetic (a
                   distilled DeiT averages its two heads)
- ``mlp-fc1``      its output reaches an activation function (GELU in its erf or tanh form,
                   ReLU, leaky ReLU, SiLU and QuickGELU through ``sigmoid``, HardSwish through
                   ``clip``, Mish through ``tanh``) through elementwise ops or a depthwise conv,
                   without crossing a matmul, softmax or normalization
- ``mlp-fc2``      its input comes from such an activation the same way
- ``patch-embed``  its input is the model input, rearranged (a patch embedding as a matmul)
- ``other``        none of these

The first role that applies is the layer's, in that order: a classifier after a ReLU MLP (as
YOLOS's) is its model's head, and a layer on the model input that feeds an activation is an
MLP's.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, wildcard

ROLES = ("patch-embed", "qkv", "attn-proj", "mlp-fc1", "mlp-fc2", "head", "router", "other")

# Ops that only move or view data: a value keeps its meaning through them.
_REARRANGING_OPS = frozenset({
    "relax.reshape", "relax.permute_dims", "relax.split", "relax.strided_slice", "relax.take",
    "relax.squeeze", "relax.expand_dims", "relax.flatten", "relax.astype", "relax.concat",
    "relax.broadcast_to",
})
_SCALING_OPS = frozenset({"relax.multiply", "relax.divide"})
_SHIFTING_OPS = frozenset({"relax.add", "relax.subtract"})
# Elementwise arithmetic between a linear layer and its activation function (``where``: the
# select between an exported MoE layer's two experts).
_ELEMENTWISE_OPS = frozenset({
    "relax.add", "relax.subtract", "relax.multiply", "relax.divide", "relax.nn.conv2d",
    "relax.nn.conv1d", "relax.power", "relax.maximum", "relax.minimum", "relax.abs", "relax.negative",
    "relax.exp", "relax.log", "relax.where",
})
# The nonlinearity of an MLP, as the ONNX importer emits each activation function: GELU as
# ``erf`` (or ``tanh`` in its tanh form, ``gelu`` from opset 20), SiLU and QuickGELU as
# ``x * sigmoid(a x)``, HardSwish as ``x * clip(x + 3, 0, 6) / 6``, Mish as ``x * tanh(softplus)``,
# ReLU6 as ``clip`` (``RewriteTEClipToRelaxClip``: the importer's kernels for a Clip).
# None of these occurs in a normalization, which the walks do not cross anyway.
_ACTIVATION_OPS = frozenset({
    "relax.erf", "relax.tanh", "relax.sigmoid", "relax.clip", "relax.nn.gelu", "relax.nn.gelu_tanh",
    "relax.nn.silu", "relax.nn.relu", "relax.nn.leakyrelu",
})
# How many ops may separate a linear layer from its activation: erf-form GELU takes 3, tanh-form
# GELU 8, and PVT's MixFFN puts reshape, transpose, depthwise conv and bias add between fc1 and
# the GELU.
_ACTIVATION_DISTANCE = 12
# Between a softmax and the Q K^T matmul of its scores: scaling, an added bias or mask, reshapes.
_SCORE_OPS = _REARRANGING_OPS | _SCALING_OPS | _SHIFTING_OPS


@dataclass(frozen=True)
class LinearLayer:
    """``y = x @ W (+ b)`` with a constant ``W`` of shape (in_features, out_features).

    ``name`` is the ONNX node name when the caller supplies the weight-to-name map, else
    ``linear[index]``. ``activation`` is the layer's input variable, ``matmul``/``output`` the
    variables bound to the matmul and to the layer's result (the bias add when there is one);
    ``weight``/``bias`` the constants (a bias is always ``out_features`` values).
    """

    index: int
    name: str
    role: str
    input_shape: tuple
    in_features: int
    out_features: int
    has_bias: bool
    activation: relax.Var = field(repr=False, compare=False)
    matmul: relax.Var = field(repr=False, compare=False)
    output: relax.Var = field(repr=False, compare=False)
    weight: relax.Expr = field(repr=False, compare=False)
    bias: relax.Expr | None = field(repr=False, compare=False)


@dataclass(frozen=True)
class AttentionBlock:
    """``softmax(Q K^T * scale) V``: token counts, heads, head and value dims, and the scale.

    ``scale`` says where the model applies it: ``scores`` (after ``Q K^T``), ``query``, ``key``,
    ``query and key`` (before the matmul), or ``none``; ``score_scale`` is the constant the
    scores themselves are multiplied by (1.0 when the scale sits on Q or K, which are then
    taken as they enter the matmul). ``query``, ``key_t`` and ``value`` are those operands:
    Q (..., Nq, d), K^T (..., d, Nk), V (..., Nk, dv).
    """

    index: int
    stage: int
    heads: int | str
    query_tokens: int | str
    key_tokens: int | str
    head_dim: int | str
    value_dim: int | str
    scale: str
    score_scale: float
    query: relax.Expr = field(repr=False, compare=False)
    key_t: relax.Expr = field(repr=False, compare=False)
    value: relax.Expr = field(repr=False, compare=False)
    scores: relax.Var = field(repr=False, compare=False)
    softmax: relax.Var = field(repr=False, compare=False)
    output: relax.Var = field(repr=False, compare=False)


@dataclass(frozen=True)
class SkippedSoftmax:
    """A softmax that is not recognized as attention, and why."""

    index: int
    shape: tuple
    reason: str


def weight_key(weight: np.ndarray) -> str:
    """Identity of a weight matrix (K, N) by content, to find a layer's ONNX node name."""
    weight = np.ascontiguousarray(weight, dtype=np.float32)
    return hashlib.sha1(repr(weight.shape).encode() + weight.tobytes()).hexdigest()


def dims(expr: relax.Expr) -> tuple:
    """The dims of ``expr``'s shape (see ``shape_dims``)."""
    return shape_dims(expr.ty)


def shape_dims(tensor_type: relax.TensorType) -> tuple:
    """The dims of a tensor type's shape: ints where static, else the expression as text
    (``batch * 4``, without TVMScript's ``T.int64(4)`` for its constants)."""
    shape = tensor_type.shape
    values = shape.values if hasattr(shape, "values") else shape
    return tuple(int(d) if isinstance(d, tvm.tirx.IntImm) else re.sub(r"T\.int\d+\((-?\d+)\)", r"\1", str(d))
                 for d in values)


def _linear_pattern():
    matmul = is_op("relax.matmul")(wildcard(), is_const())
    # Exporters put the bias on either side of the add.
    add = is_op("relax.add")
    return matmul, add(matmul, is_const()) | add(is_const(), matmul)


def _attention_pattern():
    scores = is_op("relax.matmul")(wildcard(), wildcard())
    scaled = (
        is_op("relax.multiply")(scores, is_const())
        | is_op("relax.divide")(scores, is_const())
        | is_op("relax.multiply")(is_const(), scores)
    )
    # The dynamo exporter's scaled-dot-product attention adds its (all-zero) mask to the scores
    # and guards the probabilities with where(isnan(p), 0, p); both leave attention as it is.
    masked = is_op("relax.add")(scores | scaled, is_const())
    probs = is_op("relax.nn.softmax")(scores | scaled | masked)
    guarded = is_op("relax.where")(is_op("relax.isnan")(probs), is_const(), probs)
    return scores, scaled, masked, probs, is_op("relax.matmul")(probs | guarded, wildcard())


def _is_zero(constant) -> bool:
    return not np.any(constant.value.numpy())


def bindings(func: relax.Function):
    for block in func.body.blocks:
        yield from block.bindings


class Dataflow:
    """Producers and users of each variable of a function, for walking the graph."""

    def __init__(self, func: relax.Function):
        self.value = {}
        self.users: dict[relax.Var, list[relax.Var]] = {}
        self.params = set(func.params)
        for binding in bindings(func):
            self.value[binding.var] = binding.value
            for operand in self.operands(binding.var):
                self.users.setdefault(operand, []).append(binding.var)
        self.returned = set(self._vars_in(func.body.body))

    @staticmethod
    def _vars_in(expr) -> list:
        if isinstance(expr, relax.Var):
            return [expr]
        if isinstance(expr, relax.Tuple):
            return [v for f in expr.fields for v in Dataflow._vars_in(f)]
        return []

    def op(self, var) -> str | None:
        value = self.value.get(var)
        if isinstance(value, relax.TupleGetItem):
            return "TupleGetItem"
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
            return value.op.name
        return None

    def operands(self, var) -> list:
        value = self.value.get(var)
        if isinstance(value, relax.TupleGetItem):
            return self._vars_in(value.tuple_value)
        if isinstance(value, relax.Call):
            return [v for arg in value.args for v in self._vars_in(arg)]
        if isinstance(value, relax.Tuple):
            return self._vars_in(value)
        return []

    def with_constant(self, var) -> bool:
        """Whether ``var`` is bound to a call with a constant operand (a bias add, a scale)."""
        value = self.value.get(var)
        return isinstance(value, relax.Call) and any(isinstance(a, tvm.ir.GenericConst) for a in value.args)

    def reach(self, start, forward: bool, through, limit: int = 32):
        """Variables reachable from ``start`` whose path passes only ``through`` ops (a set of
        op names, a predicate on the variable, or any op when None) or tuple plumbing, with
        their distance; the variables at the ends are included."""
        seen, frontier, found = {start}, [(start, 0)], []
        while frontier:
            var, distance = frontier.pop()
            nexts = self.users.get(var, []) if forward else self.operands(var)
            for nxt in nexts:
                if nxt in seen or distance >= limit:
                    continue
                seen.add(nxt)
                found.append((nxt, distance + 1))
                passes = through is None or (through(nxt) if callable(through) else self.op(nxt) in through)
                if passes or self.op(nxt) == "TupleGetItem" or isinstance(self.value.get(nxt), relax.Tuple):
                    frontier.append((nxt, distance + 1))
        return found


def _role(flow: Dataflow, activation, output, scores: set, attention_outputs: set) -> str:
    rearranged = _REARRANGING_OPS
    if any(flow.op(user) == "relax.argmax" for user in flow.users.get(output, [])):
        return "router"
    # Exported scaled-dot-product attention scales Q and K by sqrt(scale) each; LeViT's
    # projections end in a batch norm (constant subtract, divide, multiply, add). A shift by an
    # activation (a residual add) ends the walk.
    def to_attention(var):
        op = flow.op(var)
        return op in rearranged | _SCALING_OPS or (op in _SHIFTING_OPS and flow.with_constant(var))

    if any(v in scores or v in attention_outputs for v, _ in flow.reach(output, True, to_attention)):
        return "qkv"
    near = rearranged | _ELEMENTWISE_OPS | _ACTIVATION_OPS
    near_upstream = [activation] + [v for v, _ in flow.reach(activation, False, near, _ACTIVATION_DISTANCE)]
    if any(v in attention_outputs for v in near_upstream):
        return "attn-proj"
    # A distilled DeiT averages its two heads.
    downstream = [v for v, _ in flow.reach(output, True, rearranged | _SCALING_OPS | _SHIFTING_OPS)]
    if output in flow.returned or any(v in flow.returned for v in downstream):
        return "head"
    if any(flow.op(v) in _ACTIVATION_OPS
           for v, _ in flow.reach(output, True, near, _ACTIVATION_DISTANCE)):
        return "mlp-fc1"
    if any(flow.op(v) in _ACTIVATION_OPS for v in near_upstream):
        return "mlp-fc2"
    if any(v in flow.params for v in [activation] + [v for v, _ in flow.reach(activation, False, rearranged)]):
        return "patch-embed"
    return "other"


def _attention_products(flow: Dataflow, softmax: relax.Var) -> list:
    """The matmuls that multiply ``softmax``'s probabilities with values (``matmul(p, V)``),
    also through the dynamo exporter's NaN guard ``where(isnan(p), 0, p)``."""
    probabilities = [softmax] + [u for u in flow.users.get(softmax, []) if flow.op(u) == "relax.where"]
    return [u for p in probabilities for u in flow.users.get(p, [])
            if flow.op(u) == "relax.matmul" and flow.value[u].args[0].same_as(p)]


def _softmax_attention(flow: Dataflow) -> tuple[set, set]:
    """The ``Q K^T`` and ``P V`` matmuls of every softmax attention in the function, whether or
    not ``find_attention_blocks`` recognizes it for a rewrite (see the module doc)."""
    scores, outputs = set(), set()
    for var in flow.value:
        if flow.op(var) != "relax.nn.softmax" or not (products := _attention_products(flow, var)):
            continue
        outputs.update(products)
        scores.update(v for v, _ in flow.reach(var, False, _SCORE_OPS)
                      if flow.op(v) == "relax.matmul" and not flow.with_constant(v))
    return scores, outputs


def find_linear_layers(
    mod: tvm.IRModule, func_name: str = "main", names: dict[str, str] | None = None
) -> list[LinearLayer]:
    """Every matmul with a constant 2-D weight in ``func_name``, in program order.

    ``names`` maps ``weight_key`` of a weight to its layer's name (the ONNX node's).
    """
    func = mod[func_name]
    var2val = relax.analysis.get_var2val(func)
    flow = Dataflow(func)
    scores, attention_outputs = _softmax_attention(flow)
    matmul, with_bias = _linear_pattern()
    bias_of = {}
    for binding in bindings(func):
        if with_bias.extract_matched_expr(binding.value, var2val):
            left, right = binding.value.args
            product, bias = (left, right) if isinstance(left, relax.Var) else (right, left)
            bias_of[product] = (binding.var, bias)
    layers = []
    for binding in bindings(func):
        if not matmul.extract_matched_expr(binding.value, var2val):
            continue
        activation, weight = binding.value.args
        if len(dims(weight)) != 2 or not isinstance(activation, relax.Var):
            continue
        in_features, out_features = dims(weight)
        # A bias add is part of the layer only when it is the matmul's one user.
        output, bias = binding.var, None
        if binding.var in bias_of and len(flow.users.get(binding.var, [])) == 1:
            candidate = bias_of[binding.var]
            if int(np.prod(dims(candidate[1]))) == out_features == dims(candidate[1])[-1]:
                output, bias = candidate
        index = len(layers)
        name = (names or {}).get(weight_key(weight.value.numpy())) or f"linear[{index}]"
        layers.append(
            LinearLayer(
                index=index, name=name,
                role=_role(flow, activation, output, scores, attention_outputs),
                input_shape=dims(activation), in_features=in_features,
                out_features=out_features, has_bias=bias is not None,
                activation=activation, matmul=binding.var, output=output, weight=weight, bias=bias,
            )
        )
    return layers


def find_attention_blocks(mod: tvm.IRModule, func_name: str = "main") -> list[AttentionBlock]:
    """Every ``softmax(Q K^T) V`` in ``func_name`` whose Q, K and V are activations."""
    func = mod[func_name]
    var2val = relax.analysis.get_var2val(func)
    flow = Dataflow(func)
    value_to_var = {binding.value: binding.var for binding in bindings(func)}
    scores, scaled, masked, probs, attention = _attention_pattern()
    blocks = []
    for binding in bindings(func):
        matched = attention.extract_matched_expr(binding.value, var2val)
        if not matched:
            continue
        guard = binding.value.args[0] if not binding.value.args[0].same_as(value_to_var.get(matched[probs])) else None
        if masked in matched and not _is_zero(matched[masked].args[1]):
            continue  # a real mask or bias: reported by find_skipped_softmax
        if guard is not None and not _is_zero(var2val[guard].args[1]):
            continue
        qk = matched[scores]
        query, key_t = qk.args
        value = binding.value.args[1]
        if any(isinstance(e, tvm.ir.GenericConst) for e in (query, key_t, value)):
            continue
        q_dims, k_dims, v_dims = dims(query), dims(key_t), dims(value)
        score_scale = 1.0
        if scaled in matched:
            scaling = matched[scaled]
            (constant,) = [a.value.numpy() for a in scaling.args if isinstance(a, tvm.ir.GenericConst)]
            if constant.size != 1:
                continue  # reported by find_skipped_softmax
            constant = float(constant.reshape(()))
            score_scale = constant if scaling.op.name == "relax.multiply" else 1.0 / constant
        scaled_operands = [name for name, operand in (("query", query), ("key", key_t))
                           if _scaled_before_matmul(flow, operand)]
        where = "scores" if scaled in matched else " and ".join(scaled_operands) or "none"
        shape = (q_dims[-3] if len(q_dims) >= 3 else 1, q_dims[-2], k_dims[-1], q_dims[-1])
        stage = 0 if not blocks else blocks[-1].stage + (shape != _block_shape(blocks[-1]))
        blocks.append(
            AttentionBlock(
                index=len(blocks), stage=stage, heads=shape[0], query_tokens=shape[1],
                key_tokens=shape[2], head_dim=shape[3], value_dim=v_dims[-1],
                scale=where, score_scale=score_scale, query=query, key_t=key_t, value=value,
                scores=value_to_var[qk], softmax=value_to_var[matched[probs]], output=binding.var,
            )
        )
    return blocks


def _block_shape(block: AttentionBlock) -> tuple:
    return (block.heads, block.query_tokens, block.key_tokens, block.head_dim)


def _scaled_before_matmul(flow: Dataflow, operand) -> bool:
    """Whether ``operand`` is an activation scaled by a constant, through rearranging ops."""
    candidates = [operand] + [v for v, _ in flow.reach(operand, False, _REARRANGING_OPS)]
    return any(flow.op(v) in _SCALING_OPS and flow.with_constant(v) for v in candidates)


def find_skipped_softmax(mod: tvm.IRModule, func_name: str = "main") -> list[SkippedSoftmax]:
    """Every softmax in ``func_name`` that ``find_attention_blocks`` does not recognize, with the
    reason, so that attention a rewrite leaves alone is reported, not silently skipped."""
    func = mod[func_name]
    flow = Dataflow(func)
    recognized = {block.softmax for block in find_attention_blocks(mod, func_name)}
    skipped = []
    for binding in bindings(func):
        if flow.op(binding.var) != "relax.nn.softmax" or binding.var in recognized:
            continue
        skipped.append(SkippedSoftmax(len(skipped), dims(binding.var), _why_not_attention(flow, binding.var)))
    return skipped


def _why_not_attention(flow: Dataflow, softmax: relax.Var) -> str:
    if not _attention_products(flow, softmax):
        return "its output is not multiplied with values (no matmul(softmax, V))"
    scores = flow.value[softmax].args[0]
    while flow.op(scores) in _SCALING_OPS and flow.with_constant(scores):
        operand, constant = sorted(flow.value[scores].args, key=lambda a: isinstance(a, tvm.ir.GenericConst))
        if constant.value.numpy().size != 1:
            return "the scores are scaled by a constant that is not a scalar; not rewritten"
        scores = operand
    op = flow.op(scores)
    if op == "relax.add":
        constants = [arg for arg in flow.value[scores].args if isinstance(arg, tvm.ir.GenericConst)]
        if constants and all(_is_zero(c) for c in constants):
            return "an all-zero mask is added to scores that are not a Q K^T matmul of activations"
        if constants:
            return ("a constant bias is added to the scores before the softmax (relative position "
                    "or attention bias, as in Swin's window attention and LeViT); not rewritten")
        return "an activation (a mask?) is added to the scores before the softmax; not rewritten"
    if op == "relax.matmul":
        return "one of Q, K or V is a constant, not an activation"
    return f"its input comes from {op or 'a non-op value'}, not from a Q K^T matmul"
