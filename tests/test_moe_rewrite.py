"""MoE: exported MoELinear models lowered exactly, and --moe building MoE layers from plain MLPs.

References: an exported MoE model is compared with the torch model it came from; a built MoE
(--moe) with the compute-both-and-select graph of the same routers (--moe-dispatch select),
and at shift ratios 0 and 1 with ONNX Runtime on the original model and on the model whose MLP
weights were rounded to powers of two.
"""

import numpy as np
import pytest
import torch
import tvm
import tvm_ffi

import saddc
from conftest import ort_outputs, random_input, relative_error, run_module, run_saddc
from model_zoo import IMAGE, build
from saddc.config import AttentionOptions, MoEOptions, ShiftOptions
from saddc.errors import ConfigError
from saddc.frontends import import_onnx, load_onnx
from saddc.frontends.torch_export import export_onnx
from saddc.nn import MoELinear, replace_linear_with_moe, round_weights_to_shift
from saddc.passes import DispatchHandScheduledKernels, find_linear_layers, find_moe_layers
from saddc.pipeline import cleanup_passes, run_phases
from saddc.schedules.rules import HAND_SCHEDULED, KERNEL_ATTR, KERNEL_PARAMS_ATTR
from saddc.target import parse_target
from test_api import small_mlp

TOLERANCE = 1e-5


def with_moe_mlps(model, seed=0):
    """``model`` with every MLP linear an MoELinear from its weights, routers drawn at random
    (std 0.5) so both experts get tokens."""
    torch.manual_seed(seed)
    model = replace_linear_with_moe(model)
    for module in model.modules():
        if isinstance(module, MoELinear):
            torch.nn.init.normal_(module.router.weight, std=0.5)
    return model.eval()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    example = torch.from_numpy(random_input((2,) + IMAGE[1:]))
    moe_deit = with_moe_mlps(build("deit-own-fused"))
    deit = build("deit-own-fused")
    return {
        "moe-deit": moe_deit,
        "moe-deit-legacy": export_onnx(moe_deit, example, root / "moe-legacy.onnx", "legacy", 17),
        "moe-deit-dynamo": export_onnx(moe_deit, example, root / "moe-dynamo.onnx", "dynamo", 18),
        "deit": export_onnx(deit, example, root / "deit.onnx", "legacy", 17),
        "deit-mlp-rounded": export_onnx(round_weights_to_shift(deit, include="*mlp.*"), example,
                                        root / "deit-mlp-rounded.onnx", "legacy", 17),
        "pvt": export_onnx(build("pvtv2-own"), torch.from_numpy(random_input(IMAGE)), root / "pvt.onnx", "legacy", 17),
        "x": example.numpy(),
    }


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_exported_moe_lowers_exactly_and_matches_torch(models, tmp_path, exporter):
    out = tmp_path / "moe.so"
    result = run_saddc("compile", models[f"moe-deit-{exporter}"], "-o", out)
    assert result.returncode == 0, result.stderr
    assert "moe layers:        4 (4 lowered from the model, lossless; 0 built, lossy), sparse dispatch" in result.stdout
    assert result.stdout.count("experts dense/shift, lossless, exact") == 4
    with torch.no_grad():
        expected = models["moe-deit"](torch.from_numpy(models["x"])).numpy()
    assert relative_error(run_module(out, models["x"]), expected) < TOLERANCE


def test_recognizer_finds_router_experts_and_roles(models):
    mod = import_onnx(load_onnx(models["moe-deit-legacy"])).mod
    mod = tvm.transform.Sequential(cleanup_passes(None))(mod)
    layers, unmatched = find_moe_layers(mod)
    assert len(layers) == 4 and not unmatched
    assert all(layer.router.role == "router" and layer.router.out_features == 2 for layer in layers)
    roles = [layer.role for layer in find_linear_layers(mod)]
    assert roles.count("router") == 4
    # The experts' outputs reach the GELU through the select between them.
    assert [expert.role for layer in layers for expert in layer.experts] == ["mlp-fc1"] * 2 + ["mlp-fc2"] * 2 + \
        ["mlp-fc1"] * 2 + ["mlp-fc2"] * 2


def test_shift_all_leaves_routers_alone(models, tmp_path):
    result = saddc.compile(models["moe-deit-legacy"], shift=ShiftOptions(layers="all", lossy=True,
                                                                         calibration=np.concatenate([models["x"]] * 2)))
    shifted = [layer.role for layer in result.reports["shift"].layers]
    assert "router" not in shifted and len(result.reports["moe"].layers) == 4


@pytest.fixture(scope="module")
def calibration(models):
    return np.random.default_rng(7).standard_normal((8,) + IMAGE[1:]).astype("float32")


def test_built_moe_equals_compute_both_and_select(models, tmp_path, calibration):
    outputs = {}
    for dispatch in ("sparse", "select"):
        result = saddc.compile(models["deit"], output=tmp_path / f"{dispatch}.so",
                               moe=MoEOptions(shift_ratio=0.5, calibration=calibration, dispatch=dispatch))
        outputs[dispatch] = run_module(tmp_path / f"{dispatch}.so", models["x"])
        report = result.reports["moe"]
        assert [layer.role for layer in report.layers] == ["mlp-fc1", "mlp-fc2"] * 2
        for layer in report.layers:
            assert abs(layer.shift_ratio - 0.5) < 0.05, "the router is fitted to the requested ratio"
            assert 0.9 < layer.output_cosine < 1.0
        assert 0.9 < report.end_to_end["cosine"] < 1.0
        assert f"built, lossy), {dispatch} dispatch" in "\n".join(result.summary_lines())
    assert relative_error(outputs["sparse"], outputs["select"]) < TOLERANCE


@pytest.mark.parametrize("ratio,reference", [(0.0, "deit"), (1.0, "deit-mlp-rounded")])
def test_ratio_zero_is_the_original_and_one_is_all_shift(models, tmp_path, calibration, ratio, reference):
    out = tmp_path / "m.so"
    result = saddc.compile(models["deit"], output=out, moe=MoEOptions(shift_ratio=ratio, calibration=calibration))
    assert all(layer.shift_ratio == ratio for layer in result.reports["moe"].layers)
    (expected,) = ort_outputs(models[reference], {"x": models["x"]})
    assert relative_error(run_module(out, models["x"]), expected) < TOLERANCE


def test_cli_moe_reports_ratio_and_error(models, tmp_path, calibration):
    np.save(tmp_path / "calibration.npy", calibration)
    result = run_saddc("compile", models["pvt"], "--moe", "mlp", "--moe-shift-ratio", "0.75",
                       "--calibration", tmp_path / "calibration.npy", "-o", tmp_path / "pvt.so")
    assert result.returncode == 0, result.stderr
    assert "moe layers:        4 (0 lowered from the model, lossless; 4 built, lossy), sparse dispatch" in result.stdout
    assert "moe end to end:    output cosine" in result.stdout
    assert result.stdout.count("of tokens to shift, output cosine") == 4


def test_cuda_builds(models, tmp_path, calibration):
    additive = AttentionOptions("additive", calibration=calibration)
    cases = (("moe-deit-legacy", {}), ("pvt", {"moe": MoEOptions(calibration=calibration, measure_error=False)}),
             ("deit", {"moe": MoEOptions(calibration=calibration)}),
             # The rewrites after the MoE passes measure their error on the CPU through the
             # dispatch's kernels, which are in their CPU form until the schedule phase.
             ("moe-deit-legacy", {"attention": additive}),
             ("deit", {"moe": MoEOptions(calibration=calibration), "attention": additive,
                       "shift": ShiftOptions("attn", lossy=True, calibration=calibration)}))
    for index, (name, options) in enumerate(cases):
        result = saddc.compile(models[name], target="cuda", output=tmp_path / f"{index}.so", **options)
        assert (tmp_path / f"{index}.so").exists() and result.reports["moe"].layers
        if options.get("moe") is not None and options["moe"].measure_error:
            assert 0.9 < result.reports["moe"].end_to_end["cosine"] < 1.0, "measured on the CPU with the CPU kernels"
    assert 0.9 < result.reports["attention"].end_to_end["cosine"] < 1.0


def test_dispatch_kernels_are_emitted_for_the_cpu_and_rebuilt_for_the_target(models):
    """The MoE passes emit the partition and segment kernels in their form for this machine's
    CPU; the schedule phase's first pass puts the target's form, built from the same
    parameters, in place: the CUDA form, or a CPU form tiled for the target's registers."""
    config = saddc.LowerConfig(target="cuda")
    reparameterized = run_phases(import_onnx(models["moe-deit-legacy"]).mod, config, until="reparameterize")
    kernels = {gvar.name_hint: func for gvar, func in reparameterized.functions_items()
               if isinstance(func, tvm.tirx.PrimFunc) and str(func.attrs.get(KERNEL_ATTR)) in HAND_SCHEDULED}
    assert {str(func.attrs[KERNEL_ATTR]) for func in kernels.values()} == set(HAND_SCHEDULED)
    assert not any("blockIdx" in func.script() for func in kernels.values())
    for target in (config.target, parse_target("llvm", "x86-64")):
        dispatched = DispatchHandScheduledKernels(target)(reparameterized)
        for name, emitted in kernels.items():
            params = {str(key): int(value) for key, value in emitted.attrs[KERNEL_PARAMS_ATTR].items()}
            target_form = HAND_SCHEDULED[str(emitted.attrs[KERNEL_ATTR])](**params, target=target.to_tvm())
            assert tvm_ffi.structural_equal(dispatched[name], target_form.with_attrs(dict(emitted.attrs)))
            assert ("blockIdx" in dispatched[name].script()) == target.is_cuda
    # The segment kernels' tiles differ between this machine's vector registers (AVX2 or AVX-512) and SSE's.
    sse = DispatchHandScheduledKernels(parse_target("llvm", "x86-64"))(reparameterized)
    segments = [name for name, func in kernels.items() if "segment" in str(func.attrs[KERNEL_ATTR])]
    assert segments and all(not tvm_ffi.structural_equal(sse[name], kernels[name]) for name in segments)


def test_dense_experts_read_their_weights_in_column_panels_on_the_cpu(models):
    """On the CPU the schedule phase packs each dense expert's constant weight into the column
    panels of its kernel's channel blocks (PackMatmulWeights): the segment kernels take
    (N / W, K, W); test_exported_moe_lowers_exactly_and_matches_torch runs them."""
    from saddc.schedules.segmented_gemm import cpu_panel  # pylint: disable=import-outside-toplevel

    config = saddc.LowerConfig()
    scheduled = run_phases(import_onnx(models["moe-deit-legacy"]).mod, config, until="schedule")
    dense = [func for func in scheduled.functions.values()
             if isinstance(func, tvm.tirx.PrimFunc) and str((func.attrs or {}).get(KERNEL_ATTR)) == "dense_segment"]
    assert dense
    for func in dense:
        params = {str(key): int(value) for key, value in func.attrs[KERNEL_PARAMS_ATTR].items()}
        panel = cpu_panel(params["out_features"], config.target.to_tvm())
        weight = tuple(int(dim) for dim in func.params[2].ty.shape)
        assert weight == (params["out_features"] // panel, params["in_features"], panel)


def test_bad_moe_requests_are_clear_errors(models, tmp_path):
    result = run_saddc("compile", models["deit"], "--moe-shift-ratio", "0.3")
    assert result.returncode != 0 and "need --moe GROUPS" in result.stderr and "Traceback" not in result.stderr
    result = run_saddc("compile", models["deit"], "--moe", "mlp", "--moe-shift-ratio", "1.5")
    assert result.returncode != 0 and "--moe-shift-ratio must be between 0 and 1, not 1.5" in result.stderr
    result = run_saddc("compile", models["deit"], "--moe", "mlp", "--shift", "mlp-fc1", "--shift-lossy")
    assert result.returncode != 0 and "--shift and --moe both select mlp-fc1 layers" in result.stderr
    mlp, _ = small_mlp()
    with pytest.raises(ConfigError, match=r"--moe qkv matches no layer in this model \(its linear layers are: head, mlp-fc1\)"):
        saddc.compile(mlp, moe=MoEOptions(layers="qkv"))
    with pytest.raises(ConfigError, match="unknown moe layer group 'fc'"):
        MoEOptions(layers="fc")


@pytest.mark.gpu
def test_cuda_moe_module_runs_and_matches_torch(models, tmp_path):
    out = tmp_path / "moe.so"
    saddc.compile(models["moe-deit-legacy"], target="cuda", output=out)
    with torch.no_grad():
        expected = models["moe-deit"](torch.from_numpy(models["x"])).numpy()
    assert relative_error(run_module(out, models["x"]), expected) < 1e-4


def test_layers_on_the_input_and_at_the_output(tmp_path):
    """A layer reading a function parameter is probed from the inputs; one bound to the
    function's output stays an output."""
    mlp, _ = small_mlp()
    x = np.random.default_rng(4).standard_normal((4, 16)).astype("float32")
    outputs = {}
    for dispatch in ("sparse", "select"):
        result = saddc.compile(mlp, output=tmp_path / f"{dispatch}.so", moe=MoEOptions(
            "all", shift_ratio=0.5, calibration=np.concatenate([x] * 4), dispatch=dispatch))
        assert [layer.role for layer in result.reports["moe"].layers] == ["mlp-fc1", "head"]
        (outputs[dispatch],) = saddc.load(tmp_path / f"{dispatch}.so")(x)
    assert relative_error(outputs["sparse"], outputs["select"]) < TOLERANCE
