"""Hugging Face ``transformers`` models built from configs (random init, no download): the torch counter equals the
analytic count from the config, fvcore counts structured outputs, and a real ``Trainer.fit`` of a GPT-2.

Analytic MACs: Linear = tokens * in * out; attention QK^T + AV = 2 * heads * q_len * k_len * head_dim per sequence
(a causal mask does not reduce the dense count); the LM head counts; norms, activations, rotary, softmax and embedding
lookups are 0. Sizes are small (2 layers, width 64, sequences of 6-8) so the whole file stays fast on 2 cores.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ThroughputMonitor
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

import lightning_flops as lf
from lightning_flops import FlopsMonitor

tf = pytest.importorskip("transformers")

BATCH, SEQ, DEC, VOCAB, WIDTH, HEADS, FFN, LAYERS = 2, 8, 6, 100, 64, 4, 128, 2
HEAD_DIM = WIDTH // HEADS


def _ids(length: int = SEQ) -> torch.Tensor:
    return torch.randint(4, VOCAB, (BATCH, length), generator=torch.Generator().manual_seed(length))


def _text_input() -> dict[str, torch.Tensor]:
    ids = _ids()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _profile(model: nn.Module, example: Any) -> lf.FlopsReport:
    report = lf.profile_model(model.eval(), example)
    assert report.counters["fvcore"].ok, report.counters["fvcore"].error  # fvcore must not fail on HF outputs
    assert report.counters["thop"].ok, report.counters["thop"].error
    return report


def _attention(q_len: int, k_len: int, heads: int = HEADS, head_dim: int = HEAD_DIM) -> int:
    """QK^T and AV of one sequence."""
    return 2 * heads * q_len * k_len * head_dim


def _encoder_layer(tokens: int) -> int:
    """Self-attention (q, k, v, o projections + attention) and a two-matrix feed-forward, per sequence."""
    return 4 * tokens * WIDTH * WIDTH + _attention(tokens, tokens) + 2 * tokens * WIDTH * FFN


def _decoder_layer(tokens: int, source: int) -> int:
    """Self-attention, cross-attention (k, v over the encoder output) and the feed-forward, per sequence."""
    cross = 2 * tokens * WIDTH * WIDTH + 2 * source * WIDTH * WIDTH + _attention(tokens, source)
    return _encoder_layer(tokens) + cross


def test_bert() -> None:
    config = tf.BertConfig(
        vocab_size=VOCAB, hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=32,
    )  # fmt: skip
    report = _profile(tf.BertModel(config), _text_input())
    pooler = WIDTH * WIDTH  # dense layer on the [CLS] token
    assert report.counters["torch"].macs == BATCH * (LAYERS * _encoder_layer(SEQ) + pooler)
    assert report.tokens == BATCH * SEQ and report.params.active == report.params.total


def test_gpt2_lm_head() -> None:
    config = tf.GPT2Config(
        vocab_size=VOCAB, n_positions=32, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS, bos_token_id=0, eos_token_id=0
    )
    report = _profile(tf.GPT2LMHeadModel(config), _text_input())
    mlp = 4 * WIDTH  # GPT-2's n_inner default
    layer = SEQ * WIDTH * 3 * WIDTH + SEQ * WIDTH * WIDTH + _attention(SEQ, SEQ) + 2 * SEQ * WIDTH * mlp
    lm_head = SEQ * WIDTH * VOCAB
    assert report.counters["torch"].macs == BATCH * (LAYERS * layer + lm_head)
    assert report.macs_per_token("torch") == (LAYERS * layer + lm_head) / SEQ


def _llama_layer(kv_heads: int) -> int:
    """q and o: width x width; k and v: width x (kv_heads * head_dim) (grouped-query); gate, up, down: width x ffn."""
    projections = 2 * SEQ * WIDTH * WIDTH + 2 * SEQ * WIDTH * kv_heads * HEAD_DIM
    return projections + _attention(SEQ, SEQ) + 3 * SEQ * WIDTH * FFN


def test_llama_with_grouped_query_attention() -> None:
    config = tf.LlamaConfig(
        vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=2, head_dim=HEAD_DIM, max_position_embeddings=32,
    )  # fmt: skip
    report = _profile(tf.LlamaForCausalLM(config), _text_input())
    assert report.counters["torch"].macs == BATCH * (LAYERS * _llama_layer(kv_heads=2) + SEQ * WIDTH * VOCAB)


def test_t5_encoder_decoder() -> None:
    config = tf.T5Config(
        vocab_size=VOCAB, d_model=WIDTH, d_kv=HEAD_DIM, d_ff=FFN, num_layers=LAYERS, num_decoder_layers=LAYERS,
        num_heads=HEADS, feed_forward_proj="relu",
    )  # fmt: skip
    report = _profile(tf.T5ForConditionalGeneration(config), {**_text_input(), "decoder_input_ids": _ids(DEC)})
    expected = LAYERS * _encoder_layer(SEQ) + LAYERS * _decoder_layer(DEC, SEQ) + DEC * WIDTH * VOCAB
    assert report.counters["torch"].macs == BATCH * expected
    assert report.tokens == BATCH * SEQ  # the first integer [B, T] input: the encoder's input_ids


def test_vit() -> None:
    config = tf.ViTConfig(
        hidden_size=WIDTH, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=FFN,
        image_size=32, patch_size=8, num_channels=3,
    )  # fmt: skip
    report = _profile(tf.ViTModel(config), torch.randn(BATCH, 3, 32, 32))
    patches = (32 // 8) ** 2
    patch_embedding = patches * 3 * 8 * 8 * WIDTH  # a stride-8 conv: one 192 -> 64 product per patch
    tokens = patches + 1  # [CLS]
    expected = patch_embedding + LAYERS * _encoder_layer(tokens) + WIDTH * WIDTH  # + pooler
    assert report.counters["torch"].macs == BATCH * expected
    assert report.tokens is None  # pixels: no token dimension


def test_whisper() -> None:
    mels, frames = 16, 32
    config = tf.WhisperConfig(
        vocab_size=VOCAB, num_mel_bins=mels, d_model=WIDTH, encoder_layers=LAYERS, decoder_layers=LAYERS,
        encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN, decoder_ffn_dim=FFN,
        max_source_positions=frames // 2, max_target_positions=32, pad_token_id=1, bos_token_id=2, eos_token_id=2,
        decoder_start_token_id=3,
    )  # fmt: skip
    example = {"input_features": torch.randn(BATCH, mels, frames), "decoder_input_ids": _ids(DEC)}
    report = _profile(tf.WhisperForConditionalGeneration(config), example)
    source = frames // 2  # conv2 has stride 2
    convs = frames * mels * 3 * WIDTH + source * WIDTH * 3 * WIDTH  # two kernel-3 Conv1d
    expected = convs + LAYERS * _encoder_layer(source) + LAYERS * _decoder_layer(DEC, source) + DEC * WIDTH * VOCAB
    assert report.counters["torch"].macs == BATCH * expected


def _mixtral(implementation: str | None) -> nn.Module:
    options = {"experts_implementation": implementation} if implementation else {}
    config = tf.MixtralConfig(
        vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=2, head_dim=HEAD_DIM, num_local_experts=4,
        num_experts_per_tok=2, max_position_embeddings=32, **options,
    )  # fmt: skip
    return tf.MixtralForCausalLM(config)


def _mixtral_macs() -> int:
    """Per sequence: Llama-style attention, a router (width x 4 experts), and each token through its top-2 experts
    (gate, up and down projections each): the routed count does not depend on which experts are picked."""
    attention = 2 * SEQ * WIDTH * WIDTH + 2 * SEQ * WIDTH * 2 * HEAD_DIM + _attention(SEQ, SEQ)
    router, experts = SEQ * WIDTH * 4, 2 * SEQ * 3 * WIDTH * FFN
    return LAYERS * (attention + router + experts) + SEQ * WIDTH * VOCAB


def test_mixtral_eager_experts() -> None:
    report = _profile(_mixtral("eager"), _text_input())
    assert report.counters["torch"].macs == BATCH * _mixtral_macs()
    # active counts the slices of the 3-D expert tensors that got tokens: here every expert gets some
    # (tests/test_active_reads.py routes fewer tokens than experts)
    assert report.params.active == report.params.total


def test_mixtral_default_grouped_mm_experts() -> None:
    model = _mixtral(None)
    assert model.config._experts_implementation == "grouped_mm"
    report = _profile(model, _text_input())
    assert report.counters["torch"].macs == BATCH * _mixtral_macs()


# ------------------------------------------------------------------ a real fit of a GPT-2 on dict batches
class _LitGPT2(LightningModule):
    """A LightningModule around a small GPT-2: dict batches, ``forward`` returns the HF output object."""

    def __init__(self) -> None:
        super().__init__()
        config = tf.GPT2Config(
            vocab_size=VOCAB, n_positions=32, n_embd=WIDTH, n_layer=LAYERS, n_head=HEADS, bos_token_id=0, eos_token_id=0
        )
        self.model = tf.GPT2LMHeadModel(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self(**batch).loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class _TextData(Dataset):
    def __init__(self, samples: int = 8) -> None:
        self.ids = torch.randint(4, VOCAB, (samples, SEQ), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.ids[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}


def test_fit_gpt2_on_dict_batches(tmp_path: Path) -> None:
    logger = CSVLogger(str(tmp_path))
    throughput = ThroughputMonitor(batch_size_fn=lambda batch: batch["input_ids"].shape[0], window_size=2)
    trainer = Trainer(
        max_steps=3, accelerator="cpu", devices=1, logger=logger, log_every_n_steps=1, callbacks=[
            FlopsMonitor(), throughput], enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=str(tmp_path),
    )  # fmt: skip
    module = _LitGPT2()
    trainer.fit(module, DataLoader(_TextData(), batch_size=BATCH))
    mlp = 4 * WIDTH
    layer = SEQ * WIDTH * 3 * WIDTH + SEQ * WIDTH * WIDTH + _attention(SEQ, SEQ) + 2 * SEQ * WIDTH * mlp
    forward = LAYERS * layer + SEQ * WIDTH * VOCAB  # per sample, LM head included
    report = json.loads((Path(trainer.log_dir) / "flops_report.json").read_text())
    assert report["counters"]["torch"]["macs_per_sample"] == forward
    assert report["tokens"] == BATCH * SEQ and report["counters"]["torch"]["macs_per_token"] == forward / SEQ
    # backward = 2 x forward: the embedding output requires grad, so even the first layer's input gradient is
    # computed; the loss (cross-entropy) and embedding lookups are 0 MACs
    assert report["train_step_flops"] == module.flops_per_batch == 6 * forward * BATCH
    assert report["train_step_batch_size"] == BATCH
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert float(next(r["compute/torch/macs_per_token"] for r in rows if r.get("compute/torch/macs_per_token"))) == (
        forward / SEQ
    )
    assert any(r.get("train/device/flops_per_sec") and float(r["train/device/flops_per_sec"]) > 0 for r in rows)


@pytest.mark.parametrize("implementation", ["eager", None], ids=["eager_experts", "grouped_mm_experts"])
def test_mixtral_train_step_is_three_forwards(implementation: str | None) -> None:
    model = _mixtral(implementation).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    # every product's input needs a gradient (the embedding output does), so backward = 2 x forward, plus the fused
    # CPU flash-attention backward recomputing QK^T (torch's formula: heads * q * k * head_dim per sequence); the
    # routing is data-dependent (nonzero), so this counts on the real model and only the experts that received tokens
    recompute = LAYERS * HEADS * SEQ * SEQ * HEAD_DIM
    assert lf.train_step_flops(model, _text_input()) == 2 * BATCH * (3 * _mixtral_macs() + recompute)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
