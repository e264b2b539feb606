"""``quiet()`` silences thop and fvcore only: the user's prints and warnings, and other threads' output, still show."""

from __future__ import annotations

import sys
import threading
import warnings

import pytest
import torch
from torch import nn

import lightning_flops as lf
from lightning_flops.counters.tracing import quiet


class Chatty(nn.Module):
    """Prints and warns in its own forward, as user code may."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        print("the model's own print")
        warnings.warn("the model's own warning", UserWarning, stacklevel=1)
        return self.linear(x)


def test_quiet_leaves_sys_stdout_and_the_users_prints_alone(capsys: pytest.CaptureFixture[str]) -> None:
    stdout = sys.stdout
    with quiet():
        assert sys.stdout is stdout
        print("mine")
    assert capsys.readouterr().out == "mine\n"


def test_quiet_lets_another_threads_print_through(capsys: pytest.CaptureFixture[str]) -> None:
    with quiet():
        thread = threading.Thread(target=print, args=("from another thread",))
        thread.start()
        thread.join()
    assert capsys.readouterr().out == "from another thread\n"


def test_quiet_keeps_the_users_warnings() -> None:
    with pytest.warns(UserWarning, match="mine"), quiet():
        warnings.warn("mine", UserWarning, stacklevel=1)


def test_quiet_mutes_thops_prints_and_restores_print(capsys: pytest.CaptureFixture[str]) -> None:
    import thop.utils

    with quiet():
        thop.utils.prRed("thop noise")
    thop.utils.prRed("thop after")
    out = capsys.readouterr().out
    assert "thop after" in out
    assert "thop noise" not in out
    assert "print" not in vars(thop.utils)  # the builtin is back


def test_quiet_ignores_warnings_raised_from_thop_and_fvcore_modules() -> None:
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        with quiet():
            warnings.warn_explicit("noise", DeprecationWarning, "thop/profile.py", 12, module="thop.profile")
            warnings.warn_explicit(
                "noise", UserWarning, "fvcore/nn/jit_analysis.py", 1, module="fvcore.nn.jit_analysis"
            )
            warnings.warn_explicit("kept", UserWarning, "mine.py", 1, module="mine")
    assert [str(r.message) for r in records] == ["kept"]


@pytest.mark.parametrize("counter", ["thop", "fvcore", "torch"])
def test_profiling_shows_the_models_own_print_and_warning(counter: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.warns(UserWarning, match="the model's own warning"):
        report = lf.profile_model(Chatty(), torch.randn(2, 4), counters=(counter,), device="model")
    assert report.counters[counter].ok
    assert report.counters[counter].macs == 2 * 4 * 8  # batch * in * out
    assert "the model's own print" in capsys.readouterr().out
