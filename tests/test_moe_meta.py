"""Mixture-of-experts on the meta device (``moe_routing="balanced"``) and ``params.active_per_token``.

With top-k routing every token meets exactly ``k`` experts, so the MACs of a meta count under the balanced
assumption equal those of the same model counted in place on real weights, whatever the router chose; the
parameters one token passes through are the shared parts plus ``k`` experts per MoE layer:
``total - moe_layers * (experts - k) * expert_params``, written out below from each config.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lightning_flops as lf
from lightning_flops.sinks import metrics_from_report

tf = pytest.importorskip("transformers")

B, T, V, D = 2, 6, 100, 32  # batch, sequence, vocab, width


def _deepseek_v3() -> tuple[nn.Module, int]:
    config = tf.DeepseekV3Config(
        vocab_size=V, hidden_size=D, intermediate_size=64, moe_intermediate_size=16, num_hidden_layers=3,
        first_k_dense_replace=1, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, n_group=2,
        topk_group=1, num_attention_heads=4, num_key_value_heads=4, q_lora_rank=16, kv_lora_rank=16,
        qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, max_position_embeddings=64,
    )  # fmt: skip
    unused = 2 * (8 - 2) * 3 * D * 16  # 2 MoE layers x 6 experts a token skips x (gate, up, down) D x 16
    return tf.DeepseekV3ForCausalLM(config), unused


def _mixtral() -> tuple[nn.Module, int]:
    config = tf.MixtralConfig(
        vocab_size=V, hidden_size=D, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=64,
    )  # fmt: skip
    return tf.MixtralForCausalLM(config), 2 * (4 - 2) * 3 * D * 64  # 2 layers x 2 skipped experts x D x 64 x 3


def _qwen2_moe() -> tuple[nn.Module, int]:
    config = tf.Qwen2MoeConfig(
        vocab_size=V, hidden_size=D, intermediate_size=64, moe_intermediate_size=16, shared_expert_intermediate_size=32,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
        decoder_sparse_step=1, max_position_embeddings=64,
    )  # fmt: skip
    return tf.Qwen2MoeForCausalLM(config), 2 * (4 - 2) * 3 * D * 16


def _ids() -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("build", [_deepseek_v3, _mixtral, _qwen2_moe], ids=["deepseek_v3", "mixtral", "qwen2_moe"])
def test_balanced_meta_count_equals_the_real_weights_count(build) -> None:
    model, unused = build()
    real = lf.profile_model(model, _ids(), counters=("torch",), device="model", strict=True)
    meta = lf.profile_model(model, _ids(), counters=("torch",), device="meta", strict=True, moe_routing="balanced")
    assert meta.counters["torch"].device == "meta" and real.counters["torch"].device == "cpu"
    assert meta.counters["torch"].macs == real.counters["torch"].macs
    total = sum(p.numel() for p in model.parameters())
    assert real.params.active_per_token == meta.params.active_per_token == total - unused
    assert meta.moe_routing == "balanced" and real.moe_routing is None  # stated only where it was assumed
    assert "balanced-routing assumption" in meta.statement() and "balanced" not in real.statement()


def test_meta_count_without_an_assumption_names_the_option() -> None:
    model, _ = _mixtral()
    with torch.device("meta"):
        giant = type(model)(model.config)
    with pytest.raises(lf.CounterError, match="moe_routing='balanced'"):
        lf.profile_model(giant, _ids().to("meta"), counters=("torch",), device="meta", strict=True)


def test_active_per_token_is_in_the_json_and_the_metrics() -> None:
    model, unused = _mixtral()
    report = lf.profile_model(model, _ids(), counters=("torch",), device="meta", moe_routing="balanced")
    again = lf.FlopsReport.from_json(report.to_json())
    assert again.params.active_per_token == report.params.active_per_token and again.moe_routing == "balanced"
    expected = sum(p.numel() for p in model.parameters()) - unused
    assert metrics_from_report(report)["compute/params/active_per_token"] == expected


def test_dense_model_active_per_token_equals_active() -> None:
    model = nn.Sequential(nn.Embedding(V, D), nn.Linear(D, V))
    report = lf.profile_model(model, _ids(), counters=("torch",))
    assert report.params.active_per_token == report.params.active == V * D + D * V + V


def test_bad_moe_routing_names_the_argument() -> None:
    with pytest.raises(lf.FlopsConfigError, match="`moe_routing` must be None or 'balanced', got 'even'"):
        lf.profile_model(nn.Linear(2, 2), torch.randn(1, 2), moe_routing="even")


@pytest.mark.slow
def test_deepseek_v3_full_config_on_meta() -> None:
    """DeepSeek-V3 by its own config: 671,026,404,352 parameters, 37,552,282,624 of them per token ("37B
    activated"): 58 MoE layers x 248 routed experts a token skips x (gate, up, down) 7168 x 2048."""
    with torch.device("meta"):
        model = tf.DeepseekV3ForCausalLM(tf.DeepseekV3Config())
    ids = torch.zeros(1, 16, dtype=torch.long, device="meta")
    report = lf.profile_model(model, ids, counters=("torch",), device="meta", strict=True, moe_routing="balanced")
    assert report.params.total == 671_026_404_352
    assert report.params.active_per_token == 671_026_404_352 - 58 * (256 - 8) * 3 * 7168 * 2048 == 37_552_282_624
