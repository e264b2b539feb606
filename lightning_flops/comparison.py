"""Pure functions on counts: core/convention split, custom rules, pairwise gaps and their attribution.

Nothing here imports torch; every function takes and returns plain data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from lightning_flops.report import CounterResult, Gap, Uncounted
from lightning_flops.types import is_within
from lightning_flops.vocabulary import CONVENTION_UNCOUNTED, CORE_OPERATORS, NO_FORMULA

__all__ = ["apply_rules", "attribute_gap", "compute_gaps", "relative_gap"]

ModuleOperators = Mapping[str, Mapping[str, int]]


def relative_gap(a: float, b: float) -> float:
    """``|a - b| / max(a, b)``, and 0 when both are 0.

    Example::

        >>> relative_gap(90, 100)
        0.1
    """
    top = max(abs(a), abs(b))
    return 0.0 if top == 0 else abs(a - b) / top


def _parent(name: str) -> str | None:
    if name == "":
        return None
    return name.rpartition(".")[0]


def _ancestors(name: str) -> list[str]:
    out = []
    parent = _parent(name)
    while parent is not None:
        out.append(parent)
        parent = _parent(parent)
    return out


def apply_rules(module_operators: ModuleOperators, rule_macs: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """Replace each ruled module's subtree count by its rule's MACs (operator ``custom``).

    Args:
        module_operators: inclusive MACs per module and operator, as a counter reported them.
        rule_macs: MACs per module name from a ``custom_ops`` rule. A module inside another ruled module is ignored.

    Returns:
        New inclusive counts where each outermost ruled module holds ``{"custom": rule MACs}`` and its ancestors
        carry the difference.
    """
    result = {m: dict(ops) for m, ops in module_operators.items()}
    outermost = [m for m in rule_macs if not any(a in rule_macs for a in _ancestors(m))]
    for module in outermost:
        old = result.get(module, {})
        for name in [n for n in result if n != module and is_within(n, module)]:
            del result[name]
        for ancestor in _ancestors(module):
            ops = result.setdefault(ancestor, {})
            for op, value in old.items():
                ops[op] = ops.get(op, 0) - value
            ops["custom"] = ops.get("custom", 0) + rule_macs[module]
        result[module] = {"custom": rule_macs[module]} if rule_macs[module] else {}
    return {m: {op: v for op, v in ops.items() if v} for m, ops in result.items()}


def _restricted(ops: Mapping[str, int], core_only: bool) -> dict[str, int]:
    return {op: v for op, v in ops.items() if not core_only or op in CORE_OPERATORS}


def attribute_gap(
    a: ModuleOperators, b: ModuleOperators, core_only: bool = True, uncounted: Sequence[Uncounted] = ()
) -> tuple[str, tuple[str, ...]]:
    """Name the module and operators that hold the gap between two counters.

    Walks down from the root along the child (the module's own operators count as one more child) holding the
    largest absolute share of the difference, and stops where the module's own operators win or it has no children.

    An operator that either counter saw and did not count inside the named module (``uncounted``) is named first,
    as ``"_grouped_mm (uncounted)"`` (unless it is already named as a measured difference, as thop's missed
    ``einsum``). A kernel the reference ran with no formula (reason ``"no formula..."``) hides
    MACs that neither counter measured, so the walk heads for the child that holds it rather than a measured
    difference beside it (two such children: it stops above them). Blind spots of thop and fvcore need no detour:
    the other counter measured them, so they are part of the measured difference. Entries with module ``""``
    (fvcore does not say where) are named only for a gap at the root; with ``core_only``, those marked as
    convention ops are left out.

    Args:
        a: inclusive module/operator MACs of the first counter.
        b: the same for the second counter.
        core_only: look at core operators only (as flagging does with ``flag_on="core"``).
        uncounted: what the two counters saw and did not count (entries with module ``""`` only name the root).

    Returns:
        ``(module name, operators where the counts differ, largest difference first)``.
    """

    def total(counts: ModuleOperators, name: str) -> int:
        return sum(_restricted(counts.get(name, {}), core_only).values())

    unknown = {u.module for u in uncounted if u.module and u.reason.startswith(NO_FORMULA)}
    names = dict.fromkeys([*a.keys(), *b.keys(), *unknown])
    for name in list(names):
        for ancestor in _ancestors(name):  # a counter may skip a level that holds nothing
            names.setdefault(ancestor)
    children: dict[str, list[str]] = {}
    for name in names:
        parent = _parent(name)
        if parent is not None:
            children.setdefault(parent, []).append(name)

    current = ""
    while True:
        kids = children.get(current, [])
        diffs = {kid: total(a, kid) - total(b, kid) for kid in kids}
        own = (total(a, current) - total(b, current)) - sum(diffs.values())
        best = max(kids, key=lambda kid: abs(diffs[kid]), default=None)
        blind = [kid for kid in kids if any(is_within(m, kid) for m in unknown)]
        if blind and best not in blind:
            if len(blind) == 1:  # MACs nobody measured outrank the measured difference next to them
                current = blind[0]
                continue
            break
        if best is None or abs(diffs[best]) <= abs(own) or diffs[best] == 0:
            break
        current = best
    ops_a = _restricted(a.get(current, {}), core_only)
    ops_b = _restricted(b.get(current, {}), core_only)
    op_diffs = {op: ops_a.get(op, 0) - ops_b.get(op, 0) for op in {*ops_a, *ops_b}}
    operators = tuple(op for op, d in sorted(op_diffs.items(), key=lambda kv: (-abs(kv[1]), kv[0])) if d != 0)
    inside = [u for u in uncounted if is_within(u.module, current) and u.operator not in operators]
    inside.sort(key=lambda u: not u.reason.startswith(NO_FORMULA))  # what nobody measured first
    missed = dict.fromkeys(
        f"{u.operator} (uncounted)" for u in inside if not (core_only and u.reason.endswith(CONVENTION_UNCOUNTED))
    )
    return current, (*missed, *operators)


def compute_gaps(counters: Sequence[CounterResult], limit: float, flag_on: str = "core") -> tuple[Gap, ...]:
    """Gaps of every pair of successful counters, in the order given (``thop_vs_fvcore``, ``thop_vs_torch``, ...).

    Args:
        counters: results in the order the user asked for them.
        limit: relative gap above which a pair is flagged.
        flag_on: ``"core"`` flags on the MAC core gap, ``"total"`` on the total gap.
    """
    ok = [c for c in counters if c.ok and c.macs is not None]
    gaps = []
    for i, first in enumerate(ok):
        for second in ok[i + 1 :]:
            total = relative_gap(first.macs, second.macs)
            core = relative_gap(first.core_macs or 0, second.core_macs or 0)
            decisive = core if flag_on == "core" else total
            module, operators = (None, ())
            if decisive > 0:
                module, operators = attribute_gap(
                    first.module_operators,
                    second.module_operators,
                    core_only=flag_on == "core",
                    uncounted=(*first.uncounted, *second.uncounted),
                )
            gaps.append(Gap(first.name, second.name, total, core, decisive > limit, module, operators))
    return tuple(gaps)
