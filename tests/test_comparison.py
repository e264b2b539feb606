"""Gaps between counters: conventions never flag by default, missed core work does, and is attributed."""

from __future__ import annotations

import functools

import pytest
import torch

import lightning_flops as lf
from examples.models import SmallCNN, TinyAttention, small_cnn_macs, tiny_attention_macs
from lightning_flops.comparison import apply_rules, attribute_gap, compute_gaps, relative_gap
from lightning_flops.report import CounterResult

BATCH, SEQ = 2, 16
EINSUM_MACS = BATCH * 2 * SEQ * SEQ * 32  # q k^T and p v: batch * 2 * seq^2 * dim (dim = 32)


@functools.cache
def bn_report(flag_on: str = "core", limit: float = 0.01) -> lf.FlopsReport:
    """SmallCNN: two conv-BN-ReLU stages; thop counts BatchNorm 4 per element, fvcore 2, torch 0."""
    torch.manual_seed(0)
    return lf.profile_model(SmallCNN(), torch.randn(4, 3, 32, 32), flag_on=flag_on, limit=limit)


@functools.cache
def attention_report(limit: float = 0.01) -> lf.FlopsReport:
    """TinyAttention: both attention products are einsums, which MIT thop does not see."""
    torch.manual_seed(0)
    return lf.profile_model(TinyAttention(), torch.randint(0, 100, (BATCH, SEQ)), limit=limit)


def gap(report: lf.FlopsReport, key: str) -> lf.Gap:
    return next(g for g in report.gaps if g.key == key)


def test_gaps_cover_every_pair_in_the_order_given() -> None:
    assert [g.key for g in bn_report().gaps] == ["thop_vs_fvcore", "thop_vs_torch", "fvcore_vs_torch"]
    report = lf.profile_model(SmallCNN(), torch.randn(1, 3, 32, 32), counters=("torch", "thop"))
    assert [g.key for g in report.gaps] == ["torch_vs_thop"]


def test_batchnorm_net_differs_only_by_convention() -> None:
    report = bn_report()
    for counter in report.counters.values():
        assert counter.core_macs == small_cnn_macs(4)  # conv + linear agree everywhere
    assert report.counters["torch"].macs == small_cnn_macs(4)
    for g in report.gaps:
        assert g.core_relative == 0.0
    assert gap(report, "thop_vs_torch").relative > report.limit


def test_batchnorm_convention_gap_is_not_flagged_on_core() -> None:
    report = bn_report()
    assert not any(g.flagged for g in report.gaps)
    assert not report.flagged


def test_batchnorm_convention_gap_is_flagged_with_flag_on_total() -> None:
    report = bn_report(flag_on="total")
    thop_torch = gap(report, "thop_vs_torch")
    assert thop_torch.flagged and report.flagged
    assert thop_torch.module == "features.1"  # the first BatchNorm holds the largest share of thop's extra MACs
    assert thop_torch.operators == ("norm",)


def test_gap_relative_is_difference_over_larger_count() -> None:
    report = bn_report()
    thop, torch_ = report.counters["thop"].macs, report.counters["torch"].macs
    assert gap(report, "thop_vs_torch").relative == abs(thop - torch_) / max(thop, torch_)


def test_einsum_attention_missed_by_thop_is_flagged() -> None:
    report = attention_report()
    assert report.counters["torch"].macs == tiny_attention_macs(BATCH, SEQ)
    assert report.counters["thop"].core_macs == tiny_attention_macs(BATCH, SEQ) - EINSUM_MACS
    thop_torch = gap(report, "thop_vs_torch")
    assert thop_torch.core_relative == EINSUM_MACS / tiny_attention_macs(BATCH, SEQ)
    assert thop_torch.flagged and report.flagged


@pytest.mark.parametrize("key", ["thop_vs_torch", "thop_vs_fvcore"])
def test_einsum_gap_is_attributed_to_the_attention_module_and_einsum(key: str) -> None:
    g = gap(attention_report(), key)
    assert g.module == "block.attn"
    assert g.operators == ("einsum",)


def test_fvcore_einsum_rounding_is_not_flagged() -> None:
    # fvcore rounds einsum counts to 4 significant digits: a tiny core gap, far below the limit
    g = gap(attention_report(), "fvcore_vs_torch")
    assert 0 < g.core_relative < 1e-4
    assert not g.flagged


def test_limit_above_the_gap_is_not_flagged_and_below_is() -> None:
    share = EINSUM_MACS / tiny_attention_macs(BATCH, SEQ)  # about 7.7%
    assert not gap(attention_report(limit=share * 1.01), "thop_vs_torch").flagged
    assert gap(attention_report(limit=share * 0.99), "thop_vs_torch").flagged


@pytest.mark.parametrize(("a", "b", "expected"), [(90, 100, 0.1), (100, 90, 0.1), (0, 0, 0.0), (0, 5, 1.0), (7, 7, 0)])
def test_relative_gap_arithmetic(a: int, b: int, expected: float) -> None:
    assert relative_gap(a, b) == pytest.approx(expected)


# --------------------------------------------------------------------------------------- pure functions
COUNTS = {
    "": {"linear": 100, "norm": 10},
    "a": {"linear": 60, "norm": 10},
    "a.norm": {"norm": 10},
    "a.fc": {"linear": 60},
    "b": {"linear": 40},
}


def test_apply_rules_replaces_a_leaf_and_updates_ancestors() -> None:
    assert apply_rules(COUNTS, {"a.norm": 32}) == {
        "": {"linear": 100, "custom": 32},  # norm 10 - 10 removed, rule 32 added
        "a": {"linear": 60, "custom": 32},
        "a.norm": {"custom": 32},
        "a.fc": {"linear": 60},
        "b": {"linear": 40},
    }


def test_apply_rules_replaces_a_whole_subtree_and_ignores_nested_rules() -> None:
    assert apply_rules(COUNTS, {"a": 7, "a.norm": 32}) == {
        "": {"linear": 100 - 60, "custom": 7},
        "a": {"custom": 7},
        "b": {"linear": 40},
    }


def test_apply_rules_does_not_modify_its_input() -> None:
    before = {m: dict(ops) for m, ops in COUNTS.items()}
    apply_rules(COUNTS, {"a.norm": 32})
    assert before == COUNTS


def test_attribute_gap_walks_down_to_the_largest_share() -> None:
    missing_b = {"": {"linear": 40}, "b": {"linear": 40}}  # counter b saw nothing of module "a"
    assert attribute_gap(COUNTS, missing_b) == ("a.fc", ("linear",))


def test_attribute_gap_stops_where_own_operators_win() -> None:
    a = {"": {"matmul": 50, "linear": 10}, "x": {"linear": 10}}
    b = {"": {"linear": 8}, "x": {"linear": 8}}
    assert attribute_gap(a, b) == ("", ("matmul", "linear"))


def test_attribute_gap_on_core_ignores_conventions() -> None:
    a = {"": {"norm": 500, "linear": 10}, "n": {"norm": 500}, "l": {"linear": 10}}
    b = {"": {"linear": 5}, "l": {"linear": 5}}
    assert attribute_gap(a, b, core_only=True) == ("l", ("linear",))
    assert attribute_gap(a, b, core_only=False) == ("n", ("norm",))


def test_compute_gaps_skips_failed_counters_and_flags_on_core() -> None:
    a = CounterResult("a", ok=True, macs=110, module_operators={"": {"linear": 100, "norm": 10}})
    b = CounterResult("b", ok=True, macs=100, module_operators={"": {"linear": 100}})
    failed = CounterResult("c", ok=False, error="RuntimeError: x")
    (only,) = compute_gaps([a, failed, b], limit=0.05)
    assert (only.key, only.relative, only.core_relative, only.flagged) == ("a_vs_b", 10 / 110, 0.0, False)
    (total,) = compute_gaps([a, b], limit=0.05, flag_on="total")
    assert total.flagged and total.module == "" and total.operators == ("norm",)
