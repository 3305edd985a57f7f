"""Recognize the ViT building blocks saddc rewrites: linear layers and softmax attention.

An analysis, not a transform: it reports what later rewrite passes will match, and is what
``saddc inspect`` prints. It expects a module after the pipeline's ``cleanup`` phase, where
weights are plain constants.

Patterns (TVM's ``relax.dpl``):
- linear:     ``matmul(x, const W)``, optionally followed by ``add(_, const b)``
- attention:  ``matmul(softmax(s), V)`` where ``s`` is ``matmul(Q, K^T)``, optionally scaled by a
              constant (``multiply``/``divide``) before the softmax; Q, K, V are activations
"""

from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, wildcard


@dataclass(frozen=True)
class LinearLayer:
    """``y = x @ W (+ b)`` with a constant ``W`` of shape (in_features, out_features)."""

    index: int
    input_shape: tuple
    in_features: int
    out_features: int
    has_bias: bool


@dataclass(frozen=True)
class AttentionBlock:
    """``softmax(Q K^T * scale) V``: query and key/value token counts, heads, head dim."""

    index: int
    heads: int | str
    query_tokens: int | str
    key_tokens: int | str
    head_dim: int | str
    scale: str  # "before-softmax" (scaled scores), or "none" (scale folded into Q or K)


def _dims(expr: relax.Expr) -> tuple:
    shape = expr.ty.shape
    values = shape.values if hasattr(shape, "values") else shape
    return tuple(int(d) if isinstance(d, tvm.tirx.IntImm) else str(d) for d in values)


def _linear_pattern():
    matmul = is_op("relax.matmul")(wildcard(), is_const())
    return matmul, is_op("relax.add")(matmul, is_const())


def _attention_pattern():
    scores = is_op("relax.matmul")(wildcard(), wildcard())
    scaled = (
        is_op("relax.multiply")(scores, is_const())
        | is_op("relax.divide")(scores, is_const())
    )
    probs = is_op("relax.nn.softmax")(scores | scaled)
    return scores, scaled, is_op("relax.matmul")(probs, wildcard())


def _bindings(func: relax.Function):
    for block in func.body.blocks:
        yield from block.bindings


def find_linear_layers(mod: tvm.IRModule, func_name: str = "main") -> list[LinearLayer]:
    """Every matmul with a constant 2-D weight in ``func_name``, in program order."""
    func = mod[func_name]
    var2val = relax.analysis.get_var2val(func)
    matmul, with_bias = _linear_pattern()
    biased = set()
    for binding in _bindings(func):
        matched = with_bias.extract_matched_expr(binding.value, var2val)
        if matched:
            biased.add(matched[matmul])
    layers = []
    for binding in _bindings(func):
        matched = matmul.extract_matched_expr(binding.value, var2val)
        if not matched:
            continue
        activation, weight = binding.value.args
        if len(_dims(weight)) != 2:
            continue
        in_features, out_features = _dims(weight)
        layers.append(
            LinearLayer(
                index=len(layers),
                input_shape=_dims(activation),
                in_features=in_features,
                out_features=out_features,
                has_bias=binding.value in biased,
            )
        )
    return layers


def find_attention_blocks(mod: tvm.IRModule, func_name: str = "main") -> list[AttentionBlock]:
    """Every ``softmax(Q K^T) V`` in ``func_name`` whose Q, K and V are activations."""
    func = mod[func_name]
    var2val = relax.analysis.get_var2val(func)
    scores, scaled, attention = _attention_pattern()
    blocks = []
    for binding in _bindings(func):
        matched = attention.extract_matched_expr(binding.value, var2val)
        if not matched:
            continue
        qk = matched[scores]
        query, key_t = qk.args
        value = binding.value.args[1]
        if any(isinstance(e, tvm.ir.GenericConst) for e in (query, key_t, value)):
            continue
        q_dims, k_dims = _dims(query), _dims(key_t)
        blocks.append(
            AttentionBlock(
                index=len(blocks),
                heads=q_dims[-3] if len(q_dims) >= 3 else 1,
                query_tokens=q_dims[-2],
                key_tokens=k_dims[-1],
                head_dim=q_dims[-1],
                scale="before-softmax" if scaled in matched else "none",
            )
        )
    return blocks
