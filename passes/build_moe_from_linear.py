"""Build a two-expert MoE from plain linear layers, with a router fitted at compile time.

Pattern: the selected ``matmul(x, const W) (+ const b)`` layers (``find_linear_layers``,
selected by role as ``--shift`` selects them; ``--moe mlp`` by default).

Emits, for each: the sparse dispatch of ``moe_dispatch`` with expert 0 = Mult (the layer as it
is, dense) and expert 1 = Shift (``W`` rounded to ``bits``-bit power-of-two codes), and a
router ``Linear(K, 2)`` fitted on the layer's calibration inputs:

1. each calibration token's relative shift error ``e = |x (W - W_shift)|^2 / |x W|^2``;
2. a ridge regression of ``log e`` on ``x`` (the router can only look at ``x``);
3. logit 0 is 0, logit 1 is minus the predicted ``log e`` plus a threshold chosen so that a
   fraction ``shift_ratio`` of the calibration tokens (those predicted to lose least) go to
   Shift. A ratio of 0 or 1 sends every token to one expert.

With ``dispatch="select"`` it emits the compute-both-and-select graph instead (the baseline
with the same routers). This is a lossy reparameterization. The report gives, per layer, the realized shift ratio and
the output cosine against the original layer on the calibration tokens, and the model's
end-to-end error.
"""

from __future__ import annotations

import numpy as np
import tvm

from saddc.calibration import calibration_batches, cosine, output_error, probe, run
from saddc.config import MoEOptions
from saddc.errors import ConfigError
from saddc.passes.find_vit_blocks import LinearLayer, find_linear_layers
from saddc.passes.moe_dispatch import (
    DispatchPlan, ExpertWeights, MoELayerReport, MoEReport, dispatched, routing_reference,
)
from saddc.schedules import shift_codes
from saddc.schedules.segmented_gemm import DENSE, SHIFT

# Ridge strength, relative to the mean squared activation: keeps the fit stable when the
# calibration tokens are fewer than the features.
_RIDGE = 1e-2
_TINY = 1e-12


def fit_router(x: np.ndarray, weight: np.ndarray, shifted: np.ndarray, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Router weights (K, 2) and bias (2,) that send the ``ratio`` of rows of ``x`` (T, K)
    predicted to have the smallest shift error to expert 1 (see the module doc)."""
    features = x.shape[1]
    if ratio in (0.0, 1.0):
        # No token or every token to Shift: a constant decision.
        return np.zeros((features, 2), np.float32), np.array([0.0, 1.0 if ratio == 1.0 else -1.0], np.float32)
    x64 = x.astype(np.float64)
    reference = x64 @ weight.astype(np.float64)
    error = np.square(x64 @ (weight.astype(np.float64) - shifted)).sum(1) / (np.square(reference).sum(1) + _TINY)
    target = np.log(error + _TINY)
    mean = x64.mean(0)
    centred = x64 - mean
    ridge = _RIDGE * max(float(np.mean(np.square(centred))), _TINY) * len(x64)
    coefficients = np.linalg.solve(centred.T @ centred + ridge * np.eye(features), centred.T @ (target - target.mean()))
    score = -(centred @ coefficients)  # higher: smaller predicted error
    threshold = np.quantile(score, 1.0 - ratio)
    router_weight = np.zeros((features, 2), np.float64)
    router_weight[:, 1] = -coefficients
    router_bias = np.array([0.0, float(mean @ coefficients) - threshold])
    return router_weight.astype(np.float32), router_bias.astype(np.float32)


@tvm.transform.module_pass(opt_level=0, name="saddc.BuildMoEFromLinear")
class BuildMoEFromLinear:  # pylint: disable=too-few-public-methods
    """Selected plain linear layers -> Mult/Shift MoE with a fitted router (see module doc).

    ``reports`` (a dict) receives the ``MoEReport`` under ``"moe"``.
    """

    def __init__(self, options: MoEOptions, names: dict | None = None, reports: dict | None = None):
        self.options = options
        self.names = names or {}
        self.reports = reports if reports is not None else {}

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        layers = self._select(find_linear_layers(mod, names=self.names))
        report = self.reports.setdefault("moe", MoEReport())
        report.target_ratio = self.options.shift_ratio
        batches, report.calibration = calibration_batches(mod, self.options.calibration)
        values = probe(mod, [layer.activation for layer in layers], batches)
        plans = []
        for position, layer in enumerate(layers):
            tokens = np.concatenate([v[position].reshape(-1, layer.in_features) for v in values])
            plan = self._plan(layer, tokens)
            plans.append(plan)
            reference = tokens @ plan.experts[0].weights + plan.experts[0].bias
            logits = tokens @ plan.router_weight + plan.router_bias
            report.layers.append(MoELayerReport(
                index=len(report.layers), name=layer.name, origin="built", role=layer.role,
                in_features=layer.in_features, out_features=layer.out_features, experts=[DENSE, SHIFT],
                exactness="lossy", dispatch=self.options.dispatch,
                shift_ratio=float(np.mean(logits.argmax(-1) == 1)),
                output_cosine=cosine(routing_reference(tokens, plan), reference),
            ))
        rewritten = dispatched(mod, plans, self.options.dispatch)
        if self.options.measure_error:
            report.end_to_end = output_error(run(mod, batches), run(rewritten, batches))
        return rewritten

    def _select(self, layers: list[LinearLayer]) -> list[LinearLayer]:
        chosen = [layer for layer in layers if layer.role in self.options.roles]
        if not chosen:
            found = ", ".join(sorted({layer.role for layer in layers})) or "none"
            raise ConfigError(f"--moe {self.options.layers} matches no layer in this model (its linear layers are: {found})")
        return chosen

    def _plan(self, layer: LinearLayer, tokens: np.ndarray) -> DispatchPlan:
        weight = layer.weight.value.numpy()
        bias = (np.zeros(layer.out_features, np.float32) if layer.bias is None
                else layer.bias.value.numpy().reshape(-1).astype(np.float32))
        encoded = shift_codes.encode(weight, self.options.bits)
        router_weight, router_bias = fit_router(tokens, weight, encoded.decode(), self.options.shift_ratio)
        return DispatchPlan(layer.output, layer.activation, layer.in_features, layer.out_features,
                            router_weight, router_bias,
                            [ExpertWeights(DENSE, weight.astype(np.float32), bias), ExpertWeights(SHIFT, encoded, bias)])
