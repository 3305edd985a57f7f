"""Shift weights on the PyTorch side.

``round_weights_to_shift`` gives a torch model the weights ``saddc compile --shift ... --shift-lossy``
computes with: the reference a lossy shift rewrite is checked against, and the starting point of
fine-tuning with power-of-two weights (after which the rewrite is lossless). ``ShiftLinear``
trains with them: its forward pass uses the rounded weights, its backward pass updates the
float weights as if there were no rounding (a straight-through estimator).

Rounding is the compiler's own (``schedules/shift_codes.py``), so what trains is what compiles.
"""

from __future__ import annotations

import copy
import fnmatch

import torch

from saddc.schedules import shift_codes


def rounded_to_shift(weight: torch.Tensor, bits: int = 5) -> torch.Tensor:
    """``weight`` (out, in[, kh, kw]) rounded to the shift format exactly as the compiler rounds
    the matching (in, out) matrix; no gradient."""
    matrix = weight.detach().cpu().numpy().reshape(weight.shape[0], -1).T
    rounded = shift_codes.encode(matrix, bits).decode().T.reshape(weight.shape)
    return torch.from_numpy(rounded).to(weight.device)


class ShiftLinear(torch.nn.Linear):
    """``nn.Linear`` with power-of-two weights in its forward pass.

    Training: ``W + (round(W) - W).detach()``, so gradients reach the float weights ``W``.
    Evaluation: the rounded weights themselves, cached when the module enters eval mode (or
    loads a state dict in it), so an ONNX export holds them as a constant that ``saddc compile``
    lowers exactly.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: int = 5):
        super().__init__(in_features, out_features, bias)
        self.bits = bits
        self.register_buffer("rounded_weight", None, persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _keys: module._refresh())

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, bits: int = 5) -> "ShiftLinear":
        shift = cls(linear.in_features, linear.out_features, linear.bias is not None, bits)
        shift.load_state_dict(linear.state_dict())
        return shift.train(linear.training)

    def _refresh(self) -> None:
        self.rounded_weight = None if self.training else rounded_to_shift(self.weight, self.bits)

    def train(self, mode: bool = True) -> "ShiftLinear":
        super().train(mode)
        self._refresh()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            weight = self.weight + (rounded_to_shift(self.weight, self.bits) - self.weight).detach()
        else:
            if self.rounded_weight is None:
                self._refresh()
            weight = self.rounded_weight
        return torch.nn.functional.linear(x, weight, self.bias)


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
                module.weight.copy_(rounded_to_shift(module.weight, bits))
    return model
