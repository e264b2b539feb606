"""The operator vocabulary: every mapping from what a counter sees to the one label set the report uses.

Labels (``conv``, ``linear``, ``matmul``, ...) are split into the MAC core and conventions. Module types, public
torch functions, aten kernels and fvcore operator names all map here, so every counter books its MACs under the
same words. The reviewed list of zero-MAC kernels (what the reference may count as 0 without saying so) lives here
too, each group with its reason.

The torch-free part (labels, name tables, the zero list) is importable without torch, for reading and comparing
reports; :func:`module_operators` and :func:`function_labels` import torch when first called.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = [
    "ATEN_LABELS",
    "CALL_LABELS",
    "CONVENTION_OPERATORS",
    "CONVENTION_UNCOUNTED",
    "CORE_OPERATORS",
    "NO_FORMULA",
    "OPERATORS",
    "REVIEWED_UNCOUNTED",
    "ZERO_MAC_GROUPS",
    "ZERO_MAC_NAMESPACES",
    "ZERO_MAC_PREFIXES",
    "function_labels",
    "module_operators",
    "operator_of_aten",
    "operator_of_call",
    "operator_of_fvcore",
    "operator_of_module",
    "type_label",
    "zero_mac_reason",
]

#: Operators that make up the MAC core: every counter should agree on these.
CORE_OPERATORS: frozenset[str] = frozenset({"conv", "linear", "matmul", "einsum", "attention", "rnn"})
#: Operators whose cost is a convention (counters legitimately differ): shown, never flagged by default.
CONVENTION_OPERATORS: frozenset[str] = frozenset(
    {"norm", "activation", "pool", "softmax", "interpolate", "elementwise", "custom", "other"}
)
#: How an ``Uncounted.reason`` ends when the operator is a convention op (elementwise, norm, ...): gaps on the MAC
#: core do not name it.
CONVENTION_UNCOUNTED = "a convention op (elementwise, norm, ...)"
#: How the torch counter's ``Uncounted.reason`` starts for a kernel it ran with no formula (MACs nobody measured).
NO_FORMULA = "no formula"
#: Every label a counter may book MACs under.
OPERATORS: frozenset[str] = CORE_OPERATORS | CONVENTION_OPERATORS

# ------------------------------------------------------------------------------------------------ aten kernels
#: Label of every kernel the torch counter has a formula for (torch's own and ours), by packet name. A packet
#: ``aten.x`` is named ``x``; other namespaces keep theirs (``quantized::linear_dynamic``).
ATEN_LABELS: dict[str, str] = {
    # matrix products that nn.Linear / F.linear lower to
    "mm": "linear",
    "addmm": "linear",
    "addmm_": "linear",
    "_addmm_activation": "linear",
    "_int_mm": "linear",
    "_scaled_mm": "linear",
    "_scaled_mm_v2": "linear",
    "mkldnn_linear": "linear",
    "_mixed_dtypes_linear": "linear",
    "_weight_int8pack_mm": "linear",
    "quantized::linear_dynamic": "linear",
    "quantized::linear_relu_dynamic": "linear",
    "quantized::linear_dynamic_fp16": "linear",
    "quantized::linear_relu_dynamic_fp16": "linear",
    "quantized::linear": "linear",
    "quantized::linear_relu": "linear",
    # batched and vector products
    "bmm": "matmul",
    "baddbmm": "matmul",
    "baddbmm_": "matmul",
    "addbmm": "matmul",
    "addbmm_": "matmul",
    "mv": "matmul",
    "addmv": "matmul",
    "addmv_": "matmul",
    "dot": "matmul",
    "vdot": "matmul",
    "addr": "matmul",
    "addr_": "matmul",
    "_grouped_mm": "matmul",
    "_scaled_grouped_mm": "matmul",
    "_scaled_grouped_mm_v2": "matmul",
    "_foreach_mm": "matmul",
    # convolutions
    "convolution": "conv",
    "_convolution": "conv",
    "convolution_backward": "conv",
    "convolution_overrideable": "conv",
    "cudnn_convolution": "conv",
    "_slow_conv2d_forward": "conv",
    # attention kernels
    "_scaled_dot_product_efficient_attention": "attention",
    "_scaled_dot_product_efficient_attention_backward": "attention",
    "_scaled_dot_product_flash_attention": "attention",
    "_scaled_dot_product_flash_attention_backward": "attention",
    "_scaled_dot_product_cudnn_attention": "attention",
    "_scaled_dot_product_cudnn_attention_backward": "attention",
    "_scaled_dot_product_flash_attention_for_cpu": "attention",
    "_scaled_dot_product_flash_attention_for_cpu_backward": "attention",
    "_scaled_dot_product_fused_attention_overrideable": "attention",
    "_scaled_dot_product_fused_attention_overrideable_backward": "attention",
    "_flash_attention_forward": "attention",
    "_flash_attention_backward": "attention",
    "_efficient_attention_forward": "attention",
    "_efficient_attention_backward": "attention",
    "_cudnn_attention_forward": "attention",
    "_cudnn_attention_backward": "attention",
    "_native_multi_head_attention": "attention",
    "_triton_multi_head_attention": "attention",
    "_triton_scaled_dot_attention": "attention",
    "flex_attention": "attention",
    "flex_attention_backward": "attention",
    # recurrences
    "mkldnn_rnn_layer": "rnn",
    "mkldnn_rnn_layer_backward": "rnn",
    "_cudnn_rnn": "rnn",
    "_cudnn_rnn_backward": "rnn",
    "miopen_rnn": "rnn",
    "miopen_rnn_backward": "rnn",
}


def operator_of_aten(name: str) -> str:
    """The label of a counted kernel by packet name (``mm`` -> ``linear``); ``other`` when it is not in the table.

    Args:
        name: packet name, ``aten.`` dropped (``_grouped_mm``) or namespaced (``quantized::linear_dynamic``).
    """
    return ATEN_LABELS.get(name.removeprefix("aten."), "other")


# -------------------------------------------------------------------------------------------------- zero list
#: Reviewed kernels that do no multiply-accumulate, by group, each with the reason the reference counts them as 0.
#: A kernel the torch counter sees that has no formula and is not here (nor tagged pointwise, nor a view) is listed
#: in ``uncounted``. Names are packet names without ``aten.``; other namespaces are written ``ns::name``.
def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


ZERO_MAC_GROUPS: tuple[tuple[str, frozenset[str]], ...] = (
    (
        "view or metadata: no arithmetic",
        _names(
            "view _unsafe_view _cslt_sparse_mm_search transpose_ t_ squeeze_ unsqueeze_ as_strided_ swapdims_ "
            "swapaxes_ detach_ unsafe_split unsafe_split_with_sizes unsafe_chunk reshape _reshape_alias "
            "as_strided expand expand_as permute transpose t unsqueeze squeeze select slice narrow split "
            "split_with_sizes unbind chunk alias detach view_as_real view_as_complex unfold diagonal movedim "
            "flatten unflatten lift_fresh lift _nested_view_from_buffer size sym_size stride sym_stride numel "
            "sym_numel dim storage_offset sym_storage_offset is_contiguous sym_is_contiguous "
            "is_strides_like_format is_non_overlapping_and_dense prim::device prim::layout _local_scalar_dense "
            "item is_nonzero equal _assert_async _functional_assert_async _assert_tensor_metadata _assert_scalar "
            "sym_constrain_range sym_constrain_range_for_size record_stream _has_compatible_shallow_copy_type "
            "resize_ resize_as_ set_ _version"
        ),
    ),
    (
        "copy or dtype/device move: no arithmetic",
        _names(
            "clone copy_ _to_copy _copy_from _copy_from_and_resize contiguous to lift_fresh_copy _to_dense "
            "to_dense to_sparse _to_sparse expand_copy permute_copy transpose_copy view_copy t_copy "
            "unsqueeze_copy squeeze_copy select_copy slice_copy split_copy split_with_sizes_copy unbind_copy "
            "alias_copy detach_copy as_strided_copy diagonal_copy narrow_copy _unsafe_view_copy "
            "quantize_per_tensor quantize_per_tensor_dynamic quantize_per_channel dequantize q_scale q_zero_point "
            "q_per_channel_scales q_per_channel_zero_points int_repr _make_per_tensor_quantized_tensor "
            "fbgemm_pack_quantized_matrix fbgemm_pack_gemm_matrix_fp16 fbgemm_linear_quantize_weight "
            "_convert_weight_to_int4pack _convert_weight_to_int4pack_for_cpu _cudnn_rnn_flatten_weight "
            "mkldnn_reorder_conv2d_weight mkldnn_reorder_conv3d_weight _wrapped_linear_prepack "
            "quantized::linear_prepack quantized::linear_prepack_fp16 quantized::linear_unpack "
            "quantized::linear_unpack_fp16 quantized::conv2d_prepack quantized::conv_prepack"
        ),
    ),
    (
        "factory or random fill: no arithmetic on inputs",
        _names(
            "empty empty_like empty_strided empty_permuted zeros zeros_like ones ones_like full full_like "
            "new_empty new_empty_strided new_zeros new_ones new_full arange linspace logspace eye scalar_tensor "
            "randn randn_like rand rand_like randint randint_like randperm normal normal_ uniform_ bernoulli "
            "bernoulli_ native_dropout native_dropout_backward fill fill_ zero_ tril_indices triu_indices "
            "exponential_ random_ multinomial _efficientzerotensor hamming_window hann_window _fused_dropout "
            "_masked_scale"
        ),
    ),
    (
        "indexing, gathering, padding, ordering: data movement and comparisons",
        _names(
            "cat stack index index_select _convert_indices_from_coo_to_csr _convert_indices_from_csr_to_coo "
            "index_put index_put_ _index_put_impl_ _unsafe_index _unsafe_index_put _unsafe_masked_index "
            "_unsafe_masked_index_put_accumulate gather scatter scatter_ scatter_add scatter_add_ scatter_reduce "
            "scatter_reduce_ masked_fill masked_fill_ masked_scatter masked_select where nonzero nonzero_static "
            "embedding embedding_dense_backward embedding_backward _embedding_bag _embedding_bag_forward_only "
            "_embedding_bag_backward embedding_renorm_ repeat repeat_interleave flip roll tril triu tril_ triu_ "
            "constant_pad_nd reflection_pad1d reflection_pad2d reflection_pad3d replication_pad1d "
            "replication_pad2d replication_pad3d _pad_circular index_add index_add_ index_copy index_copy_ "
            "index_fill index_fill_ take one_hot bucketize searchsorted _unique2 unique_dim unique_consecutive "
            "sort topk argsort slice_scatter select_scatter diagonal_scatter as_strided_scatter col2im im2col "
            "pixel_shuffle pixel_unshuffle channel_shuffle native_channel_shuffle select_backward slice_backward "
            "index_select_backward unfold_backward diagonal_backward bincount histc masked_fill_backward "
            "_pack_padded_sequence _pad_packed_sequence reflection_pad2d_backward replication_pad2d_backward "
            "constant_pad_nd_backward"
        ),
    ),
    (
        "reduction: additions only (no multiply-accumulate)",
        _names(
            "sum mean prod amax amin max min argmax argmin any all var var_mean std std_mean norm "
            "linalg_vector_norm cumsum cumsum_ cumprod logsumexp count_nonzero aminmax median nanmedian mode "
            "kthvalue nansum _cummax_helper _cummin_helper cummax cummin logcumsumexp max_unary min_unary"
        ),
    ),
    (
        "normalisation: a convention (torch counts 0; thop 4 and fvcore 2-5 per element)",
        _names(
            "native_layer_norm native_layer_norm_backward native_batch_norm native_batch_norm_backward "
            "_native_batch_norm_legit _native_batch_norm_legit_no_training _native_batch_norm_legit_functional "
            "native_group_norm native_group_norm_backward _fused_rms_norm _fused_rms_norm_backward "
            "batch_norm_backward _batch_norm_with_update _batch_norm_with_update_functional _batch_norm_no_update "
            "batch_norm_elemt batch_norm_stats batch_norm_gather_stats batch_norm_gather_stats_with_counts "
            "batch_norm_backward_reduce batch_norm_backward_elemt batch_norm_update_stats cudnn_batch_norm "
            "cudnn_batch_norm_backward miopen_batch_norm miopen_batch_norm_backward _weight_norm_interface "
            "_weight_norm_interface_backward native_norm renorm quantized::layer_norm quantized::instance_norm"
        ),
    ),
    (
        "softmax: a convention (exp and a sum per element)",
        _names(
            "_softmax _log_softmax _softmax_backward_data _log_softmax_backward_data _safe_softmax "
            "_masked_softmax _masked_softmax_backward"
        ),
    ),
    (
        "pooling and resampling: a convention (comparisons or weighted sums of neighbours)",
        _names(
            "max_pool2d_with_indices max_pool3d_with_indices max_pool2d_with_indices_backward "
            "max_pool3d_with_indices_backward avg_pool2d avg_pool3d avg_pool2d_backward avg_pool3d_backward "
            "_adaptive_avg_pool2d _adaptive_avg_pool2d_backward _adaptive_avg_pool3d "
            "_adaptive_avg_pool3d_backward adaptive_max_pool2d adaptive_max_pool2d_backward adaptive_max_pool3d "
            "adaptive_max_pool3d_backward max_pool1d_with_indices mkldnn_max_pool2d mkldnn_max_pool3d "
            "mkldnn_adaptive_avg_pool2d upsample_nearest1d upsample_nearest2d upsample_nearest3d "
            "upsample_nearest1d_backward upsample_nearest2d_backward upsample_nearest3d_backward "
            "_upsample_nearest_exact1d _upsample_nearest_exact2d _upsample_nearest_exact3d "
            "_upsample_nearest_exact2d_backward upsample_linear1d upsample_bilinear2d upsample_bicubic2d "
            "upsample_trilinear3d upsample_linear1d_backward upsample_bilinear2d_backward "
            "upsample_bicubic2d_backward upsample_trilinear3d_backward _upsample_bilinear2d_aa "
            "_upsample_bilinear2d_aa_backward _upsample_bicubic2d_aa _upsample_bicubic2d_aa_backward "
            "grid_sampler_2d grid_sampler_3d grid_sampler_2d_backward grid_sampler_3d_backward "
            "quantized::max_pool2d"
        ),
    ),
    (
        "loss: a convention (elementwise terms and a reduction)",
        _names(
            "nll_loss_forward nll_loss_backward nll_loss2d_forward nll_loss2d_backward mse_loss mse_loss_backward "
            "binary_cross_entropy binary_cross_entropy_backward binary_cross_entropy_with_logits smooth_l1_loss "
            "smooth_l1_loss_backward huber_loss huber_loss_backward kl_div soft_margin_loss "
            "soft_margin_loss_backward multi_margin_loss multilabel_margin_loss_forward _ctc_loss "
            "_ctc_loss_backward"
        ),
    ),
    (
        "elementwise: a convention (one operation per element; kernels torch does not tag pointwise)",
        _names(
            "floor_divide floor_divide_ isin polar complex conj_physical relu relu_ gelu gelu_backward silu silu_ "
            "silu_backward hardswish hardswish_ hardswish_backward hardsigmoid hardsigmoid_backward hardtanh "
            "hardtanh_ hardtanh_backward mish mish_backward elu elu_ elu_backward leaky_relu leaky_relu_ "
            "leaky_relu_backward softplus softplus_backward log_sigmoid_forward log_sigmoid_backward threshold "
            "threshold_backward sigmoid_backward tanh_backward logit_backward _thnn_fused_lstm_cell "
            "_thnn_fused_lstm_cell_backward _thnn_fused_lstm_cell_backward_impl _thnn_fused_gru_cell "
            "_thnn_fused_gru_cell_backward _thnn_differentiable_lstm_cell_backward "
            "_thnn_differentiable_gru_cell_backward glu glu_backward prelu _prelu_kernel _prelu_kernel_backward "
            "rrelu_with_noise _standard_gamma _standard_gamma_grad cummaxmin_backward _fused_adam_ _fused_adamw_ "
            "_fused_sgd_ _fused_adagrad_ _amp_foreach_non_finite_check_and_unscale_ _amp_update_scale_ "
            "quantized::add quantized::mul quantized::relu6 quantized::hardswish quantized::elu "
            "quantized::leaky_relu quantized::sigmoid quantized::cat"
        ),
    ),
)

#: Prefixes of zero-MAC kernel families, with the reason.
ZERO_MAC_PREFIXES: tuple[tuple[str, str], ...] = (
    ("_foreach_", "elementwise over a list of tensors (optimizer updates): a convention"),
    ("_nested_", "nested-tensor bookkeeping: no arithmetic"),
    ("_record_function", "profiler marker: no arithmetic"),
)

#: Namespaces whose kernels do no multiply-accumulate, with the reason.
ZERO_MAC_NAMESPACES: dict[str, str] = {
    "c10d": "communication: no arithmetic on this rank's model",
    "_c10d_functional": "communication: no arithmetic on this rank's model",
    "_c10d_functional_autograd": "communication: no arithmetic on this rank's model",
    "profiler": "profiler marker: no arithmetic",
    "debugprims": "debugging marker: no arithmetic",
}

#: Reviewed kernels that do real multiply-accumulates but have no formula (packed or sparse operands whose dense
#: shape is not in the schema). They are never counted as 0 in silence: the torch counter lists them in
#: ``uncounted`` with this reason.
REVIEWED_UNCOUNTED: dict[str, str] = {
    "_cslt_sparse_mm": "2:4 sparse product, compressed operand: no formula",
    "_sparse_semi_structured_mm": "2:4 sparse product, compressed operand: no formula",
    "_sparse_semi_structured_addmm": "2:4 sparse product, compressed operand: no formula",
    "_sparse_semi_structured_linear": "2:4 sparse product, compressed operand: no formula",
    "_sparse_mm": "sparse product, nnz-dependent: no formula",
    "_sparse_addmm": "sparse product, nnz-dependent: no formula",
    "_sparse_sparse_matmul": "sparse product, nnz-dependent: no formula",
    "_sparse_mm_reduce_impl": "sparse product, nnz-dependent: no formula",
    "_sparse_mm_reduce_impl_backward": "sparse product, nnz-dependent: no formula",
    "hspmm": "sparse product, nnz-dependent: no formula",
    "sspaddmm": "sparse product, nnz-dependent: no formula",
    "smm": "sparse product, nnz-dependent: no formula",
    "sparse_sampled_addmm": "sparse product, nnz-dependent: no formula",
    "_weight_int4pack_mm": "int4-packed weight: no formula",
    "_weight_int4pack_mm_for_cpu": "int4-packed weight: no formula",
    "_weight_int4pack_mm_with_scales_and_zeros": "int4-packed weight: no formula",
    "_dyn_quant_matmul_4bit": "4-bit packed weight: no formula",
    "fbgemm_linear_int8_weight": "packed int8 weight: no formula",
    "fbgemm_linear_int8_weight_fp32_activation": "packed int8 weight: no formula",
    "fbgemm_linear_fp16_weight": "packed fp16 weight: no formula",
    "fbgemm_linear_fp16_weight_fp32_activation": "packed fp16 weight: no formula",
    "_wrapped_quantized_linear_prepacked": "packed int8 weight: no formula",
    "_lstm_mps": "MPS LSTM kernel (weights as a flat list): no formula",
    "lstm_mps_backward": "MPS LSTM kernel (weights as a flat list): no formula",
    "_trilinear": "bilinear form (nn.Bilinear): no formula",
    "_compute_linear_combination": "linear combination of tensors: no formula",
    "linear_backward": "nested/oneDNN linear backward: no formula",
    "matmul_backward": "nested-tensor matmul backward: no formula",
    "quantized_lstm": "legacy quantized LSTM (packed weights): no formula",
    "quantized_gru": "legacy quantized GRU (packed weights): no formula",
    "conv_tbc": "time-batch-channel convolution: no formula",
    "conv_tbc_backward": "time-batch-channel convolution: no formula",
    "_conv_depthwise2d": "CUDA depthwise convolution, reached through convolution (counted there)",
    "conv_depthwise3d": "CUDA depthwise convolution, reached through convolution (counted there)",
    "_convolution_double_backward": "double backward of a convolution: no formula",
    "_nnpack_spatial_convolution": "NNPACK convolution: no formula",
    "slow_conv3d_forward": "reached through convolution (counted there)",
    "slow_conv_dilated2d": "reached through convolution (counted there)",
    "slow_conv_dilated3d": "reached through convolution (counted there)",
    "slow_conv_transpose2d": "reached through convolution (counted there)",
    "slow_conv_transpose3d": "reached through convolution (counted there)",
    "_slow_conv2d_backward": "reached through convolution_backward (counted there)",
    "mkldnn_convolution": "reached through convolution (counted there)",
    "miopen_convolution": "reached through convolution (counted there)",
    "miopen_convolution_transpose": "reached through convolution (counted there)",
    "miopen_depthwise_convolution": "reached through convolution (counted there)",
    "miopen_convolution_relu": "fused convolution: no formula",
    "miopen_convolution_add_relu": "fused convolution: no formula",
    "cudnn_convolution_transpose": "reached through convolution (counted there)",
    "cudnn_convolution_relu": "fused convolution: no formula",
    "cudnn_convolution_add_relu": "fused convolution: no formula",
    "convolution_backward_overrideable": "out-of-tree backend convolution backward: no formula",
    "_mps_convolution": "reached through convolution (counted there)",
    "_mps_convolution_transpose": "reached through convolution (counted there)",
    "mps_convolution_backward": "reached through convolution_backward (counted there)",
    "mps_convolution_transpose_backward": "reached through convolution_backward (counted there)",
    "mkldnn_linear_backward": "oneDNN linear backward: no formula",
    "mkldnn_linear_backward_input": "oneDNN linear backward: no formula",
    "mkldnn_linear_backward_weights": "oneDNN linear backward: no formula",
    "_flash_attention_forward_no_dropout_inplace": "in-place flash attention: no formula",
    "_scaled_dot_product_attention_math_for_mps": "MPS attention kernel: no formula",
    "quantized::conv2d": "quantized convolution (packed weight): no formula",
    "quantized::conv2d_relu": "quantized convolution (packed weight): no formula",
    "quantized::conv1d": "quantized convolution (packed weight): no formula",
    "quantized::conv3d": "quantized convolution (packed weight): no formula",
    "quantized::conv2d_dynamic": "quantized convolution (packed weight): no formula",
    "quantized::conv_transpose2d": "quantized convolution (packed weight): no formula",
}


def zero_mac_reason(name: str) -> str | None:
    """The reviewed reason why the kernel ``name`` does no multiply-accumulate, or ``None`` when it is not listed.

    Args:
        name: packet name without ``aten.`` (``view``), or ``ns::name`` for other namespaces.
    """
    for reason, names in ZERO_MAC_GROUPS:
        if name in names:
            return reason
    namespace, _, bare = name.rpartition("::")
    if namespace in ZERO_MAC_NAMESPACES:
        return ZERO_MAC_NAMESPACES[namespace]
    for prefix, reason in ZERO_MAC_PREFIXES:
        if bare.startswith(prefix) and bare != "_foreach_mm":
            return reason
    return None


# ----------------------------------------------------------------------------------------------- fvcore names
def operator_of_fvcore(name: str) -> str:
    """Map an fvcore operator name (``conv``, ``addmm``, ``batch_norm``, ``upsample_bilinear2d``, ...) to ours."""
    name = name.removeprefix("aten::")
    if "conv" in name:
        return "conv"
    if name in ("linear", "addmm", "mm"):
        return "linear"
    if name in ("matmul", "bmm", "baddbmm") or "grouped_mm" in name:
        return "matmul"
    if name == "einsum":
        return "einsum"
    if "attention" in name:
        return "attention"
    if name in ("lstm", "gru", "rnn_tanh", "rnn_relu") or "rnn" in name:
        return "rnn"
    if "norm" in name:
        return "norm"
    if "upsample" in name or "interpolate" in name:
        return "interpolate"
    if "pool" in name:
        return "pool"
    if "softmax" in name:
        return "softmax"
    if name in ("relu", "gelu", "silu", "sigmoid", "tanh", "elu", "leaky_relu", "hardswish", "prelu"):
        return "activation"
    return "other"


def type_label(cls: type) -> str:
    """How reports name a module class: by its name (``LayerNorm``, ``Experts``), except a class outside torch that
    is named like one of ``torch.nn``'s, which gets its module too (``mypkg.blocks.LayerNorm``), so that a user's
    class never reads as torch's.

    Args:
        cls: the class (``type(module)``).
    """
    module = getattr(cls, "__module__", None) or ""
    if module == "torch" or module.startswith("torch.") or not module or cls.__qualname__ not in _torch_nn_names():
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


@functools.cache
def _torch_nn_names() -> frozenset[str]:
    """The names of ``torch.nn``'s public classes (imports torch; called with a class in hand, so torch is loaded)."""
    from torch import nn

    return frozenset(name for name in dir(nn) if isinstance(getattr(nn, name, None), type))


# ------------------------------------------------------------------------------------- torch modules, functions
@functools.cache
def module_operators() -> tuple[tuple[tuple[type, ...], str], ...]:
    """Module types and their labels, most specific first (imports torch)."""
    from torch import nn

    from lightning_flops._compat import conv_module_types, norm_module_types, pool_module_types

    quantized_linear: tuple[type, ...] = ()
    try:  # dynamic/static int8 Linear (torch.ao, torch 2.13)
        from torch.ao.nn.quantized import Linear as QLinear
        from torch.ao.nn.quantized.dynamic import Linear as DynamicQLinear

        quantized_linear = (QLinear, DynamicQLinear)
    except ImportError:  # pragma: no cover - a torch without torch.ao
        pass
    return (
        (conv_module_types(), "conv"),
        ((nn.Linear, nn.Bilinear, *quantized_linear), "linear"),
        ((nn.MultiheadAttention,), "attention"),
        ((nn.RNNBase, nn.RNNCellBase), "rnn"),
        (
            (
                *norm_module_types(),
                nn.LayerNorm,
                nn.GroupNorm,
                nn.LocalResponseNorm,
                *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
            ),
            "norm",
        ),
        ((nn.Softmax, nn.LogSoftmax, nn.Softmin), "softmax"),
        (
            (*pool_module_types(),),
            "pool",
        ),
        ((nn.Upsample, nn.PixelShuffle), "interpolate"),
        (
            (
                nn.ReLU,
                nn.ReLU6,
                nn.LeakyReLU,
                nn.PReLU,
                nn.GELU,
                nn.SiLU,
                nn.Sigmoid,
                nn.Tanh,
                nn.Hardswish,
                nn.Hardsigmoid,
                nn.ELU,
                nn.Mish,
            ),
            "activation",
        ),
    )


def operator_of_module(module: Any) -> str:
    """The label of a module type (``conv``, ``linear``, ``norm``, ...); ``other`` when unknown."""
    for types, operator in module_operators():
        if isinstance(module, types):
            return operator
    return "other"


@functools.cache
def function_labels() -> dict[Any, str]:
    """Public torch functions and their labels (imports torch); the outermost labelled call names its kernels."""
    import torch
    import torch.nn.functional as F

    from lightning_flops._compat import private_torch_functions

    private = private_torch_functions()
    candidates = {
        "einsum": [torch.einsum],
        "matmul": [
            torch.matmul,
            torch.bmm,
            torch.mm,
            torch.baddbmm,
            torch.addmm,
            torch.Tensor.matmul,
            torch.Tensor.__matmul__,
            torch.Tensor.__rmatmul__,
            torch.Tensor.bmm,
            torch.Tensor.mm,
            getattr(F, "grouped_mm", None),
            private.get("_grouped_mm"),
        ],
        "linear": [F.linear, F.bilinear],
        "conv": [F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d],
        "attention": [
            F.scaled_dot_product_attention,
            F.multi_head_attention_forward,
            private.get("_native_multi_head_attention"),
        ],
    }
    labels: dict[Any, str] = {}
    for label, functions in candidates.items():
        for function in functions:
            if function is not None:
                labels[function] = label
    return labels


# ------------------------------------------------------------------------------------------ profiled aten calls
#: Label of an aten operator that a model's code calls directly, as torch.profiler records it (``aten::einsum``):
#: the aten names of the public functions in :func:`function_labels`, so that a call is booked under the label the
#: torch counter books its MACs under (``torch.addmm`` is ``matmul`` there, as ``torch.mm``; ``F.linear`` is
#: ``linear``).
CALL_LABELS: dict[str, str] = {
    "einsum": "einsum",
    "matmul": "matmul",
    "bmm": "matmul",
    "mm": "matmul",
    "baddbmm": "matmul",
    "addmm": "matmul",
    "grouped_mm": "matmul",
    "_grouped_mm": "matmul",
    "linear": "linear",
    "bilinear": "linear",
    "conv1d": "conv",
    "conv2d": "conv",
    "conv3d": "conv",
    "conv_transpose1d": "conv",
    "conv_transpose2d": "conv",
    "conv_transpose3d": "conv",
    "scaled_dot_product_attention": "attention",
    "_native_multi_head_attention": "attention",
}


def operator_of_call(name: str, kernels: tuple[str, ...] = ()) -> str | None:
    """The label of an operator call the profiler recorded, or ``None`` when it does no multiply-accumulate.

    The call's own name decides first (:data:`CALL_LABELS`, then :data:`ATEN_LABELS`), else the first kernel it ran
    that has a label (``aten::lstm`` runs ``mkldnn_rnn_layer``: ``rnn``).

    Args:
        name: the call's packet name, ``aten::`` dropped (``einsum``), other namespaces kept (``quantized::linear``).
        kernels: packet names of the operators it ran inside, in the order they ran.

    Example::

        assert operator_of_call("linear", ("t", "addmm")) == "linear"
        assert operator_of_call("topk") is None
    """
    label = CALL_LABELS.get(name) or ATEN_LABELS.get(name)
    if label is not None:
        return label
    return next((ATEN_LABELS[kernel] for kernel in kernels if kernel in ATEN_LABELS), None)
