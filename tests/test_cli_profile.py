"""``lightning-flops profile``: the same numbers as ``profile_model``, meta-device giants, inputs, and every error."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from examples.models import (
    SmallCNN,
    TinyAttention,
    resnet50,
    small_cnn_macs,
    tiny_attention_macs,
    transformer_lm_macs,
    transformer_lm_params,
)
from lightning_flops import profile_model
from lightning_flops.cli import InputShape, main, make_inputs


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def counts(report: dict[str, Any]) -> dict[str, Any]:
    """The integers of a report's JSON that must not depend on who ran the profile."""
    return {
        "params": report["params"],
        "batch_size": report["batch_size"],
        "counters": {
            name: (entry["ok"], entry["macs"], entry["raw_macs"], entry["flops"], entry["core_macs"], entry["device"])
            for name, entry in report["counters"].items()
        },
        "module_operators": {name: entry["module_operators"] for name, entry in report["counters"].items()},
        "gaps": [(g["key"], g["relative"], g["core_relative"], g["flagged"]) for g in report["gaps"]],
        "inputs": report["inputs"],
    }


# ------------------------------------------------------------------------------------ same numbers as in Python
@pytest.mark.parametrize(
    ("target", "build", "shape", "torch_macs"),
    [
        pytest.param("examples.models:SmallCNN", SmallCNN, (2, 3, 32, 32), small_cnn_macs(2), id="SmallCNN"),
        pytest.param(
            "examples.models:resnet50",
            resnet50,
            (1, 3, 224, 224),
            4_089_184_256,  # conv + linear MACs of ResNet-50 v1.5 at 1x3x224x224
            marks=pytest.mark.slow,
            id="resnet50",
        ),
    ],
)
def test_profile_json_equals_profile_model(
    tmp_path: Path, target: str, build, shape: tuple[int, ...], torch_macs: int, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "report.json"
    status, out, err = run_cli(capsys, "profile", target, "--input", ",".join(map(str, shape)), "--json", str(out_json))
    assert status == 0, err
    from_cli = json.loads(out_json.read_text())
    in_python = json.loads(profile_model(build(), torch.randn(*shape)).to_json())
    assert counts(from_cli) == counts(in_python)
    assert from_cli["counters"]["torch"]["macs"] == torch_macs
    assert f"### {from_cli['model']}: compute per sample (batch {shape[0]}" in out


def test_profile_meta_device_counts_a_33_gb_model_without_its_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "lm.json"
    status, out, err = run_cli(
        capsys,
        "profile",
        "examples.models:transformer_lm",
        "--kwargs",
        "layers=40",
        "--input",
        "int64:1,128",
        "--device",
        "meta",
        "--counters",
        "torch",
        "--json",
        str(out_json),
    )
    assert status == 0, err
    report = json.loads(out_json.read_text())
    assert report["params"]["total"] == transformer_lm_params(layers=40)
    assert report["params"]["total"] * 4 > 30e9  # fp32 bytes: more than this machine's memory
    assert report["counters"]["torch"]["macs"] == transformer_lm_macs(1, 128, layers=40)
    assert report["counters"]["torch"]["device"] == "meta"
    assert report["inputs"] == [{"name": "0", "shape": [1, 128], "dtype": "int64"}]
    assert "TransformerLM: compute per sample (batch 1" in out


def test_profile_token_ids_feed_the_embedding(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "tiny.json"
    status, _, err = run_cli(
        capsys,
        "profile",
        "examples.models:TinyAttention",
        "--kwargs",
        "vocab=7",
        "--input",
        "int64:2,16",
        "--counters",
        "torch",
        "--json",
        str(out_json),
    )
    assert status == 0, err
    assert json.loads(out_json.read_text())["counters"]["torch"]["macs"] == tiny_attention_macs(2, 16, vocab=7)


def test_int_inputs_are_drawn_below_the_first_embedding_size() -> None:
    model = TinyAttention(vocab=7)
    (tokens,) = make_inputs(model, [InputShape("int64", (4, 500))], "cpu")
    assert tokens.dtype == torch.int64 and tokens.shape == (4, 500)
    assert int(tokens.min()) >= 0 and int(tokens.max()) == 7 - 1  # 2000 draws cover all 7 ids


def test_profile_loads_a_file_target_with_kwargs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "my_model.py"
    source.write_text(
        "from torch import nn\n\n\n"
        "def build(width=3):\n"
        "    return nn.Sequential(nn.Linear(5, width), nn.Linear(width, 2))\n"
    )
    out_json = tmp_path / "file.json"
    status, _, err = run_cli(
        capsys,
        "profile",
        f"{source}:build",
        "--kwargs",
        "width=4",
        "--input",
        "2,5",
        "--counters",
        "torch",
        "thop",
        "--json",
        str(out_json),
    )
    assert status == 0, err
    counters = json.loads(out_json.read_text())["counters"]
    assert counters["torch"]["macs"] == 2 * 5 * 4 + 2 * 4 * 2  # batch * in * width + batch * width * out
    assert counters["thop"]["macs"] == counters["torch"]["macs"]


def test_profile_json_overwrites_only_with_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_json = tmp_path / "r.json"
    out_json.write_text("keep")
    args = ["profile", "examples.models:SmallCNN", "--input", "1,3,8,8", "--counters", "torch", "--json", str(out_json)]
    status, out, err = run_cli(capsys, *args)
    assert status == 2 and "already exists; pass --force" in err and out == ""
    assert out_json.read_text() == "keep"
    status, _, _ = run_cli(capsys, *args, "--force")
    assert status == 0
    assert json.loads(out_json.read_text())["counters"]["torch"]["macs"] == small_cnn_macs(1, size=8)
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left behind


# --------------------------------------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["examples.models:SmallCNN", "--input", "2,x,32"], "`--input` '2,x,32' is not a shape"),
        (["examples.models:SmallCNN", "--input", "2,,32"], "`--input` '2,,32' is not a shape"),
        (["examples.models:SmallCNN", "--input", "0,3"], "`--input` '0,3' is not a shape"),
        (["examples.models:SmallCNN", "--input", "int65:1,2"], "unknown dtype 'int65'; use one of float32"),
        (["no_such_module_xyz:Net", "--input", "1,2"], "cannot import `no_such_module_xyz:Net`: ModuleNotFoundError"),
        (["examples.models:NoSuch", "--input", "1,2"], "examples.models has no attribute 'NoSuch'"),
        (["examples.models", "--input", "1,2"], "`TARGET` must be module.path:Name or path/to/file.py:Name"),
        (["missing/model.py:Net", "--input", "1,2"], "file 'missing/model.py' does not exist"),
        (["math:pi", "--input", "1,2"], "`math:pi` must name an nn.Module class or a function returning one"),
        (["builtins:dict", "--input", "1,2"], "`builtins:dict` must build a torch.nn.Module, it returned dict"),
        (["examples.models:SmallCNN", "--kwargs", "width", "--input", "1,2"], "`--kwargs` items must be NAME=VALUE"),
        (["examples.models:SmallCNN", "--kwargs", "depth=3", "--input", "1,2"], "building `examples.models:SmallCNN`"),
        (["examples.models:SmallCNN", "--input", "1,3,8,8", "--counters", "flop"], "`counters` must be names from"),
        (
            ["examples.models:SmallCNN", "--input", "1,3,8,8", "--mode", "test"],
            "`mode` must be one of ('eval',",
        ),
        (["examples.models:SmallCNN", "--input", "1,3,8,8", "--json", "no/dir/r.json"], "directory 'no/dir' does not"),
        (["examples.models:SmallCNN", "--device", "gpu", "--input", "1,2"], "argument --device: invalid choice: 'gpu'"),
        (["examples.models:SmallCNN"], "the following arguments are required: --input"),
    ],
)
def test_bad_profile_input_exits_2_with_a_message(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run_cli(capsys, "profile", *args)
    assert status == 2
    assert message in err
    assert out == ""


def test_target_file_that_fails_to_import_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "broken.py"
    source.write_text("def build(:\n")
    status, out, err = run_cli(capsys, "profile", f"{source}:build", "--input", "1,2")
    assert status == 2 and f"cannot import `{source}:build`: SyntaxError" in err and out == ""


def test_profile_exits_1_when_every_counter_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "failing.py"
    source.write_text(
        "from torch import nn\n\n\n"
        "class Failing(nn.Linear):\n"
        "    def forward(self, x):\n"
        "        raise RuntimeError('boom')\n"
    )
    status, out, err = run_cli(
        capsys,
        "profile",
        f"{source}:Failing",
        "--kwargs",
        "in_features=2",
        "out_features=3",
        "--input",
        "1,2",
        "--counters",
        "torch",
        "thop",
    )
    assert status == 1
    assert "every counter failed" in err
    assert "RuntimeError: boom" in out  # the report is still printed, with the reason
