"""The architectures the frontend must import: small configurations, same graph structure.

Own definitions (examples/): DeiT-Tiny (fused and separate qkv) and PVTv2-b0. Public forms:
Hugging Face transformers' ViT, DeiT, Swin, SegFormer (MiT), LeViT and PVTv2, built from
configs with random weights (no hub access here).
"""

import torch
import transformers as hf

IMAGE = (1, 3, 32, 32)


class LogitsOnly(torch.nn.Module):
    """HF models return ModelOutput objects; users export the logits tensor."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(pixel_values=x).logits


def own_deit(fused_qkv=True, shared_qk=False):
    from deit_tiny import deit_tiny

    return deit_tiny(img_size=32, patch_size=8, dim=32, depth=2, heads=2, num_classes=10, fused_qkv=fused_qkv,
                     shared_qk=shared_qk)


def own_pvtv2():
    from pvtv2_b0 import pvtv2_b0

    return pvtv2_b0(dims=(16, 32), depths=(1, 1), heads=(1, 2), sr_ratios=(2, 1), mlp_ratios=(2, 2), num_classes=10)


def hf_vit():
    return LogitsOnly(hf.ViTForImageClassification(hf.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=10)))


def hf_deit():
    return LogitsOnly(hf.DeiTForImageClassification(hf.DeiTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=10)))


def trained_biases(model, name: str):
    """HF initializes attention biases to zero; give them values, as training does, so that they
    are real biases (an all-zero bias is no bias)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter_name, parameter in model.named_parameters():
            if name in parameter_name:
                parameter.copy_(0.02 * torch.randn(parameter.shape, generator=generator))
    return model


def hf_swin():
    return trained_biases(LogitsOnly(hf.SwinForImageClassification(hf.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4,
        num_labels=10))), "relative_position_bias_table")


def hf_segformer():
    return LogitsOnly(hf.SegformerForSemanticSegmentation(hf.SegformerConfig(
        num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
        num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2], decoder_hidden_size=32,
        num_labels=5, mlp_ratios=[2, 2])))


def hf_levit():
    return trained_biases(LogitsOnly(hf.LevitForImageClassification(hf.LevitConfig(
        image_size=32, hidden_sizes=[32, 48, 64], num_attention_heads=[1, 2, 2], depths=[1, 1, 1],
        key_dim=[8, 8, 8], patch_size=16, stride=2, kernel_size=3,
        down_ops=[["Subsample", 8, 4, 4, 2, 2], ["Subsample", 8, 6, 4, 2, 2]], num_labels=10))), "attention_biases")


def hf_pvtv2():
    return LogitsOnly(hf.PvtV2ForImageClassification(hf.PvtV2Config(
        image_size=32, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
        num_attention_heads=[1, 2], mlp_ratios=[2, 2], num_labels=10)))


ARCHITECTURES = {
    "deit-own-fused": own_deit,
    "deit-own-separate": lambda: own_deit(fused_qkv=False),
    "pvtv2-own": own_pvtv2,
    "vit-hf": hf_vit,
    "deit-hf": hf_deit,
    "swin-hf": hf_swin,
    "segformer-hf": hf_segformer,
    "levit-hf": hf_levit,
    "pvtv2-hf": hf_pvtv2,
}


class QuickGELU(torch.nn.Module):
    """CLIP's GELU approximation, ``x * sigmoid(1.702 x)``."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


# The MLP activation functions of ViT variants (exported as the ONNX ops they decompose into).
ACTIVATIONS = {
    "relu": torch.nn.ReLU, "leakyrelu": torch.nn.LeakyReLU, "silu": torch.nn.SiLU, "quickgelu": QuickGELU,
    "gelu-tanh": lambda: torch.nn.GELU(approximate="tanh"), "hardswish": torch.nn.Hardswish, "mish": torch.nn.Mish,
    "relu6": torch.nn.ReLU6,
}


def own_deit_with(activation: str):
    """The own DeiT with ``activation`` in its MLPs instead of GELU."""
    model = own_deit()
    for block in model.blocks:
        block.mlp[1] = ACTIVATIONS[activation]()
    return model


# Variants of the architectures above that particular tests need.
VARIANTS = {
    "deit-own-shared-qk": lambda: own_deit(shared_qk=True),  # ShiftAddViT's one projection for Q and K
    **{f"deit-own-{name}": (lambda name=name: own_deit_with(name)) for name in ACTIVATIONS},
}


def build(name):
    torch.manual_seed(0)
    return {**ARCHITECTURES, **VARIANTS}[name]().eval()
