"""The ``lightning-flops`` command line: ``compare`` the JSON reports of runs, ``profile`` a model without training.

``compare`` reads ``flops_report*.json`` files only; it imports neither torch, Lightning, thop nor fvcore (nor
matplotlib unless ``--plot`` is given), so it runs anywhere. ``profile`` imports torch and the counters.

Exit status: 0 on success; 2 on bad input (nothing is printed to stdout and no file is written); 1 when
``compare --keep-going`` skipped bad report files, or when every counter of ``profile`` failed.

Example::

    lightning-flops compare runs/ --baseline small --sort torch_macs
    lightning-flops profile examples.models:transformer_lm --kwargs layers=40 --input int64:1,128 --device meta
"""

from __future__ import annotations

import argparse
import ast
import csv
import importlib
import importlib.util
import io
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_flops.counters.base import COUNTER_NAMES
from lightning_flops.errors import FlopsConfigError, ReportFormatError
from lightning_flops.report import FlopsReport, human_count

__all__ = ["CliError", "main"]

PROG = "lightning-flops"
REPORT_GLOB = "flops_report*.json"
FORMATS = ("table", "markdown", "csv", "json")
PLOT_SUFFIXES = (".png", ".svg", ".pdf")
#: Element types accepted by ``profile --input DTYPE:SHAPE`` (names of ``torch`` dtypes).
INPUT_DTYPES = (
    "float32",
    "float64",
    "float16",
    "bfloat16",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint8",
    "bool",
)
UNITS = (
    "per sample: *_macs are multiply-accumulates, *_flops = 2 * macs; whole-call counts divided by batch_size, "
    "integers when exact, floats otherwise"
)


class CliError(Exception):
    """Bad command-line input: printed as ``lightning-flops: error: <message>``, exit status 2."""


# ===================================================================================================== compare
@dataclass(frozen=True)
class _Run:
    """One report found on disk, with the name shown for it."""

    name: str
    path: Path
    report: FlopsReport


def _per_sample(count: int | None, batch_size: int) -> int | float | None:
    """``count / batch_size``: an exact ``int`` when it divides, else a ``float``; ``None`` stays ``None``."""
    if count is None:
        return None
    batch = max(batch_size, 1)
    return count // batch if count % batch == 0 else count / batch


def _find_reports(paths: Sequence[str]) -> tuple[list[Path], list[str]]:
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


def _load_reports(files: Sequence[Path]) -> tuple[list[tuple[Path, FlopsReport]], list[str]]:
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
    bad += _bad_moe_and_token_counts(report)
    for gap in report.gaps:
        if not all(isinstance(v, (int, float)) for v in (gap.relative, gap.core_relative)):
            bad.append(f"gaps.{gap.key}={gap.relative!r}, {gap.core_relative!r}")
    if bad:
        raise ReportFormatError(
            f"malformed report: counts must be integers >= 0 (batch_size >= 1), got {', '.join(bad)}"
        )
    return report


def _run_names(loaded: Sequence[tuple[Path, FlopsReport]]) -> list[str]:
    """Each report's directory relative to the common root of all of them (a second report in the same
    directory adds its file name); a report at the root itself is named by its logger's name/version, else by its
    directory's name. Names that still collide fall back to the file path relative to the root."""
    if not loaded:
        return []
    dirs = [file.resolve().parent for file, _ in loaded]
    root = Path(os.path.commonpath([str(d) for d in dirs]))
    names = []
    for (file, report), directory in zip(loaded, dirs, strict=True):
        relative = directory.relative_to(root).as_posix()
        if relative == ".":
            logger = report.logger or {}
            parts = [str(logger[k]) for k in ("name", "version") if logger.get(k) not in (None, "")]
            if logger.get("version") not in (None, "") and str(logger["version"]).isdigit():
                parts[-1] = f"version_{logger['version']}"  # Lightning's directory name for an int version
            relative = "/".join(parts) if parts else directory.name or str(directory)
        if file.name != "flops_report.json":
            relative = f"{relative}/{file.stem}"
        names.append(relative)
    counts = {name: names.count(name) for name in names}
    for i, (file, _) in enumerate(loaded):
        if counts[names[i]] > 1:
            names[i] = file.resolve().relative_to(root).with_suffix("").as_posix()
    return names


def _counters_of(runs: Sequence[_Run]) -> list[str]:
    """Counter names over all runs: the known ones in their usual order, then any others as first seen."""
    seen: list[str] = []
    for run in runs:
        for name in run.report.counters:
            if name not in seen:
                seen.append(name)
    return [c for c in COUNTER_NAMES if c in seen] + [c for c in seen if c not in COUNTER_NAMES]


def _sort_keys() -> tuple[str, ...]:
    per_counter = tuple(f"{c}_{unit}" for c in COUNTER_NAMES for unit in ("macs", "flops"))
    return (
        "run",
        "model",
        "batch_size",
        "params_total",
        "params_trainable",
        *per_counter,
        "largest_gap_relative",
        "train_step_flops",
        *_moe_and_token_columns(COUNTER_NAMES),
    )


def _row(run: _Run, counters: Sequence[str]) -> dict[str, Any]:
    """The machine-readable row of one run: per-sample counts as exact integers where they divide."""
    report = run.report
    row: dict[str, Any] = {
        "run": run.name,
        "path": str(run.path),
        "model": report.model,
        "mode": report.mode,
        "batch_size": report.batch_size,
        "params_total": report.params.total,
        "params_trainable": report.params.trainable,
    }
    for name in counters:
        result = report.counters.get(name)
        ok = result is not None and result.ok
        row[f"{name}_macs"] = _per_sample(result.macs if ok else None, report.batch_size)
        row[f"{name}_flops"] = _per_sample(result.flops if ok else None, report.batch_size)
    gap = report.largest_gap()
    row["largest_gap"] = gap.key if gap is not None else None
    if gap is None:
        row["largest_gap_relative"] = None
    else:
        row["largest_gap_relative"] = gap.core_relative if report.flag_on == "core" else gap.relative
    row["flag_on"] = report.flag_on
    row["flagged"] = report.flagged
    row["train_step_flops"] = _per_sample(report.train_step_flops, report.train_step_batch_size or report.batch_size)
    row.update(_moe_and_token_cells(report, counters))
    return row


# ---------------------------------------------------------------- active parameters (MoE) and per-token columns
def _moe_and_token_columns(counters: Sequence[str]) -> list[str]:
    """``params_active`` and ``{counter}_macs_per_token`` (empty for inputs without tokens, older reports)."""
    return ["params_active", *(f"{c}_macs_per_token" for c in counters)]


def _moe_and_token_cells(report: FlopsReport, counters: Sequence[str]) -> dict[str, Any]:
    cells: dict[str, Any] = {"params_active": report.params.active}
    for name in counters:
        result = report.counters.get(name)
        ok = result is not None and result.ok
        macs = result.macs if ok and report.tokens else None
        cells[f"{name}_macs_per_token"] = _per_sample(macs, report.tokens or 1)
    return cells


def _bad_moe_and_token_counts(report: FlopsReport) -> list[str]:
    bad = []
    if report.params.active is not None and not _is_count(report.params.active):
        bad.append(f"params.active={report.params.active!r}")
    if report.tokens is not None and not _is_count(report.tokens):
        bad.append(f"tokens={report.tokens!r}")
    return bad


def _moe_and_token_human(row: dict[str, Any], counters: Sequence[str]) -> list[str]:
    """Human cells: active parameters and the reference's (last counter's) MACs per token."""
    per_token = row[f"{counters[-1]}_macs_per_token"]
    return [
        human_count(row["params_active"], "") if row["params_active"] is not None else "-",
        human_count(per_token, "MACs") if per_token is not None else "-",
    ]


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or base == 0:
        return None
    return value / base


def _add_baseline(rows: list[dict[str, Any]], baseline: str, counters: Sequence[str]) -> list[str]:
    """Add ``{col}_ratio`` (x) and ``{col}_change_pct`` (%) relative to the row named ``baseline``."""
    base = next(row for row in rows if row["run"] == baseline)
    columns = ["params_total", *(f"{c}_macs" for c in counters)]
    added = []
    for column in columns:
        added += [f"{column}_ratio", f"{column}_change_pct"]
        for row in rows:
            ratio = _ratio(row[column], base[column])
            row[f"{column}_ratio"] = ratio
            row[f"{column}_change_pct"] = None if ratio is None else (ratio - 1.0) * 100.0
    return added


def _sorted(rows: list[dict[str, Any]], key: str, descending: bool) -> list[dict[str, Any]]:
    """Rows ordered by ``key``; runs without a value (a failed counter) come last either way."""
    present = [r for r in rows if r.get(key) is not None]
    missing = [r for r in rows if r.get(key) is None]
    present.sort(key=lambda r: (_natural(r[key]), _natural(r["run"])), reverse=descending)
    return present + missing


def _natural(value: Any) -> Any:
    """Sort key that orders text with numbers naturally (``cnn_w8`` before ``cnn_w16``); other values as they are."""
    if not isinstance(value, str):
        return value
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", value) if part)


def _columns(counters: Sequence[str], baseline_columns: Sequence[str]) -> list[str]:
    per_counter = [f"{c}_{unit}" for c in counters for unit in ("macs", "flops")]
    return [
        "run",
        "model",
        "mode",
        "batch_size",
        "params_total",
        "params_trainable",
        *per_counter,
        "largest_gap",
        "largest_gap_relative",
        "flag_on",
        "flagged",
        "train_step_flops",
        *_moe_and_token_columns(counters),
        *baseline_columns,
        "path",
    ]


def _human_cells(
    rows: Sequence[dict[str, Any]], counters: Sequence[str], baseline: str | None
) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the human-readable table (table and markdown formats)."""
    headers = ["run", "model", "params", "trainable", *(f"{c} MACs" for c in counters), "largest gap", "flagged"]
    headers += ["active params", f"{counters[-1]} MACs/token"]
    relative = ["params_total", *(f"{c}_macs" for c in counters)]
    if baseline is not None:
        headers += [f"{'params' if col == 'params_total' else col[: -len('_macs')]} vs base" for col in relative]
    cells = []
    for row in rows:
        line = [
            row["run"],
            row["model"],
            human_count(row["params_total"], ""),
            human_count(row["params_trainable"], ""),
        ]
        line += [human_count(row[f"{c}_macs"], "MACs") if row[f"{c}_macs"] is not None else "failed" for c in counters]
        if row["largest_gap"] is None:
            line.append("-")
        else:
            line.append(f"{row['largest_gap']} {row['largest_gap_relative']:.2%} ({row['flag_on']})")
        line.append("yes" if row["flagged"] else "no")
        line += _moe_and_token_human(row, counters)
        if baseline is not None:
            for col in relative:
                ratio, pct = row[f"{col}_ratio"], row[f"{col}_change_pct"]
                line.append("-" if ratio is None else f"{ratio:.2f}x ({pct:+.1f}%)")
        cells.append([cell.strip() for cell in line])
    return headers, cells


def _render_table(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells]
    return "\n".join(lines)


def _render_markdown(headers: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in cells]
    return "\n".join(lines)


def _render_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return buffer.getvalue().rstrip("\n")


def _render_json(rows: Sequence[dict[str, Any]], columns: Sequence[str], baseline: str | None) -> str:
    data = {"units": UNITS, "baseline": baseline, "runs": [{k: row.get(k) for k in columns} for row in rows]}
    return json.dumps(data, indent=2)


def _require_matplotlib() -> None:
    """Fail early, with what to install, when the optional ``plot`` extra is missing."""
    try:
        import matplotlib.figure  # noqa: F401  (probe only)
    except ImportError as err:
        raise CliError(
            f"`--plot` needs matplotlib, which is not installed ({err}); install the optional extra: "
            "pip install 'lightning-flops[plot]'"
        ) from err


def _plot(
    rows: Sequence[dict[str, Any]], counters: Sequence[str], path: Path, log_scale: bool, overwrite: bool
) -> None:
    """Grouped bar chart: one group per run, one bar per counter, MACs per sample; written atomically."""
    from matplotlib.figure import Figure

    names = [row["run"] for row in rows]
    fig = Figure(figsize=(max(6.0, 1.0 + 1.1 * len(names)), 4.5), dpi=100)
    ax = fig.add_subplot()
    width = 0.8 / max(len(counters), 1)
    for i, counter in enumerate(counters):
        offsets = [x + (i - (len(counters) - 1) / 2) * width for x in range(len(names))]
        values = [math.nan if row[f"{counter}_macs"] is None else row[f"{counter}_macs"] for row in rows]
        ax.bar(offsets, values, width, label=counter)
    ax.set_xticks(range(len(names)), labels=names, rotation=20, ha="right")
    ax.set_ylabel("MACs per sample (FLOPs = 2 x MACs)")
    ax.set_title("Compute per sample by counter")
    if log_scale:
        ax.set_yscale("log")
    ax.legend(title="counter")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix[1:].lower()), overwrite=overwrite)


def _check_output(path_text: str, option: str, force: bool, suffixes: Sequence[str] | None = None) -> Path:
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


def _atomic_write(path: Path, write: Callable[[str], None], overwrite: bool) -> None:
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


def _compare(args: argparse.Namespace) -> int:
    allowed = _sort_keys()
    if args.sort not in allowed:
        raise CliError(f"`--sort` must be one of {', '.join(allowed)}, got {args.sort!r}")
    plot_path = None
    if args.plot is not None:
        plot_path = _check_output(args.plot, "--plot", args.force, PLOT_SUFFIXES)
        _require_matplotlib()

    files, errors = _find_reports(args.paths)
    loaded, bad = _load_reports(files)
    errors += bad
    if errors and not args.keep_going:
        raise CliError("bad input (pass --keep-going to compare the other runs):\n  " + "\n  ".join(errors))
    if not loaded:
        raise CliError("no readable reports to compare:\n  " + "\n  ".join(errors))

    runs = [_Run(name, file, report) for name, (file, report) in zip(_run_names(loaded), loaded, strict=True)]
    counters = _counters_of(runs)
    rows = [_row(run, counters) for run in runs]
    baseline_columns: list[str] = []
    if args.baseline is not None:
        if args.baseline not in {row["run"] for row in rows}:
            names = ", ".join(repr(row["run"]) for row in rows)
            raise CliError(f"`--baseline` must be one of the runs' names ({names}), got {args.baseline!r}")
        baseline_columns = _add_baseline(rows, args.baseline, counters)
    rows = _sorted(rows, args.sort, args.descending)

    columns = _columns(counters, baseline_columns)
    if args.format == "csv":
        text = _render_csv(rows, columns)
    elif args.format == "json":
        text = _render_json(rows, columns, args.baseline)
    else:
        headers, cells = _human_cells(rows, counters, args.baseline)
        render = _render_table if args.format == "table" else _render_markdown
        caption = "Compute per sample (MACs = multiply-accumulates; FLOPs = 2 x MACs)"
        if args.baseline is not None:
            caption += f"; 'vs base' = ratio (x) and change (%) against run {args.baseline!r}"
        text = f"{caption}\n\n{render(headers, cells)}"

    if plot_path is not None:
        _plot(rows, counters, plot_path, args.log_scale, args.force)
    print(text, flush=True)
    if plot_path is not None:
        print(f"{PROG}: wrote {plot_path}", file=sys.stderr)
    if errors:
        for error in errors:
            print(f"{PROG}: skipped {error}", file=sys.stderr)
        return 1
    return 0


# ===================================================================================================== profile
@dataclass(frozen=True)
class InputShape:
    """One ``--input``: dtype name and shape, e.g. ``int64:1,128`` -> ``InputShape("int64", (1, 128))``."""

    dtype: str
    shape: tuple[int, ...]


def parse_shape(text: str) -> InputShape:
    """Parse ``"2,3,224,224"`` (float32) or ``"DTYPE:1,128"``; raise :class:`CliError` naming the bad string."""
    dtype, sep, dims = text.rpartition(":")
    dtype = dtype.strip() if sep else "float32"
    if dtype not in INPUT_DTYPES:
        raise CliError(f"`--input` {text!r}: unknown dtype {dtype!r}; use one of {', '.join(INPUT_DTYPES)}")
    parts = [p.strip() for p in dims.split(",")]
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise CliError(
            f"`--input` {text!r} is not a shape: give sizes >= 1 separated by commas, e.g. 2,3,224,224 or int64:1,128"
        )
    return InputShape(dtype, tuple(int(p) for p in parts))


def parse_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """``["layers=40", "attention=einsum"]`` -> ``{"layers": 40, "attention": "einsum"}`` (literals, else str)."""
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise CliError(f"`--kwargs` items must be NAME=VALUE, got {item!r}")
        try:
            kwargs[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = value
    return kwargs


def _import_target(target: str) -> Any:
    """Resolve ``module.path:Name`` or ``path/to/file.py:Name`` (``Name`` may be dotted) to the object."""
    location, sep, attr = target.rpartition(":")
    if not sep or not location or not attr:
        raise CliError(f"`TARGET` must be module.path:Name or path/to/file.py:Name, got {target!r}")
    if location.endswith(".py") or "/" in location or os.sep in location:
        path = Path(location)
        if not path.is_file():
            raise CliError(f"cannot import `{target}`: file {location!r} does not exist")
        module_name = f"_lightning_flops_target_{path.stem}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise CliError(f"cannot import `{target}`: {location!r} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.resolve().parent))
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            sys.modules.pop(module_name, None)
            raise CliError(f"cannot import `{target}`: {type(err).__name__}: {err}") from err
    else:
        if os.getcwd() not in sys.path:  # the console script does not put the working directory on sys.path
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(location)
        except Exception as err:
            raise CliError(f"cannot import `{target}`: {type(err).__name__}: {err}") from err
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as err:
            raise CliError(f"cannot import `{target}`: {location} has no attribute {attr!r}") from err
    return obj


def _build_model(target: str, kwargs: dict[str, Any], device: str) -> Any:
    """Call the class or factory named by ``target`` with ``kwargs`` (inside ``torch.device("meta")`` for meta)."""
    import torch
    from torch import nn

    factory = _import_target(target)
    if not callable(factory):
        raise CliError(f"`{target}` must name an nn.Module class or a function returning one, got {factory!r}")
    try:
        if device == "meta":
            with torch.device("meta"):
                model = factory(**kwargs)
        else:
            model = factory(**kwargs)
    except Exception as err:
        raise CliError(f"building `{target}` with {kwargs} failed: {type(err).__name__}: {err}") from err
    if not isinstance(model, nn.Module):
        raise CliError(f"`{target}` must build a torch.nn.Module, it returned {type(model).__name__}")
    return model


def make_inputs(model: Any, shapes: Sequence[InputShape], device: str, seed: int = 0) -> list[Any]:
    """Random tensors of ``shapes``: floats from N(0, 1); integers below the first ``nn.Embedding``'s
    ``num_embeddings`` (0 when the model has none); on ``device="meta"`` only shapes and dtypes exist."""
    import torch
    from torch import nn

    embedding = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    high = embedding.num_embeddings if embedding is not None else 1
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for spec in shapes:
        dtype = getattr(torch, spec.dtype)
        if device == "meta":
            tensors.append(torch.empty(spec.shape, dtype=dtype, device="meta"))
        elif dtype == torch.bool:
            tensors.append(torch.randint(0, 2, spec.shape, generator=generator).bool())
        elif dtype.is_floating_point:
            tensors.append(torch.randn(spec.shape, generator=generator, dtype=dtype))
        else:
            tensors.append(torch.randint(0, high, spec.shape, generator=generator, dtype=dtype))
    return tensors


def _profile(args: argparse.Namespace) -> int:
    shapes = [parse_shape(text) for text in args.input]
    kwargs = parse_kwargs(args.kwargs)
    json_path = _check_output(args.json, "--json", args.force) if args.json is not None else None

    import lightning_flops

    model = _build_model(args.target, kwargs, args.device)
    inputs = make_inputs(model, shapes, args.device)
    try:
        report = lightning_flops.profile_model(
            model,
            inputs[0] if len(inputs) == 1 else tuple(inputs),
            counters=tuple(args.counters),
            limit=args.limit,
            flag_on=args.flag_on,
            mode=args.mode,
            device="meta" if args.device == "meta" else None,
        )
    except FlopsConfigError as err:
        raise CliError(str(err)) from err
    if json_path is not None:
        text = report.to_json()
        _atomic_write(json_path, lambda tmp: Path(tmp).write_text(text + "\n", encoding="utf-8"), args.force)
    print(report.to_markdown(), flush=True)
    if json_path is not None:
        print(f"{PROG}: wrote {json_path}", file=sys.stderr)
    if not any(result.ok for result in report.counters.values()):
        print(f"{PROG}: every counter failed (see the report above)", file=sys.stderr)
        return 1
    return 0


# ======================================================================================================= main
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``lightning-flops`` (sub-commands ``compare`` and ``profile``)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compare the compute (MACs, FLOPs = 2 x MACs, parameters) of runs, or profile a model.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{compare,profile}")

    compare = commands.add_parser(
        "compare",
        help="one row per run from flops_report*.json files, per sample",
        description=(
            f"Read {REPORT_GLOB} reports (files, or directories searched recursively) and print one row per run. "
            "All counts are per sample; MACs are multiply-accumulates and FLOPs = 2 x MACs. csv/json hold exact "
            "integers where the whole-call count divides by the batch size, floats otherwise."
        ),
    )
    compare.add_argument("paths", nargs="+", metavar="PATH", help=f"a report file or a directory with {REPORT_GLOB}")
    compare.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    compare.add_argument(
        "--sort", default="run", metavar="KEY", help=f"column to sort by, one of: {', '.join(_sort_keys())}"
    )
    compare.add_argument("--descending", action="store_true", help="sort from the largest value down")
    compare.add_argument(
        "--baseline", metavar="RUN", help="a run's displayed name: add ratio (x) and change (%%) columns against it"
    )
    compare.add_argument(
        "--plot", metavar="FILE.png", help="write a grouped bar chart (runs x counters); needs matplotlib"
    )
    compare.add_argument("--log-scale", action="store_true", help="log scale for the --plot y axis")
    compare.add_argument("--force", action="store_true", help="overwrite an existing --plot file")
    compare.add_argument(
        "--keep-going",
        action="store_true",
        help="list the readable runs, name bad files on stderr and exit with status 1 instead of 2",
    )
    compare.set_defaults(handler=_compare)

    profile = commands.add_parser(
        "profile",
        help="profile a model on a random input, without training",
        description="Build TARGET, profile it with lightning_flops.profile_model and print the report (per sample).",
    )
    profile.add_argument("target", metavar="TARGET", help="module.path:ClassOrFactory or path/to/file.py:name")
    profile.add_argument(
        "--input",
        nargs="+",
        required=True,
        metavar="SHAPE",
        help="one per positional argument of forward: 2,3,224,224 (float32) or DTYPE:1,128 (e.g. int64 token ids, "
        "drawn below the first nn.Embedding's num_embeddings)",
    )
    profile.add_argument(
        "--kwargs", nargs="+", default=[], action="extend", metavar="NAME=VALUE", help="arguments of TARGET"
    )
    profile.add_argument(
        "--device",
        choices=("cpu", "meta"),
        default="cpu",
        help="meta: build the model inside torch.device('meta') (no memory for weights) and count there",
    )
    profile.add_argument("--counters", nargs="+", default=list(COUNTER_NAMES), metavar="NAME", help="counters to run")
    profile.add_argument("--mode", default="eval", help="eval (inference cost) or train (training-mode forward)")
    profile.add_argument("--limit", type=float, default=0.01, help="relative gap above which counters are flagged")
    profile.add_argument("--flag-on", default="core", help="core (MAC core only) or total")
    profile.add_argument("--json", metavar="FILE", help="also write the report as JSON (atomically)")
    profile.add_argument("--force", action="store_true", help="overwrite an existing --json file")
    profile.set_defaults(handler=_profile)
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
