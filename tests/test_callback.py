"""FlopsMonitor in a real ``Trainer.fit``: what lands in TensorBoard, CSV and the JSON report, and that training is
unchanged."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lit_helpers import (
    HIDDEN,
    IN_FEATURES,
    OUT_FEATURES,
    LinearStack,
    RandomDataModule,
    find_event_dirs,
    linear_stack_macs,
    linear_stack_params,
    make_trainer,
    read_scalars,
)

import lightning_flops.callback as callback_module
from examples.lit_models import LitSmallCNN, SyntheticImages
from examples.models import small_cnn_macs
from lightning_flops import FlopsMonitor

COUNTERS = ("thop", "fvcore", "torch")
BATCH = 4  # RandomDataModule's default batch size


def _keys(prefix: str = "compute") -> set[str]:
    keys = {f"{prefix}/{c}/{unit}" for c in COUNTERS for unit in ("macs", "flops")}
    keys |= {f"{prefix}/params/total", f"{prefix}/params/trainable", f"{prefix}/flagged"}
    for pair in ("thop_vs_fvcore", "thop_vs_torch", "fvcore_vs_torch"):
        keys |= {f"{prefix}/gap/{pair}", f"{prefix}/core_gap/{pair}"}
    return keys | {f"{prefix}/train_step/flops_per_batch"}


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One fit of LinearStack with the default FlopsMonitor; returns the TensorBoard log dir."""
    root = tmp_path_factory.mktemp("fit")
    trainer = make_trainer(root, [FlopsMonitor()])
    trainer.fit(LinearStack(), RandomDataModule())
    return Path(trainer.log_dir)


def test_event_files_hold_every_metric_key(fitted: Path) -> None:
    assert _keys() <= set(read_scalars(fitted))


@pytest.mark.parametrize("counter", COUNTERS)
def test_logged_flops_are_twice_the_logged_macs(fitted: Path, counter: str) -> None:
    scalars = read_scalars(fitted)
    assert scalars[f"compute/{counter}/macs"] > 0  # else 0 == 2 * 0 would pass
    assert scalars[f"compute/{counter}/flops"] == 2 * scalars[f"compute/{counter}/macs"]


def test_logged_torch_macs_per_sample_equal_the_analytic_count(fitted: Path) -> None:
    assert read_scalars(fitted)["compute/torch/macs"] == IN_FEATURES * HIDDEN + HIDDEN * OUT_FEATURES  # per sample


def test_logged_params_are_the_model_parameters(fitted: Path) -> None:
    scalars = read_scalars(fitted)
    expected = IN_FEATURES * HIDDEN + HIDDEN + HIDDEN * OUT_FEATURES + OUT_FEATURES  # weights + biases
    assert scalars["compute/params/total"] == expected
    assert scalars["compute/params/trainable"] == expected


def test_json_report_holds_exact_whole_batch_integers(fitted: Path) -> None:
    data = json.loads((fitted / "flops_report.json").read_text())
    assert data["batch_size"] == BATCH
    assert data["counters"]["torch"]["macs"] == BATCH * (IN_FEATURES * HIDDEN + HIDDEN * OUT_FEATURES)
    params = linear_stack_params()
    assert data["params"] == {"total": params, "trainable": params, "active": params, "active_per_token": params}
    assert data["logger"] == {"name": "lightning_logs", "version": "0"}


def test_json_report_holds_training_step_flops(fitted: Path) -> None:
    data = json.loads((fitted / "flops_report.json").read_text())
    # forward, weight gradients (same MACs as forward) and the hidden layer's input gradient; x needs no gradient
    macs = 3 * linear_stack_macs(BATCH) - BATCH * IN_FEATURES * HIDDEN
    assert data["train_step_flops"] == 2 * macs


def test_report_markdown_is_tensorboard_text(fitted: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(fitted))
    accumulator.Reload()
    assert "compute/report/text_summary" in accumulator.Tags()["tensors"]
    text = accumulator.Tensors("compute/report/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| MACs |" in text and "LinearStack" in text


def test_prefix_renames_every_key(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [FlopsMonitor(prefix="cost")])
    trainer.fit(LinearStack(), RandomDataModule())
    scalars = read_scalars(Path(trainer.log_dir))
    assert _keys("cost") <= set(scalars)
    assert not any(key.startswith("compute/") for key in scalars)


def test_csv_logger_run_has_every_key_in_metrics_csv(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [FlopsMonitor()], logger=CSVLogger(str(tmp_path)))
    trainer.fit(LinearStack(), RandomDataModule())
    with open(Path(trainer.log_dir) / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert _keys() <= set(rows[0])
    row = next(r for r in rows if r["compute/torch/macs"])
    assert float(row["compute/torch/macs"]) == IN_FEATURES * HIDDEN + HIDDEN * OUT_FEATURES


def test_run_without_logger_writes_the_json_in_default_root_dir(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [FlopsMonitor()], logger=False)
    trainer.fit(LinearStack(), RandomDataModule())
    data = json.loads((tmp_path / "flops_report.json").read_text())
    assert data["counters"]["torch"]["macs"] == linear_stack_macs(BATCH)
    assert data["logger"] is None


def test_second_run_in_the_same_dir_gets_a_numbered_report(tmp_path: Path) -> None:
    for _ in range(2):
        make_trainer(tmp_path, [FlopsMonitor()], logger=False).fit(LinearStack(), RandomDataModule())
    assert sorted(p.name for p in tmp_path.glob("flops_report*.json")) == ["flops_report.1.json", "flops_report.json"]


def _fit_state(tmp_path: Path, with_monitor: bool, module_cls: type, datamodule_cls: type) -> tuple[dict, dict]:
    seed_everything(7, workers=True)
    trainer = make_trainer(tmp_path, [FlopsMonitor()] if with_monitor else [], max_steps=3, logger=False)
    module = module_cls()
    trainer.fit(module, datamodule_cls())
    return module.state_dict(), trainer.optimizers[0].state_dict()


@pytest.mark.parametrize(
    ("module_cls", "datamodule_cls"), [(LinearStack, RandomDataModule), (LitSmallCNN, SyntheticImages)]
)
def test_fit_with_monitor_gives_bit_identical_weights_and_optimizer_state(
    tmp_path: Path, module_cls: type, datamodule_cls: type
) -> None:
    weights_a, optim_a = _fit_state(tmp_path / "with", True, module_cls, datamodule_cls)
    weights_b, optim_b = _fit_state(tmp_path / "without", False, module_cls, datamodule_cls)
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:  # BatchNorm running stats and num_batches_tracked included
        assert torch.equal(weights_a[name], weights_b[name]), name
    assert optim_a["param_groups"] == optim_b["param_groups"]
    for index, state in optim_a["state"].items():
        assert torch.equal(state["momentum_buffer"], optim_b["state"][index]["momentum_buffer"])


def test_small_cnn_fit_logs_the_analytic_macs(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [FlopsMonitor(counters=("torch",))])
    trainer.fit(LitSmallCNN(), SyntheticImages(batch_size=2))
    data = json.loads((Path(trainer.log_dir) / "flops_report.json").read_text())
    assert data["counters"]["torch"]["macs"] == small_cnn_macs(2)  # conv1 + conv2 + fc, see small_cnn_macs


def test_profiles_once_on_the_first_training_batch_not_the_sanity_check(tmp_path: Path) -> None:
    stages: list[str] = []
    trainer = make_trainer(tmp_path, limit_val_batches=2, num_sanity_val_steps=2, max_steps=3)
    monitor = FlopsMonitor(counters=("torch",), input_fn=lambda batch: stages.append(trainer.state.stage) or batch[0])
    trainer.callbacks.append(monitor)
    trainer.fit(LinearStack(), RandomDataModule())
    # one call for the profile and one for the training-step count, both on the first training batch
    assert stages == ["train", "train"]


def test_hooks_do_not_profile_after_the_first_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = callback_module.profile_model
    monkeypatch.setattr(callback_module, "profile_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    make_trainer(tmp_path, [FlopsMonitor(counters=("torch",))], max_steps=4).fit(LinearStack(), RandomDataModule())
    assert len(calls) == 1


@pytest.mark.parametrize("entry", ["validate", "test", "predict"])
def test_evaluation_only_run_profiles_its_first_batch(tmp_path: Path, entry: str) -> None:
    trainer = make_trainer(tmp_path, [FlopsMonitor(counters=("torch",))], limit_val_batches=2, limit_test_batches=2)
    getattr(trainer, entry)(LinearStack(), RandomDataModule())
    data = json.loads((Path(trainer.log_dir) / "flops_report.json").read_text())
    assert data["counters"]["torch"]["macs"] == linear_stack_macs(BATCH)
    assert data["train_step_flops"] is None  # only a training batch has a training step


def test_resumed_fit_counts_again_and_logs_into_the_new_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    first = make_trainer(tmp_path, [FlopsMonitor(), checkpoint], enable_checkpointing=True)
    first.fit(LinearStack(), RandomDataModule())
    calls = []
    real = callback_module.profile_model
    monkeypatch.setattr(callback_module, "profile_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    second = make_trainer(tmp_path, [FlopsMonitor()], max_steps=4, logger=TensorBoardLogger(str(tmp_path / "resumed")))
    second.fit(LinearStack(), RandomDataModule(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert calls == [1]  # a stored report is never reused (issue 18, point 7)
    scalars = read_scalars(find_event_dirs(tmp_path / "resumed")[0])
    assert _keys() <= set(scalars)
    assert scalars["compute/torch/macs"] == IN_FEATURES * HIDDEN + HIDDEN * OUT_FEATURES
    assert (Path(second.log_dir) / "flops_report.json").exists()
