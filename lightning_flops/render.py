"""Markdown rendering of reports: pure functions of report data, no torch.

:mod:`lightning_flops.report` holds data only; everything that turns a report into text for people lives here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from lightning_flops.counters.base import flops_from_macs
from lightning_flops.markup import escape_markdown, markdown_code
from lightning_flops.report import human_count
from lightning_flops.vocabulary import CONVENTION_UNCOUNTED

if TYPE_CHECKING:
    from lightning_flops.explain import Discrepancy, ReportDiff
    from lightning_flops.report import FlopsReport, TimingReport
    from lightning_flops.types import Uncounted

__all__ = [
    "diff_header",
    "diff_rows",
    "explain_data_rows",
    "explain_rows",
    "explain_summary",
    "explain_text",
    "gap_message",
    "latex_table",
    "param_diff_rows",
    "render_rows",
    "report_markdown",
    "rule_sets",
    "statement",
    "tex_escape",
    "timing_figure_rgb",
    "timing_markdown",
    "timing_rows",
    "timing_sentence",
    "uncounted_lines",
    "verdict_markdown",
]

_REPEATED_INDEX = re.compile(r"\.\d+(?=\.|$)")


_BALANCED = (
    "Mixture-of-experts layers were counted on the meta device under a balanced-routing assumption (each expert "
    "gets tokens x top_k / num_experts rows): the total MACs are exact for top-k routing, only their split over "
    "experts is assumed."
)


def gap_message(report: FlopsReport) -> str:
    """One sentence per flagged gap of ``report``: both counters, the total and core gaps against the limit, and the
    module and operators the gap mostly sits in (the callback's warning, and its error with ``on_gap="raise"``).

    Args:
        report: a report whose gaps are flagged (others give an empty list of gaps).
    """
    lines = [
        f"{gap.a} vs {gap.b}: {gap.relative:.2%} total, {gap.core_relative:.2%} core (limit {report.limit:.2%}), "
        f"mostly in module `{gap.module or '<root>'}` ({', '.join(gap.operators) or 'no operator named'})"
        for gap in report.gaps
        if gap.flagged
    ]
    return f"counters disagree on {report.model}: " + "; ".join(lines) + "."


def uncounted_lines(entries: Sequence[Uncounted]) -> list[str]:
    """One text line per uncounted operator, for display only (the data keeps every concrete module).

    Entries that differ only in the index of a repeated block (``layers.0.mlp``, ``layers.1.mlp``) collapse into one
    line with a ``*`` and their calls summed: ``_grouped_mm in layers.*.mlp.experts (no formula, 4x)``. Convention
    ops (fvcore's skipped elementwise and norm ops) share one line per place and reason.

    Args:
        entries: the ``uncounted`` tuple of one counter.
    """
    merged: dict[tuple[str, str, str], int] = {}
    modules: dict[tuple[str, str, str], set[str]] = {}
    for entry in entries:
        where = _REPEATED_INDEX.sub(".*", "." + entry.module)[1:] if entry.module else ""
        key = (entry.operator, where, entry.reason)
        merged[key] = merged.get(key, 0) + entry.calls
        modules.setdefault(key, set()).add(entry.module)
    merged = {  # a pattern that stands for one module only is shown as that module
        (op, next(iter(modules[(op, where, reason)])) if len(modules[(op, where, reason)]) == 1 else where, reason): n
        for (op, where, reason), n in merged.items()
    }
    conventions: dict[tuple[str, str], list[tuple[str, int]]] = {}  # convention ops: one line per place and reason
    for (operator, where, reason), calls in list(merged.items()):
        if reason.endswith(CONVENTION_UNCOUNTED):
            conventions.setdefault((where, reason), []).append((operator, calls))
            del merged[(operator, where, reason)]
    lines = []
    for (where, reason), ops in conventions.items():
        place = f" in {where}" if where else ""
        lines.append(f"{', '.join(op for op, _ in ops)}{place} ({reason}, {sum(n for _, n in ops)}x)")
    for (operator, where, reason), calls in merged.items():
        if not where and not calls and reason.startswith(operator):
            lines.append(reason)  # read from an older report, where each entry was this text
            continue
        place = f" in {where}" if where else ""
        count = f", {calls}x" if calls else ""
        lines.append(f"{operator}{place} ({reason}{count})")
    return lines


def verdict_markdown(report: FlopsReport) -> str:
    """One line for the top of the TensorBoard text: the reference's MACs and FLOPs per sample, flagged or not, why.

    Args:
        report: the report to sum up; the reference is ``torch`` when it ran, else the last counter that ran.
    """
    ok = [name for name, result in report.counters.items() if result.ok and result.macs is not None]
    if not ok:
        return "**Every counter failed**: no MACs for this run (the reasons are below)."
    reference = "torch" if "torch" in ok else ok[-1]
    macs, flops = report.macs_per_sample(reference), report.flops_per_sample(reference)
    line = (
        f"**{human_count(macs, 'MACs')} = {human_count(flops, 'FLOPs')} per sample** "
        f"({escape_markdown(reference)}{' reference' if reference == 'torch' else ''}, "
        f"{escape_markdown(report.model)}, batch {report.batch_size}, mode {report.mode})"
    )
    gap = report.largest_gap()
    if report.flagged and gap is not None:
        value = gap.core_relative if report.flag_on == "core" else gap.relative
        operators = escape_markdown(", ".join(gap.operators) or "no operator named")
        line += (
            f". **Flagged**: {gap.a} vs {gap.b} differ by {value:.2%} ({report.flag_on}, limit {report.limit:.2%}), "
            f"mostly in {markdown_code(gap.module or '<root>')} ({operators})."
        )
    elif gap is not None:
        line += f". Not flagged: the counters agree within {report.limit:.2%} on the {report.flag_on}."
    else:
        line += ". Not flagged: fewer than two counters ran, nothing to compare."
    return line


def report_markdown(report: FlopsReport, top_modules: int = 8) -> str:
    """A Markdown summary: counters as columns (per sample, human units), top modules, uncounted ops, gaps."""
    names = list(report.counters)
    lines = [
        f"### {escape_markdown(report.model)}: compute per sample (batch {report.batch_size}, mode {report.mode})",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]

    def row(label: str, cells: list[str]) -> None:
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    per = max(report.batch_size, 1)
    results = [report.counters[n] for n in names]
    row("MACs", [human_count(r.macs / per, "MACs") if r.ok and r.macs is not None else "failed" for r in results])
    row("FLOPs (2 x MACs)", [human_count(r.flops / per, "FLOPs") if r.flops is not None else "-" for r in results])
    row("core MACs", [human_count(r.core_macs / per, "MACs") if r.core_macs is not None else "-" for r in results])
    row(
        "convention MACs",
        [human_count(r.convention_macs / per, "MACs") if r.convention_macs is not None else "-" for r in results],
    )
    row("counted on", [r.device or "-" for r in results])
    row("seconds", [f"{r.seconds:.2f}" for r in results])
    if report.tokens:
        row("MACs per token", [human_count(report.macs_per_token(n), "MACs") for n in names])
    active = f", {report.params.active:,} active on this input" if report.params.active is not None else ""
    if report.params.active_per_token is not None and report.params.active_per_token != report.params.active:
        active += f", {report.params.active_per_token:,} per token"
    lines += [
        "",
        f"Parameters: {report.params.total:,} total, {report.params.trainable:,} trainable{active} "
        f"({human_count(report.params.total, '')})"
        + (f", {report.params.packed:,} of them packed (quantized)" if report.params.packed else "")
        + ". FLOPs = 2 x MACs.",
    ]
    if report.tokens:
        lines.append(f"Tokens: {report.tokens:,} real tokens in the call (padding positions are computed, not tokens).")
    if report.moe_routing == "balanced":
        lines.append(_BALANCED)
    if report.train_step_flops is not None:
        lines.append(f"Training step (forward + backward, per batch): {human_count(report.train_step_flops, 'FLOPs')}")
        step_uncounted = uncounted_lines(report.train_step_uncounted)
        if step_uncounted:
            lines += ["", "Training step uncounted (seen, counted as 0):", ""]
            lines += [f"- {escape_markdown(line)}" for line in step_uncounted]
    elif report.train_step_error is not None:
        lines.append(f"Training step (forward + backward): not counted: {escape_markdown(report.train_step_error)}")
    failed = [r for r in results if not r.ok]
    if failed:
        lines += ["", "Failed counters:"] + [f"- {r.name}: {escape_markdown(r.error)}" for r in failed]
    moved = [r for r in results if r.ok and r.device_note]
    if moved:
        lines += ["", "Counted elsewhere than first tried:"]
        lines += [f"- {r.name} (counted on {r.device}): {escape_markdown(r.device_note)}" for r in moved]
    lines += _top_modules_markdown(report, top_modules)
    uncounted = [(r.name, line) for r in results for line in uncounted_lines(r.uncounted)]
    if uncounted:
        lines += ["", "Uncounted (seen, counted as 0):", ""] + [
            f"- {n}: {escape_markdown(line)}" for n, line in uncounted
        ]
    lines += _parts_markdown(report)
    lines += timing_markdown(report.timing, top_modules)
    lines += _explain_markdown(report)
    if report.gaps:
        lines += ["", f"| gap (limit {report.limit:.2%}, flags on {report.flag_on}) | total | core | flagged | where |"]
        lines.append("|---|---|---|---|---|")
        for gap in report.gaps:
            where = _where(gap.module, gap.operators) if gap.flagged else "-"
            lines.append(
                f"| {gap.key} | {gap.relative:.2%} | {gap.core_relative:.2%} | "
                f"{'**yes**' if gap.flagged else 'no'} | {where} |"
            )
    return "\n".join(lines)


def _where(module: str | None, operators: Sequence[str]) -> str:
    """A gap's place: the module as code (``<root>`` for the model itself) and its operators, escaped."""
    return f"{markdown_code(module or '<root>')} ({escape_markdown(', '.join(operators)) or '-'})"


def _parts_markdown(report: FlopsReport) -> list[str]:
    if not report.parts:
        return []
    names = list(report.counters)
    lines = ["", "| part (per sample) | params | " + " | ".join(f"{n} MACs" for n in names) + " |"]
    lines.append("|---|---|" + "---|" * len(names))
    for label, part in report.parts.items():
        cells = [human_count(part.macs_per_sample(n), "MACs") for n in names]
        lines.append(f"| {escape_markdown(label)} | {human_count(part.params.total, '')} | " + " | ".join(cells) + " |")
    return lines


def _explain_markdown(report: FlopsReport, reference: str = "torch") -> list[str]:
    ref = report.counters.get(reference)
    if ref is None or not ref.ok:
        return []
    lines = [
        f"- {explain_summary(report, name, reference)}"
        for name, result in report.counters.items()
        if name != reference and result.ok
    ]
    return ["", f"Differences from {reference} (counter - {reference}):", *lines] if lines else []


def _top_modules_markdown(report: FlopsReport, top: int) -> list[str]:
    reference = next((r for r in reversed(list(report.counters.values())) if r.ok), None)
    if reference is None or top <= 0:
        return []
    by_module = reference.by_module
    parent = ""
    while True:  # skip wrappers (a LightningModule's `model`): list the first level with several modules
        prefix = f"{parent}." if parent else ""
        level = {m: v for m, v in by_module.items() if m.startswith(prefix) and m and "." not in m[len(prefix) :]}
        if len(level) != 1:
            break
        parent = next(iter(level))
    ranked = sorted(level.items(), key=lambda kv: -kv[1])[:top]
    if not ranked:
        return []
    names = list(report.counters)
    per = max(report.batch_size, 1)
    lines = ["", "| top modules (MACs per sample) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for module, _ in ranked:
        cells = []
        for n in names:
            value = report.counters[n].by_module.get(module) if report.counters[n].ok else None
            cells.append(human_count(value / per, "MACs") if value is not None else "-")
        lines.append(f"| {markdown_code(module)} | " + " | ".join(cells) + " |")
    return lines


# ------------------------------------------------------------------------------------------ where the time goes
def _seconds_text(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1e3:.3g} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.3g} us"


def timing_rows(timing: TimingReport, by: str, top: int = 8) -> list[dict[str, Any]]:
    """The largest rows of ``timing`` grouped by ``"operator"`` (over all modules) or ``"module"`` (each module's own
    calls), largest time first: ``{by, time_share, mac_share, flops_per_second}``.

    A row's achieved FLOP/s is ``2 * its MACs / (its time share * forward_seconds)``: its share of the measured plain
    forward (profiler overhead left out), ``None`` when it counts no MACs.

    Args:
        timing: a report's timing.
        by: ``"operator"`` or ``"module"``.
        top: rows to keep (the rest are left out, not summed).
    """
    total_seconds = timing.operator_seconds
    total_macs = sum(op.macs for op in timing.operators)
    groups: dict[str, list[float]] = {}
    for op in timing.operators:
        key = op.operator if by == "operator" else op.module
        entry = groups.setdefault(key, [0.0, 0])
        entry[0] += op.seconds
        entry[1] += op.macs
    rows = []
    for key, (seconds, macs) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]:
        share = seconds / total_seconds if total_seconds > 0 else 0.0
        rate = (
            flops_from_macs(macs) / (share * timing.forward_seconds)
            if macs and share > 0 and timing.forward_seconds > 0
            else None
        )
        rows.append(
            {
                by: key,
                "time_share": share,
                "mac_share": macs / total_macs if total_macs else 0.0,
                "flops_per_second": rate,
            }
        )
    return rows


def _zero_mac_operators(timing: TimingReport) -> list[tuple[str, float]]:
    """The operators that count no MACs with their share of the operators' time (over all modules), largest first."""
    total = timing.operator_seconds
    seconds: dict[str, float] = {}
    for op in timing.operators:
        if op.zero_mac:
            seconds[op.operator] = seconds.get(op.operator, 0.0) + op.seconds
    return sorted(((name, value / total) for name, value in seconds.items() if total > 0), key=lambda kv: -kv[1])


def _rate(value: float | None) -> str:
    return human_count(value, "FLOP/s") if value is not None else "-"


def timing_markdown(timing: TimingReport | None, top: int = 8) -> list[str]:
    """The "where the time goes" section: the forward's time and FLOP rate, the zero-MAC share, then the top
    operators and the top modules by time share beside their MAC share and achieved FLOP/s; ``[]`` without timing."""
    if timing is None:
        return []
    runs = len(timing.forward_runs)
    mfu = f", MFU {timing.mfu:.1%}" if timing.mfu is not None else ""
    lines = [
        "",
        f"Where the time goes: one forward takes {_seconds_text(timing.forward_seconds)} (median of {runs} on "
        f"{timing.device}, {timing.dtype})"
        + (f", {_rate(rate)} achieved{mfu}." if (rate := timing.achieved_flops_per_second) is not None else "."),
    ]
    if timing.note:
        lines.append(f"Note: {escape_markdown(timing.note)}.")
    if not timing.operators:
        return lines
    largest = ", ".join(f"{name} {share:.1%}" for name, share in _zero_mac_operators(timing)[:5] if share >= 0.0005)
    lines.append(
        f"Operators that count no MACs take {timing.zero_mac_share:.1%} of the operators' time"
        + (f" (largest: {escape_markdown(largest)})." if largest else ".")
    )
    if timing.unjoined_macs:
        lines.append(
            f"{human_count(timing.unjoined_macs, 'MACs')} of the torch counter matched no profiled call (a custom "
            "rule, or a function the profiler sees as other kernels): not in the MAC shares below."
        )
    for by, title in (("operator", "top operators"), ("module", "top modules (own calls)")):
        lines += ["", f"| {title} | time share | MAC share | achieved FLOP/s |", "|---|---|---|---|"]
        for row in timing_rows(timing, by, top):
            name = escape_markdown(row[by]) if by == "operator" else markdown_code(row[by] or "<root>")
            lines.append(
                f"| {name} | {row['time_share']:.1%} | {row['mac_share']:.1%} | {_rate(row['flops_per_second'])} |"
            )
    return lines


def timing_sentence(timing: TimingReport | None) -> str | None:
    """One sentence for the statement: the share of the measured forward spent in operators that count no MACs,
    with the largest of them and how it was measured; ``None`` without an operator split."""
    if timing is None or not timing.operators:
        return None
    largest = [f"{name} {share:.0%}" for name, share in _zero_mac_operators(timing)[:3] if share >= 0.005]
    source = "operator CPU time" if timing.time_source == "cpu" else "kernel time"
    rate = timing.achieved_flops_per_second
    return (
        f"Measured with torch.profiler on {timing.device} ({timing.dtype}; {source}), "
        f"{timing.zero_mac_share:.0%} of the forward's operator time went to operators that count no MACs"
        + (f" ({', '.join(largest)})" if largest else "")
        + f"; one forward took {_seconds_text(timing.forward_seconds)} (median of {len(timing.forward_runs)})"
        + (f", {human_count(rate, 'FLOP/s')} achieved" if rate is not None else "")
        + "."
    )


def timing_figure_rgb(timing: TimingReport | None, top: int = 8) -> Any:
    """A bar chart of the top modules (own calls): time share beside MAC share, as an ``[H, W, 3]`` uint8 array
    (TensorBoard's Images tab); ``None`` without an operator split or without matplotlib.

    Drawn on a ``matplotlib.figure.Figure`` with the Agg canvas: no pyplot, no global figure state.
    """
    if timing is None or not timing.operators:
        return None
    try:
        import numpy as np
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    rows = list(reversed(timing_rows(timing, "module", top)))
    figure = Figure(figsize=(7, 1.2 + 0.45 * len(rows)), dpi=100)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = np.arange(len(rows))
    axes.barh(positions + 0.2, [100 * r["time_share"] for r in rows], height=0.4, label="time share (%)")
    axes.barh(positions - 0.2, [100 * r["mac_share"] for r in rows], height=0.4, label="MAC share (%)")
    axes.set_yticks(positions, [r["module"] or "<root>" for r in rows])
    axes.set_xlabel("% of the forward (own calls of each module)")
    axes.set_title("Where the time goes: time share vs MAC share")
    axes.legend(loc="best", framealpha=0.9)
    figure.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


# ---------------------------------------------------------------------------------------------- explain
def _signed(value: float, unit: str = "MACs") -> str:
    text = human_count(value, unit)
    return text if value < 0 else f"+{text}"


def explain_summary(
    report: FlopsReport,
    counter: str,
    reference: str = "torch",
    top: int = 3,
    rows: Sequence[Discrepancy] | None = None,
) -> str:
    """One line: ``thop - torch = -6.65 MMACs per sample: 100% explained: einsum uncounted -8.39 MMACs, ...``.

    Args:
        report: the profile.
        counter: the counter explained.
        reference: the counter it is held against.
        top: how many (operator, cause) groups to name, largest first.
        rows: the rows of ``explain(report, counter, reference)`` when already computed.
    """
    from lightning_flops.explain import explain, explained_share

    rows = explain(report, counter, reference) if rows is None else rows
    per = max(report.batch_size, 1)
    total = sum(row.macs for row in rows) / per
    if not rows:
        return f"{counter} - {reference} = 0 MACs per sample: the counters agree everywhere"
    groups: dict[tuple[str, str], int] = {}
    for row in rows:
        groups[(row.operator, row.cause)] = groups.get((row.operator, row.cause), 0) + row.macs
    ranked = sorted(groups.items(), key=lambda kv: -abs(kv[1]))
    named = ", ".join(f"{op} {cause} {_signed(v / per)}" for (op, cause), v in ranked[:top])
    more = f", {len(ranked) - top} more" if len(ranked) > top else ""
    share = explained_share(rows)
    return f"{counter} - {reference} = {_signed(total)} per sample: {share:.0%} explained: {named}{more}"


def explain_rows(report: FlopsReport, rows: Sequence[Discrepancy]) -> list[dict[str, Any]]:
    """Displayed rows of an explanation: repeated blocks collapsed (``blocks.*.attn`` (12x)), per sample."""
    from lightning_flops.explain import collapse

    per = max(report.batch_size, 1)
    notes = {(row.module, row.operator): row.note for row in rows}
    groups = collapse([(r.module, r.operator, r.cause) for r in rows], [r.macs for r in rows])
    out = []
    for pattern, op, cause, count, macs in groups:
        first = next(r for r in rows if r.operator == op and r.cause == cause and _matches(r.module, pattern))
        out.append(
            {
                "module": (pattern or "<root>") + (f" ({count}x)" if count > 1 else ""),
                "operator": op,
                "macs_per_sample": macs / per,
                "cause": cause,
                "note": notes[(first.module, first.operator)],
            }
        )
    return sorted(out, key=lambda row: -abs(row["macs_per_sample"]))


#: Columns of an explanation: displayed tables (per sample, collapsed) and data (csv/json: one row per module).
EXPLAIN_TABLE_COLUMNS = ("module", "operator", "macs_per_sample", "cause", "note")
EXPLAIN_DATA_COLUMNS = ("counter", "module", "operator", "macs", "macs_per_sample", "cause", "note")


def explain_data_rows(counter: str, rows: Sequence[Discrepancy]) -> list[dict[str, Any]]:
    """One dict per row, whole-call ``macs`` beside ``macs_per_sample``, for csv and json."""
    return [
        {
            "counter": counter,
            "module": row.module,
            "operator": row.operator,
            "macs": row.macs,
            "macs_per_sample": row.macs_per_sample,
            "cause": row.cause,
            "note": row.note,
        }
        for row in rows
    ]


def explain_text(
    report: FlopsReport,
    counter: str,
    reference: str = "torch",
    fmt: str = "table",
    rows: Sequence[Discrepancy] | None = None,
) -> str:
    """What ``lightning-flops explain`` prints for one counter, as an ``Explanation`` prints too: the summary line and
    the collapsed per-sample rows (``table``, ``markdown``), or every row with exact integers (``csv``, ``json``).

    Args:
        report: the profile.
        counter: the counter explained.
        reference: the counter it is held against.
        fmt: ``"table"``, ``"markdown"``, ``"csv"`` or ``"json"``.
        rows: the rows of ``explain(report, counter, reference)`` when already computed.
    """
    from lightning_flops.explain import explain

    rows = explain(report, counter, reference) if rows is None else rows
    if fmt in ("csv", "json"):
        return render_rows(explain_data_rows(counter, rows), EXPLAIN_DATA_COLUMNS, fmt)
    text = explain_summary(report, counter, reference, rows=rows)
    if rows:
        text += "\n\n" + render_rows(explain_rows(report, rows), EXPLAIN_TABLE_COLUMNS, fmt)
    return text


def _matches(module: str, pattern: str) -> bool:
    return re.fullmatch(re.escape(pattern).replace(r"\*", r"\d+"), module) is not None


def render_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str], fmt: str) -> str:
    """``rows`` as a plain-text table, Markdown, CSV or JSON (numbers exact in CSV/JSON, human units in tables)."""
    import csv
    import io
    import json

    if fmt == "json":
        return json.dumps([{c: row[c] for c in columns} for row in rows], indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue().rstrip("\n")
    cells = [[_cell(row[c], c) for c in columns] for row in rows]
    if fmt == "markdown":
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        return "\n".join(lines + ["| " + " | ".join(escape_markdown(c) for c in cell) + " |" for cell in cells])
    widths = [max([len(c)] + [len(cell[i]) for cell in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines += ["  ".join(x.ljust(w) for x, w in zip(cell, widths, strict=True)).rstrip() for cell in cells]
    return "\n".join(lines)


def _cell(value: Any, column: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if column.endswith("macs_per_sample") or column in ("a_macs", "b_macs", "delta"):
            return _signed(value) if column in ("macs_per_sample", "delta") else human_count(value, "MACs")
        if column.endswith("params"):
            return human_count(value, "").strip()
        if column == "params_delta":
            return f"{value:+,}"
    return str(value)


# -------------------------------------------------------------------------------------------------- diff
def _collapsed_changes(
    keys: list[tuple[str, str, str]], values: list[tuple[int, int]]
) -> Iterator[tuple[str, str, str, int | None, int | None]]:
    """``(module label, operator, change, a, b)`` per displayed diff row: repeated blocks collapsed (``layers.*
    (12x)``), the side an added or removed module lacks as ``None``."""
    from lightning_flops.explain import collapse

    for pattern, op, change, count, (a, b) in collapse(keys, values):
        module = (pattern or "<root>") + (f" ({count}x)" if count > 1 else "")
        yield module, op, change, None if change == "added" else a, None if change == "removed" else b


def diff_rows(diff: ReportDiff) -> list[dict[str, Any]]:
    """Displayed rows of a run diff: repeated blocks collapsed, largest change first."""
    keys = [(r.module, r.operator, r.change) for r in diff.rows]
    out = [
        {"module": module, "operator": op, "change": change, "a_macs": a, "b_macs": b, "delta": (b or 0) - (a or 0)}
        for module, op, change, a, b in _collapsed_changes(keys, [(r.a_macs, r.b_macs) for r in diff.rows])
    ]
    return sorted(out, key=lambda row: -abs(row["delta"]))


def param_diff_rows(diff: ReportDiff) -> list[dict[str, Any]]:
    """Displayed rows of the parameter changes: repeated blocks collapsed, largest change first."""
    keys = [(r.module, "params", r.change) for r in diff.param_rows]
    out = [
        {"module": module, "change": change, "a_params": a, "b_params": b, "params_delta": (b or 0) - (a or 0)}
        for module, _, change, a, b in _collapsed_changes(keys, [(r.a_params, r.b_params) for r in diff.param_rows])
    ]
    return sorted(out, key=lambda row: -abs(row["params_delta"]))


def diff_header(diff: ReportDiff) -> list[str]:
    """The lines above a diff table: notes (different shapes or modes), totals and params, per sample."""
    lines = list(diff.notes)
    lines.append(
        f"{diff.counter} MACs per sample: {human_count(diff.a_macs, 'MACs')} -> {human_count(diff.b_macs, 'MACs')}"
        f" ({_signed(diff.total_change)}); params {diff.a_params:,} -> {diff.b_params:,}"
        f" ({diff.b_params - diff.a_params:+,})"
    )
    return lines


# --------------------------------------------------------------------------------------------- statement
_CORE_WORDS = {
    "conv": "convolutions",
    "linear": "linear layers",
    "matmul": "matrix products",
    "einsum": "einsum contractions",
    "attention": "attention",
    "rnn": "recurrent layers",
}
_TOOLS = {
    "torch": "torch.utils.flop_counter.FlopCounterMode of PyTorch",
    "thop": "thop",
    "fvcore": "fvcore.nn.FlopCountAnalysis of fvcore",
}


def _exact(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.1f}"


def statement(report: FlopsReport, counter: str = "torch") -> str:
    """A paste-ready paragraph: per-sample MACs and FLOPs, inputs, mode, conventions, rules, params, tools.

    Args:
        report: the profile.
        counter: the counter whose numbers are stated (the exact torch counter by default).

    Raises:
        ValueError: that counter failed or was not run.
    """
    result = report.counters.get(counter)
    if result is None or result.macs is None:
        raise ValueError(f"counter {counter!r} has no count in this report")
    macs, flops = report.macs_per_sample(counter), report.flops_per_sample(counter)
    shapes = "; ".join(f"{i.dtype} [{', '.join(map(str, i.shape))}]" for i in report.inputs) or "no tensor input"
    per_sample = "; ".join(f"[{', '.join(map(str, i.shape[1:]))}]" for i in report.inputs)
    ops = [op for op in _CORE_WORDS if result.by_operator.get(op)]
    words = [_CORE_WORDS[op] for op in ops]
    counted = (", ".join(words[:-1]) + " and " + words[-1]) if len(words) > 1 else (words[0] if words else "nothing")
    version = report.versions.get(counter if counter != "torch" else "torch", "?")
    lf_version = report.versions.get("lightning_flops", "?")
    parts = [
        f"{report.model} costs {human_count(macs, 'MACs')} ({_exact(macs)} MACs) per sample, i.e. "
        f"{human_count(flops, 'FLOPs')} ({_exact(flops)} FLOPs; 1 MAC = 2 FLOPs), for one forward pass in "
        f"{report.mode} mode on an input of shape {shapes} (batch {report.batch_size}; per sample {per_sample})."
    ]
    parts.extend(_counted_sentences(report, counter, counted))
    parts.extend(_parts_sentences(report, counter))
    params = report.params
    active = (
        f"; {params.active:,} of them read by an operator on this input"
        if params.active is not None and params.active != params.total
        else ""
    )
    if params.active_per_token is not None and params.active_per_token != params.active:
        active += f"; {params.active_per_token:,} per token (the shared parts and the experts one token meets)"
    parts.append(f"The model has {params.total:,} parameters ({params.trainable:,} trainable{active}).")
    if report.moe_routing == "balanced":
        parts.append(_BALANCED)
    if report.train_step_flops is not None:
        batch = report.train_step_batch_size or report.batch_size
        parts.append(
            "One training step (forward and backward, torch counter) costs "
            f"{human_count(report.train_step_flops, 'FLOPs')} ({report.train_step_flops:,} FLOPs) per batch of {batch}."
        )
    timed = timing_sentence(report.timing)
    if timed is not None:
        parts.append(timed)
    parts.append(f"Counted with {_TOOLS.get(counter, counter)} {version} through lightning-flops {lf_version}.")
    others = [
        name for name, other in report.counters.items() if name != counter and other.ok and other.macs is not None
    ]
    for name in others:
        try:
            summary = explain_summary(report, name, counter, top=3)
        except (KeyError, ValueError):
            continue
        tool = report.versions.get("thop_variant", "thop") if name == "thop" else name
        parts.append(
            f"{tool} {report.versions.get(name, '')} would report {human_count(report.macs_per_sample(name), 'MACs')}"
            f" per sample ({summary.split(' per sample: ', 1)[1] if ' per sample: ' in summary else summary})."
        )
    return " ".join(parts)


_CONVENTION_WORDS = "normalization, activations, pooling, softmax, interpolation and elementwise operations"


def rule_macs_by_type(report: FlopsReport, counter: str) -> dict[str, int]:
    """MACs (whole call) that ``custom_ops`` rules gave ``counter``, per ruled module type, in rule order.

    Read from the ``custom`` operator each ruled module holds itself; a report without module types (older files)
    books them all under ``""``.

    Args:
        report: the profile.
        counter: the counter whose rule MACs are read.
    """
    from lightning_flops.explain import own_counts

    out = {rule.partition(": ")[0]: 0 for rule in report.rules}
    for module, ops in own_counts(report.counters[counter].module_operators).items():
        macs = ops.get("custom", 0)
        if macs:
            kind = report.module_types.get(module, "") if report.module_types else ""
            out[kind if kind in out else ""] = out.get(kind if kind in out else "", 0) + macs
    return {kind: macs for kind, macs in out.items() if kind or macs}


def _counted_sentences(report: FlopsReport, counter: str, counted: str) -> list[str]:
    """What the stated total holds: the core operators, what each custom rule adds, what is left out."""
    if not report.rules:
        if counter != "torch":
            return [f"Counted with {counter}'s own conventions ({counted} among them)."]
        return [
            f"Counted are the multiply-accumulates of {counted}; {_CONVENTION_WORDS} are not counted (by convention)."
        ]
    result = report.counters[counter]
    per = max(report.batch_size, 1)
    core = (result.core_macs or 0) / per
    custom = result.by_operator.get("custom", 0) / per
    other = (result.macs or 0) / per - core - custom
    rules = {rule.partition(": ")[0]: rule for rule in report.rules}
    named = "; ".join(
        f"{rules.get(kind, 'other ruled modules')} ({_exact(macs / per)} MACs)"
        for kind, macs in rule_macs_by_type(report, counter).items()
    )
    ruled = (
        f"the modules that custom rules count ({_exact(custom)} MACs per sample; a rule replaces the count of the "
        f"modules it covers): {named}"
    )
    if counter != "torch":
        own = f", {_exact(other)} MACs per sample of its own conventions" if other else ""
        return [
            f"Counted with {counter}'s own conventions: {counted} ({_exact(core)} MACs per sample){own}, and {ruled}."
        ]
    rest = f", other operators ({_exact(other)} MACs per sample)" if other else ""
    return [
        f"Counted are the multiply-accumulates of {counted} ({_exact(core)} MACs per sample){rest}, and {ruled}.",
        f"Other {_CONVENTION_WORDS} are not counted (by convention).",
    ]


def _parts_sentences(report: FlopsReport, counter: str) -> list[str]:
    """One sentence naming each part with its MACs per sample (custom rules included) and parameters."""
    if not report.parts:
        return []
    ruled = " including custom rules" if report.rules else ""
    described = []
    for label, part in report.parts.items():
        macs = part.macs_per_sample(counter)
        cost = "no count" if macs is None else f"{human_count(macs, 'MACs')} ({_exact(macs)} MACs)"
        described.append(f"{label} ({', '.join(part.modules)}): {cost}, {part.params.total:,} parameters")
    return [f"Parts, per sample{ruled}: {'; '.join(described)}."]


# ------------------------------------------------------------------------------------------------- LaTeX
_TEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def tex_escape(text: str) -> str:
    """``text`` with TeX's special characters escaped."""
    return "".join(_TEX.get(ch, ch) for ch in str(text))


def _scale(values: Sequence[float | None]) -> tuple[str, float]:
    top = max((abs(v) for v in values if v is not None), default=0)
    for prefix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if top >= scale:
            return prefix, scale
    return "", 1.0


def rule_sets(reports: Sequence[FlopsReport]) -> tuple[list[str], list[str]]:
    """Name each distinct set of ``custom_ops`` rules, so a table can say which runs were counted under which.

    Args:
        reports: the reports in row order.

    Returns:
        ``(key per report, legend)``: keys ``"none"`` (no rules), ``"R1"``, ``"R2"``, ... in first-seen order, and
        one legend line per key other than ``"none"`` (``"R1: LayerNorm: 4 MACs per output element; ..."``). When
        every run has the same rules the keys are all equal.
    """
    keys: dict[tuple[str, ...], str] = {}
    for report in reports:
        rules = tuple(sorted(report.rules))
        if rules not in keys:
            keys[rules] = "none" if not rules else f"R{sum(1 for k in keys if k) + 1}"
    legend = [f"{key}: custom rules {'; '.join(rules)}" for rules, key in keys.items() if rules]
    return [keys[tuple(sorted(report.rules))] for report in reports], legend


def _decimals(values: Sequence[float], scale: float) -> int:
    """Decimals that give the smallest non-zero value three significant digits (two at least) and keep distinct
    values distinct, up to eight."""
    scaled = [v / scale for v in values]
    smallest = min((abs(v) for v in scaled if v), default=1.0)
    decimals = min(max(2, 2 - math.floor(math.log10(smallest))), 8)
    while decimals < 8 and len({f"{v:.{decimals}f}" for v in scaled}) < len(set(scaled)):
        decimals += 1
    return decimals


def latex_table(
    runs: Sequence[tuple[str, FlopsReport]],
    counters: Sequence[str],
    parts: Sequence[str] = (),
    metric: tuple[str, Sequence[float | None]] | None = None,
) -> str:
    """A booktabs table for a paper: one row per run, per-sample params, MACs and FLOPs, units in the header.

    Each column has one unit (``[MMACs]``) and as many decimals as its smallest value needs for three significant
    digits and distinct values to stay distinct. A ``Flagged`` column says where two counters disagree beyond the
    run's limit; runs counted under different ``custom_ops`` rules get a ``Rules`` column and a legend below.

    Args:
        runs: ``(name, report)`` per run, in row order.
        counters: counters to show (MACs per counter; FLOPs for torch, or the first when torch is not among them).
        parts: part labels (``parts=``): a column of torch MACs per sample for each.
        metric: ``(name, value per run)``: a quality column after the MACs (``compare --metric``), 4 significant
            digits.
    """
    counters = sorted(counters, key=lambda name: name != "torch")  # the reference first: its FLOPs are shown
    columns: list[tuple[str, str, list[float | None]]] = [("Params", "", [float(r.params.total) for _, r in runs])]
    for i, name in enumerate(counters):
        columns.append((name, "MACs", [r.macs_per_sample(name) for _, r in runs]))
        if i == 0:
            columns.append((name, "FLOPs", [r.flops_per_sample(name) for _, r in runs]))
    for label in parts:
        values = [part.macs_per_sample("torch") if (part := r.parts.get(label)) else None for _, r in runs]
        columns.append((f"{label} torch", "MACs", values))
    headers, cells = ["Run"], [[tex_escape(name)] for name, _ in runs]
    for title, unit, values in columns:
        prefix, scale = _scale(values)
        present = [float(v) for v in values if v is not None]
        decimals = _decimals(present, scale) if present else 2
        headers.append(tex_escape(f"{title} [{prefix}{unit}]") if prefix or unit else tex_escape(title))
        for row, value in zip(cells, values, strict=True):
            exact = value is not None and scale == 1 and float(value).is_integer()
            row.append("--" if value is None else f"{value:.0f}" if exact else f"{value / scale:.{decimals}f}")
    if metric is not None:
        headers.append(tex_escape(metric[0]))
        for row, value in zip(cells, metric[1], strict=True):
            row.append("--" if value is None else f"{value:.4g}")
    headers.append("Flagged")
    for row, (_, report) in zip(cells, runs, strict=True):
        row.append("yes" if report.flagged else "no")
    keys, legend = rule_sets([report for _, report in runs])
    if len(set(keys)) > 1:
        headers.append("Rules")
        for row, key in zip(cells, keys, strict=True):
            row.append("--" if key == "none" else key)
    elif legend:
        legend = [f"custom rules (all runs): {legend[0].split('custom rules ', 1)[1]}"]
    notes = [rf"\multicolumn{{{len(headers)}}}{{l}}{{\footnotesize {tex_escape(line)}}} \\" for line in legend]
    lines = [
        r"\begin{tabular}{l" + "r" * (len(headers) - 1) + "}",
        r"\toprule",
        " & ".join(headers) + r" \\",
        r"\midrule",
        *(" & ".join(row) + r" \\" for row in cells),
        r"\bottomrule",
        *notes,
        r"\end{tabular}",
    ]
    return "\n".join(lines)
