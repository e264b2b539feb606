"""What every counter shares: names, the one MAC<->FLOP conversion, the raw result.

The operator labels live in :mod:`lightning_flops.vocabulary` (re-exported here). This module imports no torch, so
that reports can be read and compared without it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from lightning_flops.vocabulary import CONVENTION_OPERATORS, CORE_OPERATORS, OPERATORS

if TYPE_CHECKING:
    from lightning_flops.report import Uncounted

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


def flops_from_macs(macs: int) -> int:
    """FLOPs of ``macs`` multiply-accumulates: always 2 x MACs (the only place this factor lives)."""
    return 2 * macs


def macs_from_flops(flops: int) -> int:
    """MACs of a count given in FLOPs (torch's FlopCounterMode counts 2 FLOPs per MAC)."""
    return flops // 2


@dataclass
class RawCount:
    """What a counter adapter measured on one forward call, in MACs, before our rules are applied.

    Args:
        macs: total MACs of the call.
        module_operators: inclusive MACs per qualified module name (``""`` is the root) and vocabulary operator.
        uncounted: operators (or modules) that the counter saw and did not count, with the module they ran in.

    Raises:
        ValueError: a module's operators use a label outside :data:`~lightning_flops.vocabulary.OPERATORS`
            (a lightning-flops bug: every adapter maps to the one vocabulary).
    """

    macs: int
    module_operators: dict[str, dict[str, int]] = field(default_factory=dict)
    uncounted: tuple[Uncounted, ...] = ()

    def __post_init__(self) -> None:
        self.uncounted = tuple(self.uncounted)
        unknown = {op for ops in self.module_operators.values() for op in ops} - OPERATORS
        if unknown:
            raise ValueError(
                f"lightning-flops bug: operator labels {sorted(unknown)} are not in the vocabulary {sorted(OPERATORS)}"
            )


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
