"""saddc's Relax passes: one pass (or analysis) per module, named by what it does."""

from .find_vit_blocks import (
    AttentionBlock, LinearLayer, SkippedSoftmax, find_attention_blocks, find_linear_layers,
    find_skipped_softmax,
)
from .rewrite_linear_to_shift import RewriteLinearToShift, ShiftReport
from .rewrite_patch_embedding_to_matmul import RewritePatchEmbeddingToMatmul

__all__ = [
    "AttentionBlock", "LinearLayer", "RewriteLinearToShift", "RewritePatchEmbeddingToMatmul",
    "ShiftReport", "SkippedSoftmax", "find_attention_blocks", "find_linear_layers",
    "find_skipped_softmax",
]
