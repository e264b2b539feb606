"""After ``profile_model`` the user's model is exactly as before, for every counter, device option and mode."""

from __future__ import annotations

import copy
import functools
import sys
from typing import Any

import pytest
import torch
from torch import nn

import lightning_flops as lf
from lightning_flops._compat import GLOBAL_HOOK_DICTS  # process-wide hook dicts, compared before vs after
from lightning_flops.isolation import meta_copy

COUNTERS = ("thop", "fvcore", "torch")
DEVICES = (None, "meta", "model")
MODES = ("eval", "train")
MODULE_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks", "_backward_hooks")


class Net(nn.Module):
    """Train-mode net with BatchNorm, a frozen eval sub-block, Dropout, and a GELU that thop has no rule for."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.GELU())
        self.frozen = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.frozen(self.stem(x))
        return self.head(self.drop(x.mean(dim=(2, 3))))


def _forward_hook(module: nn.Module, inputs: Any, output: Any) -> None:
    return None


def _forward_pre_hook(module: nn.Module, inputs: Any) -> None:
    return None


def build_net() -> Net:
    torch.manual_seed(0)
    net = Net().train()
    net.frozen.eval()
    net.frozen.requires_grad_(False)
    with torch.no_grad():  # non-default running stats, so that an update or a reset would show
        for bn in (net.stem[1], net.frozen[1]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.num_batches_tracked.fill_(7)
    net.head.register_forward_hook(_forward_hook)
    net.stem.register_forward_pre_hook(_forward_pre_hook)
    return net


def capture(model: nn.Module) -> dict[str, Any]:
    """Everything profiling must not change, copied."""
    module_globals = sys.modules["torch.nn.modules.module"]
    return {
        "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "hooks": {
            (name, key): list(getattr(m, key).items()) for name, m in model.named_modules() for key in MODULE_HOOK_DICTS
        },
        "training": {name: m.training for name, m in model.named_modules()},
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "rng": torch.get_rng_state(),
        "global_hooks": {key: list(getattr(module_globals, key).items()) for key in GLOBAL_HOOK_DICTS},
        "param_ids": [id(p) for p in model.parameters()],
    }


@functools.cache
def profiled(counter: str, device: str | None, mode: str) -> tuple[dict[str, Any], dict[str, Any], nn.Module, Any]:
    """(state before, state after, the model, the report) of one profile_model call on a fresh :class:`Net`."""
    model = build_net()
    torch.manual_seed(1234)
    example = torch.randn(2, 3, 16, 16)  # drawn before the RNG state is captured
    before = capture(model)
    report = lf.profile_model(model, example, counters=(counter,), device=device, mode=mode)
    result = report.counters[counter]
    # a counter that failed before touching anything would make every isolation row pass: it must have counted
    assert result.ok, f"{counter} did not count, so the isolation checks would prove nothing: {result.error}"
    assert result.macs > 0
    assert result.device == ("cpu" if device == "model" else "meta")  # fvcore traces convolutions on meta too
    return before, capture(model), model, report


OPTIONS = [(c, d, m) for c in COUNTERS for d in DEVICES for m in MODES]
IDS = [f"{c}-{d or 'auto'}-{m}" for c, d, m in OPTIONS]
parametrize_options = pytest.mark.parametrize(("counter", "device", "mode"), OPTIONS, ids=IDS)


@parametrize_options
def test_state_dict_keys_and_values_are_unchanged(counter: str, device: str | None, mode: str) -> None:
    before, after, _, _ = profiled(counter, device, mode)
    assert list(after["state_dict"]) == list(before["state_dict"])
    for key, value in before["state_dict"].items():
        assert torch.equal(after["state_dict"][key], value), key


@parametrize_options
def test_forward_hooks_and_pre_hooks_are_unchanged(counter: str, device: str | None, mode: str) -> None:
    before, after, _, _ = profiled(counter, device, mode)
    assert after["hooks"] == before["hooks"]
    assert after["hooks"][("head", "_forward_hooks")][0][1] is _forward_hook
    assert after["hooks"][("stem", "_forward_pre_hooks")][0][1] is _forward_pre_hook


@parametrize_options
def test_training_flags_are_unchanged_and_frozen_block_stays_eval(counter: str, device: str | None, mode: str) -> None:
    before, after, model, _ = profiled(counter, device, mode)
    assert after["training"] == before["training"]
    assert model.training and not model.frozen.training and not model.frozen[1].training


@parametrize_options
def test_requires_grad_is_unchanged(counter: str, device: str | None, mode: str) -> None:
    before, after, _, _ = profiled(counter, device, mode)
    assert after["requires_grad"] == before["requires_grad"]
    assert after["param_ids"] == before["param_ids"]


@parametrize_options
def test_cpu_rng_state_is_unchanged(counter: str, device: str | None, mode: str) -> None:
    before, after, _, _ = profiled(counter, device, mode)
    assert torch.equal(after["rng"], before["rng"])


@parametrize_options
def test_no_thop_buffers_remain(counter: str, device: str | None, mode: str) -> None:
    _, _, model, _ = profiled(counter, device, mode)
    for name, module in model.named_modules():
        assert not hasattr(module, "total_ops"), name
        assert not hasattr(module, "total_params"), name


@parametrize_options
def test_no_process_wide_module_hooks_are_left(counter: str, device: str | None, mode: str) -> None:
    before, after, _, _ = profiled(counter, device, mode)
    assert after["global_hooks"] == before["global_hooks"]


def test_in_place_counting_of_train_mode_batchnorm_would_change_running_stats() -> None:
    # Guards the isolation tests above: the train-mode forward does move the stats, so restoring them is real work.
    model = build_net()
    running_mean = model.stem[1].running_mean.clone()
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 16))
    assert not torch.equal(model.stem[1].running_mean, running_mean)


def test_in_place_train_mode_dropout_would_consume_the_rng() -> None:
    model = build_net()
    state = torch.get_rng_state()
    with torch.no_grad():
        model(torch.randn(2, 3, 16, 16))
    assert not torch.equal(torch.get_rng_state(), state)


def test_user_global_hook_survives_and_nothing_is_added() -> None:
    handle = nn.modules.module.register_module_forward_hook(_forward_hook)
    try:
        model = build_net()
        before = capture(model)["global_hooks"]
        report = lf.profile_model(model, torch.randn(2, 3, 16, 16), device="model", mode="train")
        assert all(r.ok and r.macs > 0 for r in report.counters.values())  # every counter ran with the hook there
        assert capture(model)["global_hooks"] == before
        assert _forward_hook in [h for _, h in before["_global_forward_hooks"]]
    finally:
        handle.remove()


class Exploding(nn.Module):
    """Runs a BatchNorm in train mode, then raises: counters fail mid-forward with their hooks installed."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.act(self.bn(self.conv(x)))
        raise RuntimeError("boom")


@pytest.mark.parametrize("counter", COUNTERS)
def test_model_is_restored_when_counting_in_place_raises(counter: str) -> None:
    model = Exploding().train()
    model.act.register_forward_hook(_forward_hook)
    before = capture(model)
    report = lf.profile_model(model, torch.randn(2, 3, 8, 8), counters=(counter,), device="model", mode="train")
    after = capture(model)
    assert not report.counters[counter].ok
    assert after["hooks"] == before["hooks"]
    assert after["global_hooks"] == before["global_hooks"]
    assert list(after["state_dict"]) == list(before["state_dict"])
    assert all(torch.equal(after["state_dict"][k], v) for k, v in before["state_dict"].items())
    assert not any(hasattr(m, "total_ops") for m in model.modules())


# --------------------------------------------------------------------------------------------------- memory
def test_meta_copy_parameters_and_buffers_are_on_meta() -> None:
    model = build_net()
    twin = meta_copy(model)
    assert all(p.is_meta for p in twin.parameters())
    assert all(b.is_meta for b in twin.buffers())
    assert not any(p.is_meta for p in model.parameters())


def test_meta_copy_shares_no_storage_with_the_model() -> None:
    model = build_net()
    twin = meta_copy(model)
    originals = {id(t) for t in (*model.parameters(), *model.buffers())}
    assert not originals & {id(t) for t in (*twin.parameters(), *twin.buffers())}


def test_meta_copy_never_copies_a_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    # Deep-copying any real tensor would go through Tensor.__deepcopy__ (Parameter's calls it too): forbid it.
    def refuse(self: torch.Tensor, memo: dict) -> torch.Tensor:
        raise AssertionError(f"a real tensor of shape {tuple(self.shape)} was copied")

    model = build_net()
    monkeypatch.setattr(torch.Tensor, "__deepcopy__", refuse)
    monkeypatch.setattr(nn.Parameter, "__deepcopy__", refuse)
    twin = meta_copy(model)
    assert len(list(twin.parameters())) == len(list(model.parameters()))


def test_meta_copy_keeps_shared_weights_shared_and_requires_grad() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight
    model[0].bias.requires_grad_(False)
    twin = meta_copy(model)
    assert twin[1].weight is twin[0].weight
    assert not twin[0].bias.requires_grad and twin[1].bias.requires_grad


def test_report_records_where_each_counter_counted() -> None:
    # every counter counts on a meta copy by default, fvcore's convolutions included (traced through the shim)
    report = lf.profile_model(build_net(), torch.randn(2, 3, 16, 16))
    assert {n: r.device for n, r in report.counters.items()} == {"thop": "meta", "fvcore": "meta", "torch": "meta"}
    in_place = lf.profile_model(build_net(), torch.randn(2, 3, 16, 16), device="model")
    assert {n: r.device for n, r in in_place.counters.items()} == {"thop": "cpu", "fvcore": "cpu", "torch": "cpu"}


def test_profiling_does_not_move_or_copy_the_model_parameters() -> None:
    model = build_net()
    pointers = [p.data_ptr() for p in model.parameters()]
    snapshot = copy.deepcopy(model.state_dict())
    lf.profile_model(model, torch.randn(2, 3, 16, 16))
    assert [p.data_ptr() for p in model.parameters()] == pointers
    assert all(torch.equal(model.state_dict()[k], v) for k, v in snapshot.items())


@pytest.mark.parametrize("device", [None, "model"])
def test_train_mode_runs_an_eval_mode_model_in_training_mode_and_restores_it(device: str | None) -> None:
    # fvcore counts BatchNorm differently in training mode: that makes the mode each counter ran in visible
    from examples.models import SmallCNN

    x = torch.randn(4, 3, 32, 32)

    def fvcore_macs(model: nn.Module, mode: str) -> int:
        return lf.profile_model(model, x, counters=("fvcore",), mode=mode, device=device).counters["fvcore"].macs

    model = SmallCNN().eval()
    assert fvcore_macs(SmallCNN().train(), "train") != fvcore_macs(SmallCNN().train(), "eval")
    assert fvcore_macs(model, "train") == fvcore_macs(SmallCNN().train(), "train")
    assert not any(m.training for m in model.modules())
