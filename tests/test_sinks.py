"""Sinks: metric keys and values from a hand-built report, and the JSON report file's naming and atomicity."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from lightning_flops.report import CounterResult, FlopsReport, Gap, ParamCount
from lightning_flops.sinks import metric_keys, metrics_from_report, write_report


def _report(train_step_flops: int | None = None) -> FlopsReport:
    return FlopsReport(
        model="Toy",
        params=ParamCount(total=1000, trainable=600),
        counters={
            "thop": CounterResult(name="thop", ok=True, macs=8 * 90),
            "torch": CounterResult(name="torch", ok=True, macs=8 * 100),
            "fvcore": CounterResult(name="fvcore", ok=False, error="RuntimeError: no"),
        },
        batch_size=8,
        gaps=(Gap("thop", "torch", relative=0.1, core_relative=0.05, flagged=True, module="a", operators=("einsum",)),),
        train_step_flops=train_step_flops,
    )


def test_metrics_are_per_sample_with_flops_twice_macs() -> None:
    metrics = metrics_from_report(_report())
    assert metrics["compute/torch/macs"] == 100  # 800 MACs over 8 samples
    assert metrics["compute/torch/flops"] == 2 * 100
    assert metrics["compute/thop/macs"] == 90


def test_failed_counter_has_no_metrics() -> None:
    assert not any("fvcore" in key for key in metrics_from_report(_report()))


def test_params_gaps_and_flag_are_metrics() -> None:
    metrics = metrics_from_report(_report(), prefix="cost")
    assert metrics["cost/params/total"] == 1000 and metrics["cost/params/trainable"] == 600
    assert metrics["cost/gap/thop_vs_torch"] == 0.1 and metrics["cost/core_gap/thop_vs_torch"] == 0.05
    assert metrics["cost/flagged"] == 1.0


def test_train_step_flops_metric_is_per_batch_and_only_when_counted() -> None:
    assert "compute/train_step/flops_per_batch" not in metrics_from_report(_report())
    assert metrics_from_report(_report(12_345))["compute/train_step/flops_per_batch"] == 12_345


def test_declared_keys_cover_every_metric_of_a_full_report() -> None:
    keys = metric_keys(("thop", "torch", "fvcore"), train_step=True)
    assert set(metrics_from_report(_report(1))) <= set(keys)
    # counters x units, params, pairs x (gap, core), flag, step, active params (all, per token), counters x per-token
    assert len(keys) == 3 * 2 + 2 + 3 * 2 + 1 + 1 + 2 + 3 * 2


def test_report_file_round_trips(tmp_path: Path) -> None:
    path = write_report(_report(), tmp_path)
    assert path == tmp_path / "flops_report.json"
    assert FlopsReport.from_json(path.read_text()) == _report()


def test_taken_report_name_gets_the_next_free_suffix(tmp_path: Path) -> None:
    (tmp_path / "flops_report.json").write_text("another run")
    (tmp_path / "flops_report.1.json").write_text("another run")
    path = write_report(_report(), tmp_path)
    assert path.name == "flops_report.2.json"
    assert (tmp_path / "flops_report.json").read_text() == "another run"


def test_no_temporary_file_is_left_behind(tmp_path: Path) -> None:
    write_report(_report(), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["flops_report.json"]


def test_concurrent_writers_never_share_a_name(tmp_path: Path) -> None:
    paths: list[Path] = []
    threads = [threading.Thread(target=lambda: paths.append(write_report(_report(), tmp_path))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(paths)) == 8
    assert all(json.loads(p.read_text())["model"] == "Toy" for p in paths)
