"""saddc.nn's attention cores compute what the compiler's forms compute (the numpy references
in schedules/binary_codes.py), and train: the codes pass gradients straight through."""

import numpy as np
import pytest
import torch

from model_zoo import build
from saddc.nn import AdditiveAttention, SoftmaxAttention, TaylorAttention, replace_attention
from saddc.schedules import binary_codes


def qkv(queries=17, keys=9, dim=16, value_dim=8, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((2, 3, n, d)).astype("float32")
            for n, d in ((queries, dim), (keys, dim), (keys, value_dim))]


def groups(array):
    return array.reshape((-1,) + array.shape[2:])


@pytest.mark.parametrize("form,reference", [("match", binary_codes.match_attention),
                                            ("shiftaddvit", binary_codes.shiftaddvit_attention)])
def test_additive_core_matches_the_numpy_reference(form, reference):
    q, k, v = qkv(keys=17) if form == "shiftaddvit" else qkv()
    core = AdditiveAttention.simhash(3, 16, bits=16, seed=4, block=2, form=form).eval()
    out = core(*(torch.from_numpy(a) for a in (q, k, v))).numpy()
    projection = binary_codes.simhash_projection(4, 2, 3, 16, 16)
    np.testing.assert_allclose(groups(out), reference(groups(q), groups(k), groups(v), projection), atol=1e-5)


def test_taylor_and_softmax_cores_match_the_numpy_references():
    q, k, v = qkv()
    tensors = [torch.from_numpy(a) for a in (q, k, v)]
    np.testing.assert_allclose(groups(TaylorAttention()(*tensors, 0.25).numpy()),
                               binary_codes.taylor_attention(groups(q), groups(k), groups(v), 0.25), atol=1e-5)
    np.testing.assert_allclose(groups(SoftmaxAttention(3, 16)(*tensors, 0.25).numpy()),
                               binary_codes.softmax_attention(groups(q), groups(k), groups(v), 0.25), atol=1e-5)


def test_codes_are_hard_in_eval_and_pass_gradients_in_training():
    core = AdditiveAttention(torch.randn(3, 16, 16), learn_projection=True)
    q, k, v = (torch.from_numpy(a).requires_grad_() for a in qkv())
    codes = core.eval().codes(q)
    assert set(codes.unique().tolist()) <= {0.0, 1.0}
    core.train()(q, k, v).sum().backward()
    assert q.grad.abs().sum() > 0 and k.grad.abs().sum() > 0 and core.projection.grad.abs().sum() > 0


def test_shiftaddvit_form_needs_as_many_keys_as_queries():
    q, k, v = (torch.from_numpy(a) for a in qkv(queries=17, keys=9))
    with pytest.raises(ValueError, match=r"needs as many keys as queries \(17 queries, 9 keys\)"):
        AdditiveAttention.simhash(3, 16, form="shiftaddvit")(q, k, v)


def test_replace_attention_numbers_blocks_in_module_order_and_skips():
    model = build("pvtv2-own")
    replaced = replace_attention(model, "additive", bits=8, seed=5, skip={1})
    cores = [m for m in replaced.modules() if isinstance(m, (SoftmaxAttention, AdditiveAttention))]
    assert [type(c).__name__ for c in cores] == ["AdditiveAttention", "SoftmaxAttention"]
    np.testing.assert_array_equal(cores[0].projection.numpy(), binary_codes.simhash_projection(5, 0, 1, 16, 8))
    originals = [type(m).__name__ for m in model.modules() if isinstance(m, (SoftmaxAttention, AdditiveAttention))]
    assert originals == ["SoftmaxAttention"] * 2, "the model itself is left as it was"
    with pytest.raises(ValueError, match="mode must be additive or taylor"):
        replace_attention(model, "linear")
