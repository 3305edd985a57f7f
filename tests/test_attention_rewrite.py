"""--attention: softmax attention -> additive (match, shiftaddvit) or Taylor attention, and the
exact lowering of attention a model already computes with binary codes.

References: a replaced block is checked against the torch model whose attention cores
``saddc.nn.replace_attention`` swapped the same way (same SimHash hyperplanes); a lowered
binary-coded model against ONNX Runtime on that model itself.
"""

import json

import numpy as np
import pytest
import torch

import saddc
from conftest import ort_outputs, random_input, relative_error, run_module, run_saddc
from model_zoo import IMAGE, build
from saddc.census import ptx_census
from saddc.config import AttentionOptions, ShiftOptions
from saddc.errors import ConfigError
from saddc.frontends.torch_export import export_onnx
from saddc.nn import TaylorAttention, replace_attention, round_weights_to_shift

TOLERANCE = 1e-5
CASES = [  # (model, mode, form)
    ("deit", "additive", "match"), ("deit", "additive", "shiftaddvit"), ("deit", "taylor", "match"),
    ("pvt", "additive", "match"), ("pvt", "taylor", "match"),
]


def export(model, path, exporter="legacy", opset=17, dynamic_batch=False):
    return export_onnx(model, torch.from_numpy(random_input(IMAGE)), path, exporter, opset,
                       dynamic_batch=dynamic_batch)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("attention")
    deit, pvt, shared = build("deit-own-fused"), build("pvtv2-own"), build("deit-own-shared-qk")
    return {
        "root": root, "torch": {"deit": deit, "pvt": pvt, "deit-shared": shared},
        "deit": export(deit, root / "deit.onnx"),
        "pvt": export(pvt, root / "pvt.onnx"),
        "deit-shared": export(shared, root / "deit-shared.onnx"),
        "deit-batch": export(deit, root / "deit-batch.onnx", "dynamo", 18, dynamic_batch=True),
    }


def torch_reference(model, x, skip=(), **options):
    with torch.no_grad():
        return replace_attention(model, skip=skip, **options)(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("model,mode,form", CASES)
def test_replaced_attention_matches_the_torch_reference(models, tmp_path, model, mode, form):
    with pytest.warns(saddc.errors.SaddcWarning, match="synthetic"):
        result = saddc.compile(models[model], output=tmp_path / "m.so", attention=AttentionOptions(mode, form))
    report = result.reports["attention"]
    assert result.rewrites == ["attention"] and report.calibration.startswith("synthetic")
    assert [s.exactness for s in report.sites] == ["lossy", "lossy"]
    assert all(0.5 < s.output_cosine < 1.0 for s in report.sites), report.sites
    assert 0.5 < report.end_to_end["cosine"] < 1.0 and report.end_to_end["max_relative_error"] > 1e-4
    assert 0.0 <= report.end_to_end["top1_agreement"] <= 1.0
    x = random_input(IMAGE, seed=3)
    expected = torch_reference(models["torch"][model], x, mode=mode, form=form)
    assert relative_error(run_module(result.output, x), expected) <= TOLERANCE
    manifest = json.loads(result.output.with_suffix(".json").read_text())
    assert manifest["attention"]["mode"] == mode and len(manifest["attention"]["sites"]) == 2


def test_cli_additive_with_calibration_file_skip_and_own_hash(models, tmp_path):
    calibration, hash_file = tmp_path / "calib.npy", tmp_path / "hash.npz"
    np.save(calibration, random_input((3,) + IMAGE[1:], seed=5))
    projections = {"1": np.random.default_rng(9).standard_normal((16, 24)).astype("float32")}
    np.savez(hash_file, **projections)
    out = tmp_path / "m.so"
    result = run_saddc("compile", models["pvt"], "--attention", "additive", "--attention-skip", "first",
                       "--attention-hash", hash_file, "--calibration", calibration, "-o", out)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr
    assert "attention:         1 rewritten (0 lossless, 1 lossy), 1 kept" in result.stdout
    assert f"attn calibration:  {calibration}, 3 samples" in result.stdout
    assert "softmax[0] (heads 1, 64x16 tokens, dim 16): kept softmax; --attention-skip first" in result.stdout
    assert "softmax[1] (heads 2, 16x16 tokens, dim 16): additive match; 24 bits, hash.npz; output cosine" in result.stdout
    # The reference hashes block 1 with the same (one-for-every-head) projection.
    from saddc.nn import AdditiveAttention

    reference = replace_attention(models["torch"]["pvt"], skip={0, 1})
    reference.stages[1][0].attn.core = AdditiveAttention(torch.from_numpy(projections["1"])).eval()
    x = random_input(IMAGE, seed=6)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    assert relative_error(run_module(out, x), expected) <= TOLERANCE


def test_last_stage_keeps_softmax_and_shiftaddvit_skips_reduced_keys(models):
    lowered_report = saddc.compile(models["pvt"], attention=AttentionOptions(skip="last-stage", calibration=
                                                                             random_input(IMAGE, 1))).reports
    sites = lowered_report["attention"].sites
    assert [(s.stage, s.result) for s in sites] == [(0, "additive match"), (1, "kept softmax")]
    assert sites[1].note == "--attention-skip last-stage"
    report = saddc.compile(models["pvt"], attention=AttentionOptions(form="shiftaddvit", calibration=
                                                                     random_input(IMAGE, 1))).reports["attention"]
    assert report.sites[0].result == "kept softmax"
    assert "needs as many keys as queries (64 queries, 16 keys)" in report.sites[0].note
    assert report.sites[1].result == "additive shiftaddvit"


def test_shared_query_key_projection_is_hashed_once(models, tmp_path):
    result = saddc.compile(models["deit-shared"], output=tmp_path / "s.so", dump_ir=tmp_path / "ir",
                           attention=AttentionOptions(calibration=random_input(IMAGE, 2)))
    reparameterized = (tmp_path / "ir" / "02-reparameterize.py").read_text()
    assert reparameterized.count("R.call_tir(cls.binary_hash") == 2, "one hash a block, not one for Q and one for K"
    x = random_input(IMAGE, seed=7)
    expected = torch_reference(models["torch"]["deit-shared"], x)
    assert relative_error(run_module(result.output, x), expected) <= TOLERANCE


def test_exported_sdpa_with_zero_mask_and_nan_guard_is_rewritten(tmp_path, monkeypatch):
    """HF ViT through the dynamo exporter: scaled-dot-product attention with its all-zero mask,
    the NaN guard on the probabilities, and the scale split between Q and K. The reference is
    the same torch model with its scaled-dot-product attention computed as Taylor attention."""
    model = build("vit-hf")
    with torch.no_grad():  # scores large enough that Taylor attention differs from softmax, and
        for name, parameter in model.named_parameters():  # attention's output weighing on the logits
            if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight")):
                parameter.mul_(8.0)
    path = export(model, tmp_path / "vit.onnx", "dynamo", 18)
    result = saddc.compile(path, output=tmp_path / "vit.so",
                           attention=AttentionOptions("taylor", calibration=random_input((4,) + IMAGE[1:], 1)))
    report = result.reports["attention"]
    assert [s.result for s in report.sites] == ["taylor", "taylor"] and report.calibration.endswith("4 samples")

    def taylor_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
        assert (attn_mask is None or not attn_mask.any()) and dropout_p == 0.0 and not is_causal
        return TaylorAttention()(query, key, value, query.shape[-1] ** -0.5 if scale is None else scale)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", taylor_sdpa)
    x = random_input(IMAGE, seed=2)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert relative_error(run_module(result.output, x), expected) <= TOLERANCE
    (original,) = ort_outputs(path, {"x": x})
    assert relative_error(expected, original) > 1e-3, "the reference must differ from softmax attention"


def test_symbolic_batch(models, tmp_path):
    result = saddc.compile(models["deit-batch"], output=tmp_path / "b.so",
                           attention=AttentionOptions(calibration=random_input(IMAGE, 2)))
    x = random_input((3,) + IMAGE[1:], seed=8)
    expected = torch_reference(models["torch"]["deit"], x)
    assert relative_error(run_module(result.output, x), expected) <= TOLERANCE


def test_combined_with_shift(models, tmp_path):
    """--shift attn,mlp finds q/k/v/proj through the attention blocks, which the attention rewrite
    then replaces: both apply."""
    result = saddc.compile(models["deit"], output=tmp_path / "c.so",
                           shift=ShiftOptions("attn,mlp", lossy=True, calibration=random_input(IMAGE, 1)),
                           attention=AttentionOptions(calibration=random_input(IMAGE, 1)))
    assert result.rewrites == ["shift", "attention"]
    assert [l.role for l in result.reports["shift"].layers][:4] == ["qkv", "attn-proj", "mlp-fc1", "mlp-fc2"]
    x = random_input(IMAGE, seed=9)
    rounded = round_weights_to_shift(models["torch"]["deit"], include="blocks.*")
    expected = torch_reference(rounded, x)
    assert relative_error(run_module(result.output, x), expected) <= TOLERANCE


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    """Models fine-tuned (here: built) with binary-coded attention, exported as users would."""
    root = tmp_path_factory.mktemp("coded")
    made = {}
    for name, arch, form in [("deit-match", "deit-own-fused", "match"), ("deit-shiftaddvit", "deit-own-fused", "shiftaddvit"),
                             ("deit-shared", "deit-own-shared-qk", "shiftaddvit"), ("pvt-match", "pvtv2-own", "match")]:
        model = replace_attention(build(arch), "additive", form, seed=11)
        made[name] = export(model, root / f"{name}.onnx")
        made[f"{name}-dynamo"] = export(model, root / f"{name}-dyn.onnx", "dynamo", 18)
    return made


@pytest.mark.parametrize("name", ["deit-match", "deit-shiftaddvit-dynamo", "deit-shared", "pvt-match",
                                  "pvt-match-dynamo"])
def test_binary_coded_attention_lowers_exactly(coded, tmp_path, name):
    out = tmp_path / "coded.so"
    dump = tmp_path / "ir"
    result = run_saddc("compile", coded[name], "--attention", "additive", "-o", out, "--dump-ir", dump)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr, "a lossless lowering needs no calibration data"
    assert "attention:         2 rewritten (2 lossless, 0 lossy), 0 kept" in result.stdout
    assert "attn calibration:  not needed" in result.stdout
    assert result.stdout.count("lowered; 16 bits, model projection; exact; 1 masked sum(s), 1 code matmul(s)") == 2
    reparameterized = (dump / "02-reparameterize.py").read_text()
    assert "R.greater" not in reparameterized, "the float codes and their projection are gone"
    assert reparameterized.count("masked_sum") and reparameterized.count("code_matmul")
    x = random_input(IMAGE, seed=12)
    (expected,) = ort_outputs(coded[name], {"x": x})
    assert relative_error(run_module(out, x), expected) <= TOLERANCE


def test_cuda_builds_have_add_only_masked_sums(models, coded, tmp_path):
    from saddc.cuda import nvcc_compile

    # (model, options, whether saddc emits the normalization: not for a lowered model, which keeps its own)
    for source, options, normalizes in [
        (models["deit"], AttentionOptions(calibration=random_input(IMAGE, 1)), True),
        (models["pvt"], AttentionOptions("taylor", calibration=random_input(IMAGE, 1)), True),
        (coded["deit-shiftaddvit"], AttentionOptions(), False),
    ]:
        result = saddc.compile(source, target="cuda", output=tmp_path / "cuda.so", attention=options)
        ptx = "".join(nvcc_compile(s, "sm_90", "ptx").decode() for s in result.nvcc.sources)
        census = ptx_census(ptx)
        adds = {n: c for n, c in census.items() if "masked_sum" in n or "code_matmul" in n or "code_counts" in n}
        if options.mode == "additive":
            assert adds and all(c["float_mul"] == 0 and c["mma"] == 0 and c["float_add"] > 0 for c in adds.values())
        assert any("normalize" in n or "divide_rows" in n for n in census) == normalizes, sorted(census)


def test_requests_that_cannot_apply_are_clear_errors(models, tmp_path):
    with pytest.raises(ConfigError, match=r"--attention-skip '7' matches no attention block \(the model has 2"):
        saddc.compile(models["deit"], attention=AttentionOptions(skip="7"))
    with pytest.raises(ConfigError, match="every attention block is kept"):
        saddc.compile(models["deit"], attention=AttentionOptions(skip="first,last"))
    with pytest.raises(ConfigError, match="is not first, last, last-stage or a block index"):
        AttentionOptions(skip="middle")
    with pytest.raises(ConfigError, match="between 1 and 64"):
        AttentionOptions(bits=65)
    with pytest.raises(ConfigError, match="attention hash file not found"):
        AttentionOptions(hash=tmp_path / "missing.npy")
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((8, 16), "float32"))
    with pytest.raises(ConfigError, match=r"has shape \[1, 8, 16\]; attention block 0 needs .* head_dim 16"):
        saddc.compile(models["deit"], attention=AttentionOptions(hash=bad))
    result = run_saddc("compile", models["deit"], "--attention-bits", "8", "-o", tmp_path / "x.so")
    assert result.returncode == 2 and "need --attention additive|taylor" in result.stderr
    assert not (tmp_path / "x.so").exists()


def test_model_without_attention_is_a_clear_error(tmp_path):
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    path = export(mlp, tmp_path / "mlp.onnx")
    result = run_saddc("compile", path, "--attention", "taylor", "-o", tmp_path / "mlp.so")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "saddc: error: --attention taylor: the model has no softmax attention block saddc recognizes and no "
        "binary-coded attention (saddc inspect lists what it found)")
    assert "Traceback" not in result.stderr and not (tmp_path / "mlp.so").exists()


def test_inspect_lists_binary_coded_blocks(coded):
    result = run_saddc("inspect", coded["deit-match"])
    assert result.returncode == 0, result.stderr
    assert "softmax attention blocks: 0" in result.stdout
    assert "binary-coded attention blocks (lowered exactly by --attention): 2" in result.stdout
    assert "binary-coded[0]  2 code tensor(s)  16 bits  projection  2 matmul(s) over codes" in result.stdout


@pytest.mark.gpu
@pytest.mark.parametrize("mode,form", [("additive", "match"), ("additive", "shiftaddvit"), ("taylor", "match")])
def test_cuda_attention_module_runs_and_matches_torch(models, tmp_path, mode, form):
    result = saddc.compile(models["deit"], target="cuda", output=tmp_path / "cuda.so",
                           attention=AttentionOptions(mode, form, calibration=random_input(IMAGE, 1)))
    x = random_input(IMAGE, seed=13)
    expected = torch_reference(models["torch"]["deit"], x, mode=mode, form=form)
    assert relative_error(run_module(result.output, x), expected) <= TOLERANCE
