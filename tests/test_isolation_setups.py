"""Isolation on awkward real set-ups (issue 13): lazy and compiled modules, user hooks and Python state, forwards
that write their input or their weights in place, and memory (no second copy of any tensor, whatever holds it)."""

from __future__ import annotations

import functools
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, seed_everything
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset

import lightning_flops as lf
from lightning_flops.isolation import meta_copy
from lightning_flops.train_step import train_step_flops
from tests.lit_helpers import WrappedNet, assert_same_weights_and_optimizer, make_trainer

ALL_DEVICES = (None, "meta", "model")


# ------------------------------------------------------------------------------------------------------ helpers
def loader(in_features: int = 4, out: int = 2) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, in_features, generator=generator), torch.randn(16, out, generator=generator))
    return DataLoader(data, batch_size=4)


def fit(tmp_path: Path, make_module: Any, monitor: bool, data: Any = loader, **kwargs: Any) -> tuple[Any, Any, Any]:
    seed_everything(3)
    module = make_module()
    callbacks = [lf.FlopsMonitor()] if monitor else []
    trainer = make_trainer(tmp_path, callbacks, max_steps=3, logger=False, **kwargs)
    trainer.fit(module, data())
    return module, trainer, callbacks[0] if monitor else None


def assert_same_training(a: tuple[Any, Any, Any], b: tuple[Any, Any, Any]) -> None:
    """Bit-identical weights (buffers included) and optimizer state of two fits."""
    (module_a, trainer_a, _), (module_b, trainer_b, _) = a, b
    assert trainer_a.global_step == trainer_b.global_step == 3
    assert_same_weights_and_optimizer(module_a, trainer_a, module_b, trainer_b)


def counters_for(device: str | None) -> tuple[str, ...]:
    """fvcore cannot trace convolutions on meta: forced onto meta, the conv models run thop and torch only."""
    return ("thop", "torch") if device == "meta" else ("thop", "fvcore", "torch")


def assert_all_counted(report: lf.FlopsReport, macs: int) -> None:
    for name, result in report.counters.items():
        assert result.ok, (name, result.error)
        assert result.raw_macs == macs, (name, result.raw_macs)


# --------------------------------------------------------------------------------------------- 2. lazy modules
@pytest.mark.parametrize("device", ALL_DEVICES)
def test_a_lazy_module_stays_lazy_and_works_after_profiling(device: str | None) -> None:
    net = nn.Sequential(nn.LazyLinear(8))
    report = lf.profile_model(net, torch.randn(2, 4), device=device)
    assert_all_counted(report, 2 * 4 * 8)  # batch * in * out
    assert report.params.total == 4 * 8 + 8  # inferred from the input, as the first real forward will
    assert isinstance(net[0], nn.LazyLinear) and isinstance(net[0].weight, nn.parameter.UninitializedParameter)
    assert net(torch.randn(3, 4)).shape == (3, 8)
    assert type(net[0]) is nn.Linear and net[0].weight.shape == (8, 4)


def test_a_fit_with_a_lazy_module_trains_as_without_the_monitor(tmp_path: Path) -> None:
    def make() -> WrappedNet:
        return WrappedNet(nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.LazyLinear(2)), lr=0.1, momentum=0.9)

    with_monitor = fit(tmp_path / "a", make, monitor=True)
    assert_same_training(with_monitor, fit(tmp_path / "b", make, monitor=False))
    report = with_monitor[2].report
    assert report.counters["torch"].macs == 4 * (4 * 8 + 8 * 2)  # batch * (4*8 + 8*2)
    assert report.params.total == 4 * 8 + 8 + 8 * 2 + 2


# ------------------------------------------------------------------------------------------- 3. compiled / wrapped
class Stepper(nn.Module):
    """Counts its forward calls in a buffer (what a step counter or an EMA does)."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.steps += 1
        return self.linear(x)


def _wrapped(model: nn.Module) -> nn.Module:
    original = model.forward

    @functools.wraps(original)
    def forward(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **kwargs)

    model.forward = forward
    return model


def _rebound(model: nn.Module) -> nn.Module:
    model.forward = types.MethodType(type(model).forward, model)
    return model


@pytest.mark.parametrize("wrap", [_wrapped, _rebound])
@pytest.mark.parametrize("device", ALL_DEVICES)
def test_an_instance_level_forward_runs_on_the_copy_not_on_the_model(wrap: Any, device: str | None) -> None:
    model = wrap(Stepper())
    report = lf.profile_model(model, torch.randn(3, 4), device=device)
    assert_all_counted(report, 3 * 4 * 2)
    assert int(model.steps) == 0
    if device is None:
        assert {r.device for r in report.counters.values()} == {"meta"}
    assert train_step_flops(model, torch.randn(3, 4)) > 0 and int(model.steps) == 0


def test_a_fit_of_a_compiled_module_trains_as_without_the_monitor(tmp_path: Path) -> None:
    def make() -> Any:
        return torch.compile(WrappedNet(Stepper(), lr=0.1, momentum=0.9), backend="eager")

    with_monitor = fit(tmp_path / "a", make, monitor=True)
    without = fit(tmp_path / "b", make, monitor=False)
    module = with_monitor[1].lightning_module
    assert int(module.net.steps) == 3  # three training steps, no extra forward of ours
    assert_same_training((module, with_monitor[1], None), (without[1].lightning_module, without[1], None))
    report = with_monitor[2].report
    assert report.counters["torch"].macs == 4 * 4 * 2
    assert report.train_step_flops is not None and report.train_step_flops > 0


# -------------------------------------------------------------------------------------- 4. user hooks and state
class Stateful(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.calls = 0
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.shapes.append(tuple(x.shape))
        return self.conv(x)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_user_hooks_never_see_our_passes_and_python_state_is_unchanged(device: str | None) -> None:
    model = Stateful()
    seen: list[torch.Tensor] = []
    model.conv.register_forward_hook(lambda module, inputs, output: seen.append(output))
    model.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    report = lf.profile_model(model, torch.randn(2, 3, 6, 6), device=device, counters=counters_for(device))
    assert_all_counted(report, 2 * 4 * 4 * 4 * 3 * 3 * 3)  # batch * out_c * h * w * in_c * k * k
    if device is None:
        assert report.counters["fvcore"].device == "meta"  # fvcore traces convs on meta (device="model": in place)
    assert seen == []
    assert model.calls == 0 and model.shapes == []
    model(torch.randn(1, 3, 6, 6))
    assert len(seen) == 2 and model.calls == 1


class Monitored(LightningModule):
    """Records the norm of every activation of ``net[0]`` with a forward hook and stacks them at each step end."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        self.norms: list[torch.Tensor] = []
        self.stacked: list[int] = []
        self.net[0].register_forward_hook(lambda module, inputs, output: self.norms.append(output.detach().norm()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.stacked.append(len(torch.stack(self.norms)))
        self.norms.clear()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


def test_a_fit_with_an_activation_monitoring_hook_trains_as_without_the_monitor(tmp_path: Path) -> None:
    with_monitor = fit(tmp_path / "a", Monitored, monitor=True)
    assert with_monitor[0].stacked == [1, 1, 1]  # one activation per step: none from profiling
    assert_same_training(with_monitor, fit(tmp_path / "b", Monitored, monitor=False))


# ------------------------------------------------------------------------------------ 5. the caller's batch
class Normalising(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        x.sub_(x.mean()).div_(x.std() + 1)
        extra.mul_(2)
        return self.conv(x)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_a_forward_that_normalises_its_input_in_place_leaves_the_batch_unchanged(device: str | None) -> None:
    batch = {"x": torch.randn(4, 3, 6, 6), "extra": torch.randn(4)}
    before = {k: v.clone() for k, v in batch.items()}
    report = lf.profile_model(Normalising(), batch, device=device, counters=counters_for(device))
    assert_all_counted(report, 4 * 4 * 4 * 4 * 3 * 3 * 3)  # batch * out_c * h * w * in_c * k * k
    if device is None:
        assert report.counters["fvcore"].device == "meta"  # the in-place slice path is the device="model" case
    for key, value in before.items():
        assert torch.equal(batch[key], value), key


# ----------------------------------------------------------------------------- 6. weights written in forward
class Decaying(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.conv.weight.mul_(0.99)
            self.head.bias.data.add_(1.0)
        return self.head(self.conv(x).mean(dim=(2, 3)))


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("device", ALL_DEVICES)
def test_parameters_written_in_forward_keep_their_values(device: str | None, mode: str) -> None:
    model = Decaying()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = lf.profile_model(model, torch.randn(2, 3, 6, 6), device=device, mode=mode, counters=counters_for(device))
    assert report.counters["torch"].raw_macs == 2 * (4 * 4 * 4 * 3 * 3 * 3 + 4 * 2)  # conv + linear, batch 2
    assert all(r.ok for r in report.counters.values()), report.counters
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key


class DecayingWithItem(Decaying):
    """Writes its weights and its input in place and calls ``.item()``: no meta forward can show what it writes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.mul_(float(x.abs().max().item() > -1))
        return super().forward(x)


@pytest.mark.parametrize("device", [None, "model"])
def test_writes_are_undone_when_no_meta_forward_can_run(device: str | None) -> None:
    model, x = DecayingWithItem(), torch.randn(2, 3, 6, 6)
    before, x_before = {k: v.clone() for k, v in model.state_dict().items()}, x.clone()
    report = lf.profile_model(model, x, device=device)
    assert_all_counted(report, 2 * (4 * 4 * 4 * 3 * 3 * 3 + 4 * 2))  # conv + linear, batch 2
    assert {r.device for r in report.counters.values()} == {"cpu"}
    if device is None:
        assert "item" in (report.counters["torch"].device_note or "")
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key
    assert torch.equal(x, x_before)


# ---------------------------------------------------------------------------------------------------- 7. memory
BIG = 16 * 1024 * 1024  # float32 elements: 64 MiB


class BigCopies(TorchDispatchMode):
    """Records every operator that makes a real (non-meta) tensor of at least ``BIG`` elements."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and not tensor.is_meta and tensor.numel() >= BIG:
                self.made.append(str(func))
        return out


class Heavy(nn.Module):
    """Holds 64 MiB tensors in every way a module can: plain attribute, list, dict, tuple, other object, buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.data = torch.randn(BIG)
        self.history = [torch.randn(BIG)]
        self.tables = {"a": torch.randn(BIG)}
        self.pair = (torch.randn(BIG), 1)
        self.dataset = TensorDataset(torch.randn(BIG))
        self.register_buffer("table", torch.randn(BIG))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + self.table[0]


def test_a_meta_copy_maps_every_tensor_it_reaches_to_meta_and_copies_none() -> None:
    model = Heavy()
    with BigCopies() as big:
        twin = meta_copy(model)
    assert big.made == []
    assert twin.data.is_meta and twin.history[0].is_meta and twin.tables["a"].is_meta and twin.table.is_meta
    assert twin.pair[0].is_meta and twin.pair[1] == 1
    assert twin.dataset is model.dataset  # other objects are shared, never copied
    assert twin.history is not model.history and model.history[0].device.type == "cpu"


_PEAK_SCRIPT = """
import resource, sys, torch
import lightning_flops as lf
from tests.test_isolation_setups import Heavy
lf.profile_model(torch.nn.Conv2d(3, 4, 3), torch.randn(2, 3, 6, 6))  # imports and first-call costs, before the baseline
class HeavyWithItem(Heavy):
    def forward(self, x):
        return super().forward(x) * float(x.abs().max().item() > -1)

x = torch.randn(2, 3, 6, 6)
for model, device in ((Heavy(), None), (Heavy(), "meta"), (Heavy(), "model"), (HeavyWithItem(), None)):
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    counters = ("thop", "torch") if device == "meta" else ("thop", "fvcore", "torch")
    report = lf.profile_model(model, x, device=device, counters=counters)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base
    print(device, grown // 1024, report.counters["fvcore" if device != "meta" else "torch"].device, flush=True)
"""


def test_profiling_makes_no_second_copy_of_a_large_tensor() -> None:
    # Peak RSS of a fresh process: a copy of any of the six 64 MiB tensors would raise the peak by 64 MiB.
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, timeout=300, cwd=root, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line.split() for line in done.stdout.splitlines()]
    assert [row[0] for row in rows] == ["None", "meta", "model", "None"]
    assert [row[2] for row in rows] == ["meta", "meta", "cpu", "cpu"]  # in place: tensors shared, not copied
    for device, grown_mib, _ in rows:
        assert int(grown_mib) < 40, f"device={device}: peak RSS grew by {grown_mib} MiB (a 64 MiB tensor was copied)"


# ------------------------------------------------------------------------------------- process-wide hooks (issue 11)
def _someone_elses_hook(module: nn.Module, inputs: Any, output: Any) -> None:
    return None


class RegistersAGlobalHook(nn.Module):
    """Registers a process-wide hook during its first forward, as another thread might while we profile."""

    registered: list[Any]

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not RegistersAGlobalHook.registered:
            RegistersAGlobalHook.registered.append(nn.modules.module.register_module_forward_hook(_someone_elses_hook))
        return self.linear(x)


RegistersAGlobalHook.registered = []


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_a_global_hook_registered_meanwhile_by_someone_else_survives(device: str | None) -> None:
    RegistersAGlobalHook.registered.clear()
    try:
        report = lf.profile_model(RegistersAGlobalHook(), torch.randn(2, 4), device=device)
        assert_all_counted(report, 2 * 4 * 2)
        assert RegistersAGlobalHook.registered, "the forward never ran"
        assert _someone_elses_hook in nn.modules.module._global_forward_hooks.values()
    finally:
        for handle in RegistersAGlobalHook.registered:
            handle.remove()
