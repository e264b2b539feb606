"""The torch counter equals hand-written arithmetic for every op of research/ops_table.md, on CPU and on meta.

``device="model"`` counts on the real CPU tensors (this exercises the fixups for the fused CPU kernels: SDPA's
flash kernel, the ``nn.MultiheadAttention`` fast path under ``no_grad`` and ``mkldnn_rnn_layer``);
``device="meta"`` counts on a meta copy, where those kernels decompose.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_flops as lf

DEVICES = ("model", "meta")


class Fn(nn.Module):
    """Wraps a function of the inputs as a module (no parameters)."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args: Any) -> Any:
        return self.fn(*args)


class FunctionalLinear(nn.Module):
    """``F.linear`` on its own parameters (64 -> 128): no ``nn.Linear`` for module hooks to see."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(128, 64))
        self.bias = nn.Parameter(torch.randn(128))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Attend(nn.Module):
    """``nn.MultiheadAttention(64, 4, batch_first=True)``: self-attention, or cross-attention when ``kv`` is given."""

    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(64, 4, batch_first=True)

    def forward(self, q: torch.Tensor, kv: torch.Tensor | None = None) -> torch.Tensor:
        kv = q if kv is None else kv
        return self.mha(q, kv, kv)[0]


@dataclass(frozen=True)
class Op:
    """One row of the ops table: a module factory, an input factory, the analytic MACs and our operator name."""

    id: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], Any]
    macs: int
    operator: str | None = None


def _randn(*shapes: tuple[int, ...]) -> Callable[[], Any]:
    def make() -> Any:
        tensors = tuple(torch.randn(*shape) for shape in shapes)
        return tensors[0] if len(tensors) == 1 else tensors

    return make


# fmt: off
CORE_OPS = [
    Op("linear_bias", lambda: nn.Linear(64, 128), _randn((2, 10, 64)),
       2 * 10 * 64 * 128, "linear"),  # batch * seq * in * out
    Op("linear_no_bias", lambda: nn.Linear(64, 128, bias=False), _randn((2, 10, 64)),
       2 * 10 * 64 * 128, "linear"),
    Op("conv2d_bias", lambda: nn.Conv2d(16, 32, 3, padding=1), _randn((2, 16, 32, 32)),
       2 * 32 * 32 * 32 * 16 * 3 * 3, "conv"),  # batch * out_ch * H_out * W_out * in_ch * k * k
    Op("conv2d_no_bias", lambda: nn.Conv2d(16, 32, 3, padding=1, bias=False), _randn((2, 16, 32, 32)),
       2 * 32 * 32 * 32 * 16 * 3 * 3, "conv"),
    Op("conv2d_groups4", lambda: nn.Conv2d(16, 32, 3, padding=1, groups=4, bias=False), _randn((2, 16, 32, 32)),
       2 * 32 * 32 * 32 * (16 // 4) * 3 * 3, "conv"),  # each output channel sees in_ch / groups inputs
    Op("conv2d_depthwise", lambda: nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), _randn((2, 16, 32, 32)),
       2 * 16 * 32 * 32 * 1 * 3 * 3, "conv"),
    Op("conv2d_stride2", lambda: nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), _randn((2, 16, 32, 32)),
       2 * 32 * 16 * 16 * 16 * 3 * 3, "conv"),  # output is 16 x 16
    Op("conv_transpose2d_no_bias", lambda: nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1, bias=False),
       _randn((2, 16, 16, 16)), 2 * 16 * 16 * 16 * 8 * 4 * 4, "conv"),  # input elements * out_ch * k * k
    Op("conv_transpose2d_bias", lambda: nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1),
       _randn((2, 16, 16, 16)), 2 * 16 * 16 * 16 * 8 * 4 * 4, "conv"),
    Op("torch_matmul_4d", lambda: Fn(torch.matmul), _randn((2, 4, 32, 16), (2, 4, 16, 24)),
       2 * 4 * 32 * 16 * 24, "matmul"),  # batch * heads * n * k * m
    Op("matmul_operator", lambda: Fn(lambda a, b: a @ b), _randn((2, 4, 32, 16), (2, 4, 16, 24)),
       2 * 4 * 32 * 16 * 24, "matmul"),
    Op("tensor_matmul_method", lambda: Fn(lambda a, b: a.matmul(b)), _randn((2, 4, 32, 16), (2, 4, 16, 24)),
       2 * 4 * 32 * 16 * 24, "matmul"),
    Op("matmul_3d_by_2d", lambda: Fn(torch.matmul), _randn((2, 32, 64), (64, 48)),
       2 * 32 * 64 * 48, "matmul"),
    Op("bmm", lambda: Fn(torch.bmm), _randn((8, 32, 16), (8, 16, 24)),
       8 * 32 * 16 * 24, "matmul"),
    Op("einsum_scores", lambda: Fn(lambda q, k: torch.einsum("bhnd,bhmd->bhnm", q, k)),
       _randn((2, 4, 32, 16), (2, 4, 24, 16)), 2 * 4 * 32 * 24 * 16, "einsum"),  # b * h * n * m * d
    Op("functional_linear", FunctionalLinear, _randn((2, 10, 64)),
       2 * 10 * 64 * 128, "linear"),
    Op("sdpa", lambda: Fn(F.scaled_dot_product_attention), _randn((2, 4, 32, 16), (2, 4, 24, 16), (2, 4, 24, 16)),
       2 * (2 * 4 * 32 * 24 * 16), "attention"),  # q k^T and p v, each b * h * n * m * d
    Op("mha_self_attention", Attend, _randn((2, 32, 64)),
       4 * (2 * 32 * 64 * 64)  # q, k, v and out projections: batch * seq * dim * dim each
       + 2 * (2 * 32 * 32 * 64), "attention"),  # q k^T and p v: batch * seq * seq * dim each
    Op("mha_cross_attention", Attend, _randn((2, 32, 64), (2, 24, 64)),
       2 * (2 * 32 * 64 * 64)  # q and out projections on 32 query tokens
       + 2 * (2 * 24 * 64 * 64)  # k and v projections on 24 source tokens
       + 2 * (2 * 32 * 24 * 64), "attention"),  # q k^T and p v
    Op("lstm", lambda: nn.LSTM(64, 128, batch_first=True), _randn((2, 10, 64)),
       2 * 10 * 4 * 128 * (64 + 128), "rnn"),  # batch * seq * gates * hidden * (in + hidden)
    Op("gru", lambda: nn.GRU(64, 128, batch_first=True), _randn((2, 10, 64)),
       2 * 10 * 3 * 128 * (64 + 128), "rnn"),
    Op("lstm_2_layers_bidirectional", lambda: nn.LSTM(64, 128, num_layers=2, bidirectional=True, batch_first=True),
       _randn((2, 10, 64)),
       2 * (2 * 10 * 4 * 128 * (64 + 128))  # layer 0, two directions
       + 2 * (2 * 10 * 4 * 128 * (2 * 128 + 128)), "rnn"),  # layer 1 reads both directions (2 * hidden)
]

ZERO_OPS = [
    Op("layer_norm", lambda: nn.LayerNorm(64), _randn((2, 32, 64)), 0),
    Op("batch_norm_eval", lambda: nn.BatchNorm2d(16), _randn((2, 16, 32, 32)), 0),
    Op("group_norm", lambda: nn.GroupNorm(4, 16), _randn((2, 16, 32, 32)), 0),
    Op("relu_module", nn.ReLU, _randn((2, 16, 32, 32)), 0),
    Op("relu_functional", lambda: Fn(F.relu), _randn((2, 16, 32, 32)), 0),
    Op("gelu", nn.GELU, _randn((2, 16, 32, 32)), 0),
    Op("silu", nn.SiLU, _randn((2, 16, 32, 32)), 0),
    Op("tensor_softmax", lambda: Fn(lambda x: x.softmax(-1)), _randn((2, 4, 32, 24)), 0),
    Op("softmax_module", lambda: nn.Softmax(-1), _randn((2, 4, 32, 24)), 0),
    Op("normalize", lambda: Fn(lambda x: F.normalize(x, dim=-1)), _randn((2, 32, 64)), 0),
    Op("interpolate_bilinear", lambda: Fn(lambda x: F.interpolate(x, scale_factor=2, mode="bilinear")),
       _randn((2, 16, 16, 16)), 0),
    Op("upsample_nearest", lambda: nn.Upsample(scale_factor=2), _randn((2, 16, 16, 16)), 0),
    Op("adaptive_avg_pool", lambda: nn.AdaptiveAvgPool2d(1), _randn((2, 16, 32, 32)), 0),
    Op("max_pool", lambda: nn.MaxPool2d(2), _randn((2, 16, 32, 32)), 0),
    Op("embedding", lambda: nn.Embedding(1000, 64), lambda: torch.randint(0, 1000, (2, 32)), 0),
    Op("add_operator", lambda: Fn(lambda x, y: x + y), _randn((2, 16, 32, 32), (2, 16, 32, 32)), 0),
    Op("torch_add", lambda: Fn(torch.add), _randn((2, 16, 32, 32), (2, 16, 32, 32)), 0),
    Op("mul_operator", lambda: Fn(lambda x, y: x * y), _randn((2, 16, 32, 32), (2, 16, 32, 32)), 0),
    Op("torch_mul", lambda: Fn(torch.mul), _randn((2, 16, 32, 32), (2, 16, 32, 32)), 0),
    Op("topk", lambda: Fn(lambda x: torch.topk(x, 5, dim=-1).values), _randn((2, 16, 32, 32)), 0),
]
# fmt: on

ALL_OPS = CORE_OPS + ZERO_OPS


def _ids(ops: list[Op]) -> list[str]:
    return [op.id for op in ops]


@functools.cache
def _torch_result(op: Op, device: str, mode: str = "eval") -> lf.CounterResult:
    """The torch counter's (frozen) result for ``op``; cached so that several assertions share one profile."""
    report = lf.profile_model(op.build(), op.inputs(), counters=("torch",), device=device, mode=mode, strict=True)
    return report.counters["torch"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", CORE_OPS, ids=_ids(CORE_OPS))
def test_torch_macs_equal_analytic_count(op: Op, device: str) -> None:
    result = _torch_result(op, device)
    assert result.macs == op.macs
    assert result.flops == 2 * op.macs


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", CORE_OPS, ids=_ids(CORE_OPS))
def test_torch_books_core_op_to_its_operator_and_the_root(op: Op, device: str) -> None:
    result = _torch_result(op, device)
    assert result.by_operator == {op.operator: op.macs}
    assert result.by_module[""] == op.macs
    assert result.core_macs == op.macs
    assert result.uncounted == ()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ZERO_OPS, ids=_ids(ZERO_OPS))
def test_torch_counts_zero_macs_for_ops_without_multiply_accumulates(op: Op, device: str) -> None:
    result = _torch_result(op, device)
    assert result.core_macs == 0
    assert result.macs == 0
    assert result.flops == 0


MODE_DEPENDENT_OPS = [o for o in CORE_OPS if o.operator in ("attention", "rnn")]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", MODE_DEPENDENT_OPS, ids=_ids(MODE_DEPENDENT_OPS))
def test_torch_counts_attention_and_rnn_in_train_mode_like_eval_mode(op: Op, device: str) -> None:
    # training mode picks other kernels (no MHA fast path, RNN kernels that keep state for backward)
    result = _torch_result(op, device, mode="train")
    assert result.macs == op.macs
    assert result.by_operator == {op.operator: op.macs}


def test_torch_reports_the_device_it_counted_on() -> None:
    op = CORE_OPS[0]
    assert _torch_result(op, "model").device == "cpu"
    assert _torch_result(op, "meta").device == "meta"


def test_torch_counts_the_fused_cpu_multi_head_attention_kernel() -> None:
    # nn.MultiheadAttention never reaches this kernel under our counter (an active TorchFunctionMode disables the
    # fast path), but a direct call does: its formula must give the self-attention count of the table.
    from lightning_flops.counters.torch_dispatch import count_flops

    mha = nn.MultiheadAttention(64, 4, batch_first=True).eval()
    x = torch.randn(2, 32, 64)
    w_qkv, b_qkv, w_out, b_out = mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight, mha.out_proj.bias
    with torch.no_grad():
        flops, _, _ = count_flops(
            lambda: torch._native_multi_head_attention(x, x, x, 64, 4, w_qkv, b_qkv, w_out, b_out, need_weights=False)
        )
    assert flops == 2 * (4 * (2 * 32 * 64 * 64) + 2 * (2 * 32 * 32 * 64))  # 2 FLOPs per MAC: projections + products


# ----------------------------------------------------------------------- kernels torch 2.13 has no formula for
def _flops_of(fn: Callable[[], Any]) -> tuple[int, tuple]:
    from lightning_flops.counters.torch_dispatch import count_flops_and_uncounted

    with torch.no_grad():
        flops, _, _, uncounted = count_flops_and_uncounted(fn)
    return flops, uncounted


# fmt: off
EXTRA_KERNELS = [
    ("addmm_inplace", lambda: torch.randn(4, 16).addmm_(torch.randn(4, 3), torch.randn(3, 16)), 4 * 3 * 16),
    ("baddbmm_inplace", lambda: torch.randn(2, 4, 16).baddbmm_(torch.randn(2, 4, 3), torch.randn(2, 3, 16)),
     2 * 4 * 3 * 16),  # batch * n * k * m
    ("addbmm", lambda: torch.addbmm(torch.randn(4, 16), torch.randn(2, 4, 3), torch.randn(2, 3, 16)), 2 * 4 * 3 * 16),
    ("mv", lambda: torch.mv(torch.randn(8, 16), torch.randn(16)), 8 * 16),
    ("addmv", lambda: torch.addmv(torch.randn(8), torch.randn(8, 16), torch.randn(16)), 8 * 16),
    ("dot", lambda: torch.dot(torch.randn(16), torch.randn(16)), 16),
    ("addr", lambda: torch.addr(torch.randn(8, 16), torch.randn(8), torch.randn(16)), 8 * 16),
    ("int_mm", lambda: torch._int_mm(torch.ones(32, 64, dtype=torch.int8), torch.ones(64, 32, dtype=torch.int8)),
     32 * 64 * 32),
    ("addmm_activation", lambda: torch.ops.aten._addmm_activation(torch.randn(8), torch.randn(4, 16),
                                                                 torch.randn(16, 8)), 4 * 16 * 8),
]
# fmt: on


@pytest.mark.parametrize(("kernel", "fn", "macs"), EXTRA_KERNELS, ids=[k[0] for k in EXTRA_KERNELS])
def test_torch_counts_kernels_flop_counter_mode_lacks(kernel: str, fn: Callable[[], Any], macs: int) -> None:
    flops, uncounted = _flops_of(fn)
    assert flops == 2 * macs
    assert uncounted == ()


def _meta(*shape: int) -> torch.Tensor:
    return torch.empty(*shape, device="meta")


def _lstm_weights(inputs: int, hidden: int, layers: int, directions: int) -> list[torch.Tensor]:
    """cuDNN's weight list: per layer and direction w_ih [4H, in], w_hh [4H, H], b_ih [4H], b_hh [4H]."""
    weights = []
    for layer in range(layers):
        width = inputs if layer == 0 else hidden * directions
        for _ in range(directions):
            weights += [_meta(4 * hidden, width), _meta(4 * hidden, hidden), _meta(4 * hidden), _meta(4 * hidden)]
    return weights


def _formula(name: str) -> Callable[..., int]:
    """Our registered formula of ``aten::name``, called as FlopCounterMode calls it (arguments bound by name)."""
    from lightning_flops.counters.formulas import FORMULAS

    return FORMULAS[getattr(torch.ops.aten, name)]


def test_cudnn_rnn_formula_equals_the_lstm_count() -> None:
    # CUDA-only: called on meta tensors. The 2-layer bidirectional LSTM of CORE_OPS, sequence-first [T, B, I]
    x, weights = _meta(10, 2, 64), _lstm_weights(64, 128, 2, 2)
    flops = _formula("_cudnn_rnn")(x, weights, 4, None, _meta(4, 2, 128), _meta(4, 2, 128), 2, 128, 0, 2, False, 0.0,
                               False, True, [], None)  # fmt: skip
    assert flops == 2 * (2 * (2 * 10 * 4 * 128 * (64 + 128)) + 2 * (2 * 10 * 4 * 128 * (2 * 128 + 128)))
    mask = [True, True, True, True]
    backward = _formula("_cudnn_rnn_backward")(x, weights, 4, None, None, None, None, None, None, None, 2, 128, 0, 2,
                                           False, 0.0, True, True, [], None, None, mask)  # fmt: skip
    assert backward == 2 * flops  # data gradients (one forward) + weight gradients (one forward)
    packed = _formula("_cudnn_rnn")(_meta(15, 64), weights, 4, None, None, None, 2, 128, 0, 2, False, 0.0, False, True,
                                [2, 2, 2, 2, 2, 1, 1, 1, 1, 1], None)  # fmt: skip
    assert packed == 2 * 15 * sum(w.shape[0] * w.shape[1] for w in weights if w.dim() == 2)  # 15 packed tokens


def test_miopen_rnn_formula_equals_the_lstm_count() -> None:
    x, weights = _meta(10, 2, 64), _lstm_weights(64, 128, 1, 1)
    flops = _formula("miopen_rnn")(x, weights, 4, None, None, 2, 128, 1, False, 0.0, False, False, [], None)
    assert flops == 2 * 2 * 10 * 4 * 128 * (64 + 128)  # batch * seq * gates * hidden * (in + hidden)


def test_scaled_grouped_mm_formula_reads_its_offs() -> None:
    x, w = _meta(16, 64), _meta(4, 64, 32)
    offs = torch.tensor([4, 8, 12, 14], dtype=torch.int32)
    assert _formula("_scaled_grouped_mm")(x, w, _meta(16), _meta(4, 32), offs) == 2 * 14 * 64 * 32
    assert _formula("_scaled_grouped_mm_v2")(x, w, [], [], [], [], [], [], offs) == 2 * 14 * 64 * 32
    assert _formula("_scaled_mm_v2")(_meta(32, 64), _meta(64, 48)) == 2 * 32 * 64 * 48  # _scaled_mm_v2


def test_cuda_attention_formulas_equal_the_sdpa_count() -> None:
    # q [B=2, H=4, 32, 16], k/v [2, 4, 24, 16]: q k^T and p v, each b * h * n * m * d; backward 2.5x (torch's rule)
    from torch.utils.flop_counter import sdpa_backward_flop_count

    q, k, v = _meta(2, 4, 32, 16), _meta(2, 4, 24, 16), _meta(2, 4, 24, 16)
    forward = 2 * (2 * (2 * 4 * 32 * 24 * 16))
    assert _formula("_scaled_dot_product_fused_attention_overrideable")(q, k, v) == forward
    assert _formula("_cudnn_attention_forward")(q, k, v, None, None, None, 32, 24) == forward
    backward = sdpa_backward_flop_count(q.shape, q.shape, k.shape, v.shape)
    assert backward == 2 * 5 * (2 * 4 * 32 * 24 * 16)  # dq, dk, dv, dp and the recomputed scores
    assert _formula("_scaled_dot_product_fused_attention_overrideable_backward")(q, q, k, v) == backward
    assert _formula("_cudnn_attention_backward")(q, q, k, v, q, None, None, None, None, None, None, 32, 24) == backward


def test_cudnn_attention_formula_counts_packed_sequences_one_by_one() -> None:
    # two sequences of 5 and 3 tokens packed as [8, H=2, D=16]: 5 * 5 and 3 * 3 score blocks
    q = k = v = torch.empty(8, 2, 16)
    cum = torch.tensor([0, 5, 8], dtype=torch.int32)
    flops = _formula("_cudnn_attention_forward")(q, k, v, None, cum, cum, 5, 5)
    assert flops == 2 * 2 * (2 * 5 * 5 * 16 + 2 * 3 * 3 * 16)  # (q k^T + p v) per sequence, heads * n * m * d each


def test_formulas_read_arguments_by_schema_name_positional_or_keyword() -> None:
    # aten::_cudnn_rnn_backward(..., batch_sizes (18), dropout_state, reserve, output_mask (21)): the same count
    # whether output_mask comes by position or by keyword; a False weight-gradient flag halves it
    x, weights = _meta(10, 2, 64), _lstm_weights(64, 128, 1, 1)
    head = (x, weights, 4, None, None, None, None, None, None, None, 2, 128, 0, 1, False, 0.0, True, False, [], None)
    backward = _formula("_cudnn_rnn_backward")
    full = 2 * 2 * (2 * 10 * 4 * 128 * (64 + 128))  # (data + weight gradients) * batch * seq * gates * H * (in + H)
    assert backward(*head, None, [True, True, True, True]) == full
    assert backward(*head, reserve=None, output_mask=[True, True, True, False]) == full // 2
    offs = torch.tensor([4, 8, 12, 14], dtype=torch.int32)
    assert _formula("_grouped_mm")(_meta(16, 64), _meta(4, 64, 32), offs=offs) == 2 * 14 * 64 * 32  # rows * in * out
    assert _formula("_grouped_mm")(_meta(16, 64), _meta(4, 64, 32)) == 2 * 16 * 64 * 32  # offs=None: every row


def test_every_formula_is_registered_once_under_a_real_operator() -> None:
    import torch.utils.flop_counter as fc

    from lightning_flops.counters.formulas import FORMULAS, Call, formula

    assert not set(FORMULAS) & set(fc.flop_registry)  # ours add to torch's, never replace one
    before = dict(FORMULAS)

    @formula("aten::no_such_operator_here")
    def _nothing(call: Call) -> int:
        return 1

    assert before == FORMULAS  # an operator this torch lacks is skipped
