"""DeiT-Tiny (Touvron et al., 2021): a plain ViT with a class token.

Defaults give DeiT-Tiny (224x224, patch 16, dim 192, depth 12, 3 heads, MLP 768, 5.7 M
parameters). ``fused_qkv=False`` uses separate q/k/v linears, as some exports have;
``shared_qk=True`` one projection for queries and keys (ShiftAddViT's ``to_qk``). Each block's
attention core is ``saddc.nn.SoftmaxAttention``; ``saddc.nn.replace_attention`` swaps it for
the additive or Taylor forms.
"""

import torch
from torch import nn

from saddc.nn import SoftmaxAttention


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, fused_qkv: bool = True, shared_qk: bool = False):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim ** -0.5
        self.fused_qkv, self.shared_qk = fused_qkv, shared_qk
        if shared_qk:
            self.qk, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim)
        elif fused_qkv:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.core = SoftmaxAttention(heads, self.head_dim)

    def forward(self, x):
        batch, tokens, dim = x.shape

        def heads(t):
            return t.reshape(batch, tokens, self.heads, self.head_dim).transpose(1, 2)

        if self.shared_qk:
            q = k = heads(self.qk(x))
            v = heads(self.v(x))
        elif self.fused_qkv:
            qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
        else:
            q, k, v = (heads(layer(x)) for layer in (self.q, self.k, self.v))
        return self.proj(self.core(q, k, v, self.scale).transpose(1, 2).reshape(batch, tokens, dim))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, fused_qkv: bool, shared_qk: bool):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads, fused_qkv, shared_qk)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DeiT(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, dim=192,
                 depth=12, heads=3, mlp_ratio=4.0, fused_qkv=True, shared_qk=False):
        super().__init__()
        self.patch_embed = nn.Conv2d(in_chans, dim, patch_size, patch_size)
        tokens = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, fused_qkv, shared_qk) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def deit_tiny(**overrides) -> DeiT:
    return DeiT(**overrides)
