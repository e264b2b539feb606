"""The formulas we add to torch's FlopCounterMode: one registry, filled by :func:`formula`, arguments read by name.

torch 2.13's ``flop_registry`` lacks some kernels that real models run. On CPU, three fused kernels would count 0:
``_scaled_dot_product_flash_attention_for_cpu`` (and its backward), ``_native_multi_head_attention`` (the
``nn.MultiheadAttention`` fast path under ``no_grad``) and ``mkldnn_rnn_layer`` (LSTM/GRU/RNN, and its backward).
More kernels that real models reach: ``_grouped_mm`` (MoE experts, forward and backward), the cuDNN/MIOpen RNN
kernels, fused attention kernels, matrix-vector products and the dynamic int8 ``quantized::linear_dynamic`` kernels.

Each formula is registered with the operators it counts (``"aten::_grouped_mm"``) and receives one :class:`Call`:
the operator's arguments bound to the names of its schema (``call["offs"]``, ``call["output_mask"]``) and its output
(``call.out``), never a position. The torch counter's rule is then, by construction: its total is FlopCounterMode's
(``flop_registry``) plus the terms of :data:`FORMULAS`, nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from lightning_flops._compat import (
    is_fake_tensor,
    mark_raw_formula,
    op_schema,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

__all__ = ["FORMULAS", "Call", "formula", "grouped_mm_macs"]

#: Our formulas by overload packet, each called as FlopCounterMode calls a raw formula:
#: ``FORMULAS[packet](*args, out_val=out, **kwargs)`` returns FLOPs.
FORMULAS: dict[Any, Callable[..., int]] = {}


class Call:
    """One call of an operator, its arguments bound to the names of the operator's schema.

    Args:
        values: argument name -> value (positional and keyword arguments, then the schema's defaults).
        out: the operator's output (``out_val``), ``None`` where the caller has none.

    Example::

        call = Call({"self": a, "mat2": b, "offs": None}, out=None)
        call["offs"]  # None
    """

    __slots__ = ("out", "values")

    def __init__(self, values: dict[str, Any], out: Any) -> None:
        self.values = values
        self.out = out

    def __getitem__(self, name: str) -> Any:
        return self.values[name]


class _Binder:
    """Binds ``(args, kwargs)`` of one operator packet to its schema's argument names (those of the overload
    ``default``, else the first; the ``.out`` overloads add keyword-only names only)."""

    def __init__(self, packet: Any) -> None:
        overloads = packet.overloads()
        name = "default" if "default" in overloads else overloads[0]
        arguments = op_schema(getattr(packet, name)).arguments
        self.names = tuple(argument.name for argument in arguments)
        self.defaults = {a.name: a.default_value for a in arguments if a.has_default_value()}

    def bind(self, args: tuple, kwargs: dict[str, Any], out: Any) -> Call:
        values = dict(self.defaults)
        values.update(zip(self.names, args, strict=False))
        values.update(kwargs)
        return Call(values, out)


def _packet(qualified: str) -> Any:
    """``"aten::mv"`` -> ``torch.ops.aten.mv``; ``None`` when this torch has no such operator."""
    namespace, _, name = qualified.partition("::")
    try:
        return getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return None


def formula(*operators: str) -> Callable[[Callable[[Call], int]], Callable[[Call], int]]:
    """Register ``fn(call) -> FLOPs`` as the formula of each of ``operators`` (``"namespace::name"``).

    An operator this torch lacks is skipped. The registered entry binds FlopCounterMode's call
    ``(*args, out_val=..., **kwargs)`` to the schema's names and is marked raw (it receives tensors, not shapes).

    Args:
        operators: qualified overload packet names, e.g. ``"aten::_grouped_mm"``.

    Example::

        @formula("aten::mv")
        def _mv(call: Call) -> int:
            return 2 * call["self"].shape[0] * call["self"].shape[1]
    """

    def register(fn: Callable[[Call], int]) -> Callable[[Call], int]:
        for qualified in operators:
            packet = _packet(qualified)
            if packet is not None:
                FORMULAS[packet] = _entry(packet, fn)
        return fn

    return register


def _entry(packet: Any, fn: Callable[[Call], int]) -> Callable[..., int]:
    binder = _Binder(packet)

    def counted(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
        return fn(binder.bind(args, kwargs, out_val))

    counted.__name__ = counted.__qualname__ = fn.__name__
    return mark_raw_formula(counted)


# ------------------------------------------------------------------------------------------------ attention
@formula("aten::_scaled_dot_product_flash_attention_for_cpu", "aten::_scaled_dot_product_fused_attention_overrideable")
def _sdpa_cpu(call: Call) -> int:
    return sdpa_flop_count(call["query"].shape, call["key"].shape, call["value"].shape)


@formula(
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    "aten::_scaled_dot_product_fused_attention_overrideable_backward",
)
def _sdpa_cpu_backward(call: Call) -> int:
    # torch's rule for every flash/efficient backward: dq, dk, dv, dp and the recomputed scores
    return sdpa_backward_flop_count(call["grad_out"].shape, call["query"].shape, call["key"].shape, call["value"].shape)


@formula("aten::_native_multi_head_attention", "aten::_triton_multi_head_attention")
def _native_mha(call: Call) -> int:
    # query [B, L, E], key/value [B, S, E]: q, k, v and out projections plus the two attention products
    query, key, dim = call["query"], call["key"], call["embed_dim"]
    batch, length, source = query.shape[-3] if query.dim() == 3 else 1, query.shape[-2], key.shape[-2]
    macs = batch * length * dim * dim + 2 * batch * source * dim * dim + batch * length * dim * dim
    macs += 2 * batch * length * source * dim
    return 2 * macs


@formula("aten::_triton_scaled_dot_attention")
def _triton_attention(call: Call) -> int:
    return sdpa_flop_count(call["q"].shape, call["k"].shape, call["v"].shape)


def _varlen_shapes(call: Call) -> list[Any]:
    """Per-sequence ``(query, key, value)`` shapes ``[1, H, S, D]`` of a dense or packed (``cum_seq``) call."""
    query, key, value, cum_q, cum_k = call["query"], call["key"], call["value"], call["cum_seq_q"], call["cum_seq_k"]
    if cum_q is None:
        return [(query.shape, key.shape, value.shape)]
    heads_q, dim_q = query.shape[-2], query.shape[-1]
    heads_k, dim_v = key.shape[-2], value.shape[-1]
    if cum_q.device.type == "meta" or is_fake_tensor(cum_q):
        # the lengths are unknown: count every sequence at its maximum
        lengths = [(call["max_q"], call["max_k"])] * (cum_q.numel() - 1)
    else:
        lengths = list(zip(cum_q.diff().tolist(), cum_k.diff().tolist(), strict=True))
    return [((1, heads_q, q, dim_q), (1, heads_k, k, dim_q), (1, heads_k, k, dim_v)) for q, k in lengths]


@formula("aten::_cudnn_attention_forward")
def _cudnn_attention(call: Call) -> int:
    return sum(sdpa_flop_count(*shapes) for shapes in _varlen_shapes(call))


@formula("aten::_cudnn_attention_backward")
def _cudnn_attention_backward(call: Call) -> int:
    # grad_out has the query's shape
    return sum(sdpa_backward_flop_count(q, q, k, v) for q, k, v in _varlen_shapes(call))


# ------------------------------------------------------------------------------------------------ recurrent
def _rnn_layer_macs(call: Call, weight_ih: str, weight_hh: str) -> int:
    # input [T, B, I] (or [B, T, I]); weight_ih [G*H, I]; weight_hh [G*H, H]: every step multiplies both
    inp, w_ih, w_hh = call["input"], call[weight_ih], call[weight_hh]
    return inp.shape[0] * inp.shape[1] * w_ih.shape[0] * (w_ih.shape[1] + w_hh.shape[1])


@formula("aten::mkldnn_rnn_layer")
def _mkldnn_rnn_layer(call: Call) -> int:
    return 2 * _rnn_layer_macs(call, "weight0", "weight1")


@formula("aten::mkldnn_rnn_layer_backward")
def _mkldnn_rnn_layer_backward(call: Call) -> int:
    # gradients of the input/hidden state and of both weights: twice the forward products
    return 4 * _rnn_layer_macs(call, "weight1", "weight2")


def _fused_rnn_macs(call: Call) -> int:
    """MACs of a whole cuDNN/MIOpen RNN: every token meets every weight matrix of every layer and direction once.

    ``input`` is ``[T, B, I]`` (``[B, T, I]`` when batch first) or packed ``[sum of lengths, I]`` when
    ``batch_sizes`` is given; ``weight`` holds per layer and direction ``w_ih [G*H, in]``, ``w_hh [G*H, H or P]``,
    the biases (1-d, not counted) and, with projections, ``w_hr [P, H]``.
    """
    inp = call["input"]
    tokens = inp.shape[0] if call["batch_sizes"] else inp.shape[0] * inp.shape[1]
    return tokens * sum(w.shape[0] * w.shape[1] for w in call["weight"] if w.dim() == 2)


@formula("aten::_cudnn_rnn", "aten::miopen_rnn")
def _fused_rnn(call: Call) -> int:
    return 2 * _fused_rnn_macs(call)


@formula("aten::_cudnn_rnn_backward", "aten::miopen_rnn_backward")
def _fused_rnn_backward(call: Call) -> int:
    # the data gradients (input and recurrent state) cost one forward; the weight gradients one more when asked for
    return 2 * _fused_rnn_macs(call) * (1 + bool(call["output_mask"][3]))


# ------------------------------------------------------------------------------------------- matrix products
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

    Example::

        grouped_mm_macs(torch.empty(16, 64), torch.empty(4, 64, 32), torch.tensor([4, 8, 12, 14]))  # 14 * 64 * 32
    """
    if a.dim() == 2 and b.dim() == 3:
        return _group_total(offs, a.shape[0]) * a.shape[1] * b.shape[2]
    if a.dim() == 3 and b.dim() == 2:
        return a.shape[1] * a.shape[2] * _group_total(offs, b.shape[1])
    if a.dim() == 2 and b.dim() == 2:
        return a.shape[0] * b.shape[1] * _group_total(offs, a.shape[1])
    return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


@formula("aten::_grouped_mm", "aten::_scaled_grouped_mm", "aten::_scaled_grouped_mm_v2")
def _grouped_mm(call: Call) -> int:
    # _grouped_mm's backward is _grouped_mm again
    return 2 * grouped_mm_macs(call["self"], call["mat2"], call["offs"])


def _mm_macs(a: Any, b: Any) -> int:
    return a.shape[0] * a.shape[1] * b.shape[1]


@formula("aten::_int_mm", "aten::_scaled_mm_v2")
def _mm(call: Call) -> int:
    # [M, K] x [K, N]
    return 2 * _mm_macs(call["self"], call["mat2"])


@formula("aten::_addmm_activation", "aten::addmm_")
def _addmm_like(call: Call) -> int:
    # the bias first, as addmm (torch's addmm formula covers the out-of-place kernel only)
    return 2 * _mm_macs(call["mat1"], call["mat2"])


@formula("aten::addbmm", "aten::addbmm_", "aten::baddbmm_")
def _addbmm(call: Call) -> int:
    # batch1 [B, N, K], batch2 [B, K, M]: B * N * K * M, summed over the batch (addbmm) or kept per batch (baddbmm_;
    # torch's baddbmm formula covers the out-of-place kernel only)
    a, b = call["batch1"], call["batch2"]
    return 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]


@formula("aten::mv")
def _mv(call: Call) -> int:
    return 2 * call["self"].shape[0] * call["self"].shape[1]


@formula("aten::addmv", "aten::addmv_")
def _addmv(call: Call) -> int:
    return 2 * call["mat"].shape[0] * call["mat"].shape[1]


@formula("aten::dot", "aten::vdot")
def _dot(call: Call) -> int:
    return 2 * call["self"].shape[0]


@formula("aten::addr", "aten::addr_")
def _addr(call: Call) -> int:
    # bias + the [N, 1] x [1, M] product: one multiply per output element, as mm counts it (`outer` and `ger`
    # lower to an elementwise `mul`, a convention: 0)
    return 2 * call["vec1"].shape[0] * call["vec2"].shape[0]


@formula("aten::_foreach_mm")
def _foreach_mm(call: Call) -> int:
    return sum(2 * _mm_macs(a, b) for a, b in zip(call["self"], call["mat2"], strict=True))


def _first_of(call: Call, names: Iterable[str]) -> Any:
    return next(call[name] for name in names if name in call.values)


@formula(
    "aten::mkldnn_linear",
    "aten::_mixed_dtypes_linear",
    "aten::_weight_int8pack_mm",
    "quantized::linear_dynamic",
    "quantized::linear_relu_dynamic",
    "quantized::linear_dynamic_fp16",
    "quantized::linear_relu_dynamic_fp16",
    "quantized::linear",
    "quantized::linear_relu",
)
def _linear_like(call: Call) -> int:
    """Linear kernels whose weight is packed or laid out per backend: ``rows * in * out`` from input and output.

    Covers ``quantized::linear_dynamic`` (dynamic int8, the same MACs as the float ``nn.Linear``), its fp16 and
    ReLU variants, static ``quantized::linear``, ``mkldnn_linear``, ``_mixed_dtypes_linear`` and
    ``_weight_int8pack_mm``.
    """
    x = _first_of(call, ("self", "input", "X"))
    out = call.out[0] if isinstance(call.out, (tuple, list)) else call.out
    return 2 * math.prod(x.shape[:-1]) * x.shape[-1] * out.shape[-1]
