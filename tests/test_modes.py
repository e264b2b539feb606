"""The one ``mode="train"`` rule (docs/counting.md, Modes): the forward that training runs.

A training-mode root keeps every module's own flag (a frozen submodule in eval stays eval, as in a fit that freezes
it); an eval-mode root is put in training mode as a whole first, as ``fit`` does with ``model.train()``. Every flag is
restored afterwards. ``mode="eval"`` puts everything in eval mode.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lightning_flops as lf

COUNTERS = ("thop", "fvcore", "torch")
BATCH, IN, HIDDEN = 2, 4, 8
FIRST = BATCH * IN * HIDDEN  # Linear(4, 8): batch * in * out
SECOND = BATCH * HIDDEN * HIDDEN  # Linear(8, 8), which runs only in training mode


class TrainOnlyLinear(nn.Module):
    """``Linear(8, 8)`` in training mode, the identity in eval mode (like a train-time auxiliary branch)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(HIDDEN, HIDDEN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) if self.training else x


def build() -> nn.Sequential:
    return nn.Sequential(nn.Linear(IN, HIDDEN), TrainOnlyLinear())


def macs(model: nn.Module, counter: str, mode: str, device: str | None) -> int:
    report = lf.profile_model(model, torch.randn(BATCH, IN), counters=(counter,), mode=mode, device=device)
    result = report.counters[counter]
    assert result.ok, result.error
    return result.macs


@pytest.mark.parametrize("device", [None, "model"])
@pytest.mark.parametrize("counter", COUNTERS)
def test_train_mode_on_an_eval_root_trains_every_module(counter: str, device: str | None) -> None:
    model = build().eval()
    assert macs(model, counter, "train", device) == FIRST + SECOND
    assert not any(m.training for m in model.modules())  # restored


@pytest.mark.parametrize("device", [None, "model"])
@pytest.mark.parametrize("counter", COUNTERS)
def test_train_mode_on_a_training_root_keeps_a_frozen_submodule_in_eval(counter: str, device: str | None) -> None:
    model = build().train()
    model[1].eval()  # frozen, as a fit that freezes a branch runs it
    assert macs(model, counter, "train", device) == FIRST
    assert model.training and model[0].training and not model[1].training  # restored


@pytest.mark.parametrize("counter", COUNTERS)
def test_eval_mode_puts_every_module_in_eval(counter: str) -> None:
    model = build().train()
    assert macs(model, counter, "eval", None) == FIRST
    assert all(m.training for m in model.modules())  # restored
