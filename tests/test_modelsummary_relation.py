"""docs/counting.md: how our numbers relate to Lightning's ModelSummary FLOPs column."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.utilities.model_summary import ModelSummary
from torch import nn

import lightning_flops as lf
from tests.lit_helpers import requires_lightning

pytestmark = requires_lightning("2.6", "ModelSummary.total_flops")


class _ConvNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8 * 16 * 16, 10)
        self.example_input_array = torch.randn(4, 3, 16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_modelsummary_total_flops_equals_torch_flops_of_the_whole_example_batch() -> None:
    module = _ConvNet()
    summary = ModelSummary(module, max_depth=1)
    report = lf.profile_model(module, module.example_input_array, counters=("torch",))
    conv_macs = 4 * 8 * 16 * 16 * 3 * 3 * 3  # batch * out_ch * h * w * in_ch * kh * kw
    fc_macs = 4 * (8 * 16 * 16) * 10  # batch * in * out
    assert report.counters["torch"].macs == conv_macs + fc_macs
    assert summary.total_flops == report.counters["torch"].flops == 2 * (conv_macs + fc_macs)
    assert report.flops_per_sample("torch") * len(module.example_input_array) == summary.total_flops


class _AttentionNet(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.example_input_array = torch.randn(2, 16, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x)[0]


def test_modelsummary_misses_the_multihead_attention_fast_path_that_we_count() -> None:
    module = _AttentionNet()
    summary = ModelSummary(module, max_depth=1)
    report = lf.profile_model(module, module.example_input_array, counters=("torch",), device="model")
    b, n, e = 2, 16, 32
    analytic = 4 * b * n * e * e + 2 * b * n * n * e  # q, k, v, out projections + the two attention products
    assert report.counters["torch"].macs == analytic
    assert summary.total_flops < report.counters["torch"].flops


@pytest.mark.parametrize("name", ["cnn", "attention"])
def test_the_examples_model_summary_and_flops_monitor_agree_per_sample(name: str) -> None:
    from examples.lit_models import LitSmallCNN, LitTinyAttention
    from examples.models import small_cnn_macs, tiny_attention_macs

    module, batch, macs = {
        "cnn": (LitSmallCNN(), torch.randn(8, 3, 32, 32), small_cnn_macs(1)),  # one sample, default sizes
        "attention": (LitTinyAttention(), torch.randint(0, 100, (8, 16)), tiny_attention_macs(1, 16)),
    }[name]
    summary = ModelSummary(module, max_depth=1)  # counts example_input_array: one sample
    report = lf.profile_model(module, batch, counters=("torch",))  # what FlopsMonitor counts: the batch of 8
    assert summary.total_flops == 2 * macs == report.flops_per_sample("torch")  # not "Total FLOPs: 0"
