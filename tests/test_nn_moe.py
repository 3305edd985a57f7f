"""saddc.nn's MoE side: ShiftLinear trains with the compiler's rounding, MoELinear's router
learns, the latency-aware loss moves tokens to the faster expert, and the export is standard ONNX."""

import numpy as np
import onnx
import pytest
import torch

from conftest import ort_outputs
from saddc.frontends.torch_export import export_onnx
from saddc.nn import (MoELinear, Routing, ShiftLinear, balance_loss, calibrate_routers, model_balance_loss,
                      rounded_to_shift)
from saddc.schedules import shift_codes


def test_shift_linear_rounds_like_the_compiler_and_trains_its_float_weights():
    torch.manual_seed(0)
    dense = torch.nn.Linear(12, 6)
    layer = ShiftLinear.from_linear(dense, bits=4).train()
    rounded = shift_codes.encode(dense.weight.detach().numpy().T, 4).decode().T
    np.testing.assert_array_equal(rounded_to_shift(dense.weight, 4).numpy(), rounded)
    x = torch.randn(5, 12)
    torch.testing.assert_close(layer(x), x @ torch.from_numpy(rounded).T + dense.bias, rtol=1e-6, atol=1e-6)
    layer(x).sum().backward()
    assert layer.weight.grad.abs().sum() > 0, "the straight-through estimator passes gradients"
    layer.eval()
    np.testing.assert_array_equal(layer.rounded_weight.numpy(), rounded)


def test_router_learns_and_the_gate_value_is_one():
    torch.manual_seed(1)
    moe = MoELinear(8, 4).train()
    x, target = torch.randn(64, 8), torch.randn(64, 4)
    with torch.no_grad():
        expected = torch.where(moe.router(x).argmax(-1, keepdim=True) == 0, moe.mult(x), moe.shift(x))
    torch.testing.assert_close(moe(x), expected)
    before = moe.router.weight.detach().clone()
    optimizer = torch.optim.SGD(moe.router.parameters(), lr=0.5)
    for _ in range(5):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(moe(x), target).backward()
        assert moe.router.weight.grad.abs().sum() > 0
        optimizer.step()
    assert not torch.equal(before, moe.router.weight)


def shift_fraction_after_balancing(latency, steps=150):
    torch.manual_seed(2)
    moe = MoELinear(16, 8).train()
    x = torch.randn(512, 16)
    optimizer = torch.optim.Adam(moe.router.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        moe(x)
        model_balance_loss(moe, latency).backward()
        optimizer.step()
    moe(x)
    return moe.shift_fraction()


def test_latency_weights_move_tokens_to_the_faster_expert():
    balanced = shift_fraction_after_balancing((1.0, 1.0))
    shift_faster = shift_fraction_after_balancing((3.0, 1.0))  # Mult three times slower
    mult_faster = shift_fraction_after_balancing((1.0, 3.0))
    assert abs(balanced - 0.5) < 0.1
    assert shift_faster > balanced + 0.1 and mult_faster < balanced - 0.1
    assert abs(shift_faster - 0.75) < 0.1, "latency * tokens equal: 3:1 latencies give 1:3 tokens"



@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.75, 1.0])
def test_calibrated_routers_send_the_ratio_of_tokens_to_shift_in_every_layer(ratio):
    torch.manual_seed(3)
    model = torch.nn.Sequential(MoELinear(8, 16), torch.nn.GELU(), MoELinear(16, 8))
    x = torch.randn(40, 5, 8)
    calibrate_routers(model, x, ratio)
    assert not model.training
    model.train()(x)
    for layer in (model[0], model[2]):
        assert abs(layer.shift_fraction() - ratio) <= 1 / 200  # one token of the 200
    with pytest.raises(ValueError, match="shift_ratio must be in"):
        calibrate_routers(model, x, 1.5)


def test_latencies_measured_from_compiled_kernels_set_the_split(tmp_path):
    from saddc.benchmarking import expert_latency  # the compiler: imported only here

    mult, shift = expert_latency(16, 8, tokens=512, repeat=3, build_dir=tmp_path)
    assert mult > 0 and shift > 0
    fraction = shift_fraction_after_balancing((mult, shift))
    assert abs(fraction - mult / (mult + shift)) < 0.1, (mult, shift, fraction)

def test_balance_loss_formula():
    probabilities = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    loss = balance_loss(Routing(probabilities, probabilities.argmax(-1)), (2.0, 1.0))
    weights = torch.tensor([4 / 3, 2 / 3])

    def cv2(v):
        return v.var(unbiased=False) / v.mean() ** 2

    expected = cv2(weights * probabilities.sum(0)) + cv2(weights * torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(loss, expected)


def test_model_balance_loss_needs_a_training_pass():
    with pytest.raises(RuntimeError, match="no MoELinear layer has routed tokens yet"):
        model_balance_loss(torch.nn.Sequential(MoELinear(4, 4)).eval(), (1.0, 1.0))


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_export_is_standard_onnx_with_router_argmax_and_both_experts(tmp_path, exporter):
    torch.manual_seed(3)
    moe = MoELinear(8, 6).eval()
    x = torch.randn(2, 5, 8)
    path = export_onnx(moe, x, tmp_path / "moe.onnx", exporter, 17 if exporter == "legacy" else 18)
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert {"ArgMax", "Where", "MatMul"} <= ops
    (ort,) = ort_outputs(path, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(ort, moe(x).numpy(), rtol=1e-5, atol=1e-5)
