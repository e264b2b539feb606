"""What a new user meets first: --version and help texts, limit as a percentage, LightningCLI choices, the
TensorBoard hparams column order and text card, odd module names in Markdown."""

from __future__ import annotations

import warnings
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
from lightning.pytorch.cli import LightningCLI
from torch import nn

import lightning_flops as lf
from examples.models import TinyAttention
from lightning_flops import FlopsMonitor
from lightning_flops.cli import main
from lightning_flops.render import verdict_markdown
from tests.lit_helpers import (
    HIDDEN,
    IN_FEATURES,
    OUT_FEATURES,
    LinearStack,
    RandomDataModule,
    _accumulator,
    hparams_session,
    make_trainer,
)

PER_SAMPLE = IN_FEATURES * HIDDEN + HIDDEN * OUT_FEATURES  # LinearStack: 32 * 64 + 64 * 8 = 2560 MACs


# ------------------------------------------------------------------------------------------------------ CLI text
def test_version_flag_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lightning-flops {version('lightning-flops')}"


def test_profile_help_lists_counter_names_and_the_device_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["profile", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "counters to run, any of: thop, fvcore, torch" in text
    assert "cpu (default)" in text


# ------------------------------------------------------------------------------------------------------- limit
@pytest.mark.parametrize("limit", [1, 5, 1.0])
def test_a_limit_of_one_or_more_warns_that_it_is_a_fraction(limit: float) -> None:
    with pytest.warns(UserWarning, match=f"`limit={limit!r}` is a fraction, not a percentage"):
        FlopsMonitor(limit=limit)


def test_a_fractional_limit_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FlopsMonitor(limit=0.05)


# ------------------------------------------------------------------------------------------------- LightningCLI
def _cli(args: list[str]) -> None:
    base = ["fit", "--model=tests.lit_helpers.LinearStack", "--data=tests.lit_helpers.RandomDataModule"]
    LightningCLI(args=base + args, run=False, subclass_mode_model=True, subclass_mode_data=True)


@pytest.mark.parametrize(
    ("option", "choices"),
    [("on_gap", ("warn", "raise", "ignore")), ("flag_on", ("core", "total")), ("mode", ("eval", "train"))],
)
def test_lightning_cli_refuses_a_bad_choice_while_parsing(
    option: str, choices: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:  # a parse error (exit 2), not FlopsConfigError at construction
        _cli(["--trainer.callbacks=lightning_flops.FlopsMonitor", f"--trainer.callbacks.{option}=panic"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "panic" in err and all(repr(choice) in err or choice in err for choice in choices)


def test_lightning_cli_help_shows_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        _cli(["--trainer.callbacks.help", "lightning_flops.FlopsMonitor"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "{warn,raise,ignore}" in text and "{core,total}" in text and "{eval,train}" in text


# -------------------------------------------------------------------------------------------------- TensorBoard
@pytest.fixture(scope="module")
def tensorboard_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tb")
    trainer = make_trainer(root, [FlopsMonitor()], max_steps=1)
    trainer.fit(LinearStack(), RandomDataModule(batch_size=4))
    return Path(trainer.log_dir)


def test_hparams_columns_start_with_the_reference_params_and_flag(tensorboard_run: Path) -> None:
    columns, _ = hparams_session(tensorboard_run)
    assert columns[:5] == [
        "compute/torch/macs",
        "compute/torch/flops",
        "compute/params/total",
        "compute/params/trainable",
        "compute/flagged",
    ]


def test_tensorboard_text_starts_with_the_verdict(tensorboard_run: Path) -> None:
    event = _accumulator(tensorboard_run).Tensors("compute/report/text_summary")[0]
    text = event.tensor_proto.string_val[0].decode()
    first = text.split("\n")[0]
    assert first.startswith("**2.56 kMACs = 5.12 kFLOPs per sample** (torch reference, LinearStack, batch 4")
    assert PER_SAMPLE == 2560 and "Not flagged: the counters agree within 1.00% on the core" in first


def test_a_flagged_verdict_says_which_counters_and_where() -> None:
    report = lf.profile_model(TinyAttention(), torch.randint(0, 100, (2, 8)))
    line = verdict_markdown(report)
    assert report.flagged and "**Flagged**: thop vs" in line and "mostly in `block.attn`" in line


def test_module_names_with_pipes_newlines_and_html_stay_inside_their_cell() -> None:
    from tensorboard.plugin_util import markdown_to_safe_html

    model = nn.Sequential()
    model.add_module("a|b\n<script>alert(1)</script>", nn.Linear(4, 4))
    model.add_module("tail", nn.Linear(4, 2))
    html = markdown_to_safe_html(lf.profile_model(model, torch.randn(1, 4), counters=("torch",)).to_markdown())
    assert "<script>" not in html
    row = next(line for line in html.split("<tr>") if "a|b" in line)
    assert "<td>a|b &lt;script&gt;alert(1)&lt;/script&gt;</td>" in row  # one cell, shown as written, one line
    assert row.count("<td>") == 2  # the module's cell and the torch cell: the pipe did not split the row
