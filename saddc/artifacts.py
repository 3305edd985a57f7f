"""Compiled artifacts: the module ``.so`` and its JSON manifest, written atomically."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

from saddc.errors import ArtifactError, OutputPathError

MANIFEST_FORMAT = 1


def manifest_path(library: str | os.PathLike) -> Path:
    """``model.so`` -> ``model.json`` (the manifest lies beside the library)."""
    return Path(library).with_suffix(".json")


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail early, before compiling, if ``path`` cannot be written."""
    path = Path(path)
    if path.suffix != ".so":
        raise OutputPathError(f"output must be a .so file: {path}")
    if path.is_dir():
        raise OutputPathError(f"output path is a directory: {path}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputPathError(f"output directory does not exist: {parent}")
    check_writable_directory(parent, path)
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"output path is not writable: {path}")
    return path


def check_writable_directory(directory: Path, shown: Path | None = None) -> None:
    """Fail early if no file can be created in ``directory`` (named ``shown`` in the error)."""
    # Probe by creating a file: permission bits alone mislead (root, read-only mounts).
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise OutputPathError(f"output path is not writable: {shown or directory} ({err.strerror})") from None


def prepare_directory(directory: str | os.PathLike) -> Path:
    """Create ``directory`` if needed and check that files can be written in it."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputPathError(f"cannot create output directory {directory}: {err.strerror or err}") from None
    check_writable_directory(directory)
    return directory


@contextlib.contextmanager
def atomic_outputs(*paths: Path):
    """Yield temp paths beside ``paths``; on success rename them all into place, else remove them.

    Readers never see a half-written library or a manifest without its library.
    """
    temps = []
    try:
        for path in paths:
            fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
            os.close(fd)
            # mkstemp makes the file private (0600); give it the mode a plain open() would.
            os.chmod(temp, 0o666 & ~_umask())
            temps.append(Path(temp))
        yield temps
        for temp, path in zip(temps, paths):
            os.replace(temp, path)
    except OSError as err:
        raise OutputPathError(f"cannot write {paths[0]}: {err.strerror or err}") from None
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_manifest(library: str | os.PathLike) -> dict:
    """The manifest of a compiled module, checked for the fields ``saddc.load`` needs."""
    path = manifest_path(library)
    if not path.exists():
        raise ArtifactError(f"manifest not found beside the module: {path}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ArtifactError(f"cannot read manifest {path}: {err}") from None
    missing = [key for key in ("format", "target", "inputs", "outputs") if key not in manifest]
    if missing or manifest.get("format") != MANIFEST_FORMAT:
        raise ArtifactError(f"manifest {path} is not a saddc manifest (format {MANIFEST_FORMAT})")
    return manifest
