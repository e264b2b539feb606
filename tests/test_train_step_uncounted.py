"""The training-step count never counts zero in silence: a kernel without a formula, forward or backward, is listed.

``lftest::step_mm(h, w)`` is a user's custom op (``torch.library.custom_op``) computing ``h @ w`` with no FLOP
formula; its autograd formula calls it again for the input gradient (``grad @ w.T``) and uses a plain ``mm`` (counted)
for the weight gradient. Every expected number is arithmetic written out here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import seed_everything
from lit_helpers import WrappedNet, make_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_flops as lf
from lightning_flops import FlopsMonitor
from lightning_flops.report import Uncounted
from lightning_flops.train_step import train_step_count, train_step_flops

BATCH, IN, HIDDEN, OUT = 4, 8, 16, 4


@torch.library.custom_op("lftest::step_mm", mutates_args=())
def step_mm(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return h @ w


@step_mm.register_fake
def _(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return h.new_empty(h.shape[0], w.shape[1])


def _setup_context(ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor], output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = ctx.saved_tensors
    return step_mm(grad, w.t()), h.t() @ grad  # the input gradient through the custom op again, the weight one: mm


step_mm.register_autograd(_backward, setup_context=_setup_context)


class StepMM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(HIDDEN, OUT))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return step_mm(h, self.w)


class DataDependent(nn.Module):
    """``.item()`` cannot run on the meta copy: the count falls back to the real model."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (1.0 if x.sum().item() > -1e9 else 0.0)


def _model(meta_ok: bool = True) -> nn.Module:
    layers = [nn.Linear(IN, HIDDEN), StepMM()]
    return nn.Sequential(*layers) if meta_ok else nn.Sequential(*layers, DataDependent())


# Linear forward + its weight gradient (x needs no gradient), the custom op's weight gradient (h.T @ grad: mm);
# the custom op's forward and input gradient count 0 and are listed
COUNTED_FLOPS = 2 * (BATCH * IN * HIDDEN + BATCH * IN * HIDDEN + HIDDEN * BATCH * OUT)


@pytest.mark.parametrize("meta_ok", [True, False], ids=["meta_copy", "real_fallback"])
def test_train_step_count_lists_the_custom_op_forward_and_backward(meta_ok: bool) -> None:
    flops, uncounted = train_step_count(_model(meta_ok), torch.randn(BATCH, IN))
    assert flops == COUNTED_FLOPS
    assert uncounted == (
        Uncounted(operator="lftest::step_mm", module="1", calls=1, reason="no formula"),  # forward, in module "1"
        Uncounted(operator="lftest::step_mm", module="", calls=1, reason="no formula"),  # backward: outside modules
    )


def test_public_train_step_flops_still_returns_the_int() -> None:
    flops = train_step_flops(_model(), torch.randn(BATCH, IN))
    assert type(flops) is int and flops == COUNTED_FLOPS


def test_counted_kernels_only_list_nothing() -> None:
    model = nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))
    flops, uncounted = train_step_count(model, torch.randn(BATCH, IN))
    assert flops == 2 * (3 * BATCH * (IN * HIDDEN + HIDDEN * OUT) - BATCH * IN * HIDDEN)  # no grad of x
    assert uncounted == ()


def _fit(tmp_path: Path, net: nn.Module) -> tuple[dict[str, Any], lf.FlopsReport]:
    seed_everything(0)
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(8, IN, generator=generator), torch.randn(8, OUT, generator=generator))
    trainer = make_trainer(tmp_path, [FlopsMonitor(counters=("torch",))], max_steps=2)
    trainer.fit(WrappedNet(net, lr=0.01), DataLoader(data, batch_size=BATCH))
    text = next(Path(trainer.log_dir).glob("flops_report*.json")).read_text()
    return json.loads(text), lf.FlopsReport.from_json(text)


def test_fit_report_lists_the_custom_op_of_the_observed_step(tmp_path: Path) -> None:
    data, report = _fit(tmp_path, _model())
    # the mse loss adds its own elementwise work only (0 MACs by convention): the step costs what the model does
    assert data["train_step_flops"] == COUNTED_FLOPS
    # the observer registers no module hook: forward and backward calls share the module "" (2 calls)
    assert data["train_step_uncounted"] == [
        {"operator": "lftest::step_mm", "module": "", "calls": 2, "reason": "no formula"}
    ]
    assert report.train_step_uncounted == (Uncounted("lftest::step_mm", "", 2, "no formula"),)
    markdown = report.to_markdown()
    assert "Training step uncounted (seen, counted as 0):\n\n- lftest::step_mm (no formula, 2x)" in markdown


def test_fit_report_of_counted_kernels_lists_nothing(tmp_path: Path) -> None:
    data, report = _fit(tmp_path, nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT)))
    assert data["train_step_flops"] == 2 * (3 * BATCH * (IN * HIDDEN + HIDDEN * OUT) - BATCH * IN * HIDDEN)
    assert data["train_step_uncounted"] == []
    assert report.train_step_uncounted == ()
    assert "Training step uncounted" not in report.to_markdown()


def test_old_report_without_the_field_still_reads() -> None:
    report = lf.profile_model(nn.Linear(IN, OUT), torch.randn(BATCH, IN), counters=("torch",))
    data = report.to_dict()
    del data["train_step_uncounted"]
    assert lf.FlopsReport.from_dict(data).train_step_uncounted == ()
    with_entry = dict(report.to_dict(), train_step_uncounted=[{"operator": "lftest::step_mm", "calls": 1}])
    again = lf.FlopsReport.from_dict(with_entry)
    assert again.train_step_uncounted == (Uncounted("lftest::step_mm", "", 1, ""),)
    assert lf.FlopsReport.from_json(again.to_json()) == again
