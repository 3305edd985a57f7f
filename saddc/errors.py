"""Errors that saddc reports to users as one line, without a traceback."""


class SaddcError(Exception):
    """A problem with the user's input or environment (bad model, target, path, toolchain).

    The CLI prints ``saddc: error: <message>`` and exits with ``exit_code``; anything that is
    not a ``SaddcError`` is a bug in saddc or TVM and keeps its traceback.
    """

    exit_code = 2


class ModelLoadError(SaddcError):
    """The model file is missing, empty, corrupt, or not ONNX."""


class UnsupportedModelError(SaddcError):
    """The model is valid ONNX but uses something the importer cannot lower."""


class TargetError(SaddcError):
    """Unknown target or architecture, or a toolchain the target needs is missing."""


class ConfigError(SaddcError):
    """An option's value is invalid, or the options ask for something the model lacks."""


class RewriteError(SaddcError):
    """A rewrite cannot apply to the model as asked (bad weights, lossy without opt-in)."""


class OutputPathError(SaddcError):
    """The output path cannot be written."""


class ArtifactError(SaddcError):
    """A compiled artifact is missing, incomplete, or does not match its manifest."""


class DeviceMissingError(ArtifactError):
    """A module compiled for cuda is loaded where no CUDA GPU is visible."""


class InputError(SaddcError):
    """Inputs given to a compiled module do not match what it expects."""


class SaddcWarning(UserWarning):
    """Something the user should know about a result (synthetic calibration data, ...); the
    CLI prints it as ``saddc: warning: <message>``."""
