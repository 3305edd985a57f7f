"""A mixture of multiplication primitives on the PyTorch side: ``MoELinear`` and its
latency-aware load-balancing loss.

``MoELinear`` is a top-1 mixture of two experts over one layer's job: expert 0, Mult, a dense
``nn.Linear``; expert 1, Shift, a ``ShiftLinear`` (power-of-two weights). A router
``Linear(d, 2)`` picks an expert per token by its larger logit.

Router gradient. A top-1 gate whose value is the constant 1 gives the router no gradient. Here
the chosen expert's output is multiplied by ``p / stop_gradient(p)``, ``p`` the chosen
expert's softmax probability: its value is exactly 1 (inference computes ``expert(x)``, as
the exported graph and the compiled dispatch do), and its gradient is that of multiplying by
``p``, scaled by ``1 / p``. The router learns which expert lowers the loss for which token.

Export (eval mode): ``where(argmax(router(x)) == 0, mult(x), shift(x))``: a router matmul, an
argmax and both experts' weights in standard ONNX, which ``saddc compile`` recognizes and
lowers to its sparse dispatch.

Latency-aware load balancing (``balance_loss``), after ShiftAddViT. Over the tokens of a
batch, with ``p[t, e]`` the router probabilities and ``c[t]`` the chosen experts:

    importance[e] = sum_t p[t, e]
    load[e]       = sum_t [c[t] = e] * p[t, e] / stop_gradient(p[t, e])   (token counts)
    w[e]          = latency[e] / mean(latency)
    loss          = CV^2(w * importance) + CV^2(w * load),   CV^2(v) = var(v) / mean(v)^2

``latency`` is (Mult, Shift) in any unit: given, or measured from saddc's compiled kernels
with ``saddc.benchmarking.expert_latency`` (which needs the compiler).

The loss is smallest when ``latency[e] * tokens[e]`` is the same for every expert: the faster
expert receives more tokens (with latencies 2:1, two thirds go to the faster one).
"""

from __future__ import annotations

import copy
import fnmatch
from dataclasses import dataclass

import torch

from saddc.nn.shift import ShiftLinear

MULT, SHIFT = 0, 1


@dataclass
class Routing:
    """One forward pass's router probabilities (tokens, 2) and choices (tokens,)."""

    probabilities: torch.Tensor
    choices: torch.Tensor


def _straight_through_one(p: torch.Tensor) -> torch.Tensor:
    """1, with the gradient of ``p`` (scaled by 1 / p). (A probability that underflowed to 0
    gives 0 instead of 0 / 0: only ever the probability of an expert not chosen.)"""
    return p / p.detach().clamp_min(torch.finfo(p.dtype).tiny)


class MoELinear(torch.nn.Module):
    """Top-1 MoE of a Mult expert (``nn.Linear``) and a Shift expert (``ShiftLinear``)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, bits: int = 5):
        super().__init__()
        self.router = torch.nn.Linear(in_features, 2)
        self.mult = torch.nn.Linear(in_features, out_features, bias)
        self.shift = ShiftLinear(in_features, out_features, bias, bits)
        self.routing: Routing | None = None

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, bits: int = 5) -> "MoELinear":
        """Both experts start from ``linear``'s weights (the Shift expert rounds them)."""
        moe = cls(linear.in_features, linear.out_features, linear.bias is not None, bits)
        moe.mult.load_state_dict(linear.state_dict())
        moe.shift.load_state_dict(linear.state_dict())
        return moe.train(linear.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.router(x)
        choice = logits.argmax(-1, keepdim=True)
        selected = torch.where(choice == MULT, self.mult(x), self.shift(x))
        if not self.training:
            return selected
        probabilities = logits.softmax(-1)
        self.routing = Routing(probabilities.reshape(-1, 2), choice.reshape(-1))
        return selected * _straight_through_one(probabilities.gather(-1, choice))

    def shift_fraction(self) -> float:
        """The fraction of tokens the last training forward pass sent to Shift."""
        if self.routing is None:
            raise RuntimeError("no routing recorded yet: run a forward pass in training mode")
        return float((self.routing.choices == SHIFT).float().mean())


def replace_linear_with_moe(model: torch.nn.Module, include: str = "*mlp.*", exclude: str | None = None,
                            bits: int = 5) -> torch.nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers with names matching the glob ``include``
    and not ``exclude`` are ``MoELinear`` layers made from them (both experts start from the
    layer's weights; the routers start at random and are trained with the model)."""
    model = copy.deepcopy(model)
    names = [name for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and fnmatch.fnmatchcase(name, include)
             and not (exclude and fnmatch.fnmatchcase(name, exclude))]
    for name in names:
        model.set_submodule(name, MoELinear.from_linear(model.get_submodule(name), bits))
    return model


@torch.no_grad()
def calibrate_routers(model: torch.nn.Module, images: torch.Tensor, shift_ratio: float) -> torch.nn.Module:
    """Shift each ``MoELinear`` router's Shift bias so that it sends ``shift_ratio`` of the
    tokens of ``images`` to Shift (the split a fresh router starts fine-tuning from, instead of
    whatever its random initialization gives). Layers are set in order, each seeing the
    routing of those before it; returns ``model``, in eval mode."""
    if not 0.0 <= shift_ratio <= 1.0:
        raise ValueError(f"shift_ratio must be in [0, 1], got {shift_ratio}")
    model.eval()
    for layer in [m for m in model.modules() if isinstance(m, MoELinear)]:
        inputs = []
        handle = layer.register_forward_pre_hook(lambda _module, args: inputs.append(args[0]))
        try:
            model(images)
        finally:
            handle.remove()
        logits = layer.router(torch.cat([x.reshape(-1, x.shape[-1]) for x in inputs]))
        # A token goes to Shift when its Shift logit is the larger: move the margin's
        # (1 - ratio) quantile to zero.
        margin = logits[:, SHIFT] - logits[:, MULT]
        layer.router.bias[SHIFT] -= torch.quantile(margin, 1.0 - shift_ratio)
    return model


def _cv_squared(values: torch.Tensor) -> torch.Tensor:
    return values.var(unbiased=False) / (values.mean() ** 2 + 1e-10)


def balance_loss(routing: Routing, latency: tuple[float, float] | torch.Tensor) -> torch.Tensor:
    """The latency-aware load-balancing loss of one layer's routing (see the module doc);
    ``latency`` is (Mult, Shift), in any unit."""
    latency = torch.as_tensor(latency, dtype=routing.probabilities.dtype)
    weights = latency / latency.mean()
    probabilities = routing.probabilities
    importance = probabilities.sum(0)
    chosen = torch.nn.functional.one_hot(routing.choices, probabilities.shape[1]).to(probabilities.dtype)
    load = (chosen * _straight_through_one(probabilities)).sum(0)
    return _cv_squared(weights * importance) + _cv_squared(weights * load)


def model_balance_loss(model: torch.nn.Module, latency: tuple[float, float] | torch.Tensor) -> torch.Tensor:
    """``balance_loss`` summed over every ``MoELinear`` of ``model`` (last training forward)."""
    layers = [m for m in model.modules() if isinstance(m, MoELinear) and m.routing is not None]
    if not layers:
        raise RuntimeError("no MoELinear layer has routed tokens yet: run a forward pass in training mode")
    return sum(balance_loss(layer.routing, latency) for layer in layers)
