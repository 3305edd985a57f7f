"""Recognize two-expert top-1 MoE layers that a model already computes (an analysis).

Pattern (TVM's ``relax.dpl``), as ``saddc.nn.MoELinear`` exports it and as it reads by hand:

    where(equal(argmax(router(x), axis=-1), k), expert_k(x), expert_other(x))

where ``router`` is a linear layer with two outputs (role ``router``), both experts are
linear layers with the same input ``x`` and shape, and ``k`` is 0 or 1. Such a graph computes
both experts for every token and selects afterwards; ``LowerMoEDispatch`` turns it into the
sparse dispatch. A ``where`` on an ``argmax`` that does not fit is reported with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, wildcard

from saddc.passes.find_vit_blocks import LinearLayer, bindings, find_linear_layers


@dataclass(frozen=True)
class MoELayer:
    """A recognized MoE layer: ``experts[e]`` is the linear layer that tokens with router
    choice ``e`` get; ``output`` is the variable bound to the ``where``."""

    index: int
    name: str
    router: LinearLayer = field(repr=False)
    experts: tuple[LinearLayer, LinearLayer] = field(repr=False)
    output: relax.Var = field(repr=False, compare=False)

    @property
    def activation(self) -> relax.Var:
        return self.router.activation


@dataclass(frozen=True)
class UnmatchedMoE:
    """A ``where`` selected by an ``argmax`` that is not a two-expert MoE, and why."""

    name: str
    reason: str


def _moe_pattern():
    choice = is_op("relax.argmax")(wildcard())
    equal = is_op("relax.equal")
    condition = equal(choice, is_const()) | equal(is_const(), choice)
    return choice, condition, is_op("relax.where")(condition, wildcard(), wildcard())


def find_moe_layers(mod: tvm.IRModule, func_name: str = "main",
                    names: dict[str, str] | None = None) -> tuple[list[MoELayer], list[UnmatchedMoE]]:
    """The MoE layers of ``func_name`` in program order, and the near misses."""
    func = mod[func_name]
    var2val = relax.analysis.get_var2val(func)
    linears = find_linear_layers(mod, func_name, names)
    by_output = {layer.output: layer for layer in linears}
    choice, condition, select = _moe_pattern()
    layers, unmatched = [], []
    for binding in bindings(func):
        matched = select.extract_matched_expr(binding.value, var2val)
        if not matched:
            continue
        label = f"where {binding.var.name}"
        argmax = matched[choice]
        router = by_output.get(argmax.args[0])
        layer_or_reason = _check(argmax, router, matched[condition], binding.value, by_output)
        if isinstance(layer_or_reason, str):
            unmatched.append(UnmatchedMoE(label, layer_or_reason))
            continue
        experts = layer_or_reason
        layers.append(MoELayer(len(layers), f"moe[{len(layers)}] ({experts[0].name}, {experts[1].name})",
                               router, experts, binding.var))
    return layers, unmatched


def _check(argmax, router, condition, select, by_output):
    """The experts in router-choice order, or why the match fails."""
    if router is None:
        return "the argmax is not of a linear layer with a constant weight"
    if router.out_features != 2:
        return f"the router has {router.out_features} outputs; saddc dispatches two experts"
    axis = argmax.attrs.axis
    if axis is None or int(axis) not in (-1, len(router.input_shape) - 1):
        return "the argmax is not over the router's last axis"
    constant = next(arg for arg in condition.args if isinstance(arg, tvm.ir.GenericConst))
    chosen = np.asarray(constant.value.numpy()).reshape(-1)
    if chosen.size != 1 or int(chosen[0]) not in (0, 1):
        return "the condition does not compare the choice with expert 0 or 1"
    branches = [by_output.get(arg) for arg in select.args[1:]]
    if any(branch is None for branch in branches):
        return "a branch of the where is not a linear layer with a constant weight"
    if any(not branch.activation.same_as(router.activation) for branch in branches):
        return "the experts and the router do not read the same input"
    if branches[0].out_features != branches[1].out_features:
        return "the experts' output sizes differ"
    selected = int(chosen[0])
    return (branches[0], branches[1]) if selected == 0 else (branches[1], branches[0])
