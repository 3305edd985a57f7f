"""Attention cores in PyTorch: softmax, binary-coded additive, and Taylor.

A core maps per-head ``q`` (..., Nq, d), ``k`` (..., Nk, d), ``v`` (..., Nk, dv) and the score
scale to (..., Nq, dv). saddc's example models call ``self.core(q, k, v, scale)``, so swapping
the core swaps the attention form; the math is ``schedules/binary_codes.py``'s.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from saddc.schedules.binary_codes import ANGULAR_NORM_EPS, simhash_projection

ATTENTION_FORMS = ("match", "shiftaddvit")


class SoftmaxAttention(nn.Module):
    """``softmax(q k^T * scale) v``; ``heads`` and ``head_dim`` say what a replacement needs."""

    def __init__(self, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim

    def forward(self, q, k, v, scale):
        return ((q @ k.transpose(-2, -1)) * scale).softmax(dim=-1) @ v


class AdditiveAttention(nn.Module):
    """Binary-coded linear attention: codes ``1[x A + c > 0]`` of queries and keys, then masked
    sums (``form`` ``match`` or ``shiftaddvit``; binary_codes.py gives the math).

    ``projection`` is (heads, d, bits) (or (d, bits) for every head); it is a buffer, or a
    parameter with ``learn_projection``. In training mode the codes pass gradients straight
    through: the forward pass uses the hard codes, the backward pass the sigmoid's gradient.
    Exported in eval mode the codes are ``Cast(Greater(MatMul(x, A) + c, 0))``, which saddc lowers
    exactly to its add kernels. A key tensor that *is* the query tensor (ShiftAddViT's shared
    Q/K) is hashed once.
    """

    def __init__(self, projection: torch.Tensor, form: str = "match", offset: torch.Tensor | None = None,
                 learn_projection: bool = False):
        super().__init__()
        if form not in ATTENTION_FORMS:
            raise ValueError(f"form must be one of {ATTENTION_FORMS}, got {form!r}")
        projection = torch.as_tensor(projection, dtype=torch.float32)
        projection = projection[None] if projection.ndim == 2 else projection
        if learn_projection:
            self.projection = nn.Parameter(projection)
        else:
            self.register_buffer("projection", projection)
        self.register_buffer("offset", None if offset is None else torch.as_tensor(offset, dtype=torch.float32))
        self.form = form

    @classmethod
    def simhash(cls, heads: int, head_dim: int, bits: int = 16, seed: int = 0, block: int = 0,
                form: str = "match", learn_projection: bool = False) -> "AdditiveAttention":
        """Random hyperplanes, the ones ``--attention additive --attention-seed seed`` draws for
        attention block ``block``."""
        return cls(torch.from_numpy(simhash_projection(seed, block, heads, head_dim, bits)), form,
                   learn_projection=learn_projection)

    @property
    def bits(self) -> int:
        return int(self.projection.shape[-1])

    def codes(self, x):
        projected = x @ self.projection
        if self.offset is not None:
            projected = projected + self.offset.reshape(-1, 1, self.bits)
        hard = (projected > 0).to(x.dtype)
        if not self.training:
            return hard
        soft = torch.sigmoid(projected)
        return hard + soft - soft.detach()

    def forward(self, q, k, v, scale=None):  # pylint: disable=unused-argument
        codes_q = self.codes(q)
        codes_k = codes_q if k is q else self.codes(k)
        if self.form == "shiftaddvit":
            if not torch.jit.is_tracing() and (k.shape[-2] != v.shape[-2] or q.shape[-2] != v.shape[-2]):
                raise ValueError("the shiftaddvit form adds 0.5 v per query, so it needs as many keys as "
                                 f"queries ({q.shape[-2]} queries, {k.shape[-2]} keys); use the match form")
            mixed = 0.5 * v + (codes_q @ (codes_k.transpose(-2, -1) @ v)) / math.pi
            return mixed / mixed.norm(dim=-1, keepdim=True).clamp_min(ANGULAR_NORM_EPS)
        # The match form, with a column of ones beside V so one masked sum also counts the bits.
        values = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
        on_set = codes_k.transpose(-2, -1) @ values
        on_clear = values.sum(dim=-2, keepdim=True) - on_set
        weighted = codes_q @ on_set + (1.0 - codes_q) @ on_clear
        return weighted[..., :-1] / weighted[..., -1:].clamp_min(1.0)


class TaylorAttention(nn.Module):
    """First-order Taylor attention with keys centred on their mean over tokens (ViTALiTy)."""

    def forward(self, q, k, v, scale):
        k = k - k.mean(dim=-2, keepdim=True)
        q = q * scale
        numerator = v.sum(dim=-2, keepdim=True) + q @ (k.transpose(-2, -1) @ v)
        denominator = k.shape[-2] + q @ k.sum(dim=-2).unsqueeze(-1)
        return numerator / denominator


def replace_attention(model: nn.Module, mode: str = "additive", form: str = "match", bits: int = 16,
                      seed: int = 0, skip=(), learn_projection: bool = False) -> nn.Module:
    """A copy of ``model`` whose ``SoftmaxAttention`` cores, numbered in module order (the order
    ``saddc`` numbers attention blocks in a model that runs its modules in definition order),
    become what ``--attention mode`` makes of them; block indices in ``skip`` stay softmax.
    ``learn_projection`` makes the additive cores' hash projections parameters (fine-tuning)."""
    if mode not in ("additive", "taylor"):
        raise ValueError(f"mode must be additive or taylor, got {mode!r}")
    model = copy.deepcopy(model)
    cores = [(name, module) for name, module in model.named_modules() if isinstance(module, SoftmaxAttention)]
    for block, (name, core) in enumerate(cores):
        if block in skip:
            continue
        new = (AdditiveAttention.simhash(core.heads, core.head_dim, bits, seed, block, form, learn_projection)
               if mode == "additive" else TaylorAttention())
        parent, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(parent), attribute, new)
    return model.eval()
