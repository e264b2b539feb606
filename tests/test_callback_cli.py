"""The LightningCLI configs in ``configs/`` add FlopsMonitor through ``trainer.callbacks`` and run the examples."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from lightning.pytorch.cli import LightningCLI
from lit_helpers import hparams_session, read_scalars

from examples.models import small_cnn_macs, tiny_attention_macs
from lightning_flops import FlopsMonitor

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    ("config", "torch_macs", "hparam"),
    [
        ("cnn.yaml", small_cnn_macs(8), "width"),  # batch 8 of 3x32x32, width 16
        ("attention.yaml", tiny_attention_macs(8, 16), "dim"),  # batch 8 of 16 tokens, dim 32
    ],
)
def test_cli_config_runs_the_example_with_the_monitor(
    tmp_path: Path, config: str, torch_macs: int, hparam: str
) -> None:
    args = ["fit", "--config", str(CONFIGS / config), "--trainer.max_steps", "2"]
    args += ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path)]
    cli = LightningCLI(
        args=args,
        subclass_mode_model=True,
        subclass_mode_data=True,
    )
    assert any(isinstance(callback, FlopsMonitor) for callback in cli.trainer.callbacks)
    log_dir = Path(cli.trainer.log_dir)
    assert json.loads((log_dir / "flops_report.json").read_text())["counters"]["torch"]["macs"] == torch_macs
    assert "compute/torch/macs" in read_scalars(log_dir)
    columns, values = hparams_session(log_dir)
    assert "compute/torch/macs" in columns and hparam in values and "_class_path" not in values


def test_train_script_prints_the_report_once_and_the_tensorboard_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    from examples.train import main

    with caplog.at_level(logging.INFO):
        assert main(["--model", "cnn", "--steps", "2", "--logdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    printed = out + "\n".join(record.getMessage() for record in caplog.records)  # the callback prints via logging
    assert printed.count("| MACs |") == 1  # once: the callback's summary, not again by the script
    assert f"tensorboard --logdir {tmp_path}" in out
    assert (tmp_path / "cnn" / "version_0" / "flops_report.json").exists()
