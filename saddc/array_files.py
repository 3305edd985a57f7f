"""Reading the arrays users hand to saddc (.npy, .npz): one place where every way a file can
fail to load becomes a one-line ``ConfigError`` naming the file and its role."""

from __future__ import annotations

import os
import zipfile

import numpy as np

from saddc.errors import ConfigError


def load_array_file(path: str | os.PathLike, role: str):
    """``np.load(path)`` without pickles: an array (.npy) or an ``NpzFile`` (.npz). ``role`` says
    what the file is for (``calibration file``) in the error of a missing, empty, truncated or
    foreign file."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ConfigError(f"{role} not found: {path}") from None
    except EOFError:
        raise ConfigError(f"cannot read {role} {path}: it is empty") from None
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ConfigError(f"cannot read {role} {path} as a .npy/.npz array: {err}") from None
