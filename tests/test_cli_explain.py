"""``lightning-flops explain``, ``diff``, ``statement`` and ``compare --format latex`` on real report files."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
import torch

import lightning_flops as lf
from lightning_flops.cli import main
from tests.test_explain import (
    BATCH,
    BLOCK_MACS,
    CH,
    CT_THOP_MACS,
    CT_TORCH_MACS,
    EINSUM_MACS,
    SIDE,
    TOKENS,
    WIDTH,
    Stack,
    Upsampler,
)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``up/`` (the einsum + transposed-conv model), ``small/`` and ``big/`` (a Stack without and with a block)."""
    root = tmp_path_factory.mktemp("runs")
    reports = {
        "up": lf.profile_model(Upsampler(), torch.randn(BATCH, CH, SIDE, SIDE), counters=("thop", "torch")),
        "small": lf.profile_model(Stack(extra=False), torch.randn(4, TOKENS, WIDTH), counters=("torch",)),
        "big": lf.profile_model(Stack(extra=True), torch.randn(4, TOKENS, WIDTH), counters=("torch",)),
    }
    for name, report in reports.items():
        (root / name).mkdir()
        (root / name / "flops_report.json").write_text(report.to_json())
    return root


def test_explain_csv_rows_are_exact_and_sum_to_the_difference(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "explain", str(runs / "up"), "--counter", "thop", "--format", "csv")
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    by_op = {row["operator"]: row for row in rows}
    assert by_op["einsum"]["cause"] == "uncounted" and int(by_op["einsum"]["macs"]) == -EINSUM_MACS
    assert by_op["conv"]["cause"] == "overcount" and int(by_op["conv"]["macs"]) == CT_THOP_MACS - CT_TORCH_MACS
    assert sum(int(row["macs"]) for row in rows) == CT_THOP_MACS - CT_TORCH_MACS - EINSUM_MACS


def test_explain_table_starts_with_the_summary_line(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "explain", str(runs / "up"))
    assert status == 0
    assert out.startswith("thop - torch = +") and "100% explained" in out.splitlines()[0]
    assert re.search(r"^mix\s+einsum\s+-", out, re.M) and re.search(r"^up\s+conv\s+\+", out, re.M)


def test_diff_json_has_one_added_block_row(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "diff", str(runs / "small"), str(runs / "big"), "--format", "json")
    assert status == 0
    data = json.loads(out)
    assert data["rows"] == [
        {"module": "blocks.2", "operator": "linear", "change": "added", "a_macs": None, "b_macs": BLOCK_MACS,
         "delta": BLOCK_MACS}
    ]  # fmt: skip
    assert data["total_change"] == BLOCK_MACS
    assert data["param_rows"] == [
        {"module": "blocks.2", "change": "added", "a_params": None, "b_params": WIDTH * WIDTH + WIDTH,
         "delta": WIDTH * WIDTH + WIDTH}
    ]  # fmt: skip


def test_diff_table_states_the_totals(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "diff", str(runs / "small"), str(runs / "big"))
    assert status == 0
    assert "params" in out.splitlines()[0] and f"(+{WIDTH * WIDTH + WIDTH:,})" in out.splitlines()[0]
    assert re.search(r"^blocks\.2\s+linear\s+added\s+-", out, re.M)
    assert re.search(rf"^blocks\.2\s+added\s+-\s+{WIDTH * WIDTH + WIDTH}\s+\+{WIDTH * WIDTH + WIDTH}$", out, re.M)


def test_statement_prints_the_exact_per_sample_macs(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "statement", str(runs / "up" / "flops_report.json"))
    per_sample = (EINSUM_MACS + CT_TORCH_MACS) // BATCH
    assert status == 0 and f"({per_sample:,} MACs)" in out and f"({2 * per_sample:,} FLOPs" in out
    assert f"float32 [{BATCH}, {CH}, {SIDE}, {SIDE}]" in out


def test_compare_latex_has_one_row_per_run_and_balanced_braces(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "compare", str(runs / "small"), str(runs / "big"), "--format", "latex")
    assert status == 0
    unescaped = re.sub(r"\\[{}]", "", out)
    assert unescaped.count("{") == unescaped.count("}")
    lines = out.strip().splitlines()
    assert lines[0].startswith(r"\begin{tabular}") and lines[-1] == r"\end{tabular}"
    body = lines[lines.index(r"\midrule") + 1 : lines.index(r"\bottomrule")]
    assert [line.split(" & ")[0] for line in body] == ["big", "small"]  # sorted by run name
    assert all(line.endswith(r"\\") for line in body)


@pytest.mark.parametrize("command", ["explain", "statement", "diff"])
def test_unreadable_input_exits_2_with_one_line_and_writes_nothing(
    tmp_path: Path, runs: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "flops_report.json"
    bad.write_text("{not json")
    args = [command, str(bad)] if command != "diff" else [command, str(runs / "small"), str(bad)]
    before = sorted(tmp_path.iterdir())
    status, out, err = run_cli(capsys, *args)
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1 and "not valid JSON" in err
    assert sorted(tmp_path.iterdir()) == before


def test_a_directory_with_two_reports_is_refused(
    runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (runs / "small" / "flops_report.json").read_text()
    (tmp_path / "flops_report.json").write_text(text)
    (tmp_path / "flops_report.1.json").write_text(text)
    status, out, err = run_cli(capsys, "statement", str(tmp_path))
    assert status == 2 and out == "" and "holds 2 reports" in err


def test_compare_has_part_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_parts_statement import BACKBONE_MACS, HEAD_MACS, IN, NECK_MACS, PARTS, Net

    report = lf.profile_model(Net(), torch.randn(4, IN), counters=("torch",), parts=PARTS)
    (tmp_path / "flops_report.json").write_text(report.to_json())
    status, out, _ = run_cli(capsys, "compare", str(tmp_path), "--format", "csv")
    row = next(csv.DictReader(io.StringIO(out)))
    assert status == 0
    assert int(row["part_visual_macs"]) == BACKBONE_MACS + NECK_MACS and int(row["part_decoder_macs"]) == HEAD_MACS
    assert int(row["part_decoder_params"]) == report.parts["decoder"].params.total
    status, out, _ = run_cli(capsys, "compare", str(tmp_path))
    assert "visual torch MACs" in out
