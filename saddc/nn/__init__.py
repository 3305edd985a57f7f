"""PyTorch modules and helpers for saddc's primitives (imports torch; the compiler does not).

Each computes what the matching saddc rewrite computes, so a torch model is both the reference a
compiled module is checked against and the starting point of fine-tuning (after which the
exported model lowers exactly):

- ``round_weights_to_shift``   linear weights rounded to powers of two, as ``--shift`` rounds them
- ``ShiftLinear``              a linear layer that trains with power-of-two weights
- ``MoELinear``                a top-1 Mult/Shift mixture with a learned router (the model-side
                               MoE that ``saddc compile`` lowers to its sparse dispatch)
- ``replace_linear_with_moe``  a model's linear layers (default: the MLPs') as ``MoELinear``
- ``calibrate_routers``        set the routers' biases so a given fraction of tokens goes to Shift
- ``balance_loss``, ``model_balance_loss``  ShiftAddViT's latency-aware load-balancing loss
- ``SoftmaxAttention``         the attention core ``softmax(Q K^T s) V`` of saddc's example models
- ``AdditiveAttention``        binary-coded linear attention (``--attention additive``)
- ``TaylorAttention``          first-order Taylor attention (``--attention taylor``)
- ``replace_attention``        swap a model's softmax cores, numbered as the compiler numbers blocks
"""

from saddc.nn.attention import AdditiveAttention, SoftmaxAttention, TaylorAttention, replace_attention
from saddc.nn.moe import (MoELinear, Routing, balance_loss, calibrate_routers, model_balance_loss,
                          replace_linear_with_moe)
from saddc.nn.shift import ShiftLinear, round_weights_to_shift, rounded_to_shift

__all__ = ["AdditiveAttention", "MoELinear", "Routing", "ShiftLinear", "SoftmaxAttention", "TaylorAttention",
           "balance_loss", "calibrate_routers", "model_balance_loss", "replace_attention", "replace_linear_with_moe",
           "round_weights_to_shift", "rounded_to_shift"]
