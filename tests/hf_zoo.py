"""Tiny ``transformers`` models of any architecture, built from their config (random init, no download), with an
example input: the differential tests and ``benchmarks/zoo_differential.py`` share this builder.

:func:`build` shrinks every size a config exposes (width, layers, heads, feed-forward, vocabulary, image and audio
sizes) and makes the input the model's ``main_input_name`` asks for. Architectures that do not build or run this way
raise; callers skip them.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import torch
from torch import nn

BATCH, SEQ = 2, 8
#: a model still larger than this after shrinking is refused (some configs keep sizes under names of their own)
MAX_PARAMETERS = 5_000_000

#: config attribute -> tiny value (set where the config has the attribute)
_SMALL: dict[str, Any] = {
    "hidden_size": 32, "d_model": 32, "n_embd": 32, "dim": 32, "embed_dim": 32, "width": 32, "n_embed": 32,
    "num_hidden_layers": 2, "num_layers": 2, "n_layer": 2, "n_layers": 2, "encoder_layers": 2, "decoder_layers": 2,
    "num_decoder_layers": 2, "num_encoder_layers": 2,
    "num_attention_heads": 4, "n_head": 4, "n_heads": 4, "encoder_attention_heads": 4, "decoder_attention_heads": 4,
    "num_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
    "intermediate_size": 64, "ffn_dim": 64, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "n_inner": 64,
    "d_ff": 64, "hidden_dim": 64,
    "vocab_size": 128, "max_position_embeddings": 64, "n_positions": 64, "max_source_positions": 64,
    "max_target_positions": 64,
    "image_size": 32, "patch_size": 8, "num_channels": 3,
    "num_mel_bins": 16, "embedding_size": 32, "projection_dim": 16,
    "num_local_experts": 4, "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32,
}  # fmt: skip


def _shrink(config: Any) -> Any:
    for name, value in _SMALL.items():
        if hasattr(config, name) and isinstance(getattr(config, name), int):
            setattr(config, name, value)
    for sub in ("text_config", "vision_config", "audio_config", "encoder", "decoder"):
        inner = getattr(config, sub, None)
        if inner is not None and hasattr(inner, "to_dict"):
            _shrink(inner)
    if hasattr(config, "layer_types") and isinstance(config.layer_types, list):
        config.layer_types = config.layer_types[: getattr(config, "num_hidden_layers", 2)]
    if hasattr(config, "pad_token_id") and isinstance(config.pad_token_id, int) and config.pad_token_id >= 128:
        config.pad_token_id = 0
    return config


def tiny_config(model_type: str, **overrides: Any) -> Any:
    """The default config of ``model_type``, every size it exposes made tiny, then ``overrides`` set."""
    from transformers import AutoConfig

    config = _shrink(AutoConfig.for_model(model_type))
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def example_input(model: nn.Module, config: Any) -> dict[str, torch.Tensor]:
    """An input for ``model``'s ``main_input_name`` (ids, pixels, audio features or samples), seeded."""
    gen = torch.Generator().manual_seed(0)
    name = getattr(model, "main_input_name", "input_ids")
    vocab = getattr(config, "vocab_size", None) or 128
    if name == "input_ids":
        ids = torch.randint(4, min(vocab, 128), (BATCH, SEQ), generator=gen)
        example: dict[str, torch.Tensor] = {"input_ids": ids}
        if getattr(config, "is_encoder_decoder", False):
            example["decoder_input_ids"] = ids[:, :6]
        vision = getattr(config, "vision_config", None)
        if vision is not None:  # a text-image model (CLIP-like): both inputs
            size = getattr(vision, "image_size", 32)
            example["pixel_values"] = torch.randn(BATCH, getattr(vision, "num_channels", 3), size, size, generator=gen)
        return example
    if name == "pixel_values":
        size = getattr(config, "image_size", 32)
        size = size[0] if isinstance(size, (list, tuple)) else size
        channels = getattr(config, "num_channels", 3)
        return {"pixel_values": torch.randn(BATCH, channels, size, size, generator=gen)}
    if name == "input_features":
        frames = 2 * getattr(config, "max_source_positions", 32)
        example = {"input_features": torch.randn(BATCH, getattr(config, "num_mel_bins", 16), frames, generator=gen)}
        if getattr(config, "is_encoder_decoder", False):
            example["decoder_input_ids"] = torch.randint(4, min(vocab, 128), (BATCH, 6), generator=gen)
        return example
    if name == "input_values":
        return {"input_values": torch.randn(BATCH, 4000, generator=gen)}
    raise ValueError(f"no example input for {name!r}")


def build(model_type: str, model_class: str = "AutoModel", **overrides: Any) -> tuple[nn.Module, dict[str, Any]]:
    """A tiny ``model_type`` (random init, seeded, eval mode) and its example input; raises when it cannot run.

    Args:
        model_type: a ``transformers`` model type (``"llama"``, ``"vit"``, ...).
        model_class: the auto class to build with (``"AutoModel"``, ``"AutoModelForCausalLM"``).
        overrides: config attributes set after shrinking.
    """
    import transformers

    config = tiny_config(model_type, **overrides)
    torch.manual_seed(0)
    auto = getattr(transformers, model_class)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        with torch.device("meta"):  # its size first, without allocating or initialising anything
            size = sum(p.numel() for p in auto.from_config(config).parameters())
        if size > MAX_PARAMETERS:
            raise ValueError(f"{size:,} parameters after shrinking its config (a size it does not expose)")
        model = auto.from_config(config).eval()
    example = example_input(model, config)
    with torch.no_grad():
        model(**example)  # raises when this architecture does not run on this input
    return model, example
