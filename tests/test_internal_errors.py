"""The user's errors keep their traceback under ``strict``; errors in lightning-flops' own code are loud, never a
quiet "counter failed"."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
from lit_helpers import LinearStack, RandomDataModule, make_trainer
from torch import nn

import lightning_flops as lf
import lightning_flops.profiling as profiling_module
from lightning_flops import FlopsMonitor


class Broken(nn.Module):
    """A linear layer, then the user's own bug."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.linear(x)
        raise KeyError("the user's bug in forward")  # the frame the traceback must keep


@pytest.mark.parametrize("counter", ["thop", "fvcore", "torch"])
@pytest.mark.parametrize("device", [None, "model"])
def test_strict_counter_error_is_chained_from_the_users_exception(counter: str, device: str | None) -> None:
    with pytest.raises(lf.CounterError, match=rf"counter '{counter}' failed: KeyError") as caught:
        lf.profile_model(Broken(), torch.randn(2, 4), counters=(counter,), device=device, strict=True)
    cause = caught.value.__cause__
    assert isinstance(cause, KeyError)
    frames = traceback.extract_tb(cause.__traceback__)
    assert any(f.name == "forward" and f.filename == __file__ for f in frames)  # Broken.forward, in this file


def test_failed_counter_keeps_only_the_text() -> None:
    report = lf.profile_model(Broken(), torch.randn(2, 4), counters=("torch",))
    result = report.counters["torch"]
    assert not result.ok
    assert result.error == 'KeyError: "the user\'s bug in forward"'


def _explode(*args: Any, **kwargs: Any) -> Any:
    raise ZeroDivisionError("injected bug in lightning-flops")


def test_a_bug_in_result_post_processing_warns_that_it_is_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profiling_module, "_result", _explode)
    with pytest.warns(RuntimeWarning, match=r"bug in lightning-flops") as records:
        report = lf.profile_model(nn.Linear(4, 8), torch.randn(2, 4), counters=("torch", "thop"))
    message = str(records[0].message)
    assert "Traceback" in message and "_explode" in message  # the traceback names the failing function
    for name in ("torch", "thop"):
        assert not report.counters[name].ok
        assert report.counters[name].error.startswith(
            f"lightning-flops bug while reading the result of counter '{name}'"
        )


def test_a_bug_in_result_post_processing_raises_itself_under_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profiling_module, "_result", _explode)
    with pytest.raises(ZeroDivisionError, match="injected bug") as caught:  # not a CounterError: no counter failed
        lf.profile_model(nn.Linear(4, 8), torch.randn(2, 4), counters=("torch",), strict=True)
    assert any("bug in lightning-flops" in note for note in caught.value.__notes__)  # Python >= 3.11


def test_callback_warns_that_a_bug_in_gaps_is_ours_and_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(profiling_module, "compute_gaps", _explode)
    trainer = make_trainer(tmp_path, [FlopsMonitor(counters=("torch", "thop"))])
    with pytest.warns(RuntimeWarning, match=r"lightning-flops bug while profiling the model") as records:
        trainer.fit(LinearStack(), RandomDataModule())
    assert trainer.global_step == 2  # training went on
    bug = next(str(r.message) for r in records if "lightning-flops bug" in str(r.message))
    assert "Traceback" in bug and "_explode" in bug
    assert not any("profiling failed" in str(r.message) for r in records)  # not disguised as a counter failure


def test_callback_raises_a_bug_in_gaps_under_strict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profiling_module, "compute_gaps", _explode)
    trainer = make_trainer(tmp_path, [FlopsMonitor(counters=("torch",), strict=True)])
    with pytest.raises(ZeroDivisionError, match="injected bug"):
        trainer.fit(LinearStack(), RandomDataModule())


def test_callback_reports_an_input_fn_error_as_a_profiling_failure(tmp_path: Path) -> None:
    def input_fn(batch: Any) -> Any:
        raise IndexError("no such field")

    trainer = make_trainer(tmp_path, [FlopsMonitor(counters=("torch",), input_fn=input_fn)])
    with pytest.warns(UserWarning, match=r"profiling failed.*IndexError: no such field"):
        trainer.fit(LinearStack(), RandomDataModule())
    assert trainer.global_step == 2


def test_callback_raises_the_input_fn_error_itself_under_strict(tmp_path: Path) -> None:
    def input_fn(batch: Any) -> Any:
        raise IndexError("no such field")

    trainer = make_trainer(tmp_path, [FlopsMonitor(counters=("torch",), input_fn=input_fn, strict=True)])
    with pytest.raises(IndexError, match="no such field"):
        trainer.fit(LinearStack(), RandomDataModule())
