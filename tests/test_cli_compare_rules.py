"""``compare`` says which runs were counted under which custom rules, and its LaTeX table keeps parts, flags and
the digits that tell runs apart (issue 19, point 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_flops.cli import main
from lightning_flops.report import CounterResult, FlopsReport, Gap, ParamCount, PartCount

RULES = ("LayerNorm: 4 MACs per output element", "GELU: 8 MACs per output element")


def make(macs: int, rules: tuple[str, ...] = (), flagged: bool = False, part: int | None = None) -> FlopsReport:
    """A one-sample report with torch and thop at ``macs``, optional rules, flag and a ``visual`` part."""
    counters = {name: CounterResult(name, True, macs=macs, raw_macs=macs) for name in ("thop", "torch")}
    parts = {}
    if part is not None:
        parts["visual"] = PartCount(modules=("backbone",), macs={"torch": part}, params=ParamCount(5, 5))
    return FlopsReport(
        model="Net",
        params=ParamCount(10, 10),
        counters=counters,
        batch_size=1,
        rules=rules,
        gaps=(Gap("thop", "torch", 0.5, 0.5, True),) if flagged else (),
        parts=parts,
    )


def write_runs(root: Path, runs: dict[str, FlopsReport]) -> Path:
    for name, report in runs.items():
        (root / name).mkdir(parents=True)
        (root / name / "flops_report.json").write_text(report.to_json())
    return root


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    status = main(list(args))
    return status, capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_runs_under_different_rules_are_marked(tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_runs(tmp_path, {"plain": make(9_267_712), "ruled": make(9_891_072, RULES)})
    status, out = run_cli(capsys, "compare", str(root), "--format", fmt)
    assert status == 0
    lines = out.splitlines()
    header = next(line for line in lines if line.lstrip("| ").startswith("run "))
    plain = next(line for line in lines if line.lstrip("| ").startswith("plain "))
    ruled = next(line for line in lines if line.lstrip("| ").startswith("ruled "))
    assert " rules " in header and " none " in plain and " R1 " in ruled
    assert "different custom rules" in out
    assert "R1: custom rules GELU: 8 MACs per output element; LayerNorm: 4 MACs per output element" in out


def test_runs_under_the_same_rules_say_so_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_runs(tmp_path, {"a": make(100, RULES), "b": make(200, RULES)})
    status, out = run_cli(capsys, "compare", str(root))
    assert status == 0 and "different custom rules" not in out and " R1 " not in out
    assert out.rstrip().endswith(
        "Every run counted with custom rules GELU: 8 MACs per output element; LayerNorm: 4 MACs per output element"
    )


def test_csv_and_json_hold_each_runs_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_runs(tmp_path, {"plain": make(100), "ruled": make(120, RULES)})
    _, out = run_cli(capsys, "compare", str(root), "--format", "json")
    assert {row["run"]: row["rules"] for row in json.loads(out)["runs"]} == {"plain": [], "ruled": list(RULES)}
    _, out = run_cli(capsys, "compare", str(root), "--format", "csv")
    assert "; ".join(RULES) in out.splitlines()[2]


def test_latex_keeps_parts_flags_rules_and_distinct_digits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    runs = {
        "big": make(5_000_000_000, flagged=True, part=1_000_000_000),
        "s1": make(203_400_000, RULES, part=100_000_000),
        "s2": make(203_300_000, part=100_000_000),
        "s3": make(221_000_000, part=110_000_000),
    }
    status, out = run_cli(capsys, "compare", str(write_runs(tmp_path, runs)), "--format", "latex")
    lines = out.splitlines()
    header = lines[2]
    assert status == 0
    assert header.split(" & ")[-3:] == ["visual torch [GMACs]", "Flagged", r"Rules \\"]
    rows = {line.split(" & ")[0]: line.split(" & ") for line in lines[4:8]}
    # torch MACs per sample in GMACs: 0.2034 and 0.2033 need four decimals to stay apart (two gave 0.20 / 0.20)
    assert [rows[name][2] for name in ("big", "s1", "s2", "s3")] == ["5.0000", "0.2034", "0.2033", "0.2210"]
    assert [rows[name][-3] for name in ("big", "s1", "s3")] == ["1.000", "0.100", "0.110"]  # 3 significant digits
    assert [rows[name][-2] for name in ("big", "s1")] == ["yes", "no"]
    assert [rows[name][-1] for name in ("big", "s1")] == [r"-- \\", r"R1 \\"]
    assert r"\footnotesize R1: custom rules GELU: 8 MACs per output element" in out
    assert out.count("{") == out.count("}")
