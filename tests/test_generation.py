"""``profile_generate``: prefill and every decode step of a real greedy ``generate()`` equal the analytic count.

Analytic MACs, whole batch: Linear = tokens * in * out; QK^T + AV = 2 * heads * q_len * kv_len * head_dim per
sequence, kv_len growing by one per decode step (the KV cache: each step computes one new position); the LM head on
the positions ``generate`` asks logits for: transformers 5 passes ``logits_to_keep=1``, so one position per sequence
in the prefill too. Norms, activations, rotary embeddings (elementwise in transformers 5), softmax and embedding
lookups are 0. Models are tiny (width 32, 2 layers) so the file stays fast on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

import lightning_flops as lf

tf = pytest.importorskip("transformers")

B, P, NEW, V, D, H, HD, FF, L = 2, 5, 4, 100, 32, 4, 8, 64, 2  # batch, prompt, new tokens, vocab, width, heads, ...
KV = 2  # key/value heads of the grouped-query models


def _ids() -> torch.Tensor:
    return torch.randint(2, V, (B, P), generator=torch.Generator().manual_seed(0))


def _attention(q_len: int, kv_len: int) -> int:
    """QK^T and AV of one sequence."""
    return 2 * H * q_len * kv_len * HD


def _decoder_only(layer_linear: int, head: int = D * V) -> tuple[int, list[int]]:
    """Prefill and decode MACs (whole batch) of a decoder-only model whose layer has ``layer_linear`` MACs per token.

    Prefill: every prompt position through every layer, attention P x P, the LM head on the last position.
    Decode step i (1-based): one position per sequence attending over P + i cached positions.
    """
    prefill = B * (L * (P * layer_linear + _attention(P, P)) + head)
    decode = [B * (L * (layer_linear + _attention(1, P + i)) + head) for i in range(1, NEW)]
    return prefill, decode


def _gpt2(attention: str) -> nn.Module:
    config = tf.GPT2Config(
        vocab_size=V, n_positions=32, n_embd=D, n_layer=L, n_head=H, bos_token_id=0, eos_token_id=1,
        pad_token_id=0, attn_implementation=attention,
    )  # fmt: skip
    return tf.GPT2LMHeadModel(config)


def _llama(attention: str) -> nn.Module:
    config = tf.LlamaConfig(
        vocab_size=V, hidden_size=D, intermediate_size=FF, num_hidden_layers=L, num_attention_heads=H,
        num_key_value_heads=KV, head_dim=HD, max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
        pad_token_id=0, attn_implementation=attention,
    )  # fmt: skip
    return tf.LlamaForCausalLM(config)


# GPT-2: c_attn D -> 3D, c_proj D -> D, MLP D -> 4D -> D
GPT2_LAYER = D * 3 * D + D * D + 2 * D * 4 * D
# Llama with grouped-query attention: q and o D x D, k and v D x KV*HD; gate, up and down D x FF
LLAMA_LAYER = 2 * D * H * HD + 2 * D * KV * HD + 3 * D * FF


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_gpt2_prefill_and_every_decode_step(attention: str) -> None:
    gen = lf.profile_generate(_gpt2(attention), _ids(), max_new_tokens=NEW)
    prefill, decode = _decoder_only(GPT2_LAYER)
    assert gen.prefill_macs == prefill == 258_560
    assert list(gen.decode_macs) == decode == [57_088, 57_344, 57_600]
    assert gen.total_macs == prefill + sum(decode)
    assert (gen.batch_size, gen.prompt_tokens, gen.new_tokens, gen.attention) == (B, P, NEW, attention)
    assert gen.macs_per_new_token() == sum(decode) / (B * (NEW - 1))
    assert gen.total_flops == 2 * gen.total_macs and gen.uncounted == ()


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_llama_grouped_query_attention_prefill_and_every_decode_step(attention: str) -> None:
    gen = lf.profile_generate(_llama(attention), _ids(), max_new_tokens=NEW)
    prefill, decode = _decoder_only(LLAMA_LAYER)
    assert gen.prefill_macs == prefill == 197_120
    assert list(gen.decode_macs) == decode == [44_800, 45_056, 45_312]
    assert gen.uncounted == ()


def test_t5_encoder_is_in_the_prefill() -> None:
    config = tf.T5Config(
        vocab_size=V, d_model=D, d_kv=HD, d_ff=FF, num_layers=L, num_decoder_layers=L, num_heads=H,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    gen = lf.profile_generate(tf.T5ForConditionalGeneration(config), _ids(), max_new_tokens=NEW)
    encoder = B * L * (P * (4 * D * D + 2 * D * FF) + _attention(P, P))  # q, k, v, o; wi, wo
    # one decoder position per step: self-attention q, k, v, o; cross-attention q, o; wi, wo; the LM head
    step_linear = B * L * (4 * D * D + 2 * D * D + 2 * D * FF) + B * D * V
    cross_kv = B * L * 2 * P * D * D  # cross-attention k and v over the encoder output: once, then cached

    def step(i: int) -> int:  # decoder step i (0 = the first): self-attention over i + 1 positions, cross over P
        return step_linear + B * L * (_attention(1, i + 1) + _attention(1, P))

    assert gen.encoder_decoder
    assert gen.prefill_macs == encoder + cross_kv + step(0) == 260_096
    assert list(gen.decode_macs) == [step(i) for i in range(1, NEW)] == [49_152, 49_408, 49_664]


def _mixtral() -> nn.Module:
    config = tf.MixtralConfig(
        vocab_size=V, hidden_size=D, intermediate_size=FF, num_hidden_layers=L, num_attention_heads=H,
        num_key_value_heads=KV, head_dim=HD, num_local_experts=4, num_experts_per_tok=2, max_position_embeddings=32,
        bos_token_id=0, eos_token_id=1, pad_token_id=0, attn_implementation="eager",
    )  # fmt: skip
    return tf.MixtralForCausalLM(config)


def test_mixtral_total_equals_flop_counter_mode_around_the_same_generate() -> None:
    from torch.utils.flop_counter import FlopCounterMode

    model = _mixtral()
    assert model.config._experts_implementation == "grouped_mm"
    gen = lf.profile_generate(model, _ids(), max_new_tokens=NEW)
    # router D x 4 experts; each token through its top-2 experts (gate and up D x 2FF, down FF x D)
    prefill, decode = _decoder_only(2 * D * H * HD + 2 * D * KV * HD + D * 4 + 2 * 3 * D * FF)
    assert gen.prefill_macs == prefill and list(gen.decode_macs) == decode

    def grouped_mm_flops(a: torch.Size, b: torch.Size, offs: torch.Size | None = None, *args, **kwargs) -> int:
        return 2 * a[0] * a[1] * b[2]  # rows [M, K] x experts [G, K, N]: every row meets one expert

    # torch's FlopCounterMode has no _grouped_mm formula (torch 2.13): the stock counter plus that one formula
    mode = FlopCounterMode(display=False, custom_mapping={torch.ops.aten._grouped_mm: grouped_mm_flops})
    with mode, torch.no_grad():
        model.generate(input_ids=_ids(), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
    assert gen.total_macs == mode.get_total_flops() // 2


def test_padded_batch_counts_every_position_and_reports_real_tokens() -> None:
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[0, :2] = 0  # left padding: sequence 0 has 3 real tokens
    ids[0, :2] = 0
    gen = lf.profile_generate(_llama("sdpa"), {"input_ids": ids, "attention_mask": mask}, max_new_tokens=NEW)
    prefill, decode = _decoder_only(LLAMA_LAYER)
    assert gen.prefill_macs == prefill and list(gen.decode_macs) == decode  # padding is computed: it counts
    assert gen.tokens == B * P - 2
    assert gen.prefill_macs_per_token() == prefill / (B * P - 2)
    assert "8 real prompt tokens of 10 positions" in gen.statement()


class _TinyLM(nn.Module):
    """A language model without ``generate`` and without a cache: each step recomputes the whole sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.head = nn.Linear(D, V)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))


def _greedy(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    for _ in range(NEW):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_generate_fn_for_a_model_without_generate() -> None:
    gen = lf.profile_generate(_TinyLM(), _ids(), generate_fn=_greedy)
    assert gen.prefill_macs == B * P * D * V
    assert list(gen.decode_macs) == [B * (P + i) * D * V for i in range(1, NEW)]  # no cache: the whole sequence
    assert gen.new_tokens == NEW


def test_model_and_process_state_are_unchanged() -> None:
    model = _gpt2("eager").train()
    model.transformer.h[0].eval()
    model.transformer.wpe.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    lf.profile_generate(model, _ids(), max_new_tokens=2)
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.transformer.wpe.weight.requires_grad and model.transformer.wte.weight.requires_grad
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    assert torch.is_grad_enabled()


class _NoisyLM(_TinyLM):
    """Draws from a generator of its own in every forward (dropout-like noise with a private stream)."""

    def __init__(self) -> None:
        super().__init__()
        self.noise = torch.Generator().manual_seed(7)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = super().forward(ids)
        return logits + 0 * torch.rand(logits.shape, generator=self.noise)


def test_the_models_own_generator_is_restored() -> None:
    model = _NoisyLM()
    state = model.noise.get_state()
    gen = lf.profile_generate(model, _ids(), generate_fn=_greedy)
    assert torch.equal(model.noise.get_state(), state)
    assert gen.prefill_macs == B * P * D * V


def test_json_round_trip_and_reading_without_torch() -> None:
    gen = lf.profile_generate(_gpt2("sdpa"), _ids(), max_new_tokens=3, pad_token_id=0)
    text = gen.to_json()
    assert lf.GenerationReport.from_json(text) == gen
    data = json.loads(text)
    assert data["report_type"] == "generation" and data["total_flops"] == 2 * data["total_macs"]
    assert data["generate_kwargs"] == {"pad_token_id": "0"}
    code = (
        "import sys, lightning_flops as lf; "
        f"g = lf.GenerationReport.from_json({text!r}); "
        "assert g.total_macs == g.prefill_macs + sum(g.decode_macs) and g.to_markdown() and g.statement(); "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_markdown_and_statement_give_prefill_and_per_token_decode() -> None:
    gen = lf.GenerationReport(model="M", batch_size=2, prompt_tokens=5, new_tokens=3, prefill_macs=2_000,
                              decode_macs=(400, 600), versions={"lightning_flops": "x", "torch": "y"})  # fmt: skip
    table = gen.to_markdown()
    assert "| prefill | 5 | 2,000 | 1,000 | 2,000 |" in table
    assert "| decode 1 | 6 | 400 | 200 | 400 |" in table and "| decode 2 | 7 | 600 | 300 | 600 |" in table
    assert "| **total** | | 3,000 | 1,500 | 3,000 |" in table
    statement = gen.statement()
    assert "prefill 1.00 kMACs (2.00 kFLOPs; 1,000 MACs) for a 5-token prompt" in statement
    assert "decode 250 MACs (500 FLOPs) per new token at context 6..7 positions" in statement  # (400+600) / (2*2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_new_tokens": 0}, "`max_new_tokens` must be an int >= 1"),
        ({"do_sample": True}, "`do_sample` is set by profile_generate"),
        ({"generate_fn": 3}, "`generate_fn` must be None or a callable"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, message: str) -> None:
    with pytest.raises(lf.FlopsConfigError, match=message):
        lf.profile_generate(_TinyLM(), _ids(), **kwargs)


def test_model_without_generate_asks_for_generate_fn() -> None:
    with pytest.raises(lf.FlopsConfigError, match="has no `generate`: pass `generate_fn"):
        lf.profile_generate(_TinyLM(), _ids())


def test_reading_a_bad_generation_report_names_the_field() -> None:
    with pytest.raises(lf.ReportFormatError, match="`decode_macs` must be a list"):
        lf.GenerationReport.from_dict({"report_type": "generation", "schema_version": 1, "model": "M",
                                       "batch_size": 1, "prompt_tokens": 1, "new_tokens": 1, "prefill_macs": 1,
                                       "decode_macs": "x"})  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),  # past the recursion limit: RecursionError before
        ("{", "not valid JSON"),
    ],
    ids=["nested", "truncated"],
)
def test_reading_hostile_generation_json_is_a_report_format_error(text: str, message: str) -> None:
    with pytest.raises(lf.ReportFormatError, match=message):
        lf.GenerationReport.from_json(text)
