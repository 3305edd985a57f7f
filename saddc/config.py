"""Configuration of ``saddc.lower`` and ``saddc.compile``."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from saddc.errors import ConfigError, SaddcWarning
from saddc.target import TargetSpec, parse_target

# Layer groups users select by (``--shift mlp,attn-proj``, ``--moe mlp``); roles are found by
# passes/find_vit_blocks.py from the dataflow, not from layer names. An MoE router (role
# ``router``) is in no group: it is never rewritten.
LAYER_GROUPS = {
    "all": ("patch-embed", "qkv", "attn-proj", "mlp-fc1", "mlp-fc2", "head", "other"),
    "attn": ("qkv", "attn-proj"),
    "mlp": ("mlp-fc1", "mlp-fc2"),
    **{role: (role,) for role in ("patch-embed", "qkv", "attn-proj", "mlp-fc1", "mlp-fc2", "head", "other")},
}
SHIFT_KERNELS = ("auto", "add-only", "decode-dense", "decode-mma")
AUTO_TUNING_DB = "auto"


def _split_list(value: str | list[str]) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``; a list passes through."""
    return [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value


def _layer_groups(layers: str, rewrite: str) -> list[str]:
    groups = [g.strip() for g in layers.split(",") if g.strip()]
    unknown = [g for g in groups if g not in LAYER_GROUPS]
    if unknown or not groups:
        raise ConfigError(
            f"unknown {rewrite} layer group '{','.join(unknown) or layers}' (choose from: {', '.join(LAYER_GROUPS)})"
        )
    return groups


def _roles(groups: list[str]) -> set[str]:
    return {role for group in groups for role in LAYER_GROUPS[group]}


def _require_file(value, what: str) -> None:
    """A path option must name a file; arrays and None pass."""
    if isinstance(value, (str, os.PathLike)) and not Path(value).is_file():
        raise ConfigError(f"{what} not found: {value}")


@dataclass
class ShiftOptions:
    """Which linear layers become shift primitives, and how.

    layers:      comma-separated groups: all, attn (= qkv, attn-proj), mlp (= mlp-fc1, mlp-fc2),
                 qkv, attn-proj, mlp-fc1, mlp-fc2, patch-embed, head, other
    skip:        layers to leave dense: ``first``, ``last``, a layer index, or a name glob
    bits:        code width, 5 (exponents 2^[-14, 0] of a channel scale) or 4 (2^[-6, 0])
    lossy:       allow rounding weights that are not already powers of two (reports the error)
    kernel:      ``auto`` (by measured latency), ``add-only``, or ``decode-mma`` (CUDA only)
    calibration: a .npy of model inputs (or an array) for the error report; synthetic N(0, 1)
                 inputs, with a warning, when absent
    """

    layers: str = "all"
    skip: list[str] = field(default_factory=list)
    bits: int = 5
    lossy: bool = False
    kernel: str = "auto"
    calibration: str | os.PathLike | object | None = None

    def __post_init__(self):
        self.groups = _layer_groups(self.layers, "shift")
        self.skip = _split_list(self.skip)
        if self.bits not in (4, 5):
            raise ConfigError(f"--shift-bits must be 4 or 5, not {self.bits}")
        _require_file(self.calibration, "calibration file")
        if self.kernel not in SHIFT_KERNELS:
            raise ConfigError(f"unknown shift kernel '{self.kernel}' (choose from: {', '.join(SHIFT_KERNELS)})")

    @property
    def roles(self) -> set[str]:
        return _roles(self.groups)


ATTENTION_MODES = ("additive", "taylor")
ATTENTION_FORMS = ("match", "shiftaddvit")


@dataclass
class AttentionOptions:
    """What softmax attention becomes, and how (binary-coded blocks are always lowered exactly).

    mode:        ``additive`` (binary-coded Q/K, masked sums) or ``taylor`` (first-order Taylor)
    form:        additive only: ``match`` (normalized match-kernel attention) or ``shiftaddvit``
                 (``normalize(0.5 v + B_Q (B_K^T V) / pi)``; needs as many keys as queries)
    bits:        code bits a row (1 to 64; default 16)
    hash:        ``simhash`` (random hyperplanes drawn from ``seed``), or a projection: a ``.npy``
                 of shape (d, bits) or (heads, d, bits) for every block, or a ``.npz`` with one
                 such array per block index (keys ``"0"``, ``"1"``, ...); or the array itself
    seed:        SimHash seed; block ``i`` draws its hyperplanes from ``(seed, i)``
    skip:        softmax blocks to keep: ``first``, ``last``, ``last-stage``, or block indices
    calibration: a .npy of model inputs (or an array) for the error report; synthetic N(0, 1)
                 inputs, with a warning, when absent
    measure_error: measure each replaced block's and the model's error on calibration inputs
                 (the default); False skips it (for timing runs) and the report says so
    """

    mode: str = "additive"
    form: str = "match"
    bits: int = 16
    hash: str | os.PathLike | object = "simhash"
    seed: int = 0
    skip: list[str] = field(default_factory=list)
    calibration: str | os.PathLike | object | None = None
    measure_error: bool = True

    def __post_init__(self):
        if self.mode not in ATTENTION_MODES:
            raise ConfigError(f"unknown attention mode '{self.mode}' (choose from: {', '.join(ATTENTION_MODES)})")
        if self.form not in ATTENTION_FORMS:
            raise ConfigError(f"unknown attention form '{self.form}' (choose from: {', '.join(ATTENTION_FORMS)})")
        if not 1 <= self.bits <= 64:
            raise ConfigError(f"--attention-bits must be between 1 and 64, not {self.bits}")
        self.skip = _split_list(self.skip)
        bad = [t for t in self.skip if t not in ("first", "last", "last-stage") and not t.lstrip("-").isdigit()]
        if bad:
            raise ConfigError(f"--attention-skip '{bad[0]}' is not first, last, last-stage or a block index")
        if str(self.hash) != "simhash":
            _require_file(self.hash, "attention hash file")
        _require_file(self.calibration, "calibration file")


MOE_DISPATCHES = ("sparse", "select")
# saddc finetune's rewrites (saddc.finetune.REWRITES; here so the CLI need not import torch).
FINETUNE_REWRITES = ("original", "shift-mlp", "shift-all", "additive", "taylor", "moe-0.5", "moe-0.75", "shiftaddvit")
# Compute precisions of the non-saddc part of a model (saddc's kernels always run in float32).
DTYPES = ("float32", "float16")
# saddc bench's variants of a model (saddc.bench.VARIANT_FLAGS says what each compiles with).
BENCH_VARIANTS = ("plain", "shift", "additive", "taylor", "moe", "shiftaddvit", "fp16", "untuned")
# Timed by default: all but "untuned" (plain without the shipped tuning database: it differs from
# plain only where the database has records for the model's kernels, static shapes), and on the
# CPU all but fp16 too (emulated on CPUs without fp16 arithmetic: seconds a layer).
CUDA_BENCH_VARIANTS = tuple(v for v in BENCH_VARIANTS if v != "untuned")
CPU_BENCH_VARIANTS = tuple(v for v in CUDA_BENCH_VARIANTS if v != "fp16")


@dataclass
class MoEOptions:
    """Which linear layers become a two-expert MoE (Mult: the layer; Shift: its power-of-two
    rewrite) with a router fitted at compile time, dispatched sparsely. (MoE layers a model
    already computes are always lowered to the dispatch, exactly; these options build new ones.)

    layers:       comma-separated layer groups, as for ``ShiftOptions`` (default ``mlp``)
    shift_ratio:  the fraction of calibration tokens the router sends to the Shift expert
                  (0 to 1): those whose shift error is smallest, as far as a linear router
                  can tell them apart
    bits:         the Shift expert's code width, 5 or 4
    calibration:  a .npy of model inputs (or an array) to fit the routers on; synthetic
                  N(0, 1) inputs, with a warning, when absent
    measure_error: measure the model's error on calibration inputs (the default); False skips it
    dispatch:     ``sparse`` (partition, segmented GEMMs, scatter: the point) or ``select``
                  (both experts on every token, then a select: the baseline to compare with)
    """

    layers: str = "mlp"
    shift_ratio: float = 0.5
    bits: int = 5
    calibration: str | os.PathLike | object | None = None
    measure_error: bool = True
    dispatch: str = "sparse"

    def __post_init__(self):
        self.groups = _layer_groups(self.layers, "moe")
        if self.dispatch not in MOE_DISPATCHES:
            raise ConfigError(f"unknown MoE dispatch '{self.dispatch}' (choose from: {', '.join(MOE_DISPATCHES)})")
        if not 0.0 <= self.shift_ratio <= 1.0:
            raise ConfigError(f"--moe-shift-ratio must be between 0 and 1, not {self.shift_ratio}")
        if self.bits not in (4, 5):
            raise ConfigError(f"--moe-bits must be 4 or 5, not {self.bits}")
        _require_file(self.calibration, "calibration file")

    @property
    def roles(self) -> set[str]:
        return _roles(self.groups)


@dataclass
class LowerConfig:
    """What the saddc pipeline does to a Relax module.

    target:      where the module runs (``parse_target('cuda', 'sm_90')``, or a kind string).
    dump_ir:     a directory; the IR after each pipeline phase is written there as TVMScript.
    shift:       turn linear layers into shift primitives (``ShiftOptions``), or None.
    attention:   turn softmax attention into additive or Taylor attention, and lower
                 binary-coded attention (``AttentionOptions``), or None.
    moe:         turn linear layers into Mult/Shift MoE layers (``MoEOptions``), or None.
                 MoE layers the model already computes are lowered either way.
    dtype:       ``float32``, or ``float16``: the model's dense ops (matmul, conv, elementwise)
                 in fp16 with fp32 accumulation, softmax in fp32 (passes/convert_to_float16.py);
                 for CUDA (CPUs without fp16 arithmetic emulate it); not with rewrites yet
    tuning_db:   a MetaSchedule database directory (``saddc tune``) whose records schedule
                 the kernels they match; "auto" (the default): the one saddc ships for the
                 target, if any; None: hand schedules and DLight only.
    layer_names: weight identity -> layer name (filled from the ONNX model by ``compile``).
    reports:     per-rewrite reports, by rewrite name (filled in by the rewrite passes).
    """

    target: TargetSpec | str = "llvm"
    dump_ir: str | Path | None = None
    shift: ShiftOptions | None = None
    attention: AttentionOptions | None = None
    moe: MoEOptions | None = None
    dtype: str = "float32"
    tuning_db: str | Path | None = AUTO_TUNING_DB
    layer_names: dict[str, str] = field(default_factory=dict)
    reports: dict[str, object] = field(default_factory=dict)

    def __post_init__(self):
        if isinstance(self.target, str):
            self.target = parse_target(self.target)
        if self.dtype not in DTYPES:
            raise ConfigError(f"unknown dtype '{self.dtype}' (choose from: {', '.join(DTYPES)})")
        if self.dtype == "float16" and (self.shift or self.attention or self.moe):
            raise ConfigError("--dtype float16 does not combine with --shift, --attention or --moe yet: "
                              "TVM's mixed-precision pass cannot convert around saddc's kernels")
        if self.dtype == "float16" and not self.target.is_cuda:
            warnings.warn("--dtype float16 on llvm: CPUs without fp16 arithmetic emulate it, so the "
                          "module runs far slower than in float32 (it is meant for cuda)", SaddcWarning)
        if self.tuning_db == AUTO_TUNING_DB:
            from saddc.tuning import shipped_database  # pylint: disable=import-outside-toplevel

            self.tuning_db = shipped_database(self.target)
        if self.shift is not None and self.moe is not None:
            both = self.shift.roles & self.moe.roles
            if both:
                raise ConfigError(f"--shift and --moe both select {', '.join(sorted(both))} layers: choose one rewrite a layer")

    @property
    def rewrites(self) -> list[str]:
        """Names of the reparameterizing rewrites that ran (the tuning database and the kernel
        work estimate are no rewrites)."""
        # pylint: disable=import-outside-toplevel
        from saddc.passes.apply_tuning_database import TUNING_REPORT
        from saddc.passes.estimate_kernel_work import KERNEL_WORK_REPORT

        return [name for name in self.reports if name not in (TUNING_REPORT, KERNEL_WORK_REPORT)]
