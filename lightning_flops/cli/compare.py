"""``lightning-flops compare RUN_DIR...``: one row per run from the ``flops_report*.json`` files, per sample.

Reads JSON only: imports neither torch, Lightning, thop nor fvcore (nor matplotlib unless ``--plot`` is given, nor
tensorboard unless ``--metric`` reads event files).
"""

from __future__ import annotations

import argparse
import csv
import difflib
import io
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightning_flops.cli import _generation
from lightning_flops.cli._common import (
    PROG,
    REPORT_GLOB,
    CliError,
    atomic_write,
    check_output,
    find_reports,
    load_reports,
    markdown_table,
    per_sample,
    text_table,
)
from lightning_flops.cli._metrics import METRIC_MODES
from lightning_flops.counters.base import COUNTER_NAMES
from lightning_flops.generation_report import GenerationReport
from lightning_flops.markup import escape_markdown
from lightning_flops.render import latex_table, rule_sets
from lightning_flops.report import FlopsReport, human_count

NAME = "compare"
FORMATS = ("table", "markdown", "csv", "json", "latex")
PLOT_SUFFIXES = (".png", ".svg", ".pdf")
UNITS = (
    "per sample: *_macs are multiply-accumulates, *_flops = 2 * macs; whole-call counts divided by batch_size, "
    "integers when exact, floats otherwise"
)


@dataclass(frozen=True)
class _Run:
    """One report found on disk, with the name shown for it."""

    name: str
    path: Path
    report: FlopsReport


def _run_names(loaded: Sequence[tuple[Path, FlopsReport | GenerationReport]]) -> list[str]:
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
            logger = getattr(report, "logger", None) or {}  # a generation report has none
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


def _parts_of(runs: Sequence[_Run]) -> list[str]:
    """Part labels (``parts=``) over all runs, as first seen."""
    return list(dict.fromkeys(label for run in runs for label in run.report.parts))


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
        "train_step_flops_per_sample",
        *_moe_and_token_columns(COUNTER_NAMES),
    )


def _row(run: _Run, counters: Sequence[str], parts: Sequence[str] = ()) -> dict[str, Any]:
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
        row[f"{name}_macs"] = per_sample(result.macs if ok else None, report.batch_size)
        row[f"{name}_flops"] = per_sample(result.flops if ok else None, report.batch_size)
    gap = report.largest_gap()
    row["largest_gap"] = gap.key if gap is not None else None
    if gap is None:
        row["largest_gap_relative"] = None
    else:
        relative = gap.core_relative if report.flag_on == "core" else gap.relative
        row["largest_gap_relative"] = relative if math.isfinite(relative) else None  # NaN: no gap to show
    row["flag_on"] = report.flag_on
    row["flagged"] = report.flagged
    row["rules"] = list(report.rules)  # custom_ops rules applied: runs with other rules count other things
    # per sample, hence the name; the JSON report keeps `train_step_flops` per batch
    row["train_step_flops_per_sample"] = per_sample(
        report.train_step_flops, report.train_step_batch_size or report.batch_size
    )
    row.update(_moe_and_token_cells(report, counters))
    for label in parts:  # MACs of the reference counter (torch), per sample, and parameters of each part
        part = report.parts.get(label)
        row[f"part_{label}_macs"] = per_sample(part.macs.get("torch") if part else None, report.batch_size)
        row[f"part_{label}_params"] = part.params.total if part else None
    return row


# ---------------------------------------------------------------- active parameters (MoE) and per-token columns
def _moe_and_token_columns(counters: Sequence[str]) -> list[str]:
    """``params_active`` and ``{counter}_macs_per_token`` (empty for inputs without tokens, older reports)."""
    return ["params_active", *(f"{c}_macs_per_token" for c in counters)]


def _moe_and_token_cells(report: FlopsReport, counters: Sequence[str]) -> dict[str, Any]:
    cells: dict[str, Any] = {"params_active": report.params.active}
    for name in counters:
        result = report.counters.get(name)
        macs = result.macs if result is not None and result.ok and report.tokens else None
        cells[f"{name}_macs_per_token"] = per_sample(macs, report.tokens or 1)
    return cells


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


def _columns(counters: Sequence[str], baseline_columns: Sequence[str], parts: Sequence[str] = ()) -> list[str]:
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
        "rules",
        "train_step_flops_per_sample",
        *_moe_and_token_columns(counters),
        *(f"part_{label}_{unit}" for label in parts for unit in ("macs", "params")),
        *baseline_columns,
        "path",
    ]


def _human_cells(
    rows: Sequence[dict[str, Any]],
    counters: Sequence[str],
    baseline: str | None,
    parts: Sequence[str] = (),
    rule_keys: Sequence[str] | None = None,
) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the human-readable table (table and markdown formats); ``rule_keys`` (one per row) adds
    a ``rules`` column saying which runs were counted under which ``custom_ops`` rules."""
    headers = ["run", "model", "params", "trainable", *(f"{c} MACs" for c in counters), "largest gap", "flagged"]
    headers += ["rules"] if rule_keys is not None else []
    headers += ["active params", f"{counters[-1]} MACs/token"]
    headers += [f"{label} torch MACs" for label in parts]
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
        elif row["largest_gap_relative"] is None:
            line.append(f"{row['largest_gap']} n/a ({row['flag_on']})")
        else:
            line.append(f"{row['largest_gap']} {row['largest_gap_relative']:.2%} ({row['flag_on']})")
        line.append("yes" if row["flagged"] else "no")
        line += [rule_keys[len(cells)]] if rule_keys is not None else []
        line += _moe_and_token_human(row, counters)
        for label in parts:
            value = row[f"part_{label}_macs"]
            line.append(human_count(value, "MACs") if value is not None else "-")
        if baseline is not None:
            for col in relative:
                ratio, pct = row[f"{col}_ratio"], row[f"{col}_change_pct"]
                line.append("-" if ratio is None else f"{ratio:.2f}x ({pct:+.1f}%)")
        cells.append([" ".join(cell.split()) for cell in line])  # one line per run, whatever the names hold
    return [" ".join(header.split()) for header in headers], cells  # part labels are the user's text too


def _render_csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row.get(k)) for k in columns})
    return buffer.getvalue().rstrip("\n")


def _csv_cell(value: Any) -> Any:
    """A CSV cell: empty for a missing value, ``"; "``-joined for a list (the rules)."""
    if value is None:
        return ""
    return "; ".join(value) if isinstance(value, list) else value


def _render_json(rows: Sequence[dict[str, Any]], columns: Sequence[str], baseline: str | None) -> str:
    data = {"units": UNITS, "baseline": baseline, "runs": [{k: row.get(k) for k in columns} for row in rows]}
    return json.dumps(data, indent=2, allow_nan=False)  # valid JSON: a missing value is null, never NaN


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
        # floats: matplotlib converts large Python ints to C longs and overflows past 2**63
        values = [math.nan if row[f"{counter}_macs"] is None else float(row[f"{counter}_macs"]) for row in rows]
        ax.bar(offsets, values, width, label=counter)
    ax.set_xticks(range(len(names)), labels=names, rotation=20, ha="right")
    ax.set_ylabel("MACs per sample (FLOPs = 2 x MACs)")
    ax.set_title("Compute per sample by counter")
    if log_scale:
        ax.set_yscale("log")
    ax.legend(title="counter")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix[1:].lower()), overwrite=overwrite)


def _listed(errors: Sequence[str]) -> str:
    """One error on the same line; several, one per indented line."""
    return f" {errors[0]}" if len(errors) == 1 else "\n  " + "\n  ".join(errors)


def _add_metric(rows: list[dict[str, Any]], runs: Sequence[_Run], name: str, mode: str) -> None:
    """Add column ``name``: the metric of each run, read from the logger files beside its report (``None`` where a
    run did not log it); :class:`CliError` naming the metrics found when no run did."""
    from lightning_flops.cli._metrics import found_metrics, metric_value, read_metrics

    per_run = {run.name: read_metrics(run.path.resolve().parent) for run in runs}
    if not any(name in series for series in per_run.values()):
        found = found_metrics(per_run)
        if not found:
            raise CliError(
                f"`--metric`: no run logged {name!r}: none of the run directories holds TensorBoard event files or "
                "a metrics.csv with metrics"
            )
        close = difflib.get_close_matches(name, found, n=1)
        hint = f"; did you mean `{close[0]}`?" if close else ""
        raise CliError(f"`--metric`: no run logged {name!r}; metrics found: {', '.join(found)}{hint}")
    for row in rows:
        series = per_run[row["run"]].get(name)
        row[name] = metric_value(series, mode) if series else None


def _plot_quality(
    rows: Sequence[dict[str, Any]], counters: Sequence[str], metric: str, mode: str, path: Path, overwrite: bool
) -> None:
    """The metric against the reference counter's MACs per sample (log x), one labelled point per run and the
    Pareto front; written atomically."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, LogLocator, NullFormatter

    from lightning_flops.cli._metrics import lower_is_better, pareto_front

    counter = "torch" if "torch" in counters else counters[-1]
    shown = [r for r in rows if r.get(metric) is not None and r.get(f"{counter}_macs")]
    points = [(float(r[f"{counter}_macs"]), float(r[metric])) for r in shown]
    lower = lower_is_better(metric, mode)
    front = pareto_front(points, lower)
    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    ax = fig.add_subplot()
    others = [i for i in range(len(points)) if i not in front]
    if others:
        ax.scatter([points[i][0] for i in others], [points[i][1] for i in others], color="0.55", zorder=3,
                   label="beaten by a run on the front")  # fmt: skip
    ax.scatter([points[i][0] for i in front], [points[i][1] for i in front], color="C0", zorder=4)
    ax.plot([points[i][0] for i in front], [points[i][1] for i in front], "--o", color="C0", zorder=2,
            label=f"Pareto front ({'lower' if lower else 'higher'} {metric} is better)")  # fmt: skip
    offset = (7, 5) if lower else (7, -12)  # the side of each point away from the front's line
    for (x, y), row in zip(points, shown, strict=True):
        ax.annotate(row["run"], (x, y), textcoords="offset points", xytext=offset, fontsize=8)
    ax.set_xscale("log")
    xs = [x for x, _ in points]
    narrow = len(xs) > 0 and max(xs) / min(xs) < 20  # within about a decade: label 1-2-5, else decades only
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if narrow else (1.0,)))
    ax.xaxis.set_major_formatter(EngFormatter(unit="MACs", sep=" "))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"{counter} MACs per sample (log scale; FLOPs = 2 x MACs)")
    ax.set_ylabel(f"{metric} ({mode} over the run)")
    ax.set_title(f"{metric} against compute, one point per run")
    ax.grid(alpha=0.3, which="both")
    ax.margins(x=0.3, y=0.12)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.suffix[1:].lower()), overwrite=overwrite)


def run(args: argparse.Namespace) -> int:
    """Run ``compare``; returns the exit status (0, or 1 when ``--keep-going`` skipped files)."""
    allowed = _sort_keys() + ((args.metric,) if args.metric else ())
    if args.metric_mode is not None and args.metric is None:
        raise CliError("`--metric-mode` needs `--metric NAME` (the metric to reduce)")
    if args.metric is not None and args.metric in _columns(COUNTER_NAMES, []):
        raise CliError(f"`--metric` {args.metric!r} is the name of a column of compare; rename the metric")
    if args.sort not in allowed:
        raise CliError(f"`--sort` must be one of {', '.join(allowed)}, got {args.sort!r}")
    plot_path = None
    if args.plot is not None:
        plot_path = check_output(args.plot, "--plot", args.force, PLOT_SUFFIXES)
        _require_matplotlib()

    files, errors = find_reports(args.paths)
    generation, files, bad = _generation.split_generation(files)  # generate() reports: rows of their own
    errors += bad
    loaded, bad = load_reports(files)
    errors += bad
    if not loaded and not generation:
        raise CliError("no readable reports to compare:" + _listed(errors))
    if errors and not args.keep_going:
        raise CliError("bad input (pass --keep-going to compare the other runs):" + _listed(errors))
    if generation:
        _generation.check_options(args, profiles=bool(loaded))
        generation_names = _run_names([*loaded, *generation])[len(loaded) :]
        if not loaded:
            print(_generation.text(None, generation_names, generation, args.format), flush=True)
            return _skipped(errors)

    runs = [_Run(name, file, report) for name, (file, report) in zip(_run_names(loaded), loaded, strict=True)]
    counters = _counters_of(runs)
    parts = _parts_of(runs)
    rows = [_row(run, counters, parts) for run in runs]
    mode = args.metric_mode or "last"
    if args.metric is not None:
        _add_metric(rows, runs, args.metric, mode)
    baseline_columns: list[str] = []
    if args.baseline is not None:
        if args.baseline not in {row["run"] for row in rows}:
            names = ", ".join(repr(row["run"]) for row in rows)
            raise CliError(f"`--baseline` must be one of the runs' names ({names}), got {args.baseline!r}")
        baseline_columns = _add_baseline(rows, args.baseline, counters)
    rows = _sorted(rows, args.sort, args.descending)

    columns = _columns(counters, baseline_columns, parts)
    if args.metric is not None:
        columns.insert(columns.index("path"), args.metric)
    if args.format == "csv":
        text = _render_csv(rows, columns)
    elif args.format == "json":
        text = _render_json(rows, columns, args.baseline)
    elif args.format == "latex":  # booktabs, one row per run (in the sorted order), units in the header
        reports = {run.name: run.report for run in runs}
        metric = (args.metric, [row[args.metric] for row in rows]) if args.metric is not None else None
        text = latex_table([(row["run"], reports[row["run"]]) for row in rows], counters, parts, metric)
    else:
        reports = {run.name: run.report for run in runs}
        keys, legend = rule_sets([reports[row["run"]] for row in rows])
        differ = len(set(keys)) > 1
        headers, cells = _human_cells(rows, counters, args.baseline, parts, keys if differ else None)
        if args.metric is not None:  # after the MACs, so the two halves of the comparison sit side by side
            at = headers.index("largest gap")
            headers.insert(at, f"{args.metric} ({mode})")
            for line, row in zip(cells, rows, strict=True):
                line.insert(at, "-" if row[args.metric] is None else f"{row[args.metric]:.4g}")
        render = text_table if args.format == "table" else markdown_table
        caption = "Compute per sample (MACs = multiply-accumulates; FLOPs = 2 x MACs)"
        if args.baseline is not None:
            caption += f"; 'vs base' = ratio (x) and change (%) against run {args.baseline!r}"
        text = f"{caption}\n\n{render(headers, cells)}"
        one_line = escape_markdown if args.format == "markdown" else lambda text: " ".join(str(text).split())
        if differ:
            legend = (["none: no custom rules"] if "none" in keys else []) + legend
            text += "\n\nRuns counted under different custom rules (compare like with like):\n"
            text += "\n".join(f"- {one_line(line)}" for line in legend)
        elif legend:
            text += f"\n\nEvery run counted with {one_line(legend[0].split(': ', 1)[1])}"

    if plot_path is not None and args.metric is not None:
        _plot_quality(rows, counters, args.metric, mode, plot_path, args.force)
    elif plot_path is not None:
        _plot(rows, counters, plot_path, args.log_scale, args.force)
    if generation:
        text = _generation.text(text, generation_names, generation, args.format)
    print(text, flush=True)
    if plot_path is not None:
        print(f"{PROG}: wrote {plot_path}", file=sys.stderr)
    return _skipped(errors)


def _skipped(errors: Sequence[str]) -> int:
    """Name each skipped file on stderr; the exit status: 1 when any was skipped, else 0."""
    for error in errors:
        print(f"{PROG}: skipped {error}", file=sys.stderr)
    return 1 if errors else 0


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``compare`` sub-command to ``subparsers`` and return its parser.

    Args:
        subparsers: the object ``ArgumentParser.add_subparsers`` returned.
    """
    parser = subparsers.add_parser(
        NAME,
        help="one row per run from flops_report*.json files, per sample",
        description=(
            f"Read {REPORT_GLOB} reports (files, or directories searched recursively) and print one row per run. "
            "All counts are per sample; MACs are multiply-accumulates and FLOPs = 2 x MACs. csv/json hold exact "
            "integers where the whole-call count divides by the batch size, floats otherwise."
        ),
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help=f"a report file or a directory with {REPORT_GLOB}")
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.add_argument(
        "--sort", default="run", metavar="KEY", help=f"column to sort by, one of: {', '.join(_sort_keys())}"
    )
    parser.add_argument("--descending", action="store_true", help="sort from the largest value down")
    parser.add_argument(
        "--baseline", metavar="RUN", help="a run's displayed name: add ratio (x) and change (%%) columns against it"
    )
    parser.add_argument(
        "--metric",
        metavar="NAME",
        help="add a column with a quality metric (e.g. val_acc) read from each run's own logger files (TensorBoard "
        "event files or metrics.csv beside the report); with --plot, plot it against torch MACs per sample",
    )
    parser.add_argument(
        "--metric-mode",
        choices=METRIC_MODES,
        help="how a run's series becomes one value: last (default), max or min (also the Pareto front's direction; "
        "with last, a name with loss/err/ppl/... is better lower)",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="write a grouped bar chart (runs x counters), or with --metric the metric against torch MACs per "
        "sample (log x) with the Pareto front; needs matplotlib",
    )
    parser.add_argument("--log-scale", action="store_true", help="log scale for the --plot y axis")
    parser.add_argument("--force", action="store_true", help="overwrite an existing --plot file")
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="list the readable runs, name bad files on stderr and exit with status 1 instead of 2",
    )
    return parser
