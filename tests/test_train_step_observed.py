"""The callback counts the real first training step as it runs: same weights and optimizer state as without it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, seed_everything
from lit_helpers import WrappedNet, make_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_flops import FlopsMonitor

WIDTH, SEQ, BATCH, EXPERTS, HIDDEN = 16, 6, 4, 4, 24


class _Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(WIDTH, 2, batch_first=True, dropout=0.1)
        self.head = nn.Linear(WIDTH, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x, x, x, need_weights=False)[0]).mean(dim=1)


class _MoE(nn.Module):
    """Top-1 router and a loop over the experts that received tokens (data-dependent, ``.item()`` and ``nonzero``)."""

    def __init__(self) -> None:
        super().__init__()
        self.router = nn.Linear(WIDTH, EXPERTS)
        with torch.no_grad():
            self.router.bias[-1] = -1e4  # the last expert is never chosen: its MACs must not be counted
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(WIDTH, HIDDEN, bias=False), nn.ReLU(), nn.Linear(HIDDEN, WIDTH, bias=False))
            for _ in range(EXPERTS)
        )
        self.head = nn.Linear(WIDTH, 1)
        self.tokens_per_expert: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, WIDTH)
        weights, choice = self.router(tokens).softmax(-1).max(-1)
        out = torch.zeros_like(tokens)
        self.tokens_per_expert = [int((choice == e).sum().item()) for e in range(EXPERTS)]
        for e, expert in enumerate(self.experts):
            rows = (choice == e).nonzero().squeeze(1)
            if rows.numel():
                out[rows] = expert(tokens[rows]) * weights[rows, None]
        return self.head(out.reshape(x.shape)).mean(dim=1)


class _BatchNormDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(SEQ * WIDTH, 32), nn.BatchNorm1d(32), nn.Dropout(0.3), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


def _loader() -> DataLoader:
    generator = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(16, SEQ, WIDTH, generator=generator), torch.randn(16, 1, generator=generator))
    return DataLoader(data, batch_size=BATCH)


def _fit(tmp_path: Path, factory: Any, monitor: bool, max_steps: int = 3) -> tuple[WrappedNet, Any]:
    seed_everything(0)
    module = WrappedNet(factory(), torch.optim.Adam, lr=0.01)
    callbacks = [FlopsMonitor(counters=("torch",))] if monitor else []
    trainer = make_trainer(tmp_path, callbacks, max_steps=max_steps)
    trainer.fit(module, _loader())
    return module, trainer


@pytest.mark.parametrize(
    "factory", [_Attention, _MoE, _BatchNormDropout], ids=["attention", "moe", "batchnorm_dropout"]
)
def test_observed_step_leaves_weights_and_optimizer_state_bit_identical(tmp_path: Path, factory: Any) -> None:
    plain, plain_trainer = _fit(tmp_path / "plain", factory, monitor=False)
    observed, trainer = _fit(tmp_path / "observed", factory, monitor=True)
    assert observed.flops_per_batch > 0
    for key, value in plain.state_dict().items():
        assert torch.equal(observed.state_dict()[key], value), key
    plain_state = plain_trainer.optimizers[0].state_dict()["state"]
    observed_state = trainer.optimizers[0].state_dict()["state"]
    assert plain_state.keys() == observed_state.keys()
    for index, entries in plain_state.items():
        for name, value in entries.items():
            assert torch.equal(observed_state[index][name], value), (index, name)
    report = json.loads(next(Path(trainer.log_dir).glob("flops_report*.json")).read_text())
    assert report["train_step_flops"] == observed.flops_per_batch and report["train_step_batch_size"] == BATCH


def test_moe_step_counts_the_experts_that_really_ran(tmp_path: Path) -> None:
    seed_everything(0)
    module = WrappedNet(_MoE(), torch.optim.Adam, lr=0.01)
    first = copy.deepcopy(module.net)
    x = next(iter(_loader()))[0]
    first(x)  # the routing of the first batch with the initial weights
    ran = first.tokens_per_expert
    assert ran[-1] == 0 and sum(ran) == BATCH * SEQ  # top-1: every token runs one expert, never the last one
    module, _ = _fit(tmp_path, _MoE, monitor=True, max_steps=1)
    tokens = BATCH * SEQ
    router, expert_mlp, head = tokens * WIDTH * EXPERTS, sum(ran) * 2 * WIDTH * HIDDEN, tokens * WIDTH
    # backward = 2 x forward, less the input gradients nobody needs: the router's and each expert's first layer
    # (their input is the raw batch), and the head's input gradient counts (the expert outputs need it)
    forward = router + expert_mlp + head
    expected_macs = 3 * forward - router - sum(ran) * WIDTH * HIDDEN
    assert module.flops_per_batch == 2 * expected_macs


class _Linear(LightningModule):
    """``Linear(WIDTH*SEQ -> 1)``: forward ``B * in`` MACs, weight gradient the same, no input gradient."""

    def __init__(self, manual: bool = False, skip_first: bool = False) -> None:
        super().__init__()
        self.automatic_optimization = not manual
        self.skip_first = skip_first
        self.fc = nn.Linear(SEQ * WIDTH, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        if self.skip_first and batch_idx == 0:
            return None  # Lightning skips the backward and the optimizer step of this batch
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        if not self.automatic_optimization:
            optimizer = self.optimizers()
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize(
    "options", [{"manual": True}, {"skip_first": True}], ids=["manual_optimization", "skipped_first_batch"]
)
def test_observed_step_is_forward_plus_backward(tmp_path: Path, options: dict[str, bool]) -> None:
    module = _Linear(**options)
    trainer = make_trainer(tmp_path, [FlopsMonitor(counters=("torch",))], max_steps=2)
    trainer.fit(module, _loader())
    # forward + weight gradient; the optimizer step counts 0 (elementwise) even when it runs inside training_step
    assert module.flops_per_batch == 2 * 2 * BATCH * SEQ * WIDTH
