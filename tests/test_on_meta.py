"""Counting on meta when ``forward`` makes tensors on a fixed device (issue 17, point 7): they are made on meta too,
on the counting thread only, and a pass that still cannot run on meta says which module and which torch function."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

import lightning_flops as lf
from lightning_flops.on_meta import fixed_devices_on_meta
from lightning_flops.train_step import train_step_flops

COUNTERS = ("thop", "fvcore", "torch")


class Decoder(nn.Module):
    """Makes a random basis on the CPU in its forward, as DFormer's decoder does, and moves its output there."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.rand(x.shape[1], device="cpu")  # before: on meta, "not on the expected device"
        basis = torch.rand(x.shape[1], 4, device="cpu")
        y = self.proj(x).flatten(2).transpose(1, 2) * weights
        return torch.matmul(y, basis).to("cpu")


class Segmentor(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.decoder = Decoder()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.stem(x))


def test_a_forward_that_makes_a_cpu_tensor_counts_on_meta_with_the_same_integers() -> None:
    torch.manual_seed(0)
    model, x = Segmentor(), torch.randn(2, 3, 8, 8)
    on_meta = lf.profile_model(model, x, strict=True)
    in_place = lf.profile_model(model, x, device="model", strict=True)
    stem = 2 * 8 * 8 * 8 * 3 * 3 * 3  # batch*H*W*out*in*k*k
    proj = 2 * 8 * 8 * 8 * 8  # batch*H*W*out*in (1x1)
    basis = 2 * 64 * 8 * 4  # batch*pixels*channels*basis
    assert {n: r.device for n, r in on_meta.counters.items()} == dict.fromkeys(COUNTERS, "meta")  # before: cpu
    assert {n: r.device_note for n, r in on_meta.counters.items()} == dict.fromkeys(COUNTERS)
    assert on_meta.counters["torch"].macs == stem + proj + basis
    assert {n: r.macs for n, r in on_meta.counters.items()} == {n: r.macs for n, r in in_place.counters.items()}
    assert train_step_flops(model.train(), x) > 0


def test_the_rewrite_reaches_no_other_thread() -> None:
    made: list[torch.device] = []

    def other() -> None:
        made.append(torch.zeros(2, device="cpu").device)

    with fixed_devices_on_meta():
        here = torch.rand(3, device="cpu", generator=torch.Generator()).device
        data = torch.tensor([3, 1], device="cpu")
        assert data.tolist() == [3, 1]  # made from the caller's data: it stays where it was asked, readable
        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert (here.type, [d.type for d in made]) == ("meta", ["cpu"])
    assert torch.zeros(2, device="cpu").device.type == "cpu"  # gone on exit


class Gate(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum().item() > 0 else x  # data-dependent: cannot run on meta


class Routed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Linear(4, 4)
        self.gate = Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.block(x))


@pytest.mark.parametrize("counter", COUNTERS)
def test_a_model_that_cannot_run_on_meta_gets_a_note_naming_module_and_function(counter: str) -> None:
    report = lf.profile_model(Routed(), torch.randn(2, 4), counters=(counter,), strict=True)
    result = report.counters[counter]
    assert (result.device, result.macs) == ("cpu", 2 * 4 * 4)  # batch*in*out, counted in place
    assert result.device_note == (
        "meta: RuntimeError: Tensor.item() cannot be called on meta tensors (in module 'gate', Tensor.item)"
    )
