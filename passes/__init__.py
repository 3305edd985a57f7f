"""saddc's Relax passes: one pass (or analysis) per module, named by what it does."""

from .attention_report import AttentionReport, AttentionSite
from .find_binary_codes import BinaryCodes, find_binary_codes
from .find_vit_blocks import (
    AttentionBlock, LinearLayer, SkippedSoftmax, find_attention_blocks, find_linear_layers,
    find_skipped_softmax,
)
from .lower_binary_coded_attention import LowerBinaryCodedAttention
from .replace_softmax_attention import ReplaceSoftmaxAttention
from .rewrite_linear_to_shift import RewriteLinearToShift, ShiftReport
from .rewrite_patch_embedding_to_matmul import RewritePatchEmbeddingToMatmul

__all__ = [
    "AttentionBlock", "AttentionReport", "AttentionSite", "BinaryCodes", "LinearLayer",
    "LowerBinaryCodedAttention", "ReplaceSoftmaxAttention", "RewriteLinearToShift",
    "RewritePatchEmbeddingToMatmul", "ShiftReport", "SkippedSoftmax", "find_attention_blocks",
    "find_binary_codes", "find_linear_layers", "find_skipped_softmax",
]
