"""Reconciliation (``report.explain``) and run diffs (``lf.diff_reports``), against analytic counts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import lightning_flops as lf
from lightning_flops.explain import collapse, own_counts
from lightning_flops.render import explain_rows, explain_summary

BATCH, CH, SIDE, OUT = 2, 8, 6, 4
EINSUM_MACS = BATCH * CH * SIDE * SIDE * CH  # b c h w, c d -> b d h w: one MAC per (b, d, h, w, c)
KERNEL = 3
# stride-2 transposed conv: torch counts one MAC per input element, output channel and tap
CT_TORCH_MACS = BATCH * CH * SIDE * SIDE * OUT * KERNEL * KERNEL
# thop applies the forward-conv rule to the 2x2 larger output: output elements x input channels x taps
CT_THOP_MACS = BATCH * OUT * (2 * SIDE) * (2 * SIDE) * CH * KERNEL * KERNEL


class Mixer(nn.Module):
    """A channel mix written as ``torch.einsum`` (MIT thop sees no rule for it)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(CH, CH))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bchw,cd->bdhw", x, self.weight)


class Upsampler(nn.Module):
    """einsum channel mix, then a stride-2 ``ConvTranspose2d`` doubling the side."""

    def __init__(self) -> None:
        super().__init__()
        self.mix = Mixer()
        self.up = nn.ConvTranspose2d(CH, OUT, KERNEL, stride=2, padding=1, output_padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.mix(x))


def upsampler_report() -> lf.FlopsReport:
    return lf.profile_model(Upsampler(), torch.randn(BATCH, CH, SIDE, SIDE), counters=("thop", "torch"))


def test_thop_is_explained_by_an_uncounted_einsum_and_an_overcounted_transposed_conv() -> None:
    report = upsampler_report()
    assert report.counters["torch"].macs == EINSUM_MACS + CT_TORCH_MACS
    rows = report.explain("thop")
    by_key = {(row.module, row.operator): row for row in rows}
    einsum = by_key[("mix", "einsum")]
    assert einsum.cause == "uncounted" and einsum.macs == -EINSUM_MACS
    conv = by_key[("up", "conv")]
    assert conv.cause == "overcount" and conv.macs == CT_THOP_MACS - CT_TORCH_MACS
    assert "transposed conv" in conv.note
    assert sum(row.macs for row in rows) == report.counters["thop"].macs - report.counters["torch"].macs
    assert not [row for row in rows if row.cause == "unexplained"]
    assert len(rows) == 2


def test_explain_summary_names_the_causes_and_the_share_explained() -> None:
    report = upsampler_report()
    line = explain_summary(report, "thop")
    assert line.startswith("thop - torch = +") and "100% explained" in line
    assert "conv overcount" in line and "einsum uncounted" in line
    assert line in report.to_markdown()


HEADS, SEQ, HEAD_DIM = 2, 6, 8
DIM = HEADS * HEAD_DIM
QKV_MACS = BATCH * SEQ * DIM * 3 * DIM
SDPA_MACS = 2 * BATCH * HEADS * SEQ * SEQ * HEAD_DIM  # q k^T and p v
FVCORE_LAYER_NORM_MACS = 5 * BATCH * SEQ * DIM  # fvcore's convention: 5 per element with affine, torch none


class SdpaBlock(nn.Module):
    """LayerNorm, one qkv projection and ``F.scaled_dot_product_attention`` (fvcore has no handler for it)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(DIM)
        self.qkv = nn.Linear(DIM, 3 * DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm(x)).view(BATCH, SEQ, 3, HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v)


def test_fvcore_is_explained_by_uncounted_sdpa_and_layer_norm_convention() -> None:
    report = lf.profile_model(SdpaBlock(), torch.randn(BATCH, SEQ, DIM), counters=("fvcore", "torch"))
    assert report.counters["torch"].macs == QKV_MACS + SDPA_MACS
    rows = report.explain("fvcore")
    by_key = {(row.module, row.operator): row for row in rows}
    sdpa = by_key[("", "attention")]
    assert sdpa.cause == "uncounted" and sdpa.macs == -SDPA_MACS
    norm = by_key[("norm", "norm")]
    assert norm.cause == "convention" and norm.macs == FVCORE_LAYER_NORM_MACS
    assert sum(row.macs for row in rows) == report.counters["fvcore"].macs - report.counters["torch"].macs
    assert not [row for row in rows if row.cause == "unexplained"]


def test_own_counts_subtract_children_and_sum_to_the_root() -> None:
    inclusive = {"": {"conv": 10, "linear": 5}, "a": {"conv": 10}, "a.b": {"conv": 4}, "c": {"linear": 5}}
    own = own_counts(inclusive)
    assert own == {"a": {"conv": 6}, "a.b": {"conv": 4}, "c": {"linear": 5}}
    assert sum(v for ops in own.values() for v in ops.values()) == 15


def test_repeated_blocks_collapse_in_display_only() -> None:
    groups = collapse([(f"blocks.{i}.attn", "einsum", "uncounted") for i in range(12)], [-5] * 12)
    assert groups == [("blocks.*.attn", "einsum", "uncounted", 12, -60)]


class Stack(nn.Module):
    """``blocks`` of ``Linear(W, W)``; ``extra=True`` adds one more block."""

    def __init__(self, extra: bool) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[nn.Linear(WIDTH, WIDTH) for _ in range(3 if extra else 2)])
        self.head = nn.Linear(WIDTH, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


WIDTH, TOKENS = 16, 3
BLOCK_MACS = TOKENS * WIDTH * WIDTH  # per sample: one Linear(W, W) on TOKENS vectors


def test_diff_of_runs_with_and_without_a_block_has_one_added_row() -> None:
    a = lf.profile_model(Stack(extra=False), torch.randn(4, TOKENS, WIDTH), counters=("torch",))
    b = lf.profile_model(Stack(extra=True), torch.randn(2, TOKENS, WIDTH), counters=("torch",))
    diff = lf.diff_reports(a, b)
    assert [(row.module, row.operator, row.change) for row in diff.rows] == [("blocks.2", "linear", "added")]
    assert diff.rows[0].b_macs == BLOCK_MACS and diff.rows[0].a_macs is None
    assert diff.total_change == b.macs_per_sample("torch") - a.macs_per_sample("torch") == BLOCK_MACS
    assert sum(row.delta for row in diff.rows) == diff.total_change
    assert diff.b_params - diff.a_params == WIDTH * WIDTH + WIDTH
    assert [(r.module, r.change, r.a_params, r.b_params) for r in diff.param_rows] == [
        ("blocks.2", "added", None, WIDTH * WIDTH + WIDTH)  # weight and bias of the extra block
    ]
    assert diff.notes == ()  # per-sample shapes agree (batch 4 vs 2 is fine)


def test_diff_notes_different_input_shapes_in_one_line() -> None:
    a = lf.profile_model(Stack(extra=False), torch.randn(1, TOKENS, WIDTH), counters=("torch",))
    b = lf.profile_model(Stack(extra=False), torch.randn(1, 2 * TOKENS, WIDTH), counters=("torch",))
    diff = lf.diff_reports(a, b)
    assert len(diff.notes) == 1 and "input shapes differ" in diff.notes[0]
    assert diff.total_change == (2 * TOKENS - TOKENS) * (2 * WIDTH * WIDTH + WIDTH * 2)
    assert {row.change for row in diff.rows} == {"changed"}


def test_explain_rows_survive_the_json_round_trip() -> None:
    report = lf.FlopsReport.from_json(upsampler_report().to_json())
    rows = explain_rows(report, report.explain("thop"))
    assert {row["module"] for row in rows} == {"mix", "up"}
    assert sum(row["macs_per_sample"] for row in rows) == (CT_THOP_MACS - CT_TORCH_MACS - EINSUM_MACS) / BATCH


def test_mha_projections_booked_as_linear_by_fvcore_fold_into_torchs_attention_row() -> None:
    batch, length, dim = 2, 6, 32
    projections = 4 * batch * length * dim * dim  # q, k, v and out: fvcore books them as linear, torch as attention
    products = 2 * batch * length * length * dim  # q k^T and p v
    x = torch.randn(batch, length, dim)
    # need_weights=True (the default): explicit bmm products, which fvcore counts (as matmul): no row at all
    whole = lf.profile_model(nn.MultiheadAttention(dim, 4, batch_first=True), (x, x, x), counters=("fvcore", "torch"))
    assert whole.counters["torch"].macs == projections + products
    assert whole.explain("fvcore") == ()
    # inside an encoder layer (need_weights=False) the products run in SDPA, which fvcore has no handler for
    layer = nn.TransformerEncoderLayer(dim, 4, 64, batch_first=True)
    report = lf.profile_model(layer, x, counters=("fvcore", "torch"))
    by_key = {(row.module, row.operator): row for row in report.explain("fvcore")}
    attention = by_key[("self_attn", "attention")]
    assert attention.cause == "undercount" and attention.macs == -products
    assert "as linear" in attention.note and "scaled_dot_product_attention" in attention.note
    assert {row.cause for row in by_key.values()} == {"undercount", "convention"}


def test_fvcore_einsum_rounding_is_an_overcount_with_its_reason() -> None:
    class Mix(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(7, 13))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.einsum("bchw,cd->bdhw", x, self.weight)

    report = lf.profile_model(Mix(), torch.randn(3, 7, 11, 11), counters=("fvcore", "torch"))
    exact = 3 * 7 * 11 * 11 * 13  # 33,033 MACs
    fvcore = int(float(f"{2 * exact:.3e}") // 2)  # numpy's einsum_path prints 2 x MACs to 4 significant digits
    assert report.counters["torch"].macs == exact and report.counters["fvcore"].macs == fvcore == 33_035
    (row,) = report.explain("fvcore")
    assert (row.module, row.operator, row.cause, row.macs) == ("", "einsum", "overcount", fvcore - exact)
    assert "4 significant digits" in row.note
