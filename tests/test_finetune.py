"""saddc.finetune: every rewrite trains through its modules, exports, compiles through the exact
lowering paths, and the compiled module predicts what the fine-tuned torch model predicts."""

import numpy as np
import pytest
import torch

import saddc
from conftest import run_saddc, write_finetune_inputs
from model_zoo import build
from saddc import finetune
from saddc.frontends.torch_export import export_onnx
from saddc.nn import AdditiveAttention, MoELinear, ShiftLinear, TaylorAttention

IMAGES = 96


@pytest.fixture(scope="module")
def data():
    # Labels a small model can learn in one epoch: the sign of the image's mean.
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(IMAGES, 3, 32, 32, generator=generator) + torch.linspace(-1, 1, IMAGES)[:, None, None, None]
    return images, (images.mean(dim=(1, 2, 3)) > 0).long()


@pytest.mark.parametrize("rewrite", finetune.REWRITES)
def test_rewrite_finetunes_exports_and_compiles_exactly(rewrite, data, tmp_path):
    images, labels = data
    reparameterized = finetune.reparameterize(build("deit-own-fused"), rewrite)
    before = [p.detach().clone() for p in reparameterized.model.parameters()]
    history = finetune.finetune(reparameterized, images, labels, epochs=1, batch_size=32, progress=False)
    assert len(history.losses) == 1 and np.isfinite(history.losses[0])
    changed = [not torch.equal(a, b.detach()) for a, b in zip(before, reparameterized.model.parameters())]
    assert all(changed), "every parameter (projections and routers included) gets a gradient"
    if reparameterized.shift_ratio is not None:
        assert 0.0 <= history.shift_fractions[0] <= 1.0

    path = export_onnx(reparameterized.model, images, tmp_path / f"{rewrite}.onnx")
    result = saddc.compile(path, output=tmp_path / f"{rewrite}.so", **reparameterized.compile_options)
    expected_rewrites = {
        "original": [], "shift-mlp": ["shift"], "shift-all": ["shift"], "additive": ["attention"],
        "taylor": [], "moe-0.5": ["moe"], "moe-0.75": ["moe"], "shiftaddvit": ["moe", "attention", "shift"],
    }[rewrite]
    assert sorted(result.rewrites) == sorted(expected_rewrites)
    for name in ("shift", "attention"):
        if name in result.reports and hasattr(result.reports[name], "layers"):
            assert all(layer.exactness == "lossless" for layer in result.reports[name].layers)
    (logits,) = saddc.load(result.output)(images.numpy())
    torch_predictions = finetune.predict(reparameterized.model, images)
    np.testing.assert_array_equal(logits.argmax(-1), torch_predictions.numpy())


def test_reparameterize_uses_the_trainable_modules():
    model = build("deit-own-fused")
    kinds = {
        "shift-mlp": (ShiftLinear, 4), "shift-all": (ShiftLinear, 9), "additive": (AdditiveAttention, 2),
        "taylor": (TaylorAttention, 2), "moe-0.5": (MoELinear, 4),
    }
    for rewrite, (kind, count) in kinds.items():
        reparameterized = finetune.reparameterize(model, rewrite)
        assert sum(isinstance(m, kind) for m in reparameterized.model.modules()) == count, rewrite
    additive = finetune.reparameterize(model, "additive").model
    assert any(isinstance(p, torch.nn.Parameter) and p.ndim == 3 for p in additive.parameters())
    assert not any(isinstance(m, (ShiftLinear, MoELinear)) for m in model.modules()), "the input is not changed"
    with pytest.raises(ValueError, match="unknown rewrite 'shift-some'"):
        finetune.reparameterize(model, "shift-some")


def test_moe_routers_start_from_the_target_split_and_the_same_seed_gives_the_same_model(data):
    images, _ = data
    first = finetune.reparameterize(build("deit-own-fused"), "moe-0.75", calibration=images).model
    second = finetune.reparameterize(build("deit-own-fused"), "moe-0.75", calibration=images).model
    for a, b in zip(first.state_dict().values(), second.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    first.train()(images)
    fractions = [m.shift_fraction() for m in first.modules() if isinstance(m, MoELinear)]
    assert len(fractions) == 4 and all(abs(f - 0.75) < 0.01 for f in fractions)


def test_top1():
    assert finetune.top1([1, 2, 3, 4], [1, 2, 0, 0]) == 50.0


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory, data):
    images, labels = data
    return write_finetune_inputs(tmp_path_factory.mktemp("finetune-cli"), images.numpy(), labels.numpy(), 32)


def test_cli_finetunes_exports_and_prints_the_compile_command(cli_inputs, tmp_path):
    out = tmp_path / "vit_shift.onnx"
    result = run_saddc("finetune", f"{cli_inputs / 'vit.py'}:vit", "--weights", cli_inputs / "vit.pt",
                       "--data", cli_inputs / "data.npz", "--rewrite", "moe-0.75", "--epochs", "1", "-o", out)
    assert result.returncode == 0, result.stderr
    assert "test top-1:" in result.stdout and "after 1 epochs" in result.stdout
    assert "(target 75%)" in result.stdout
    assert f"compile with: saddc compile {out}" in result.stdout
    assert out.is_file() and not list(tmp_path.glob("*.data")), "one self-contained ONNX file"
    compiled = run_saddc("compile", out, "-o", tmp_path / "m.so")
    assert compiled.returncode == 0 and "rewrites applied:  moe" in compiled.stdout, compiled.stderr


@pytest.mark.parametrize("change,message", [
    ({"model": "{root}/vit.py:nothing"}, "has no function 'nothing'"),
    ({"model": "{root}/missing.py:vit"}, "a torch model is given as FILE.py:FACTORY"),
    ({"--data": "{root}/vit.pt"}, "lacks the arrays x_train"),
    ({"--data": "{root}/nothing.npz"}, "input file not found"),
    ({"--weights": "{root}/data.npz"}, "cannot load weights"),
    ({"--epochs": "0"}, "--epochs must be at least 1"),
    ({"-o": "{tmp}/m.so"}, "output must be an .onnx file"),
])
def test_cli_bad_input_is_one_line(cli_inputs, tmp_path, change, message):
    args = {"model": "{root}/vit.py:vit", "--weights": "{root}/vit.pt", "--data": "{root}/data.npz",
            "--rewrite": "shift-mlp", "--epochs": "1", "-o": "{tmp}/m.onnx"}
    args.update(change)
    argv = [args.pop("model")] + [item for pair in args.items() for item in pair]
    result = run_saddc("finetune", *[a.format(root=cli_inputs, tmp=tmp_path) for a in argv])
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "m.onnx").exists()
