"""Calibration data and intermediate values, for the error reports of lossy rewrites.

``calibration_batches`` reads the user's inputs (a ``.npy`` for a one-input model, or an
array) and splits them into batches the model accepts, or draws synthetic N(0, 1) inputs for
every input with a warning. A batch is a list with one array per input of ``main``. ``run``
compiles a Relax module for the CPU and runs it on batches; ``probe`` runs it up to chosen
intermediate variables (the function is rebuilt to return them).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from saddc.array_files import load_array_file
from saddc.errors import ConfigError, SaddcWarning

SYNTHETIC_BATCHES = 4
SYNTHETIC_SEED = 0


def _input_shapes(func: relax.Function) -> list[tuple]:
    return [
        tuple(int(d) if isinstance(d, tvm.tirx.IntImm) else None for d in p.ty.shape.values)
        for p in func.params
    ]


def calibration_batches(
    mod: tvm.IRModule, source: str | os.PathLike | np.ndarray | None
) -> tuple[list[list[np.ndarray]], str]:
    """Input batches for ``main`` and a description of where they came from. ``source`` (for a
    one-input function) may hold several batches stacked on a static batch dimension."""
    shapes = _input_shapes(mod["main"])
    if source is None:
        concrete = [tuple(1 if d is None else d for d in shape) for shape in shapes]
        rng = np.random.default_rng(SYNTHETIC_SEED)
        described = ", ".join(str(list(shape)) for shape in concrete)
        warnings.warn(
            f"no calibration inputs given: the error report uses {SYNTHETIC_BATCHES} synthetic "
            f"N(0, 1) batches of shape {described}, which need not resemble real data "
            "(give real inputs with --calibration FILE.npy)",
            SaddcWarning, stacklevel=2,
        )
        batches = [[rng.standard_normal(shape).astype("float32") for shape in concrete]
                   for _ in range(SYNTHETIC_BATCHES)]
        return batches, f"synthetic N(0, 1), {SYNTHETIC_BATCHES} batches"
    if len(shapes) != 1:
        raise ConfigError(f"calibration files support one-input models; this one has {len(shapes)} inputs")
    (shape,) = shapes
    array, where = _load(source)
    expected = "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
    if array.ndim != len(shape) or any(
        d is not None and a != d for a, d in zip(array.shape[1:], shape[1:])
    ):
        raise ConfigError(f"calibration inputs {where} have shape {list(array.shape)}; the model takes {expected}")
    batch = shape[0]
    if batch is None:
        batches = [array]
    elif array.shape[0] % batch == 0:
        batches = [array[i : i + batch] for i in range(0, array.shape[0], batch)]
    else:
        raise ConfigError(
            f"calibration inputs {where} hold {array.shape[0]} samples, not a multiple of the "
            f"model's batch size {batch}"
        )
    return [[b.astype("float32")] for b in batches], f"{where}, {array.shape[0]} samples"


def _load(source) -> tuple[np.ndarray, str]:
    if isinstance(source, np.ndarray):
        return source, "(array)"
    path = Path(source)
    array = load_array_file(path, "calibration file")
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
        raise ConfigError(f"calibration file {path} does not hold a numeric array")
    if not np.isfinite(array).all():
        raise ConfigError(f"calibration file {path} holds NaN or Inf values")
    return array, str(path)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two arrays, flattened (1 for two zero arrays)."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    if norms == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.dot(a, b) / norms)


def output_error(expected: list[list[np.ndarray]], actual: list[list[np.ndarray]]) -> dict:
    """How far a model's outputs moved, over calibration batches (``[batch][output]``): cosine,
    max relative error, and for (batch, classes) outputs the top-1 agreement."""
    flat_expected = np.concatenate([o.ravel() for batch in expected for o in batch])
    flat_actual = np.concatenate([o.ravel() for batch in actual for o in batch])
    error = {"cosine": cosine(flat_actual, flat_expected),
             "max_relative_error": float(np.abs(flat_actual - flat_expected).max()
                                         / max(np.abs(flat_expected).max(), 1e-30))}
    logits = [(e[0], a[0]) for e, a in zip(expected, actual)]
    if all(e.ndim == 2 and e.shape[1] > 1 for e, _ in logits):
        error["top1_agreement"] = float(np.mean([np.mean(e.argmax(-1) == a.argmax(-1)) for e, a in logits]))
    return error


def run(mod: tvm.IRModule, batches: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Compile ``mod`` for the CPU (no rewrites) and run ``main`` on each batch: the outputs of
    each batch, a tuple flattened to a list."""
    # pylint: disable=import-outside-toplevel
    from saddc.api import build, lower
    from saddc.config import LowerConfig
    from saddc.runtime import use_every_core

    config = LowerConfig(target="llvm")
    executable, _ = build(lower(mod, config), config)
    use_every_core()
    vm = relax.VirtualMachine(executable, tvm.cpu())
    results = []
    for batch in batches:
        values = vm["main"](*[tvm.runtime.tensor(array) for array in batch])
        values = [values] if hasattr(values, "numpy") else list(values)
        results.append([value.numpy() for value in values])
    return results


def probe(mod: tvm.IRModule, variables: list[relax.Var], batches: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """The values of ``variables`` (bound in ``main``, or its parameters) on each batch:
    ``[batch][variable]``."""
    func = mod["main"]
    wanted = list(variables)
    # A parameter's value is the input itself.
    outputs = {param: param for param in func.params if param in wanted}
    blocks = []
    for block in func.body.blocks:
        bound = [b.var for b in block.bindings if b.var in wanted]
        # Bind each wanted dataflow variable to a plain variable at the end of its block, the way
        # a dataflow block hands out its outputs.
        exits = [relax.VarBinding(relax.Var(f"probe_{v.name}", v.ty), v) for v in bound]
        outputs.update({binding.value: binding.var for binding in exits})
        block_type = relax.DataflowBlock if isinstance(block, relax.DataflowBlock) else relax.BindingBlock
        blocks.append(block_type(list(block.bindings) + exits))
    missing = [v.name for v in wanted if v not in outputs]
    if missing:
        raise ValueError(f"probe: {', '.join(missing)} not bound in main")
    returned = relax.Tuple([outputs[v] for v in wanted])
    body = relax.SeqExpr(blocks, returned)
    ret_ty = relax.TupleType([v.ty for v in wanted])
    probing = relax.Function(func.params, body, ret_ty, attrs=func.attrs)
    # Keep the other functions: kernels an earlier rewrite emitted are called from main.
    probe_mod = tvm.IRModule({gvar: probing if gvar.name_hint == "main" else other
                              for gvar, other in mod.functions_items()})
    return run(relax.transform.Normalize()(probe_mod), batches)
