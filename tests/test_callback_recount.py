"""A stored report never stands for a new count (issue 18, point 7): every fit, resumed or not, counts again, so the
number logged is the one a new count gives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_flops import FlopsMonitor
from tests.lit_helpers import make_trainer, read_scalars

SIDE, IN_CHANNELS, OUT_CHANNELS, KERNEL = 32, 3, 8, 3


def conv_macs(stride: int) -> int:
    """MACs of one sample of ``Conv2d(3, 8, 3, stride)`` on 32x32 without padding: out positions * out * in * k * k."""
    out_side = (SIDE - KERNEL) // stride + 1
    return out_side * out_side * OUT_CHANNELS * IN_CHANNELS * KERNEL * KERNEL


class StridedConv(LightningModule):
    """``Conv2d(3, 8, 3, stride)``: the same parameter shapes for every stride."""

    def __init__(self, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(IN_CHANNELS, OUT_CHANNELS, KERNEL, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (x,) = batch
        return self(x).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def images() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(8, IN_CHANNELS, SIDE, SIDE, generator=generator)), batch_size=2)


def test_resume_with_another_stride_logs_the_new_count(tmp_path: Path) -> None:
    assert conv_macs(1) == 194_400 and conv_macs(2) == 48_600  # 30*30*8*3*9 and 15*15*8*3*9
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    seed_everything(0)
    first = make_trainer(tmp_path / "a", [FlopsMonitor(counters=("torch",)), checkpoint], enable_checkpointing=True)
    first.fit(StridedConv(stride=1), images())
    seed_everything(0)
    resumed = make_trainer(tmp_path / "b", [FlopsMonitor(counters=("torch",))], max_steps=4)
    model = StridedConv(stride=2)
    resumed.fit(model, images(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    report = json.loads((Path(resumed.log_dir) / "flops_report.json").read_text())
    assert report["counters"]["torch"]["macs"] // report["batch_size"] == conv_macs(
        2
    )  # 194,400 before: the stale stride-1 report
    assert read_scalars(Path(resumed.log_dir))["compute/torch/macs"] == conv_macs(2)
    reference = torch.utils.flop_counter.FlopCounterMode(display=False)
    with reference:
        model(torch.randn(1, IN_CHANNELS, SIDE, SIDE))
    assert reference.get_total_flops() // 2 == conv_macs(2)  # torch's own count, beside ours


def test_a_second_fit_after_a_change_the_parameters_do_not_show_counts_again(tmp_path: Path) -> None:
    monitor, model = FlopsMonitor(counters=("torch",)), StridedConv(stride=1)
    first = make_trainer(tmp_path / "a", [monitor], logger=TensorBoardLogger(str(tmp_path / "a")))
    first.fit(model, images())
    model.conv.stride = (2, 2)  # the same parameters, another count
    second = make_trainer(tmp_path / "b", [monitor], logger=TensorBoardLogger(str(tmp_path / "b")))
    second.fit(model, images())
    assert read_scalars(Path(first.log_dir))["compute/torch/macs"] == conv_macs(1)
    assert read_scalars(Path(second.log_dir))["compute/torch/macs"] == conv_macs(2)
