"""saddc's Relax passes: one pass (or analysis) per module, named by what it does."""

from .apply_tuning_database import ApplyTuningDatabase, TuningReport
from .attention_report import AttentionReport, AttentionSite
from .build_moe_from_linear import BuildMoEFromLinear
from .clip_fast_mode_takes import ClipFastModeTakes
from .convert_to_float16 import ConvertToFloat16
from .dispatch_hand_scheduled_kernels import DispatchHandScheduledKernels
from .estimate_kernel_work import EstimateKernelWork, KernelWork
from .find_binary_codes import BinaryCodes, find_binary_codes
from .find_moe_layers import MoELayer, UnmatchedMoE, find_moe_layers
from .find_vit_blocks import (
    AttentionBlock, LinearLayer, SkippedSoftmax, find_attention_blocks, find_linear_layers,
    find_skipped_softmax,
)
from .fold_constant_broadcasts import FoldConstantBroadcasts
from .fold_constant_where import FoldConstantWhere
from .fuse_ops_separating_scalar_calls import FuseOpsSeparatingScalarCalls
from .lower_binary_coded_attention import LowerBinaryCodedAttention
from .lower_moe_dispatch import LowerMoEDispatch
from .mark_single_buffer_functions_noalias import MarkSingleBufferFunctionsNoAlias
from .moe_dispatch import MoEReport
from .pack_matmul_weights import PackMatmulWeights
from .replace_softmax_attention import ReplaceSoftmaxAttention
from .rewrite_linear_to_shift import RewriteLinearToShift, ShiftReport
from .rewrite_conv2d_to_matmul import RewriteConv2dToMatmul
from .rewrite_te_clip_to_relax_clip import RewriteTEClipToRelaxClip

__all__ = [
    "ApplyTuningDatabase", "AttentionBlock", "AttentionReport", "AttentionSite", "BinaryCodes",
    "BuildMoEFromLinear", "ClipFastModeTakes", "ConvertToFloat16", "DispatchHandScheduledKernels", "EstimateKernelWork",
    "FoldConstantBroadcasts", "FoldConstantWhere", "FuseOpsSeparatingScalarCalls", "KernelWork", "LinearLayer", "LowerBinaryCodedAttention", "LowerMoEDispatch",
    "MarkSingleBufferFunctionsNoAlias", "MoELayer", "MoEReport", "PackMatmulWeights",
    "ReplaceSoftmaxAttention", "RewriteConv2dToMatmul", "RewriteLinearToShift", "RewriteTEClipToRelaxClip",
    "ShiftReport", "SkippedSoftmax", "TuningReport", "UnmatchedMoE", "find_attention_blocks",
    "find_binary_codes", "find_linear_layers", "find_moe_layers", "find_skipped_softmax",
]
