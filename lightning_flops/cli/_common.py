"""Helpers shared by the ``lightning-flops`` commands: the error type, finding and loading reports, output files.

Nothing here imports torch, Lightning, thop or fvcore: ``compare`` (and every command that only reads reports) stays
light.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from lightning_flops._files import create_temporary
from lightning_flops.errors import ReportFormatError
from lightning_flops.markup import escape_markdown
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
    "markdown_table",
    "per_sample",
    "text_table",
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
    """Report files under ``paths`` (files as given, directories searched recursively), plus the errors.

    Anything given or found under a report's name that is not a readable regular file (a FIFO, a device such as
    ``/dev/null``, a directory or a dangling symbolic link named ``flops_report.json``) is an error naming what it is,
    never skipped in silence.
    """
    found: list[Path] = []
    errors: list[str] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        files: list[Path] = []
        if path.is_dir():
            for candidate in sorted(path.rglob(REPORT_GLOB)):
                if candidate.is_file():
                    files.append(candidate)
                else:
                    errors.append(f"{candidate}: named like a report but is {_kind(candidate)}")
            if not files and not errors:
                errors.append(f"{raw}: no {REPORT_GLOB} found under this directory")
        elif path.is_file():
            files = [path]
        else:
            errors.append(
                f"{raw}: {_kind(path)}" if path.is_symlink() or path.exists() else f"{raw}: no such file or directory"
            )
        for file in files:
            key = file.resolve()
            if key not in seen:
                seen.add(key)
                found.append(file)
    return found, errors


def _kind(path: Path) -> str:
    """What ``path`` is when it is not a regular file: for error messages."""
    if path.is_symlink() and not path.exists():
        return f"a broken symbolic link (to {os.readlink(path)!r})"
    if path.is_dir():
        return "a directory"
    if path.is_fifo():
        return "a FIFO (named pipe), not a report file"
    if path.is_char_device() or path.is_block_device():
        return "a device, not a report file"
    if path.is_socket():
        return "a socket, not a report file"
    return "not a regular file"


def load_reports(files: Sequence[Path]) -> tuple[list[tuple[Path, FlopsReport]], list[str]]:
    """Parse every file; a malformed, non-UTF-8 or future-schema file becomes an error naming it."""
    loaded: list[tuple[Path, FlopsReport]] = []
    errors: list[str] = []
    for file in files:
        try:
            report = FlopsReport.from_json(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ReportFormatError) as err:
            errors.append(f"{file}: {err}")
            continue
        if report.batch_size < 1:  # the reader allows 0 (nothing profiled); a comparison divides by it
            errors.append(f"{file}: malformed report: `batch_size` must be >= 1 to compare, got {report.batch_size}")
            continue
        loaded.append((file, report))
    return loaded, errors


def check_output(path_text: str, option: str, force: bool, suffixes: Sequence[str] | None = None) -> Path:
    """Validate an output path before any work: allowed suffix, existing parent, no overwrite without ``--force``."""
    path = Path(path_text)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise CliError(f"`{option}` must end in one of {', '.join(suffixes)}, got {path_text!r}")
    if not path.parent.is_dir():
        raise CliError(f"`{option}`: directory {str(path.parent)!r} does not exist")
    if path.is_dir():
        raise CliError(f"`{option}`: {path_text!r} is a directory")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise CliError(f"`{option}`: directory {str(path.parent)!r} is not writable")
    if path.exists() and not force:
        raise CliError(f"`{option}`: {path_text!r} already exists; pass --force to overwrite it")
    return path


def atomic_write(path: Path, write: Callable[[str], None], overwrite: bool) -> None:
    """Write through a temporary file in the same directory, then rename it over ``path``.

    An operating-system error (a directory that refuses files, a full disk) becomes a :class:`CliError` naming
    ``path``; nothing is left behind.
    """
    try:
        fd, tmp = create_temporary(path.parent, f".{path.name}.")  # the mode open() gives, not mkstemp's 0600
    except OSError as err:
        raise CliError(f"cannot write {str(path)!r}: {err.strerror or err}") from err
    os.close(fd)
    try:
        write(str(tmp))
        if overwrite:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)  # atomic and exclusive: never replaces a file that appeared meanwhile
        except FileExistsError:
            raise CliError(f"{str(path)!r} appeared while writing; pass --force to overwrite it") from None
        Path(tmp).unlink()
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise CliError(f"cannot write {str(path)!r}: {err.strerror or err}") from err
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


def text_table(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    """A plain-text table: columns padded to their widest cell, a rule of dashes under the headers."""
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells]
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    """A Markdown table, every header and cell escaped (:func:`~lightning_flops.markup.escape_markdown`)."""
    lines = ["| " + " | ".join(escape_markdown(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(escape_markdown(c) for c in line) + " |" for line in cells]
    return "\n".join(lines)
