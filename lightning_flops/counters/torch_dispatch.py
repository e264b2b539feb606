"""The reference counter: ``torch.utils.flop_counter.FlopCounterMode`` plus the kernels it misses, and no silent zero.

FlopCounterMode counts FLOPs (2 per MAC); this adapter converts to MACs with :func:`macs_from_flops`. The forward
count applies FlopCounterMode's rule in a dispatch loop of its own (:class:`_ReferenceMode`, the same totals at a
fraction of the cost per operator); higher-order operators are counted by FlopCounterMode itself. On CPU, torch
2.13 runs three fused kernels that have no formula and would count 0: ``_scaled_dot_product_flash_attention_for_cpu``
(and its backward), ``_native_multi_head_attention`` (the ``nn.MultiheadAttention`` fast path under ``no_grad``) and
``mkldnn_rnn_layer`` (LSTM/GRU/RNN, and its backward). On the meta device they decompose and are counted anyway; the
handlers below make CPU agree. More formulas cover what real models reach and torch lacks: ``_grouped_mm`` (MoE
experts, forward and backward), the cuDNN/MIOpen RNN kernels, fused attention kernels, matrix-vector products and
the dynamic int8 ``quantized::linear_dynamic`` kernels. Every formula, torch's and ours, is wrapped to record the
module and operator it ran in.

Every kernel that runs without a formula is checked against the reviewed zero-MAC list
(:mod:`lightning_flops.vocabulary`: views, copies, factories, indexing, reductions, norms, ...; kernels torch tags
``pointwise``; view kernels). Anything else, in any namespace (custom ops from ``torch.library`` included), is listed
in ``uncounted`` with its module and calls: the reference never counts zero in silence.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_backward_flop_count, sdpa_flop_count

from lightning_flops._compat import (
    TorchDispatchMode,
    decomposes_implicitly,
    is_fake_tensor,
    is_op_overload,
    mark_raw_formula,
    quantized_weight_bias,
    set_module_tracker,
    shape_formula,
)
from lightning_flops.counters.base import RawCount, inclusive_counts, macs_from_flops
from lightning_flops.counters.tracing import FunctionLabeler, ModuleStack, operator_of_module
from lightning_flops.report import Uncounted
from lightning_flops.vocabulary import NO_FORMULA, REVIEWED_UNCOUNTED, operator_of_aten, zero_mac_reason

__all__ = [
    "FORMULAS",
    "TorchCounter",
    "count_flops",
    "count_flops_and_uncounted",
    "flop_counter_mode",
    "grouped_mm_macs",
    "make_counter",
    "packed_parameter_count",
    "packet_name",
]

aten = torch.ops.aten


def _sdpa_cpu_flop(query: Any, key: Any, value: Any, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    return sdpa_flop_count(query.shape, key.shape, value.shape)


def _sdpa_cpu_backward_flop(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


def _native_mha_flop(query: Any, key: Any, value: Any, embed_dim: int, *args: Any, **kwargs: Any) -> int:
    # query [B, L, E], key/value [B, S, E]: q, k, v and out projections plus the two attention products
    batch, length, dim = query.shape[-3] if query.dim() == 3 else 1, query.shape[-2], embed_dim
    source = key.shape[-2]
    macs = batch * length * dim * dim + 2 * batch * source * dim * dim + batch * length * dim * dim
    macs += 2 * batch * length * source * dim
    return 2 * macs


def _rnn_layer_macs(inp: Any, weight_ih: Any, weight_hh: Any) -> int:
    # input [T, B, I] (or [B, T, I]); weight_ih [G*H, I]; weight_hh [G*H, H]: every step multiplies both
    return inp.shape[0] * inp.shape[1] * weight_ih.shape[0] * (weight_ih.shape[1] + weight_hh.shape[1])


def _mkldnn_rnn_layer_flop(inp: Any, weight_ih: Any, weight_hh: Any, *args: Any, **kwargs: Any) -> int:
    return 2 * _rnn_layer_macs(inp, weight_ih, weight_hh)


def _mkldnn_rnn_layer_backward_flop(inp: Any, weight_ih: Any, weight_hh: Any, *args: Any, **kwargs: Any) -> int:
    # gradients of the input/hidden state and of both weights: twice the forward products
    return 4 * _rnn_layer_macs(inp, weight_ih, weight_hh)


def _fused_rnn_macs(inp: Any, weights: Any, batch_sizes: Any) -> int:
    """MACs of a whole cuDNN/MIOpen RNN: every token meets every weight matrix of every layer and direction once.

    ``input`` is ``[T, B, I]`` (``[B, T, I]`` when batch first) or packed ``[sum of lengths, I]`` when
    ``batch_sizes`` is given; ``weights`` holds per layer and direction ``w_ih [G*H, in]``, ``w_hh [G*H, H or P]``,
    the biases (1-d, not counted) and, with projections, ``w_hr [P, H]``.
    """
    tokens = inp.shape[0] if batch_sizes else inp.shape[0] * inp.shape[1]
    return tokens * sum(w.shape[0] * w.shape[1] for w in weights if w.dim() == 2)


def _cudnn_rnn_flop(inp: Any, weights: Any, *args: Any, **kwargs: Any) -> int:
    # aten::_cudnn_rnn(input, weight[], weight_stride0, weight_buf, hx, cx, mode, hidden_size, proj_size,
    #                  num_layers, batch_first, dropout, train, bidirectional, batch_sizes, dropout_state)
    batch_sizes = args[12] if len(args) > 12 else kwargs.get("batch_sizes", ())
    return 2 * _fused_rnn_macs(inp, weights, batch_sizes)


def _cudnn_rnn_backward_flop(inp: Any, weights: Any, *args: Any, **kwargs: Any) -> int:
    # aten::_cudnn_rnn_backward(..., batch_sizes (18), dropout_state, reserve, output_mask (21)): the data gradients
    # (input and recurrent state) cost one forward; the weight gradients one more when asked for
    batch_sizes = args[16] if len(args) > 16 else kwargs.get("batch_sizes", ())
    mask = args[19] if len(args) > 19 else kwargs.get("output_mask", (True, True, True, True))
    return 2 * _fused_rnn_macs(inp, weights, batch_sizes) * (1 + bool(mask[3]))


def _miopen_rnn_flop(inp: Any, weights: Any, *args: Any, **kwargs: Any) -> int:
    # aten::miopen_rnn(input, weight[], weight_stride0, hx, cx, mode, hidden_size, num_layers, batch_first,
    #                  dropout, train, bidirectional, batch_sizes, dropout_state)
    batch_sizes = args[10] if len(args) > 10 else kwargs.get("batch_sizes", ())
    return 2 * _fused_rnn_macs(inp, weights, batch_sizes)


def _miopen_rnn_backward_flop(inp: Any, weights: Any, *args: Any, **kwargs: Any) -> int:
    # aten::miopen_rnn_backward(..., batch_sizes (17), dropout_state, reserve, output_mask (20))
    batch_sizes = args[15] if len(args) > 15 else kwargs.get("batch_sizes", ())
    mask = args[18] if len(args) > 18 else kwargs.get("output_mask", (True, True, True, True))
    return 2 * _fused_rnn_macs(inp, weights, batch_sizes) * (1 + bool(mask[3]))


def _group_total(offs: Any, full: int) -> int:
    """Sum of the group sizes from cumulative ``offs``; ``full`` (every row in a group) when they cannot be read."""
    if offs is None:
        return full
    if offs.device.type == "meta" or is_fake_tensor(offs) or offs.numel() == 0:
        return full if offs.numel() else 0  # meta/fake: the sizes are unknown, count the upper bound (as torch does)
    return int(offs[-1])


def grouped_mm_macs(a: Any, b: Any, offs: Any = None) -> int:
    """MACs of ``aten._grouped_mm(a, b, offs)``: the sum over groups of rows x inner x columns.

    The schema's four layouts (``offs`` holds cumulative group ends along the grouped dimension):

    - ``a [M, K]`` x ``b [G, K, N]``, rows grouped: ``sum(m_g) * K * N`` (MoE experts, forward);
    - ``a [G, M, K]`` x ``b [K, N]``, columns grouped: ``M * K * sum(n_g)``;
    - ``a [M, K]`` x ``b [K, N]``, the inner dimension grouped (output ``[G, M, N]``): ``M * N * sum(k_g)``
      (the weight gradient of the first layout);
    - ``a [G, M, K]`` x ``b [G, K, N]``: a batched product, ``G * M * K * N``.

    Args:
        a: first operand (a tensor, meta included).
        b: second operand.
        offs: int32 cumulative group ends, or ``None`` (3-d x 3-d only). On meta the group sizes are unknown and
            the whole grouped dimension is counted (an upper bound).
    """
    if a.dim() == 2 and b.dim() == 3:
        return _group_total(offs, a.shape[0]) * a.shape[1] * b.shape[2]
    if a.dim() == 3 and b.dim() == 2:
        return a.shape[1] * a.shape[2] * _group_total(offs, b.shape[1])
    if a.dim() == 2 and b.dim() == 2:
        return a.shape[0] * b.shape[1] * _group_total(offs, a.shape[1])
    return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


def _grouped_mm_flop(a: Any, b: Any, offs: Any = None, *args: Any, **kwargs: Any) -> int:
    # aten::_grouped_mm(self, mat2, offs=None, bias=None, out_dtype=None); its backward is _grouped_mm again
    return 2 * grouped_mm_macs(a, b, kwargs.get("offs", offs))


def _scaled_grouped_mm_flop(a: Any, b: Any, *args: Any, **kwargs: Any) -> int:
    # aten::_scaled_grouped_mm(self, mat2, scale_a, scale_b, offs=None, ...)
    offs = kwargs.get("offs", args[2] if len(args) > 2 else None)
    return 2 * grouped_mm_macs(a, b, offs)


def _scaled_grouped_mm_v2_flop(a: Any, b: Any, *args: Any, **kwargs: Any) -> int:
    # aten::_scaled_grouped_mm_v2(self, mat2, scale_a, recipe_a, swizzle_a, scale_b, recipe_b, swizzle_b, offs, ...)
    offs = kwargs.get("offs", args[6] if len(args) > 6 else None)
    return 2 * grouped_mm_macs(a, b, offs)


def _mm_macs(a: Any, b: Any) -> int:
    return a.shape[0] * a.shape[1] * b.shape[1]


def _mm_flop(a: Any, b: Any, *args: Any, **kwargs: Any) -> int:
    # _int_mm, _scaled_mm_v2 (self, mat2, ...): [M, K] x [K, N]
    return 2 * _mm_macs(a, b)


def _addmm_like_flop(bias: Any, a: Any, b: Any, *args: Any, **kwargs: Any) -> int:
    # _addmm_activation(self, mat1, mat2) and the in-place addmm_: the bias first, as addmm
    return 2 * _mm_macs(a, b)


def _addbmm_flop(bias: Any, a: Any, b: Any, *args: Any, **kwargs: Any) -> int:
    # addbmm(self, batch1 [B, N, K], batch2 [B, K, M]): B * N * K * M, summed over the batch; baddbmm_ the same
    # products, kept per batch (torch's baddbmm formula covers the out-of-place kernel only)
    return 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


def _mv_flop(mat: Any, vec: Any, *args: Any, **kwargs: Any) -> int:
    return 2 * mat.shape[0] * mat.shape[1]


def _addmv_flop(bias: Any, mat: Any, vec: Any, *args: Any, **kwargs: Any) -> int:
    return 2 * mat.shape[0] * mat.shape[1]


def _dot_flop(a: Any, b: Any, *args: Any, **kwargs: Any) -> int:
    return 2 * a.shape[0]


def _addr_flop(bias: Any, a: Any, b: Any, *args: Any, **kwargs: Any) -> int:
    # bias + the [N, 1] x [1, M] product: one multiply per output element, as mm counts it (`outer` and `ger`
    # lower to an elementwise `mul`, a convention: 0)
    return 2 * a.shape[0] * b.shape[0]


def _foreach_mm_flop(a_list: Any, b_list: Any, *args: Any, **kwargs: Any) -> int:
    return sum(2 * _mm_macs(a, b) for a, b in zip(a_list, b_list, strict=True))


def _linear_like_flop(x: Any, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    """Linear kernels whose weight is packed or laid out per backend: ``rows * in * out`` from input and output.

    Covers ``quantized::linear_dynamic`` (dynamic int8, the same MACs as the float ``nn.Linear``), its fp16 and
    ReLU variants, static ``quantized::linear``, ``mkldnn_linear``, ``_mixed_dtypes_linear`` and
    ``_weight_int8pack_mm``.
    """
    out = out_val[0] if isinstance(out_val, (tuple, list)) else out_val
    return 2 * math.prod(x.shape[:-1]) * x.shape[-1] * out.shape[-1]


def _fused_attention_flop(query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    # _scaled_dot_product_fused_attention_overrideable, _triton_scaled_dot_attention: [B, H, S, D]
    return sdpa_flop_count(query.shape, key.shape, value.shape)


def _fused_attention_backward_flop(grad_out: Any, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_backward_flop_count(grad_out.shape, query.shape, key.shape, value.shape)


def _varlen_shapes(query: Any, key: Any, value: Any, cum_q: Any, cum_k: Any, max_q: int, max_k: int) -> list[Any]:
    """Per-sequence ``(query, key, value)`` shapes ``[1, H, S, D]`` of a dense or packed (``cum_seq``) call."""
    if cum_q is None:
        return [(query.shape, key.shape, value.shape)]
    heads_q, dim_q = query.shape[-2], query.shape[-1]
    heads_k, dim_v = key.shape[-2], value.shape[-1]
    if cum_q.device.type == "meta" or is_fake_tensor(cum_q):
        lengths = [(max_q, max_k)] * (cum_q.numel() - 1)  # the lengths are unknown: count every sequence at max
    else:
        lengths = list(zip(cum_q.diff().tolist(), cum_k.diff().tolist(), strict=True))
    return [((1, heads_q, q, dim_q), (1, heads_k, k, dim_q), (1, heads_k, k, dim_v)) for q, k in lengths]


def _cudnn_attention_flop(query: Any, key: Any, value: Any, bias: Any, cum_q: Any, cum_k: Any, max_q: int,
                          max_k: int, *args: Any, **kwargs: Any) -> int:  # fmt: skip
    return sum(sdpa_flop_count(*shapes) for shapes in _varlen_shapes(query, key, value, cum_q, cum_k, max_q, max_k))


def _cudnn_attention_backward_flop(grad_out: Any, query: Any, key: Any, value: Any, out: Any, logsumexp: Any,
                                   seed: Any, offset: Any, bias: Any, cum_q: Any, cum_k: Any, max_q: int, max_k: int,
                                   *args: Any, **kwargs: Any) -> int:  # fmt: skip
    shapes = _varlen_shapes(query, key, value, cum_q, cum_k, max_q, max_k)
    return sum(sdpa_backward_flop_count(q, q, k, v) for q, k, v in shapes)  # grad_out has the query's shape


def _packets(namespace: Any, *names: str) -> list[Any]:
    return [getattr(namespace, name) for name in names if hasattr(namespace, name)]


def _formulas() -> dict[Any, Callable[..., int]]:
    quantized = torch.ops.quantized
    table: list[tuple[list[Any], Callable[..., int]]] = [
        (_packets(aten, "_scaled_dot_product_flash_attention_for_cpu"), _sdpa_cpu_flop),
        (_packets(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"), _sdpa_cpu_backward_flop),
        (_packets(aten, "_native_multi_head_attention", "_triton_multi_head_attention"), _native_mha_flop),
        (_packets(aten, "mkldnn_rnn_layer"), _mkldnn_rnn_layer_flop),
        (_packets(aten, "mkldnn_rnn_layer_backward"), _mkldnn_rnn_layer_backward_flop),
        (_packets(aten, "_cudnn_rnn"), _cudnn_rnn_flop),
        (_packets(aten, "_cudnn_rnn_backward"), _cudnn_rnn_backward_flop),
        (_packets(aten, "miopen_rnn"), _miopen_rnn_flop),
        (_packets(aten, "miopen_rnn_backward"), _miopen_rnn_backward_flop),
        (_packets(aten, "_grouped_mm"), _grouped_mm_flop),
        (_packets(aten, "_scaled_grouped_mm"), _scaled_grouped_mm_flop),
        (_packets(aten, "_scaled_grouped_mm_v2"), _scaled_grouped_mm_v2_flop),
        (_packets(aten, "_int_mm", "_scaled_mm_v2"), _mm_flop),
        (_packets(aten, "_addmm_activation", "addmm_"), _addmm_like_flop),
        (_packets(aten, "addbmm", "addbmm_", "baddbmm_"), _addbmm_flop),
        (_packets(aten, "mv"), _mv_flop),
        (_packets(aten, "addmv", "addmv_"), _addmv_flop),
        (_packets(aten, "dot", "vdot"), _dot_flop),
        (_packets(aten, "addr", "addr_"), _addr_flop),
        (_packets(aten, "_foreach_mm"), _foreach_mm_flop),
        (_packets(aten, "mkldnn_linear", "_mixed_dtypes_linear", "_weight_int8pack_mm"), _linear_like_flop),
        (
            _packets(
                quantized,
                "linear_dynamic",
                "linear_relu_dynamic",
                "linear_dynamic_fp16",
                "linear_relu_dynamic_fp16",
                "linear",
                "linear_relu",
            ),
            _linear_like_flop,
        ),
        (
            _packets(aten, "_scaled_dot_product_fused_attention_overrideable", "_triton_scaled_dot_attention"),
            _fused_attention_flop,
        ),
        (_packets(aten, "_scaled_dot_product_fused_attention_overrideable_backward"), _fused_attention_backward_flop),
        (_packets(aten, "_cudnn_attention_forward"), _cudnn_attention_flop),
        (_packets(aten, "_cudnn_attention_backward"), _cudnn_attention_backward_flop),
    ]
    return {packet: formula for packets, formula in table for packet in packets}


#: Our formulas for the kernels FlopCounterMode lacks in torch 2.13 (all receive raw tensors), by overload packet.
FORMULAS: dict[Any, Callable[..., int]] = _formulas()


def packet_name(packet: Any) -> str:
    """``aten._grouped_mm`` -> ``_grouped_mm``; another namespace keeps it: ``quantized::linear_dynamic``."""
    name = str(packet)
    namespace, dot, bare = name.partition(".")
    if not dot:
        return name  # a higher-order operator (flex_attention)
    return bare if namespace == "aten" else f"{namespace}::{bare}"


def packed_parameter_count(model: torch.nn.Module) -> int:
    """Elements of the packed weights and biases of quantized Linear layers (not in ``model.parameters()``).

    ``torch.ao.nn.quantized`` (torch 2.13) keeps them in a ``LinearPackedParams`` module; their private
    ``_weight_bias()`` (:func:`~lightning_flops._compat.quantized_weight_bias`) unpacks them. Each packed module is
    counted once, as shared parameters are.

    Args:
        model: any module; 0 when it holds no quantized Linear.
    """
    try:
        from torch.ao.nn.quantized.modules.linear import LinearPackedParams
    except ImportError:  # pragma: no cover - a torch without torch.ao
        return 0
    total = 0
    for module in model.modules():  # modules() yields each module once
        if isinstance(module, LinearPackedParams):
            weight, bias = quantized_weight_bias(module)
            total += weight.numel() + (bias.numel() if bias is not None else 0)
    return total


class _Recorder:
    """Wraps every formula so that each FLOP count is also booked to a module and an operator."""

    def __init__(self, stack: ModuleStack | None, labeler: FunctionLabeler) -> None:
        self.stack = stack
        self.labeler = labeler
        self.own: dict[str, dict[str, int]] = {}
        self.by_label: dict[str, int] = {}

    def wrap(self, packet: Any, formula: Callable[..., int]) -> Callable[..., int]:
        fallback = operator_of_aten(packet_name(packet))
        on_shapes = shape_formula(formula)

        def recorded(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
            shapes = _flat_shapes(args, kwargs, out_val) if on_shapes is not None else None
            if shapes is not None:  # what torch's shape_wrapper computes, without a pytree walk per call
                flops = on_shapes(*shapes[0], out_shape=shapes[2], **shapes[1])
            else:
                flops = formula(*args, out_val=out_val, **kwargs)
            name, module = self.stack.current if self.stack is not None else ("", None)
            operator = self.labeler.label or fallback
            if module is not None and operator in ("linear", "matmul") and operator_of_module(module) == "rnn":
                operator = "rnn"  # LSTM/GRU decomposed into matrix products (meta device, CPU GRU)
            bucket = self.own.setdefault(name, {})
            bucket[operator] = bucket.get(operator, 0) + flops
            self.by_label[operator] = self.by_label.get(operator, 0) + flops
            return flops

        return mark_raw_formula(recorded)  # FlopCounterMode passes tensors through; the wrapped formula shapes them

    def mapping(self) -> dict[Any, Callable[..., int]]:
        formulas = {**flop_registry, **FORMULAS}
        return {packet: self.wrap(packet, formula) for packet, formula in formulas.items()}


def _shape_of(value: Any) -> Any:
    """A tensor's shape; a plain list or tuple of tensors and leaves mapped likewise; any other container (nested,
    a dict, a NamedTuple or other tuple subclass: pytree may walk into them) gives ``_NESTED``; a leaf itself."""
    if isinstance(value, torch.Tensor):
        return value.shape
    if type(value) in (list, tuple):
        if any(isinstance(v, (list, tuple, dict)) for v in value):
            return _NESTED
        return type(value)(v.shape if isinstance(v, torch.Tensor) else v for v in value)
    if isinstance(value, (list, tuple, dict)):
        return _NESTED
    return value


_NESTED = object()


def _flat_shapes(args: tuple, kwargs: dict, out: Any) -> tuple[tuple, dict, Any] | None:
    """``(args, kwargs, out)`` with each tensor replaced by its shape, as torch's ``shape_wrapper`` maps them with
    pytree, when nothing is nested deeper than one list or tuple; ``None`` otherwise (then torch's own wrapper runs)."""
    new_args = tuple(_shape_of(a) for a in args)
    new_kwargs = {k: _shape_of(v) for k, v in kwargs.items()}
    new_out = _shape_of(out)
    if _NESTED in new_args or _NESTED in new_kwargs.values() or new_out is _NESTED:
        return None
    return new_args, new_kwargs, new_out


def _zero_reason(func: Any, name: str) -> str | None:
    """Why the kernel ``func`` may count 0 without being listed, or ``None`` when it must be listed."""
    reason = zero_mac_reason(name)
    if reason is not None:
        return reason
    packet = func.overloadpacket
    if any(torch.Tag.pointwise in getattr(packet, overload).tags for overload in packet.overloads()):
        # tags are per overload (add.Tensor is tagged, add.default on Python scalars is not): the family decides
        return "elementwise (torch tags it pointwise): a convention"
    if func.is_view:
        return "view: no arithmetic"
    return None


class _KernelWatch(TorchDispatchMode):
    """Sees every kernel that really runs (below FlopCounterMode's decompositions) and keeps those without a formula.

    Entered before FlopCounterMode, so it sits beneath it on the mode stack: FlopCounterMode decomposes what it can
    and every kernel that executes then passes here once. A kernel with no formula that is not on the reviewed
    zero-MAC list is recorded with the innermost module it ran in.
    """

    def __init__(self, stack: ModuleStack | None, counted: set[Any]) -> None:
        super().__init__()
        self.stack = stack
        self.counted = counted
        self.missed: dict[tuple[str, str, str], int] = {}
        self._verdicts: dict[Any, str | None] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if is_op_overload(func):
            packet = func.overloadpacket
            if packet not in self._verdicts:
                name = packet_name(packet)
                if packet in self.counted:
                    self._verdicts[packet] = None
                elif name in REVIEWED_UNCOUNTED:
                    self._verdicts[packet] = f"{NO_FORMULA}: {REVIEWED_UNCOUNTED[name]}"
                else:
                    self._verdicts[packet] = None if _zero_reason(func, name) is not None else NO_FORMULA
            reason = self._verdicts[packet]
            if reason is not None:
                module = self.stack.current[0] if self.stack is not None else ""
                key = (packet_name(packet), module, reason)
                self.missed[key] = self.missed.get(key, 0) + 1
        return func(*args, **kwargs)

    def uncounted(self) -> tuple[Uncounted, ...]:
        """What ran without a formula, one entry per kernel and module, in the order first seen."""
        return tuple(
            Uncounted(operator=op, module=module, calls=n, reason=reason)
            for (op, module, reason), n in self.missed.items()
        )


class _GlobalOnlyTracker:
    """Stands in for FlopCounterMode's ModuleTracker: books every FLOP to ``"Global"``, registers no hooks."""

    parents = frozenset({"Global"})

    def __enter__(self) -> _GlobalOnlyTracker:
        return self

    def __exit__(self, *args: Any) -> None:
        return None


def count_flops(
    fn: Callable[[], Any], model: torch.nn.Module | None = None
) -> tuple[int, dict[str, dict[str, int]], dict[str, int]]:
    """Run ``fn()`` under FlopCounterMode with our formulas.

    Returns:
        ``(total FLOPs, own FLOPs per module and operator, calls per labelled torch function)``.

    Args:
        fn: the work to count (a forward call, or forward and backward of a training step).
        model: when given, FLOPs are booked to its ``named_modules()`` names; otherwise all to the root.
    """
    flops, own, calls, _ = count_flops_and_uncounted(fn, model)
    return flops, own, calls


# FlopCounterMode leaves these to the tensor's own policy (nested tensors): it answers NotImplemented (torch 2.13)
_METADATA_OPS = frozenset(
    getattr(packet, overload)
    for packet, overload in (
        (aten.sym_is_contiguous, "default"), (aten.is_contiguous, "default"), (aten.is_contiguous, "memory_format"),
        (aten.is_strides_like_format, "default"), (aten.is_non_overlapping_and_dense, "default"),
        (aten.size, "default"), (aten.sym_size, "default"), (aten.stride, "default"), (aten.sym_stride, "default"),
        (aten.storage_offset, "default"), (aten.sym_storage_offset, "default"), (aten.numel, "default"),
        (aten.sym_numel, "default"), (aten.dim, "default"), (torch.ops.prim.layout, "default"),
    )
    if hasattr(packet, overload)
)  # fmt: skip


class _HigherOrderOperator(Exception):
    """A higher-order operator (``torch.cond``, a Triton kernel) ran: FlopCounterMode itself must count it."""


class _ReferenceMode(TorchDispatchMode):
    """FlopCounterMode's counting rule, as ``_FlopCounterMode.__torch_dispatch__`` applies it (torch 2.13), at a
    fraction of its cost per operator (measured: 117 us a call there, most of the time of counting small modules).

    The rule, unchanged: the metadata queries FlopCounterMode skips are left alone; every other operator is first
    decomposed when it has a CompositeImplicitAutograd kernel (re-entering this mode, so that its parts are counted),
    else run, and counted with the formula of its overload packet when the registry has one. What is cheaper: no
    pytree walk, no torch._dynamo guard around each call, and whether an operator decomposes is looked up once.
    ``tests/test_reference_mode.py`` checks that totals equal FlopCounterMode's on every operator and model tested.
    A higher-order operator raises :class:`_HigherOrderOperator`; the caller then counts with FlopCounterMode.

    Args:
        registry: formula per overload packet, each called as FlopCounterMode calls it:
            ``formula(*args, **kwargs, out_val=out)``.
    """

    supports_higher_order_operators = True  # so that they reach __torch_dispatch__, which hands them over

    def __init__(self, registry: dict[Any, Callable[..., int]]) -> None:
        super().__init__()
        self.registry = registry
        self.total = 0
        self._decomposes: dict[Any, bool] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _METADATA_OPS:
            return NotImplemented
        if not is_op_overload(func):
            raise _HigherOrderOperator(str(func))
        if func is not _PRIM_DEVICE:
            decomposes = self._decomposes.get(func)
            if decomposes is None:
                decomposes = self._decomposes[func] = decomposes_implicitly(func)
            if decomposes:
                with self:
                    result = func.decompose(*args, **kwargs)
                if result is not NotImplemented:
                    return result
        out = func(*args, **kwargs)
        formula = self.registry.get(func.overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out

    def get_total_flops(self) -> int:
        """FLOPs counted so far (FlopCounterMode's name for it)."""
        return self.total


_PRIM_DEVICE = torch.ops.prim.device.default


def count_flops_and_uncounted(
    fn: Callable[[], Any], model: torch.nn.Module | None = None
) -> tuple[int, dict[str, dict[str, int]], dict[str, int], tuple[Uncounted, ...]]:
    """As :func:`count_flops`, plus every kernel that ran without a formula and is not on the zero-MAC list.

    Counts with :class:`_ReferenceMode` (FlopCounterMode's rule, cheaper per operator); when a higher-order operator
    runs, ``fn`` runs again under FlopCounterMode itself (``fn`` must be repeatable: a forward on a copy).

    Args:
        fn: the work to count.
        model: when given, FLOPs and uncounted kernels are booked to its ``named_modules()`` names.
    """
    try:
        return _count_with(lambda mapping: _ReferenceMode(mapping), fn, model)
    except _HigherOrderOperator:
        return _count_with(flop_counter_mode, fn, model)


def flop_counter_mode(mapping: dict[Any, Callable[..., int]]) -> Any:
    """FlopCounterMode with ``mapping`` as its formulas and no module tracker (a total only)."""
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    # A private attribute (lightning_flops._compat.set_module_tracker): FlopCounterMode's ModuleTracker puts
    # grad hooks on module inputs and raises "Expected gradient function to be set" when a module gets a view of a
    # parameter made under no_grad (`self.query.expand(...)`). Its per-module table is unused (ModuleStack books
    # modules), and the total it keeps under "Global" is the same without it.
    set_module_tracker(counter, _GlobalOnlyTracker())
    return counter


def _count_with(
    make_mode: Callable[[dict[Any, Callable[..., int]]], Any], fn: Callable[[], Any], model: torch.nn.Module | None
) -> tuple[int, dict[str, dict[str, int]], dict[str, int], tuple[Uncounted, ...]]:
    labeler = FunctionLabeler()
    stack = ModuleStack(model) if model is not None else None
    recorder = _Recorder(stack, labeler)
    mapping = recorder.mapping()
    watch = _KernelWatch(stack, set(mapping))
    counter = make_mode(mapping)
    if stack is not None:
        stack.__enter__()
    try:
        with labeler, watch, counter:
            fn()
    finally:
        if stack is not None:
            stack.__exit__(None, None, None)
    return counter.get_total_flops(), recorder.own, labeler.calls, watch.uncounted()


class TorchCounter:
    """Counts with torch's FlopCounterMode (exact for conv, linear, matmul, einsum, attention and RNN gates)."""

    name = "torch"

    def can_count_on_meta(self, model: torch.nn.Module) -> bool:
        return True

    def count(self, model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> RawCount:
        def forward() -> None:
            model(*args, **kwargs)

        flops, own_flops, _calls, uncounted = count_flops_and_uncounted(forward, model)
        own = {m: {op: macs_from_flops(v) for op, v in ops.items()} for m, ops in own_flops.items()}
        return RawCount(macs=macs_from_flops(flops), module_operators=inclusive_counts(own), uncounted=uncounted)


def make_counter() -> TorchCounter:
    """A fresh torch counter."""
    return TorchCounter()
