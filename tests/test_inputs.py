"""The one tree walker (lightning_flops.inputs): dataclasses, NamedTuples, dicts and lists, walked alike."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import torch
from torch import nn

import lightning_flops as lf
from lightning_flops.inputs import clone_tensors, detect_batch_size, iter_tensors, slice_batch, to_device


@dataclasses.dataclass(frozen=True)
class Batch:
    image: torch.Tensor
    label: str = "x"


class Pair(NamedTuple):
    left: torch.Tensor
    right: torch.Tensor


class TakesBatch(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(8, 4)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.linear(batch.image)


def test_every_walker_sees_dataclasses_and_namedtuples() -> None:
    value = {"b": Batch(torch.zeros(3, 8)), "p": Pair(torch.zeros(3, 2), torch.zeros(1)), "l": [torch.zeros(3)]}
    assert [path for path, _ in iter_tensors(value)] == ["b.image", "p.0", "p.1", "l.0"]
    moved = to_device(value, "meta")
    assert isinstance(moved["b"], Batch) and moved["b"].label == "x" and moved["b"].image.is_meta
    assert isinstance(moved["p"], Pair) and moved["p"].left.is_meta
    assert value["b"].image.device.type == "cpu"  # the original is untouched
    one, sliced = slice_batch(value, 3)
    assert sliced and one["b"].image.shape == (1, 8) and one["p"].left.shape == (1, 2) and one["p"].right.shape == (1,)
    assert detect_batch_size((Batch(torch.zeros(5, 8)),), {}) == 5
    cloned = clone_tensors(value)
    assert cloned["b"].image.data_ptr() != value["b"].image.data_ptr()


def test_a_dataclass_inside_the_input_is_counted_on_meta() -> None:
    report = lf.profile_model(TakesBatch(), (Batch(torch.randn(3, 8)),), counters=("thop", "torch"))
    for name in ("thop", "torch"):
        result = report.counters[name]
        assert result.ok, result.error
        assert result.device == "meta", result.device_note
        assert result.macs == 3 * 8 * 4  # batch * in * out
    assert report.batch_size == 3


class NeedsItem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * float(x.abs().sum().item() >= 0)


def test_a_failed_meta_placement_is_explained_in_the_report() -> None:
    report = lf.profile_model(NeedsItem(), torch.randn(2, 4), counters=("torch",))
    result = report.counters["torch"]
    assert result.ok and result.device == "cpu" and result.macs == 2 * 4 * 4
    assert result.device_note is not None and result.device_note.startswith("meta: ") and "item" in result.device_note
    again = lf.FlopsReport.from_json(report.to_json()).counters["torch"]
    assert again.device_note == result.device_note
    assert "item" in report.to_markdown()
