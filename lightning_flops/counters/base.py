"""What every counter shares: names, the one MAC<->FLOP conversion, the raw result.

The operator labels live in :mod:`lightning_flops.vocabulary` (re-exported here). This module imports no torch, so
that reports can be read and compared without it.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol, TypeVar

from lightning_flops.types import RawCount
from lightning_flops.vocabulary import CONVENTION_OPERATORS, CORE_OPERATORS

__all__ = [
    "CONVENTION_OPERATORS",
    "CORE_OPERATORS",
    "COUNTER_NAMES",
    "RawCount",
    "flops_from_macs",
    "get_counter",
    "macs_from_flops",
]

#: The counters that ``profile_model`` knows, in their default order.
COUNTER_NAMES: tuple[str, ...] = ("thop", "fvcore", "torch")

_COUNTER_MODULES = {
    "thop": "lightning_flops.counters.thop_hooks",
    "fvcore": "lightning_flops.counters.fvcore_jit",
    "torch": "lightning_flops.counters.torch_dispatch",
}


_Count = TypeVar("_Count", int, float)


def flops_from_macs(macs: _Count) -> _Count:
    """FLOPs of ``macs`` multiply-accumulates (a count, or a per-sample / per-token mean): always 2 x MACs (the only
    place this factor lives)."""
    return 2 * macs


def macs_from_flops(flops: int) -> int:
    """MACs of a count given in FLOPs (torch's FlopCounterMode counts 2 FLOPs per MAC)."""
    return flops // 2


class Counter(Protocol):
    """A counter adapter: counts one forward call of ``model(*args, **kwargs)``.

    The caller has already put the model in the requested mode, entered ``torch.no_grad()`` and placed model and
    inputs on the counting device; the adapter removes every trace it leaves on the model.
    """

    name: str

    def can_count_on_meta(self, model: Any) -> bool:
        """Whether this counter can count ``model`` on the meta device."""

    def count(self, model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> RawCount:
        """Count one forward call."""


def get_counter(name: str) -> Counter:
    """Return a fresh adapter for the counter ``name`` (one of :data:`COUNTER_NAMES`)."""
    module = importlib.import_module(_COUNTER_MODULES[name])
    return module.make_counter()


def inclusive_counts(own: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Sum each module's own MACs into all its ancestors by name (``"a.b"`` -> ``"a"`` -> ``""``).

    Args:
        own: MACs per module name and operator, counted where the operator ran (innermost module).

    Returns:
        Inclusive MACs per module and operator; zero entries dropped, the root ``""`` always present.
    """
    result: dict[str, dict[str, int]] = {"": {}}
    for name, ops in own.items():
        chain = [name]
        while chain[-1] != "":
            chain.append(chain[-1].rpartition(".")[0])
        for target in dict.fromkeys(chain):
            bucket = result.setdefault(target, {})
            for op, value in ops.items():
                if value:
                    bucket[op] = bucket.get(op, 0) + value
    return result
