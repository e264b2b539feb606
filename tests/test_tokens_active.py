"""Per-token numbers (``report.tokens``) and active parameters (``report.params.active``) of MoE and dense models."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import CSVLogger
from lit_helpers import make_trainer
from torch import nn
from torch.utils.data import DataLoader

import lightning_flops as lf
from lightning_flops import FlopsMonitor
from lightning_flops.sinks import metric_keys, metrics_from_report

VOCAB, WIDTH, HIDDEN, EXPERTS = 50, 16, 32, 4


class _TokenModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.proj = nn.Linear(WIDTH, VOCAB, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(self.embed(input_ids))


class _RoutedMoE(nn.Module):
    """Top-1 routing to a ModuleList of experts; only experts that receive a token run."""

    def __init__(self) -> None:
        super().__init__()
        self.router = nn.Linear(WIDTH, EXPERTS)
        self.experts = nn.ModuleList(nn.Linear(WIDTH, HIDDEN, bias=False) for _ in range(EXPERTS))
        with torch.no_grad():
            self.router.weight.zero_()
            self.router.bias.copy_(torch.tensor([5.0, 0.0, 0.0, -5.0]))  # every token picks expert 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        choice = self.router(x).argmax(-1)
        out = x.new_zeros(x.shape[0], HIDDEN)
        for e, expert in enumerate(self.experts):
            rows = (choice == e).nonzero().squeeze(1)
            if rows.numel():
                out[rows] = expert(x[rows])
        return out


def test_input_ids_give_tokens_and_exact_macs_per_token() -> None:
    ids = torch.randint(0, VOCAB, (2, 5))
    report = lf.profile_model(_TokenModel(), {"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    assert report.tokens == 2 * 5  # batch * sequence: the mask has no padding
    assert report.macs_per_token("torch") == WIDTH * VOCAB  # the projection per token; the lookup is 0
    assert report.flops_per_token("torch") == 2 * WIDTH * VOCAB
    metrics = metrics_from_report(report)
    assert metrics["compute/torch/macs_per_token"] == WIDTH * VOCAB
    assert metrics["compute/torch/flops_per_token"] == 2 * WIDTH * VOCAB
    assert {"compute/torch/macs_per_token", "compute/params/active"} <= set(metric_keys(("torch",)))
    again = lf.FlopsReport.from_json(report.to_json())
    assert again.tokens == 10 and again.params == report.params
    assert "MACs per token" in report.to_markdown()


def test_padding_in_the_attention_mask_is_not_a_token() -> None:
    ids = torch.randint(0, VOCAB, (2, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])  # left padding: 5 + 3 real tokens
    report = lf.profile_model(_TokenModel(), {"input_ids": ids, "attention_mask": mask}, counters=("torch",))
    assert report.counters["torch"].macs == 2 * 5 * WIDTH * VOCAB  # every position is computed
    assert report.tokens == 5 + 3
    assert report.macs_per_token("torch") == 2 * 5 * WIDTH * VOCAB / (5 + 3)
    positions = lf.profile_model(
        _TokenModel(), {"input_ids": ids, "attention_mask": mask}, counters=("torch",), tokens_fn=lf.count_positions
    )
    assert positions.tokens == 2 * 5 and positions.macs_per_token("torch") == WIDTH * VOCAB
    assert lf.count_positions(torch.randn(3, 4)) is None  # no integer [B, T] tensor: no tokens


def test_tokens_fn_overrides_detection_and_a_bad_value_names_it() -> None:
    ids = torch.randint(0, VOCAB, (2, 5))
    report = lf.profile_model(_TokenModel(), ids, counters=("torch",), tokens_fn=lambda x: 7)
    assert report.tokens == 7
    with pytest.raises(lf.FlopsConfigError, match="tokens_fn"):
        lf.profile_model(_TokenModel(), ids, counters=("torch",), tokens_fn=lambda x: -1)
    with pytest.raises(lf.FlopsConfigError, match="tokens_fn"):
        lf.profile_model(_TokenModel(), ids, counters=("torch",), tokens_fn=3)


def test_no_token_dimension_gives_no_tokens() -> None:
    report = lf.profile_model(nn.Linear(8, 4), torch.randn(3, 8), counters=("torch",))
    assert report.tokens is None and report.macs_per_token("torch") is None
    assert "compute/torch/macs_per_token" not in metrics_from_report(report)


def test_moe_active_parameters_are_the_experts_that_ran() -> None:
    report = lf.profile_model(_RoutedMoE(), torch.randn(6, WIDTH))
    router = WIDTH * EXPERTS + EXPERTS
    assert report.params.total == router + EXPERTS * WIDTH * HIDDEN
    assert report.params.active == router + WIDTH * HIDDEN  # one expert ran
    assert report.counters["torch"].macs == 6 * (WIDTH * EXPERTS + WIDTH * HIDDEN)
    assert metrics_from_report(report)["compute/params/active"] == router + WIDTH * HIDDEN


def test_dense_model_active_equals_total() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    report = lf.profile_model(model, torch.randn(3, 8))
    assert report.params.active == report.params.total == 8 * 16 + 16 + 16 * 4 + 4


class _LitTokens(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = _TokenModel()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids, attention_mask)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(**batch).float().pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _padded_batches() -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(0, VOCAB, (2, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])  # the second sequence has 3 padding tokens
    return [{"input_ids": ids, "attention_mask": mask}] * 2


@pytest.mark.parametrize(
    ("tokens_fn", "tokens"),
    [
        (None, 6 + 3),  # the default learns padding from the attention_mask: 9 real tokens
        (lf.count_positions, 2 * 6),  # opting out: every position, padding included
        (lambda batch: 5, 5),  # the user's own rule
    ],
    ids=["default_real_tokens", "count_positions", "tokens_fn"],
)
def test_monitor_per_token_keys_default_and_tokens_fn(tmp_path: Path, tokens_fn: Any, tokens: int) -> None:
    logger = CSVLogger(str(tmp_path))
    monitor = FlopsMonitor(counters=("torch",), tokens_fn=tokens_fn)
    trainer = make_trainer(tmp_path, [monitor], logger=logger, max_steps=1, log_every_n_steps=1)
    trainer.fit(_LitTokens(), DataLoader(_padded_batches(), batch_size=None))
    macs = 2 * 6 * WIDTH * VOCAB  # the padded batch is computed whole either way
    assert monitor.report is not None and monitor.report.tokens == tokens
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("compute/torch/macs_per_token")]
    assert float(rows[0]["compute/torch/macs_per_token"]) == pytest.approx(macs / tokens)
    assert float(rows[0]["compute/torch/flops_per_token"]) == pytest.approx(2 * macs / tokens)
