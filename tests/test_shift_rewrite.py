"""--shift: linear layers -> shift GEMMs, on the example ViTs, through the CLI and the API.

References: a lossless rewrite is compared with ONNX Runtime on the same model; a lossy one
with ONNX Runtime on the model whose torch weights were rounded the same way (shift_codes on
each selected weight), so every compiled output is checked against an independent reference.
"""

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import saddc
from conftest import ort_outputs, random_input, relative_error, run_module, run_saddc
from model_zoo import IMAGE, build
from saddc.census import ptx_census
from saddc.config import ShiftOptions
from saddc.errors import ConfigError, RewriteError
from saddc.frontends.torch_export import export_onnx
from saddc.nn import round_weights_to_shift

TOLERANCE = 1e-5


def export(model, path, exporter="legacy", opset=17, dynamic_batch=False):
    example = torch.from_numpy(random_input(IMAGE))
    return export_onnx(model, example, path, exporter, opset, dynamic_batch=dynamic_batch)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("shift")
    deit, pvt = build("deit-own-fused"), build("pvtv2-own")
    return {
        "deit": export(deit, root / "deit.onnx"),
        "deit-pow2": export(round_weights_to_shift(deit), root / "deit-pow2.onnx"),
        "deit-pow2-dynamo": export(round_weights_to_shift(deit), root / "deit-pow2-dyn.onnx", "dynamo", 18),
        "deit-pow2-batch": export(round_weights_to_shift(deit), root / "deit-pow2-b.onnx", dynamic_batch=True),
        "deit-pow2-4bit": export(round_weights_to_shift(deit, bits=4), root / "deit-pow2-4.onnx"),
        "pvt": export(pvt, root / "pvt.onnx"),
        "pvt-mlp-rounded": export(round_weights_to_shift(pvt, include="*mlp.fc*"), root / "pvt-mlp.onnx"),
        "root": root,
    }


@pytest.mark.parametrize("model", ["deit-pow2", "deit-pow2-dynamo"])
def test_lossless_lowering_of_power_of_two_weights_through_the_cli(models, tmp_path, model):
    out = tmp_path / "m.so"
    result = run_saddc("compile", models[model], "--shift", "all", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "shift layers:      10 (10 lossless, 0 lossy), 5-bit codes" in result.stdout
    assert "shift calibration: not needed" in result.stdout
    assert "warning" not in result.stderr, "a lossless rewrite needs no calibration data"
    x = random_input(IMAGE, seed=3)
    (expected,) = ort_outputs(models[model], {"x": x})
    assert relative_error(run_module(out, x), expected) <= TOLERANCE
    manifest = json.loads(out.with_suffix(".json").read_text())
    shift = manifest["shift"]
    assert manifest["rewrites"] == ["shift"]
    assert [layer["role"] for layer in shift["layers"]] == [
        "patch-embed", "qkv", "attn-proj", "mlp-fc1", "mlp-fc2",
        "qkv", "attn-proj", "mlp-fc1", "mlp-fc2", "head"]
    assert all(layer["exactness"] == "lossless" and layer["weight_sqnr_db"] is None for layer in shift["layers"])
    before, after = shift["weight_bytes"]["before"], shift["weight_bytes"]["after"]
    assert before == sum(l["in_features"] * l["out_features"] * 4 for l in shift["layers"])
    assert 4.5 < before / after < 6.4  # 5-bit codes in 32-bit words plus a per-channel exponent
    if model == "deit-pow2":  # the legacy exporter names nodes after the torch modules
        assert shift["layers"][1]["name"] == "/blocks/blocks.0/attn/qkv/MatMul"


def test_lossless_4_bit_codes_and_symbolic_batch(models):
    result = saddc.compile(models["deit-pow2-4bit"], shift=ShiftOptions("mlp,attn", bits=4),
                           output=models["root"] / "m4.so")
    assert all(l.exactness == "lossless" for l in result.reports["shift"].layers)
    x = random_input(IMAGE, seed=4)
    (expected,) = ort_outputs(models["deit-pow2-4bit"], {"x": x})
    assert relative_error(run_module(result.output, x), expected) <= TOLERANCE

    result = saddc.compile(models["deit-pow2-batch"], shift=ShiftOptions("all"),
                           output=models["root"] / "mb.so")
    x = random_input((3,) + IMAGE[1:], seed=5)
    (expected,) = ort_outputs(models["deit-pow2-batch"], {"x": x})
    assert relative_error(run_module(result.output, x), expected) <= TOLERANCE


def test_both_cpu_kernels_lower_the_model_exactly(models):
    """``auto`` on a CPU without a latency measurement takes decode-dense (FMA on decoded weights);
    the multiply-free add-only kernel stays available on request; both match the original."""
    x = random_input(IMAGE, seed=6)
    (expected,) = ort_outputs(models["deit-pow2"], {"x": x})
    for kernel, chosen in (("auto", "decode-dense"), ("add-only", "add-only")):
        result = saddc.compile(models["deit-pow2"], target="llvm", arch="x86-64-v3",
                               shift=ShiftOptions("all", kernel=kernel), output=models["root"] / f"{kernel}.so")
        assert {layer.kernel for layer in result.reports["shift"].layers} == {chosen}
        assert relative_error(run_module(result.output, x), expected) <= TOLERANCE


def test_lossy_rewrite_matches_the_rounded_reference_and_reports_error(models, tmp_path):
    calibration = random_input((4,) + IMAGE[1:], seed=7)
    options = ShiftOptions("all", lossy=True, calibration=calibration)
    result = saddc.compile(models["deit"], shift=options, output=tmp_path / "lossy.so")
    report = result.reports["shift"]
    assert report.calibration == "(array), 4 samples"
    assert all(l.exactness == "lossy" for l in report.layers)
    assert all(8 < l.weight_sqnr_db < 25 and l.weight_max_abs_error > 0 for l in report.layers)
    assert all(0.9 < l.output_cosine < 1.0 for l in report.layers)
    x = random_input(IMAGE, seed=8)
    reference = export(round_weights_to_shift(build("deit-own-fused")), tmp_path / "ref.onnx")
    (expected,) = ort_outputs(reference, {"x": x})
    assert relative_error(run_module(result.output, x), expected) <= TOLERANCE
    (original,) = ort_outputs(models["deit"], {"x": x})
    assert relative_error(run_module(result.output, x), original) > 1e-3, "lossy means a changed function"


def test_lossy_mlp_only_on_pvt_through_lower(models):
    imported = saddc.frontends.import_onnx(models["pvt"])
    config = saddc.LowerConfig(target="llvm", shift=ShiftOptions("mlp", lossy=True),
                               layer_names=imported.layer_names)
    with pytest.warns(saddc.errors.SaddcWarning, match="synthetic"):
        lowered = saddc.lower(imported.mod, config)
    report = config.reports["shift"]
    assert [l.role for l in report.layers] == ["mlp-fc1", "mlp-fc2"] * 2
    assert report.calibration.startswith("synthetic")
    executable, _ = saddc.build(lowered, config)
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(executable, tvm.cpu())
    x = random_input(IMAGE, seed=9)
    (expected,) = ort_outputs(models["pvt-mlp-rounded"], {"x": x})
    assert relative_error(vm["main"](tvm.runtime.tensor(x)).numpy(), expected) <= TOLERANCE


def test_skip_lists_and_group_selection(models):
    result = saddc.compile(models["deit-pow2"], shift=ShiftOptions("all", skip="first,last,*blocks.1*"))
    report = result.reports["shift"]
    assert [l.index for l in report.layers] == [1, 2, 3, 4]
    assert len(report.skipped) == 6 and "--shift-skip first" in report.skipped[0]
    result = saddc.compile(models["deit-pow2"], shift=ShiftOptions("head,attn-proj"))
    assert [l.role for l in result.reports["shift"].layers] == ["attn-proj", "attn-proj", "head"]


def test_requests_that_cannot_apply_are_clear_errors(models):
    with pytest.raises(RewriteError, match=r"not powers of two.*--shift-lossy"):
        saddc.compile(models["deit"], shift=ShiftOptions("mlp"))
    with pytest.raises(ConfigError, match="matches no layer in this model"):
        saddc.compile(models["deit-pow2"], shift=ShiftOptions("other"))
    with pytest.raises(ConfigError, match="--shift-skip 'nothing-like-this' matches no linear layer"):
        saddc.compile(models["deit-pow2"], shift=ShiftOptions("all", skip="nothing-like-this"))
    with pytest.raises(ConfigError, match="--shift-skip '10' matches no linear layer"):
        saddc.compile(models["deit-pow2"], shift=ShiftOptions("all", skip="10"))
    with pytest.raises(ConfigError, match="unknown shift layer group 'ffn'"):
        ShiftOptions("mlp,ffn")
    with pytest.raises(ConfigError, match="calibration file not found"):
        ShiftOptions("mlp", calibration="/nonexistent/calib.npy")
    with pytest.raises(ConfigError, match="decode-mma shift kernel needs tensor cores"):
        saddc.compile(models["deit-pow2"], shift=ShiftOptions("mlp", kernel="decode-mma"))


def test_model_without_linear_layers_is_a_clear_error():
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 4), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            out = bb.emit_output(relax.op.nn.relu(x))
        bb.emit_func_output(out)
    with pytest.raises(ConfigError, match="no linear layers with constant weights"):
        saddc.lower(bb.get(), saddc.LowerConfig(shift=ShiftOptions("all")))


def edited(models, tmp_path, node_name, change):
    """A copy of the pow2 DeiT with ``change`` applied to the weight of ``node_name``."""
    model = onnx.load(str(models["deit-pow2"]))
    node = next(n for n in model.graph.node if n.name == node_name)
    init = next(i for i in model.graph.initializer if i.name == node.input[1])
    init.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(init)), init.name))
    path = tmp_path / "edited.onnx"
    onnx.save(model, str(path))
    return path


def test_nan_weights_name_the_layer(models, tmp_path):
    def poison(weight):
        weight = weight.copy()
        weight[3, 2] = np.nan
        return weight

    path = edited(models, tmp_path, "/blocks/blocks.0/mlp/mlp.0/MatMul", poison)
    result = run_saddc("compile", path, "--shift", "mlp", "-o", tmp_path / "m.so")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "saddc: error: cannot rewrite /blocks/blocks.0/mlp/mlp.0/MatMul (mlp-fc1) to shift: "
        "weight holds NaN or Inf")
    assert "Traceback" not in result.stderr and not (tmp_path / "m.so").exists()


def test_all_zero_layer_is_lossless(models, tmp_path):
    path = edited(models, tmp_path, "/blocks/blocks.1/mlp/mlp.2/MatMul", np.zeros_like)
    result = saddc.compile(path, shift=ShiftOptions("mlp"), output=tmp_path / "z.so")
    zero = next(l for l in result.reports["shift"].layers if l.name.endswith("blocks.1/mlp/mlp.2/MatMul"))
    assert zero.exactness == "lossless"
    x = random_input(IMAGE, seed=11)
    (expected,) = ort_outputs(path, {"x": x})
    assert relative_error(run_module(result.output, x), expected) <= TOLERANCE


def test_cuda_build_shift_kernels_have_no_float_multiply(models, tmp_path):
    from saddc.cuda import nvcc_compile

    result = saddc.compile(models["deit-pow2"], target="cuda", shift=ShiftOptions("all"),
                           output=tmp_path / "cuda.so")
    assert all(l.kernel == "add-only" and "no cuda-sm_90 latency measured" in l.kernel_reason
               for l in result.reports["shift"].layers)
    ptx = "".join(nvcc_compile(source, "sm_90", "ptx").decode() for source in result.nvcc.sources)
    census = ptx_census(ptx)
    shift_kernels = {name: counts for name, counts in census.items() if "shift_gemm" in name}
    assert len(shift_kernels) == 6, sorted(census)  # one per distinct layer shape
    assert all(c["float_mul"] == 0 and c["mma"] == 0 and c["float_add"] > 0 for c in shift_kernels.values())
    assert any(c["float_mul"] > 0 for name, c in census.items() if "shift_gemm" not in name), \
        "the census does see the dense kernels' multiplies"


def test_inspect_shows_roles_and_onnx_names(models):
    result = run_saddc("inspect", models["deit"])
    assert result.returncode == 0, result.stderr
    assert "linear[0]  patch-embed 192 -> 32        input [1, 4, 4, 192]  /patch_embed/Conv" in result.stdout
    assert "qkv         32 -> 96  +bias  input [1, 17, 32]     /blocks/blocks.0/attn/qkv/MatMul" in result.stdout


@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["add-only", "decode-mma"])
def test_cuda_shift_module_runs_and_matches_onnxruntime(models, tmp_path, kernel):
    result = saddc.compile(models["deit-pow2"], target="cuda", shift=ShiftOptions("all", kernel=kernel),
                           output=tmp_path / "cuda.so")
    x = random_input(IMAGE, seed=12)
    (expected,) = ort_outputs(models["deit-pow2"], {"x": x})
    # decode-mma rounds activations to fp16; add-only is exact up to summation order.
    assert relative_error(run_module(result.output, x), expected) <= (2e-3 if kernel == "decode-mma" else TOLERANCE)
