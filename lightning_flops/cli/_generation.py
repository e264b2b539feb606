"""Generation reports in the CLI: tell them apart from profile reports, and their rows in ``compare``.

No torch import: ``compare`` reads a generation report (``lf.profile_generate(...).to_json()`` or ``profile --generate
N --json FILE``) as it reads any report.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_flops.cli._common import CliError, markdown_table, per_sample, text_table
from lightning_flops.counters.base import flops_from_macs
from lightning_flops.errors import ReportFormatError
from lightning_flops.generation_report import GenerationReport, is_generation_report
from lightning_flops.report import human_count

__all__ = ["COLUMNS", "check_options", "render", "rows", "split_generation", "text"]

#: Columns of a generation row, per sample (``*_per_token``: per new token of the decode).
COLUMNS = (
    "run",
    "model",
    "batch_size",
    "prompt_tokens",
    "new_tokens",
    "prefill_macs",
    "prefill_flops",
    "decode_macs_per_token",
    "decode_flops_per_token",
    "total_macs",
    "total_flops",
    "path",
)
UNITS = (
    "per sample: prefill_* is the first forward (the prompt; the encoder too), decode_*_per_token the mean of the "
    "later steps per new token, total_* the whole generate(); *_macs are multiply-accumulates, *_flops = 2 * macs"
)


def split_generation(files: Sequence[Path]) -> tuple[list[tuple[Path, GenerationReport]], list[Path], list[str]]:
    """``(generation reports read, the other files, errors)``: a file whose JSON says ``report_type: generation``
    is read here; every other file is left to the profile-report reader (which names what is wrong with it)."""
    loaded: list[tuple[Path, GenerationReport]] = []
    others: list[Path] = []
    errors: list[str] = []
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError):
            others.append(file)  # the profile-report reader says what is wrong, in its words
            continue
        if not is_generation_report(data):
            others.append(file)
            continue
        try:
            report = GenerationReport.from_dict(data)
        except ReportFormatError as err:
            errors.append(f"{file}: {err}")
            continue
        if report.batch_size < 1:
            errors.append(f"{file}: malformed generation report: `batch_size` must be >= 1 to compare")
            continue
        loaded.append((file, report))
    return loaded, others, errors


def rows(runs: Sequence[tuple[str, Path, GenerationReport]]) -> list[dict[str, Any]]:
    """One machine-readable row per run, per sample (exact integers where they divide)."""
    out = []
    for name, path, report in runs:
        batch = report.batch_size
        decode = sum(report.decode_macs)
        steps = batch * len(report.decode_macs)
        per_token = per_sample(decode, steps) if steps else None
        out.append(
            {
                "run": name,
                "model": report.model,
                "batch_size": batch,
                "prompt_tokens": report.prompt_tokens,
                "new_tokens": report.new_tokens,
                "prefill_macs": per_sample(report.prefill_macs, batch),
                "prefill_flops": per_sample(report.prefill_flops, batch),
                "decode_macs_per_token": per_token,
                "decode_flops_per_token": None if per_token is None else flops_from_macs(per_token),
                "total_macs": per_sample(report.total_macs, batch),
                "total_flops": per_sample(report.total_flops, batch),
                "path": str(path),
            }
        )
    return out


def render(table: Sequence[dict[str, Any]], fmt: str) -> str:
    """The generation rows as ``table``, ``markdown``, ``csv`` or ``json`` text."""
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
        writer.writeheader()
        for row in table:
            writer.writerow({k: "" if row[k] is None else row[k] for k in COLUMNS})
        return buffer.getvalue().rstrip("\n")
    if fmt == "json":
        data = {"generation_units": UNITS, "generation_runs": [dict(row) for row in table]}
        return json.dumps(data, indent=2, allow_nan=False)
    headers = ["run", "model", "batch", "prompt", "new", "prefill MACs", "decode MACs/token", "total MACs"]
    cells = [
        [
            " ".join(str(row["run"]).split()),
            " ".join(row["model"].split()),
            str(row["batch_size"]),
            str(row["prompt_tokens"]),
            str(row["new_tokens"]),
            human_count(row["prefill_macs"], "MACs"),
            human_count(row["decode_macs_per_token"], "MACs"),
            human_count(row["total_macs"], "MACs"),
        ]
        for row in table
    ]
    caption = (
        "Generation cost per sample (prefill: the prompt's forward; decode: per new token; "
        "MACs = multiply-accumulates; FLOPs = 2 x MACs)"
    )
    table = markdown_table(headers, cells) if fmt == "markdown" else text_table(headers, cells)
    return f"{caption}\n\n{table}"


def check_options(args: argparse.Namespace, profiles: bool) -> None:
    """Refuse ``compare`` options that generation reports do not have (``--format latex``, ``--metric``; ``--plot``,
    ``--sort`` and ``--baseline`` apply to profile reports, so they need some)."""
    if args.format == "latex":
        raise CliError(
            "`--format latex` reads profile reports only; generation reports give table, markdown, csv or json"
        )
    if getattr(args, "metric", None) is not None:
        raise CliError("`--metric` reads profile reports only; generation reports have no logger files")
    if not profiles and (args.plot is not None or args.baseline is not None):
        option = "--plot" if args.plot is not None else "--baseline"
        raise CliError(f"`{option}` reads profile reports only; these are all generation reports")


def text(before: str | None, names: Sequence[str], loaded: Sequence[tuple[Path, GenerationReport]], fmt: str) -> str:
    """The generation rows in ``fmt``, after the profile reports' text ``before`` (one JSON object for ``json``)."""
    runs = [(name, file, report) for name, (file, report) in zip(names, loaded, strict=True)]
    own = render(rows(runs), fmt)
    if before is None:
        return own
    if fmt == "json":
        return json.dumps({**json.loads(before), **json.loads(own)}, indent=2, allow_nan=False)
    return f"{before}\n\n{own}"
