"""Where a :class:`~lightning_flops.report.FlopsReport` goes: logger metrics, the TensorBoard hparams table, TensorBoard
text, the JSON report file and the console.

Every function here takes a finished report (or metric names) and writes it somewhere; nothing is counted here.
Logged values are per sample (``report.macs_per_sample``), except ``{prefix}/train_step/flops_per_batch`` and the
``{prefix}/time/*`` values (the whole call's forward).

Everything here runs on the training thread, after the profile's own thread has ended; each logger gets the metrics
through its public ``log_metrics(metrics, step=trainer.global_step)`` (for W&B one committed ``run.log`` row with
``trainer/global_step``), and a logger that fails keeps no other sink from the report (:class:`SinkError` afterwards).
An offline W&B run is complete once its ``.wandb`` file holds the ``exit`` record: ``wandb.finish()`` returns before
wandb-core has written it (tests/test_sinks_wandb.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec.utils
from lightning.fabric.loggers import CSVLogger as FabricCSVLogger
from lightning.fabric.loggers import TensorBoardLogger as FabricTensorBoardLogger
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.loggers import CSVLogger as PytorchCSVLogger
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

from lightning_flops._compat import tensorboard_hparams
from lightning_flops._files import create_temporary
from lightning_flops.errors import FlopsError
from lightning_flops.render import timing_figure_rgb, verdict_markdown
from lightning_flops.report import FlopsReport

__all__ = [
    "REPORT_NAME",
    "TIME_METRICS",
    "Publications",
    "ReportFile",
    "SinkError",
    "attach_to_trackers",
    "declare_hparams_metrics",
    "is_tensorboard",
    "log_image",
    "log_metrics",
    "log_text",
    "logger_directory",
    "metric_keys",
    "metrics_from_report",
    "print_summary",
    "publish",
    "report_directory",
    "report_location_line",
    "rewrite_report",
    "tensorboard_text",
    "write_report",
]

#: File name of the JSON report; a taken name gets ``flops_report.1.json``, ``flops_report.2.json``, ...
REPORT_NAME = "flops_report.json"
_MAX_SUFFIX = 10_000


def metric_keys(
    counters: Sequence[str],
    prefix: str = "compute",
    train_step: bool = False,
    parts: Sequence[str] = (),
    timing: bool = False,
) -> list[str]:
    """Every metric key a report of ``counters`` can produce, in a stable order (the hparams columns).

    The reference counter's (``torch``, else the last one) MACs and FLOPs, the parameters and the flag come first;
    the other counters, the gaps and the training step follow.

    Args:
        counters: counter names in the order given to the monitor; gap keys follow that order.
        prefix: first component of every key.
        train_step: include ``{prefix}/train_step/flops_per_batch``.
        parts: part labels: ``{prefix}/part/{label}/{macs,flops,params}`` each.
        timing: include the ``{prefix}/time/*`` keys (``FlopsMonitor(timing=N)``).
    """
    # TensorBoard's HPARAMS view shows the first columns and hides the rest: what most users need comes first
    reference = [name for name in counters if name == "torch"] or list(counters[-1:])
    others = [name for name in counters if name not in reference]
    keys = [f"{prefix}/{name}/{unit}" for name in reference for unit in ("macs", "flops")]
    keys += [f"{prefix}/params/total", f"{prefix}/params/trainable", f"{prefix}/flagged"]
    keys += [f"{prefix}/{name}/{unit}" for name in others for unit in ("macs", "flops")]
    pairs = [f"{a}_vs_{b}" for a, b in itertools.combinations(counters, 2)]
    keys += [f"{prefix}/gap/{pair}" for pair in pairs] + [f"{prefix}/core_gap/{pair}" for pair in pairs]
    if train_step:
        keys.append(f"{prefix}/train_step/flops_per_batch")
    keys += [f"{prefix}/params/active", f"{prefix}/params/active_per_token"]
    keys += [f"{prefix}/{name}/{unit}_per_token" for name in counters for unit in ("macs", "flops")]
    keys += [f"{prefix}/part/{label}/{unit}" for label in parts for unit in ("macs", "flops", "params")]
    if timing:
        keys += [f"{prefix}/time/{name}" for name in TIME_METRICS]
    return keys


def metrics_from_report(report: FlopsReport, prefix: str = "compute") -> dict[str, float]:
    """The scalar metrics of ``report``: MACs and FLOPs per sample, parameters, gaps, flag, training-step FLOPs,
    active parameters and MACs/FLOPs per token (when the input has tokens).

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
    if report.params.active is not None:
        metrics[f"{prefix}/params/active"] = float(report.params.active)
    if report.params.active_per_token is not None:
        metrics[f"{prefix}/params/active_per_token"] = float(report.params.active_per_token)
    for name in report.counters:
        macs, flops = report.macs_per_token(name), report.flops_per_token(name)
        if macs is not None and flops is not None:
            metrics[f"{prefix}/{name}/macs_per_token"] = float(macs)
            metrics[f"{prefix}/{name}/flops_per_token"] = float(flops)
    for label, part in report.parts.items():  # the reference counter (torch), per sample
        macs, flops = part.macs_per_sample("torch"), part.flops_per_sample("torch")
        if macs is not None and flops is not None:
            metrics[f"{prefix}/part/{label}/macs"] = macs
            metrics[f"{prefix}/part/{label}/flops"] = flops
        metrics[f"{prefix}/part/{label}/params"] = float(part.params.total)
    metrics.update(_time_metrics(report, prefix))
    return metrics


#: The ``{prefix}/time/*`` metrics of a report with timing: forward seconds (whole call, the median), the share of
#: the operators' time in operators that count no MACs, the achieved FLOP/s and the MFU (when the peak is known).
TIME_METRICS = ("forward_seconds", "zero_mac_share", "achieved_flops_per_second", "mfu")


def _time_metrics(report: FlopsReport, prefix: str) -> dict[str, float]:
    timing = report.timing
    if timing is None:
        return {}
    values = {
        "forward_seconds": timing.forward_seconds,
        "zero_mac_share": timing.zero_mac_share if timing.operators else None,
        "achieved_flops_per_second": timing.achieved_flops_per_second,
        "mfu": timing.mfu,
    }
    return {f"{prefix}/time/{name}": float(value) for name, value in values.items() if value is not None}


def log_image(loggers: Iterable[Logger], tag: str, image: Any, step: int) -> None:
    """Add ``image`` (``[H, W, 3]`` uint8) to TensorBoard's Images tab of every TensorBoard logger."""
    for logger in loggers:
        if is_tensorboard(logger):
            logger.experiment.add_image(tag, image, global_step=step, dataformats="HWC")
            logger.experiment.flush()


def is_tensorboard(logger: Any) -> bool:
    """Whether ``logger`` is Lightning's ``TensorBoardLogger`` (pytorch or fabric flavour)."""
    return isinstance(logger, FabricTensorBoardLogger)


def _tensorboard_params(logger: FabricTensorBoardLogger, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` converted exactly as ``TensorBoardLogger.log_hyperparams`` converts them, so the row is the same.

    Private Lightning helpers: :func:`~lightning_flops._compat.tensorboard_hparams`.
    """
    return tensorboard_hparams(logger, params)


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


class SinkError(FlopsError, RuntimeError):
    """Some loggers refused the metrics; every other logger (and the report file) has them.

    Args:
        message: which loggers failed, and how.
        file: where the report was written when :func:`publish` raises it (``None`` elsewhere).
    """

    def __init__(self, message: str, file: ReportFile | None = None) -> None:
        super().__init__(message)
        self.file = file


def log_metrics(loggers: Iterable[Logger], metrics: Mapping[str, float], step: int) -> None:
    """Log ``metrics`` as scalars at ``step`` through every logger, then let each logger save.

    A logger that fails does not keep the others from logging: :class:`SinkError` names the ones that failed, after
    every logger had its turn.
    """
    failed = []
    for logger in loggers:
        try:
            logger.log_metrics(dict(metrics), step=step)
            logger.save()
        except Exception as err:  # e.g. a tracker whose run cannot start: the other loggers still get the metrics
            failed.append(f"{type(logger).__name__} ({type(err).__name__}: {err})")
    if failed:
        raise SinkError(f"metrics not logged to {'; '.join(failed)}; every other logger has them")


def log_text(loggers: Iterable[Logger], tag: str, markdown: str, step: int) -> None:
    """Add ``markdown`` as TensorBoard text (the Text tab) to every TensorBoard logger; other loggers are skipped."""
    for logger in loggers:
        if is_tensorboard(logger):
            logger.experiment.add_text(tag, markdown, global_step=step)
            logger.experiment.flush()


@dataclass(frozen=True)
class ReportFile:
    """Where a published report lives: its file, whose directory holds it, and the tracker runs that carry a copy.

    Args:
        path: the report file: a local :class:`~pathlib.Path`, or an fsspec URL (``s3://...``) as text.
        owner: the logger whose directory holds it (``"CSVLogger"``), or ``"default_root_dir"``.
        attached: the tracker runs the report was also attached to, e.g. ``("MLFlowLogger run 3f2a...",)``.
    """

    path: Path | str
    owner: str
    attached: tuple[str, ...] = ()


def logger_directory(logger: Any) -> str | None:
    """The directory a logger writes its run into, or ``None`` when it has none on a file system.

    As ``Trainer.log_dir`` reads it (lightning 2.6.6): ``log_dir`` for TensorBoard and CSV loggers, ``save_dir`` for
    the others. MLflow with a database or server store and W&B-less dummy loggers (``fast_dev_run``) give ``None``.
    """
    if isinstance(logger, (FabricTensorBoardLogger, FabricCSVLogger, PytorchCSVLogger)):
        directory = logger.log_dir
    else:
        directory = getattr(logger, "save_dir", None)
    if directory is None or not isinstance(directory, (str, os.PathLike)) or str(directory) in ("", "None"):
        return None
    return str(directory)


def report_directory(trainer: Any) -> str:
    """The directory of the run's report: the first logger with a directory, else ``trainer.default_root_dir``.

    Never ``"None"``: ``trainer.log_dir`` is ``None`` for an MLflow logger on a database (``sqlite:///``, ``http://``)
    and under ``fast_dev_run`` (whose dummy logger has no directory). A collective under DDP: call it on every rank.

    Args:
        trainer: the Lightning ``Trainer``.
    """
    directory = next((d for d in map(logger_directory, trainer.loggers) if d is not None), None)
    if directory is None:
        directory = str(trainer.default_root_dir)
    return trainer.strategy.broadcast(directory)


def write_report(report: FlopsReport, directory: str | os.PathLike[str]) -> Path | str:
    """Write ``report`` as JSON into ``directory``, atomically, never over another run's report.

    The text goes to a temporary file first, then gets its final name in one step: ``flops_report.json``, or when
    that name is taken ``flops_report.1.json``, ``flops_report.2.json``, ... (an exclusive link, so two runs sharing
    a directory never overwrite each other and a reader never sees half a file). A remote directory
    (``s3://bucket/logs``, ``memory://``; any fsspec URL, as Lightning's loggers and checkpoints take) is written
    through its fsspec file system: one whole-object write under the first free name (the check for a free name and
    the write are two steps there).

    Returns:
        The path written: a :class:`~pathlib.Path` for a local directory, the URL for a remote one.
    """
    if not _is_local(directory):
        return _write_remote(report.to_json(), str(directory))
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_copy(report, folder)
    try:
        for index in range(_MAX_SUFFIX):
            target = folder / _report_name(index)
            if _claim(tmp, target):
                return target
        raise FileExistsError(f"no free report name in {folder} (tried {REPORT_NAME} to .{_MAX_SUFFIX - 1}.json)")
    finally:
        tmp.unlink(missing_ok=True)


def rewrite_report(
    report: FlopsReport, path: ReportFile | str | os.PathLike[str], loggers: Sequence[Logger] = ()
) -> None:
    """Atomically replace a report file that this run wrote itself (temp file + rename), e.g. to add a late field.

    Args:
        report: the new content.
        path: the file (or the :class:`ReportFile` :func:`publish` returned).
        loggers: the run's loggers: the copies attached to trackers are replaced as well.
    """
    target = path.path if isinstance(path, ReportFile) else path
    if not _is_local(target):
        _fs(target).pipe_file(str(target), report.to_json().encode("utf-8"))
    else:
        target = Path(target)
        tmp = _temporary_copy(report, target.parent)
        try:
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    if isinstance(path, ReportFile) and path.attached:
        attach_to_trackers(report, loggers, path.path)


def attach_to_trackers(report: FlopsReport, loggers: Sequence[Logger], path: Path | str) -> tuple[str, ...]:
    """Put the report in the run of every logger that keeps files, so that its UI and syncing carry it.

    MLflow: an artifact of the logger's run (``MlflowClient.log_artifact``), named like the report file. W&B: a copy
    in the run's files directory (``run.dir``), which ``wandb sync`` and the end of the run upload. Other loggers are
    skipped. A tracker that fails is named in a warning; the report file itself is already written.

    Returns:
        One ``"<Logger> run <id>"`` per tracker that holds the report.
    """
    name = Path(str(path)).name
    attached = []
    for logger in loggers:
        kind = type(logger).__name__
        try:
            if _is_mlflow(logger):
                with tempfile.TemporaryDirectory(prefix="flops_report.") as folder:
                    local = Path(folder) / name
                    local.write_text(report.to_json(), encoding="utf-8")
                    logger.experiment.log_artifact(logger.run_id, str(local))
                attached.append(f"{kind} run {logger.run_id}")
            elif _is_wandb(logger):
                run_dir = Path(logger.experiment.dir)
                if Path(str(path)).parent.resolve() != run_dir.resolve():
                    copy = _temporary_copy(report, run_dir)
                    os.replace(copy, run_dir / name)  # the run's own directory: its copy is replaced, not renamed
                attached.append(f"{kind} run {logger.version}")
        except Exception as err:  # a tracker that refuses the file must not lose the report or stop training
            rank_zero_warn(f"FlopsMonitor: could not attach the report to {kind}: {type(err).__name__}: {err}")
    return tuple(attached)


def _is_mlflow(logger: Any) -> bool:
    from lightning.pytorch.loggers import MLFlowLogger

    return isinstance(logger, MLFlowLogger)


def _is_wandb(logger: Any) -> bool:
    from lightning.pytorch.loggers import WandbLogger

    return isinstance(logger, WandbLogger)


def _report_name(index: int) -> str:
    return REPORT_NAME if index == 0 else f"flops_report.{index}.json"


def _is_local(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is on the local file system (no ``s3://``-style protocol), as Lightning decides it."""
    return fsspec.utils.get_protocol(str(path)) == "file"


def _fs(path: str | os.PathLike[str]) -> Any:
    return get_filesystem(str(path))


def _write_remote(text: str, directory: str) -> str:
    """Write ``text`` under the first free report name of a remote ``directory`` (one whole-object write)."""
    fs = _fs(directory)
    fs.makedirs(directory, exist_ok=True)
    base = directory.rstrip("/")
    for index in range(_MAX_SUFFIX):
        target = f"{base}/{_report_name(index)}"
        if not fs.exists(target):
            fs.pipe_file(target, text.encode("utf-8"))
            return target
    raise FileExistsError(f"no free report name in {directory} (tried {REPORT_NAME} to .{_MAX_SUFFIX - 1}.json)")


def _temporary_copy(report: FlopsReport, folder: Path) -> Path:
    """``report`` as JSON in a hidden temporary file of ``folder``, flushed to disk, ready to be renamed."""
    fd, tmp_name = create_temporary(folder, ".flops_report.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(report.to_json())
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return Path(tmp_name)


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


def tensorboard_text(report: FlopsReport) -> str:
    """The TensorBoard text card: the one-line verdict first (the card shows its top), then the full report."""
    return verdict_markdown(report) + "\n\n" + report.to_markdown()


def print_summary(report: FlopsReport) -> None:
    """Print the report's Markdown table through ``rank_zero_info``."""
    rank_zero_info(report.to_markdown())


def publish(
    report: FlopsReport, loggers: Sequence[Logger], directory: str | os.PathLike[str], prefix: str, step: int
) -> ReportFile:
    """Send ``report`` everywhere (call on global rank zero): metrics, TensorBoard text, JSON file, trackers, console.

    Returns:
        Where the JSON report went (see :class:`ReportFile`).

    Raises:
        SinkError: some loggers refused the metrics (after every other sink got the report; ``file`` says where it
            went).
    """
    try:
        log_metrics(loggers, metrics_from_report(report, prefix), step)
        refused = None
    except SinkError as err:  # the other sinks still get the report; raised once they have it
        refused = err
    log_text(loggers, f"{prefix}/report", tensorboard_text(report), step)
    if report.timing is not None and any(is_tensorboard(logger) for logger in loggers):
        image = timing_figure_rgb(report.timing)
        if image is not None:
            log_image(loggers, f"{prefix}/time/where_the_time_goes", image, step)
    path = write_report(report, directory)
    owner = next((type(lg).__name__ for lg in loggers if logger_directory(lg) == str(directory)), "default_root_dir")
    written = ReportFile(path, owner, attach_to_trackers(report, loggers, path))
    print_summary(report)
    rank_zero_info(report_location_line(written, several=len(loggers) > 1))
    if refused is not None:
        raise SinkError(str(refused), written)
    return written


def report_location_line(file: ReportFile, several: bool) -> str:
    """``FlopsMonitor: report written to PATH``, saying whose directory holds it (with ``several`` loggers, or when
    it is ``default_root_dir``) and which tracker runs carry it."""
    line = f"FlopsMonitor: report written to {file.path}"
    if file.owner == "default_root_dir":
        line += " (trainer.default_root_dir: no logger has a directory)"
    elif several:
        line += f" (the directory of the {file.owner})"
    if file.attached:
        line += "; attached to " + ", ".join(file.attached)
    return line


class Publications:
    """What a monitor published where (global rank zero): each directory gets a report once; the training-step count
    that comes later (the observed first step, or a fit after ``validate``) updates that report, never another run's.

    Example::

        publications = Publications()
        publications.publish(report, trainer.loggers, directory, "compute", trainer.global_step)
        publications.publish(with_train_step, trainer.loggers, directory, "compute", trainer.global_step)  # updates
    """

    def __init__(self) -> None:
        # directory -> the report file written there and the report it holds; None: nothing of ours is there
        self._published: dict[str, tuple[ReportFile, FlopsReport] | None] = {}

    def publish(self, report: FlopsReport, loggers: Sequence[Logger], directory: str, prefix: str, step: int) -> None:
        """Publish ``report`` into ``directory`` the first time; later, only add its training-step outcome to the file
        written there when the published one has none: the FLOPs (also logged as
        ``{prefix}/train_step/flops_per_batch``) or why the step was not counted (``train_step_error``)."""
        if loggers:
            first = loggers[0]
            report = dataclasses.replace(report, logger={"name": str(first.name), "version": str(first.version)})
        if directory not in self._published:
            try:
                self._published[directory] = (publish(report, loggers, directory, prefix, step), report)
            except SinkError as err:  # written, but some logger refused the metrics: the file is still ours
                if err.file is not None:
                    self._published[directory] = (err.file, report)
                raise
            return
        published = self._published[directory]
        if published is None or _step_outcome(published[1]) is not None or _step_outcome(report) is None:
            return
        path = published[0]
        rewrite_report(report, path, loggers)
        self._published[directory] = (path, report)
        if report.train_step_flops is not None:
            log_metrics(loggers, {f"{prefix}/train_step/flops_per_batch": float(report.train_step_flops)}, step)

    def seen(self, directory: str) -> None:
        """Mark ``directory`` as met: when nothing was published there (another rank, a failure), nothing ever is."""
        self._published.setdefault(directory, None)


def _step_outcome(report: FlopsReport) -> int | str | None:
    """The training-step count of ``report``, or why it was not counted; ``None`` when neither is known yet."""
    return report.train_step_flops if report.train_step_flops is not None else report.train_step_error
