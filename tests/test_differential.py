"""The reference's rule, by construction: the torch counter's MACs = stock FlopCounterMode / 2 + the terms of the
formulas we add, nothing else. Both sides are computed here, independently of the counter (``tests/differential.py``:
stock FlopCounterMode over a real CPU forward, and our formulas applied by a dispatch mode of the test to the kernels
that run), for every operator of the ops table, the models of the suite, higher-order operators inside the user's
``try``/``except`` and a sample of transformers architectures (all of them: ``benchmarks/zoo_differential.py``)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import lightning_flops as lf
from examples.models import SmallCNN, TinyAttention, small_cnn_macs, transformer_lm, vit
from lightning_flops.inputs import split_input
from tests.differential import reference_sides
from tests.test_higher_order import CASES
from tests.test_ops import ALL_OPS, Op


def _call(model: nn.Module, example: Any) -> Any:
    args, kwargs = split_input(example)  # as profile_model splits it: Tensor, tuple/list or dict of keywords
    return model(*args, **kwargs)


def _check(model: nn.Module, example: Any, device: str | None = None) -> tuple[int, int]:
    """Assert ours == (stock + added) / 2; return ``(ours, added FLOPs)``."""
    model.eval()
    probe = copy.deepcopy(model)  # the reference's forward must not touch the profiled model (Fallback counts calls)
    stock, added, _ = reference_sides(lambda: _call(probe, example))
    result = lf.profile_model(model, example, counters=("torch",), device=device).counters["torch"]
    assert result.ok, result.error
    assert result.macs == (stock + added) // 2, (result.macs, stock // 2, added // 2)
    return result.macs, added


@pytest.mark.parametrize("op", ALL_OPS, ids=[op.id for op in ALL_OPS])
def test_every_operator_of_the_ops_table(op: Op) -> None:
    torch.manual_seed(0)
    _check(op.build(), op.inputs())


# fmt: off
SUITE_MODELS: list[tuple[str, Callable[[], nn.Module], Callable[[], Any]]] = [
    ("small_cnn", SmallCNN, lambda: torch.randn(2, 3, 32, 32)),
    ("vit_sdpa", lambda: vit(depth=2, dim=64, heads=4, patch=8, image_size=32, num_classes=10),
     lambda: torch.randn(2, 3, 32, 32)),
    ("vit_manual", lambda: vit(depth=2, dim=64, heads=4, patch=8, image_size=32, num_classes=10, attention="manual"),
     lambda: torch.randn(2, 3, 32, 32)),
    ("tiny_attention", TinyAttention, lambda: torch.randint(0, 100, (2, 12))),
    ("transformer_lm", lambda: transformer_lm(layers=2, d_model=64, heads=4, vocab=100, max_seq=32),
     lambda: torch.randint(0, 100, (2, 16))),
    ("encoder_layer", lambda: nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), lambda: torch.randn(2, 6, 32)),
    ("lstm", lambda: nn.LSTM(16, 24, num_layers=2, batch_first=True), lambda: torch.randn(2, 7, 16)),
    ("gru", lambda: nn.GRU(16, 24), lambda: torch.randn(7, 2, 16)),
    *CASES,  # the higher-order operators inside the user's try/except (tests/test_higher_order.py)
]
# fmt: on


@pytest.mark.parametrize("device", [None, "model"])
@pytest.mark.parametrize(("name", "build", "make_input"), SUITE_MODELS, ids=[m[0] for m in SUITE_MODELS])
def test_models_of_the_suite(
    name: str, build: Callable[[], nn.Module], make_input: Callable[[], Any], device: str | None
) -> None:
    torch.manual_seed(0)
    _check(build(), make_input(), device)


def test_small_cnn_is_its_analytic_count_on_both_sides() -> None:
    ours, added = _check(SmallCNN(), torch.randn(2, 3, 32, 32))
    assert (ours, added) == (small_cnn_macs(2), 0)  # conv + linear only: nothing of ours added


#: architectures that build tiny and count in well under a second each (the whole set: benchmarks/zoo_differential.py)
ARCHITECTURES = [
    "albert", "bart", "beit", "bert", "big_bird", "bigbird_pegasus", "biogpt", "bitnet", "blenderbot", "bloom",
    "clip", "convbert", "deberta-v2", "distilbert", "electra", "gemma", "gpt2", "gpt_neo", "gpt_neox", "llama",
    "m2m_100", "mistral", "mixtral", "mpt", "opt", "phi", "qwen2", "qwen2_moe", "roberta", "t5", "vit", "whisper",
    "xglm",
]  # fmt: skip


@pytest.mark.parametrize("model_type", ARCHITECTURES)
def test_transformers_architectures(model_type: str) -> None:
    pytest.importorskip("transformers")
    from tests.hf_zoo import build

    model, example = build(model_type)
    _check(model, example)
