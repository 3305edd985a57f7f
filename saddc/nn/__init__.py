"""PyTorch modules and helpers for saddc's primitives (imports torch; the compiler does not).

Each computes what the matching saddc rewrite computes, so a torch model is both the reference a
compiled module is checked against and the starting point of fine-tuning (after which the
exported model lowers exactly):

- ``round_weights_to_shift``   linear weights rounded to powers of two, as ``--shift`` rounds them
- ``SoftmaxAttention``         the attention core ``softmax(Q K^T s) V`` of saddc's example models
- ``AdditiveAttention``        binary-coded linear attention (``--attention additive``)
- ``TaylorAttention``          first-order Taylor attention (``--attention taylor``)
- ``replace_attention``        swap a model's softmax cores, numbered as the compiler numbers blocks
"""

from saddc.nn.attention import AdditiveAttention, SoftmaxAttention, TaylorAttention, replace_attention
from saddc.nn.shift import round_weights_to_shift

__all__ = ["AdditiveAttention", "SoftmaxAttention", "TaylorAttention", "replace_attention",
           "round_weights_to_shift"]
