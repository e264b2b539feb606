"""Higher-order operators (``torch.cond``, ``while_loop``, checkpoint) are counted the way FlopCounterMode counts them,
inside the user's ``try``/``except`` too: nothing is raised through the user's code and the forward runs once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

import lightning_flops as lf


class Fallback(nn.Module):
    """The issue's example: an optional path with a plain fallback, as user code often has."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 64)
        self.fallbacks = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return torch.cond(x.sum() > 0, lambda t: self.a(t), lambda t: self.a(t), (x,))
        except Exception:
            self.fallbacks += 1
            return self.b(self.a(x))


class Chained(nn.Module):
    """A cond after counted work (FlopCounterMode then adds both branches to the count already there)."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.small, self.large = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        try:
            return torch.cond(x.sum() > 0, lambda t: self.small(t).sum(-1), lambda t: self.large(t).sum(-1), (x,))
        except Exception:
            return self.large(self.small(x)).sum(-1)


class Looped(nn.Module):
    """``while_loop``: FlopCounterMode cannot run it eagerly (it raises), so the user's fallback runs under both."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return torch.while_loop(lambda i, t: i < 3, lambda i, t: (i + 1, self.lin(t)), (torch.tensor(0), x))[1]
        except Exception:
            return self.lin(self.lin(x))


class Checkpointed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return checkpoint(self.lin, x, use_reentrant=False)
        except Exception:
            return self.lin(self.lin(x))


def flop_counter_mode_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Stock FlopCounterMode over a real CPU forward, in MACs (its FLOPs / 2)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


CASES: list[tuple[str, Callable[[], nn.Module], Callable[[], torch.Tensor]]] = [
    ("cond_in_try", Fallback, lambda: torch.randn(2, 64)),
    ("cond_after_work", Chained, lambda: torch.randn(4, 8)),
    ("while_loop_in_try", Looped, lambda: torch.randn(4, 16)),
    ("checkpoint_in_try", Checkpointed, lambda: torch.randn(4, 16)),
]


@pytest.mark.parametrize("device", [None, "model"])
@pytest.mark.parametrize(("name", "build", "make_input"), CASES, ids=[c[0] for c in CASES])
def test_higher_order_operators_count_as_flop_counter_mode_counts(
    name: str, build: Callable[[], nn.Module], make_input: Callable[[], torch.Tensor], device: str | None
) -> None:
    torch.manual_seed(0)
    model, x = build(), make_input()
    expected = flop_counter_mode_macs(model, x)
    result = lf.profile_model(model, x, counters=("torch",), device=device).counters["torch"]
    assert result.ok, result.error
    assert result.macs == expected


def test_the_issue_example_counts_one_branch_and_never_takes_the_users_fallback() -> None:
    model, x = Fallback(), torch.randn(2, 64)
    expected = flop_counter_mode_macs(model, x)
    assert expected == 2 * 64 * 64  # batch * in * out: the two identical branches, merged as FlopCounterMode does
    assert model.fallbacks == 0
    for device in (None, "model"):
        report = lf.profile_model(model, x, counters=("torch",), device=device)
        assert report.counters["torch"].macs == expected  # was 16,384: the fallback's two Linear layers
        assert report.counters["torch"].module_operators[""] == {"linear": expected}
    assert model.fallbacks == 0  # the user's model: never on its fallback path (copies run the forward)


def test_a_counted_forward_runs_once() -> None:
    from lightning_flops.counters.engine import count

    calls: list[Any] = []
    model = Fallback()

    def forward() -> None:
        calls.append(None)
        model(torch.randn(2, 64))

    with torch.no_grad():
        result = count(forward, model)
    assert len(calls) == 1  # the engine used to raise inside forward and run it again
    assert result.flops == 2 * 2 * 64 * 64  # 2 FLOPs per MAC * batch * in * out
    assert model.fallbacks == 0
