"""``custom_ops`` rules replace a module subtree's count in every counter; raw totals are kept, rules are named."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
from torch import nn

import lightning_flops as lf
from examples.models import Block, SmallCNN, TinyAttention, small_cnn_macs, tiny_attention_macs

COUNTERS = ("thop", "fvcore", "torch")
BATCH, SEQ, DIM = 2, 16, 32
EINSUM_MACS = BATCH * 2 * SEQ * SEQ * DIM  # q k^T and p v, which MIT thop does not see
LAYER_NORM_MACS = 2 * (4 * BATCH * SEQ * DIM)  # norm1 and norm2: 4 per output element
GELU_MACS = 8 * BATCH * SEQ * 4 * DIM  # 8 per output element of the hidden MLP layer


def layer_norm_4(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    return 4 * output.numel()


def gelu_8(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    return 8 * output.numel()


def batch_norm_4(module: nn.Module, inputs: tuple, output: torch.Tensor) -> int:
    return 4 * output.numel()


def fixed_1000(module: nn.Module, inputs: tuple, output: Any) -> int:
    return 1000


PAPER_RULES = {nn.LayerNorm: layer_norm_4, nn.GELU: gelu_8}


@functools.cache
def attention(rules: bool) -> lf.FlopsReport:
    torch.manual_seed(0)
    return lf.profile_model(
        TinyAttention(dim=DIM), torch.randint(0, 100, (BATCH, SEQ)), custom_ops=PAPER_RULES if rules else None
    )


def test_rules_replace_layer_norm_and_gelu_in_torch() -> None:
    result = attention(rules=True).counters["torch"]
    assert result.macs == tiny_attention_macs(BATCH, SEQ) + LAYER_NORM_MACS + GELU_MACS
    assert result.raw_macs == tiny_attention_macs(BATCH, SEQ)


def test_rules_replace_layer_norm_and_gelu_in_thop() -> None:
    # MIT thop: linear layers only (no einsum), its own LayerNorm count replaced, GELU (no thop rule) added
    result = attention(rules=True).counters["thop"]
    assert result.macs == tiny_attention_macs(BATCH, SEQ) - EINSUM_MACS + LAYER_NORM_MACS + GELU_MACS
    assert result.raw_macs == attention(rules=False).counters["thop"].macs


def test_rules_replace_layer_norm_and_gelu_in_fvcore() -> None:
    raw = attention(rules=False).counters["fvcore"]
    result = attention(rules=True).counters["fvcore"]
    ruled = sum(raw.by_module.get(name, 0) for name in ("block.norm1", "block.norm2", "block.mlp.1"))
    assert ruled > 0  # fvcore does count LayerNorm: the rule must take its place, not add to it
    assert result.macs == raw.macs - ruled + LAYER_NORM_MACS + GELU_MACS
    assert result.raw_macs == raw.macs


@pytest.mark.parametrize("counter", COUNTERS)
def test_ruled_modules_hold_the_rule_macs_as_custom(counter: str) -> None:
    result = attention(rules=True).counters[counter]
    assert result.module_operators["block.norm1"] == {"custom": 4 * BATCH * SEQ * DIM}
    assert result.module_operators["block.mlp.1"] == {"custom": GELU_MACS}
    assert result.by_operator["custom"] == LAYER_NORM_MACS + GELU_MACS
    assert "norm" not in result.by_operator
    assert result.by_module[""] == result.macs


@pytest.mark.parametrize("counter", COUNTERS)
def test_rules_do_not_change_the_core(counter: str) -> None:
    assert attention(rules=True).counters[counter].core_macs == attention(rules=False).counters[counter].core_macs


def test_rules_are_named_in_the_report() -> None:
    assert attention(rules=True).rules == ("LayerNorm: layer_norm_4", "GELU: gelu_8")
    assert attention(rules=False).rules == ()


@pytest.mark.parametrize("counter", COUNTERS)
@pytest.mark.parametrize("device", [None, "model"])
def test_batch_norm_rule_counts_four_per_element_in_every_counter(counter: str, device: str | None) -> None:
    # fvcore counts this net in place on one sample and scales by the batch: the rule must scale with it
    report = lf.profile_model(
        SmallCNN(),
        torch.randn(4, 3, 32, 32),
        counters=(counter,),
        custom_ops={nn.BatchNorm2d: batch_norm_4},
        device=device,
    )
    result = report.counters[counter]
    bn_elements = 4 * 16 * 32 * 32 + 4 * 32 * 16 * 16  # batch * channels * H * W of both BatchNorms
    assert result.by_operator["custom"] == 4 * bn_elements
    assert result.by_module["features.1"] == 4 * (4 * 16 * 32 * 32)
    assert result.core_macs == small_cnn_macs(4)


def test_rule_on_a_container_replaces_its_whole_subtree() -> None:
    report = lf.profile_model(
        TinyAttention(dim=DIM), torch.randint(0, 100, (BATCH, SEQ)), counters=("torch",), custom_ops={Block: fixed_1000}
    )
    result = report.counters["torch"]
    assert result.macs == 1000 + BATCH * DIM * 4  # the rule plus the head: batch * dim * classes
    assert result.by_module["block"] == 1000
    assert not [name for name in result.by_module if name.startswith("block.")]
    assert result.raw_macs == tiny_attention_macs(BATCH, SEQ)


def test_rule_on_a_module_called_twice_counts_both_calls() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.norm(self.norm(x))

    report = lf.profile_model(Twice(), torch.randn(3, 8), counters=("torch",), custom_ops={nn.LayerNorm: layer_norm_4})
    assert report.counters["torch"].macs == 2 * 4 * 3 * 8  # calls * 4 * elements


def negative_1000(module: nn.Module, inputs: tuple, output: Any) -> int:
    return -1000


def not_a_number(module: nn.Module, inputs: tuple, output: Any) -> float:
    return float("nan")


def a_string(module: nn.Module, inputs: tuple, output: Any) -> str:
    return "12"


BAD_RULES = [(negative_1000, "-1000"), (not_a_number, "nan"), (a_string, "'12'")]


@pytest.mark.parametrize("counter", COUNTERS)
@pytest.mark.parametrize(("rule", "shown"), BAD_RULES, ids=[r.__name__ for r, _ in BAD_RULES])
def test_a_rule_returning_a_bad_value_fails_the_counter_naming_the_rule(counter: str, rule: Any, shown: str) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    report = lf.profile_model(model, torch.randn(2, 4), counters=(counter,), custom_ops={nn.ReLU: rule})
    result = report.counters[counter]
    assert not result.ok
    assert result.macs is None
    assert f"custom_ops rule {rule.__name__} for ReLU (module '1') returned {shown}" in result.error


@pytest.mark.parametrize(("rule", "shown"), BAD_RULES, ids=[r.__name__ for r, _ in BAD_RULES])
def test_a_rule_returning_a_bad_value_raises_under_strict(rule: Any, shown: str) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
    with pytest.raises(lf.CounterError, match=rf"custom_ops rule {rule.__name__} for ReLU .* returned {shown}"):
        lf.profile_model(model, torch.randn(2, 4), counters=("torch",), custom_ops={nn.ReLU: rule}, strict=True)


def test_a_rule_may_return_a_one_element_tensor_or_a_float() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Tanh())
    rules = {nn.ReLU: lambda m, i, o: torch.tensor(6), nn.Tanh: lambda m, i, o: 2.0}
    report = lf.profile_model(model, torch.randn(2, 4), counters=("torch",), device="model", custom_ops=rules)
    result = report.counters["torch"]
    assert result.ok
    assert result.macs == 2 * 4 * 8 + 6 + 2  # batch * in * out, then the two rules' MACs for the whole call
