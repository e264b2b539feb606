"""What the callback takes from the modules that own it: the gap message (render), the run's hparams (the mirror of
Lightning's private ``_log_hyperparams``, in _compat) and the training-step batch size (inputs)."""

from __future__ import annotations

import dataclasses
import types

import lightning as L
import pytest
import torch
from torch import nn

import lightning_flops as lf
from lightning_flops import render
from lightning_flops._compat import run_hparams
from lightning_flops.inputs import batch_size_of
from lightning_flops.report import Gap


def test_gap_message_names_each_flagged_pair_with_its_gaps_module_and_operators() -> None:
    report = lf.profile_model(nn.Linear(4, 3), torch.randn(2, 4), counters=["torch"], strict=True)
    report = dataclasses.replace(
        report,
        limit=0.05,
        gaps=(
            Gap("thop", "torch", 0.25, 0.125, True, "encoder.attn", ("sdpa", "matmul")),
            Gap("fvcore", "torch", 0.01, 0.0, False, None, ()),
            Gap("fvcore", "thop", 0.5, 0.5, True, None, ()),
        ),
    )
    assert render.gap_message(report) == (
        "counters disagree on Linear: thop vs torch: 25.00% total, 12.50% core (limit 5.00%), mostly in module "
        "`encoder.attn` (sdpa, matmul); fvcore vs thop: 50.00% total, 50.00% core (limit 5.00%), mostly in module "
        "`<root>` (no operator named)."
    )


def test_batch_size_of_prefers_the_users_rule_then_the_model_input_then_the_batch() -> None:
    batch = (torch.zeros(6, 3), torch.zeros(2))
    assert batch_size_of(batch, lambda b: b[0], lambda b: 5) == 5  # the user's rule as given
    assert batch_size_of(batch, lambda b: b[1]) == 2  # dim 0 of the model input
    assert batch_size_of({"x": torch.zeros(7, 1)}, lambda b: (_ for _ in ()).throw(KeyError("no input"))) == 7


class _Module(L.LightningModule):
    def __init__(self, width: int = 8, hidden: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters(logger=not hidden)


class _Data(L.LightningDataModule):
    def __init__(self, batch: int = 4) -> None:
        super().__init__()
        self.save_hyperparameters()


@pytest.mark.parametrize(
    ("hidden", "autolog", "expected"),
    [
        (False, True, ({"width": 8, "hidden": False, "batch": 4}, True)),
        (True, True, ({"batch": 4}, True)),  # save_hyperparameters(logger=False): the module's stay out
        (False, False, ({"width": 8, "hidden": False, "batch": 4}, False)),  # Trainer(enable_autolog_hparams=False)
    ],
)
def test_run_hparams_mirrors_what_lightning_logs(hidden: bool, autolog: bool, expected: tuple[dict, bool]) -> None:
    trainer = types.SimpleNamespace(
        lightning_module=_Module(hidden=hidden), datamodule=_Data(), enable_autolog_hparams=autolog
    )
    assert run_hparams(trainer) == expected
