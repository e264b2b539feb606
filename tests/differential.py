"""Both sides of the reference's rule, computed independently: stock FlopCounterMode over a real CPU forward, and the
terms of the formulas we add (counted by a dispatch mode of this file beneath it, with the formulas' own functions).

The torch counter must equal ``(stock + added) / 2`` MACs, nothing else (``tests/test_differential.py``,
``benchmarks/zoo_differential.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from lightning_flops.counters.formulas import FORMULAS


class _AddedTerms(TorchDispatchMode):
    """Beneath FlopCounterMode, sees every kernel that runs and applies our formula where one is registered."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0
        self.kernels: dict[str, int] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = FORMULAS.get(getattr(func, "overloadpacket", None))
        if formula is not None:
            flops = formula(*args, **kwargs, out_val=out)
            self.flops += flops
            name = str(func.overloadpacket)
            self.kernels[name] = self.kernels.get(name, 0) + flops
        return out


def reference_sides(forward: Callable[[], Any]) -> tuple[int, int, dict[str, int]]:
    """``(stock FlopCounterMode FLOPs, FLOPs of our added formulas, added FLOPs per kernel)`` of ``forward()``.

    The forward runs with grad enabled: torch's fused inference fast paths (``nn.TransformerEncoderLayer``,
    ``nn.MultiheadAttention`` under ``no_grad``: kernels without a formula) are off, as they are under the torch
    counter, whose function mode disables them (docs/counting.md); every other kernel is the same as under
    ``no_grad``.
    """
    added = _AddedTerms()
    with torch.enable_grad(), added, FlopCounterMode(display=False) as stock:  # added first: beneath FlopCounterMode
        forward()
    return stock.get_total_flops(), added.flops, added.kernels
