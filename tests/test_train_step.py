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


# --------------------------------------------------- lf.train_step_flops against torch's own FlopCounterMode
class _MatMul(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16, 24))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight


class _BasicBlock(nn.Module):
    """ResNet basic block: conv-bn-relu-conv-bn plus the identity, relu."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + x)


_CASES = {
    "mm": (_MatMul, (4, 16)),
    "conv": (lambda: nn.Conv2d(3, 8, 3, padding=1), (2, 3, 10, 10)),
    "conv_transpose": (lambda: nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1), (2, 8, 5, 5)),
    "resnet_block": (_BasicBlock, (2, 8, 6, 6)),
}


def _torch_forward_backward_flops(model: nn.Module, x: torch.Tensor) -> int:
    """What torch itself counts for forward + backward (on a copy, so the model under test stays untouched)."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    twin, x = copy.deepcopy(model), x.detach().clone().requires_grad_(x.requires_grad)
    with FlopCounterMode(display=False) as counter:
        twin(x).sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("input_grad", [False, True], ids=["input_no_grad", "input_requires_grad"])
@pytest.mark.parametrize("case", list(_CASES))
def test_train_step_flops_equals_torch_forward_backward(case: str, input_grad: bool) -> None:
    import lightning_flops as lf

    torch.manual_seed(0)
    factory, shape = _CASES[case]
    model = factory().train()
    x = torch.randn(shape, requires_grad=input_grad)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    flops = lf.train_step_flops(model, x)
    assert flops == _torch_forward_backward_flops(model, x) > 0
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BN statistics included
    assert all(p.grad is None for p in model.parameters()) and x.grad is None
    assert torch.equal(torch.get_rng_state(), rng)


def test_input_that_requires_grad_adds_the_first_input_gradient() -> None:
    # forward 2*4*3 MACs, weight gradient 2*4*3, input gradient 2*4*3 (needed because x requires grad)
    assert train_step_flops(nn.Linear(4, 3), torch.randn(2, 4, requires_grad=True)) == 2 * 3 * (2 * 4 * 3)
    assert train_step_flops(nn.Linear(4, 3), torch.randn(2, 4)) == 2 * 2 * (2 * 4 * 3)


class _DataDependent(nn.Module):
    """BatchNorm, dropout and a row selection by value (``nonzero``): the meta copy cannot run it."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.bn(x))
        rows = (x[:, 0] > 0).nonzero().squeeze(1)
        return self.fc(h[rows])


def test_data_dependent_model_is_counted_on_the_real_model_and_left_unchanged() -> None:
    torch.manual_seed(0)
    model = _DataDependent().train()
    x = torch.randn(16, 8)
    selected = int((x[:, 0] > 0).sum())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    # fc on the selected rows: forward + weight gradient (its input comes from BN's weights, so + input gradient)
    assert train_step_flops(model, x) == 2 * 3 * selected * 8 * 4
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
