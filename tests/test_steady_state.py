"""After the first batch FlopsMonitor does nothing: no counting, no hooks, no torch modes left on the step path."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch.callbacks import Callback

import lightning_flops.callback as callback_module
from lightning_flops import FlopsMonitor
from tests.lit_helpers import LinearStack, RandomDataModule, make_trainer

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hook_ids(model: torch.nn.Module) -> dict[str, list[int]]:
    return {name: [id(h) for key in _HOOK_DICTS for h in getattr(m, key).values()] for name, m in model.named_modules()}


def _global_hooks() -> int:
    module = sys.modules["torch.nn.modules.module"]
    return sum(len(getattr(module, k)) for k in ("_global_forward_hooks", "_global_forward_pre_hooks"))


class _StepProbe(Callback):
    """Records, at every later training batch, what could slow a step down."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx > 0:
            self.seen.append(
                {
                    "function_modes": torch._C._len_torch_function_stack(),
                    "dispatch_modes": torch._C._len_torch_dispatch_stack(),
                    "hooks": _hook_ids(pl_module),
                    "global_hooks": _global_hooks(),
                    "grad": torch.is_grad_enabled(),
                }
            )


def test_later_batches_run_no_counter_and_carry_no_hooks_or_modes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"profile": 0, "train_step": 0}
    real_profile = callback_module.profile_model

    def profile(*args: Any, **kwargs: Any) -> Any:
        calls["profile"] += 1
        return real_profile(*args, **kwargs)

    class CountedObserver(callback_module.StepObserver):
        def start(self) -> None:
            calls["train_step"] += 1
            super().start()

    monkeypatch.setattr(callback_module, "profile_model", profile)
    monkeypatch.setattr(callback_module, "StepObserver", CountedObserver)
    model, probe = LinearStack(), _StepProbe()
    hooks_before, global_before = _hook_ids(model), _global_hooks()
    make_trainer(tmp_path, [FlopsMonitor(), probe], max_steps=5).fit(model, RandomDataModule())

    assert calls == {"profile": 1, "train_step": 1}
    assert len(probe.seen) == 4  # batches 1..4
    for seen in probe.seen:
        assert seen["function_modes"] == 0 and seen["dispatch_modes"] == 0
        assert seen["hooks"] == hooks_before and seen["global_hooks"] == global_before
        assert seen["grad"] is True
