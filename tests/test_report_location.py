"""Where the JSON report goes: never a directory named ``None``, remote log dirs through fsspec, tracker runs.

MLflow runs on a real sqlite store and W&B in offline mode (both local, no network, no mocks).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger

from lightning_flops import FlopsMonitor
from tests.lit_helpers import LinearStack, RandomDataModule, linear_stack_macs, make_trainer

BATCH = 4  # RandomDataModule's batch size


def torch_macs_per_sample(text: str) -> int:
    data = json.loads(text)
    return data["counters"]["torch"]["macs"] // data["batch_size"]


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test from ``tmp_path``, so that a report written relative to the working directory lands there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite tracking store for the module (creating its tables takes seconds)."""
    pytest.importorskip("mlflow")
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def local_entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_fast_dev_run_writes_into_default_root_dir_not_none(in_tmp: Path) -> None:
    root = in_tmp / "root"
    trainer = make_trainer(root, [FlopsMonitor(counters=("torch",))], fast_dev_run=True, logger=CSVLogger(in_tmp))
    trainer.fit(LinearStack(), RandomDataModule(batch_size=BATCH))
    assert not (in_tmp / "None").exists()
    assert torch_macs_per_sample((root / "flops_report.json").read_text()) == linear_stack_macs(1)


def test_a_remote_log_dir_is_written_through_fsspec(in_tmp: Path) -> None:
    import fsspec

    memory = fsspec.filesystem("memory")
    logger = CSVLogger(save_dir="memory://flops_test_logs")
    trainer = make_trainer(in_tmp / "root", [FlopsMonitor(counters=("torch",))], max_steps=1, logger=logger)
    try:
        trainer.fit(LinearStack(), RandomDataModule(batch_size=BATCH))
        text = memory.cat("memory://flops_test_logs/lightning_logs/version_0/flops_report.json").decode()
        assert torch_macs_per_sample(text) == linear_stack_macs(1)
        assert "memory:" not in local_entries(in_tmp)  # not a local directory named after the URL
    finally:
        memory.rm("memory://flops_test_logs", recursive=True)


def test_mlflow_on_sqlite_gets_the_report_as_an_artifact_of_its_run(
    in_tmp: Path, mlflow_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    uri = mlflow_uri
    mlflow_logger = MLFlowLogger(tracking_uri=uri, artifact_location=(in_tmp / "artifacts").as_uri())
    csv_logger = CSVLogger(in_tmp / "csv")
    root = in_tmp / "root"
    monitor = FlopsMonitor(counters=("torch",))
    with caplog.at_level(logging.INFO):
        trainer = make_trainer(root, [monitor], max_steps=1, logger=[mlflow_logger, csv_logger])
        trainer.fit(LinearStack(), RandomDataModule(batch_size=BATCH))
    assert not (in_tmp / "None").exists()
    # MLflow on a database has no directory: the report is in the next logger's, and says so
    written = Path(csv_logger.log_dir) / "flops_report.json"
    assert torch_macs_per_sample(written.read_text()) == linear_stack_macs(1)
    (line,) = [r.getMessage() for r in caplog.records if "report written to" in r.getMessage()]
    assert f"{written} (the directory of the CSVLogger)" in line
    assert f"attached to MLFlowLogger run {mlflow_logger.run_id}" in line
    client = MlflowClient(tracking_uri=uri)
    assert [a.path for a in client.list_artifacts(mlflow_logger.run_id)] == ["flops_report.json"]
    local = client.download_artifacts(mlflow_logger.run_id, "flops_report.json", str(in_tmp))
    assert json.loads(Path(local).read_text())["train_step_flops"] is not None  # the final report, train step too


def test_mlflow_alone_falls_back_to_default_root_dir(in_tmp: Path, mlflow_uri: str) -> None:
    from lightning.pytorch.loggers import MLFlowLogger

    logger = MLFlowLogger(tracking_uri=mlflow_uri, experiment_name="alone", artifact_location=in_tmp.as_uri())
    root = in_tmp / "root"
    trainer = make_trainer(root, [FlopsMonitor(counters=("torch",))], max_steps=1, logger=logger)
    trainer.fit(LinearStack(), RandomDataModule(batch_size=BATCH))
    assert not (in_tmp / "None").exists()
    assert torch_macs_per_sample((root / "flops_report.json").read_text()) == linear_stack_macs(1)


def test_wandb_offline_run_directory_holds_the_report(in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(in_tmp))
    logger = WandbLogger(save_dir=str(in_tmp), offline=True)
    try:
        trainer = make_trainer(in_tmp / "root", [FlopsMonitor(counters=("torch",))], max_steps=1, logger=logger)
        trainer.fit(LinearStack(), RandomDataModule(batch_size=BATCH))
        run_dir = Path(logger.experiment.dir)
    finally:
        import wandb

        wandb.finish()
    assert run_dir.is_relative_to(in_tmp / "wandb") and os.path.isdir(run_dir)
    assert torch_macs_per_sample((run_dir / "flops_report.json").read_text()) == linear_stack_macs(1)


def test_a_remote_directory_gets_the_next_free_name_and_rewrites_in_place() -> None:
    import fsspec

    from lightning_flops.report import CounterResult, FlopsReport, ParamCount
    from lightning_flops.sinks import ReportFile, rewrite_report, write_report

    memory = fsspec.filesystem("memory")
    report = FlopsReport(
        model="Net", params=ParamCount(1, 1), counters={"torch": CounterResult("torch", True, macs=6)}, batch_size=2
    )
    try:
        first = write_report(report, "memory://flops_names/run")
        second = write_report(report, "memory://flops_names/run")
        assert (first, second) == (
            "memory://flops_names/run/flops_report.json",
            "memory://flops_names/run/flops_report.1.json",
        )
        rewrite_report(dataclasses.replace(report, train_step_flops=36), ReportFile(second, "CSVLogger"))
        assert json.loads(memory.cat(second))["train_step_flops"] == 36
        assert json.loads(memory.cat(first))["train_step_flops"] is None  # the other run's report is untouched
    finally:
        memory.rm("memory://flops_names", recursive=True)
