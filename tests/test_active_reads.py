"""``report.params.active``: the parameters whose tensors an operator read during the profiled call (DESIGN.md), a
fused-experts tensor counting the slices of the experts that received tokens."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import transformers as tf
from torch import nn

import lightning_flops as lf
from lightning_flops.parameters import ParameterReads
from tests.test_paper_path import HW, TOTAL_PARAMS, SegNet

E, D = 4, 16  # experts, width


class FusedExperts(nn.Module):
    """All experts in one 3-D parameter; each row goes to the expert ``expert[row]`` (an eager loop, as Mixtral's)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(E, D, D))
        self.bias = nn.Parameter(torch.zeros(D))

    def forward(self, x: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        for e in expert.unique().tolist():
            rows = expert == e
            out[rows] = F.linear(x[rows], self.weight[e], self.bias)
        return out


class GroupedExperts(nn.Module):
    """All experts in one 3-D parameter, rows sorted by expert and multiplied in one ``_grouped_mm``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(E, D, D, dtype=torch.bfloat16))

    def forward(self, x: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        return torch._grouped_mm(x, self.weight.transpose(1, 2), offs=offs)


def test_a_weight_used_without_calling_its_module_is_active() -> None:
    report = lf.profile_model(SegNet(), torch.randn(2, 3, HW, HW), counters=("torch",))
    # class_embed (an nn.Embedding never called) is read through its weight by an einsum: before, 19,952 of 20,112
    assert report.params.active == report.params.total == TOTAL_PARAMS


def test_a_parameter_no_operator_reads_is_not_active() -> None:
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used, self.spare = nn.Linear(4, 4), nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.used(x) + self.spare.weight.shape[0]  # a shape is no read

    report = lf.profile_model(Unused(), torch.randn(2, 4), counters=("torch",))
    assert report.params.total == 2 * (4 * 4 + 4) and report.params.active == 4 * 4 + 4


@pytest.mark.parametrize("experts", [[0, 2, 2, 0], [3, 3, 3, 3], [0, 1, 2, 3]])
def test_fused_experts_count_the_slices_of_the_experts_that_got_rows(experts: list[int]) -> None:
    inputs = {"x": torch.randn(4, D), "expert": torch.tensor(experts)}
    report = lf.profile_model(FusedExperts(), inputs, counters=("torch",))
    assert report.params.total == E * D * D + D
    assert report.params.active == len(set(experts)) * D * D + D  # the experts' slices and the shared bias


def test_grouped_mm_experts_count_the_groups_with_rows() -> None:
    x = torch.randn(6, D, dtype=torch.bfloat16)
    offs = torch.tensor([2, 2, 5, 6], dtype=torch.int32)  # group sizes 2, 0, 3, 1: expert 1 got no rows
    report = lf.profile_model(GroupedExperts(), (x, offs), counters=("torch",), device="model")
    assert report.params.active == 3 * D * D and report.params.total == E * D * D


def test_reads_record_slices_through_views_and_whole_tensors_otherwise() -> None:
    model = FusedExperts()
    with torch.no_grad(), ParameterReads(model) as reads:
        F.linear(torch.randn(2, D), model.weight[1].t().t())  # a slice, viewed again: still slice 1
        model.weight.sum()  # a reduction reads every expert
        model.bias.view(1, D)  # a view alone reads nothing
    assert reads.read == {"weight": None} and reads.failed is None
    with torch.no_grad(), ParameterReads(model) as reads:
        F.linear(torch.randn(2, D), model.weight[-1])
        model.weight[torch.tensor([0, 0])].sum()
    assert reads.read == {"weight": {E - 1, 0}}


@pytest.mark.parametrize("implementation", ["eager", "grouped_mm"])
def test_mixtral_active_parameters_are_the_routed_experts(implementation: str) -> None:
    torch.manual_seed(0)
    config = tf.MixtralConfig(
        vocab_size=64, hidden_size=D, intermediate_size=2 * D, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, num_local_experts=8, num_experts_per_tok=2, experts_implementation=implementation,
    )  # fmt: skip
    model = tf.MixtralForCausalLM(config).eval()
    ids = torch.randint(0, 64, (1, 3))
    hit: list[int] = []  # experts that received tokens, per layer, from the model's own router
    handles = [layer.mlp.gate.register_forward_hook(lambda m, i, o: hit.append(o[2].unique().numel()))
               for layer in model.model.layers]  # fmt: skip
    with torch.no_grad():
        model(input_ids=ids)
    for handle in handles:
        handle.remove()
    report = lf.profile_model(model, {"input_ids": ids}, counters=("torch",))
    per_expert = 3 * D * 2 * D  # gate, up and down projections
    assert sum(hit) < 2 * 8  # 3 tokens x top-2 cannot reach all 8 experts
    assert report.params.active == report.params.total - sum(8 - h for h in hit) * per_expert
