"""Apply a MetaSchedule tuning database to the legalized module's kernels.

Pattern: every PrimFunc that carries no schedule yet (not a saddc kernel with its schedule in
place, not already ``tirx.is_scheduled``) whose workload the database holds, matched by
structural equality of the kernel.

Emits that kernel with the database's best schedule applied, marked ``tirx.is_scheduled`` so
the DLight rules that run after it pass it by (TVM's ``MetaScheduleApplyDatabase`` does the
matching and applying). Kernels without a record keep falling through to the hand schedules and
DLight's rules; the report lists both sets, so a compile says which kernels were not tuned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tvm import relax

from saddc.schedules.rules import KERNEL_ATTR

# The key of the report in LowerConfig.reports (beside the rewrites' reports).
TUNING_REPORT = "tuning"


@dataclass
class TuningReport:
    """Which kernels a tuning database scheduled (``tuned``) and which it had no record for."""

    database: str
    tuned: list[str] = field(default_factory=list)
    untuned: list[str] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        lines = [f"tuned kernels:     {len(self.tuned)} of {len(self.tuned) + len(self.untuned)} "
                 f"from {self.database}"]
        if self.untuned:
            lines.append(f"  no tuned record (hand schedules, DLight): {', '.join(self.untuned)}")
        return lines

    def to_json(self) -> dict:
        return {"database": self.database, "tuned": self.tuned, "untuned": self.untuned}


def needs_schedule(func: tvm.tirx.PrimFunc) -> bool:
    """Whether the schedule phase's generic rules (or a tuning record) schedule ``func``: it is
    neither a saddc kernel nor written with its schedule in place."""
    attrs = func.attrs or {}
    return KERNEL_ATTR not in attrs and not attrs.get("tirx.is_scheduled", False)


def schedulable_kernels(mod: tvm.IRModule) -> list[str]:
    """Names of the PrimFuncs the schedule phase's generic rules would schedule."""
    return sorted(gv.name_hint for gv, func in mod.functions.items()
                  if isinstance(func, tvm.tirx.PrimFunc) and needs_schedule(func))


@tvm.transform.module_pass(opt_level=0, name="saddc.ApplyTuningDatabase")
class ApplyTuningDatabase:  # pylint: disable=too-few-public-methods
    """Schedule the kernels a MetaSchedule database has records for; report the rest."""

    def __init__(self, database_dir: str | Path, reports: dict):
        self.database_dir = Path(database_dir)
        self.reports = reports

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        from saddc.tuning import open_database  # pylint: disable=import-outside-toplevel

        candidates = schedulable_kernels(mod)
        with open_database(self.database_dir):
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
        untuned = set(schedulable_kernels(mod))
        self.reports[TUNING_REPORT] = TuningReport(
            str(self.database_dir), tuned=[name for name in candidates if name not in untuned],
            untuned=sorted(untuned))
        return mod
