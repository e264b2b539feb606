"""``on_fresh_stack``: fvcore's trace runs in a thread of its own; the caller gets the result or the very exception,
with torch's per-thread grad and inference modes carried into the thread."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from lightning_flops.counters.tracing import on_fresh_stack


def test_returns_the_result_computed_on_another_thread_with_an_empty_stack() -> None:
    import inspect

    def where() -> tuple[str, int]:
        return threading.current_thread().name, len(inspect.stack())

    def deep(n: int) -> tuple[str, int]:
        return deep(n - 1) if n else on_fresh_stack(where)

    name, depth = deep(100)
    assert name == "lightning-flops-trace" and name != threading.current_thread().name
    assert depth < 10  # the thread's own frames only, not the caller's hundred


def test_the_callers_exception_is_raised_as_is_with_its_traceback() -> None:
    class Boom(RuntimeError):
        pass

    def fails() -> None:
        raise Boom("from the user's forward")

    with pytest.raises(Boom, match="user's forward") as info:
        on_fresh_stack(fails)
    assert any(entry.name == "fails" for entry in info.traceback)


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("inference", [True, False])
def test_grad_and_inference_mode_are_carried_into_the_thread(grad: bool, inference: bool) -> None:
    def modes() -> tuple[bool, bool]:
        return torch.is_grad_enabled(), torch.is_inference_mode_enabled()

    with torch.inference_mode(inference), torch.set_grad_enabled(grad):
        on_caller = modes()
        assert on_fresh_stack(modes) == on_caller
    assert on_caller[1] is inference
    outside = modes()
    assert on_fresh_stack(modes) == outside


def test_flops_monitor_profiles_on_its_own_thread_and_trains_on_the_callers(tmp_path: Any) -> None:
    """The profile's allocations come from another glibc arena than the training thread's (benchmarks/README.md):
    every counting forward of the fit runs off the training thread, every training step on it."""
    from lightning_flops import FlopsMonitor
    from tests.lit_helpers import LinearStack, RandomDataModule, linear_stack_macs, make_trainer

    threads: list[tuple[str, bool]] = []

    class Recorded(LinearStack):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            threads.append((threading.current_thread().name, x.device.type == "meta"))
            return super().forward(x)

    monitor = FlopsMonitor()
    make_trainer(tmp_path, [monitor]).fit(Recorded(), datamodule=RandomDataModule())
    training = threading.current_thread().name
    assert monitor.report is not None and monitor.report.counters["torch"].macs == linear_stack_macs(4)
    counting = [name for name, on_meta in threads if on_meta]
    assert len(counting) >= 3 and training not in counting  # three counters (and their passes) on meta, elsewhere
    assert [name for name, on_meta in threads if not on_meta] == [training] * 2  # the two real training steps
