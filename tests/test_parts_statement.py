"""Named parts (``parts=``), the paper statement, number rules in ``custom_ops`` and the LaTeX table."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from lightning.pytorch import LightningModule
from torch import nn

import lightning_flops as lf
from lightning_flops.render import latex_table
from tests.lit_helpers import RandomDataModule, make_trainer, read_scalars

IN, HID, OUT = 32, 64, 8
BACKBONE_MACS = IN * HID  # per sample: Linear(IN, HID)
NECK_MACS = HID * HID  # Linear(HID, HID)
HEAD_MACS = HID * OUT  # Linear(HID, OUT)


class Net(LightningModule):
    """``backbone -> neck -> decode_head``, each one Linear; a regression on ``(x, y)`` batches."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(IN, HID), nn.ReLU())
        self.neck = nn.Linear(HID, HID)
        self.decode_head = nn.Linear(HID, OUT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.neck(self.backbone(x)))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


PARTS = {"visual": ["backbone", "neck"], "decoder": "decode_head"}


def test_parts_equal_the_submodules_analytic_counts_in_the_json() -> None:
    report = lf.profile_model(Net(), torch.randn(4, IN), parts=PARTS)
    data = json.loads(report.to_json())["parts"]
    assert data["visual"]["macs"]["torch"] == 4 * (BACKBONE_MACS + NECK_MACS)
    assert data["decoder"]["macs"]["torch"] == 4 * HEAD_MACS
    assert data["visual"]["macs"]["thop"] == 4 * (BACKBONE_MACS + NECK_MACS)
    assert data["visual"]["params"]["total"] == IN * HID + HID + HID * HID + HID
    assert data["decoder"]["params"]["total"] == HID * OUT + OUT
    assert lf.FlopsReport.from_json(report.to_json()).parts == report.parts


def test_a_part_naming_no_module_raises_listing_the_top_level_children() -> None:
    with pytest.raises(lf.FlopsConfigError, match=r"'bakbone'.*\['backbone', 'neck', 'decode_head'\]"):
        lf.profile_model(Net(), torch.randn(4, IN), parts={"visual": "bakbone"})


def test_callback_raises_on_a_bad_part_at_the_first_batch_even_when_not_strict(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [lf.FlopsMonitor(parts={"visual": "bakbone"})])
    with pytest.raises(lf.FlopsConfigError, match="bakbone"):
        trainer.fit(Net(), RandomDataModule(samples=8))
    assert not list(tmp_path.rglob("flops_report*.json"))  # raised before any profiling or writing


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, lf.FlopsReport]:
    root = tmp_path_factory.mktemp("parts")
    monitor = lf.FlopsMonitor(parts=PARTS, custom_ops={nn.ReLU: 3})
    trainer = make_trainer(root, [monitor])
    trainer.fit(Net(), RandomDataModule(batch_size=4, samples=16))
    return Path(trainer.log_dir), monitor.report


def test_parts_are_tensorboard_scalars_of_a_fit(fitted: tuple[Path, lf.FlopsReport]) -> None:
    scalars = read_scalars(fitted[0])
    relu = 3 * HID  # the number rule: 3 MACs per output element of the ReLU inside backbone
    assert scalars["compute/part/visual/macs"] == BACKBONE_MACS + relu + NECK_MACS
    assert scalars["compute/part/visual/flops"] == 2 * (BACKBONE_MACS + relu + NECK_MACS)
    assert scalars["compute/part/decoder/macs"] == HEAD_MACS
    assert scalars["compute/part/decoder/params"] == HID * OUT + OUT


def test_statement_of_a_fitted_run_has_exact_macs_flops_and_the_input_shape(
    fitted: tuple[Path, lf.FlopsReport],
) -> None:
    report = lf.FlopsReport.from_json(next(fitted[0].glob("flops_report*.json")).read_text())
    text = report.statement()
    macs = BACKBONE_MACS + 3 * HID + NECK_MACS + HEAD_MACS  # per sample
    assert f"({macs:,} MACs)" in text and f"({2 * macs:,} FLOPs; 1 MAC = 2 FLOPs)" in text
    assert "float32 [4, 32]" in text and "per sample [32]" in text and "eval mode" in text
    assert "ReLU: 3 MACs per output element" in text
    assert "linear layers" in text and "thop" in text and "fvcore" in text
    assert f"({report.train_step_flops:,} FLOPs) per batch of 4" in text


def test_number_rules_count_per_output_element_and_are_named() -> None:
    x = torch.randn(2, 5, 16)
    report = lf.profile_model(nn.Sequential(nn.LayerNorm(16), nn.GELU()), x, custom_ops={nn.LayerNorm: 4, nn.GELU: 8})
    for name in ("thop", "fvcore", "torch"):
        assert report.counters[name].macs == (4 + 8) * x.numel()
    assert report.rules == ("LayerNorm: 4 MACs per output element", "GELU: 8 MACs per output element")


def _balanced(text: str) -> bool:
    depth = 0
    for match in re.finditer(r"(?<!\\)[{}]", text):
        depth += 1 if match.group() == "{" else -1
        if depth < 0:
            return False
    return depth == 0


def test_latex_table_is_booktabs_with_one_row_per_run_and_escaped_names() -> None:
    a = lf.profile_model(Net(), torch.randn(4, IN), counters=("torch",))
    text = latex_table([("small_50%", a), ("big&{x}", a)], ["torch"])
    assert _balanced(text)
    lines = text.splitlines()
    assert lines[1] == r"\toprule" and r"\bottomrule" in lines and r"\midrule" in lines
    body = lines[lines.index(r"\midrule") + 1 : lines.index(r"\bottomrule")]
    assert len(body) == 2 and body[0].startswith(r"small\_50\% & ") and body[1].startswith(r"big\&\{x\} & ")
    assert "[kMACs]" in lines[2] and "[kFLOPs]" in lines[2]
    macs = BACKBONE_MACS + NECK_MACS + HEAD_MACS
    assert body[0].split(" & ")[2] == f"{macs / 1e3:.2f}"
