"""Instruction census of generated code: which kernels multiply, and how.

Shift and add kernels promise no floating-point multiply; the census checks that promise on
what the compilers actually emit: PTX from nvcc for CUDA, LLVM IR for CPU. Integer multiplies
(address arithmetic) are counted apart and allowed.
"""

from __future__ import annotations

import collections
import re

_PTX_ENTRY = re.compile(r"^\.(?:visible\s+)?\.entry\s+(\w+)\s*\(", re.MULTILINE)
_PTX_INSTRUCTION = re.compile(r"^\s*(?:@!?%\w+\s+)?([a-z][\w.]*)", re.MULTILINE)
_PTX_FLOAT_TYPES = (".f16", ".f16x2", ".bf16", ".bf16x2", ".f32", ".f64")
_LLVM_DEFINE = re.compile(r"^define\b[^@]*@\"?([\w.$]+)\"?\(", re.MULTILINE)


def _ptx_class(opcode: str) -> str | None:
    family = opcode.split(".", 1)[0]
    if family in ("mma", "wmma", "wgmma"):
        return "mma"
    if family in ("mul", "fma", "mad"):
        return "float_mul" if opcode.endswith(_PTX_FLOAT_TYPES) else "int_mul"
    if family in ("add", "sub"):
        return "float_add" if opcode.endswith(_PTX_FLOAT_TYPES) else None
    return None


def _sections(text: str, start: re.Pattern):
    """(name, body) for each section of ``text`` that ``start`` opens; a body runs to the next
    section."""
    starts = [(m.start(), m.group(1)) for m in start.finditer(text)]
    for index, (offset, name) in enumerate(starts):
        end = starts[index + 1][0] if index + 1 < len(starts) else len(text)
        yield name, text[offset:end]


def ptx_census(ptx: str) -> dict[str, collections.Counter]:
    """Per kernel (``.entry``): counts of ``float_mul`` (mul/fma/mad on float types), ``mma``,
    ``int_mul`` and ``float_add`` instructions in PTX text."""
    census = {}
    for name, body in _sections(ptx, _PTX_ENTRY):
        kinds = (_ptx_class(match.group(1)) for match in _PTX_INSTRUCTION.finditer(body))
        census[name] = collections.Counter(kind for kind in kinds if kind)
    return census


def llvm_census(llvm_ir: str) -> dict[str, collections.Counter]:
    """Per defined function: counts of ``float_mul`` (``fmul``, ``llvm.fma``, ``llvm.fmuladd``),
    ``int_mul`` and ``float_add`` in LLVM IR text."""
    census = {}
    for name, body in _sections(llvm_ir, _LLVM_DEFINE):
        counts = collections.Counter()
        counts["float_mul"] = len(re.findall(r"=\s*fmul\b|@llvm\.fma\.|@llvm\.fmuladd\.", body))
        counts["int_mul"] = len(re.findall(r"=\s*mul\b", body))
        counts["float_add"] = len(re.findall(r"=\s*f(?:add|sub)\b", body))
        census[name] = +counts
    return census
