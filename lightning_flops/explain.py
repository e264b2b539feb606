"""Reconciliation of a counter with the reference, and module-by-module diffs of two runs. Pure: no torch.

Counters store **inclusive** MACs per module and operator. Both functions here first derive each module's **own**
MACs (inclusive minus its children's), so that a difference is booked once, at the deepest module where it arises.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from lightning_flops.vocabulary import CONVENTION_OPERATORS, CORE_OPERATORS

if TYPE_CHECKING:
    from lightning_flops.report import CounterResult, FlopsReport

__all__ = [
    "CAUSES",
    "DiffRow",
    "Discrepancy",
    "Explanation",
    "ParamDiffRow",
    "ReportDiff",
    "align_roots",
    "collapse",
    "diff_reports",
    "explain",
    "explained_share",
    "own_counts",
]

#: Every cause a :class:`Discrepancy` can carry.
CAUSES = ("uncounted", "convention", "overcount", "undercount", "rule", "unexplained")

_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)")


@dataclass(frozen=True)
class Discrepancy:
    """Where one counter and the reference disagree: one (module, operator), whole call, in MACs.

    Args:
        module: qualified ``named_modules()`` name, ``""`` for the root; the deepest module where it arises.
        operator: vocabulary operator (``conv``, ``einsum``, ``norm``, ``custom``, ...).
        macs: counter minus reference (signed) for the whole call (``batch_size`` samples).
        cause: one of :data:`CAUSES`.
        note: the known reason, when there is one.
        batch_size: samples in the profiled call (:attr:`macs_per_sample` divides by it).

    Example::

        for row in report.explain("thop"):
            print(row.module, row.operator, row.macs_per_sample, row.cause, row.note)
    """

    module: str
    operator: str
    macs: int
    cause: str
    note: str = ""
    batch_size: int = 1

    @property
    def macs_per_sample(self) -> float:
        """``macs`` of one sample: what every display shows."""
        return self.macs / max(self.batch_size, 1)


class Explanation(tuple):
    """The rows of :func:`explain` (a ``tuple`` of :class:`Discrepancy`), readable as a table.

    ``str()`` and ``repr()`` give the one-line summary and the table of ``lightning-flops explain`` (repeated blocks
    collapsed, MACs per sample); Jupyter shows it as Markdown. The rows themselves stay whole-call integers that sum
    to the difference of the totals.

    Args:
        rows: the discrepancies, largest first.
        report: the explained report.
        counter: the counter explained.
        reference: the counter it is held against.

    Example::

        rows = report.explain("thop")
        print(rows)                # summary line and table, per sample
        rows.summary()             # "thop - torch = -4.24 MMACs per sample: 100% explained: einsum uncounted ..."
        rows[0].macs_per_sample    # the largest row, per sample
    """

    report: FlopsReport
    counter: str
    reference: str

    def __new__(
        cls, rows: Iterable[Discrepancy], report: FlopsReport, counter: str, reference: str = "torch"
    ) -> Explanation:
        self = super().__new__(cls, rows)
        self.report, self.counter, self.reference = report, counter, reference
        return self

    def __getnewargs__(self) -> tuple[Any, ...]:  # copy and pickle rebuild through __new__
        return (tuple(self), self.report, self.counter, self.reference)

    def summary(self) -> str:
        """One line: the difference per sample, the share explained and its largest causes."""
        from lightning_flops.render import explain_summary

        return explain_summary(self.report, self.counter, self.reference, rows=self)

    def table(self, fmt: str = "table") -> str:
        """The summary and the rows as ``"table"`` (plain text), ``"markdown"``, ``"csv"`` or ``"json"``, as the
        ``lightning-flops explain`` command prints them."""
        from lightning_flops.render import explain_text

        return explain_text(self.report, self.counter, self.reference, fmt, rows=self)

    def __str__(self) -> str:
        return self.table("table")

    def __repr__(self) -> str:
        return self.table("table")

    def _repr_markdown_(self) -> str:
        return self.table("markdown")


@dataclass(frozen=True)
class DiffRow:
    """One (module, operator) whose per-sample MACs changed between run ``a`` and run ``b``.

    Args:
        module: qualified module name (``""`` the root).
        operator: vocabulary operator.
        a_macs: per-sample MACs in run ``a`` (``None``: the module is not in ``a``).
        b_macs: per-sample MACs in run ``b`` (``None``: the module is not in ``b``).
        change: ``"added"``, ``"removed"`` or ``"changed"``.
    """

    module: str
    operator: str
    a_macs: float | None
    b_macs: float | None
    change: str

    @property
    def delta(self) -> float:
        """``b - a`` per sample (a missing side counts 0)."""
        return (self.b_macs or 0) - (self.a_macs or 0)


@dataclass(frozen=True)
class ParamDiffRow:
    """One module whose own parameters changed between run ``a`` and run ``b``.

    Args:
        module: qualified module name.
        a_params: parameters the module holds itself in ``a`` (``None``: not in ``a``).
        b_params: the same in ``b``.
        change: ``"added"``, ``"removed"`` or ``"changed"``.
    """

    module: str
    a_params: int | None
    b_params: int | None
    change: str

    @property
    def delta(self) -> int:
        """``b - a`` (a missing side counts 0)."""
        return (self.b_params or 0) - (self.a_params or 0)


@dataclass(frozen=True)
class ReportDiff:
    """Per-sample MACs and params of run ``b`` against run ``a``, module by module.

    Args:
        counter: the counter compared.
        a_macs: per-sample MACs of ``a`` (``None`` when that counter failed or did not run).
        b_macs: per-sample MACs of ``b``.
        a_params: parameters of ``a``.
        b_params: parameters of ``b``.
        rows: changed (module, operator) rows, largest change first; their deltas sum to ``b_macs - a_macs``.
        notes: one-line remarks (different input shapes or modes).
        param_rows: modules whose own parameters changed, largest change first (empty when a report predates
            per-module parameters); their deltas sum to ``b_params - a_params``.

    Example::

        diff = lf.diff_reports(old, new)
        print(diff.total_change, [(r.module, r.delta) for r in diff.rows])
    """

    counter: str
    a_macs: float | None
    b_macs: float | None
    a_params: int
    b_params: int
    rows: tuple[DiffRow, ...]
    notes: tuple[str, ...] = ()
    param_rows: tuple[ParamDiffRow, ...] = ()

    @property
    def total_change(self) -> float:
        """``b_macs - a_macs`` per sample."""
        return (self.b_macs or 0) - (self.a_macs or 0)


# --------------------------------------------------------------------------------------------- own counts
def _nearest_parent(name: str, names: set[str]) -> str | None:
    while name != "":
        name = name.rpartition(".")[0]
        if name in names:
            return name
    return None


def own_counts(module_operators: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Each module's own MACs per operator: its inclusive count minus its nearest listed children's.

    Args:
        module_operators: inclusive MACs per module and operator (``""`` the root).

    Returns:
        Own MACs, zero entries dropped; they sum to the root's inclusive count.
    """
    names = set(module_operators) | {""}
    own = {m: dict(ops) for m, ops in module_operators.items()}
    for name in names:
        if name == "":
            continue
        parent = _nearest_parent(name, names)
        bucket = own.setdefault(parent, {})
        for op, value in module_operators.get(name, {}).items():
            bucket[op] = bucket.get(op, 0) - value
    return {m: {op: v for op, v in ops.items() if v} for m, ops in own.items() if any(ops.values())}


# ------------------------------------------------------------------------------------------------ explain
def _uncounted_mentions(result: CounterResult, operator: str, module: str) -> str | None:
    """The entry of the counter's ``uncounted`` list that names a kernel of ``operator`` in ``module`` (or in an
    unknown module), as display text; ``None`` when there is none.

    Entries are :class:`~lightning_flops.report.Uncounted` (``operator`` is a kernel or function name such as
    ``scaled_dot_product_attention``) or, in older reports, plain text.
    """
    words = _KERNEL_WORDS.get(operator, (re.escape(operator),))
    pattern = _INDEX.sub("*", module)
    exact: list[str] = []
    loose: list[str] = []
    for item in result.uncounted:
        name = getattr(item, "operator", None)
        if name is None:  # text of an older report: "einsum in blocks.*.attn (functional call, 2x)"
            text = str(item)
            if any(re.search(rf"\b{word}\b", text.lower()) for word in words):
                (exact if f" in {pattern or '<root>'} " in text else loose).append(text)
            continue
        if not any(re.fullmatch(word, name.lower().removeprefix("aten::")) for word in words):
            continue
        where = getattr(item, "module", "")
        calls = getattr(item, "calls", 0)
        place, times = (f" in {where}" if where else ""), (f", {calls}x" if calls else "")
        text = f"{name}{place} ({getattr(item, 'reason', '')}{times})"
        if where == module:
            exact.append(text)
        elif where == "":
            loose.append(text)
    return (exact or loose or [None])[0]


#: Words (regular expressions) that name an operator's kernels in the counters' ``uncounted`` texts.
_KERNEL_WORDS = {
    "attention": (r"\w*attention\w*",),
    "rnn": ("rnn", "lstm", "gru", r"rnn_\w+", r"mkldnn_rnn\w*"),
    "matmul": ("matmul", "bmm", "baddbmm", "mm", r"\w*_mm"),
    "linear": ("linear", "addmm"),
    "conv": (r"\w*conv\w*",),
    "einsum": ("einsum",),
}


def _uncounted_note(counter: str, entry: str) -> str:
    return f"in {counter}'s uncounted list: {entry}"


def _note(counter: str, operator: str, module_type: str, delta: int, result: CounterResult) -> str:
    if counter == "thop":
        if operator == "conv" and module_type.startswith("ConvTranspose") and delta > 0:
            return "thop counts a transposed conv per output element (stride^d x the MACs); torch per input element"
        if operator == "rnn":
            return "thop's RNN rules also count the gates' elementwise products"
        if operator in ("conv", "linear") and delta > 0:
            return "thop's rule may count the bias (older thop and the AGPL fork do); torch does not"
        if operator == "other":
            return "thop counts functional calls into the total only, not per module"
        if operator == "norm":
            return "thop counts a norm as 2 MACs per element (4 with affine); torch counts none"
    if counter == "fvcore":
        if operator == "einsum":
            return "fvcore reads numpy's einsum_path summary, rounded to 4 significant digits"
        if operator == "norm":
            return "fvcore counts norms per element by its convention (BatchNorm 1-2, LayerNorm 5); torch counts none"
        if operator == "interpolate":
            return "fvcore counts upsampling per output element; torch counts none"
    if result.sample_scale > 1 and abs(delta) < result.sample_scale:
        return f"counted on one sample and multiplied by {result.sample_scale}"
    return ""


def explain(report: FlopsReport, counter: str, reference: str = "torch") -> Explanation:
    """Reconcile ``counter`` with ``reference``: every (module, operator) where they disagree, with a cause.

    Args:
        report: the profile holding both counters.
        counter: the counter to explain (``"thop"``, ``"fvcore"``).
        reference: the counter it is held against (the exact torch counter by default).

    Returns:
        An :class:`Explanation`: rows sorted by size (largest first), ``sum(row.macs) == counter total - reference
        total`` exactly; printed, the summary and table of ``lightning-flops explain``.

    Raises:
        KeyError: a name is not in the report.
        ValueError: one of the two counters failed.
    """
    result, ref = report.counters[counter], report.counters[reference]
    if not result.ok or not ref.ok or result.macs is None or ref.macs is None:
        failed = counter if not result.ok or result.macs is None else reference
        raise ValueError(f"counter {failed!r} failed ({report.counters[failed].error}): nothing to reconcile")
    own_c, own_r = own_counts(result.module_operators), own_counts(ref.module_operators)
    types = getattr(report, "module_types", {}) or {}
    rows: list[Discrepancy] = []
    for module in sorted(set(own_c) | set(own_r)):
        ops_r = own_r.get(module, {})
        ops_c, relabelled = _in_reference_vocabulary(own_c.get(module, {}), ops_r)
        for op in sorted(set(ops_c) | set(ops_r)):
            c, r = ops_c.get(op, 0), ops_r.get(op, 0)
            if c == r:
                continue
            row = _classify(counter, reference, module, op, c, r, types.get(module, ""), result, ref)
            if op in relabelled:
                moved = ", ".join(relabelled[op])
                note = f"{counter} books part of it as {moved}" + (f"; {row.note}" if row.note else "")
                row = Discrepancy(row.module, row.operator, row.macs, row.cause, note)
            rows.append(row)
    residual = (result.macs - ref.macs) - sum(row.macs for row in rows)
    if residual:
        rows.append(Discrepancy("", "other", residual, "unexplained", "totals differ from the per-module counts"))
    batch = max(report.batch_size, 1)
    ordered = sorted(rows, key=lambda row: (-abs(row.macs), row.module, row.operator))
    return Explanation((replace(row, batch_size=batch) for row in ordered), report, counter, reference)


def _in_reference_vocabulary(
    ops_c: Mapping[str, int], ops_r: Mapping[str, int]
) -> tuple[dict[str, int], dict[str, list[str]]]:
    """The counter's own ops of one module, with core ops the reference has none of in that module folded into the
    reference's core op that the counter falls shortest of (torch books ``nn.MultiheadAttention``'s projections as
    ``attention``, fvcore as ``linear``).

    Returns:
        ``(relabelled ops, {reference op: [counter ops folded into it]})``.
    """
    ops = dict(ops_c)
    orphans = [op for op, v in ops_c.items() if op in CORE_OPERATORS and v > 0 and not ops_r.get(op)]
    deficits = {op: r - ops_c.get(op, 0) for op, r in ops_r.items() if op in CORE_OPERATORS and r > ops_c.get(op, 0)}
    moved: dict[str, list[str]] = {}
    if orphans and deficits:
        target = max(deficits, key=lambda op: (deficits[op], op))
        for op in orphans:
            ops[target] = ops.get(target, 0) + ops.pop(op)
            moved.setdefault(target, []).append(op)
    return ops, moved


def _classify(
    counter: str,
    reference: str,
    module: str,
    op: str,
    c: int,
    r: int,
    module_type: str,
    result: CounterResult,
    ref: CounterResult,
) -> Discrepancy:
    delta = c - r
    note = _note(counter, op, module_type, delta, result)
    if op == "custom":
        return Discrepancy(module, op, delta, "rule", "a custom_ops rule counts this module")
    if op in CONVENTION_OPERATORS:
        return Discrepancy(module, op, delta, "convention", note or f"{op} is counted by convention, counters differ")
    if c == 0:
        entry = None if note else _uncounted_mentions(result, op, module)
        if entry is not None:
            note = _uncounted_note(counter, entry)
        return Discrepancy(module, op, delta, "uncounted", note)
    if r == 0:
        if _uncounted_mentions(ref, op, module) is not None:
            return Discrepancy(module, op, delta, "overcount", f"{reference} lists {op} as uncounted")
        return Discrepancy(module, op, delta, "unexplained", note or f"{reference} counts no {op} in this module")
    entry = None if note or delta > 0 else _uncounted_mentions(result, op, module)
    if entry is not None:
        note = _uncounted_note(counter, entry)
    return Discrepancy(module, op, delta, "overcount" if delta > 0 else "undercount", note)


def explained_share(rows: Iterable[Discrepancy]) -> float:
    """Share of the absolute difference with a known cause (everything but ``unexplained``); 1.0 when none."""
    rows = list(rows)
    total = sum(abs(row.macs) for row in rows)
    if total == 0:
        return 1.0
    return sum(abs(row.macs) for row in rows if row.cause != "unexplained") / total


# ------------------------------------------------------------------------------------------------ display
def collapse(items: Iterable[tuple[str, str, str]], values: Iterable[Any]) -> list[tuple[str, str, str, int, Any]]:
    """Group rows of repeated blocks (``blocks.0.attn``, ``blocks.1.attn`` -> ``blocks.*.attn``), for display only.

    Args:
        items: ``(module, operator, tag)`` per row (the tag, a cause or a change, must agree to merge).
        values: the number (or tuple of numbers) per row, summed within a group.

    Returns:
        ``(pattern, operator, tag, modules merged, summed value)``, in first-seen order; a group of one module keeps
        its own name.
    """
    groups: dict[tuple[str, str, str], list[Any]] = {}
    for (module, op, tag), value in zip(items, values, strict=True):
        key = (_INDEX.sub("*", module), op, tag)
        entry = groups.setdefault(key, [set(), None])
        entry[0].add(module)
        if entry[1] is None:
            entry[1] = value
        elif isinstance(value, tuple):
            entry[1] = tuple((x or 0) + (y or 0) for x, y in zip(entry[1], value, strict=True))
        else:
            entry[1] = entry[1] + value
    return [
        (key[0] if len(mods) > 1 else next(iter(mods)), key[1], key[2], len(mods), value)
        for key, (mods, value) in groups.items()
    ]


# --------------------------------------------------------------------------------------------------- diff
def diff_reports(a: FlopsReport, b: FlopsReport, counter: str = "torch") -> ReportDiff:
    """Where per-sample MACs changed from run ``a`` to run ``b``, module by module and operator by operator.

    Modules are matched by qualified name; a module only in ``b`` is ``added``, only in ``a`` ``removed``.

    Args:
        a: the earlier (baseline) report.
        b: the later report.
        counter: which counter to compare (the torch reference by default).

    Returns:
        A :class:`ReportDiff` whose row deltas sum to the change of the per-sample totals.

    Raises:
        ValueError: ``counter`` is missing or failed in one of the reports.
    """
    a, b, aligned = align_roots(a, b)
    results = []
    for label, report in (("a", a), ("b", b)):
        result = report.counters.get(counter)
        if result is None or not result.ok or result.macs is None:
            why = "was not run" if result is None else f"failed ({result.error})"
            raise ValueError(f"counter {counter!r} {why} in report {label} ({report.model})")
        results.append(result)
    per_a, per_b = max(a.batch_size, 1), max(b.batch_size, 1)
    own_a, own_b = own_counts(results[0].module_operators), own_counts(results[1].module_operators)
    modules_a, modules_b = set(results[0].module_operators), set(results[1].module_operators)
    if getattr(a, "module_types", None) and getattr(b, "module_types", None):
        modules_a, modules_b = modules_a | set(a.module_types), modules_b | set(b.module_types)
    rows = []
    for module in sorted(set(own_a) | set(own_b)):
        ops_a, ops_b = own_a.get(module, {}), own_b.get(module, {})
        change = "added" if module not in modules_a else "removed" if module not in modules_b else "changed"
        for op in sorted(set(ops_a) | set(ops_b)):
            va, vb = ops_a.get(op, 0) / per_a, ops_b.get(op, 0) / per_b
            if va == vb:
                continue
            rows.append(
                DiffRow(module, op, None if change == "added" else va, None if change == "removed" else vb, change)
            )
    a_total, b_total = results[0].macs / per_a, results[1].macs / per_b
    residual = (b_total - a_total) - sum(row.delta for row in rows)
    if abs(residual) > 1e-9 * max(abs(a_total), abs(b_total), 1):
        rows.append(DiffRow("", "other", 0.0, residual, "changed"))
    notes = [aligned] if aligned else []
    shapes_a = [(i.name, tuple(i.shape[1:])) for i in a.inputs]
    shapes_b = [(i.name, tuple(i.shape[1:])) for i in b.inputs]
    if shapes_a != shapes_b:
        notes.append(f"input shapes differ: {_shapes(a)} vs {_shapes(b)} (per-sample numbers still compare)")
    if a.mode != b.mode:
        notes.append(f"modes differ: {a.mode} vs {b.mode} (per-sample numbers still compare)")
    rows.sort(key=lambda row: (-abs(row.delta), row.module, row.operator))
    return ReportDiff(
        counter, a_total, b_total, a.params.total, b.params.total, tuple(rows), tuple(notes), _param_rows(a, b)
    )


def _param_rows(a: FlopsReport, b: FlopsReport) -> tuple[ParamDiffRow, ...]:
    pa, pb = getattr(a, "module_params", None) or {}, getattr(b, "module_params", None) or {}
    if not pa or not pb:
        return ()
    rows = []
    for module in sorted(set(pa) | set(pb)):
        va, vb = pa.get(module), pb.get(module)
        if va == vb:
            continue
        in_a = module in (a.module_types or pa)
        in_b = module in (b.module_types or pb)
        change = "added" if not in_a else "removed" if not in_b else "changed"
        rows.append(ParamDiffRow(module, va if in_a else None, vb if in_b else None, change))
    return tuple(sorted(rows, key=lambda row: (-abs(row.delta), row.module)))


def _shapes(report: FlopsReport) -> str:
    return ", ".join(f"{i.name}: {list(i.shape)}" for i in report.inputs) or "no tensors"


# ------------------------------------------------------------------------------------------ root alignment
def _module_names(report: FlopsReport) -> set[str]:
    names = set(getattr(report, "module_types", None) or {})
    for result in report.counters.values():
        names |= set(result.module_operators)
    return names - {""}


def _wrapper_prefix(outer: FlopsReport, inner: FlopsReport) -> str | None:
    """The module of ``outer`` that is ``inner``'s root (a LightningModule's ``model`` attribute profiled alone),
    or ``None``: the prefix under which ``inner``'s names match more of ``outer``'s than they do unprefixed (and at
    least half of them), with the same class at the root where both reports name classes."""
    names_outer, names_inner = _module_names(outer), _module_names(inner)
    if not names_inner:
        return None
    plain = len(names_outer & names_inner)
    overlaps: dict[str, int] = {}  # prefix -> how many of inner's names stand under it in outer: one pass over outer
    for name in names_outer:
        parts = name.split(".")
        for cut in range(1, len(parts)):
            prefix, rest = ".".join(parts[:cut]), ".".join(parts[cut:])
            if rest in names_inner and prefix in names_outer:
                overlaps[prefix] = overlaps.get(prefix, 0) + 1
    better = {prefix: overlap for prefix, overlap in overlaps.items() if overlap > plain}
    if not better:
        return None
    best = min(better, key=lambda prefix: (-better[prefix], prefix))  # the most matches; the first name on a tie
    if 2 * better[best] < len(names_inner):
        return None
    types_outer, types_inner = getattr(outer, "module_types", None), getattr(inner, "module_types", None)
    if types_outer and types_inner and types_outer.get(best) != types_inner.get(""):
        return None
    return best


def _prefixed(report: FlopsReport, prefix: str) -> FlopsReport:
    """``report`` with every module named under ``prefix`` (its root becomes ``prefix``; the new root and the
    modules between hold the same inclusive counts)."""

    def rename(name: str) -> str:
        return f"{prefix}.{name}" if name else prefix

    chain = [prefix.rsplit(".", depth)[0] for depth in range(prefix.count(".") + 1)][::-1]  # "a", "a.b", ...
    counters = {}
    for key, result in report.counters.items():
        operators = {rename(m): dict(ops) for m, ops in result.module_operators.items()}
        root = dict(result.module_operators.get("", {}))
        for ancestor in ["", *chain[:-1]]:
            operators[ancestor] = dict(root)
        counters[key] = replace(result, module_operators=operators)
    types = getattr(report, "module_types", None) or {}
    params = getattr(report, "module_params", None) or {}
    changes: dict[str, Any] = {"counters": counters}
    if types:
        changes["module_types"] = {rename(m): t for m, t in types.items()}
    if params:
        changes["module_params"] = {rename(m): n for m, n in params.items()}
    return replace(report, **changes)


def align_roots(a: FlopsReport, b: FlopsReport) -> tuple[FlopsReport, FlopsReport, str]:
    """Name both reports' modules from the same root, so that a model profiled alone and the same model inside a
    LightningModule (``model.conv1`` against ``conv1``) match module by module.

    Returns:
        ``(a, b, note)``: the reports (one renamed under the other's wrapper module when one wraps the other) and a
        one-line note saying which was renamed (``""`` when nothing was).
    """
    for outer, inner, label in ((a, b, "b"), (b, a, "a")):
        prefix = _wrapper_prefix(outer, inner)
        if prefix is not None:
            renamed = _prefixed(inner, prefix)
            note = (
                f"modules of {label} ({inner.model}) are named under `{prefix}`, as in the other report "
                f"({outer.model}), so that the same modules match"
            )
            return (renamed, b, note) if label == "a" else (a, renamed, note)
    return a, b, ""
