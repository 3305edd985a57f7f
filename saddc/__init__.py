"""saddc: compile ONNX Vision Transformers into multiplication-reduced TVM modules.

    saddc.lower(mod, config=None)           run the saddc Relax pipeline on an IRModule
    saddc.compile(model, target, ...)       import, lower, build and export
    saddc.load(path)                        run a compiled module: numpy in, numpy out
    saddc.tune(model, db, target, trials)   tune kernels with MetaSchedule into a database

Attributes load on first use: ``saddc.load`` needs only TVM's runtime, so a deployment host
without TVM's compiler library can import saddc and run modules. The first compiler-side
attribute (``lower``, ``compile``, ``LowerConfig``, ...) also registers the saddc pipeline with
Relax, so ``relax.get_pipeline("saddc", config=saddc.LowerConfig(...))`` works after
``import saddc`` alone.
"""

__version__ = "0.1.0"

_LAZY = {
    "lower": ("saddc.api", "lower"),
    "build": ("saddc.api", "build"),
    "compile": ("saddc.api", "compile"),
    "CompileResult": ("saddc.api", "CompileResult"),
    "LowerConfig": ("saddc.config", "LowerConfig"),
    "ShiftOptions": ("saddc.config", "ShiftOptions"),
    "AttentionOptions": ("saddc.config", "AttentionOptions"),
    "MoEOptions": ("saddc.config", "MoEOptions"),
    "tune": ("saddc.tuning", "tune"),
    "load": ("saddc.runtime", "load"),
    "CompiledModule": ("saddc.runtime", "CompiledModule"),
    "SaddcError": ("saddc.errors", "SaddcError"),
    "parse_target": ("saddc.target", "parse_target"),
}

# The modules of _LAZY that need TVM's compiler; loading one loads saddc.pipeline too, which
# registers the "saddc" Relax pipeline.
_COMPILER_SIDE = {"saddc.api", "saddc.config", "saddc.tuning"}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib  # pylint: disable=import-outside-toplevel

        module, attribute = _LAZY[name]
        if module in _COMPILER_SIDE:
            importlib.import_module("saddc.pipeline")
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'saddc' has no attribute {name!r}")
