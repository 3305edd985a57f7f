"""Find binary codes a model already computes, and the matmuls that read them (an analysis).

A model fine-tuned with binary-coded attention (``saddc.nn.AdditiveAttention``, EcoFormer,
ShiftAddViT) exports its codes as ``Cast(Greater(P, t))``: in Relax,

    C = astype(greater(P, t), "float32")      t a constant (a scalar or one per bit)
    P = matmul(x, const A) [+ const c]         a hash projection, A (d, b) or (heads, d, b)
      | any other activation                   compared feature by feature (b = d)

and reads them with matmuls, which are masked sums:

    matmul(permute_dims(C'), V)     C'^T V, with C' = C or 1 - C      -> masked_sum
    matmul(C', G)                   rows of G selected by the bits     -> code_matmul
    matmul(C, G1) + matmul(1 - C, G0)                                  -> one code_matmul

``permute_dims`` must swap the last two axes and ``1 - C`` is ``subtract(const 1, C)``.
Readers of C of any other kind are counted: they keep the float codes alive.
``group_blocks`` puts the codes of one attention block together: those of the keys (read by a
masked sum) with those of the queries (read by a code matmul of what that masked sum made).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from saddc.passes.find_vit_blocks import Dataflow, bindings, dims

MASKED_SUM = "masked_sum"
CODE_MATMUL = "code_matmul"


@dataclass(frozen=True)
class CodeUse:
    """One matmul over codes and the kernel it lowers to.

    ``output`` is the binding the kernel replaces (the ``add`` of a combined code matmul);
    ``values`` is V of a masked sum; ``on_set``/``on_clear`` are the G operands of a code matmul.
    """

    kind: str
    output: relax.Var = field(repr=False)
    complement: bool = False
    values: relax.Expr | None = field(default=None, repr=False)
    on_set: relax.Expr | None = field(default=None, repr=False)
    on_clear: relax.Expr | None = field(default=None, repr=False)


@dataclass(frozen=True)
class BinaryCodes:
    """0/1 codes a model computes from ``source`` (..., N, d), and the matmuls that read them.

    ``projection`` is (heads, d, bits) or None (the source compared feature by feature);
    ``offset`` (heads or 1, bits) or None is added before comparing with 0.
    """

    index: int
    bits: int
    rows: int | str
    heads: int
    source: relax.Expr = field(repr=False)
    projection: np.ndarray | None = field(repr=False)
    offset: np.ndarray | None = field(repr=False)
    codes: relax.Var = field(repr=False)
    uses: tuple = ()
    other_readers: int = 0


def find_binary_codes(mod: tvm.IRModule, func_name: str = "main") -> list[BinaryCodes]:
    """Every float 0/1 code tensor in ``func_name`` that at least one matmul reads as codes."""
    func = mod[func_name]
    flow = Dataflow(func)
    found = []
    for binding in bindings(func):
        codes = binding.var
        if flow.op(codes) != "relax.astype" or str(codes.ty.dtype) != "float32":
            continue
        compare = flow.value[codes].args[0]
        if flow.op(compare) != "relax.greater" or not isinstance(flow.value[compare].args[1], tvm.ir.GenericConst):
            continue
        hashed, threshold = flow.value[compare].args
        bits = int(dims(codes)[-1])
        hash_of = _hash_of(flow, hashed, threshold.value.numpy(), bits)
        if hash_of is None:
            continue
        uses, other_readers = _code_uses(flow, codes)
        if not uses:
            continue
        source, projection, offset = hash_of
        found.append(BinaryCodes(
            index=len(found), bits=bits, rows=dims(codes)[-2],
            heads=1 if projection is None else projection.shape[0], source=source,
            projection=projection, offset=offset, codes=codes, uses=tuple(uses), other_readers=other_readers,
        ))
    return found


def _const_args(flow: Dataflow, var) -> tuple[list, list]:
    args = flow.value[var].args
    return ([a for a in args if isinstance(a, tvm.ir.GenericConst)], [a for a in args if not isinstance(a, tvm.ir.GenericConst)])


def _hash_of(flow: Dataflow, hashed, threshold: np.ndarray, bits: int):
    """(source, projection (P, d, b) or None, offset (P or 1, b) or None), or None if the
    threshold is not a scalar or one value per bit."""
    if threshold.size not in (1, bits):
        return None
    bias = np.zeros(1)
    product = hashed
    if flow.op(product) == "relax.add":
        constants, activations = _const_args(flow, product)
        if len(constants) == 1 and len(activations) == 1:
            bias, product = constants[0].value.numpy(), activations[0]
    weight = flow.value[product].args[1] if flow.op(product) == "relax.matmul" else None
    projection = None
    if isinstance(weight, tvm.ir.GenericConst) and weight.value.numpy().ndim in (2, 3):
        projection = weight.value.numpy().astype(np.float32)
        projection = projection[None] if projection.ndim == 2 else projection
    # A bias is one value, one per bit, or one per bit of each head's projection.
    if projection is not None and bias.size in (1, bits, projection.shape[0] * bits):
        source = flow.value[product].args[0]
        offset = bias.reshape(-1, 1 if bias.size == 1 else bits) - threshold.reshape(1, -1)
    else:
        projection, source = None, hashed
        offset = -threshold.reshape(1, -1)
    offset = np.broadcast_to(offset, (offset.shape[0], bits)).astype(np.float32)
    return source, projection, (offset if offset.any() else None)


def _swaps_last_two(flow: Dataflow, var) -> bool:
    if flow.op(var) != "relax.permute_dims":
        return False
    axes = flow.value[var].attrs.axes
    rank = len(dims(var))
    return axes is not None and [int(a) for a in axes] == list(range(rank - 2)) + [rank - 1, rank - 2]


def _is_complement(flow: Dataflow, var, codes) -> bool:
    """``var = 1 - codes``."""
    if flow.op(var) != "relax.subtract":
        return False
    one, operand = flow.value[var].args
    return operand.same_as(codes) and isinstance(one, tvm.ir.GenericConst) and np.all(one.value.numpy() == 1.0)


def _code_uses(flow: Dataflow, codes) -> tuple[list[CodeUse], int]:
    uses, other_readers = [], 0
    set_products, clear_products = {}, {}

    def left_matmuls(var):
        return [u for u in flow.users.get(var, []) if flow.op(u) == "relax.matmul"
                and flow.value[u].args[0].same_as(var)]

    def read_as_codes(var, complement: bool) -> int:
        """Record the matmuls reading ``var`` (codes or their complement); count other readers."""
        readers = 0
        for user in flow.users.get(var, []):
            if _swaps_last_two(flow, user) and left_matmuls(user):
                uses.extend(CodeUse(MASKED_SUM, m, complement=complement, values=flow.value[m].args[1])
                            for m in left_matmuls(user))
                readers += len(flow.users.get(user, [])) - len(left_matmuls(user))
            elif user in left_matmuls(var):
                (clear_products if complement else set_products)[user] = flow.value[user].args[1]
            elif not complement and _is_complement(flow, user, codes):
                readers += read_as_codes(user, True)
            else:
                readers += 1
        return readers

    other_readers = read_as_codes(codes, False)
    for set_product, on_set in list(set_products.items()):
        users = flow.users.get(set_product, [])
        if len(users) != 1 or flow.op(users[0]) != "relax.add":
            continue
        (total,) = users
        other = [a for a in flow.value[total].args if not a.same_as(set_product)]
        readers_of_other = flow.users.get(other[0], []) if len(other) == 1 else []
        if other and other[0] in clear_products and len(readers_of_other) == 1 and readers_of_other[0].same_as(total):
            uses.append(CodeUse(CODE_MATMUL, total, on_set=on_set, on_clear=clear_products.pop(other[0])))
            del set_products[set_product]
    uses += [CodeUse(CODE_MATMUL, m, on_set=g) for m, g in set_products.items()]
    uses += [CodeUse(CODE_MATMUL, m, on_clear=g) for m, g in clear_products.items()]
    return uses, other_readers


# How far (in ops) a code matmul's operand may be from the masked sum it is computed from.
_BLOCK_DISTANCE = 8


def group_blocks(mod: tvm.IRModule, found: list[BinaryCodes], func_name: str = "main") -> list[list[BinaryCodes]]:
    """The codes of ``found`` grouped by attention block, in program order."""
    flow = Dataflow(mod[func_name])
    summed_by = {use.output: codes.index for codes in found for use in codes.uses if use.kind == MASKED_SUM}
    parent = list(range(len(found)))

    def root(index: int) -> int:
        while parent[index] != index:
            index = parent[index]
        return index

    for codes in found:
        for use in codes.uses:
            operands = [g for g in (use.on_set, use.on_clear) if g is not None]
            for operand in operands:
                upstream = [operand] + [v for v, _ in flow.reach(operand, False, None, _BLOCK_DISTANCE)]
                for var in upstream:
                    if var in summed_by:
                        parent[root(summed_by[var])] = root(codes.index)
    groups = {}
    for codes in found:
        groups.setdefault(root(codes.index), []).append(codes)
    return sorted(groups.values(), key=lambda group: group[0].index)
