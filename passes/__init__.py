"""saddc's Relax passes: one pass (or analysis) per module, named by what it does."""

from .find_vit_blocks import AttentionBlock, LinearLayer, find_attention_blocks, find_linear_layers

__all__ = ["AttentionBlock", "LinearLayer", "find_attention_blocks", "find_linear_layers"]
