"""``compare --metric NAME [--metric-mode] [--plot]``: compute against quality, the metric read from each run's own
logger files (issue 19, "compute against quality")."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_flops.cli import main
from lightning_flops.cli._metrics import lower_is_better, pareto_front
from lightning_flops.report import CounterResult, FlopsReport, ParamCount


def write_run(directory: Path, macs: int) -> Path:
    """A one-sample report with torch at ``macs`` in ``directory``."""
    directory.mkdir(parents=True)
    report = FlopsReport(
        model="Net",
        params=ParamCount(10, 10),
        counters={"torch": CounterResult("torch", True, macs=macs, raw_macs=macs)},
        batch_size=1,
    )
    (directory / "flops_report.json").write_text(report.to_json())
    return directory


def write_tensorboard(directory: Path, series: dict[str, list[tuple[int, float]]]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(directory))
    for tag, points in series.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()


def write_csv(directory: Path) -> None:
    """What Lightning's CSVLogger writes: one row per logging call, blanks for the metrics not logged then."""
    (directory / "metrics.csv").write_text(
        "epoch,step,train_loss,val_acc\n0,0,2.0,\n0,9,1.5,\n0,9,,0.25\n1,19,1.0,\n1,19,,0.75\n2,29,,0.5\n"
    )


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    write_tensorboard(write_run(tmp_path / "small", 1_000), {"val_acc": [(0, 0.3), (10, 0.6), (20, 0.5)]})
    write_tensorboard(write_run(tmp_path / "big", 4_000), {"val_acc": [(0, 0.4), (10, 0.9), (20, 0.8)]})
    write_csv(write_run(tmp_path / "mid", 2_000))
    write_run(tmp_path / "none", 3_000)  # no logger files: no value, not an error
    return tmp_path


def compare(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["compare", *args])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("last", {"small": 0.5, "big": 0.8, "mid": 0.5, "none": None}),  # the value at the largest step
        ("max", {"small": 0.6, "big": 0.9, "mid": 0.75, "none": None}),
        ("min", {"small": 0.3, "big": 0.4, "mid": 0.25, "none": None}),
    ],
)
def test_metric_column_from_event_files_and_metrics_csv(
    runs: Path, mode: str, expected: dict[str, float | None], capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = compare(capsys, str(runs), "--metric", "val_acc", "--metric-mode", mode, "--format", "json")
    values = {row["run"]: row["val_acc"] for row in json.loads(out)["runs"]}
    assert status == 0
    assert values == pytest.approx(expected)  # TensorBoard stores float32


def test_metric_column_in_the_table_sits_beside_the_macs(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = compare(capsys, str(runs), "--metric", "val_acc", "--metric-mode", "max", "--sort", "val_acc")
    header, _, *lines = out.split("\n\n", 1)[1].splitlines()
    assert status == 0 and "torch MACs  val_acc (max)" in header
    assert [line.split()[0] for line in lines] == [
        "small",
        "mid",
        "big",
        "none",
    ]  # by the metric (0.6, 0.75, 0.9), none last


def test_latex_table_has_the_metric_column(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = compare(capsys, str(runs), "--metric", "val_acc", "--metric-mode", "max", "--format", "latex")
    lines = out.splitlines()
    assert status == 0
    header = lines[2].split(" & ")
    assert header[-2:] == ["val\\_acc", r"Flagged \\"]
    rows = {line.split(" & ")[0]: line.split(" & ") for line in lines[4:8]}
    assert {name: row[-2] for name, row in rows.items()} == {"big": "0.9", "mid": "0.75", "none": "--", "small": "0.6"}


def test_unknown_metric_exits_2_naming_the_metrics_found(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = compare(capsys, str(runs), "--metric", "val_accuracy", "--plot", str(runs / "q.png"))
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "no run logged 'val_accuracy'; metrics found: train_loss, val_acc; did you mean `val_acc`?" in err
    assert not (runs / "q.png").exists()


def test_metric_mode_needs_a_metric(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = compare(capsys, str(runs), "--metric-mode", "max")
    assert status == 2 and "`--metric-mode` needs `--metric NAME`" in err


def test_quality_plot_is_written(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    status, _, err = compare(capsys, str(runs), "--metric", "val_acc", "--metric-mode", "max", "--plot",
                             str(runs / "q.png"))  # fmt: skip
    assert status == 0 and "wrote" in err
    assert (runs / "q.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pareto_front_keeps_the_runs_nothing_beats() -> None:
    points = [(100.0, 0.5), (200.0, 0.7), (300.0, 0.6), (400.0, 0.9), (400.0, 0.8)]
    assert pareto_front(points, lower=False) == [0, 1, 3]  # (300, 0.6) and (400, 0.8) are beaten
    losses = [(100.0, 0.5), (200.0, 0.3), (300.0, 0.4), (50.0, 0.9)]
    assert pareto_front(losses, lower=True) == [3, 0, 1]


@pytest.mark.parametrize(
    ("name", "mode", "lower"),
    [("val_acc", "last", False), ("val_loss", "last", True), ("val/ppl", "last", True), ("val_loss", "max", False)],
)
def test_direction_of_a_metric(name: str, mode: str, lower: bool) -> None:
    assert lower_is_better(name, mode) is lower
