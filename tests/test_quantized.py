"""Dynamic int8 models (`quantize_dynamic`): MACs as the float Linear, packed weights counted as parameters."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import lightning_flops as lf


def _quantized() -> nn.Module:
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 deprecates torch.ao.quantization in favour of torchao
        return torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)


@pytest.fixture(scope="module")
def report() -> lf.FlopsReport:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lf.profile_model(_quantized(), torch.randn(2, 64), counters=("thop", "torch"))


def test_torch_counts_dynamic_int8_linears_as_the_float_linears(report: lf.FlopsReport) -> None:
    result = report.counters["torch"]
    assert result.ok
    assert result.macs == 2 * 64 * 128 + 2 * 128 * 10  # batch * in * out, per Linear
    assert result.by_module == {"": 2 * 64 * 128 + 2 * 128 * 10, "0": 2 * 64 * 128, "2": 2 * 128 * 10}
    assert result.by_operator == {"linear": 2 * 64 * 128 + 2 * 128 * 10}
    assert result.uncounted == ()


def test_packed_weights_and_biases_are_counted_as_parameters(report: lf.FlopsReport) -> None:
    packed = 64 * 128 + 128 + 128 * 10 + 10  # weights + biases of both Linears
    assert report.params == lf.ParamCount(total=packed, trainable=0, packed=packed)
    assert "9,610 of them packed (quantized)" in report.to_markdown()
    assert lf.FlopsReport.from_json(report.to_json()).params == report.params


def test_thop_lists_the_quantized_linears_it_counts_as_zero(report: lf.FlopsReport) -> None:
    result = report.counters["thop"]
    assert result.macs == 0
    assert {(u.operator, u.module, u.calls) for u in result.uncounted} == {("Linear", "0", 1), ("Linear", "2", 1)}
