"""``lightning-flops explain RUN``: every (module, operator) where a counter and the torch reference disagree.

Reads JSON only (no torch). The rows sum to the difference of the totals; tables collapse repeated blocks
(``blocks.*.attn (12x)``), csv and json keep one row per module with exact whole-call integers.
"""

from __future__ import annotations

import argparse

from lightning_flops.cli._common import REPORT_GLOB, CliError, load_one
from lightning_flops.explain import explain
from lightning_flops.render import EXPLAIN_DATA_COLUMNS, explain_data_rows, explain_text, render_rows

NAME = "explain"
FORMATS = ("table", "markdown", "csv", "json")


def run(args: argparse.Namespace) -> int:
    """Run ``explain``; returns the exit status (0)."""
    report = load_one(args.run)
    reference = args.reference
    if reference not in report.counters or not report.counters[reference].ok:
        raise CliError(
            f"`--reference`: counter {reference!r} has no count in {args.run} ({', '.join(report.counters)})"
        )
    if args.counter is not None:
        result = report.counters.get(args.counter)
        if result is None or not result.ok or args.counter == reference:
            usable = [n for n, r in report.counters.items() if r.ok and n != reference]
            raise CliError(
                f"`--counter` must be one of {usable} (counters with a count in this run), got {args.counter!r}"
            )
        names = [args.counter]
    else:
        names = [n for n, r in report.counters.items() if r.ok and n != reference]
    if args.format in ("csv", "json"):
        rows = [row for name in names for row in explain_data_rows(name, explain(report, name, reference))]
        print(render_rows(rows, EXPLAIN_DATA_COLUMNS, args.format), flush=True)
        return 0
    blocks = [explain_text(report, name, reference, args.format) for name in names]
    print("\n\n".join(blocks) or f"no counter besides {reference} has a count in this run", flush=True)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``explain`` sub-command to ``subparsers`` and return its parser.

    Args:
        subparsers: the object ``ArgumentParser.add_subparsers`` returned.
    """
    parser = subparsers.add_parser(
        NAME,
        help="why a counter differs from the torch reference, module by module",
        description=(
            "Reconcile a counter with the torch reference: one row per (module, operator) where they disagree, "
            "with a cause (uncounted, convention, overcount, undercount, rule, unexplained); rows sum to the "
            "difference of the totals. MACs are multiply-accumulates (FLOPs = 2 x MACs), per sample in tables."
        ),
    )
    parser.add_argument("run", metavar="RUN", help=f"a run directory holding one {REPORT_GLOB}, or a report file")
    parser.add_argument("--counter", metavar="NAME", help="the counter to explain (default: every one that counted)")
    parser.add_argument("--reference", default="torch", metavar="NAME", help="held against (default: torch)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    return parser
