"""Markdown rendering of reports: pure functions of report data, no torch.

:mod:`lightning_flops.report` holds data only; everything that turns a report into text for people lives here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lightning_flops.markup import escape_markdown, markdown_code
from lightning_flops.report import human_count
from lightning_flops.vocabulary import CONVENTION_UNCOUNTED

if TYPE_CHECKING:
    from lightning_flops.report import FlopsReport, Uncounted

__all__ = ["report_markdown", "uncounted_lines", "verdict_markdown"]

_REPEATED_INDEX = re.compile(r"\.\d+(?=\.|$)")


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
    lines += [
        "",
        f"Parameters: {report.params.total:,} total, {report.params.trainable:,} trainable{active} "
        f"({human_count(report.params.total, '')})"
        + (f", {report.params.packed:,} of them packed (quantized)" if report.params.packed else "")
        + ". FLOPs = 2 x MACs.",
    ]
    if report.tokens:
        lines.append(f"Tokens: {report.tokens:,} in the call (padding tokens included).")
    if report.train_step_flops is not None:
        lines.append(f"Training step (forward + backward, per batch): {human_count(report.train_step_flops, 'FLOPs')}")
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
