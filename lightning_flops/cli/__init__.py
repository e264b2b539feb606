"""The ``lightning-flops`` command line: ``compare`` the JSON reports of runs, ``profile`` a model without training,
``explain`` a counter against the reference, ``diff`` two runs, print a paper ``statement``.

``compare`` reads ``flops_report*.json`` files only; it imports neither torch, Lightning, thop nor fvcore (nor
matplotlib unless ``--plot`` is given), so it runs anywhere. ``profile`` imports torch and the counters.

Exit status: 0 on success; 2 on bad input (nothing is printed to stdout and no file is written); 1 when
``compare --keep-going`` skipped bad report files, or when every counter of ``profile`` failed.

Each command is one module of this package exposing ``NAME``, ``add_parser(subparsers)`` and ``run(args) -> int``;
a new command is a new module plus one entry in ``COMMANDS``.

Example::

    lightning-flops compare runs/ --baseline small --sort torch_macs
    lightning-flops profile examples.models:transformer_lm --kwargs layers=40 --input int64:1,128 --device meta
    lightning-flops explain lightning_logs/version_0 --counter thop
    lightning-flops diff lightning_logs/version_0 lightning_logs/version_1
    lightning-flops statement lightning_logs/version_0
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
import typing
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from lightning_flops.cli import compare, diff, explain, profile, statement
from lightning_flops.cli._common import PROG, CliError
from lightning_flops.cli.profile import InputShape, make_inputs, parse_kwargs, parse_shape

__all__ = ["COMMANDS", "CliError", "InputShape", "build_parser", "main", "make_inputs", "parse_kwargs", "parse_shape"]

#: The sub-commands, in the order ``--help`` lists them.
COMMANDS = (compare, profile, explain, diff, statement)


def _version() -> str:
    """The installed distribution's version (``importlib.metadata``); ``unknown`` when it is not installed."""
    try:
        return version("lightning-flops")
    except PackageNotFoundError:
        return "unknown"


_INVALID_CHOICE = re.compile(r"invalid choice: '?(?P<value>.*?)'? \(choose from (?P<choices>.*)\)$")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block) that suggest the closest valid choice.

    ``lightning-flops statment RUN`` -> ``lightning-flops: error: argument COMMAND: invalid choice: 'statment'
    (choose from ...); did you mean `statement`?``
    """

    def error(self, message: str) -> typing.NoReturn:
        """Print ``PROG: error: MESSAGE`` on one line (``--help`` shows the usage) and exit with status 2."""
        names = ",".join(command.NAME for command in COMMANDS)
        message = message.replace(f"argument {{{names}}}", "argument COMMAND")
        found = _INVALID_CHOICE.search(message)
        if found is not None:
            choices = [c.strip().strip("'\"") for c in found.group("choices").split(",")]
            close = difflib.get_close_matches(found.group("value"), choices, n=1, cutoff=0.6)
            if close:
                message += f"; did you mean `{close[0]}`?"
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lightning-flops``: one sub-command per module in :data:`COMMANDS`."""
    parser = _Parser(
        prog=PROG,
        description="Compare the compute (MACs, FLOPs = 2 x MACs, parameters) of runs, or profile a model.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    names = ",".join(command.NAME for command in COMMANDS)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar=f"{{{names}}}")
    for command in COMMANDS:
        command.add_parser(subparsers).set_defaults(handler=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 partial, 2 bad input).

    Args:
        argv: arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Example::

        status = main(["compare", "lightning_logs", "--format", "csv"])
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse reports usage errors itself (exit 2) and --help (exit 0)
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return args.handler(args)
    except CliError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # stdout closed early (`... | head`): stop quietly, as other command-line tools do
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
