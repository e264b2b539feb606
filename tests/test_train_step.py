"""Training-step FLOPs (forward + backward, torch counter on a meta copy) and Lightning's ThroughputMonitor."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.loggers import CSVLogger
from lit_helpers import LinearStack, RandomDataModule, make_trainer
from torch import nn

from lightning_flops import FlopsMonitor
from lightning_flops.train_step import train_step_flops


def _stack() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 256), nn.ReLU(), nn.Linear(256, 10))


def test_linear_stack_step_is_three_forwards_minus_the_first_input_gradient() -> None:
    batch = 8
    forward = batch * (64 * 128 + 128 * 256 + 256 * 10)  # MACs of the three matrix products
    first_input_grad = batch * 64 * 128  # autograd skips the gradient of x, which needs none
    assert train_step_flops(_stack(), torch.randn(batch, 64)) == 2 * (3 * forward - first_input_grad)


def test_frozen_first_layer_skips_its_weight_gradient() -> None:
    model = _stack()
    model[0].requires_grad_(False)
    batch = 8
    forward = batch * (64 * 128 + 128 * 256 + 256 * 10)
    # no weight gradient for layer 0, and no input gradient for layers 0 and 1 (nothing before them needs one)
    expected = 3 * forward - 2 * batch * 64 * 128 - batch * 128 * 256
    assert train_step_flops(model, torch.randn(batch, 64)) == 2 * expected


def test_counting_leaves_gradients_and_weights_untouched() -> None:
    model = _stack()
    model(torch.randn(2, 64)).sum().backward()  # an accumulated gradient from a previous micro-batch
    grads = [p.grad.clone() for p in model.parameters()]
    weights = [p.detach().clone() for p in model.parameters()]
    train_step_flops(model, torch.randn(8, 64))
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), weights, strict=True))


def test_monitor_sets_flops_per_batch_on_the_module(tmp_path: Path) -> None:
    module = LinearStack()
    make_trainer(tmp_path, [FlopsMonitor(counters=("torch",))]).fit(module, RandomDataModule())
    batch = 4
    assert module.flops_per_batch == 2 * (3 * batch * (32 * 64 + 64 * 8) - batch * 32 * 64)


class _OwnFlops(LinearStack):
    flops_per_batch = 123


def test_monitor_keeps_a_flops_per_batch_the_module_defines(tmp_path: Path) -> None:
    module = _OwnFlops()
    make_trainer(tmp_path, [FlopsMonitor(counters=("torch",))]).fit(module, RandomDataModule())
    assert module.flops_per_batch == 123


@pytest.mark.parametrize("monitor_first", [True, False], ids=["flops_monitor_first", "throughput_monitor_first"])
def test_throughput_monitor_logs_device_flops_per_sec(tmp_path: Path, monitor_first: bool) -> None:
    window = 2
    callbacks = [
        FlopsMonitor(counters=("torch",)),
        ThroughputMonitor(batch_size_fn=lambda b: b[0].shape[0], window_size=window),
    ]
    if not monitor_first:
        callbacks.reverse()
    logger = CSVLogger(str(tmp_path))
    trainer = make_trainer(tmp_path, callbacks, logger=logger, max_steps=window + 1, log_every_n_steps=1)
    trainer.fit(LinearStack(), RandomDataModule())
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as handle:
        values = [row["train/device/flops_per_sec"] for row in csv.DictReader(handle)]
    assert any(value and float(value) > 0 for value in values)
