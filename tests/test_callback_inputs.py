"""FlopsMonitor's arguments (each bad one raises ``FlopsConfigError`` naming it) and its input extraction rules."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from lit_helpers import HIDDEN, IN_FEATURES, LinearStack, RandomDataModule, linear_stack_macs, make_trainer
from torch import nn
from torch.utils.data import DataLoader

from lightning_flops import FlopsConfigError, FlopsMonitor
from lightning_flops.inputs import NoInput, batch_to_input, prepare_input


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"counters": "torch"}, "counters"),
        ({"counters": ("torch", "ptflops")}, "counters"),
        ({"counters": ()}, "counters"),
        ({"limit": -0.1}, "limit"),
        ({"limit": "1%"}, "limit"),
        ({"flag_on": "everything"}, "flag_on"),
        ({"on_gap": "panic"}, "on_gap"),
        ({"mode": "inference"}, "mode"),
        ({"input_fn": "x"}, "input_fn"),
        ({"batch_size_fn": 8}, "batch_size_fn"),
        ({"example_input": 3}, "example_input"),
        ({"example_input": torch.zeros(1), "input_fn": lambda batch: batch}, "example_input"),
        ({"prefix": ""}, "prefix"),
        ({"prefix": 3}, "prefix"),
        ({"custom_ops": {"LayerNorm": 4}}, "custom_ops"),
        ({"strict": "yes"}, "strict"),
    ],
)
def test_bad_argument_raises_config_error_naming_it(kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises(FlopsConfigError, match=f"`{argument}`"):
        FlopsMonitor(**kwargs)


class _Optional(nn.Module):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return x


class _TwoRequired(nn.Module):
    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return x + z


class _Keywords(nn.Module):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return input_ids


X, Z, Y = torch.ones(2, 3), torch.zeros(2, 3), torch.ones(2)


def test_tensor_batch_is_the_input() -> None:
    assert batch_to_input(_Optional(), X) is X


def test_tuple_batch_gives_only_the_required_positional_arguments() -> None:
    assert batch_to_input(_Optional(), (X, Y)) == (X,)  # forward(x, mask=None) with (x, y): x only


def test_tuple_batch_gives_every_required_positional_argument() -> None:
    result = batch_to_input(_TwoRequired(), [X, Z, Y])
    assert len(result) == 2 and result[0] is X and result[1] is Z


def test_dict_batch_gives_the_keys_forward_accepts() -> None:
    batch = {"input_ids": X, "attention_mask": Z, "labels": Y}
    assert batch_to_input(_Keywords(), batch) == {"input_ids": X, "attention_mask": Z}


@pytest.mark.parametrize(
    ("module", "batch", "reason"),
    [
        (_Keywords(), {"tokens": X}, "do not cover"),
        (_TwoRequired(), (X,), "needs 2 positional"),
        (_Optional(), "text", "no default rule"),
    ],
)
def test_batch_without_a_rule_raises_no_input(module: nn.Module, batch: Any, reason: str) -> None:
    with pytest.raises(NoInput, match=reason):
        batch_to_input(module, batch)


def test_module_without_forward_has_no_input() -> None:
    from lightning.pytorch import LightningModule

    with pytest.raises(NoInput, match="does not implement `forward`"):
        batch_to_input(LightningModule(), X)


def test_example_input_array_is_used_when_the_batch_rules_fail() -> None:
    module = LinearStack()
    module.example_input_array = torch.zeros(5, IN_FEATURES)
    prepared = prepare_input(module, {"unknown": X}, batch_size_fn=lambda batch: 99)
    assert torch.equal(prepared.example, module.example_input_array)
    assert not prepared.from_batch
    assert prepared.batch_size is None  # so batch_size_fn(batch), which describes the batch, is not applied to it


class _DictBatches(LinearStack):
    """A module whose batches are dicts with no key named like ``forward``'s parameter ``x``."""

    def train_dataloader(self) -> DataLoader:
        data = [{"features": torch.randn(IN_FEATURES), "target": torch.randn(8)} for _ in range(8)]
        return DataLoader(data, batch_size=4)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return nn.functional.mse_loss(self(batch["features"]), batch["target"])


def test_no_input_warns_once_naming_input_fn_and_training_goes_on(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [FlopsMonitor(counters=("torch",))])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(_DictBatches())
    messages = [str(w.message) for w in record if "FlopsMonitor" in str(w.message)]
    assert len(messages) == 1 and "input_fn" in messages[0]
    assert trainer.global_step == 2


def test_no_input_raises_config_error_when_strict(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [FlopsMonitor(counters=("torch",), strict=True)])
    with pytest.raises(FlopsConfigError, match="input_fn"):
        trainer.fit(_DictBatches())


def _report(trainer: Any) -> dict[str, Any]:
    return json.loads((Path(trainer.log_dir) / "flops_report.json").read_text())


def test_input_fn_and_batch_size_fn_are_used(tmp_path: Path) -> None:
    monitor = FlopsMonitor(counters=("torch",), input_fn=lambda batch: batch[0][:3], batch_size_fn=lambda batch: 1)
    trainer = make_trainer(tmp_path, [monitor])
    trainer.fit(LinearStack(), RandomDataModule())
    data = _report(trainer)
    assert data["counters"]["torch"]["macs"] == linear_stack_macs(3)  # the three rows input_fn kept
    assert data["batch_size"] == 1


def test_example_input_replaces_the_batch_for_the_profile(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [FlopsMonitor(counters=("torch",), example_input=torch.zeros(6, IN_FEATURES))])
    trainer.fit(LinearStack(), RandomDataModule())
    data = _report(trainer)
    assert (data["batch_size"], data["counters"]["torch"]["macs"]) == (6, linear_stack_macs(6))
    # the training-step count still uses the real batch of 4
    assert data["train_step_flops"] == 2 * (3 * linear_stack_macs(4) - 4 * IN_FEATURES * HIDDEN)
