"""``lightning-flops profile --parts ... --custom-op ...`` (issue 19, point 4): the same meaning and the same numbers
as ``profile_model(parts=..., custom_ops=...)`` in Python, with one-line errors for what does not fit the model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import lightning_flops as lf
from lightning_flops.cli import main

MODEL = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.act = nn.GELU()

    def forward(self, x):
        return self.act(self.norm(self.fc(x)))


class Net(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.backbone = Block(dim)
        self.neck = Block(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        return self.head(self.neck(self.backbone(x)))
"""
BATCH, SEQ, DIM = 2, 5, 16


@pytest.fixture
def target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "study_model.py").write_text(MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield "study_model:Net"
    sys.modules.pop("study_model", None)


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_profile_parts_and_rules_equal_the_python_api(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["profile", target, "--input", f"{BATCH},{SEQ},{DIM}", "--counters", "thop", "torch", "--json", "r.json"]
    args += ["--parts", "visual=backbone,neck", "--parts", "head=head"]
    args += ["--custom-op", "nn.LayerNorm=4", "--custom-op", "nn.GELU=8"]
    status, out, _ = run_cli(capsys, *args)
    assert status == 0 and "visual" in out
    cli = lf.FlopsReport.from_json(Path("r.json").read_text())

    import study_model

    model = study_model.Net()
    py = lf.profile_model(
        model,
        torch.randn(BATCH, SEQ, DIM),
        counters=("thop", "torch"),
        custom_ops={nn.LayerNorm: 4, nn.GELU: 8},
        parts={"visual": ["backbone", "neck"], "head": "head"},
    )
    tokens = BATCH * SEQ
    block = tokens * DIM * DIM + 4 * tokens * DIM + 8 * tokens * DIM  # linear + LayerNorm rule + GELU rule
    head = tokens * DIM * 3
    for counter in ("thop", "torch"):
        assert cli.counters[counter].macs == py.counters[counter].macs == 2 * block + head
        assert cli.parts["visual"].macs[counter] == py.parts["visual"].macs[counter] == 2 * block
        assert cli.parts["head"].macs[counter] == py.parts["head"].macs[counter] == head
    assert cli.parts["visual"].params == py.parts["visual"].params
    assert cli.rules == py.rules and len(cli.rules) == 2


def test_a_bare_class_name_names_the_models_own_class(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["profile", target, "--input", f"{BATCH},{SEQ},{DIM}", "--counters", "torch", "--json", "r.json"]
    status, _, _ = run_cli(capsys, *args, "--custom-op", "Block=1")
    assert status == 0
    report = lf.FlopsReport.from_json(Path("r.json").read_text())
    assert report.counters["torch"].macs == 2 * BATCH * SEQ * DIM + BATCH * SEQ * DIM * 3  # 1 per output + head


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--parts", "visual=backbone,nek"], "`parts['visual']` names 'nek'"),
        (["--parts", "visual"], "`--parts` items must be LABEL=MODULE[,MODULE...], got 'visual'"),
        (["--custom-op", "nn.LayerNom=4"], "did you mean `nn.LayerNorm`?"),
        (["--custom-op", "nn.BatchNorm2d=4"], "Net has no nn.BatchNorm2d module"),
        (["--custom-op", "Blok=4"], "did you mean `Block`?"),
        (["--custom-op", "nn.GELU=-1"], "a number >= 0"),
        (["--custom-op", "nn.GELU=nan"], "a number >= 0"),
    ],
)
def test_bad_parts_and_rules_exit_2_with_one_line(
    target: str, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(capsys, "profile", target, "--input", "1,4,16", *extra, "--json", "r.json")
    assert status == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err, err
    assert not Path("r.json").exists()


def test_profile_json_of_a_target_keeps_its_rules_in_the_report(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, _ = run_cli(
        capsys, "profile", target, "--input", "1,4,16", "--counters", "torch", "--custom-op", "nn.GELU=8",
        "--json", "r.json",
    )  # fmt: skip
    assert status == 0
    assert [rule for rule in json.loads(Path("r.json").read_text())["rules"] if "GELU" in rule]
