"""Shift weights on the PyTorch side.

``round_weights_to_shift`` gives a torch model the weights ``saddc compile --shift ... --shift-lossy``
computes with: the reference a lossy shift rewrite is checked against, and the starting point of
fine-tuning with power-of-two weights (after which the rewrite is lossless).
"""

from __future__ import annotations

import copy
import fnmatch

import torch

from saddc.schedules import shift_codes


def round_weights_to_shift(model: torch.nn.Module, include: str = "*", exclude: str | None = None,
                           bits: int = 5) -> torch.nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` weights, and patchifying ``nn.Conv2d`` weights
    (stride equal to kernel size), with module names matching the glob ``include`` and not
    ``exclude``, are rounded to the shift format exactly as the compiler rounds them."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for name, module in model.named_modules():
            if not fnmatch.fnmatchcase(name, include) or (exclude and fnmatch.fnmatchcase(name, exclude)):
                continue
            patchify = isinstance(module, torch.nn.Conv2d) and module.stride == module.kernel_size
            if isinstance(module, torch.nn.Linear) or patchify:
                weight = module.weight.detach().cpu().numpy()
                matrix = weight.reshape(weight.shape[0], -1).T  # (in, out), as the compiler sees it
                rounded = shift_codes.encode(matrix, bits).decode().T.reshape(weight.shape)
                module.weight.copy_(torch.from_numpy(rounded))
    return model
