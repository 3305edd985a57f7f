"""Rewrite linear layers with constant weights into shift GEMMs (power-of-two weights).

Pattern: ``matmul(x, const W)`` with ``W`` of shape (K, N), and the ``add(_, const b)`` of its
bias when that add is the matmul's only user (found by ``find_linear_layers``, which also gives
each layer its role). Exporters' transposed layouts (Gemm ``transB``, ``Transpose`` of an
initializer) are folded into plain constants by the cleanup phase before this pass.

Emits, for each selected layer: ``reshape(x, (M, K))`` -> ``call_tir(shift_gemm, x2d, packed,
exponents[, b])`` -> ``reshape(_, (..., N))``, with ``W`` in the packed shift format
(schedules/shift_codes.py). The kernel is tagged ``saddc.kernel = shift_gemm`` and opaque to
fusion, so the schedule phase gives it its own schedule; layers of one shape share it.

Exactness, per layer: weights that are already signed powers of two within a channel's code
range are a lossless lowering (the encoding is exact). Others are rounded only when lossy
rewriting is allowed; then the report gives the weight SQNR and max error and the layer's
output cosine similarity against the original on calibration inputs.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import tvm
from tvm import relax

from saddc.calibration import calibration_batches, cosine, probe
from saddc.config import ShiftOptions
from saddc.errors import ConfigError, RewriteError
from saddc.passes.find_vit_blocks import LinearLayer, find_linear_layers
from saddc.passes.kernel_call import emit_kernel, leading_rows, rebind, rewrite_functions
from saddc.passes.selection import position_matches
from saddc.schedules import shift_codes, shift_gemm
from saddc.target import TargetSpec


@dataclass
class ShiftedLayer:
    """One rewritten layer, as the compile summary and manifest report it."""

    index: int
    name: str
    role: str
    in_features: int
    out_features: int
    exactness: str  # "lossless" or "lossy"
    weight_sqnr_db: float
    weight_max_abs_error: float
    output_cosine: float | None  # on calibration inputs; None when lossless (exactly 1)
    weight_bytes_before: int
    weight_bytes_after: int
    kernel: str
    kernel_reason: str


@dataclass
class ShiftReport:
    """What the shift rewrite did to a model."""

    bits: int
    layers: list[ShiftedLayer] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    calibration: str = "not needed (every rewritten layer is lossless)"

    @property
    def weight_bytes(self) -> tuple[int, int]:
        return (sum(l.weight_bytes_before for l in self.layers),
                sum(l.weight_bytes_after for l in self.layers))

    def to_json(self) -> dict:
        before, after = self.weight_bytes
        rows = []
        for layer in self.layers:
            row = asdict(layer)
            if math.isinf(row["weight_sqnr_db"]):
                row["weight_sqnr_db"] = None  # JSON has no inf: exact
            rows.append(row)
        return {"bits": self.bits, "weight_bytes": {"before": before, "after": after},
                "calibration": self.calibration, "skipped": self.skipped, "layers": rows}

    def summary_lines(self) -> list[str]:
        before, after = self.weight_bytes
        lossless = sum(l.exactness == "lossless" for l in self.layers)
        lines = [
            f"shift layers:      {len(self.layers)} ({lossless} lossless, "
            f"{len(self.layers) - lossless} lossy), {self.bits}-bit codes",
            f"shift weights:     {before:,} -> {after:,} bytes ({before / max(after, 1):.1f}x smaller)",
            f"shift calibration: {self.calibration}",
        ]
        for layer in self.layers:
            if layer.exactness == "lossless":
                error = "exact"
            else:
                cosine_text = "" if layer.output_cosine is None else f", output cosine {layer.output_cosine:.5f}"
                error = (f"SQNR {layer.weight_sqnr_db:.1f} dB, max err "
                         f"{layer.weight_max_abs_error:.3g}{cosine_text}")
            lines.append(f"  [{layer.index}] {layer.name} ({layer.role}, {layer.in_features}->"
                         f"{layer.out_features}): {layer.exactness}, {error}; kernel {layer.kernel} "
                         f"({layer.kernel_reason})")
        if self.skipped:
            lines.append(f"  left dense: {'; '.join(self.skipped)}")
        return lines


def select_layers(layers: list[LinearLayer], options: ShiftOptions) -> tuple[list[LinearLayer], list[str]]:
    """The layers ``options`` selects, and a note for each one the skip list removed."""
    if not layers:
        raise ConfigError("--shift: the model has no linear layers with constant weights (matmul by a constant)")
    roles = options.roles
    chosen = [layer for layer in layers if layer.role in roles]
    if not chosen:
        found = ", ".join(sorted({layer.role for layer in layers}))
        raise ConfigError(
            f"--shift {options.layers} matches no layer in this model (its linear layers are: {found})"
        )
    skipped, kept = [], []
    for layer in chosen:
        reason = _skip_reason(layer, layers, options.skip)
        if reason:
            skipped.append(f"{layer.name} ({reason})")
        else:
            kept.append(layer)
    for token in options.skip:
        if not any(_skip_matches(token, layer, layers) for layer in layers):
            raise ConfigError(f"--shift-skip '{token}' matches no linear layer")
    if not kept:
        raise ConfigError(f"--shift {options.layers} with --shift-skip {','.join(options.skip)} leaves no layer to rewrite")
    return kept, skipped


def _skip_matches(token: str, layer: LinearLayer, layers: list[LinearLayer]) -> bool:
    positional = position_matches(token, layer.index, len(layers))
    return fnmatch.fnmatchcase(layer.name, token) if positional is None else positional


def _skip_reason(layer, layers, tokens) -> str | None:
    for token in tokens:
        if _skip_matches(token, layer, layers):
            return f"--shift-skip {token}"
    return None


def _target_key(target: TargetSpec) -> str:
    return f"{target.kind}-{target.arch}"


@tvm.transform.module_pass(opt_level=0, name="saddc.RewriteLinearToShift")
class RewriteLinearToShift:  # pylint: disable=too-few-public-methods
    """Selected ``matmul(x, const W) (+ const b)`` -> packed shift GEMM kernels (see module doc).

    ``reports`` (a dict) receives the ``ShiftReport`` under ``"shift"``.
    """

    def __init__(self, options: ShiftOptions, target: TargetSpec, names: dict | None = None,
                 reports: dict | None = None):
        self.options, self.target = options, target
        self.names = names or {}
        self.reports = reports if reports is not None else {}

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        layers, skipped = select_layers(find_linear_layers(mod, names=self.names), self.options)
        encoded = {layer.index: self._encode(layer) for layer in layers}
        inexact = [layer for layer in layers if not encoded[layer.index][1].exact]
        if inexact and not self.options.lossy:
            listed = ", ".join(layer.name for layer in inexact[:4]) + (
                f" and {len(inexact) - 4} more" if len(inexact) > 4 else "")
            raise RewriteError(
                f"the weights of {listed} are not powers of two, so rounding them is lossy: "
                "pass --shift-lossy (ShiftOptions(lossy=True)) to allow it and get its error "
                "report, or --shift-skip them"
            )
        report = ShiftReport(bits=self.options.bits, skipped=skipped)
        cosines = self._output_cosines(mod, inexact, encoded, report) if inexact else {}
        kernels = {}
        for layer in layers:
            weights, error = encoded[layer.index]
            rows = _static_rows(layer.input_shape)
            try:
                kernels[layer.index] = shift_gemm.choose_variant(
                    _target_key(self.target), rows, layer.in_features, layer.out_features,
                    self.options.bits, self.options.kernel,
                )
            except ValueError as err:
                raise ConfigError(str(err)) from None
            report.layers.append(ShiftedLayer(
                index=layer.index, name=layer.name, role=layer.role,
                in_features=layer.in_features, out_features=layer.out_features,
                exactness="lossless" if error.exact else "lossy",
                weight_sqnr_db=error.sqnr_db, weight_max_abs_error=error.max_abs_error,
                output_cosine=cosines.get(layer.index),
                weight_bytes_before=layer.weight.value.numpy().nbytes,
                weight_bytes_after=weights.nbytes,
                kernel=kernels[layer.index][0], kernel_reason=kernels[layer.index][1],
            ))
        rewritten = rewrite_functions(_ShiftRewriter(mod, layers, encoded, kernels, self.options.bits), mod)
        self.reports["shift"] = report
        return relax.transform.DeadCodeElimination()(rewritten)

    def _encode(self, layer: LinearLayer):
        weight = layer.weight.value.numpy()
        try:
            weights = shift_codes.encode(weight, self.options.bits)
        except ValueError as err:
            raise RewriteError(f"cannot rewrite {layer.name} ({layer.role}) to shift: {err}") from None
        return weights, shift_codes.weight_error(weight, weights)

    def _output_cosines(self, mod, layers, encoded, report) -> dict[int, float]:
        batches, report.calibration = calibration_batches(mod, self.options.calibration)
        values = probe(mod, [layer.activation for layer in layers], batches)
        cosines = {}
        for position, layer in enumerate(layers):
            weights = encoded[layer.index][0]
            original = layer.weight.value.numpy().astype(np.float64)
            shifted = weights.decode().astype(np.float64)
            pairs = [(v[position].astype(np.float64) @ original, v[position].astype(np.float64) @ shifted)
                     for v in values]
            cosines[layer.index] = cosine(np.concatenate([a.ravel() for a, _ in pairs]),
                                           np.concatenate([b.ravel() for _, b in pairs]))
        return cosines


def _static_rows(shape: tuple) -> int | None:
    leading = shape[:-1]
    return int(np.prod(leading)) if all(isinstance(d, int) for d in leading) else None


@relax.expr_functor.mutator
class _ShiftRewriter(relax.PyExprMutator):
    """Replaces each selected layer's output binding with the shift GEMM call."""

    def __init__(self, mod, layers, encoded, kernels, bits):
        super().__init__(mod)
        self.by_output = {layer.output: layer for layer in layers}
        self.encoded, self.kernels, self.bits = encoded, kernels, bits

    def visit_var_binding_(self, binding):
        layer = self.by_output.get(binding.var)
        if layer is None:
            super().visit_var_binding_(binding)
            return
        rebind(self, binding, self._shift_gemm(self.visit_expr(layer.activation), layer))

    def _shift_gemm(self, x: relax.Expr, layer: LinearLayer) -> relax.Expr:
        weights = self.encoded[layer.index][0]
        variant = self.kernels[layer.index][0]
        # decode-dense takes the activation as it is; the other kernels take rows.
        flat = variant != shift_gemm.DECODE_DENSE
        x_in = self.builder_.emit(relax.op.reshape(x, (leading_rows(x), layer.in_features))) if flat else x
        bias = None
        if layer.bias is not None:
            bias = relax.const(layer.bias.value.numpy().reshape(layer.out_features))
        y = emit_kernel(
            self.builder_, shift_gemm.shift_gemm_te, x_in, relax.const(weights.packed, "uint32"),
            relax.const(weights.exponents, "int32"), bias, bits=self.bits, in_features=layer.in_features,
            variant=variant, kernel="shift_gemm", name=f"shift_gemm_{layer.in_features}x{layer.out_features}",
            attrs={shift_gemm.VARIANT_ATTR: variant},
        )
        return relax.op.reshape(y, list(x.ty.shape.values[:-1]) + [layer.out_features]) if flat else y
