"""A run's quality metrics, read from its own logger files, for ``compare --metric`` (no torch).

A report lives in the run's log directory (``trainer.log_dir``), beside what the loggers wrote there: TensorBoard
event files (``events.out.tfevents.*``, read with tensorboard's ``EventAccumulator``, imported only when needed) and
``metrics.csv`` (Lightning's ``CSVLogger``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from lightning_flops.cli._common import CliError

__all__ = [
    "LOWER_IS_BETTER",
    "METRIC_MODES",
    "found_metrics",
    "lower_is_better",
    "metric_value",
    "pareto_front",
    "read_metrics",
]

#: How ``--metric-mode`` reduces a run's series to one value.
METRIC_MODES = ("last", "max", "min")
#: Words in a metric's name that say lower is better (for the Pareto front when ``--metric-mode`` is ``last``).
LOWER_IS_BETTER = ("loss", "err", "error", "perplexity", "ppl", "mse", "mae", "rmse", "wer", "cer", "nll")
#: Scalars that FlopsMonitor itself logs: compute, not quality.
_OWN_PREFIX = "compute/"

Series = list[tuple[int, float]]


def read_metrics(directory: Path) -> dict[str, Series]:
    """Every scalar series logged in ``directory``: ``{tag: [(step, value), ...]}`` in the order written.

    TensorBoard event files come first; ``metrics.csv`` adds the series TensorBoard did not hold. Non-finite values
    and unreadable files are left out (a run without logger files has no metrics, which is not an error here).
    """
    series: dict[str, Series] = {}
    if any(directory.glob("events.out.tfevents.*")):
        series.update(_tensorboard(directory))
    table = directory / "metrics.csv"
    if table.is_file():
        for tag, values in _csv(table).items():
            series.setdefault(tag, values)
    return {tag: values for tag, values in series.items() if values and not tag.startswith(_OWN_PREFIX)}


def _tensorboard(directory: Path) -> dict[str, Series]:
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as err:
        raise CliError(
            f"`--metric`: reading TensorBoard event files in {directory} needs tensorboard ({err}); "
            "pip install tensorboard"
        ) from err
    accumulator = EventAccumulator(str(directory), size_guidance={"scalars": 0})  # 0: keep every point
    try:
        accumulator.Reload()
    except Exception:  # a truncated or foreign event file: no metrics from it
        return {}
    return {
        tag: [(event.step, float(event.value)) for event in accumulator.Scalars(tag) if math.isfinite(event.value)]
        for tag in accumulator.Tags().get("scalars", [])
    }


def _csv(path: Path) -> dict[str, Series]:
    series: dict[str, Series] = {}
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            for index, row in enumerate(csv.DictReader(handle)):
                step = _number(row.get("step"))
                for tag, text in row.items():
                    value = _number(text)
                    if tag in (None, "step", "epoch") or value is None:
                        continue
                    series.setdefault(tag, []).append((int(step) if step is not None else index, value))
    except (OSError, UnicodeDecodeError, csv.Error):
        return {}
    return series


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) else None


def metric_value(series: Series, mode: str) -> float:
    """One value of a series: ``last`` (at the largest step; the last written among equal steps), ``max``, ``min``."""
    if mode == "max":
        return max(value for _, value in series)
    if mode == "min":
        return min(value for _, value in series)
    return max(enumerate(series), key=lambda item: (item[1][0], item[0]))[1][1]


def lower_is_better(name: str, mode: str) -> bool:
    """Direction of ``name`` for the Pareto front: ``min`` and ``max`` say it; for ``last`` the name does (a loss,
    an error rate or a perplexity is better lower, anything else higher)."""
    if mode != "last":
        return mode == "min"
    words = name.lower().replace("/", "_").replace("-", "_").replace(".", "_").split("_")
    return any(word in LOWER_IS_BETTER for word in words)


def pareto_front(points: Sequence[tuple[float, float]], lower: bool) -> list[int]:
    """Indices of the points no other point beats: at most the compute (x) and at least as good a metric (y), one
    strictly. Sorted by compute."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1] if lower else -points[i][1]))
    front: list[int] = []
    best = math.inf if lower else -math.inf
    for i in order:
        y = points[i][1]
        if (y < best) if lower else (y > best):
            front.append(i)
            best = y
    return front


def found_metrics(per_run: Mapping[str, Mapping[str, Series]]) -> list[str]:
    """The metric names over all runs, sorted."""
    return sorted({tag for series in per_run.values() for tag in series})
