"""FlopsReport: JSON round-trip with every field, reading without torch, schema checks, Markdown, per-sample values."""

from __future__ import annotations

import dataclasses
import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import lightning_flops as lf
from examples.models import SmallCNN, TinyAttention, small_cnn_macs
from lightning_flops.report import SCHEMA_VERSION, human_count

BATCH = 4


def layer_norm_rule(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    return 4 * output.numel()


@functools.cache
def full_report() -> lf.FlopsReport:
    """A report with every field set: a flagged gap, a rule, train-step FLOPs, a logger."""
    torch.manual_seed(0)
    report = lf.profile_model(
        TinyAttention(), torch.randint(0, 100, (BATCH, 16)), custom_ops={nn.LayerNorm: layer_norm_rule}
    )
    return dataclasses.replace(report, train_step_flops=123_456_789, logger={"name": "lightning_logs", "version": "3"})


@functools.cache
def cnn_report() -> lf.FlopsReport:
    torch.manual_seed(0)
    return lf.profile_model(SmallCNN(), torch.randn(BATCH, 3, 32, 32))


def test_json_round_trip_is_equal() -> None:
    report = full_report()
    assert lf.FlopsReport.from_json(report.to_json()) == report


def test_json_round_trip_keeps_a_failed_counter() -> None:
    class DictLike(nn.Module):
        def forward(self, x: torch.Tensor) -> set:
            return {x.sum().item()}  # neither fvcore nor a meta copy can take this

    report = lf.profile_model(DictLike(), torch.randn(2, 3))
    assert not report.counters["fvcore"].ok
    assert lf.FlopsReport.from_json(report.to_json()) == report


def test_json_holds_every_design_field() -> None:
    data = json.loads(full_report().to_json())
    assert data["schema_version"] == SCHEMA_VERSION
    assert data["model"] == "TinyAttention"
    assert data["inputs"] == [{"name": "0", "shape": [BATCH, 16], "dtype": "int64"}]
    assert data["mode"] == "eval"
    assert data["batch_size"] == BATCH
    assert data["params"]["total"] == sum(p.numel() for p in TinyAttention().parameters())
    assert {n: c["device"] for n, c in data["counters"].items()} == {"thop": "meta", "fvcore": "meta", "torch": "meta"}
    assert {"torch", "thop", "thop_variant", "fvcore", "lightning", "lightning_flops"} <= set(data["versions"])
    assert data["rules"] == ["LayerNorm: layer_norm_rule"]
    assert data["train_step_flops"] == 123_456_789
    assert data["logger"] == {"name": "lightning_logs", "version": "3"}
    assert len(data["fingerprint"]) == 16
    assert [g["key"] for g in data["gaps"]] == ["thop_vs_fvcore", "thop_vs_torch", "fvcore_vs_torch"]


def test_json_counts_are_exact_whole_call_integers_with_flops_twice_macs() -> None:
    entry = json.loads(cnn_report().to_json())["counters"]["torch"]
    assert entry["macs"] == small_cnn_macs(BATCH)
    assert isinstance(entry["macs"], int)
    assert entry["flops"] == 2 * small_cnn_macs(BATCH)
    assert entry["macs_per_sample"] == small_cnn_macs(1)
    assert entry["flops_per_sample"] == 2 * small_cnn_macs(1)


def test_report_is_read_without_importing_torch(tmp_path: Path) -> None:
    path = tmp_path / "flops_report.json"
    path.write_text(full_report().to_json())
    code = (
        "import sys, pathlib\n"
        "from lightning_flops.report import FlopsReport\n"
        "import lightning_flops as lf\n"
        f"r = FlopsReport.from_json(pathlib.Path({str(path)!r}).read_text())\n"
        "assert lf.FlopsReport is FlopsReport\n"
        "print(r.counters['torch'].macs, r.macs_per_sample('torch'), len(r.to_markdown()) > 0)\n"
        "heavy = [m for m in ('torch', 'thop', 'fvcore', 'lightning') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    macs = full_report().counters["torch"].macs
    assert done.stdout.split() == [str(macs), str(macs / BATCH), "True"]


def test_newer_schema_version_is_refused() -> None:
    data = json.loads(full_report().to_json())
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(lf.ReportFormatError, match="newer"):
        lf.FlopsReport.from_json(json.dumps(data))


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"model": "x"}', '{"schema_version": 1}'])
def test_malformed_report_raises_report_format_error(text: str) -> None:
    with pytest.raises(lf.ReportFormatError):
        lf.FlopsReport.from_json(text)


def test_markdown_has_a_column_per_counter() -> None:
    header = cnn_report().to_markdown().splitlines()[2]
    assert header == "| | thop | fvcore | torch |"


def test_markdown_shows_per_sample_macs_and_flops_in_human_units() -> None:
    lines = cnn_report().to_markdown().splitlines()
    macs_row = next(line for line in lines if line.startswith("| MACs |"))
    flops_row = next(line for line in lines if line.startswith("| FLOPs (2 x MACs) |"))
    # torch per sample: small_cnn_macs(1) = 1,622,336 MACs
    assert macs_row.endswith(f"| {small_cnn_macs(1) / 1e6:.2f} MMACs |")
    assert flops_row.endswith(f"| {2 * small_cnn_macs(1) / 1e6:.2f} MFLOPs |")
    assert "per sample" in lines[0]


def test_markdown_lists_gaps_and_failed_counters() -> None:
    text = full_report().to_markdown()
    for key in ("thop_vs_fvcore", "thop_vs_torch", "fvcore_vs_torch"):
        assert f"| {key} |" in text

    class Failing(nn.Module):
        def forward(self, x: torch.Tensor) -> set:
            return {x.sum().item()}

    failed = lf.profile_model(Failing(), torch.randn(2, 3), counters=("fvcore", "torch")).to_markdown()
    assert "| MACs | failed |" in failed
    assert "- fvcore: " in failed


@pytest.mark.parametrize(
    ("value", "unit", "text"),
    [
        (4.11e9, "MACs", "4.11 GMACs"),
        (1_622_336, "MACs", "1.62 MMACs"),
        (2.5e12, "FLOPs", "2.50 TFLOPs"),
        (1500, "MACs", "1.50 kMACs"),
        (640, "MACs", "640 MACs"),
        (None, "MACs", "-"),
    ],
)
def test_human_count_uses_explicit_unit_prefixes(value: float | None, unit: str, text: str) -> None:
    assert human_count(value, unit) == text


def test_per_sample_numbers_divide_by_batch_size() -> None:
    report = cnn_report()
    assert report.batch_size == BATCH
    assert report.counters["torch"].macs == small_cnn_macs(BATCH)
    assert report.macs_per_sample("torch") == small_cnn_macs(1)
    assert report.flops_per_sample("torch") == 2 * small_cnn_macs(1)
    assert report.macs_per_sample("not-a-counter") is None


def test_explicit_batch_size_overrides_detection() -> None:
    # sequence-first input: dim 0 is time, the real batch is 4
    report = lf.profile_model(nn.Linear(8, 8), torch.randn(10, 4, 8), counters=("torch",), batch_size=4)
    assert report.batch_size == 4
    assert report.macs_per_sample("torch") == 10 * 8 * 8  # seq * in * out per sample


def test_human_count_without_a_unit_has_no_trailing_space() -> None:
    # the parameter line reads "(212)" for a small model, as "(1.23 k)" for a larger one
    assert human_count(212, "") == "212"
    assert human_count(1234, "") == "1.23 k"
    assert human_count(212, "MACs") == "212 MACs"
