"""The paper path of issue 19, on the story's model: a segmentation-like net with einsum attention, ``topk``,
``F.normalize``, thop-style rules and a visual part; every number is checked against a hand count written here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_flops as lf

C1, C2, D, K, HW = 16, 32, 32, 5, 32  # channels, token width, classes, input side
N = (HW // 2) ** 2  # tokens after the stride-2 conv: 256
RULES = {nn.LayerNorm: 4, nn.GELU: 8, nn.BatchNorm2d: 4}
PARTS = {"visual": ["backbone", "neck"]}

# hand count, per sample
CONV1 = C1 * HW * HW * 3 * 3 * 3  # out channels * out pixels * in channels * kernel
CONV2 = C2 * N * C1 * 3 * 3
QKV, PROJ = N * D * 3 * D, N * D * D
ATTENTION = 2 * N * N * D  # two einsums: q k^T and attn v
MLP = 2 * N * D * 2 * D  # fc1 and fc2
MASKS = N * D * K  # einsum of the tokens with class_embed.weight
DECODE = K * N * D  # 1x1 conv
CORE = CONV1 + CONV2 + QKV + PROJ + ATTENTION + MLP + MASKS + DECODE
LAYERNORM = 4 * 2 * N * D  # two LayerNorms, 4 MACs per output element
GELU = 8 * (C1 * HW * HW + C2 * N + N * 2 * D)  # three GELUs, 8 per output element
BATCHNORM = 4 * (C1 * HW * HW + C2 * N)
VISUAL = CONV1 + CONV2 + QKV + PROJ + ATTENTION + MLP + LAYERNORM + GELU + BATCHNORM
NECK_PARAMS = 2 * 2 * D + (D * 3 * D + 3 * D) + (D * D + D) + (D * 2 * D + 2 * D) + (2 * D * D + D)
VISUAL_PARAMS = 3 * C1 * 9 + 2 * C1 + C1 * C2 * 9 + 2 * C2 + NECK_PARAMS
TOTAL_PARAMS = VISUAL_PARAMS + K * D + (D * K + K)


class Block(nn.Module):
    """Pre-norm attention with einsum products, then a GELU MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.fc1, self.act, self.fc2 = nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        attn = torch.einsum("bnd,bmd->bnm", q, k).softmax(-1)
        x = x + self.proj(torch.einsum("bnm,bmd->bnd", attn, v))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class SegNet(nn.Module):
    """The story's model: conv backbone, an attention neck, mask logits against ``class_embed.weight``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, C1, 3, padding=1, bias=False),
            nn.BatchNorm2d(C1),
            nn.GELU(),
            nn.Conv2d(C1, C2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C2),
            nn.GELU(),
        )
        self.neck = Block()
        self.class_embed = nn.Embedding(K, D)  # used through its weight only, never called
        self.decode_head = nn.Conv2d(D, K, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.backbone(x)
        b, c, h, w = f.shape
        t = self.neck(f.flatten(2).transpose(1, 2))
        classes = F.normalize(self.class_embed.weight, dim=-1)
        masks = torch.einsum("bnd,kd->bkn", F.normalize(t, dim=-1), classes)
        top = masks.topk(2, dim=1).values.sum(1, keepdim=True)
        dense = self.decode_head(t.transpose(1, 2).reshape(b, c, h, w))
        return dense + masks.reshape(b, K, h, w) + top.reshape(b, 1, h, w)


@pytest.fixture(scope="module")
def story() -> lf.FlopsReport:
    x = torch.randn(2, 3, HW, HW)
    return lf.profile_model(SegNet(), x, counters=("thop", "torch"), custom_ops=RULES, parts=PARTS)


def test_the_story_counts_equal_the_hand_count(story: lf.FlopsReport) -> None:
    assert story.counters["torch"].core_macs == 2 * CORE
    assert story.macs_per_sample("torch") == CORE + LAYERNORM + GELU + BATCHNORM
    assert story.parts["visual"].macs["torch"] == 2 * VISUAL
    assert story.params.total == TOTAL_PARAMS and story.parts["visual"].params.total == VISUAL_PARAMS


def test_statement_with_rules_says_the_ruled_modules_are_counted_and_by_how_much(story: lf.FlopsReport) -> None:
    text = story.statement()
    assert f"({CORE + LAYERNORM + GELU + BATCHNORM:,} MACs) per sample" in text
    assert f"einsum contractions ({CORE:,} MACs per sample)" in text
    assert f"custom rules count ({LAYERNORM + GELU + BATCHNORM:,} MACs per sample" in text
    assert f"LayerNorm: 4 MACs per output element ({LAYERNORM:,} MACs)" in text
    assert f"GELU: 8 MACs per output element ({GELU:,} MACs)" in text
    assert f"BatchNorm2d: 4 MACs per output element ({BATCHNORM:,} MACs)" in text
    # the convention sentence no longer contradicts the rules: it names what is left out, besides the rules
    assert "Other normalization, activations, pooling" in text
    assert "; normalization, activations" not in text and "Custom rules applied" not in text


def test_statement_names_the_parts_with_their_macs_and_params(story: lf.FlopsReport) -> None:
    text = story.statement()
    assert f"visual (backbone, neck): 8.40 MMACs ({VISUAL:,} MACs), {VISUAL_PARAMS:,} parameters" in text


def test_statement_of_thop_with_rules_separates_its_count_from_the_rules(story: lf.FlopsReport) -> None:
    text = story.statement("thop")
    thop_core = CORE - ATTENTION - MASKS  # thop counts modules only: the functional einsums are missed
    assert f"einsum contractions ({thop_core:,} MACs per sample)" not in text  # thop books no einsum at all
    assert f"linear layers ({thop_core:,} MACs per sample)" in text
    assert f"({LAYERNORM + GELU + BATCHNORM:,} MACs per sample; a rule replaces" in text


def test_explain_prints_as_the_cli_summary_and_table_not_as_dataclass_reprs(story: lf.FlopsReport) -> None:
    rows = story.explain("thop")
    text = str(rows)
    assert "Discrepancy(" not in text and "Discrepancy(" not in repr(rows)
    first = text.splitlines()[0]
    assert first == rows.summary() and first.startswith("thop - torch = -4.24 MMACs per sample: 100% explained")
    assert f"{-ATTENTION / 1e6:.2f} MMACs" in text  # the neck's two einsums, per sample, in the table
    assert rows._repr_markdown_().count("| neck | einsum |") == 1
    assert isinstance(rows, tuple) and sum(row.macs for row in rows) == 2 * -(ATTENTION + MASKS)  # whole call


def test_explain_cli_prints_what_the_python_object_prints(
    story: lf.FlopsReport, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_flops.cli import main

    path = tmp_path / "flops_report.json"
    path.write_text(story.to_json())
    assert main(["explain", str(path), "--counter", "thop"]) == 0
    assert capsys.readouterr().out.strip() == str(lf.FlopsReport.from_json(story.to_json()).explain("thop"))


def test_explain_rows_and_parts_have_per_sample_accessors(story: lf.FlopsReport) -> None:
    neck = next(row for row in story.explain("thop") if row.module == "neck")
    assert neck.macs == 2 * -ATTENTION and neck.macs_per_sample == -ATTENTION
    visual = story.parts["visual"]
    assert visual.macs_per_sample("torch") == VISUAL and visual.flops_per_sample("torch") == 2 * VISUAL
    again = lf.FlopsReport.from_json(story.to_json()).parts["visual"]
    assert again.macs_per_sample("torch") == VISUAL and again == visual


@pytest.mark.parametrize("batch", [1, 3])
def test_per_sample_values_are_floats_fresh_and_read_back(batch: int) -> None:
    report = lf.profile_model(nn.Linear(4, 3), torch.randn(batch, 4), counters=("torch",), parts={"all": ""})
    for one in (report, lf.FlopsReport.from_json(report.to_json())):
        assert type(one.macs_per_sample("torch")) is float and one.macs_per_sample("torch") == 4 * 3
        assert type(one.parts["all"].macs_per_sample("torch")) is float


class LayerNorm(nn.Module):
    """A user's own norm, named like torch's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(-1, keepdim=True)


def test_a_user_class_named_like_a_torch_one_is_shown_with_its_module() -> None:
    model = nn.Sequential(nn.Linear(4, 4), LayerNorm(), nn.LayerNorm(4))
    report = lf.profile_model(model, torch.randn(2, 4), counters=("torch",), custom_ops={LayerNorm: 1, nn.LayerNorm: 4})
    assert report.module_types["1"] == f"{__name__}.LayerNorm" and report.module_types["2"] == "LayerNorm"
    assert report.rules == (f"{__name__}.LayerNorm: 1 MACs per output element", "LayerNorm: 4 MACs per output element")
    text = report.statement()
    assert f"{__name__}.LayerNorm: 1 MACs per output element (4 MACs)" in text  # 1 x 4 outputs per sample
    assert "; LayerNorm: 4 MACs per output element (16 MACs)" in text
