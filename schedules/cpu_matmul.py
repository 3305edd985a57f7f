"""A DLight rule for the CPU: matmul-like fused functions (dense and batched matmuls with their
fused elementwise prologue and epilogue), the bulk of a ViT's time.

TVM 0.27 has no CPU matmul rule (``dlight.cpu`` holds GEMV and reductions only), and a
legalized matmul runs on one thread, one scalar at a time. The schedule is the classic
register-blocked GEMM:

    parallel for (batch..., column panel, row tile):      one task per MR x NR output tile
        acc[MR, NR] = 0                                    in registers (vector lanes along NR)
        for k:  acc[i, :] += A[i, k] * B[k, :]             MR broadcasts, NR/lanes vector FMAs
        out[MR, NR] = epilogue(acc)                        bias, GELU, residual: vectorized

Panels of NR columns are the outer parallel loop so that each thread keeps its K x NR slice of
B hot while it walks down the rows of A. Rows that do not divide MR run as a guarded tail.
Columns are padded to whole vectors when they do not fill them (the attention scores' 197),
so NR is always a multiple of the SIMD width.

A matmul with fewer columns than one vector holds (an MoE router's two expert logits) has no
lanes to fill along them; it runs as dot products along K instead:

    Bt = transpose(B)                                      once, N x K: each column contiguous
    parallel for row:
        acc[N, lanes] = 0
        for k in K / lanes:  acc[j, :] += A[row, k, :] * Bt[j, k, :]   N vector FMAs a load of A
        out[row, :] = epilogue(sum of acc's lanes)

(DeiT-Tiny's 768 x 2 router, 197 rows, both cores: 72 -> 12 us; the register-blocked form ran
two lanes of each vector, and reading B's columns in place costs a gather per vector.)

A matrix times a vector (one column, its loop dropped by normalization) runs with its outputs
in vector lanes, each accumulated over all of K (a vector times a matrix; a short K), or as the
dot products above without the transposed copy (a long K, or outputs that do not fill vectors).
DLight's CPU GEMV rule, which had them before, vectorized 128 rows at a time and unrolled K:
at 12544 rows LLVM took over six minutes to compile Taylor attention's one.

The rule applies to functions with exactly one reduction block, a sum of products whose
reduction loop is innermost, and whose other blocks are injective (inlined into it or into
the one epilogue block); anything else falls through to the next rule.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir.dlight.analysis import normalize_prim_func
from tvm.s_tir.dlight.analysis.gemv import get_reduction_expr, is_gemv

from saddc.schedules.cpu_reduction_rule import (
    CPUReductionRule, accumulate_in_lanes, accumulator_reader, finish_accumulator, only_reduction,
)
from saddc.schedules.simd import simd_lanes, target_lanes, vectorize_with_tail

# MR x NR accumulators: 4 rows by 4 vectors is 16 of AVX-512's 32 vector registers, by 2
# vectors 8 of AVX2's 16, leaving room for B's vectors and A's broadcasts. (On AVX-512 the
# 4 x 4 tile ran DeiT-Tiny's matmuls 10-25% faster than 4 x 2 at batch 1, both cores; 8 x 2
# ran them 1.3x slower.)
ROWS = 4
VECTORS_AVX512 = 4
VECTORS = 2


class CPUMatmul(CPUReductionRule):
    """Register-blocked, vectorized, parallel matmul for ``llvm`` targets (see the module doc)."""

    def schedule(self, sch, infos, position, target):
        main = infos[position].block_rv
        kinds = infos[position].dom_kind()
        shape = _matmul_columns(sch, infos[position])
        if shape is None:
            return None
        vector, columns = shape
        lanes = target_lanes(target)
        original = {sch.get(info.block_rv).name_hint for info in infos}
        padded = pads_columns(columns, lanes)
        if padded:
            # Pad the columns to whole 2-vector panels (the attention scores' 197 -> 224; 4-vector
            # ones would pad to 256): B is copied into a zero-padded buffer first, and the
            # epilogue runs after the matmul, cropping the padding off as it goes (see below).
            sch.pad_einsum(main, [1] * (len(kinds) - 2) + [lanes * VECTORS, 1])
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
        position = [sch.get(b).name_hint for b in blocks].index(sch.get(main).name_hint)
        padding = [b for b in blocks[:position] if sch.get(b).name_hint not in original]
        try:
            for block in blocks[:position]:
                if block not in padding:
                    sch.compute_inline(block)
            epilogue = blocks[position + 1:]
            for block in epilogue[:-1]:
                sch.compute_inline(block)
        except s_tir.ScheduleError:
            return None
        for block in padding:
            _rows_in_parallel_columns_in_lanes(sch, block, lanes)
        if len(sch.get_loops(main)) != len(kinds):
            return None
        if vector:
            if _outputs_in_lanes(sch, main, lanes):
                accumulate_in_lanes(sch, main, epilogue, lanes)
                return sch
            return sch if dot_products(sch, main, epilogue, lanes, has_columns=False) else None
        if columns < lanes and dot_products(sch, main, epilogue, lanes):
            return sch
        if padded:
            # A tile's epilogue would check every column against the crop, a lane-dependent
            # condition that TVM vectorizes in no tile; as a pass of its own over the output it
            # runs in whole vectors and a tail (DeiT-Tiny's scores, one thread: 218 -> 108 us
            # with the wider panel).
            register_block(sch, main, sch.cache_write(main, 0, "local"), lanes, has_epilogue=False)
            _rows_in_parallel_columns_in_lanes(sch, epilogue[-1], lanes)
        else:
            register_block(sch, main, accumulator_reader(sch, main, epilogue), lanes, has_epilogue=bool(epilogue))
        return sch


def _matmul_columns(sch: s_tir.Schedule, info) -> tuple[bool, int] | None:
    """``(vector, columns)`` of the reduction block ``info`` where it is a matmul the rule takes:
    a sum of products (a plain sum, a mean over tokens, is a column or row reduction) whose
    column count is static, ``vector`` where it is a matrix times a vector (one column, whose
    unit loop normalization dropped); None otherwise."""
    kinds = info.dom_kind()
    if (len(kinds) < 2 or kinds.count("R") != 1 or not kinds.endswith("R")
            or not isinstance(get_reduction_expr(sch.get(info.block_rv)), tirx.Mul)):
        return None
    vector = is_gemv(sch, info) is not None
    columns = tirx.IntImm("int64", 1) if vector else sch.get(sch.get_loops(info.block_rv)[-2]).extent
    if (len(kinds) < 3 and not vector) or not isinstance(columns, tirx.IntImm):
        return None
    return vector, int(columns)


def _outputs_in_lanes(sch: s_tir.Schedule, main, lanes: int) -> bool:
    """Whether a matrix-vector product ``main`` runs best with its outputs in vector lanes, each
    accumulated over K (``accumulate_in_lanes``): where they split into vectors of at least four
    and the matrix is contiguous along them (a vector times a matrix, the classifier head at
    batch 1) or K is short (Taylor attention's ``Q . sum_j k_j``, K = head dim: one strided
    load a lane costs less there than a horizontal sum a row; at 3136 rows of 32: 9 us, where
    the dot products took 58)."""
    outputs, depth = (sch.get(loop).extent for loop in sch.get_loops(main)[-2:])
    if not isinstance(outputs, tirx.IntImm) or simd_lanes(int(outputs), lanes) < 4:
        return False
    output_var = sch.get(main).iter_vars[-2].var
    contiguous = any(region.region[-1].min.same_as(output_var) for region in sch.get(main).reads)
    return contiguous or (isinstance(depth, tirx.IntImm) and int(depth) <= 4 * lanes)


def _rows_in_parallel_columns_in_lanes(sch: s_tir.Schedule, block, lanes: int) -> None:
    """An injective block over a matrix (a padding copy, a cropping epilogue): its row loops
    fused and parallel, its column loop in vectors."""
    *rows, column = sch.get_loops(block)
    sch.parallel(sch.fuse(*rows))
    vectorize_with_tail(sch, column, lanes)


def dot_products(sch: s_tir.Schedule, main, epilogue: list, lanes: int, has_columns: bool = True) -> bool:
    """Schedule the matmul block ``main`` (spatial loops, then rows, columns, one innermost
    reduction; no column loop where not ``has_columns``: a matrix times a vector) and the last
    block of its ``epilogue`` (the others inlined) as the dot products of the module doc, in
    vectors of up to ``lanes``; False, the schedule untouched, where K splits into fewer than
    four lanes or B is not read at the column in its last dimension."""
    *spatial, reduction = sch.get_loops(main)
    depth = sch.get(reduction).extent
    lanes = simd_lanes(int(depth), lanes) if isinstance(depth, tirx.IntImm) else 1
    if lanes < 4:
        return False
    if has_columns:
        # A vector, read at the reduction alone, is contiguous along K already; B's columns are not.
        column_var = sch.get(main).iter_vars[-2].var
        readers = [index for index, region in enumerate(sch.get(main).reads)
                   if region.region[-1].min.same_as(column_var)]
        if len(readers) != 1:
            return False
        transposed = sch.cache_read(main, readers[0], "global")
        sch.transform_layout(transposed, ("write", 0), lambda *index: (*index[:-2], index[-1], index[-2]))
    partial = sch.rfactor(sch.split(reduction, [None, lanes])[1], factor_axis=len(spatial))
    *outer, row = sch.get_loops(partial)[:len(spatial) - has_columns]
    columns = sch.get_loops(partial)[len(spatial) - has_columns:len(spatial)]
    vectors, lane = sch.get_loops(partial)[-2:]
    sch.reorder(row, vectors, *columns, lane)
    row = sch.fuse(*outer, row)
    sch.reverse_compute_at(main, row)
    if epilogue:
        sch.reverse_compute_at(epilogue[-1], row)
        sch.set_scope(main, 0, "local")
    sch.parallel(row)
    for column in columns:
        sch.unroll(column)
    sch.vectorize(lane)
    sch.vectorize(sch.get_loops(sch.decompose_reduction(partial, vectors))[-1])
    sch.set_scope(partial, 0, "local")
    # The lanes' sum, a column at a time, unrolled: LLVM's horizontal add.
    lane = sch.get_loops(main)[-1 - has_columns]
    if has_columns:
        sch.reorder(sch.get_loops(main)[-1], lane)
    sch.unroll(lane)
    return True


def register_block(sch: s_tir.Schedule, main, output, lanes: int, has_epilogue: bool = True) -> None:
    """Tile the matmul block ``main`` (spatial loops, then rows, columns, one innermost reduction)
    into the MR x NR register-blocked GEMM of the module doc, ``lanes`` being the target's float32
    SIMD width: NR the most vectors (4 with AVX-512's 32 registers, else 2; then fewer) whose
    width divides the columns. ``output``, the block that reads the accumulator
    (``accumulator_reader``), runs once per row tile."""
    loops = sch.get_loops(main)
    panel = column_panel(int(sch.get(loops[-2]).extent), lanes)
    *outer, i, j, k = loops
    io, ii = sch.split(i, [None, ROWS])
    jo, ji = sch.split(j, [None, panel])
    sch.reorder(*outer, jo, io, k, ii, ji)
    sch.reverse_compute_at(output, io)
    sch.parallel(sch.fuse(*outer, jo, io))
    sch.vectorize(ji)
    sch.unroll(ii)
    finish_accumulator(sch, main, output, k, has_epilogue)


def pads_columns(columns: int, lanes: int) -> bool:
    """Whether the rule pads a matmul's ``columns`` to whole 2-vector panels (module doc)."""
    return columns % (lanes * VECTORS) != 0 and columns > lanes


def column_panel(columns: int, lanes: int) -> int:
    """NR of ``register_block`` for ``columns`` on a target of ``lanes`` float32 lanes: vectors
    of the widest lane count up to ``lanes`` that divides ``columns``, as many as the accumulator
    registers hold (4 with AVX-512's 32, else 2), or fewer where that width does not divide
    ``columns``."""
    widest = VECTORS_AVX512 if lanes == 16 else VECTORS
    lanes = simd_lanes(columns, lanes)
    return next(lanes * vectors for vectors in (widest, VECTORS, 1) if columns % (lanes * vectors) == 0)


def read_weight_in_panels(func: tirx.PrimFunc, lanes: int) -> tuple[tirx.PrimFunc, int, int] | None:
    """``func`` (a matmul-like function the rule schedules with ``register_block``, its columns
    unpadded, on a target of ``lanes``) reading its weight ``W[k, j]``, a 2-D parameter, from
    column panels ``Wp[j // NR, k, j % NR]``, NR being ``column_panel``'s: each K x NR panel the
    register block walks down is then contiguous (see ``PackMatmulWeights``). Returns the
    function, the weight's parameter index and NR; None where ``func`` is not such a function."""
    sch = s_tir.Schedule(func)
    infos = normalize_prim_func(sch) or []
    position = only_reduction(infos)
    shape = None if position is None else _matmul_columns(sch, infos[position])
    if shape is None or shape[0] or shape[1] < lanes or pads_columns(shape[1], lanes):
        return None
    columns = shape[1]
    main = infos[position].block_rv
    block = sch.get(main)
    column, depth = (iter_var.var for iter_var in block.iter_vars[-2:])
    params = list(sch.mod["main"].params)
    for index, region in enumerate(block.reads):
        weight = region.source
        position = next((p for p, param in enumerate(params) if param.same_as(weight)), None)
        if (position is not None and len(region.region) == 2 and weight.ty.dtype == "float32"
                and region.region[0].min.same_as(depth) and region.region[1].min.same_as(column)
                and all(isinstance(dim, tirx.IntImm) for dim in weight.ty.shape)):
            panel = column_panel(columns, lanes)
            sch.transform_layout(main, ("read", index), lambda k, j: (j // panel, k, j % panel))
            return sch.mod["main"], position, panel
    return None
