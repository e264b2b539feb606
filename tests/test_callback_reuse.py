"""FlopsMonitor counts again on every fit (a second fit, a resumed fit: a stored report is never reused, issue 18
point 7); two monitors in one Trainer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lit_helpers import HIDDEN, IN_FEATURES, OUT_FEATURES, LinearStack, RandomDataModule, make_trainer, read_scalars
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_flops.callback as callback_module
from lightning_flops import FlopsMonitor

FEATURES, OUT = 64, 1  # SequenceRegressor: Linear(64 -> 1) on [B, T, 64]


class SequenceRegressor(LightningModule):
    """``Linear(64, 1)`` applied to every step of a ``[B, T, 64]`` sequence: ``T * 64`` MACs per sample."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(FEATURES, OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (x,) = batch
        return self(x).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def sequences(length: int, samples: int = 4) -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(samples, length, FEATURES)), batch_size=2)


def published_macs(trainer: Any) -> int:
    data = json.loads((Path(trainer.log_dir) / "flops_report.json").read_text())
    return data["counters"]["torch"]["macs"] // data["batch_size"]


def test_second_fit_on_longer_sequences_profiles_again(tmp_path: Path) -> None:
    model, monitor = SequenceRegressor(), FlopsMonitor(counters=("torch",))
    first = make_trainer(tmp_path / "a", [monitor], logger=TensorBoardLogger(str(tmp_path / "a")))
    first.fit(model, sequences(10))
    second = make_trainer(tmp_path / "b", [monitor], logger=TensorBoardLogger(str(tmp_path / "b")))
    second.fit(model, sequences(100))
    assert published_macs(first) == 10 * FEATURES * OUT  # seq * in * out
    assert published_macs(second) == 100 * FEATURES * OUT  # 6,400, not the 640 of the first fit
    assert read_scalars(Path(second.log_dir))["compute/torch/macs"] == 100 * FEATURES * OUT


def test_second_fit_with_another_custom_rule_profiles_again(tmp_path: Path) -> None:
    calls = []
    real_profile = callback_module.profile_model

    def counting_profile(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real_profile(*args, **kwargs)

    model = SequenceRegressor()
    monitor = FlopsMonitor(counters=("torch",), custom_ops={nn.Linear: lambda m, i, o: 3 * o.shape[0]})
    with pytest.MonkeyPatch().context() as patch:
        patch.setattr(callback_module, "profile_model", counting_profile)
        make_trainer(tmp_path / "a", [monitor], logger=TensorBoardLogger(str(tmp_path / "a"))).fit(model, sequences(10))
        make_trainer(tmp_path / "b", [monitor], logger=TensorBoardLogger(str(tmp_path / "b"))).fit(model, sequences(10))
        assert calls == [1, 1]  # every fit counts again, even with the same model, input and rule
        monitor.custom_ops = {nn.Linear: lambda m, i, o: 7 * o.shape[0]}  # same name "<lambda>", other code
        third = make_trainer(tmp_path / "c", [monitor], logger=TensorBoardLogger(str(tmp_path / "c")))
        third.fit(model, sequences(10))
    assert calls == [1, 1, 1]
    assert published_macs(third) == 7  # the new rule's MACs per sample for the whole head


def test_resume_with_other_input_shapes_profiles_again(tmp_path: Path) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = make_trainer(tmp_path, [FlopsMonitor(counters=("torch",)), checkpoint], enable_checkpointing=True)
    first.fit(SequenceRegressor(), sequences(10))
    second = make_trainer(
        tmp_path, [FlopsMonitor(counters=("torch",))], max_steps=4, logger=TensorBoardLogger(str(tmp_path / "r"))
    )
    second.fit(SequenceRegressor(), sequences(100), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert published_macs(second) == 100 * FEATURES * OUT


def test_eval_and_train_monitors_in_one_trainer_log_both_and_resume(tmp_path: Path) -> None:
    def monitors() -> list[FlopsMonitor]:
        return [FlopsMonitor(counters=("torch",)), FlopsMonitor(counters=("torch",), mode="train", prefix="train")]

    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = make_trainer(tmp_path, [*monitors(), checkpoint], enable_checkpointing=True)
    first.fit(LinearStack(), RandomDataModule())
    per_sample = IN_FEATURES * HIDDEN + HIDDEN * OUT_FEATURES  # two matrix products, bias not counted
    scalars = read_scalars(Path(first.log_dir))
    assert scalars["compute/torch/macs"] == per_sample
    assert scalars["train/torch/macs"] == per_sample

    resumed = monitors()
    second = make_trainer(tmp_path, resumed, max_steps=4, logger=TensorBoardLogger(str(tmp_path / "resumed")))
    second.fit(LinearStack(), RandomDataModule(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [m.report.mode for m in resumed] == ["eval", "train"]
    scalars = read_scalars(Path(second.log_dir))
    assert scalars["compute/torch/macs"] == per_sample
    assert scalars["train/torch/macs"] == per_sample


def test_state_keys_differ_by_prefix_mode_and_counters() -> None:
    keys = {
        FlopsMonitor().state_key,
        FlopsMonitor(mode="train").state_key,
        FlopsMonitor(prefix="other").state_key,
        FlopsMonitor(counters=("torch",)).state_key,
    }
    assert len(keys) == 4


def test_second_fit_with_other_tokens_profiles_again(tmp_path: Path) -> None:
    def positive_steps(batch: Any) -> int:  # the tokens of a batch: its steps whose first feature is positive
        return int((batch[0][..., 0] > 0).sum())

    model, monitor = SequenceRegressor(), FlopsMonitor(counters=("torch",), tokens_fn=positive_steps)
    ones, minus_ones = torch.ones(2, 10, FEATURES), -torch.ones(2, 10, FEATURES)
    minus_ones[:, :3] = 1.0  # 3 positive steps per sample
    first = make_trainer(tmp_path / "a", [monitor], logger=TensorBoardLogger(str(tmp_path / "a")))
    first.fit(model, DataLoader(TensorDataset(ones), batch_size=2))
    assert monitor.report.tokens == 2 * 10  # batch * positive steps
    second = make_trainer(tmp_path / "b", [monitor], logger=TensorBoardLogger(str(tmp_path / "b")))
    second.fit(model, DataLoader(TensorDataset(minus_ones), batch_size=2))  # same shapes, other tokens
    assert monitor.report.tokens == 2 * 3
