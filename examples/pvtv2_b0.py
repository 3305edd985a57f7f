"""PVTv2-b0 (Wang et al., 2022): a pyramid ViT with spatial-reduction attention and a
depthwise 3x3 conv in its MLP.

Defaults give PVTv2-b0 (224x224; dims 32/64/160/256, depths 2/2/2/2, heads 1/2/5/8,
spatial reduction 8/4/2/1, MLP ratios 8/8/4/4; 3.7 M parameters). ``stem`` is the first
patch embedding's (kernel, stride): (7, 4) as in the paper; small images want a finer one.
Each block's attention core is ``saddc.nn.SoftmaxAttention``; ``saddc.nn.replace_attention``
swaps it.
"""

import torch
from torch import nn

from saddc.nn import SoftmaxAttention


class OverlapPatchEmbed(nn.Module):
    def __init__(self, in_chans: int, dim: int, patch_size: int, stride: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        x = self.proj(x)
        height, width = x.shape[2], x.shape[3]
        return self.norm(x.flatten(2).transpose(1, 2)), height, width


class SpatialReductionAttention(nn.Module):
    """Queries from all tokens; keys and values from a sequence shrunk by a strided conv."""

    def __init__(self, dim: int, heads: int, sr_ratio: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim ** -0.5
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.core = SoftmaxAttention(heads, self.head_dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x, height: int, width: int):
        batch, tokens, dim = x.shape
        q = self.q(x).reshape(batch, tokens, self.heads, self.head_dim).transpose(1, 2)
        if self.sr_ratio > 1:
            reduced = self.sr(x.transpose(1, 2).reshape(batch, dim, height, width))
            x = self.norm(reduced.flatten(2).transpose(1, 2))
        kv = self.kv(x).reshape(batch, -1, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv[0], kv[1]
        return self.proj(self.core(q, k, v, self.scale).transpose(1, 2).reshape(batch, tokens, dim))


class MixFFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden)
        self.act = nn.GELU()

    def forward(self, x, height: int, width: int):
        x = self.fc1(x)
        batch, tokens, hidden = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(batch, hidden, height, width))
        return self.fc2(self.act(x.flatten(2).transpose(1, 2)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, sr_ratio: int, mlp_ratio: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SpatialReductionAttention(dim, heads, sr_ratio)
        self.mlp = MixFFN(dim, dim * mlp_ratio)

    def forward(self, x, height: int, width: int):
        x = x + self.attn(self.norm1(x), height, width)
        return x + self.mlp(self.norm2(x), height, width)


class PVTv2(nn.Module):
    def __init__(self, img_size=224, in_chans=3, num_classes=1000, dims=(32, 64, 160, 256),
                 depths=(2, 2, 2, 2), heads=(1, 2, 5, 8), sr_ratios=(8, 4, 2, 1), mlp_ratios=(8, 8, 4, 4),
                 stem=(7, 4)):
        super().__init__()
        del img_size  # the convs take any input size; kept for a uniform constructor
        self.embeds, self.stages, self.norms = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        for i, dim in enumerate(dims):
            patch, stride = stem if i == 0 else (3, 2)
            self.embeds.append(OverlapPatchEmbed(in_chans if i == 0 else dims[i - 1], dim, patch, stride))
            self.stages.append(nn.ModuleList(
                Block(dim, heads[i], sr_ratios[i], mlp_ratios[i]) for _ in range(depths[i])
            ))
            self.norms.append(nn.LayerNorm(dim))
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        batch = x.shape[0]
        for i, (embed, blocks, norm) in enumerate(zip(self.embeds, self.stages, self.norms)):
            x, height, width = embed(x)
            for block in blocks:
                x = block(x, height, width)
            x = norm(x)
            if i < len(self.stages) - 1:
                x = x.reshape(batch, height, width, -1).permute(0, 3, 1, 2)
        return self.head(x.mean(dim=1))


def pvtv2_b0(**overrides) -> PVTv2:
    return PVTv2(**overrides)
