"""The ViT block recognizer on every architecture the frontend imports, with both exporters:
each softmax is either a recognized attention block (with where its scale sits, its stage and
token counts) or reported with the reason it was left alone; each linear layer has its role
(``test_layer_roles.EXPECTED``)."""

import pytest
import torch
import tvm

from conftest import random_input
from model_zoo import ARCHITECTURES, IMAGE, build
from saddc.frontends import import_onnx
from saddc.frontends.torch_export import export_onnx
from saddc.passes import find_attention_blocks, find_linear_layers, find_skipped_softmax
from saddc.pipeline import recognition_passes
from test_layer_roles import EXPECTED as ROLES

BIAS_REASON = "a constant bias is added to the scores before the softmax"
# Each test model has two attention layers. Recognized blocks: (scale position, stage, query
# tokens, key tokens) each; left alone: how many softmaxes, all for the bias reason.
PLAIN = [("scores", 0, 17, 17)] * 2
HF_PLAIN = [("query and key", 0, 17, 17)] * 2  # HF scales Q and K by sqrt(scale) each
REDUCED = [("scores", 0, 64, 16), ("scores", 1, 16, 16)]  # PVT: keys from a 2x2-reduced sequence
EXPECTED = {
    "deit-own-fused": (PLAIN, 0), "deit-own-separate": (PLAIN, 0), "pvtv2-own": (REDUCED, 0),
    "vit-hf": (HF_PLAIN, 0), "deit-hf": ([("query and key", 0, 18, 18)] * 2, 0),  # class + distillation
    "segformer-hf": ([("query and key", 0, 64, 16), ("query and key", 1, 16, 16)], 0),
    "pvtv2-hf": (REDUCED, 0),
    "swin-hf": ([], 2),   # window attention adds the relative position bias to the scores
    "levit-hf": ([], 5),  # attention biases, in the stages and the subsampling attention
}


def test_every_architecture_is_covered():
    assert set(EXPECTED) == set(ARCHITECTURES)


@pytest.mark.parametrize("exporter,opset", [("legacy", 17), ("dynamo", 18)])
@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_softmax_sites_and_layer_roles(arch, exporter, opset, export_dir):
    path = export_onnx(build(arch), torch.from_numpy(random_input(IMAGE)),
                       export_dir / f"recognizer-{arch}-{exporter}.onnx", exporter, opset)
    mod = tvm.transform.Sequential(recognition_passes())(import_onnx(path).mod)
    assert [layer.role for layer in find_linear_layers(mod)] == ROLES[arch]
    blocks, skipped = find_attention_blocks(mod), find_skipped_softmax(mod)
    recognized, left_alone = EXPECTED[arch]
    assert [(b.scale, b.stage, b.query_tokens, b.key_tokens) for b in blocks] == recognized
    assert all(b.score_scale == (0.25 if b.scale == "scores" else 1.0) for b in blocks)
    assert len(skipped) == left_alone
    assert all(BIAS_REASON in site.reason for site in skipped)
