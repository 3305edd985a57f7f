"""Lower attention a model already computes with binary codes to saddc's add kernels (exact).

Pattern (``find_binary_codes``): 0/1 codes ``astype(greater(x A + c, t))`` read by matmuls
``C'^T V`` and ``C' G`` (``C'`` the codes or ``1 - C``), as a model fine-tuned with
``saddc.nn.AdditiveAttention`` (or EcoFormer, ShiftAddViT) exports them.

Emits one ``binary_hash`` kernel per code tensor (the projection, the compare, and packing into
uint32 words) and, in place of each of those matmuls, a ``masked_sum`` or ``code_matmul`` kernel
over the packed codes. The model's other ops (its normalization, a residual conv) stay as they
are; the float codes and their projection are dropped when nothing else reads them.

Exactness: lossless. A masked sum adds exactly the values the 0/1 matmul multiplies by one, so
the output matches the original up to float summation order. A code bit can only differ where
the projection rounds across zero, as it can between any two matmul implementations.
"""

from __future__ import annotations

import tvm
from tvm import relax

from saddc.passes.attention_report import BINARY_CODED, AttentionReport, AttentionSite
from saddc.passes.find_binary_codes import CODE_MATMUL, MASKED_SUM, BinaryCodes, find_binary_codes, group_blocks
from saddc.passes.find_vit_blocks import dims
from saddc.passes.kernel_call import emit_kernel, rebind, rewrite_functions
from saddc.schedules import binary_hash, code_matmul, masked_sum


def _leading(expr) -> tuple:
    return dims(expr)[:-2]


def _lowerable(codes: BinaryCodes) -> tuple[list, str]:
    """The uses whose operands have the codes' leading (batch, head) dims, and why others don't."""
    leading = _leading(codes.codes)
    periods_fit = codes.projection is None or codes.heads == 1 or (leading and leading[-1] == codes.heads)
    if _leading(codes.source) != leading or not periods_fit:
        return [], "the hashed rows and the codes have different leading dims"
    uses = [use for use in codes.uses
            if all(_leading(operand) == leading
                   for operand in (use.values, use.on_set, use.on_clear) if operand is not None)]
    skipped = len(codes.uses) - len(uses)
    return uses, (f"{skipped} matmul(s) left as is: operands with other leading dims" if skipped else "")


@tvm.transform.module_pass(opt_level=0, name="saddc.LowerBinaryCodedAttention")
class LowerBinaryCodedAttention:  # pylint: disable=too-few-public-methods
    """Binary codes and the matmuls reading them -> hash, masked-sum and code-matmul kernels.

    ``reports`` (a dict) receives the binary-coded sites in its ``"attention"`` report.
    """

    def __init__(self, reports: dict, mode: str, form: str | None):
        self.reports, self.mode, self.form = reports, mode, form

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        found = find_binary_codes(mod)
        if not found:
            return mod
        report = self.reports.setdefault("attention", AttentionReport(self.mode, self.form))
        plans = {}
        for index, block in enumerate(group_blocks(mod, found)):
            lowered, notes = [], []
            for codes in block:
                uses, note = _lowerable(codes)
                if uses:
                    plans[codes.codes] = (codes, uses)
                    lowered += uses
                if note:
                    notes.append(note)
                if codes.other_readers:
                    notes.append(f"the float codes stay for {codes.other_readers} other reader(s)")
            report.sites.append(_site(index, block, lowered, notes))
        if not plans:
            return mod
        return relax.transform.DeadCodeElimination()(rewrite_functions(_CodeLowering(mod, plans), mod))


def _site(index: int, block: list[BinaryCodes], lowered: list, notes: list[str]) -> AttentionSite:
    """A binary-coded attention block: its queries are the codes a code matmul reads, its keys
    those a masked sum reads (the same codes when Q and K are shared)."""
    queries = [c for c in block if any(use.kind == CODE_MATMUL for use in c.uses)] or block
    keys = [c for c in block if any(use.kind == MASKED_SUM for use in c.uses)] or block
    sums = sum(use.kind == MASKED_SUM for use in lowered)
    if lowered:
        notes = [f"{sums} masked sum(s), {len(lowered) - sums} code matmul(s)"] + notes
    leading = _leading(queries[0].codes)
    return AttentionSite(
        kind=BINARY_CODED, index=index, result="lowered" if lowered else "kept",
        exactness="lossless" if lowered else None, heads=leading[-1] if leading else 1,
        query_tokens=queries[0].rows, key_tokens=keys[0].rows, head_dim=dims(queries[0].source)[-1],
        bits=queries[0].bits,
        hash="model projection" if queries[0].projection is not None else "model compare, no projection",
        note="; ".join(notes),
    )


@relax.expr_functor.mutator
class _CodeLowering(relax.PyExprMutator):
    """Emits the hash after each lowered code tensor and a kernel in place of each use."""

    def __init__(self, mod, plans):
        super().__init__(mod)
        self.plans = plans
        self.use_of = {use.output: (codes, use) for codes, uses in plans.values() for use in uses}
        self.packed = {}

    def _groups(self, expr: relax.Expr):
        groups = 1
        for dim in expr.ty.shape.values[:-2]:
            groups = groups * dim
        return groups

    def _rows(self, expr: relax.Expr) -> relax.Expr:
        """``expr`` (..., R, C) as (G, R, C)."""
        expr = self.visit_expr(expr)
        shape = expr.ty.shape.values
        return self.builder_.emit(relax.op.reshape(expr, (self._groups(expr), shape[-2], shape[-1])))

    def visit_var_binding_(self, binding):
        super().visit_var_binding_(binding)
        if binding.var in self.plans:
            codes, _ = self.plans[binding.var]
            projection = None if codes.projection is None else relax.const(codes.projection)
            offset = None if codes.offset is None else relax.const(codes.offset)
            self.packed[binding.var] = emit_kernel(
                self.builder_, binary_hash.binary_hash_te, self._rows(codes.source), projection, offset,
                bits=codes.bits, kernel="binary_hash",
            )
        elif binding.var in self.use_of:
            codes, use = self.use_of[binding.var]
            packed = self.packed[codes.codes]
            if use.kind == MASKED_SUM:
                flat = emit_kernel(self.builder_, masked_sum.masked_sum_te, packed, self._rows(use.values),
                                   bits=codes.bits, complement=use.complement, kernel="masked_sum")
            else:
                operands = [None if g is None else self._rows(g) for g in (use.on_set, use.on_clear)]
                flat = emit_kernel(self.builder_, code_matmul.code_matmul_te, packed, *operands, bits=codes.bits,
                                   kernel="code_matmul")
            rebind(self, binding, relax.op.reshape(flat, binding.var.ty.shape))
