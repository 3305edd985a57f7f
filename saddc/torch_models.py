"""Loading a user's torch model from ``FILE.py:FACTORY`` (``saddc bench --torch``, ``saddc finetune``).
Imports torch."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from saddc.errors import ConfigError, InputError


def load_factory(spec: str, weights: str | None = None) -> torch.nn.Module:
    """The module ``FACTORY()`` of ``FILE.py`` returns, with the state dict in ``weights`` loaded
    if given, in eval mode. ``FILE.py``'s folder goes on ``sys.path`` for its own imports."""
    path, _, factory = spec.partition(":")
    if not Path(path).is_file() or not factory:
        raise ConfigError(f"a torch model is given as FILE.py:FACTORY, got '{spec}'")
    loader = importlib.util.spec_from_file_location(Path(path).stem, path)
    source = importlib.util.module_from_spec(loader)
    sys.path.insert(0, str(Path(path).resolve().parent))
    loader.loader.exec_module(source)
    if not callable(getattr(source, factory, None)):
        raise ConfigError(f"{path} has no function '{factory}'")
    model = getattr(source, factory)()
    if weights is not None:
        try:
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (OSError, RuntimeError, ValueError) as err:
            raise InputError(f"cannot load weights {weights} into {factory}(): {str(err).splitlines()[0]}") from None
    return model.eval()
