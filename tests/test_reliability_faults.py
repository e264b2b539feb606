"""Fault injection, per counter: a counter that raises, returns nonsense, is not installed, or meets a model whose
forward raises only while it is being profiled. Each time the failure is reported with its reason, the other counters'
numbers still land (checked against the analytic count), ``strict=True`` raises ``CounterError`` instead, and the model
carries no trace of the failed run (hooks, thop buffers, state_dict, train/eval flags).
"""

from __future__ import annotations

import importlib
import math
import sys
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import _get_current_dispatch_mode_stack
from torch.utils.flop_counter import flop_registry

import lightning_flops as lf
from lightning_flops.counters.base import COUNTER_NAMES, RawCount

BATCH, IN, HIDDEN, OUT = 4, 64, 32, 10
MACS = BATCH * (IN * HIDDEN + HIDDEN * OUT)  # batch * (in * hidden + hidden * out); ReLU and Probe are free

aten = torch.ops.aten


class Probe(nn.Module):
    """Identity, except that it raises while ``trigger()`` says a counter is looking."""

    def __init__(self) -> None:
        super().__init__()
        self.trigger: Callable[[nn.Module], bool] = lambda module: False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.trigger(self):
            raise RuntimeError("injected: forward refuses to run under profiling")
        return x


def make_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), Probe(), nn.Linear(HIDDEN, OUT))


def example_input() -> torch.Tensor:
    return torch.randn(BATCH, IN)


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOK_DICTS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks")


def _global_hook_counts() -> dict[str, int]:
    module_globals = sys.modules["torch.nn.modules.module"]
    return {name: len(getattr(module_globals, name)) for name in _GLOBAL_HOOK_DICTS}


class Traces:
    """What a model looks like from the outside, to compare before and after a failed profile."""

    def __init__(self, model: nn.Module) -> None:
        self.state = {k: v.clone() for k, v in model.state_dict().items()}
        self.buffer_names = [name for name, _ in model.named_buffers()]
        self.training = [m.training for m in model.modules()]
        self.global_hooks = _global_hook_counts()

    def assert_unchanged(self, model: nn.Module) -> None:
        state = model.state_dict()
        assert list(state) == list(self.state)
        assert all(torch.equal(state[k], v) for k, v in self.state.items())
        assert [name for name, _ in model.named_buffers()] == self.buffer_names
        assert not any("total_ops" in m._buffers or "total_params" in m._buffers for m in model.modules())
        assert all(len(getattr(m, key)) == 0 for m in model.modules() for key in _HOOK_DICTS)
        assert [m.training for m in model.modules()] == self.training
        assert _global_hook_counts() == self.global_hooks


# ----------------------------------------------------------------------------------------------- fault injectors
def _raise(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("injected: counter library failed mid-count")


def inject_library_raises(monkeypatch: pytest.MonkeyPatch, name: str, model: nn.Module) -> str:
    """Make the counter's own library raise inside the forward call, after it has hooked the model."""
    if name == "thop":
        rules = importlib.import_module("thop.profile").register_hooks
        monkeypatch.setitem(rules, nn.Linear, _raise)  # a forward hook thop puts on every Linear
    elif name == "fvcore":
        supported = importlib.import_module("fvcore.nn.flop_count")._DEFAULT_SUPPORTED_OPS
        for op in ("aten::addmm", "aten::linear", "aten::matmul"):
            monkeypatch.setitem(supported, op, _raise)
    else:
        for op in (aten.addmm, aten.mm):
            monkeypatch.setitem(flop_registry, op, _raise)
    return "injected: counter library failed mid-count"


def inject_import_missing(monkeypatch: pytest.MonkeyPatch, name: str, model: nn.Module) -> str:
    """Simulate the counter's package not being installed: importing it raises ImportError."""
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setitem(sys.modules, name, None)
    return f"{name} is not installed"


_TRIGGERS: dict[str, Callable[[nn.Module], bool]] = {
    "thop": lambda module: "total_ops" in module._buffers,  # thop registers its buffers before the forward call
    "fvcore": lambda module: torch.jit.is_tracing(),  # fvcore counts on a JIT trace
    # the torch counter counts under a dispatch mode of its own (`_ReferenceMode`, or torch's `_FlopCounterMode` when a
    # higher-order operator runs); other passes (the watched meta pass, the kernel watch) run under dispatch modes too,
    # so look for those by name
    "torch": lambda module: any(
        type(m).__name__ in ("_ReferenceMode", "_FlopCounterMode") for m in _get_current_dispatch_mode_stack()
    ),
}


def inject_forward_raises_under_profiling(monkeypatch: pytest.MonkeyPatch, name: str, model: nn.Module) -> str:
    """The model's own forward raises, but only while this counter is watching (on meta and in place)."""
    model[2].trigger = _TRIGGERS[name]
    return "injected: forward refuses to run under profiling"


FAULTS = {
    "library_raises": inject_library_raises,
    "forward_raises_under_profiling": inject_forward_raises_under_profiling,
}
MISSING_IMPORT_COUNTERS = ("thop", "fvcore")  # torch is a hard dependency


def _cases() -> Iterator[Any]:
    for fault in FAULTS:
        for name in COUNTER_NAMES:
            yield pytest.param(fault, name, id=f"{fault}-{name}")


@pytest.fixture
def model() -> nn.Sequential:
    return make_model()


def assert_failed_alone(report: lf.FlopsReport, name: str, reason: str) -> None:
    failed = report.counters[name]
    assert failed.ok is False
    assert failed.macs is None and failed.flops is None
    assert reason in (failed.error or "")
    for other in COUNTER_NAMES:
        if other != name:
            assert report.counters[other].ok, report.counters[other].error
            assert report.counters[other].macs == MACS
    assert all(name not in (gap.a, gap.b) for gap in report.gaps)
    assert f"- {name}: " in report.to_markdown()
    assert lf.FlopsReport.from_json(report.to_json()).counters[name].error == failed.error


# ----------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize(("fault", "name"), list(_cases()))
def test_failed_counter_is_reported_and_others_land(
    monkeypatch: pytest.MonkeyPatch, model: nn.Sequential, fault: str, name: str
) -> None:
    reason = FAULTS[fault](monkeypatch, name, model)
    traces = Traces(model)
    report = lf.profile_model(model, example_input())
    assert_failed_alone(report, name, reason)
    traces.assert_unchanged(model)


@pytest.mark.parametrize(("fault", "name"), list(_cases()))
def test_failed_counter_raises_counter_error_when_strict(
    monkeypatch: pytest.MonkeyPatch, model: nn.Sequential, fault: str, name: str
) -> None:
    reason = FAULTS[fault](monkeypatch, name, model)
    traces = Traces(model)
    with pytest.raises(lf.CounterError, match=rf"counter '{name}' failed: .*{reason}"):
        lf.profile_model(model, example_input(), strict=True)
    traces.assert_unchanged(model)


@pytest.mark.parametrize("name", MISSING_IMPORT_COUNTERS)
def test_missing_package_is_reported_with_install_hint(
    monkeypatch: pytest.MonkeyPatch, model: nn.Sequential, name: str
) -> None:
    reason = inject_import_missing(monkeypatch, name, model)
    traces = Traces(model)
    report = lf.profile_model(model, example_input())
    assert_failed_alone(report, name, reason)
    assert report.counters[name].error.startswith("ImportError")
    assert f"pip install {name}" in report.counters[name].error
    traces.assert_unchanged(model)


@pytest.mark.parametrize("name", MISSING_IMPORT_COUNTERS)
def test_missing_package_raises_counter_error_when_strict(
    monkeypatch: pytest.MonkeyPatch, model: nn.Sequential, name: str
) -> None:
    inject_import_missing(monkeypatch, name, model)
    with pytest.raises(lf.CounterError, match=rf"counter '{name}' failed: ImportError: {name} is not installed"):
        lf.profile_model(model, example_input(), strict=True)


class _Nonsense:
    """Wraps a real adapter: it runs, then claims a nonsense MAC count."""

    def __init__(self, inner: Any, macs: Any) -> None:
        self.inner, self.macs, self.name = inner, macs, inner.name

    def can_count_on_meta(self, model: nn.Module) -> bool:
        return self.inner.can_count_on_meta(model)

    def count(self, model: nn.Module, args: tuple, kwargs: dict) -> RawCount:
        raw = self.inner.count(model, args, kwargs)
        return RawCount(macs=self.macs, module_operators=raw.module_operators, uncounted=raw.uncounted)


NONSENSE = {"negative": -5, "nan": math.nan, "none": None, "inf": math.inf, "bool": True}


def _inject_nonsense(monkeypatch: pytest.MonkeyPatch, name: str, macs: Any) -> None:
    adapter_module = importlib.import_module(f"lightning_flops.counters.{_ADAPTERS[name]}")
    real = adapter_module.make_counter
    monkeypatch.setattr(adapter_module, "make_counter", lambda: _Nonsense(real(), macs))


_ADAPTERS = {"thop": "thop_hooks", "fvcore": "fvcore_jit", "torch": "torch_dispatch"}


@pytest.mark.parametrize("value", list(NONSENSE), ids=list(NONSENSE))
@pytest.mark.parametrize("name", COUNTER_NAMES)
def test_nonsense_mac_count_is_a_failure_not_a_number(
    monkeypatch: pytest.MonkeyPatch, model: nn.Sequential, name: str, value: str
) -> None:
    _inject_nonsense(monkeypatch, name, NONSENSE[value])
    traces = Traces(model)
    report = lf.profile_model(model, example_input())
    assert_failed_alone(report, name, "invalid MAC count")
    traces.assert_unchanged(model)


@pytest.mark.parametrize("name", COUNTER_NAMES)
def test_nonsense_mac_count_raises_counter_error_when_strict(
    monkeypatch: pytest.MonkeyPatch, model: nn.Sequential, name: str
) -> None:
    _inject_nonsense(monkeypatch, name, -5)
    with pytest.raises(lf.CounterError, match=rf"counter '{name}' failed: .*invalid MAC count: -5"):
        lf.profile_model(model, example_input(), strict=True)


def test_model_still_trains_after_every_counter_failed(monkeypatch: pytest.MonkeyPatch, model: nn.Sequential) -> None:
    for name in COUNTER_NAMES:
        inject_library_raises(monkeypatch, name, model)
    report = lf.profile_model(model, example_input())
    assert not any(result.ok for result in report.counters.values())
    assert report.gaps == ()
    monkeypatch.undo()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model[0].weight.detach().clone()
    model(example_input()).sum().backward()
    optimizer.step()
    assert not torch.equal(model[0].weight, before)
    assert all(p.grad is not None for p in model.parameters())
