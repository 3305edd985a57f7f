"""Parsing TVMScript quickly: saddc's kernels, and TVM's tensor intrinsics.

TVMScript's ``prim_func`` and ``macro`` decorators call ``inspect.stack()``, which looks up the
module of every frame on the stack by the frame's file name. Some frames have no file: those of
frozen modules (``<frozen runpy>`` under ``python -m``, ``<frozen importlib._bootstrap>``
during an import) and those of the expressions TVMScript itself evaluates (``<ast>``). Their
lookups miss ``inspect``'s file-to-module cache every time, and each miss rescans all of
``sys.modules`` (about 2,000 modules once TVM is loaded, thousands more with torch and pytest)
only to find no module. ``cache_fileless_frames`` enters those names in the cache with that
answer; the pipeline calls it before its passes run, which covers the kernels they write and
TVM's tensor intrinsics (~250 TVMScript functions), which DLight's tensor-core matmul rule
(float16 on CUDA) and every MetaSchedule tuning context import. Measured on an AVX-512 Xeon:
importing the intrinsics 17.7 -> 3.0 s in a fresh process; in the test process (``python -m
pytest``), a float16 CUDA compile 67 -> 12 s and five MoE compiles, whose kernels saddc writes
in TVMScript, 63 -> 53 s.
"""

from __future__ import annotations

import importlib.machinery
import inspect
import os
import sys

# The file name TVMScript's evaluator compiles the expressions of a script under.
TVMSCRIPT_EXPRESSIONS = "<ast>"


def fileless_frame_names() -> set[str]:
    """The file names, as ``inspect`` makes them absolute, of frames that belong to no file:
    TVMScript's expressions and the loaded frozen modules."""
    names = {TVMSCRIPT_EXPRESSIONS}
    for name, module in list(sys.modules.items()):
        if getattr(module, "__loader__", None) is importlib.machinery.FrozenImporter:
            # Under one of its names (importlib._bootstrap's functions say _frozen_importlib).
            names.update(value.__code__.co_filename for value in vars(module).values()
                         if inspect.isfunction(value) and value.__module__ == name)
    # What inspect.getabsfile makes of them: paths relative to the working directory.
    return {os.path.normcase(os.path.abspath(name)) for name in names}


def cache_fileless_frames() -> None:
    """Enter the frames without a file in ``inspect``'s file-to-module cache, with no module (a
    rescan of ``sys.modules`` finds none for them either)."""
    for name in fileless_frame_names():
        inspect.modulesbyfile.setdefault(name, None)

