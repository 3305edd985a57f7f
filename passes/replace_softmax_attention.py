"""Replace softmax attention with additive (binary-coded) or Taylor linear attention (lossy).

Pattern: the blocks ``find_attention_blocks`` recognizes, ``matmul(softmax(Q K^T [* s]), V)``
with Q (..., Nq, d), K^T (..., d, Nk), V (..., Nk, dv); leading (batch, head) dims are
flattened into G groups. Emits, per selected block (the math: schedules/binary_codes.py):

- additive ``match``: ``binary_hash`` of Q and K (once when K is Q), ``masked_sum`` G1 = B_K^T V,
  ``code_counts`` of B_K, G0 = colsum(V) - G1, ``code_matmul`` B_Q (G1 | G0), and
  ``match_normalize`` (one division a row);
- additive ``shiftaddvit``: hashes, ``masked_sum``, ``code_matmul`` B_Q G1 and
  ``angular_normalize`` (``0.5 v + y / pi``, row L2 norm);
- ``taylor``: keys centred on their token mean, ``K^T V`` and ``Q (K^T V)`` as Relax matmuls (the
  scale ``s`` applied to Q), and ``divide_rows`` by ``N + s Q . sum_j k_j``.

The hash is SimHash (hyperplanes drawn per block from the seed) or a projection the user gives.
Exactness: lossy, always; the report gives each block's output cosine against the softmax
block on calibration inputs (the block's own inputs, through the numpy reference of the new
form) and the model's output error before and after the rewrite. Blocks are kept (and say
why) when ``--attention-skip`` names them or the form cannot apply.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from saddc.array_files import load_array_file
from saddc.calibration import calibration_batches, cosine, output_error, probe, run
from saddc.config import AttentionOptions
from saddc.errors import ConfigError
from saddc.passes.attention_report import SOFTMAX, AttentionReport, AttentionSite
from saddc.passes.find_vit_blocks import AttentionBlock, dims, find_attention_blocks
from saddc.passes.kernel_call import emit_kernel, rebind, rewrite_functions
from saddc.passes.selection import position_matches
from saddc.schedules import binary_codes, binary_hash, code_matmul, masked_sum, row_normalize


def select_blocks(blocks: list[AttentionBlock], options: AttentionOptions) -> tuple[list[AttentionBlock], dict]:
    """The blocks to rewrite, and for each kept one the reason."""
    last_stage = max((block.stage for block in blocks), default=0)
    kept = {}
    for token in options.skip:
        matched = [b for b in blocks if (b.stage == last_stage if token == "last-stage"
                                         else position_matches(token, b.index, len(blocks)))]
        if not matched:
            raise ConfigError(f"--attention-skip '{token}' matches no attention block "
                              f"(the model has {len(blocks)}; see saddc inspect)")
        for block in matched:
            kept.setdefault(block.index, f"--attention-skip {token}")
    for block in blocks:
        if block.index in kept:
            continue
        leading = {dims(operand)[:-2] for operand in (block.query, block.key_t, block.value)}
        if len(leading) != 1:
            kept[block.index] = "Q, K and V have different batch or head dims"
        elif not isinstance(block.key_tokens, int):
            kept[block.index] = f"the key token count is symbolic ({block.key_tokens})"
        elif options.mode == "additive" and options.form == "shiftaddvit" and block.query_tokens != block.key_tokens:
            kept[block.index] = (f"the shiftaddvit form adds 0.5 v per query, so it needs as many keys as "
                                 f"queries ({block.query_tokens} queries, {block.key_tokens} keys); "
                                 "use the match form")
    return [block for block in blocks if block.index not in kept], kept


def _load_projections(source, blocks: list[AttentionBlock]) -> dict[int, np.ndarray]:
    """User projections by block index, from an array, a .npy (every block) or a .npz."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        loaded = load_array_file(path, "attention hash file")
        if isinstance(loaded, np.lib.npyio.NpzFile):
            arrays = dict(loaded.items())
            missing = [str(b.index) for b in blocks if str(b.index) not in arrays]
            if missing:
                raise ConfigError(f"attention hash file {path} has no projection for block(s) {', '.join(missing)} "
                                  "(keys are block indices: '0', '1', ...)")
            return {b.index: _check_projection(arrays[str(b.index)], b, f"{path}['{b.index}']") for b in blocks}
        source = loaded
    return {b.index: _check_projection(np.asarray(source), b, "the attention hash projection") for b in blocks}


def _check_projection(array: np.ndarray, block: AttentionBlock, where: str) -> np.ndarray:
    array = array[None] if array.ndim == 2 else array
    if array.ndim != 3 or array.shape[1] != block.head_dim or array.shape[0] not in (1, block.heads):
        raise ConfigError(f"{where} has shape {list(array.shape)}; attention block {block.index} needs "
                          f"(head_dim, bits) or (heads, head_dim, bits) with head_dim {block.head_dim}, "
                          f"heads {block.heads}")
    if not 1 <= array.shape[2] <= binary_codes.MAX_BITS or not np.isfinite(array).all():
        raise ConfigError(f"{where} must hold 1 to {binary_codes.MAX_BITS} finite hash columns")
    return array.astype(np.float32)


@tvm.transform.module_pass(opt_level=0, name="saddc.ReplaceSoftmaxAttention")
class ReplaceSoftmaxAttention:  # pylint: disable=too-few-public-methods
    """Softmax attention blocks -> additive or Taylor attention kernels (see module doc).

    ``reports`` (a dict) receives the ``AttentionReport`` under ``"attention"``.
    """

    def __init__(self, options: AttentionOptions, reports: dict):
        self.options = options
        self.reports = reports

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        options = self.options
        additive = options.mode == "additive"
        report = self.reports.setdefault("attention", AttentionReport(options.mode, options.form if additive else None))
        blocks = find_attention_blocks(mod)
        chosen, kept = select_blocks(blocks, options)
        if not chosen and not report.changed:
            raise ConfigError(f"--attention {options.mode}: " + (
                "every attention block is kept (see the reasons with saddc inspect)" if blocks else
                "the model has no softmax attention block saddc recognizes and no binary-coded attention "
                "(saddc inspect lists what it found)"))
        projections = {}
        if additive:
            projections = ({b.index: binary_codes.simhash_projection(options.seed, b.index, _heads(b), b.head_dim,
                                                                      options.bits) for b in chosen}
                           if str(options.hash) == "simhash" else _load_projections(options.hash, chosen))
        rewritten = mod
        cosines = {}
        if chosen:
            keys = _key_sources(mod, chosen)
            rewritten = rewrite_functions(_AttentionRewriter(mod, chosen, keys, projections, options), mod)
            rewritten = relax.transform.DeadCodeElimination()(rewritten)
            if options.measure_error:
                cosines = self._measure(mod, rewritten, chosen, projections, report)
            else:
                report.calibration = "error not measured (measure_error=False)"
        hash_name = (f"simhash seed {options.seed}" if str(options.hash) == "simhash"
                     else "given projection" if not isinstance(options.hash, (str, os.PathLike))
                     else Path(options.hash).name)
        result = f"additive {options.form}" if additive else "taylor"
        for block in blocks:
            site = AttentionSite(
                kind=SOFTMAX, index=block.index, stage=block.stage, heads=block.heads,
                query_tokens=block.query_tokens, key_tokens=block.key_tokens, head_dim=block.head_dim,
                result="kept softmax" if block.index in kept else result,
                exactness=None if block.index in kept else "lossy", note=kept.get(block.index, ""),
            )
            if block.index not in kept:
                site.output_cosine = cosines.get(block.index)
                if additive:
                    site.bits, site.hash = int(projections[block.index].shape[-1]), hash_name
            report.sites.append(site)
        return rewritten

    def _measure(self, before, after, blocks, projections, report) -> dict[int, float]:
        """Each block's output cosine (its own calibration inputs through the numpy reference of
        the new form) and the model's output before and after; fills ``report``."""
        batches, report.calibration = calibration_batches(before, self.options.calibration)
        func = before["main"]
        returned = [func.body.body] if isinstance(func.body.body, relax.Var) else list(func.body.body.fields)
        operands = [[b.query, b.key_t, b.value, b.output] for b in blocks]
        values = probe(before, [v for group in operands for v in group] + returned, batches)
        cosines = {}
        for position, block in enumerate(blocks):
            pairs = []
            for batch in values:
                q, key_t, v, out = batch[4 * position: 4 * position + 4]
                rewritten = self._reference(block, projections.get(block.index), q, np.swapaxes(key_t, -1, -2), v)
                pairs.append((out, rewritten.reshape(out.shape)))
            cosines[block.index] = cosine(np.concatenate([a.ravel() for a, _ in pairs]),
                                           np.concatenate([b.ravel() for _, b in pairs]))
        outputs_before = [batch[4 * len(blocks):] for batch in values]
        outputs_after = run(after, batches)
        report.end_to_end = output_error(outputs_before, outputs_after)
        return cosines

    def _reference(self, block, projection, q, k, v) -> np.ndarray:
        q, k, v = (a.reshape((-1,) + a.shape[-2:]) for a in (q, k, v))
        if self.options.mode == "taylor":
            return binary_codes.taylor_attention(q, k, v, block.score_scale)
        if self.options.form == "shiftaddvit":
            return binary_codes.shiftaddvit_attention(q, k, v, projection)
        return binary_codes.match_attention(q, k, v, projection)


def _heads(block: AttentionBlock) -> int:
    return block.heads if isinstance(block.heads, int) else 1


def _permutation(var2val, expr) -> tuple[relax.Expr, list[int]] | None:
    """``(X, axes)`` when ``expr`` is bound to ``permute_dims(X, axes)``."""
    value = var2val.get(expr)
    if (isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == "relax.permute_dims"
            and value.attrs.axes is not None):
        return value.args[0], [int(a) for a in value.attrs.axes]
    return None


def _key_sources(mod: tvm.IRModule, blocks: list[AttentionBlock]) -> dict[int, tuple]:
    """How to get K (..., Nk, d) for each block without transposing twice: ``("shared",)`` when
    K is Q; ``("permute", X, axes)`` when K^T is ``permute_dims(X, ...)`` (axes None: K is X);
    ``("transpose",)`` otherwise (K^T transposed back)."""
    var2val = relax.analysis.get_var2val(mod["main"])
    sources = {}
    for block in blocks:
        permuted = _permutation(var2val, block.key_t)
        if permuted is None:
            sources[block.index] = ("transpose",)
            continue
        source, axes = permuted
        key_axes = axes[:-2] + [axes[-1], axes[-2]]
        identity = key_axes == list(range(len(key_axes)))
        query = _permutation(var2val, block.query)
        shared = (block.query.same_as(source) if identity
                  else query is not None and query[0].same_as(source) and query[1] == key_axes)
        sources[block.index] = ("shared",) if shared else ("permute", source, None if identity else key_axes)
    return sources


@relax.expr_functor.mutator
class _AttentionRewriter(relax.PyExprMutator):
    """Replaces each chosen block's output binding with the new form's kernels."""

    def __init__(self, mod, blocks, keys, projections, options):
        super().__init__(mod)
        self.by_output = {block.output: block for block in blocks}
        self.keys, self.projections, self.options = keys, projections, options

    def visit_var_binding_(self, binding):
        block = self.by_output.get(binding.var)
        if block is None:
            super().visit_var_binding_(binding)
            return
        q3 = self._groups(self.visit_expr(block.query))
        how, *source = self.keys[block.index]
        shared = how == "shared"
        if shared:
            k3 = q3
        else:
            if how == "transpose":
                origin = self.visit_expr(block.key_t)
                rank = len(origin.ty.shape.values)
                axes = list(range(rank - 2)) + [rank - 1, rank - 2]
            else:
                origin, axes = self.visit_expr(source[0]), source[1]
            key = origin if axes is None else self.builder_.emit(relax.op.permute_dims(origin, axes))
            k3 = self._groups(key)
        v3 = self._groups(self.visit_expr(block.value))
        if self.options.mode == "taylor":
            out3 = self._taylor(q3, k3, v3, block)
        else:
            out3 = self._additive(q3, None if shared else k3, v3, block)
        rebind(self, binding, relax.op.reshape(out3, binding.var.ty.shape))

    def _groups(self, expr: relax.Expr) -> relax.Expr:
        """(..., R, C) -> (G, R, C)."""
        shape = expr.ty.shape.values
        groups = 1
        for dim in shape[:-2]:
            groups = groups * dim
        return self.builder_.emit(relax.op.reshape(expr, (groups, shape[-2], shape[-1])))

    def _kernel(self, compute, *args, kernel: str, **kwargs) -> relax.Var:
        return emit_kernel(self.builder_, compute, *args, kernel=kernel, **kwargs)

    def _additive(self, q3, k3, v3, block: AttentionBlock) -> relax.Expr:
        projection = self.projections[block.index]
        bits = int(projection.shape[-1])
        codes_q = self._kernel(binary_hash.binary_hash_te, q3, relax.const(projection), None, bits=bits, kernel="binary_hash")
        codes_k = codes_q if k3 is None else self._kernel(binary_hash.binary_hash_te, k3, relax.const(projection), None,
                                                          bits=bits, kernel="binary_hash")
        on_set = self._kernel(masked_sum.masked_sum_te, codes_k, v3, bits=bits, kernel="masked_sum")
        if self.options.form == "shiftaddvit":
            mixed = self._kernel(code_matmul.code_matmul_te, codes_q, on_set, None, bits=bits, kernel="code_matmul")
            return self._kernel(row_normalize.angular_normalize_te, mixed, v3, kernel="row_normalize")
        counts = self._kernel(masked_sum.code_counts_te, codes_k, bits=bits, kernel="masked_sum")
        on_clear = self.builder_.emit(relax.op.subtract(relax.op.sum(v3, axis=[1], keepdims=True), on_set))
        numerator = self._kernel(code_matmul.code_matmul_te, codes_q, on_set, on_clear, bits=bits,
                                 kernel="code_matmul")
        return self._kernel(row_normalize.match_normalize_te, numerator, codes_q, counts, keys=block.key_tokens,
                            bits=bits, kernel="row_normalize")

    def _taylor(self, q3, k3, v3, block: AttentionBlock) -> relax.Expr:
        emit, op = self.builder_.emit, relax.op
        centred = emit(op.subtract(k3, op.mean(k3, axis=[1], keepdims=True)))
        if block.score_scale != 1.0:
            q3 = emit(op.multiply(q3, relax.const(block.score_scale, "float32")))
        state = emit(op.matmul(op.permute_dims(centred, [0, 2, 1]), v3))
        numerator = emit(op.add(op.sum(v3, axis=[1], keepdims=True), op.matmul(q3, state)))
        key_sum = emit(op.permute_dims(op.sum(centred, axis=[1], keepdims=True), [0, 2, 1]))
        groups, rows = q3.ty.shape.values[0], q3.ty.shape.values[1]
        denominator = emit(op.reshape(
            op.add(relax.const(float(block.key_tokens), "float32"), op.matmul(q3, key_sum)), (groups, rows)))
        return self._kernel(row_normalize.divide_rows_te, numerator, denominator, kernel="row_normalize")
