"""The sparse MoE dispatch that both MoE passes emit, and their report.

For one layer ``y = MoE(x)`` with a two-output router and two experts, it emits:

    x2d     = reshape(x, (M, K))
    choice  = argmax(matmul(x2d, router_W) + router_b, axis=-1)          # Relax ops
    order, slot, offsets = call_tir(token_partition, choice)             # stable partition
    xs      = call_tir(permute_rows, x2d, order)                         # sorted buffer
    ys      = call_tir(segment_e0, xs, offsets, weights_0, b_0)          # expert 0's rows
    ys      = call_tir_inplace(segment_e1, xs, offsets, weights_1, b_1, ys)  # expert 1's rows
    y       = reshape(call_tir(permute_rows, ys, slot), (..., N))        # back to token order

M is static; each expert's kernel touches only its own rows (schedules/segmented_gemm.py).
The partition and segment kernels are emitted in their CPU form, so a rewritten module runs
on the CPU whatever the target (the passes measure their error there); the schedule phase
puts the target's form in place (``passes/dispatch_hand_scheduled_kernels.py``). An expert
whose weights are signed powers of two runs as a shift expert (exactly); others run dense.

``emit_select`` emits the other way to compute the same layer: both experts on every token as
Relax matmuls, then ``where`` on the router's choice. It is the baseline the benchmark and the
tests compare the dispatch with (same routing decisions, no sparse dispatch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import tvm
from tvm import relax

from saddc.passes.kernel_call import call_hand_scheduled_kernel, emit_kernel, leading_rows, rebind, rewrite_functions
from saddc.schedules import permute_rows, segmented_gemm, shift_codes, token_partition
from saddc.schedules.segmented_gemm import DENSE, SHIFT


@dataclass
class ExpertWeights:
    """One expert: ``kind`` DENSE with a float (K, N) ``weights``, or SHIFT with ``ShiftWeights``."""

    kind: str
    weights: np.ndarray | shift_codes.ShiftWeights
    bias: np.ndarray

    @classmethod
    def from_dense(cls, weight: np.ndarray, bias: np.ndarray | None, bits: int) -> "ExpertWeights":
        """SHIFT when ``weight`` encodes exactly in ``bits``-bit shift codes, else DENSE."""
        bias = np.zeros(weight.shape[1], np.float32) if bias is None else bias.reshape(-1).astype(np.float32)
        encoded = shift_codes.encode(weight, bits)
        if shift_codes.weight_error(weight, encoded).exact:
            return cls(SHIFT, encoded, bias)
        return cls(DENSE, weight.astype(np.float32), bias)

    def reference(self) -> tuple:
        """The ``segmented_gemm.segmented_reference`` expert tuple."""
        return (self.kind, self.weights, self.bias)


@dataclass
class DispatchPlan:
    """What replaces one layer's output: its router and experts (expert ``e`` gets the tokens
    whose router logit ``e`` is largest)."""

    output: relax.Var
    activation: relax.Var
    in_features: int
    out_features: int
    router_weight: np.ndarray  # (K, 2)
    router_bias: np.ndarray | None  # (2,)
    experts: list[ExpertWeights]


@dataclass
class MoELayerReport:
    index: int
    name: str
    origin: str  # "exported" (recognized in the model) or "built" (--moe from a plain layer)
    role: str
    in_features: int
    out_features: int
    experts: list[str]  # the kernel kind per router choice
    exactness: str
    dispatch: str  # "sparse", or "select" (both experts on every token: the --moe-dispatch baseline)
    shift_ratio: float | None = None  # tokens to the shift expert, on calibration inputs
    output_cosine: float | None = None  # the layer's output against the original's


@dataclass
class MoEReport:
    """What the MoE passes did: layers lowered from the model, and layers built by ``--moe``."""

    layers: list[MoELayerReport] = field(default_factory=list)
    target_ratio: float | None = None
    calibration: str = "not needed"
    end_to_end: dict | None = None

    def to_json(self) -> dict:
        return {"target_shift_ratio": self.target_ratio, "calibration": self.calibration,
                "end_to_end": self.end_to_end, "layers": [asdict(layer) for layer in self.layers]}

    def summary_lines(self) -> list[str]:
        exported = sum(layer.origin == "exported" for layer in self.layers)
        built = len(self.layers) - exported
        dispatches = " and ".join(sorted({layer.dispatch for layer in self.layers}))
        lines = [f"moe layers:        {len(self.layers)} ({exported} lowered from the model, lossless; "
                 f"{built} built, lossy), {dispatches} dispatch"]
        if built:
            lines.append(f"moe calibration:   {self.calibration}")
        if self.end_to_end:
            lines.append(f"moe end to end:    output cosine {self.end_to_end['cosine']:.5f}, "
                         f"max relative error {self.end_to_end['max_relative_error']:.3g}")
        for layer in self.layers:
            detail = "exact"
            if layer.shift_ratio is not None:
                detail = f"{100 * layer.shift_ratio:.1f}% of tokens to shift"
                if layer.output_cosine is not None:
                    detail += f", output cosine {layer.output_cosine:.5f}"
            lines.append(f"  [{layer.index}] {layer.name} ({layer.role}, {layer.in_features}->{layer.out_features}): "
                         f"experts {'/'.join(layer.experts)}, {layer.exactness}, {detail}")
        return lines


def _emit_router_choice(builder: relax.BlockBuilder, x: relax.Expr, plan: DispatchPlan, keepdims: bool) -> relax.Var:
    """``argmax(x @ router_W + router_b, axis=-1)``: each token's expert (int64)."""
    logits = relax.op.matmul(x, relax.const(plan.router_weight.astype(np.float32)))
    if plan.router_bias is not None:
        logits = relax.op.add(logits, relax.const(plan.router_bias.astype(np.float32)))
    return builder.emit(relax.op.argmax(builder.emit(logits), axis=-1, keepdims=keepdims))


def emit_dispatch(builder: relax.BlockBuilder, x: relax.Expr, plan: DispatchPlan) -> relax.Expr:
    """The dispatch of ``plan`` on ``x`` (..., K), returning (..., N) (see the module doc)."""
    rows = leading_rows(x)
    x2d = builder.emit(relax.op.reshape(x, (rows, plan.in_features)))
    choice = _emit_router_choice(builder, x2d, plan, keepdims=False)
    experts = len(plan.experts)
    index_type = relax.TensorType((rows,), "int32")
    partition = call_hand_scheduled_kernel(
        builder, "token_partition", {"experts": experts}, [choice],
        [index_type, index_type, relax.TensorType((experts + 1,), "int32")],
    )
    order, slot, offsets = (builder.emit(relax.TupleGetItem(partition, i)) for i in range(3))
    xs = emit_kernel(builder, permute_rows.permute_rows_te, x2d, order, kernel="permute_rows")
    out_type = relax.TensorType((rows, plan.out_features), "float32")
    ys = None
    for index, expert in enumerate(plan.experts):
        shape = {"expert": index, "in_features": plan.in_features, "out_features": plan.out_features}
        if expert.kind == SHIFT:
            shape["bits"] = expert.weights.bits
            weights = [relax.const(expert.weights.packed, "uint32"), relax.const(expert.weights.exponents, "int32")]
        else:
            weights = [relax.const(expert.weights)]
        args = [xs, offsets, *weights, relax.const(expert.bias)]
        ys = call_hand_scheduled_kernel(
            builder, f"{expert.kind}_segment", shape, args if ys is None else args + [ys], out_type,
            inplace_index=None if ys is None else len(args),
        )
    y2d = emit_kernel(builder, permute_rows.permute_rows_te, ys, slot, kernel="permute_rows")
    return relax.op.reshape(y2d, list(x.ty.shape.values[:-1]) + [plan.out_features])


def emit_select(builder: relax.BlockBuilder, x: relax.Expr, plan: DispatchPlan) -> relax.Expr:
    """``where(argmax(router(x)) == 0, expert_0(x), expert_1(x))``: both experts on every token."""
    choice = _emit_router_choice(builder, x, plan, keepdims=True)
    outputs = []
    for expert in plan.experts:
        weight = expert.weights.decode() if expert.kind == SHIFT else expert.weights
        product = builder.emit(relax.op.matmul(x, relax.const(weight)))
        outputs.append(builder.emit(relax.op.add(product, relax.const(expert.bias))))
    first = builder.emit(relax.op.equal(choice, relax.const(0, "int64")))
    return relax.op.where(first, outputs[0], outputs[1])


@relax.expr_functor.mutator
class DispatchRewriter(relax.PyExprMutator):
    """Replaces the output binding of each planned layer with its sparse dispatch, or with
    the compute-both-and-select graph (``dispatch="select"``)."""

    def __init__(self, mod, plans: list[DispatchPlan], dispatch: str):
        super().__init__(mod)
        self.by_output = {plan.output: plan for plan in plans}
        self.dispatch = dispatch

    def visit_var_binding_(self, binding):
        plan = self.by_output.get(binding.var)
        if plan is None:
            super().visit_var_binding_(binding)
            return
        x = self.visit_expr(plan.activation)
        value = (emit_dispatch(self.builder_, x, plan) if self.dispatch == "sparse"
                 else emit_select(self.builder_, x, plan))
        rebind(self, binding, value)


def routing_reference(x: np.ndarray, plan: DispatchPlan) -> np.ndarray:
    """The layer the dispatch computes, in numpy: route each row of ``x`` (..., K) by its
    router's argmax, run its expert (``segmented_gemm.segmented_reference``)."""
    x2d = np.asarray(x, np.float32).reshape(-1, plan.in_features)
    logits = x2d @ plan.router_weight + (0 if plan.router_bias is None else plan.router_bias)
    order, _, offsets = token_partition.partition_reference(logits.argmax(-1), len(plan.experts))
    ys = segmented_gemm.segmented_reference(x2d[order], offsets, [e.reference() for e in plan.experts])
    y = np.empty_like(ys)
    y[order] = ys
    return y.reshape(np.shape(x)[:-1] + (plan.out_features,))


def dispatched(mod: tvm.IRModule, plans: list[DispatchPlan], dispatch: str = "sparse") -> tvm.IRModule:
    """``mod`` with every planned layer dispatched (``sparse``) or computed both ways and
    selected (``select``)."""
    rewriter = DispatchRewriter(mod, plans, dispatch)
    return relax.transform.DeadCodeElimination()(rewrite_functions(rewriter, mod))
