"""The reference counter: ``torch.utils.flop_counter.FlopCounterMode`` plus the CPU kernels it misses.

FlopCounterMode counts FLOPs (2 per MAC); this adapter converts to MACs with :func:`macs_from_flops`. On CPU, torch
2.13 runs three fused kernels that have no formula and would count 0: ``_scaled_dot_product_flash_attention_for_cpu``
(and its backward), ``_native_multi_head_attention`` (the ``nn.MultiheadAttention`` fast path under ``no_grad``) and
``mkldnn_rnn_layer`` (LSTM/GRU/RNN, and its backward). On the meta device they decompose and are counted anyway; the
handlers below make CPU agree. Every formula, torch's and ours, is wrapped to record the module and operator it ran in.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode, flop_registry, sdpa_backward_flop_count, sdpa_flop_count

from lightning_flops.counters.base import RawCount, inclusive_counts, macs_from_flops
from lightning_flops.counters.tracing import FunctionLabeler, ModuleStack, operator_of_module

__all__ = ["TorchCounter", "count_flops", "make_counter"]

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


#: Formulas for the CPU kernels FlopCounterMode lacks in torch 2.13; all receive raw tensors.
CPU_FIXUPS: dict[Any, Callable[..., int]] = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward_flop,
    aten._native_multi_head_attention: _native_mha_flop,
    aten.mkldnn_rnn_layer: _mkldnn_rnn_layer_flop,
    aten.mkldnn_rnn_layer_backward: _mkldnn_rnn_layer_backward_flop,
}


def _operator_of_packet(packet: Any) -> str:
    name = str(packet)
    if "conv" in name:
        return "conv"
    if "attention" in name:
        return "attention"
    if "rnn" in name or "lstm" in name or "gru" in name:
        return "rnn"
    if "bmm" in name:
        return "matmul"
    if name.endswith(("mm", "_scaled_mm")):
        return "linear"
    return "other"


class _Recorder:
    """Wraps every formula so that each FLOP count is also booked to a module and an operator."""

    def __init__(self, stack: ModuleStack | None, labeler: FunctionLabeler) -> None:
        self.stack = stack
        self.labeler = labeler
        self.own: dict[str, dict[str, int]] = {}
        self.by_label: dict[str, int] = {}

    def wrap(self, packet: Any, formula: Callable[..., int]) -> Callable[..., int]:
        fallback = _operator_of_packet(packet)

        def recorded(*args: Any, **kwargs: Any) -> int:
            flops = formula(*args, **kwargs)
            name, module = self.stack.current if self.stack is not None else ("", None)
            operator = self.labeler.label or fallback
            if module is not None and operator in ("linear", "matmul") and operator_of_module(module) == "rnn":
                operator = "rnn"  # LSTM/GRU decomposed into matrix products (meta device, CPU GRU)
            bucket = self.own.setdefault(name, {})
            bucket[operator] = bucket.get(operator, 0) + flops
            self.by_label[operator] = self.by_label.get(operator, 0) + flops
            return flops

        recorded._get_raw = True  # FlopCounterMode passes tensors through; the wrapped formula shapes them
        return recorded

    def mapping(self) -> dict[Any, Callable[..., int]]:
        formulas = {**flop_registry, **CPU_FIXUPS}
        return {packet: self.wrap(packet, formula) for packet, formula in formulas.items()}


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
    """Run ``fn()`` under FlopCounterMode with the CPU fixups.

    Returns:
        ``(total FLOPs, own FLOPs per module and operator, calls per labelled torch function)``.

    Args:
        fn: the work to count (a forward call, or forward and backward of a training step).
        model: when given, FLOPs are booked to its ``named_modules()`` names; otherwise all to the root.
    """
    labeler = FunctionLabeler()
    stack = ModuleStack(model) if model is not None else None
    recorder = _Recorder(stack, labeler)
    counter = FlopCounterMode(display=False, custom_mapping=recorder.mapping())
    # Private attribute, checked against torch 2.13 (the only place we touch it): FlopCounterMode's ModuleTracker puts
    # grad hooks on module inputs and raises "Expected gradient function to be set" when a module gets a view of a
    # parameter made under no_grad (`self.query.expand(...)`). Its per-module table is unused (ModuleStack books
    # modules), and the total it keeps under "Global" is the same without it.
    counter.mod_tracker = _GlobalOnlyTracker()
    if stack is not None:
        stack.__enter__()
    try:
        with labeler, counter:
            fn()
    finally:
        if stack is not None:
            stack.__exit__(None, None, None)
    return counter.get_total_flops(), recorder.own, labeler.calls


class TorchCounter:
    """Counts with torch's FlopCounterMode (exact for conv, linear, matmul, einsum, attention and RNN gates)."""

    name = "torch"

    def can_count_on_meta(self, model: torch.nn.Module) -> bool:
        return True

    def count(self, model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> RawCount:
        def forward() -> None:
            model(*args, **kwargs)

        flops, own_flops, labeler_calls = count_flops(forward, model)
        own = {m: {op: macs_from_flops(v) for op, v in ops.items()} for m, ops in own_flops.items()}
        counted = {op for ops in own.values() for op, v in ops.items() if v}
        uncounted = [f"{label} (no formula for its kernel)" for label in labeler_calls if label not in counted]
        return RawCount(macs=macs_from_flops(flops), module_operators=inclusive_counts(own), uncounted=uncounted)


def make_counter() -> TorchCounter:
    """A fresh torch counter."""
    return TorchCounter()
