"""The README's commands, run as written from a copy of the repository root, reproduce the outputs it shows.

The commands are read from the README's code blocks (not restated here), so a README edit that breaks a command or
an output fails this test.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import lightning_flops
from examples import train
from examples.models import transformer_lm_macs
from lightning_flops.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def code_blocks() -> list[tuple[str, list[str], int]]:
    """``(language, lines, end offset in the README)`` of every fenced block."""
    pattern = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
    return [(m.group(1), m.group(2).rstrip("\n").split("\n"), m.end()) for m in pattern.finditer(README)]


def commands(prefix: str) -> list[str]:
    """Every command line of the README's bash blocks that starts with ``prefix``."""
    return [line for lang, lines, _ in code_blocks() if lang == "bash" for line in lines if line.startswith(prefix)]


def shown_outputs(prefix: str) -> list[tuple[str, list[str]]]:
    """``(command, expected output lines)`` for each text block that starts with ``$ {prefix}``; a block holding only
    the command is followed by its output rendered as Markdown (the table lines after the block)."""
    shown = []
    for lang, lines, end in code_blocks():
        if lang != "text" or not lines[0].startswith(f"$ {prefix}"):
            continue
        expected = lines[1:]
        if not expected:
            after = README[end:].lstrip("\n").split("\n")
            expected = [line for line in after[: next(i for i, x in enumerate(after) if not x.startswith("|"))]]
        shown.append((lines[0][2:], expected))
    return shown


def run_lightning_flops(line: str) -> tuple[int, str]:
    """Run one ``lightning-flops ...`` line in-process (``> FILE`` redirects stdout); return status and stdout."""
    words = shlex.split(line, comments=True)
    target = None
    if ">" in words:
        target = words[words.index(">") + 1]
        words = words[: words.index(">")]
    assert words[0] == "lightning-flops"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli_main(words[1:])
    if target is not None:
        Path(target).write_text(out.getvalue())
    return status, out.getvalue()


@pytest.fixture(scope="module")
def checkout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh 'checkout': the README's ``examples/``, ``configs/`` and ``docs/`` in an empty directory."""
    root = tmp_path_factory.mktemp("checkout")
    for folder in ("examples", "configs", "docs"):
        shutil.copytree(ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def isolated_env(tmp: Path) -> dict[str, str]:
    """An environment where only lightning_flops is importable (not the repository root, so not ``examples``)."""
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    link = site / "lightning_flops"
    if not link.exists():
        link.symlink_to(Path(lightning_flops.__file__).parent)
    return {**os.environ, "PYTHONPATH": str(site)}


@pytest.fixture(scope="module")
def ablation(checkout: Path) -> Path:
    """The README's training commands, run in ``checkout`` (in-process: ``examples/train.py``'s ``main``)."""
    lines = commands("python examples/train.py")
    assert len(lines) == 4
    cwd = os.getcwd()
    os.chdir(checkout)
    try:
        for line in lines:
            words = shlex.split(line)
            assert words[:2] == ["python", "examples/train.py"]
            assert train.main(words[2:]) == 0
    finally:
        os.chdir(cwd)
    return checkout


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_readme_compare_commands_run(ablation: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ablation)
    lines = commands("lightning-flops compare runs/ablation")
    assert len(lines) == 7  # 4 on compute, 2 on compute against quality, the LaTeX table
    (ablation / "docs" / "quality.png").unlink()  # written by the README's own command, not copied
    for line in lines:
        assert run_lightning_flops(line)[0] == 0, line
    assert (ablation / "runs" / "compute.png").read_bytes()[:4] == b"\x89PNG"
    assert (ablation / "runs" / "compute.csv").read_text().startswith("run,model,")
    # the README shows docs/quality.png as its command makes it (the committed file: same figure, same size)
    made = png_size((ablation / "docs" / "quality.png").read_bytes())
    assert made == png_size((ROOT / "docs" / "quality.png").read_bytes())
    assert "](docs/quality.png)" in README


def test_readme_compare_outputs_are_reproduced_line_for_line(ablation: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ablation)
    shown = shown_outputs("lightning-flops compare")
    assert len(shown) == 5  # table, markdown with a baseline, csv, with val_acc, LaTeX
    for command, expected in shown:
        status, out = run_lightning_flops(command)
        lines = out.rstrip("\n").split("\n")
        if expected[0].startswith("|"):
            lines = [line for line in lines if line.startswith("|")]
        assert status == 0 and lines == expected, command


def test_readme_runs_show_quality_in_the_hparams_view(ablation: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    accumulator = EventAccumulator(str(ablation / "runs/ablation/cnn_w8/version_0"))
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")["_hparams_/experiment"]
    declared = [m.name.tag for m in plugin_data_pb2.HParamsPluginData.FromString(content).experiment.metric_infos]
    assert "compute/torch/macs" in declared and "hp_metric" in declared  # compute and quality: one HPARAMS row
    assert accumulator.Scalars("hp_metric")[-1].value == accumulator.Scalars("val_acc")[-1].value


def test_readme_paper_commands_run_on_the_readmes_runs(ablation: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ablation)
    lines = [line for word in ("statement", "explain", "diff") for line in commands(f"lightning-flops {word} ")]
    assert len(lines) == 3
    outputs = {}
    for line in lines:
        status, out = run_lightning_flops(line)
        assert status == 0, line
        outputs[line.split()[1]] = out
    report = lightning_flops.FlopsReport.from_json(
        (ablation / "runs/ablation/cnn_w16/version_0/flops_report.json").read_text()
    )
    assert f"({report.counters['torch'].macs // report.batch_size:,} MACs) per sample" in outputs["statement"]
    assert "einsum" in outputs["explain"] and "uncounted" in outputs["explain"]
    ((command, expected),) = shown_outputs("lightning-flops diff")
    assert run_lightning_flops(command) == (0, "\n".join(expected) + "\n")


def test_readme_profile_command_counts_what_it_says(checkout: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ((command, expected),) = shown_outputs("lightning-flops profile")
    monkeypatch.chdir(checkout)
    (checkout / "runs").mkdir(exist_ok=True)
    status, out = run_lightning_flops(command)
    assert status == 0
    shown = expected[: expected.index("...")]
    assert [line for line in out.split("\n")[: len(shown)] if "seconds" not in line] == [
        line
        for line in shown
        if "seconds" not in line  # timings differ from machine to machine
    ]
    report = lightning_flops.FlopsReport.from_json((checkout / "runs" / "lm.json").read_text())
    assert report.counters["torch"].macs == transformer_lm_macs(1, 128, layers=40) == 1_052_938_076_160


def test_lightning_cli_command_runs_from_the_repository_root_as_written(checkout: Path) -> None:
    (line,) = commands("python examples/cli.py")
    for config in (checkout / "configs").glob("*.yaml"):  # each config's header gives the same command
        assert line.replace("configs/cnn.yaml", f"configs/{config.name}") in config.read_text()
    result = subprocess.run(
        [sys.executable, *shlex.split(line)[1:]],
        cwd=checkout,
        env=isolated_env(checkout),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "report written to runs/lightning_logs/version_0/flops_report.json" in result.stdout + result.stderr
    assert (checkout / "runs" / "lightning_logs" / "version_0" / "flops_report.json").is_file()
