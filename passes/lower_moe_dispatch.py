"""Lower MoE layers a model already computes to the sparse dispatch (lossless).

Pattern: ``where(equal(argmax(router(x), axis=-1), k), expert_k(x), expert_other(x))``
(``find_moe_layers``), the graph a model with ``saddc.nn.MoELinear`` layers exports: it
computes both experts for every token and selects afterwards.

Emits the dispatch of ``moe_dispatch``: the same router decision, a stable partition of the
tokens, each expert's segmented GEMM on its own rows (an expert whose weights are exact signed
powers of two, as a trained ``ShiftLinear`` exports them, runs as a shift kernel; any other
runs dense), and the scatter back. Every token gets the expert it got before, computed with
the same weights: the output changes only by float summation order.
"""

from __future__ import annotations

import tvm

from saddc.passes.find_moe_layers import find_moe_layers
from saddc.passes.moe_dispatch import DispatchPlan, ExpertWeights, MoELayerReport, MoEReport, dispatched

# Exact signed powers of two are exact in 5-bit codes whenever they are in 4-bit ones.
_SHIFT_BITS = 5


@tvm.transform.module_pass(opt_level=0, name="saddc.LowerMoEDispatch")
class LowerMoEDispatch:  # pylint: disable=too-few-public-methods
    """Exported two-expert MoE (compute both, select) -> sparse dispatch (see module doc).

    ``reports`` (a dict) receives a ``MoEReport`` under ``"moe"`` when a layer is found.
    """

    def __init__(self, names: dict | None = None, reports: dict | None = None):
        self.names = names or {}
        self.reports = reports if reports is not None else {}

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        layers, _ = find_moe_layers(mod, names=self.names)
        if not layers:
            return mod
        report = self.reports.setdefault("moe", MoEReport())
        plans = []
        for layer in layers:
            experts = [
                ExpertWeights.from_dense(expert.weight.value.numpy(),
                                         None if expert.bias is None else expert.bias.value.numpy(), _SHIFT_BITS)
                for expert in layer.experts
            ]
            router = layer.router
            plans.append(DispatchPlan(
                layer.output, layer.activation, router.in_features, layer.experts[0].out_features,
                router.weight.value.numpy(), None if router.bias is None else router.bias.value.numpy().reshape(-1),
                experts,
            ))
            report.layers.append(MoELayerReport(
                index=len(report.layers), name=layer.name, origin="exported", role=layer.experts[0].role,
                in_features=router.in_features, out_features=layer.experts[0].out_features,
                experts=[expert.kind for expert in experts], exactness="lossless", dispatch="sparse",
            ))
        return dispatched(mod, plans)
