"""Help for a new user's mistakes (issue 19, points 6 and 7): every counter failing is said out loud with the fix,
and a name one letter off gets the closest valid name."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule
from torch import nn
from torch.utils.data import DataLoader

import lightning_flops as lf
from tests.lit_helpers import make_trainer


class DictForward(nn.Module):
    """``forward(self, batch)`` takes the dict itself."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.linear(batch["x"])


def test_every_counter_failing_warns_once_with_the_reason_and_the_fix() -> None:
    batch = {"x": torch.randn(2, 4)}
    with pytest.warns(UserWarning) as caught:
        report = lf.profile_model(DictForward(), batch)
    assert not any(result.ok for result in report.counters.values())
    lines = [str(w.message) for w in caught if "every counter failed" in str(w.message)]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "unexpected keyword argument 'x'" in lines[0]
    assert "profile_model(model, (batch,))" in lines[0] and "input_fn=lambda batch: (batch,)" in lines[0]
    assert caught[0].filename == __file__  # points at the caller's line
    # the fix it names works: 2 samples x 4 in x 3 out
    assert lf.profile_model(DictForward(), (batch,), counters=("torch",)).counters["torch"].macs == 2 * 4 * 3


def test_a_tuple_spread_as_positional_arguments_gets_the_same_fix() -> None:
    class PairForward(nn.Module):
        def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            return pair[0] @ pair[1]

    with pytest.warns(UserWarning, match=r"spread as positional arguments.*\(batch,\)"):
        lf.profile_model(PairForward(), (torch.randn(2, 3), torch.randn(3, 2)), counters=("torch",))


def test_a_count_from_one_counter_is_enough_not_to_warn() -> None:
    class NoTracing(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if torch.jit.is_tracing():  # fvcore traces the model: it fails, the others count
                raise RuntimeError("no tracing here")
            return x * 2

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = lf.profile_model(NoTracing(), torch.randn(2, 3))
    assert not report.counters["fvcore"].ok and report.counters["torch"].ok


class LitDict(LightningModule):
    """A LightningModule whose forward takes the batch dict whole."""

    def __init__(self) -> None:
        super().__init__()
        self.net = DictForward()

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(batch).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_flops_monitor_warns_when_its_input_fn_spreads_the_dict(tmp_path: Path) -> None:
    data = DataLoader([{"x": torch.randn(4)} for _ in range(8)], batch_size=4)
    trainer = make_trainer(tmp_path, [lf.FlopsMonitor(input_fn=lambda b: b)], max_steps=1)
    with pytest.warns(UserWarning, match=r"every counter failed on LitDict.*input_fn=lambda batch: \(batch,\)"):
        trainer.fit(LitDict(), data)


@pytest.mark.parametrize(
    ("kwargs", "hint"),
    [
        ({"counters": ("thopp",)}, "did you mean 'thop'?"),
        ({"counters": ("torch", "fvcor")}, "did you mean 'fvcore'?"),
        ({"mode": "evl"}, "did you mean 'eval'?"),
        ({"flag_on": "cor"}, "did you mean 'core'?"),
        ({"parts": {"visual": "linar"}}, "did you mean 'linear'?"),
    ],
)
def test_a_name_one_letter_off_gets_the_closest_valid_name(kwargs: dict, hint: str) -> None:
    with pytest.raises(lf.FlopsConfigError, match=hint.replace("?", r"\?")) as raised:
        lf.profile_model(DictForward(), (torch.randn(2, 4),), **kwargs)
    assert "\n" not in str(raised.value)


def test_flops_monitor_suggests_the_closest_on_gap() -> None:
    with pytest.raises(lf.FlopsConfigError, match=r"`on_gap`.*did you mean 'raise'\?"):
        lf.FlopsMonitor(on_gap="rase")
