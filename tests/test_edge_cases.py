"""Edge cases found in review: root-level modules, option types, bad checkpoint state, rebound parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lightning_flops as lf
from lightning_flops import FlopsMonitor


@pytest.mark.parametrize("counter", ["thop", "fvcore", "torch"])
def test_a_leaf_model_is_booked_under_the_root_name(counter: str) -> None:
    model = nn.Linear(8, 4, bias=False)
    result = lf.profile_model(model, torch.randn(3, 8), counters=(counter,)).counters[counter]
    assert set(result.by_module) <= {name for name, _ in model.named_modules()}
    assert result.by_module[""] == 3 * 8 * 4  # batch * in * out


def test_gap_on_a_leaf_model_names_the_root() -> None:
    report = lf.profile_model(nn.BatchNorm1d(8), torch.randn(4, 8), counters=("thop", "torch"), flag_on="total")
    (gap,) = report.gaps
    assert gap.flagged and gap.module == "" and gap.operators == ("norm",)


@pytest.mark.parametrize("strict", ["yes", 1, None])
def test_profile_model_rejects_a_strict_that_is_not_a_bool(strict: object) -> None:
    with pytest.raises(lf.FlopsConfigError, match=r"`strict` must be True or False"):
        lf.profile_model(nn.Linear(2, 2), torch.randn(1, 2), strict=strict)  # type: ignore[arg-type]


def test_a_checkpoint_with_an_unreadable_report_is_profiled_again() -> None:
    monitor = FlopsMonitor()
    with pytest.warns(UserWarning, match="stored report cannot be read"):
        monitor.load_state_dict({"report": {"not": "json text"}})
    assert monitor.report is None


class _RebindsItsWeight(nn.Module):
    """A forward that swaps a parameter for a new one under the same name (a bad but real pattern)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.weight = nn.Parameter(self.weight.detach() * 2)
        return x @ self.weight


def test_a_parameter_rebound_during_counting_is_put_back() -> None:
    model = _RebindsItsWeight()
    original = model.weight
    lf.profile_model(model, torch.randn(2, 4), device="model")
    assert model.weight is original
    assert torch.equal(model.weight, torch.ones(4, 4))
