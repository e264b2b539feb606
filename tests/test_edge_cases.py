"""Edge cases found in review: root-level modules, option types, bad checkpoint state, rebound parameters."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import lightning_flops as lf
from lightning_flops import FlopsMonitor
from lightning_flops.cli import main
from tests.lit_helpers import HIDDEN, IN_FEATURES, OUT_FEATURES, LinearStack, RandomDataModule, make_trainer


@pytest.mark.parametrize("counter", ["thop", "fvcore", "torch"])
def test_a_leaf_model_is_booked_under_the_root_name(counter: str) -> None:
    model = nn.Linear(8, 4, bias=False)
    result = lf.profile_model(model, torch.randn(3, 8), counters=(counter,)).counters[counter]
    assert set(result.by_module) <= {name for name, _ in model.named_modules()}
    assert result.by_module[""] == 3 * 8 * 4  # batch * in * out


def test_gap_on_a_leaf_model_names_the_root() -> None:
    report = lf.profile_model(nn.BatchNorm1d(8), torch.randn(4, 8), counters=("thop", "torch"), flag_on="total")
    (gap,) = report.gaps
    assert gap.flagged and gap.module == "" and gap.operators == ("norm",)


@pytest.mark.parametrize("strict", ["yes", 1, None])
def test_profile_model_rejects_a_strict_that_is_not_a_bool(strict: object) -> None:
    with pytest.raises(lf.FlopsConfigError, match=r"`strict` must be True or False"):
        lf.profile_model(nn.Linear(2, 2), torch.randn(1, 2), strict=strict)  # type: ignore[arg-type]


def test_a_checkpoint_with_an_old_or_unreadable_monitor_state_loads_and_is_ignored() -> None:
    monitor = FlopsMonitor()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monitor.load_state_dict({"report": {"not": "json text"}, "key": "x"})  # written before issue 18
    assert monitor.report is None  # every fit counts again
    assert monitor.state_dict() == {}  # nothing stored in new checkpoints


class _RebindsItsWeight(nn.Module):
    """A forward that swaps a parameter for a new one under the same name (a bad but real pattern)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.weight = nn.Parameter(self.weight.detach() * 2)
        return x @ self.weight


def test_a_parameter_rebound_during_counting_is_put_back() -> None:
    model = _RebindsItsWeight()
    original = model.weight
    lf.profile_model(model, torch.randn(2, 4), device="model")
    assert model.weight is original
    assert torch.equal(model.weight, torch.ones(4, 4))


def test_training_step_per_sample_uses_the_training_batch_not_a_fixed_example_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monitor = FlopsMonitor(counters=("torch",), example_input=torch.randn(1, IN_FEATURES))
    trainer = make_trainer(tmp_path, [monitor])
    trainer.fit(LinearStack(), RandomDataModule(batch_size=4))
    data = json.loads((Path(trainer.log_dir) / "flops_report.json").read_text())
    assert (data["batch_size"], data["train_step_batch_size"]) == (1, 4)
    forward = 4 * (IN_FEATURES * HIDDEN + HIDDEN * OUT_FEATURES)  # batch * (in*hidden + hidden*out)
    assert data["train_step_flops"] == 2 * (3 * forward - 4 * IN_FEATURES * HIDDEN)  # no first-layer input grad
    assert main(["compare", str(tmp_path), "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    (row,) = printed if isinstance(printed, list) else printed["runs"]
    assert row["train_step_flops_per_sample"] == data["train_step_flops"] // 4  # compare: per sample; JSON: per batch


def test_the_report_file_gets_the_mode_a_plain_open_would_give(tmp_path: Path) -> None:
    import os
    import stat

    from lightning_flops.sinks import write_report

    report = lf.profile_model(nn.Linear(2, 2), torch.randn(1, 2), counters=("torch",))
    mask = os.umask(0o022)
    try:
        path = write_report(report, tmp_path)
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's 0600: others may read the log dir


def test_writing_reports_never_changes_the_process_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import stat

    from lightning_flops.sinks import write_report

    report = lf.profile_model(nn.Linear(2, 2), torch.randn(1, 2), counters=("torch",))
    mask = os.umask(0o027)
    calls: list[int] = []
    try:
        monkeypatch.setattr(os, "umask", lambda value: calls.append(value) or 0)  # another thread would see it
        path = write_report(report, tmp_path)
        cli = ["profile", "examples.models:SmallCNN", "--input", "1,3,8,8", "--counters", "torch"]
        assert main([*cli, "--json", str(tmp_path / "cli.json")]) == 0
    finally:
        monkeypatch.undo()
        os.umask(mask)
    assert calls == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # 0o666 less the umask, applied by the system
    assert stat.S_IMODE((tmp_path / "cli.json").stat().st_mode) == 0o640
