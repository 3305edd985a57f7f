"""Importing TVM's tensor intrinsics (``tvm.s_tir.tensor_intrin``) in seconds instead of a minute.

DLight's tensor-core matmul rule (float16 on CUDA) and every MetaSchedule tuning context import
them. They are ~250 TVMScript functions, and TVMScript's ``prim_func`` decorator calls
``inspect.stack()`` for each, which looks up the module of every frame on the stack by its file.
Frames of frozen modules (``<frozen importlib._bootstrap>``, on the stack of every import;
``<frozen runpy>`` under ``python -m``) have no file, so their lookups always miss ``inspect``'s
file-to-module cache and rescan all of ``sys.modules`` (about 2,000 modules once TVM is loaded,
thousands more with torch and pytest). Entering those modules in the cache first makes the
import 3.0 s instead of 17.7 s in a fresh process on the Xeon that measured it, and a float16
CUDA compile in the test process 20 s instead of 67.
"""

from __future__ import annotations

import importlib.machinery
import inspect
import sys


def cache_frozen_module_frames() -> None:
    """Enter every loaded frozen module (the import machinery; ``runpy`` under ``python -m``;
    ``os``, ``abc``, ``codecs``) in ``inspect``'s file-to-module cache, under the file name
    ``inspect`` gives its frames (relative to the working directory)."""
    for name, module in list(sys.modules.items()):
        if getattr(module, "__loader__", None) is not importlib.machinery.FrozenImporter:
            continue
        # Under one of its names (importlib._bootstrap's functions say _frozen_importlib).
        function = next((value for value in vars(module).values()
                         if inspect.isfunction(value) and value.__module__ == name), None)
        if function is not None:
            inspect.modulesbyfile[inspect.getabsfile(function)] = name


def import_tensor_intrinsics() -> None:
    """Import and register TVM's tensor intrinsics, quickly (see the module doc)."""
    if "tvm.s_tir.tensor_intrin" not in sys.modules:
        cache_frozen_module_frames()
        importlib.import_module("tvm.s_tir.tensor_intrin")
