"""``lightning-flops diff A B``: where the per-sample MACs changed between two runs, module by module.

Reads JSON only (no torch). Rows sum to the change of the totals; tables collapse repeated blocks, csv (MAC rows) and
json (MAC and parameter rows, totals, notes) keep one row per module.
"""

from __future__ import annotations

import argparse
import json

from lightning_flops.cli._common import REPORT_GLOB, CliError, load_one
from lightning_flops.explain import diff_reports
from lightning_flops.render import diff_header, diff_rows, param_diff_rows, render_rows

NAME = "diff"
FORMATS = ("table", "markdown", "csv", "json")
_COLUMNS = ("module", "operator", "change", "a_macs", "b_macs", "delta")
_PARAM_COLUMNS = ("module", "change", "a_params", "b_params", "params_delta")


def run(args: argparse.Namespace) -> int:
    """Run ``diff``; returns the exit status (0)."""
    a, b = load_one(args.a, "A"), load_one(args.b, "B")
    try:
        diff = diff_reports(a, b, counter=args.counter)
    except ValueError as err:
        raise CliError(f"`--counter`: {err}") from None
    rows = [
        {"module": r.module, "operator": r.operator, "change": r.change, "a_macs": r.a_macs, "b_macs": r.b_macs,
         "delta": r.delta}
        for r in diff.rows
    ]  # fmt: skip
    if args.format == "csv":  # the MAC rows, one per (module, operator)
        print(render_rows(rows, _COLUMNS, "csv"), flush=True)
        return 0
    if args.format == "json":
        data = {
            "counter": diff.counter,
            "units": "per sample; macs = multiply-accumulates, flops = 2 * macs",
            "notes": list(diff.notes),
            "a_macs": diff.a_macs,
            "b_macs": diff.b_macs,
            "total_change": diff.total_change,
            "a_params": diff.a_params,
            "b_params": diff.b_params,
            "rows": rows,
            "param_rows": [
                {"module": r.module, "change": r.change, "a_params": r.a_params, "b_params": r.b_params,
                 "delta": r.delta}
                for r in diff.param_rows
            ],
        }  # fmt: skip
        print(json.dumps(data, indent=2), flush=True)
        return 0
    lines = diff_header(diff)
    text = "\n".join(lines)
    if diff.rows:
        text += "\n\nMACs per sample:\n" + render_rows(diff_rows(diff), _COLUMNS, args.format)
    if diff.param_rows:
        text += "\n\nparameters:\n" + render_rows(param_diff_rows(diff), _PARAM_COLUMNS, args.format)
    print(text, flush=True)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``diff`` sub-command to ``subparsers`` and return its parser.

    Args:
        subparsers: the object ``ArgumentParser.add_subparsers`` returned.
    """
    parser = subparsers.add_parser(
        NAME,
        help="where the per-sample MACs changed between two runs, module by module",
        description=(
            "Compare two runs module by module and operator by operator (matched by qualified name): per-sample "
            "MACs of one counter (the torch reference by default), added/removed modules marked, rows summing to "
            "the change of the totals."
        ),
    )
    parser.add_argument("a", metavar="A", help=f"the baseline run directory (one {REPORT_GLOB}) or report file")
    parser.add_argument("b", metavar="B", help="the other run directory or report file")
    parser.add_argument("--counter", default="torch", metavar="NAME", help="counter to compare (default: torch)")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    return parser
