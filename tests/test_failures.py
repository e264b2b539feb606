"""Failures are data: a counter that raises is reported, the others still run; ``strict=True`` raises instead."""

from __future__ import annotations

import copy
import io
import warnings
from contextlib import redirect_stdout

import pytest
import torch
from torch import nn

import lightning_flops as lf


class Output:
    """A plain object holding the logits (not a tuple, list, dict or dataclass)."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits


class ObjectOutput(nn.Module):
    """Returns a plain object, which fvcore's JIT trace refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 32)

    def forward(self, x: torch.Tensor) -> Output:
        return Output(self.linear(x))


class KeywordOnly(nn.Module):
    """``forward(*, x, scale)``: callable with keywords only."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 32)

    def forward(self, *, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.linear(x) * scale


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * float(x.abs().max())  # needs the data: no meta tensor has it


def fvcore_error_text(model: nn.Module, x: torch.Tensor) -> str:
    """``"<Type>: <first line of message>"`` of the exception fvcore itself raises on ``model``."""
    from fvcore.nn import FlopCountAnalysis

    with redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            FlopCountAnalysis(copy.deepcopy(model), (x,)).total()
        except Exception as err:
            return f"{type(err).__name__}: {str(err).strip().splitlines()[0]}"
    raise AssertionError("fvcore did not raise")


@pytest.mark.parametrize("device", [None, "model"])
def test_failing_counter_is_reported_with_type_and_message(device: str | None) -> None:
    model, x = ObjectOutput(), torch.randn(2, 16)
    result = lf.profile_model(model, x, device=device).counters["fvcore"]
    assert not result.ok
    assert result.error == fvcore_error_text(model, x)
    assert result.error.startswith("RuntimeError: Only tuples, lists and Variables are supported")
    assert (result.macs, result.flops, result.device) == (None, None, None)


def test_other_counters_still_run_when_one_fails() -> None:
    report = lf.profile_model(ObjectOutput(), torch.randn(2, 16))
    assert [n for n, r in report.counters.items() if r.ok] == ["thop", "torch"]
    assert report.counters["thop"].macs == report.counters["torch"].macs == 2 * 16 * 32  # batch * in * out


def test_gaps_skip_the_failed_counter() -> None:
    report = lf.profile_model(ObjectOutput(), torch.randn(2, 16))
    assert [g.key for g in report.gaps] == ["thop_vs_torch"]
    assert report.macs_per_sample("fvcore") is None
    assert report.macs_per_sample("torch") == 16 * 32


def test_strict_raises_counter_error_naming_the_counter() -> None:
    with pytest.raises(lf.CounterError, match=r"counter 'fvcore' failed: RuntimeError: Only tuples"):
        lf.profile_model(ObjectOutput(), torch.randn(2, 16), strict=True)


def test_strict_does_not_raise_when_every_counter_succeeds() -> None:
    report = lf.profile_model(nn.Linear(16, 32), torch.randn(2, 16), strict=True)
    assert all(r.ok for r in report.counters.values())


def test_script_module_fails_thop_and_fvcore_but_torch_counts_it() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = torch.jit.script(nn.Sequential(nn.Linear(16, 32)))
    report = lf.profile_model(model, torch.randn(2, 16))
    assert not report.counters["thop"].ok and report.counters["thop"].error.startswith("RuntimeError: ")
    assert not report.counters["fvcore"].ok and report.counters["fvcore"].error.startswith("RuntimeError: ")
    assert report.counters["torch"].macs == 2 * 16 * 32


@pytest.mark.parametrize("counter", ["thop", "fvcore", "torch"])
@pytest.mark.parametrize("device", [None, "meta", "model"])
def test_keyword_only_forward_is_counted_from_a_dict_input(counter: str, device: str | None) -> None:
    example = {"x": torch.randn(2, 16), "scale": 2.0}
    report = lf.profile_model(KeywordOnly(), example, counters=(counter,), device=device, strict=True)
    assert report.counters[counter].macs == 2 * 16 * 32  # batch * in * out
    assert report.batch_size == 2
    assert [(i.name, i.shape) for i in report.inputs] == [("x", (2, 16))]


def test_a_counter_failing_on_meta_falls_back_to_counting_in_place() -> None:
    # a value read from the data (`.item()`) cannot be traced on meta: forcing meta fails, the default counts in place
    model, x = DataDependent(), torch.randn(2, 16)
    forced = lf.profile_model(model, x, counters=("fvcore",), device="meta").counters["fvcore"]
    default = lf.profile_model(model, x, counters=("fvcore",)).counters["fvcore"]
    assert not forced.ok and "meta" in forced.error
    assert default.ok and default.device == "cpu"
    assert default.macs == 2 * 16 * 32  # batch * in * out
