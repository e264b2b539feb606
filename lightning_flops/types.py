"""What a counter returns, as plain data: :class:`Uncounted`, :class:`RawCount`, and a timed operator,
:class:`OpTime`. No torch import.

The counters build these and the report stores them; neither side imports the other for them (the counters never
import :mod:`lightning_flops.report`, which imports :mod:`lightning_flops.explain` and :mod:`lightning_flops.render`).
Both names stay importable from their old places (``lightning_flops.report.Uncounted``,
``lightning_flops.counters.base.RawCount``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lightning_flops.vocabulary import CORE_OPERATORS, OPERATORS

__all__ = ["OpTime", "RawCount", "Uncounted", "is_within"]


@dataclass(frozen=True)
class Uncounted:
    """An operator (or module) that a counter saw and counted as 0 although it may do multiply-accumulates.

    Args:
        operator: the kernel or function (``"_grouped_mm"``, ``"mylib::fused_mlp"``, ``"einsum"``), or the module
            type for a module without a rule (``"MyBlock"``).
        module: qualified ``named_modules()`` name of the innermost module it ran in (``""`` is the root, or unknown
            where the counter does not say, as fvcore).
        calls: how many times it ran there during the counted call.
        reason: why it was not counted (``"no formula"``, ``"functional call: thop counts modules only"``, ...).

    Example::

        Uncounted(operator="_grouped_mm", module="model.layers.0.mlp.experts", calls=2, reason="no formula")
    """

    operator: str
    module: str
    calls: int
    reason: str

    @classmethod
    def from_data(cls, data: Any) -> Uncounted:
        """Read one entry of a report's ``uncounted`` list; a plain string (older reports) becomes the reason."""
        if isinstance(data, str):
            operator = data.split(" ", 1)[0]
            return cls(operator=operator, module="", calls=0, reason=data)
        return cls(
            operator=str(data["operator"]),
            module=str(data.get("module", "")),
            calls=int(data.get("calls", 0)),
            reason=str(data.get("reason", "")),
        )


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


@dataclass(frozen=True)
class OpTime:
    """Measured time of one operator called by one module's own code, beside the torch counter's MACs for it.

    Args:
        module: qualified ``named_modules()`` name of the innermost module whose code called it (``""`` the root).
        operator: the vocabulary label for an operator that multiplies (``linear``, ``matmul``, ``einsum``,
            ``conv``, ``attention``, ``rnn``), else the aten operator's own name (``sort``, ``topk``,
            ``linalg_vector_norm``, ``softmax``, ``layer_norm``, ``add``; other namespaces as ``ns::name``).
        seconds: time of its calls in the profiled forward, the kernels each call ran inside included (CPU time;
            on CUDA the device time of its kernels).
        calls: how many times the module's code called it.
        macs: the torch counter's MACs for this (module, operator), whole call; 0 for an operator that counts none.
        uncounted: the torch counter lists it in ``uncounted`` (it may multiply, with no formula): not a zero-MAC op.

    Example::

        OpTime(module="blocks.0.attn", operator="einsum", seconds=0.0021, calls=2, macs=2 * 8 * 64 * 64 * 32)
    """

    module: str
    operator: str
    seconds: float
    calls: int
    macs: int
    uncounted: bool = False

    @property
    def zero_mac(self) -> bool:
        """Whether the operator counts no MACs (not a multiplying operator, none booked, not ``uncounted``)."""
        return self.macs == 0 and self.operator not in CORE_OPERATORS and not self.uncounted


def is_within(name: str, root: str) -> bool:
    """Whether the module ``name`` is ``root`` or inside it (``named_modules()`` names; ``""``, the root, holds all).

    Example::

        assert is_within("backbone.layer1", "backbone") and not is_within("backbone2", "backbone")
    """
    return root == "" or name == root or name.startswith(root + ".")
