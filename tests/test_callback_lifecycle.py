"""What FlopsMonitor may do to a fit over its lifetime (issue 18): the observed training step never kills the fit, and
``flops_per_batch`` is set only where it is ours to set. Each fit is compared with the same seeded fit without it."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import seed_everything
from torch.utils._python_dispatch import _get_current_dispatch_mode

import lightning_flops.callback as callback_module
from lightning_flops import FlopsMonitor
from lightning_flops.train_step import StepObserver
from tests.lit_helpers import (
    LinearStack,
    RandomDataModule,
    assert_same_weights_and_optimizer,
    linear_stack_step_flops,
    make_trainer,
)

BATCH = 4
STEP_FLOPS = linear_stack_step_flops(BATCH)  # forward + backward of LinearStack on [4, 32]


class RefusesDispatchModes(LinearStack):
    """A forward that fails under any Python dispatch mode (as a tensor subclass or an extension may)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _get_current_dispatch_mode() is not None:
            raise RuntimeError("this forward refuses Python dispatch modes")
        return self.net(x)


def fit(tmp_path: Path, module_type: type, callbacks: list[Any]) -> tuple[Any, Any]:
    seed_everything(0)
    module = module_type()
    trainer = make_trainer(tmp_path, callbacks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, RandomDataModule(batch_size=BATCH))
    return module, trainer


def assert_same_training(a: tuple[Any, Any], b: tuple[Any, Any]) -> None:
    (module_a, trainer_a), (module_b, trainer_b) = a, b
    assert trainer_a.global_step == trainer_b.global_step == 2
    assert_same_weights_and_optimizer(module_a, trainer_a, module_b, trainer_b)


def written_report(trainer: Any) -> dict[str, Any]:
    return json.loads((Path(trainer.log_dir) / "flops_report.json").read_text())


# ---------------------------------------------------------------- point 5: the observed step never kills the fit
def test_a_forward_that_refuses_dispatch_modes_trains_as_without_the_monitor(tmp_path: Path) -> None:
    without = fit(tmp_path / "without", RefusesDispatchModes, [])
    monitor = FlopsMonitor()
    with_monitor = fit(tmp_path / "with", RefusesDispatchModes, [monitor])  # raised in the real step before
    assert_same_training(without, with_monitor)
    data = written_report(with_monitor[1])
    assert data["counters"]["torch"]["ok"] is False
    assert data["train_step_flops"] is None
    assert "torch counter failed" in data["train_step_error"]
    assert "refuses Python dispatch modes" in data["train_step_error"]
    assert "not counted" in monitor.report.to_markdown()
    assert not hasattr(with_monitor[0], "flops_per_batch")


def test_without_the_torch_counter_the_step_is_not_observed_and_says_why(tmp_path: Path) -> None:
    monitor = FlopsMonitor(counters=("thop",))
    module, trainer = fit(tmp_path, LinearStack, [monitor])
    data = written_report(trainer)
    assert data["train_step_flops"] is None
    assert "torch counter did not run" in data["train_step_error"]
    assert not hasattr(module, "flops_per_batch")


def test_a_forward_that_works_under_modes_is_still_observed(tmp_path: Path) -> None:
    module, trainer = fit(tmp_path, LinearStack, [FlopsMonitor()])
    data = written_report(trainer)
    assert data["train_step_flops"] == STEP_FLOPS
    assert data["train_step_error"] is None
    assert module.flops_per_batch == STEP_FLOPS


class _StartFails(StepObserver):
    def start(self) -> None:
        raise RuntimeError("cannot enter the mode")


class _StopFails(StepObserver):
    def stop(self) -> int | None:
        super().stop()
        raise RuntimeError("cannot leave the mode")


@pytest.mark.parametrize(("observer", "reason"), [(_StartFails, "entered"), (_StopFails, "leaving")])
def test_an_observer_that_fails_never_stops_the_step(tmp_path: Path, observer: type, reason: str) -> None:
    without = fit(tmp_path / "without", LinearStack, [])
    with pytest.MonkeyPatch().context() as patch:
        patch.setattr(callback_module, "StepObserver", observer)
        with_monitor = fit(tmp_path / "with", LinearStack, [FlopsMonitor()])
    assert_same_training(without, with_monitor)
    data = written_report(with_monitor[1])
    assert data["train_step_flops"] is None
    assert reason in data["train_step_error"] and "cannot" in data["train_step_error"]


# ---------------------------------------------------------------- point 8: flops_per_batch is set only where ours
class OwnFlops(LinearStack):
    """A module that defines its own ``flops_per_batch``."""

    def __init__(self) -> None:
        super().__init__()
        self.flops_per_batch = 12_345


class ReadOnlyFlops(LinearStack):
    """A module whose ``flops_per_batch`` is a read-only property."""

    @property
    def flops_per_batch(self) -> int:
        return 777


def test_a_monitor_reused_for_a_second_module_leaves_its_own_flops_per_batch(tmp_path: Path) -> None:
    monitor = FlopsMonitor(counters=("torch",))
    first, _ = fit(tmp_path / "a", LinearStack, [monitor])
    assert first.flops_per_batch == STEP_FLOPS  # no attribute of its own: set for ThroughputMonitor
    second, _ = fit(tmp_path / "b", OwnFlops, [monitor])
    assert second.flops_per_batch == 12_345  # 1,792 before: the first fit's ownership carried over
    without = fit(tmp_path / "c", ReadOnlyFlops, [])
    third = fit(tmp_path / "d", ReadOnlyFlops, [monitor])  # died with AttributeError before
    assert_same_training(without, third)
    assert third[0].flops_per_batch == 777
    assert written_report(third[1])["train_step_flops"] == STEP_FLOPS


def test_the_same_module_fitted_twice_keeps_the_monitors_value_up_to_date(tmp_path: Path) -> None:
    monitor = FlopsMonitor(counters=("torch",))
    seed_everything(0)
    module = LinearStack()
    make_trainer(tmp_path / "a", [monitor]).fit(module, RandomDataModule(batch_size=BATCH))
    assert module.flops_per_batch == STEP_FLOPS
    make_trainer(tmp_path / "b", [monitor]).fit(module, RandomDataModule(batch_size=2 * BATCH))
    assert module.flops_per_batch == 2 * STEP_FLOPS  # ours, so it follows the new batch size
    module.flops_per_batch = 5  # the user's value from now on
    make_trainer(tmp_path / "c", [monitor]).fit(module, RandomDataModule(batch_size=BATCH))
    assert module.flops_per_batch == 5
