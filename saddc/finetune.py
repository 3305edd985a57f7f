"""Reparameterize a trained torch ViT with saddc's modules, fine-tune it, export it to ONNX.

This is ShiftAddViT's recipe for recovering the accuracy a rewrite costs: the rewrite is made in
PyTorch with modules that train through it (``saddc.nn``), the model is fine-tuned from its
trained weights, and the export computes the primitives exactly, so ``saddc compile`` lowers it
losslessly (``Reparameterization.compile_options``). Imports torch; the compiler does not.

Rewrites (``REWRITES``), for a model whose attention cores are ``saddc.nn.SoftmaxAttention``
(saddc's example models):

- ``original``     no rewrite (fine-tuning it is the control)
- ``shift-mlp``    the MLPs' linears as ``ShiftLinear`` (power-of-two weights, straight-through)
- ``shift-all``    every linear layer as ``ShiftLinear``
- ``additive``     binary-coded additive attention with learned projections (straight-through
                   codes)
- ``taylor``       first-order Taylor attention
- ``moe-0.5``, ``moe-0.75``  the MLPs' linears as Mult/Shift ``MoELinear``, routers starting
                   from that fraction of tokens on Shift (given calibration images), trained with
                   the latency-aware balancing loss weighted so that the balanced split keeps it
- ``shiftaddvit``  ShiftAddViT's combination: shift q/k/v and projection linears, additive
                   attention, MoE MLPs (ratio 0.5)
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import math
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from saddc.config import FINETUNE_REWRITES, AttentionOptions, ShiftOptions
from saddc.nn import (MoELinear, ShiftLinear, calibrate_routers, model_balance_loss, replace_attention,
                      replace_linear_with_moe)

REWRITES = FINETUNE_REWRITES
MLP_LINEARS = "*mlp.*"
ATTENTION_LINEARS = "*attn.*"
# The weight of the balancing loss beside cross-entropy (ShiftAddViT uses 0.01 on ImageNet; a
# small model with few tokens needs a firmer push to reach the target split).
BALANCE_WEIGHT = 0.1
# Training images that set MoE routers' starting split (``reparameterize(calibration=...)``).
CALIBRATION_IMAGES = 256


@dataclasses.dataclass
class Reparameterization:
    """A rewritten model, and the ``saddc.compile`` options that lower its export exactly."""

    model: nn.Module
    rewrite: str
    shift_ratio: float | None = None

    @property
    def compile_options(self) -> dict:
        """Options for ``saddc.compile``: exact lowering paths only (no lossy flag), so a
        compiled module computes what the fine-tuned model computes. MoE layers and binary codes
        the export computes are recognized without a flag; power-of-two linears need ``--shift``
        to become shift kernels, and binary-coded attention ``--attention additive``."""
        # With additive attention the compiler finds no softmax blocks to name q/k/v and
        # projection layers by, so ShiftAddViT's shifted attention linears are role "other"
        # (the MLPs are MoE layers and the head stays dense).
        shift_layers = {"shift-mlp": "mlp", "shift-all": "mlp,attn,head", "shiftaddvit": "other"}.get(self.rewrite)
        options = {}
        if shift_layers:
            options["shift"] = ShiftOptions(shift_layers)
        if self.rewrite in ("additive", "shiftaddvit"):
            options["attention"] = AttentionOptions("additive", measure_error=False)
        return options

    @property
    def compile_flags(self) -> str:
        """``compile_options`` as ``saddc compile`` flags."""
        options = self.compile_options
        flags = [f"--shift {options['shift'].layers}"] if "shift" in options else []
        return " ".join(flags + (["--attention additive"] if "attention" in options else []))

    def export(self, example: torch.Tensor, path: str | os.PathLike) -> Path:
        """The model as one self-contained ONNX file (weights inline), written atomically."""
        import onnx  # pylint: disable=import-outside-toplevel

        from saddc.artifacts import atomic_outputs  # pylint: disable=import-outside-toplevel
        from saddc.frontends.torch_export import export_onnx  # pylint: disable=import-outside-toplevel

        path = Path(path)
        with tempfile.TemporaryDirectory() as scratch, atomic_outputs(path) as (temp,):
            # The exporter writes the weights to a side file; the model is saved again whole.
            exported = onnx.load(export_onnx(self.model, example, Path(scratch) / "model.onnx"))
            onnx.save(exported, temp)
        return path


def reparameterize(model: nn.Module, rewrite: str, bits: int = 5, attention_bits: int = 16,
                   seed: int = 0, calibration: torch.Tensor | None = None) -> Reparameterization:
    """A copy of ``model`` with ``rewrite`` made with trainable saddc modules (see the module doc).
    With ``calibration`` images, MoE routers start from the target split on their tokens
    (``saddc.nn.calibrate_routers``) instead of their random initialization's."""
    if rewrite not in REWRITES:
        raise ValueError(f"unknown rewrite {rewrite!r} (choose from: {', '.join(REWRITES)})")
    # Routers initialize from torch's generator: seed it, without disturbing the caller's.
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _reparameterize(model, rewrite, bits, attention_bits, seed, calibration)


def _reparameterize(model, rewrite, bits, attention_bits, seed, calibration) -> Reparameterization:
    if rewrite in ("additive", "taylor", "shiftaddvit"):
        mode = "taylor" if rewrite == "taylor" else "additive"
        model = replace_attention(model, mode, bits=attention_bits, seed=seed, learn_projection=True)
    else:
        model = copy.deepcopy(model)
    shift_ratio = None
    if rewrite == "shift-mlp":
        _replace_linears(model, MLP_LINEARS, lambda linear: ShiftLinear.from_linear(linear, bits))
    elif rewrite == "shift-all":
        _replace_linears(model, "*", lambda linear: ShiftLinear.from_linear(linear, bits))
    elif rewrite == "shiftaddvit":
        _replace_linears(model, ATTENTION_LINEARS, lambda linear: ShiftLinear.from_linear(linear, bits))
        model, shift_ratio = replace_linear_with_moe(model, MLP_LINEARS, bits=bits), 0.5
    elif rewrite.startswith("moe-"):
        model, shift_ratio = replace_linear_with_moe(model, MLP_LINEARS, bits=bits), float(rewrite[4:])
    if shift_ratio is not None and calibration is not None:
        calibrate_routers(model, calibration, shift_ratio)
    return Reparameterization(model.eval(), rewrite, shift_ratio)


def _replace_linears(model: nn.Module, include: str, make) -> None:
    # Exactly nn.Linear: a ShiftLinear (a subclass) is already rewritten.
    names = [name for name, module in model.named_modules()
             if type(module) is nn.Linear and fnmatch.fnmatchcase(name, include)]  # pylint: disable=unidiomatic-typecheck
    if not names:
        raise ValueError(f"no nn.Linear layer matches {include!r}")
    for name in names:
        model.set_submodule(name, make(model.get_submodule(name)))


@dataclasses.dataclass
class History:
    """What fine-tuning did: per epoch, the mean loss and (MoE) the fraction of tokens on Shift."""

    losses: list[float] = dataclasses.field(default_factory=list)
    shift_fractions: list[float] = dataclasses.field(default_factory=list)


def finetune(reparameterized: Reparameterization, images: torch.Tensor, labels: torch.Tensor, epochs: int,
             lr: float = 5e-4, batch_size: int = 64, seed: int = 0, progress: bool = True,
             desc: str | None = None) -> History:
    """Fine-tune the model in place with AdamW and a cosine schedule (cross-entropy, plus the
    latency-aware balancing loss for MoE rewrites); leaves it in eval mode. ``desc`` labels the
    progress bar (default: "fine-tuning REWRITE")."""
    model = reparameterized.model
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    steps = epochs * math.ceil(len(images) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    ratio = reparameterized.shift_ratio
    # Balanced when latency x tokens is equal: weights (R, 1 - R) make Shift's share R.
    latency = None if ratio is None else (ratio, 1.0 - ratio)
    history = History()
    for _ in tqdm(range(epochs), desc=desc or f"fine-tuning {reparameterized.rewrite}", unit="epoch",
                  disable=not progress, file=sys.stderr):
        model.train()
        total, fractions = 0.0, []
        for batch in torch.randperm(len(images), generator=generator).split(batch_size):
            loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
            if latency is not None:
                loss = loss + BALANCE_WEIGHT * model_balance_loss(model, latency)
                fractions.append(_shift_fraction(model))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        history.losses.append(total / len(images))
        if fractions:
            history.shift_fractions.append(sum(fractions) / len(fractions))
    model.eval()
    return history


def _shift_fraction(model: nn.Module) -> float:
    layers = [m for m in model.modules() if isinstance(m, MoELinear)]
    return sum(layer.shift_fraction() for layer in layers) / len(layers)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Class predictions of ``model`` in eval mode."""
    model.eval()
    return torch.cat([model(chunk).argmax(-1) for chunk in images.split(batch_size)])


def top1(predictions, labels) -> float:
    """Top-1 accuracy in percent."""
    predictions, labels = torch.as_tensor(predictions), torch.as_tensor(labels)
    return 100.0 * float((predictions == labels).float().mean())
