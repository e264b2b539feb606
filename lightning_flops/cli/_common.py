"""Helpers shared by the ``lightning-flops`` commands: the error type, finding and loading reports, output files.

Nothing here imports torch, Lightning, thop or fvcore: ``compare`` (and every command that only reads reports) stays
light.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from lightning_flops.errors import ReportFormatError
from lightning_flops.report import FlopsReport

__all__ = [
    "PROG",
    "REPORT_GLOB",
    "CliError",
    "atomic_write",
    "check_output",
    "find_reports",
    "load_one",
    "load_reports",
    "per_sample",
]

PROG = "lightning-flops"
REPORT_GLOB = "flops_report*.json"


class CliError(Exception):
    """Bad command-line input: printed as ``lightning-flops: error: <message>``, exit status 2."""


def per_sample(count: int | None, batch_size: int) -> int | float | None:
    """``count / batch_size``: an exact ``int`` when it divides, else a ``float``; ``None`` stays ``None``."""
    if count is None:
        return None
    batch = max(batch_size, 1)
    return count // batch if count % batch == 0 else count / batch


def find_reports(paths: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Report files under ``paths`` (files as given, directories searched recursively), plus the errors."""
    found: list[Path] = []
    errors: list[str] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob(REPORT_GLOB) if p.is_file())
            if not files:
                errors.append(f"{raw}: no {REPORT_GLOB} found under this directory")
        elif path.is_file():
            files = [path]
        else:
            errors.append(f"{raw}: no such file or directory")
            files = []
        for file in files:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                found.append(file)
    return found, errors


def load_reports(files: Sequence[Path]) -> tuple[list[tuple[Path, FlopsReport]], list[str]]:
    """Parse every file; a malformed, non-UTF-8 or future-schema file becomes an error naming it."""
    loaded: list[tuple[Path, FlopsReport]] = []
    errors: list[str] = []
    for file in files:
        try:
            report = _checked_numbers(FlopsReport.from_json(file.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, ReportFormatError) as err:
            errors.append(f"{file}: {err}")
            continue
        loaded.append((file, report))
    return loaded, errors


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _checked_numbers(report: FlopsReport) -> FlopsReport:
    """Refuse a report whose counts are not whole numbers (the reader checks the layout, not the values' types)."""
    bad = []
    if not (_is_count(report.batch_size) and report.batch_size >= 1):
        bad.append(f"batch_size={report.batch_size!r}")
    if not (_is_count(report.params.total) and _is_count(report.params.trainable)):
        bad.append(f"params={report.params!r}")
    for name, result in report.counters.items():
        if result.macs is not None and not _is_count(result.macs):
            bad.append(f"counters.{name}.macs={result.macs!r}")
    if report.train_step_flops is not None and not _is_count(report.train_step_flops):
        bad.append(f"train_step_flops={report.train_step_flops!r}")
    for gap in report.gaps:
        if not all(isinstance(v, (int, float)) for v in (gap.relative, gap.core_relative)):
            bad.append(f"gaps.{gap.key}={gap.relative!r}, {gap.core_relative!r}")
    if bad:
        raise ReportFormatError(
            f"malformed report: counts must be integers >= 0 (batch_size >= 1), got {', '.join(bad)}"
        )
    return report


def check_output(path_text: str, option: str, force: bool, suffixes: Sequence[str] | None = None) -> Path:
    """Validate an output path before any work: allowed suffix, existing parent, no overwrite without ``--force``."""
    path = Path(path_text)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise CliError(f"`{option}` must end in one of {', '.join(suffixes)}, got {path_text!r}")
    if not path.parent.is_dir():
        raise CliError(f"`{option}`: directory {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise CliError(f"`{option}`: {path_text!r} is a directory")
    if path.exists() and not force:
        raise CliError(f"`{option}`: {path_text!r} already exists; pass --force to overwrite it")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[str], None], overwrite: bool) -> None:
    """Write through a temporary file in the same directory, then rename it over ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; an output file gets the usual mode
    try:
        write(tmp)
        if overwrite:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)  # atomic and exclusive: never replaces a file that appeared meanwhile
        except FileExistsError:
            raise CliError(f"{str(path)!r} appeared while writing; pass --force to overwrite it") from None
        Path(tmp).unlink()
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_one(path_text: str, what: str = "RUN") -> FlopsReport:
    """The one report of a run directory or report file; :class:`CliError` (exit 2) when unreadable or ambiguous.

    Args:
        path_text: a ``flops_report*.json`` file or a directory holding exactly one.
        what: the argument's name, for messages.
    """
    files, errors = find_reports([path_text])
    if errors:
        raise CliError(f"`{what}`: {errors[0]}")
    if len(files) > 1:
        listed = ", ".join(str(f) for f in files[:5]) + (", ..." if len(files) > 5 else "")
        raise CliError(f"`{what}`: {path_text} holds {len(files)} reports ({listed}); pass one report file")
    loaded, bad = load_reports(files)
    if bad:
        raise CliError(f"`{what}`: {bad[0]}")
    return loaded[0][1]
