"""The CLI's inspect, compile summary and run, and running modules with TVM's runtime only."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import ort_outputs, random_input, relative_error, run_saddc
from model_zoo import IMAGE, build
from saddc.frontends.torch_export import export_onnx
from test_layer_roles import EXPECTED as LAYER_ROLES


def saddc_cli(*args):
    result = run_saddc(*args)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    paths = {}
    for arch in ("deit-own-fused", "deit-own-separate", "pvtv2-own", "swin-hf"):
        paths[arch] = export_onnx(build(arch), torch.from_numpy(random_input(IMAGE)), root / f"{arch}.onnx", "legacy", 17)
    return paths


@pytest.mark.parametrize("arch,roles,attention", [
    # patch embedding (a patchifying conv) + depth 2 x (qkv, proj, fc1, fc2) + head
    ("deit-own-fused", ["patch-embed"] + ["qkv", "attn-proj", "mlp-fc1", "mlp-fc2"] * 2 + ["head"], 2),
    # depth 2 x (q, k, v, proj, fc1, fc2)
    ("deit-own-separate", ["patch-embed"] + ["qkv"] * 3 + ["attn-proj", "mlp-fc1", "mlp-fc2"] * 1
     + ["qkv"] * 3 + ["attn-proj", "mlp-fc1", "mlp-fc2"] + ["head"], 2),
    # 2 stages x 1 block x (q, kv, proj, fc1, fc2) + head; PVT's overlapping patch conv stays a conv
    ("pvtv2-own", ["qkv", "qkv", "attn-proj", "mlp-fc1", "mlp-fc2"] * 2 + ["head"], 2),
    # window attention (not rewritable: a relative-position bias) still gives its layers their roles
    ("swin-hf", LAYER_ROLES["swin-hf"], 0),
])
def test_inspect_counts_blocks(exported, arch, roles, attention):
    out = saddc_cli("inspect", exported[arch])
    assert f"linear layers: {len(roles)}" in out
    listed = [line.split()[1] for line in out.splitlines() if line.strip().startswith("linear[")]
    assert listed == roles
    assert f"attention blocks: {attention}" in out


def test_inspect_aligns_its_columns_past_ten_layers(exported):
    """deit-own-separate has 14 linear layers, of 32 -> 32 to 128 -> 32 features and inputs
    [1, 4, 4, 192] to [1, 17, 32]: every column starts where it does on the other lines."""
    lines = [line for line in saddc_cli("inspect", exported["deit-own-separate"]).splitlines()
             if line.strip().startswith("linear[")]
    assert {"linear[9]", "linear[13]"} <= {line.split()[0] for line in lines}
    starts = [[line.index(part) for part in (line.split()[1], " input ", "  /")] for line in lines]
    assert all(start == starts[0] for start in starts), lines


def test_output_to_a_closed_pipe_stops_quietly(exported):
    """``saddc inspect model.onnx | head -1``: once the reader has gone, no traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has left before the first line
    with os.fdopen(write_end, "w") as closed_pipe:
        result = subprocess.run([sys.executable, "-m", "saddc", "inspect", str(exported["deit-own-fused"])],
                                stdout=closed_pipe, stderr=subprocess.PIPE, text=True, timeout=600)
    assert result.returncode == 1 and result.stderr == "", result.stderr


def test_inspect_reports_spatial_reduction(exported):
    out = saddc_cli("inspect", exported["pvtv2-own"])
    # Stage 1 at 8x8 tokens, keys reduced 2x2 -> 16 key tokens; stage 2 at 4x4 without reduction.
    assert "query tokens 64  key tokens 16  head dim 16" in out
    assert "query tokens 16  key tokens 16  head dim 16" in out


def test_inspect_reports_class_token_sequence(exported):
    out = saddc_cli("inspect", exported["deit-own-fused"])
    assert "stage 0  heads 2  query tokens 17  key tokens 17  head dim 16  scale on scores (0.25 on the scores)" in out
    assert "linear[1]  qkv         32 -> 96  +bias  input [1, 17, 32]" in out


def test_compile_summary_and_run(exported, tmp_path):
    out = saddc_cli("compile", exported["swin-hf"], "-o", tmp_path / "swin.so")
    for field in ("ops found:", "rewrites applied:  none", "kernels emitted:", "compile time:",
                  f"output:            {tmp_path / 'swin.so'}"):
        assert field in out
    manifest = json.loads((tmp_path / "swin.json").read_text())
    assert manifest["inputs"] == [{"name": "x", "shape": list(IMAGE), "dtype": "float32"}]
    assert manifest["rewrites"] == [] and manifest["target"] == "llvm"

    x = random_input(IMAGE, seed=5)
    np.save(tmp_path / "x.npy", x)
    out = saddc_cli("run", tmp_path / "swin.so", "--input", tmp_path / "x.npy", "--save", tmp_path / "outs")
    assert "y: float32[1, 10]" in out
    (expected,) = ort_outputs(exported["swin-hf"], {"x": x})
    assert relative_error(np.load(tmp_path / "outs" / "y.npy"), expected) <= 1e-4


def test_runtime_only_mode_runs_a_module(exported, tmp_path):
    """What a deployment host does: TVM runtime library only, no tvm.relax, no ONNX."""
    import saddc

    saddc.compile(exported["deit-own-fused"], target="llvm", output=tmp_path / "m.so")
    x = random_input(IMAGE, seed=6)
    np.save(tmp_path / "x.npy", x)
    script = (
        "import sys, numpy as np, saddc\n"
        f"m = saddc.load(r'{tmp_path / 'm.so'}')\n"
        f"np.save(r'{tmp_path / 'y.npy'}', m(np.load(r'{tmp_path / 'x.npy'}'))[0])\n"
        "assert 'tvm.relax' not in sys.modules and 'onnx' not in sys.modules, sorted(sys.modules)\n"
    )
    env = dict(os.environ, TVM_USE_RUNTIME_LIB="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    (expected,) = ort_outputs(exported["deit-own-fused"], {"x": x})
    assert relative_error(np.load(tmp_path / "y.npy"), expected) <= 1e-4
