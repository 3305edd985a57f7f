"""Layer roles: those of every architecture the frontend imports (``EXPECTED``, checked with both
exporters by test_attention_recognizer.py), those of DeiT with each MLP activation function a
ViT variant uses; and the layers those roles select, rewritten and compiled, against ONNX
Runtime on the torch model with the same layers rounded.

Roles around attention count the attention ``--attention`` leaves alone (Swin's and LeViT's
relative-position bias): their q/k/v and projection layers are still ``--shift attn`` layers.
"""

import pytest
import torch
import tvm

import saddc
from conftest import ort_outputs, random_input, relative_error, run_module
from model_zoo import ACTIVATIONS, ARCHITECTURES, IMAGE, build
from saddc.config import MoEOptions, ShiftOptions
from saddc.frontends import import_onnx
from saddc.frontends.torch_export import export_onnx
from saddc.nn import round_weights_to_shift
from saddc.passes import find_linear_layers
from saddc.pipeline import recognition_passes

BLOCK = ["qkv", "attn-proj", "mlp-fc1", "mlp-fc2"]  # fused q/k/v
SEPARATE = ["qkv"] * 3 + ["attn-proj", "mlp-fc1", "mlp-fc2"]
PVT = ["qkv", "qkv", "attn-proj", "mlp-fc1", "mlp-fc2"]  # q, then k/v from the reduced sequence
LEVIT_SUBSAMPLE = ["qkv", "qkv", "attn-proj", "mlp-fc1", "mlp-fc2"]  # k/v, then subsampled q
EXPECTED = {
    "deit-own-fused": ["patch-embed"] + BLOCK * 2 + ["head"],
    "deit-own-separate": ["patch-embed"] + SEPARATE * 2 + ["head"],
    "pvtv2-own": PVT * 2 + ["head"],
    "vit-hf": ["patch-embed"] + SEPARATE * 2 + ["head"],
    "deit-hf": ["patch-embed"] + SEPARATE * 2 + ["head"],
    # window attention with a relative-position bias; "other": patch merging's reduction
    "swin-hf": ["patch-embed"] + SEPARATE + ["other"] + SEPARATE + ["head"],
    # "other": the decode head's per-stage projections
    "segformer-hf": SEPARATE * 2 + ["other", "other"],
    # attention with biases, HardSwish MLPs, a batch norm after every linear layer
    "levit-hf": BLOCK + LEVIT_SUBSAMPLE + BLOCK + LEVIT_SUBSAMPLE + BLOCK + ["head"],
    "pvtv2-hf": SEPARATE * 2 + ["head"],
}
TOLERANCE = 1e-4


def roles(path) -> list[str]:
    mod = tvm.transform.Sequential(recognition_passes())(import_onnx(path).mod)
    return [layer.role for layer in find_linear_layers(mod)]


def test_every_architecture_is_covered():
    assert set(EXPECTED) == set(ARCHITECTURES)


@pytest.mark.parametrize("activation,exporter", [(name, "legacy") for name in ACTIVATIONS] + [("gelu-tanh", "dynamo")])
def test_every_mlp_activation_makes_mlp_layers(activation, exporter, export_dir):
    """ReLU and leaky ReLU are one op; SiLU, QuickGELU, tanh-form GELU, HardSwish and Mish are
    several, the exporters' decompositions; ReLU6 is a Clip, two TOPI kernels from TVM's
    importer until the cleanup phase gives them back as one clip."""
    path = export_onnx(build(f"deit-own-{activation}"), torch.from_numpy(random_input(IMAGE)),
                       export_dir / f"roles-{activation}-{exporter}.onnx", exporter, 18)
    assert roles(path) == EXPECTED["deit-own-fused"]


def test_shift_attn_on_swin_window_attention(export_dir, tmp_path):
    """``--shift attn`` takes Swin's q/k/v and output projections (the attention itself stays
    softmax with its bias), and the module computes the model with those weights rounded."""
    example = torch.from_numpy(random_input(IMAGE))
    path = export_onnx(build("swin-hf"), example, export_dir / "shift-swin.onnx", "legacy", 17)
    result = saddc.compile(path, output=tmp_path / "swin.so", shift=ShiftOptions("attn", lossy=True))
    assert [layer.role for layer in result.reports["shift"].layers] == ["qkv"] * 3 + ["attn-proj"] + ["qkv"] * 3 + ["attn-proj"]
    rounded = export_onnx(round_weights_to_shift(build("swin-hf"), include="*.attention.*_proj"), example,
                          tmp_path / "rounded.onnx", "legacy", 17)
    x = random_input(IMAGE, seed=3)
    (expected,) = ort_outputs(rounded, {"x": x})
    assert relative_error(run_module(result.output, x), expected) <= TOLERANCE
    (original,) = ort_outputs(path, {"x": x})
    assert relative_error(run_module(result.output, x), original) > 1e-3, "the rounding changes the function"


def test_moe_mlp_on_levit_hardswish_mlps(export_dir, tmp_path):
    """``--moe mlp`` takes LeViT's HardSwish MLPs (linear, batch norm, HardSwish, linear, batch
    norm); with every token routed to the Shift expert the module computes the model with
    those linear layers rounded."""
    example = torch.from_numpy(random_input(IMAGE))
    path = export_onnx(build("levit-hf"), example, export_dir / "moe-levit.onnx", "legacy", 17)
    calibration = random_input((4,) + IMAGE[1:], seed=5)
    result = saddc.compile(path, output=tmp_path / "levit.so", moe=MoEOptions(shift_ratio=1.0, calibration=calibration))
    assert [layer.role for layer in result.reports["moe"].layers] == ["mlp-fc1", "mlp-fc2"] * 5
    rounded = export_onnx(round_weights_to_shift(build("levit-hf"), include="*.linear_*.linear"), example,
                          tmp_path / "rounded.onnx", "legacy", 17)
    x = random_input(IMAGE, seed=4)
    (expected,) = ort_outputs(rounded, {"x": x})
    assert relative_error(run_module(result.output, x), expected) <= TOLERANCE
