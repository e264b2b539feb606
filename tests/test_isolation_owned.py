"""What the model owns stays the model's (issue 18, points 1-4 and 11): ``self.log`` in forward, torchmetrics metrics
updated in forward, random generators held by the model, a scripted submodule beside user hooks, and the tensors an
in-place count shares. Each fit is compared with the same seeded fit without the callback."""

from __future__ import annotations

import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch import LightningModule, seed_everything
from torch import nn

import lightning_flops as lf
from tests.lit_helpers import make_trainer
from tests.test_isolation_setups import ALL_DEVICES, assert_same_training, loader


def fit(tmp_path: Path, make_module: Any, monitor: dict[str, Any] | None) -> tuple[Any, Any, Any]:
    """Three seeded steps of ``make_module()``; ``monitor``: the FlopsMonitor arguments, or ``None`` for none."""
    seed_everything(3)
    module = make_module()
    callbacks = [lf.FlopsMonitor(**monitor)] if monitor is not None else []
    trainer = make_trainer(tmp_path, callbacks, max_steps=3, logger=False)
    trainer.fit(module, loader())
    return module, trainer, callbacks[0] if callbacks else None


class Regression(LightningModule):
    """``Linear(4, 8) -> ReLU -> Linear(8, 2)``, MSE, SGD with momentum; subclasses add to ``forward``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


# ------------------------------------------------------------------------------------ 1. self.log inside forward
class LogsInForward(Regression):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        self.log("out_mean", out.mean())
        self.log_dict({"out_max": out.max(), "out_min": out.min()})
        return out


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_self_log_in_forward_neither_kills_the_fit_nor_changes_what_is_logged(tmp_path: Path, mode: str) -> None:
    with_monitor = fit(tmp_path / "a", LogsInForward, {"mode": mode})
    without = fit(tmp_path / "b", LogsInForward, None)
    assert_same_training(with_monitor, without)
    logged, expected = with_monitor[1].callback_metrics, without[1].callback_metrics
    assert {k for k in logged if not k.startswith("compute/")} == {"loss", "out_mean", "out_max", "out_min"}
    for key, value in expected.items():
        assert torch.equal(logged[key], value), key
    assert with_monitor[2].report.counters["torch"].macs == 4 * (4 * 8 + 8 * 2)  # batch * (in*hidden + hidden*out)


# -------------------------------------------------------------------------------- 2. torchmetrics in forward
class Metered(nn.Module):
    def __init__(self) -> None:
        import torchmetrics

        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.mean = torchmetrics.MeanMetric()
        self.max = torchmetrics.MaxMetric()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.fc(x)
        self.mean.update(torch.full((), 2.0))
        self.max(out.detach().abs().max())
        return out


def metric_states(model: Metered) -> dict[str, Any]:
    return {
        "mean_value": model.mean.mean_value.clone(),
        "weight": model.mean.weight.clone(),
        "mean_updates": model.mean._update_count,
        "max_value": model.max.max_value.clone(),
        "max_updates": model.max._update_count,
    }


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_torchmetrics_updated_in_forward_keep_their_state(device: str | None) -> None:
    model = Metered()
    model.mean.update(torch.full((), 2.0))  # one update of the user's: mean 2.0, weight 1
    before = metric_states(model)
    counters = ("thop", "torch") if device == "meta" else ("thop", "fvcore", "torch")
    report = lf.profile_model(model, torch.randn(3, 4), device=device, counters=counters)
    if device != "meta":  # MaxMetric checks its input for NaN with `.item()`: no count on meta
        assert report.counters["torch"].macs == 3 * 4 * 2  # batch * in * out
    after = metric_states(model)
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value) if isinstance(value, torch.Tensor) else after[key] == value, (
            key,
            value,
            after[key],
        )


# --------------------------------------------------------------------------------- 3. generators the model owns
class Noisy(Regression):
    """Draws from a torch Generator, a ``random.Random`` and a NumPy Generator of its own in every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.gen = torch.Generator().manual_seed(0)
        self.py_rng = random.Random(0)
        self.np_rng = np.random.default_rng(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(x.shape, generator=self.gen).to(x.device)
        scale = self.py_rng.random() * float(self.np_rng.random())
        return self.net(x + scale * noise)


def test_generators_the_model_owns_are_not_advanced_by_profiling(tmp_path: Path) -> None:
    with_monitor = fit(tmp_path / "a", Noisy, {})
    without = fit(tmp_path / "b", Noisy, None)
    assert with_monitor[2].report.counters["torch"].macs == 4 * (4 * 8 + 8 * 2)  # batch * (in*hidden + hidden*out)
    assert_same_training(with_monitor, without)
    model_a, model_b = with_monitor[0], without[0]
    assert torch.equal(model_a.gen.get_state(), model_b.gen.get_state())
    assert model_a.py_rng.getstate() == model_b.py_rng.getstate()
    assert model_a.np_rng.bit_generator.state == model_b.np_rng.bit_generator.state


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_profile_model_leaves_the_models_generators_where_they_were(device: str | None) -> None:
    model = Noisy()
    states = (model.gen.get_state(), model.py_rng.getstate(), model.np_rng.bit_generator.state)
    counters = ("thop", "torch") if device == "meta" else ("thop", "fvcore", "torch")
    lf.profile_model(model, torch.randn(4, 4), device=device, counters=counters)
    assert torch.equal(model.gen.get_state(), states[0])
    assert model.py_rng.getstate() == states[1]
    assert model.np_rng.bit_generator.state == states[2]


# ---------------------------------------------------------------------- 4. a scripted submodule and user hooks
class PartlyScripted(Regression):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.scripted = torch.jit.script(nn.Linear(8, 2))
        self.calls: list[tuple[int, ...]] = []
        self.fc1.register_forward_hook(lambda module, inputs, output: self.calls.append(tuple(output.shape)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scripted(torch.relu(self.fc1(x)))


def test_a_scripted_submodule_lets_no_user_hook_see_our_passes(tmp_path: Path) -> None:
    with_monitor = fit(tmp_path / "a", PartlyScripted, {})
    without = fit(tmp_path / "b", PartlyScripted, None)
    assert with_monitor[2].report.counters["torch"].macs == 4 * (4 * 8 + 8 * 2)  # batch * (in*hidden + hidden*out)
    assert with_monitor[0].calls == without[0].calls == [(4, 8)] * 3  # one call per training step, none of ours
    assert_same_training(with_monitor, without)


@pytest.mark.parametrize("device", ALL_DEVICES)
def test_profile_model_of_a_partly_scripted_model_runs_no_user_hook(device: str | None) -> None:
    model = PartlyScripted()
    report = lf.profile_model(model, torch.randn(4, 4), device=device, counters=("thop", "torch"))
    assert report.counters["torch"].macs == 4 * (4 * 8 + 8 * 2)  # batch * (in*hidden + hidden*out)
    assert model.calls == []


# -------------------------------------------------------------------- 11. in-place counts checked, not trusted
class WritesThroughNumpy(nn.Module):
    """Counts its calls in a buffer through ``.numpy()``: a write no dispatch mode sees, so nothing can undo it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.register_buffer("calls", torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.numpy()[0] += 1
        return self.fc(x)


@pytest.mark.parametrize("device", [None, "model"])
def test_a_change_no_dispatch_mode_sees_is_reported_by_name(device: str | None) -> None:
    model = WritesThroughNumpy()
    with pytest.warns(RuntimeWarning, match=r"counter 'torch': counting in place changed the model's tensors calls"):
        report = lf.profile_model(model, torch.randn(3, 4), device=device, counters=("torch",))
    result = report.counters["torch"]
    assert (result.device, result.macs) == ("cpu", 3 * 4 * 2)  # in place (.numpy() fails on meta); batch * in * out
    assert "counting in place changed the model's tensors calls" in result.device_note
    assert model.calls.item() > 0  # the change is real: the report says so rather than hide it


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_writes_the_dispatcher_sees_are_undone_and_nothing_is_reported(mode: str) -> None:
    from tests.test_isolation_setups import Decaying

    model = Decaying()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        report = lf.profile_model(model, torch.randn(2, 3, 6, 6), device="model", mode=mode, counters=("torch",))
    assert report.counters["torch"].device_note is None


class WeightStandardised(nn.Module):
    """A convolution of a layer-normalised weight (batch-independent), then a LayerNorm of its output (per sample)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.norm = nn.LayerNorm([4, 4, 4])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = nn.functional.layer_norm(self.conv.weight, self.conv.weight.shape[1:])
        return self.norm(nn.functional.conv2d(x, weight, self.conv.bias))


def test_a_one_sample_fvcore_count_scales_only_what_grows_with_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    from fvcore.nn import FlopCountAnalysis

    from lightning_flops.counters.fvcore_jit import FvcoreCounter

    model, x = WeightStandardised(), torch.randn(4, 3, 6, 6)
    expected = FlopCountAnalysis(model, (x,))  # fvcore itself, on the whole batch
    expected.unsupported_ops_warnings(False)
    expected_norm = expected.by_operator()["layer_norm"]
    # fvcore: 4 per element, 5 with an affine weight; the conv weight (out*in*k*k) + the output (batch*C*H*W)
    assert expected_norm == 4 * (4 * 3 * 3 * 3) + 5 * (4 * 4 * 4 * 4)
    monkeypatch.setattr(FvcoreCounter, "can_count_on_meta", lambda self, model: False)  # in place, on one sample
    result = lf.profile_model(model, x, counters=("torch", "fvcore")).counters["fvcore"]
    assert (result.device, result.sample_scale) == ("cpu", 4)
    assert result.by_operator["norm"] == expected_norm  # not 4 * 4 * 108 + 5 * 256: the weight's norm times 4
    assert result.by_operator["conv"] == 4 * 4 * 4 * 4 * 3 * 3 * 3 == expected.by_operator()["conv"]
    assert result.macs == expected.total()
