"""Where a :class:`~lightning_flops.report.FlopsReport` goes: logger metrics, the TensorBoard hparams table, TensorBoard
text, the JSON report file and the console.

Every function here takes a finished report (or metric names) and writes it somewhere; nothing is counted here.
Logged values are per sample (``report.macs_per_sample``), except ``{prefix}/train_step/flops_per_batch``.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.fabric.loggers import TensorBoardLogger as FabricTensorBoardLogger
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lightning_flops.counters.base import flops_from_macs
from lightning_flops.report import FlopsReport

__all__ = [
    "REPORT_NAME",
    "declare_hparams_metrics",
    "is_tensorboard",
    "log_metrics",
    "log_text",
    "metric_keys",
    "metrics_from_report",
    "print_summary",
    "publish",
    "rewrite_report",
    "write_report",
]

#: File name of the JSON report; a taken name gets ``flops_report.1.json``, ``flops_report.2.json``, ...
REPORT_NAME = "flops_report.json"
_MAX_SUFFIX = 10_000


def metric_keys(
    counters: Sequence[str], prefix: str = "compute", train_step: bool = False, parts: Sequence[str] = ()
) -> list[str]:
    """Every metric key a report of ``counters`` can produce, in a stable order (the hparams columns).

    Args:
        counters: counter names in the order given to the monitor; gap keys follow that order.
        prefix: first component of every key.
        train_step: include ``{prefix}/train_step/flops_per_batch``.
        parts: part labels: ``{prefix}/part/{label}/{macs,flops,params}`` each.
    """
    keys = [f"{prefix}/{name}/{unit}" for name in counters for unit in ("macs", "flops")]
    keys += [f"{prefix}/params/total", f"{prefix}/params/trainable"]
    pairs = [f"{a}_vs_{b}" for a, b in itertools.combinations(counters, 2)]
    keys += [f"{prefix}/gap/{pair}" for pair in pairs] + [f"{prefix}/core_gap/{pair}" for pair in pairs]
    keys.append(f"{prefix}/flagged")
    if train_step:
        keys.append(f"{prefix}/train_step/flops_per_batch")
    keys += [f"{prefix}/part/{label}/{unit}" for label in parts for unit in ("macs", "flops", "params")]
    return keys


def metrics_from_report(report: FlopsReport, prefix: str = "compute") -> dict[str, float]:
    """The scalar metrics of ``report``: MACs and FLOPs per sample, parameters, gaps, flag, training-step FLOPs.

    A failed counter has no ``macs``/``flops`` keys. Values are floats (loggers store float32: exact integers are in
    the JSON report).
    """
    metrics: dict[str, float] = {}
    for name in report.counters:
        macs, flops = report.macs_per_sample(name), report.flops_per_sample(name)
        if macs is not None and flops is not None:
            metrics[f"{prefix}/{name}/macs"] = float(macs)
            metrics[f"{prefix}/{name}/flops"] = float(flops)
    metrics[f"{prefix}/params/total"] = float(report.params.total)
    metrics[f"{prefix}/params/trainable"] = float(report.params.trainable)
    for gap in report.gaps:
        metrics[f"{prefix}/gap/{gap.key}"] = float(gap.relative)
        metrics[f"{prefix}/core_gap/{gap.key}"] = float(gap.core_relative)
    metrics[f"{prefix}/flagged"] = 1.0 if report.flagged else 0.0
    if report.train_step_flops is not None:
        metrics[f"{prefix}/train_step/flops_per_batch"] = float(report.train_step_flops)
    per = max(report.batch_size, 1)
    for label, part in report.parts.items():  # the reference counter (torch), per sample
        macs = part.macs.get("torch")
        if macs is not None:
            metrics[f"{prefix}/part/{label}/macs"] = macs / per
            metrics[f"{prefix}/part/{label}/flops"] = flops_from_macs(macs) / per
        metrics[f"{prefix}/part/{label}/params"] = float(part.params.total)
    return metrics


def is_tensorboard(logger: Any) -> bool:
    """Whether ``logger`` is Lightning's ``TensorBoardLogger`` (pytorch or fabric flavour)."""
    return isinstance(logger, FabricTensorBoardLogger)


def _tensorboard_params(logger: FabricTensorBoardLogger, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` converted exactly as ``TensorBoardLogger.log_hyperparams`` converts them, so the row is the same.

    Private Lightning helpers, checked against lightning 2.6.6 (``lightning/fabric/loggers/tensorboard.py``,
    ``lightning/fabric/utilities/logger.py``); touched here only.
    """
    from lightning.fabric.utilities.logger import _convert_params, _flatten_dict

    return logger._sanitize_params(_flatten_dict(_convert_params(dict(params))))


def declare_hparams_metrics(
    logger: FabricTensorBoardLogger, params: Mapping[str, Any], keys: Iterable[str], hp_metric: bool
) -> None:
    """Write the run's first hparams summary: ``params`` as the row, ``keys`` (and ``hp_metric``) as metric columns.

    TensorBoard keeps only the first hparams summary of a run, and Lightning writes its own (with ``hp_metric`` only)
    before the first batch; calling this earlier (in ``setup``) makes the ``compute/*`` columns part of the table.
    No scalar is written: the columns show the scalars logged later under the same keys.

    Args:
        logger: a TensorBoard logger (rank zero).
        params: the run's hyperparameters (module and datamodule), as Lightning would log them.
        keys: metric keys to declare.
        hp_metric: also declare ``hp_metric`` (Lightning logs it when ``default_hp_metric`` is on).
    """
    from torch.utils.tensorboard.summary import hparams

    metrics = dict.fromkeys(keys, 0.0)
    if hp_metric:
        metrics["hp_metric"] = -1.0
    experiment, start, end = hparams(_tensorboard_params(logger, params), metrics)
    writer = logger.experiment.file_writer  # SummaryWriter's public attribute, created with the experiment
    for summary in (experiment, start, end):
        writer.add_summary(summary)
    writer.flush()


def log_metrics(loggers: Iterable[Logger], metrics: Mapping[str, float], step: int) -> None:
    """Log ``metrics`` as scalars at ``step`` through every logger, then let each logger save."""
    for logger in loggers:
        logger.log_metrics(dict(metrics), step=step)
        logger.save()


def log_text(loggers: Iterable[Logger], tag: str, markdown: str, step: int) -> None:
    """Add ``markdown`` as TensorBoard text (the Text tab) to every TensorBoard logger; other loggers are skipped."""
    for logger in loggers:
        if is_tensorboard(logger):
            logger.experiment.add_text(tag, markdown, global_step=step)
            logger.experiment.flush()


def write_report(report: FlopsReport, directory: str | os.PathLike[str]) -> Path:
    """Write ``report`` as JSON into ``directory``, atomically, never over another run's report.

    The text goes to a temporary file first, then gets its final name in one step: ``flops_report.json``, or when
    that name is taken ``flops_report.1.json``, ``flops_report.2.json``, ... (an exclusive link, so two runs sharing
    a directory never overwrite each other and a reader never sees half a file).

    Returns:
        The path written.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_copy(report, folder)
    try:
        for index in range(_MAX_SUFFIX):
            target = folder / (REPORT_NAME if index == 0 else f"flops_report.{index}.json")
            if _claim(tmp, target):
                return target
        raise FileExistsError(f"no free report name in {folder} (tried {REPORT_NAME} to .{_MAX_SUFFIX - 1}.json)")
    finally:
        tmp.unlink(missing_ok=True)


def rewrite_report(report: FlopsReport, path: str | os.PathLike[str]) -> None:
    """Atomically replace a report file that this run wrote itself (temp file + rename), e.g. to add a late field."""
    target = Path(path)
    tmp = _temporary_copy(report, target.parent)
    try:
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _temporary_copy(report: FlopsReport, folder: Path) -> Path:
    """``report`` as JSON in a hidden temporary file of ``folder``, flushed to disk, ready to be renamed."""
    fd, tmp_name = tempfile.mkstemp(prefix=".flops_report.", suffix=".tmp", dir=folder)
    try:
        os.chmod(tmp_name, readable_mode())  # mkstemp makes 0600; a log file is as readable as its neighbours
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(report.to_json())
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return Path(tmp_name)


def readable_mode() -> int:
    """``0o666`` less the process umask: the mode ``open()`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _claim(tmp: Path, target: Path) -> bool:
    """Give ``tmp``'s content the name ``target`` unless it exists; ``False`` when it is taken."""
    try:
        os.link(tmp, target)  # atomic and exclusive
        return True
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: reserve the name exclusively, then replace it atomically
        try:
            os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            return False
        try:
            os.replace(tmp, target)
        except OSError:
            target.unlink(missing_ok=True)  # release the reserved name: never leave an empty report behind
            raise
        return True


def print_summary(report: FlopsReport) -> None:
    """Print the report's Markdown table through ``rank_zero_info``."""
    rank_zero_info(report.to_markdown())


def publish(
    report: FlopsReport, loggers: Sequence[Logger], directory: str | os.PathLike[str], prefix: str, step: int
) -> Path:
    """Send ``report`` everywhere (call on global rank zero): metrics, TensorBoard text, JSON file, console.

    Returns:
        The path of the JSON report.
    """
    log_metrics(loggers, metrics_from_report(report, prefix), step)
    log_text(loggers, f"{prefix}/report", report.to_markdown(), step)
    path = write_report(report, directory)
    print_summary(report)
    return path
