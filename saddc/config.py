"""Configuration of ``saddc.lower`` and ``saddc.compile``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from saddc.target import TargetSpec, parse_target


@dataclass
class LowerConfig:
    """What the saddc pipeline does to a Relax module.

    target:  where the module runs (``parse_target('cuda', 'sm_90')``, or a kind string).
    dump_ir: a directory; the IR after each pipeline phase is written there as TVMScript.
    rewrites: names of the reparameterizing rewrites that ran (filled in by the pipeline).
    """

    target: TargetSpec | str = "llvm"
    dump_ir: str | Path | None = None
    rewrites: list[str] = field(default_factory=list)

    def __post_init__(self):
        if isinstance(self.target, str):
            self.target = parse_target(self.target)
