"""The reference never counts zero in silence: grouped_mm (MoE experts) is counted, unknown kernels are listed.

Every expected number is arithmetic written out here: ``F.grouped_mm(x[T, K], w[G, K, N], offs)`` costs
``offs[-1] * K * N`` MACs (each routed row meets one expert's ``K x N`` weight).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_flops as lf
from lightning_flops.comparison import compute_gaps
from lightning_flops.counters.torch_dispatch import count_flops, count_flops_and_uncounted, grouped_mm_macs
from lightning_flops.report import CounterResult, Uncounted

OFFS = (4, 8, 12, 16)  # four experts, four tokens each


class Experts(nn.Module):
    """Mixtral-style experts run through ``F.grouped_mm`` (transformers 5.x): ``w[G, K, N]``."""

    def __init__(self, groups: int = 4, dim: int = 64, out: int = 32) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(groups, dim, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.grouped_mm(x, self.w, offs=torch.tensor(OFFS, dtype=torch.int32))


def _torch(model: nn.Module, x: torch.Tensor, **kwargs: object) -> lf.CounterResult:
    report = lf.profile_model(model, x, counters=("torch",), batch_size=1, strict=True, **kwargs)
    return report.counters["torch"]


def test_torch_counts_the_issue_repro_grouped_mm() -> None:
    result = _torch(Experts(), torch.randn(16, 64))
    assert result.macs == 16 * 64 * 32  # tokens * in * out
    assert result.by_operator == {"matmul": 16 * 64 * 32}
    assert result.uncounted == ()


def test_torch_counts_only_the_rows_routed_to_an_expert() -> None:
    # offs end at 14: the last two rows of x belong to no group and are not multiplied
    x, w = torch.randn(16, 64), torch.randn(4, 64, 32)
    offs = torch.tensor([4, 8, 12, 14], dtype=torch.int32)
    flops, _, _ = count_flops(lambda: F.grouped_mm(x, w, offs=offs))
    assert flops == 2 * 14 * 64 * 32


def test_torch_counts_grouped_mm_backward_as_two_grouped_products() -> None:
    # backward of x[16, 64] @ w[4, 64, 32]: grad_x = grouped_mm(grad[16, 32], w^T[4, 32, 64]) (2d x 3d) and
    # grad_w = grouped_mm(x^T[64, 16], grad[16, 32]) (2d x 2d, grouped along the inner dimension)
    x = torch.randn(16, 64, requires_grad=True)
    w = torch.randn(4, 64, 32, requires_grad=True)
    offs = torch.tensor(OFFS, dtype=torch.int32)

    def step() -> None:
        out = F.grouped_mm(x, w, offs=offs)
        out.backward(torch.randn(16, 32))

    flops, _, _, uncounted = count_flops_and_uncounted(step)
    assert flops == 2 * (16 * 64 * 32 + 16 * 32 * 64 + 64 * 32 * 16)  # forward, grad_x, grad_w
    assert uncounted == ()


@pytest.mark.parametrize(
    ("a", "b", "offs", "macs"),
    [
        ((16, 64), (4, 64, 32), OFFS, 16 * 64 * 32),  # rows grouped: sum(m_g) * K * N
        ((16, 64), (4, 64, 32), None, 16 * 64 * 32),  # offs unknown (meta): every row counted
        ((4, 8, 64), (64, 48), (12, 24, 36, 48), 8 * 64 * 48),  # columns grouped: M * K * sum(n_g)
        ((8, 64), (64, 32), (16, 32, 48, 64), 8 * 32 * 64),  # inner dim grouped: M * N * sum(k_g)
        ((4, 8, 64), (4, 64, 32), None, 4 * 8 * 64 * 32),  # batched: G * M * K * N
    ],
)
def test_grouped_mm_formula_on_meta_tensors(a: tuple, b: tuple, offs: tuple | None, macs: int) -> None:
    meta_offs = None if offs is None else torch.tensor(offs, dtype=torch.int32)
    on_meta = grouped_mm_macs(torch.empty(a, device="meta"), torch.empty(b, device="meta"), None)
    real = grouped_mm_macs(torch.empty(a), torch.empty(b), meta_offs)
    assert real == macs
    assert on_meta >= macs  # on meta the group sizes are unknown: the upper bound


def test_grouped_mm_counts_on_the_meta_device() -> None:
    # the meta kernel of torch 2.13 takes bfloat16 only; offs on meta cannot be read: all 16 rows are routed
    x = torch.empty(16, 64, device="meta", dtype=torch.bfloat16)
    w = torch.empty(4, 64, 32, device="meta", dtype=torch.bfloat16)
    offs = torch.empty(4, device="meta", dtype=torch.int32)
    flops, _, _, uncounted = count_flops_and_uncounted(lambda: F.grouped_mm(x, w, offs=offs))
    assert flops == 2 * 16 * 64 * 32
    assert uncounted == ()


# ------------------------------------------------------------------------------------ kernels without a formula
_LIB = torch.library.Library("lftest", "DEF")  # a user's custom op, as torch.library registers it
_LIB.define("mystery(Tensor x, Tensor w) -> Tensor")
_LIB.impl("mystery", lambda x, w: x @ w, "CompositeExplicitAutograd")


class Mystery(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(64, 32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.lftest.mystery(torch.ops.lftest.mystery(x, self.w), self.w.t())


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(64, 64)
        self.experts = Mystery()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.experts(self.proj(x))


def test_torch_lists_a_custom_op_without_formula_with_its_module_and_calls() -> None:
    model = nn.Sequential(Block())
    result = _torch(model, torch.randn(16, 64), device="model")
    assert result.macs == 16 * 64 * 64  # the Linear only: the custom op has no formula
    assert result.uncounted == (
        Uncounted(operator="lftest::mystery", module="0.experts", calls=2, reason="no formula"),
    )


def test_uncounted_round_trips_through_json_and_renders_as_a_markdown_list() -> None:
    report = lf.profile_model(nn.Sequential(Block()), torch.randn(16, 64), counters=("torch",), device="model")
    again = lf.FlopsReport.from_json(report.to_json())
    assert again.counters["torch"].uncounted == report.counters["torch"].uncounted
    assert "\n\n- torch: lftest::mystery in 0.experts (no formula, 2x)" in report.to_markdown()


def test_reports_with_uncounted_as_text_still_read() -> None:
    data = lf.profile_model(nn.Linear(4, 3), torch.randn(2, 4), counters=("torch",)).to_dict()
    data["counters"]["torch"]["uncounted"] = ["einsum in block.attn (functional call, 2x)"]
    (entry,) = lf.FlopsReport.from_dict(data).counters["torch"].uncounted
    assert entry == Uncounted(
        operator="einsum", module="", calls=0, reason="einsum in block.attn (functional call, 2x)"
    )


def test_repeated_blocks_collapse_in_the_display_only() -> None:
    from lightning_flops.render import uncounted_lines

    entries = tuple(Uncounted("_grouped_mm", f"model.layers.{i}.mlp.experts", 1, "no formula") for i in range(2))
    assert uncounted_lines(entries) == ["_grouped_mm in model.layers.*.mlp.experts (no formula, 2x)"]


def test_fvcore_convention_ops_share_one_display_line() -> None:
    from lightning_flops.render import uncounted_lines

    reason = "unsupported by fvcore; a convention op (elementwise, norm, ...)"
    entries = (
        Uncounted("add", "", 3, reason),
        Uncounted("mul", "", 2, reason),
        Uncounted("lstm", "", 1, "unsupported"),
    )
    assert uncounted_lines(entries) == [f"add, mul ({reason}, 5x)", "lstm (unsupported, 1x)"]


# --------------------------------------------------------------------------------------------- gap attribution
class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(64, 3 * 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).unsqueeze(0).unsqueeze(0).chunk(3, dim=-1)
        return F.scaled_dot_product_attention(q, k, v)[0, 0]


class MoE(nn.Module):
    """Attention (16 tokens, dim 64) followed by grouped_mm experts 64 -> 256: the experts hold most MACs."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = Attention()
        self.experts = Experts(dim=64, out=256)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.experts(self.attn(x))


def test_gap_names_the_experts_when_the_reference_lacks_their_formula(monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_flops.counters import torch_dispatch

    monkeypatch.delitem(torch_dispatch.FORMULAS, torch.ops.aten._grouped_mm)  # as before this formula existed
    report = lf.profile_model(MoE(), torch.randn(16, 64), counters=("thop", "torch"), batch_size=1)
    torch_result = report.counters["torch"]
    assert torch_result.macs == 16 * 64 * 3 * 64 + 2 * 16 * 16 * 64  # qkv + sdpa: the experts are not counted
    assert torch_result.uncounted == (Uncounted("_grouped_mm", "experts", 1, "no formula"),)
    (gap,) = report.gaps
    assert (gap.module, gap.operators[0]) == ("experts", "_grouped_mm (uncounted)")


@pytest.mark.parametrize(
    ("other", "operators"),
    [
        # thop lists the functional grouped_mm it missed in `experts`, and that it has no rule for `Experts`
        ("thop", ("Experts (uncounted)", "matmul")),  # the missed matmul is the measured difference itself
        ("fvcore", ("matmul",)),  # fvcore lists `_grouped_mm` without a module
    ],
)
def test_gap_against_torch_names_the_experts_not_the_attention(other: str, operators: tuple[str, ...]) -> None:
    report = lf.profile_model(MoE(), torch.randn(16, 64), counters=(other, "torch"), batch_size=1)
    torch_result = report.counters["torch"]
    assert report.counters[other].ok and torch_result.ok
    experts, sdpa, qkv = 16 * 64 * 256, 2 * 16 * 16 * 64, 16 * 64 * 3 * 64  # tokens * in * out; qk^T + pv
    assert torch_result.macs == qkv + sdpa + experts
    (gap,) = report.gaps
    assert gap.flagged
    assert gap.module == "experts"
    assert gap.operators == operators


def _result(name: str, module_operators: dict, uncounted: tuple = ()) -> CounterResult:
    macs = sum(module_operators[""].values())
    return CounterResult(name, True, macs, macs, module_operators=module_operators, uncounted=uncounted)


def test_gap_heads_for_a_module_whose_kernel_the_reference_could_not_count() -> None:
    # thop misses the attention's sdpa (measured: torch counts it); torch has no formula for the experts' kernel:
    # the experts' MACs are unknown to both, so the gap must not blame the attention beside them
    thop = _result("thop", {"": {"linear": 100}, "attn": {"linear": 100}})  # neither books MACs to `experts`
    missing = Uncounted("_grouped_mm", "experts", 1, "no formula")
    torch_ = _result(
        "torch", {"": {"linear": 100, "attention": 50}, "attn": {"linear": 100, "attention": 50}}, (missing,)
    )
    (gap,) = compute_gaps([thop, torch_], limit=0.01)
    assert (gap.module, gap.operators) == ("experts", ("_grouped_mm (uncounted)",))


def test_gap_names_an_uncounted_operator_inside_the_module_it_blames() -> None:
    thop = _result(
        "thop", {"": {"linear": 10}, "attn": {"linear": 10}}, (Uncounted("lftest::mystery", "attn", 2, "no formula"),)
    )
    torch_ = _result("torch", {"": {"linear": 10, "einsum": 40}, "attn": {"linear": 10, "einsum": 40}})
    (gap,) = compute_gaps([thop, torch_], limit=0.01)
    assert (gap.module, gap.operators) == ("attn", ("lftest::mystery (uncounted)", "einsum"))


def test_blind_spots_of_thop_elsewhere_do_not_move_a_measured_gap() -> None:
    # thop overcounts a ConvTranspose (measured) and misses a small functional matmul elsewhere (also measured)
    thop = _result(
        "thop",
        {"": {"conv": 400}, "up": {"conv": 400}, "head": {}},
        (Uncounted("matmul", "head", 1, "functional call: thop counts modules only"),),
    )
    torch_ = _result("torch", {"": {"conv": 100, "matmul": 5}, "up": {"conv": 100}, "head": {"matmul": 5}})
    (gap,) = compute_gaps([thop, torch_], limit=0.01)
    assert (gap.module, gap.operators) == ("up", ("conv",))


def test_transformers_mixtral_grouped_mm_experts_are_counted_exactly() -> None:
    # transformers 5.x runs the experts through F.grouped_mm by default; built from a config, random init
    transformers = pytest.importorskip("transformers")
    config = transformers.MixtralConfig(
        num_hidden_layers=1, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
        num_local_experts=4, num_experts_per_tok=2, vocab_size=50, max_position_embeddings=32,
    )  # fmt: skip
    model = transformers.MixtralForCausalLM(config)
    report = lf.profile_model(model, torch.randint(0, 50, (2, 8)), counters=("thop", "torch"))
    tokens, hidden, inter, experts, top_k, vocab, kv = 2 * 8, 32, 64, 4, 2, 50, 2 * 8  # kv: 2 heads of dim 8
    attention = tokens * hidden * (hidden + 2 * kv + hidden)  # q, k, v, o projections
    attention += 2 * (2 * 4 * 8 * 8 * 8)  # q k^T and p v: batch * heads * q * k * head_dim, each
    moe = tokens * hidden * experts + tokens * top_k * (hidden * 2 * inter + inter * hidden)  # router + experts
    torch_result = report.counters["torch"]
    assert torch_result.macs == attention + moe + tokens * hidden * vocab  # + LM head
    assert torch_result.uncounted == ()
    (gap,) = report.gaps
    assert gap.module == "model.layers.0.mlp.experts"
