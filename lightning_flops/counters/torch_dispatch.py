"""The reference counter's adapter: the counting engine on one forward call, the result in MACs.

The engine (:mod:`lightning_flops.counters.engine`) applies FlopCounterMode's rule with torch's formulas and ours
(:mod:`lightning_flops.counters.formulas`) and lists every kernel that ran without a formula; this module converts its
FLOPs to MACs with :func:`~lightning_flops.counters.base.macs_from_flops` and books them per module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lightning_flops._compat import quantized_weight_bias
from lightning_flops.counters.base import RawCount, inclusive_counts, macs_from_flops
from lightning_flops.counters.engine import count, packet_name
from lightning_flops.counters.formulas import FORMULAS, grouped_mm_macs
from lightning_flops.types import Uncounted

__all__ = [
    "FORMULAS",
    "TorchCounter",
    "count_flops",
    "count_flops_and_uncounted",
    "grouped_mm_macs",
    "make_counter",
    "packed_parameter_count",
    "packet_name",
]


def count_flops(
    fn: Callable[[], Any], model: torch.nn.Module | None = None
) -> tuple[int, dict[str, dict[str, int]], dict[str, int]]:
    """Run ``fn()`` with the counting engine: ``(total FLOPs, own FLOPs per module and operator, calls per labelled
    torch function)``.

    Args:
        fn: the work to count (a forward call, or forward and backward of a training step).
        model: when given, FLOPs are booked to its ``named_modules()`` names; otherwise all to the root.
    """
    result = count(fn, model)
    return result.flops, result.own, result.calls


def count_flops_and_uncounted(
    fn: Callable[[], Any], model: torch.nn.Module | None = None
) -> tuple[int, dict[str, dict[str, int]], dict[str, int], tuple[Uncounted, ...]]:
    """As :func:`count_flops`, plus every kernel that ran without a formula and is not on the zero-MAC list.

    Args:
        fn: the work to count.
        model: when given, FLOPs and uncounted kernels are booked to its ``named_modules()`` names.
    """
    result = count(fn, model)
    return result.flops, result.own, result.calls, result.uncounted


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


class TorchCounter:
    """Counts with torch's FlopCounterMode (exact for conv, linear, matmul, einsum, attention and RNN gates)."""

    name = "torch"

    def can_count_on_meta(self, model: torch.nn.Module) -> bool:
        return True

    def count(self, model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> RawCount:
        def forward() -> None:
            model(*args, **kwargs)

        result = count(forward, model)
        own = {m: {op: macs_from_flops(v) for op, v in ops.items()} for m, ops in result.own.items()}
        return RawCount(
            macs=macs_from_flops(result.flops), module_operators=inclusive_counts(own), uncounted=result.uncounted
        )


def make_counter() -> TorchCounter:
    """A fresh torch counter."""
    return TorchCounter()
