"""Bad input to the command line: every case exits 2 with one ``lightning-flops: error:`` line, no traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from lightning_flops.cli import main
from lightning_flops.report import CounterResult, FlopsReport, Gap, ParamCount

BATCH = 2


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def report_dict(**fields: Any) -> dict[str, Any]:
    """A valid report as JSON data (thop and torch both 8 MACs for the whole call), with ``fields`` replaced."""
    counters = {name: CounterResult(name, True, macs=8, raw_macs=8) for name in ("thop", "torch")}
    report = FlopsReport(
        model="Net",
        params=ParamCount(10, 10),
        counters=counters,
        batch_size=BATCH,
        gaps=(Gap("thop", "torch", 0.0, 0.0, False),),
    )
    data = report.to_dict()
    data.update(fields)
    return data


def write(path: Path, data: dict[str, Any] | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def assert_one_error_line(status: int, out: str, err: str, *needles: str) -> None:
    assert status == 2
    assert out == ""
    assert err.startswith("lightning-flops: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in err


# ------------------------------------------------------------------------------------------- report contents
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("model", 123, "`model` must be a string, got 123"),
        ("logger", "x", "`logger` must be an object, got 'x'"),
        ("train_step_batch_size", "x", "`train_step_batch_size` must be an integer >= 0, got 'x'"),
        ("flag_on", 5, "`flag_on` must be one of 'core', 'total', got 5"),
        ("mode", ["eval"], "`mode` must be one of 'eval', 'train', got ['eval']"),
    ],
)
def test_a_field_of_the_wrong_type_is_refused_naming_it(
    tmp_path: Path, field: str, value: Any, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path / "bad" / "flops_report.json", report_dict(**{field: value}))
    write(tmp_path / "good" / "flops_report.json", report_dict())
    assert_one_error_line(*run_cli(capsys, "compare", str(tmp_path)), str(bad), message)
    status, out, err = run_cli(capsys, "compare", str(tmp_path), "--format", "json", "--keep-going")
    assert status == 1 and "Traceback" not in err and f"skipped {bad}: malformed report: {message}" in err
    assert [row["run"] for row in json.loads(out)["runs"]] == ["good"]


def test_a_count_too_large_for_a_float_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = report_dict()
    data["counters"]["torch"]["macs"] = 10**400
    write(tmp_path / "flops_report.json", data)
    assert_one_error_line(*run_cli(capsys, "compare", str(tmp_path)), "`counters.torch.macs` must be at most 1e300")


def test_an_integer_beyond_the_json_digit_limit_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = json.dumps(report_dict()).replace('"macs": 8', '"macs": ' + "9" * 5000, 1)
    write(tmp_path / "flops_report.json", text)
    assert_one_error_line(*run_cli(capsys, "compare", str(tmp_path)), "not valid JSON", "5000 digits")


def test_plot_of_a_count_beyond_int64_is_drawn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    data = report_dict()
    data["counters"]["torch"]["macs"] = 10**40
    write(tmp_path / "run" / "flops_report.json", data)
    png = tmp_path / "out.png"
    status, _, err = run_cli(capsys, "compare", str(tmp_path / "run"), "--plot", str(png), "--log-scale")
    assert status == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_nan_gap_prints_n_a_and_json_null(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = report_dict()
    data["gaps"][0].update(relative=float("nan"), core_relative=float("nan"))
    write(tmp_path / "run" / "flops_report.json", data)  # json.dumps writes the bare NaN Python's json reads back
    status, out, _ = run_cli(capsys, "compare", str(tmp_path))
    assert status == 0 and "thop_vs_torch n/a (core)" in out and "nan" not in out.lower().replace("n/a", "")
    status, out, _ = run_cli(capsys, "compare", str(tmp_path), "--format", "json")
    assert status == 0 and "NaN" not in out
    row = json.loads(out, parse_constant=lambda name: pytest.fail(f"invalid JSON constant {name}"))["runs"][0]
    assert row["largest_gap"] == "thop_vs_torch" and row["largest_gap_relative"] is None


# ------------------------------------------------------------------------------------------------ paths
def unwritable_directory(tmp_path: Path) -> Path:
    """A directory this process cannot create files in (``/sys`` when running as root ignores the mode bits)."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o500)
    return folder if not os.access(folder, os.W_OK) else Path("/sys")


def test_plot_into_an_unwritable_directory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    write(tmp_path / "run" / "flops_report.json", report_dict())
    target = unwritable_directory(tmp_path) / "plot.png"
    result = run_cli(capsys, "compare", str(tmp_path / "run"), "--plot", str(target))
    assert_one_error_line(*result, str(target.parent))
    assert not target.exists()


def test_profile_json_into_an_unwritable_directory_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = unwritable_directory(tmp_path) / "r.json"
    result = run_cli(capsys, "profile", "examples.models:SmallCNN", "--input", "1,3,8,8", "--json", str(target))
    assert_one_error_line(*result, str(target.parent))


@pytest.mark.parametrize("kind", ["fifo", "devnull"])
def test_a_fifo_or_device_is_named_as_such(tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]) -> None:
    if kind == "fifo":
        path = tmp_path / "flops_report.json"
        os.mkfifo(path)
    else:
        path = Path(os.devnull)
    status, out, err = run_cli(capsys, "compare", str(path))
    assert_one_error_line(status, out, err, str(path), "FIFO" if kind == "fifo" else "a device")
    assert "no such file" not in err


@pytest.mark.parametrize("kind", ["directory", "dangling symlink"])
def test_a_non_file_named_like_a_report_is_an_error(
    tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    odd = tmp_path / "odd" / "flops_report.json"
    odd.parent.mkdir()
    if kind == "directory":
        odd.mkdir()
    else:
        odd.symlink_to(tmp_path / "gone.json")
    write(tmp_path / "good" / "flops_report.json", report_dict())
    expected = "a directory" if kind == "directory" else "a broken symbolic link"
    assert_one_error_line(*run_cli(capsys, "compare", str(tmp_path)), f"{odd}: named like a report but is {expected}")
    status, _, err = run_cli(capsys, "compare", str(tmp_path), "--keep-going")
    assert status == 1 and f"skipped {odd}" in err


def test_keep_going_is_suggested_only_when_another_run_can_be_compared(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "bad" / "flops_report.json", "{not json")
    status, out, err = run_cli(capsys, "compare", str(tmp_path))
    assert_one_error_line(status, out, err, "no readable reports")
    assert "--keep-going" not in err
    write(tmp_path / "good" / "flops_report.json", report_dict())
    status, out, err = run_cli(capsys, "compare", str(tmp_path))
    assert_one_error_line(status, out, err, "pass --keep-going")


# ------------------------------------------------------------------------------------------------ profile
def test_an_input_beyond_int64_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "profile", "examples.models:SmallCNN", "--input=99999999999999999999,3")
    assert_one_error_line(*result, "'99999999999999999999,3' has more than 2**63 - 1 elements")


def test_an_input_too_large_to_allocate_asks_for_meta(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_cli(capsys, "profile", "examples.models:SmallCNN", "--input=100000,100000")
    assert_one_error_line(*result, "10,000,000,000 elements", "pass --device meta")
    source = tmp_path / "wide.py"
    source.write_text("from torch import nn\n\n\ndef build():\n    return nn.Linear(100000, 2)\n")
    out_json = tmp_path / "r.json"
    status, _, err = run_cli(
        capsys, "profile", f"{source}:build", "--input=100000,100000", "--device", "meta", "--counters", "torch",
        "--json", str(out_json),
    )  # fmt: skip
    assert status == 0, err
    assert json.loads(out_json.read_text())["counters"]["torch"]["macs"] == 100000 * 100000 * 2  # batch * in * out


def test_a_target_that_exits_0_at_import_is_not_a_success(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "quits.py"
    source.write_text("import sys\n\nsys.exit(0)\n")
    result = run_cli(capsys, "profile", f"{source}:build", "--input", "1,2")
    assert_one_error_line(*result, f"importing {source} called sys.exit(0)")


def test_argparse_at_import_is_reported_as_coming_from_the_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "script.py"
    source.write_text(
        "import argparse\n\nparser = argparse.ArgumentParser()\nparser.add_argument('--data', required=True)\n"
        "parser.parse_args()\n"
    )
    status, out, err = run_cli(capsys, "profile", f"{source}:build", "--input", "1,2")
    assert_one_error_line(status, out, err, f"importing {source} called sys.exit(2)", "required: --data")
    assert len(err.strip().splitlines()) == 1  # the target's own usage text is folded into our one line


# ------------------------------------------------------------------------------------------------ odd names
def test_names_with_pipes_newlines_and_html_stay_in_their_cell(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "run" / "flops_report.json", report_dict(model="A|b\n<script>alert(1)</script>"))
    status, out, _ = run_cli(capsys, "compare", str(tmp_path), "--format", "markdown")
    assert status == 0 and "<script>" not in out
    header, _, row = (line for line in out.splitlines() if line.startswith("|"))
    assert row.split(" | ")[1] == "A\\|b &lt;script&gt;alert(1)&lt;/script&gt;"  # one cell, one line
    assert row.replace("\\|", "").count("|") == header.count("|")  # the escaped pipe adds no column
    status, out, _ = run_cli(capsys, "compare", str(tmp_path))
    assert status == 0 and len(out.strip().splitlines()) == 5  # caption, blank, header, rule and one row
