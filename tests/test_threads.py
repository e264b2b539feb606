"""Nothing process-wide while counting (issue 17, point 3): another thread's module hooks survive a profile, two
profiles in two threads give what each gives alone, and ``quiet()`` mutes the counting thread only."""

from __future__ import annotations

import sys
import threading
import warnings
from typing import Any

import pytest
import torch
from torch import nn

import lightning_flops as lf
from lightning_flops.counters.tracing import quiet

WAIT = 30  # seconds: a safety net against a hang, never reached when the test passes


def _global_hook_counts() -> tuple[int, int]:
    module_globals = sys.modules["torch.nn.modules.module"]
    return len(module_globals._global_forward_pre_hooks), len(module_globals._global_forward_hooks)


class Gate(nn.Module):
    """Calls ``action`` on its first meta call (from inside the count), then passes its input through."""

    def __init__(self, action: Any) -> None:
        super().__init__()
        self.action = action
        self.done = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_meta and not self.done:
            self.done = True
            self.action()
        return x


def test_a_profile_leaves_the_module_tracker_another_thread_holds() -> None:
    """A ModuleTracker entered on another thread while our profile runs keeps its global hooks, one pre and one
    post (before: our cleanup removed them: 3/2 global hooks during the count, then 0/0), and that thread's meta
    and FakeTensor work meanwhile runs."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.module_tracker import ModuleTracker

    baseline = _global_hook_counts()
    entered, release = threading.Event(), threading.Event()
    seen: dict[str, Any] = {}

    def other() -> None:
        with ModuleTracker():
            seen["held"] = _global_hook_counts()
            entered.set()
            release.wait(WAIT)
            linear = nn.Linear(8, 8, device="meta")
            seen["meta"] = linear(torch.empty(2, 8, device="meta")).shape
            with FakeTensorMode():
                seen["fake"] = (torch.empty(2, 8) @ torch.empty(8, 3)).shape
            seen["inside"] = _global_hook_counts()
        seen["after"] = _global_hook_counts()

    thread = threading.Thread(target=other)

    def start_the_other_thread() -> None:
        thread.start()
        entered.wait(WAIT)

    model = nn.Sequential(nn.Linear(8, 16), Gate(start_the_other_thread), nn.Linear(16, 4))
    report = lf.profile_model(model, torch.randn(2, 8), strict=True)
    during = _global_hook_counts()
    release.set()
    thread.join(WAIT)
    assert {n: r.macs for n, r in report.counters.items()} == dict.fromkeys(
        ("thop", "fvcore", "torch"), 2 * (8 * 16 + 16 * 4)
    )
    tracker_hooks = (baseline[0] + 1, baseline[1] + 1)
    assert seen["held"] > tracker_hooks  # ours were there too while the other thread entered its tracker
    assert during == seen["inside"] == tracker_hooks  # ours are gone, its own survived our profile's cleanup
    assert (seen["meta"], seen["fake"]) == ((2, 8), (2, 3))
    assert seen["after"] == baseline


def _by_module(report: lf.FlopsReport) -> dict[str, Any]:
    return {name: (r.macs, r.by_module) for name, r in report.counters.items()}


def _two_models() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    first = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.Flatten(), nn.Linear(8 * 4 * 4, 5))
    second = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32), nn.Linear(32, 2))
    return first, second


FIRST_INPUT, SECOND_INPUT = (2, 3, 8, 8), (4, 16)


def test_two_profiles_that_overlap_book_their_own_modules() -> None:
    """Profile A starts, profile B enters its forward, A finishes its count while B waits in the middle of its model:
    B's module tracking still books B's modules (before: A's cleanup removed B's hooks, and everything after went to
    one module)."""
    first, second = _two_models()
    alone = (
        _by_module(lf.profile_model(first, torch.randn(*FIRST_INPUT), counters=("torch",))),
        _by_module(lf.profile_model(second, torch.randn(*SECOND_INPUT), counters=("torch",))),
    )
    b_inside, a_done = threading.Event(), threading.Event()
    results: dict[str, Any] = {}

    def wait_for_b() -> None:
        b_inside.wait(WAIT)

    def b_waits_for_a() -> None:
        b_inside.set()
        a_done.wait(WAIT)

    first_gated = nn.Sequential(first[0], Gate(wait_for_b), *first[1:])
    second_gated = nn.Sequential(second[0], Gate(b_waits_for_a), *second[1:])

    def profile_b() -> None:
        results["b"] = lf.profile_model(second_gated, torch.randn(*SECOND_INPUT), counters=("torch",))

    thread = threading.Thread(target=profile_b)
    thread.start()
    results["a"] = lf.profile_model(first_gated, torch.randn(*FIRST_INPUT), counters=("torch",))
    a_done.set()
    thread.join(WAIT)

    def renamed(by: dict[str, Any]) -> dict[str, Any]:  # the gate is module "1": the rest moves up by one
        out = {}
        for counter, (macs, modules) in by.items():
            moved = {}
            for name, value in modules.items():
                head, _, rest = name.partition(".")
                if head.isdigit() and int(head) >= 2:
                    name = ".".join([str(int(head) - 1), *([rest] if rest else [])])
                if name != "1" or value:
                    moved[name] = value
            out[counter] = (macs, moved)
        return out

    assert (renamed(_by_module(results["a"])), renamed(_by_module(results["b"]))) == alone


def test_two_profiles_in_two_threads_repeatedly_give_what_each_gives_alone() -> None:
    first, second = _two_models()
    alone = (
        _by_module(lf.profile_model(first, torch.randn(*FIRST_INPUT))),
        _by_module(lf.profile_model(second, torch.randn(*SECOND_INPUT))),
    )
    for _ in range(10):
        results: dict[str, Any] = {}
        thread = threading.Thread(
            target=lambda out=results: out.update(b=lf.profile_model(second, torch.randn(*SECOND_INPUT)))
        )
        thread.start()
        results["a"] = lf.profile_model(first, torch.randn(*FIRST_INPUT))
        thread.join(WAIT)
        assert (_by_module(results["a"]), _by_module(results["b"])) == alone


def test_quiet_mutes_thops_printers_on_its_own_thread_only(capsys: pytest.CaptureFixture[str]) -> None:
    import thop.utils

    with quiet():
        thop.utils.prRed("muted here")
        thread = threading.Thread(target=thop.utils.prRed, args=("another thread's thop print",))
        thread.start()
        thread.join()
    assert "another thread's thop print" in capsys.readouterr().out  # before: thop's printers were muted for all
    assert "muted here" not in capsys.readouterr().out


def test_quiet_in_two_threads_that_overlap_leaves_the_warning_filters_as_they_were() -> None:
    """A enters, B enters, A leaves, B leaves (before: ``catch_warnings`` in each restored the other's list, so A's
    ignore filters stayed in the process for good)."""
    import thop.utils

    filters = list(warnings.filters)
    printers = dict(vars(thop.utils))
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def b() -> None:
        a_in.wait(WAIT)
        with quiet():
            b_in.set()
            a_out.wait(WAIT)

    thread = threading.Thread(target=b)
    thread.start()
    with quiet():
        a_in.set()
        b_in.wait(WAIT)
    a_out.set()
    thread.join(WAIT)
    assert warnings.filters == filters
    assert dict(vars(thop.utils)) == printers


def test_quiet_ignores_thop_warnings_on_its_thread_and_shows_them_on_others() -> None:
    """Before: ``catch_warnings`` + ``filterwarnings`` ignored them on every thread while a count ran."""

    def other() -> None:
        warnings.warn_explicit("other thread", UserWarning, "thop/profile.py", 1, module="thop.profile")

    with warnings.catch_warnings(record=True) as records:  # records what any thread shows
        warnings.simplefilter("always")
        with quiet():
            warnings.warn_explicit("noise", UserWarning, "thop/profile.py", 1, module="thop.profile")
            thread = threading.Thread(target=other)
            thread.start()
            thread.join()
    assert [str(r.message) for r in records] == ["other thread"]


def test_thops_parameter_count_is_skipped_on_the_counting_thread_only() -> None:
    """Before: ``thop.profile.count_parameters`` was replaced for the whole process while a count ran, so another
    thread's ``thop.profile`` meanwhile reported 0 parameters."""
    import thop

    from lightning_flops._compat import thop_without_parameter_count

    x = torch.randn(2, 4)
    found: list[float] = []

    def other() -> None:
        found.append(float(thop.profile(nn.Sequential(nn.Linear(4, 5)), inputs=(x,), verbose=False)[1]))

    with thop_without_parameter_count():
        here = float(thop.profile(nn.Sequential(nn.Linear(4, 5)), inputs=(x,), verbose=False)[1])
        thread = threading.Thread(target=other)
        thread.start()
        thread.join(WAIT)
    assert (here, found) == (0.0, [4 * 5 + 5])  # weight in*out + bias out
