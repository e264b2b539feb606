"""Awkward training set-ups and "nothing lost": FlopsMonitor in real ``Trainer.fit`` runs never stops or changes
training, its numbers match the analytic count, and no report is overwritten or left half-written.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader

from lightning_flops import FlopsMonitor
from lightning_flops.report import FlopsReport
from lightning_flops.sinks import write_report
from tests.lit_helpers import (
    LinearStack,
    RandomDataModule,
    find_event_dirs,
    linear_stack_macs,
    make_trainer,
    read_scalars,
)

BATCH = 4  # RandomDataModule's batch size
MACS_PER_SAMPLE = linear_stack_macs(1)  # in * hidden + hidden * out


def reports_under(root: Path) -> list[Path]:
    return sorted(root.rglob("flops_report*.json"))


def logged_torch_macs(root: Path) -> float:
    (event_dir,) = find_event_dirs(root)
    return read_scalars(event_dir)["compute/torch/macs"]


# ------------------------------------------------------------------------------------------ training set-ups
@pytest.mark.parametrize(
    "options",
    [{"accumulate_grad_batches": 2, "max_steps": 1}, {"precision": "bf16-mixed"}],
    ids=["gradient_accumulation", "bf16_mixed"],
)
def test_fit_setup_completes_and_logs_the_analytic_count(tmp_path: Path, options: dict[str, Any]) -> None:
    monitor = FlopsMonitor()
    trainer = make_trainer(tmp_path, [monitor], **options)
    trainer.fit(LinearStack(), RandomDataModule())
    assert trainer.global_step == options.get("max_steps", 2)
    assert logged_torch_macs(tmp_path) == MACS_PER_SAMPLE
    assert [json.loads(p.read_text())["counters"]["torch"]["macs"] for p in reports_under(tmp_path)] == [
        BATCH * MACS_PER_SAMPLE
    ]


def test_max_steps_zero_profiles_nothing_and_does_not_fail(tmp_path: Path) -> None:
    monitor = FlopsMonitor(strict=True)
    trainer = make_trainer(tmp_path, [monitor], max_steps=0)
    trainer.fit(LinearStack(), RandomDataModule())
    assert trainer.global_step == 0
    assert monitor.report is None
    assert reports_under(tmp_path) == []


def test_fit_after_validate_keeps_the_report_and_trains(tmp_path: Path) -> None:
    monitor = FlopsMonitor()
    trainer = make_trainer(tmp_path, [monitor], limit_val_batches=1)
    model, data = LinearStack(), RandomDataModule()
    trainer.validate(model, data)
    trainer.fit(model, data)
    assert trainer.global_step == 2
    assert len(reports_under(tmp_path)) == 1  # one run directory, one report
    assert monitor.report.counters["torch"].macs == BATCH * MACS_PER_SAMPLE
    assert monitor.report.train_step_flops is not None  # the fit added the training step


def test_fit_after_validate_publishes_the_training_step_flops(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [FlopsMonitor()], limit_val_batches=1)
    model, data = LinearStack(), RandomDataModule()
    trainer.validate(model, data)
    trainer.fit(model, data)
    (report,) = reports_under(tmp_path)
    assert json.loads(report.read_text())["train_step_flops"] is not None


def test_two_fits_with_one_monitor_publish_into_each_run(tmp_path: Path) -> None:
    monitor = FlopsMonitor()
    for run in ("first", "second"):
        trainer = make_trainer(tmp_path / run, [monitor])
        trainer.fit(LinearStack(), RandomDataModule())
        assert trainer.global_step == 2
    for run in ("first", "second"):
        assert logged_torch_macs(tmp_path / run) == MACS_PER_SAMPLE
        assert len(reports_under(tmp_path / run)) == 1


class _EmptyFirstBatch(RandomDataModule):
    """The first training batch has zero samples, the others ``batch_size``."""

    def train_dataloader(self) -> DataLoader:
        x, y = self.dataset.tensors
        size = self.hparams.batch_size
        batches = [[], *([*range(i, i + size)] for i in range(0, len(x), size))]
        return DataLoader(batches, batch_size=None, collate_fn=lambda idx: (x[list(idx)], y[list(idx)]))


def test_empty_first_batch_warns_and_profiles_the_next_batch(tmp_path: Path) -> None:
    monitor = FlopsMonitor()
    trainer = make_trainer(tmp_path, [monitor], max_steps=3)
    with pytest.warns(UserWarning, match="no samples"):
        trainer.fit(LinearStack(), _EmptyFirstBatch())
    assert trainer.global_step == 3
    assert monitor.report.batch_size == BATCH
    assert logged_torch_macs(tmp_path) == MACS_PER_SAMPLE  # not 0 "per sample" from the empty batch


# --------------------------------------------------------------------------------------------- nothing lost
def _fit(tmp_path: Path, **options: Any) -> None:
    make_trainer(tmp_path, [FlopsMonitor()], **options).fit(LinearStack(), RandomDataModule())


@pytest.mark.parametrize("logger", [False, "fixed_version"], ids=["no_logger", "fixed_version"])
def test_second_run_in_the_same_dir_never_overwrites_the_first(tmp_path: Path, logger: Any) -> None:
    def new_logger() -> Any:
        return False if logger is False else TensorBoardLogger(str(tmp_path), name="runs", version="fixed")

    _fit(tmp_path, logger=new_logger())
    (first,) = reports_under(tmp_path)
    first_text = first.read_text()
    _fit(tmp_path, logger=new_logger())
    reports = reports_under(tmp_path)
    assert [p.name for p in reports] == ["flops_report.1.json", "flops_report.json"]
    assert first.read_text() == first_text
    assert all(p.parent == first.parent for p in reports)
    listed = subprocess.run(
        [sys.executable, "-m", "lightning_flops", "compare", str(tmp_path), "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    found = sorted(Path(run["path"]).name for run in json.loads(listed.stdout)["runs"])
    assert found == ["flops_report.1.json", "flops_report.json"]  # the CLI finds both runs


def _report() -> FlopsReport:
    from lightning_flops import profile_model

    return profile_model(torch.nn.Linear(4, 2), torch.randn(3, 4), counters=("torch",))


def test_failed_write_leaves_the_old_report_intact_and_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = write_report(_report(), tmp_path)
    old_text = old.read_text()

    def killed(fd: int) -> None:
        raise OSError("injected: disk full while flushing")

    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(OSError, match="disk full"):
        write_report(_report(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flops_report.json"]  # no temp file, no half report
    assert old.read_text() == old_text


def test_failed_rename_without_hard_links_leaves_no_empty_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = write_report(_report(), tmp_path)
    old_text = old.read_text()

    def no_links(src: Any, dst: Any) -> None:
        raise OSError("injected: filesystem without hard links")

    def failed_replace(src: Any, dst: Any) -> None:
        raise OSError("injected: rename failed")

    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(os, "replace", failed_replace)
    with pytest.raises(OSError, match="rename failed"):
        write_report(_report(), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flops_report.json"]  # the reserved name is released
    assert old.read_text() == old_text
    FlopsReport.from_json(old.read_text())


def test_write_without_hard_links_still_takes_the_next_free_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_report(_report(), tmp_path)

    def no_links(src: Any, dst: Any) -> None:
        raise OSError("injected: filesystem without hard links")

    monkeypatch.setattr(os, "link", no_links)
    path = write_report(_report(), tmp_path)
    assert path.name == "flops_report.1.json"
    assert FlopsReport.from_json(path.read_text()).counters["torch"].macs == 3 * 4 * 2  # batch * in * out
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
