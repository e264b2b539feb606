"""``lightning-flops compare``: real ``Trainer.fit`` runs side by side, every format, baseline, sort, plot, errors."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.loggers import CSVLogger

from lightning_flops import FlopsMonitor, FlopsReport
from lightning_flops.cli import main
from lightning_flops.report import CounterResult, Gap, ParamCount
from tests.lit_helpers import IN_FEATURES, OUT_FEATURES, LinearStack, RandomDataModule, make_trainer

WIDTHS = (16, 64)
BATCH = 4


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def fit_name(width: int) -> str:
    return f"hidden_{width}/lightning_logs/version_0"


@pytest.fixture(scope="module")
def fit_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two real runs, ``LinearStack(hidden=16)`` and ``(hidden=64)``, each trained one step with ``FlopsMonitor``."""
    root = tmp_path_factory.mktemp("runs")
    for width in WIDTHS:
        trainer = make_trainer(
            root, callbacks=[FlopsMonitor()], max_steps=1, logger=CSVLogger(str(root / f"hidden_{width}"))
        )
        trainer.fit(LinearStack(hidden=width), RandomDataModule(batch_size=BATCH))
    return root


def write_report(
    path: Path,
    macs: dict[str, int | None],
    batch_size: int = BATCH,
    params: int = 100,
    gaps: tuple[Gap, ...] = (),
    logger: dict[str, str] | None = None,
) -> Path:
    """A report written by hand: ``macs`` are whole-call counts per counter (``None``: the counter failed)."""
    counters = {
        name: CounterResult(name=name, ok=value is not None, macs=value, raw_macs=value, error=None if value else "E")
        for name, value in macs.items()
    }
    report = FlopsReport(
        model="Net",
        params=ParamCount(params, params),
        counters=counters,
        batch_size=batch_size,
        gaps=gaps,
        logger=logger,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.to_json())
    return path


# ------------------------------------------------------------------------------------------- real Trainer.fit runs
@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_fit_runs_parse_back_to_exact_per_sample_integers(
    fit_runs: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(capsys, "compare", str(fit_runs), "--format", fmt)
    assert status == 0, err
    rows = list(csv.DictReader(io.StringIO(out))) if fmt == "csv" else json.loads(out)["runs"]
    assert [row["run"] for row in rows] == [fit_name(w) for w in WIDTHS]
    for row, width in zip(rows, WIDTHS, strict=True):
        report = FlopsReport.from_json(Path(row["path"]).read_text())
        for counter in ("thop", "fvcore", "torch"):
            macs = int(row[f"{counter}_macs"]) if fmt == "csv" else row[f"{counter}_macs"]
            assert type(macs) is int
            assert macs == IN_FEATURES * width + width * OUT_FEATURES  # per sample: in * hidden + hidden * out
            assert macs * BATCH == report.counters[counter].macs  # the report's whole-call integer
            assert int(row[f"{counter}_flops"]) == 2 * macs
        assert int(row["params_total"]) == IN_FEATURES * width + width + width * OUT_FEATURES + OUT_FEATURES
        assert int(row["batch_size"]) == BATCH


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_fit_runs_table_shows_each_run_in_readable_units(
    fit_runs: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run_cli(capsys, "compare", str(fit_runs), "--format", fmt)
    assert status == 0
    assert "per sample" in out and "FLOPs = 2 x MACs" in out
    lines = {line.split()[1 if fmt == "markdown" else 0]: line for line in out.splitlines() if "hidden_" in line}
    assert set(lines) == {fit_name(w) for w in WIDTHS}
    assert lines[fit_name(16)].count("640 MACs") == 3  # 32 * 16 + 16 * 8, for thop, fvcore and torch
    assert lines[fit_name(64)].count("2.56 kMACs") == 3  # 32 * 64 + 64 * 8 = 2560
    assert "LinearStack" in lines[fit_name(16)]


def test_fit_runs_baseline_ratio_is_the_width_ratio(fit_runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "compare", str(fit_runs), "--format", "json", "--baseline", fit_name(16))
    assert status == 0
    wide = next(row for row in json.loads(out)["runs"] if row["run"] == fit_name(64))
    assert wide["torch_macs_ratio"] == pytest.approx((32 * 64 + 64 * 8) / (32 * 16 + 16 * 8))  # = 4.0
    assert wide["torch_macs_change_pct"] == pytest.approx(300.0)


# --------------------------------------------------------------------------------------------- numbers and columns
def test_per_sample_is_a_float_when_the_batch_does_not_divide_the_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_report(tmp_path / "a" / "flops_report.json", {"torch": 10}, batch_size=4)
    status, out, _ = run_cli(capsys, "compare", str(tmp_path), "--format", "json")
    assert status == 0
    row = json.loads(out)["runs"][0]
    assert row["torch_macs"] == 2.5  # 10 MACs / 4 samples
    assert row["torch_flops"] == 5.0


def test_baseline_adds_ratio_and_percent_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_report(tmp_path / "base" / "flops_report.json", {"thop": 4 * 80, "torch": 4 * 100}, params=10)
    write_report(tmp_path / "big" / "flops_report.json", {"thop": 4 * 100, "torch": 4 * 300}, params=25)
    status, out, _ = run_cli(capsys, "compare", str(tmp_path), "--format", "json", "--baseline", "base")
    assert status == 0
    rows = {row["run"]: row for row in json.loads(out)["runs"]}
    assert rows["big"]["torch_macs_ratio"] == pytest.approx(300 / 100)
    assert rows["big"]["torch_macs_change_pct"] == pytest.approx((300 - 100) / 100 * 100)
    assert rows["big"]["thop_macs_ratio"] == pytest.approx(100 / 80)
    assert rows["big"]["thop_macs_change_pct"] == pytest.approx(25.0)
    assert rows["big"]["params_total_ratio"] == pytest.approx(25 / 10)
    assert rows["base"]["torch_macs_ratio"] == 1.0
    assert rows["base"]["torch_macs_change_pct"] == 0.0


def test_baseline_table_cells_show_ratio_and_percent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_report(tmp_path / "base" / "flops_report.json", {"torch": 4 * 200})
    write_report(tmp_path / "half" / "flops_report.json", {"torch": 4 * 100})
    status, out, _ = run_cli(capsys, "compare", str(tmp_path), "--baseline", "base")
    assert status == 0
    half = next(line for line in out.splitlines() if line.startswith("half"))
    assert "0.50x (-50.0%)" in half
    assert "against run 'base'" in out


def test_failed_counter_is_empty_in_csv_and_shown_as_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_report(tmp_path / "a" / "flops_report.json", {"fvcore": None, "torch": 4 * 7})
    _, out, _ = run_cli(capsys, "compare", str(tmp_path), "--format", "csv")
    row = next(csv.DictReader(io.StringIO(out)))
    assert row["fvcore_macs"] == "" and row["torch_macs"] == "7"
    _, out, _ = run_cli(capsys, "compare", str(tmp_path))
    assert "failed" in out.splitlines()[-1]


def test_largest_gap_and_flag_come_from_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gaps = (
        Gap("thop", "torch", relative=0.5, core_relative=0.2, flagged=True),
        Gap("thop", "fvcore", relative=0.9, core_relative=0.05, flagged=True),
    )
    write_report(tmp_path / "a" / "flops_report.json", {"thop": 4, "fvcore": 4, "torch": 4}, gaps=gaps)
    _, out, _ = run_cli(capsys, "compare", str(tmp_path), "--format", "json")
    row = json.loads(out)["runs"][0]
    assert (row["largest_gap"], row["largest_gap_relative"], row["flagged"]) == ("thop_vs_torch", 0.2, True)


@pytest.mark.parametrize(
    ("key", "descending", "order"),
    [("run", False, ["a", "b", "c"]), ("torch_macs", False, ["b", "c", "a"]), ("params_total", True, ["a", "c", "b"])],
)
def test_sort_orders_rows_by_the_key(
    tmp_path: Path, key: str, descending: bool, order: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    for name, macs, params in (("a", 30, 300), ("b", 10, 100), ("c", 20, 200)):
        write_report(tmp_path / name / "flops_report.json", {"torch": 4 * macs}, params=params)
    args = ["compare", str(tmp_path), "--format", "json", "--sort", key] + (["--descending"] if descending else [])
    _, out, _ = run_cli(capsys, *args)
    assert [row["run"] for row in json.loads(out)["runs"]] == order


def test_run_names_sort_numbers_naturally(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("w16", "w8", "w128"):
        write_report(tmp_path / name / "flops_report.json", {"torch": 4})
    _, out, _ = run_cli(capsys, "compare", str(tmp_path), "--format", "json")
    assert [row["run"] for row in json.loads(out)["runs"]] == ["w8", "w16", "w128"]


# ------------------------------------------------------------------------------------------------------ run names
def test_single_report_is_named_by_its_logger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_report(tmp_path / "x" / "flops_report.json", {"torch": 4}, logger={"name": "exp", "version": "3"})
    _, out, _ = run_cli(capsys, "compare", str(path), "--format", "json")
    assert json.loads(out)["runs"][0]["run"] == "exp/version_3"


def test_second_report_in_a_directory_gets_its_file_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_report(tmp_path / "a" / "flops_report.json", {"torch": 4})
    write_report(tmp_path / "a" / "flops_report.1.json", {"torch": 8})
    write_report(tmp_path / "b" / "flops_report.json", {"torch": 12})
    _, out, _ = run_cli(capsys, "compare", str(tmp_path), "--format", "json")
    assert [row["run"] for row in json.loads(out)["runs"]] == ["a", "a/flops_report.1", "b"]


# ----------------------------------------------------------------------------------------------------------- plot
@pytest.mark.parametrize("log_scale", [False, True])
def test_plot_writes_a_nonblank_png(tmp_path: Path, log_scale: bool, capsys: pytest.CaptureFixture[str]) -> None:
    from matplotlib.image import imread

    write_report(tmp_path / "runs" / "a" / "flops_report.json", {"thop": 4 * 10, "torch": 4 * 1000})
    write_report(tmp_path / "runs" / "b" / "flops_report.json", {"thop": 4 * 20, "torch": 4 * 3000})
    png = tmp_path / "compare.png"
    args = ["compare", str(tmp_path / "runs"), "--plot", str(png)] + (["--log-scale"] if log_scale else [])
    status, _, err = run_cli(capsys, *args)
    assert status == 0, err
    image = imread(png)
    assert image.shape[:2] == (450, 600)  # figsize (6, 4.5) inches at 100 dpi
    rgb = image[..., :3]
    assert (rgb < 0.9).any(axis=-1).mean() > 0.02  # bars, axes and labels cover part of the canvas
    assert len({tuple(px) for px in rgb.reshape(-1, 3)[::97]}) > 5  # several colours, not one flat fill


def test_plot_without_matplotlib_exits_2_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write_report(tmp_path / "a" / "flops_report.json", {"torch": 4})
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    png = tmp_path / "out.png"
    status, out, err = run_cli(capsys, "compare", str(tmp_path), "--plot", str(png))
    assert status == 2
    assert "`--plot` needs matplotlib" in err and "pip install 'lightning-flops[plot]'" in err
    assert out == "" and not png.exists()


def test_plot_refuses_an_existing_file_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_report(tmp_path / "runs" / "a" / "flops_report.json", {"torch": 4})
    png = tmp_path / "out.png"
    png.write_bytes(b"keep")
    status, out, err = run_cli(capsys, "compare", str(tmp_path / "runs"), "--plot", str(png))
    assert status == 2 and "already exists; pass --force" in err and out == ""
    assert png.read_bytes() == b"keep"
    status, _, _ = run_cli(capsys, "compare", str(tmp_path / "runs"), "--plot", str(png), "--force")
    assert status == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "not valid JSON"),
        ('{"schema_version": 99, "model": "Net"}', "schema_version 99 is newer"),
        ("[1, 2]", "must be a JSON object"),
        ('{"schema_version": 1, "model": "Net"}', "malformed report"),
        (
            '{"schema_version": 1, "model": "Net", "params": {"total": 1, "trainable": 1}, "batch_size": "4",'
            ' "counters": {"torch": {"name": "torch", "ok": true, "macs": 8}}}',
            "malformed report: `batch_size` must be an integer >= 0, got '4'",
        ),
    ],
)
def test_bad_report_exits_2_naming_the_file(
    tmp_path: Path, content: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_report(tmp_path / "good" / "flops_report.json", {"torch": 4})
    bad = tmp_path / "bad" / "flops_report.json"
    bad.parent.mkdir()
    bad.write_text(content)
    status, out, err = run_cli(capsys, "compare", str(tmp_path))
    assert status == 2
    assert str(bad) in err and reason in err and "--keep-going" in err
    assert out == ""


def test_keep_going_lists_good_runs_and_names_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_report(tmp_path / "good" / "flops_report.json", {"torch": 4 * 5})
    bad = tmp_path / "bad" / "flops_report.json"
    bad.parent.mkdir()
    bad.write_text("{not json")
    status, out, err = run_cli(capsys, "compare", str(tmp_path), "--format", "json", "--keep-going")
    assert status == 1
    assert [(row["run"], row["torch_macs"]) for row in json.loads(out)["runs"]] == [("good", 5)]
    assert f"skipped {bad}: not valid JSON" in err


def test_keep_going_with_no_readable_report_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "flops_report.json"
    bad.write_text("{not json")
    status, out, err = run_cli(capsys, "compare", str(bad), "--keep-going")
    assert status == 2 and "no readable reports" in err and str(bad) in err and out == ""


@pytest.mark.parametrize(
    ("make_path", "message"),
    [
        (lambda root: root / "missing", "no such file or directory"),
        (lambda root: root, "no flops_report*.json found under this directory"),
    ],
)
def test_path_without_reports_exits_2(
    tmp_path: Path, make_path, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = make_path(tmp_path)
    status, out, err = run_cli(capsys, "compare", str(path))
    assert status == 2 and f"{path}: {message}" in err and out == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sort", "speed"], "`--sort` must be one of run, model, "),
        (["--baseline", "nope"], "`--baseline` must be one of the runs' names ('a'), got 'nope'"),
        (["--format", "xml"], "argument --format: invalid choice: 'xml'"),
        (["--plot", "out.jpg"], "`--plot` must end in one of .png, .svg, .pdf"),
    ],
)
def test_bad_option_exits_2_with_a_message(
    tmp_path: Path, args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_report(tmp_path / "a" / "flops_report.json", {"torch": 4})
    status, out, err = run_cli(capsys, "compare", str(tmp_path / "a"), *args)
    assert status == 2 and message in err and out == ""


# ------------------------------------------------------------------------------------------------ no heavy imports
def test_compare_imports_no_torch_lightning_thop_or_fvcore(tmp_path: Path) -> None:
    write_report(tmp_path / "a" / "flops_report.json", {"torch": 4 * 9})
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "lightning_flops", "compare", str(tmp_path), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["runs"][0]["torch_macs"] == 9
    imported = {
        line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time")
    }
    assert "lightning_flops.cli" in imported  # the import log is real
    heavy = {"torch", "lightning", "pytorch_lightning", "thop", "fvcore", "matplotlib"}
    assert not {name for name in imported if name.split(".")[0] in heavy}


def test_active_params_and_macs_per_token_columns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    counters = {"torch": CounterResult(name="torch", ok=True, macs=6_400, raw_macs=6_400)}
    moe = FlopsReport(
        model="MoE", params=ParamCount(1_000, 1_000, active=400), counters=counters, batch_size=2, tokens=32
    )
    (tmp_path / "moe").mkdir()
    (tmp_path / "moe" / "flops_report.json").write_text(moe.to_json())
    write_report(tmp_path / "dense" / "flops_report.json", {"torch": 800})  # no tokens, older layout: no active
    status, out, _ = run_cli(capsys, "compare", str(tmp_path), "--format", "json")
    assert status == 0
    runs = {run["run"]: run for run in json.loads(out)["runs"]}
    assert runs["moe"]["params_active"] == 400 and runs["moe"]["torch_macs_per_token"] == 6_400 // 32
    assert runs["dense"]["params_active"] is None and runs["dense"]["torch_macs_per_token"] is None
    status, out, _ = run_cli(capsys, "compare", str(tmp_path))
    assert "active params" in out and "200 MACs" in out
