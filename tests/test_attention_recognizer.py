"""The attention recognizer on every architecture the frontend imports: each softmax is either
a recognized attention block or reported with the reason it was left alone."""

import pytest
import torch
import tvm

from conftest import random_input
from model_zoo import ARCHITECTURES, IMAGE, build
from saddc.config import LowerConfig
from saddc.frontends import import_onnx
from saddc.frontends.torch_export import export_onnx
from saddc.passes import find_attention_blocks, find_skipped_softmax
from saddc.pipeline import cleanup_passes

BIAS_REASON = "a constant bias is added to the scores before the softmax"
# architecture -> (recognized blocks, left-alone softmaxes); each test model has depth 2 in all.
EXPECTED = {
    "deit-own-fused": (2, 0), "deit-own-separate": (2, 0), "pvtv2-own": (2, 0),
    "vit-hf": (2, 0), "deit-hf": (2, 0), "segformer-hf": (2, 0), "pvtv2-hf": (2, 0),
    "swin-hf": (0, 2),   # window attention adds the relative position bias to the scores
    "levit-hf": (0, 5),  # attention biases, in the stages and the subsampling attention
}


def test_every_architecture_is_covered():
    assert set(EXPECTED) == set(ARCHITECTURES)


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_softmax_sites_are_recognized_or_explained(arch, export_dir):
    path = export_onnx(build(arch), torch.from_numpy(random_input(IMAGE)),
                       export_dir / f"recognizer-{arch}.onnx", "legacy", 17)
    mod = tvm.transform.Sequential(cleanup_passes(LowerConfig()))(import_onnx(path).mod)
    blocks, skipped = find_attention_blocks(mod), find_skipped_softmax(mod)
    assert (len(blocks), len(skipped)) == EXPECTED[arch]
    assert all(BIAS_REASON in site.reason for site in skipped)
