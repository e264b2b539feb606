"""Hostile reports and odd names on the command line (issue 18, points 9 and 10; issue 19, point 7): each bad file
exits 2 with one line on stderr, nothing on stdout and nothing written; names never split a row; a typo gets the
closest command; a model profiled alone diffs module by module against the same model inside a LightningModule."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import lightning_flops as lf
from lightning_flops.cli import main
from lightning_flops.report import CounterResult, FlopsReport, ParamCount

BATCH = 2


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def report_dict() -> dict[str, Any]:
    """A valid report: thop 10 MACs, torch 8 MACs for the whole call, per module and operator."""
    counters = {
        name: CounterResult(name, True, macs=macs, raw_macs=macs, module_operators={"": {"linear": macs}})
        for name, macs in (("thop", 10), ("torch", 8))
    }
    report = FlopsReport(model="Net", params=ParamCount(10, 10), counters=counters, batch_size=BATCH)
    return report.to_dict()


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def assert_one_line_exit_2(status: int, out: str, err: str, *needles: str) -> None:
    assert status == 2 and out == ""
    assert err.startswith("lightning-flops: error: ") and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def _deep() -> str:
    data = json.dumps(report_dict())
    return data[:-1] + ', "extra": ' + "[" * 100_000 + "]" * 100_000 + "}"


def _bad_calls() -> str:
    data = report_dict()
    data["counters"]["torch"]["uncounted"] = [{"operator": "einsum", "module": "", "calls": "x", "reason": "?"}]
    return json.dumps(data)


def _ok_without_macs() -> str:
    data = report_dict()
    data["counters"]["thop"]["macs"] = None
    return json.dumps(data)


def _nan_operators() -> str:
    data = report_dict()
    data["counters"]["thop"]["module_operators"][""]["linear"] = math.nan
    data["counters"]["thop"]["module_operators"]["fc"] = {"linear": math.inf}
    return json.dumps(data)  # Python writes NaN / Infinity, as a hand-edited file may hold


def _huge_operators() -> str:
    data = report_dict()
    data["counters"]["thop"]["module_operators"][""]["linear"] = 1e308  # two of them sum to inf
    data["counters"]["thop"]["module_operators"]["fc"] = {"linear": 1e308}
    return json.dumps(data)


HOSTILE = {
    "nested 100,000 deep": (_deep, "nested too deeply"),
    "calls not a number": (_bad_calls, "`counters.torch.uncounted[0].calls` must be an integer >= 0, got 'x'"),
    "ok without macs": (_ok_without_macs, "`counters.thop.macs` must be an integer >= 0 when `ok` is true"),
    "NaN operator count": (_nan_operators, "must be a finite number of magnitude at most 1e300, got nan"),
    "operator count near float's end": (_huge_operators, "must be a finite number of magnitude at most 1e300"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_report_exits_2_with_one_line_in_every_command(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make, message = HOSTILE[case]
    bad = write(tmp_path / "bad" / "flops_report.json", make())
    good = write(tmp_path / "good" / "flops_report.json", json.dumps(report_dict()))
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for command in (
        ["compare", str(bad)],
        ["explain", str(bad)],
        ["explain", str(bad), "--format", "json"],
        ["diff", str(bad), str(good)],
        ["diff", str(good), str(bad)],
        ["statement", str(bad)],
    ):
        assert_one_line_exit_2(*run_cli(capsys, *command), message)
    status, out, err = run_cli(capsys, "compare", str(bad), str(good), "--keep-going", "--format", "json")
    assert status == 1 and "Traceback" not in err and message in err
    assert [row["run"] for row in json.loads(out)["runs"]] == ["good"]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, nothing removed


def test_explain_json_of_a_good_report_is_strict_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path / "flops_report.json", json.dumps(report_dict()))
    status, out, _ = run_cli(capsys, "explain", str(good), "--format", "json")
    rows = json.loads(out, parse_constant=lambda name: pytest.fail(f"{name} in JSON output"))
    assert status == 0 and [(r["operator"], r["macs"]) for r in rows] == [("linear", 10 - 8)]  # thop - torch


# ----------------------------------------------------------------------------------------- names and output
def test_markdown_rows_and_headers_stay_one_line_whatever_the_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = report_dict()
    data["model"] = "Evil\n| x | y |\r\nNet"
    data["parts"] = {"vis\nual|x": {"modules": [""], "macs": {"torch": 8}, "params": {"total": 10, "trainable": 10}}}
    write(tmp_path / "a\nb" / "flops_report.json", json.dumps(data))
    write(tmp_path / "good" / "flops_report.json", json.dumps(report_dict()))
    status, out, _ = run_cli(capsys, "compare", str(tmp_path), "--format", "markdown")
    table = out.split("\n\n", 1)[1].rstrip("\n").split("\n")
    assert status == 0 and len(table) == 2 + 2  # header, rule, two runs
    cells = {len(line.replace("\\|", "").split("|")) for line in table}
    assert len(cells) == 1, table  # the same number of cells on every line
    assert "vis ual\\|x torch MACs" in table[0] and "Evil \\| x \\| y \\| Net" in out


def test_profile_target_that_prints_then_exits_leaves_stdout_empty(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    target = write(tmp_path / "noisy.py", 'print("hello from import")\nimport sys\nsys.exit(3)\n')
    status = main(["profile", f"{target}:Net", "--input", "1,4"])
    out, err = capfd.readouterr()
    assert status == 2 and out == ""
    assert "sys.exit(3)" in err and "hello from import" in err and len(err.strip().splitlines()) == 1


def test_profile_prints_of_the_target_go_to_stderr_beside_a_clean_report(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    code = "import torch\nprint('at import')\ndef make():\n    print('at build')\n    return torch.nn.Linear(4, 2)\n"
    target = write(tmp_path / "chatty.py", code)
    status = main(["profile", f"{target}:make", "--input", "1,4", "--counters", "torch"])
    out, err = capfd.readouterr()
    assert status == 0 and out.startswith("### Linear") and "at import" not in out and "at build" not in out
    assert "at import" in err and "at build" in err


# ------------------------------------------------------------------------------------------------ typos
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["statment", "run"], "invalid choice: 'statment'"),
        (["compare", "runs", "--format", "mardown"], "invalid choice: 'mardown'"),
    ],
)
def test_a_typo_gets_the_closest_choice_on_one_line(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(capsys, *argv)
    suggestion = "statement" if argv[0] == "statment" else "markdown"
    assert_one_line_exit_2(status, out, err.replace("lightning-flops compare:", "lightning-flops:"), expected)
    assert err.rstrip().endswith(f"did you mean `{suggestion}`?")


# ------------------------------------------------------------------------------------------ diff, aligned
class Inner(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
        self.fc = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


class Wrapper(nn.Module):  # as a LightningModule holds its network: `self.model`
    def __init__(self, width: int) -> None:
        super().__init__()
        self.model = Inner(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def test_diff_of_a_profile_and_a_wrapped_run_matches_modules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = torch.randn(BATCH, 3, 8, 8)
    alone = lf.profile_model(Inner(4), x, counters=("torch",))
    wrapped = lf.profile_model(Wrapper(8), x, counters=("torch",))
    write(tmp_path / "a.json", alone.to_json())
    write(tmp_path / "b.json", wrapped.to_json())
    status, out, _ = run_cli(capsys, "diff", str(tmp_path / "a.json"), str(tmp_path / "b.json"), "--format", "json")
    data = json.loads(out)
    assert status == 0
    assert {(r["module"], r["operator"], r["change"]) for r in data["rows"]} == {
        ("model.conv", "conv", "changed"),
        ("model.fc", "linear", "changed"),
    }
    conv = next(r for r in data["rows"] if r["module"] == "model.conv")
    assert (conv["a_macs"], conv["b_macs"]) == (4 * 3 * 9 * 6 * 6, 8 * 3 * 9 * 6 * 6)  # out*in*k*k*H'*W'
    assert sum(r["delta"] for r in data["rows"]) == data["total_change"]
    assert {r["change"] for r in data["param_rows"]} == {"changed"}
    assert any("named under `model`" in note for note in data["notes"])


def test_diff_of_unrelated_models_is_not_aligned() -> None:
    x = torch.randn(BATCH, 3, 8, 8)
    a = lf.profile_model(Inner(4), x, counters=("torch",))
    b = lf.profile_model(nn.Sequential(nn.Conv2d(3, 4, 3)), x, counters=("torch",))
    diff = lf.diff_reports(a, b)
    assert not diff.notes and {r.change for r in diff.rows} == {"added", "removed"}


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("prefill_macs", 10**400, "`prefill_macs` must be an int from 0 to 1e300"),  # OverflowError traceback before
        ("decode_macs", [10, 10**400], "`decode_macs` must be a list"),
        ("tokens", "x", "`tokens` must be null or an int"),
        ("params", [1], "`params` must be null or an int"),
        ("encoder_decoder", "yes", "`encoder_decoder` must be true or false"),
    ],
    ids=["huge-prefill", "huge-decode", "tokens", "params", "encoder-decoder"],
)
def test_hostile_generation_report_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], field: str, value: Any, needle: str
) -> None:
    data = {"report_type": "generation", "schema_version": 1, "model": "LM", "batch_size": 1, "prompt_tokens": 4,
            "new_tokens": 3, "prefill_macs": 100, "decode_macs": [10, 11], field: value}  # fmt: skip
    path = write(tmp_path / "run" / "flops_report.json", json.dumps(data))
    assert_one_line_exit_2(*run_cli(capsys, "compare", str(path)), needle)
