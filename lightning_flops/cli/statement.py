"""``lightning-flops statement RUN``: a paragraph for a paper (per-sample MACs and FLOPs, inputs, conventions).

Reads JSON only (no torch).
"""

from __future__ import annotations

import argparse

from lightning_flops.cli._common import REPORT_GLOB, CliError, load_one
from lightning_flops.render import statement

NAME = "statement"


def run(args: argparse.Namespace) -> int:
    """Run ``statement``; returns the exit status (0)."""
    report = load_one(args.run)
    try:
        text = statement(report, args.counter)
    except ValueError as err:
        raise CliError(f"`--counter`: {err}") from None
    print(text, flush=True)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``statement`` sub-command to ``subparsers`` and return its parser.

    Args:
        subparsers: the object ``ArgumentParser.add_subparsers`` returned.
    """
    parser = subparsers.add_parser(
        NAME,
        help="a paste-ready paragraph: per-sample MACs and FLOPs, input shape, conventions, tools",
        description=(
            "Print one paragraph for a paper: per-sample MACs and FLOPs (1 MAC = 2 FLOPs) as exact integers, the "
            "input shapes and mode, what is counted and what is not, custom rules, parameters, tools and versions, "
            "and what thop and fvcore would report with the reason for each difference."
        ),
    )
    parser.add_argument("run", metavar="RUN", help=f"a run directory holding one {REPORT_GLOB}, or a report file")
    parser.add_argument("--counter", default="torch", metavar="NAME", help="counter to state (default: torch)")
    return parser
