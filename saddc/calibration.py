"""Calibration data and intermediate values, for the error reports of lossy rewrites.

``calibration_batches`` reads the user's inputs (a ``.npy`` for a one-input model, or an
array) and splits them into batches the model accepts, or draws synthetic N(0, 1) inputs with
a warning. ``probe`` runs the model up to chosen intermediate variables on those batches: the
function is rebuilt to return those variables, compiled for the CPU, and run.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

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
) -> tuple[list[np.ndarray], str]:
    """Input batches for ``main`` (a one-input function) and a description of where they came
    from. ``source`` may hold several batches stacked on a static batch dimension."""
    shapes = _input_shapes(mod["main"])
    if len(shapes) != 1:
        raise ConfigError(f"calibration supports one-input models; this one has {len(shapes)} inputs")
    (shape,) = shapes
    if source is None:
        concrete = tuple(1 if d is None else d for d in shape)
        rng = np.random.default_rng(SYNTHETIC_SEED)
        warnings.warn(
            f"no calibration inputs given: the error report uses {SYNTHETIC_BATCHES} synthetic "
            f"N(0, 1) batches of shape {list(concrete)}, which need not resemble real data "
            "(give real inputs with --calibration FILE.npy)",
            SaddcWarning, stacklevel=2,
        )
        batches = [rng.standard_normal(concrete).astype("float32") for _ in range(SYNTHETIC_BATCHES)]
        return batches, f"synthetic N(0, 1), {SYNTHETIC_BATCHES} batches"
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
    return [b.astype("float32") for b in batches], f"{where}, {array.shape[0]} samples"


def _load(source) -> tuple[np.ndarray, str]:
    if isinstance(source, np.ndarray):
        return source, "(array)"
    path = Path(source)
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ConfigError(f"calibration file not found: {path}") from None
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read calibration file {path} as a .npy array: {err}") from None
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
        raise ConfigError(f"calibration file {path} does not hold a numeric array")
    if not np.isfinite(array).all():
        raise ConfigError(f"calibration file {path} holds NaN or Inf values")
    return array, str(path)


def probe(mod: tvm.IRModule, variables: list[relax.Var], batches: list[np.ndarray]) -> list[list[np.ndarray]]:
    """The values of ``variables`` (bound in ``main``) on each batch: ``[batch][variable]``."""
    # pylint: disable=import-outside-toplevel
    from saddc.api import build, lower
    from saddc.config import LowerConfig

    func = mod["main"]
    wanted = list(variables)
    outputs = {}
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
    probe_mod = tvm.IRModule({"main": relax.Function(func.params, body, ret_ty, attrs=func.attrs)})
    probe_mod = relax.transform.Normalize()(probe_mod)
    config = LowerConfig(target="llvm")
    executable, _ = build(lower(probe_mod, config), config)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    results = []
    for batch in batches:
        values = vm["main"](tvm.runtime.tensor(batch))
        results.append([values[i].numpy() for i in range(len(wanted))])
    return results
